//! `bootagent doctor`: every link of the boot chain as a check, run in parallel, each bounded in
//! time, each failure with a hint. Read-only: it changes nothing on the instance.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_secretsmanager::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_secretsmanager::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_secretsmanager::primitives::{DateTime, DateTimeFormat};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::config::{Config, Manager, Verify};
use crate::imds::ImdsClient;
use crate::plan::Plan;
use crate::{envfile, git, identity, secrets, status};

/// SigV4 requests are refused past 5 minutes of skew; warn well before.
const SKEW_FAIL: Duration = Duration::from_secs(300);
const SKEW_WARN: Duration = Duration::from_secs(60);
/// A boot writes kilobytes to the run dir (env file, status, a deploy key): a small tmpfs is fine.
const LOW_RUN_DIR_BYTES: u64 = 1024 * 1024;
/// A checkout needs room for a release beside the one in service.
const LOW_CHECKOUT_BYTES: u64 = 100 * 1024 * 1024;
const JOURNAL_LINES: &str = "10";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
    Skip,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    pub duration_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub schema: u32,
    pub ok: bool,
    pub checks: Vec<Check>,
}

/// What a check found, before it is timed and named.
struct Finding {
    verdict: Verdict,
    detail: String,
    hint: Option<String>,
}

fn ok(detail: impl Into<String>) -> Finding {
    Finding {
        verdict: Verdict::Ok,
        detail: detail.into(),
        hint: None,
    }
}

fn fail(detail: impl Into<String>, hint: impl Into<String>) -> Finding {
    Finding {
        verdict: Verdict::Fail,
        detail: detail.into(),
        hint: Some(hint.into()),
    }
}

fn warn(detail: impl Into<String>, hint: impl Into<String>) -> Finding {
    Finding {
        verdict: Verdict::Warn,
        detail: detail.into(),
        hint: Some(hint.into()),
    }
}

fn skip(detail: impl Into<String>) -> Finding {
    Finding {
        verdict: Verdict::Skip,
        detail: detail.into(),
        hint: None,
    }
}

/// The checks that need to know who the instance is: skipped when identity fails.
pub const NEED_IDENTITY: [&str; 7] = [
    "credentials",
    "secret",
    "isolation",
    "clock",
    "git",
    "env-file",
    "unit",
];

/// The order checks are listed in, whatever order they finish in.
const ORDER: &[&str] = &[
    "imds",
    "tags",
    "identity",
    "credentials",
    "secret",
    "isolation",
    "clock",
    "git",
    "signing",
    "env-file",
    "unit",
    "disk",
    "last-boot",
];

