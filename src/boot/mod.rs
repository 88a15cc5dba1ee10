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
use launch_hook::LaunchHook;
use recorder::Recorder;

/// How a boot treats a commit that failed its deploy gate before.
#[derive(Debug, Clone, Copy, Default)]
pub struct Run {
    /// Deploy it again (`deploy --retry`); otherwise the release in service stays while the ref
    /// still names it.
    pub retry_failed: bool,
}

/// The whole boot under the lock, recorded in status.json.
pub async fn boot(config: &Config, run: Run) -> Result<(), Error> {
    let started = Instant::now();
    let deadline = config.boot.deadline;
    let run_dir = &config.paths.run_dir;
    std::fs::create_dir_all(run_dir)
        .map_err(|e| Error::io(format!("failed to create {}", run_dir.display()), e))?;
    envfile::check_memory_backed(run_dir, config.paths.allow_persistent_env_file)?;
    let _lock = lock::lock(&config.paths.lock_file(), deadline).await?;
    lock::clear_interrupted_boot(&config.paths);
    // What the boot before this one left: whether the release in service was healthy.
    let before = crate::status::read_as_written(&config.paths.status_file()).ok();

    let mut recorder = Recorder::start(&config.paths);
    recorder.save()?;
    let remaining = deadline.saturating_sub(started.elapsed());
    let mut effects = Effects::default();
    let git_work = GitWork::default();
    let work = steps(
        config,
        run,
        before.as_ref(),
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
    recorder.finish(result.as_ref().err())?;
    let warmed = recorder
        .status
        .service
        .as_ref()
        .is_some_and(|s| s.state == ServiceState::Warmed);
    if let Some(change) = &effects.change {
        hooks_after(config, change, &recorder.status).await;
    }
    match (effects.launch_hook, result) {
        // A warm pool's launch is complete once everything is prepared.
        (Some(hook), Ok(())) if warmed => hook.complete(config, ActionResult::Continue).await,
        (Some(hook), Ok(())) => hook.finish(config, true).await,
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
        (None, Ok(())) => Ok(()),
    }
}

/// The boot proper. Secrets are fetched and checked before the checkout, and the env file is
/// written only after it, so a failure at any step leaves the previous env file in place.
async fn steps(
    config: &Config,
    run: Run,
    before: Option<&Status>,
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
    // Known before anything changes: the release a failed change rolls back to.
    let previous = match plan.service.manager {
        Manager::Systemd => gate::Previous::capture(before, &config.paths, &plan),
        Manager::Exec => None,
    };
    let avoid = match run.retry_failed {
        true => None,
        false => crate::deploys::read(&config.paths.state_dir)
            .avoided(&plan.git.reference)
            .cloned(),
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
    let in_service = git::Layout::of(&plan.git.dir)
        .current()
        .map(|commit| commit.to_string());
    let (checkout, note) =
        checkout::checkout_or_keep(config, &plan, credentials, git_work, boot_ends, avoid).await?;
    if matches!(checkout.action, git::Action::Cloned | git::Action::Fetched) {
        effects.change = Some(Change {
            previous: in_service.clone(),
            commit: checkout.commit.clone(),
            dir: plan.git.dir.clone(),
            user: plan.service.user.clone(),
        });
        if !config.deploy.pre_start.is_empty() {
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
        url: crate::remote::redact(plan.git.url.as_deref().unwrap_or_default()),
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
            let code_changed =
                matches!(checkout.action, git::Action::Cloned | git::Action::Fetched);
            let changed = env_changed || code_changed;
            let started =
                gate::start(config, &plan, env_changed, code_changed, previous.is_some()).await;
            let (report, rolled_back) = match (started, &previous) {
                (Ok(report), _) => {
                    if changed && report.restarted {
                        gate::passed(&config.paths, &checkout.commit);
                    }
                    (report, None)
                }
                (Err(cause), Some(previous)) if changed => {
                    let to = previous.commit.clone();
                    let new_secrets: Vec<secrets::SecretVersion> = (recorder.status.secrets)
                        .iter()
                        .filter(|version| env_changed && !previous.secrets().contains(version))
                        .cloned()
                        .collect();
                    let rolled_back = gate::roll_back(
                        config,
                        &plan,
                        previous,
                        &checkout.commit,
                        &new_secrets,
                        &cause,
                    );
                    let report = match rolled_back.await {
                        Ok(report) => report,
                        Err(failure) => {
                            return Err(Error::RollbackFailed {
                                from: checkout.commit.clone(),
                                to,
                                cause: gate::cause_of(&cause),
                                failure: failure.chain().replace("\n -> ", ": "),
                            })
                        }
                    };
                    if let Some(git) = recorder.status.git.as_mut() {
                        git.commit = to.clone();
                    }
                    if previous.env_restored() {
                        recorder.status.secrets = previous.secrets().to_vec();
                    }
                    let cause = gate::cause_of(&cause);
                    // The same commit with new secret versions: the versions were the change.
                    let error = if checkout.commit == to && !new_secrets.is_empty() {
                        Error::SecretsRolledBack {
                            secrets: secrets::ids(&new_secrets),
                            commit: to,
                            cause,
                        }
                    } else {
                        Error::RolledBack {
                            from: checkout.commit.clone(),
                            to,
                            cause,
                        }
                    };
                    recorder.degrade(error.to_string());
                    (report, Some(error))
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
            Err(command.exec().into())
        }
    }
}

/// What a boot leaves for after its steps, whether they finished or not.
#[derive(Default)]
struct Effects {
    launch_hook: Option<LaunchHook>,
    /// A change to what runs was attempted.
    change: Option<Change>,
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
