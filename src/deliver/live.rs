//! `bootagent credentials sync UNIT`: gives a running unit the credentials bootagent last wrote.
//! systemd copies a unit's credentials into its own directory (`/run/credentials/UNIT`, a
//! read-only ramfs) only when the unit starts; systemd 252 does not refresh them on reload (newer
//! systemd does, PR #40093). So that a reload or a signal can deliver new values on any systemd,
//! this copies each credential the unit's drop-in names from bootagent's store into that
//! directory, atomically, with the owner and mode systemd gave it. It runs in its own unit
//! (`bootagent-credentials@.service`), the only one given the right to remount.

use std::path::{Component, Path, PathBuf};

use nix::mount::MsFlags;

use crate::config::PathsConfig;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{unit:?} is not a service unit name")]
    NotAUnit { unit: String },
    #[error(
        "{unit} has no bootagent drop-in naming credentials ({path}): only a unit bootagent \
         started with secrets.deliver = \"credentials\" or \"both\" has any to sync"
    )]
    NoDropIn { unit: String, path: PathBuf },
    #[error(
        "the drop-in {drop_in} loads credential {name} from {source_path}, which is not in \
         bootagent's store {store}: refusing to copy it"
    )]
    Foreign {
        drop_in: PathBuf,
        name: String,
        source_path: PathBuf,
        store: PathBuf,
    },
    #[error(
        "{unit} has no credentials directory at {dir}: it is not running, or systemd keeps it \
         out of reach; restart {unit} to give it its credentials"
    )]
    NotLive { unit: String, dir: PathBuf },
    #[error(
        "{unit} did not start with credential {name}: systemd adds a credential only when the \
         unit starts; restart {unit}"
    )]
    New { unit: String, name: String },
    #[error("failed to {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Copies every credential `unit`'s drop-in loads from bootagent's store into the unit's own
/// credentials directory; how many. The directory is writable only for the copy: it is made
/// read-only again whatever happens.
pub fn sync(paths: &PathsConfig, unit: &str) -> Result<usize, SyncError> {
    let valid = unit.ends_with(".service")
        && !unit.starts_with('.')
        && !unit.contains('/')
        && unit.len() <= 255;
    if !valid {
        return Err(SyncError::NotAUnit {
            unit: unit.to_string(),
        });
    }
    let drop_in = paths.drop_in(unit);
    let text = std::fs::read_to_string(&drop_in).map_err(|_| SyncError::NoDropIn {
        unit: unit.to_string(),
        path: drop_in.clone(),
    })?;
    let store = paths.run_dir.join("credentials");
    let mut sources = Vec::new();
    for line in text.lines() {
        let Some((name, source)) = line
            .strip_prefix("LoadCredential=")
            .and_then(|value| value.split_once(':'))
        else {
            continue;
        };
        let source = PathBuf::from(source);
        let plain = source
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        let in_store = plain
            && source.file_name().is_some_and(|file| file == name)
            && source.parent().and_then(Path::parent) == Some(store.as_path());
        if !in_store {
            return Err(SyncError::Foreign {
                drop_in,
                name: name.to_string(),
                source_path: source,
                store,
            });
        }
        sources.push((name.to_string(), source));
    }
    let live = super::live_credentials_dir(unit);
    if !std::fs::symlink_metadata(&live).is_ok_and(|meta| meta.is_dir()) {
        return Err(SyncError::NotLive {
            unit: unit.to_string(),
            dir: live,
        });
    }
    remount(&live, false)?;
    let copied = copy_all(unit, &live, &sources);
    let sealed = remount(&live, true);
    let copied = copied?;
    sealed?;
    Ok(copied)
}

fn copy_all(unit: &str, live: &Path, sources: &[(String, PathBuf)]) -> Result<usize, SyncError> {
    use std::os::unix::fs::MetadataExt;
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| SyncError::Io {
            action,
            path,
            source,
        }
    };
    for (name, source) in sources {
        let target = live.join(name);
        let Ok(meta) = std::fs::symlink_metadata(&target) else {
            return Err(SyncError::New {
                unit: unit.to_string(),
                name: name.clone(),
            });
        };
        let value = super::read_delivered(source).map_err(io("read", source))?;
        let owner = Some((
            nix::unistd::Uid::from_raw(meta.uid()),
            nix::unistd::Gid::from_raw(meta.gid()),
        ));
        crate::atomic::write_file_owned(&target, &value, meta.mode() & 0o777, owner)
            .map_err(io("write", &target))?;
    }
    Ok(sources.len())
}

/// The flags systemd mounts a credentials directory with, read-only or not.
fn remount(dir: &Path, read_only: bool) -> Result<(), SyncError> {
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    flags |= MsFlags::MS_NOEXEC;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    nix::mount::mount(None::<&str>, dir, None::<&str>, flags, None::<&str>).map_err(|errno| {
        SyncError::Io {
            action: if read_only {
                "make read-only again"
            } else {
                "make writable for the copy"
            },
            path: dir.to_path_buf(),
            source: errno.into(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(run: &Path) -> PathsConfig {
        PathsConfig {
            run_dir: run.join("bootagent"),
            state_dir: run.join("state"),
            systemd_runtime_dir: run.join("systemd"),
            allow_persistent_env_file: true,
            file_roots: vec![],
        }
    }

    #[test]
    fn only_a_service_unit_with_credentials_from_the_store_is_synced() {
        let run = tempfile::tempdir().unwrap();
        let paths = paths(run.path());
        for unit in ["../x.service", "x.socket", ".service"] {
            let error = sync(&paths, unit).unwrap_err();
            assert!(
                matches!(error, SyncError::NotAUnit { .. }),
                "{unit}: {error}"
            );
        }
        let error = sync(&paths, "app.service").unwrap_err();
        assert!(matches!(error, SyncError::NoDropIn { .. }), "{error}");
        let drop_in = paths.drop_in("app.service");
        std::fs::create_dir_all(drop_in.parent().unwrap()).unwrap();
        std::fs::write(&drop_in, "[Service]\nLoadCredential=KEY:/etc/shadow\n").unwrap();
        let error = sync(&paths, "app.service").unwrap_err().to_string();
        assert!(
            error.contains("/etc/shadow") && error.contains("refusing"),
            "{error}"
        );
        let climbing = format!(
            "[Service]\nLoadCredential=KEY:{}/credentials/../KEY\n",
            paths.run_dir.display()
        );
        std::fs::write(&drop_in, climbing).unwrap();
        let error = sync(&paths, "app.service").unwrap_err();
        assert!(matches!(error, SyncError::Foreign { .. }), "{error}");
    }
}