/// Every check, each ended when `timeout` has passed since doctor began: the report comes
/// within `timeout` (and the moment a check takes to say it timed out), however many checks
/// wait on a stalled service.
pub async fn run(config: Arc<Config>, timeout: Duration) -> Report {
    let began = Instant::now();
    let deadline = Deadline {
        at: tokio::time::Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(far_future),
        limit: timeout,
    };
    let mut checks = Vec::new();
    let imds = Arc::new(ImdsClient::from_env(
        config.identity.imds_deadline.min(timeout),
    ));
    let mut set: JoinSet<Vec<Check>> = JoinSet::new();
    spawn(
        &mut set,
        "last-boot",
        deadline,
        Box::pin(check_last_boot(config.clone())),
    );

    // The chain's head, looked at together: everything that needs to know who this instance is
    // waits for the identity.
    let (token, tags, identity) = tokio::join!(
        deadline.bound(check_imds(&imds)),
        deadline.bound(check_tags(&imds, &config)),
        identity_plan(deadline, &imds, &config),
    );
    checks.push(named("imds", began, token));
    checks.push(named("tags", began, tags));
    let (identity_finding, plan) = match identity {
        Ok(plan) => (
            ok(format!(
                "service {}, environment {} (tag {:?}), {} in {}",
                plan.identity.service,
                plan.identity.env,
                plan.identity.env_tag,
                plan.identity.instance_id,
                plan.identity.region
            )),
            Some(Arc::new(plan)),
        ),
        Err(finding) => (finding, None),
    };
    checks.push(named("identity", began, identity_finding));

    match &plan {
        Some(plan) => {
            let date = Arc::new(Mutex::new(None));
            let client = secrets_client(&plan.identity.region, timeout, date.clone()).await;
            spawn(
                &mut set,
                "credentials",
                deadline,
                Box::pin(check_credentials(plan.clone(), timeout)),
            );
            // The clock is judged from the Date header of the secret check's answers.
            let (secret_plan, secret_client) = (plan.clone(), client.clone());
            set.spawn(async move {
                let started = Instant::now();
                let secret = deadline
                    .bound(check_secret(&secret_client, &secret_plan))
                    .await;
                let secret = named("secret", started, secret);
                vec![secret, named("clock", started, check_clock(&date))]
            });
            spawn(
                &mut set,
                "isolation",
                deadline,
                Box::pin(check_isolation(
                    config.clone(),
                    plan.clone(),
                    client.clone(),
                )),
            );
            // Not cut off from outside: the listing runs on a blocking thread, which must end
            // before the runtime does (an HTTP transport on a runtime being shut down panics).
            // It ends by the deadline on its own.
            let (git_config, git_plan, git_client) = (config.clone(), plan.clone(), client.clone());
            set.spawn(async move {
                let started = Instant::now();
                let finding = check_git(git_config, git_plan, git_client, deadline).await;
                vec![named("git", started, finding)]
            });
            spawn(
                &mut set,
                "env-file",
                deadline.local(),
                Box::pin(check_env_file(config.clone(), plan.clone())),
            );
            spawn(
                &mut set,
                "unit",
                deadline.local(),
                Box::pin(check_unit(plan.clone(), client)),
            );
        }
        None => {
            for name in NEED_IDENTITY {
                let finding = skip("needs the instance's identity, which failed");
                checks.push(named(name, Instant::now(), finding));
            }
        }
    }
    if config.git.verify != Verify::None {
        let finding = check_signing(&config);
        checks.push(named("signing", Instant::now(), finding));
    }
    spawn(
        &mut set,
        "disk",
        deadline.local(),
        Box::pin(check_disk(config.clone(), plan.clone())),
    );
    while let Some(joined) = set.join_next().await {
        if let Ok(found) = joined {
            checks.extend(found);
        }
    }
    checks.sort_by_key(|c| ORDER.iter().position(|n| *n == c.name));
    Report {
        schema: 1,
        ok: checks.iter().all(|c| c.verdict != Verdict::Fail),
        checks,
    }
}

/// When doctor's `--timeout`, counted from its start, runs out for every check.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: tokio::time::Instant,
    limit: Duration,
}

impl Deadline {
    async fn bound(self, work: impl std::future::Future<Output = Finding>) -> Finding {
        tokio::time::timeout_at(self.at, work)
            .await
            .unwrap_or_else(|_| self.timed_out())
    }

    fn timed_out(self) -> Finding {
        fail(
            format!(
                "no answer before doctor's --timeout ({}) ran out",
                humantime::format_duration(self.limit)
            ),
            "the service behind this check is slow or unreachable; rerun with a longer --timeout \
             to see more",
        )
    }

    /// For a check of this machine alone that can start only once the identity is known: it
    /// gets [`LOCAL_MARGIN`] even when the identity took all the time.
    fn local(self) -> Deadline {
        Deadline {
            at: self.at.max(tokio::time::Instant::now() + LOCAL_MARGIN),
            ..self
        }
    }

    /// What is left of it.
    fn left(self) -> Duration {
        self.at
            .saturating_duration_since(tokio::time::Instant::now())
    }
}

/// What a local check (a file, a statfs, systemctl) may take past the deadline.
const LOCAL_MARGIN: Duration = Duration::from_secs(1);

/// A `--timeout` no clock can add: a year is as good as forever for a doctor.
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 60 * 60)
}

type Work = std::pin::Pin<Box<dyn std::future::Future<Output = Finding> + Send>>;

fn spawn(set: &mut JoinSet<Vec<Check>>, name: &'static str, deadline: Deadline, work: Work) {
    set.spawn(async move {
        let started = Instant::now();
        vec![named(name, started, deadline.bound(work).await)]
    });
}

