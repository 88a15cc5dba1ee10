//! Secret files rendered and written for real: as root (the tests run as root), on tmpfs
//! (`/dev/shm`) and on disk (`/var/tmp`).

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::files::{render, write_all, Changed, FileError, Rendered};
use crate::config::OnChange;
use crate::plan::identity::Identity;
use crate::plan::{FilePlan, FileSource, SecretRef};
use crate::secrets::SecretVar;

const PEM: &str =
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\r\nBKcwggSjAgEAAoIBAQC7\n\
                   -----END PRIVATE KEY-----\n";

fn identity() -> Identity {
    Identity {
        service: "calendar".into(),
        env: "prod".into(),
        env_tag: "production".into(),
        repository: None,
        asg_group: None,
        tags: BTreeMap::new(),
        instance_id: "i-0abc".into(),
        region: "eu-west-1".into(),
    }
}

fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, SecretVar> {
    pairs
        .iter()
        .map(|(name, value)| {
            let var = SecretVar {
                value: Zeroizing::new(value.to_string()),
                source: "secret calendar_env_prod".into(),
            };
            (name.to_string(), var)
        })
        .collect()
}

fn plan(path: &Path, source: FileSource) -> FilePlan {
    FilePlan {
        key: "files[0]".into(),
        path: path.to_path_buf(),
        source,
        owner: "root".into(),
        group: "root".into(),
        mode: 0o600,
        on_change: OnChange::Restart,
        persistent: false,
    }
}

fn template(path: &Path, text: &str) -> FilePlan {
    plan(path, FileSource::Template(text.into()))
}

/// What `files` render to over `secret_vars`, with `texts` as the secrets of `secret` files.
fn rendered(
    files: &[FilePlan],
    secret_vars: &[(&str, &str)],
    texts: &[(&str, &str)],
) -> Result<Vec<Rendered>, FileError> {
    let texts = texts
        .iter()
        .map(|(key, text)| (key.to_string(), Zeroizing::new(text.to_string())))
        .collect();
    render(files, &identity(), &vars(secret_vars), &texts)
}

/// Renders and writes `files`; returns what changed.
fn written(files: &[FilePlan], secret_vars: &[(&str, &str)]) -> Result<Vec<Changed>, FileError> {
    write_all(&rendered(files, secret_vars, &[])?)
}

/// A directory on tmpfs, as root's: where a secret file may go.
fn tmpfs_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn a_template_naming_an_unknown_secret_fails_naming_the_file_and_the_variable() {
    let path = Path::new("/run/app/app.conf");
    let file = template(
        path,
        "user={{ secrets.DB_USER }}\npass={{ secrets.NOPE }}\n",
    );
    let err = rendered(&[file], &[("DB_USER", "app")], &[]).unwrap_err();
    assert!(err.is_malformed());
    let message = err.to_string();
    assert!(message.contains("/run/app/app.conf"), "{message}");
    assert!(message.contains("files[0].template"), "{message}");
    assert!(message.contains("uses secrets.NOPE"), "{message}");
}

#[test]
fn a_template_failing_otherwise_names_the_line_and_never_a_value() {
    let file = template(Path::new("/run/x"), "a\n{{ secrets.TOKEN + 1 }}\n");
    let err = rendered(&[file], &[("TOKEN", "canary-51d")], &[]).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("failed at line 2"), "{message}");
    assert!(!message.contains("canary-51d"), "{message}");
}

#[test]
fn a_secret_file_is_the_secret_byte_for_byte_and_a_template_never_reinterprets_a_value() {
    let key = template(Path::new("/run/tls/app.key"), "{{ secrets.KEY }}");
    let cert = plan(
        Path::new("/run/tls/app.crt"),
        FileSource::Secret(SecretRef {
            id: "calendar/tls".into(),
            field: Some("cert".into()),
        }),
    );
    let mut cert_entry = cert.clone();
    cert_entry.key = "files[1]".into();
    let conf = template(
        Path::new("/run/tls/app.conf"),
        "service={{ service }} env={{ env }}/{{ env_tag }} {{ region }} {{ instance_id }}\n\
         password={{ secrets.PASSWORD }}\n",
    );
    let files = [key, cert_entry, conf];
    let secret_vars = [("KEY", PEM), ("PASSWORD", "{{ secrets.KEY }}{% raw %}")];
    let out = rendered(&files, &secret_vars, &[("files[1]", PEM)]).unwrap();
    // A debug print shows the path only.
    assert!(!format!("{out:?}").contains("PRIVATE"));
    let contents: Vec<&[u8]> = out.iter().map(|file| file.contents()).collect();
    assert_eq!(contents[0], PEM.as_bytes());
    assert_eq!(contents[1], PEM.as_bytes());
    assert_eq!(
        contents[2],
        b"service=calendar env=prod/production eu-west-1 i-0abc\npassword={{ secrets.KEY }}{% raw %}\n"
    );
}

