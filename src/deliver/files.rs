//! Secret files (`[[files]]`). [`render`] runs in the boot's secrets step, before anything
//! changes, so that a template naming an unknown variable fails the boot there. [`write_all`]
//! runs in the env-file step: it checks every file first (owner, group, each directory on the
//! way, the file system) and only then writes, each file replaced atomically through directory
//! handles opened from `/` without following a link, so that a service user who owns a
//! directory on the way cannot turn root's write elsewhere.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{File, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, Value};
use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{mkdirat, Mode};
use nix::unistd::{unlinkat, Gid, Group, Uid, UnlinkatFlags, User};
use zeroize::Zeroizing;

use crate::config::{template_environment, OnChange};
use crate::plan::identity::Identity;
use crate::plan::{FilePlan, FileSource};
use crate::secrets::SecretVar;

/// Why a secret file cannot be rendered or written. Never quotes what the file would hold.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(
        "{path} ({key}.template) uses {name}, which no secret variable defines; add it to the \
         secrets, or fix {key}.template"
    )]
    Undefined {
        path: PathBuf,
        key: String,
        name: String,
    },
    #[error("{path} ({key}.template) failed at line {line}: {kind}; fix {key}.template")]
    Render {
        path: PathBuf,
        key: String,
        line: usize,
        kind: String,
    },
    #[error(
        "{path}: {key}.{field} names {name:?}, which is no {field} on this instance; create it \
         in the image, or fix {key}.{field}"
    )]
    Unknown {
        path: PathBuf,
        key: String,
        field: &'static str,
        name: String,
    },
    #[error(
        "{path} would be written on the file system of {dir}, which is not tmpfs or ramfs, so \
         the secret would reach persistent disk; move it under a tmpfs (such as /run), or set \
         {key}.persistent = true"
    )]
    OnDisk {
        path: PathBuf,
        key: String,
        dir: PathBuf,
    },
    #[error(
        "{path} is not written: {dir} {why}, so another user could turn root's write elsewhere; \
         {fix}"
    )]
    Unsafe {
        path: PathBuf,
        dir: PathBuf,
        why: String,
        fix: String,
    },
    #[error(
        "{path} ({key}.path) is a directory, which a secret file cannot replace; remove it, or \
         fix {key}.path"
    )]
    Directory { path: PathBuf, key: String },
    #[error("failed to {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl FileError {
    /// The secrets do not hold what a template needs (as a malformed secret); the rest is this
    /// machine's.
    pub fn is_malformed(&self) -> bool {
        matches!(self, FileError::Undefined { .. } | FileError::Render { .. })
    }
}

/// A file ready to write: its plan and what it holds, which is secret.
pub struct Rendered {
    pub plan: FilePlan,
    contents: Zeroizing<Vec<u8>>,
}

impl Rendered {
    /// What the file holds, for the tests to compare byte for byte.
    #[cfg(test)]
    pub fn contents(&self) -> &[u8] {
        &self.contents
    }
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendered")
            .field("path", &self.plan.path)
            .finish_non_exhaustive()
    }
}

/// The files as they are now, for those of `plans` that exist: what a rollback writes back. A
/// file that cannot be read (a link, not a regular file, larger than a secret can be) is left
/// out, and a rollback leaves it as it is.
pub fn read_back(plans: &[FilePlan]) -> Vec<Rendered> {
    plans
        .iter()
        .filter_map(|plan| {
            let contents = super::read_delivered(&plan.path).ok()?;
            Some(Rendered {
                plan: plan.clone(),
                contents,
            })
        })
        .collect()
}

/// A file whose contents, owner, group or mode changed, and what that does to the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub path: PathBuf,
    pub on_change: OnChange,
}

/// Every file's contents: a `secret` one is the secret's text (or JSON field) byte for byte,
/// from `texts` (by entry, as `secrets::load` read them); a template is rendered over `vars`
/// and the identity.
pub fn render(
    files: &[FilePlan],
    identity: &Identity,
    vars: &BTreeMap<String, SecretVar>,
    texts: &BTreeMap<String, Zeroizing<String>>,
) -> Result<Vec<Rendered>, FileError> {
    let mut context = None;
    let mut rendered = Vec::with_capacity(files.len());
    for plan in files {
        let contents = match &plan.source {
            FileSource::Secret(_) => {
                let text = texts
                    .get(&plan.key)
                    .expect("secrets::load reads the secret of every file that names one");
                Zeroizing::new(text.as_bytes().to_vec())
            }
            FileSource::Template(template) => {
                let context = context.get_or_insert_with(|| template_context(identity, vars));
                render_template(plan, template, context, vars)?
            }
        };
        rendered.push(Rendered {
            plan: plan.clone(),
            contents,
        });
    }
    Ok(rendered)
}

