//! `bootagent boot` in exec mode on the host, against moto, a git daemon and the IMDS fake.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::*;

/// A service with a secret per environment (each holding its own canary) and a sample repo.
struct Service {
    name: String,
    repo: SampleRepo,
    canaries: BTreeMap<&'static str, String>,
}

impl Service {
    fn create() -> Service {
        let name = unique("svc");
        let repo = SampleRepo::create(&name);
        let mut canaries = BTreeMap::new();
        for env in ["test", "stage", "prod"] {
            let canary = canary();
            let secret = serde_json::json!({
                "DB_PASSWORD": canary,
                "PORT": 8080,
                "DEBUG": env == "test",
                "MULTI": "line one\nline \"two\" \\ $HOME %h",
            });
            create_secret(&format!("{name}_env_{env}"), &secret.to_string());
            canaries.insert(env, canary);
        }
        Service {
            name,
            repo,
            canaries,
        }
    }

    fn imds(&self, env_tag: &str) -> Imds {
        Imds::for_service(&self.name, env_tag, &self.repo.url)
    }
}

#[test]
fn each_environment_gets_its_secret_branch_and_variables() {
    support::needs_world!();
    let service = Service::create();
    for (tag, env) in [
        ("test", "test"),
        ("stage", "stage"),
        ("prod", "prod"),
        ("production", "prod"),
    ] {
        let instance = Instance::exec_mode("");
        let imds = service.imds(tag);
        let run = instance.run(&imds, &["boot"]);
        run.expect(0);

        let canary = &service.canaries[env];
        let env_file = instance.env_file(&service.name);
        let text = std::fs::read_to_string(&env_file).unwrap();
        assert_eq!(
            text,
            format!(
                "BOOTAGENT_ENV=\"{env}\"\nBOOTAGENT_SERVICE=\"{name}\"\nDB_PASSWORD=\"{canary}\"\n\
                 DEBUG=\"{debug}\"\nMULTI=\"line one\nline \\\"two\\\" \\\\ $HOME %h\"\nPORT=\"8080\"\n",
                name = service.name,
                debug = env == "test",
            ),
            "env file for tag {tag}"
        );
        let meta = std::fs::metadata(&env_file).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);

        let checkout = instance.checkout(&service.name);
        assert_eq!(
            instance.running_commit(&service.name),
            service.repo.commits[env]
        );

        let received = instance.service_env();
        assert_eq!(received["DB_PASSWORD"], *canary);
        assert_eq!(received["PORT"], "8080");
        assert_eq!(received["MULTI"], "line one\nline \"two\" \\ $HOME %h");
        assert_eq!(received["BOOTAGENT_ENV"], env);
        assert_eq!(received["BOOTAGENT_SERVICE"], service.name);
        let release = std::fs::canonicalize(&checkout).unwrap();
        assert_eq!(instance.service_saw("cwd"), release.display().to_string());
        assert_eq!(instance.service_saw("uid"), NOBODY_UID);
        assert_eq!(instance.service_saw("version"), format!("{env} build 1"));

        let status = instance.status();
        assert_eq!(status["outcome"], "succeeded");
        assert_eq!(status["identity"]["env"], env);
        assert_eq!(status["identity"]["env_tag"], tag);
        assert_eq!(status["git"]["commit"], service.repo.commits[env].as_str());
        assert!(status["secrets"][0]["version_id"].is_string());
        instance.assert_no_canary(canary, &run);
    }
}

#[test]
fn second_boot_does_not_reclone_and_follows_a_new_commit() {
    support::needs_world!();
    let mut service = Service::create();
    let instance = Instance::exec_mode("");
    let imds = service.imds("stage");
    instance.run(&imds, &["boot"]).expect(0);
    let git_dir = instance.repository(&service.name);
    let inode = std::fs::metadata(&git_dir).unwrap().ino();
    assert_eq!(instance.status()["git"]["action"], "cloned");
    assert!(instance.status()["git"]["received_bytes"].as_u64().unwrap() > 0);

    instance.run(&imds, &["boot"]).expect(0);
    assert_eq!(instance.status()["git"]["action"], "unchanged");
    assert_eq!(instance.status()["git"]["received_bytes"], 0);
    assert_eq!(std::fs::metadata(&git_dir).unwrap().ino(), inode);

    let new_commit = service.repo.push_version("stage", "stage build 2\n");
    instance.run(&imds, &["boot"]).expect(0);
    assert_eq!(instance.status()["git"]["action"], "fetched");
    assert_eq!(instance.running_commit(&service.name), new_commit);
    assert_eq!(instance.service_saw("version"), "stage build 2");
    assert_eq!(std::fs::metadata(&git_dir).unwrap().ino(), inode);
}

