use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use nix::fcntl::{Flock, FlockArg};

use crate::autoscaling::{ActionResult, Lifecycle};
use crate::config::{Config, Manager, OnGitFailure};
use crate::envfile;
use crate::git::{self, GitError};
use crate::health::Checker;
use crate::imds::ImdsClient;
use crate::plan::Plan;
use crate::retry::{self, Look, Unready};
use crate::secrets;
use crate::service::{self, ServiceError};
use crate::status::{self, GitStatus, Outcome, Recorder, ServiceStatus, WARMED};
use crate::Error;

const LOCK_POLL_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, Args)]
pub struct BootArgs {
    /// Resolve identity and print the plan; change nothing
    #[arg(long)]
    dry_run: bool,
}

impl BootArgs {
    pub fn run(self, config: &Config) -> Result<(), Error> {
        let runtime = super::runtime()?;
        if self.dry_run {
            let plan = runtime.block_on(super::plan::resolve(config))?;
            super::plan::print_json(&plan);
            return Ok(());
        }
        runtime.block_on(boot(config))
    }
}

/// The whole boot under the lock, recorded in status.json.
pub(super) async fn boot(config: &Config) -> Result<(), Error> {
    let started = Instant::now();
    let deadline = config.boot.deadline;
    let run_dir = &config.paths.run_dir;
    std::fs::create_dir_all(run_dir)
        .map_err(|e| Error::io(format!("failed to create {}", run_dir.display()), e))?;
    envfile::check_memory_backed(run_dir, config.paths.allow_persistent_env_file)?;
    let _lock = lock(&run_dir.join(status::LOCK_FILE), deadline).await?;
    let status_file = run_dir.join("status.json");
    clear_interrupted_boot(run_dir, &status_file, &config.paths.state_dir);

    let mut recorder = Recorder::start(&status_file).with_history(&config.paths.state_dir);
    recorder.save()?;
    let remaining = deadline.saturating_sub(started.elapsed());
    let mut launch_hook = None;
    let git_work = GitWork::default();
    let work = steps(
        config,
        &mut recorder,
        &mut launch_hook,
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
        .is_some_and(|s| s.state == WARMED);
    match (launch_hook, result) {
        // A warm pool's launch is complete once everything is prepared.
        (Some(hook), Ok(())) if warmed => hook.complete(ActionResult::Continue).await,
        (Some(hook), Ok(())) => hook.finish(config, true).await,
        (Some(hook), Err(error)) => {
            // The boot's own error is what the caller needs; a failed ABANDON is only logged.
            if let Err(hook_error) = hook.finish(config, false).await {
                tracing::error!(error = %hook_error.chain(), "could not abandon the launch");
            }
            Err(error)
        }
        (None, Err(error)) if !config.lifecycle.launch_hook.is_empty() => {
            // The boot failed before it knew who the instance is (bad tags, say); IMDS may
            // still name the instance and its group, which is all an ABANDON needs.
            if config.lifecycle.abandon_on_failure {
                if let Err(hook_error) = abandon_without_identity(config).await {
                    tracing::error!(error = %hook_error.chain(), "could not abandon the launch");
                }
            }
            Err(error)
        }
        (None, result) => result,
    }
}

/// What a boot killed midway left, cleared under the lock (so no other boot is writing): its
/// `running` status goes into the history as failed, and its temporary files, which may hold
/// secret values, are removed.
fn clear_interrupted_boot(run_dir: &Path, status_file: &Path, state_dir: &Path) {
    if let Ok(mut previous) = status::read_as_written(status_file) {
        if previous.outcome == Outcome::Running {
            previous.mark_interrupted();
            tracing::warn!(
                started_at = %previous.started_at,
                pid = previous.pid,
                "the previous boot was interrupted before it finished"
            );
            if let Err(e) = crate::history::record(state_dir, &previous) {
                tracing::warn!(error = %e, "could not record the interrupted boot in the history");
            }
        }
    }
    for entry in std::fs::read_dir(run_dir).into_iter().flatten().flatten() {
        if crate::atomic::is_temporary(&entry.file_name()) {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(error = %e, file = %entry.path().display(), "could not remove a file an interrupted boot left");
            }
        }
    }
}

