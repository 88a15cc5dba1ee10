//! The check of what reaches the service besides the env file: the credential store and the
//! secret files are there, private, and (under systemd) what the running unit holds is what
//! bootagent last wrote. Values are compared, never shown.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use super::{fail, ok, warn, Finding};
use crate::config::Manager;
use crate::deliver::credentials;
use crate::plan::Plan;

pub(super) async fn check_delivered(plan: Arc<Plan>) -> Finding {
    if plan.secrets.credentials_dir.is_none() && plan.files.is_empty() {
        return ok("nothing besides the env file: secrets.deliver = \"env\" and no [[files]]");
    }
    let mut report = Report::default();
    if let Some(dir) = &plan.secrets.credentials_dir {
        check_store(&plan, dir, &mut report);
    }
    for file in &plan.files {
        let path = file.path.display();
        match std::fs::symlink_metadata(&file.path) {
            Err(_) => report.problem(
                format!("{path} ({}) does not exist", file.key),
                "run bootagent boot; see the last-boot check",
            ),
            Ok(meta) if !meta.is_file() => report.problem(
                format!("{path} ({}) is not a regular file", file.key),
                format!("remove {path} and run bootagent boot"),
            ),
            Ok(meta) => {
                let dir = file.path.parent().unwrap_or(Path::new("/"));
                if let Err(e) = crate::envfile::check_memory_backed(dir, file.persistent) {
                    report.problem(
                        format!("{} ({}): {e}", file.key, path),
                        format!("set {}.persistent = true, or a path on tmpfs", file.key),
                    );
                }
                let (owner, group) = (user_name(meta.uid()), group_name(meta.gid()));
                let mode = meta.mode() & 0o7777;
                if (owner.as_str(), group.as_str(), mode)
                    != (file.owner.as_str(), file.group.as_str(), file.mode)
                {
                    report.problem(
                        format!(
                            "{path} is {mode:04o} {owner}:{group}; {} says {:04o} {}:{}",
                            file.key, file.mode, file.owner, file.group
                        ),
                        "run bootagent boot, which writes it as configured",
                    );
                } else {
                    report.fact(format!("{path} {mode:04o} {owner}:{group}"));
                }
            }
        }
    }
    report.finding()
}

/// The store: each credential private to its reader; under systemd, the running unit's copy
/// the same.
fn check_store(plan: &Plan, dir: &Path, report: &mut Report) {
    let shown = dir.display();
    let store = match credentials::read(dir) {
        Ok(store) => store,
        Err(e) => {
            return report.problem(
                format!("the credential store {shown} cannot be read: {e}"),
                "run bootagent boot; see the last-boot check",
            )
        }
    };
    let owner = match plan.service.manager {
        Manager::Systemd => "root".to_string(),
        Manager::Exec => plan.service.user.clone(),
    };
    let names: Vec<&String> = store.keys().collect();
    for (path, want) in std::iter::once((dir.to_path_buf(), 0o500))
        .chain(names.iter().map(|name| (dir.join(name), 0o400)))
    {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let (mode, user) = (meta.mode() & 0o7777, user_name(meta.uid()));
        if mode != want || user != owner {
            report.problem(
                format!(
                    "{} is {mode:04o} owned by {user}: it should be {want:04o}, {owner}'s alone",
                    path.display()
                ),
                "run bootagent boot, which writes the store as it should be",
            );
        }
    }
    report.fact(format!("{} credentials in {shown}", store.len()));
    if plan.service.manager != Manager::Systemd {
        return;
    }
    let unit = &plan.service.unit;
    let live = crate::deliver::live_credentials_dir(unit);
    if !live.is_dir() {
        return report.fact(format!("{unit} holds no credentials now (not running)"));
    }
    let stale: Vec<&str> = (store.iter())
        .filter(|(name, value)| {
            // The unit's directory is its user's: read as bootagent reads what it delivered.
            let held = crate::deliver::read_delivered(&live.join(name));
            !held.is_ok_and(|held| held.as_slice() == value.as_bytes())
        })
        .map(|(name, _)| name.as_str())
        .collect();
    if stale.is_empty() {
        report.fact(format!("{unit} holds them as written"));
    } else {
        report.stale(
            format!(
                "{unit} runs with older values of {} than bootagent wrote (secrets.on_change = \
                 \"none\", or a reload that did not happen)",
                stale.join(", ")
            ),
            format!("systemctl restart {unit}, or bootagent refresh --now"),
        );
    }
}

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |user| user.name)
}

fn group_name(gid: u32) -> String {
    nix::unistd::Group::from_gid(gid.into())
        .ok()
        .flatten()
        .map_or_else(|| gid.to_string(), |group| group.name)
}

/// What the check found: facts, problems (fail), and stale copies (warn).
#[derive(Default)]
struct Report {
    facts: Vec<String>,
    problems: Vec<(String, String)>,
    stale: Vec<(String, String)>,
}

impl Report {
    fn fact(&mut self, fact: String) {
        self.facts.push(fact);
    }

    fn problem(&mut self, problem: String, fix: impl Into<String>) {
        self.problems.push((problem, fix.into()));
    }

    fn stale(&mut self, problem: String, fix: String) {
        self.stale.push((problem, fix));
    }

    fn finding(self) -> Finding {
        let join = |items: &[(String, String)]| {
            let (said, fixes): (Vec<_>, Vec<_>) = items.iter().cloned().unzip();
            let mut fixes: Vec<String> = fixes;
            fixes.dedup();
            (said.join("; "), fixes.join("; "))
        };
        if !self.problems.is_empty() {
            let (problems, fixes) = join(&self.problems);
            return fail(problems, fixes);
        }
        if !self.stale.is_empty() {
            let (stale, fixes) = join(&self.stale);
            return warn(stale, fixes);
        }
        ok(self.facts.join("; "))
    }
}
