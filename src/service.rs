//! Starting the service: under systemd (a runtime drop-in, then restart and wait), or by
//! replacing bootagent with the service's command (containers, tests).

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use nix::sys::signal::{killpg, raise, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::{Gid, Pid, Uid, User};

use crate::envfile::Environment;
use crate::plan::Plan;
use crate::retry::{self, Look, Unready};

const SYSTEMCTL: &str = "systemctl";
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const POLL_INTERVAL: Duration = Duration::from_millis(200);
const SETTLE_POLL_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("user {user} does not exist; create it in the image or set service.user")]
    UnknownUser { user: String },

    #[error("cannot run the service as {user}: bootagent runs unprivileged as uid {uid}; run it as root")]
    CannotSwitchUser { user: String, uid: u32 },
    #[error("failed to write the systemd drop-in {path}")]
    DropIn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`systemctl {args}` failed: {message}{hint}")]
    Systemctl {
        args: String,
        message: String,
        hint: String,
    },
    #[error(
        "{unit} is {state} (result: {result}) after its start; see `journalctl -u {unit}` for \
         why it stopped"
    )]
    NotActive {
        unit: String,
        state: String,
        result: String,
    },
    #[error(
        "{unit} started but did not stay up: within {settle} it became {state} (result: \
         {result}){restarted}; see `journalctl -u {unit}` for why it exits (bad config, a missing \
         file, a port in use)"
    )]
    DidNotStay {
        unit: String,
        settle: String,
        state: String,
        result: String,
        restarted: String,
    },
    #[error(
        "{unit} was still {state} after {waited}; see `journalctl -u {unit}` for what its start \
         waits on, and raise service.start_timeout if it needs longer"
    )]
    StartTimeout {
        unit: String,
        state: String,
        waited: String,
    },
    #[error(
        "{program} cannot be run as {user}: {reason}; fix service.command, or the file's location \
         or mode"
    )]
    NotExecutable {
        program: String,
        user: String,
        reason: String,
    },
    #[error("failed to run {program}")]
    Exec {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// The outcome of a systemd-mode start.
#[derive(Debug)]
pub struct UnitReport {
    pub state: String,
    pub restarted: bool,
}

/// Writes the drop-in, reloads systemd if it changed, and restarts the unit when anything it
/// runs with changed or it is not active. Waits until the unit is active or has failed; after a
/// restart, the unit must then stay active for `settle`.
pub async fn start_systemd(
    plan: &Plan,
    env_changed: bool,
    code_changed: bool,
    timeout: Duration,
    settle: Duration,
) -> Result<UnitReport, ServiceError> {
    let unit = &plan.service.unit;
    let drop_in = plan
        .service
        .drop_in
        .as_deref()
        .expect("systemd mode has a drop-in");
    let drop_in_changed = write_drop_in(drop_in, &render_drop_in(plan))?;
    if drop_in_changed {
        systemctl(&["daemon-reload"]).await?;
    }
    let state = unit_state(unit).await?.active;
    let restart = state != "active" || env_changed || code_changed || drop_in_changed;
    if state == "failed" {
        // A unit that crashed repeatedly may have hit its start limit; a new boot deserves a
        // fresh count, as an operator running `systemctl reset-failed` would give it.
        systemctl(&["reset-failed", unit]).await?;
    }
    let timed_out = |state: &UnitState| ServiceError::StartTimeout {
        unit: unit.clone(),
        state: state.describe(),
        waited: humantime::format_duration(timeout).to_string(),
    };
    let began = std::time::Instant::now();
    if restart {
        tracing::info!(%unit, "restarting the unit");
        // `systemctl restart` waits for the start job: for a unit that hangs in its start, up to
        // the unit's own TimeoutStartSec. The boot waits only service.start_timeout.
        match tokio::time::timeout(timeout, systemctl(&["restart", unit])).await {
            Ok(restarted) => drop(restarted?),
            Err(_) => return Err(timed_out(&unit_state(unit).await?)),
        }
    }
    let left = timeout.saturating_sub(began.elapsed());
    let started = retry::poll(POLL_INTERVAL, left, || async {
        match unit_state(unit).await {
            Err(e) => Look::Failed(e),
            Ok(current) => match current.active.as_str() {
                "active" => Look::Ready(current),
                "activating" | "reloading" => Look::Pending(current),
                _ => Look::Failed(ServiceError::NotActive {
                    unit: unit.clone(),
                    state: current.describe(),
                    result: current.result,
                }),
            },
        }
    })
    .await;
    let current = match started {
        Ok(current) => current,
        Err(Unready::Failed(e)) => return Err(e),
        Err(Unready::TimedOut(current)) => return Err(timed_out(&current)),
    };
    if restart {
        stays_up(unit, &current, settle).await?;
    }
    Ok(UnitReport {
        state: current.active,
        restarted: restart,
    })
}

/// A service that exits right after it started is "active" for a moment (Type=simple counts the
/// fork as started), and with Restart= it may be active again by the next look. So: it must stay
/// active, without systemd restarting it, for `settle`.
async fn stays_up(unit: &str, started: &UnitState, settle: Duration) -> Result<(), ServiceError> {
    let held = retry::poll(SETTLE_POLL_INTERVAL, settle, || async {
        let now = match unit_state(unit).await {
            Ok(now) => now,
            Err(e) => return Look::Failed(e),
        };
        let restarts = now.restarts.saturating_sub(started.restarts);
        if now.active != "active" || restarts > 0 {
            return Look::Failed(ServiceError::DidNotStay {
                unit: unit.to_string(),
                settle: humantime::format_duration(settle).to_string(),
                state: now.describe(),
                result: now.result,
                restarted: match restarts {
                    0 => String::new(),
                    1 => " and systemd restarted it once".to_string(),
                    n => format!(" and systemd restarted it {n} times"),
                },
            });
        }
        Look::<std::convert::Infallible, _, _>::Pending(())
    })
    .await;
    // Still up when settle ran out: that is what was asked.
    match held {
        Err(Unready::TimedOut(())) => Ok(()),
        Err(Unready::Failed(e)) => Err(e),
        Ok(never) => match never {},
    }
}

fn render_drop_in(plan: &Plan) -> String {
    format!(
        "# Written by bootagent at boot; removed with /run at shutdown.\n\
         [Service]\n\
         EnvironmentFile={}\n\
         WorkingDirectory={}\n\
         User={}\n",
        plan.env_file.display(),
        plan.git.dir.display(),
        plan.service.user
    )
}

fn write_drop_in(path: &Path, contents: &str) -> Result<bool, ServiceError> {
    let error = |source| ServiceError::DropIn {
        path: path.to_path_buf(),
        source,
    };
    if std::fs::read_to_string(path).ok().as_deref() == Some(contents) {
        return Ok(false);
    }
    std::fs::create_dir_all(path.parent().expect("a drop-in lives in a directory"))
        .map_err(error)?;
    crate::atomic::write_file(path, contents.as_bytes(), 0o644).map_err(error)?;
    Ok(true)
}

/// Stops the unit and waits for it to stop (as `systemctl stop` does).
pub async fn stop_systemd(unit: &str) -> Result<(), ServiceError> {
    systemctl(&["stop", unit]).await.map(drop)
}

/// What systemd says of a unit.
#[derive(Debug)]
pub struct UnitState {
    /// ActiveState: `active`, `activating`, `failed` …
    pub active: String,
    /// Result: `success`, `exit-code` …
    pub result: String,
    /// SubState: `running`, `auto-restart` (exited, and Restart= brings it back) …
    pub sub: String,
    /// NRestarts: how often Restart= restarted it (0 on systemd before 235, which lacks it).
    pub restarts: u64,
}

impl UnitState {
    /// The state as `systemctl status` shows it: `activating (auto-restart)`, `failed`.
    fn describe(&self) -> String {
        if self.sub == self.active {
            self.active.clone()
        } else {
            format!("{} ({})", self.active, self.sub)
        }
    }
}

pub async fn unit_state(unit: &str) -> Result<UnitState, ServiceError> {
    let out = systemctl(&[
        "show",
        "--property=ActiveState,SubState,Result,NRestarts",
        unit,
    ])
    .await?;
    let value = |key: &str| {
        out.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or("unknown")
            .to_string()
    };
    Ok(UnitState {
        active: value("ActiveState"),
        result: value("Result"),
        sub: value("SubState"),
        restarts: value("NRestarts").parse().unwrap_or(0),
    })
}

async fn systemctl(args: &[&str]) -> Result<String, ServiceError> {
    let failed = |message: String| ServiceError::Systemctl {
        args: args.join(" "),
        hint: systemctl_hint(args.last().unwrap_or(&""), &message),
        message,
    };
    let output = tokio::process::Command::new(SYSTEMCTL)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| failed(e.to_string()))?;
    if !output.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The fix for what systemd refuses most often, as systemctl words it.
fn systemctl_hint(unit: &str, message: &str) -> String {
    if message.contains("not found") {
        format!(
            "; install {unit} in the image, or set service.unit to the unit that runs the service"
        )
    } else if message.contains("bad unit file setting") {
        format!("; `systemd-analyze verify {unit}` names the setting to fix")
    } else {
        String::new()
    }
}

/// Exec mode: the service's command, ready to replace this process.
pub struct ExecCommand {
    command: Command,
    program: String,
    target: User,
}

pub fn prepare_exec(plan: &Plan, environment: &Environment) -> Result<ExecCommand, ServiceError> {
    let user_name = &plan.service.user;
    let target =
        User::from_name(user_name)
            .ok()
            .flatten()
            .ok_or_else(|| ServiceError::UnknownUser {
                user: user_name.clone(),
            })?;
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
    command
        .args(args)
        .current_dir(&plan.git.dir)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", &target.dir)
        .env("USER", &target.name)
        .env("LOGNAME", &target.name)
        .envs(
            environment
                .iter()
                .map(|(name, value)| (OsStr::new(name), OsStr::new(value.as_str()))),
        );
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

/// A deploy hook that did not succeed.
#[derive(Debug, thiserror::Error)]
#[error(
    "{hook} ({program}) {failure}; its output is in the journal (or bootagent's stderr); nothing \
     was switched: fix it, or clear {hook}"
)]
pub struct HookError {
    hook: &'static str,
    program: String,
    failure: String,
}

