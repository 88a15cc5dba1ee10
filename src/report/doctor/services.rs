//! The checks that ask a service something: instance metadata, Secrets Manager, STS, the git
//! remote. Each is bounded by doctor's deadline.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_sdk_secretsmanager::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_secretsmanager::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_secretsmanager::primitives::{DateTime, DateTimeFormat};

use super::{fail, ok, skip, timed_out, warn, Finding};
use crate::aws::imds::ImdsClient;
use crate::config::{Config, SecretsConfig};
use crate::deadline::Deadline;
use crate::plan::identity;
use crate::plan::Plan;
use crate::{git, secrets};

/// SigV4 requests are refused past 5 minutes of skew; warn well before.
const SKEW_FAIL: Duration = Duration::from_secs(300);
const SKEW_WARN: Duration = Duration::from_secs(60);

pub(super) async fn check_imds(imds: &ImdsClient) -> Finding {
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

pub(super) async fn check_tags(imds: &ImdsClient, config: &Config) -> Finding {
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
    match crate::aws::ec2::instance_tags(&region, &instance, deadline).await {
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

pub(super) async fn identity_plan(
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
    deadline
        .limit(work)
        .await
        .unwrap_or_else(|_| Err(timed_out(deadline)))
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

pub(super) async fn secrets_client(
    settings: &SecretsConfig,
    region: &str,
    timeout: Duration,
    date: Arc<Mutex<Option<String>>>,
) -> Option<secrets::Client> {
    // One attempt per call, within doctor's --timeout: the doctor reports what answers now.
    let settings = SecretsConfig {
        timeout,
        ..settings.clone()
    };
    let client = secrets::client(&settings, region, Duration::ZERO)
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
pub(super) async fn check_credentials(plan: Arc<Plan>, timeout: Duration) -> Finding {
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

pub(super) async fn check_secret(client: &Option<secrets::Client>, plan: &Plan) -> Finding {
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

pub(super) fn check_clock(date: &Mutex<Option<String>>) -> Finding {
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
pub(super) async fn check_isolation(
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
            files: Default::default(),
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

/// The remote's ref, listed as a boot lists it; with what it is at, for the seed check.
pub(super) async fn check_git(
    config: Arc<Config>,
    plan: Arc<Plan>,
    client: Option<secrets::Client>,
    deadline: Deadline,
) -> (Finding, Option<git::RemoteRef>) {
    let remote = match plan.git.remote.clone() {
        Ok(remote) => remote,
        Err(missing) => {
            let finding = fail(
                "no git repository configured",
                format!(
                    "set git.url, or tag the instance with {}=<url>",
                    missing.tag
                ),
            );
            return (finding, None);
        }
    };
    let credentials = match git_credentials(&config, &plan, client, deadline).await {
        Ok(credentials) => credentials,
        Err(finding) => return (finding, None),
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
    let finding = match &answer {
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
    };
    (finding, answer.ok().and_then(Result::ok))
}

/// The deploy token and key as a boot would use them, within doctor's time.
pub(super) async fn git_credentials(
    config: &Config,
    plan: &Plan,
    client: Option<secrets::Client>,
    deadline: Deadline,
) -> Result<git::Credentials, Finding> {
    let loaded = deadline.limit(load_git_credentials(config, plan, client));
    loaded.await.unwrap_or_else(|_| Err(timed_out(deadline)))
}

/// The deploy token and key as a boot would use them; reading secrets only when one is there.
async fn load_git_credentials(
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
        return git::Credentials::new(&config.git, &config.paths, &mut none)
            .map_err(credentials_failed);
    };
    match git::Credentials::load(&config.git, &config.paths, plan, &client).await {
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
