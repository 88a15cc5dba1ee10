//! Files that are either wholly old or wholly new: a crash, a kill or a full disk never leaves a
//! half-written env file, drop-in or status.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

const TEMPORARY_INFIX: &str = ".tmp-";

/// Whether `name` is one of [`write_file`]'s temporary files: one that outlives the call was
/// left by a killed process.
pub fn is_temporary(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with('.')
        && name
            .rsplit_once(TEMPORARY_INFIX)
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Writes `contents` to a temporary file beside `path` created with `mode`, fsyncs it, renames it
/// over `path` and fsyncs the directory. On any error the temporary file is removed and `path`
/// is untouched.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    write_file_owned(path, contents, mode, None)
}

/// [`write_file`], the file given to `owner` (user, group) before anything is written to it.
pub fn write_file_owned(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no directory"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let temp = dir.join(format!(
        ".{}{TEMPORARY_INFIX}{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    // Only a killed earlier process with the same pid (PID 1 in a container, say) can have
    // left this name: its content is stale.
    if temp.is_file() {
        std::fs::remove_file(&temp)?;
    }
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        if let Some((uid, gid)) = owner {
            nix::unistd::fchown(&file, Some(uid), Some(gid))?;
        }
        file.write_all(contents)?;
        file.sync_all()?;
        crate::failpoint::hit(&format!("before-rename:{}", name.to_string_lossy()));
        std::fs::rename(&temp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// How [`read_bounded`] treats a symbolic link at the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Read what it points at (config files an operator links into place).
    Follow,
    /// Refuse it (state files bootagent itself writes, never as links).
    Refuse,
}

/// Reads a file that must be a regular file of at most `limit` bytes: a FIFO or a device put in
/// its place never blocks the read, and a huge file is refused, not loaded.
pub fn read_bounded(path: &Path, limit: u64, links: Links) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let no_follow = match links {
        Links::Follow => 0,
        Links::Refuse => nix::libc::O_NOFOLLOW,
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | no_follow)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "it is not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it is larger than {limit} bytes"),
        ));
    }
    Ok(bytes)
}

/// Swaps what two paths name in one step (`renameat2` with `RENAME_EXCHANGE`): a reader of either
/// path sees the old or the new, and a kill leaves both. Both must exist, on one filesystem.
pub fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    // The system call itself: the musl the static binary is linked with has no wrapper for it.
    // SAFETY: both are NUL-terminated strings that outlive the call; AT_FDCWD resolves them as
    // `rename` would.
    let done = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    match done {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_content_with_the_requested_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.env");
        std::fs::write(&path, "old").unwrap();
        write_file(&path, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn a_stale_temporary_file_of_the_same_pid_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.env");
        let stale = dir
            .path()
            .join(format!(".x.env.tmp-{}", std::process::id()));
        std::fs::write(&stale, "stale").unwrap();
        assert!(is_temporary(stale.file_name().unwrap()));
        write_file(&path, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert!(!stale.exists());
        assert!(!is_temporary(std::ffi::OsStr::new("x.env")));
        assert!(!is_temporary(std::ffi::OsStr::new(".x.env.tmp-")));
    }

    #[test]
    fn failure_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.env");
        std::fs::write(&path, "old").unwrap();
        // A stale temp file from a killed run makes create_new fail; the old file must survive.
        let temp = dir
            .path()
            .join(format!(".x.env.tmp-{}", std::process::id()));
        std::fs::create_dir(&temp).unwrap();
        assert!(write_file(&path, b"new", 0o600).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
    }

    #[test]
    fn exchange_swaps_two_directories_and_refuses_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("seed"), dir.path().join(".seed.tmp-1"));
        for (path, mark) in [(&old, "old"), (&new, "new")] {
            std::fs::create_dir(path).unwrap();
            std::fs::write(path.join("mark"), mark).unwrap();
        }
        exchange(&new, &old).unwrap();
        assert_eq!(std::fs::read_to_string(old.join("mark")).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(new.join("mark")).unwrap(), "old");
        let missing = dir.path().join("missing");
        let refused = exchange(&missing, &old).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::NotFound);
        assert_eq!(std::fs::read_to_string(old.join("mark")).unwrap(), "new");
    }
}
