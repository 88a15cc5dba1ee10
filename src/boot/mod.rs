//! The boot pipeline: identity, secrets, git, env file, service — under the lock, recorded in
//! status.json, with the launch hook answered at the end. `boot`, `refresh` and `lifecycle
//! watch` all run it.

mod checkout;
pub(crate) mod deploy;
mod gate;
mod hooks;
mod launch_hook;
pub(crate) mod lifecycle;
mod lock;
mod recorder;
pub(crate) mod refresh;
mod secrets_step;

use std::time::{Duration, Instant};

use crate::aws::autoscaling::ActionResult;
use crate::aws::imds::ImdsClient;
use crate::config::{Config, Manager};
use crate::deadline::Deadline;
use crate::deliver::{self, files};
use crate::envfile::{self, Environment};
use crate::git;
use crate::plan::Plan;
use crate::secrets;
use crate::service;
use crate::state::deploys::{FailedCommit, Untrusted};
use crate::state::status::{GitStatus, Outcome, ServiceState, ServiceStatus};
use crate::Error;

use checkout::GitWork;
pub use checkout::Kept;
use launch_hook::LaunchHook;
use recorder::Recorder;
use secrets_step::Fetched;

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
    let deadline = Deadline::after(config.boot.deadline);
    let run_dir = &config.paths.run_dir;
    std::fs::create_dir_all(run_dir)
        .map_err(|e| Error::io(format!("failed to create {}", run_dir.display()), e))?;
    envfile::check_memory_backed(run_dir, config.paths.allow_persistent_env_file)?;
    let _lock = lock::lock(&config.paths.lock_file(), config.boot.deadline, "boot").await?;
    // A drain is final: `lifecycle watch` stops the unit under this lock, after which nothing
    // may start it again.
    refuse_if_draining(&config.paths)?;
    lock::clear_interrupted_boot(&config.paths);
    let mut recorder = Recorder::start(&config.paths);
    recorder.save()?;
    let mut effects = Effects::default();
    let git_work = GitWork::default();
    let steps = Steps {
        config,
        deadline,
        recorder: &mut recorder,
        effects: &mut effects,
        git_work: &git_work,
        fresh_secrets: None,
    };
    let result = within("boot", deadline, steps.run(run))
        .await
        .and_then(|r| r);
    // Nothing is decided or recorded while git may still change the release in service.
    git_work.stop().await;
    // Step 7, the report.
    if result.is_err() {
        recorder.status.serving_unchanged = effects.untouched.take();
    }
    recorder.finish(result.as_ref().err())?;
    if let Some(change) = &effects.change {
        hooks::run_post(config, change, &recorder.status).await;
    }
    let hook = effects.launch_hook.take();
    let answered = answer_the_launch(config, &recorder, hook, deadline, result).await;
    let answered = answered.map(|()| effects.kept);
    // The launch is part of the boot: an answer Auto Scaling did not take fails it.
    if let (Err(error), Outcome::Succeeded | Outcome::Degraded) =
        (&answered, recorder.status.outcome)
    {
        recorder.fail_after(error)?;
    }
    recorder.close();
    answered
}

/// The launch hook's answer to how the boot ended: CONTINUE once healthy (or, in a warm pool,
/// once prepared), ABANDON when it failed. The boot's own error is what the caller gets; a
/// failed ABANDON is only logged.
async fn answer_the_launch(
    config: &Config,
    recorder: &Recorder,
    hook: Option<LaunchHook>,
    deadline: Deadline,
    result: Result<(), Error>,
) -> Result<(), Error> {
    let warmed = recorder
        .status
        .service
        .as_ref()
        .is_some_and(|s| s.state == ServiceState::Warmed);
    let abandoned = match (hook, result) {
        (Some(hook), Ok(())) if warmed => {
            return hook.complete(config, ActionResult::Continue).await
        }
        (Some(hook), Ok(())) => return hook.finish(config, true).await,
        (None, Ok(())) => return Ok(()),
        (Some(hook), Err(error)) => (hook.finish(config, false).await, error),
        // A launch hook is set, but the boot failed before it knew the instance.
        (None, Err(error)) => match (
            &config.lifecycle.launch_hook,
            config.lifecycle.abandon_on_failure,
        ) {
            (Some(hook), true) => (
                launch_hook::abandon_without_identity(config, hook, deadline).await,
                error,
            ),
            _ => (Ok(()), error),
        },
    };
    if let (Err(hook_error), _) = &abandoned {
        tracing::error!(error = %hook_error.chain(), "could not abandon the launch");
    }
    Err(abandoned.1)
}

