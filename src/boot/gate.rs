//! The deploy gate: a change to what runs (a new commit, new secrets) on an instance whose
//! release in service was healthy must settle and answer; otherwise the release before it comes
//! back, with the environment it ran with.

use std::time::Duration;

use zeroize::Zeroizing;

use crate::config::{Config, PathsConfig};
use crate::deploys::{self, FailedCommit, FailedSecrets};
use crate::health::{Checker, Scope};
use crate::plan::Plan;
use crate::secrets::SecretVersion;
use crate::service::{self, UnitReport};
use crate::status::{Outcome, Status};
use crate::Error;

/// The release in service before this boot changed anything, known to have been healthy.
pub(super) struct Previous {
    pub commit: String,
    /// The env file it ran with; absent after a reboot (the run dir is tmpfs), when a rollback
    /// keeps the new environment.
    env: Option<Zeroizing<String>>,
    secrets: Vec<SecretVersion>,
}

impl Previous {
    /// The release the link points at, when the last boot that recorded it ended well: from
    /// status.json as the boot before this one left it, or after a reboot from the history.
    pub(super) fn capture(
        before: Option<&Status>,
        paths: &PathsConfig,
        plan: &Plan,
    ) -> Option<Self> {
        let in_service = crate::git::Layout::of(&plan.git.dir).current()?.to_string();
        let good = |outcome| {
            matches!(
                outcome,
                Outcome::Succeeded | Outcome::Degraded | Outcome::RolledBack
            )
        };
        let healthy = match before {
            Some(status) => {
                good(status.outcome)
                    && status
                        .git
                        .as_ref()
                        .is_some_and(|git| git.commit == in_service)
            }
            None => crate::history::read(&paths.state_dir)
                .ok()
                .and_then(|entries| entries.into_iter().last())
                .is_some_and(|last| {
                    good(last.outcome) && last.commit.as_deref() == Some(&in_service)
                }),
        };
        healthy.then(|| Previous {
            commit: in_service,
            env: std::fs::read_to_string(&plan.env_file)
                .ok()
                .map(Zeroizing::new),
            secrets: before.map(|s| s.secrets.clone()).unwrap_or_default(),
        })
    }

    /// Whether a rollback brings back the environment too (not after a reboot).
    pub(super) fn env_restored(&self) -> bool {
        self.env.is_some()
    }

    pub(super) fn secrets(&self) -> &[SecretVersion] {
        &self.secrets
    }
}

/// Starts (or restarts) the unit; when `gated`, the app's health URL must then answer 2xx
/// within `deploy.health_wait`. The error says why the change does not serve.
pub(super) async fn start(
    config: &Config,
    plan: &Plan,
    env_changed: bool,
    code_changed: bool,
    gated: bool,
) -> Result<UnitReport, Error> {
    let report = super::within(
        "service",
        config.service.start_timeout + config.service.settle + Duration::from_secs(5),
        service::start_systemd(
            plan,
            env_changed,
            code_changed,
            config.service.start_timeout,
            config.service.settle,
        ),
    )
    .await??;
    if gated && report.restarted {
        app_turns_green(config).await?;
    }
    Ok(report)
}

/// `health.app_url` (when set) must answer 2xx within `deploy.health_wait`.
async fn app_turns_green(config: &Config) -> Result<(), Error> {
    let limit = config.deploy.health_wait;
    Checker::new(config)
        .wait_until_healthy(Scope::App, limit)
        .await
        .map_err(|health| Error::Gate {
            reason: health.reason.unwrap_or_default(),
            waited: humantime::format_duration(limit).to_string(),
        })
}

/// Brings back `previous` after `new_commit` with `new_secrets` (the versions this boot brought)
/// failed for `cause`: the link, the env file it ran with, a restart, and the same gate. Records
/// what failed (the commit, the secret versions) so that it is not deployed again
/// automatically.
pub(super) async fn roll_back(
    config: &Config,
    plan: &Plan,
    previous: &Previous,
    new_commit: &str,
    new_secrets: &[SecretVersion],
    cause: &Error,
) -> Result<UnitReport, Error> {
    let cause_text = cause_of(cause);
    tracing::error!(
        from = new_commit,
        to = %previous.commit,
        "the change failed its gate, rolling back: {cause_text}"
    );
    crate::git::switch(&plan.git.dir, &previous.commit).map_err(|e| {
        Error::io(
            format!(
                "failed to switch back to the release of {}",
                previous.commit
            ),
            e,
        )
    })?;
    if let Some(env) = &previous.env {
        crate::envfile::write(&plan.env_file, env)?;
    }
    let report = start(config, plan, true, true, true).await?;
    let at = crate::status::now();
    let commit = (new_commit != previous.commit).then(|| FailedCommit {
        commit: new_commit.to_string(),
        reference: plan.git.reference.clone(),
        at: at.clone(),
        reason: cause_text.clone(),
    });
    // Only an environment that is back makes the new versions worth avoiding: after a reboot
    // the one before them is gone, and they stay in service.
    let secrets = (previous.env_restored() && !new_secrets.is_empty()).then(|| FailedSecrets {
        versions: new_secrets.to_vec(),
        at,
        reason: cause_text,
    });
    let mut record = deploys::read(&config.paths.state_dir);
    record.rolled_back(commit, secrets);
    save(&config.paths, &record);
    Ok(report)
}

/// Why a change did not serve, worded to follow "because": the service's own error says which
/// unit did what; other errors keep their chain.
pub(super) fn cause_of(error: &Error) -> String {
    match error {
        Error::Service(service) => service.to_string(),
        other => other.chain().replace("\n -> ", ": "),
    }
}

/// Code refused before it was deployed (unsigned, rewound): the deploy timer leaves it alone
/// while the ref names it, as it does a commit that failed its gate.
pub(super) fn remember_failed(paths: &PathsConfig, failed: FailedCommit) {
    let mut record = deploys::read(&paths.state_dir);
    record.failed = Some(failed);
    save(paths, &record);
}

/// A change passed the gate.
pub(super) fn passed(paths: &PathsConfig, commit: &str) {
    let mut record = deploys::read(&paths.state_dir);
    record.succeeded(commit, crate::status::now());
    save(paths, &record);
}

/// The record only informs (metrics, the next deploy); failing to write it costs no boot.
fn save(paths: &PathsConfig, record: &deploys::Deploys) {
    if let Err(e) = deploys::write(&paths.state_dir, record) {
        tracing::warn!(error = %e, dir = %paths.state_dir.display(), "could not record the deploy");
    }
}
