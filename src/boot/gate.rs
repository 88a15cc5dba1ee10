//! The deploy gate: a change to what runs (a new commit, new secrets) on an instance whose
//! release in service was healthy must settle and answer; otherwise the release before it comes
//! back, with the environment it ran with.

use std::time::Duration;

use zeroize::Zeroizing;

use crate::config::{Config, PathsConfig};
use crate::deadline::Deadline;
use crate::deliver::credentials::{self, Credentials};
use crate::deliver::files;
use crate::plan::Plan;
use crate::report::health::{Checker, Scope};
use crate::secrets::SecretVersion;
use crate::service::{self, UnitReport};
use crate::state::deploys::{self, Deploys, FailedCommit, FailedSecrets};
use crate::Error;

use super::recorder::Recorder;

/// The release last proven healthy, known before this boot changes anything: what a failed
/// change rolls back to. It comes from deploys.json, where it is recorded when it is proven,
/// so neither a failed boot nor a killed one changes it.
pub(super) struct Previous {
    pub commit: String,
    /// The env file in service; absent after a reboot (the run dir is tmpfs), when a rollback
    /// keeps the new environment.
    env: Option<Zeroizing<String>>,
    /// The credentials in service (`secrets.deliver`), absent as the env file is.
    credentials: Option<Credentials>,
    /// The secret files in service, those that exist.
    files: Vec<files::Rendered>,
    secrets: Vec<SecretVersion>,
}

impl Previous {
    /// The release last proven healthy, while its release directory is still on disk; else the
    /// release in service, so that the gate never switches off while something serves.
    pub(super) fn capture(record: &Deploys, plan: &Plan) -> Option<Self> {
        let proven = record.last_good_commit.as_deref();
        match proven.and_then(|commit| Self::of(commit, &record.last_good_secrets, plan)) {
            Some(previous) => Some(previous),
            None => {
                let in_service = Self::in_service(plan);
                if let (Some(commit), Some(fallback)) = (proven, &in_service) {
                    tracing::warn!(
                        "the release last proven healthy ({commit}) is no longer on disk; a \
                         change that fails its gate rolls back to the release in service, {}",
                        fallback.commit
                    );
                }
                in_service
            }
        }
    }

    /// The release in service, when deploys.json cannot say which was proven: the best there is
    /// to roll back to.
    pub(super) fn in_service(plan: &Plan) -> Option<Self> {
        let commit = crate::git::Layout::of(&plan.git.dir).current()?.to_string();
        Self::of(&commit, &[], plan)
    }

