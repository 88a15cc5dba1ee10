//! The fault matrix: every fault the boot chain can meet, at the moment it strikes, run against
//! the real binary and the test world, with what the operator must see and what must be left.
//! Writes docs/faults.md (generated: edit this file, not that one), then fails if any row
//! differs from its expectation.
//!
//! Each row starts from an instance that booted once (the earlier env file and release), then
//! brings a change — a new secret version and a new commit — and meets the fault on the way.
//! A row checks the exit code, the outcome a reader of status.json sees, that the message names
//! the cause and the fix, which env file and release are left, that a boot afterwards converges
//! where it should, and that neither the old nor the new secret value (canaries) appears in any
//! output or in any file written outside the env file.

use std::path::{Path, PathBuf};

use support::container::Container;
use support::matrix;
use support::netns::{NetNs, Peer};
use support::*;

/// What a row leaves: the state from before the faulty boot, or the change it brought.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Left {
    Earlier,
    New,
}

impl Left {
    fn word(self) -> &'static str {
        match self {
            Left::Earlier => "earlier kept",
            Left::New => "new",
        }
    }
}

/// The exit "code" of a process killed by SIGKILL.
const KILLED: i32 = -9;

struct Expect {
    code: i32,
    /// As `bootagent status --json` reads it.
    outcome: &'static str,
    /// What the message must say: the cause, and the fix where there is one to give.
    says: &'static [&'static str],
    env: Left,
    release: Left,
    /// A plain boot afterwards (the fault gone) brings the change.
    converges: bool,
}

/// One instance that booted once, and the change the next boot should bring.
struct Setup {
    name: String,
    instance: Instance,
    imds: Imds,
    earlier_env: Vec<u8>,
    earlier_commit: String,
    new_commit: String,
    canaries: [String; 2],
    /// With [`FILES`] in the config, the secret file the first boot wrote.
    earlier_file: Option<Vec<u8>>,
}

impl Setup {
    fn prepare(config: &str) -> Setup {
        let mut service = Service::create("fault");
        let instance = Instance::exec_mode(config);
        instance.run(&service.imds, &["boot"]).expect(0);
        let earlier_file = config
            .contains("[[files]]")
            .then(|| std::fs::read(secret_file(&service.name)).unwrap());
        let earlier_env = std::fs::read(instance.env_file(&service.name)).unwrap();
        let earlier_commit = instance.running_commit(&service.name);
        let new_commit = service.change();
        Setup {
            name: service.name,
            instance,
            imds: service.imds,
            earlier_env,
            earlier_commit,
            new_commit,
            canaries: service.canaries,
            earlier_file,
        }
    }

    /// The boot with the world's endpoints plus `env`.
    fn boot(&self, imds: &Imds, env: &[(&str, &str)]) -> Run {
        self.instance.run_with(imds, &["boot"], env)
    }

    /// The same instance tagged with another Repository.
    fn imds_with_repository(&self, url: &str) -> Imds {
        Imds::for_service(&self.name, "prod", url)
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if self.earlier_file.is_some() {
            let _ = std::fs::remove_dir_all(secret_file(&self.name).parent().unwrap());
            // The last row out takes the root too; the others find it not empty.
            let _ = std::fs::remove_dir("/dev/shm/bootagent-files");
        }
    }
}

/// A secret file on tmpfs holding the secret's TOKEN (a canary), which each boot writes.
const FILES: &str =
    "[paths]\nfile_roots = [\"/dev/shm/bootagent-files\", \"/var/tmp/bootagent-files\"]\n\
                     [[files]]\npath = \"/dev/shm/bootagent-files/{service}/app.conf\"\n\
                     template = \"token={{ secrets.TOKEN }}\\n\"\n";

/// A `[[files]]` source that holds no canary.
const PORT: &str = "secret = \"{service}_env_prod#PORT\"\n";

fn secret_file(service: &str) -> PathBuf {
    Path::new("/dev/shm/bootagent-files")
        .join(service)
        .join("app.conf")
}

/// The boot after [`FILES`] gained `bad`, a second entry that cannot be delivered.
fn with_bad_file(setup: &Setup, bad: &str) -> Run {
    let config = format!("{FILES}[[files]]\n{bad}");
    // After the 50-test.toml drop-in with FILES, whose [[files]] this one replaces.
    setup.instance.add_config("60-files.toml", &config);
    setup.boot(&setup.imds, &[])
}

/// A service in the test world (its secret holds the first canary, its repository one commit),
/// and the change a later boot should bring.
struct Service {
    name: String,
    repo: SampleRepo,
    imds: Imds,
    canaries: [String; 2],
}

impl Service {
    fn create(prefix: &str) -> Service {
        let name = unique(prefix);
        let repo = SampleRepo::create(&name);
        let canaries = [canary(), canary()];
        create_secret(&Service::secret(&name), &Service::value(&canaries[0]));
        Service {
            imds: Imds::for_service(&name, "prod", &repo.url),
            name,
            repo,
            canaries,
        }
    }

    fn secret(name: &str) -> String {
        format!("{name}_env_prod")
    }

    fn value(token: &str) -> String {
        serde_json::json!({ "TOKEN": token, "PORT": 8080 }).to_string()
    }

    /// A new secret version (the second canary) and a new commit, which it returns.
    fn change(&mut self) -> String {
        put_secret_value(
            &Service::secret(&self.name),
            &Service::value(&self.canaries[1]),
        );
        self.repo.push_version("prod", "prod build 2\n")
    }
}

/// What the checks of a row read from the instance it ran on.
trait Subject {
    fn env_left(&self) -> Option<Left>;
    fn release_left(&self) -> Option<Left>;
    /// The outcome as `bootagent status --json` reads it.
    fn outcome(&self) -> String;
    /// The unit's ActiveState, in systemd mode.
    fn unit_state(&self) -> Option<String>;
    /// A plain boot with the fault gone.
    fn boot_again(&self) -> Run;
    /// Temporary files and staging links a killed boot left behind.
    fn leftovers(&self) -> usize;
    /// The canaries: the secret values from before and after the change.
    fn canaries(&self) -> &[String; 2];
    /// Where a canary was found outside the runs' output: a file outside the env file and the
    /// service's own record of its environment (and, in the container, the journal).
    fn leaks(&self) -> Vec<String>;
    /// Which secret file is left, when the row has one ([`FILES`]): it goes with the env file.
    fn file_left(&self) -> Option<Option<Left>> {
        None
    }
}

impl Subject for Setup {
    fn env_left(&self) -> Option<Left> {
        let now = std::fs::read(self.instance.env_file(&self.name)).ok()?;
        env_left(&now, &self.earlier_env, &self.canaries[1])
    }

    fn release_left(&self) -> Option<Left> {
        let running = std::fs::read_link(self.instance.checkout(&self.name)).ok()?;
        let running = running.file_name()?.to_string_lossy().into_owned();
        release_left(&running, &self.earlier_commit, &self.new_commit)
    }

    fn outcome(&self) -> String {
        let run = self.instance.run(&self.imds, &["status", "--json"]);
        serde_json::from_str::<serde_json::Value>(&run.stdout())
            .map(|status| status["outcome"].as_str().unwrap_or("?").to_string())
            .unwrap_or_else(|_| "no status".to_string())
    }

    fn canaries(&self) -> &[String; 2] {
        &self.canaries
    }

    fn leaks(&self) -> Vec<String> {
        self.canaries
            .iter()
            .flat_map(|canary| self.instance.files_holding(canary, &self.name))
            .map(|path| path.display().to_string())
            .collect()
    }

