//! Keeps status.json current while a boot runs, and adds the finished boot to the history.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::PathsConfig;
use crate::state::status::{ErrorReport, Outcome, Phase, Status, StatusError};

/// Each phase is recorded as it ends, so status.json always says how far the boot got; the
/// phases are listed in the order they began.
pub struct Recorder {
    path: PathBuf,
    pub status: Status,
    /// When the boot began: each phase says when it began after it.
    boot_started: Instant,
    phase_started: Option<(String, Instant)>,
    history_dir: PathBuf,
}

/// The boot's record is over, however the boot ended (returned, failed with `?`).
impl Drop for Recorder {
    fn drop(&mut self) {
        crate::crash::boot_ended();
    }
}

impl Recorder {
    pub fn start(paths: &PathsConfig) -> Self {
        crate::crash::watch_boot(paths);
        Recorder {
            path: paths.status_file(),
            status: Status::starting(),
            boot_started: Instant::now(),
            phase_started: None,
            history_dir: paths.state_dir.clone(),
        }
    }

    pub fn begin(&mut self, name: &str) {
        self.begin_at(name, Instant::now());
    }

    /// Begins a phase whose work began at `started`, beside the phase before it.
    pub fn begin_at(&mut self, name: &str, started: Instant) {
        self.phase_started = Some((name.to_string(), started));
    }

    /// Ends the current phase and saves the status.
    pub fn end(&mut self, outcome: Outcome) -> Result<(), StatusError> {
        let ended = self.phase_started.take().map(|(name, started)| {
            let millis =
                |duration: Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
            let duration_ms = millis(started.elapsed());
            let started_ms = millis(started.saturating_duration_since(self.boot_started));
            tracing::info!("{name}: {} in {duration_ms} ms", outcome.as_str());
            // A phase that began beside an earlier one may end after it.
            let phases = &mut self.status.phases;
            let at = phases.partition_point(|phase| phase.started_ms <= Some(started_ms));
            phases.insert(
                at,
                Phase {
                    name: name.clone(),
                    started_ms: Some(started_ms),
                    duration_ms,
                    outcome,
                },
            );
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
        self.status.degraded = Some(match self.status.degraded.take() {
            Some(earlier) if earlier != why => format!("{earlier}; {why}"),
            _ => why,
        });
    }

    pub fn finish(&mut self, error: Option<&crate::Error>) -> Result<(), StatusError> {
        self.status.finished_at = Some(crate::state::status::now());
        self.status.error = error.map(|e| ErrorReport {
            message: e.chain(),
            exit_code: e.exit_code(),
        });
        self.status.outcome = match (error, &self.status.degraded) {
            (Some(crate::Error::RolledBack { .. } | crate::Error::SecretsRolledBack { .. }), _) => {
                Outcome::RolledBack
            }
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
                outcome = self.status.outcome.as_str(),
                "boot {} with exit code {}",
                self.status.outcome.as_str(),
                error.exit_code
            ),
        }
        Ok(())
    }

    /// What happened after the steps ended well (the launch hook's answer failed) fails the
    /// boot after all: status.json says so, with the exit code the command ends with.
    pub fn fail_after(&mut self, error: &crate::Error) -> Result<(), StatusError> {
        self.status.error = Some(ErrorReport {
            message: error.chain(),
            exit_code: error.exit_code(),
        });
        self.status.outcome = Outcome::Failed;
        tracing::error!(
            outcome = "failed",
            "boot failed with exit code {}",
            error.exit_code()
        );
        self.save()
    }

    /// Adds the boot, as status.json last says it ended, to the history.
    pub fn close(&self) {
        if let Err(e) = crate::state::history::record(&self.history_dir, &self.status) {
            // The history is for operators looking back; it never fails a boot.
            tracing::warn!(error = %e, dir = %self.history_dir.display(), "could not record the boot in the history");
        }
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
        crate::state::status::write(&self.path, &self.status)
    }
}
