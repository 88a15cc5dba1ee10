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
use crate::aws::MAX_ANSWER_BYTES;

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

/// The body as text, refused past [`MAX_ANSWER_BYTES`].
async fn read_bounded(response: reqwest::Response, path: &str) -> Result<String, Attempt> {
    crate::aws::read_bounded(response)
        .await
        .map_err(|e| match e {
            crate::aws::Unbounded::TooLarge => Attempt::Fatal(ImdsError::TooLarge {
                path: path.to_string(),
                limit: MAX_ANSWER_BYTES,
            }),
            crate::aws::Unbounded::Read(e) => Attempt::Retry(format!("{path}: {}", describe(&e))),
        })
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

/// The client against an HTTP server in this process that answers as IMDS does.
#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::testing::{HttpStub, Reply, Seen};

    const TOKEN_PATH: &str = "/latest/api/token";

    /// IMDSv2: a PUT hands out `token-N`, the N-th token; GETs go to `get`.
    async fn imds(get: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> HttpStub {
        let issued = AtomicUsize::new(0);
        HttpStub::start(
            move |seen| match (seen.method.as_str(), seen.path.as_str()) {
                ("PUT", TOKEN_PATH) => Reply::new(
                    200,
                    &format!("token-{}", issued.fetch_add(1, Ordering::SeqCst) + 1),
                ),
                _ => get(seen),
            },
        )
        .await
    }

    fn gets(stub: &HttpStub) -> usize {
        stub.seen().iter().filter(|s| s.method == "GET").count()
    }

    #[tokio::test]
    async fn values_are_read_with_one_token_and_404_is_none() {
        let stub = imds(|seen| match seen.path.as_str() {
            "/latest/meta-data/instance-id" => Reply::new(200, "i-0abc"),
            _ => Reply::new(404, ""),
        })
        .await;
        let client = ImdsClient::new(&stub.url, Duration::from_secs(2));
        let id = client.get_required("meta-data/instance-id").await.unwrap();
        assert_eq!(id, "i-0abc");
        assert_eq!(client.get("meta-data/nothing").await.unwrap(), None);
        let seen = stub.seen();
        let puts: Vec<_> = seen.iter().filter(|s| s.method == "PUT").collect();
        assert_eq!(puts.len(), 1, "the token is reused: {seen:?}");
        assert_eq!(
            puts[0].header("x-aws-ec2-metadata-token-ttl-seconds"),
            Some("21600")
        );
        assert!(seen
            .iter()
            .filter(|s| s.method == "GET")
            .all(|s| s.header("x-aws-ec2-metadata-token") == Some("token-1")));
    }

    #[tokio::test]
    async fn a_token_rejected_with_401_is_replaced_and_the_read_goes_on() {
        let stub = imds(|seen| match seen.header("x-aws-ec2-metadata-token") {
            Some("token-1") => Reply::new(401, ""),
            _ => Reply::new(200, "i-0abc"),
        })
        .await;
        let client = ImdsClient::new(&stub.url, Duration::from_secs(5));
        assert_eq!(
            client
                .get("meta-data/instance-id")
                .await
                .unwrap()
                .as_deref(),
            Some("i-0abc")
        );
        let puts = stub.seen().iter().filter(|s| s.method == "PUT").count();
        assert_eq!(puts, 2);
    }

    #[tokio::test]
    async fn a_403_is_final_and_says_how_to_enable_the_endpoint() {
        let stub = imds(|_| Reply::new(403, "")).await;
        let client = ImdsClient::new(&stub.url, Duration::from_secs(5));
        let err = client.get("meta-data/instance-id").await.unwrap_err();
        assert!(matches!(err, ImdsError::Forbidden { .. }), "{err}");
        assert!(err.to_string().contains("--http-endpoint enabled"), "{err}");
        assert_eq!(gets(&stub), 1, "a 403 is not retried");
    }

    #[tokio::test]
    async fn a_403_to_the_token_request_is_final_too() {
        let stub = HttpStub::start(|_| Reply::new(403, "")).await;
        let client = ImdsClient::new(&stub.url, Duration::from_secs(5));
        let err = client.get("meta-data/instance-id").await.unwrap_err();
        assert!(
            matches!(&err, ImdsError::Forbidden { path } if path == TOKEN_PATH),
            "{err}"
        );
        assert_eq!(stub.seen().len(), 1);
    }

    #[tokio::test]
    async fn server_errors_are_retried_until_an_answer_comes() {
        let failures = Arc::new(AtomicUsize::new(0));
        let stub = imds({
            let failures = failures.clone();
            move |_| match failures.fetch_add(1, Ordering::SeqCst) {
                0 => Reply::new(500, ""),
                1 => Reply::new(503, ""),
                _ => Reply::new(200, "eu-west-1"),
            }
        })
        .await;
        let client = ImdsClient::new(&stub.url, Duration::from_secs(10));
        let region = client.get("meta-data/placement/region").await.unwrap();
        assert_eq!(region.as_deref(), Some("eu-west-1"));
        assert_eq!(gets(&stub), 3);
    }

    #[tokio::test]
    async fn server_errors_that_last_end_at_the_deadline_with_the_attempts_counted() {
        let stub = imds(|_| Reply::new(500, "")).await;
        let client = ImdsClient::new(&stub.url, Duration::from_millis(500));
        let err = client.get("meta-data/instance-id").await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        let ImdsError::Unreachable { attempts, last, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(*attempts as usize, gets(&stub));
        assert!(*attempts > 1, "{err}");
        assert_eq!(last, "HTTP 500");
    }

    #[tokio::test]
    async fn a_slow_answer_ends_as_unreachable_after_the_request_timeout() {
        let stub = imds(|_| Reply::new(200, "late").after(Duration::from_secs(5))).await;
        let client = ImdsClient::new(&stub.url, Duration::from_millis(100));
        let started = std::time::Instant::now();
        let err = client.get("meta-data/instance-id").await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(started.elapsed() < Duration::from_secs(4), "{err}");
        assert!(err.to_string().contains("did not answer"), "{err}");
    }

    #[tokio::test]
    async fn tags_disabled_is_told_apart_from_an_absent_tag() {
        let disabled = imds(|_| Reply::new(404, "")).await;
        let client = ImdsClient::new(&disabled.url, Duration::from_secs(2));
        let err = client.tags(&["Service"]).await.unwrap_err();
        assert!(err.is_tags_disabled(), "{err}");

        // Environment is listed but deleted before it is read; Repository is not listed.
        let enabled = imds(|seen| match seen.path.as_str() {
            "/latest/meta-data/tags/instance" => Reply::new(200, "Service\nEnvironment"),
            "/latest/meta-data/tags/instance/Service" => Reply::new(200, "calendar"),
            _ => Reply::new(404, ""),
        })
        .await;
        let client = ImdsClient::new(&enabled.url, Duration::from_secs(2));
        let tags = client
            .tags(&["Service", "Environment", "Repository"])
            .await
            .unwrap();
        assert_eq!(
            tags,
            BTreeMap::from([("Service".into(), "calendar".into())])
        );
    }

    #[tokio::test]
    async fn what_ec2_never_answers_is_refused() {
        let redirect = imds(|_| Reply::new(302, "")).await;
        let client = ImdsClient::new(&redirect.url, Duration::from_secs(2));
        let err = client.get("meta-data/instance-id").await.unwrap_err();
        assert!(
            matches!(err, ImdsError::Unexpected { status: 302, .. }),
            "{err}"
        );
        let huge = "x".repeat(MAX_ANSWER_BYTES + 1);
        let flood = imds(move |_| Reply::new(200, &huge)).await;
        let client = ImdsClient::new(&flood.url, Duration::from_secs(2));
        let err = client.get("user-data").await.unwrap_err();
        assert!(matches!(err, ImdsError::TooLarge { .. }), "{err}");
    }
}