    fn unit_state(&self) -> Option<String> {
        None
    }

    fn file_left(&self) -> Option<Option<Left>> {
        let earlier = self.earlier_file.as_ref()?;
        let now = std::fs::read(secret_file(&self.name)).ok();
        Some(now.and_then(|now| env_left(&now, earlier, &self.canaries[1])))
    }

    fn boot_again(&self) -> Run {
        self.boot(&self.imds, &[])
    }

    fn leftovers(&self) -> usize {
        let temporary = std::fs::read_dir(self.instance.run.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .count();
        let link = self.instance.checkout(&self.name);
        let prefix = format!(".{}.link-", self.name);
        let staging = std::fs::read_dir(link.parent().unwrap_or(Path::new("/")))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .count();
        temporary + staging
    }
}

/// Which env file `now` is: the earlier one, or one with the new secret value.
fn env_left(now: &[u8], earlier: &[u8], new_canary: &str) -> Option<Left> {
    if now == earlier {
        Some(Left::Earlier)
    } else if String::from_utf8_lossy(now).contains(new_canary) {
        Some(Left::New)
    } else {
        None
    }
}

fn release_left(running: &str, earlier_commit: &str, new_commit: &str) -> Option<Left> {
    if running == earlier_commit {
        Some(Left::Earlier)
    } else if running == new_commit {
        Some(Left::New)
    } else {
        None
    }
}

/// How a row meets its fault.
enum Strike {
    /// Sets the fault up and runs the faulty boot (or command).
    Run(fn(&Setup) -> Run),
    /// A boot killed with SIGKILL at this failpoint (src/failpoint.rs).
    Kill(&'static str),
    /// A boot killed inside the write of its env file.
    KillInEnvWrite,
}

struct Fault {
    fault: String,
    when: &'static str,
    /// A config drop-in for the instance.
    config: &'static str,
    strike: Strike,
    expect: Expect,
}

/// A row as docs/faults.md prints it, and what did not match.
struct Row {
    fault: String,
    when: &'static str,
    expected: String,
    observed: String,
    problems: Vec<String>,
}

fn check(fault: &Fault) -> Row {
    let setup = Setup::prepare(fault.config);
    let run = match fault.strike {
        Strike::Run(strike) => strike(&setup),
        Strike::Kill(point) => killed_at(&setup, point),
        Strike::KillInEnvWrite => killed_at(&setup, &format!("before-rename:{}.env", setup.name)),
    };
    judge(&setup, &fault.fault, fault.when, &fault.expect, None, run)
}

/// Compares what `run` left on `subject` with `expect` (and the unit's state with `unit`, in
/// systemd mode); where the row expects convergence, boots again and checks that too.
fn judge(
    subject: &dyn Subject,
    fault: &str,
    when: &'static str,
    expect: &Expect,
    unit: Option<&str>,
    run: Run,
) -> Row {
    let code = if run.0.status.code().is_none() {
        KILLED
    } else {
        run.code()
    };
    let outcome = subject.outcome();
    let (env, release) = (subject.env_left(), subject.release_left());
    let mut problems = Vec::new();
    if code != expect.code {
        problems.push(format!("exit {code}"));
    }
    if outcome != expect.outcome {
        problems.push(format!("outcome {outcome}"));
    }
    let message = format!("{}{}", run.stdout(), run.stderr());
    if message.contains("panicked at") {
        problems.push("the binary panicked".to_string());
    }
    for needle in expect.says {
        if !message.contains(needle) {
            let said = run.stderr();
            let tail = &said[said.len().saturating_sub(400)..];
            problems.push(format!("message lacks {needle:?} (it ends: {tail:?})"));
        }
    }
    if env != Some(expect.env) {
        problems.push(format!("env file {env:?}"));
    }
    if release != Some(expect.release) {
        problems.push(format!("release {release:?}"));
    }
    let file = subject.file_left();
    if file.is_some_and(|file| file != Some(expect.env)) {
        problems.push(format!("secret file {:?}", file.flatten()));
    }
    if let Some(unit) = unit {
        let state = subject.unit_state().unwrap_or_default();
        if state != unit {
            problems.push(format!("unit {state}"));
        }
    }
    let mut runs = vec![run];
    let converged = if expect.converges {
        let again = subject.boot_again();
        let leftovers = subject.leftovers();
        let ok = again.code() == 0
            && subject.env_left() == Some(Left::New)
            && subject.release_left() == Some(Left::New)
            && leftovers == 0;
        if !ok {
            let said = again.stderr();
            problems.push(format!(
                "did not converge: exit {}, env {:?}, release {:?}, {leftovers} temporary files \
                 or staging links (it ends: {:?})",
                again.code(),
                subject.env_left(),
                subject.release_left(),
                &said[said.len().saturating_sub(400)..]
            ));
        }
        runs.push(again);
        Some(ok)
    } else {
        None
    };
    let mut leaks = subject.leaks();
    for canary in subject.canaries() {
        for (n, run) in runs.iter().enumerate() {
            if run.stdout().contains(canary.as_str()) || run.stderr().contains(canary.as_str()) {
                leaks.push(format!("output of run {}", n + 1));
            }
        }
    }
    if !leaks.is_empty() {
        problems.push(format!("secret in {}", leaks.join(", ")));
    }
    let shown = |code: i32| {
        if code == KILLED {
            "killed".to_string()
        } else {
            code.to_string()
        }
    };
    let says = if expect.says.is_empty() {
        String::new()
    } else {
        let needles: Vec<String> = expect.says.iter().map(|s| format!("`{s}`")).collect();
        format!("; says {}", needles.join(" + "))
    };
    let files = match file {
        Some(_) => format!(", secret file {}", expect.env.word()),
        None => String::new(),
    };
    let expected = format!(
        "{}, {}{says}; env {}{files}, release {}{}{}",
        shown(expect.code),
        expect.outcome,
        expect.env.word(),
        expect.release.word(),
        unit.map(|unit| format!(", unit {unit}"))
            .unwrap_or_default(),
        if expect.converges {
            "; next boot converges"
        } else {
            ""
        }
    );
    let observed = if problems.is_empty() {
        format!(
            "as expected{}; no secret in any output or file",
            match converged {
                Some(true) => ", converged",
                _ => "",
            }
        )
    } else {
        problems.join("; ")
    };
    Row {
        fault: fault.to_string(),
        when,
        expected,
        observed,
        problems,
    }
}

fn imds_with(setup: &Setup, state: serde_json::Value) -> Imds {
    let mut full = serde_json::json!({
        "tags": {
            "Service": setup.name,
            "Environment": "prod",
            "Repository": SampleRepo::url_of(&setup.name),
        },
    });
    for (key, value) in state.as_object().unwrap() {
        full[key] = value.clone();
    }
    Imds::start(full)
}

fn with_endpoint(setup: &Setup, key: &str, url: &str) -> Run {
    setup.boot(&setup.imds, &[(key, url)])
}

fn killed_at(setup: &Setup, point: &str) -> Run {
    setup.boot(&setup.imds, &[("BOOTAGENT_FAILPOINT", point)])
}

// Transient Secrets Manager errors are tried again for as long as the boot deadline leaves
// room for one more call: a short deadline keeps those rows short. No snapshot of the last good
// secrets is kept, so that nothing stands in for Secrets Manager (SNAPSHOT rows: one does).
const FAST_SECRETS: &str =
    "[secrets]\ntimeout = \"3s\"\nsnapshot_max_age = \"0s\"\n[boot]\ndeadline = \"12s\"\n";
// The default snapshot (the first boot kept one), given its turn after 2 s of retries.
const SNAPSHOT: &str =
    "[secrets]\ntimeout = \"3s\"\nfallback_after = \"2s\"\n[boot]\ndeadline = \"12s\"\n";
const SNAPSHOT_1S: &str = "[secrets]\ntimeout = \"3s\"\nfallback_after = \"2s\"\nsnapshot_max_age = \"1s\"\n[boot]\ndeadline = \"12s\"\n";
const FAST_GIT: &str = "[git]\ntimeout = \"2s\"\ndeadline = \"4s\"\n";
const FAIL_ON_GIT: &str = "[git]\ntimeout = \"2s\"\ndeadline = \"4s\"\non_failure = \"fail\"\n";
const FALLBACK: &str = "[identity]\ndescribe_tags_fallback = true\n";
// Throttled DescribeTags is tried again for as long as the boot deadline leaves: a short one.
const FALLBACK_FLEET: &str =
    "[identity]\ndescribe_tags_fallback = true\n[boot]\ndeadline = \"6s\"\n";

fn faults() -> Vec<Fault> {
    let ok = |env, release| Expect {
        code: 0,
        outcome: "succeeded",
        says: &[],
        env,
        release,
        converges: false,
    };
    vec![
        // Instance metadata.
        Fault {
            fault: "IMDS slow (0.3 s per answer)".into(),
            when: "identity",
            config: "",
            strike: Strike::Run(|s| s.boot(&imds_with(s, serde_json::json!({"delay": 0.3})), &[])),
            expect: ok(Left::New, Left::New),
        },
        Fault {
            fault: "IMDS 5xx storm, short (4 answers)".into(),
            when: "identity",
            config: "",
            strike: Strike::Run(|s| {
                s.boot(&imds_with(s, serde_json::json!({"fail_next": 4})), &[])
            }),
            expect: ok(Left::New, Left::New),
        },
        Fault {
            fault: "IMDS 429 throttling (4 answers)".into(),
            when: "identity",
            config: "",
            strike: Strike::Run(|s| {
                let state = serde_json::json!({"fail_next": 4, "fail_status": 429});
                s.boot(&imds_with(s, state), &[])
            }),
            expect: ok(Left::New, Left::New),
        },
        Fault {
            fault: "IMDS 5xx storm, lasting".into(),
            when: "identity",
            config: "",
            strike: Strike::Run(|s| {
                s.boot(&imds_with(s, serde_json::json!({"fail_next": 100000})), &[])
            }),
            expect: fails(
                75,
                &[
                    "did not answer",
                    "attempts; last error: token request: HTTP 500",
                    "HttpEndpoint=enabled",
                ],
            ),
        },
        Fault {
            fault: "IMDS token revoked mid-boot".into(),
            when: "identity",
            config: "",
            strike: Strike::Run(|s| {
                s.boot(
                    &imds_with(s, serde_json::json!({"expire_tokens_after": 2})),
                    &[],
                )
            }),
            expect: ok(Left::New, Left::New),
        },
        Fault {
            fault: "tags arrive late (1 s)".into(),
            when: "identity",
            config: "",
            strike: Strike::Run(|s| {
                s.boot(&imds_with(s, serde_json::json!({"tags_delay": 1})), &[])
            }),
            expect: ok(Left::New, Left::New),
        },
        Fault {
            fault: "tags arrive after identity.tag_wait".into(),
            when: "identity",
            config: "",
            strike: Strike::Run(|s| {
                s.boot(&imds_with(s, serde_json::json!({"tags_delay": 30})), &[])
            }),
            expect: fails(
                3,
                &[
                    "instance tag Service is missing (waited 2s",
                    "identity.service_tag",
                ],
            ),
        },
        Fault {
            fault: "tags in metadata disabled".into(),
            when: "identity",
            config: "",
            strike: Strike::Run(|s| s.boot(&imds_with(s, serde_json::json!({"tags": null})), &[])),
            expect: fails(
                4,
                &[
                    "tags in metadata are disabled",
                    "--instance-metadata-tags enabled",
                ],
            ),
        },
        Fault {
            fault: "IMDS disabled (403)".into(),
            when: "identity",
            config: "",
            strike: Strike::Run(|s| {
                s.boot(&imds_with(s, serde_json::json!({"disabled": true})), &[])
            }),
            expect: fails(15, &["HTTP 403", "--http-endpoint enabled"]),
        },
        Fault {
            fault: "IMDS down (connection refused)".into(),
            when: "identity",
            config: "",
            strike: Strike::Run(|s| {
                let refusing = RefusingPort::bind();
                let url = refusing.url("http", "");
                with_endpoint(s, "AWS_EC2_METADATA_SERVICE_ENDPOINT", &url)
            }),
            expect: fails(
                75,
                &["did not answer meta-data/instance-id", "Connection refused"],
            ),
        },
        Fault {
            fault: "IMDS answer over 1 MiB".into(),
            when: "identity",
            config: "",
            strike: Strike::Run(|s| {
                let huge = "a".repeat(2 << 20);
                let state = serde_json::json!({"tags": {"Service": huge, "Environment": "prod"}});
                s.boot(&Imds::start(state), &[])
            }),
            expect: fails(
                15,
                &["more than 1048576 bytes", "something other than EC2's"],
            ),
        },
        Fault {
            fault: "Service tag with `../`".into(),
            when: "identity",
            config: "",
            strike: Strike::Run(|s| {
                let state =
                    serde_json::json!({"tags": {"Service": "../../etc", "Environment": "prod"}});
                s.boot(&Imds::start(state), &[])
            }),
            expect: fails(
                3,
                &["instance tag Service=\"../../etc\" is not a valid name"],
            ),
        },
        Fault {
            fault: "unknown environment tag".into(),
            when: "identity",
            config: "",
            strike: Strike::Run(|s| {
                let state = serde_json::json!({"tags": {"Service": s.name, "Environment": "qa"}});
                s.boot(&Imds::start(state), &[])
            }),
            expect: Expect {
                code: 3,
                outcome: "failed",
                says: &["\"qa\"", "[environments]"],
                env: Left::Earlier,
                release: Left::Earlier,
                converges: true,
            },
        },
        // ec2:DescribeTags, when tags in metadata are disabled.
        Fault {
            fault: "DescribeTags refused (UnauthorizedOperation)".into(),
            when: "identity (fallback)",
            config: FALLBACK,
            strike: Strike::Run(|s| {
                let refused = AwsError::start_ec2(
                    "UnauthorizedOperation",
                    403,
                    "You are not authorized to perform this operation.",
                );
                let imds = imds_with(s, serde_json::json!({"tags": null}));
                s.boot(&imds, &[("AWS_ENDPOINT_URL_EC2", refused.url.as_str())])
            }),
            expect: fails(4, &["UnauthorizedOperation", "ec2:DescribeTags"]),
        },
        Fault {
            fault: "DescribeTags throttled (RequestLimitExceeded)".into(),
            when: "identity (fallback)",
            config: FALLBACK_FLEET,
            strike: Strike::Run(|s| {
                let throttling =
                    AwsError::start_ec2("RequestLimitExceeded", 503, "Request limit exceeded.");
                let imds = imds_with(s, serde_json::json!({"tags": null}));
                s.boot(&imds, &[("AWS_ENDPOINT_URL_EC2", throttling.url.as_str())])
            }),
            expect: fails(
                75,
                &[
                    "ec2:DescribeTags failed",
                    "times within",
                    "RequestLimitExceeded",
                ],
            ),
        },
        // Secrets Manager.
        Fault {
            fault: "Secrets Manager throttling".into(),
            when: "secrets",
            config: FAST_SECRETS,
            strike: Strike::Run(|s| {
                let throttling = AwsError::start("ThrottlingException", 400, "Rate exceeded");
                with_endpoint(s, "AWS_ENDPOINT_URL_SECRETS_MANAGER", &throttling.url)
            }),
            expect: fails(
                75,
                &[
                    "did not return secret",
                    "ThrottlingException",
                    "boot again later",
                ],
            ),
        },
        Fault {
            fault: "Secrets Manager 5xx".into(),
            when: "secrets",
            config: FAST_SECRETS,
            strike: Strike::Run(|s| {
                let down = AwsError::start("InternalServiceError", 500, "internal error");
                with_endpoint(s, "AWS_ENDPOINT_URL_SECRETS_MANAGER", &down.url)
            }),
            expect: fails(75, &["did not return secret", "boot again later"]),
        },
        Fault {
            fault: "Secrets Manager stalls (accepts, never answers)".into(),
            when: "secrets",
            config: FAST_SECRETS,
            strike: Strike::Run(|s| {
                let silent = silent_listener();
                let url = format!("http://{}", silent.local_addr().unwrap());
                with_endpoint(s, "AWS_ENDPOINT_URL_SECRETS_MANAGER", &url)
            }),
            expect: Expect {
                code: 75,
                outcome: "failed",
                // The call's own timeout ends it before the step's (which has a second more), so the
                // message names the secret.
                says: &["did not return secret", "3s", "boot again later"],
                env: Left::Earlier,
                release: Left::Earlier,
                converges: true,
            },
        },
        Fault {
            fault: "Secrets Manager throttling, the last good secrets in the snapshot".into(),
            when: "secrets",
            config: SNAPSHOT,
            strike: Strike::Run(|s| {
                let throttling = AwsError::start("ThrottlingException", 400, "Rate exceeded");
                with_endpoint(s, "AWS_ENDPOINT_URL_SECRETS_MANAGER", &throttling.url)
            }),
            // The earlier values, from the snapshot, with the new commit.
            expect: Expect {
                code: 0,
                outcome: "degraded",
                says: &[
                    "ThrottlingException",
                    "running on the snapshot of the last good secrets",
                ],
                env: Left::Earlier,
                release: Left::New,
                converges: true,
            },
        },
        Fault {
            fault: "Secrets Manager down, the snapshot past secrets.snapshot_max_age".into(),
            when: "secrets",
            config: SNAPSHOT_1S,
            strike: Strike::Run(|s| {
                std::thread::sleep(std::time::Duration::from_millis(2100));
                let silent = silent_listener();
                let url = format!("http://{}", silent.local_addr().unwrap());
                with_endpoint(s, "AWS_ENDPOINT_URL_SECRETS_MANAGER", &url)
            }),
            expect: fails(
                75,
                &[
                    "did not return secret",
                    "past secrets.snapshot_max_age (1s)",
                ],
            ),
        },
        Fault {
            fault: "access to the secret denied".into(),
            when: "secrets",
            config: "",
            strike: Strike::Run(|s| {
                let denied = AwsError::start(
                    "AccessDeniedException",
                    400,
                    "User is not authorized to perform: secretsmanager:GetSecretValue",
                );
                with_endpoint(s, "AWS_ENDPOINT_URL_SECRETS_MANAGER", &denied.url)
            }),
            expect: fails(5, &["was denied", "secretsmanager:GetSecretValue"]),
        },
        Fault {
            fault: "secret deleted".into(),
            when: "secrets",
            config: "",
            strike: Strike::Run(|s| {
                secretsmanager(
                    "DeleteSecret",
                    serde_json::json!({"SecretId": format!("{}_env_prod", s.name), "ForceDeleteWithoutRecovery": true}),
                );
                s.boot(&s.imds, &[])
            }),
            expect: Expect {
                code: 5,
                outcome: "failed",
                says: &["was not found", "create it"],
                env: Left::Earlier,
                release: Left::Earlier,
                converges: false,
            },
        },
        Fault {
            fault: "KMS cannot decrypt the secret".into(),
            when: "secrets",
            config: "",
            strike: Strike::Run(|s| {
                let kms = AwsError::start(
                    "DecryptionFailure",
                    400,
                    "Secrets Manager can't decrypt the protected secret text using the provided KMS key.",
                );
                with_endpoint(s, "AWS_ENDPOINT_URL_SECRETS_MANAGER", &kms.url)
            }),
            expect: fails(5, &["could not be decrypted", "kms:Decrypt"]),
        },
        Fault {
            fault: "secret is not JSON".into(),
            when: "secrets",
            config: "",
            strike: Strike::Run(|s| malformed(s, "TOKEN=abc")),
            expect: malformed_expect(&[
                "is not valid JSON",
                "store the variables as a JSON object",
            ]),
        },
        Fault {
            fault: "secret holds a nested object".into(),
            when: "secrets",
            config: "",
            strike: Strike::Run(|s| malformed(s, r#"{"TOKEN": {"inner": "x"}}"#)),
            expect: malformed_expect(&["key \"TOKEN\" holds an object"]),
        },
        Fault {
            fault: "secret gives a key twice".into(),
            when: "secrets",
            config: "",
            strike: Strike::Run(|s| malformed(s, r#"{"TOKEN": "a", "TOKEN": "b"}"#)),
            expect: malformed_expect(&["key \"TOKEN\" is given twice"]),
        },
        Fault {
            fault: "secret string with a lone surrogate escape (`\\ud800`)".into(),
            when: "secrets",
            config: "",
            strike: Strike::Run(|s| malformed(s, r#"{"TOKEN": "a\ud800b"}"#)),
            expect: malformed_expect(&[
                "key \"TOKEN\" holds a string with a \\u escape that names no character",
            ]),
        },
        Fault {
            fault: "secret value with a NUL".into(),
            when: "secrets",
            config: "",
            strike: Strike::Run(|s| malformed(s, r#"{"TOKEN": "a\u0000b"}"#)),
            expect: malformed_expect(&["variable TOKEN holds a NUL character"]),
        },
        // Git.
        Fault {
            fault: "git remote refuses connections".into(),
            when: "git",
            config: FAST_GIT,
            strike: Strike::Run(|s| {
                let refusing = RefusingPort::bind();
                s.boot(
                    &s.imds_with_repository(&refusing.url("git", "/app.git")),
                    &[],
                )
            }),
            expect: degraded(&["running last good commit", "Connection refused"]),
        },
        Fault {
            fault: "git remote refuses connections, on_failure = fail".into(),
            when: "git",
            config: FAIL_ON_GIT,
            strike: Strike::Run(|s| {
                let refusing = RefusingPort::bind();
                s.boot(
                    &s.imds_with_repository(&refusing.url("git", "/app.git")),
                    &[],
                )
            }),
            expect: Expect {
                code: 75,
                outcome: "failed",
                says: &["cannot reach git remote", "check that the remote is up"],
                env: Left::Earlier,
                release: Left::Earlier,
                converges: false,
            },
        },
        Fault {
            fault: "git remote accepts and never answers".into(),
            when: "git",
            config: FAST_GIT,
            strike: Strike::Run(|s| {
                let silent = silent_listener();
                let url = format!("git://{}/app.git", silent.local_addr().unwrap());
                s.boot(&s.imds_with_repository(&url), &[])
            }),
            expect: degraded(&["the remote did not answer within 2s (git.timeout)"]),
        },
        Fault {
            fault: "git remote drips a byte at a time (git://)".into(),
            when: "git",
            config: FAST_GIT,
            strike: Strike::Run(|s| {
                let drip = DripRemote::start(false);
                s.boot(&s.imds_with_repository(&drip.url), &[])
            }),
            expect: degraded(&["the checkout did not finish within 4s (git.deadline)"]),
        },
        Fault {
            fault: "git remote drips a byte at a time (HTTP)".into(),
            when: "git",
            config: FAST_GIT,
            strike: Strike::Run(|s| {
                let drip = DripRemote::start(true);
                s.boot(&s.imds_with_repository(&drip.url), &[])
            }),
            expect: degraded(&["the checkout did not finish within 4s (git.deadline)"]),
        },
        Fault {
            fault: "git remote drops the connection".into(),
            when: "git",
            config: FAST_GIT,
            strike: Strike::Run(|s| {
                let hangup = HangUp::start();
                s.boot(&s.imds_with_repository(&hangup.url), &[])
            }),
            expect: degraded(&["running last good commit", "cannot reach git remote"]),
        },
        // Real network faults, on links of a network namespace.
        Fault {
            fault: "every link at 64 kbit/s (tc tbf)".into(),
            when: "network",
            config: "",
            strike: Strike::Run(|s| {
                boot_over_links(s, |netns, links| {
                    for peer in [&links.imds, &links.moto, &links.git] {
                        netns.slow(peer, "64kbit");
                    }
                })
            }),
            expect: ok(Left::New, Left::New),
        },
        Fault {
            fault: "packets to IMDS dropped (tc tbf)".into(),
            when: "identity",
            config: "",
            strike: Strike::Run(|s| {
                boot_over_links(s, |netns, links| netns.drop_packets(&links.imds))
            }),
            expect: fails(75, &["did not answer", "HttpEndpoint=enabled"]),
        },
        Fault {
            fault: "packets to Secrets Manager dropped (tc tbf)".into(),
            when: "secrets",
            config: FAST_SECRETS,
            strike: Strike::Run(|s| {
                boot_over_links(s, |netns, links| netns.drop_packets(&links.moto))
            }),
            expect: fails(75, &["did not return secret", "boot again later"]),
        },
        Fault {
            fault: "packets to the git remote dropped (tc tbf)".into(),
            when: "git",
            config: FAST_GIT,
            strike: Strike::Run(|s| {
                boot_over_links(s, |netns, links| netns.drop_packets(&links.git))
            }),
            expect: degraded(&["running last good commit", "within 2s (git.timeout)"]),
        },
        Fault {
            fault: "no route to the git remote".into(),
            when: "git",
            config: FAST_GIT,
            strike: Strike::Run(|s| {
                boot_over_links(s, |netns, links| netns.unreachable(&links.git))
            }),
            expect: degraded(&["running last good commit", "No route to host"]),
        },
        Fault {
            fault: "git remote stalls mid-pack".into(),
            when: "git",
            config: FAST_GIT,
            strike: Strike::Run(|s| {
                let stalling = PackTamperer::start(Tamper::Stall, &s.name);
                s.boot(&s.imds_with_repository(&stalling.url), &[])
            }),
            expect: degraded(&["running last good commit", "within 2s (git.timeout)"]),
        },
        Fault {
            fault: "git remote sends a corrupt pack".into(),
            when: "git",
            config: FAST_GIT,
            strike: Strike::Run(|s| {
                let corrupting = PackTamperer::start(Tamper::Corrupt, &s.name);
                s.boot(&s.imds_with_repository(&corrupting.url), &[])
            }),
            expect: degraded(&[
                "running last good commit",
                "sent a damaged pack",
                "git fsck",
            ]),
        },
        Fault {
            fault: "git branch deleted".into(),
            when: "git",
            config: FAST_GIT,
            strike: Strike::Run(|s| {
                git(
                    &SampleRepo::path_of(&s.name),
                    &["update-ref", "-d", "refs/heads/prod"],
                );
                s.boot(&s.imds, &[])
            }),
            expect: Expect {
                converges: false,
                ..degraded(&[
                    "running last good commit",
                    "has no branch or tag prod",
                    "fix git.ref",
                ])
            },
        },
        Fault {
            fault: "ssh host key changed".into(),
            when: "git",
            config: "",
            strike: Strike::Run(ssh_host_key_changed),
            expect: degraded(&["running last good commit", "is not the host pinned in"]),
        },
        Fault {
            fault: "TLS certificate not trusted".into(),
            when: "git",
            config: "",
            strike: Strike::Run(|s| {
                let ca = TestCa::issue_for("127.0.0.1");
                let server = GitHttp::start_tls("deploy", "pw", &ca);
                s.boot(&s.imds_with_repository(&server.repo_url(&s.name)), &[])
            }),
            expect: degraded(&["running last good commit", "does not trust"]),
        },
        Fault {
            fault: "file system of the checkout full (ENOSPC)".into(),
            when: "git",
            config: "",
            strike: Strike::Run(checkout_disk_full),
            expect: Expect {
                converges: false,
                ..degraded(&["running last good commit", "No space left on device"])
            },
        },
        // The env file.
        Fault {
            fault: "run dir full (ENOSPC)".into(),
            when: "env_file",
            config: "",
            strike: Strike::Run(run_dir_full),
            expect: Expect {
                code: 9,
                outcome: "failed",
                says: &["failed to write", "No space left on device"],
                env: Left::Earlier,
                release: Left::New,
                converges: false,
            },
        },
        // The service (exec mode).
        Fault {
            fault: "service command cannot be run".into(),
            when: "command",
            config: "",
            strike: Strike::Run(|s| {
                s.instance.add_config(
                    "20-command.toml",
                    "[service]\ncommand = [\"/nonexistent/app\"]\n",
                );
                s.boot(&s.imds, &[])
            }),
            expect: Expect {
                code: 8,
                outcome: "failed",
                says: &[
                    "/nonexistent/app cannot be run as nobody: no such file",
                    "fix service.command",
                ],
                env: Left::Earlier,
                release: Left::New,
                converges: false,
            },
        },
        // Secret files ([[files]]): a second entry that cannot be delivered.
        Fault {
            fault: "[[files]] template names an unknown variable".into(),
            when: "secrets",
            config: FILES,
            strike: Strike::Run(|s| {
                with_bad_file(
                    s,
                    "path = \"/dev/shm/bootagent-files/{service}/bad.conf\"\n\
                     template = \"{{ secrets.NOPE }}\"\n",
                )
            }),
            expect: Expect {
                code: 6,
                outcome: "failed",
                says: &["/bad.conf (files[1].template) uses secrets.NOPE"],
                env: Left::Earlier,
                release: Left::Earlier,
                converges: false,
            },
        },
        Fault {
            fault: "[[files]] owner does not exist".into(),
            when: "secrets",
            config: FILES,
            strike: Strike::Run(|s| {
                with_bad_file(
                    s,
                    "path = \"/dev/shm/bootagent-files/{service}/bad.conf\"\n\
                     secret = \"{service}_env_prod#PORT\"\nowner = \"no-such-user-f1\"\n",
                )
            }),
            expect: Expect {
                code: 9,
                outcome: "failed",
                says: &["/bad.conf: files[1].owner names \"no-such-user-f1\""],
                env: Left::Earlier,
                release: Left::Earlier,
                converges: false,
            },
        },
        Fault {
            fault: "[[files]] path outside paths.file_roots".into(),
            when: "identity",
            config: FILES,
            strike: Strike::Run(|s| {
                with_bad_file(
                    s,
                    &format!("path = \"/dev/shm/elsewhere/{{service}}.conf\"\n{PORT}"),
                )
            }),
            expect: Expect {
                code: 2,
                outcome: "failed",
                says: &["files[1].path renders to", "outside the allowed roots"],
                env: Left::Earlier,
                release: Left::Earlier,
                converges: false,
            },
        },
        Fault {
            fault: "[[files]] on disk without persistent".into(),
            when: "secrets",
            config: FILES,
            strike: Strike::Run(|s| {
                let path = "/var/tmp/bootagent-files/{service}/bad.conf";
                with_bad_file(s, &format!("path = {path:?}\n{PORT}"))
            }),
            expect: Expect {
                code: 9,
                outcome: "failed",
                says: &[
                    "/bad.conf would be written",
                    "not tmpfs",
                    "files[1].persistent = true",
                ],
                env: Left::Earlier,
                release: Left::Earlier,
                converges: false,
            },
        },
        // Concurrency.
        Fault {
            fault: "boot lock held by another boot".into(),
            when: "start",
            config: "[boot]\ndeadline = \"1s\"\n",
            strike: Strike::Run(|s| {
                let _holder = s.instance.hold_boot_lock();
                s.boot(&s.imds, &[])
            }),
            expect: Expect {
                code: 10,
                outcome: "succeeded",
                says: &["another bootagent boot holds", "still running or hung"],
                env: Left::Earlier,
                release: Left::Earlier,
                converges: true,
            },
        },
        // SIGKILL at each phase boundary and inside the two atomic switches.
        killed("identity", "after-identity", Left::Earlier, Left::Earlier),
        killed("secrets", "after-secrets", Left::Earlier, Left::Earlier),
        killed("git", "after-git", Left::Earlier, Left::New),
        killed("command", "after-command", Left::Earlier, Left::New),
        killed("env_file", "after-env_file", Left::New, Left::New),
        Fault {
            fault: "SIGKILL inside the env file's write".into(),
            when: "env_file",
            config: "",
            strike: Strike::KillInEnvWrite,
            expect: Expect {
                code: KILLED,
                outcome: "failed",
                says: &[],
                env: Left::Earlier,
                release: Left::New,
                converges: true,
            },
        },
        Fault {
            fault: "SIGKILL inside the release switch".into(),
            when: "git",
            config: "",
            strike: Strike::Kill("release-switch"),
            expect: Expect {
                code: KILLED,
                outcome: "failed",
                says: &[],
                env: Left::Earlier,
                release: Left::Earlier,
                converges: true,
            },
        },
        // The clock.
        Fault {
            fault: "clock 10 min off AWS's".into(),
            when: "doctor",
            config: "",
            strike: Strike::Run(|s| {
                let ahead = AwsError::start_skewed("InternalServiceError", 500, "down", 600);
                s.instance.run_with(
                    &s.imds,
                    &["doctor", "--json"],
                    &[("AWS_ENDPOINT_URL", ahead.url.as_str())],
                )
            }),
            expect: Expect {
                code: 13,
                outcome: "succeeded",
                says: &[
                    "from AWS's clock: SigV4 requests will be refused",
                    "Amazon Time Sync",
                ],
                env: Left::Earlier,
                release: Left::Earlier,
                converges: true,
            },
        },
        // Auto Scaling lifecycle calls.
        Fault {
            fault: "no active lifecycle action".into(),
            when: "lifecycle complete",
            config: "",
            strike: Strike::Run(|s| lifecycle_complete(s, 0, false)),
            expect: Expect {
                code: 0,
                outcome: "succeeded",
                says: &["No active Lifecycle Action", "nothing to complete"],
                env: Left::Earlier,
                release: Left::Earlier,
                converges: true,
            },
        },
        Fault {
            fault: "Auto Scaling throttles twice".into(),
            when: "lifecycle complete",
            config: "",
            strike: Strike::Run(|s| lifecycle_complete(s, 2, true)),
            expect: Expect {
                code: 0,
                outcome: "succeeded",
                says: &[],
                env: Left::Earlier,
                release: Left::Earlier,
                converges: true,
            },
        },
        Fault {
            fault: "Auto Scaling throttles on".into(),
            when: "lifecycle complete",
            config: "",
            strike: Strike::Run(|s| lifecycle_complete(s, 100, true)),
            expect: Expect {
                code: 75,
                outcome: "succeeded",
                says: &["Throttling", "CompleteLifecycleAction"],
                env: Left::Earlier,
                release: Left::Earlier,
                converges: true,
            },
        },
    ]
}

/// A boot that fails before anything changed, and a next boot (the fault gone) that converges.
fn fails(code: i32, says: &'static [&'static str]) -> Expect {
    Expect {
        code,
        outcome: "failed",
        says,
        env: Left::Earlier,
        release: Left::Earlier,
        converges: true,
    }
}

fn malformed(setup: &Setup, text: &str) -> Run {
    put_secret_value(&format!("{}_env_prod", setup.name), text);
    setup.boot(&setup.imds, &[])
}

fn malformed_expect(says: &'static [&'static str]) -> Expect {
    Expect {
        code: 6,
        outcome: "failed",
        says,
        env: Left::Earlier,
        release: Left::Earlier,
        converges: false,
    }
}

/// The last good release kept, the new secrets written: the boot goes on, degraded.
fn degraded(says: &'static [&'static str]) -> Expect {
    Expect {
        code: 0,
        outcome: "degraded",
        says,
        env: Left::New,
        release: Left::Earlier,
        converges: true,
    }
}

fn killed(phase: &'static str, point: &'static str, env: Left, release: Left) -> Fault {
    Fault {
        fault: format!("SIGKILL after the {phase} phase"),
        when: phase,
        config: "",
        strike: Strike::Kill(point),
        expect: Expect {
            code: KILLED,
            outcome: "failed",
            says: &[],
            env,
            release,
            converges: true,
        },
    }
}

fn ssh_host_key_changed(setup: &Setup) -> Run {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = ssh_keygen(keys.path(), "deploy");
    let mut server = GitSsh::start(&[&public]);
    let known_hosts = keys.path().join("known_hosts");
    std::fs::write(&known_hosts, server.known_hosts_line()).unwrap();
    setup.instance.add_config(
        "30-ssh.toml",
        &format!(
            "[git]\nssh_key = \"{}\"\nknown_hosts = \"{}\"\n",
            key.display(),
            known_hosts.display()
        ),
    );
    server.change_host_key();
    let run = setup.boot(
        &setup.imds_with_repository(&server.repo_url(&setup.name)),
        &[],
    );
    // The key goes with this function: the next boot fetches over git:// again.
    setup.instance.add_config("30-ssh.toml", "");
    run
}

/// The checkout's directory (repository and releases) on a 1 MiB tmpfs, and a new commit of
/// 600 KB that cannot be compressed: the fetch fits, the extraction does not.
fn checkout_disk_full(setup: &Setup) -> Run {
    let srv = setup.instance.root.path().join("srv");
    let hidden = srv.join(format!(".{}", setup.name));
    let saved = tempfile::tempdir_in(setup.instance.root.path()).unwrap();
    copy_tree(&hidden, saved.path());
    let mounted = SmallTmpfs::mount(&hidden, "1m");
    copy_tree(saved.path(), &hidden);
    let work = tempfile::tempdir().unwrap();
    let origin = SampleRepo::path_of(&setup.name);
    git(
        Path::new("/"),
        &[
            "clone",
            "-q",
            "-b",
            "prod",
            origin.to_str().unwrap(),
            work.path().to_str().unwrap(),
        ],
    );
    let mut noise = vec![0u8; 600 * 1024];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").unwrap(),
        &mut noise,
    )
    .unwrap();
    std::fs::write(work.path().join("noise"), noise).unwrap();
    git(work.path(), &["add", "noise"]);
    git(
        work.path(),
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qm",
            "noise",
        ],
    );
    git(work.path(), &["push", "-q", "origin", "prod"]);
    let run = setup.boot(&setup.imds, &[]);
    // Unmounted, the directory holds what it held before: the release in service.
    drop(mounted);
    run
}

fn copy_tree(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// A tmpfs of 64 KiB as the run dir, and a new secret version of 70 KB: the status fits, the
/// new env file does not. What the tmpfs held goes back to the run dir afterwards, where the
/// checks look.
fn run_dir_full(setup: &Setup) -> Run {
    put_secret_value(
        &format!("{}_env_prod", setup.name),
        &serde_json::json!({ "TOKEN": setup.canaries[1], "PORT": 8080, "BIG": "x".repeat(70 * 1024) })
            .to_string(),
    );
    let run_dir = setup.instance.run.path();
    let saved = tempfile::tempdir().unwrap();
    copy_tree(run_dir, saved.path());
    let mounted = SmallTmpfs::mount(run_dir, "64k");
    copy_tree(saved.path(), run_dir);
    let run = setup.boot(&setup.imds, &[]);
    let after = tempfile::tempdir().unwrap();
    copy_tree(run_dir, after.path());
    drop(mounted);
    copy_tree(after.path(), run_dir);
    run
}

fn lifecycle_complete(setup: &Setup, throttles: u32, active: bool) -> Run {
    let asg = AsgFake::start();
    if active {
        asg.activate("web-asg", "launching", "i-0123456789abcdef0");
    }
    asg.throttle(throttles);
    let imds = Imds::with_tags(&[
        ("Service", &setup.name),
        ("Environment", "prod"),
        ("aws:autoscaling:groupName", "web-asg"),
    ]);
    setup.instance.run_with(
        &imds,
        &[
            "lifecycle",
            "complete",
            "--result",
            "continue",
            "--hook",
            "launching",
        ],
        &[("AWS_ENDPOINT_URL_AUTO_SCALING", asg.url.as_str())],
    )
}

/// A loopback server that accepts each connection and closes it at once.
struct HangUp {
    _thread: std::thread::JoinHandle<()>,
    url: String,
}

impl HangUp {
    fn start() -> HangUp {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("git://{}/app.git", listener.local_addr().unwrap());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming().take(16) {
                drop(stream);
            }
        });
        HangUp {
            _thread: thread,
            url,
        }
    }
}

/// The links of a namespace to the servers a boot talks to.
struct Links {
    imds: Peer,
    moto: Peer,
    git: Peer,
}

/// `host:port` of a URL.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/').next().unwrap()
}

/// The boot run inside a network namespace that reaches IMDS, moto and the git daemon each over
/// a real link of its own, after `fault` did its worst to those links.
fn boot_over_links(setup: &Setup, fault: fn(&NetNs, &Links)) -> Run {
    let netns = NetNs::create();
    let git = netns.reach(authority(&world("GIT_URL")));
    // The Repository tag names the git daemon as the namespace reaches it.
    let imds = setup.imds_with_repository(&format!("git://{}/{}.git", git.address, setup.name));
    let links = Links {
        imds: netns.reach(authority(&imds.url)),
        moto: netns.reach(authority(&world("MOTO"))),
        git,
    };
    fault(&netns, &links);
    Run(setup
        .instance
        .command_via(&netns.exec_prefix(), &imds, &["boot"])
        .env(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            format!("http://{}", links.imds.address),
        )
        .env("AWS_ENDPOINT_URL", format!("http://{}", links.moto.address))
        .output()
        .unwrap())
}

/// What a [`PackTamperer`] does to the pack the git daemon sends.
#[derive(Clone, Copy)]
enum Tamper {
    /// Flips a byte of the pack: the pkt-line framing stays valid, the pack does not.
    Corrupt,
    /// Sends half of the first packet of pack data, then nothing, holding the connection open.
    Stall,
}

/// A git:// proxy in front of the world's git daemon that reads the daemon's answer as
/// pkt-lines and tampers with the pack inside them (side-band channel 1).
struct PackTamperer {
    _thread: std::thread::JoinHandle<()>,
    url: String,
}

impl PackTamperer {
    fn start(tamper: Tamper, name: &str) -> PackTamperer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("git://{}/{name}.git", listener.local_addr().unwrap());
        let daemon = world("GIT_URL").replacen("git://", "", 1);
        let thread = std::thread::spawn(move || {
            for client in listener.incoming().take(16).flatten() {
                let daemon = daemon.clone();
                std::thread::spawn(move || {
                    let _ = tamper_with_pack(client, &daemon, tamper);
                });
            }
        });
        PackTamperer {
            _thread: thread,
            url,
        }
    }
}

/// Relays the client's requests as they are, and the daemon's answer packet by packet.
fn tamper_with_pack(
    client: std::net::TcpStream,
    daemon: &str,
    tamper: Tamper,
) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut answers = std::net::TcpStream::connect(daemon)?;
    let (mut requests, mut to_daemon) = (client.try_clone()?, answers.try_clone()?);
    std::thread::spawn(move || std::io::copy(&mut requests, &mut to_daemon));
    let mut to_client = client;
    // The pack's first 12 bytes are its header ("PACK", version, object count).
    let mut pack_bytes = 0;
    let mut tampered = false;
    loop {
        let mut head = [0u8; 4];
        answers.read_exact(&mut head)?;
        let length = std::str::from_utf8(&head)
            .ok()
            .and_then(|hex| usize::from_str_radix(hex, 16).ok())
            .ok_or(std::io::ErrorKind::InvalidData)?;
        // 0000-0003 are flush and delimiter packets without payload.
        let mut payload = vec![0u8; length.saturating_sub(4)];
        answers.read_exact(&mut payload)?;
        if payload.first() == Some(&1) && !tampered {
            pack_bytes += payload.len() - 1;
            if pack_bytes > 12 {
                tampered = true;
                match tamper {
                    Tamper::Corrupt => *payload.last_mut().unwrap() ^= 0xff,
                    Tamper::Stall => {
                        to_client.write_all(&head)?;
                        to_client.write_all(&payload[..payload.len() / 2])?;
                        std::thread::sleep(std::time::Duration::from_secs(60));
                        return Ok(());
                    }
                }
            }
        }
        to_client.write_all(&head)?;
        to_client.write_all(&payload)?;
    }
}

/// Systemd mode: the service is a unit of a real systemd (PID 1 of an nspawn container), and the
/// faults are the unit's own. A short start timeout and settle keep the rows quick.
const UNIT_CONFIG: &str = r#"[identity]
tag_wait = "2s"

[service]
user = "nobody"
start_timeout = "3s"
settle = "1s"
"#;

struct UnitFault {
    fault: &'static str,
    /// The [Service] section of the unit the faulty boot meets; `None`: no unit file at all.
    broken: Option<&'static str>,
    expect: Expect,
    /// The unit's ActiveState after the faulty boot.
    unit: &'static str,
}

fn unit_faults() -> Vec<UnitFault> {
    // The change fails its gate and is rolled back: the earlier env file and release come back.
    // Here the unit itself is broken, so the rollback's restart fails too (exit 8, both causes
    // named), and the next boot, under a working unit, brings the change. A unit systemd refuses
    // to load keeps running what it ran: systemd does not stop a unit whose file went bad.
    let failed = |says| Expect {
        code: 8,
        outcome: "failed",
        says,
        env: Left::Earlier,
        release: Left::Earlier,
        converges: true,
    };
    vec![
        UnitFault {
            fault: "service fails to start (its program is missing)",
            broken: Some("Type=exec\\nExecStart=/nonexistent/service"),
            // systemctl reports the failed exec, or the boot finds the unit failed: which comes first
            // is a race inside systemd.
            expect: failed(&["failed", "journalctl -"]),
            unit: "failed",
        },
        UnitFault {
            fault: "service crashes right after it starts",
            broken: Some("ExecStart=/bin/sleep 0.2"),
            expect: failed(&["started but did not stay up: within 1s", "journalctl -u"]),
            unit: "inactive",
        },
        UnitFault {
            fault: "service crashes and systemd restarts it",
            // Restarted after 30 s: the boot sees it waiting for its restart.
            broken: Some("ExecStart=/bin/sleep 0.2\\nRestart=always\\nRestartSec=30s"),
            expect: failed(&["did not stay up", "activating (auto-restart)"]),
            unit: "activating",
        },
        UnitFault {
            fault: "service hangs in its start (never notifies)",
            broken: Some("Type=notify\\nExecStart=/bin/sleep 600"),
            expect: failed(&[
                "was still activating (start) after 3s",
                "service.start_timeout",
            ]),
            unit: "activating",
        },
        UnitFault {
            fault: "systemd refuses the unit (bad setting)",
            broken: Some("ExecStart=relative/path"),
            expect: failed(&["bad unit file setting", "systemd-analyze verify"]),
            unit: "active",
        },
        UnitFault {
            fault: "unit not installed",
            broken: None,
            expect: failed(&["not found", "set service.unit"]),
            unit: "active",
        },
    ]
}

/// One service in the container that booted once under a working unit, and the change the next
/// boot should bring.
struct UnitSetup<'c> {
    container: &'c Container,
    name: String,
    imds: Imds,
    earlier_env: Vec<u8>,
    earlier_commit: String,
    new_commit: String,
    canaries: [String; 2],
}