#[test]
fn concurrent_boots_take_turns() {
    support::needs_world!();
    let service = Service::create();
    let instance = Instance::exec_mode("");
    let imds = service.imds("prod");
    let first = instance.command(&imds, &["boot"]).spawn().unwrap();
    let second = instance.command(&imds, &["boot"]).spawn().unwrap();
    for child in [first, second] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    assert_eq!(instance.status()["outcome"], "succeeded");
    assert_eq!(
        instance.running_commit(&service.name),
        service.repo.commits["prod"]
    );
}

#[test]
fn a_held_lock_ends_the_boot_at_its_deadline() {
    support::needs_world!();
    let service = Service::create();
    let instance = Instance::exec_mode("");
    let imds = service.imds("prod");
    let holder = instance.hold_boot_lock();
    let config = std::fs::read_to_string(&instance.config)
        .unwrap()
        .replace("deadline = \"60s\"", "deadline = \"1s\"");
    std::fs::write(&instance.config, config).unwrap();
    let run = instance.run(&imds, &["boot"]);
    drop(holder);
    run.expect(10).stderr_has("another bootagent boot holds");
    assert!(!instance.env_file(&service.name).exists());
}

#[test]
fn stale_token_is_replaced_after_401() {
    support::needs_world!();
    let service = Service::create();
    let instance = Instance::exec_mode("");
    let imds = Imds::start(serde_json::json!({
        "tags": {"Service": service.name, "Environment": "test", "Repository": service.repo.url},
        "expire_tokens_after": 2,
    }));
    instance.run(&imds, &["boot"]).expect(0);
    let requests = imds.requests();
    let puts = requests.iter().filter(|r| r.starts_with("PUT ")).count();
    assert!(requests.iter().any(|r| r.ends_with(" 401")), "{requests:?}");
    assert_eq!(
        puts, 2,
        "one token, then one more after the 401: {requests:?}"
    );
}

#[test]
fn tags_arriving_late_are_waited_for() {
    support::needs_world!();
    let service = Service::create();
    let instance = Instance::exec_mode("");
    let imds = Imds::start(serde_json::json!({
        "tags": {"Service": service.name, "Environment": "test", "Repository": service.repo.url},
        "tags_delay": 1,
    }));
    instance.run(&imds, &["boot"]).expect(0);
    assert_eq!(instance.status()["identity"]["service"], service.name);
}

#[test]
fn plan_needs_no_credentials_and_shows_an_unset_repository() {
    support::needs_world!();
    let instance = Instance::exec_mode("");
    let imds = Imds::with_tags(&[("Service", "calendar"), ("Environment", "staging")]);
    let run = Run(instance
        .command(&imds, &["plan"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_ENDPOINT_URL")
        .output()
        .unwrap());
    run.expect(0);
    let plan: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    assert_eq!(plan["secrets"]["main"], "calendar_env_stage");
    assert_eq!(plan["git"]["ref"], "stage");
    assert_eq!(plan["git"]["url"], serde_json::Value::Null);
    assert_eq!(plan["identity"]["env_tag"], "staging");
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    support::needs_world!();
    let service = Service::create();
    let instance = Instance::exec_mode("");
    let imds = service.imds("prod");
    let run = instance.run(&imds, &["boot", "--dry-run"]);
    run.expect(0);
    let plan: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    assert_eq!(plan["git"]["url"], service.repo.url.as_str());
    assert_eq!(std::fs::read_dir(instance.run.path()).unwrap().count(), 0);
    assert!(!instance.checkout(&service.name).exists());
}

#[test]
fn status_command_reports_the_last_boot() {
    support::needs_world!();
    let service = Service::create();
    let instance = Instance::exec_mode("");
    let imds = service.imds("stage");
    instance
        .run(&imds, &["status"])
        .expect(9)
        .stderr_has("has not run");
    instance.run(&imds, &["boot"]).expect(0);
    let run = instance.run(&imds, &["status"]);
    run.expect(0);
    let text = run.stdout();
    assert!(text.contains("boot:     succeeded"), "{text}");
    assert!(text.contains(&service.repo.commits["stage"]), "{text}");
    assert_no_canary(&service.canaries["stage"], &[("status", &text)]);
    let json = instance.run(&imds, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&json.stdout()).unwrap();
    assert_eq!(status["outcome"], "succeeded");
}

#[test]
fn the_history_keeps_every_boot_across_reboots() {
    support::needs_world!();
    let service = Service::create();
    let instance = Instance::exec_mode("");
    let imds = service.imds("stage");
    instance.add_config(
        "60-gone.toml",
        "[secrets]\nmain = \"{service}_gone_{env}\"\n",
    );
    instance.run(&imds, &["boot"]).expect(5);
    std::fs::remove_file(instance.root.path().join("config.d/60-gone.toml")).unwrap();
    // A reboot empties the tmpfs run dir, status.json with it; the history stays.
    std::fs::remove_file(instance.run.path().join("status.json")).unwrap();
    instance
        .run(&imds, &["status"])
        .expect(9)
        .stderr_has("`bootagent status --history` lists the boots before");
    instance.run(&imds, &["boot"]).expect(0);

    let run = instance.run(&imds, &["status", "--history"]);
    run.expect(0);
    let text = run.stdout();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].contains("failed (exit 5)"), "{text}");
    assert!(
        lines[0].contains("_gone_stage"),
        "the cause is named: {text}"
    );
    let commit = &service.repo.commits["stage"];
    assert!(lines[1].contains("succeeded"), "{text}");
    // The failed boot's fetch, beside its secrets, may have cloned the repository already.
    let deployed = |action| format!("{}/stage  {} ({action})", service.name, &commit[..12]);
    assert!(
        ["cloned", "fetched"]
            .iter()
            .any(|action| lines[1].contains(&deployed(action))),
        "{text}"
    );
    let json = instance.run(&imds, &["status", "--history", "--json"]);
    let entries: serde_json::Value = serde_json::from_str(&json.stdout()).unwrap();
    assert_eq!(entries[1]["commit"], commit.as_str());
    assert_eq!(entries[0]["exit_code"], 5);

    let file = instance.root.path().join("state/history.jsonl");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    let recorded = std::fs::read_to_string(&file).unwrap();
    assert_no_canary(&service.canaries["stage"], &[("history.jsonl", &recorded)]);
}

