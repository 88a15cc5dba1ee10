//! The deploy hooks around a change to what runs: `deploy.pre_start` on a release just
//! fetched, before the link switches to it; `deploy.post` once the change's outcome is known.

use crate::config::Config;
use crate::envfile::Environment;
use crate::git;
use crate::plan::Plan;
use crate::service;
use crate::state::status::Status;
use crate::Error;

/// A change to what runs: a new commit, or the same with a new environment.
pub(super) struct Change {
    previous: Option<String>,
    commit: String,
    dir: std::path::PathBuf,
    user: String,
}

impl Change {
    pub(super) fn to(plan: &Plan, previous: Option<&str>, commit: &str) -> Change {
        Change {
            previous: previous.map(str::to_string),
            commit: commit.to_string(),
            dir: plan.git.dir.clone(),
            user: plan.service.user.clone(),
        }
    }
}

/// `deploy.pre_start`, on a release just fetched, before the link switches to it.
pub(super) async fn run_pre_start(
    config: &Config,
    plan: &Plan,
    environment: &Environment,
    commit: &str,
    in_service: Option<&str>,
) -> Result<(), Error> {
    if config.deploy.pre_start.is_empty() {
        return Ok(());
    }
    let mut vars: Vec<(&str, &str)> = environment
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    vars.push(("BOOTAGENT_COMMIT", commit));
    vars.push(("BOOTAGENT_PREVIOUS_COMMIT", in_service.unwrap_or_default()));
    service::run_hook(
        "deploy.pre_start",
        &config.deploy.pre_start,
        &git::release_dir(&plan.git.dir, commit),
        &plan.service.user,
        vars,
        config.deploy.hook_timeout,
    )
    .await?;
    Ok(())
}

/// `deploy.post`, once the outcome of a change is known: it reports, and its failure is only
/// logged (the outcome stands).
pub(super) async fn run_post(config: &Config, change: &Change, status: &Status) {
    if config.deploy.post.is_empty() {
        return;
    }
    let error = status
        .error
        .as_ref()
        .map(|e| crate::error::one_line(&e.message));
    let vars = [
        ("BOOTAGENT_COMMIT", change.commit.as_str()),
        (
            "BOOTAGENT_PREVIOUS_COMMIT",
            change.previous.as_deref().unwrap_or_default(),
        ),
        ("BOOTAGENT_OUTCOME", status.outcome.as_str()),
        ("BOOTAGENT_ERROR", error.as_deref().unwrap_or_default()),
    ];
    // The release in service, or the root when there is none (a first boot that failed).
    let dir = if change.dir.exists() {
        change.dir.as_path()
    } else {
        std::path::Path::new("/")
    };
    let ran = service::run_hook(
        "deploy.post",
        &config.deploy.post,
        dir,
        &change.user,
        vars,
        config.deploy.hook_timeout,
    )
    .await;
    if let Err(e) = ran {
        tracing::error!(error = %e, "the deploy.post hook failed");
    }
}
