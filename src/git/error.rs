//! Why a checkout or a listing failed, in words fit for the operator, and which failures a
//! later run may get past.

use std::path::PathBuf;

use super::session::{ActiveSession, Failure};
use crate::remote::{NoRemote, Remote};

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error(transparent)]
    NoUrl(#[from] NoRemote),
    #[error("cannot reach git remote {url}: {message}; check that the remote is up and reachable")]
    Unreachable { url: String, message: String },
    #[error("git remote {url} refused access: {message}; check the deploy key or token")]
    Denied { url: String, message: String },
    #[error(
        "git remote {url} sent a damaged pack ({message}), which was discarded; boot again, and \
         if it persists, run `git fsck` in the remote repository"
    )]
    DamagedPack { url: String, message: String },
    #[error(
        "{reference} is still at commit {commit}, which did not deploy at {at} ({reason}); it is \
         not tried again until the ref moves on: push a fix, or run `bootagent deploy --retry` to \
         try it again"
    )]
    FailedBefore {
        reference: String,
        commit: String,
        at: String,
        reason: String,
        /// What the run that failed with it exited with; `deploy` exits with it again.
        exit_code: u8,
    },
    #[error(
        "refused {object}: {reason}; trusted keys are in {keys} (git.verify): sign it with a \
         trusted key, or add its key there after checking whose it is"
    )]
    Unverified {
        object: String,
        commit: String,
        reason: String,
        keys: String,
    },
    #[error("{problem}; {fix}")]
    Keys { problem: String, fix: String },
    #[error(
        "git remote {url}: {reference} names {what}, not a commit; point it at a commit (an \
         annotated tag must tag the commit itself)"
    )]
    NotACommit {
        url: String,
        reference: String,
        what: String,
    },
    #[error(
        "refused {reference} at {commit}: it does not descend from {in_service}, the release in \
         service (a force push or a rewound branch), and git.allow_rewind = false; push a commit \
         on top of {in_service}, or deploy it deliberately with git.allow_rewind = true"
    )]
    Rewound {
        reference: String,
        commit: String,
        in_service: String,
    },
    #[error(
        "git remote {url} is not the host pinned in {known_hosts}: {message}; if its host key \
         really changed, verify the new key out of band and replace the old one in {known_hosts}"
    )]
    HostKey {
        url: String,
        known_hosts: String,
        message: String,
    },
    #[error(
        "git remote {url} presented a TLS certificate this instance does not trust ({message}); \
         if it is issued by a private CA, add the CA to the system's trust store (or point \
         SSL_CERT_FILE at a bundle that holds it)"
    )]
    Certificate { url: String, message: String },
    #[error(
        "git.known_hosts {known_hosts} cannot be read ({message}); put the remote's host key \
         there (ssh-keyscan prints it; check its fingerprint out of band)"
    )]
    NoKnownHosts {
        known_hosts: String,
        message: String,
    },
    #[error("{message}; fix git.ssh_key")]
    DeployKey { message: String },
    #[error("cannot fetch from git remote {url}: {message}")]
    Unusable { url: String, message: String },
    #[error(
        "no CA certificates were found to verify git remote {url} with ({detail}); install the \
         ca-certificates package in the image, or point SSL_CERT_FILE at a CA bundle"
    )]
    NoTrustRoots { url: String, detail: String },
    #[error(
        "git remote {url} has no branch or tag {reference}; push it, or fix git.ref (or the \
         Environment tag)"
    )]
    RefNotFound { url: String, reference: String },
    #[error(
        "git remote {url} does not serve commit {commit} ({message}): it is on none of the \
         branches and tags the remote lists, or the server does not let clients fetch a commit by \
         its id (git's uploadpack.allowReachableSHA1InWant); name a branch or tag in git.ref, or \
         push the commit"
    )]
    CommitNotServed {
        url: String,
        commit: String,
        message: String,
    },
    #[error(
        "git.token is set and the repository URL {url} comes from an instance tag, but its host \
         {host} is not in git.token_hosts, so the token is not sent: whoever can tag an instance \
         could otherwise collect it with a server of their own; list where the token goes in \
         git.token_hosts ([\"github.com\"] is https://github.com; write \"http://host:port\" \
         to allow plain HTTP), or set git.url to the repository"
    )]
    TokenNotForHost { url: String, host: String },
    #[error("{message}; fix git.token")]
    Token { message: String },
    #[error("failed to {action} in {dir}: {message}")]
    Local {
        action: &'static str,
        dir: PathBuf,
        message: String,
    },
}

impl GitError {
    /// The commit a refusal of the code itself names: not to be tried again while the ref names
    /// it.
    pub fn refused_commit(&self) -> Option<&str> {
        match self {
            GitError::Unverified { commit, .. } | GitError::Rewound { commit, .. } => Some(commit),
            _ => None,
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            GitError::Unreachable { .. } | GitError::DamagedPack { .. }
        )
    }
}

/// The error of a network step on `url`: in our transports' words when one of them failed,
/// else in libgit2's.
pub(super) fn network_error(
    error: git2::Error,
    remote: &Remote,
    session: &ActiveSession,
) -> GitError {
    let shown = remote.to_string();
    if let Some(failure) = session.failure() {
        return match failure {
            Failure::HostKey(message) => GitError::HostKey {
                url: shown,
                known_hosts: session.options().known_hosts.display().to_string(),
                message,
            },
            Failure::Certificate(message) => GitError::Certificate {
                url: shown,
                message,
            },
            Failure::Denied(message) => GitError::Denied {
                url: shown,
                message,
            },
            Failure::Unreachable(message) => GitError::Unreachable {
                url: shown,
                message,
            },
            Failure::Unusable(message) => GitError::Unusable {
                url: shown,
                message,
            },
            Failure::NoTrustRoots(detail) => GitError::NoTrustRoots { url: shown, detail },
        };
    }
    let message = error.message().replace(remote.url(), &shown);
    if error.code() == git2::ErrorCode::Auth {
        GitError::Denied {
            url: shown.to_string(),
            message,
        }
    } else if matches!(
        error.class(),
        git2::ErrorClass::Zlib | git2::ErrorClass::Indexer
    ) {
        // What arrived does not unpack or does not match its checksum: bytes damaged in
        // transit, or a broken repository on the server.
        GitError::DamagedPack {
            url: shown.to_string(),
            message,
        }
    } else if error.code() == git2::ErrorCode::Owner
        || (error.class() == git2::ErrorClass::Config
            && error.message().contains("is not owned by current user"))
    {
        // libgit2's check of who owns a local repository (its local transport keeps the
        // message but returns -1, not GIT_EOWNER): retrying cannot change the owner.
        GitError::Unusable {
            url: shown.to_string(),
            message: format!(
                "{message}; libgit2 opens a local repository only if the user bootagent runs \
                 as owns it, and bootagent reads no git config (so no safe.directory): make it \
                 that user's, or serve it over git://, ssh:// or https://"
            ),
        }
    } else {
        GitError::Unreachable {
            url: shown.to_string(),
            message,
        }
    }
}
