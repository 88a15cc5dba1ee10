//! The launch hook's side of a boot: heartbeats while it runs, then CONTINUE or ABANDON.

use std::sync::Arc;

use crate::aws::autoscaling::{ActionResult, Lifecycle};
use crate::config::Config;
use crate::deadline::Deadline;
use crate::plan::Plan;
use crate::report::health::{Checker, Scope};
use crate::Error;

/// ABANDONs the launch of a boot that failed before it knew who the instance is (bad tags, say):
/// IMDS may still name the instance and its group, which is all an ABANDON needs.
pub(super) async fn abandon_without_identity(
    config: &Config,
    hook: &str,
    deadline: Deadline,
) -> Result<(), Error> {
    let imds = crate::plan::identity::imds_client(&config.identity);
    let instance_id = imds.get_required("meta-data/instance-id").await?;
    let region = crate::plan::identity::region(&imds).await?;
    // The tag is read only when the config does not name the group.
    let tagged_group = match config.lifecycle.group {
        Some(_) => None,
        None => {
            let tag = crate::plan::identity::ASG_GROUP_TAG;
            let within = config.identity.imds_deadline;
            crate::plan::identity::read_tags(&imds, config, &region, &instance_id, &[tag], within)
                .await?
                .remove(tag)
        }
    };
    let lifecycle =
        Lifecycle::connect(&config.lifecycle, &region, &instance_id, tagged_group).await?;
    let within = answer_within(config, deadline);
    lifecycle
        .complete_within(hook, ActionResult::Abandon, within)
        .await?;
    Ok(())
}

/// How long the answer that ends a launch may keep trying: a fleet launching at once shares
/// Auto Scaling's bucket, so what the boot deadline leaves, and never less than
/// lifecycle.timeout.
fn answer_within(config: &Config, deadline: Deadline) -> std::time::Duration {
    deadline.left().max(config.lifecycle.timeout)
}

/// The launch hook's side of a boot: heartbeats while it runs, then CONTINUE once the instance
/// is healthy, or ABANDON when the boot failed or health stayed red.
pub(super) struct LaunchHook {
    lifecycle: Arc<Lifecycle>,
    hook: String,
    heartbeats: tokio::task::JoinHandle<()>,
    /// The boot's.
    deadline: Deadline,
}

impl LaunchHook {
    pub(super) async fn start(
        config: &Config,
        plan: &Plan,
        deadline: Deadline,
    ) -> Result<Option<LaunchHook>, Error> {
        let Some(hook) = config.lifecycle.launch_hook.clone() else {
            return Ok(None);
        };
        let id = &plan.identity;
        let lifecycle = Lifecycle::connect(
            &config.lifecycle,
            &id.region,
            &id.instance_id,
            id.asg_group.clone(),
        )
        .await?;
        let lifecycle = Arc::new(lifecycle);
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
            deadline,
        }))
    }

    pub(super) async fn complete(self, config: &Config, result: ActionResult) -> Result<(), Error> {
        self.heartbeats.abort();
        let within = answer_within(config, self.deadline);
        self.lifecycle
            .complete_within(&self.hook, result, within)
            .await?;
        Ok(())
    }

    pub(super) async fn finish(self, config: &Config, booted: bool) -> Result<(), Error> {
        let healthy = booted && wait_until_healthy(config).await;
        let result = match (booted, healthy) {
            (true, true) => ActionResult::Continue,
            (false, _) if !config.lifecycle.abandon_on_failure => {
                self.heartbeats.abort();
                return Ok(());
            }
            _ => ActionResult::Abandon,
        };
        self.complete(config, result).await?;
        if booted && !healthy {
            return Err(Error::Unhealthy);
        }
        Ok(())
    }
}

/// Whether the health report turns green within `lifecycle.health_wait`.
async fn wait_until_healthy(config: &Config) -> bool {
    let waited = Checker::new(&config.health, &config.paths)
        .wait_until_healthy(Scope::Instance, config.lifecycle.health_wait)
        .await;
    match waited {
        Ok(()) => true,
        Err(health) => {
            tracing::error!(
                state = health.state.as_str(),
                reason = health.reason.as_deref().unwrap_or_default(),
                "the instance did not turn healthy in time; abandoning the launch"
            );
            false
        }
    }
}
