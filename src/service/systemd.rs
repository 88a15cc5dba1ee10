//! The service as a systemd unit: the runtime drop-in, restart, and the wait until it is up and
//! stays up.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use super::error::ServiceError;
use crate::config::OnChange;
use crate::plan::Plan;
use crate::retry::{self, Look, Unready};

const SYSTEMCTL: &str = "systemctl";
const POLL_INTERVAL: Duration = Duration::from_millis(200);
const SETTLE_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The outcome of a systemd-mode start.
#[derive(Debug)]
pub struct UnitReport {
    pub state: String,
    pub restarted: bool,
    /// What was done instead of a restart, for credentials or secret files that changed.
    pub applied: Vec<OnChange>,
}

/// What changed since the unit last started, and so what it needs.
#[derive(Debug, Default)]
pub struct Changes {
    /// The env file or the code: only a restart applies them.
    pub restart: bool,
    /// What the changed credentials and secret files ask for (`on_change`).
    pub actions: BTreeSet<OnChange>,
    /// The credentials' values changed: systemd gives a unit its copy only when it starts.
    pub credentials: bool,
    /// The credentials the unit loads (`LoadCredential=`), by name, from `credentials_dir`.
    pub credential_names: Vec<String>,
}

/// Writes the drop-in, reloads systemd if it changed, and restarts the unit when anything it
/// runs with changed or it is not active; changed credentials and secret files get their
/// `on_change` instead, when nothing else needs a restart. Waits until the unit is active or has
/// failed; after a restart, reload or signal, the unit must then stay active for `settle`.
pub async fn start_systemd(
    plan: &Plan,
    changes: &Changes,
    timeout: Duration,
    settle: Duration,
) -> Result<UnitReport, ServiceError> {
    let unit = &plan.service.unit;
    let drop_in = plan
        .service
        .drop_in
        .as_deref()
        .expect("systemd mode has a drop-in");
    let drop_in_changed = write_drop_in(drop_in, &render_drop_in(plan, &changes.credential_names))?;
    if drop_in_changed {
        systemctl(&["daemon-reload"]).await?;
    }
    let state = unit_state(unit).await?.active;
    let mut restart = state != "active"
        || changes.restart
        || drop_in_changed
        || changes.actions.contains(&OnChange::Restart);
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
    let mut applied: Vec<OnChange> = Vec::new();
    if !restart {
        applied = changes
            .actions
            .iter()
            .copied()
            .filter(|action| *action != OnChange::None)
            .collect();
    }
    if !restart && changes.credentials {
        // The unit reads its own copy of the credentials, made when it started: it gets the
        // new values before it is told to read them again (or, with on_change = "none", for
        // when it reads them by itself); when it cannot, a unit to be told restarts instead.
        match refresh_credentials(unit, timeout).await {
            Ok(()) => {}
            Err(e) if applied.is_empty() => {
                tracing::warn!(%unit, "the unit keeps its credentials from before: {e}")
            }
            Err(e) => {
                tracing::warn!(
                    %unit,
                    "restarting rather than {}: {e}",
                    applied.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                );
                restart = true;
                applied.clear();
            }
        }
    }
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
    for action in &applied {
        tracing::info!(%unit, %action, "applying new secrets without a restart");
        let args: Vec<String> = match action {
            OnChange::Reload => vec!["reload".into(), unit.clone()],
            OnChange::Signal(signal) => vec![
                "kill".into(),
                "--kill-who=main".into(),
                format!("--signal={}", signal.as_str()),
                unit.clone(),
            ],
            OnChange::None | OnChange::Restart => continue,
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match tokio::time::timeout(timeout, systemctl(&args)).await {
            Ok(told) => drop(told?),
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
    if restart || !applied.is_empty() {
        stays_up(unit, &current, settle).await?;
    }
    Ok(UnitReport {
        state: current.active,
        restarted: restart,
        applied,
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

fn render_drop_in(plan: &Plan, credential_names: &[String]) -> String {
    let credentials = match &plan.secrets.credentials_dir {
        Some(dir) => crate::deliver::credentials::load_credential_lines(dir, credential_names),
        None => String::new(),
    };
    format!(
        "# Written by bootagent at boot; removed with /run at shutdown.\n\
         [Service]\n\
         EnvironmentFile={}\n\
         WorkingDirectory={}\n\
         User={}\n\
         {credentials}",
        plan.env_file.display(),
        plan.git.dir.display(),
        plan.service.user
    )
}

/// Has `bootagent-credentials@UNIT.service` copy the credentials bootagent wrote into the unit's
/// own credentials directory, as systemd does only when the unit starts.
async fn refresh_credentials(unit: &str, timeout: Duration) -> Result<(), ServiceError> {
    let helper = format!(
        "bootagent-credentials@{}.service",
        crate::deliver::credentials::escape_instance(unit)
    );
    match tokio::time::timeout(timeout, systemctl(&["start", &helper])).await {
        Ok(started) => started.map(drop),
        Err(_) => Err(ServiceError::StartTimeout {
            unit: helper,
            state: "activating".into(),
            waited: humantime::format_duration(timeout).to_string(),
        }),
    }
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