async fn abandon_without_identity(config: &Config) -> Result<(), Error> {
    let imds = super::plan::imds_client(config);
    let instance_id = imds.get_required("meta-data/instance-id").await?;
    let region = crate::identity::region(&imds).await?;
    let group = match config.lifecycle.group.as_str() {
        "" => {
            let tag = crate::identity::ASG_GROUP_TAG;
            crate::identity::read_tags(&imds, config, &region, &instance_id, &[tag])
                .await?
                .remove(tag)
        }
        group => Some(group.to_string()),
    };
    let lifecycle = Lifecycle::new(&region, config.lifecycle.timeout, group, &instance_id).await?;
    lifecycle
        .complete(&config.lifecycle.launch_hook, ActionResult::Abandon)
        .await?;
    Ok(())
}

/// The launch hook's side of a boot: heartbeats while it runs, then CONTINUE once the instance
/// is healthy, or ABANDON when the boot failed or health stayed red.
struct LaunchHook {
    lifecycle: Arc<Lifecycle>,
    hook: String,
    heartbeats: tokio::task::JoinHandle<()>,
}

impl LaunchHook {
    async fn start(config: &Config, plan: &Plan) -> Result<Option<LaunchHook>, Error> {
        let hook = config.lifecycle.launch_hook.clone();
        if hook.is_empty() {
            return Ok(None);
        }
        let group = Some(config.lifecycle.group.clone())
            .filter(|g| !g.is_empty())
            .or(plan.identity.asg_group.clone());
        let lifecycle = Arc::new(
            Lifecycle::new(
                &plan.identity.region,
                config.lifecycle.timeout,
                group,
                &plan.identity.instance_id,
            )
            .await?,
        );
        let every = config.lifecycle.heartbeat;
        let heartbeats = tokio::spawn({
            let (lifecycle, hook) = (lifecycle.clone(), hook.clone());
            async move {
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    ticks.tick().await;
                    if let Err(e) = lifecycle.heartbeat(&hook).await {
                        tracing::warn!(error = %e, "a lifecycle heartbeat failed");
                    }
                }
            }
        });
        Ok(Some(LaunchHook {
            lifecycle,
            hook,
            heartbeats,
        }))
    }

    async fn complete(self, result: ActionResult) -> Result<(), Error> {
        self.heartbeats.abort();
        self.lifecycle.complete(&self.hook, result).await?;
        Ok(())
    }

    async fn finish(self, config: &Config, booted: bool) -> Result<(), Error> {
        let healthy = booted && wait_until_healthy(config).await;
        self.heartbeats.abort();
        let result = match (booted, healthy) {
            (true, true) => ActionResult::Continue,
            (false, _) if !config.lifecycle.abandon_on_failure => return Ok(()),
            _ => ActionResult::Abandon,
        };
        self.lifecycle.complete(&self.hook, result).await?;
        if booted && !healthy {
            return Err(Error::Unhealthy);
        }
        Ok(())
    }
}

/// Polls the health report until it is green or `lifecycle.health_wait` has passed.
async fn wait_until_healthy(config: &Config) -> bool {
    let checker = Checker::new(config);
    let waited = retry::poll(
        Duration::from_secs(1),
        config.lifecycle.health_wait,
        || async {
            match checker.check().await {
                health if health.healthy => Look::<(), _, std::convert::Infallible>::Ready(()),
                health => Look::Pending(health),
            }
        },
    )
    .await;
    match waited {
        Ok(()) => true,
        Err(Unready::TimedOut(health)) => {
            tracing::error!(
                state = health.state,
                reason = health.reason.as_deref().unwrap_or_default(),
                "the instance did not turn healthy in time; abandoning the launch"
            );
            false
        }
        Err(Unready::Failed(never)) => match never {},
    }
}

