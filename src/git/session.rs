//! What one sync tells the transports, and what they tell it back: the options, the limits,
//! why a transport failed. libgit2 finds transports in a process-wide table, so this is
//! process-wide too: one [`ActiveSession`] at a time (a second one waits for the first to end:
//! doctor checks the remote and the mirrors on two threads), which each transport's constructor
//! takes with [`active`]. The transports import this module; it imports none of them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use crate::deadline::Deadline;
use crate::remote::Remote;

/// What the transports are told for one sync.
#[derive(Clone)]
pub struct Options {
    /// Bounds each connect and every wait for the remote's next bytes.
    pub timeout: Duration,
    pub known_hosts: PathBuf,
    /// The SSH deploy key; none leaves ssh its defaults (`~/.ssh/id_*` of the user boot runs
    /// as).
    pub identity: Option<PathBuf>,
    /// The HTTP deploy token and the user name sent with it.
    pub token: Option<(String, zeroize::Zeroizing<String>)>,
}

/// Stops a sync from another thread: its transports end at their next read, and libgit2's own
/// work (a local fetch, the checkout) at its next progress report.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// How long one sync (or one listing of the remote's refs) may take in all.
#[derive(Clone, Debug)]
pub struct Limits {
    pub deadline: Deadline,
    /// What the deadline is called in messages: `5m (git.deadline)`.
    pub named: String,
    pub cancel: Cancel,
}

impl Limits {
    pub fn new(within: Duration, named: &str, cancel: Cancel) -> Limits {
        Limits {
            deadline: Deadline::after(within),
            named: format!("{} ({named})", humantime::format_duration(within)),
            cancel,
        }
    }

    /// Why the work must stop now, if it must.
    pub fn exceeded(&self) -> Option<Failure> {
        if self.cancel.is_cancelled() {
            Some(Failure::Unreachable(
                "stopped: the boot's deadline passed while git was working".into(),
            ))
        } else if self.deadline.left().is_zero() {
            Some(Failure::Unreachable(format!(
                "the checkout did not finish within {}",
                self.named
            )))
        } else {
            None
        }
    }
}

/// Why a transport failed, in words fit for the operator; sync turns it into its error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// ssh: the remote's host key is missing from, or differs from, the pinned known_hosts.
    HostKey(String),
    /// TLS: the remote's certificate is not trusted or not valid for its name.
    Certificate(String),
    /// The remote refused the deploy key or token, or asked for one and none is configured.
    Denied(String),
    /// No connection, a timeout, or an answer that is not git's.
    Unreachable(String),
    /// Nothing to retry: the URL or this machine cannot work as configured (no ssh client).
    Unusable(String),
    /// https:// with no CA certificate on this machine: why none was found.
    NoTrustRoots(String),
}

impl Failure {
    /// The remote let `timeout` (git.timeout) pass without a byte.
    pub fn silent(timeout: Duration) -> Failure {
        Failure::Unreachable(format!(
            "the remote did not answer within {} (git.timeout)",
            humantime::format_duration(timeout)
        ))
    }

    pub fn message(&self) -> &str {
        match self {
            Failure::HostKey(m)
            | Failure::Certificate(m)
            | Failure::Denied(m)
            | Failure::Unreachable(m)
            | Failure::Unusable(m)
            | Failure::NoTrustRoots(m) => m,
        }
    }
}

pub(super) struct Session {
    pub remote: Remote,
    pub options: Options,
    pub limits: Limits,
    failure: Mutex<Option<Failure>>,
    /// One HTTP client for the session's connections, so the fetch reuses the connection (and
    /// TLS session) that listed the refs.
    pub http_client: OnceLock<Result<reqwest::Client, String>>,
}

impl Session {
    /// Records why the transport failed, and returns the error libgit2 is given.
    pub fn fail(&self, failure: Failure) -> std::io::Error {
        let error = std::io::Error::other(failure.message().to_string());
        *lock(&self.failure) = Some(failure);
        error
    }

