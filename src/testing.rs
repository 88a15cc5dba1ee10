//! Doubles for the in-process adapter tests, which run with a bare `cargo test`: an HTTP server
//! on loopback (for IMDS and the app's health URL) and an HTTP client the AWS SDK is handed in
//! place of its own, answering as AWS does.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request as the stub server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// What the stub server answers: a status and body, after a delay.
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn new(status: u16, body: &str) -> Reply {
        Reply {
            status,
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

/// bootagent's own retries, with waits short enough that retried answers cost no real time.
pub const FAST: crate::retry::Backoff = crate::retry::Backoff {
    base: Duration::from_millis(1),
    cap: Duration::from_millis(5),
};

type Answer = dyn Fn(&Seen) -> Reply + Send + Sync;

/// An HTTP/1.1 server on 127.0.0.1 that answers each request with what `answer` says, one
/// request per connection, and keeps what it saw.
pub struct HttpStub {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpStub {
    pub async fn start(answer: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> HttpStub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answer: Arc<Answer> = Arc::new(answer);
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve_one(stream, answer.clone(), seen.clone()));
                }
            }
        });
        HttpStub { url, seen, task }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for HttpStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_one(
    mut stream: tokio::net::TcpStream,
    answer: Arc<Answer>,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    if request.parse(&head).is_err() {
        return;
    }
    let request = Seen {
        method: request.method.unwrap_or_default().to_string(),
        path: request.path.unwrap_or_default().to_string(),
        headers: request
            .headers
            .iter()
            .map(|h| {
                let value = String::from_utf8_lossy(h.value).into_owned();
                (h.name.to_string(), value)
            })
            .collect(),
    };
    seen.lock().unwrap().push(request.clone());
    let reply = answer(&request);
    tokio::time::sleep(reply.delay).await;
    let response = format!(
        "HTTP/1.1 {} Stub\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        reply.status,
        reply.body.len(),
        reply.body
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The HTTP client an AWS SDK client is built with in these tests: it answers each request with
/// the next of its answers (the last one again once they run out), and keeps each request's
/// `X-Amz-Target` or, for the Query protocol, its body.
#[derive(Debug, Clone)]
pub struct SdkAnswers {
    answers: Arc<Mutex<VecDeque<(u16, String)>>>,
    requests: Arc<Mutex<Vec<String>>>,
    /// Sent with every answer.
    headers: Vec<(&'static str, String)>,
    /// Every answer's body is this many bytes instead, made as they are read.
    generated: Option<u64>,
    /// How many bytes of generated bodies were read.
    generated_read: Arc<AtomicU64>,
}

impl SdkAnswers {
    pub fn new(answers: &[(u16, &str)]) -> SdkAnswers {
        SdkAnswers {
            answers: Arc::new(Mutex::new(
                answers
                    .iter()
                    .map(|(status, body)| (*status, body.to_string()))
                    .collect(),
            )),
            requests: Arc::default(),
            headers: Vec::new(),
            generated: None,
            generated_read: Arc::default(),
        }
    }

    /// Every answer's body is `bytes` long (spaces), made only as the client reads it, as a
    /// hostile or broken endpoint streams one: [`SdkAnswers::generated_read`] tells how much
    /// was read.
    pub fn with_generated_body(mut self, bytes: u64) -> SdkAnswers {
        self.generated = Some(bytes);
        self
    }

    pub fn generated_read(&self) -> u64 {
        self.generated_read.load(Ordering::SeqCst)
    }

    /// Every answer carries this header too.
    pub fn with_header(mut self, name: &'static str, value: &str) -> SdkAnswers {
        self.headers.push((name, value.to_string()));
        self
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// SDK configuration that sends every call here, with test credentials and the SDK's own
    /// retries off, as bootagent's are (it retries on its own: [`FAST`]).
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("eu-west-1"))
            .credentials_provider(aws_credential_types::Credentials::new(
                "AKIDTEST", "secret", None, None, "test",
            ))
            .http_client(self.clone())
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .load()
            .await
    }
}

impl HttpConnector for SdkAnswers {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let seen = match request.headers().get("x-amz-target") {
            Some(target) => target.to_string(),
            None => {
                String::from_utf8_lossy(request.body().bytes().unwrap_or_default()).into_owned()
            }
        };
        self.requests.lock().unwrap().push(seen);
        let (status, body) = {
            let mut answers = self.answers.lock().unwrap();
            match answers.len() {
                0 => (500, String::new()),
                1 => answers[0].clone(),
                _ => answers.pop_front().unwrap(),
            }
        };
        let body = match self.generated {
            Some(left) => SdkBody::from_body_1_x(Generated {
                left,
                read: self.generated_read.clone(),
            }),
            None => SdkBody::from(body),
        };
        let mut response = HttpResponse::new(StatusCode::try_from(status).unwrap(), body);
        for (name, value) in &self.headers {
            response.headers_mut().insert(*name, value.clone());
        }
        HttpConnectorFuture::ready(Ok(response))
    }
}

impl HttpClient for SdkAnswers {
    fn http_connector(
        &self,
        _: &HttpConnectorSettings,
        _: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

/// A body of spaces made a chunk at a time as it is read, counting what was read.
struct Generated {
    left: u64,
    read: Arc<AtomicU64>,
}

impl http_body::Body for Generated {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        static CHUNK: [u8; 64 * 1024] = [b' '; 64 * 1024];
        let size = self.left.min(CHUNK.len() as u64);
        if size == 0 {
            return Poll::Ready(None);
        }
        self.left -= size;
        self.read.fetch_add(size, Ordering::SeqCst);
        let chunk = bytes::Bytes::from_static(&CHUNK[..size as usize]);
        Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }
}
