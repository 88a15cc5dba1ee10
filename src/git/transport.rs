//! The transports bootagent adds to libgit2: ssh:// through the system's OpenSSH client, and
//! http(s):// on the same HTTP client and TLS stack as the rest of the binary (rustls on aws-lc),
//! so libgit2 is built without OpenSSL or libssh2. git:// and file:// stay libgit2's own.
//!
//! libgit2 finds transports in a process-wide table, so what they need for a fetch — options,
//! credentials, and afterwards why they failed — is process-wide too: one [`ActiveSession`] at a
//! time.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use git2::transport::Transport;

use super::{http, ssh};

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
            | Failure::Unusable(m) => m,
        }
    }
}

pub(super) struct Session {
    pub options: Options,
    failure: Mutex<Option<Failure>>,
    /// One HTTP client for the session's connections, so the fetch reuses the connection (and
    /// TLS session) that listed the refs.
    http_client: OnceLock<Result<reqwest::Client, String>>,
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

    pub fn http_client(&self) -> Result<&reqwest::Client, String> {
        self.http_client
            .get_or_init(|| http::client(self.options.timeout))
            .as_ref()
            .map_err(Clone::clone)
    }
}

static ACTIVE: Mutex<Option<Arc<Session>>> = Mutex::new(None);

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn active() -> Result<Arc<Session>, git2::Error> {
    lock(&ACTIVE)
        .clone()
        .ok_or_else(|| git2::Error::from_str("internal error: a remote outside a git session"))
}

/// Adds the transports to libgit2's table. scp-like URLs (`git@host:repo.git`) reach the ssh
/// transport too: libgit2 looks those up as `ssh://`.
///
/// # Safety
/// Changes libgit2's transport table without synchronization: call before any thread is started.
pub unsafe fn register() -> Result<(), git2::Error> {
    for scheme in ["ssh", "ssh+git", "git+ssh"] {
        // SAFETY: the caller guarantees no other thread uses libgit2 yet.
        unsafe {
            git2::transport::register(scheme, |remote| {
                Transport::smart(remote, false, ssh::SshSubtransport::new(active()?))
            })?;
        }
    }
    for scheme in ["http", "https"] {
        // SAFETY: as above.
        unsafe {
            git2::transport::register(scheme, |remote| {
                Transport::smart(remote, true, http::HttpSubtransport::new(active()?)?)
            })?;
        }
    }
    Ok(())
}

/// While this lives, the transports use its options; afterwards it tells why one failed.
pub struct ActiveSession(Arc<Session>);

impl ActiveSession {
    pub fn start(options: Options) -> ActiveSession {
        let session = Arc::new(Session {
            options,
            failure: Mutex::new(None),
            http_client: OnceLock::new(),
        });
        *lock(&ACTIVE) = Some(session.clone());
        ActiveSession(session)
    }

    pub fn failure(&self) -> Option<Failure> {
        lock(&self.0.failure).clone()
    }

    pub fn options(&self) -> &Options {
        &self.0.options
    }
}

impl Drop for ActiveSession {
    fn drop(&mut self) {
        *lock(&ACTIVE) = None;
    }
}