/// The boot proper. Secrets are fetched and checked before the checkout, and the env file is
/// written only after it, so a failure at any step leaves the previous env file in place.
async fn steps(
    config: &Config,
    recorder: &mut Recorder,
    launch_hook: &mut Option<LaunchHook>,
    git_work: &GitWork,
    boot_ends: Instant,
) -> Result<(), Error> {
    recorder.begin("identity");
    let imds = super::plan::imds_client(config);
    let plan = super::plan::resolve_with(&imds, config).await?;
    recorder.status.identity = Some(plan.identity.clone());
    *launch_hook = LaunchHook::start(config, &plan).await?;
    recorder.end(Outcome::Succeeded)?;

    recorder.begin("secrets");
    let client = secrets::client(&plan.identity.region, config.secrets.timeout).await?;
    // Each call has secrets.timeout (the SDK's operation timeout); the step gets a second more,
    // so that a stalled call ends with its own error, which names the secret, rather than the
    // step's, whichever timer the scheduler happens to wake first.
    let loaded = within(
        "secrets",
        config.secrets.timeout + Duration::from_secs(1),
        secrets::load(&client, &plan.identity.region, &plan.secrets),
    )
    .await??;
    recorder.status.secrets = loaded.versions.clone();
    let mut loaded = loaded;
    let credentials = git::Credentials::from_config(
        &config.git,
        &config.paths.run_dir,
        config.paths.allow_persistent_env_file,
        &mut loaded,
    )?;
    let environment = envfile::compose(&plan.env, loaded)?;
    let rendered = envfile::render(&environment, plan.secrets.format)?;
    recorder.end(Outcome::Succeeded)?;

    recorder.begin("git");
    let (checkout, note) = match checkout(config, &plan, credentials, git_work, boot_ends).await {
        Ok(checkout) => (checkout, None),
        Err(error) => {
            log_security_event(&error);
            keep_last_good(config, &plan, error)?
        }
    };
    if let Some(note) = &note {
        recorder.degrade(note.clone());
    }
    recorder.status.git = Some(GitStatus {
        url: git::redact(plan.git.url.as_deref().unwrap_or_default()),
        reference: plan.git.reference.clone(),
        dir: plan.git.dir.clone(),
        commit: checkout.commit.clone(),
        action: checkout.action.as_str().to_string(),
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
    recorder.end(Outcome::Succeeded)?;

    recorder.begin("service");
    if in_warm_pool(&imds).await {
        // Everything is ready; starting waits for the instance to go in service, when
        // `lifecycle watch` boots again.
        tracing::info!("the instance is in a warm pool: prepared, not starting the service");
        recorder.status.service = Some(ServiceStatus {
            manager: plan.service.manager,
            unit: plan.service.unit.clone(),
            state: WARMED.into(),
            restarted: false,
        });
        recorder.end(Outcome::Succeeded)?;
        return Ok(());
    }
    match exec_command {
        None => {
            let code_changed =
                matches!(checkout.action, git::Action::Cloned | git::Action::Fetched);
            let report = within(
                "service",
                config.service.start_timeout + config.service.settle + Duration::from_secs(5),
                service::start_systemd(
                    &plan,
                    env_changed,
                    code_changed,
                    config.service.start_timeout,
                    config.service.settle,
                ),
            )
            .await??;
            recorder.status.service = Some(ServiceStatus {
                manager: Manager::Systemd,
                unit: plan.service.unit.clone(),
                state: report.state,
                restarted: report.restarted,
            });
            recorder.end(Outcome::Succeeded)?;
            prune_releases(config, &plan);
            Ok(())
        }
        Some(command) => {
            prune_releases(config, &plan);
            recorder.status.service = Some(ServiceStatus {
                manager: Manager::Exec,
                unit: plan.service.unit.clone(),
                state: "exec".into(),
                restarted: true,
            });
            // The status must say "succeeded" before this process becomes the service; should
            // exec fail, the caller records that failure over it.
            recorder.finish(None)?;
            Err(command.exec().into())
        }
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

/// With `git.on_failure = "last-good"`, a failed checkout lets the boot go on with the release
/// already in service, and says so; without such a release, or with "fail", the error stands.
/// A remote that is not who it was pinned to be is logged apart from ordinary failures, with
/// the field `security_event`, so that journal alerts can match it.
fn log_security_event(error: &Error) {
    let event = match error {
        Error::Git(GitError::HostKey { .. }) => "ssh-host-key-mismatch",
        Error::Git(GitError::Certificate { .. }) => "tls-certificate-refused",
        _ => return,
    };
    tracing::error!(
        security_event = event,
        "{}",
        error.chain().replace("\n -> ", ": ")
    );
}

fn keep_last_good(
    config: &Config,
    plan: &Plan,
    error: Error,
) -> Result<(git::Checkout, Option<String>), Error> {
    let current = git::Layout::of(&plan.git.dir).current();
    match (config.git.on_failure, current, &error) {
        (OnGitFailure::LastGood, Some(commit), Error::Git(_)) => {
            let note = format!(
                "running last good commit {commit} because {}",
                error.chain().replace("\n -> ", ": ")
            );
            tracing::warn!("{note}");
            let kept = git::Checkout {
                commit: commit.to_string(),
                action: git::Action::Kept,
                received_objects: 0,
                received_bytes: 0,
            };
            Ok((kept, Some(note)))
        }
        _ => Err(error),
    }
}

/// The git sync of a boot, on a thread of its own: the boot can stop it and wait for it to end
/// before it decides what runs, writes its status or lets the lock go. (A task of tokio's
/// blocking pool would outlive a boot that timed out, and might switch the release afterwards.)
#[derive(Default)]
struct GitWork {
    cancel: git::Cancel,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl GitWork {
    /// Cancels the sync if it still runs, then waits for its thread: the transports end at
    /// their next read, which the per-read timeout bounds.
    async fn stop(&self) {
        self.cancel.cancel();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

async fn checkout(
    config: &Config,
    plan: &Plan,
    credentials: git::Credentials,
    git_work: &GitWork,
    boot_ends: Instant,
) -> Result<git::Checkout, Error> {
    let url = plan.git.url.clone().ok_or_else(|| GitError::NoUrl {
        tag: config.identity.repository_tag.clone(),
    })?;
    let user = &plan.service.user;
    let owner = match nix::unistd::User::from_name(user) {
        Ok(Some(found)) => git::Owner {
            uid: found.uid.as_raw(),
            gid: found.gid.as_raw(),
        },
        _ => return Err(ServiceError::UnknownUser { user: user.clone() }.into()),
    };
    let git_plan = plan.git.clone();
    // git.deadline, or what is left of the boot's, whichever ends first.
    let boot_left = boot_ends.saturating_duration_since(Instant::now());
    let limits = if config.git.deadline <= boot_left {
        git::Limits::new(config.git.deadline, "git.deadline", git_work.cancel.clone())
    } else {
        git::Limits::new(
            boot_left,
            "what was left of boot.deadline",
            git_work.cancel.clone(),
        )
    };
    let (done, result) = tokio::sync::oneshot::channel();
    // The HTTP transport runs its requests on this runtime.
    let runtime = tokio::runtime::Handle::current();
    let thread = std::thread::Builder::new()
        .name("git".into())
        .spawn(move || {
            let _inside = runtime.enter();
            let _ = done.send(git::sync(
                &git_plan,
                &url,
                Some(owner),
                &credentials,
                &limits,
            ));
        })
        .map_err(|e| Error::io("failed to start the git thread", e))?;
    *git_work
        .thread
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(thread);
    let result = result.await.map_err(|_| {
        Error::io(
            "the git thread failed",
            std::io::Error::other("it ended without an answer"),
        )
    })?;
    Ok(result?)
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

/// One boot at a time: cloud-init and the boot unit may both start one. Waits for the other to
/// finish, up to `wait`.
async fn lock(path: &Path, wait: Duration) -> Result<Flock<File>, Error> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o644)
        .open(path)
        .map_err(|e| Error::io(format!("failed to open the lock {}", path.display()), e))?;
    // flock takes the file and gives it back when the lock is held elsewhere.
    let mut unlocked = Some(file);
    let mut looks = 0;
    let locked = retry::poll(LOCK_POLL_INTERVAL, wait, || {
        looks += 1;
        let file = unlocked
            .take()
            .expect("a pending look gives the file back for the next");
        let look = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Look::Ready(lock),
            Err((returned, nix::errno::Errno::EWOULDBLOCK)) => {
                if looks == 1 {
                    tracing::info!(lock = %path.display(), "another boot is running, waiting for it");
                }
                unlocked = Some(returned);
                Look::Pending(())
            }
            Err((_, errno)) => Look::Failed(Error::io(
                format!("failed to lock {}", path.display()),
                errno.into(),
            )),
        };
        std::future::ready(look)
    })
    .await;
    locked.map_err(|unready| match unready {
        Unready::Failed(e) => e,
        Unready::TimedOut(()) => Error::Locked {
            path: path.display().to_string(),
            waited: humantime::format_duration(wait).to_string(),
        },
    })
}