    /// `commit` (a commit id, never a path) while its release is on disk.
    fn of(commit: &str, secrets: &[SecretVersion], plan: &Plan) -> Option<Self> {
        let is_commit_id = commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit());
        (is_commit_id && crate::git::release_dir(&plan.git.dir, commit).is_dir()).then(|| {
            Previous {
                commit: commit.to_string(),
                env: std::fs::read_to_string(&plan.env_file)
                    .ok()
                    .map(Zeroizing::new),
                credentials: (plan.secrets.credentials_dir.as_deref())
                    .and_then(|dir| credentials::read(dir).ok()),
                files: files::read_back(&plan.files),
                secrets: secrets.to_vec(),
            }
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
    changes: &service::Changes,
    gated: bool,
) -> Result<UnitReport, Error> {
    let step = config.service.start_timeout + config.service.settle + Duration::from_secs(5);
    let report = super::within(
        "service",
        Deadline::after(step),
        service::start_systemd(
            plan,
            changes,
            config.service.start_timeout,
            config.service.settle,
        ),
    )
    .await??;
    // A reload or a signal is a change to what runs as much as a restart.
    if gated && (report.restarted || !report.applied.is_empty()) {
        app_turns_green(config).await?;
    }
    Ok(report)
}

/// `health.app_url` (when set) must answer 2xx within `deploy.health_wait`.
async fn app_turns_green(config: &Config) -> Result<(), Error> {
    let limit = config.deploy.health_wait;
    Checker::new(&config.health, &config.paths)
        .wait_until_healthy(Scope::App, limit)
        .await
        .map_err(|health| Error::Gate {
            reason: health.reason.unwrap_or_default(),
            waited: humantime::format_duration(limit).to_string(),
        })
}

/// The change to `commit` failed its gate for `cause`: brings back `previous` and says what
/// happened in the error the boot ends with.
pub(super) async fn roll_back_change(
    config: &Config,
    plan: &Plan,
    previous: &Previous,
    commit: &str,
    secrets_changed: bool,
    recorder: &mut Recorder,
    cause: Error,
) -> Result<(UnitReport, Error), Error> {
    let to = previous.commit.clone();
    let new_secrets: Vec<SecretVersion> = (recorder.status.secrets)
        .iter()
        .filter(|version| secrets_changed && !previous.secrets().contains(version))
        .cloned()
        .collect();
    let rolled_back = roll_back(config, plan, previous, commit, &new_secrets, &cause);
    let (report, recorded) = rolled_back.await.map_err(|failure| Error::RollbackFailed {
        from: commit.to_string(),
        to: to.clone(),
        cause: cause_of(&cause),
        failure: failure.one_line(),
    })?;
    if let Some(git) = recorder.status.git.as_mut() {
        git.commit = to.clone();
    }
    if previous.env_restored() {
        recorder.status.secrets = previous.secrets().to_vec();
    }
    let cause = cause_of(&cause);
    // The same commit with new secret versions: the versions were the change.
    let secrets_only = commit == to && !new_secrets.is_empty();
    let next = match (recorded, secrets_only) {
        (Ok(()), false) => format!(
            "{commit} is not deployed again until the ref moves on (`bootagent deploy --retry` \
             tries it again)"
        ),
        (Ok(()), true) => "they are not used again while they are current (`bootagent deploy \
                           --retry` tries them again)"
            .to_string(),
        (Err(why), _) => format!(
            "this could not be recorded ({why}), so the next deploy or refresh tries it again: \
             make {} writable",
            config.paths.state_dir.display()
        ),
    };
    let error = if secrets_only {
        Error::SecretsRolledBack {
            secrets: crate::secrets::ids(&new_secrets),
            commit: to,
            cause,
            next,
        }
    } else {
        Error::RolledBack {
            from: commit.to_string(),
            to,
            cause,
            next,
        }
    };
    recorder.degrade(error.to_string());
    Ok((report, error))
}

/// Brings back `previous` after `new_commit` with `new_secrets` (the versions this boot brought)
/// failed for `cause`: the link, the env file it ran with, a restart, and the same gate. What
/// failed (the commit, the secret versions) is recorded first, so that it is not deployed
/// again automatically even if the rollback is killed midway. The rollback goes on when that
/// record cannot be written; the second result says why it could not.
pub(super) async fn roll_back(
    config: &Config,
    plan: &Plan,
    previous: &Previous,
    new_commit: &str,
    new_secrets: &[SecretVersion],
    cause: &Error,
) -> Result<(UnitReport, Result<(), String>), Error> {
    let cause_text = cause_of(cause);
    tracing::error!(
        from = new_commit,
        to = %previous.commit,
        "the change failed its gate, rolling back: {cause_text}"
    );
    let at = crate::state::status::now();
    let commit = (new_commit != previous.commit).then(|| FailedCommit {
        commit: new_commit.to_string(),
        reference: plan.git.reference.clone(),
        at: at.clone(),
        reason: cause_text.clone(),
        exit_code: crate::exit::ROLLED_BACK,
    });
    // Only an environment that is back makes the new versions worth avoiding: after a reboot
    // the one before them is gone, and they stay in service.
    let secrets = (previous.env_restored() && !new_secrets.is_empty()).then(|| FailedSecrets {
        versions: new_secrets.to_vec(),
        at,
        reason: cause_text,
    });
    let before = read(&config.paths).ok();
    let recorded = update(&config.paths, |record| record.rolled_back(commit, secrets))
        .map_err(|e| e.one_line());
    if let Err(why) = &recorded {
        tracing::error!("could not record what failed its gate, so it will be tried again: {why}");
    }
    crate::failpoint::hit("rolling-back");
    let restored = async {
        crate::git::switch(&plan.git.dir, &previous.commit).map_err(|e| {
            Error::io(
                format!(
                    "failed to switch back to the release of {}",
                    previous.commit
                ),
                e,
            )
        })?;
        files::write_all(&previous.files)?;
        if let Some(env) = &previous.env {
            crate::envfile::write(&plan.env_file, env)?;
        }
        let mut changes = service::Changes {
            restart: true,
            ..Default::default()
        };
        if let Some(dir) = &plan.secrets.credentials_dir {
            if let Some(before) = &previous.credentials {
                credentials::write(dir, credentials::Owner::Root, before)?;
            }
            changes.credential_names = credentials::read(dir)
                .map(|now| now.into_keys().collect())
                .unwrap_or_default();
        }
        start(config, plan, &changes, true).await
    };
    match restored.await {
        Ok(report) => Ok((report, recorded)),
        Err(failure) => {
            // The release before fails as well: the change is not shown to be at fault (the
            // unit or the host is), so it is not held against it.
            if let (Some(before), Ok(())) = (before, &recorded) {
                if let Err(e) = write(&config.paths, &before) {
                    tracing::warn!(error = %e.chain(), "could not take back the failed record");
                }
            }
            Err(failure)
        }
    }
}

/// Why a change did not serve, worded to follow "because": the service's own error says which
/// unit did what; other errors keep their chain.
pub(super) fn cause_of(error: &Error) -> String {
    match error {
        Error::Service(service) => service.to_string(),
        other => other.one_line(),
    }
}

/// Code refused before it was deployed (unsigned, rewound): the deploy timer leaves it alone
/// while the ref names it, as it does a commit that failed its gate.
pub(super) fn remember_failed(paths: &PathsConfig, failed: FailedCommit) -> Result<(), Error> {
    update(paths, |record| record.failed = Some(failed))
}

/// `commit` with `versions` settled (and answered): a change that passed the gate counts as a
/// deploy; either way it is the release a later failed change rolls back to.
pub(super) fn proven(
    paths: &PathsConfig,
    commit: &str,
    versions: &[SecretVersion],
    changed: bool,
) -> Result<(), Error> {
    let mut record = read(paths)?;
    let changed = match changed {
        true => {
            record.succeeded(commit, versions, crate::state::status::now());
            true
        }
        false => record.proven_healthy(commit, versions),
    };
    if changed {
        write(paths, &record)?;
    }
    Ok(())
}

/// Reads, changes and writes the record back. The record decides what deploys next: when it
/// cannot be read or written, the error says so rather than pretending it was kept.
fn update(paths: &PathsConfig, change: impl FnOnce(&mut Deploys)) -> Result<(), Error> {
    let mut record = read(paths)?;
    change(&mut record);
    write(paths, &record)
}

fn read(paths: &PathsConfig) -> Result<Deploys, Error> {
    deploys::read(&paths.state_dir).map_err(Error::from)
}

fn write(paths: &PathsConfig, record: &Deploys) -> Result<(), Error> {
    deploys::write(&paths.state_dir, record).map_err(|e| {
        Error::io(
            format!(
                "failed to record the deploy in {}",
                paths.state_dir.join(deploys::FILE).display()
            ),
            e,
        )
    })
}
