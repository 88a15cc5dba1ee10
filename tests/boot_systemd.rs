//! `bootagent boot` in systemd mode against a real systemd (PID 1 of an nspawn container), with
//! moto, the git daemon and the IMDS fake reached over the shared loopback.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use support::container::{eventually, Container};
use support::*;

const CONFIG: &str = r#"[identity]
tag_wait = "2s"

[service]
user = "nobody"
start_timeout = "20s"
# Shorter than the default 2 s: some tests boot a hundred times.
settle = "100ms"
"#;

#[test]
fn each_environment_runs_under_systemd_with_its_env_file_and_checkout() {
    support::needs_world!();
    let container = Container::boot(CONFIG);
    for (tag, env) in [("test", "test"), ("staging", "stage"), ("prod", "prod")] {
        boot_one_environment(&container, tag, env);
    }
}

/// Boots a fresh service for `env` in `container` and checks what its unit received; then boots
/// again and checks that nothing was restarted.
fn boot_one_environment(container: &Container, tag: &str, env: &str) {
    let name = unique("sd");
    let repo = SampleRepo::create(&name);
    let canary = canary();
    create_secret(
        &format!("{name}_env_{env}"),
        &serde_json::json!({"DB_PASSWORD": canary, "PEM": "-----BEGIN-----\nabc\n-----END-----"})
            .to_string(),
    );
    let imds = Imds::for_service(&name, tag, &repo.url);
    let unit = format!("{name}.service");
    let out = format!("/share/out/{name}");
    container.sh(&format!("mkdir -m 777 {out}"));
    container.install_unit(&unit, &format!("ExecStart=/share/recorder.sh {out} --stay"));

    let run = container.bootagent(&imds, &["boot"]);
    run.expect(0);

    assert_eq!(container.show(&unit, "ActiveState"), "active");
    let drop_in = format!("/run/systemd/system/{unit}.d/50-bootagent.conf");
    assert!(
        container.show(&unit, "DropInPaths").contains(&drop_in),
        "drop-in listed"
    );
    let env_mode = container.sh(&format!("stat -c %a:%U /run/bootagent/{name}.env"));
    assert_eq!(env_mode.trim(), "600:root");

    let host_out = container.out().join("out").join(&name);
    let raw = std::fs::read(host_out.join("env")).expect("the unit ran");
    let received: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|e| String::from_utf8_lossy(e).into_owned())
        .collect();
    for expected in [
        format!("DB_PASSWORD={canary}"),
        "PEM=-----BEGIN-----\nabc\n-----END-----".to_string(),
        format!("BOOTAGENT_ENV={env}"),
        format!("BOOTAGENT_SERVICE={name}"),
    ] {
        assert!(
            received.contains(&expected),
            "{expected:?} not in {received:?}"
        );
    }
    let saw = |file: &str| {
        std::fs::read_to_string(host_out.join(file))
            .unwrap()
            .trim()
            .to_string()
    };
    // The unit runs in the release the link pointed at when it started.
    assert_eq!(
        saw("cwd"),
        format!("/srv/.{name}/releases/{}", repo.commits[env])
    );
    assert_eq!(saw("uid"), NOBODY_UID);
    assert_eq!(saw("version"), format!("{env} build 1"));
    let head = container.sh(&format!("basename $(readlink /srv/{name})"));
    assert_eq!(head.trim(), repo.commits[env]);

    // A second boot with nothing changed leaves the running service alone.
    let pid = container.show(&unit, "MainPID");
    container.bootagent(&imds, &["boot"]).expect(0);
    assert_eq!(container.show(&unit, "MainPID"), pid);
    let status: serde_json::Value =
        serde_json::from_str(&container.sh("cat /run/bootagent/status.json")).unwrap();
    assert_eq!(status["service"]["state"], "active");
    assert_eq!(status["service"]["restarted"], false);

    let journal = container.sh("journalctl --no-pager -o cat");
    assert_no_canary(
        &canary,
        &[
            ("stdout", &run.stdout()),
            ("stderr", &run.stderr()),
            ("journal", &journal),
            ("status.json", &status.to_string()),
        ],
    );
}

