//! The remote's refs: listed over FFI (names are bytes from an untrusted remote), the one
//! `git.ref` names found among them, and the commit it names read from this side's objects.

use std::path::Path;

use git2::{Direction, FetchOptions, Oid, RemoteCallbacks, Repository};

use super::error::network_error;
use super::releases::Layout;
use super::session::{ActiveSession, Limits};
use super::tag_object::TagHeader;
use super::trust::Target;
use super::{Credentials, GitError};
use crate::remote::Remote;

/// What `reference` names on the remote, asking the remote alone (like `git ls-remote`): no
/// checkout is touched. The commit is known only when this instance already has the object the
/// ref names (`dir` is `git.dir`): for an annotated tag, the remote's peeled value is not taken
/// on its word.
pub fn remote_ref(
    remote: &Remote,
    reference: &str,
    dir: &Path,
    credentials: &Credentials,
    limits: &Limits,
) -> Result<RemoteRef, GitError> {
    let session = credentials.session(remote, limits)?;
    let mut detached = git2::Remote::create_detached(remote.url())
        .map_err(|e| network_error(e, remote, &session))?;
    let mut connection = detached
        .connect_auth(Direction::Fetch, None, None)
        .map_err(|e| network_error(e, remote, &session))?;
    let listed = advertised_ref(&mut connection, remote, reference, &session)?;
    let commit = match Repository::open_bare(Layout::of(dir).repo) {
        Ok(repo) => target_of(&repo, &listed, remote)?.map(|target| target.commit),
        Err(_) => None,
    };
    Ok(RemoteRef {
        object: listed.object,
        commit,
    })
}

/// What a ref names on the remote, as far as this instance can tell before it fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteRef {
    /// The object the ref names: a commit, or an annotated tag's object.
    pub object: Oid,
    /// Its commit, read from the object this instance has; `None` when it has not fetched it.
    pub commit: Option<Oid>,
}

impl std::fmt::Display for RemoteRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.commit {
            Some(commit) if commit == self.object => write!(f, "{commit}"),
            Some(commit) => write!(f, "{commit} (tag object {})", self.object),
            None => write!(f, "{} (not fetched yet)", self.object),
        }
    }
}

/// A ref as the remote listed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Listed {
    /// `refs/heads/prod`, `refs/tags/rel-1`, or a commit id as given.
    pub name: String,
    /// The object the ref names.
    pub object: Oid,
    /// The commit the remote says an annotated tag peels to (`refs/tags/rel-1^{}`): unverified,
    /// only compared with what the tag object says.
    peeled: Option<Oid>,
}

/// Finds `reference` among the refs the connected remote lists.
pub(super) fn advertised_ref(
    connection: &mut git2::RemoteConnection<'_, '_, '_>,
    remote: &Remote,
    reference: &str,
    session: &ActiveSession,
) -> Result<Listed, GitError> {
    let heads = list_refs(connection.remote()).map_err(|e| network_error(e, remote, session))?;
    find_ref(&heads, reference).ok_or_else(|| GitError::RefNotFound {
        url: remote.to_string(),
        reference: reference.to_string(),
    })
}

/// The commit `listed` names, and the tag object on the way, read from `repo`'s objects (the
/// tag object's own `object` and `type` headers): `None` while they are not all there.
pub(super) fn target_of(
    repo: &Repository,
    listed: &Listed,
    remote: &Remote,
) -> Result<Option<Target>, GitError> {
    let odb = repo.odb().map_err(|e| GitError::Local {
        action: "open the object database",
        dir: repo.path().to_path_buf(),
        message: e.message().to_string(),
    })?;
    let not_a_commit = |what: String| GitError::NotACommit {
        url: remote.to_string(),
        reference: listed.name.clone(),
        what,
    };
    let present = |oid: Oid| odb.read_header(oid).ok().map(|(_, kind)| kind);
    let (commit, tag) = match present(listed.object) {
        None => return Ok(None),
        Some(git2::ObjectType::Commit) => (listed.object, None),
        Some(git2::ObjectType::Tag) => {
            let raw = odb.read(listed.object).map_err(|e| GitError::Local {
                action: "read the fetched tag",
                dir: repo.path().to_path_buf(),
                message: e.message().to_string(),
            })?;
            let header = TagHeader::parse(raw.data()).ok_or_else(|| {
                not_a_commit(format!(
                    "a tag object {} that does not parse",
                    listed.object
                ))
            })?;
            if header.kind != "commit" {
                return Err(not_a_commit(format!(
                    "a tag object {} that tags a {} ({})",
                    listed.object, header.kind, header.object
                )));
            }
            (header.object, Some(listed.object))
        }
        Some(kind) => return Err(not_a_commit(format!("a {kind} ({})", listed.object))),
    };
    if present(commit) != Some(git2::ObjectType::Commit) {
        return Ok(None);
    }
    Ok(Some(Target {
        reference: listed.name.clone(),
        commit,
        tag,
    }))
}

