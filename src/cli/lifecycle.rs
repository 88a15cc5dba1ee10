use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use crate::aws::autoscaling::ActionResult;
use crate::boot::lifecycle;
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
        result: ResultArg,
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

/// `--result`, as the command line spells [`ActionResult`].
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ResultArg {
    Continue,
    Abandon,
}

impl From<ResultArg> for ActionResult {
    fn from(result: ResultArg) -> ActionResult {
        match result {
            ResultArg::Continue => ActionResult::Continue,
            ResultArg::Abandon => ActionResult::Abandon,
        }
    }
}

impl LifecycleArgs {
    /// "No active lifecycle action" is reported on stderr and exits 0: there is nothing to do.
    pub fn run(self, config: &Config) -> Result<(), Error> {
        let runtime = super::runtime()?;
        match self.command {
            LifecycleCommand::Complete { hook, result } => {
                runtime.block_on(lifecycle::call(config, hook, Some(result.into())))
            }
            LifecycleCommand::Heartbeat { hook } => {
                runtime.block_on(lifecycle::call(config, hook, None))
            }
            LifecycleCommand::Watch { interval } => {
                runtime.block_on(lifecycle::watch(config, interval))
            }
        }
    }
}

/// A duration longer than zero: a zero interval would poll instance metadata in a busy loop.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("must be longer than 0s".into()),
        Ok(duration) => Ok(duration),
        Err(e) => Err(e.to_string()),
    }
}
