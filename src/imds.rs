//! IMDSv2 client on reqwest. aws-config's own client keeps retrying with a token the server
//! rejected with 401, so this one caches the token itself and drops it on 401.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::Mutex;

use crate::retry;

pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
const ENDPOINT_ENV: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
const TOKEN_TTL_SECONDS: u32 = 21600;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// IMDS is on the instance itself: short waits, never more than a second.
const BACKOFF: retry::Backoff = retry::Backoff {
    base: Duration::from_millis(100),
    cap: Duration::from_secs(1),
};
/// EC2's largest answers (user data, 16 KiB; 50 tags of 128+256 characters) fit many times over:
/// anything longer is not EC2's metadata service, and is not read into memory.
const MAX_ANSWER_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error(
        "instance metadata at {endpoint} did not answer {path} within {waited} ({attempts} \
         attempts; last error: {last}); \
         on EC2 check that the metadata endpoint is enabled (HttpEndpoint=enabled) and, inside a \
         container, that HttpPutResponseHopLimit is at least 2"
    )]
    Unreachable {
        endpoint: String,
        path: String,
        waited: String,
        attempts: u32,
        last: String,
    },
    #[error(
        "instance metadata refused {path} with HTTP 403: the metadata service is disabled or this \
         request is not allowed; enable it in the instance's metadata options (`aws ec2 \
         modify-instance-metadata-options --instance-id ID --http-endpoint enabled`, or \
         MetadataOptions HttpEndpoint=enabled in the launch template), and check that no local \
         firewall or proxy answers for 169.254.169.254"
    )]
    Forbidden { path: String },
    #[error(
        "instance metadata answered {path} with unexpected HTTP {status}; something other than \
         EC2's metadata service answers at this address"
    )]
    Unexpected { path: String, status: u16 },
    #[error(
        "instance metadata answered {path} with more than {limit} bytes; something other than \
         EC2's metadata service answers at this address"
    )]
    TooLarge { path: String, limit: usize },
    #[error(
        "instance tags are not available in instance metadata: tags in metadata are disabled \
         (GET {path} answered 404); enable them with `aws ec2 modify-instance-metadata-options \
         --instance-id ID --instance-metadata-tags enabled` or InstanceMetadataTags=enabled in the \
         launch template"
    )]
    TagsDisabled { path: String },
}

impl ImdsError {
    pub fn is_tags_disabled(&self) -> bool {
        matches!(self, ImdsError::TagsDisabled { .. })
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, ImdsError::Unreachable { .. })
    }

    /// Nothing listens at the address (ECONNREFUSED, in the OS's words): unlike a timeout, this
    /// is no hop-limit matter.
    pub fn is_refused(&self) -> bool {
        matches!(self, ImdsError::Unreachable { last, .. } if last.contains("Connection refused"))
    }
}

/// Why one attempt failed: worth another attempt within the deadline, or final.
enum Attempt {
    Retry(String),
    Fatal(ImdsError),
}

pub struct ImdsClient {
    http: reqwest::Client,
    endpoint: String,
    deadline: Duration,
    token: Mutex<Option<String>>,
}

/// A client for plain HTTP on this machine (IMDS, the app's health URL): never through a
/// proxy from the environment, and without TLS roots — loading the system's CA store would fail
/// where there is none, and nothing here needs it.
pub(crate) fn local_http_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder().no_proxy().tls_certs_only([])
}

impl ImdsClient {
    pub fn new(endpoint: &str, deadline: Duration) -> Self {
        let http = local_http_client()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("bootagent/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a plain HTTP client builds");
        ImdsClient {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            deadline,
            token: Mutex::new(None),
        }
    }

