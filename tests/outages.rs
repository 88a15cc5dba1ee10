//! No single outage stops a boot: the encrypted snapshot of the last good secrets, under a real
//! systemd (nspawn) with moto and a git daemon; a "no" from Secrets Manager is final.

use support::container::{Container, PrivateRoot, QUICK_GATE};
use support::*;

const SNAPSHOT: &str = "/var/lib/bootagent/secrets.snapshot";

/// How long a region is retried before the snapshot: short, so that a dead endpoint is given
/// up quickly.
const FALLBACK: &str = "[secrets]\nfallback_after = \"2s\"\ntimeout = \"3s\"\n";

/// With nothing to fall back to, a region is retried for as long as the boot deadline leaves.
const SHORT_BOOT: &str = "[boot]\ndeadline = \"12s\"\n";

/// A service whose secret holds a canary, an instance tagged for it, and the env a boot gets
/// when Secrets Manager is stopped (its endpoint a port nothing listens on).
struct Outage {
    name: String,
    canary: String,
    imds: Imds,
    stopped: String,
}

impl Outage {
    fn new(prefix: &str) -> Outage {
        let name = unique(prefix);
        let repo = SampleRepo::create(&name);
        let canary = canary();
        create_secret(
            &format!("{name}_env_prod"),
            &serde_json::json!({ "APP_TOKEN": canary }).to_string(),
        );
        let imds = Imds::for_service(&name, "prod", &repo.url);
        // Bound, then closed: connections to it are refused, as to a stopped endpoint.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let stopped = format!("AWS_ENDPOINT_URL_SECRETS_MANAGER=http://127.0.0.1:{port}");
        Outage {
            name,
            canary,
            imds,
            stopped,
        }
    }

    /// Installs the binary, `config` and the service (the app that records what it got in
    /// /share/out) in `container`.
    fn install(&self, container: &Container, config: &str) {
        std::fs::copy(bin(), container.out().join("bootagent")).unwrap();
        std::fs::write(container.out().join("config.toml"), config).unwrap();
        container.install_app(&format!("{}.service", self.name));
    }

    fn boot(&self, container: &Container, env: &[&str]) -> Run {
        let run = container.bootagent_with(&self.imds, env, &["boot"]);
        self.assert_no_canary(&run);
        run
    }

    fn boot_while_stopped(&self, container: &Container) -> Run {
        self.boot(container, &[self.stopped.as_str()])
    }

    fn assert_no_canary(&self, run: &Run) {
        assert_no_canary(
            &self.canary,
            &[("stdout", &run.stdout()), ("stderr", &run.stderr())],
        );
    }

    /// Nowhere in the container but the env file and what the service recorded.
    fn assert_canary_only_where_it_belongs(&self, container: &Container) {
        let record = container.out().join("out");
        let places = container.places_holding(
            &self.canary,
            &format!("/run/bootagent/{}.env", self.name),
            &record,
        );
        assert!(places.is_empty(), "the canary is in {places:?}");
    }

    /// What the running service got in its environment.
    fn service_env(&self, container: &Container) -> String {
        let env = std::fs::read(container.out().join("out/env")).unwrap_or_default();
        String::from_utf8_lossy(&env).replace('\0', "\n")
    }
}

fn status(container: &Container) -> serde_json::Value {
    serde_json::from_str(&container.sh("cat /run/bootagent/status.json")).unwrap()
}

fn has_snapshot(container: &Container) -> bool {
    container.exec(&["test", "-e", SNAPSHOT]).status.success()
}

/// Points the shipped units' Secrets Manager at a stopped endpoint (`stopped`), or back.
fn set_secrets_manager(container: &Container, stopped: Option<&str>) {
    for unit in ["bootagent-boot", "bootagent-refresh"] {
        let drop_in = format!("/etc/systemd/system/{unit}.service.d/zz-outage.conf");
        container.sh(&match stopped {
            Some(env) => format!("printf '[Service]\\nEnvironment={env}\\n' > {drop_in}"),
            None => format!("rm -f {drop_in}"),
        });
    }
    container.sh("systemctl daemon-reload");
}

