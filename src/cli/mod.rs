//! The command line: one module per command, each a clap struct with `run`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::Error;

mod boot;
mod credentials;
mod deploy;
mod doctor;
mod env;
mod health_report;
mod lifecycle;
mod plan;
mod prepare;
mod refresh;
mod status;

#[derive(Debug, Parser)]
#[command(name = "bootagent", version, about, long_about = None)]
pub struct Cli {
    /// Config file; drop-ins are read from config.d/ beside it
    /// [default: /etc/bootagent/config.toml]
    #[arg(long, global = true, env = "BOOTAGENT_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Log debug detail
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bring this instance to its service, branch and secrets, running
    Boot(boot::BootArgs),
    /// Resolve identity from instance metadata and print the plan as JSON
    Plan(plan::PlanArgs),
    /// Show the last boot's status
    Status(status::StatusArgs),
    /// Re-render the env file and restart the service when a secret has a new version
    Refresh(refresh::RefreshArgs),
    /// Bring the instance to its ref's current head and current secrets, gated, rolling back on
    /// failure
    Deploy(deploy::DeployArgs),
    /// Compare environments' secrets (names only)
    Env(env::EnvArgs),
    /// Report health: the last boot succeeded, the service runs, the app answers
    HealthReport(health_report::HealthReportArgs),
    /// Check every link of the boot chain, in parallel, with a fix for each problem
    Doctor(doctor::DoctorArgs),
    /// Answer ASG lifecycle hooks
    Lifecycle(lifecycle::LifecycleArgs),
    /// Hand a running unit new credentials (secrets.deliver = "credentials")
    Credentials(credentials::CredentialsArgs),
    /// Bake the repository into the image (Packer, Image Builder): a first boot then fetches
    /// only what is newer
    Prepare(prepare::PrepareArgs),
}

impl Cli {
    pub fn run(self) -> Result<(), Error> {
        let config = crate::config::load(self.config.as_deref())?;
        // boot, refresh, lifecycle watch and doctor all reach git remotes.
        // SAFETY: no thread has been started yet; each command starts its runtime after this.
        unsafe { crate::git::init(config.git.timeout) }.map_err(|e| {
            Error::io(
                "failed to set up the ssh transport",
                std::io::Error::other(e),
            )
        })?;
        match self.command {
            Command::Boot(args) => args.run(&config),
            Command::Plan(args) => args.run(&config),
            Command::Status(args) => args.run(&config),
            Command::Refresh(args) => args.run(&config),
            Command::Deploy(args) => args.run(&config),
            Command::Env(args) => args.run(&config),
            Command::HealthReport(args) => args.run(&config),
            Command::Doctor(args) => args.run(&config),
            Command::Lifecycle(args) => args.run(&config),
            Command::Credentials(args) => args.run(&config),
            Command::Prepare(args) => args.run(&config),
        }
    }
}

/// One thread is plenty for a boot; libgit2's blocking work gets a thread of its own.
fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("failed to start the async runtime", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
