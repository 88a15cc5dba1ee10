use clap::Args;

use crate::config::{Config, Manager};
use crate::state::history;
use crate::state::status::{self, Outcome, Phase, SecretsFrom, Status};
use crate::Error;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print status.json as it is
    #[arg(long)]
    json: bool,
    /// List the boots recorded in paths.state_dir, across reboots, oldest first
    #[arg(long)]
    history: bool,
}

impl StatusArgs {
    /// Exits with the last boot's exit code, so scripts can test the result directly.
    pub fn run(self, config: &Config) -> Result<(), Error> {
        if self.history {
            return print_history(config, self.json);
        }
        let status = status::read(&config.paths)?;
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&status).expect("status serializes")
            );
        } else {
            print!("{}", render(&status));
        }
        // The boot's own exit code: a rolled-back one exited 16 though its service serves.
        match &status.error {
            Some(error) if matches!(status.outcome, Outcome::Failed | Outcome::RolledBack) => {
                Err(Error::LastBootFailed {
                    exit_code: error.exit_code,
                })
            }
            _ => Ok(()),
        }
    }
}

fn print_history(config: &Config, json: bool) -> Result<(), Error> {
    let dir = &config.paths.state_dir;
    let entries = history::read(dir).map_err(|e| {
        Error::io(
            format!("failed to read the boot history in {}", dir.display()),
            e,
        )
    })?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&entries).expect("history serializes")
        );
    } else if entries.is_empty() {
        println!("no boots recorded in {}", dir.join(history::FILE).display());
    } else {
        for entry in &entries {
            println!("{}", render_entry(entry));
        }
    }
    Ok(())
}

/// One boot on one line: when, how it ended, what ran, and the innermost cause of its error.
fn render_entry(entry: &history::Entry) -> String {
    let outcome = match (entry.outcome, entry.exit_code) {
        (Outcome::Failed, Some(code)) => format!("failed (exit {code})"),
        (Outcome::Failed, None) => "failed".to_string(),
        (Outcome::Succeeded, _) => "succeeded".to_string(),
        (Outcome::Degraded, _) => "degraded".to_string(),
        (Outcome::RolledBack, _) => "rolled back".to_string(),
        (Outcome::Running, _) => "did not finish".to_string(),
    };
    let mut line = format!("{}  {outcome:<16}", entry.started_at);
    if let (Some(service), Some(env)) = (&entry.service, &entry.env) {
        line.push_str(&format!("  {service}/{env}"));
    }
    if let (Some(commit), Some(action)) = (&entry.commit, &entry.git_action) {
        // By characters: the line comes from a file on disk, which may hold anything.
        let short: String = commit.chars().take(12).collect();
        line.push_str(&format!("  {short} ({action})"));
    }
    if let Some(error) = &entry.error {
        let cause = error.lines().last().unwrap_or_default();
        line.push_str(&format!("  {}", cause.trim().trim_start_matches("-> ")));
    } else if let Some(why) = &entry.degraded {
        line.push_str(&format!("  {why}"));
    }
    line
}