#[test]
fn a_reboot_while_secrets_manager_is_stopped_runs_on_the_snapshot_until_it_answers_again() {
    support::needs_world!();
    let outage = Outage::new("snap");
    let mut container = Container::boot_private(PrivateRoot::mount("ROOTFS"));
    let config = format!("{QUICK_GATE}{FALLBACK}[refresh]\nwindow = \"0s\"\n");
    outage.install(&container, &config);
    container.install_shipped_units(&outage.imds);
    let unit = format!("{}.service", outage.name);

    // The first boot, under the shipped unit and its sandbox: the host key is made, the
    // snapshot sealed.
    container.sh("test ! -e /var/lib/systemd/credential.secret");
    container.sh("systemctl start bootagent-boot.service");
    assert_eq!(
        container.show("bootagent-boot.service", "Result"),
        "success"
    );
    assert_eq!(
        status(&container)["secrets_from"],
        serde_json::json!({ "region": "us-east-1" })
    );
    assert_eq!(
        container.sh(&format!("stat -c %a:%U {SNAPSHOT}")),
        "600:root\n"
    );
    // Sealed by systemd-creds: not the clear text, not base64 of it.
    let sealed = container.sh(&format!("cat {SNAPSHOT}"));
    assert!(!sealed.contains(&outage.canary) && !sealed.contains("APP_TOKEN"));

    // The instance reboots (the env file on tmpfs is gone) while Secrets Manager is stopped.
    set_secrets_manager(&container, Some(&outage.stopped));
    container.reboot();
    container.sh("test ! -e /run/bootagent");
    let _ = std::fs::remove_file(container.out().join("out/env"));
    container.sh("systemctl start bootagent-boot.service");
    assert_eq!(
        container.show("bootagent-boot.service", "Result"),
        "success"
    );
    let status_now = status(&container);
    assert_eq!(status_now["outcome"], "degraded", "{status_now}");
    let degraded = status_now["degraded"].as_str().unwrap();
    assert!(
        degraded.contains("running on the snapshot of the last good secrets, taken"),
        "{degraded}"
    );
    assert!(
        status_now["secrets_from"]["snapshot"]["age_seconds"].is_u64(),
        "{status_now}"
    );
    assert_eq!(container.show(&unit, "ActiveState"), "active");
    let seen = outage.service_env(&container);
    assert!(
        seen.contains(&format!("APP_TOKEN={}", outage.canary)),
        "{seen}"
    );
    let history = container.sh("tail -n1 /var/lib/bootagent/history.jsonl");
    assert!(history.contains("\"outcome\":\"degraded\""), "{history}");
    // The structured field a log pipeline alerts on.
    let journal = container.sh("journalctl --no-pager -o cat F_DEGRADED=secrets-snapshot");
    assert!(
        journal.contains("the secrets are the snapshot of"),
        "{journal}"
    );
    let shown = container.bootagent(&outage.imds, &["status"]);
    assert!(
        shown
            .stdout()
            .contains("from the snapshot of the last good secrets"),
        "{}",
        shown.stdout()
    );
    // The health report and /metrics, as the load balancer and Prometheus read them.
    container.sh("systemctl start bootagent-health.service");
    let health = container.health_url();
    let report = curl(&["-s", &health]);
    assert!(report.contains("\"state\":\"degraded\""), "{report}");
    let metrics = curl(&["-sSf", &health.replace("/health", "/metrics")]);
    assert!(
        metrics.contains("bootagent_secrets_snapshot_age_seconds "),
        "{metrics}"
    );
    assert!(
        metrics.contains("bootagent_boot_outcome{outcome=\"degraded\"} 1"),
        "{metrics}"
    );

    // Still stopped: refresh cannot leave the snapshot.
    container.exec(&["systemctl", "start", "bootagent-refresh.service"]);
    assert_eq!(
        container.show("bootagent-refresh.service", "Result"),
        "exit-code"
    );
    assert_eq!(status(&container)["outcome"], "degraded");
    // Secrets Manager answers again: the next refresh boots from it.
    set_secrets_manager(&container, None);
    container.sh("systemctl start bootagent-refresh.service");
    let status_now = status(&container);
    assert_eq!(status_now["outcome"], "succeeded", "{status_now}");
    assert_eq!(
        status_now["secrets_from"],
        serde_json::json!({ "region": "us-east-1" })
    );
    assert!(has_snapshot(&container));
    outage.assert_canary_only_where_it_belongs(&container);
}

