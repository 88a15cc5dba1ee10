//! Exec mode: bootagent becomes the service, as the service user.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::unistd::{Gid, Uid, User};

use super::environment::{self, DEFAULT_PATH};
use super::error::ServiceError;
use crate::envfile::Environment;
use crate::plan::Plan;

/// Exec mode: the service's command, ready to replace this process.
pub struct ExecCommand {
    command: Command,
    program: String,
    target: User,
}

/// The service's command as the service user, in the release, with `variables` (the env file's)
/// as its environment.
pub fn prepare_exec(plan: &Plan, variables: &Environment) -> Result<ExecCommand, ServiceError> {
    let user_name = &plan.service.user;
    let target = environment::user(user_name)?;
    let current = Uid::current();
    if !current.is_root() && current != target.uid {
        return Err(ServiceError::CannotSwitchUser {
            user: user_name.clone(),
            uid: current.as_raw(),
        });
    }
    let (program, args) = plan
        .service
        .command
        .split_first()
        .expect("config validation requires a command in exec mode");
    check_executable(program, &plan.git.dir, &target).map_err(|reason| {
        ServiceError::NotExecutable {
            program: program.clone(),
            user: user_name.clone(),
            reason,
        }
    })?;
    let mut command = Command::new(program);
    command.args(args).current_dir(&plan.git.dir);
    let vars = variables
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()));
    environment::set(&mut command, &target, vars);
    Ok(ExecCommand {
        command,
        program: program.clone(),
        target,
    })
}

impl ExecCommand {
    /// Becomes the service, as its user. Returns only on failure, with bootagent's own ids back,
    /// so that the failure can still be recorded in files only bootagent may write.
    pub fn exec(mut self) -> ServiceError {
        let own = OwnIds::current();
        let source = match become_user(&self.target) {
            Ok(()) => self.command.exec(),
            Err(errno) => errno.into(),
        };
        if let Err(errno) = own.restore() {
            tracing::error!(error = %errno, "could not take bootagent's own user back after the failed exec");
        }
        ServiceError::Exec {
            program: self.program,
            source,
        }
    }
}

/// Whether `user` can execute `program` (a path, relative to `dir`, or a name looked up in
/// [`DEFAULT_PATH`]), told before the boot says it succeeded: once privileges are dropped for
/// the exec, a failure could no longer be recorded in the root-owned status.
fn check_executable(program: &str, dir: &Path, user: &User) -> Result<(), String> {
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![dir.join(program)]
    } else {
        DEFAULT_PATH
            .split(':')
            .map(|entry| Path::new(entry).join(program))
            .collect()
    };
    let Some(metadata) = candidates
        .iter()
        .find_map(|path| std::fs::metadata(path).ok().filter(|m| m.is_file()))
    else {
        return Err(if program.contains('/') {
            "no such file".to_string()
        } else {
            format!("not found in {DEFAULT_PATH}")
        });
    };
    // The permission bits that apply to the user, as the kernel picks them (its only group
    // after the exec is its primary one). Root may execute whatever has any execute bit.
    let mode = metadata.mode();
    let allowed = if user.uid.is_root() {
        mode & 0o111 != 0
    } else if metadata.uid() == user.uid.as_raw() {
        mode & 0o100 != 0
    } else if metadata.gid() == user.gid.as_raw() {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    };
    if allowed {
        Ok(())
    } else {
        Err(format!(
            "it is not executable for this user (mode {:o})",
            mode & 0o7777
        ))
    }
}

/// Takes the service user's ids for the exec while keeping bootagent's own as the saved ids:
/// execve copies the effective ids over the saved ones, so the service holds none of
/// bootagent's, while a failed exec can take them back. A saved id of 0 also keeps the ambient
/// capabilities, which a plain setuid would clear: they are cleared here.
fn become_user(user: &User) -> nix::Result<()> {
    if Uid::current() == user.uid && Gid::current() == user.gid {
        return Ok(());
    }
    nix::unistd::setgroups(&[user.gid])?;
    nix::unistd::setresgid(user.gid, user.gid, Gid::effective())?;
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL reads no pointer; its unused arguments must be 0.
    let cleared = unsafe {
        nix::libc::prctl(
            nix::libc::PR_CAP_AMBIENT,
            nix::libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    match nix::errno::Errno::result(cleared) {
        // A kernel older than 4.3 has no ambient capabilities to clear.
        Ok(_) | Err(nix::errno::Errno::EINVAL) => {}
        Err(errno) => return Err(errno),
    }
    nix::unistd::setresuid(user.uid, user.uid, Uid::effective())
}

/// bootagent's ids before [`become_user`].
#[derive(PartialEq)]
struct OwnIds {
    uid: Uid,
    gid: Gid,
    groups: nix::Result<Vec<Gid>>,
}

impl OwnIds {
    fn current() -> OwnIds {
        OwnIds {
            uid: Uid::effective(),
            gid: Gid::effective(),
            groups: nix::unistd::getgroups(),
        }
    }

    /// The user first: only with it back may the groups change. Unchanged ids stay as they
    /// are (an unprivileged bootagent may not even set its own groups).
    fn restore(&self) -> nix::Result<()> {
        if OwnIds::current() == *self {
            return Ok(());
        }
        nix::unistd::setresuid(self.uid, self.uid, self.uid)?;
        nix::unistd::setresgid(self.gid, self.gid, self.gid)?;
        match &self.groups {
            Ok(groups) => nix::unistd::setgroups(groups),
            Err(errno) => Err(*errno),
        }
    }
}
