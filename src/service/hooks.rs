//! Deploy hooks: a command of the config's, run as the service user in a process group that is
//! stopped whole.

use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use nix::sys::signal::{killpg, raise, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::{Pid, Uid};

use super::environment;

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
    let target = environment::user(user)
        .map_err(|_| failed(format!("cannot run as {user}: no such user")))?;
    let mut command = tokio::process::Command::new(program);
    environment::set(command.as_std_mut(), &target, vars);
    command
        .args(args)
        .current_dir(dir)
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

/// How often [`HookGroup::end`] looks whether the group has ended within its grace.
const GROUP_POLL_INTERVAL: Duration = Duration::from_millis(100);

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
                    tokio::time::sleep(GROUP_POLL_INTERVAL).await;
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
