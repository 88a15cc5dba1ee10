//! `status.json`: what the last boot did, step by step. Health, doctor and lifecycle read it.
//! It holds secret ids and VersionIds, never values.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::identity::Identity;
use crate::secrets::SecretVersion;

pub const SCHEMA_VERSION: u32 = 1;
pub const WARMED: &str = "warmed";
/// Beside status.json in the run dir: held by the boot that writes it, for as long as it runs.
pub const LOCK_FILE: &str = "boot.lock";

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("failed to write the boot status to {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no boot status at {path}: bootagent boot has not run since this instance started \
         (`bootagent status --history` lists the boots before)"
    )]
    Missing { path: PathBuf },
    #[error("failed to read the boot status at {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the boot status at {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Running,
    Succeeded,
    /// The service runs, but not what was asked: the last good release was kept.
    Degraded,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Succeeded => "succeeded",
            Outcome::Degraded => "degraded",
            Outcome::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub schema: u32,
    pub bootagent_version: String,
    pub pid: u32,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub outcome: Outcome,
    pub phases: Vec<Phase>,
    pub identity: Option<Identity>,
    pub secrets: Vec<SecretVersion>,
    pub git: Option<GitStatus>,
    pub service: Option<ServiceStatus>,
    pub error: Option<ErrorReport>,
    /// Why a degraded boot runs something other than what was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    pub duration_ms: u64,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GitStatus {
    pub url: String,
    #[serde(rename = "ref")]
    pub reference: String,
    pub dir: PathBuf,
    pub commit: String,
    /// `cloned`, `fetched`, `unchanged` or `kept`.
    pub action: String,
    #[serde(default)]
    pub received_bytes: usize,
    /// Why the release in service is not the planned one, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub manager: crate::config::Manager,
    pub unit: String,
    /// systemd's ActiveState, `exec` once the command replaced bootagent, or [`WARMED`] when
    /// the instance waits in a warm pool with everything prepared but the service not started.
    pub state: String,
    pub restarted: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorReport {
    pub message: String,
    pub exit_code: u8,
}

/// Keeps status.json current while a boot runs: each phase is recorded as it ends.
pub struct Recorder {
    path: PathBuf,
    pub status: Status,
    phase_started: Option<(String, Instant)>,
    /// Where the finished boot is added to the history, if anywhere.
    history_dir: Option<PathBuf>,
}

impl Recorder {
    pub fn start(path: &Path) -> Self {
        Recorder {
            path: path.to_path_buf(),
            status: Status {
                schema: SCHEMA_VERSION,
                bootagent_version: env!("CARGO_PKG_VERSION").to_string(),
                pid: std::process::id(),
                started_at: timestamp(SystemTime::now()),
                finished_at: None,
                outcome: Outcome::Running,
                phases: Vec::new(),
                identity: None,
                secrets: Vec::new(),
                git: None,
                service: None,
                error: None,
                degraded: None,
            },
            phase_started: None,
            history_dir: None,
        }
    }

    /// Records the boot in `state_dir`'s history when it finishes.
    pub fn with_history(mut self, state_dir: &Path) -> Self {
        self.history_dir = Some(state_dir.to_path_buf());
        self
    }

    pub fn begin(&mut self, name: &str) {
        self.phase_started = Some((name.to_string(), Instant::now()));
    }

    /// Ends the current phase and saves the status.
    pub fn end(&mut self, outcome: Outcome) -> Result<(), StatusError> {
        let ended = self.phase_started.take().map(|(name, started)| {
            let duration_ms = millis(started.elapsed());
            tracing::info!("{name}: {} in {duration_ms} ms", outcome.as_str());
            self.status.phases.push(Phase {
                name: name.clone(),
                duration_ms,
                outcome,
            });
            name
        });
        self.save()?;
        if let Some(name) = ended {
            crate::failpoint::hit(&format!("after-{name}"));
        }
        Ok(())
    }

    /// The boot goes on with something other than what was asked, for `why`.
    pub fn degrade(&mut self, why: String) {
        self.status.degraded = Some(why);
    }

