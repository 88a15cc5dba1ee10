//! The health endpoint for the ALB: a deliberately small HTTP/1.1 server. Each connection gets
//! one answer and is closed; request heads are bounded in size and time, connections in number,
//! and when all slots are taken the oldest connection still sending its head gives way to the
//! new one, so slow or hostile clients cannot starve the load balancer's checks.

use std::collections::VecDeque;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Mutex, Semaphore};

use crate::report::health::{Checker, Health};

const MAX_HEAD_BYTES: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// ALB checks come every 5 s at the fastest; a result this fresh is reused, so a flood of
/// requests costs no more than one check a second.
const CACHE_FOR: Duration = Duration::from_secs(1);

pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

pub struct Server {
    checker: Checker,
    paths: crate::config::PathsConfig,
    cached: Mutex<Option<(Instant, Health)>>,
    header_timeout: Duration,
    /// Connections still reading their request head, oldest first, each with the way to end it.
    reading: std::sync::Mutex<VecDeque<(u64, oneshot::Sender<()>)>>,
}

/// How long a new connection waits for the slot of the connection it evicted.
const EVICTION_WAIT: Duration = Duration::from_millis(200);

/// Serves until the process is stopped. Tells systemd it is ready once listening.
pub async fn serve(
    listener: TcpListener,
    checker: Checker,
    paths: crate::config::PathsConfig,
    limits: Limits,
) -> std::io::Result<()> {
    let server = Arc::new(Server {
        checker,
        paths,
        cached: Mutex::new(None),
        header_timeout: limits.header_timeout,
        reading: std::sync::Mutex::new(VecDeque::new()),
    });
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    notify_ready();
    for id in 0u64.. {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of file descriptors and the like: wait a little rather than spin.
            Err(e) => {
                tracing::warn!(error = %e, "accepting a health connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                // Full: the oldest connection still dawdling over its head makes room.
                let evicted = server.reading.lock().expect("reading lock").pop_front();
                let Some((_, evict)) = evicted else {
                    drop(stream);
                    continue;
                };
                let _ = evict.send(());
                match tokio::time::timeout(EVICTION_WAIT, slots.clone().acquire_owned()).await {
                    Ok(Ok(slot)) => slot,
                    _ => {
                        drop(stream);
                        continue;
                    }
                }
            }
        };
        let (evict, evicted) = oneshot::channel();
        server
            .reading
            .lock()
            .expect("reading lock")
            .push_back((id, evict));
        let server = server.clone();
        tokio::spawn(async move {
            server.answer(id, stream, evicted).await;
            drop(slot);
        });
    }
    Ok(())
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
    allow: bool,
}

impl Server {
    async fn answer(&self, id: u64, mut stream: TcpStream, evicted: oneshot::Receiver<()>) {
        let head = tokio::select! {
            head = tokio::time::timeout(self.header_timeout, read_head(&mut stream)) => head,
            _ = evicted => return,
        };
        self.reading
            .lock()
            .expect("reading lock")
            .retain(|(reader, _)| *reader != id);
        let head = match head {
            Ok(Ok(head)) => head,
            Ok(Err(HeadError::TooLarge)) => {
                return write(&mut stream, plain(431, "request header too large"), false).await
            }
            Ok(Err(HeadError::Closed)) | Err(_) => return,
        };
        let (route, head_only) = route(&head);
        let response = match route {
            Route::Health => {
                let health = self.health().await;
                Response {
                    status: if health.healthy { 200 } else { 503 },
                    content_type: "application/json",
                    body: serde_json::to_string(&health).expect("health serializes") + "\n",
                    allow: false,
                }
            }
            Route::Metrics => Response {
                status: 200,
                content_type: "text/plain; version=0.0.4",
                body: self.metrics().await,
                allow: false,
            },
            Route::MethodNotAllowed => Response {
                allow: true,
                ..plain(405, "method not allowed")
            },
            Route::NotFound => plain(404, "not found"),
            Route::BadRequest => plain(400, "bad request"),
        };
        write(&mut stream, response, head_only).await;
    }

    async fn health(&self) -> Health {
        let mut cached = self.cached.lock().await;
        if let Some((at, health)) = cached.as_ref() {
            if at.elapsed() < CACHE_FOR {
                return health.clone();
            }
        }
        let health = self.checker.check().await;
        *cached = Some((Instant::now(), health.clone()));
        health
    }

    /// Prometheus text: current health, the last boot and the deploy record.
    async fn metrics(&self) -> String {
        let health = self.health().await;
        crate::report::metrics::render(health.healthy, &self.paths)
    }
}

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health,
    Metrics,
    MethodNotAllowed,
    NotFound,
    BadRequest,
}

/// Where a complete request head (up to its blank line) goes, and whether it is a HEAD. The
/// head comes from anyone who can reach the port: it is parsed by httparse, bounded.
pub fn route(head: &[u8]) -> (Route, bool) {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let (method, path) = match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => (
            request.method.unwrap_or_default(),
            request.path.unwrap_or_default(),
        ),
        _ => return (Route::BadRequest, false),
    };
    let path = path.split('?').next().unwrap_or_default();
    let route = match (method, path) {
        ("GET" | "HEAD", "/" | "/health") => Route::Health,
        ("GET" | "HEAD", "/metrics") => Route::Metrics,
        (_, "/" | "/health" | "/metrics") => Route::MethodNotAllowed,
        _ => Route::NotFound,
    };
    (route, method == "HEAD")
}

fn plain(status: u16, text: &str) -> Response {
    Response {
        status,
        content_type: "text/plain",
        body: format!("{text}\n"),
        allow: false,
    }
}

enum HeadError {
    TooLarge,
    Closed,
}

/// Reads up to the blank line that ends a request head.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(head);
        }
        if head.len() > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
    }
}

async fn write(stream: &mut TcpStream, response: Response, head_only: bool) {
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    if response.allow {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&response.body);
    }
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(out.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// `READY=1` to systemd for a `Type=notify` unit; nothing when not started by one.
fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|addr| socket.send_to_addr(b"READY=1", &addr))
        }
        None => socket.send_to(b"READY=1", &path),
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "could not tell systemd the health server is ready");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_and_head_of_the_served_paths_are_answered() {
        let cases: &[(&[u8], Route, bool)] = &[
            (
                b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
                Route::Health,
                false,
            ),
            (b"HEAD /?probe=1 HTTP/1.0\r\n\r\n", Route::Health, true),
            (b"GET /metrics HTTP/1.1\r\n\r\n", Route::Metrics, false),
            (
                b"POST /health HTTP/1.1\r\n\r\n",
                Route::MethodNotAllowed,
                false,
            ),
            (b"GET /secrets HTTP/1.1\r\n\r\n", Route::NotFound, false),
            (b"\x16\x03\x01garbage\r\n\r\n", Route::BadRequest, false),
            (b"GET /health HTTP/1.1\r\n", Route::BadRequest, false),
            // Found by fuzzing: an empty line before the request line is allowed (RFC 9112,
            // 2.2), so the method is read after it.
            (b"\nHEAD /me HTTP/1.0\r\n\r\n", Route::NotFound, true),
        ];
        for (head, route_to, head_only) in cases {
            assert_eq!(
                route(head),
                (*route_to, *head_only),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }
}