#[test]
fn a_no_from_secrets_manager_deletes_the_snapshot_and_the_boot_fails_as_before() {
    support::needs_world!();
    let outage = Outage::new("deny");
    let config = format!("{QUICK_GATE}{FALLBACK}{SHORT_BOOT}");
    let container = Container::boot(&config);
    outage.install(&container, &config);
    outage.boot(&container, &[]).expect(0);
    assert!(has_snapshot(&container));

    let denied = AwsError::start(
        "AccessDeniedException",
        400,
        "User is not authorized to perform: secretsmanager:GetSecretValue",
    );
    let endpoint = format!("AWS_ENDPOINT_URL_SECRETS_MANAGER={}", denied.url);
    let run = outage.boot(&container, &[&endpoint]);
    run.expect(5).stderr_has("was denied");
    assert!(
        !has_snapshot(&container),
        "a denial must delete the snapshot"
    );
    run.stderr_has("security_event=\"secrets-snapshot-deleted\"");
    // The last good env file is kept, as for any failed boot.
    let env_file = container.sh(&format!("cat /run/bootagent/{}.env", outage.name));
    assert!(env_file.contains(&outage.canary));
    // Without a snapshot, an outage fails the boot, and says there is none.
    let run = outage.boot_while_stopped(&container);
    run.expect(75)
        .stderr_has("there is no snapshot of the last good secrets");

    // The secret deleted in Secrets Manager: the same.
    outage.boot(&container, &[]).expect(0);
    assert!(has_snapshot(&container));
    secretsmanager(
        "DeleteSecret",
        serde_json::json!({
            "SecretId": format!("{}_env_prod", outage.name),
            "ForceDeleteWithoutRecovery": true,
        }),
    );
    outage
        .boot(&container, &[])
        .expect(5)
        .stderr_has("was not found");
    assert!(!has_snapshot(&container));
    outage.assert_canary_only_where_it_belongs(&container);
}

#[test]
fn a_snapshot_older_than_the_maximum_is_not_used_and_the_boot_says_so() {
    support::needs_world!();
    let outage = Outage::new("old");
    let config = format!("{QUICK_GATE}{FALLBACK}snapshot_max_age = \"2s\"\n{SHORT_BOOT}");
    let container = Container::boot(&config);
    outage.install(&container, &config);
    outage.boot(&container, &[]).expect(0);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let run = outage.boot_while_stopped(&container);
    run.expect(75)
        .stderr_has("did not return secret")
        .stderr_has("past secrets.snapshot_max_age (2s)");
    assert_eq!(status(&container)["outcome"], "failed");
    // Kept: the boot that Secrets Manager answers next replaces it.
    assert!(has_snapshot(&container));
}

#[test]
fn a_snapshot_copied_to_another_host_does_not_decrypt_there() {
    support::needs_world!();
    let outage = Outage::new("copy");
    let config = format!("{QUICK_GATE}{FALLBACK}{SHORT_BOOT}");
    let first = Container::boot(&config);
    outage.install(&first, &config);
    outage.boot(&first, &[]).expect(0);
    first.sh(&format!("cp {SNAPSHOT} /share/out/stolen.snapshot"));
    let stolen = first.out().join("out/stolen.snapshot");
    assert!(files_containing(&first.out().join("out"), &outage.canary)
        .iter()
        .all(|path| *path != stolen));

    // The same image, another instance: its own host key.
    let second = Container::boot(&config);
    outage.install(&second, &config);
    std::fs::copy(&stolen, second.out().join("stolen.snapshot")).unwrap();
    second.sh(&format!(
        "mkdir -p /var/lib/bootagent && install -m 600 /share/stolen.snapshot {SNAPSHOT}"
    ));
    let run = outage.boot_while_stopped(&second);
    run.expect(75)
        .stderr_has("could not be decrypted on this host");
    let unit = format!("{}.service", outage.name);
    assert_ne!(second.show(&unit, "ActiveState"), "active");
    outage.assert_canary_only_where_it_belongs(&second);
    // The tool itself agrees: not bootagent's refusal alone.
    let decrypted = second.exec(&[
        "systemd-creds",
        "decrypt",
        "--name",
        "bootagent-secrets-snapshot",
        SNAPSHOT,
        "-",
    ]);
    assert!(!decrypted.status.success());
    assert!(!String::from_utf8_lossy(&decrypted.stdout).contains(&outage.canary));
}

