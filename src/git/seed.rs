//! The seed: the service's repository baked into the image by `bootagent prepare`, so that a
//! first boot fetches only what the seed lacks rather than the whole branch.
//!
//!   STATE_DIR/seed/repo.git    bare repository: the packs prepare fetched (and `shallow`)
//!   STATE_DIR/seed/seed.json   what it holds: the remote, each ref's commit, the depth, when
//!
//! A first boot (no repo.git yet) plants the seed in the new repository: each pack and its index
//! are copied with their checksums checked on the way, so a pack damaged on disk is refused
//! before anything reads it, and libgit2 checks each object's id against its content as it reads
//! it (a checkout that fails on the seed is done again without it). The seed's commits become
//! refs (`refs/bootagent/seed/N`), which the fetch offers the remote as what this side has. What
//! runs is still read from the objects, signed-code and rewind checks as without a seed: an
//! object's id is its content, so a seed can spare a download, never change what a commit is.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use git2::{Direction, Oid, Repository};
use serde::{Deserialize, Serialize};

use super::error::network_error;
use super::refs::{advertised_ref, fetch_options, target_of, RemoteRef};
use super::session::Limits;
use super::{Credentials, GitError};
use crate::remote::Remote;

/// What a seed holds, in `seed.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The repository it was fetched from, without credentials.
    pub url: String,
    /// Each ref as given to prepare (`prod`, `rel-1`, a commit id) and the commit it named.
    pub refs: BTreeMap<String, String>,
    /// The history fetched with each commit; `None`: all of it.
    pub depth: Option<u32>,
    /// When prepare fetched it (RFC 3339, UTC).
    pub taken_at: String,
}

impl Record {
    /// How long ago prepare fetched it; `None` when `taken_at` is not a time in the past.
    pub fn age(&self) -> Option<Duration> {
        let taken = humantime::parse_rfc3339(&self.taken_at).ok()?;
        SystemTime::now().duration_since(taken).ok()
    }

    /// Whether a boot fetching from `remote` (or one of `mirrors`) can start from this seed:
    /// the same repository, and enough history (`shallow`: the boot fetches with a depth; a
    /// shallow seed cannot serve one that keeps the whole history). An error says why not.
    pub fn fits(&self, remote: &Remote, mirrors: &[Remote], shallow: bool) -> Result<(), String> {
        let same = |other: &Remote| same_repository(&self.url, &other.to_string());
        if !same(remote) && !mirrors.iter().any(same) {
            return Err(format!(
                "it holds {}, not {remote}; run `bootagent prepare` for this repository",
                self.url
            ));
        }
        if let (Some(depth), false) = (self.depth, shallow) {
            return Err(format!(
                "it holds {depth} commit(s) of history and this checkout needs the whole \
                 history (git.allow_rewind = false); run `bootagent prepare` with that config"
            ));
        }
        Ok(())
    }

    /// The commit the seed holds for `reference` (as the boot's config names it), when prepare
    /// was given that ref.
    pub fn commit_of(&self, reference: &str) -> Option<&str> {
        let bare = |name: &str| {
            (name.strip_prefix("refs/heads/"))
                .or_else(|| name.strip_prefix("refs/tags/"))
                .unwrap_or(name)
                .to_string()
        };
        (self.refs.iter())
            .find(|(name, _)| bare(name) == bare(reference))
            .map(|(_, commit)| commit.as_str())
    }
}

fn repository(seed: &Path) -> PathBuf {
    seed.join("repo.git")
}

const RECORD: &str = "seed.json";
/// seed.json is a few lines; anything bigger is not one.
const MAX_RECORD: u64 = 1 << 20;
/// A seed being made, beside the one in place: `.seed.tmp-PID`.
const STAGING: &str = ".seed.tmp-";
/// Where the seed's commits are kept, in the seed and in a repository it was planted in.
const SEED_REFS: &str = "refs/bootagent/seed";

/// Reads the seed's record; `Ok(None)` when there is no seed.
pub fn read(seed: &Path) -> Result<Option<Record>, String> {
    let path = seed.join(RECORD);
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut text = String::new();
    file.take(MAX_RECORD)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| format!("{} is not a seed record: {e}", path.display()))
}

