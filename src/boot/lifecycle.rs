//! The instance's Auto Scaling lifecycle: answering hooks by hand, and following the instance
//! out of a warm pool (boot) and into termination (drain, stop, complete the hook).

use std::time::Duration;

use crate::aws::autoscaling::{ActionResult, Answer, Lifecycle};
use crate::config::{Config, Manager};
use crate::plan::identity::Identity;
use crate::state::status::{self, ServiceState};
use crate::Error;

/// CompleteLifecycleAction with `result`, or a heartbeat without one.
pub async fn call(
    config: &Config,
    hook: Option<String>,
    result: Option<ActionResult>,
) -> Result<(), Error> {
    let hook = hook_or_default(&hook, config)?;
    let lifecycle = connect_here(config).await?;
    let answer = match result {
        Some(result) => lifecycle.complete(&hook, result).await?,
        None => lifecycle.heartbeat(&hook).await?,
    };
    if answer == Answer::NoActiveAction {
        eprintln!("no active lifecycle action for hook {hook}: nothing to do");
    }
    Ok(())
}

/// The lifecycle client for this instance, its identity read from IMDS.
async fn connect_here(config: &Config) -> Result<Lifecycle, Error> {
    let plan = crate::plan::resolve(config).await?;
    connect(config, &plan.identity).await
}

/// The lifecycle client for the instance `identity` names.
pub async fn connect(config: &Config, identity: &Identity) -> Result<Lifecycle, Error> {
    Ok(Lifecycle::connect(
        &config.lifecycle,
        &identity.region,
        &identity.instance_id,
        identity.asg_group.clone(),
    )
    .await?)
}

fn hook_or_default(hook: &Option<String>, config: &Config) -> Result<String, Error> {
    hook.clone()
        .or_else(|| config.lifecycle.launch_hook.clone())
        .ok_or_else(|| {
            Error::Usage("name the hook with --hook, or set lifecycle.launch_hook".into())
        })
}

/// Polls IMDS until the instance is being terminated, then drains it. A transient IMDS error is
/// logged and polled through; only the termination ends the watch.
pub async fn watch(config: &Config, interval: Duration) -> Result<(), Error> {
    let imds = crate::plan::identity::imds_client(&config.identity);
    loop {
        match imds.target_lifecycle_state().await {
            Ok(Some(state)) if state == "Terminated" => return terminate(config, true).await,
            Ok(Some(state)) if state == "InService" && last_boot_warmed(config) => {
                tracing::info!("out of the warm pool: booting to start the service");
                if let Err(e) = crate::boot::boot(config, crate::boot::Run::default()).await {
                    tracing::error!(error = %e.chain(), "the boot out of the warm pool failed");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reading the lifecycle state failed"),
        }
        // A spot interruption gives two minutes and no lifecycle hook.
        if let Ok(Some(notice)) = imds.get("meta-data/spot/instance-action").await {
            if spot_terminates(&notice) {
                tracing::warn!("spot interruption notice: draining");
                return terminate(config, false).await;
            }
            // A stop or hibernation comes back: a drain, which is final, would keep the
            // service down after it (the run dir survives hibernation).
            tracing::warn!(notice = %notice, "spot interruption notice that does not terminate: not draining");
        }
        tokio::time::sleep(interval).await;
    }
}

/// Whether a `spot/instance-action` notice (`{"action": "terminate" | "stop" | "hibernate",
/// "time": …}`) ends the instance. One that cannot be read is taken as a termination, as before
/// the notice had an action.
fn spot_terminates(notice: &str) -> bool {
    let action = serde_json::from_str::<serde_json::Value>(notice)
        .ok()
        .and_then(|notice| notice.get("action")?.as_str().map(str::to_string));
    !matches!(action.as_deref(), Some("stop" | "hibernate"))
}

fn last_boot_warmed(config: &Config) -> bool {
    status::read(&config.paths)
        .ok()
        .and_then(|s| s.service)
        .is_some_and(|s| s.state == ServiceState::Warmed)
}

/// Health turns 503 (the ALB stops sending), the drain time passes, the service stops, and only
/// then is the termination hook completed.
async fn terminate(config: &Config, complete_hook: bool) -> Result<(), Error> {
    let marker = config.paths.draining_marker();
    std::fs::write(&marker, b"")
        .map_err(|e| Error::io(format!("failed to write {}", marker.display()), e))?;
    tracing::info!(drain = %humantime::format_duration(config.lifecycle.drain), "terminating: draining");
    tokio::time::sleep(config.lifecycle.drain).await;
    // A boot, refresh or deploy in flight ends first (each refuses to start once the marker
    // exists); holding the lock until the hook is answered, none starts the unit again.
    // A boot that holds the lock past its own deadline is hung: the drain goes on without it
    // (the instance is leaving either way).
    let _lock = match crate::boot::lock(&config.paths, config.boot.deadline).await {
        Ok(lock) => Some(lock),
        Err(e) => {
            tracing::error!(error = %e.chain(), "draining without the boot lock");
            None
        }
    };
    // The unit the last run left, or, when that run failed before its service step, the unit
    // that serves as before.
    let unit = status::read(&config.paths).ok().and_then(|last| {
        match (last.service, last.serving_unchanged) {
            (Some(service), _) => (service.manager == Manager::Systemd).then_some(service.unit),
            (None, Some(serving)) => Some(serving.unit),
            (None, None) => None,
        }
    });
    if let Some(unit) = unit {
        tracing::info!(unit = %unit, "stopping the service");
        crate::service::stop_systemd(&unit).await?;
    }
    if let (true, Some(hook)) = (complete_hook, &config.lifecycle.termination_hook) {
        let lifecycle = connect_here(config).await?;
        if lifecycle.complete(hook, ActionResult::Continue).await? == Answer::NoActiveAction {
            eprintln!("no active lifecycle action for hook {hook}: nothing to complete");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_spot_termination_drains_for_good() {
        assert!(spot_terminates(
            r#"{"action": "terminate", "time": "2026-11-22T17:00:00Z"}"#
        ));
        assert!(!spot_terminates(
            r#"{"action": "hibernate", "time": "2026-11-22T17:00:00Z"}"#
        ));
        assert!(!spot_terminates(
            r#"{"action": "stop", "time": "2026-11-22T17:00:00Z"}"#
        ));
        assert!(spot_terminates("not json"), "unreadable: as a termination");
    }
}
