//! The checks of this machine alone: the signing tools and keys, the env file, the unit, the
//! disk and the last boot's record.

use std::sync::Arc;

use super::{fail, ok, skip, warn, Finding};
use crate::config::{Config, Manager, Verify};
use crate::plan::Plan;
use crate::state::status;
use crate::{envfile, git, secrets};

/// A boot writes kilobytes to the run dir (env file, status, a deploy key): a small tmpfs is fine.
const LOW_RUN_DIR_BYTES: u64 = 1024 * 1024;
/// A checkout needs room for a release beside the one in service.
const LOW_CHECKOUT_BYTES: u64 = 100 * 1024 * 1024;
const JOURNAL_LINES: &str = "10";

/// With `git.verify` set, what a boot needs to check a signature: the tool on PATH and the
/// file of trusted keys, read as a boot reads it.
pub(super) fn check_signing(config: &Config) -> Finding {
    let verify = config.git.verify;
    let keys = match verify {
        Verify::Gpg => &config.git.gpg_keyring,
        _ => &config.git.allowed_signers,
    };
    if let Some(tool) = git::trust::tool(verify) {
        if on_path(tool).is_none() {
            let package = match verify {
                Verify::Gpg => "gpgv",
                _ => "openssh-client (openssh-clients on Amazon Linux)",
            };
            return fail(
                format!("git.verify needs {tool}, which is not on PATH: no code can deploy"),
                format!("install {package} in the image"),
            );
        }
    }
    match git::trusted_keys::check_keys(verify, keys) {
        Ok(()) => ok(format!(
            "{} and the trusted keys in {} are there",
            git::trust::tool(verify).unwrap_or_default(),
            keys.display()
        )),
        Err(problem) => fail(problem.problem, problem.fix),
    }
}

/// Where `program` is found on PATH, as a boot would run it.
fn on_path(program: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

pub(super) async fn check_env_file(config: Arc<Config>, plan: Arc<Plan>) -> Finding {
    use std::os::unix::fs::MetadataExt;
    let path = &plan.env_file;
    let dir = path.parent().unwrap_or(&config.paths.run_dir);
    if let Err(e) = envfile::check_memory_backed(dir, config.paths.allow_persistent_env_file) {
        return fail(
            e.to_string(),
            "point paths.run_dir at a tmpfs such as /run/bootagent",
        );
    }
    match std::fs::metadata(path) {
        Ok(meta) if meta.mode() & 0o077 != 0 => fail(
            format!(
                "{} has mode {:o}: others can read the secrets",
                path.display(),
                meta.mode() & 0o777
            ),
            format!("chmod 600 {}, and run bootagent boot again", path.display()),
        ),
        Ok(meta) => ok(format!(
            "{} on tmpfs, mode {:o}, owner uid {}",
            path.display(),
            meta.mode() & 0o777,
            meta.uid()
        )),
        Err(_) => fail(
            format!("{} does not exist", path.display()),
            "run bootagent boot; see the last-boot check",
        ),
    }
}

pub(super) async fn check_unit(plan: Arc<Plan>, client: Option<secrets::Client>) -> Finding {
    if plan.service.manager != Manager::Systemd {
        return skip("exec mode: no unit");
    }
    let unit = &plan.service.unit;
    match crate::service::unit_state(unit).await {
        Ok(state) if state.active == "active" => ok(format!("{unit} is active")),
        Ok(state) => {
            let journal = tokio::process::Command::new("journalctl")
                .args(["--no-pager", "-o", "cat", "-n", JOURNAL_LINES, "-u", unit])
                .output()
                .await
                .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
                .unwrap_or_default();
            // The service may print its secrets, and this report goes to SSM's output: every
            // value of the secret is masked, or, when it cannot be read, no line is shown.
            let loaded = match &client {
                Some(client) => secrets::load(client, &plan.identity.region, &plan.secrets)
                    .await
                    .ok(),
                None => None,
            };
            let journal = match loaded {
                Some(loaded) => format!(
                    "last journal lines (secret values masked):\n{}",
                    mask(
                        &journal,
                        (loaded.vars.values().map(|v| v.value.as_str()))
                            .chain(loaded.files.values().map(|text| text.as_str()))
                    )
                ),
                None => "its journal lines are not shown: the secret could not be read to mask \
                         its values in them"
                    .to_string(),
            };
            fail(
                format!(
                    "{unit} is {} (result {}); {journal}",
                    state.active, state.result
                ),
                format!("see journalctl -u {unit}; then bootagent boot"),
            )
        }
        Err(e) => fail(e.to_string(), "is systemd running here?"),
    }
}

/// `text` with every one of `values` (and each line of a value of several) replaced by `***`,
/// the longest first, so that a value holding another is masked whole.
fn mask<'a>(text: &str, values: impl Iterator<Item = &'a str>) -> String {
    let mut secrets: Vec<&str> = values
        .flat_map(|value| std::iter::once(value).chain(value.lines()))
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .collect();
    secrets.sort_by_key(|value| std::cmp::Reverse(value.len()));
    secrets.into_iter().fold(text.to_string(), |masked, value| {
        masked.replace(value, "***")
    })
}