/// A boot's steps 1 to 6 (docs/contract.md), one method each; the 7th, the report, is
/// `boot`'s, as it must also record the steps that did not finish. Each step records its phase in
/// status.json. Secrets are fetched and checked while git fetches into a new release
/// directory; the link is switched only after both, and the env file after that, so a failure
/// at any step leaves the previous release and env file in place.
struct Steps<'a> {
    config: &'a Config,
    deadline: Deadline,
    recorder: &'a mut Recorder,
    effects: &'a mut Effects,
    git_work: &'a GitWork,
    /// What Secrets Manager gave this boot: sealed into the snapshot once the boot succeeds.
    fresh_secrets: Option<secrets::Read>,
}

/// Who this instance is and what it runs now: what the steps after the identity go by.
struct Known {
    imds: ImdsClient,
    plan: Plan,
    /// The release last proven healthy, which a failed change rolls back to (systemd mode).
    previous: Option<gate::Previous>,
    /// The commit the release link names.
    in_service: Option<String>,
    /// An earlier boot wrote what the service reads and was stopped before the unit got it.
    unapplied: bool,
}

/// What deploys.json says about deploying the ref's commit.
struct Record {
    /// A commit that failed its gate before: the release in service stays while the ref
    /// names it.
    avoid: Option<FailedCommit>,
    /// Why the record cannot be read: then nothing new is deployed over a release in service.
    untrusted: Option<Untrusted>,
}

/// Step 4's sync, and when it began.
struct Synced {
    started: Instant,
    checkout: Result<(git::Checkout, Option<Kept>), Error>,
}

/// The commit the git step settled on.
struct Release {
    commit: String,
    /// The service must restart for it: the link moved, or names a release never proven.
    code_changed: bool,
}

