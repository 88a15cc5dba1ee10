use clap::{Args, Subcommand};

use crate::config::Config;
use crate::report::envdiff::{self, Comparison};
use crate::Error;

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

impl EnvArgs {
    pub fn run(self, config: &Config) -> Result<(), Error> {
        match self.command {
            EnvCommand::Diff(args) => args.run(config),
        }
    }
}

impl DiffArgs {
    fn run(self, config: &Config) -> Result<(), Error> {
        let comparison = super::runtime()?.block_on(envdiff::compare(config, &self.a, &self.b))?;
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&comparison).expect("a comparison serializes")
            );
        } else {
            print!("{}", render(&comparison));
        }
        match comparison.differ() {
            false => Ok(()),
            true => Err(Error::EnvironmentsDiffer),
        }
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
    let mut text = format!(
        "service {}: {} variable(s) in both {} and {} (delivered as {})\nonly in {}: {}\nonly in {}: {}\n",
        c.service,
        c.in_both,
        c.a,
        c.b,
        c.delivered_as.as_str(),
        c.a,
        list(&c.only_in_a),
        c.b,
        list(&c.only_in_b)
    );
    for (env, failing) in [(&c.a, &c.files_failing_in_a), (&c.b, &c.files_failing_in_b)] {
        for file in failing {
            text.push_str(&format!("{env}: {file}\n"));
        }
    }
    text
}
