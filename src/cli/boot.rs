use clap::Args;

use crate::config::Config;
use crate::Error;

#[derive(Debug, Args)]
pub struct BootArgs {
    /// Resolve identity and print the plan; change nothing
    #[arg(long)]
    dry_run: bool,
}

impl BootArgs {
    pub fn run(self, config: &Config) -> Result<(), Error> {
        let runtime = super::runtime()?;
        if self.dry_run {
            let plan = runtime.block_on(crate::plan::resolve(config))?;
            super::plan::print_json(&plan);
            return Ok(());
        }
        // A boot that kept the release in service serves: it succeeds (status.json says
        // degraded, and why).
        runtime.block_on(crate::boot::boot(config, crate::boot::Run::default()))?;
        Ok(())
    }
}