impl Steps<'_> {
    async fn run(mut self, run: Run) -> Result<(), Error> {
        let (known, record) = self.identify(run).await?;
        let (fetched, synced) = self.fetch_and_sync(&known, record).await?;
        let Fetched {
            environment,
            rendered,
            delivered,
            files,
            ..
        } = fetched;
        let release = self.check_out(&known, synced, &environment).await?;
        let command = self.prepare_command(&known.plan, &environment)?;
        drop(environment);
        let written = self.write_env_file(&known, &release, &rendered, &delivered, &files)?;
        self.start(&known, &release, written, command).await
    }

    /// Steps 1 and 2, identity and plan: who this instance is, every template rendered against it; then
    /// the launch hook's heartbeats, and what deploys.json says.
    async fn identify(&mut self, run: Run) -> Result<(Known, Record), Error> {
        let config = self.config;
        self.recorder.begin("identity");
        let imds = crate::plan::identity::imds_client(&config.identity);
        // A fleet booting at once shares DescribeTags' bucket: the fallback may take what the
        // boot deadline leaves.
        let plan = crate::plan::resolve_with(&imds, config, self.deadline.left()).await?;
        self.recorder.status.identity = Some(plan.identity.clone());
        self.effects.launch_hook = LaunchHook::start(config, &plan, self.deadline).await?;
        // deploys.json: the release last proven healthy (what a failed change rolls back to)
        // and what failed its gate before. When it cannot be trusted, nothing new is deployed
        // over a release in service, and the gate guards the release in service itself.
        let record = crate::state::deploys::read(&config.paths.state_dir);
        let previous = match (plan.service.manager, &record) {
            (Manager::Exec, _) => None,
            (Manager::Systemd, Ok(record)) => gate::Previous::capture(record, &plan),
            (Manager::Systemd, Err(_)) => gate::Previous::in_service(&plan),
        };
        let in_service = git::Layout::of(&plan.git.dir)
            .current()
            .map(|commit| commit.to_string());
        if let (Some(commit), Some(previous)) = (&in_service, &previous) {
            if *commit == previous.commit {
                self.effects.untouched = Some(crate::state::status::Serving {
                    commit: commit.clone(),
                    unit: plan.service.unit.clone(),
                });
            }
        }
        let record = match (run.retry_failed, record) {
            (true, _) => Record {
                avoid: None,
                untrusted: None,
            },
            (false, Ok(record)) => Record {
                avoid: record.avoided(&plan.git.reference).cloned(),
                untrusted: None,
            },
            (false, Err(untrusted)) => Record {
                avoid: None,
                untrusted: Some(untrusted),
            },
        };
        self.recorder.end(Outcome::Succeeded)?;
        let unapplied = plan.service.manager == Manager::Systemd
            && config.paths.apply_pending_marker().exists();
        let known = Known {
            imds,
            plan,
            previous,
            in_service,
            unapplied,
        };
        Ok((known, record))
    }

    /// Step 3, and step 4's sync: the secrets, and the ref's commit in a release directory (or
    /// the release to keep). The sync runs beside the secrets step unless a git credential is
    /// one of the secrets. Neither changes what serves, so whichever fails, the instance is left
    /// as it was; a failed secrets step ends the boot with its error, as when the sync came after
    /// it, and `boot` stops the sync.
    async fn fetch_and_sync(
        &mut self,
        known: &Known,
        record: Record,
    ) -> Result<(Fetched, Synced), Error> {
        let (config, deadline, git_work) = (self.config, self.deadline, self.git_work);
        let sync = |from_secrets| async move {
            let started = Instant::now();
            let checkout = sync_release(config, deadline, git_work, known, record, from_secrets);
            Synced {
                started,
                checkout: checkout.await,
            }
        };
        if config.git.credentials_in_secrets() {
            let mut fetched = self.fetch_secrets(&known.plan).await?;
            let synced = sync(fetched.git_credentials.take()).await;
            return Ok((fetched, synced));
        }
        let mut syncing = std::pin::pin!(sync(None));
        let mut synced = None;
        let fetched = {
            let mut secrets = std::pin::pin!(self.fetch_secrets(&known.plan));
            loop {
                tokio::select! {
                    // The sync first: its thread starts at once, while the secrets step's first
                    // poll readies the AWS client before it yields.
                    biased;
                    done = &mut syncing, if synced.is_none() => synced = Some(done),
                    fetched = &mut secrets => break fetched?,
                }
            }
        };
        let synced = match synced {
            Some(synced) => synced,
            None => syncing.await,
        };
        Ok((fetched, synced))
    }

    /// Step 4, git: the sync's release (or, when the sync failed and the config allows, the
    /// last good one kept), `deploy.pre_start` run on a new release, and the link switched to
    /// it.
    async fn check_out(
        &mut self,
        known: &Known,
        synced: Synced,
        environment: &Environment,
    ) -> Result<Release, Error> {
        let (config, plan) = (self.config, &known.plan);
        // The phase began with the sync, which may have run beside the secrets step.
        self.recorder.begin_at("git", synced.started);
        let (checkout, kept) = synced.checkout?;
        let in_service = known.in_service.as_deref();
        let proven = known.previous.as_ref().map(|p| p.commit.as_str());
        let note = kept.as_ref().map(|kept| kept.note.clone());
        self.effects.kept = kept;
        let fetched = matches!(checkout.action, git::Action::Cloned | git::Action::Fetched);
        // The unit restarts when the link moves, and when it names a release never proven
        // healthy (a boot killed after the switch, before the gate), so that the gate judges it.
        let moved = in_service != Some(checkout.commit.as_str());
        let code_changed = moved || proven.is_some_and(|proven| proven != checkout.commit);
        if code_changed {
            self.effects.change = Some(hooks::Change::to(plan, in_service, &checkout.commit));
        }
        if fetched {
            hooks::run_pre_start(config, plan, environment, &checkout.commit, in_service).await?;
        }
        if moved {
            self.effects.untouched = None;
            git::switch(&plan.git.dir, &checkout.commit).map_err(|e| git::GitError::Local {
                action: "switch to the new release",
                dir: plan.git.dir.clone(),
                message: e.to_string(),
            })?;
        }
        if let Some(note) = &note {
            self.recorder.degrade(note.clone());
        }
        self.recorder.status.git = Some(GitStatus {
            url: (plan.git.remote.as_ref()).map_or_else(|_| String::new(), ToString::to_string),
            reference: plan.git.reference.clone(),
            dir: plan.git.dir.clone(),
            commit: checkout.commit.clone(),
            action: checkout.action,
            received_bytes: checkout.received_bytes,
            note,
            mirror: checkout.mirror.clone(),
            seed: checkout.seed.clone(),
        });
        self.recorder.end(match self.recorder.status.degraded {
            Some(_) => Outcome::Degraded,
            None => Outcome::Succeeded,
        })?;
        Ok(Release {
            commit: checkout.commit,
            code_changed,
        })
    }

    /// Step 6's first half in exec mode: whether the service's user can run the command is known
    /// now, before the env file changes.
    fn prepare_command(
        &mut self,
        plan: &Plan,
        environment: &Environment,
    ) -> Result<Option<service::ExecCommand>, Error> {
        if !matches!(plan.service.manager, Manager::Exec) {
            return Ok(None);
        }
        self.recorder.begin("command");
        let command = service::prepare_exec(plan, environment)?;
        self.recorder.end(Outcome::Succeeded)?;
        Ok(Some(command))
    }

    /// Step 5, the env file, the secret files and the credentials: each written only when it
    /// changed. What did.
    fn write_env_file(
        &mut self,
        known: &Known,
        release: &Release,
        rendered: &str,
        delivered: &deliver::credentials::Credentials,
        secret_files: &[files::Rendered],
    ) -> Result<Written, Error> {
        let plan = &known.plan;
        self.recorder.begin("env_file");
        if plan.service.manager == Manager::Systemd {
            let marker = self.config.paths.apply_pending_marker();
            let note = b"bootagent wrote what the service reads and has not yet restarted,                          reloaded or signalled it; the next boot restarts it\n";
            crate::atomic::write_file(&marker, note, 0o644)
                .map_err(|e| Error::io(format!("failed to write {}", marker.display()), e))?;
        }
        // Every file is checked before any is written, and all before the env file.
        let files = files::write_all(secret_files)?;
        let env = envfile::write(&plan.env_file, rendered)?;
        let credentials = deliver_credentials(self.config, plan, delivered)?;
        let written = Written {
            env,
            credentials,
            credential_names: delivered.keys().cloned().collect(),
            files,
        };
        self.recorder.status.delivered = written.record(plan);
        if written.secrets_changed() {
            self.effects.untouched = None;
            if self.effects.change.is_none() {
                let in_service = known.in_service.as_deref();
                self.effects.change = Some(hooks::Change::to(plan, in_service, &release.commit));
            }
        }
        self.recorder.end(Outcome::Succeeded)?;
        Ok(written)
    }

    /// Step 6, start: in a warm pool, nothing yet; under systemd, the unit started and held to the
    /// health gate; in exec mode, this process becomes the service.
    async fn start(
        &mut self,
        known: &Known,
        release: &Release,
        written: Written,
        command: Option<service::ExecCommand>,
    ) -> Result<(), Error> {
        let plan = &known.plan;
        self.recorder.begin("service");
        refuse_if_draining(&self.config.paths)?;
        if in_warm_pool(&known.imds).await {
            // Everything is ready; starting waits for the instance to go in service, when
            // `lifecycle watch` boots again.
            tracing::info!("the instance is in a warm pool: prepared, not starting the service");
            self.record_service(plan, ServiceState::Warmed, false, Vec::new());
            self.recorder.end(Outcome::Succeeded)?;
            self.keep_snapshot().await;
            return Ok(());
        }
        let Some(command) = command else {
            let Started {
                report,
                rolled_back,
            } = self.start_gated(known, release, written).await?;
            // The unit has what was written (or, rolled back, what was there before).
            let marker = self.config.paths.apply_pending_marker();
            if let Err(e) = std::fs::remove_file(&marker) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(error = %e, "could not remove {}", marker.display());
                }
            }
            let state = ServiceState::Unit(report.state);
            self.record_service(plan, state, report.restarted, report.applied);
            return match rolled_back {
                Some(error) => {
                    self.recorder.end(Outcome::RolledBack)?;
                    Err(error)
                }
                None => {
                    self.recorder.end(Outcome::Succeeded)?;
                    prune_releases(self.config, plan);
                    self.keep_snapshot().await;
                    Ok(())
                }
            };
        };
        prune_releases(self.config, plan);
        self.keep_snapshot().await;
        self.record_service(plan, ServiceState::Exec, true, Vec::new());
        // The status must say "succeeded" before this process becomes the service; should exec
        // fail, `boot` records that failure over it.
        self.recorder.finish(None)?;
        self.recorder.close();
        Err(command.exec().into())
    }

    /// Starts the unit when something changed and holds it to the health gate; a change that
    /// fails the gate is rolled back to the release last proven healthy.
    async fn start_gated(
        &mut self,
        known: &Known,
        release: &Release,
        written: Written,
    ) -> Result<Started, Error> {
        let (config, plan) = (self.config, &known.plan);
        let secrets_changed = written.secrets_changed();
        let changed = secrets_changed || release.code_changed;
        if changed {
            self.effects.untouched = None;
        }
        let has_previous = known.previous.is_some();
        if known.unapplied {
            tracing::warn!(
                unit = %plan.service.unit,
                "an earlier boot wrote what the service reads and was stopped before the unit                  got it: restarting the unit"
            );
        }
        let changes = written.into_changes(plan, release.code_changed || known.unapplied);
        let started = gate::start(config, plan, &changes, has_previous);
        match (started.await, &known.previous) {
            (Ok(report), _) => {
                let versions = &self.recorder.status.secrets;
                let passed = changed && (report.restarted || !report.applied.is_empty());
                if let Err(e) = gate::proven(&config.paths, &release.commit, versions, passed) {
                    // The boot serves; the next failed change cannot roll back to it.
                    tracing::error!(
                        "{} is healthy, but could not be recorded as the release to roll back \
                         to: {}",
                        release.commit,
                        e.one_line()
                    );
                }
                Ok(Started {
                    report,
                    rolled_back: None,
                })
            }
            (Err(cause), Some(previous)) if changed => {
                let rolled_back = gate::roll_back_change(
                    config,
                    plan,
                    previous,
                    &release.commit,
                    secrets_changed,
                    self.recorder,
                    cause,
                );
                let (report, error) = rolled_back.await?;
                Ok(Started {
                    report,
                    rolled_back: Some(error),
                })
            }
            (Err(cause), _) => Err(cause),
        }
    }

    fn record_service(
        &mut self,
        plan: &Plan,
        state: ServiceState,
        restarted: bool,
        applied: Vec<crate::config::OnChange>,
    ) {
        self.recorder.status.service = Some(ServiceStatus {
            manager: plan.service.manager,
            unit: plan.service.unit.clone(),
            state,
            restarted,
            applied,
        });
    }
}

