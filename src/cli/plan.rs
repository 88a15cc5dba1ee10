use clap::Args;

use crate::config::Config;
use crate::plan::Plan;
use crate::Error;

#[derive(Debug, Args)]
pub struct PlanArgs {}

impl PlanArgs {
    pub fn run(self, config: &Config) -> Result<(), Error> {
        let plan = super::runtime()?.block_on(crate::plan::resolve(config))?;
        print_json(&plan);
        Ok(())
    }
}

pub fn print_json(plan: &Plan) {
    println!(
        "{}",
        serde_json::to_string_pretty(plan).expect("a plan serializes")
    );
}
