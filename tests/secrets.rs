//! Secrets to environment: several secrets, version pinning, the dotenv format, exact round
//! trips of generated nasty values, and the failure paths (denied, full tmpfs).

use std::collections::BTreeMap;
use std::process::Command;

use support::*;

fn repo_and_imds(name: &str, env_tag: &str) -> (SampleRepo, Imds) {
    let repo = SampleRepo::create(name);
    let imds = Imds::for_service(name, env_tag, &repo.url);
    (repo, imds)
}

/// The env file as python-dotenv reads it (interpolation off: see README on the dotenv format).
fn read_with_python_dotenv(path: &std::path::Path) -> BTreeMap<String, String> {
    let out = Command::new(world("PYTHON"))
        .args([
            "-c",
            "import json, sys; from dotenv import dotenv_values; \
             print(json.dumps(dotenv_values(sys.argv[1], interpolate=False)))",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn taskmanager_layout_maps_plain_secrets_to_variables() {
    support::needs_world!();
    let name = unique("tm");
    let (_repo, imds) = repo_and_imds(&name, "production");
    let db = canary();
    let jwt = canary();
    create_secret(
        &format!("{name}/production/database-url"),
        &format!("postgres://u:{db}@h/db"),
    );
    create_secret(
        &format!("{name}/production/app"),
        &format!("{{\"jwt\": \"{jwt}\", \"other\": [1]}}"),
    );
    let instance = Instance::exec_mode(&format!(
        "[secrets]\nmain = \"\"\n[secrets.vars]\n\
         DATABASE_URL = \"{name}/{{env_tag}}/database-url\"\n\
         JWT_SECRET_KEY = \"{name}/{{env_tag}}/app#jwt\"\n"
    ));
    let run = instance.run(&imds, &["boot"]);
    run.expect(0);
    let received = instance.service_env();
    assert_eq!(received["DATABASE_URL"], format!("postgres://u:{db}@h/db"));
    assert_eq!(received["JWT_SECRET_KEY"], jwt);
    let status = instance.status();
    let ids: Vec<&str> = status["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(status["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["version_id"].is_string()));
    instance.assert_no_canary(&db, &run);
    instance.assert_no_canary(&jwt, &run);
}

#[test]
fn a_variable_from_two_sources_names_both() {
    support::needs_world!();
    let name = unique("dup");
    let (_repo, imds) = repo_and_imds(&name, "test");
    create_secret(&format!("{name}_env_test"), r#"{"DATABASE_URL": "a"}"#);
    create_secret(&format!("{name}-db"), "b");
    let instance = Instance::exec_mode(&format!("[secrets.vars]\nDATABASE_URL = \"{name}-db\"\n"));
    instance
        .run(&imds, &["boot"])
        .expect(6)
        .stderr_has(&format!(
            "variable DATABASE_URL is set both by secret {name}_env_test and by secrets.vars ({name}-db)"
        ));
}

#[test]
fn a_missing_json_field_is_named() {
    support::needs_world!();
    let name = unique("field");
    let (_repo, imds) = repo_and_imds(&name, "test");
    create_secret(&format!("{name}_env_test"), r#"{"A": "1"}"#);
    create_secret(&format!("{name}-app"), r#"{"jwt": "x"}"#);
    let instance = Instance::exec_mode(&format!("[secrets.vars]\nKEY = \"{name}-app#jwt_key\"\n"));
    instance
        .run(&imds, &["boot"])
        .expect(6)
        .stderr_has(&format!("secret {name}-app has no field \"jwt_key\""));
}

#[test]
fn version_id_pins_the_main_secret() {
    support::needs_world!();
    let name = unique("pin");
    let (_repo, imds) = repo_and_imds(&name, "stage");
    let secret = format!("{name}_env_stage");
    let first = create_secret(&secret, r#"{"RELEASE": "one"}"#);
    let second = put_secret_value(&secret, r#"{"RELEASE": "two"}"#);

    let current = Instance::exec_mode("");
    current.run(&imds, &["boot"]).expect(0);
    assert_eq!(current.service_env()["RELEASE"], "two");
    assert_eq!(
        current.status()["secrets"][0]["version_id"],
        second.as_str()
    );

    let pinned = Instance::exec_mode(&format!("[secrets]\nversion_id = \"{first}\"\n"));
    pinned.run(&imds, &["boot"]).expect(0);
    assert_eq!(pinned.service_env()["RELEASE"], "one");
    assert_eq!(pinned.status()["secrets"][0]["version_id"], first.as_str());

    let previous = Instance::exec_mode("[secrets]\nversion_stage = \"AWSPREVIOUS\"\n");
    previous.run(&imds, &["boot"]).expect(0);
    assert_eq!(previous.service_env()["RELEASE"], "one");

    let unknown =
        Instance::exec_mode("[secrets]\nversion_id = \"00000000-0000-0000-0000-000000000000\"\n");
    unknown
        .run(&imds, &["boot"])
        .expect(5)
        .stderr_has("with VersionId 00000000-0000-0000-0000-000000000000");
}

#[test]
fn dotenv_values_round_trip_through_python_dotenv() {
    support::needs_world!();
    let mut rng = Rng::from_env();
    let name = unique("dotenv");
    let (_repo, imds) = repo_and_imds(&name, "test");
    let secret = format!("{name}_env_test");
    create_secret(&secret, "{}");
    let instance = Instance::exec_mode("[secrets]\nformat = \"dotenv\"\n");
    for round in 0..100 {
        let values = rng.nasty_map(12, false);
        put_secret_value(&secret, &serde_json::to_string(&values).unwrap());
        instance.run(&imds, &["boot"]).expect(0);
        let mut parsed = read_with_python_dotenv(&instance.env_file(&name));
        assert_eq!(parsed.remove("BOOTAGENT_ENV").as_deref(), Some("test"));
        assert_eq!(
            parsed.remove("BOOTAGENT_SERVICE").as_deref(),
            Some(name.as_str())
        );
        assert_eq!(parsed, values, "round {round}");
        let received = instance.service_env();
        for (key, value) in &values {
            assert_eq!(
                &received[key], value,
                "round {round}: {key} as the service got it"
            );
        }
    }
}

#[test]
fn dotenv_refuses_a_carriage_return_by_name_and_keeps_the_earlier_file() {
    support::needs_world!();
    let name = unique("dotcr");
    let (_repo, imds) = repo_and_imds(&name, "test");
    let canary = canary();
    create_secret(
        &format!("{name}_env_test"),
        &format!("{{\"LINE\": \"{canary}\\r\\n\"}}"),
    );
    let instance = Instance::exec_mode("[secrets]\nformat = \"dotenv\"\n");
    let earlier = instance.env_file(&name);
    std::fs::write(&earlier, "OLD='kept'\n").unwrap();
    let run = instance.run(&imds, &["boot"]);
    run.expect(6)
        .stderr_has("variable LINE holds a carriage return");
    instance.assert_no_canary(&canary, &run);
    assert_eq!(std::fs::read_to_string(&earlier).unwrap(), "OLD='kept'\n");
}

#[test]
fn access_denied_is_reported_with_the_fix_and_keeps_the_earlier_file() {
    support::needs_world!();
    let moto = Moto::start_private();
    let name = unique("denied");
    let (_repo, imds) = repo_and_imds(&name, "prod");
    moto.create_secret(&format!("{name}_env_prod"), r#"{"A": "1"}"#);
    moto.require_auth();
    let instance = Instance::exec_mode("");
    let earlier = instance.env_file(&name);
    std::fs::write(&earlier, "OLD=\"kept\"\n").unwrap();
    let run = instance.run_with(&imds, &["boot"], &[("AWS_ENDPOINT_URL", moto.url.as_str())]);
    run.expect(5)
        .stderr_has(&format!(
            "reading secret {name}_env_prod in region us-east-1 was denied"
        ))
        .stderr_has("secretsmanager:GetSecretValue");
    assert_eq!(std::fs::read_to_string(&earlier).unwrap(), "OLD=\"kept\"\n");
}

#[test]
fn a_full_tmpfs_keeps_the_earlier_env_file_and_says_so() {
    support::needs_world!();
    let name = unique("full");
    let (_repo, imds) = repo_and_imds(&name, "test");
    let big = "x".repeat(48 * 1024);
    create_secret(
        &format!("{name}_env_test"),
        &format!("{{\"BIG\": \"{big}\"}}"),
    );
    let instance = Instance::exec_mode("");
    let run_dir = instance.run.path();
    let mounted = SmallTmpfs::mount(run_dir, "64k");
    let earlier = instance.env_file(&name);
    std::fs::write(&earlier, format!("OLD=\"{}\"\n", "k".repeat(20 * 1024))).unwrap();
    let before = std::fs::read(&earlier).unwrap();
    let run = instance.run(&imds, &["boot"]);
    run.expect(9)
        .stderr_has(&format!("failed to write {}", earlier.display()))
        .stderr_has("No space left on device");
    assert_eq!(std::fs::read(&earlier).unwrap(), before);
    let leftovers: Vec<_> = std::fs::read_dir(run_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    drop(mounted);
}

#[test]
fn refresh_in_exec_mode_says_what_to_do_instead() {
    support::needs_world!();
    let instance = Instance::exec_mode("");
    let imds = Imds::with_tags(&[("Service", "calendar"), ("Environment", "test")]);
    instance
        .run(&imds, &["refresh"])
        .expect(2)
        .stderr_has("refresh restarts services under systemd");
}

#[test]
fn throttling_is_retried_then_reported_as_transient() {
    support::needs_world!();
    let name = unique("throttled");
    let (_repo, imds) = repo_and_imds(&name, "test");
    let throttling = AwsError::start("ThrottlingException", 400, "Rate exceeded");
    // Throttling is tried again for as long as the boot deadline leaves room for one more call
    // (secrets.timeout): short ones here.
    let instance = Instance::exec_mode("[secrets]\ntimeout = \"2s\"\n[boot]\ndeadline = \"10s\"\n");
    let earlier = instance.env_file(&name);
    std::fs::write(&earlier, "OLD=\"kept\"\n").unwrap();
    let run = instance.run_with(
        &imds,
        &["boot"],
        &[("AWS_ENDPOINT_URL", throttling.url.as_str())],
    );
    run.expect(75)
        .stderr_has(&format!(
            "Secrets Manager did not return secret {name}_env_test in region us-east-1"
        ))
        .stderr_has("ThrottlingException: Rate exceeded")
        .stderr_has(&format!("({} attempts over ", throttling.calls()));
    assert!(
        throttling.calls() >= 3,
        "retried: {} calls",
        throttling.calls()
    );
    assert_eq!(std::fs::read_to_string(&earlier).unwrap(), "OLD=\"kept\"\n");
}

#[test]
fn env_diff_names_variables_one_environment_lacks_without_values() {
    support::needs_world!();
    let name = unique("parity");
    let canary = canary();
    create_secret(
        &format!("{name}_env_stage"),
        &serde_json::json!({"DB_URL": canary, "NEW_FLAG": canary, "SHARED": "1"}).to_string(),
    );
    create_secret(
        &format!("{name}_env_prod"),
        &serde_json::json!({"DB_URL": canary, "LEGACY_KEY": canary, "SHARED": "2"}).to_string(),
    );
    create_secret(
        &format!("{name}_env_test"),
        &serde_json::json!({"DB_URL": "x", "SHARED": "y", "NEW_FLAG": "z"}).to_string(),
    );
    let instance = Instance::exec_mode("");
    let imds = Imds::with_tags(&[("Service", &name), ("Environment", "test")]);

    let run = instance.run(&imds, &["env", "diff", "staging", "production"]);
    run.expect(11);
    assert_eq!(
        run.stdout(),
        format!(
            "service {name}: 2 variable(s) in both staging and production (delivered as env)\n\
             only in staging: NEW_FLAG\nonly in production: LEGACY_KEY\n"
        )
    );
    instance.assert_no_canary(&canary, &run);

    let json = instance.run(&imds, &["env", "diff", "stage", "prod", "--json"]);
    let comparison: serde_json::Value = serde_json::from_str(&json.stdout()).unwrap();
    assert_eq!(comparison["only_in_a"], serde_json::json!(["NEW_FLAG"]));
    assert_eq!(comparison["only_in_b"], serde_json::json!(["LEGACY_KEY"]));

    instance
        .run(&imds, &["env", "diff", "test", "stage"])
        .expect(0);
    instance
        .run(&imds, &["env", "diff", "test", "qa"])
        .expect(2)
        .stderr_has("env diff: \"qa\" names no environment; use one of: prod (prod, production)");
}

#[test]
fn a_kms_decryption_failure_names_the_permission() {
    support::needs_world!();
    let name = unique("kms");
    let (_repo, imds) = repo_and_imds(&name, "prod");
    let kms = AwsError::start(
        "DecryptionFailure",
        400,
        "Secrets Manager can't decrypt the protected secret text using the provided KMS key.",
    );
    let instance = Instance::exec_mode("");
    let run = instance.run_with(&imds, &["boot"], &[("AWS_ENDPOINT_URL", kms.url.as_str())]);
    run.expect(5)
        .stderr_has(&format!(
            "secret {name}_env_prod in region us-east-1 could not be decrypted"
        ))
        .stderr_has("kms:Decrypt");
    assert_eq!(kms.calls(), 1, "a permanent error is not retried");
}

#[test]
fn the_service_receives_its_public_endpoint() {
    support::needs_world!();
    let name = unique("endpoint");
    let (_repo, imds) = repo_and_imds(&name, "production");
    create_secret(&format!("{name}_env_prod"), r#"{"A": "1"}"#);
    let instance = Instance::exec_mode(
        "[service]\nendpoint = \"https://{env}.domain.com/{service}\"\n\
         [service.endpoints]\nprod = \"https://domain.com/{service}\"\n",
    );
    instance.run(&imds, &["boot"]).expect(0);
    assert_eq!(
        instance.service_env()["BOOTAGENT_ENDPOINT"],
        format!("https://domain.com/{name}")
    );
}
