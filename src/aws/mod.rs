//! The AWS APIs bootagent calls besides Secrets Manager (`crate::secrets`): instance metadata
//! (`imds`), DescribeTags (`ec2`) and the lifecycle actions (`autoscaling`). This file holds
//! what every AWS client here shares: region, timeouts, the `bootagent` app name in the
//! User-Agent (so CloudTrail shows who called), and a clear word when there is no CA store.

pub mod autoscaling;
pub(crate) mod ec2;
pub mod imds;

use std::time::Duration;

use aws_config::{AppName, BehaviorVersion, Region, SdkConfig};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextMut;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;

/// The most of one answer an AWS client reads, as for IMDS: a secret holds at most 64 KiB, and
/// Auto Scaling's and EC2's answers to bootagent's calls are a few KiB. Anything longer is not
/// AWS's answer, and is cut off before it fills memory.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// `1 MiB`, for messages.
pub fn max_answer() -> String {
    format!("{} MiB", MAX_ANSWER_BYTES >> 20)
}

#[derive(Debug, thiserror::Error)]
#[error(
    "no CA certificates were found to verify AWS endpoints with ({detail}); install the \
     ca-certificates package in the image, or point SSL_CERT_FILE at a CA bundle"
)]
pub struct NoTrustRoots {
    detail: String,
}

/// SDK configuration for `region`, with endpoint and credentials from the SDK's usual sources
/// (`AWS_ENDPOINT_URL*`, the default credential chain). Each call is one attempt: bootagent
/// retries on its own, within the budget each caller has (`crate::retry`).
pub async fn load(region: &str, timeout: Duration) -> Result<SdkConfig, NoTrustRoots> {
    check_trust_roots()?;
    Ok(aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .app_name(AppName::new("bootagent").expect("a valid app name"))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_timeout(timeout)
                .connect_timeout(Duration::from_secs(3))
                .build(),
        )
        .load()
        .await)
}

/// The SDK trusts the system's CA store; without one every HTTPS call fails with a certificate
/// error that does not say why. Say why.
fn check_trust_roots() -> Result<(), NoTrustRoots> {
    match crate::ca::none_found() {
        Some(detail) => Err(NoTrustRoots { detail }),
        None => Ok(()),
    }
}

/// Cuts every answer an SDK client reads off past [`MAX_ANSWER_BYTES`]: the SDK reads a whole
/// body into memory before it parses it. The call then fails with a response error whose
/// cause [`answer_too_large`] tells.
#[derive(Debug)]
pub struct BoundedAnswers;

impl Intercept for BoundedAnswers {
    fn name(&self) -> &'static str {
        "bootagent-bounded-answers"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let body = context.response_mut().take_body();
        *context.response_mut().body_mut() =
            SdkBody::from_body_1_x(http_body_util::Limited::new(body, MAX_ANSWER_BYTES));
        Ok(())
    }
}

/// Whether `error` failed because its answer passed [`MAX_ANSWER_BYTES`] ([`BoundedAnswers`]).
pub fn answer_too_large(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Why [`read_bounded`] read no body.
#[derive(Debug)]
pub enum Unbounded {
    /// It passed [`MAX_ANSWER_BYTES`].
    TooLarge,
    Read(reqwest::Error),
}

/// The body of an answer read with reqwest (IMDS, ec2:DescribeTags), as text, read chunk by
/// chunk and refused past [`MAX_ANSWER_BYTES`].
pub async fn read_bounded(mut response: reqwest::Response) -> Result<String, Unbounded> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(Unbounded::Read)? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(Unbounded::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}
