use std::collections::BTreeSet;

use clap::{Args, Subcommand};
use serde::Serialize;

use crate::config::Config;
use crate::Error;
use crate::{identity, secrets};

#[derive(Debug, Args)]
pub struct EnvArgs {
    #[command(subcommand)]
    command: EnvCommand,
}

#[derive(Debug, Subcommand)]
enum EnvCommand {
    /// Which secret variable NAMES one environment has and the other lacks (never values);
    /// exits 11 when they differ
    Diff(DiffArgs),
}

#[derive(Debug, Args)]
struct DiffArgs {
    /// An environment (or an alias such as production)
    a: String,
    /// The environment to compare it with
    b: String,
    /// Print the comparison as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Comparison {
    service: String,
    a: String,
    b: String,
    only_in_a: Vec<String>,
    only_in_b: Vec<String>,
    in_both: usize,
}

impl EnvArgs {
    pub fn run(self, config: &Config) -> Result<(), Error> {
        match self.command {
            EnvCommand::Diff(args) => args.run(config),
        }
    }
}

impl DiffArgs {
    fn run(self, config: &Config) -> Result<(), Error> {
        // The arguments are the caller's, not the instance's tags: a usage error (exit 2).
        for env in [&self.a, &self.b] {
            if identity::canonical_environment(config, env).is_none() {
                return Err(Error::Usage(format!(
                    "env diff: {env:?} names no environment; use one of: {}",
                    identity::known_environments(config)
                )));
            }
        }
        let comparison = super::runtime()?.block_on(self.compare(config))?;
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&comparison).expect("a comparison serializes")
            );
        } else {
            print!("{}", render(&comparison));
        }
        if comparison.only_in_a.is_empty() && comparison.only_in_b.is_empty() {
            Ok(())
        } else {
            Err(Error::EnvironmentsDiffer)
        }
    }

    /// The variable names of each environment's secrets, read with this instance's identity.
    async fn compare(&self, config: &Config) -> Result<Comparison, Error> {
        let here = crate::plan::resolve(config).await?.identity;
        let client = secrets::client(&here.region, config.secrets.timeout).await?;
        let mut names = Vec::new();
        for env in [&self.a, &self.b] {
            let identity = here.in_environment(config, env)?;
            let plan = crate::plan::build(config, &identity)?;
            let loaded = secrets::load(&client, &identity.region, &plan.secrets).await?;
            names.push(loaded.vars.into_keys().collect::<BTreeSet<_>>());
        }
        let (a, b) = (&names[0], &names[1]);
        Ok(Comparison {
            service: here.service,
            a: self.a.clone(),
            b: self.b.clone(),
            only_in_a: a.difference(b).cloned().collect(),
            only_in_b: b.difference(a).cloned().collect(),
            in_both: a.intersection(b).count(),
        })
    }
}

fn render(c: &Comparison) -> String {
    let list = |names: &[String]| {
        if names.is_empty() {
            "-".to_string()
        } else {
            names.join(", ")
        }
    };
    format!(
        "service {}: {} variable(s) in both {} and {}\nonly in {}: {}\nonly in {}: {}\n",
        c.service,
        c.in_both,
        c.a,
        c.b,
        c.a,
        list(&c.only_in_a),
        c.b,
        list(&c.only_in_b)
    )
}