/// A failed boot leaves the previous env file exactly as it was.
struct Earlier {
    path: std::path::PathBuf,
}

impl Earlier {
    const CONTENT: &'static str = "OLD=\"kept\"\n";

    fn plant(instance: &Instance, service: &str) -> Earlier {
        let path = instance.env_file(service);
        std::fs::write(&path, Self::CONTENT).unwrap();
        Earlier { path }
    }

    fn assert_intact(&self) {
        assert_eq!(std::fs::read_to_string(&self.path).unwrap(), Self::CONTENT);
    }
}

fn failing_boot(
    instance: &Instance,
    imds: &Imds,
    service: &str,
    code: i32,
    needles: &[&str],
    canary: Option<&str>,
) {
    let earlier = Earlier::plant(instance, service);
    let run = instance.run(imds, &["boot"]);
    run.expect(code);
    for needle in needles {
        run.stderr_has(needle);
    }
    earlier.assert_intact();
    let status = instance.status();
    assert_eq!(status["outcome"], "failed");
    assert_eq!(status["error"]["exit_code"], code);
    if let Some(canary) = canary {
        instance.assert_no_canary(canary, &run);
    }
}

#[test]
fn tags_in_metadata_disabled_is_named_as_such() {
    support::needs_world!();
    let instance = Instance::exec_mode("");
    let imds = Imds::start(serde_json::json!({ "tags": null }));
    failing_boot(
        &instance,
        &imds,
        "any",
        4,
        &[
            "tags in metadata are disabled",
            "--instance-metadata-tags enabled",
        ],
        None,
    );
}

#[test]
fn missing_service_tag_names_the_tag_and_the_fix() {
    support::needs_world!();
    let instance = Instance::exec_mode("");
    let imds = Imds::with_tags(&[("Environment", "prod")]);
    let started = Instant::now();
    failing_boot(
        &instance,
        &imds,
        "any",
        3,
        &["instance tag Service is missing", "identity.service_tag"],
        None,
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited tag_wait"
    );
}

#[test]
fn unknown_environment_lists_the_known_ones() {
    support::needs_world!();
    let instance = Instance::exec_mode("");
    let imds = Imds::with_tags(&[("Service", "calendar"), ("Environment", "qa")]);
    failing_boot(
        &instance,
        &imds,
        "calendar",
        3,
        &[
            "Environment=\"qa\"",
            "stage (stage, staging)",
            "[environments]",
        ],
        None,
    );
}

#[test]
fn path_traversal_in_a_tag_is_refused() {
    support::needs_world!();
    let instance = Instance::exec_mode("");
    let imds = Imds::with_tags(&[("Service", "../../etc"), ("Environment", "prod")]);
    failing_boot(
        &instance,
        &imds,
        "any",
        3,
        &["Service=\"../../etc\" is not a valid name"],
        None,
    );
    assert!(!instance.root.path().join("etc").exists());
}

#[test]
fn missing_secret_names_its_id_and_region() {
    support::needs_world!();
    let name = unique("nosecret");
    let repo = SampleRepo::create(&name);
    let instance = Instance::exec_mode("");
    let imds = Imds::for_service(&name, "stage", &repo.url);
    failing_boot(
        &instance,
        &imds,
        &name,
        5,
        &[&format!(
            "secret {name}_env_stage was not found in region us-east-1"
        )],
        None,
    );
}

