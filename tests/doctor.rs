//! `bootagent doctor`: for each check, break exactly that link and see it fail with its hint.

use std::collections::BTreeMap;
use std::process::Command;

use bootagent::report::doctor::NEED_IDENTITY;
use support::*;

/// A booted exec-mode instance whose every link works.
struct World {
    name: String,
    repo: SampleRepo,
    instance: Instance,
}

impl World {
    fn booted() -> World {
        let name = unique("doc");
        let repo = SampleRepo::create(&name);
        create_secret(&format!("{name}_env_test"), r#"{"A": "1", "B": "2"}"#);
        let instance = Instance::exec_mode("");
        let world = World {
            name,
            repo,
            instance,
        };
        world.instance.run(&world.imds(), &["boot"]).expect(0);
        world
    }

    fn imds(&self) -> Imds {
        self.imds_with(&[])
    }

    fn imds_with(&self, changes: &[(&str, &str)]) -> Imds {
        let mut tags = BTreeMap::from([
            ("Service", self.name.as_str()),
            ("Environment", "test"),
            ("Repository", self.repo.url.as_str()),
        ]);
        tags.extend(changes.iter().copied());
        Imds::start(serde_json::json!({ "tags": tags }))
    }

    /// Runs doctor --json with `imds` and `env` changes; returns exit code and verdicts.
    fn doctor(&self, imds: &Imds, env: &[(&str, Option<&str>)]) -> (i32, Report) {
        self.doctor_within("4s", imds, env)
    }

    /// Like [`World::doctor`], each check within `timeout`.
    fn doctor_within(
        &self,
        timeout: &str,
        imds: &Imds,
        env: &[(&str, Option<&str>)],
    ) -> (i32, Report) {
        let mut command = self
            .instance
            .command(imds, &["doctor", "--json", "--timeout", timeout]);
        for (key, value) in env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        let run = Run(command.output().unwrap());
        // A debug build survives a panic on another thread that a release build (panic =
        // "abort") dies of.
        assert!(!run.stderr().contains("panicked"), "{}", run.stderr());
        let json: serde_json::Value = serde_json::from_str(&run.stdout())
            .unwrap_or_else(|_| panic!("not JSON: {}\n{}", run.stdout(), run.stderr()));
        validate_against_schema(&run.stdout());
        (run.code(), Report(json))
    }
}

/// The checks of what an exec-mode instance with the default config does not have: a unit,
/// replica regions, git mirrors, a seed.
const NOT_CONFIGURED: [&str; 4] = ["unit", "replicas", "mirrors", "seed"];

struct Report(serde_json::Value);

impl Report {
    fn check(&self, name: &str) -> &serde_json::Value {
        self.0["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name} in {}", self.0))
    }

    fn verdict(&self, name: &str) -> &str {
        self.check(name)["verdict"].as_str().unwrap()
    }