    /// The same, for a transport step that answers libgit2 with its own error type.
    pub fn refuse(&self, failure: Failure) -> git2::Error {
        git2::Error::from_str(&self.fail(failure).to_string())
    }

    /// How long the next wait for the remote may last: the per-read timeout or the time left,
    /// whichever is shorter; an error (recorded) when no time is left or the sync was cancelled.
    pub fn wait_limit(&self) -> Result<Duration, std::io::Error> {
        if let Some(failure) = self.limits.exceeded() {
            return Err(self.fail(failure));
        }
        let left = self.limits.deadline.left();
        // Never zero: socket timeouts refuse it (the deadline is checked again after the wait).
        Ok(self.options.timeout.min(left).max(Duration::from_millis(1)))
    }

    /// A wait of [`Session::wait_limit`] ended without data: the deadline's failure if that
    /// is what ended it, else the remote's silence.
    pub fn waited_in_vain(&self) -> std::io::Error {
        let failure = self
            .limits
            .exceeded()
            .unwrap_or_else(|| Failure::silent(self.options.timeout));
        self.fail(failure)
    }
}

/// The program a stream-based remote (ssh, git daemon) runs for `action`: bootagent only fetches.
pub(super) fn fetch_program(action: git2::transport::Service) -> Result<&'static str, git2::Error> {
    use git2::transport::Service;
    match action {
        Service::UploadPackLs | Service::UploadPack => Ok("git-upload-pack"),
        Service::ReceivePackLs | Service::ReceivePack => {
            Err(git2::Error::from_str("bootagent only fetches"))
        }
    }
}

static ACTIVE: Mutex<Option<Arc<Session>>> = Mutex::new(None);
/// Held by the [`ActiveSession`] that owns [`ACTIVE`].
static TURN: Mutex<()> = Mutex::new(());

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn active() -> Result<Arc<Session>, git2::Error> {
    lock(&ACTIVE)
        .clone()
        .ok_or_else(|| git2::Error::from_str("internal error: a remote outside a git session"))
}

/// While this lives, the transports use its options; afterwards it tells why one failed.
pub struct ActiveSession {
    session: Arc<Session>,
    _turn: MutexGuard<'static, ()>,
}

impl ActiveSession {
    /// Waits for the session of another thread, if one is active, to end first.
    pub fn start(remote: Remote, options: Options, limits: Limits) -> ActiveSession {
        let turn = lock(&TURN);
        let session = Arc::new(Session {
            remote,
            options,
            limits,
            failure: Mutex::new(None),
            http_client: OnceLock::new(),
        });
        *lock(&ACTIVE) = Some(session.clone());
        ActiveSession {
            session,
            _turn: turn,
        }
    }

    pub fn failure(&self) -> Option<Failure> {
        lock(&self.session.failure).clone()
    }

    pub fn options(&self) -> &Options {
        &self.session.options
    }
}

impl Drop for ActiveSession {
    fn drop(&mut self) {
        *lock(&ACTIVE) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(url: &str) -> ActiveSession {
        let options = Options {
            timeout: Duration::from_secs(1),
            known_hosts: PathBuf::new(),
            identity: None,
            token: None,
        };
        let limits = Limits::new(Duration::from_secs(60), "test", Cancel::default());
        ActiveSession::start(Remote::parse(url), options, limits)
    }

    #[test]
    fn a_second_session_waits_until_the_first_ends() {
        let first = start("https://first.example/repo.git");
        let second = std::thread::spawn(|| {
            let _session = start("https://second.example/repo.git");
            active().unwrap().remote.to_string()
        });
        std::thread::sleep(Duration::from_millis(200));
        // The other thread's session has not taken the transports' table from this one.
        assert_eq!(
            active().unwrap().remote.to_string(),
            "https://first.example/repo.git"
        );
        drop(first);
        assert_eq!(second.join().unwrap(), "https://second.example/repo.git");
    }
}