#[test]
fn secret_that_is_not_a_json_object_is_refused_without_echoing_it() {
    support::needs_world!();
    let canary = canary();
    for (value, found) in [
        (format!("\"{canary}\""), "is a JSON string"),
        (format!("{{\"A\": \"{canary}\""), "is not valid JSON"),
        (
            format!("{{\"A\": {{\"B\": \"{canary}\"}}}}"),
            "holds an object",
        ),
        (
            format!("{{\"{canary}\": [1]}}"),
            "is not a valid variable name",
        ),
    ] {
        let name = unique("badsecret");
        create_secret(&format!("{name}_env_prod"), &value);
        let instance = Instance::exec_mode("");
        let imds = Imds::with_tags(&[("Service", &name), ("Environment", "prod")]);
        failing_boot(&instance, &imds, &name, 6, &[found], Some(&canary));
    }
}

#[test]
fn metadata_refused_with_403_is_a_permanent_error_naming_the_metadata_options() {
    support::needs_world!();
    let instance = Instance::exec_mode("");
    let imds = Imds::start(serde_json::json!({ "disabled": true }));
    failing_boot(
        &instance,
        &imds,
        "any",
        15,
        &[
            "HTTP 403",
            "--http-endpoint enabled",
            "HttpEndpoint=enabled",
        ],
        None,
    );
    instance
        .run(&imds, &["plan"])
        .expect(15)
        .stderr_has("HTTP 403");
}

/// A bug that panics mid-boot (a failpoint of the test build stands for it) ends as the contract
/// says, in debug and release builds alike: exit 1, one line saying so — never the panic's own
/// message, which may hold a secret value — and the boot failed in status.json and the history.
#[test]
fn a_panic_mid_boot_exits_1_with_one_line_and_a_failed_status() {
    support::needs_world!();
    let (_name, _repo, imds) = small_service("panic", "test");
    let instance = Instance::exec_mode("");
    let run = instance.run_with(
        &imds,
        &["boot"],
        &[("BOOTAGENT_FAILPOINT", "panic:after-git")],
    );
    assert_eq!(run.code(), 1, "{}", run.stderr());
    let stderr = run.stderr();
    let said: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("panicked"))
        .collect();
    assert_eq!(said.len(), 1, "{stderr}");
    assert!(
        said[0].starts_with("error: internal error: bootagent panicked at src/failpoint.rs:"),
        "{stderr}"
    );
    assert!(!stderr.contains("failpoint after-git"), "{stderr}");

    let status = instance.status();
    assert_eq!(status["outcome"], "failed", "{status}");
    assert_eq!(status["error"]["exit_code"], 1, "{status}");
    let message = status["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("internal error: bootagent panicked at "),
        "{message}"
    );
    assert_eq!(instance.run(&imds, &["status"]).code(), 1);
    let history = instance.run(&imds, &["status", "--history", "--json"]);
    let entries: serde_json::Value = serde_json::from_str(&history.stdout()).unwrap();
    assert_eq!(entries.as_array().unwrap().len(), 1, "{entries}");
    assert_eq!(entries[0]["outcome"], "failed", "{entries}");
    assert_eq!(entries[0]["exit_code"], 1, "{entries}");
}

#[test]
fn an_oversized_metadata_answer_is_refused_without_reading_it_whole() {
    support::needs_world!();
    let instance = Instance::exec_mode("");
    let huge = "a".repeat(2 << 20);
    let imds = Imds::with_tags(&[("Service", &huge), ("Environment", "prod")]);
    failing_boot(
        &instance,
        &imds,
        "any",
        15,
        &["with more than 1048576 bytes", "something other than EC2's"],
        None,
    );
}

#[test]
fn a_nul_in_a_secret_value_is_refused_by_name_before_the_env_file_changes() {
    support::needs_world!();
    let canary = canary();
    let name = unique("nul");
    create_secret(
        &format!("{name}_env_prod"),
        &serde_json::json!({ "OK": canary, "CUT": "before\u{0}after" }).to_string(),
    );
    let instance = Instance::exec_mode("");
    let imds = Imds::with_tags(&[("Service", &name), ("Environment", "prod")]);
    failing_boot(
        &instance,
        &imds,
        &name,
        6,
        &["variable CUT holds a NUL character"],
        Some(&canary),
    );
}

#[test]
fn a_value_no_exec_can_pass_is_refused_by_name_before_the_env_file_changes() {
    support::needs_world!();
    let canary = canary();
    let name = unique("big");
    create_secret(
        &format!("{name}_env_prod"),
        &serde_json::json!({ "OK": canary }).to_string(),
    );
    // Secrets Manager holds at most 64 KiB a secret; the config, or several secrets, hold more.
    let big = "x".repeat(140_000);
    let instance = Instance::exec_mode(&format!("[env.all]\nBIG = \"{big}\"\n"));
    let imds = Imds::with_tags(&[("Service", &name), ("Environment", "prod")]);
    failing_boot(
        &instance,
        &imds,
        &name,
        6,
        &["variable BIG takes 140005 bytes", "at most 131072 bytes"],
        Some(&canary),
    );
}

