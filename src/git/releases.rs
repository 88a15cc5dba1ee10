//! Where a service's code lives, and the switch of the link that says which release is in
//! service: atomic, so whatever is killed when, the link points at a complete release.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use git2::Oid;

/// Where a service's code lives, for `git.dir = /srv/calendar`:
///   /srv/.calendar/repo.git            bare repository: the fetched objects
///   /srv/.calendar/releases/<commit>   one complete checkout per commit
///   /srv/calendar -> .calendar/releases/<commit>   what the service runs in, switched atomically
pub struct Layout {
    pub link: PathBuf,
    pub repo: PathBuf,
    pub releases: PathBuf,
}

impl Layout {
    pub fn of(dir: &Path) -> Layout {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let root = dir.with_file_name(format!(".{name}"));
        Layout {
            link: dir.to_path_buf(),
            repo: root.join("repo.git"),
            releases: root.join("releases"),
        }
    }

    /// The commit the service runs now: the release the link points at.
    pub fn current(&self) -> Option<Oid> {
        let target = std::fs::read_link(&self.link).ok()?;
        Oid::from_str(&target.file_name()?.to_string_lossy()).ok()
    }
}

/// Points the link at `release` with a rename, which replaces it atomically. A directory left
/// at the link's place by an older layout is moved aside into the releases first.
fn switch_link(layout: &Layout, release: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(&layout.link);
    if meta.as_ref().is_ok_and(|m| m.is_dir()) {
        let aside = layout.releases.join(format!(
            "previous-directory-{}",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        ));
        std::fs::rename(&layout.link, aside)?;
    }
    let parent = layout.link.parent().unwrap_or(Path::new("/"));
    let relative = release.strip_prefix(parent).unwrap_or(release);
    let prefix = format!(
        ".{}.link-",
        layout
            .link
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
    );
    // Staging links of switches that were killed midway (under the boot lock, none is live).
    for entry in std::fs::read_dir(parent)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let staging = layout
        .link
        .with_file_name(format!("{prefix}{}", std::process::id()));
    std::os::unix::fs::symlink(relative, &staging)?;
    crate::failpoint::hit("release-switch");
    std::fs::rename(&staging, &layout.link)?;
    std::fs::File::open(parent)?.sync_all()
}

/// The directory of the release of `commit` under the link `dir`.
pub fn release_dir(dir: &Path, commit: &str) -> PathBuf {
    Layout::of(dir).releases.join(commit)
}

/// Points the link at the release of `commit`: a new one [`sync`] made, or one still on disk (a
/// rollback).
pub fn switch(dir: &Path, commit: &str) -> std::io::Result<()> {
    let layout = Layout::of(dir);
    let release = layout.releases.join(commit);
    if !release.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("the release {} is gone", release.display()),
        ));
    }
    switch_link(&layout, &release)
}

/// Removes all but the `keep` newest releases (and leftovers of interrupted checkouts), never
/// the one the link points at. Called once the new release is in service.
pub fn prune(dir: &Path, keep: usize) -> std::io::Result<usize> {
    let layout = Layout::of(dir);
    let current = std::fs::read_link(&layout.link)
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_os_string()));
    let mut releases = Vec::new();
    for entry in std::fs::read_dir(&layout.releases)? {
        let entry = entry?;
        let name = entry.file_name();
        if Some(&name) == current.as_ref() {
            continue;
        }
        if name.to_string_lossy().starts_with('.') {
            std::fs::remove_dir_all(entry.path())?;
            continue;
        }
        let modified = entry.metadata()?.modified()?;
        releases.push((modified, entry.path()));
    }
    releases.sort();
    let excess = releases.len().saturating_sub(keep.saturating_sub(1));
    for (_, path) in releases.iter().take(excess) {
        std::fs::remove_dir_all(path)?;
    }
    Ok(excess)
}
