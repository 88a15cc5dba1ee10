//! The service checkout: bring `git.dir` to the planned branch, tag or commit with libgit2.
//! The remote is anonymous, so its URL (and any credential in it) never lands in `.git/config`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use git2::{Direction, FetchOptions, Oid, Repository};

use crate::plan::GitPlan;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error(
        "no git repository is configured: set git.url in the config or tag the instance with \
         {tag}=<url>"
    )]
    NoUrl { tag: String },
    #[error("cannot reach git remote {url}: {message}; check that the remote is up and reachable")]
    Unreachable { url: String, message: String },
    #[error("git remote {url} refused access: {message}; check the deploy key or token")]
    Denied { url: String, message: String },
    #[error(
        "git remote {url} has no branch or tag {reference}; push it, or fix git.ref (or the \
         Environment tag)"
    )]
    RefNotFound { url: String, reference: String },
    #[error(
        "{dir} exists but is not a git checkout; move it away so bootagent can create the checkout"
    )]
    NotACheckout { dir: PathBuf },
    #[error("failed to {action} in {dir}: {message}")]
    Local {
        action: &'static str,
        dir: PathBuf,
        message: String,
    },
}

impl GitError {
    pub fn is_transient(&self) -> bool {
        matches!(self, GitError::Unreachable { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    pub commit: String,
    pub action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Cloned,
    Fetched,
    Unchanged,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Cloned => "cloned",
            Action::Fetched => "fetched",
            Action::Unchanged => "unchanged",
        }
    }
}

/// Bounds every network read and connect of libgit2.
///
/// # Safety
/// Sets libgit2 globals without synchronization: call before any thread is started.
pub unsafe fn set_network_timeouts(timeout: Duration) {
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // Neither call can fail: libgit2 only stores the value.
    let _ = git2::opts::set_server_connect_timeout_in_milliseconds(millis);
    let _ = git2::opts::set_server_timeout_in_milliseconds(millis);
}

/// Blocking: brings `plan.dir` to the commit `plan.reference` names on `url`. The tree is only
/// touched after every object has arrived, so a failed fetch leaves the last checkout as it was.
pub fn sync(plan: &GitPlan, url: &str) -> Result<Checkout, GitError> {
    let (repo, fresh) = open_or_init(&plan.dir)?;
    let local = |action: &'static str| {
        let dir = plan.dir.clone();
        move |e: git2::Error| GitError::Local {
            action,
            dir,
            message: e.message().to_string(),
        }
    };

    let mut remote = repo
        .remote_anonymous(url)
        .map_err(local("set up the remote"))?;
    let (source_ref, advertised) = advertised_ref(&mut remote, url, &plan.reference)?;

    if !fresh && head_commit(&repo) == Some(advertised) {
        return Ok(Checkout {
            commit: advertised.to_string(),
            action: Action::Unchanged,
        });
    }

    let tracking = "refs/bootagent/target";
    let mut options = FetchOptions::new();
    options.depth(i32::try_from(plan.depth).unwrap_or(i32::MAX));
    remote
        .fetch(
            &[format!("+{source_ref}:{tracking}")],
            Some(&mut options),
            None,
        )
        .map_err(|e| network_error(e, url))?;
    let commit = repo
        .find_reference(tracking)
        .and_then(|r| r.peel_to_commit())
        .map_err(local("find the fetched commit"))?;

    let mut checkout = git2::build::CheckoutBuilder::new();
    checkout.force().remove_untracked(true);
    repo.checkout_tree(commit.as_object(), Some(&mut checkout))
        .map_err(local("check out the fetched commit"))?;
    repo.set_head_detached(commit.id())
        .map_err(local("move HEAD to the fetched commit"))?;
    Ok(Checkout {
        commit: commit.id().to_string(),
        action: if fresh {
            Action::Cloned
        } else {
            Action::Fetched
        },
    })
}

/// The commit `reference` names on the remote, asking the remote alone (like `git ls-remote`):
/// no checkout is touched.
pub fn remote_commit(url: &str, reference: &str) -> Result<String, GitError> {
    let mut remote = git2::Remote::create_detached(url).map_err(|e| network_error(e, url))?;
    Ok(advertised_ref(&mut remote, url, reference)?.1.to_string())
}

/// Connects, lists the remote's refs and finds `reference` among them.
fn advertised_ref(
    remote: &mut git2::Remote<'_>,
    url: &str,
    reference: &str,
) -> Result<(String, Oid), GitError> {
    let connection = remote
        .connect_auth(Direction::Fetch, None, None)
        .map_err(|e| network_error(e, url))?;
    let heads = connection.list().map_err(|e| network_error(e, url))?;
    find_ref(heads, reference).ok_or_else(|| GitError::RefNotFound {
        url: redact(url),
        reference: reference.to_string(),
    })
}

/// Opens the checkout, or creates it when the directory is absent or empty. A checkout whose
/// first fetch was interrupted (no HEAD yet) counts as fresh.
fn open_or_init(dir: &Path) -> Result<(Repository, bool), GitError> {
    let init_error = |e: git2::Error| GitError::Local {
        action: "create the checkout",
        dir: dir.to_path_buf(),
        message: e.message().to_string(),
    };
    match Repository::open(dir) {
        Ok(repo) => {
            let fresh = head_commit(&repo).is_none();
            Ok((repo, fresh))
        }
        Err(_) if is_absent_or_empty(dir) => Ok((Repository::init(dir).map_err(init_error)?, true)),
        Err(_) => Err(GitError::NotACheckout {
            dir: dir.to_path_buf(),
        }),
    }
}

fn is_absent_or_empty(dir: &Path) -> bool {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

fn head_commit(repo: &Repository) -> Option<Oid> {
    repo.head().ok()?.peel_to_commit().ok().map(|c| c.id())
}

/// The advertised ref for `reference` and the commit it points at: a branch first, then a tag
/// (peeled, so an annotated tag gives its commit), or a full commit id as itself.
fn find_ref(heads: &[git2::RemoteHead<'_>], reference: &str) -> Option<(String, Oid)> {
    let lookup = |name: &str| heads.iter().find(|h| h.name() == name).map(|h| h.oid());
    let branch = format!("refs/heads/{reference}");
    if let Some(oid) = lookup(&branch) {
        return Some((branch, oid));
    }
    let tag = format!("refs/tags/{reference}");
    if let Some(oid) = lookup(&format!("{tag}^{{}}")).or_else(|| lookup(&tag)) {
        return Some((tag, oid));
    }
    if reference.len() == 40 {
        let oid = Oid::from_str(reference).ok()?;
        return Some((reference.to_string(), oid));
    }
    None
}

fn network_error(error: git2::Error, url: &str) -> GitError {
    let shown = redact(url);
    let message = error.message().replace(url, &shown);
    if error.code() == git2::ErrorCode::Auth {
        GitError::Denied {
            url: shown.to_string(),
            message,
        }
    } else {
        GitError::Unreachable {
            url: shown.to_string(),
            message,
        }
    }
}

/// The URL without any user or password, fit for logs and messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted_from_urls() {
        assert_eq!(
            redact("https://user:tok3n@git.example/a/b.git"),
            "https://***@git.example/a/b.git"
        );
        assert_eq!(redact("git://git.example/a.git"), "git://git.example/a.git");
        assert_eq!(redact("/srv/repo.git"), "/srv/repo.git");
        assert_eq!(
            redact("https://git.example/a@b.git"),
            "https://git.example/a@b.git"
        );
    }
}