fn render(status: &Status) -> String {
    let outcome = status.outcome.as_str();
    let mut lines = vec![format!(
        "boot:     {outcome} (started {}{})",
        status.started_at,
        status
            .finished_at
            .as_ref()
            .map(|at| format!(", finished {at}"))
            .unwrap_or_default()
    )];
    if let Some(id) = &status.identity {
        lines.push(format!(
            "identity: service {}, environment {} (tag {:?}), instance {} in {}",
            id.service, id.env, id.env_tag, id.instance_id, id.region
        ));
    }
    let instance_region = status.identity.as_ref().map(|id| &id.region);
    for secret in &status.secrets {
        lines.push(format!(
            "secret:   {} version {}",
            secret.id,
            secret.version_id.as_deref().unwrap_or("-")
        ));
    }
    match &status.secrets_from {
        Some(SecretsFrom::Region(region)) if Some(region) != instance_region => {
            lines.push(format!(
                "          read from the replica region {region}: the instance's did not answer"
            ));
        }
        Some(SecretsFrom::Snapshot {
            taken_at,
            age_seconds,
        }) => {
            let age = humantime::format_duration(std::time::Duration::from_secs(*age_seconds));
            lines.push(format!(
                "          from the snapshot of the last good secrets, taken {taken_at} ({age} \
                 old): Secrets Manager did not answer"
            ));
        }
        _ => {}
    }
    if let Some(git) = &status.git {
        lines.push(format!(
            "git:      {} {} at {} ({}) in {}",
            git.url,
            git.reference,
            git.commit,
            git.action,
            git.dir.display()
        ));
        if let Some(mirror) = &git.mirror {
            lines.push(format!(
                "          fetched from the mirror {mirror}: the remote did not answer"
            ));
        }
        if let Some(note) = &git.note {
            lines.push(format!("          {note}"));
        }
    }
    if let Some(credentials) = &status.delivered.credentials {
        lines.push(format!(
            "credentials: {} in {}{}: {}",
            credentials.names.len(),
            credentials.dir.display(),
            if credentials.changed {
                " (new values)"
            } else {
                ""
            },
            credentials.names.join(", ")
        ));
    }
    for file in &status.delivered.files {
        lines.push(format!(
            "file:     {} {} {}:{}{}",
            file.path.display(),
            file.mode,
            file.owner,
            file.group,
            if file.changed { " (written)" } else { "" }
        ));
    }
    match &status.service {
        Some(service) if service.manager == Manager::Exec => {
            lines.push("service:  started in exec mode (bootagent became the service)".into())
        }
        Some(service) => lines.push(format!(
            "service:  {} {}{}",
            service.unit,
            service.state,
            match (service.restarted, service.applied.as_slice()) {
                (true, _) => " (restarted)".to_string(),
                (false, []) => " (left running)".to_string(),
                (false, applied) => format!(
                    " (kept running: {})",
                    applied
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        )),
        None => {}
    }
    lines.push(format!("phases:   {}", render_phases(&status.phases)));
    if let Some(error) = &status.error {
        lines.push(format!(
            "error:    {} (exit code {})",
            error.message, error.exit_code
        ));
    }
    lines.push(String::new());
    lines.join("\n")
}

/// Each phase and how long it took; one that began while an earlier one still ran says when,
/// and beside which: `git 2100 ms (from 130 ms, beside secrets)`.
fn render_phases(phases: &[Phase]) -> String {
    let ended = |phase: &Phase| phase.started_ms.map(|started| started + phase.duration_ms);
    let rendered: Vec<String> = (phases.iter().enumerate())
        .map(|(at, phase)| {
            let line = format!("{} {} ms", phase.name, phase.duration_ms);
            let Some(started) = phase.started_ms else {
                return line;
            };
            let beside: Vec<&str> = (phases[..at].iter())
                .filter(|earlier| ended(earlier).is_some_and(|ended| ended > started))
                .map(|earlier| earlier.name.as_str())
                .collect();
            match beside.is_empty() {
                true => line,
                false => format!("{line} (from {started} ms, beside {})", beside.join(", ")),
            }
        })
        .collect();
    rendered.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_that_ran_beside_an_earlier_one_says_when_it_began() {
        let phase = |name: &str, started_ms, duration_ms| Phase {
            name: name.into(),
            started_ms,
            duration_ms,
            outcome: Outcome::Succeeded,
        };
        let phases = [
            phase("identity", Some(0), 120),
            phase("secrets", Some(121), 300),
            phase("git", Some(121), 2000),
            phase("env_file", Some(2121), 2),
        ];
        assert_eq!(
            render_phases(&phases),
            "identity 120 ms, secrets 300 ms, git 2000 ms (from 121 ms, beside secrets), \
             env_file 2 ms"
        );
        // Written by a bootagent that did not record when phases began.
        let unknown = [phase("identity", None, 120), phase("secrets", None, 300)];
        assert_eq!(render_phases(&unknown), "identity 120 ms, secrets 300 ms");
    }

    #[test]
    fn a_history_commit_is_shortened_by_characters() {
        let mut entry = history::Entry::of(&Status::starting());
        entry.commit = Some("0123456789aéb-not-a-hash".into());
        entry.git_action = Some(crate::git::Action::Fetched);
        assert!(render_entry(&entry).contains("  0123456789aé (fetched)"));
    }
}
