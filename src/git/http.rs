//! http:// and https:// remotes: git's smart HTTP protocol (stateless: each request a GET of the
//! ref advertisement or a POST of one negotiation round) on reqwest, so TLS is the binary's one
//! stack, rustls on aws-lc, trusting the system's CA store (`SSL_CERT_FILE`/`SSL_CERT_DIR` are
//! honoured). The deploy token goes in an Authorization header, never into a URL or onto disk.

use std::error::Error as _;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_smithy_types::date_time::Format as DateTimeFormat;
use aws_smithy_types::DateTime;
use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::StatusCode;
use zeroize::Zeroizing;

use super::session::{lock, Failure, Session};
use crate::retry;

fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    crate::ca::https_client()
        // A redirect is followed only within the configured origin (scheme, host and port): a
        // remote may move a repository, never send the fetch to a host nobody configured or
        // down to plain http.
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            let same_origin = attempt
                .previous()
                .first()
                .is_some_and(|first| first.origin() == attempt.url().origin());
            match same_origin && attempt.previous().len() < 10 {
                true => attempt.follow(),
                false => attempt.stop(),
            }
        }))
        // Some git hosts speak the smart protocol only to user agents that start with "git/".
        .user_agent(concat!(
            "git/2.0 (bootagent ",
            env!("CARGO_PKG_VERSION"),
            ")"
        ))
        .connect_timeout(timeout)
        .read_timeout(timeout)
        .build()
        .map_err(|e| format!("cannot set up HTTPS: {}", chain(&e)))
}

/// The session's one HTTP client, made at its first request, so the fetch reuses the connection
/// (and TLS session) that listed the refs.
fn client_of(session: &Session) -> Result<&reqwest::Client, String> {
    session
        .http_client
        .get_or_init(|| client(session.options.timeout))
        .as_ref()
        .map_err(Clone::clone)
}

pub(super) struct HttpSubtransport {
    session: Arc<Session>,
    /// libgit2 calls in on a blocking thread of bootagent's runtime; requests run on it.
    runtime: tokio::runtime::Handle,
    /// Where the repository answered the ref advertisement, when a redirect moved it (a renamed
    /// repository): the negotiation requests go there too.
    moved_to: Arc<Mutex<Option<String>>>,
}

impl HttpSubtransport {
    pub fn new(session: Arc<Session>) -> Result<HttpSubtransport, git2::Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            git2::Error::from_str("internal error: an HTTP remote outside the async runtime")
        })?;
        Ok(HttpSubtransport {
            session,
            runtime,
            moved_to: Arc::default(),
        })
    }
}

impl SmartSubtransport for HttpSubtransport {
    fn action(
        &self,
        _url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
        // libgit2's `_url` is the session's remote, which was parsed when the plan was built.
        let (path, post) = match action {
            Service::UploadPackLs => (ADVERTISEMENT, false),
            Service::UploadPack => ("git-upload-pack", true),
            Service::ReceivePackLs | Service::ReceivePack => {
                return Err(git2::Error::from_str("bootagent only fetches"))
            }
        };
        let base = lock(&self.moved_to)
            .clone()
            .unwrap_or_else(|| self.session.remote.url().trim_end_matches('/').to_string());
        Ok(Box::new(HttpStream {
            session: self.session.clone(),
            runtime: self.runtime.clone(),
            endpoint: format!("{base}/{path}"),
            moved_to: self.moved_to.clone(),
            post,
            request: Vec::new(),
            response: None,
            pending: Vec::new(),
            read: 0,
        }))
    }

    fn close(&self) -> Result<(), git2::Error> {
        Ok(())
    }
}

/// One request: what libgit2 writes is the body of the POST, sent at its first read.
struct HttpStream {
    session: Arc<Session>,
    runtime: tokio::runtime::Handle,
    endpoint: String,
    moved_to: Arc<Mutex<Option<String>>>,
    post: bool,
    request: Vec<u8>,
    response: Option<reqwest::Response>,
    /// The part of the last chunk received that libgit2 has not read yet.
    pending: Vec<u8>,
    read: usize,
}