pub(super) async fn check_disk(config: Arc<Config>, plan: Option<Arc<Plan>>) -> Finding {
    let mut paths = vec![(config.paths.run_dir.clone(), LOW_RUN_DIR_BYTES)];
    if let Some(plan) = &plan {
        // The checkout's nearest existing ancestor: its file system is where clones land.
        let mut dir = plan.git.dir.clone();
        while !dir.exists() && dir.pop() {}
        paths.push((dir, LOW_CHECKOUT_BYTES));
    }
    let mut low = Vec::new();
    let mut report = Vec::new();
    for (path, needed) in paths.iter().filter(|(p, _)| p.exists()) {
        let Ok(stats) = nix::sys::statvfs::statvfs(path) else {
            continue;
        };
        let free = stats.blocks_available() * stats.fragment_size();
        report.push(format!(
            "{} {} MiB free",
            path.display(),
            free / (1024 * 1024)
        ));
        if free < *needed {
            low.push(path.display().to_string());
        }
    }
    if low.is_empty() {
        ok(report.join(", "))
    } else {
        fail(
            format!("low free space: {}", report.join(", ")),
            format!("free space on {}", low.join(", ")),
        )
    }
}

pub(super) async fn check_last_boot(config: Arc<Config>) -> Finding {
    match status::read(&config.paths) {
        Ok(s) => match (&s.outcome, &s.error) {
            (status::Outcome::Succeeded, _) => ok(format!(
                "succeeded at {}",
                s.finished_at.unwrap_or_default()
            )),
            (status::Outcome::Degraded, _) => fail(
                format!(
                    "degraded at {}: {}",
                    s.finished_at.unwrap_or_default(),
                    s.degraded.unwrap_or_default()
                ),
                "the release in service is not the one asked for: fix the cause named (the git \
                 check shows the remote now), then bootagent boot",
            ),
            (status::Outcome::RolledBack, _) => {
                let why = s.degraded.unwrap_or_default();
                fail(
                    format!("at {}: {why}", s.finished_at.unwrap_or_default()),
                    rolled_back_fix(&why),
                )
            }
            (status::Outcome::Running, _) => warn(
                format!("running since {}", s.started_at),
                "wait for it, or look at bootagent status",
            ),
            (status::Outcome::Failed, Some(error)) => fail(
                format!(
                    "failed with exit code {}: {}",
                    error.exit_code,
                    error.message.replace('\n', " ")
                ),
                "fix the cause named, then bootagent boot",
            ),
            (status::Outcome::Failed, None) => fail("failed", "see bootagent status"),
        },
        Err(e) => fail(e.to_string(), "run bootagent boot"),
    }
}

/// What to fix after a rollback: the secret when the new versions were the change (the boot's
/// own words name them), else the commit.
fn rolled_back_fix(why: &str) -> &'static str {
    if why.starts_with("rolled back the new versions of") {
        "the environment from before the new secret versions serves: fix the secret's value (the \
         journal of the unit shows why the service failed with it), put a new version, then \
         bootagent deploy"
    } else {
        "the release before the change serves: fix the commit (the journal of the unit shows why \
         it failed), push the fix, then bootagent deploy"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rolled_back_rotation_asks_to_fix_the_secret_not_the_commit() {
        let secrets = crate::Error::SecretsRolledBack {
            secrets: "app_env_prod".into(),
            commit: "c1".into(),
            cause: "app.service exited".into(),
            next: String::new(),
        };
        assert!(rolled_back_fix(&secrets.to_string()).contains("fix the secret's value"));
        let commit = crate::Error::RolledBack {
            from: "c2".into(),
            to: "c1".into(),
            cause: "app.service exited".into(),
            next: String::new(),
        };
        assert!(rolled_back_fix(&commit.to_string()).contains("fix the commit"));
    }

    #[test]
    fn every_value_of_the_secret_is_masked_in_journal_lines() {
        let journal = "starting with token=canary-123-long and DB=canary-123\n\
                       second line of a key\nport 8080 ready";
        let masked = mask(
            journal,
            [
                "canary-123",
                "canary-123-long",
                "first line of a key\nsecond line of a key",
                "",
            ]
            .into_iter(),
        );
        assert_eq!(
            masked,
            "starting with token=*** and DB=***\n***\nport 8080 ready"
        );
    }
}