/// What a template sees: `secrets` and the identity.
fn template_context(identity: &Identity, vars: &BTreeMap<String, SecretVar>) -> Value {
    let secrets = SecretMap(
        vars.iter()
            .map(|(name, var)| (name.clone(), var.value.clone()))
            .collect(),
    );
    let top: BTreeMap<&'static str, Value> = BTreeMap::from([
        ("secrets", Value::from_object(secrets)),
        ("service", Value::from(identity.service.as_str())),
        ("env", Value::from(identity.env.as_str())),
        ("env_tag", Value::from(identity.env_tag.as_str())),
        ("region", Value::from(identity.region.as_str())),
        ("instance_id", Value::from(identity.instance_id.as_str())),
    ]);
    Value::from_object(top)
}

/// The secret variables by name, wiped when the template is done with them; shown by name
/// only, should anything print it for debugging.
struct SecretMap(BTreeMap<String, Zeroizing<String>>);

impl std::fmt::Debug for SecretMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Object for SecretMap {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let value = self.0.get(key.as_str()?)?;
        Some(Value::from(value.as_str()))
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(
            self.0
                .keys()
                .map(|name| Value::from(name.as_str()))
                .collect(),
        )
    }
}

fn render_template(
    plan: &FilePlan,
    text: &str,
    context: &Value,
    vars: &BTreeMap<String, SecretVar>,
) -> Result<Zeroizing<Vec<u8>>, FileError> {
    let environment = template_environment();
    let failed = |error: &minijinja::Error| FileError::Render {
        path: plan.path.clone(),
        key: plan.key.clone(),
        line: error.line().unwrap_or(0),
        // The kind only: an error's detail may quote a value, which may be a secret.
        kind: error.kind().to_string(),
    };
    let template = environment
        .template_from_str(text)
        .map_err(|e| failed(&e))?;
    let mut out = Wiped::default();
    let result = template
        .render_captured_to(context.clone(), &mut out)
        .map(drop);
    match result {
        Ok(()) => Ok(out.0),
        Err(error) if error.kind() == minijinja::ErrorKind::UndefinedError => {
            // minijinja does not say which name was undefined: the first `secrets.NAME` the
            // template uses that no variable defines is the one.
            let mut names: Vec<String> = template.undeclared_variables(true).into_iter().collect();
            names.sort();
            let undefined = names.into_iter().find(|name| {
                name.strip_prefix("secrets.")
                    .and_then(|rest| rest.split('.').next())
                    .is_some_and(|var| !vars.contains_key(var))
            });
            Err(match undefined {
                Some(name) => FileError::Undefined {
                    path: plan.path.clone(),
                    key: plan.key.clone(),
                    name: name.split('.').take(2).collect::<Vec<_>>().join("."),
                },
                None => failed(&error),
            })
        }
        Err(error) => Err(failed(&error)),
    }
}

/// A template's output, every buffer it outgrows wiped as it grows.
#[derive(Default)]
struct Wiped(Zeroizing<Vec<u8>>);

impl Write for Wiped {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let needed = self.0.len() + bytes.len();
        if needed > self.0.capacity() {
            let capacity = needed.max(2 * self.0.capacity()).max(4096);
            let mut grown = Zeroizing::new(Vec::with_capacity(capacity));
            grown.extend_from_slice(&self.0);
            self.0 = grown;
        }
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Checks every file as [`write_all`] does first, writing nothing: the boot asks before the
/// checkout, so that an owner that does not exist, an unsafe directory or a disk path fails it
/// before anything changes, the release link included.
pub fn check_all(files: &[Rendered]) -> Result<(), FileError> {
    files.iter().try_for_each(|file| check(file).map(drop))
}

/// Writes each file whose contents, owner, group or mode differ; returns those. Every file is
/// checked before any is written (and the env file is written after them), so a boot that fails
/// here leaves the files before it, and the service, as they were.
pub fn write_all(files: &[Rendered]) -> Result<Vec<Changed>, FileError> {
    let owners: Vec<Owner> = files.iter().map(check).collect::<Result<_, _>>()?;
    let mut changed = Vec::new();
    for (file, owner) in files.iter().zip(&owners) {
        if write(file, owner)? {
            tracing::info!(path = %file.plan.path.display(), "wrote secret file");
            changed.push(Changed {
                path: file.plan.path.clone(),
                on_change: file.plan.on_change,
            });
        }
    }
    Ok(changed)
}

struct Owner {
    uid: Uid,
    gid: Gid,
}

/// The file's owner and group exist, every directory on its way that exists is safe, and the
/// file system it lands on is memory-backed unless the entry allows disk. Creates nothing.
fn check(file: &Rendered) -> Result<Owner, FileError> {
    let plan = &file.plan;
    let lookup = |error: Errno| FileError::Io {
        action: "look up the owner and group of",
        path: plan.path.clone(),
        source: error.into(),
    };
    let unknown = |field: &'static str, name: &str| FileError::Unknown {
        path: plan.path.clone(),
        key: plan.key.clone(),
        field,
        name: name.to_string(),
    };
    let uid = User::from_name(&plan.owner)
        .map_err(lookup)?
        .ok_or_else(|| unknown("owner", &plan.owner))?
        .uid;
    let gid = Group::from_name(&plan.group)
        .map_err(lookup)?
        .ok_or_else(|| unknown("group", &plan.group))?
        .gid;
    let (dir, deepest) = open_parent(plan, false)?;
    // A directory in the file's place would fail its rename after the files before it were
    // written: refused here, with the other checks.
    let name = plan.path.file_name().unwrap_or_default();
    if plan.path.parent() == Some(deepest.as_path()) {
        let found = nix::sys::stat::fstatat(&dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW);
        if found.is_ok_and(|stat| stat.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR) {
            return Err(FileError::Directory {
                path: plan.path.clone(),
                key: plan.key.clone(),
            });
        }
    }
    // A directory still to be made lands on the file system of the deepest one there is.
    if !plan.persistent {
        crate::envfile::check_memory_backed(&deepest, false).map_err(|e| match e {
            crate::envfile::EnvFileError::NotMemoryBacked { dir } => FileError::OnDisk {
                path: plan.path.clone(),
                key: plan.key.clone(),
                dir,
            },
            other => FileError::Io {
                action: "inspect the file system of",
                path: deepest.clone(),
                source: io::Error::other(other.to_string()),
            },
        })?;
    }
    Ok(Owner { uid, gid })
}

