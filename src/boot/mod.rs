//! The boot pipeline: identity, secrets, git, env file, service — under the lock, recorded in
//! status.json, with the launch hook answered at the end. `boot`, `refresh` and `lifecycle
//! watch` all run it.

mod checkout;
mod gate;
mod launch_hook;
mod lock;
mod recorder;

use std::time::{Duration, Instant};

use crate::autoscaling::ActionResult;
use crate::config::{Config, Manager};
use crate::envfile;
use crate::git;
use crate::imds::ImdsClient;
use crate::plan::Plan;
use crate::secrets;
use crate::service;
use crate::status::{GitStatus, Outcome, ServiceState, ServiceStatus, Status};
use crate::Error;

use checkout::GitWork;
pub use checkout::Kept;
use launch_hook::LaunchHook;
use recorder::Recorder;

/// How a boot treats a commit that failed its deploy gate before.
#[derive(Debug, Clone, Copy, Default)]
pub struct Run {
    /// Deploy it again (`deploy --retry`); otherwise the release in service stays while the ref
    /// still names it.
    pub retry_failed: bool,
}

/// The whole boot under the lock, recorded in status.json. Ok: the boot serves; with why, when
/// it kept the release in service rather than deploy what the ref names.
pub async fn boot(config: &Config, run: Run) -> Result<Option<Kept>, Error> {
    let started = Instant::now();
    let deadline = config.boot.deadline;
    let run_dir = &config.paths.run_dir;
    std::fs::create_dir_all(run_dir)
        .map_err(|e| Error::io(format!("failed to create {}", run_dir.display()), e))?;
    envfile::check_memory_backed(run_dir, config.paths.allow_persistent_env_file)?;
    let _lock = lock::lock(&config.paths.lock_file(), deadline).await?;
    // A drain is final: `lifecycle watch` stops the unit under this lock, after which nothing
    // may start it again.
    refuse_if_draining(&config.paths)?;
    lock::clear_interrupted_boot(&config.paths);
    let mut recorder = Recorder::start(&config.paths);
    recorder.save()?;
    let remaining = deadline.saturating_sub(started.elapsed());
    let mut effects = Effects::default();
    let git_work = GitWork::default();
    let work = steps(
        config,
        run,
        &mut recorder,
        &mut effects,
        &git_work,
        started + deadline,
    );
    let result = match tokio::time::timeout(remaining, work).await {
        Ok(result) => result,
        Err(_) => Err(Error::Deadline {
            phase: "boot",
            limit: humantime::format_duration(deadline).to_string(),
        }),
    };
    // Nothing is decided or recorded while git may still change the release in service.
    git_work.stop().await;
    if result.is_err() {
        recorder.status.serving_unchanged = effects.untouched.take();
    }
    recorder.finish(result.as_ref().err())?;
    let warmed = recorder
        .status
        .service
        .as_ref()
        .is_some_and(|s| s.state == ServiceState::Warmed);
    if let Some(change) = &effects.change {
        hooks_after(config, change, &recorder.status).await;
    }
    let answered = match (effects.launch_hook, result) {
        // A warm pool's launch is complete once everything is prepared.
        (Some(hook), Ok(())) if warmed => hook
            .complete(config, ActionResult::Continue)
            .await
            .map(|()| effects.kept),
        (Some(hook), Ok(())) => hook.finish(config, true).await.map(|()| effects.kept),
        (Some(hook), Err(error)) => {
            // The boot's own error is what the caller needs; a failed ABANDON is only logged.
            if let Err(hook_error) = hook.finish(config, false).await {
                tracing::error!(error = %hook_error.chain(), "could not abandon the launch");
            }
            Err(error)
        }
        (None, Err(error)) => {
            // A launch hook is set, but the boot failed before it knew the instance.
            if let (Some(hook), true) = (
                &config.lifecycle.launch_hook,
                config.lifecycle.abandon_on_failure,
            ) {
                let abandoned =
                    launch_hook::abandon_without_identity(config, hook, started + deadline);
                if let Err(hook_error) = abandoned.await {
                    tracing::error!(error = %hook_error.chain(), "could not abandon the launch");
                }
            }
            Err(error)
        }
        (None, Ok(())) => Ok(effects.kept),
    };
    // The launch is part of the boot: an answer Auto Scaling did not take fails it.
    if let (Err(error), Outcome::Succeeded | Outcome::Degraded) =
        (&answered, recorder.status.outcome)
    {
        recorder.fail_after(error)?;
    }
    recorder.close();
    answered
}