/// Fetches what `references` name on `remote` (with `depth` commits of history, or all) into a
/// new seed at `seed`, which replaces the one there only once it is complete.
pub fn prepare(
    remote: &Remote,
    references: &[String],
    depth: Option<u32>,
    credentials: &Credentials,
    limits: &Limits,
    seed: &Path,
) -> Result<Record, GitError> {
    let parent = seed.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent)
        .map_err(|e| local("create the state directory", parent)(e.to_string()))?;
    remove_leftovers(parent);
    let staging = parent.join(format!("{STAGING}{}", std::process::id()));
    let taken = take(remote, references, depth, credentials, limits, &staging);
    let record = match taken {
        Ok(record) => record,
        Err(error) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(error);
        }
    };
    let staged = staging.as_path();
    let io = |action| move |e: std::io::Error| local(action, staged)(e.to_string());
    // One step, so that no moment is left without a seed: after the exchange the staging path
    // holds the seed before, which goes; a kill before that leaves a leftover the next prepare
    // clears.
    // Whatever is at the seed's path is swapped out, itself and not what it may point to: a
    // symlink, dangling or not, or a file in a directory's place (rename would refuse those).
    let swapped = match seed.symlink_metadata() {
        Ok(_) => crate::atomic::exchange(&staging, seed).map_err(io("swap the new seed in")),
        Err(_) => std::fs::rename(&staging, seed).map_err(io("move the seed into place")),
    };
    // After an exchange the staging path holds what was at the seed's path; after a failure,
    // the new seed.
    remove(&staging);
    swapped?;
    Ok(record)
}

/// What an interrupted prepare left beside the seed: a half-made one, or the one it replaced.
fn remove_leftovers(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(STAGING) {
            remove(&entry.path());
        }
    }
}

/// Removes what is at `path`, a directory tree or anything else, never what a symlink names.
fn remove(path: &Path) {
    let _ = match path.symlink_metadata() {
        Ok(found) if found.is_dir() => std::fs::remove_dir_all(path),
        _ => std::fs::remove_file(path),
    };
}

fn local(action: &'static str, dir: &Path) -> impl FnOnce(String) -> GitError {
    let dir = dir.to_path_buf();
    move |message: String| GitError::Local {
        action,
        dir,
        message,
    }
}

/// Fetches what `references` name into a new seed at `staging`, its record written and flushed.
fn take(
    remote: &Remote,
    references: &[String],
    depth: Option<u32>,
    credentials: &Credentials,
    limits: &Limits,
    staging: &Path,
) -> Result<Record, GitError> {
    let session = credentials.session(remote, limits)?;
    let repo = super::init_bare(&repository(staging))
        .map_err(|e| local("create the seed repository", staging)(e.message().to_string()))?;
    let mut anonymous = repo
        .remote_anonymous(remote.url())
        .map_err(|e| local("set up the remote", staging)(e.message().to_string()))?;
    let mut connection = anonymous
        .connect_auth(Direction::Fetch, None, None)
        .map_err(|e| network_error(e, remote, &session))?;
    let listed = references
        .iter()
        .map(|reference| advertised_ref(&mut connection, remote, reference, &session))
        .collect::<Result<Vec<_>, _>>()?;
    let specs: Vec<String> = (listed.iter().enumerate())
        .map(|(n, listed)| format!("+{}:{SEED_REFS}/{n}", listed.name))
        .collect();
    let mut callbacks = git2::RemoteCallbacks::new();
    callbacks.transfer_progress(|_| limits.exceeded().is_none());
    let mut options = fetch_options(callbacks, depth);
    connection
        .remote()
        .download(&specs, Some(&mut options))
        .map_err(|e| network_error(e, remote, &session))?;
    drop(options);
    drop(connection);
    let mut refs = BTreeMap::new();
    for (n, (reference, listed)) in references.iter().zip(&listed).enumerate() {
        let target = target_of(&repo, listed, remote)?.ok_or_else(|| GitError::Unusable {
            url: remote.to_string(),
            message: format!(
                "the fetch of {} did not bring the commit it names",
                listed.name
            ),
        })?;
        repo.reference(
            &format!("{SEED_REFS}/{n}"),
            target.commit,
            true,
            "bootagent seed",
        )
        .map_err(|e| local("record the seed's commit", staging)(e.message().to_string()))?;
        refs.insert(reference.clone(), target.commit.to_string());
    }
    let record = Record {
        url: remote.to_string(),
        refs,
        depth,
        taken_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    };
    let text = serde_json::to_vec_pretty(&record).expect("a seed record serializes");
    let io = |action| move |e: std::io::Error| local(action, staging)(e.to_string());
    crate::atomic::write_file(&staging.join(RECORD), &text, 0o644)
        .map_err(io("write the seed record"))?;
    let dir = std::fs::File::open(staging).map_err(io("open the seed"))?;
    nix::unistd::syncfs(&dir)
        .map_err(std::io::Error::from)
        .map_err(io("flush the seed to disk"))?;
    Ok(record)
}

/// A seed planted in a new repository.
#[derive(Debug, Clone)]
pub struct Planted {
    pub taken_at: String,
}