/// A peeled value the remote listed that is not what the tag object says is a forgery (by the
/// server or on the way): what runs was read from the tag object, but someone tried.
pub(super) fn warn_if_peel_forged(listed: &Listed, target: &Target, remote: &Remote) {
    if let Some(peeled) = listed.peeled.filter(|peeled| *peeled != target.commit) {
        tracing::warn!(
            security_event = "forged-peeled-ref",
            reference = %listed.name,
            "git remote {} listed {}^{{}} as commit {peeled}, but the tag object {} names commit \
             {}: the listing was forged (by the server or on the way); only the tag object's \
             commit is considered. Check the remote and the network path to it",
            remote,
            listed.name,
            listed.object,
            target.commit
        );
    }
}

/// The refs a connected remote advertised: each name as the bytes it is, and its commit. Ref
/// names are bytes and the remote is untrusted, so git2's `RemoteConnection::list` (whose
/// `RemoteHead::name` panics on a name that is not UTF-8) is not used.
fn list_refs(remote: &git2::Remote<'_>) -> Result<Vec<(Vec<u8>, Oid)>, git2::Error> {
    use git2::Binding;
    let mut heads: *mut *const libgit2_sys::git_remote_head = std::ptr::null_mut();
    let mut count: usize = 0;
    // SAFETY: `remote` is connected (git_remote_ls fails otherwise); libgit2 fills `heads` with
    // `count` pointers to heads it owns until the connection ends, which outlives this call.
    unsafe {
        if libgit2_sys::git_remote_ls(&mut heads, &mut count, remote.raw()) < 0 {
            return Err(git2::Error::last_error(-1));
        }
        if heads.is_null() || count == 0 {
            return Ok(Vec::new());
        }
        let mut refs = Vec::with_capacity(count);
        for &head in std::slice::from_raw_parts(heads, count) {
            if head.is_null() || (*head).name.is_null() {
                continue;
            }
            let name = std::ffi::CStr::from_ptr((*head).name).to_bytes().to_vec();
            let id = (*head).oid.id;
            refs.push((name, Oid::from_bytes(&id)?));
        }
        Ok(refs)
    }
}

/// The advertised ref for `reference`: a branch first, then a tag (with the peeled value the
/// remote lists for an annotated one), or a full commit id as itself.
fn find_ref(heads: &[(Vec<u8>, Oid)], reference: &str) -> Option<Listed> {
    let lookup = |name: &str| {
        heads
            .iter()
            .find(|(advertised, _)| advertised == name.as_bytes())
            .map(|(_, oid)| *oid)
    };
    let listed = |name: String, object: Oid| {
        let peeled = lookup(&format!("{name}^{{}}"));
        Listed {
            name,
            object,
            peeled,
        }
    };
    let branch = format!("refs/heads/{reference}");
    if let Some(oid) = lookup(&branch) {
        return Some(listed(branch, oid));
    }
    let tag = format!("refs/tags/{reference}");
    if let Some(oid) = lookup(&tag) {
        return Some(listed(tag, oid));
    }
    if reference.len() == 40 {
        let oid = Oid::from_str(reference).ok()?;
        return Some(listed(reference.to_string(), oid));
    }
    None
}

/// What a fetch is given: its progress callbacks, and `depth` commits of history (`None`: all).
pub(super) fn fetch_options(
    callbacks: RemoteCallbacks<'_>,
    depth: Option<u32>,
) -> FetchOptions<'_> {
    let mut options = FetchOptions::new();
    options.remote_callbacks(callbacks);
    if let Some(depth) = depth {
        options.depth(i32::try_from(depth).unwrap_or(i32::MAX));
    }
    options
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::git::Cancel;

    /// Runs git in `dir`; the repository's own config only.
    fn git(dir: &Path, args: &[&std::ffi::OsStr]) {
        let status = std::process::Command::new("git")
            .current_dir(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .status()
            .expect("git runs");
        assert!(status.success(), "git {args:?}");
    }

    #[test]
    fn a_ref_name_that_is_not_utf8_is_listed_without_a_panic() {
        // Found by fuzzing (git_advertisement): git allows bytes over 0x7f in ref names, and a
        // remote may advertise any; git2's `RemoteHead::name` panics on them.
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let os = |s: &str| std::ffi::OsStr::new(s).to_owned();
        git(
            dir.path(),
            &[&os("init"), &os("-q"), &os("-b"), &os("prod")],
        );
        git(
            dir.path(),
            &[
                &os("commit"),
                &os("-q"),
                &os("--allow-empty"),
                &os("-m"),
                &os("x"),
            ],
        );
        let odd = std::ffi::OsStr::from_bytes(b"refs/heads/odd-\xff");
        git(dir.path(), &[&os("update-ref"), odd, &os("HEAD")]);
        let config = crate::config::from_text(Path::new("t.toml"), "").unwrap();
        let mut none = crate::secrets::LoadedSecrets::default();
        let credentials = Credentials::new(&config.git, &config.paths, &mut none).unwrap();
        let limits = Limits::new(Duration::from_secs(30), "test", Cancel::default());
        let url = Remote::parse(&format!("file://{}", dir.path().display()));
        let nowhere = dir.path().join("checkout");
        let head = remote_ref(&url, "prod", &nowhere, &credentials, &limits).unwrap();
        assert!(!head.object.is_zero());
        assert_eq!(head.commit, None, "nothing is fetched");
        let err = remote_ref(&url, "nosuch", &nowhere, &credentials, &limits).unwrap_err();
        assert!(matches!(err, GitError::RefNotFound { .. }), "{err}");
    }
}
