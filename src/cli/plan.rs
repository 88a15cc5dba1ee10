use clap::Args;

use crate::config::Config;
use crate::identity;
use crate::imds::ImdsClient;
use crate::plan::Plan;
use crate::Error;

#[derive(Debug, Args)]
pub struct PlanArgs {}

impl PlanArgs {
    pub fn run(self, config: &Config) -> Result<(), Error> {
        let plan = super::runtime()?.block_on(resolve(config))?;
        print_json(&plan);
        Ok(())
    }
}

/// Identity from IMDS, then the pure plan. Needs no AWS credentials.
pub async fn resolve(config: &Config) -> Result<Plan, Error> {
    resolve_with(&imds_client(config), config).await
}

pub fn imds_client(config: &Config) -> ImdsClient {
    ImdsClient::from_env(config.identity.imds_deadline)
}

/// [`resolve`] with a client the caller keeps using (and whose token it reuses).
pub async fn resolve_with(imds: &ImdsClient, config: &Config) -> Result<Plan, Error> {
    let identity = identity::fetch(imds, config).await?;
    Ok(crate::plan::build(config, &identity)?)
}

pub fn print_json(plan: &Plan) {
    println!(
        "{}",
        serde_json::to_string_pretty(plan).expect("a plan serializes")
    );
}
