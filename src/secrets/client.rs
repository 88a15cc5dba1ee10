//! The Secrets Manager client: bootagent's retries over the SDK's calls, and the two calls a
//! boot makes (GetSecretValue, DescribeSecret).

use std::time::Duration;

use zeroize::Zeroizing;

use super::error::{classify, SecretsError};
use crate::config::SecretsConfig;
use crate::retry;

/// A Secrets Manager client that retries on its own: each call is one attempt of the SDK's
/// (whose own retries, 3 attempts, are off), and throttling, 5xx answers and timeouts are tried
/// again with full jitter for as long as `retry_for` allows — a fleet that boots at once and
/// meets throttling waits its turn within its boot deadline instead of giving up after three.
#[derive(Clone, Debug)]
pub struct Client {
    sdk: aws_sdk_secretsmanager::Client,
    backoff: retry::Backoff,
    retry_for: Duration,
}

impl Client {
    /// A client over `sdk_config`, which must have the SDK's retries off.
    pub fn with_sdk(
        sdk: aws_sdk_secretsmanager::Client,
        backoff: retry::Backoff,
        retry_for: Duration,
    ) -> Client {
        Client {
            sdk,
            backoff,
            retry_for,
        }
    }

    pub fn sdk(&self) -> &aws_sdk_secretsmanager::Client {
        &self.sdk
    }

    /// `call` until it succeeds, fails for good, or `retry_for` leaves no room for another try.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, SecretsError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, SecretsError>>,
    {
        retry::retry_call(self.backoff, self.retry_for, call).await
    }
}

/// A Secrets Manager client for `region`, as `settings` say: each attempt within
/// `secrets.timeout`, retried for `retry_for`.
pub async fn client(
    settings: &SecretsConfig,
    region: &str,
    retry_for: Duration,
) -> Result<Client, SecretsError> {
    let sdk_config = crate::aws::load(region, settings.timeout).await?;
    Ok(Client::with_sdk(
        sdk(&sdk_config),
        retry::AWS_BACKOFF,
        retry_for,
    ))
}

/// The SDK's client over `sdk_config`, reading no answer past [`crate::aws::MAX_ANSWER_BYTES`].
pub fn sdk(sdk_config: &aws_config::SdkConfig) -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::from_conf(
        aws_sdk_secretsmanager::config::Builder::from(sdk_config)
            .interceptor(crate::aws::BoundedAnswers)
            .build(),
    )
}

/// Which version of a secret to read.
#[derive(Clone, Copy)]
pub(super) enum Version<'a> {
    Stage(&'a str),
    Id(&'a str),
}

impl Version<'_> {
    pub(super) fn selector(&self) -> String {
        match self {
            Version::Stage(stage) => format!("stage:{stage}"),
            Version::Id(id) => format!("id:{id}"),
        }
    }

    fn describe(&self) -> String {
        match self {
            Version::Stage(stage) => format!("labelled {stage}"),
            Version::Id(id) => format!("with VersionId {id}"),
        }
    }
}

/// One secret as read.
pub struct Fetched {
    /// Which version was asked for ([`Version::selector`]): a snapshot serves a boot that asks
    /// for the same.
    pub(super) selector: String,
    /// The VersionId read, which status.json records.
    pub(super) version_id: Option<String>,
    pub(super) text: Zeroizing<String>,
}

/// The VersionId that carries `stage`, from DescribeSecret: metadata only, no secret value.
pub(super) async fn current_version(
    client: &Client,
    region: &str,
    id: &str,
    stage: &str,
) -> Result<Option<String>, SecretsError> {
    let output = client
        .call(|| async {
            client
                .sdk
                .describe_secret()
                .secret_id(id)
                .send()
                .await
                .map_err(|e| classify(e, id, region, format!("labelled {stage}")))
        })
        .await?;
    Ok(output.version_ids_to_stages().and_then(|versions| {
        versions
            .iter()
            .find(|(_, stages)| stages.iter().any(|s| s == stage))
            .map(|(version_id, _)| version_id.clone())
    }))
}

pub(super) async fn fetch(
    client: &Client,
    region: &str,
    id: &str,
    version: Version<'_>,
) -> Result<Fetched, SecretsError> {
    let output = client
        .call(|| async {
            let request = client.sdk.get_secret_value().secret_id(id);
            let request = match version {
                Version::Stage(stage) => request.version_stage(stage),
                Version::Id(version_id) => request.version_id(version_id),
            };
            request
                .send()
                .await
                .map_err(|e| classify(e, id, region, version.describe()))
        })
        .await?;
    let text = match output.secret_string() {
        Some(text) => Zeroizing::new(text.to_string()),
        None => return Err(SecretsError::Binary { id: id.to_string() }),
    };
    Ok(Fetched {
        selector: version.selector(),
        version_id: output.version_id().map(str::to_string),
        text,
    })
}
