use clap::Args;

use crate::config::Config;
use crate::Error;

#[derive(Debug, Args)]
pub struct RefreshArgs {
    /// Act at once instead of after a random delay within refresh.window
    #[arg(long)]
    now: bool,
}

impl RefreshArgs {
    pub fn run(self, config: &Config) -> Result<(), Error> {
        super::runtime()?.block_on(crate::boot::refresh::refresh(config, self.now))
    }
}