/// How many times one request is sent again after the remote answered that it is busy (HTTP 429
/// or 503): enough to ride out a rate limit's window, few enough that a host that stays busy
/// leaves time for the mirrors.
const BUSY_RETRIES: u32 = 4;
/// The jitter added to each wait after a busy answer, and the whole wait when the remote names
/// none (no Retry-After bootagent reads): a random part of 1 s, 2 s, 4 s, then 8 s, as for the
/// calls to AWS, so that a fleet throttled together does not come back together.
const BUSY_BACKOFF: retry::Backoff = retry::Backoff {
    base: Duration::from_secs(1),
    cap: Duration::from_secs(8),
};
/// A wait is slept in slices this long, so that a cancelled sync stops within one.
const PAUSE_SLICE: Duration = Duration::from_millis(100);

impl HttpStream {
    /// Sends the request, again after each busy answer for as long as the remote asks and the
    /// checkout's deadline allows; returns the first answer that is not busy, checked.
    fn send(&mut self) -> Result<reqwest::Response, Failure> {
        let client = client_of(&self.session).map_err(Failure::Unreachable)?;
        let url = without_credentials(&self.endpoint)
            .ok_or_else(|| Failure::Unusable("the repository URL is not a valid URL".into()))?;
        // Without a CA store every handshake fails as if the remote's certificate were at fault.
        if let Some(why) = crate::ca::none_found().filter(|_| url.scheme() == "https") {
            return Err(Failure::NoTrustRoots(why));
        }
        let credentials = self.credentials()?;
        // Kept whole: a retry sends the same negotiation round.
        let body = std::mem::take(&mut self.request);
        let mut retry = 0;
        loop {
            let mut request = if self.post {
                client
                    .post(url.clone())
                    .header(CONTENT_TYPE, "application/x-git-upload-pack-request")
                    .header(ACCEPT, "application/x-git-upload-pack-result")
                    .body(body.clone())
            } else {
                client.get(url.clone())
            };
            if let Some((user, password)) = &credentials {
                request = request.basic_auth(user, Some(password.as_str()));
            }
            let response = self.attempt(request)?;
            let status = response.status();
            if !matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            ) {
                return self.check(response);
            }
            let asked = retry_after(response.headers(), SystemTime::now());
            retry += 1;
            let wait = asked.as_ref().map_or(Duration::ZERO, |asked| asked.wait)
                + retry::jittered(BUSY_BACKOFF, retry);
            self.may_wait(status, asked.as_ref(), wait, retry)?;
            tracing::warn!(
                remote = %crate::remote::redact(&self.endpoint),
                "the remote answered HTTP {status}: sending the request again in {} ({})",
                humantime::format_duration(Duration::from_millis(wait.as_millis() as u64)),
                match &asked {
                    Some(asked) => format!("it asked to retry after {}", asked.said),
                    None => "it named no Retry-After".to_string(),
                },
            );
            self.pause(wait)?;
        }
    }

    /// The one user and password every request carries in its Authorization header, from the
    /// first request on: an anonymous first request would count against the host's limits for
    /// anonymous clients and cost a round trip for its 401. The deploy token, else the URL's
    /// own; never both, as two Authorization headers are no valid request.
    fn credentials(&self) -> Result<Option<(String, Zeroizing<String>)>, Failure> {
        if let Some((user, token)) = &self.session.options.token {
            return Ok(Some((user.clone(), token.clone())));
        }
        let in_url = self.session.remote.http_credentials();
        let in_url = in_url.map_err(Failure::Unusable)?;
        Ok(in_url.map(|(user, password)| (user, Zeroizing::new(password))))
    }

    /// One request, bounded by the time left.
    fn attempt(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, Failure> {
        let timeout = self.session.options.timeout;
        let limits = &self.session.limits;
        self.runtime
            .block_on(tokio::time::timeout(limits.deadline.left(), request.send()))
            .map_err(|_| {
                limits
                    .exceeded()
                    .unwrap_or_else(|| Failure::silent(timeout))
            })?
            .map_err(|e| classify(e, timeout))
    }

    /// Whether bootagent may wait `wait` and send the request again, as its `retry`th retry:
    /// not past the checkout's deadline (a failure now leaves the time to the mirrors and the
    /// release in service), and not beyond [`BUSY_RETRIES`].
    fn may_wait(
        &self,
        status: StatusCode,
        asked: Option<&Asked>,
        wait: Duration,
        retry: u32,
    ) -> Result<(), Failure> {
        let limits = &self.session.limits;
        if retry > BUSY_RETRIES {
            return Err(Failure::Unreachable(format!(
                "the remote answered HTTP {status} {retry} times in a row"
            )));
        }
        let left = limits.deadline.left();
        if wait < left {
            return Ok(());
        }
        let left = humantime::format_duration(Duration::from_secs(left.as_secs()));
        let why = match asked {
            Some(asked) => format!(
                "the remote asked to retry after {} (HTTP {status})",
                asked.said
            ),
            None => format!(
                "the remote answered HTTP {status}, and the next retry is due in {}",
                humantime::format_duration(Duration::from_secs(wait.as_secs()))
            ),
        };
        Err(Failure::Unreachable(format!(
            "{why}, past the checkout's deadline {} ({left} left)",
            limits.named
        )))
    }

    /// Sleeps `wait`, or until the sync is cancelled or its deadline passes.
    fn pause(&self, wait: Duration) -> Result<(), Failure> {
        let until = Instant::now() + wait;
        loop {
            if let Some(failure) = self.session.limits.exceeded() {
                return Err(failure);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            self.runtime
                .block_on(tokio::time::sleep(left.min(PAUSE_SLICE)));
        }
    }

    /// The answer to the request, when it is git's; why not, when it is not.
    fn check(&self, response: reqwest::Response) -> Result<reqwest::Response, Failure> {
        let token = self.session.options.token.as_ref();
        let status = response.status();
        match status {
            _ if status.is_success() => {}
            _ if status.is_redirection() => {
                let to = (response.headers())
                    .get(reqwest::header::LOCATION)
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or("nowhere");
                return Err(Failure::Unusable(format!(
                    "the remote redirected to {} (HTTP {status}), off the configured scheme, \
                     host and port, which bootagent does not follow; if the repository moved \
                     there, set git.url (or the Repository tag) to its new URL",
                    crate::remote::redact(to)
                )));
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN if token.is_some() => {
                return Err(Failure::Denied(format!(
                    "the remote refused the token (HTTP {status})"
                )))
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
                if self.session.remote.has_http_credentials() =>
            {
                return Err(Failure::Denied(format!(
                    "the remote refused the user and password in the repository URL (HTTP \
                     {status})"
                )))
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(Failure::Denied(format!(
                    "the remote asks for credentials and none are configured (git.token) (HTTP \
                     {status})"
                )))
            }
            StatusCode::NOT_FOUND => {
                return Err(Failure::Unreachable(
                    "no repository at this URL (HTTP 404)".into(),
                ))
            }
            _ => {
                return Err(Failure::Unreachable(format!(
                    "the remote answered HTTP {status}"
                )))
            }
        }
        let expected = if self.post {
            "application/x-git-upload-pack-result"
        } else {
            "application/x-git-upload-pack-advertisement"
        };
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("no content type");
        if content_type != expected {
            return Err(Failure::Unreachable(format!(
                "the remote answered {content_type}, not git's smart HTTP protocol; is the URL a \
                 git repository?"
            )));
        }
        if !self.post && without_credentials(&self.endpoint).as_ref() != Some(response.url()) {
            let moved = moved_base(&self.endpoint, response.url())?;
            tracing::info!(to = %crate::remote::redact(&moved), "the repository moved: following the redirect");
            *lock(&self.moved_to) = Some(moved);
        }
        Ok(response)
    }
}

/// The wait a busy answer asked for in its Retry-After.
#[derive(Debug, PartialEq, Eq)]
struct Asked {
    wait: Duration,
    /// The Retry-After as messages quote it: `120s`, or its date.
    said: String,
}

/// What a busy answer's Retry-After asks: seconds, or until an HTTP date, counted from the
/// answer's own Date (so that a skewed clock here neither stretches nor cuts it), else from
/// `now`; a date past is no wait. None when there is none bootagent reads (a negative number,
/// words).
fn retry_after(headers: &reqwest::header::HeaderMap, now: SystemTime) -> Option<Asked> {
    let header = |name| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
    };
    let http_date = |text: &str| {
        DateTime::from_str(text, DateTimeFormat::HttpDate)
            .ok()
            .and_then(|date| SystemTime::try_from(date).ok())
    };
    let value = header(reqwest::header::RETRY_AFTER)?;
    if let Some(seconds) = retry::server_asked(None, Some(value)) {
        return Some(Asked {
            wait: seconds.duration(),
            said: format!("{value}s"),
        });
    }
    let until = http_date(value)?;
    let from = header(reqwest::header::DATE)
        .and_then(http_date)
        .unwrap_or(now);
    Some(Asked {
        wait: until.duration_since(from).unwrap_or_default(),
        said: value.to_string(),
    })
}

const ADVERTISEMENT: &str = "info/refs?service=git-upload-pack";

/// The repository URL a redirected ref advertisement ended at. Only a move within the same
/// origin is followed: the token would otherwise go to a host nobody configured.
/// Credentials in the URL (`https://user:token@host/…`) go along to the new location.
fn moved_base(requested: &str, landed: &reqwest::Url) -> Result<String, Failure> {
    let requested = reqwest::Url::parse(requested)
        .map_err(|e| Failure::Unreachable(format!("bad remote URL: {e}")))?;
    let mut moved = landed.clone();
    // Both succeed: the origin is checked to be the same below, so it has a host.
    let _ = moved.set_username(requested.username());
    let _ = moved.set_password(requested.password());
    let base = moved
        .as_str()
        .strip_suffix(&format!("/{ADVERTISEMENT}"))
        .filter(|_| landed.origin() == requested.origin());
    base.map(str::to_string).ok_or_else(|| {
        Failure::Unusable(format!(
            "the remote redirected to {}, another host or not a repository; if the repository \
             moved there, set git.url (or the Repository tag) to its new URL",
            crate::remote::redact(landed.as_str())
        ))
    })
}

/// `url` as reqwest reports it after a request: without the credentials, which it moves into an
/// Authorization header.
fn without_credentials(url: &str) -> Option<reqwest::Url> {
    let mut url = reqwest::Url::parse(url).ok()?;
    url.set_username("").ok()?;
    url.set_password(None).ok()?;
    Some(url)
}

impl Read for HttpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.response.is_none() {
            let response = self.send().map_err(|failure| self.session.fail(failure))?;
            self.response = Some(response);
        }
        while self.read == self.pending.len() {
            let Some(response) = self.response.as_mut() else {
                return Ok(0);
            };
            let wait = self.session.wait_limit()?;
            let chunk = self
                .runtime
                .block_on(tokio::time::timeout(wait, response.chunk()));
            match chunk {
                Err(_) => return Err(self.session.waited_in_vain()),
                Ok(Ok(Some(chunk))) => {
                    self.pending = chunk.to_vec();
                    self.read = 0;
                }
                Ok(Ok(None)) => return Ok(0),
                Ok(Err(e)) => {
                    let failure = classify(e, self.session.options.timeout);
                    return Err(self.session.fail(failure));
                }
            }
        }
        let n = buf.len().min(self.pending.len() - self.read);
        buf[..n].copy_from_slice(&self.pending[self.read..self.read + n]);
        self.read += n;
        Ok(n)
    }
}

