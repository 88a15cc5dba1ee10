//! Secret variables as credentials (`secrets.deliver = "credentials"`): one file per variable in
//! a store on the run dir's tmpfs. Under systemd the store is root's alone and the unit's
//! drop-in names each file with `LoadCredential=`, so that systemd copies them into the unit's
//! own credentials directory; in exec mode the store is the service user's own, and the service
//! finds it through `CREDENTIALS_DIRECTORY`, as it would under systemd.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid};
use zeroize::Zeroizing;

/// Variable name → value.
pub type Credentials = BTreeMap<String, Zeroizing<String>>;

#[derive(Debug, thiserror::Error)]
#[error("failed to {action} {path}")]
pub struct CredentialsError {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Who the store belongs to.
#[derive(Debug, Clone, Copy)]
pub enum Owner {
    /// systemd reads the store as root and gives the unit its own copy.
    Root,
    /// The service reads the store itself (exec mode).
    Service { uid: Uid, gid: Gid },
}

impl Owner {
    fn ids(self) -> (Uid, Gid) {
        match self {
            Owner::Root => (Uid::from_raw(0), Gid::from_raw(0)),
            Owner::Service { uid, gid } => (uid, gid),
        }
    }
}

/// Writes one file per credential (mode 0400) into `dir` (mode 0500, created when missing), each
/// atomically, and removes the files of credentials no longer delivered. Whether anything
/// changed. A kill midway leaves each file wholly old or wholly new; the next boot completes
/// the set.
pub fn write(
    dir: &Path,
    owner: Owner,
    credentials: &Credentials,
) -> Result<bool, CredentialsError> {
    let (uid, gid) = owner.ids();
    let error = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| CredentialsError {
            action,
            path,
            source,
        }
    };
    ensure_dir(dir, uid, gid).map_err(error("create the credentials directory", dir))?;
    let mut changed = false;
    for (name, value) in credentials {
        let path = dir.join(name);
        let unchanged = std::fs::symlink_metadata(&path).is_ok_and(|meta| {
            use std::os::unix::fs::MetadataExt;
            meta.is_file() && meta.uid() == uid.as_raw() && meta.gid() == gid.as_raw()
        }) && super::read_delivered(&path)
            .is_ok_and(|old| old.as_slice() == value.as_bytes());
        if unchanged {
            continue;
        }
        crate::atomic::write_file_owned(&path, value.as_bytes(), 0o400, Some((uid, gid)))
            .map_err(error("write the credential", &path))?;
        changed = true;
    }
    let entries = std::fs::read_dir(dir).map_err(error("list", dir))?;
    for entry in entries {
        let entry = entry.map_err(error("list", dir))?;
        let name = entry.file_name();
        let delivered = name.to_str().is_some_and(|n| credentials.contains_key(n));
        if !delivered {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(error("remove the stale credential", &path))?;
            changed = true;
        }
    }
    Ok(changed)
}

/// The store's directory: created private (0500) to `uid`, or made so when it exists. A link in
/// its place is refused rather than followed.
fn ensure_dir(dir: &Path, uid: Uid, gid: Gid) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o500).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        other => other?,
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "it is not a directory",
        ));
    }
    if meta.uid() != uid.as_raw() || meta.gid() != gid.as_raw() {
        nix::unistd::chown(dir, Some(uid), Some(gid))?;
    }
    if meta.mode() & 0o7777 != 0o500 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o500))?;
    }
    Ok(())
}

/// The credentials in `dir`, as [`write`] left them: what a rollback brings back.
pub fn read(dir: &Path) -> std::io::Result<Credentials> {
    let mut credentials = Credentials::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if crate::atomic::is_temporary(entry.file_name().as_os_str()) {
            continue;
        }
        let bytes = super::read_delivered(&entry.path())?;
        let value = std::str::from_utf8(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        credentials.insert(name, Zeroizing::new(value.to_string()));
    }
    Ok(credentials)
}

/// The drop-in's lines that hand the unit each credential by name: names and paths only, never
/// a value.
pub fn load_credential_lines(
    dir: &Path,
    names: impl IntoIterator<Item = impl AsRef<str>>,
) -> String {
    names
        .into_iter()
        .map(|name| {
            let name = name.as_ref();
            format!("LoadCredential={name}:{}\n", dir.join(name).display())
        })
        .collect()
}

