use clap::Args;

use crate::config::Config;
use crate::report::health::Checker;
use crate::report::health_server::{self, Limits};
use crate::Error;

#[derive(Debug, Args)]
pub struct HealthReportArgs {
    /// Serve the report over HTTP for the ALB (200 healthy, 503 not, JSON body) instead of
    /// printing it once; without ADDR, health.listen
    #[arg(long, value_name = "ADDR")]
    listen: Option<Option<String>>,
}

impl HealthReportArgs {
    /// One-shot: prints the report as JSON, exits 0 when healthy and 12 when not.
    pub fn run(self, config: &Config) -> Result<(), Error> {
        let runtime = super::runtime()?;
        let checker = Checker::new(&config.health, &config.paths);
        match self.listen {
            None => {
                let health = runtime.block_on(checker.check());
                println!(
                    "{}",
                    serde_json::to_string(&health).expect("health serializes")
                );
                if health.healthy {
                    Ok(())
                } else {
                    Err(Error::Unhealthy)
                }
            }
            Some(address) => {
                let address = address.unwrap_or_else(|| config.health.listen.clone());
                runtime.block_on(async {
                    let listener = tokio::net::TcpListener::bind(&address)
                        .await
                        .map_err(|e| Error::io(format!("failed to listen on {address}"), e))?;
                    // With port 0 the system chose the port: log the one it is.
                    let address = listener
                        .local_addr()
                        .map_err(|e| Error::io(format!("failed to listen on {address}"), e))?;
                    tracing::info!(%address, "serving health reports");
                    let limits = Limits {
                        header_timeout: config.health.header_timeout,
                        max_connections: config.health.max_connections.get(),
                    };
                    health_server::serve(listener, checker, config.paths.clone(), limits)
                        .await
                        .map_err(|e| Error::io("the health server stopped", e))
                })
            }
        }
    }
}