fn named(name: &'static str, started: Instant, finding: Finding) -> Check {
    Check {
        name,
        verdict: finding.verdict,
        detail: finding.detail,
        hint: finding.hint,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}

async fn check_imds(imds: &ImdsClient) -> Finding {
    match imds.get("meta-data/instance-id").await {
        Ok(Some(id)) => ok(format!("IMDSv2 token obtained, instance {id}")),
        Ok(None) => fail(
            "no instance-id in instance metadata",
            "this does not look like EC2",
        ),
        Err(e) if e.is_refused() => fail(
            e.to_string(),
            "nothing listens at the metadata address: on EC2 enable the metadata service \
             (HttpEndpoint=enabled) and check that no local firewall rejects 169.254.169.254; \
             AWS_EC2_METADATA_SERVICE_ENDPOINT names another address",
        ),
        Err(e) if e.is_transient() => fail(
            e.to_string(),
            "a token PUT that times out usually means the hop limit is too low for a container: \
             set HttpPutResponseHopLimit to 2",
        ),
        Err(e) => fail(
            e.to_string(),
            "enable the metadata service (HttpEndpoint=enabled)",
        ),
    }
}

async fn check_tags(imds: &ImdsClient, config: &Config) -> Finding {
    match imds.tags(&[]).await {
        Ok(_) => ok("instance tags are readable in instance metadata"),
        Err(e) if e.is_tags_disabled() && config.identity.describe_tags_fallback => {
            check_describe_tags(imds, config.identity.imds_deadline).await
        }
        Err(e) if e.is_tags_disabled() => fail(
            "tags in instance metadata are disabled",
            format!(
                "aws ec2 modify-instance-metadata-options --instance-id ID --instance-metadata-tags enabled \
                 (or InstanceMetadataTags=enabled in the launch template); bootagent reads the {} tag from there",
                config.identity.service_tag
            ),
        ),
        Err(e) => fail(e.to_string(), "fix the imds check first"),
    }
}

/// Tags in metadata are off and the config falls back to the EC2 API: whether that works.
async fn check_describe_tags(imds: &ImdsClient, deadline: Duration) -> Finding {
    let instance = match imds.get_required("meta-data/instance-id").await {
        Ok(id) => id,
        Err(e) => return fail(e.to_string(), "fix the imds check first"),
    };
    let region = match identity::region(imds).await {
        Ok(region) => region,
        Err(e) => return fail(e.to_string(), "fix the imds check first"),
    };
    match crate::ec2::instance_tags(&region, &instance, deadline).await {
        Ok(tags) => ok(format!(
            "tags in instance metadata are disabled; ec2:DescribeTags reads {} tags \
             (identity.describe_tags_fallback)",
            tags.len()
        )),
        Err(e) => fail(
            e.to_string(),
            "allow ec2:DescribeTags to the instance role, or enable tags in instance metadata",
        ),
    }
}

async fn identity_plan(
    deadline: Deadline,
    imds: &ImdsClient,
    config: &Config,
) -> Result<Plan, Finding> {
    // Tags that lag a launch are a boot-time matter; the doctor looks once.
    let mut once = config.clone();
    once.identity.tag_wait = Duration::ZERO;
    let work = async {
        let identity = identity::fetch(imds, &once, once.identity.imds_deadline)
            .await
            .map_err(|e| {
                // The hint follows the cause: bad tags are fixed on the instance, the rest where
                // their own check points.
                let fix = match &e {
                    identity::FetchError::Identity(_) => {
                        "tag the instance with valid Service and Environment tags (see the message)"
                    }
                    identity::FetchError::Imds(_) => "fix what the imds check reports first",
                    identity::FetchError::Ec2(_) => "fix what the tags check reports first",
                };
                fail(crate::Error::from(e).chain().replace('\n', " "), fix)
            })?;
        crate::plan::build(config, &identity)
            .map_err(|e| fail(e.to_string(), "fix the configuration named in the message"))
    };
    tokio::time::timeout_at(deadline.at, work)
        .await
        .unwrap_or_else(|_| Err(deadline.timed_out()))
}

/// Captures the Date header of Secrets Manager's answers, to measure the clock against AWS's.
#[derive(Debug)]
struct DateCapture(Arc<Mutex<Option<String>>>);

impl Intercept for DateCapture {
    fn name(&self) -> &'static str {
        "bootagent-date-capture"
    }

    fn read_after_transmit(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_secretsmanager::error::BoxError> {
        if let Some(date) = context.response().headers().get("date") {
            *self.0.lock().expect("date lock") = Some(date.to_string());
        }
        Ok(())
    }
}

async fn secrets_client(
    region: &str,
    timeout: Duration,
    date: Arc<Mutex<Option<String>>>,
) -> Option<secrets::Client> {
    // One attempt per call: the doctor reports what answers now, within each check's time.
    let client = secrets::client(region, timeout, Duration::ZERO)
        .await
        .ok()?;
    let config = client
        .sdk()
        .config()
        .to_builder()
        .interceptor(DateCapture(date))
        .build();
    Some(secrets::Client::with_sdk(
        aws_sdk_secretsmanager::Client::from_conf(config),
        crate::retry::AWS_BACKOFF,
        Duration::ZERO,
    ))
}

/// The credentials every AWS client of a boot would use: the shared SDK configuration's.
async fn check_credentials(plan: Arc<Plan>, timeout: Duration) -> Finding {
    use aws_sdk_secretsmanager::config::ProvideCredentials;
    let sdk = match crate::aws::load(&plan.identity.region, timeout).await {
        Ok(sdk) => sdk,
        Err(e) => return fail(e.to_string(), "install the ca-certificates package"),
    };
    let Some(provider) = sdk.credentials_provider() else {
        return fail(
            "no credentials provider",
            "attach an instance profile to the instance",
        );
    };
    match provider.provide_credentials().await {
        Ok(credentials) => ok(format!(
            "credentials found, region {}{}",
            plan.identity.region,
            credentials
                .expiry()
                .and_then(|at| at.duration_since(SystemTime::now()).ok())
                .map(|left| format!(
                    ", expiring in {}",
                    humantime::format_duration(Duration::from_secs(left.as_secs()))
                ))
                .unwrap_or_default()
        )),
        Err(e) => fail(
            format!("no AWS credentials: {e}"),
            "attach an instance profile (IAM role) to the instance",
        ),
    }
}

async fn check_secret(client: &Option<secrets::Client>, plan: &Plan) -> Finding {
    let Some(client) = client else {
        return fail(
            "no CA certificates to verify AWS endpoints with",
            "install the ca-certificates package",
        );
    };
    match secrets::load(client, &plan.identity.region, &plan.secrets).await {
        Ok(loaded) => ok(format!(
            "{} secret(s) readable, {} variable(s)",
            loaded.versions.len(),
            loaded.vars.len()
        )),
        Err(e) => fail(e.to_string(), secret_hint(&e)),
    }
}

fn secret_hint(error: &secrets::SecretsError) -> &'static str {
    if error.is_malformed() {
        "store the secret as a JSON object of strings, numbers and booleans"
    } else if error.is_transient() {
        "check network access to Secrets Manager and retry"
    } else {
        "create the secret or grant the instance role secretsmanager:GetSecretValue on it"
    }
}