/// Plants the seed at `seed` in the new repository `repo`, when there is one and it fits:
/// fetched from `remote` or one of `mirrors`, and with the history the boot's fetch keeps
/// (`shallow`: the boot fetches with a depth; a shallow seed cannot serve a full-history one).
/// `Ok(None)`: no seed. An error says why the seed cannot serve; `repo` may then hold part of
/// it, and must be made again.
pub fn plant(
    repo: &Repository,
    seed: &Path,
    remote: &Remote,
    mirrors: &[Remote],
    shallow: bool,
    limits: &Limits,
) -> Result<Option<Planted>, String> {
    let Some(record) = read(seed)? else {
        return Ok(None);
    };
    record.fits(remote, mirrors, shallow)?;
    let packs = repository(seed).join("objects").join("pack");
    let entries =
        std::fs::read_dir(&packs).map_err(|e| format!("cannot read {}: {e}", packs.display()))?;
    let into = repo.path().join("objects").join("pack");
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.extension().is_some_and(|ext| ext == "pack") {
            copy_pack(&path, &into, limits)?;
        }
    }
    repo.odb()
        .and_then(|odb| odb.refresh())
        .map_err(|e| e.message().to_string())?;
    let commit = |text: &str| {
        Oid::from_str(text)
            .ok()
            .filter(|oid| repo.find_commit(*oid).is_ok())
    };
    let shallow_file = repository(seed).join("shallow");
    match std::fs::read_to_string(&shallow_file) {
        // A record that says "the whole history" must not bring a shallow one.
        Ok(_) if record.depth.is_none() => {
            return Err(format!(
                "{} lists shallow commits, and seed.json says it holds the whole history",
                shallow_file.display()
            ))
        }
        Ok(text) => {
            if let Some(line) = text.lines().find(|line| commit(line).is_none()) {
                return Err(format!(
                    "{} names {line:?}, which is no commit of the seed",
                    shallow_file.display()
                ));
            }
            std::fs::write(repo.path().join("shallow"), text)
                .map_err(|e| format!("cannot write the shallow list: {e}"))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", shallow_file.display())),
    }
    for (n, (reference, id)) in record.refs.iter().enumerate() {
        let oid = commit(id).ok_or_else(|| {
            format!("it records commit {id:?} for {reference}, and does not hold it")
        })?;
        repo.reference(&format!("{SEED_REFS}/{n}"), oid, true, "bootagent seed")
            .map_err(|e| e.message().to_string())?;
    }
    Ok(Some(Planted {
        taken_at: record.taken_at,
    }))
}

/// How the seed's commit for a ref stands against the commit the remote lists for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// The seed holds the remote's commit: a first boot fetches nothing for it.
    Current,
    /// The remote has commits the seed lacks: how many, when the checkout at hand has them
    /// to count.
    Behind(Option<usize>),
}

/// Where the seed's `held` commit stands against `listed`, what the remote lists for the ref;
/// `checkout` is the boot's repository (`Layout::repo`), which may have the remote's commits
/// to count.
pub fn standing(seed: &Path, held: &str, listed: &RemoteRef, checkout: &Path) -> Standing {
    let Ok(held) = Oid::from_str(held) else {
        return Standing::Behind(None);
    };
    if listed.object == held || listed.commit == Some(held) {
        return Standing::Current;
    }
    let in_seed = Repository::open_bare(repository(seed))
        .is_ok_and(|repo| repo.odb().is_ok_and(|odb| odb.exists(listed.object)));
    if in_seed {
        return Standing::Current;
    }
    let counted = listed.commit.and_then(|commit| {
        let repo = Repository::open_bare(checkout).ok()?;
        let later = reachable(&repo, commit)?;
        let earlier = reachable(&repo, held)?;
        later
            .contains(&held)
            .then(|| later.difference(&earlier).count())
    });
    Standing::Behind(counted)
}

/// Copies the seed's pack `pack` and its index into the pack directory `into`, each file's
/// checksum checked as it is copied: a pack ends with the SHA-1 of all that precedes it, and an
/// index with its pack's and then its own. That finds a pack damaged on disk in one pass over
/// it; each object's id is checked against its content as it is read (libgit2's strict hash
/// verification), and a checkout that fails on the seed is done again without it.
fn copy_pack(pack: &Path, into: &Path, limits: &Limits) -> Result<(), String> {
    let index = pack.with_extension("idx");
    let staged_pack = into.join(format!("{STAGED_PACK}pack.tmp"));
    let staged_index = into.join(format!("{STAGED_PACK}idx.tmp"));
    let pack_sum = copy_checked(pack, &staged_pack, limits)?;
    let index_sums = copy_checked(&index, &staged_index, limits)?;
    if index_sums[..20] != pack_sum[20..] {
        return Err(format!(
            "{} is not the index of {}",
            index.display(),
            pack.display()
        ));
    }
    let name: String = pack_sum[20..]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    // The pack first: libgit2 finds a pack by its index.
    for (staged, kind) in [(&staged_pack, "pack"), (&staged_index, "idx")] {
        let target = into.join(format!("pack-{name}.{kind}"));
        std::fs::rename(staged, &target)
            .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
    }
    Ok(())
}