/// What step 5 changed.
struct Written {
    env: bool,
    credentials: bool,
    credential_names: Vec<String>,
    /// The secret files that changed, each with its `on_change`.
    files: Vec<files::Changed>,
}

impl Written {
    /// Whether the service's secrets, in any form it gets them, changed.
    fn secrets_changed(&self) -> bool {
        self.env || self.credentials || !self.files.is_empty()
    }

    /// What status.json says of it: names and paths.
    fn record(&self, plan: &Plan) -> crate::state::status::Delivered {
        use crate::state::status::{DeliveredCredentials, DeliveredFile};
        let credentials = (plan.secrets.credentials_dir.clone()).map(|dir| DeliveredCredentials {
            dir,
            names: self.credential_names.clone(),
            changed: self.credentials,
        });
        let files = (plan.files.iter())
            .map(|file| DeliveredFile {
                path: file.path.clone(),
                owner: file.owner.clone(),
                group: file.group.clone(),
                mode: format!("{:04o}", file.mode),
                changed: self.files.iter().any(|changed| changed.path == file.path),
            })
            .collect();
        crate::state::status::Delivered { credentials, files }
    }

    /// What the unit needs for them: the env file and new code (or a change an interrupted
    /// boot did not apply, `restart`) take a restart; credentials what
    /// `secrets.on_change` says, and each secret file its own `on_change`.
    fn into_changes(self, plan: &Plan, restart: bool) -> service::Changes {
        service::Changes {
            restart: self.env || restart,
            actions: (self
                .credentials
                .then_some(plan.secrets.on_change)
                .into_iter())
            .chain(self.files.iter().map(|file| file.on_change))
            .collect(),
            credentials: self.credentials,
            credential_names: self.credential_names,
        }
    }
}