fn check_clock(date: &Mutex<Option<String>>) -> Finding {
    let Some(header) = date.lock().expect("date lock").clone() else {
        return skip("no answer from Secrets Manager carried a Date header");
    };
    let Ok(theirs) = DateTime::from_str(&header, DateTimeFormat::HttpDate) else {
        return skip(format!("unreadable Date header {header:?}"));
    };
    let ours = DateTime::from(SystemTime::now());
    let skew = Duration::from_secs(ours.secs().abs_diff(theirs.secs()));
    let detail = format!("{} from AWS's clock", humantime::format_duration(skew));
    let hint = "synchronise the clock (chrony with the Amazon Time Sync Service, 169.254.169.123)";
    if skew >= SKEW_FAIL {
        fail(format!("{detail}: SigV4 requests will be refused"), hint)
    } else if skew >= SKEW_WARN {
        warn(detail, hint)
    } else {
        ok(detail)
    }
}

/// Another environment's secret should not be readable from here: a test instance able to read
/// prod's secrets is one compromise away from a prod leak.
async fn check_isolation(
    config: Arc<Config>,
    plan: Arc<Plan>,
    client: Option<secrets::Client>,
) -> Finding {
    let Some(client) = client else {
        return skip("no Secrets Manager client");
    };
    let mut readable = Vec::new();
    let mut untold = Vec::new();
    for env in config
        .environments
        .keys()
        .filter(|e| **e != plan.identity.env)
    {
        let Ok(identity) = plan.identity.in_environment(&config, env) else {
            continue;
        };
        let Ok(other) = crate::plan::build(&config, &identity) else {
            continue;
        };
        let Some(id) = other.secrets.main else {
            continue;
        };
        let probe = crate::plan::SecretsPlan {
            main: Some(id.clone()),
            vars: Default::default(),
            version_id: None,
            ..other.secrets
        };
        match secrets::load(&client, &identity.region, &probe).await {
            Ok(_) => readable.push(format!("{id} ({env})")),
            // Refused or absent: not readable from here, which is the point.
            Err(e) if !e.is_transient() && !e.is_local() => {}
            Err(e) => untold.push(format!("{id} ({env}): {e}")),
        }
    }
    if readable.is_empty() && !untold.is_empty() {
        warn(
            format!(
                "could not tell whether other environments' secrets are readable: {}",
                untold.join("; ")
            ),
            "fix the secret check first, then look again",
        )
    } else if readable.is_empty() {
        ok("other environments' secrets are not readable from here")
    } else {
        warn(
            format!("this instance can read other environments' secrets: {}", readable.join(", ")),
            "scope the instance role's secretsmanager:GetSecretValue to its own environment's secrets",
        )
    }
}

