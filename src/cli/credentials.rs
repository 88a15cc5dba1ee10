use clap::{Args, Subcommand};

use crate::config::Config;
use crate::Error;

#[derive(Debug, Args)]
pub struct CredentialsArgs {
    #[command(subcommand)]
    command: CredentialsCommand,
}

#[derive(Debug, Subcommand)]
enum CredentialsCommand {
    /// Copy the credentials bootagent last wrote into a running unit's own credentials
    /// directory, as systemd does only when the unit starts (run by
    /// bootagent-credentials@UNIT.service before a reload or signal)
    Sync {
        /// The service unit, e.g. calendar.service
        unit: String,
    },
}

impl CredentialsArgs {
    pub fn run(self, config: &Config) -> Result<(), Error> {
        match self.command {
            CredentialsCommand::Sync { unit } => {
                let copied = crate::deliver::live::sync(&config.paths, &unit)?;
                tracing::info!(%unit, copied, "credentials synced into the running unit");
                Ok(())
            }
        }
    }
}
