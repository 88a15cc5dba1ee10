use std::time::Duration;

use clap::{Args, Subcommand};

use crate::autoscaling::{ActionResult, Answer, Lifecycle};
use crate::config::{Config, Manager};
use crate::health::DRAINING_MARKER;
use crate::imds::ImdsClient;
use crate::status::{self, WARMED};
use crate::Error;

#[derive(Debug, Args)]
pub struct LifecycleArgs {
    #[command(subcommand)]
    command: LifecycleCommand,
}

#[derive(Debug, Subcommand)]
enum LifecycleCommand {
    /// Complete this instance's lifecycle action (CompleteLifecycleAction)
    Complete {
        /// The hook [default: lifecycle.launch_hook]
        #[arg(long)]
        hook: Option<String>,
        #[arg(long, value_enum)]
        result: ActionResult,
    },
    /// Extend this instance's lifecycle action (RecordLifecycleActionHeartbeat)
    Heartbeat {
        /// The hook [default: lifecycle.launch_hook]
        #[arg(long)]
        hook: Option<String>,
    },
    /// Follow the instance's lifecycle: on termination (or a spot interruption) drain, stop the
    /// service and complete lifecycle.termination_hook; out of a warm pool, boot to start it
    Watch {
        /// How often to ask instance metadata
        #[arg(long, default_value = "5s", value_parser = positive_duration)]
        interval: Duration,
    },
}

impl LifecycleArgs {
    /// "No active lifecycle action" is reported on stderr and exits 0: there is nothing to do.
    pub fn run(self, config: &Config) -> Result<(), Error> {
        let runtime = super::runtime()?;
        match self.command {
            LifecycleCommand::Complete { hook, result } => {
                runtime.block_on(call(config, hook, Some(result)))
            }
            LifecycleCommand::Heartbeat { hook } => runtime.block_on(call(config, hook, None)),
            LifecycleCommand::Watch { interval } => runtime.block_on(watch(config, interval)),
        }
    }
}

/// CompleteLifecycleAction with `result`, or a heartbeat without one.
async fn call(
    config: &Config,
    hook: Option<String>,
    result: Option<ActionResult>,
) -> Result<(), Error> {
    let hook = hook_or_default(&hook, config)?;
    let lifecycle = connect(config).await?;
    let answer = match result {
        Some(result) => lifecycle.complete(&hook, result).await?,
        None => lifecycle.heartbeat(&hook).await?,
    };
    if answer == Answer::NoActiveAction {
        eprintln!("no active lifecycle action for hook {hook}: nothing to do");
    }
    Ok(())
}

/// The lifecycle client for this instance: its id and group from IMDS, or the group from config.
pub async fn connect(config: &Config) -> Result<Lifecycle, Error> {
    let plan = super::plan::resolve(config).await?;
    let group = Some(config.lifecycle.group.clone())
        .filter(|g| !g.is_empty())
        .or(plan.identity.asg_group.clone());
    Ok(Lifecycle::new(
        &plan.identity.region,
        config.lifecycle.timeout,
        group,
        &plan.identity.instance_id,
    )
    .await?)
}

fn hook_or_default(hook: &Option<String>, config: &Config) -> Result<String, Error> {
    hook.clone()
        .or_else(|| Some(config.lifecycle.launch_hook.clone()).filter(|h| !h.is_empty()))
        .ok_or_else(|| {
            Error::Usage("name the hook with --hook, or set lifecycle.launch_hook".into())
        })
}

/// Polls IMDS until the instance is being terminated, then drains it. A transient IMDS error is
/// logged and polled through; only the termination ends the watch.
async fn watch(config: &Config, interval: Duration) -> Result<(), Error> {
    let imds = ImdsClient::from_env(config.identity.imds_deadline);
    loop {
        match imds.target_lifecycle_state().await {
            Ok(Some(state)) if state == "Terminated" => return terminate(config, true).await,
            Ok(Some(state)) if state == "InService" && last_boot_warmed(config) => {
                tracing::info!("out of the warm pool: booting to start the service");
                if let Err(e) = super::boot::boot(config).await {
                    tracing::error!(error = %e.chain(), "the boot out of the warm pool failed");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reading the lifecycle state failed"),
        }
        // A spot interruption gives two minutes and no lifecycle hook.
        if let Ok(Some(_)) = imds.get("meta-data/spot/instance-action").await {
            tracing::warn!("spot interruption notice: draining");
            return terminate(config, false).await;
        }
        tokio::time::sleep(interval).await;
    }
}

fn last_boot_warmed(config: &Config) -> bool {
    status::read(&config.paths.run_dir.join("status.json"))
        .ok()
        .and_then(|s| s.service)
        .is_some_and(|s| s.state == WARMED)
}

/// Health turns 503 (the ALB stops sending), the drain time passes, the service stops, and only
/// then is the termination hook completed.
async fn terminate(config: &Config, complete_hook: bool) -> Result<(), Error> {
    let marker = config.paths.run_dir.join(DRAINING_MARKER);
    std::fs::write(&marker, b"")
        .map_err(|e| Error::io(format!("failed to write {}", marker.display()), e))?;
    tracing::info!(drain = %humantime::format_duration(config.lifecycle.drain), "terminating: draining");
    tokio::time::sleep(config.lifecycle.drain).await;
    let last = status::read(&config.paths.run_dir.join("status.json")).ok();
    if let Some(service) = last.and_then(|s| s.service) {
        if service.manager == Manager::Systemd {
            tracing::info!(unit = %service.unit, "stopping the service");
            crate::service::stop_systemd(&service.unit).await?;
        }
    }
    let hook = &config.lifecycle.termination_hook;
    if complete_hook && !hook.is_empty() {
        let lifecycle = connect(config).await?;
        if lifecycle.complete(hook, ActionResult::Continue).await? == Answer::NoActiveAction {
            eprintln!("no active lifecycle action for hook {hook}: nothing to complete");
        }
    }
    Ok(())
}

/// A duration longer than zero: a zero interval would poll instance metadata in a busy loop.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("must be longer than 0s".into()),
        Ok(duration) => Ok(duration),
        Err(e) => Err(e.to_string()),
    }
}