#[test]
fn a_unit_that_cannot_start_is_reported_with_exit_code_8() {
    support::needs_world!();
    let (name, _repo, imds) = small_service("sdfail", "test");
    let container = Container::boot(CONFIG);
    let unit = format!("{name}.service");
    container.install_unit(&unit, "Type=exec\\nExecStart=/nonexistent/service");
    container
        .bootagent(&imds, &["boot"])
        .expect(8)
        .stderr_has(&format!("systemctl restart {unit}"));
    let status: serde_json::Value =
        serde_json::from_str(&container.sh("cat /run/bootagent/status.json")).unwrap();
    assert_eq!(status["outcome"], "failed");
    assert_eq!(status["error"]["exit_code"], 8);
}

#[test]
fn a_unit_that_exits_right_after_starting_fails_the_boot() {
    support::needs_world!();
    let (name, _repo, imds) = small_service("sdcrash", "test");
    let container = Container::boot(CONFIG);
    std::fs::create_dir(container.out().join("config.d")).unwrap();
    std::fs::write(
        container.out().join("config.d/60-settle.toml"),
        "[service]\nsettle = \"2s\"\n",
    )
    .unwrap();
    let unit = format!("{name}.service");
    // Type=simple: systemd calls it started at the fork, so it is active for a moment.
    container.install_unit(&unit, "ExecStart=/bin/sleep 0.2");
    container
        .bootagent(&imds, &["boot"])
        .expect(8)
        .stderr_has(&format!("{unit} started but did not stay up: within 2s"))
        .stderr_has("journalctl -u");

    // With Restart=, systemd brings it back each time; the restarts give it away.
    container.install_unit(
        &unit,
        "ExecStart=/bin/sleep 0.2\nRestart=always\nRestartSec=0",
    );
    let run = container.bootagent(&imds, &["boot"]);
    run.expect(8)
        .stderr_has("did not stay up")
        .stderr_has("and systemd restarted it");
    let status: serde_json::Value =
        serde_json::from_str(&container.sh("cat /run/bootagent/status.json")).unwrap();
    assert_eq!(status["error"]["exit_code"], 8);
}