impl<'c> UnitSetup<'c> {
    fn prepare(container: &'c Container) -> UnitSetup<'c> {
        let mut service = Service::create("unit");
        let name = service.name.clone();
        container.sh(&format!("mkdir -m 777 /share/out/{name}"));
        install_working_unit(container, &name);
        container.bootagent(&service.imds, &["boot"]).expect(0);
        let earlier_env = read_inside(container, &env_file_inside(&name)).unwrap();
        let earlier_commit = container.release_of(&name).unwrap();
        let new_commit = service.change();
        UnitSetup {
            container,
            name,
            imds: service.imds,
            earlier_env,
            earlier_commit,
            new_commit,
            canaries: service.canaries,
        }
    }

    fn unit(&self) -> String {
        format!("{}.service", self.name)
    }

    fn install(&self, broken: Option<&str>) {
        match broken {
            Some(section) => self.container.install_unit(&self.unit(), section),
            None => {
                self.container.sh(&format!(
                    "rm /etc/systemd/system/{} && systemctl daemon-reload",
                    self.unit()
                ));
            }
        }
    }
}

fn install_working_unit(container: &Container, name: &str) {
    container.install_unit(
        &format!("{name}.service"),
        &format!("ExecStart=/share/recorder.sh /share/out/{name} --stay"),
    );
}

fn env_file_inside(name: &str) -> String {
    format!("/run/bootagent/{name}.env")
}

fn read_inside(container: &Container, path: &str) -> Option<Vec<u8>> {
    let out = container.exec(&["cat", path]);
    out.status.success().then_some(out.stdout)
}

impl Subject for UnitSetup<'_> {
    fn env_left(&self) -> Option<Left> {
        let now = read_inside(self.container, &env_file_inside(&self.name))?;
        env_left(&now, &self.earlier_env, &self.canaries[1])
    }

