//! What every AWS client here shares: region, timeouts, the `bootagent` app name in the
//! User-Agent (so CloudTrail shows who called), and a clear word when there is no CA store.

use std::time::Duration;

use aws_config::{AppName, BehaviorVersion, Region, SdkConfig};

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
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        let detail = found
            .errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        return Err(NoTrustRoots { detail });
    }
    Ok(())
}
