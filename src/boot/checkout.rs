//! The git step of a boot: the checkout on a thread of its own, and the last-good decision
//! when it fails.

use crate::config::{Config, OnGitFailure};
use crate::deadline::Deadline;
use crate::git::{self, GitError};
use crate::plan::Plan;
use crate::remote::Remote;
use crate::state::deploys::FailedCommit;
use crate::Error;

/// Why a boot kept a release rather than deploy what the ref names: said in status.json, and
/// the exit code of `deploy`, which did not do what it was asked.
#[derive(Debug, Clone)]
pub struct Kept {
    pub note: String,
    pub exit_code: u8,
}

/// The checkout, or when it fails and `git.on_failure` allows, `keep` (the release last proven
/// healthy, else the one in service) with why.
pub(super) async fn checkout_or_keep(
    config: &Config,
    plan: &Plan,
    credentials: git::Credentials,
    git_work: &GitWork,
    deadline: Deadline,
    avoid: Option<FailedCommit>,
    keep: Option<&str>,
) -> Result<(git::Checkout, Option<Kept>), Error> {
    match checkout(config, plan, credentials, git_work, deadline, avoid).await {
        Ok(checkout) => Ok((checkout, None)),
        Err(error) => {
            log_security_event(&error);
            keep_last_good(config, plan, error, keep)
        }
    }
}

/// `commit`, the release in service, stays for `why`, without asking the remote.
pub(super) fn keep_in_service(commit: &str, why: Error) -> (git::Checkout, Option<Kept>) {
    let kept = kept(commit, &why);
    tracing::warn!("{}", kept.1.note);
    (kept.0, Some(kept.1))
}

fn kept(commit: &str, why: &Error) -> (git::Checkout, Kept) {
    let checkout = git::Checkout {
        commit: commit.to_string(),
        action: git::Action::Kept,
        received_objects: 0,
        received_bytes: 0,
        mirror: None,
        seed: None,
    };
    let note = format!(
        "running last good commit {commit} because {}",
        why.one_line()
    );
    let exit_code = match why {
        Error::Git(GitError::FailedBefore { exit_code, .. }) => *exit_code,
        other => other.exit_code(),
    };
    (checkout, Kept { note, exit_code })
}

/// A remote that is not who it was pinned to be, and code that is not signed by a trusted key
/// or that rewinds the release in service, are logged apart from ordinary failures, with the
/// field `security_event`, so that journal alerts can match them.
fn log_security_event(error: &Error) {
    let event = match error {
        Error::Git(GitError::HostKey { .. }) => "ssh-host-key-mismatch",
        Error::Git(GitError::Certificate { .. }) => "tls-certificate-refused",
        Error::Git(GitError::TokenNotForHost { .. }) => "token-host-refused",
        Error::Git(GitError::Unverified { .. }) => "code-signature-refused",
        Error::Git(GitError::Rewound { .. }) => "ref-rewound",
        _ => return,
    };
    tracing::error!(security_event = event, "{}", error.one_line());
}

/// With `git.on_failure = "last-good"`, a failed checkout lets the boot go on with `keep`, and
/// says so; without such a release, or with "fail", the error stands. A ref still at a commit
/// that failed its deploy gate always keeps it.
fn keep_last_good(
    config: &Config,
    plan: &Plan,
    error: Error,
    keep: Option<&str>,
) -> Result<(git::Checkout, Option<Kept>), Error> {
    if let (Some(_), Error::Git(refused)) = (keep, &error) {
        if let Some(commit) = refused.refused_commit() {
            // Refused code is not fetched and refused again on every deploy timer run.
            let remembered = super::gate::remember_failed(
                &config.paths,
                FailedCommit {
                    commit: commit.to_string(),
                    reference: plan.git.reference.clone(),
                    at: crate::state::status::now(),
                    reason: refused.to_string(),
                    exit_code: crate::exit::GIT,
                },
            );
            if let Err(e) = remembered {
                tracing::error!(
                    "could not record the refused commit, so it is fetched and refused again: {}",
                    e.one_line()
                );
            }
        }
    }
    match (config.git.on_failure, keep, &error) {
        (OnGitFailure::LastGood, Some(commit), Error::Git(_))
        | (_, Some(commit), Error::Git(GitError::FailedBefore { .. })) => {
            let (checkout, kept) = kept(commit, &error);
            tracing::warn!("{}", kept.note);
            Ok((checkout, Some(kept)))
        }
        _ => Err(error),
    }
}

/// The git sync of a boot, on a thread of its own: the boot can stop it and wait for it to end
/// before it decides what runs, writes its status or lets the lock go. (A task of tokio's
/// blocking pool would outlive a boot that timed out, and might switch the release afterwards.)
#[derive(Default)]
pub(super) struct GitWork {
    cancel: git::Cancel,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl GitWork {
    /// Cancels the sync if it still runs, then waits for its thread: the transports end at
    /// their next read, which the per-read timeout bounds.
    pub(super) async fn stop(&self) {
        self.cancel.cancel();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

async fn checkout(
    config: &Config,
    plan: &Plan,
    credentials: git::Credentials,
    git_work: &GitWork,
    deadline: Deadline,
    avoid: Option<FailedCommit>,
) -> Result<git::Checkout, Error> {
    let remote = plan.git.remote.clone().map_err(GitError::from)?;
    let user = crate::service::user(&plan.service.user)?;
    let owner = git::Owner {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    };
    // Each remote tried gets its own (a sync consumes it).
    let reference = plan.git.reference.clone();
    let avoid = move || {
        avoid.clone().map(|failed| git::Avoid {
            commit: failed.commit.clone(),
            because: GitError::FailedBefore {
                reference: reference.clone(),
                commit: failed.commit,
                at: failed.at,
                reason: failed.reason,
                exit_code: failed.exit_code,
            },
        })
    };
    let git_plan = plan.git.clone();
    // git.deadline, or what is left of the boot's, whichever ends first.
    let boot_left = deadline.left();
    let limits = if config.git.deadline <= boot_left {
        git::Limits::new(config.git.deadline, "git.deadline", git_work.cancel.clone())
    } else {
        git::Limits::new(
            boot_left,
            "what was left of boot.deadline",
            git_work.cancel.clone(),
        )
    };
    let (done, result) = tokio::sync::oneshot::channel();
    // The HTTP transport runs its requests on this runtime.
    let runtime = tokio::runtime::Handle::current();
    let thread = std::thread::Builder::new()
        .name("git".into())
        .spawn(move || {
            let _inside = runtime.enter();
            let sync = |remote: &Remote| {
                git::sync(
                    &git_plan,
                    remote,
                    Some(owner),
                    &credentials,
                    &limits,
                    avoid(),
                )
            };
            let mut result = sync(&remote);
            // A mirror gets the remote's trust: the same host keys, signatures and rewind check.
            for mirror in &git_plan.mirrors {
                match &result {
                    Err(error) if error.is_transient() => tracing::warn!(
                        %mirror,
                        "the remote did not answer, fetching from a mirror: {error}"
                    ),
                    _ => break,
                }
                result = sync(mirror).map(|checkout| git::Checkout {
                    mirror: Some(mirror.to_string()),
                    ..checkout
                });
            }
            let _ = done.send(result);
        })
        .map_err(|e| Error::io("failed to start the git thread", e))?;
    *git_work
        .thread
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(thread);
    let result = result.await.map_err(|_| {
        Error::io(
            "the git thread failed",
            std::io::Error::other("it ended without an answer"),
        )
    })?;
    Ok(result?)
}