#[test]
fn numbers_reach_the_service_as_written_and_a_key_given_twice_is_refused() {
    support::needs_world!();
    let service = Service::create();
    let secret = format!("{}_env_test", service.name);
    put_secret_value(
        &secret,
        r#"{"SCI": 1e3, "BIG": 12345678901234567890123, "NEG_ZERO": -0, "PI": 3.10}"#,
    );
    let instance = Instance::exec_mode("");
    let imds = service.imds("test");
    instance.run(&imds, &["boot"]).expect(0);
    let env = instance.service_env();
    assert_eq!(env["SCI"], "1e3");
    assert_eq!(env["BIG"], "12345678901234567890123");
    assert_eq!(env["NEG_ZERO"], "-0");
    assert_eq!(env["PI"], "3.10");

    let canary = canary();
    put_secret_value(
        &secret,
        &format!(r#"{{"TOKEN": "{canary}", "PORT": 1, "TOKEN": "other"}}"#),
    );
    failing_boot(
        &instance,
        &imds,
        &service.name,
        6,
        &["key \"TOKEN\" is given twice"],
        Some(&canary),
    );
}

#[test]
fn imds_down_fails_within_its_deadline() {
    support::needs_world!();
    let instance = Instance::exec_mode("");
    let refusing = RefusingPort::bind();
    let earlier = Earlier::plant(&instance, "any");
    let started = Instant::now();
    let run = Run(instance
        .command(&Imds::with_tags(&[]), &["boot"])
        .env(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            refusing.url("http", ""),
        )
        .output()
        .unwrap());
    let elapsed = started.elapsed();
    run.expect(75)
        .stderr_has("did not answer meta-data/instance-id within")
        .stderr_has("Connection refused");
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    earlier.assert_intact();
}

#[test]
fn git_remote_down_keeps_the_earlier_env_file() {
    support::needs_world!();
    let service = Service::create();
    let instance = Instance::exec_mode("");
    let refusing = RefusingPort::bind();
    let dead_url = refusing.url("git", "/x.git");
    let imds = Imds::for_service(&service.name, "test", &dead_url);
    failing_boot(
        &instance,
        &imds,
        &service.name,
        75,
        &["cannot reach git remote", &dead_url],
        Some(&service.canaries["test"]),
    );
}

#[test]
fn missing_branch_names_remote_and_ref() {
    support::needs_world!();
    let service = Service::create();
    let instance = Instance::exec_mode("[git]\nref = \"release-{env}\"\n");
    let imds = service.imds("prod");
    failing_boot(
        &instance,
        &imds,
        &service.name,
        7,
        &["has no branch or tag release-prod", &service.repo.url],
        Some(&service.canaries["prod"]),
    );
}

#[test]
fn run_dir_on_persistent_disk_is_refused() {
    support::needs_world!();
    let instance = Instance::exec_mode("");
    let on_disk = instance.root.path().join("run");
    let config = std::fs::read_to_string(&instance.config).unwrap().replace(
        &instance.run.path().display().to_string(),
        &on_disk.display().to_string(),
    );
    std::fs::write(&instance.config, config).unwrap();
    let imds = Imds::with_tags(&[("Service", "calendar"), ("Environment", "prod")]);
    instance
        .run(&imds, &["boot"])
        .expect(9)
        .stderr_has("is not on tmpfs or ramfs")
        .stderr_has("allow_persistent_env_file");
    assert!(!on_disk.join("calendar.env").exists());
}

#[test]
fn missing_ca_store_is_named_instead_of_failing_obscurely() {
    support::needs_world!();
    let service = Service::create();
    let instance = Instance::exec_mode("");
    let imds = service.imds("test");
    let earlier = Earlier::plant(&instance, &service.name);
    let run = instance.run_with(
        &imds,
        &["boot"],
        &[
            ("SSL_CERT_FILE", "/nonexistent/ca.pem"),
            ("SSL_CERT_DIR", "/nonexistent"),
        ],
    );
    run.expect(9)
        .stderr_has("no CA certificates were found")
        .stderr_has("ca-certificates");
    earlier.assert_intact();
}

#[test]
fn aws_region_overrides_the_region_from_imds() {
    support::needs_world!();
    let instance = Instance::exec_mode("[secrets]\nmain = \"{service}-{region}\"\n");
    let imds = Imds::with_tags(&[("Service", "calendar"), ("Environment", "test")]);
    let run = instance.run_with(&imds, &["plan"], &[("AWS_REGION", "eu-central-1")]);
    run.expect(0);
    let plan: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    assert_eq!(plan["identity"]["region"], "eu-central-1");
    assert_eq!(plan["secrets"]["main"], "calendar-eu-central-1");
}

#[test]
fn a_boot_killed_midway_is_reported_failed_and_the_next_boot_clears_what_it_left() {
    support::needs_world!();
    let service = Service::create();
    let instance = Instance::exec_mode("");
    // Tags appear late: the boot waits in its first phase, its status saying `running`.
    let imds = Imds::start(serde_json::json!({
        "tags": {"Service": service.name, "Environment": "test", "Repository": service.repo.url},
        "tags_delay": 30,
    }));
    let mut boot = instance.command(&imds, &["boot"]).spawn().unwrap();
    let status_file = instance.run.path().join("status.json");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !status_file.exists() {
        assert!(Instant::now() < deadline, "no status.json");
        std::thread::sleep(Duration::from_millis(20));
    }
    boot.kill().unwrap();
    boot.wait().unwrap();
    assert_eq!(
        instance.status()["outcome"],
        "running",
        "as the killed boot left it"
    );
    // What a kill inside the env-file write leaves: the new values in a temporary file.
    let canary = &service.canaries["test"];
    let left = instance
        .run
        .path()
        .join(format!(".{}.env.tmp-4242", service.name));
    std::fs::write(&left, format!("DB_PASSWORD=\"{canary}\"\n")).unwrap();

    let status = instance.run(&imds, &["status"]);
    status.expect(75);
    assert!(
        status.stdout().starts_with("boot:     failed")
            && status.stdout().contains("ended without finishing"),
        "{}",
        status.stdout()
    );
    let health = instance.run(&imds, &["health-report"]);
    health.expect(12);
    assert!(
        health.stdout().contains("exit code 75"),
        "{}",
        health.stdout()
    );
    let (_, last_boot) = instance.doctor_check(&imds, "last-boot");
    assert_eq!(last_boot["verdict"], "fail", "{last_boot}");

    imds.set(serde_json::json!({ "tags_delay": 0 }));
    instance.run(&imds, &["boot"]).expect(0);
    assert!(!left.exists(), "the temporary file with secrets is gone");
    let history = instance.run(&imds, &["status", "--history"]).stdout();
    assert!(
        history.contains("failed (exit 75)") && history.contains("ended without finishing"),
        "{history}"
    );
}

#[test]
fn a_command_the_service_user_cannot_run_fails_the_boot_before_it_says_succeeded() {
    support::needs_world!();
    let service = Service::create();
    let instance = Instance::exec_mode("");
    let imds = service.imds("test");
    let unexecutable = instance.root.path().join("app");
    std::fs::write(&unexecutable, "#!/bin/sh\necho hi\n").unwrap();
    for (program, reason) in [
        (
            unexecutable.display().to_string(),
            "it is not executable for this user (mode 644)",
        ),
        ("/nonexistent/app".to_string(), "no such file"),
        (
            "no-such-program-x".to_string(),
            "not found in /usr/local/sbin:",
        ),
    ] {
        instance.add_config(
            "70-command.toml",
            &format!("[service]\ncommand = [\"{program}\"]\n"),
        );
        failing_boot(
            &instance,
            &imds,
            &service.name,
            8,
            &[&format!("{program} cannot be run as nobody: {reason}")],
            Some(&service.canaries["test"]),
        );
        let history = instance.run(&imds, &["status", "--history"]).stdout();
        assert!(
            history.lines().last().unwrap().contains("failed (exit 8)"),
            "{history}"
        );
        let phases = &instance.status()["phases"];
        assert_eq!(
            phases.as_array().unwrap().last().unwrap()["name"],
            "command",
            "{phases}"
        );
    }
}

/// A `deploy.pre_start` that starts a migration in the background, records the pids of it and
/// of the step it waits on in the instance's out dir, and waits (its output goes nowhere, so
/// that what survives it holds no pipe of the test's).
fn migrating_hook(instance: &Instance, timeout: &str) -> String {
    format!(
        "[deploy]\nhook_timeout = \"{timeout}\"\npre_start = [\"/bin/sh\", \"-c\", \"exec \
         >/dev/null 2>&1; sleep 300 & echo $! > {out}/background.pid; sleep 300 & echo $! > \
         {out}/foreground.pid; wait\"]\n",
        out = instance.out.display()
    )
}

/// The pids the hook recorded, once it recorded both.
fn hook_pids(instance: &Instance) -> Vec<i32> {
    ["background", "foreground"]
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(instance.out.join(format!("{name}.pid")))
                .unwrap_or_else(|e| panic!("the hook recorded no {name} pid: {e}"));
            text.trim().parse().unwrap()
        })
        .collect()
}