    /// The endpoint the AWS SDKs use: `AWS_EC2_METADATA_SERVICE_ENDPOINT` or the link-local one.
    pub fn from_env(deadline: Duration) -> Self {
        let endpoint = std::env::var(ENDPOINT_ENV)
            .ok()
            .filter(|value| !value.is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        Self::new(&endpoint, deadline)
    }

    /// GET `/latest/<path>`; `Ok(None)` when IMDS says 404. Retries connection failures, 5xx
    /// and stale tokens with bounded backoff until the client's deadline.
    pub async fn get(&self, path: &str) -> Result<Option<String>, ImdsError> {
        let tried = retry::retry(BACKOFF, self.deadline, |_| async {
            self.try_get(path).await.map_err(|attempt| match attempt {
                Attempt::Fatal(e) => retry::Failure::Permanent(e),
                Attempt::Retry(why) => {
                    tracing::debug!(path, error = %why, "instance metadata request failed, retrying");
                    retry::Failure::Transient(why)
                }
            })
        })
        .await;
        tried.map_err(|stopped| match stopped {
            retry::Stopped::Permanent(e) => e,
            retry::Stopped::GaveUp {
                last,
                attempts,
                waited,
            } => ImdsError::Unreachable {
                endpoint: self.endpoint.clone(),
                path: path.to_string(),
                waited: humantime::format_duration(round_to_ms(waited)).to_string(),
                attempts,
                last,
            },
        })
    }

    /// Like [`get`](Self::get) for values that always exist on EC2.
    pub async fn get_required(&self, path: &str) -> Result<String, ImdsError> {
        self.get(path).await?.ok_or_else(|| ImdsError::Unexpected {
            path: path.to_string(),
            status: 404,
        })
    }

    /// Where Auto Scaling is taking this instance (`InService`, `Terminated`, `Warmed:Stopped`,
    /// …); `None` outside an Auto Scaling group.
    pub async fn target_lifecycle_state(&self) -> Result<Option<String>, ImdsError> {
        self.get("meta-data/autoscaling/target-lifecycle-state")
            .await
            .map(|state| state.map(|s| s.trim().to_string()))
    }

    /// The named instance tags that are present. The tag list answering 404 means tags in
    /// metadata are disabled, which no amount of waiting fixes.
    pub async fn tags(&self, keys: &[&str]) -> Result<BTreeMap<String, String>, ImdsError> {
        let list_path = "meta-data/tags/instance";
        let listed = self
            .get(list_path)
            .await?
            .ok_or_else(|| ImdsError::TagsDisabled {
                path: format!("/latest/{list_path}"),
            })?;
        let mut tags = BTreeMap::new();
        for key in keys {
            if !listed.lines().any(|line| line == *key) {
                continue;
            }
            // A tag deleted between the list and this read is simply absent.
            if let Some(value) = self.get(&format!("{list_path}/{key}")).await? {
                tags.insert(key.to_string(), value);
            }
        }
        Ok(tags)
    }

    async fn try_get(&self, path: &str) -> Result<Option<String>, Attempt> {
        let token = self.token().await?;
        let url = format!("{}/latest/{path}", self.endpoint);
        let response = self
            .http
            .get(&url)
            .header("X-aws-ec2-metadata-token", &token)
            .send()
            .await
            .map_err(|e| Attempt::Retry(describe(&e)))?;
        match response.status().as_u16() {
            200 => read_bounded(response, &format!("/latest/{path}"))
                .await
                .map(Some),
            404 => Ok(None),
            401 => {
                // The token expired or IMDS restarted: a new one is needed, not the same again.
                *self.token.lock().await = None;
                Err(Attempt::Retry("token rejected with HTTP 401".into()))
            }
            403 => Err(Attempt::Fatal(ImdsError::Forbidden {
                path: format!("/latest/{path}"),
            })),
            status @ (429 | 500..=599) => Err(Attempt::Retry(format!("HTTP {status}"))),
            status => Err(Attempt::Fatal(ImdsError::Unexpected {
                path: format!("/latest/{path}"),
                status,
            })),
        }
    }

    async fn token(&self) -> Result<String, Attempt> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref() {
            return Ok(token.clone());
        }
        let path = "/latest/api/token";
        let response = self
            .http
            .put(format!("{}{path}", self.endpoint))
            .header("X-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL_SECONDS)
            .send()
            .await
            .map_err(|e| Attempt::Retry(format!("token request: {}", describe(&e))))?;
        match response.status().as_u16() {
            200 => {
                let token = read_bounded(response, path).await?;
                *cached = Some(token.clone());
                Ok(token)
            }
            403 => Err(Attempt::Fatal(ImdsError::Forbidden { path: path.into() })),
            status @ (429 | 500..=599) => {
                Err(Attempt::Retry(format!("token request: HTTP {status}")))
            }
            status => Err(Attempt::Fatal(ImdsError::Unexpected {
                path: path.into(),
                status,
            })),
        }
    }
}

/// The body as text, read chunk by chunk and refused past [`MAX_ANSWER_BYTES`].
async fn read_bounded(mut response: reqwest::Response, path: &str) -> Result<String, Attempt> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| Attempt::Retry(format!("{path}: {}", describe(&e))))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(Attempt::Fatal(ImdsError::TooLarge {
                path: path.to_string(),
                limit: MAX_ANSWER_BYTES,
            }));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// reqwest's top-level message hides the cause ("error sending request"): include the chain.
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

pub(crate) fn round_to_ms(duration: Duration) -> Duration {
    Duration::from_millis(duration.as_millis() as u64)
}