/// The boot proper. Secrets are fetched and checked before the checkout, and the env file is
/// written only after it, so a failure at any step leaves the previous env file in place.
async fn steps(
    config: &Config,
    run: Run,
    recorder: &mut Recorder,
    effects: &mut Effects,
    git_work: &GitWork,
    boot_ends: Instant,
) -> Result<(), Error> {
    recorder.begin("identity");
    let imds = crate::identity::imds_client(config);
    // A fleet booting at once shares DescribeTags' bucket: the fallback may take what the boot
    // deadline leaves.
    let describe_tags_for = boot_ends.saturating_duration_since(Instant::now());
    let plan = crate::plan::resolve_with(&imds, config, describe_tags_for).await?;
    recorder.status.identity = Some(plan.identity.clone());
    effects.launch_hook = LaunchHook::start(config, &plan, boot_ends).await?;
    // deploys.json: the release last proven healthy (what a failed change rolls back to) and
    // what failed its gate before. When it cannot be trusted, nothing new is deployed over a
    // release in service, and the gate guards the release in service itself.
    let record = crate::deploys::read(&config.paths.state_dir);
    let previous = match (plan.service.manager, &record) {
        (Manager::Exec, _) => None,
        (Manager::Systemd, Ok(record)) => gate::Previous::capture(record, &plan),
        (Manager::Systemd, Err(_)) => gate::Previous::in_service(&plan),
    };
    let in_service = git::Layout::of(&plan.git.dir)
        .current()
        .map(|commit| commit.to_string());
    let proven = previous.as_ref().map(|p| p.commit.clone());
    if let (Some(commit), Some(_)) = (&in_service, &previous) {
        if Some(commit) == proven.as_ref() {
            effects.untouched = Some(crate::status::Serving {
                commit: commit.clone(),
                unit: plan.service.unit.clone(),
            });
        }
    }
    let (avoid, untrusted) = match (run.retry_failed, record) {
        (true, _) => (None, None),
        (false, Ok(record)) => (record.avoided(&plan.git.reference).cloned(), None),
        (false, Err(untrusted)) => (None, Some(untrusted)),
    };
    recorder.end(Outcome::Succeeded)?;

    recorder.begin("secrets");
    // Throttling, 5xx and timeouts are tried again for as long as the boot deadline leaves room
    // for one more call (secrets.timeout each) and a second to spare.
    let call = config.secrets.timeout + Duration::from_secs(1);
    let retry_for = boot_ends
        .saturating_duration_since(Instant::now())
        .saturating_sub(call);
    let client = secrets::client(&plan.identity.region, config.secrets.timeout, retry_for).await?;
    // The last call may start as the retries' time ends; the step gets that call and a second
    // more, so that a stalled call ends with its own error, which names the secret, rather than
    // the step's, whichever timer the scheduler happens to wake first.
    let loaded = within(
        "secrets",
        retry_for + call,
        secrets::load(&client, &plan.identity.region, &plan.secrets),
    )
    .await??;
    recorder.status.secrets = loaded.versions.clone();
    let mut loaded = loaded;
    let credentials = git::Credentials::from_config(config, &mut loaded)?;
    let environment = envfile::compose(&plan.env, loaded)?;
    let rendered = envfile::render(&environment, plan.secrets.format)?;
    recorder.end(Outcome::Succeeded)?;

    recorder.begin("git");
    let (checkout, kept) = match (untrusted, &in_service) {
        (Some(untrusted), Some(commit)) => checkout::keep_in_service(commit, untrusted.into()),
        (untrusted, _) => {
            if let Some(untrusted) = untrusted {
                // A first boot has nothing to keep: it deploys, and says why it cannot check.
                tracing::warn!("{untrusted}");
            }
            let keep = proven.as_deref().or(in_service.as_deref());
            checkout::checkout_or_keep(config, &plan, credentials, git_work, boot_ends, avoid, keep)
                .await?
        }
    };
    let note = kept.as_ref().map(|kept| kept.note.clone());
    effects.kept = kept;
    let fetched = matches!(checkout.action, git::Action::Cloned | git::Action::Fetched);
    // The unit restarts when the link moves, and when it names a release never proven healthy
    // (a boot killed after the switch, before the gate), so that the gate judges it.
    let code_changed = in_service.as_deref() != Some(checkout.commit.as_str())
        || proven
            .as_ref()
            .is_some_and(|proven| *proven != checkout.commit);
    if code_changed {
        effects.change = Some(Change {
            previous: in_service.clone(),
            commit: checkout.commit.clone(),
            dir: plan.git.dir.clone(),
            user: plan.service.user.clone(),
        });
    }
    if fetched && !config.deploy.pre_start.is_empty() {
        let mut vars: Vec<(&str, &str)> = environment
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        vars.push(("BOOTAGENT_COMMIT", &checkout.commit));
        vars.push((
            "BOOTAGENT_PREVIOUS_COMMIT",
            in_service.as_deref().unwrap_or_default(),
        ));
        service::run_hook(
            "deploy.pre_start",
            &config.deploy.pre_start,
            &git::release_dir(&plan.git.dir, &checkout.commit),
            &plan.service.user,
            vars,
            config.deploy.hook_timeout,
        )
        .await?;
    }
    if in_service.as_deref() != Some(checkout.commit.as_str()) {
        effects.untouched = None;
        git::switch(&plan.git.dir, &checkout.commit).map_err(|e| git::GitError::Local {
            action: "switch to the new release",
            dir: plan.git.dir.clone(),
            message: e.to_string(),
        })?;
    }
    if let Some(note) = &note {
        recorder.degrade(note.clone());
    }
    recorder.status.git = Some(GitStatus {
        url: (plan.git.remote.as_ref()).map_or_else(|_| String::new(), ToString::to_string),
        reference: plan.git.reference.clone(),
        dir: plan.git.dir.clone(),
        commit: checkout.commit.clone(),
        action: checkout.action,
        received_bytes: checkout.received_bytes,
        note,
    });
    recorder.end(if recorder.status.degraded.is_some() {
        Outcome::Degraded
    } else {
        Outcome::Succeeded
    })?;

    // Exec mode: whether the service's user can run the command is known now, before the env
    // file changes.
    let exec_command = match plan.service.manager {
        Manager::Exec => {
            recorder.begin("command");
            let command = service::prepare_exec(&plan, &environment)?;
            recorder.end(Outcome::Succeeded)?;
            Some(command)
        }
        Manager::Systemd => None,
    };
    drop(environment);

    recorder.begin("env_file");
    let env_changed = envfile::write(&plan.env_file, &rendered)?;
    if env_changed {
        effects.untouched = None;
    }
    if env_changed && effects.change.is_none() {
        effects.change = Some(Change {
            previous: in_service.clone(),
            commit: checkout.commit.clone(),
            dir: plan.git.dir.clone(),
            user: plan.service.user.clone(),
        });
    }
    recorder.end(Outcome::Succeeded)?;

    recorder.begin("service");
    refuse_if_draining(&config.paths)?;
    if in_warm_pool(&imds).await {
        // Everything is ready; starting waits for the instance to go in service, when
        // `lifecycle watch` boots again.
        tracing::info!("the instance is in a warm pool: prepared, not starting the service");
        recorder.status.service = Some(ServiceStatus {
            manager: plan.service.manager,
            unit: plan.service.unit.clone(),
            state: ServiceState::Warmed,
            restarted: false,
        });
        recorder.end(Outcome::Succeeded)?;
        return Ok(());
    }
    match exec_command {
        None => {
            let changed = env_changed || code_changed;
            if changed {
                effects.untouched = None;
            }
            let started =
                gate::start(config, &plan, env_changed, code_changed, previous.is_some()).await;
            let (report, rolled_back) = match (started, &previous) {
                (Ok(report), _) => {
                    let versions = &recorder.status.secrets;
                    let passed = changed && report.restarted;
                    if let Err(e) = gate::proven(&config.paths, &checkout.commit, versions, passed)
                    {
                        // The boot serves; the next failed change cannot roll back to it.
                        tracing::error!(
                            "{} is healthy, but could not be recorded as the release to roll \
                             back to: {}",
                            checkout.commit,
                            e.one_line()
                        );
                    }
                    (report, None)
                }
                (Err(cause), Some(previous)) if changed => {
                    let error = roll_back(
                        config,
                        &plan,
                        previous,
                        &checkout.commit,
                        env_changed,
                        recorder,
                        cause,
                    )
                    .await?;
                    (error.0, Some(error.1))
                }
                (Err(cause), _) => return Err(cause),
            };
            recorder.status.service = Some(ServiceStatus {
                manager: Manager::Systemd,
                unit: plan.service.unit.clone(),
                state: ServiceState::Unit(report.state),
                restarted: report.restarted,
            });
            match rolled_back {
                Some(error) => {
                    recorder.end(Outcome::RolledBack)?;
                    Err(error)
                }
                None => {
                    recorder.end(Outcome::Succeeded)?;
                    prune_releases(config, &plan);
                    Ok(())
                }
            }
        }
        Some(command) => {
            prune_releases(config, &plan);
            recorder.status.service = Some(ServiceStatus {
                manager: Manager::Exec,
                unit: plan.service.unit.clone(),
                state: ServiceState::Exec,
                restarted: true,
            });
            // The status must say "succeeded" before this process becomes the service; should
            // exec fail, the caller records that failure over it.
            recorder.finish(None)?;
            recorder.close();
            Err(command.exec().into())
        }
    }
}