/// A boot that runs while the test looks at what its hook does.
fn boot_in_background(instance: &Instance, imds: &Imds) -> std::process::Child {
    instance
        .command(imds, &["boot"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Whether `pid` is a `sleep` that still runs (a zombie waiting for init runs nothing).
fn sleep_runs(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let (comm, rest) = stat.split_once(") ").unwrap();
    comm.ends_with("(sleep") && !rest.starts_with('Z')
}

#[test]
fn a_hook_past_its_timeout_is_killed_with_all_it_started() {
    support::needs_world!();
    let service = Service::create();
    let instance = Instance::exec_mode("");
    instance.add_config("60-hook.toml", &migrating_hook(&instance, "1s"));
    let imds = service.imds("test");
    let started = Instant::now();
    failing_boot(
        &instance,
        &imds,
        &service.name,
        8,
        &["deploy.pre_start (/bin/sh) did not finish within 1s (deploy.hook_timeout) and was killed"],
        Some(&service.canaries["test"]),
    );
    // SIGTERM ends the sleeps at once: the group's 5 s grace is not needed.
    assert!(started.elapsed() < Duration::from_secs(30));
    for pid in hook_pids(&instance) {
        assert!(!sleep_runs(pid), "the hook's sleep {pid} still runs");
    }
}

#[test]
fn what_a_hook_leaves_running_is_stopped_when_it_exits() {
    support::needs_world!();
    let service = Service::create();
    let instance = Instance::exec_mode("");
    instance.add_config(
        "60-hook.toml",
        &format!(
            "[deploy]\npre_start = [\"/bin/sh\", \"-c\", \"exec >/dev/null 2>&1; sleep 300 & \
             echo $! > {out}/background.pid\"]\n",
            out = instance.out.display()
        ),
    );
    let imds = service.imds("test");
    instance
        .run(&imds, &["boot"])
        .expect(0)
        .stderr_has("the hook left processes running when it exited; they were stopped");
    let pid = std::fs::read_to_string(instance.out.join("background.pid")).unwrap();
    assert!(
        !sleep_runs(pid.trim().parse().unwrap()),
        "its sleep still runs"
    );
}

#[test]
fn a_hook_does_not_outlive_bootagent_told_to_stop() {
    support::needs_world!();
    let service = Service::create();
    let instance = Instance::exec_mode("");
    instance.add_config("60-hook.toml", &migrating_hook(&instance, "5min"));
    let imds = service.imds("test");
    let mut boot = boot_in_background(&instance, &imds);
    support::container::eventually(60, "the hook to start its sleeps", || {
        instance.out.join("foreground.pid").exists()
    });
    let pids = hook_pids(&instance);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(boot.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = boot.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(15),
        "bootagent dies of the signal it was sent: {status}"
    );
    // SIGKILL is delivered at once, but a process dies when next scheduled.
    for pid in pids {
        support::container::eventually(5, &format!("the hook's sleep {pid} to die"), || {
            !sleep_runs(pid)
        });
    }
}

#[test]
fn a_hook_dies_with_bootagent_killed_outright() {
    support::needs_world!();
    let service = Service::create();
    let instance = Instance::exec_mode("");
    // The hook is the migration itself (exec): its own process group is not bootagent's, so a
    // SIGKILL to bootagent (or to its group, as `timeout -s KILL` sends) must reach it another
    // way.
    instance.add_config(
        "60-hook.toml",
        &format!(
            "[deploy]\npre_start = [\"/bin/sh\", \"-c\", \"exec >/dev/null 2>&1; echo $$ > \
             {out}/foreground.pid; exec sleep 300\"]\n",
            out = instance.out.display()
        ),
    );
    let imds = service.imds("test");
    let mut boot = boot_in_background(&instance, &imds);
    let pid_file = instance.out.join("foreground.pid");
    support::container::eventually(60, "the hook to start", || {
        std::fs::read_to_string(&pid_file)
            .is_ok_and(|pid| sleep_runs(pid.trim().parse().unwrap_or(0)))
    });
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    boot.kill().unwrap();
    boot.wait().unwrap();
    support::container::eventually(10, "the hook to die with bootagent", || !sleep_runs(pid));
}

#[test]
fn a_hook_cut_off_by_the_boot_deadline_is_killed_whole() {
    support::needs_world!();
    let service = Service::create();
    let instance = Instance::exec_mode("");
    instance.add_config(
        "60-hook.toml",
        &format!(
            "{}[boot]\ndeadline = \"8s\"\n",
            migrating_hook(&instance, "5min")
        ),
    );
    let imds = service.imds("test");
    failing_boot(
        &instance,
        &imds,
        &service.name,
        75,
        &["did not finish within 8s"],
        Some(&service.canaries["test"]),
    );
    for pid in hook_pids(&instance) {
        assert!(!sleep_runs(pid), "the hook's sleep {pid} still runs");
    }
}

#[test]
fn a_damaged_history_line_is_skipped_and_the_history_goes_on() {
    support::needs_world!();
    let service = Service::create();
    let instance = Instance::exec_mode("");
    let imds = service.imds("test");
    instance.run(&imds, &["boot"]).expect(0);
    let file = instance.root.path().join("state/history.jsonl");
    let mut bytes = std::fs::read(&file).unwrap();
    // A commit that is no hash, with a character of two bytes across byte 12, and a line with
    // a byte that is not UTF-8.
    let foreign = String::from_utf8(bytes.clone())
        .unwrap()
        .replace(&service.repo.commits["test"], "0123456789aé-rewritten");
    bytes.extend_from_slice(foreign.as_bytes());
    bytes.extend_from_slice(b"{\"started_at\": \"\xff\"}\n");
    std::fs::write(&file, bytes).unwrap();

    let history = instance.run(&imds, &["status", "--history"]);
    history.expect(0).stderr_has(&format!(
        "{} line 3 is damaged (not UTF-8, or not JSON): skipped",
        file.display()
    ));
    let lines: Vec<String> = history.stdout().lines().map(String::from).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].contains("0123456789aé (cloned)"), "{lines:?}");

    instance
        .run(&imds, &["boot"])
        .expect(0)
        .stderr_has(&format!(
            "{} line 3 is damaged (not UTF-8, or not JSON): dropped",
            file.display()
        ));
    let history = instance.run(&imds, &["status", "--history"]);
    assert!(!history.expect(0).stderr().contains("damaged"));
    let lines: Vec<String> = history.stdout().lines().map(String::from).collect();
    assert_eq!(lines.len(), 3, "the new boot is recorded: {lines:?}");
    assert!(lines[2].contains("(unchanged)"), "{lines:?}");
}

#[test]
fn a_duration_beyond_any_clock_is_a_usage_error() {
    support::needs_world!();
    let service = Service::create();
    let instance = Instance::exec_mode("[boot]\ndeadline = \"300000000000y\"\n");
    let imds = service.imds("test");
    instance.run(&imds, &["boot"]).expect(2).stderr_has(
        "boot.deadline = \"300000000000years\" is longer than bootagent accepts for any duration \
         (30days at most)",
    );
}

/// A command that passes every check but cannot be executed (its interpreter is missing) fails
/// the boot after status.json said succeeded: the failure replaces that record, in status.json
/// and in the history alike, so the boot is one line there, failed.
#[test]
fn an_exec_that_fails_is_one_failed_boot_in_the_history() {
    support::needs_world!();
    let service = Service::create();
    let instance = Instance::exec_mode("");
    let imds = service.imds("test");
    let orphan = instance.root.path().join("app");
    std::fs::write(&orphan, "#!/nonexistent/interpreter\n").unwrap();
    std::fs::set_permissions(&orphan, std::fs::Permissions::from_mode(0o755)).unwrap();
    instance.add_config(
        "70-command.toml",
        &format!("[service]\ncommand = [\"{}\"]\n", orphan.display()),
    );
    let run = instance.run(&imds, &["boot"]);
    run.expect(8)
        .stderr_has(&format!("failed to run {}", orphan.display()));
    instance.assert_no_canary(&service.canaries["test"], &run);
    let status = instance.status();
    assert_eq!(status["outcome"], "failed", "{status}");
    assert_eq!(status["error"]["exit_code"], 8, "{status}");
    let history = instance
        .run(&imds, &["status", "--history", "--json"])
        .stdout();
    let entries: serde_json::Value = serde_json::from_str(&history).unwrap();
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{history}");
    assert_eq!(entries[0]["outcome"], "failed", "{history}");
    assert_eq!(entries[0]["exit_code"], 8, "{history}");
}

/// The service holds none of root's ids or capabilities: bootagent keeps root as its saved ids
/// until the exec, so that a failed exec can still be recorded, and the exec must drop them.
#[test]
fn the_exec_service_keeps_no_saved_root_ids_or_capabilities() {
    support::needs_world!();
    let service = Service::create();
    let instance = Instance::exec_mode("");
    let imds = service.imds("test");
    let copy = instance.out.join("proc-status");
    instance.add_config(
        "70-command.toml",
        &format!(
            "[service]\ncommand = [\"/bin/sh\", \"-c\", \"cat /proc/self/status > {}\"]\n",
            copy.display()
        ),
    );
    instance.run(&imds, &["boot"]).expect(0);
    let status = std::fs::read_to_string(&copy).expect("the service ran");
    let field = |name: &str| {
        let line = status.lines().find(|line| line.starts_with(name)).unwrap();
        line[name.len()..]
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    assert_eq!(field("Uid:"), vec![nobody.uid.to_string(); 4], "{status}");
    assert_eq!(field("Gid:"), vec![nobody.gid.to_string(); 4], "{status}");
    assert_eq!(field("Groups:"), vec![nobody.gid.to_string()], "{status}");
    for capabilities in ["CapPrm:", "CapEff:", "CapAmb:"] {
        assert_eq!(field(capabilities), vec!["0000000000000000"], "{status}");
    }
}

/// A misspelled placeholder fails the config's load, naming the file and the key, before
/// instance metadata is asked anything.
#[test]
fn a_misspelled_placeholder_fails_the_load_before_metadata_is_asked() {
    support::needs_world!();
    let service = Service::create();
    let instance = Instance::exec_mode("");
    let imds = service.imds("test");
    instance.add_config("70-typo.toml", "[git]\ndir = \"/srv/{servce}\"\n");
    let file = instance.root.path().join("config.d/70-typo.toml");
    instance
        .run(&imds, &["boot"])
        .expect(2)
        .stderr_has(&format!("config file {} is invalid", file.display()))
        .stderr_has("git.dir = \"/srv/{servce}\" uses unknown placeholder {servce}");
    assert_eq!(imds.requests(), Vec::<String>::new());
}