/// Directories are opened without following a link, and never as anything else.
const DIRECTORY: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// The file's directory, opened from `/` one component at a time, each checked
/// ([`check_directory`]). A missing one is made (root's, 0755) when `create`; otherwise the
/// deepest that exists is returned, with its path.
fn open_parent(plan: &FilePlan, create: bool) -> Result<(File, PathBuf), FileError> {
    let io_error = |action, path: &Path, source: Errno| FileError::Io {
        action,
        path: path.to_path_buf(),
        source: source.into(),
    };
    let root = Path::new("/");
    let mut at = root.to_path_buf();
    let mut dir = File::open(root).map_err(|source| FileError::Io {
        action: "open",
        path: at.clone(),
        source,
    })?;
    check_directory(plan, &dir, &at)?;
    let parent = plan.path.parent().unwrap_or(root);
    for name in parent.iter().skip(1) {
        let next = at.join(name);
        let opened = match openat(&dir, name, DIRECTORY, Mode::empty()) {
            Ok(fd) => File::from(fd),
            Err(Errno::ENOENT) if create => make_directory(&dir, name, &next)?,
            Err(Errno::ENOENT) => return Ok((dir, at)),
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                return Err(FileError::Unsafe {
                    path: plan.path.clone(),
                    dir: next,
                    why: "is a symbolic link, or not a directory".into(),
                    fix: "bootagent follows no link on the way to a secret file: make it a \
                          directory owned by root, or point the path at the real directory"
                        .into(),
                })
            }
            Err(e) => return Err(io_error("open", &next, e)),
        };
        check_directory(plan, &opened, &next)?;
        dir = opened;
        at = next;
    }
    Ok((dir, at))
}

/// A directory made on the way: root's, 0755 whatever the umask.
fn make_directory(parent: &File, name: &OsStr, path: &Path) -> Result<File, FileError> {
    let failed = |source: io::Error| FileError::Io {
        action: "create the directory",
        path: path.to_path_buf(),
        source,
    };
    let made = match mkdirat(parent, name, Mode::from_bits_truncate(0o755)) {
        Ok(()) => true,
        // Made by someone else meanwhile: opened and checked like any other, never adopted
        // (given to root and made 0755, when another user made it, perhaps with more inside).
        Err(Errno::EEXIST) => false,
        Err(e) => return Err(failed(e.into())),
    };
    let dir =
        File::from(openat(parent, name, DIRECTORY, Mode::empty()).map_err(|e| failed(e.into()))?);
    if !made {
        return Ok(dir);
    }
    std::os::unix::fs::fchown(&dir, Some(0), Some(0)).map_err(failed)?;
    dir.set_permissions(Permissions::from_mode(0o755))
        .map_err(failed)?;
    Ok(dir)
}