    fn release_left(&self) -> Option<Left> {
        let running = self.container.release_of(&self.name)?;
        release_left(&running, &self.earlier_commit, &self.new_commit)
    }

    fn outcome(&self) -> String {
        let run = self.container.bootagent(&self.imds, &["status", "--json"]);
        serde_json::from_str::<serde_json::Value>(&run.stdout())
            .map(|status| status["outcome"].as_str().unwrap_or("?").to_string())
            .unwrap_or_else(|_| "no status".to_string())
    }

    fn unit_state(&self) -> Option<String> {
        Some(self.container.show(&self.unit(), "ActiveState"))
    }

    fn boot_again(&self) -> Run {
        install_working_unit(self.container, &self.name);
        self.container.bootagent(&self.imds, &["boot"])
    }

    fn leftovers(&self) -> usize {
        let listing = self.container.sh("ls -a /run/bootagent /srv");
        let staging = format!(".{}.link-", self.name);
        listing
            .lines()
            .filter(|entry| entry.contains(".tmp-") || entry.starts_with(&staging))
            .count()
    }

    fn canaries(&self) -> &[String; 2] {
        &self.canaries
    }

    fn leaks(&self) -> Vec<String> {
        let record = self.container.out().join("out").join(&self.name);
        self.canaries
            .iter()
            .flat_map(|canary| {
                self.container
                    .places_holding(canary, &env_file_inside(&self.name), &record)
            })
            .collect()
    }
}