    pub fn finish(&mut self, error: Option<&crate::Error>) -> Result<(), StatusError> {
        self.status.finished_at = Some(timestamp(SystemTime::now()));
        self.status.error = error.map(|e| ErrorReport {
            message: e.chain(),
            exit_code: e.exit_code(),
        });
        self.status.outcome = match (error, &self.status.degraded) {
            (Some(_), _) => Outcome::Failed,
            (None, Some(_)) => Outcome::Degraded,
            (None, None) => Outcome::Succeeded,
        };
        self.end(self.status.outcome)?;
        match (&self.status.error, &self.status.degraded) {
            (None, None) => {
                tracing::info!(outcome = "succeeded", "boot succeeded: {}", self.summary())
            }
            (None, Some(why)) => tracing::warn!(
                outcome = "degraded",
                "boot degraded: {}; {why}",
                self.summary()
            ),
            (Some(error), _) => tracing::error!(
                outcome = "failed",
                "boot failed with exit code {}",
                error.exit_code
            ),
        }
        if let Some(dir) = &self.history_dir {
            if let Err(e) = crate::history::record(dir, &self.status) {
                // The history is for operators looking back; it never fails a boot.
                tracing::warn!(error = %e, dir = %dir.display(), "could not record the boot in the history");
            }
        }
        Ok(())
    }

    /// What runs now, in one line: `calendar/prod at <commit> (fetched), calendar.service active`.
    fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(id) = &self.status.identity {
            parts.push(format!("{}/{}", id.service, id.env));
        }
        if let Some(git) = &self.status.git {
            parts.push(format!("at {} ({})", git.commit, git.action));
        }
        let mut line = parts.join(" ");
        if let Some(service) = &self.status.service {
            line.push_str(&format!(", {} {}", service.unit, service.state));
        }
        line
    }

    pub fn save(&self) -> Result<(), StatusError> {
        let mut json = serde_json::to_vec_pretty(&self.status).expect("status serializes");
        json.push(b'\n');
        crate::atomic::write_file(&self.path, &json, 0o644).map_err(|source| StatusError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

impl Status {
    /// A boot that said `running` but whose process is gone (killed, or the machine stopped)
    /// failed, and a new boot is what helps: it is reported so, with the transient exit code.
    pub fn mark_interrupted(&mut self) {
        self.outcome = Outcome::Failed;
        self.error = Some(ErrorReport {
            message: format!(
                "the boot started at {} (pid {}) ended without finishing: it was killed, or the \
                 machine stopped, while it ran; run bootagent boot again (a new boot converges)",
                self.started_at, self.pid
            ),
            exit_code: crate::error::exit::TRANSIENT,
        });
    }
}

/// The last boot's status. One that says `running` while no boot holds the lock was
/// interrupted, and is read as such (see [`Status::mark_interrupted`]).
pub fn read(path: &Path) -> Result<Status, StatusError> {
    let status = read_as_written(path)?;
    if status.outcome != Outcome::Running || boot_in_progress(path) {
        return Ok(status);
    }
    // No boot runs now; the one that wrote `running` may have finished since the first read.
    let mut status = read_as_written(path)?;
    if status.outcome == Outcome::Running {
        status.mark_interrupted();
    }
    Ok(status)
}

/// Whether a boot holds the lock beside `status_path`. When that cannot be told (the lock file
/// is not readable), a boot is assumed to run.
fn boot_in_progress(status_path: &Path) -> bool {
    use nix::fcntl::{Flock, FlockArg};
    match std::fs::File::open(status_path.with_file_name(LOCK_FILE)) {
        Ok(file) => Flock::lock(file, FlockArg::LockSharedNonblock).is_err(),
        // Every boot creates the lock before it writes its status.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(_) => true,
    }
}

/// status.json as the last boot wrote it.
pub fn read_as_written(path: &Path) -> Result<Status, StatusError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StatusError::Missing {
                path: path.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(StatusError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_str(&text).map_err(|e| StatusError::Invalid {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn timestamp(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}