impl Write for HttpStream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.response.is_some() {
            return Err(io::Error::other(
                "internal error: a write after the request was sent",
            ));
        }
        self.request.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What went wrong with a request, told without its URL (which may hold credentials).
fn classify(error: reqwest::Error, timeout: Duration) -> Failure {
    let error = error.without_url();
    if let Some(tls) = crate::ca::refused_certificate(&error) {
        return Failure::Certificate(tls.to_string());
    }
    if error.is_timeout() {
        return Failure::silent(timeout);
    }
    Failure::Unreachable(chain(&error))
}

/// The error and its causes, as one line, without the URL.
fn chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(current) = cause {
        let said = current.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = current.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn landed(url: &str) -> reqwest::Url {
        reqwest::Url::parse(url).unwrap()
    }

    #[test]
    fn a_repository_moved_within_its_host_is_followed_and_elsewhere_refused() {
        let requested = format!("https://git.example/old/app.git/{ADVERTISEMENT}");
        assert_eq!(
            moved_base(
                &requested,
                &landed(&format!("https://git.example/new/app.git/{ADVERTISEMENT}"))
            )
            .unwrap(),
            "https://git.example/new/app.git"
        );
        for elsewhere in [
            format!("https://evil.example/new/app.git/{ADVERTISEMENT}"),
            format!("http://git.example/new/app.git/{ADVERTISEMENT}"),
            "https://git.example/login".to_string(),
        ] {
            assert!(
                moved_base(&requested, &landed(&elsewhere)).is_err(),
                "{elsewhere}"
            );
        }
    }

    #[test]
    fn credentials_in_the_url_are_no_move_and_follow_a_real_one() {
        let requested = format!("https://u:t@git.example/old/app.git/{ADVERTISEMENT}");
        let same = landed(&format!("https://git.example/old/app.git/{ADVERTISEMENT}"));
        assert_eq!(without_credentials(&requested), Some(same));
        let moved = landed(&format!("https://git.example/new/app.git/{ADVERTISEMENT}"));
        assert_eq!(
            moved_base(&requested, &moved).unwrap(),
            "https://u:t@git.example/new/app.git"
        );
    }

    fn asked(headers: &[(&'static str, &str)]) -> Option<Asked> {
        let mut map = reqwest::header::HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, value.parse().unwrap());
        }
        // 2015-10-21T07:28:00Z, as the dates below are written.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        retry_after(&map, now)
    }

    fn waits(seconds: u64, said: &str) -> Option<Asked> {
        Some(Asked {
            wait: Duration::from_secs(seconds),
            said: said.into(),
        })
    }

    #[test]
    fn retry_after_in_seconds_is_waited_as_said() {
        assert_eq!(asked(&[("retry-after", "120")]), waits(120, "120s"));
        assert_eq!(asked(&[("retry-after", " 0 ")]), waits(0, "0s"));
        // Beyond what bootagent counts (49 days): kept as the longest, past any deadline.
        let huge = asked(&[("retry-after", "99999999999999999999999")]).unwrap();
        assert!(huge.wait > Duration::from_secs(49 * 24 * 3600), "{huge:?}");
    }

    #[test]
    fn retry_after_as_a_date_counts_from_the_answers_own_date() {
        let date = "Wed, 21 Oct 2015 07:30:00 GMT";
        assert_eq!(asked(&[("retry-after", date)]), waits(120, date));
        // The remote's clock says 07:29:30: 30 s to wait, whatever this machine's clock says.
        let dated = [
            ("retry-after", date),
            ("date", "Wed, 21 Oct 2015 07:29:30 GMT"),
        ];
        assert_eq!(asked(&dated), waits(30, date));
        // A date already past is no wait.
        let past = "Wed, 21 Oct 2015 07:00:00 GMT";
        assert_eq!(asked(&[("retry-after", past)]), waits(0, past));
    }

    #[test]
    fn a_retry_after_bootagent_cannot_read_asks_nothing() {
        for garbage in ["", "-5", "1.5", "soon", "Wed, 21 Oct 2015 07:30:00"] {
            assert_eq!(asked(&[("retry-after", garbage)]), None, "{garbage:?}");
        }
        assert_eq!(asked(&[]), None);
    }
}