/// A deploy hook: `argv` from the config, run in `dir` as `user` with exactly `vars` (the
/// service's environment for `deploy.pre_start`, the outcome for `deploy.post`) and a minimal
/// PATH, HOME, USER and LOGNAME. No secret goes into argv; its output goes where bootagent's
/// goes (the journal under systemd). It runs in a process group of its own, which is stopped
/// whole (see [`HookGroup`]) when `timeout` passes, once the hook exits, when the boot is
/// dropped and when bootagent is told to stop: a migration the hook started in the background
/// never runs beside the next one.
pub async fn run_hook<'a>(
    hook: &'static str,
    argv: &[String],
    dir: &Path,
    user: &str,
    vars: impl IntoIterator<Item = (&'a str, &'a str)>,
    timeout: Duration,
) -> Result<(), HookError> {
    let (program, args) = argv
        .split_first()
        .expect("config validation: a hook has a program");
    let failed = |failure: String| HookError {
        hook,
        program: program.clone(),
        failure,
    };
    let target = User::from_name(user)
        .ok()
        .flatten()
        .ok_or_else(|| failed(format!("cannot run as {user}: no such user")))?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", &target.dir)
        .env("USER", &target.name)
        .env("LOGNAME", &target.name)
        .envs(vars)
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    if Uid::current() != target.uid {
        // As root, std also drops the supplementary groups before it switches.
        command.uid(target.uid.as_raw()).gid(target.gid.as_raw());
    }
    // Its own group no longer dies with bootagent's (a SIGKILL to bootagent's group, from
    // `timeout` or a job runner): the hook itself is killed when bootagent dies. The runtime
    // is single-threaded, so the thread that spawns it lives as long as bootagent.
    // SAFETY: prctl is async-signal-safe; it runs after the uid switch, which would clear it.
    unsafe {
        command.pre_exec(|| {
            match nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL, 0, 0, 0) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
    tracing::info!(hook, program = %program, dir = %dir.display(), "running the hook");
    let mut group = HookGroup::watch_stop_signals();
    let mut child = command
        .spawn()
        .map_err(|e| failed(format!("could not be started: {e}")))?;
    group.started(&child);
    let waited = tokio::time::timeout(timeout, child.wait()).await;
    let left_running = group.end(&mut child).await;
    let status = match waited {
        Ok(status) => status.map_err(|e| failed(format!("could not be waited for: {e}")))?,
        Err(_) => {
            return Err(failed(format!(
                "did not finish within {} (deploy.hook_timeout) and was killed with all it started",
                humantime::format_duration(timeout)
            )));
        }
    };
    if left_running {
        tracing::warn!(
            hook,
            program = %program,
            "the hook left processes running when it exited; they were stopped (a hook must wait \
             for what it starts)"
        );
    }
    match status.code() {
        Some(0) => Ok(()),
        Some(code) => Err(failed(format!("exited with code {code}"))),
        None => Err(failed(format!("was killed ({status})"))),
    }
}

/// How long a hook's processes have after SIGTERM to end before they get SIGKILL.
const HOOK_KILL_GRACE: Duration = Duration::from_secs(5);

/// The process group of the hook running now (0: none), for [`stop_hook_then_die`]. Hooks run
/// one at a time.
static RUNNING_HOOK_GROUP: AtomicI32 = AtomicI32::new(0);

/// The signals that stop bootagent from a terminal, systemd or SSM: the hook's group is no
/// longer in bootagent's, so it would not get them.
const STOP_SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

/// A running hook's process group (its pgid is the hook's pid). Everything the hook starts
/// stays in it unless it leaves on purpose (setsid). While it exists, a stop signal to
/// bootagent kills the group before bootagent dies of it; dropped before [`HookGroup::end`] (the
/// boot was cancelled), it kills the group.
struct HookGroup {
    pgid: Pid,
    ended: bool,
    previous: Vec<(Signal, SigAction)>,
}

impl HookGroup {
    /// Before the hook starts, so that no stop signal falls between its start and the watch.
    fn watch_stop_signals() -> HookGroup {
        let on_stop = SigAction::new(
            SigHandler::Handler(stop_hook_then_die),
            SaFlags::SA_RESETHAND,
            SigSet::empty(),
        );
        let previous = STOP_SIGNALS
            .iter()
            // SAFETY: the handler calls only async-signal-safe functions (kill, raise).
            .filter_map(|&signal| Some((signal, unsafe { sigaction(signal, &on_stop) }.ok()?)))
            .collect();
        HookGroup {
            pgid: Pid::from_raw(0),
            ended: false,
            previous,
        }
    }

    fn started(&mut self, hook: &tokio::process::Child) {
        self.pgid = Pid::from_raw(hook.id().map_or(0, |pid| pid as i32));
        RUNNING_HOOK_GROUP.store(self.pgid.as_raw(), Ordering::SeqCst);
    }

    /// Sends `signal` (None: only asks) to the group; whether any process of it was left.
    fn signal(&self, signal: impl Into<Option<Signal>>) -> bool {
        self.pgid.as_raw() > 0 && killpg(self.pgid, signal).is_ok()
    }

    /// Stops what is left of the group — SIGTERM, [`HOOK_KILL_GRACE`] to end (the hook itself
    /// reaped meanwhile), then SIGKILL — and waits for the hook. Whether anything was left.
    async fn end(mut self, child: &mut tokio::process::Child) -> bool {
        let left = self.signal(Signal::SIGTERM);
        if left {
            let _ = tokio::time::timeout(HOOK_KILL_GRACE, async {
                let _ = child.wait().await;
                while self.signal(None) {
                    tokio::time::sleep(SETTLE_POLL_INTERVAL).await;
                }
            })
            .await;
            self.signal(Signal::SIGKILL);
        }
        let _ = child.wait().await;
        self.ended = true;
        left
    }
}

impl Drop for HookGroup {
    fn drop(&mut self) {
        if !self.ended {
            self.signal(Signal::SIGKILL);
        }
        RUNNING_HOOK_GROUP.store(0, Ordering::SeqCst);
        for (signal, action) in &self.previous {
            // SAFETY: puts back the action that was there before the hook ran.
            let _ = unsafe { sigaction(*signal, action) };
        }
    }
}

/// A stop signal while a hook runs: kill the hook's group, then die of the signal as bootagent
/// would have (SA_RESETHAND put the default action back).
extern "C" fn stop_hook_then_die(signal: nix::libc::c_int) {
    let group = RUNNING_HOOK_GROUP.load(Ordering::SeqCst);
    if group > 0 {
        let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
    }
    if let Ok(signal) = Signal::try_from(signal) {
        let _ = raise(signal);
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
    nix::errno::Errno::result(cleared)?;
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