/// Copies `from` to `to` and checks on the way that its last 20 bytes are the SHA-1 of all
/// before them; returns its last 40 bytes.
fn copy_checked(from: &Path, to: &Path, limits: &Limits) -> Result<[u8; 40], String> {
    let unsound = |why: &str| format!("{} is not a sound pack: {why}", from.display());
    // A link could lead anywhere (to a device that never ends): packs are files.
    let kind = std::fs::symlink_metadata(from)
        .map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    if !kind.is_file() {
        return Err(format!("{} is not a regular file", from.display()));
    }
    let mut source =
        std::fs::File::open(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    let length = kind.len();
    if length < 40 {
        return Err(unsound("shorter than its checksums"));
    }
    let mut target =
        std::fs::File::create(to).map_err(|e| format!("cannot write {}: {e}", to.display()))?;
    let mut sha1 = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    let (mut done, mut last) = (0u64, Vec::with_capacity(40 + CHUNK));
    let mut chunk = vec![0; CHUNK];
    loop {
        // Part of the checkout: it stops when the checkout must.
        if let Some(failure) = limits.exceeded() {
            return Err(failure.message().to_string());
        }
        let read = source
            .read(&mut chunk)
            .map_err(|e| format!("cannot read {}: {e}", from.display()))?;
        if read == 0 {
            break;
        }
        let chunk = &chunk[..read];
        let hashed = usize::try_from((length - 20).saturating_sub(done)).unwrap_or(usize::MAX);
        sha1.update(&chunk[..hashed.min(read)]);
        target
            .write_all(chunk)
            .map_err(|e| format!("cannot write {}: {e}", to.display()))?;
        done += read as u64;
        last.extend_from_slice(chunk);
        last.drain(..last.len().saturating_sub(40));
    }
    if done != length {
        return Err(unsound("it changed while it was read"));
    }
    if sha1.finish().as_ref() != &last[20..] {
        return Err(unsound("its checksum does not match its content"));
    }
    Ok(last.try_into().expect("40 bytes kept"))
}

/// A pack of the seed being copied into a repository: `seed.pack.tmp`, `seed.idx.tmp`.
const STAGED_PACK: &str = "seed.";

/// Whether `name`, in a repository's pack directory, is a copy of a seed's pack a killed boot
/// left unfinished.
pub(super) fn is_staged_pack(name: &str) -> bool {
    name.starts_with(STAGED_PACK) && name.ends_with(".tmp")
}

/// How much of a pack is read at a time.
const CHUNK: usize = 1 << 16;

/// The commits `from` reaches in `repo` (itself included), as far as the repository's history
/// goes: a shallow one ends where its objects do (libgit2's own walks fail there); `None` past
/// a count that is no longer worth telling.
fn reachable(repo: &Repository, from: Oid) -> Option<HashSet<Oid>> {
    const MOST: usize = 100_000;
    let (mut seen, mut next) = (HashSet::new(), vec![from]);
    while let Some(id) = next.pop() {
        if !seen.insert(id) {
            continue;
        }
        if seen.len() > MOST {
            return None;
        }
        if let Ok(commit) = repo.find_commit(id) {
            next.extend(commit.parent_ids());
        }
    }
    Some(seen)
}

/// The same repository at the same place, however the URL ends (`/`, `.git`).
fn same_repository(a: &str, b: &str) -> bool {
    let trim = |url: &str| {
        let url = url.trim_end_matches('/');
        url.strip_suffix(".git").unwrap_or(url).to_string()
    };
    trim(a) == trim(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_repository_is_recognised_however_its_url_ends() {
        assert!(same_repository("https://h/a/b.git", "https://h/a/b"));
        assert!(same_repository("https://h/a/b/", "https://h/a/b.git"));
        assert!(!same_repository("https://h/a/b", "https://h/a/c"));
        assert!(!same_repository("https://h/a/b", "https://other/a/b"));
    }

    #[test]
    fn a_record_that_is_not_one_is_an_error_and_a_missing_one_no_seed() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), Ok(None));
        std::fs::write(dir.path().join(RECORD), "{\"url\": 3}").unwrap();
        assert!(read(dir.path())
            .unwrap_err()
            .contains("is not a seed record"));
    }
}
