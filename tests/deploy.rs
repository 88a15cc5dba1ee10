//! `bootagent deploy` under a real systemd (PID 1 of an nspawn container) against the world's
//! git daemon and moto: a push reaches the running service; a commit whose service crashes, or
//! whose app answers 500, is rolled back to the release before it, with its environment, and is
//! not deployed again until the ref moves on.

use std::io::{Read, Write};
use std::path::Path;

use support::container::{Container, QUICK_GATE};
use support::*;

/// An instance in `stage` running the sample service under systemd, booted once.
struct Deployed {
    name: String,
    repo: SampleRepo,
    secret: String,
    imds: Imds,
    container: Container,
    canary: String,
}

impl Deployed {
    fn boot(extra_config: &str) -> Deployed {
        let name = unique("dep");
        let repo = SampleRepo::create(&name);
        let canary = canary();
        let secret = format!("{name}_env_stage");
        create_secret(
            &secret,
            &format!(r#"{{"RELEASE": "one", "CANARY": "{canary}"}}"#),
        );
        let imds = Imds::for_service(&name, "staging", &repo.url);
        let container = Container::boot(&format!("{QUICK_GATE}{extra_config}"));
        container.install_app(&format!("{name}.service"));
        container.bootagent(&imds, &["boot"]).expect(0);
        Deployed {
            name,
            repo,
            secret,
            imds,
            container,
            canary,
        }
    }

    fn deploy(&self, args: &[&str]) -> Run {
        let mut argv = vec!["deploy"];
        argv.extend_from_slice(args);
        let run = self.container.bootagent(&self.imds, &argv);
        assert_no_canary(
            &self.canary,
            &[("stdout", &run.stdout()), ("stderr", &run.stderr())],
        );
        run
    }

    fn main_pid(&self) -> String {
        self.container
            .show(&format!("{}.service", self.name), "MainPID")
    }

    fn active(&self) -> String {
        self.container
            .show(&format!("{}.service", self.name), "ActiveState")
    }

    /// The commit the link points at.
    fn in_service(&self) -> String {
        let target = self.container.sh(&format!("readlink /srv/{}", self.name));
        Path::new(target.trim())
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    /// What the running service recorded: its VERSION and its environment.
    fn service_saw(&self) -> (String, String) {
        let out = self.container.out().join("out");
        let version = std::fs::read_to_string(out.join("version")).unwrap_or_default();
        let env = std::fs::read(out.join("env")).unwrap_or_default();
        (
            version.trim().to_string(),
            String::from_utf8_lossy(&env).replace('\0', "\n"),
        )
    }

    fn forget_what_the_service_saw(&self) {
        let out = self.container.out().join("out");
        let _ = std::fs::remove_file(out.join("version"));
        let _ = std::fs::remove_file(out.join("env"));
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.container.sh("cat /run/bootagent/status.json")).unwrap()
    }

    fn last_history_entry(&self) -> serde_json::Value {
        let history = self.container.sh("cat /var/lib/bootagent/history.jsonl");
        serde_json::from_str(history.lines().last().unwrap()).unwrap()
    }

    fn deploys(&self) -> serde_json::Value {
        serde_json::from_str(&self.container.sh("cat /var/lib/bootagent/deploys.json")).unwrap()
    }

    /// Waits for the service to record what it was started with.
    fn wait_for_service(&self) -> (String, String) {
        support::container::eventually(20, "the service to record its start", || {
            !self.service_saw().0.is_empty()
        });
        self.service_saw()
    }

    /// Nothing of the canary in the journal, status.json, the history or the deploy record.
    fn assert_canary_kept_in_the_env_file(&self) {
        let everywhere = self.container.sh(
            "journalctl --no-pager -o cat; cat /run/bootagent/status.json \
             /var/lib/bootagent/history.jsonl /var/lib/bootagent/deploys.json",
        );
        assert!(
            !everywhere.contains(&self.canary),
            "the canary leaked into the journal or the records"
        );
    }
}

#[test]
fn a_push_then_a_deploy_runs_the_new_commit_and_a_run_with_nothing_new_restarts_nothing() {
    support::needs_world!();
    let mut deployed = Deployed::boot("");
    let first_pid = deployed.main_pid();
    deployed
        .deploy(&["--follow"])
        .expect(0)
        .stderr_has("up to date: nothing to deploy");
    assert_eq!(deployed.main_pid(), first_pid, "nothing new, no restart");

    deployed.forget_what_the_service_saw();
    let second = deployed.repo.push_version("stage", "stage build 2");
    let new_version = put_secret_value(
        &deployed.secret,
        &format!(r#"{{"RELEASE": "two", "CANARY": "{}"}}"#, deployed.canary),
    );
    deployed
        .deploy(&["--follow"])
        .expect(0)
        .stderr_has("deploying");
    assert_ne!(deployed.main_pid(), first_pid, "restarted");
    assert_eq!(deployed.in_service(), second);
    let (version, env) = deployed.wait_for_service();
    assert_eq!(version, "stage build 2");
    assert!(env.contains("RELEASE=two"), "{env}");
    let status = deployed.status();
    assert_eq!(status["outcome"], "succeeded");
    assert_eq!(status["git"]["commit"], second.as_str());
    assert_eq!(status["secrets"][0]["version_id"], new_version.as_str());
    assert_eq!(
        deployed.deploys()["succeeded"],
        2,
        "the boot and the deploy"
    );

    let second_pid = deployed.main_pid();
    deployed
        .deploy(&["--follow"])
        .expect(0)
        .stderr_has("up to date: nothing to deploy");
    assert_eq!(deployed.main_pid(), second_pid);
    deployed.assert_canary_kept_in_the_env_file();
}

#[test]
fn prod_does_not_follow_its_branch_but_an_explicit_deploy_does() {
    support::needs_world!();
    let mut deployed = Deployed::boot("");
    let name = deployed.name.clone();
    // The same service, tagged prod: the timer's runs leave it alone.
    let prod = Imds::for_service(&name, "production", &deployed.repo.url);
    create_secret(&format!("{name}_env_prod"), r#"{"RELEASE": "prod"}"#);
    deployed.container.bootagent(&prod, &["boot"]).expect(0);
    let pushed = deployed.repo.push_version("prod", "prod build 2");
    let pid = deployed.main_pid();
    deployed
        .container
        .bootagent(&prod, &["deploy", "--follow"])
        .expect(0)
        .stderr_has("deploy.follow does not name this environment");
    assert_eq!(deployed.main_pid(), pid);
    deployed.container.bootagent(&prod, &["deploy"]).expect(0);
    assert_eq!(deployed.in_service(), pushed);
}

#[test]
fn a_commit_whose_service_crashes_is_rolled_back_and_not_retried_until_the_ref_moves_on() {
    support::needs_world!();
    let mut deployed = Deployed::boot("");
    let good = deployed.in_service();
    let good_pid = deployed.main_pid();

    let crashing = deployed.repo.push_version("stage", "crash at start");
    deployed.forget_what_the_service_saw();
    let run = deployed.deploy(&["--follow"]);
    run.expect(16)
        .stderr_has(&format!("rolled back from {crashing} to {good} because"));
    // Whether systemd saw it fail at once or right after: the unit, and where to look.
    run.stderr_has(&format!("because {}.service ", deployed.name))
        .stderr_has("journalctl -u");
    assert_eq!(deployed.in_service(), good, "the link is back");
    assert_eq!(deployed.active(), "active");
    assert_ne!(
        deployed.main_pid(),
        good_pid,
        "the old release was restarted"
    );
    let (version, env) = deployed.wait_for_service();
    assert_eq!(version, "stage build 1");
    assert!(env.contains("RELEASE=one"), "{env}");
    let status = deployed.status();
    assert_eq!(status["outcome"], "rolled-back");
    assert_eq!(status["git"]["commit"], good.as_str());
    assert_eq!(status["error"]["exit_code"], 16);
    let entry = deployed.last_history_entry();
    assert_eq!(entry["outcome"], "rolled-back");
    assert_eq!(entry["commit"], good.as_str());
    let record = deployed.deploys();
    assert_eq!(record["rolled_back"], 1);
    assert_eq!(record["failed"]["commit"], crashing.as_str());
    let health = deployed
        .container
        .bootagent(&deployed.imds, &["health-report"]);
    health.expect(0);
    assert!(
        health.stdout().contains("\"rolled-back\""),
        "{}",
        health.stdout()
    );

    // The timer's next run leaves the failed commit alone, and says it did not deploy it.
    let pid = deployed.main_pid();
    deployed
        .deploy(&["--follow"])
        .expect(16)
        .stderr_has(&format!(
            "did not deploy what stage names: it is still at {crashing}"
        ));
    deployed
        .container
        .bootagent(&deployed.imds, &["status"])
        .expect(16);
    assert_eq!(deployed.main_pid(), pid, "no retry, no restart");
    // Asked for, it is tried again, and rolled back again.
    deployed.deploy(&["--retry"]).expect(16);
    assert_eq!(deployed.in_service(), good);

    // A fix moves the ref on, and deploys.
    let fixed = deployed.repo.push_version("stage", "stage build 3");
    deployed.forget_what_the_service_saw();
    deployed.deploy(&["--follow"]).expect(0);
    assert_eq!(deployed.in_service(), fixed);
    assert_eq!(deployed.wait_for_service().0, "stage build 3");
    assert_eq!(deployed.status()["outcome"], "succeeded");
    assert!(deployed.deploys()["failed"].is_null());
    deployed.assert_canary_kept_in_the_env_file();
}

#[test]
fn a_secret_version_whose_service_crashes_is_rolled_back_and_not_used_again_while_current() {
    support::needs_world!();
    let deployed = Deployed::boot("");
    let commit = deployed.in_service();
    let crashing = put_secret_value(
        &deployed.secret,
        &format!(r#"{{"RELEASE": "crash", "CANARY": "{}"}}"#, deployed.canary),
    );
    deployed.forget_what_the_service_saw();
    let secret = deployed.secret.clone();
    deployed
        .deploy(&["--follow"])
        .expect(16)
        .stderr_has(&format!(
            "rolled back the new versions of {secret} on {commit}"
        ));
    let (_, env) = deployed.wait_for_service();
    assert!(env.contains("RELEASE=one"), "the environment before: {env}");
    assert_eq!(deployed.status()["outcome"], "rolled-back");
    let record = deployed.deploys();
    assert_eq!(record["rolled_back"], 1);
    assert_eq!(
        record["failed_secrets"]["versions"][0]["version_id"],
        crashing.as_str()
    );
    assert!(record["failed"].is_null(), "the commit did not change");

    // Neither the refresh timer nor the deploy timer tries that version again.
    let pid = deployed.main_pid();
    let set_aside = format!("the current versions of {secret} failed their gate");
    // refresh did its job (nothing to apply); deploy did not deploy what is current.
    for (args, code) in [
        (&["refresh", "--now"][..], 0),
        (&["deploy", "--follow"], 16),
    ] {
        let run = deployed.container.bootagent(&deployed.imds, args);
        run.expect(code).stderr_has(&set_aside);
        assert_eq!(deployed.main_pid(), pid, "{args:?}: no retry, no restart");
    }

    // A newer version is used.
    put_secret_value(
        &deployed.secret,
        &format!(r#"{{"RELEASE": "three", "CANARY": "{}"}}"#, deployed.canary),
    );
    deployed.forget_what_the_service_saw();
    deployed.deploy(&["--follow"]).expect(0);
    let (_, env) = deployed.wait_for_service();
    assert!(env.contains("RELEASE=three"), "{env}");
    assert!(deployed.deploys().get("failed_secrets").is_none());
    deployed.assert_canary_kept_in_the_env_file();
}

/// The app's own health check, served from the host: 500 while the running release's VERSION
/// starts with "unhealthy", 200 otherwise.
struct AppHealth {
    port: u16,
}

impl AppHealth {
    fn start(out: &Path) -> AppHealth {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let version_file = out.join("out/version");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut head = [0u8; 1024];
                let _ = stream.read(&mut head);
                let version = std::fs::read_to_string(&version_file).unwrap_or_default();
                let status = if version.starts_with("unhealthy") {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        AppHealth { port }
    }
}

#[test]
fn a_commit_whose_app_answers_500_is_rolled_back_with_its_old_environment() {
    support::needs_world!();
    let mut deployed = Deployed::boot("");
    let app = AppHealth::start(deployed.container.out());
    deployed.container.sh(&format!(
        "printf '[health]\\napp_url = \"http://127.0.0.1:{}/healthz\"\\n' >> /share/config.toml",
        app.port
    ));
    let good = deployed.in_service();
    deployed.container.install_shipped_units(&deployed.imds);
    deployed
        .container
        .sh("systemctl start bootagent-health.service");
    let metrics_url = deployed
        .container
        .health_url()
        .replace("/health", "/metrics");

    let unhealthy = deployed.repo.push_version("stage", "unhealthy build");
    put_secret_value(
        &deployed.secret,
        &format!(r#"{{"RELEASE": "two", "CANARY": "{}"}}"#, deployed.canary),
    );
    deployed.forget_what_the_service_saw();
    let started = std::time::Instant::now();
    let run = deployed.deploy(&["--follow"]);
    run.expect(16)
        .stderr_has(&format!("rolled back from {unhealthy} to {good} because"))
        .stderr_has("answered HTTP 500");
    // Within deploy.health_wait (5 s) of the gate, plus the restarts (bounded loosely).
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    assert_eq!(deployed.in_service(), good);
    let (version, env) = deployed.wait_for_service();
    assert_eq!(version, "stage build 1");
    assert!(env.contains("RELEASE=one"), "the old environment: {env}");
    let metrics = curl(&["-s", "--max-time", "5", &metrics_url]);
    assert!(
        metrics.contains("bootagent_deploys_total{outcome=\"rolled-back\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bootagent_boot_outcome{outcome=\"rolled-back\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bootagent_last_good_deploy_timestamp_seconds "),
        "{metrics}"
    );
    deployed.assert_canary_kept_in_the_env_file();
}

const HOOKS: &str = r#"pre_start = ["/bin/sh", "-c", "pwd > /share/out/pre_start.cwd; id -u > /share/out/pre_start.uid; echo \"$RELEASE\" > /share/out/pre_start.release; test \"$(cat VERSION)\" != 'migration fails'"]
post = ["/bin/sh", "-c", "printf '%s\n' \"$BOOTAGENT_COMMIT\" \"$BOOTAGENT_PREVIOUS_COMMIT\" \"$BOOTAGENT_OUTCOME\" \"$BOOTAGENT_ERROR\" > /share/out/post; env > /share/out/post.env"]
"#;

/// What the post hook recorded: commit, previous commit, outcome, error.
fn post_saw(deployed: &Deployed) -> Vec<String> {
    let text = std::fs::read_to_string(deployed.container.out().join("out/post")).unwrap();
    text.lines().map(str::to_string).collect()
}

#[test]
fn pre_start_runs_in_the_new_release_and_when_it_fails_nothing_switches() {
    support::needs_world!();
    let mut deployed = Deployed::boot(HOOKS);
    let out = deployed.container.out().join("out");
    let first = deployed.in_service();
    let read = |file: &str| {
        std::fs::read_to_string(out.join(file))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(
        read("pre_start.cwd"),
        format!("/srv/.{}/releases/{first}", deployed.name)
    );
    assert_eq!(read("pre_start.uid"), "65534", "as the service's user");
    assert_eq!(
        read("pre_start.release"),
        "one",
        "with the service's environment"
    );
    assert_eq!(post_saw(&deployed), [first.as_str(), "", "succeeded", ""]);

    let pid = deployed.main_pid();
    let failing = deployed.repo.push_version("stage", "migration fails");
    let run = deployed.deploy(&[]);
    run.expect(8)
        .stderr_has("deploy.pre_start (/bin/sh) exited with code 1")
        .stderr_has("nothing was switched");
    assert_eq!(deployed.in_service(), first, "the old release serves");
    assert_eq!(deployed.main_pid(), pid, "and was not restarted");
    let post = post_saw(&deployed);
    assert_eq!(post[..3], [failing.as_str(), first.as_str(), "failed"]);
    assert!(post[3].contains("deploy.pre_start"), "{post:?}");
    let post_env = std::fs::read_to_string(out.join("post.env")).unwrap();
    assert!(!post_env.contains(&deployed.canary), "post gets no secrets");
    assert!(!post_env.contains("RELEASE="), "{post_env}");
    deployed.assert_canary_kept_in_the_env_file();
}

#[test]
fn the_deploy_timers_unit_deploys_under_its_hardening() {
    support::needs_world!();
    let mut deployed = Deployed::boot("");
    deployed.container.install_shipped_units(&deployed.imds);
    let pushed = deployed.repo.push_version("stage", "stage build 2");
    deployed.forget_what_the_service_saw();
    // The deploy unit requires the boot unit to have run, as at an instance's boot.
    deployed
        .container
        .sh("systemctl start bootagent-boot.service");
    // What the timer starts: `deploy --follow` under the shipped unit's confinement.
    deployed
        .container
        .sh("systemctl start bootagent-deploy.service");
    assert_eq!(
        deployed
            .container
            .show("bootagent-deploy.service", "Result"),
        "success"
    );
    assert_eq!(deployed.in_service(), pushed);
    assert_eq!(deployed.wait_for_service().0, "stage build 2");
    assert_eq!(
        deployed.deploys()["succeeded"],
        2,
        "recorded in its StateDirectory"
    );
    assert_eq!(
        deployed
            .container
            .show("bootagent-deploy.timer", "RandomizedDelayUSec"),
        "5min"
    );
}

#[test]
fn deploy_is_refused_in_exec_mode() {
    support::needs_world!();
    let (_, _repo, imds) = small_service("depx", "stage");
    Instance::exec_mode("")
        .run(&imds, &["deploy"])
        .expect(2)
        .stderr_has("in exec mode bootagent is the service");
}

#[test]
fn under_systemd_only_signed_code_deploys_and_refused_code_is_not_fetched_again() {
    support::needs_world!();
    let mut deployed = Deployed::boot("");
    let signer = SshSigner::new(deployed.container.out(), "deploy");
    std::fs::write(
        deployed.container.out().join("allowed_signers"),
        format!("{}\n", signer.allowed),
    )
    .unwrap();
    deployed.container.sh(
        "printf '[git]\\nverify = \"ssh\"\\nallowed_signers = \"/share/allowed_signers\"\\n' \
         >> /share/config.toml",
    );
    let signed = deployed
        .repo
        .push_with("stage", "signed build", &signer.settings());
    deployed.deploy(&["--follow"]).expect(0);
    assert_eq!(deployed.in_service(), signed);

    let pid = deployed.main_pid();
    let unsigned = deployed.repo.push_version("stage", "unsigned build");
    deployed
        .deploy(&["--follow"])
        .expect(7)
        .stderr_has("did not deploy what stage names")
        .stderr_has(&format!("refused commit {unsigned}: it is not signed"))
        .stderr_has("/share/allowed_signers")
        .stderr_has("security_event=");
    assert_eq!(
        deployed.in_service(),
        signed,
        "the release in service stays"
    );
    assert_eq!(deployed.main_pid(), pid, "and is not restarted");
    let status = deployed.status();
    assert_eq!(status["outcome"], "degraded");
    assert!(
        status["degraded"]
            .as_str()
            .unwrap()
            .contains(&format!("refused commit {unsigned}")),
        "{status}"
    );
    // The timer's next run does not fetch and refuse it again.
    deployed
        .deploy(&["--follow"])
        .expect(7)
        .stderr_has(&format!("it is still at {unsigned}"));
    // A boot serves the release it kept: it succeeds, degraded.
    deployed
        .container
        .bootagent(&deployed.imds, &["boot"])
        .expect(0);
}

/// Pushes a commit whose service crashes at start and deploys it: it must be rolled back to
/// `good` (exit 16), which serves again.
fn assert_a_crashing_commit_is_rolled_back_to(deployed: &mut Deployed, good: &str) {
    let crashing = deployed.repo.push_version("stage", "crash at start");
    deployed.forget_what_the_service_saw();
    deployed
        .deploy(&["--follow"])
        .expect(16)
        .stderr_has(&format!("rolled back from {crashing} to {good} because"));
    assert_eq!(deployed.in_service(), good);
    assert_eq!(deployed.active(), "active");
    assert_eq!(deployed.wait_for_service().0, "stage build 1");
    assert_eq!(deployed.deploys()["failed"]["commit"], crashing.as_str());
}

#[test]
fn a_refresh_that_fails_before_changing_anything_keeps_health_green_and_the_gate_on() {
    support::needs_world!();
    let mut deployed = Deployed::boot("");
    let good = deployed.in_service();
    let pid = deployed.main_pid();
    // A malformed rotation: the refresh fails before it changes anything.
    put_secret_value(&deployed.secret, "{not json");
    deployed
        .container
        .bootagent(&deployed.imds, &["refresh", "--now"])
        .expect(6);
    assert_eq!(deployed.main_pid(), pid, "the service was not touched");
    let health = deployed
        .container
        .bootagent(&deployed.imds, &["health-report"]);
    health.expect(0);
    let report: serde_json::Value = serde_json::from_str(&health.stdout()).unwrap();
    assert_eq!(report["state"], "degraded", "{report}");
    let reason = report["reason"].as_str().unwrap();
    assert!(reason.contains("exit code 6"), "{reason}");
    assert!(
        reason.contains(&format!("{good} serves as before")),
        "{reason}"
    );
    // `status` still reports the failed run.
    deployed
        .container
        .bootagent(&deployed.imds, &["status"])
        .expect(6);

    // The rotation is fixed; a crashing commit after the failed refresh is still gated.
    put_secret_value(
        &deployed.secret,
        &format!(r#"{{"RELEASE": "one", "CANARY": "{}"}}"#, deployed.canary),
    );
    assert_a_crashing_commit_is_rolled_back_to(&mut deployed, &good);
    deployed.assert_canary_kept_in_the_env_file();
}

/// A deploy of a good commit killed once it switched the link, before its gate: that release
/// serves, never proven healthy. Returns its commit.
fn kill_a_deploy_after_its_switch(deployed: &mut Deployed) -> String {
    let unproven = deployed.repo.push_version("stage", "stage build 1");
    let killed = deployed.container.bootagent_with(
        &deployed.imds,
        &["BOOTAGENT_FAILPOINT=after-git"],
        &["deploy", "--follow"],
    );
    assert_ne!(killed.code(), 0, "killed: {}", killed.stderr());
    assert_eq!(deployed.in_service(), unproven);
    unproven
}

#[test]
fn a_crashing_commit_after_a_killed_deploy_is_still_rolled_back_to_the_healthy_release() {
    support::needs_world!();
    let mut deployed = Deployed::boot("");
    let good = deployed.in_service();
    kill_a_deploy_after_its_switch(&mut deployed);
    assert_eq!(deployed.deploys()["last_good_commit"], good.as_str());
    assert_a_crashing_commit_is_rolled_back_to(&mut deployed, &good);
}

#[test]
fn the_gate_stays_on_when_the_release_last_proven_healthy_is_gone_from_disk() {
    support::needs_world!();
    let mut deployed = Deployed::boot("");
    let good = deployed.in_service();
    let unproven = kill_a_deploy_after_its_switch(&mut deployed);
    // An operator frees disk: the proven release is not the link's target.
    deployed
        .container
        .sh(&format!("rm -rf /srv/.{}/releases/{good}", deployed.name));
    let crashing = deployed.repo.push_version("stage", "crash at start");
    deployed.forget_what_the_service_saw();
    deployed
        .deploy(&["--follow"])
        .expect(16)
        .stderr_has(&format!("{good}) is no longer on disk"))
        .stderr_has(&format!("rolled back from {crashing} to {unproven}"));
    assert_eq!(deployed.in_service(), unproven);
    assert_eq!(deployed.active(), "active");
}

#[test]
fn a_rollback_killed_midway_is_finished_by_the_next_boot_and_the_bad_commit_stays_out() {
    support::needs_world!();
    let mut deployed = Deployed::boot("");
    let good = deployed.in_service();
    let crashing = deployed.repo.push_version("stage", "crash at start");
    let killed = deployed.container.bootagent_with(
        &deployed.imds,
        &["BOOTAGENT_FAILPOINT=rolling-back"],
        &["deploy", "--follow"],
    );
    assert_ne!(killed.code(), 0, "killed: {}", killed.stderr());
    assert_eq!(
        deployed.in_service(),
        crashing,
        "killed before the link went back"
    );
    assert_eq!(deployed.deploys()["failed"]["commit"], crashing.as_str());

    // A reboot's boot brings back the healthy release, not the known-bad one.
    deployed.forget_what_the_service_saw();
    deployed
        .container
        .bootagent(&deployed.imds, &["boot"])
        .expect(0)
        .stderr_has(&format!("running last good commit {good}"));
    assert_eq!(deployed.in_service(), good);
    assert_eq!(deployed.active(), "active");
    assert_eq!(deployed.wait_for_service().0, "stage build 1");
    // And deploy says it did not deploy the ref's head.
    deployed
        .deploy(&["--follow"])
        .expect(16)
        .stderr_has(&format!("it is still at {crashing}"));
    assert_eq!(deployed.in_service(), good);
}

#[test]
fn a_rotation_on_the_kept_release_does_not_clear_the_failed_commit() {
    support::needs_world!();
    let mut deployed = Deployed::boot("");
    let good = deployed.in_service();
    assert_a_crashing_commit_is_rolled_back_to(&mut deployed, &good);
    let crashing = deployed.repo.commits["stage"].clone();
    // A rotation applied by the refresh timer restarts the kept release, and passes.
    put_secret_value(
        &deployed.secret,
        &format!(
            r#"{{"RELEASE": "rotated", "CANARY": "{}"}}"#,
            deployed.canary
        ),
    );
    deployed
        .container
        .bootagent(&deployed.imds, &["refresh", "--now"])
        .expect(0);
    assert_eq!(deployed.deploys()["failed"]["commit"], crashing.as_str());
    let pid = deployed.main_pid();
    deployed
        .deploy(&["--follow"])
        .expect(16)
        .stderr_has(&format!("it is still at {crashing}"));
    assert_eq!(
        deployed.main_pid(),
        pid,
        "the known-bad commit is not tried"
    );
    assert_eq!(deployed.in_service(), good);
}

#[test]
fn a_damaged_deploy_record_keeps_the_release_in_service_and_says_so() {
    support::needs_world!();
    let mut deployed = Deployed::boot("");
    let good = deployed.in_service();
    assert_a_crashing_commit_is_rolled_back_to(&mut deployed, &good);
    let crashing = deployed.repo.commits["stage"].clone();
    let record = "/var/lib/bootagent/deploys.json";
    for damage in [
        "printf garbage",
        "printf ''",
        "printf '\\0\\0'",
        "printf '{\"succeeded\": \"x\"}'",
    ] {
        deployed.container.sh(&format!("{damage} > {record}"));
        let pid = deployed.main_pid();
        deployed
            .deploy(&["--follow"])
            .expect(9)
            .stderr_has(record)
            .stderr_has("deploys nothing new");
        let boot = deployed.container.bootagent(&deployed.imds, &["boot"]);
        boot.expect(0)
            .stderr_has(&format!("running last good commit {good}"));
        assert_eq!(
            deployed.in_service(),
            good,
            "{damage}: the known-bad commit stays out"
        );
        assert_eq!(deployed.main_pid(), pid, "{damage}: nothing restarted");
        assert_eq!(
            deployed
                .container
                .sh(&format!("head -c 7 {record}"))
                .trim_end(),
            deployed
                .container
                .sh(&format!("{damage} | head -c 7"))
                .trim_end(),
            "{damage}: the record is not reset"
        );
    }
    // The operator decides: --retry deploys the ref's head (and is rolled back again).
    deployed
        .deploy(&["--retry"])
        .expect(16)
        .stderr_has(&format!("rolled back from {crashing} to {good}"));
    assert_eq!(deployed.deploys()["failed"]["commit"], crashing.as_str());
}

#[test]
fn a_deploy_record_that_cannot_be_written_stops_deploys_rather_than_retry_a_failed_commit() {
    support::needs_world!();
    let mut deployed = Deployed::boot("");
    let good = deployed.in_service();
    // A read-only state dir, as a full or remounted disk leaves it.
    deployed
        .container
        .sh("mount --bind /var/lib/bootagent /var/lib/bootagent && mount -o remount,bind,ro /var/lib/bootagent");
    deployed.repo.push_version("stage", "crash at start");
    let pid = deployed.main_pid();
    deployed
        .deploy(&["--follow"])
        .expect(9)
        .stderr_has("cannot write the deploy record")
        .stderr_has("nothing is deployed until it is writable");
    assert_eq!(deployed.in_service(), good);
    assert_eq!(deployed.main_pid(), pid);
}
