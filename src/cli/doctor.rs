use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::config::Config;
use crate::report::doctor::{self, Report, Verdict};
use crate::Error;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the report as JSON (schema: packaging/doctor.schema.json)
    #[arg(long)]
    json: bool,
    /// How long the whole doctor may take
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

impl DoctorArgs {
    /// Prints every check; exits 13 when any failed. Warnings do not fail.
    pub fn run(self, config: &Config) -> Result<(), Error> {
        let report =
            super::runtime()?.block_on(doctor::run(Arc::new(config.clone()), self.timeout));
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("a report serializes")
            );
        } else {
            print!("{}", render(&report));
        }
        if report.ok {
            Ok(())
        } else {
            Err(Error::ChecksFailed)
        }
    }
}

/// Plain aligned text for SSM Run Command output: no colour, a fix line under each problem.
fn render(report: &Report) -> String {
    let width = report
        .checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for check in &report.checks {
        let verdict = match check.verdict {
            Verdict::Ok => "ok",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "skip",
        };
        let indent = " ".repeat(width + 8);
        let detail = check.detail.replace('\n', &format!("\n{indent}"));
        out.push_str(&format!("{:width$}  {verdict:4}  {detail}\n", check.name));
        if let Some(hint) = &check.hint {
            out.push_str(&format!("{indent}fix: {hint}\n"));
        }
    }
    let failed = report
        .checks
        .iter()
        .filter(|c| c.verdict == Verdict::Fail)
        .count();
    out.push_str(&match failed {
        0 => "all checks passed\n".to_string(),
        n => format!("{n} check(s) failed\n"),
    });
    out
}