    fn verdicts(&self) -> BTreeMap<String, String> {
        self.0["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_string(),
                    c["verdict"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// `name` failed, its hint contains `hint`, and every check not in `affected` passed.
    fn only_fails(&self, name: &str, hint: &str, affected: &[&str]) {
        assert_eq!(self.verdict(name), "fail", "{}", self.0);
        let given = self.check(name)["hint"].as_str().unwrap_or_default();
        assert!(
            given.contains(hint),
            "{name}'s hint {given:?} lacks {hint:?}"
        );
        for (check, verdict) in self.verdicts() {
            if check != name && !affected.contains(&check.as_str()) {
                assert!(
                    verdict == "ok"
                        || (NOT_CONFIGURED.contains(&check.as_str()) && verdict == "skip"),
                    "{check} should pass when only {name} is broken: {}",
                    self.0
                );
            }
        }
    }
}

fn validate_against_schema(json: &str) {
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/doctor.schema.json");
    let out = Command::new(world("PYTHON"))
        .args([
            "-c",
            "import json, sys, jsonschema; \
             jsonschema.validate(json.loads(sys.stdin.read()), json.load(open(sys.argv[1])))",
            schema,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(json.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "doctor --json does not match its schema: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_working_chain_passes_every_check() {
    support::needs_world!();
    let world = World::booted();
    let (code, report) = world.doctor(&world.imds(), &[]);
    assert_eq!(code, 0, "{}", report.0);
    for (check, verdict) in report.verdicts() {
        let expected = match NOT_CONFIGURED.contains(&check.as_str()) {
            true => "skip",
            false => "ok",
        };
        assert_eq!(verdict, expected, "{check}: {}", report.0);
    }
    assert!(report.check("secret")["detail"]
        .as_str()
        .unwrap()
        .contains("2 variable(s)"));

    let text = world.instance.run(&world.imds(), &["doctor"]);
    text.expect(0);
    assert!(
        text.stdout().ends_with("all checks passed\n"),
        "{}",
        text.stdout()
    );
}

#[test]
fn imds_refusing_connections_is_not_blamed_on_the_hop_limit() {
    support::needs_world!();
    let world = World::booted();
    let refusing = RefusingPort::bind();
    let dead = refusing.url("http", "");
    let (code, report) = world.doctor(
        &world.imds(),
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", Some(&dead))],
    );
    assert_eq!(code, 13);
    let dependent = [["tags", "identity"].as_slice(), &NEED_IDENTITY].concat();
    report.only_fails(
        "imds",
        "nothing listens at the metadata address",
        &dependent,
    );
    assert!(
        report.check("identity")["hint"]
            .as_str()
            .unwrap()
            .contains("fix what the imds check reports first"),
        "{}",
        report.0
    );
    assert_eq!(report.verdict("git"), "skip");
}

#[test]
fn disabled_tags_fail_the_tags_check() {
    support::needs_world!();
    let world = World::booted();
    let imds = Imds::start(serde_json::json!({ "tags": null }));
    let (code, report) = world.doctor(&imds, &[]);
    assert_eq!(code, 13);
    let dependent = [["identity"].as_slice(), &NEED_IDENTITY].concat();
    report.only_fails("tags", "--instance-metadata-tags enabled", &dependent);
}

#[test]
fn an_unknown_environment_fails_the_identity_check() {
    support::needs_world!();
    let world = World::booted();
    let (_, report) = world.doctor(&world.imds_with(&[("Environment", "qa")]), &[]);
    report.only_fails("identity", "Environment tags", &NEED_IDENTITY);
}

#[test]
fn missing_credentials_fail_the_credentials_check() {
    support::needs_world!();
    let world = World::booted();
    let (_, report) = world.doctor(
        &world.imds(),
        &[("AWS_ACCESS_KEY_ID", None), ("AWS_SECRET_ACCESS_KEY", None)],
    );
    // Without credentials the secret cannot be read either, nor the clock compared.
    report.only_fails(
        "credentials",
        "instance profile",
        &["secret", "isolation", "clock"],
    );
}

#[test]
fn a_missing_secret_fails_the_secret_check() {
    support::needs_world!();
    let world = World::booted();
    let (_, report) = world.doctor(&world.imds(), &[]);
    assert_eq!(report.verdict("secret"), "ok");
    let instance = &world.instance;
    instance.add_config(
        "70-secret.toml",
        "[secrets]\nmain = \"{service}_env_{env}_missing\"\n",
    );
    let (code, report) = world.doctor(&world.imds(), &[]);
    assert_eq!(code, 13);
    // The snapshot holds the secret the config named before: a warning.
    report.only_fails(
        "secret",
        "secretsmanager:GetSecretValue",
        &["env-file", "snapshot"],
    );
    assert_eq!(report.verdict("snapshot"), "warn");
}

#[test]
fn a_readable_secret_of_another_environment_is_a_loud_warning() {
    support::needs_world!();
    let world = World::booted();
    create_secret(&format!("{}_env_prod", world.name), r#"{"A": "prod"}"#);
    let (code, report) = world.doctor(&world.imds(), &[]);
    assert_eq!(code, 0, "a warning does not fail");
    assert_eq!(report.verdict("isolation"), "warn");
    let detail = report.check("isolation")["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("{}_env_prod (prod)", world.name)),
        "{detail}"
    );
}

#[test]
fn a_skewed_clock_fails_the_clock_check() {
    support::needs_world!();
    let world = World::booted();
    let ahead = AwsError::start_skewed("InternalServiceError", 500, "down", 600);
    let (_, report) = world.doctor(&world.imds(), &[("AWS_ENDPOINT_URL", Some(&ahead.url))]);
    assert_eq!(report.verdict("clock"), "fail", "{}", report.0);
    let hint = report.check("clock")["hint"].as_str().unwrap();
    assert!(hint.contains("Amazon Time Sync"), "{hint}");
}

#[test]
fn an_unreachable_remote_fails_the_git_check() {
    support::needs_world!();
    let world = World::booted();
    let refusing = RefusingPort::bind();
    let dead = refusing.url("git", "/x.git");
    let (_, report) = world.doctor(&world.imds_with(&[("Repository", &dead)]), &[]);
    report.only_fails("git", "check the remote", &[]);
}

#[test]
fn a_readable_env_file_fails_the_env_file_check() {
    support::needs_world!();
    use std::os::unix::fs::PermissionsExt;
    let world = World::booted();
    let env_file = world.instance.env_file(&world.name);
    std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (_, report) = world.doctor(&world.imds(), &[]);
    report.only_fails("env-file", "chmod 600", &[]);
}

#[test]
fn low_free_space_fails_the_disk_check() {
    support::needs_world!();
    let world = World::booted();
    let run_dir = world.instance.run.path();
    // Keep the boot's files: mount a tiny tmpfs over the run dir with copies of them.
    let saved = tempfile::tempdir_in("/dev/shm").unwrap();
    for entry in std::fs::read_dir(run_dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), saved.path().join(entry.file_name())).unwrap();
    }
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=755", "tmpfs"])
        .arg(run_dir)
        .status()
        .unwrap();
    assert!(mounted.success());
    for entry in std::fs::read_dir(saved.path()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), run_dir.join(entry.file_name())).unwrap();
    }
    std::fs::set_permissions(
        world.instance.env_file(&world.name),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let (_, report) = world.doctor(&world.imds(), &[]);
    let _ = Command::new("umount").arg(run_dir).status();
    report.only_fails("disk", "free space on", &[]);
}

#[test]
fn a_failed_last_boot_fails_the_last_boot_check() {
    support::needs_world!();
    let world = World::booted();
    let unknown = world.imds_with(&[("Environment", "qa")]);
    world.instance.run(&unknown, &["boot"]).expect(3);
    let (_, report) = world.doctor(&world.imds(), &[]);
    report.only_fails("last-boot", "then bootagent boot", &[]);
}

#[test]
fn a_remote_that_drips_ends_the_git_check_within_its_timeout() {
    support::needs_world!();
    let world = World::booted();
    world
        .instance
        .add_config("60-git.toml", "[git]\ntimeout = \"60s\"\n");
    let remote = DripRemote::start(false);
    let started = std::time::Instant::now();
    let (_, report) = world.doctor(&world.imds_with(&[("Repository", &remote.url)]), &[]);
    let took = started.elapsed();
    // --timeout 4s; the remote drips for 60 s and git.timeout waits 60 s for a byte.
    assert!(
        took < std::time::Duration::from_secs(20),
        "doctor took {took:?}"
    );
    report.only_fails("git", "slow or unreachable", &[]);
}

#[test]
fn isolation_is_not_called_ok_when_secrets_manager_cannot_be_asked() {
    support::needs_world!();
    let world = World::booted();
    let refusing = RefusingPort::bind();
    // Each probe is retried by the SDK (about a second each): time enough, however loaded the
    // machine, for the verdict rather than the check's timeout to speak.
    let (_, report) = world.doctor_within(
        "60s",
        &world.imds(),
        &[(
            "AWS_ENDPOINT_URL_SECRETS_MANAGER",
            Some(&refusing.url("http", "")),
        )],
    );
    assert_eq!(report.verdict("secret"), "fail", "{}", report.0);
    assert_eq!(report.verdict("isolation"), "warn", "{}", report.0);
    let detail = report.check("isolation")["detail"].as_str().unwrap();
    assert!(detail.contains("could not tell"), "{detail}");
}

#[test]
fn a_small_tmpfs_run_dir_has_room_enough() {
    support::needs_world!();
    let world = World::booted();
    let run_dir = world.instance.run.path();
    let mounted = SmallTmpfs::mount(run_dir, "4m");
    let (_, report) = world.doctor(&world.imds(), &[]);
    drop(mounted);
    assert_eq!(report.verdict("disk"), "ok", "{}", report.0);
}

#[test]
fn an_http_remote_that_stalls_or_drips_ends_doctor_cleanly_within_its_timeout() {
    support::needs_world!();
    let world = World::booted();
    world
        .instance
        .add_config("60-git.toml", "[git]\ntimeout = \"60s\"\n");
    let dripping = DripRemote::start(true);
    let silent = silent_listener();
    let stalled = format!("http://{}/app.git", silent.local_addr().unwrap());
    // The git check's HTTP transport ran on a runtime being shut down in about 6 runs of 10:
    // ten runs of each would not all have passed.
    for url in [&dripping.url, &stalled] {
        let imds = world.imds_with(&[("Repository", url)]);
        for _ in 0..10 {
            let started = std::time::Instant::now();
            let (code, report) = world.doctor_within("2s", &imds, &[]);
            let took = started.elapsed();
            assert_eq!(code, 13, "{}", report.0);
            assert!(
                took < std::time::Duration::from_secs(4),
                "doctor --timeout 2s took {took:?} against {url}"
            );
            report.only_fails("git", "slow or unreachable", &[]);
        }
    }
}

#[test]
fn a_stalled_imds_ends_doctor_within_its_timeout() {
    support::needs_world!();
    let world = World::booted();
    let imds = world.imds();
    imds.set(serde_json::json!({ "delay": 30 }));
    let started = std::time::Instant::now();
    let (code, report) = world.doctor_within("3s", &imds, &[]);
    let took = started.elapsed();
    assert_eq!(code, 13);
    // The identity checks once ran one after another, 3 s each: 9 s.
    assert!(
        took < std::time::Duration::from_secs(5),
        "doctor --timeout 3s took {took:?}"
    );
    for name in ["imds", "tags", "identity"] {
        assert_eq!(report.verdict(name), "fail", "{}", report.0);
    }
    assert_eq!(report.verdict("disk"), "ok", "{}", report.0);
    assert_eq!(report.verdict("last-boot"), "ok", "{}", report.0);
}

#[test]
fn the_fallbacks_are_looked_at_as_a_boot_would_use_them() {
    support::needs_world!();
    let world = World::booted();
    let refusing = RefusingPort::bind();
    let dead = refusing.url("git", "/mirror.git");
    world.instance.add_config(
        "50-fallbacks.toml",
        &format!(
            "[secrets]\nregions = [\"us-west-2\"]\n[git]\nmirrors = [{:?}, {dead:?}]\n",
            world.repo.url
        ),
    );
    let (code, report) = world.doctor(&world.imds(), &[]);
    assert_eq!(code, 0, "warnings only: {}", report.0);
    let snapshot = report.check("snapshot");
    assert_eq!(snapshot["verdict"], "ok", "{snapshot}");
    let detail = snapshot["detail"].as_str().unwrap();
    assert!(
        detail.contains("decrypts on this host, holds the 1 secret(s) a boot reads"),
        "{detail}"
    );
    // The secret was never replicated: a boot would meet that "no" in the replica.
    let replicas = report.check("replicas");
    assert_eq!(replicas["verdict"], "warn", "{replicas}");
    assert!(
        replicas["detail"]
            .as_str()
            .unwrap()
            .contains("us-west-2: secret"),
        "{replicas}"
    );
    assert!(
        (replicas["hint"].as_str().unwrap()).contains("replicate-secret-to-regions"),
        "{replicas}"
    );
    // The working mirror is listed; the dead one is named.
    let mirrors = report.check("mirrors");
    assert_eq!(mirrors["verdict"], "warn", "{mirrors}");
    let detail = mirrors["detail"].as_str().unwrap();
    assert!(detail.starts_with(&dead), "{detail}");
    assert!(!detail.contains(&world.repo.url), "{detail}");

    // Without a snapshot, doctor says what a boot in an outage would meet.
    std::fs::remove_file(world.instance.root.path().join("state/secrets.snapshot")).unwrap();
    let (_, report) = world.doctor(&world.imds(), &[]);
    let snapshot = report.check("snapshot");
    assert_eq!(snapshot["verdict"], "warn", "{snapshot}");
    assert!(
        (snapshot["detail"].as_str().unwrap())
            .contains("a boot while Secrets Manager does not answer fails"),
        "{snapshot}"
    );
    world.instance.add_config(
        "60-no-snapshot.toml",
        "[secrets]\nsnapshot_max_age = \"0s\"\n",
    );
    let (_, report) = world.doctor(&world.imds(), &[]);
    assert_eq!(report.verdict("snapshot"), "skip");
}