/// Git fetches from a slow remote while the secrets are read; the secret is gone, so the boot
/// fails with the secrets' error, and the link, the env file and the unit are as they were
/// though the remote has a new commit.
#[test]
fn secrets_that_fail_while_git_fetches_leave_what_serves_as_it_was() {
    support::needs_world!();
    let name = unique("sdslow");
    let mut repo = SampleRepo::create(&name);
    let token = canary();
    let server = GitHttp::start_slow("deploy", &token, std::time::Duration::from_secs(1));
    let secret = format!("{name}_env_prod");
    create_secret(&secret, r#"{"A": "1"}"#);
    let container = Container::boot(&format!(
        "{CONFIG}\n[git]\ntoken = \"/share/git-token\"\nusername = \"deploy\"\n\
         token_hosts = [\"{}\"]\n",
        server.url
    ));
    std::fs::write(container.out().join("git-token"), &token).unwrap();
    let imds = Imds::for_service(&name, "prod", &server.repo_url(&name));
    let unit = format!("{name}.service");
    container.sh(&format!("mkdir -m 777 /share/out/{name}"));
    container.install_unit(
        &unit,
        &format!("ExecStart=/share/recorder.sh /share/out/{name} --stay"),
    );
    container.bootagent(&imds, &["boot"]).expect(0);
    let env_file = format!("cat /run/bootagent/{name}.env");
    let (env_before, pid) = (container.sh(&env_file), container.show(&unit, "MainPID"));
    let serving = repo.commits["prod"].clone();

    repo.push_version("prod", "prod build 2");
    secretsmanager(
        "DeleteSecret",
        serde_json::json!({"SecretId": secret, "ForceDeleteWithoutRecovery": true}),
    );
    let asked = server.requests().len();
    container
        .bootagent(&imds, &["boot"])
        .expect(5)
        .stderr_has("was not found");
    assert!(
        server.requests().len() > asked,
        "git was not asked beside the secrets"
    );
    assert_eq!(container.release_of(&name).unwrap(), serving);
    assert_eq!(container.sh(&env_file), env_before);
    assert_eq!(container.show(&unit, "MainPID"), pid);
    assert_eq!(container.show(&unit, "ActiveState"), "active");
    let status: serde_json::Value =
        serde_json::from_str(&container.sh("cat /run/bootagent/status.json")).unwrap();
    assert_eq!(status["error"]["exit_code"], 5, "{status}");
    let phases = status["phases"].as_array().unwrap();
    assert_eq!(phases.last().unwrap()["name"], "secrets", "{status}");
}

#[test]
fn shipped_boot_unit_boots_the_service_under_its_hardening() {
    support::needs_world!();
    let name = unique("unit");
    let repo = SampleRepo::create(&name);
    let canary = canary();
    create_secret(
        &format!("{name}_env_prod"),
        &serde_json::json!({ "TOKEN": canary }).to_string(),
    );
    let imds = Imds::for_service(&name, "production", &repo.url);
    let container = Container::boot(CONFIG);
    container.install_shipped_units(&imds);
    container.install_unit(
        &format!("{name}.service"),
        "ExecStart=/share/recorder.sh /share/out --stay",
    );
    container.sh("systemctl start bootagent-health.service");
    // Type=notify: started means it told systemd it listens.
    assert_eq!(
        container.show("bootagent-health.service", "ActiveState"),
        "active"
    );
    let health = container.health_url();
    assert_eq!(http_status(&health), "503", "booting");
    container.sh("systemctl start bootagent-boot.service");
    // Answers are cached for a second: the next one after that sees the boot.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let body = Command::new("curl").args(["-s", &health]).output().unwrap();
    assert_eq!(
        http_status(&health),
        "200",
        "booted: {}",
        String::from_utf8_lossy(&body.stdout)
    );
    assert_eq!(
        container.show("bootagent-boot.service", "ActiveState"),
        "active"
    );
    assert_eq!(
        container.show(&format!("{name}.service"), "ActiveState"),
        "active"
    );
    container.sh(&format!("systemctl stop {name}.service"));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(http_status(&health), "503", "the service stopped");
    container.sh(&format!("systemctl start {name}.service"));

    let verify = container.exec(&[
        "systemd-analyze",
        "verify",
        "bootagent-boot.service",
        "bootagent-health.service",
        "bootagent-lifecycle.service",
        "bootagent-refresh.service",
        "bootagent-refresh.timer",
    ]);
    // verify exits 0 on unknown keys and bad values: any complaint on stderr counts.
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    container.sh("systemctl start bootagent-refresh.service");
    assert_eq!(
        container.show("bootagent-refresh.service", "Result"),
        "success"
    );
    container.sh("systemctl enable --now bootagent-refresh.timer");
    assert_eq!(
        container.show("bootagent-refresh.timer", "ActiveState"),
        "active"
    );
    let env = std::fs::read(container.out().join("out/env")).expect("the service ran");
    assert!(String::from_utf8_lossy(&env).contains(&format!("TOKEN={canary}")));

    let journal = container.sh("journalctl --no-pager -o verbose");
    assert!(
        journal.contains("SYSLOG_IDENTIFIER=bootagent"),
        "bootagent logged to the journal with its identifier"
    );
    // What an operator reads first: what runs now.
    let summary = format!(
        "boot succeeded: {name}/prod at {} (cloned), {name}.service active",
        repo.commits["prod"]
    );
    assert!(journal.contains(&summary), "no {summary:?} in the journal");
    // StateDirectory= makes the history writable under ProtectSystem=strict.
    let history = container.sh("cat /var/lib/bootagent/history.jsonl");
    assert!(history.contains("\"outcome\":\"succeeded\""), "{history}");
    assert_no_canary(&canary, &[("journal", &journal), ("history", &history)]);
}

#[test]
fn generated_values_reach_the_unit_exactly_through_its_environment_file() {
    support::needs_world!();
    let mut rng = Rng::from_env();
    let name = unique("rt");
    let repo = SampleRepo::create(&name);
    let secret = format!("{name}_env_test");
    create_secret(&secret, "{}");
    let imds = Imds::for_service(&name, "test", &repo.url);
    let container = Container::boot(CONFIG);
    let unit = format!("{name}.service");
    container.install_unit(&unit, "ExecStart=/share/recorder.sh /share/out --stay");
    let recorded = container.out().join("out/env");
    for round in 0..100 {
        let values = rng.nasty_map(12, true);
        put_secret_value(&secret, &serde_json::to_string(&values).unwrap());
        let _ = std::fs::remove_file(&recorded);
        container.bootagent(&imds, &["boot"]).expect(0);
        let raw = wait_for_file(&recorded);
        let received: BTreeMap<String, String> = raw
            .split(|b| *b == 0)
            .filter_map(|entry| {
                let entry = String::from_utf8(entry.to_vec()).unwrap();
                entry
                    .split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        for (key, value) in &values {
            assert_eq!(
                received.get(key),
                Some(value),
                "round {round}: {key} as the unit got it"
            );
        }
        // The model of systemd's reader (what the renderer's property tests and fuzzing check
        // against) reads the same file as systemd did.
        let file = container.sh(&format!("cat /run/bootagent/{name}.env"));
        let modelled: BTreeMap<String, String> = bootagent::envfile::parse_systemd(&file)
            .into_iter()
            .collect();
        for key in values.keys() {
            assert_eq!(
                modelled.get(key),
                received.get(key),
                "round {round}: the model reads {key} as systemd does"
            );
        }
    }
}

/// The recorder writes its file just after the unit becomes active: wait for it, boundedly.
fn wait_for_file(path: &Path) -> Vec<u8> {
    for _ in 0..100 {
        if let Ok(bytes) = std::fs::read(path) {
            return bytes;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{} did not appear", path.display());
}

#[test]
fn a_unit_that_failed_gets_a_fresh_start_limit_on_the_next_boot() {
    support::needs_world!();
    let (name, _repo, imds) = small_service("limit", "test");
    let container = Container::boot(CONFIG);
    let unit = format!("{name}.service");
    // One start a minute at most, and the first one fails until /share/ready exists.
    container.sh(&format!(
        "printf '[Unit]\\nStartLimitBurst=1\\nStartLimitIntervalSec=60\\n[Service]\\n\
         Type=oneshot\\nRemainAfterExit=yes\\nExecStart=/usr/bin/test -e /share/ready\\n' \
         > /etc/systemd/system/{unit} && systemctl daemon-reload"
    ));
    container.bootagent(&imds, &["boot"]).expect(8);
    assert_eq!(container.show(&unit, "ActiveState"), "failed");
    std::fs::write(container.out().join("ready"), "").unwrap();
    container.bootagent(&imds, &["boot"]).expect(0);
    assert_eq!(container.show(&unit, "ActiveState"), "active");
}

#[test]
fn refresh_restarts_the_unit_only_after_a_secret_changed() {
    support::needs_world!();
    let name = unique("refresh");
    let repo = SampleRepo::create(&name);
    let secret = format!("{name}_env_prod");
    create_secret(&secret, r#"{"RELEASE": "one"}"#);
    let imds = Imds::for_service(&name, "prod", &repo.url);
    let container = Container::boot(&format!("{CONFIG}\n[refresh]\nwindow = \"2s\"\n"));
    let unit = format!("{name}.service");
    container.install_unit(&unit, "ExecStart=/share/recorder.sh /share/out --stay");
    container.bootagent(&imds, &["boot"]).expect(0);
    let pid = container.show(&unit, "MainPID");

    container
        .bootagent(&imds, &["refresh"])
        .expect(0)
        .stderr_has("secrets unchanged");
    assert_eq!(
        container.show(&unit, "MainPID"),
        pid,
        "no change, no restart"
    );

    let recorded = container.out().join("out/env");
    std::fs::remove_file(&recorded).unwrap();
    let new_version = put_secret_value(&secret, r#"{"RELEASE": "two"}"#);
    let started = std::time::Instant::now();
    container
        .bootagent(&imds, &["refresh"])
        .expect(0)
        .stderr_has(&format!(
            "secrets have new versions, booting again after the delay secrets={secret}"
        ));
    // Within the 2 s window and a boot, not the default 15 min window (bounded loosely: a
    // loaded machine boots slowly).
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert_ne!(container.show(&unit, "MainPID"), pid, "restarted");
    let env = String::from_utf8(wait_for_file(&recorded)).unwrap();
    assert!(env.contains("RELEASE=two"), "{env:?}");
    let status: serde_json::Value =
        serde_json::from_str(&container.sh("cat /run/bootagent/status.json")).unwrap();
    assert_eq!(status["secrets"][0]["version_id"], new_version.as_str());
}

#[test]
fn doctor_shows_a_failed_unit_with_its_last_journal_lines_secrets_masked() {
    support::needs_world!();
    let name = unique("docunit");
    let repo = SampleRepo::create(&name);
    let canary = canary();
    create_secret(
        &format!("{name}_env_test"),
        &serde_json::json!({ "TOKEN": canary }).to_string(),
    );
    let imds = Imds::for_service(&name, "test", &repo.url);
    let container = Container::boot(CONFIG);
    let unit = format!("{name}.service");
    // The service prints its secret, as a careless one does.
    container.install_unit(
        &unit,
        "ExecStart=/bin/sh -c \"echo about to crash: marker-7ce1 token=$TOKEN; sleep 3; exit 3\"",
    );
    // Up for 3 s: well past the test config's settle, so the boot succeeds.
    container.bootagent(&imds, &["boot"]).expect(0);
    eventually(20, "the unit to fail", || {
        container.show(&unit, "ActiveState") == "failed"
    });
    let run = container.bootagent(&imds, &["doctor", "--json"]);
    run.expect(13);
    let report: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    let check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "unit")
        .unwrap();
    assert_eq!(check["verdict"], "fail");
    let detail = check["detail"].as_str().unwrap();
    assert!(detail.contains(&format!("{unit} is failed")), "{detail}");
    assert!(
        detail.contains("about to crash: marker-7ce1 token=***"),
        "{detail}"
    );
    assert_no_canary(
        &canary,
        &[("stdout", &run.stdout()), ("stderr", &run.stderr())],
    );
}

const INSTANCE_ID: &str = "i-0123456789abcdef0";

/// A launch through a lifecycle hook: the service's unit takes `start_seconds` to start.
fn launch(
    prefix: &str,
    env_tag: &str,
    secret: Option<&str>,
    start_seconds: &str,
) -> (Container, AsgFake, Run) {
    let lifecycle = "heartbeat = \"1s\"";
    launch_with(prefix, env_tag, secret, start_seconds, lifecycle, 0)
}

/// [`launch`] with more `[lifecycle]` settings, and Auto Scaling throttling its first
/// `throttles` calls.
fn launch_with(
    prefix: &str,
    env_tag: &str,
    secret: Option<&str>,
    start_seconds: &str,
    lifecycle: &str,
    throttles: u32,
) -> (Container, AsgFake, Run) {
    let name = unique(prefix);
    let repo = SampleRepo::create(&name);
    if let Some(value) = secret {
        create_secret(&format!("{name}_env_prod"), value);
    }
    let imds = Imds::with_tags(&[
        ("Service", &name),
        ("Environment", env_tag),
        ("Repository", &repo.url),
        ("aws:autoscaling:groupName", "web-asg"),
    ]);
    let asg = AsgFake::start();
    asg.activate("web-asg", "launching", INSTANCE_ID);
    asg.throttle(throttles);
    let container = Container::boot(&format!(
        "{CONFIG}\n[lifecycle]\nlaunch_hook = \"launching\"\nhealth_wait = \"5s\"\n{lifecycle}\n"
    ));
    container.install_unit(
        &format!("{name}.service"),
        &format!("ExecStartPre=/bin/sleep {start_seconds}\\nExecStart=/share/recorder.sh /share/out --stay"),
    );
    let endpoint = format!("AWS_ENDPOINT_URL_AUTO_SCALING={}", asg.url);
    let run = container.bootagent_with(&imds, &[&endpoint], &["boot"]);
    (container, asg, run)
}

#[test]
fn a_slow_launch_sends_heartbeats_then_exactly_one_continue() {
    support::needs_world!();
    let (_container, asg, run) = launch("launch", "prod", Some(r#"{"A": "1"}"#), "2.5");
    run.expect(0);
    let calls = asg.calls();
    let (last, heartbeats) = calls.split_last().expect("calls were made");
    assert_eq!(
        last,
        &(
            "CompleteLifecycleAction".to_string(),
            Some("CONTINUE".to_string())
        ),
        "{calls:?}"
    );
    assert!(
        heartbeats.len() >= 2,
        "heartbeats during the slow start: {calls:?}"
    );
    assert!(
        heartbeats
            .iter()
            .all(|(action, _)| action == "RecordLifecycleActionHeartbeat"),
        "{calls:?}"
    );
}

#[test]
fn a_throttled_continue_keeps_trying_past_lifecycle_timeout_within_the_boot_deadline() {
    support::needs_world!();
    // One second of lifecycle.timeout holds about two tries; three throttled answers need four.
    let lifecycle = "heartbeat = \"1h\"\ntimeout = \"1s\"";
    let secret = Some(r#"{"A": "1"}"#);
    let (_container, asg, run) = launch_with("hookwait", "prod", secret, "0", lifecycle, 3);
    run.expect(0);
    let calls = asg.calls();
    let continued = (
        "CompleteLifecycleAction".to_string(),
        Some("CONTINUE".to_string()),
    );
    assert_eq!(calls, vec![continued; 4], "three throttled, then done");
}

#[test]
fn a_continue_auto_scaling_never_takes_fails_the_boot_in_its_status_too() {
    support::needs_world!();
    // Throttled for good: the answer keeps trying for what the boot deadline leaves, then the
    // boot ends transient, and status.json and `status` say so (not "succeeded").
    let lifecycle = "heartbeat = \"1h\"\ntimeout = \"1s\"\n[boot]\ndeadline = \"15s\"";
    let secret = Some(r#"{"A": "1"}"#);
    let (container, _asg, run) = launch_with("hooknever", "prod", secret, "0", lifecycle, 10_000);
    run.expect(75);
    let status: serde_json::Value =
        serde_json::from_str(&container.sh("cat /run/bootagent/status.json")).unwrap();
    assert_eq!(status["outcome"], "failed", "{status}");
    assert_eq!(status["error"]["exit_code"], 75, "{status}");
    let imds = Imds::with_tags(&[]);
    container.bootagent(&imds, &["status"]).expect(75);
    let history = container.sh("cat /var/lib/bootagent/history.jsonl");
    assert_eq!(history.lines().count(), 1, "one line per boot: {history}");
    assert!(history.contains("\"failed\""), "{history}");
}

#[test]
fn a_failed_launch_is_abandoned_exactly_once() {
    support::needs_world!();
    let (_container, asg, run) = launch("abandon", "prod", None, "0");
    run.expect(5);
    let completions: Vec<_> = asg
        .calls()
        .into_iter()
        .filter(|(action, _)| action == "CompleteLifecycleAction")
        .collect();
    assert_eq!(
        completions,
        [(
            "CompleteLifecycleAction".to_string(),
            Some("ABANDON".to_string())
        )]
    );
}

/// An instance in a group with a termination hook, booted once, its unit active.
struct Terminating {
    name: String,
    imds: Imds,
    asg: AsgFake,
    container: Container,
    unit: String,
}

impl Terminating {
    /// `config` comes before the `[lifecycle]` table, which drains for `drain`.
    fn boot(prefix: &str, config: &str, drain: &str) -> Terminating {
        let (name, _repo, imds) = small_service(prefix, "test");
        let asg = AsgFake::start();
        let container = Container::boot(&format!(
            "{CONFIG}\n{config}[lifecycle]\ntermination_hook = \"terminating\"\ngroup = \"web-asg\"\ndrain = \"{drain}\"\n"
        ));
        let unit = format!("{name}.service");
        container.install_unit(&unit, "ExecStart=/share/recorder.sh /share/out --stay");
        container.bootagent(&imds, &["boot"]).expect(0);
        Terminating {
            name,
            imds,
            asg,
            container,
            unit,
        }
    }

    /// `lifecycle watch` runs; the instance is told it terminates.
    fn terminate(&self) -> std::process::Child {
        self.asg.activate("web-asg", "terminating", INSTANCE_ID);
        let endpoint = format!("AWS_ENDPOINT_URL_AUTO_SCALING={}", self.asg.url);
        let watch = self.container.spawn_watch(&self.imds, &[&endpoint]);
        self.imds
            .set(serde_json::json!({"lifecycle_state": "Terminated"}));
        watch
    }

    /// The watch ended well, the unit is stopped, and the hook was completed once.
    fn assert_stopped_then_completed(&self, mut watch: std::process::Child) {
        assert!(watch.wait().unwrap().success());
        assert_eq!(self.container.show(&self.unit, "ActiveState"), "inactive");
        assert_eq!(
            self.asg.calls(),
            [(
                "CompleteLifecycleAction".to_string(),
                Some("CONTINUE".to_string())
            )]
        );
    }
}

#[test]
fn termination_drains_then_stops_then_completes_the_hook() {
    support::needs_world!();
    let instance = Terminating::boot("term", "", "2s");
    let watch = instance.terminate();
    let health = || {
        (instance.container)
            .bootagent(&instance.imds, &["health-report"])
            .stdout()
    };
    eventually(5, "health to say draining", || {
        health().contains("\"draining\"")
    });
    // Draining: the ALB is told, the service still serves, the hook waits.
    assert_eq!(
        instance.container.show(&instance.unit, "ActiveState"),
        "active"
    );
    assert!(
        instance.asg.calls().is_empty(),
        "completed before the drain: {:?}",
        instance.asg.calls()
    );
    instance.assert_stopped_then_completed(watch);
}

#[test]
fn termination_stops_the_unit_that_serves_after_a_run_that_failed_before_its_service_step() {
    support::needs_world!();
    let instance = Terminating::boot("termf", "", "1s");
    // A malformed rotation: the refresh fails before its service step, and the unit serves on.
    put_secret_value(&format!("{}_env_test", instance.name), "{not json");
    (instance.container)
        .bootagent(&instance.imds, &["refresh", "--now"])
        .expect(6);
    assert_eq!(
        instance.container.show(&instance.unit, "ActiveState"),
        "active"
    );
    let watch = instance.terminate();
    instance.assert_stopped_then_completed(watch);
}

#[test]
fn termination_drains_past_a_boot_that_holds_the_lock_too_long() {
    support::needs_world!();
    let instance = Terminating::boot("termh", "[boot]\ndeadline = \"2s\"\n", "1s");
    // A hung run holds the boot lock far past boot.deadline.
    (instance.container).sh("flock /run/bootagent/boot.lock sleep 60 >/dev/null 2>&1 &");
    let watch = instance.terminate();
    instance.assert_stopped_then_completed(watch);
}

#[test]
fn a_warm_pool_instance_is_prepared_then_started_when_in_service() {
    support::needs_world!();
    let (name, repo, imds) = small_service("warm", "test");
    imds.set(serde_json::json!({"lifecycle_state": "Warmed:Stopped"}));
    let container = Container::boot(CONFIG);
    let unit = format!("{name}.service");
    container.install_unit(&unit, "ExecStart=/share/recorder.sh /share/out --stay");
    container.bootagent(&imds, &["boot"]).expect(0);
    assert_eq!(
        container.show(&unit, "ActiveState"),
        "inactive",
        "not started in the pool"
    );
    let head = container.sh(&format!("basename $(readlink /srv/{name})"));
    assert_eq!(head.trim(), repo.commits["test"], "checked out in the pool");
    container.sh(&format!("test -s /run/bootagent/{name}.env"));
    let report = container.bootagent(&imds, &["health-report"]);
    report.expect(12);
    assert!(
        report.stdout().contains("\"warmed\""),
        "{}",
        report.stdout()
    );

    let watch = container.spawn_watch(&imds, &[]);
    imds.set(serde_json::json!({"lifecycle_state": "InService"}));
    eventually(10, "the unit to start and stay up", || {
        container.bootagent(&imds, &["health-report"]).code() == 0
    });
    assert_eq!(container.show(&unit, "ActiveState"), "active");
    Container::stop_watch(watch);
}

#[test]
fn a_spot_interruption_drains_and_stops_without_a_hook() {
    support::needs_world!();
    let (name, _repo, imds) = small_service("spot", "test");
    let container = Container::boot(&format!("{CONFIG}\n[lifecycle]\ndrain = \"1s\"\n"));
    let unit = format!("{name}.service");
    container.install_unit(&unit, "ExecStart=/share/recorder.sh /share/out --stay");
    container.bootagent(&imds, &["boot"]).expect(0);
    let mut watch = container.spawn_watch(&imds, &[]);
    imds.set(serde_json::json!({
        "spot_action": {"action": "terminate", "time": "2026-11-22T17:00:00Z"}
    }));
    assert!(watch.wait().unwrap().success());
    assert_eq!(container.show(&unit, "ActiveState"), "inactive");
    let report = container.bootagent(&imds, &["health-report"]);
    assert!(
        report.stdout().contains("\"draining\""),
        "{}",
        report.stdout()
    );
    // A drain is final: no boot, refresh or deploy starts the unit again.
    for args in [
        &["boot"][..],
        &["refresh", "--now"],
        &["deploy", "--follow"],
        &["deploy"],
    ] {
        let run = container.bootagent(&imds, args);
        run.expect(17)
            .stderr_has("the instance is draining before termination");
        assert_eq!(container.show(&unit, "ActiveState"), "inactive", "{args:?}");
    }
}

#[test]
fn a_launch_with_bad_tags_is_abandoned_too() {
    support::needs_world!();
    let (_container, asg, run) = launch("badtags", "qa", None, "0");
    run.expect(3);
    assert_eq!(
        asg.calls(),
        [(
            "CompleteLifecycleAction".to_string(),
            Some("ABANDON".to_string())
        )]
    );
}

#[test]
fn the_shipped_boot_unit_fetches_over_ssh_with_a_deploy_key_from_a_secret() {
    support::needs_world!();
    let name = unique("sdssh");
    let repo = SampleRepo::create(&name);
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = ssh_keygen(keys.path(), "deploy");
    let server = GitSsh::start(&[&public]);
    let key_text = std::fs::read_to_string(&key).unwrap();
    create_secret(
        &format!("{name}_env_prod"),
        &serde_json::json!({ "DEPLOY_KEY": key_text, "APP": "1" }).to_string(),
    );
    let imds = Imds::for_service(&name, "prod", &server.repo_url(&name));
    let container = Container::boot(&format!(
        "{CONFIG}\n[git]\nssh_key = \"secret:DEPLOY_KEY\"\nknown_hosts = \"/share/known_hosts\"\n"
    ));
    std::fs::write(
        container.out().join("known_hosts"),
        server.known_hosts_line(),
    )
    .unwrap();
    container.install_shipped_units(&imds);
    container.install_unit(
        &format!("{name}.service"),
        "ExecStart=/share/recorder.sh /share/out --stay",
    );
    container.sh("systemctl start bootagent-boot.service");
    assert_eq!(
        container.show(&format!("{name}.service"), "ActiveState"),
        "active"
    );
    let link = container.sh(&format!("readlink /srv/{name}"));
    assert!(link.trim().ends_with(&repo.commits["prod"]), "{link}");
    let env = String::from_utf8(std::fs::read(container.out().join("out/env")).unwrap()).unwrap();
    assert!(
        env.contains("APP=1") && !env.contains("DEPLOY_KEY"),
        "{env}"
    );
    // The key was on the tmpfs run dir only while the checkout ran.
    let run_dir = container.sh("ls -A /run/bootagent");
    assert!(!run_dir.contains("deploy-key"), "{run_dir}");
    let journal = container.sh("journalctl --no-pager -o verbose");
    let key_line = key_text.lines().nth(2).unwrap();
    assert_no_canary(key_line, &[("journal", &journal)]);
}
