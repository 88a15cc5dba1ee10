//! The transports bootagent adds to libgit2: ssh:// through the system's OpenSSH client,
//! http(s):// on the same HTTP client and TLS stack as the rest of the binary (rustls on aws-lc),
//! so libgit2 is built without OpenSSL or libssh2, and git:// on a plain socket. file:// stays
//! libgit2's own.
//!
//! Every network read of a sync goes through them, so each one can stop a sync that ran past
//! its deadline or was cancelled: a wait for the remote's next bytes is bounded by the per-read
//! timeout and by the time left, whichever ends first.
//!
//! libgit2 finds transports in a process-wide table: each one takes what it needs for a fetch
//! from the [`super::session`] that is active.

use std::time::Duration;

use git2::transport::Transport;
use git2::ConfigLevel;

use super::session::active;
use super::{daemon, http, ssh};

/// Adds the transports to libgit2's table. scp-like URLs (`git@host:repo.git`) reach the ssh
/// transport too: libgit2 looks those up as `ssh://`.
///
/// # Safety
/// Changes libgit2's transport table without synchronization: call before any thread is started.
unsafe fn register() -> Result<(), git2::Error> {
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
    // SAFETY: as above.
    unsafe {
        git2::transport::register("git", |remote| {
            Transport::smart(remote, false, daemon::DaemonSubtransport::new(active()?))
        })?;
    }
    Ok(())
}

/// Bounds every network read and connect of libgit2, and adds the ssh transport.
///
/// # Safety
/// Sets libgit2 globals without synchronization: call before any thread is started.
pub unsafe fn init(timeout: Duration) -> Result<(), git2::Error> {
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // Neither call can fail: libgit2 only stores the value.
    let _ = git2::opts::set_server_connect_timeout_in_milliseconds(millis);
    let _ = git2::opts::set_server_timeout_in_milliseconds(millis);
    // What a git config on the machine says (/etc/gitconfig, ~/.gitconfig, $XDG_CONFIG_HOME/git,
    // and the attributes files beside them) must not change what is deployed: core.autocrlf
    // rewrote the release's line endings, init.templateDir copied hooks into the repository.
    // bootagent's git settings are its own config's alone.
    for level in [
        ConfigLevel::System,
        ConfigLevel::XDG,
        ConfigLevel::Global,
        ConfigLevel::ProgramData,
    ] {
        // SAFETY: the caller guarantees no other thread uses libgit2 yet.
        unsafe { git2::opts::set_search_path(level, "") }?;
    }
    // SAFETY: as above.
    unsafe { register() }
}