#[test]
fn a_replica_region_serves_when_the_instance_region_is_stopped_and_a_denial_is_not_retried_there() {
    support::needs_world!();
    let outage = Outage::new("replica");
    let value = serde_json::json!({ "APP_TOKEN": outage.canary }).to_string();
    let secret = format!("{}_env_prod", outage.name);
    // Replication keeps the name and the value: two motos, one a region each.
    let mut primary = Moto::start_private();
    let replica = Moto::start_private();
    primary.create_secret_in("us-east-1", &secret, &value);
    replica.create_secret_in("us-west-2", &secret, &value);
    let front = RegionFront::start(&[("us-east-1", &primary.url), ("us-west-2", &replica.url)]);
    let endpoint = format!("AWS_ENDPOINT_URL_SECRETS_MANAGER={}", front.url);
    let config = format!("{QUICK_GATE}{FALLBACK}regions = [\"us-west-2\"]\n");
    let container = Container::boot(&config);
    outage.install(&container, &config);

    outage.boot(&container, &[&endpoint]).expect(0);
    assert_eq!(status(&container)["secrets_from"]["region"], "us-east-1");
    assert_eq!(front.requests()["us-west-2"], 0);

    primary.stop();
    container.sh("rm -f /var/lib/bootagent/secrets.snapshot");
    outage.boot(&container, &[&endpoint]).expect(0);
    let status_now = status(&container);
    assert_eq!(status_now["outcome"], "succeeded", "{status_now}");
    assert_eq!(status_now["secrets_from"]["region"], "us-west-2");
    assert!(front.requests()["us-west-2"] >= 1);
    let shown = container.bootagent(&outage.imds, &["status"]);
    assert!(
        (shown.stdout()).contains("read from the replica region us-west-2"),
        "{}",
        shown.stdout()
    );
    let seen = outage.service_env(&container);
    assert!(
        seen.contains(&format!("APP_TOKEN={}", outage.canary)),
        "{seen}"
    );
    // doctor: the instance's region fails, the replica serves.
    let doctor = container.bootagent_with(&outage.imds, &[&endpoint], &["doctor", "--json"]);
    outage.assert_no_canary(&doctor);
    let report: serde_json::Value = serde_json::from_str(&doctor.stdout()).unwrap();
    let check = |name: &str| {
        (report["checks"].as_array().unwrap().iter())
            .find(|c| c["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(check("secret")["verdict"], "fail", "{report}");
    assert_eq!(check("replicas")["verdict"], "ok", "{report}");
    assert_eq!(
        check("replicas")["detail"],
        "replicas serve: us-west-2 (1 secret(s))"
    );

    // The instance's region says no: final, the replica is not asked.
    let denied = AwsError::start(
        "AccessDeniedException",
        400,
        "User is not authorized to perform: secretsmanager:GetSecretValue",
    );
    let denying_front =
        RegionFront::start(&[("us-east-1", &denied.url), ("us-west-2", &replica.url)]);
    let endpoint = format!("AWS_ENDPOINT_URL_SECRETS_MANAGER={}", denying_front.url);
    outage
        .boot(&container, &[&endpoint])
        .expect(5)
        .stderr_has("was denied");
    assert_eq!(denying_front.requests()["us-east-1"], 1);
    assert_eq!(denying_front.requests()["us-west-2"], 0);
    assert!(!has_snapshot(&container));
    outage.assert_canary_only_where_it_belongs(&container);
}

/// A snapshot sealed with systemd's null key (`--with-key=tpm2-absent`, which anyone can make
/// without any host key) and a `taken_at` in the future: it decrypts on every host, so it must
/// be refused when read, as it is when written; and its age must not count as zero.
#[test]
fn a_snapshot_sealed_without_a_key_or_taken_in_the_future_is_not_used() {
    support::needs_world!();
    let outage = Outage::new("forged");
    let config = format!("{QUICK_GATE}{FALLBACK}{SHORT_BOOT}");
    let container = Container::boot(&config);
    outage.install(&container, &config);
    outage.boot(&container, &[]).expect(0);
    let forged = serde_json::json!({
        "taken_at": 4_102_444_800u64, // 2100-01-01
        "region": "us-east-1",
        "secrets": {
            format!("{}_env_prod", outage.name): {
                "selector": "stage:AWSCURRENT",
                "version_id": "forged",
                "text": "{\"APP_TOKEN\": \"forged-by-anyone\"}",
            }
        }
    });
    std::fs::write(container.out().join("forged.json"), forged.to_string()).unwrap();
    let seal = |key: &str| {
        container.sh(&format!(
            "systemd-creds encrypt --with-key={key} --name bootagent-secrets-snapshot \
             /share/forged.json {SNAPSHOT}"
        ));
    };
    // Without any key: made on no host in particular.
    seal("tpm2-absent");
    let run = outage.boot_while_stopped(&container);
    assert!(
        !outage.service_env(&container).contains("forged-by-anyone"),
        "{}",
        run.stderr()
    );
    run.expect(75).stderr_has("sealed with no key");
    // With this host's key, but taken in 2100: not "0s old" for the next 75 years.
    seal("host");
    let run = outage.boot_while_stopped(&container);
    assert!(
        !outage.service_env(&container).contains("forged-by-anyone"),
        "{}",
        run.stderr()
    );
    run.expect(75).stderr_has("ahead of this host's clock");
    // A time no clock reaches: refused, not a panic.
    let mut forged = forged;
    forged["taken_at"] = serde_json::json!(u64::MAX);
    std::fs::write(container.out().join("forged.json"), forged.to_string()).unwrap();
    seal("host");
    outage.boot_while_stopped(&container).expect(75);
}

/// `deploy` reads the secrets (GetSecretValue) to list the remote when the git token lives in
/// one; with the main secret pinned, that is the only call it makes to Secrets Manager. A "no"
/// there is as final as at a boot: the snapshot goes, or the next outage boots on what was
/// just refused.
#[test]
fn a_no_to_the_deploys_read_of_the_git_token_deletes_the_snapshot() {
    support::needs_world!();
    let outage = Outage::new("dtoken");
    let secret = format!("{}_env_prod", outage.name);
    let value = serde_json::json!({ "APP_TOKEN": outage.canary, "GIT_TOKEN": "unused" });
    let version = put_secret_value(&secret, &value.to_string());
    let config = format!(
        "{QUICK_GATE}{FALLBACK}version_id = \"{version}\"\n[git]\ntoken = \"secret:GIT_TOKEN\"\n\
         {SHORT_BOOT}"
    );
    let container = Container::boot(&config);
    outage.install(&container, &config);
    outage.boot(&container, &[]).expect(0);
    assert!(has_snapshot(&container));

    let denied = AwsError::start(
        "AccessDeniedException",
        400,
        "User is not authorized to perform: secretsmanager:GetSecretValue",
    );
    let endpoint = format!("AWS_ENDPOINT_URL_SECRETS_MANAGER={}", denied.url);
    let run = container.bootagent_with(&outage.imds, &[&endpoint], &["deploy"]);
    outage.assert_no_canary(&run);
    run.expect(5).stderr_has("was denied");
    assert!(
        !has_snapshot(&container),
        "a denial must delete the snapshot: {}",
        run.stderr()
    );
    // And so the outage that follows does not boot on it.
    outage
        .boot_while_stopped(&container)
        .expect(75)
        .stderr_has("there is no snapshot of the last good secrets");
}

/// Every region accepts the connection and never answers (each call ends at secrets.timeout),
/// with two replicas: each region must leave what comes after it its turn, as the README says
/// ("at most half of what the boot has left"), or the secrets step's deadline ends the boot
/// before the snapshot is opened.
#[test]
fn the_snapshot_gets_its_turn_when_every_region_hangs() {
    support::needs_world!();
    let outage = Outage::new("hang");
    let config = format!(
        "{QUICK_GATE}[secrets]\nfallback_after = \"1m\"\ntimeout = \"5s\"\n\
         regions = [\"us-west-2\", \"eu-west-1\"]\n[boot]\ndeadline = \"20s\"\n"
    );
    let container = Container::boot(&config);
    outage.install(&container, &config);
    outage.boot(&container, &[]).expect(0);
    assert!(has_snapshot(&container));
    // Connections complete in the backlog; nothing ever reads them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!(
        "AWS_ENDPOINT_URL_SECRETS_MANAGER=http://{}",
        silent.local_addr().unwrap()
    );
    let run = outage.boot(&container, &[&endpoint]);
    run.expect(0);
    assert_eq!(status(&container)["outcome"], "degraded");
    drop(silent);
}

/// Secrets Manager silent, and a snapshot kept but too old to serve: the region is retried for
/// as long as the boot deadline leaves, as with no snapshot at all, instead of giving up after
/// secrets.fallback_after for a fallback that cannot stand in.
#[test]
fn a_snapshot_that_cannot_serve_does_not_cut_the_retries_short() {
    support::needs_world!();
    let outage = Outage::new("short");
    let config = format!("{QUICK_GATE}{FALLBACK}snapshot_max_age = \"2s\"\n{SHORT_BOOT}");
    let container = Container::boot(&config);
    outage.install(&container, &config);
    outage.boot(&container, &[]).expect(0);
    assert!(has_snapshot(&container));
    std::thread::sleep(std::time::Duration::from_secs(3));
    // Each call ends at secrets.timeout (3s): the time a boot spends is known.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!(
        "AWS_ENDPOINT_URL_SECRETS_MANAGER=http://{}",
        silent.local_addr().unwrap()
    );
    let started = std::time::Instant::now();
    let run = outage.boot(&container, &[&endpoint]);
    let took = started.elapsed();
    run.expect(75)
        .stderr_has("past secrets.snapshot_max_age (2s)");
    // fallback_after (2s) is one call; the 12s deadline less one call (4s) leaves room for two
    // or three.
    assert!(
        took >= std::time::Duration::from_millis(4500),
        "gave up after {took:?}: {}",
        run.stderr()
    );
    drop(silent);
}