#[test]
fn a_file_is_written_with_its_owner_group_and_mode_and_rewritten_only_when_it_differs() {
    let dir = tmpfs_dir();
    let path = dir.path().join("tls/new/app.key");
    let mut file = template(&path, "{{ secrets.KEY }}");
    file.owner = "nobody".into();
    file.group = "nogroup".into();
    file.mode = 0o440;
    file.on_change = OnChange::Reload;
    let changed = written(std::slice::from_ref(&file), &[("KEY", PEM)]).unwrap();
    assert_eq!(
        changed,
        [Changed {
            path: path.clone(),
            on_change: OnChange::Reload
        }]
    );
    assert_eq!(std::fs::read(&path).unwrap(), PEM.as_bytes());
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (65534, 65534, 0o440)
    );
    // The directories made on the way are root's, 0755.
    let made = std::fs::metadata(dir.path().join("tls/new")).unwrap();
    assert_eq!((made.uid(), made.mode() & 0o7777), (0, 0o755));
    let inode = meta.ino();
    assert_eq!(
        written(std::slice::from_ref(&file), &[("KEY", PEM)]).unwrap(),
        []
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().ino(),
        inode,
        "not rewritten"
    );
    // Another mode alone is a change, and so is other contents.
    file.mode = 0o400;
    assert_eq!(
        written(std::slice::from_ref(&file), &[("KEY", PEM)])
            .unwrap()
            .len(),
        1
    );
    assert_eq!(written(&[file], &[("KEY", "other")]).unwrap().len(), 1);
    assert_eq!(std::fs::read(&path).unwrap(), b"other");
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
    assert_eq!(names.len(), 1, "no temporary file left");
}

#[test]
fn a_symbolic_link_on_the_way_is_refused_and_nothing_is_written_through_it() {
    let dir = tmpfs_dir();
    let elsewhere = tmpfs_dir();
    std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("tls")).unwrap();
    let file = template(&dir.path().join("tls/app.key"), "x");
    let err = written(&[file], &[]).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("is a symbolic link"), "{message}");
    assert!(
        message.contains(&format!("{}/tls ", dir.path().display())),
        "{message}"
    );
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
}

#[test]
fn a_directory_others_may_write_or_own_is_refused_naming_it_and_the_fix() {
    let dir = tmpfs_dir();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o775)).unwrap();
    let file = template(&shared.join("app.key"), "x");
    let message = written(&[file], &[]).unwrap_err().to_string();
    assert!(
        message.contains("is writable by its group or by others"),
        "{message}"
    );
    assert!(
        message.contains(&format!("chmod go-w {}", shared.display())),
        "{message}"
    );
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&shared, Some(65534), None).unwrap();
    let file = template(&shared.join("sub/app.key"), "x");
    let message = written(&[file], &[]).unwrap_err().to_string();
    assert!(
        message.contains("is owned by uid 65534, not root"),
        "{message}"
    );
    assert!(!shared.join("sub").exists(), "nothing made under it");
}

#[test]
fn every_file_is_checked_before_any_is_written() {
    let dir = tmpfs_dir();
    let good = template(&dir.path().join("a/good.conf"), "good");
    let mut unknown_owner = template(&dir.path().join("b/bad.conf"), "bad");
    unknown_owner.key = "files[1]".into();
    unknown_owner.owner = "no-such-user-b7".into();
    let err = written(&[good.clone(), unknown_owner], &[]).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("files[1].owner names \"no-such-user-b7\""),
        "{message}"
    );
    assert!(!err.is_malformed());
    assert!(
        !dir.path().join("a").exists(),
        "the first file waited for the checks"
    );
    let disk = tempfile::tempdir_in("/var/tmp").unwrap();
    let mut on_disk = template(&disk.path().join("x/app.conf"), "x");
    on_disk.key = "files[1]".into();
    let err = written(&[good.clone(), on_disk.clone()], &[]).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("not tmpfs or ramfs"), "{message}");
    assert!(message.contains("files[1].persistent = true"), "{message}");
    assert!(!dir.path().join("a").exists());
    on_disk.persistent = true;
    assert_eq!(written(&[good, on_disk], &[]).unwrap().len(), 2);
    assert_eq!(std::fs::read(disk.path().join("x/app.conf")).unwrap(), b"x");
}

#[test]
fn a_link_in_place_of_the_file_is_replaced_not_followed() {
    let dir = tmpfs_dir();
    let target = dir.path().join("target");
    std::fs::write(&target, "keep").unwrap();
    let path: PathBuf = dir.path().join("app.key");
    std::os::unix::fs::symlink(&target, &path).unwrap();
    assert_eq!(written(&[template(&path, "new")], &[]).unwrap().len(), 1);
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    assert!(!std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn a_directory_where_a_later_file_goes_fails_the_check_before_any_file_is_written() {
    // Every file is checked before any is written: a directory in place of files[1] (an
    // operator's mkdir, a package) must fail the boot before files[0] changes, or files[0] is
    // new while the boot fails, and the next boot, finding it unchanged, never applies its
    // on_change.
    let dir = tmpfs_dir();
    let good = template(&dir.path().join("good.conf"), "new");
    std::fs::write(dir.path().join("good.conf"), "old").unwrap();
    let taken = dir.path().join("taken.conf");
    std::fs::create_dir(&taken).unwrap();
    let mut blocked = template(&taken, "x");
    blocked.key = "files[1]".into();
    let err = written(&[good, blocked], &[]).unwrap_err();
    assert_eq!(
        std::fs::read(dir.path().join("good.conf")).unwrap(),
        b"old",
        "files[0] was written before files[1] failed"
    );
    let message = err.to_string();
    assert!(message.contains("taken.conf"), "{message}");
    assert!(message.contains("files[1].path"), "{message}");
    assert!(!err.is_malformed());
}
