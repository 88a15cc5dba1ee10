use clap::{Args, Subcommand};

use crate::autoscaling::{ActionResult, Answer, Lifecycle};
use crate::config::Config;
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
}

impl LifecycleArgs {
    /// "No active lifecycle action" is reported on stderr and exits 0: there is nothing to do.
    pub fn run(self, config: &Config) -> Result<(), Error> {
        super::runtime()?.block_on(async {
            let lifecycle = connect(config).await?;
            let (answer, hook) = match &self.command {
                LifecycleCommand::Complete { hook, result } => {
                    let hook = hook_or_default(hook, config)?;
                    (lifecycle.complete(&hook, *result).await?, hook)
                }
                LifecycleCommand::Heartbeat { hook } => {
                    let hook = hook_or_default(hook, config)?;
                    (lifecycle.heartbeat(&hook).await?, hook)
                }
            };
            if answer == Answer::NoActiveAction {
                eprintln!("no active lifecycle action for hook {hook}: nothing to do");
            }
            Ok(())
        })
    }
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
            Error::Unsupported("name the hook with --hook, or set lifecycle.launch_hook".into())
        })
}