/// `text` as `systemd-escape` writes it, for a template unit's instance: what `%I` gives back.
pub fn escape_instance(text: &str) -> String {
    let mut escaped = String::new();
    for (i, byte) in text.bytes().enumerate() {
        match byte {
            b'/' => escaped.push('-'),
            b'.' if i == 0 => escaped.push_str("\\x2e"),
            b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b':' | b'_' | b'.' => {
                escaped.push(byte as char)
            }
            _ => escaped.push_str(&format!("\\x{byte:02x}")),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn credentials(pairs: &[(&str, &str)]) -> Credentials {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), Zeroizing::new(value.to_string())))
            .collect()
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn each_credential_is_one_private_file_and_stale_ones_go() {
        let run = tempfile::tempdir().unwrap();
        let dir = run.path().join("credentials/calendar");
        let first = credentials(&[("DB_PASSWORD", "pw\nwith newline"), ("TOKEN", "t0")]);
        assert!(write(&dir, Owner::Root, &first).unwrap());
        assert_eq!(mode(&dir), 0o500);
        assert_eq!(mode(&dir.join("TOKEN")), 0o400);
        assert_eq!(
            std::fs::read_to_string(dir.join("DB_PASSWORD")).unwrap(),
            "pw\nwith newline"
        );
        assert!(
            !write(&dir, Owner::Root, &first).unwrap(),
            "nothing changed"
        );
        let second = credentials(&[("DB_PASSWORD", "pw\nwith newline")]);
        assert!(write(&dir, Owner::Root, &second).unwrap());
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["DB_PASSWORD"]);
    }

    #[test]
    fn in_exec_mode_the_store_is_the_service_users() {
        let run = tempfile::tempdir().unwrap();
        let dir = run.path().join("credentials/calendar");
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        let owner = Owner::Service {
            uid: nobody.uid,
            gid: nobody.gid,
        };
        write(&dir, Owner::Root, &credentials(&[("A", "1")])).unwrap();
        assert!(
            write(&dir, owner, &credentials(&[("A", "1")])).unwrap(),
            "a new owner is a change"
        );
        for path in [dir.clone(), dir.join("A")] {
            let meta = std::fs::metadata(&path).unwrap();
            assert_eq!(
                (meta.uid(), meta.gid()),
                (nobody.uid.as_raw(), nobody.gid.as_raw())
            );
        }
    }

    #[test]
    fn a_link_in_place_of_the_store_is_refused() {
        let run = tempfile::tempdir().unwrap();
        let elsewhere = run.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let dir = run.path().join("store");
        std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
        let error = write(&dir, Owner::Root, &credentials(&[("A", "1")])).unwrap_err();
        assert!(
            error.to_string().contains("credentials directory"),
            "{error}"
        );
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn reading_the_store_back_follows_no_link_and_no_fifo() {
        // In exec mode the store is the service user's own directory: whatever it puts there,
        // root (a rollback, doctor's check, the next boot's comparison) must not read through a
        // link into a file the user may not read, nor block on a FIFO or read /dev/zero forever.
        let run = tempfile::tempdir().unwrap();
        let dir = run.path().join("credentials/calendar");
        write(&dir, Owner::Root, &credentials(&[("A", "1")])).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let private = run.path().join("shadow");
        std::fs::write(&private, "root-only-7c1").unwrap();
        std::os::unix::fs::symlink(&private, dir.join("STOLEN")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.join("ZERO")).unwrap();
        nix::unistd::mkfifo(
            &dir.join("FIFO"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let read_back = read(&dir);
        let values: Vec<String> = read_back
            .iter()
            .flat_map(|store| store.values().map(|v| v.to_string()))
            .collect();
        assert!(
            !values.iter().any(|v| v.contains("root-only-7c1")),
            "read through a link: {:?}",
            read_back
                .as_ref()
                .map(|store| store.keys().collect::<Vec<_>>())
        );
        // The same link where a credential's file goes is replaced, never compared through.
        std::fs::remove_file(dir.join("A")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.join("A")).unwrap();
        assert!(write(&dir, Owner::Root, &credentials(&[("A", "1")])).unwrap());
        assert_eq!(std::fs::read(dir.join("A")).unwrap(), b"1");
    }

    #[test]
    fn instance_names_are_escaped_as_systemd_escape_does() {
        assert_eq!(escape_instance("calendar.service"), "calendar.service");
        assert_eq!(
            escape_instance("web-api@blue.service"),
            "web\\x2dapi\\x40blue.service"
        );
        assert_eq!(escape_instance(".x"), "\\x2ex");
    }

    #[test]
    fn the_drop_in_names_files_never_values() {
        let lines = load_credential_lines(Path::new("/run/bootagent/credentials/x"), ["A", "B"]);
        assert_eq!(
            lines,
            "LoadCredential=A:/run/bootagent/credentials/x/A\n\
             LoadCredential=B:/run/bootagent/credentials/x/B\n"
        );
    }
}