/// Writes the credentials when the secrets are delivered as such: root's alone under systemd
/// (systemd gives the unit its copy), the service user's in exec mode. Otherwise a store an
/// earlier config left goes. Whether anything changed.
fn deliver_credentials(
    config: &Config,
    plan: &Plan,
    credentials: &deliver::credentials::Credentials,
) -> Result<bool, Error> {
    use deliver::credentials::{self, Owner};
    let Some(dir) = &plan.secrets.credentials_dir else {
        let stale = config.paths.credentials_dir(&plan.identity.service);
        return match std::fs::remove_dir_all(&stale) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(
                format!("failed to remove {}", stale.display()),
                e,
            )),
        };
    };
    let owner = match plan.service.manager {
        Manager::Systemd => Owner::Root,
        Manager::Exec => {
            let user = service::user(&plan.service.user)?;
            Owner::Service {
                uid: user.uid,
                gid: user.gid,
            }
        }
    };
    Ok(credentials::write(dir, owner, credentials)?)
}

/// What starting the unit came to.
struct Started {
    report: service::UnitReport,
    /// The change failed its gate and was rolled back: the error the boot ends with.
    rolled_back: Option<Error>,
}

/// What a boot leaves for after its steps, whether they finished or not.
#[derive(Default)]
struct Effects {
    launch_hook: Option<LaunchHook>,
    /// A change to what runs was attempted.
    change: Option<hooks::Change>,
    /// The release last proven healthy, while this boot has changed nothing that serves: a
    /// boot that fails then leaves the instance serving as before.
    untouched: Option<crate::state::status::Serving>,
    /// Why the release in service was kept instead of what the ref names.
    kept: Option<checkout::Kept>,
}