async fn check_git(
    config: Arc<Config>,
    plan: Arc<Plan>,
    client: Option<secrets::Client>,
    deadline: Deadline,
) -> Finding {
    let remote = match plan.git.remote.clone() {
        Ok(remote) => remote,
        Err(missing) => {
            return fail(
                "no git repository configured",
                format!(
                    "set git.url, or tag the instance with {}=<url>",
                    missing.tag
                ),
            )
        }
    };
    let credentials =
        match tokio::time::timeout_at(deadline.at, git_credentials(&config, &plan, client)).await {
            Ok(Ok(credentials)) => credentials,
            Ok(Err(finding)) => return finding,
            Err(_) => return deadline.timed_out(),
        };
    let reference = plan.git.reference.clone();
    let shown = remote.to_string();
    // The listing stops by itself when doctor's time is up, so no git thread outlives doctor.
    let limits = git::Limits::new(deadline.left(), "doctor --timeout", git::Cancel::default());
    let dir = plan.git.dir.clone();
    let answer = tokio::task::spawn_blocking(move || {
        git::remote_ref(&remote, &reference, &dir, &credentials, &limits)
    })
    .await;
    match answer {
        Ok(Ok(commit)) => ok(format!("{shown} {} is at {commit}", plan.git.reference)),
        // The listing's own limit is the check's: whichever timer wakes first, a remote that
        // did not answer in time gets the same hint.
        Ok(Err(e)) if e.is_transient() => fail(
            e.to_string(),
            "check the remote and the network path to it (slow or unreachable), or rerun with a \
             longer --timeout",
        ),
        Ok(Err(e)) => fail(
            e.to_string(),
            "check the remote, its credentials and git.ref",
        ),
        Err(e) => fail(format!("the git check failed: {e}"), "report this as a bug"),
    }
}

/// The deploy token and key as a boot would use them; reading secrets only when one is there.
async fn git_credentials(
    config: &Config,
    plan: &Plan,
    client: Option<secrets::Client>,
) -> Result<git::Credentials, Finding> {
    let Some(client) = client else {
        if config.git.credentials_in_secrets() {
            return Err(skip(
                "a git credential is in a secret, and Secrets Manager is not reachable",
            ));
        }
        let mut none = secrets::LoadedSecrets::default();
        return git::Credentials::from_config(config, &mut none).map_err(credentials_failed);
    };
    match git::Credentials::load(config, plan, &client).await {
        Ok(credentials) => Ok(credentials),
        Err(git::Unavailable::Secrets(_)) => Err(skip(
            "a git credential is in a secret, which the secret check could not read",
        )),
        Err(git::Unavailable::Git(e)) => Err(credentials_failed(e)),
    }
}

fn credentials_failed(error: git::GitError) -> Finding {
    fail(error.to_string(), "fix git.token or git.ssh_key")
}