/// The unit rows, one after another in one container.
fn check_units(faults: &[UnitFault]) -> Vec<Row> {
    let container = Container::boot(UNIT_CONFIG);
    faults
        .iter()
        .map(|fault| {
            let setup = UnitSetup::prepare(&container);
            setup.install(fault.broken);
            let run = container.bootagent(&setup.imds, &["boot"]);
            judge(
                &setup,
                fault.fault,
                "service",
                &fault.expect,
                Some(fault.unit),
                run,
            )
        })
        .collect()
}

#[test]
fn the_fault_matrix_holds_and_is_written_to_docs_faults_md() {
    support::needs_world!();
    let faults = faults();
    let unit_faults = unit_faults();
    let rows = matrix::run_rows(&faults, check, || check_units(&unit_faults));
    let table: Vec<matrix::TableRow> = rows
        .into_iter()
        .map(|row| matrix::TableRow {
            matched: row.problems.is_empty(),
            cells: vec![row.fault, row.when.to_string(), row.expected],
            observed: row.observed,
        })
        .collect();
    assert!(table.len() >= 40, "only {} rows", table.len());
    let mismatched = matrix::write_table(
        "docs/faults.md",
        "# Fault matrix\n\n\
         Generated by `tests/faults.rs` on every run of the suite — do not edit by hand. Each row \
         starts from an instance that booted once, then brings a change (a new secret version and \
         a new commit) and meets the fault. *Expected* is what the row requires: the exit code, \
         the outcome `bootagent status` reads, what the message says (cause and fix), which env \
         file and release are left (the earlier ones, or the new ones), and whether a boot \
         afterwards converges. Every row also searches all output and every file written outside \
         the env file for the old and the new secret value.\n\n",
        &["fault", "when", "expected"],
        &table,
    );
    assert!(mismatched.is_empty(), "{}", mismatched.join("\n"));
}
