use clap::Args;

use crate::boot::deploy::When;
use crate::config::Config;
use crate::Error;

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Deploy a commit, or secret versions, that failed their gate before, while the ref still
    /// names the commit and the versions are current
    #[arg(long)]
    retry: bool,
    /// Act only where deploy.follow names this instance's environment (the deploy timer's runs)
    #[arg(long)]
    follow: bool,
}

impl DeployArgs {
    pub fn run(self, config: &Config) -> Result<(), Error> {
        let when = if self.follow {
            When::Following
        } else {
            When::Always
        };
        super::runtime()?.block_on(crate::boot::deploy::deploy(config, when, self.retry))
    }
}