/// With `git.verify` set, what a boot needs to check a signature: the tool on PATH and the
/// file of trusted keys, read as a boot reads it.
fn check_signing(config: &Config) -> Finding {
    let verify = config.git.verify;
    let keys = match verify {
        Verify::Gpg => &config.git.gpg_keyring,
        _ => &config.git.allowed_signers,
    };
    if let Some(tool) = git::trust::tool(verify) {
        if on_path(tool).is_none() {
            let package = match verify {
                Verify::Gpg => "gpgv",
                _ => "openssh-client (openssh-clients on Amazon Linux)",
            };
            return fail(
                format!("git.verify needs {tool}, which is not on PATH: no code can deploy"),
                format!("install {package} in the image"),
            );
        }
    }
    match git::trusted_keys::check_keys(verify, keys) {
        Ok(()) => ok(format!(
            "{} and the trusted keys in {} are there",
            git::trust::tool(verify).unwrap_or_default(),
            keys.display()
        )),
        Err(problem) => fail(problem.problem, problem.fix),
    }
}

/// Where `program` is found on PATH, as a boot would run it.
fn on_path(program: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

async fn check_env_file(config: Arc<Config>, plan: Arc<Plan>) -> Finding {
    use std::os::unix::fs::MetadataExt;
    let path = &plan.env_file;
    let dir = path.parent().unwrap_or(&config.paths.run_dir);
    if let Err(e) = envfile::check_memory_backed(dir, config.paths.allow_persistent_env_file) {
        return fail(
            e.to_string(),
            "point paths.run_dir at a tmpfs such as /run/bootagent",
        );
    }
    match std::fs::metadata(path) {
        Ok(meta) if meta.mode() & 0o077 != 0 => fail(
            format!(
                "{} has mode {:o}: others can read the secrets",
                path.display(),
                meta.mode() & 0o777
            ),
            format!("chmod 600 {}, and run bootagent boot again", path.display()),
        ),
        Ok(meta) => ok(format!(
            "{} on tmpfs, mode {:o}, owner uid {}",
            path.display(),
            meta.mode() & 0o777,
            meta.uid()
        )),
        Err(_) => fail(
            format!("{} does not exist", path.display()),
            "run bootagent boot; see the last-boot check",
        ),
    }
}

async fn check_unit(plan: Arc<Plan>, client: Option<secrets::Client>) -> Finding {
    if plan.service.manager != Manager::Systemd {
        return skip("exec mode: no unit");
    }
    let unit = &plan.service.unit;
    match crate::service::unit_state(unit).await {
        Ok(state) if state.active == "active" => ok(format!("{unit} is active")),
        Ok(state) => {
            let journal = tokio::process::Command::new("journalctl")
                .args(["--no-pager", "-o", "cat", "-n", JOURNAL_LINES, "-u", unit])
                .output()
                .await
                .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
                .unwrap_or_default();
            // The service may print its secrets, and this report goes to SSM's output: every
            // value of the secret is masked, or, when it cannot be read, no line is shown.
            let loaded = match &client {
                Some(client) => secrets::load(client, &plan.identity.region, &plan.secrets)
                    .await
                    .ok(),
                None => None,
            };
            let journal = match loaded {
                Some(loaded) => format!(
                    "last journal lines (secret values masked):\n{}",
                    mask(&journal, loaded.vars.values().map(|v| v.value.as_str()))
                ),
                None => "its journal lines are not shown: the secret could not be read to mask \
                         its values in them"
                    .to_string(),
            };
            fail(
                format!(
                    "{unit} is {} (result {}); {journal}",
                    state.active, state.result
                ),
                format!("see journalctl -u {unit}; then bootagent boot"),
            )
        }
        Err(e) => fail(e.to_string(), "is systemd running here?"),
    }
}

/// `text` with every one of `values` (and each line of a value of several) replaced by `***`,
/// the longest first, so that a value holding another is masked whole.
fn mask<'a>(text: &str, values: impl Iterator<Item = &'a str>) -> String {
    let mut secrets: Vec<&str> = values
        .flat_map(|value| std::iter::once(value).chain(value.lines()))
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .collect();
    secrets.sort_by_key(|value| std::cmp::Reverse(value.len()));
    secrets.into_iter().fold(text.to_string(), |masked, value| {
        masked.replace(value, "***")
    })
}

