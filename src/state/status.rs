//! `status.json`: what the last boot did, step by step. Health, doctor and lifecycle read it.
//! It holds secret ids and VersionIds, never values.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::config::{Manager, PathsConfig};
use crate::git::Action;
use crate::plan::identity::Identity;
use crate::secrets::SecretVersion;

pub const SCHEMA_VERSION: u32 = 1;

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
    /// A change failed its gate; the release before it serves again.
    #[serde(rename = "rolled-back")]
    RolledBack,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Succeeded => "succeeded",
            Outcome::Degraded => "degraded",
            Outcome::RolledBack => "rolled-back",
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
    /// A failed boot that changed nothing that serves: the release last proven healthy, which
    /// still serves as before (the health report follows what serves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_unchanged: Option<Serving>,
    /// What reached the service besides the env file: names and paths, never a value.
    #[serde(default, skip_serializing_if = "Delivered::is_empty")]
    pub delivered: Delivered,
    /// Who gave this boot its secrets: a region of Secrets Manager, or the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_from: Option<SecretsFrom>,
}

/// `{"region": "us-west-2"}`, or `{"snapshot": {"taken_at": …, "age_seconds": …}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretsFrom {
    Region(String),
    Snapshot {
        /// When Secrets Manager last gave these values (RFC 3339).
        taken_at: String,
        age_seconds: u64,
    },
}

/// The credentials and secret files a boot wrote (`secrets.deliver`, `[[files]]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    /// The credential store and the names in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<DeliveredCredentials>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<DeliveredFile>,
}

impl Delivered {
    pub fn is_empty(&self) -> bool {
        self.credentials.is_none() && self.files.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveredCredentials {
    pub dir: PathBuf,
    pub names: Vec<String>,
    /// This boot wrote new values.
    pub changed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveredFile {
    pub path: PathBuf,
    pub owner: String,
    pub group: String,
    /// Octal, as chmod takes it: "0640".
    pub mode: String,
    /// This boot wrote it (new contents, owner, group or mode).
    pub changed: bool,
}

/// What serves: the commit, under which unit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Serving {
    pub commit: String,
    pub unit: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    /// When the phase began, in milliseconds after the boot began: phases that ran at once (the
    /// secrets and git's sync) overlap. `None` in a status written before bootagent recorded it.
    #[serde(default)]
    pub started_ms: Option<u64>,
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
    pub action: Action,
    #[serde(default)]
    pub received_bytes: usize,
    /// Why the release in service is not the planned one, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The mirror (`git.mirrors`) the commit was fetched from, when `url` did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
    /// When the seed (`bootagent prepare`) this first checkout started from was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub manager: Manager,
    pub unit: String,
    pub state: ServiceState,
    pub restarted: bool,
    /// What new credentials or secret files got instead of a restart (`on_change`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applied: Vec<crate::config::OnChange>,
}

/// What the boot left the service in; written as one word in status.json.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum ServiceState {
    /// The instance waits in a warm pool with everything prepared; the service starts when it
    /// goes in service.
    Warmed,
    /// The command replaced bootagent (exec mode).
    Exec,
    /// The unit's systemd ActiveState when the boot ended: `active`, `failed`, …
    Unit(String),
}

impl From<String> for ServiceState {
    fn from(word: String) -> Self {
        match word.as_str() {
            "warmed" => ServiceState::Warmed,
            "exec" => ServiceState::Exec,
            _ => ServiceState::Unit(word),
        }
    }
}

impl From<ServiceState> for String {
    fn from(state: ServiceState) -> Self {
        state.to_string()
    }
}

impl std::fmt::Display for ServiceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServiceState::Warmed => "warmed",
            ServiceState::Exec => "exec",
            ServiceState::Unit(active) => active,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorReport {
    pub message: String,
    pub exit_code: u8,
}

impl Status {
    /// A boot that starts now, in this process.
    pub fn starting() -> Status {
        Status {
            schema: SCHEMA_VERSION,
            bootagent_version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            started_at: now(),
            finished_at: None,
            outcome: Outcome::Running,
            phases: Vec::new(),
            identity: None,
            secrets: Vec::new(),
            git: None,
            service: None,
            error: None,
            degraded: None,
            serving_unchanged: None,
            delivered: Delivered::default(),
            secrets_from: None,
        }
    }

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
            exit_code: crate::exit::TRANSIENT,
        });
    }
}

/// The last boot's status. One that says `running` while no boot holds the lock was
/// interrupted, and is read as such (see [`Status::mark_interrupted`]).
pub fn read(paths: &PathsConfig) -> Result<Status, StatusError> {
    let path = paths.status_file();
    let status = read_as_written(&path)?;
    if status.outcome != Outcome::Running || boot_in_progress(&paths.lock_file()) {
        return Ok(status);
    }
    // No boot runs now; the one that wrote `running` may have finished since the first read.
    let mut status = read_as_written(&path)?;
    if status.outcome == Outcome::Running {
        status.mark_interrupted();
    }
    Ok(status)
}

/// Whether a boot holds `lock`. When that cannot be told (the lock file is not readable), a
/// boot is assumed to run.
fn boot_in_progress(lock: &Path) -> bool {
    use nix::fcntl::{Flock, FlockArg};
    match std::fs::File::open(lock) {
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

/// Writes `status` to `path` atomically: a reader sees the old status or the new one, whole.
pub fn write(path: &Path, status: &Status) -> Result<(), StatusError> {
    let mut json = serde_json::to_vec_pretty(status).expect("status serializes");
    json.push(b'\n');
    crate::atomic::write_file(path, &json, 0o644).map_err(|source| StatusError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The time now, as status.json and the history write it.
pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