/// The boot lock: while it is held, no boot, refresh or deploy runs.
pub async fn lock(
    paths: &crate::config::PathsConfig,
    wait: Duration,
) -> Result<nix::fcntl::Flock<std::fs::File>, Error> {
    lock::lock(&paths.lock_file(), wait, "boot").await
}

/// The seed's lock: one `bootagent prepare` at a time per state dir.
pub async fn seed_lock(
    paths: &crate::config::PathsConfig,
    wait: Duration,
) -> Result<nix::fcntl::Flock<std::fs::File>, Error> {
    lock::lock(&paths.seed_lock(), wait, "prepare").await
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

/// Step 4's sync: the ref's commit fetched into a release directory of its own, or the release
/// to keep (see `checkout::checkout_or_keep`); nothing that serves changes. With the
/// credentials `from_secrets`, or else those the config names outside them (files, or none).
async fn sync_release(
    config: &Config,
    deadline: Deadline,
    git_work: &GitWork,
    known: &Known,
    record: Record,
    from_secrets: Option<git::Credentials>,
) -> Result<(git::Checkout, Option<Kept>), Error> {
    let credentials = match from_secrets {
        Some(credentials) => credentials,
        None => {
            let mut none = secrets::LoadedSecrets::default();
            git::Credentials::new(&config.git, &config.paths, &mut none)?
        }
    };
    let in_service = known.in_service.as_deref();
    let proven = known.previous.as_ref().map(|p| p.commit.as_str());
    match (record.untrusted, in_service) {
        (Some(untrusted), Some(commit)) => Ok(checkout::keep_in_service(commit, untrusted.into())),
        (untrusted, _) => {
            if let Some(untrusted) = untrusted {
                // A first boot has nothing to keep: it deploys, and says why it cannot check.
                tracing::warn!("{untrusted}");
            }
            let keep = proven.or(in_service);
            let (plan, avoid) = (&known.plan, record.avoid);
            checkout::checkout_or_keep(config, plan, credentials, git_work, deadline, avoid, keep)
                .await
        }
    }
}

/// `work` within `deadline`, or the error that names the step and the deadline's length.
async fn within<T>(
    phase: &'static str,
    deadline: Deadline,
    work: impl std::future::Future<Output = T>,
) -> Result<T, Error> {
    deadline.limit(work).await.map_err(|_| Error::Deadline {
        phase,
        limit: deadline.length(),
    })
}