async fn check_disk(config: Arc<Config>, plan: Option<Arc<Plan>>) -> Finding {
    let mut paths = vec![(config.paths.run_dir.clone(), LOW_RUN_DIR_BYTES)];
    if let Some(plan) = &plan {
        // The checkout's nearest existing ancestor: its file system is where clones land.
        let mut dir = plan.git.dir.clone();
        while !dir.exists() && dir.pop() {}
        paths.push((dir, LOW_CHECKOUT_BYTES));
    }
    let mut low = Vec::new();
    let mut report = Vec::new();
    for (path, needed) in paths.iter().filter(|(p, _)| p.exists()) {
        let Ok(stats) = nix::sys::statvfs::statvfs(path) else {
            continue;
        };
        let free = stats.blocks_available() * stats.fragment_size();
        report.push(format!(
            "{} {} MiB free",
            path.display(),
            free / (1024 * 1024)
        ));
        if free < *needed {
            low.push(path.display().to_string());
        }
    }
    if low.is_empty() {
        ok(report.join(", "))
    } else {
        fail(
            format!("low free space: {}", report.join(", ")),
            format!("free space on {}", low.join(", ")),
        )
    }
}

async fn check_last_boot(config: Arc<Config>) -> Finding {
    match status::read(&config.paths) {
        Ok(s) => match (&s.outcome, &s.error) {
            (status::Outcome::Succeeded, _) => ok(format!(
                "succeeded at {}",
                s.finished_at.unwrap_or_default()
            )),
            (status::Outcome::Degraded, _) => fail(
                format!(
                    "degraded at {}: {}",
                    s.finished_at.unwrap_or_default(),
                    s.degraded.unwrap_or_default()
                ),
                "the release in service is not the one asked for: fix the cause named (the git \
                 check shows the remote now), then bootagent boot",
            ),
            (status::Outcome::RolledBack, _) => {
                let why = s.degraded.unwrap_or_default();
                fail(
                    format!("at {}: {why}", s.finished_at.unwrap_or_default()),
                    rolled_back_fix(&why),
                )
            }
            (status::Outcome::Running, _) => warn(
                format!("running since {}", s.started_at),
                "wait for it, or look at bootagent status",
            ),
            (status::Outcome::Failed, Some(error)) => fail(
                format!(
                    "failed with exit code {}: {}",
                    error.exit_code,
                    error.message.replace('\n', " ")
                ),
                "fix the cause named, then bootagent boot",
            ),
            (status::Outcome::Failed, None) => fail("failed", "see bootagent status"),
        },
        Err(e) => fail(e.to_string(), "run bootagent boot"),
    }
}

/// What to fix after a rollback: the secret when the new versions were the change (the boot's
/// own words name them), else the commit.
fn rolled_back_fix(why: &str) -> &'static str {
    if why.starts_with("rolled back the new versions of") {
        "the environment from before the new secret versions serves: fix the secret's value (the \
         journal of the unit shows why the service failed with it), put a new version, then \
         bootagent deploy"
    } else {
        "the release before the change serves: fix the commit (the journal of the unit shows why \
         it failed), push the fix, then bootagent deploy"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rolled_back_rotation_asks_to_fix_the_secret_not_the_commit() {
        let secrets = crate::Error::SecretsRolledBack {
            secrets: "app_env_prod".into(),
            commit: "c1".into(),
            cause: "app.service exited".into(),
            next: String::new(),
        };
        assert!(rolled_back_fix(&secrets.to_string()).contains("fix the secret's value"));
        let commit = crate::Error::RolledBack {
            from: "c2".into(),
            to: "c1".into(),
            cause: "app.service exited".into(),
            next: String::new(),
        };
        assert!(rolled_back_fix(&commit.to_string()).contains("fix the commit"));
    }

    #[test]
    fn every_value_of_the_secret_is_masked_in_journal_lines() {
        let journal = "starting with token=canary-123-long and DB=canary-123\n\
                       second line of a key\nport 8080 ready";
        let masked = mask(
            journal,
            [
                "canary-123",
                "canary-123-long",
                "first line of a key\nsecond line of a key",
                "",
            ]
            .into_iter(),
        );
        assert_eq!(
            masked,
            "starting with token=*** and DB=***\n***\nport 8080 ready"
        );
    }
}