/// Only root may change what a directory on the way holds: owned by root, and writable by no
/// group or other user. A root-owned sticky directory (`/tmp`, `/dev/shm`) is safe though
/// anyone may write in it: no one but root can rename or remove root's entries there, and the
/// entry below is opened without following a link and checked in turn.
fn check_directory(plan: &FilePlan, dir: &File, path: &Path) -> Result<(), FileError> {
    let meta = dir.metadata().map_err(|source| FileError::Io {
        action: "inspect",
        path: path.to_path_buf(),
        source,
    })?;
    let unsafe_dir = |why: String, fix: String| FileError::Unsafe {
        path: plan.path.clone(),
        dir: path.to_path_buf(),
        why,
        fix,
    };
    let shown = path.display();
    if meta.uid() != 0 {
        return Err(unsafe_dir(
            format!("is owned by uid {}, not root", meta.uid()),
            format!("make it root's (chown root {shown}), or write the file elsewhere"),
        ));
    }
    let sticky = meta.mode() & 0o1000 != 0;
    if meta.mode() & 0o022 != 0 && !sticky {
        return Err(unsafe_dir(
            format!(
                "is writable by its group or by others (mode {:04o})",
                meta.mode() & 0o7777
            ),
            format!("take that away (chmod go-w {shown}), or write the file elsewhere"),
        ));
    }
    Ok(())
}

/// Replaces the file unless it already holds the contents with the owner, group and mode;
/// whether it wrote.
fn write(file: &Rendered, owner: &Owner) -> Result<bool, FileError> {
    let plan = &file.plan;
    let (dir, _) = open_parent(plan, true)?;
    let name = plan.path.file_name().unwrap_or_default();
    if unchanged(&dir, name, file, owner) {
        return Ok(false);
    }
    let temp = format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id());
    // Only a killed earlier boot with the same pid can have left this name: stale.
    let _ = unlinkat(&dir, temp.as_str(), UnlinkatFlags::NoRemoveDir);
    let result = (|| -> io::Result<()> {
        // Created with no permission bits, then given the mode and the owner before the first
        // byte: never a moment when more can read it than the config allows.
        let created =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut out = File::from(openat(&dir, temp.as_str(), created, Mode::empty())?);
        out.set_permissions(Permissions::from_mode(plan.mode))?;
        std::os::unix::fs::fchown(&out, Some(owner.uid.as_raw()), Some(owner.gid.as_raw()))?;
        out.write_all(&file.contents)?;
        out.sync_all()?;
        renameat(&dir, temp.as_str(), &dir, name)?;
        dir.sync_all()
    })();
    if result.is_err() {
        let _ = unlinkat(&dir, temp.as_str(), UnlinkatFlags::NoRemoveDir);
    }
    result.map_err(|source| FileError::Io {
        action: "write",
        path: plan.path.clone(),
        source,
    })?;
    Ok(true)
}

/// Whether `name` in `dir` is already the file: a regular file (not a link) with the owner,
/// group, mode and contents.
fn unchanged(dir: &File, name: &OsStr, file: &Rendered, owner: &Owner) -> bool {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let Ok(fd) = openat(dir, name, flags, Mode::empty()) else {
        return false;
    };
    let existing = File::from(fd);
    let Ok(meta) = existing.metadata() else {
        return false;
    };
    let wanted = &file.contents;
    if !meta.is_file()
        || meta.uid() != owner.uid.as_raw()
        || meta.gid() != owner.gid.as_raw()
        || meta.mode() & 0o7777 != file.plan.mode
        || meta.len() != wanted.len() as u64
    {
        return false;
    }
    let mut now = Zeroizing::new(Vec::with_capacity(wanted.len() + 1));
    let read = existing.take(wanted.len() as u64 + 1).read_to_end(&mut now);
    read.is_ok() && *now == **wanted
}

#[cfg(test)]
mod race_tests {
    use super::*;

    #[test]
    fn a_directory_someone_else_made_first_is_not_adopted() {
        // open_parent found no directory, then another user (in a sticky /tmp or /dev/shm)
        // made one with that name before mkdirat: it must be judged as found, not given to
        // root, made 0755 and written into.
        let shm = tempfile::tempdir_in("/dev/shm").unwrap();
        std::fs::set_permissions(shm.path(), Permissions::from_mode(0o1777)).unwrap();
        let theirs = shm.path().join("tls");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::set_permissions(&theirs, Permissions::from_mode(0o777)).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let parent = File::open(shm.path()).unwrap();
        let dir = make_directory(&parent, OsStr::new("tls"), &theirs).unwrap();
        let plan = FilePlan {
            key: "files[0]".into(),
            path: theirs.join("app.key"),
            source: crate::plan::FileSource::Template(String::new()),
            owner: "root".into(),
            group: "root".into(),
            mode: 0o600,
            on_change: OnChange::Restart,
            persistent: false,
        };
        let refused = check_directory(&plan, &dir, &theirs)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("is owned by uid 65534"), "{refused}");
        let meta = std::fs::metadata(&theirs).unwrap();
        assert_eq!(
            (meta.uid(), meta.mode() & 0o7777),
            (65534, 0o777),
            "taken over: chowned to root and chmodded"
        );
    }
}