/// The change to `commit` failed its gate for `cause`: brings back `previous` and says what
/// happened in the error the boot ends with.
async fn roll_back(
    config: &Config,
    plan: &Plan,
    previous: &gate::Previous,
    commit: &str,
    env_changed: bool,
    recorder: &mut Recorder,
    cause: Error,
) -> Result<(service::UnitReport, Error), Error> {
    let to = previous.commit.clone();
    let new_secrets: Vec<secrets::SecretVersion> = (recorder.status.secrets)
        .iter()
        .filter(|version| env_changed && !previous.secrets().contains(version))
        .cloned()
        .collect();
    let rolled_back = gate::roll_back(config, plan, previous, commit, &new_secrets, &cause);
    let (report, recorded) = rolled_back.await.map_err(|failure| Error::RollbackFailed {
        from: commit.to_string(),
        to: to.clone(),
        cause: gate::cause_of(&cause),
        failure: failure.one_line(),
    })?;
    if let Some(git) = recorder.status.git.as_mut() {
        git.commit = to.clone();
    }
    if previous.env_restored() {
        recorder.status.secrets = previous.secrets().to_vec();
    }
    let cause = gate::cause_of(&cause);
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
            secrets: secrets::ids(&new_secrets),
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

/// What a boot leaves for after its steps, whether they finished or not.
#[derive(Default)]
struct Effects {
    launch_hook: Option<LaunchHook>,
    /// A change to what runs was attempted.
    change: Option<Change>,
    /// The release last proven healthy, while this boot has changed nothing that serves: a
    /// boot that fails then leaves the instance serving as before.
    untouched: Option<crate::status::Serving>,
    /// Why the release in service was kept instead of what the ref names.
    kept: Option<checkout::Kept>,
}

/// A change to what runs: a new commit, or the same with a new environment.
struct Change {
    previous: Option<String>,
    commit: String,
    dir: std::path::PathBuf,
    user: String,
}

/// `deploy.post`, once the outcome of a change is known: it reports, and its failure is only
/// logged (the outcome stands).
async fn hooks_after(config: &Config, change: &Change, status: &Status) {
    if config.deploy.post.is_empty() {
        return;
    }
    let error = status
        .error
        .as_ref()
        .map(|e| e.message.replace("\n -> ", ": "));
    let vars = [
        ("BOOTAGENT_COMMIT", change.commit.as_str()),
        (
            "BOOTAGENT_PREVIOUS_COMMIT",
            change.previous.as_deref().unwrap_or_default(),
        ),
        ("BOOTAGENT_OUTCOME", status.outcome.as_str()),
        ("BOOTAGENT_ERROR", error.as_deref().unwrap_or_default()),
    ];
    // The release in service, or the root when there is none (a first boot that failed).
    let dir = if change.dir.exists() {
        change.dir.as_path()
    } else {
        std::path::Path::new("/")
    };
    let ran = service::run_hook(
        "deploy.post",
        &config.deploy.post,
        dir,
        &change.user,
        vars,
        config.deploy.hook_timeout,
    )
    .await;
    if let Err(e) = ran {
        tracing::error!(error = %e, "the deploy.post hook failed");
    }
}

/// The boot lock: while it is held, no boot, refresh or deploy runs.
pub async fn lock(
    paths: &crate::config::PathsConfig,
    wait: Duration,
) -> Result<nix::fcntl::Flock<std::fs::File>, Error> {
    lock::lock(&paths.lock_file(), wait).await
}

/// A boot, refresh or deploy while the instance drains changes nothing.
pub fn refuse_if_draining(paths: &crate::config::PathsConfig) -> Result<(), Error> {
    let marker = paths.draining_marker();
    match marker.exists() {
        true => Err(Error::Draining {
            marker: marker.display().to_string(),
        }),
        false => Ok(()),
    }
}

/// Old releases go once the new one is in service; failing to remove them costs only disk.
fn prune_releases(config: &Config, plan: &Plan) {
    match git::prune(&plan.git.dir, config.git.keep) {
        Ok(0) => {}
        Ok(removed) => tracing::info!(removed, "pruned old releases"),
        Err(e) => tracing::warn!(error = %e, "could not prune old releases"),
    }
}

/// In a warm pool (`Warmed:*`) the instance is prepared but its service must not start yet.
/// Outside an Auto Scaling group, or when IMDS cannot say, it is not.
async fn in_warm_pool(imds: &ImdsClient) -> bool {
    matches!(imds.target_lifecycle_state().await, Ok(Some(state)) if state.starts_with("Warmed:"))
}

async fn within<T>(
    phase: &'static str,
    limit: Duration,
    work: impl std::future::Future<Output = T>,
) -> Result<T, Error> {
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| Error::Deadline {
            phase,
            limit: humantime::format_duration(limit).to_string(),
        })
}
