//! `deploy`: brings a running instance to the current head of its ref and its current secrets,
//! through the boot pipeline and its gate. What it looks at first costs one ref listing and a
//! DescribeSecret per secret (no secret values, unless a git credential is itself in a secret):
//! when nothing is new, nothing changes — no restart, no status, no history line.

use crate::boot::Run;
use crate::config::{Config, Manager};
use crate::plan::Plan;
use crate::state::{deploys, status};
use crate::{git, secrets, Error};

/// Which runs act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Always (an operator's deploy).
    Always,
    /// Only where `deploy.follow` names this instance's environment (the deploy timer).
    Following,
}

pub async fn deploy(config: &Config, when: When, retry_failed: bool) -> Result<(), Error> {
    if config.service.manager == Manager::Exec {
        return Err(Error::Usage(
            "deploy restarts services under systemd; in exec mode bootagent is the service: \
             restart the container or process to deploy"
                .into(),
        ));
    }
    crate::boot::refuse_if_draining(&config.paths)?;
    let plan = crate::plan::resolve(config).await?;
    let env = &plan.identity.env;
    if when == When::Following && !config.deploy.follow.contains(env) {
        tracing::info!(
            env = %env,
            "deploy.follow does not name this environment: it changes by instance refresh or an \
             explicit deploy"
        );
        return Ok(());
    }
    let last = status::read(&config.paths)?;
    let SecretsSince {
        client,
        record,
        new: new_secrets,
        set_aside: avoided,
    } = secrets_since(config, &plan, &last, retry_failed).await?;
    let in_service = git::Layout::of(&plan.git.dir)
        .current()
        .map(|commit| commit.to_string());
    let record = match (record, retry_failed) {
        (Ok(record), _) => record,
        // The operator deploys anyway, over a new record whose release to roll back to is the
        // one in service.
        (Err(untrusted), true) => {
            tracing::warn!("{untrusted}");
            deploys::Deploys {
                last_good_commit: in_service.clone(),
                ..deploys::Deploys::default()
            }
        }
        (Err(untrusted), false) => return Err(untrusted.into()),
    };
    // A change that fails its gate must be remembered, or the next run deploys it again.
    deploys::write(&config.paths.state_dir, &record).map_err(|e| {
        Error::io(
            format!(
                "cannot write the deploy record {}, so a change that failed its gate could not \
                 be remembered; nothing is deployed until it is writable",
                config.paths.state_dir.join(deploys::FILE).display()
            ),
            e,
        )
    })?;
    let head = remote_head(config, &plan, &client).await?;
    // A ref whose commit this instance cannot read yet (a new tag object, a commit not fetched)
    // is something new: the boot fetches and checks it.
    let head_commit = head.commit.map(|commit| commit.to_string());
    // What serves must be the release last proven healthy; one never proven (a boot killed
    // before its gate) is judged by a boot.
    let proven = in_service.is_some() && in_service == record.last_good_commit;
    let not_deployed = |reason: String, exit_code: u8| Error::NotDeployed {
        reference: plan.git.reference.clone(),
        reason,
        exit_code,
    };
    if new_secrets.is_empty() && proven && in_service.is_some() && in_service == head_commit {
        return match avoided {
            None => {
                tracing::info!(commit = %head, "up to date: nothing to deploy");
                Ok(())
            }
            Some(warning) => Err(not_deployed(warning, crate::exit::ROLLED_BACK)),
        };
    }
    let failed_before = record
        .avoided(&plan.git.reference)
        .filter(|failed| head_commit.as_deref() == Some(failed.commit.as_str()));
    if let (Some(failed), false, true, true) =
        (failed_before, retry_failed, new_secrets.is_empty(), proven)
    {
        return Err(not_deployed(
            format!(
                "it is still at {}, which did not deploy at {} ({}); it is not tried again until \
                 the ref moves on (`bootagent deploy --retry` tries it again)",
                failed.commit, failed.at, failed.reason
            ),
            failed.exit_code,
        ));
    }
    tracing::info!(
        from = in_service.as_deref().unwrap_or("none"),
        to = %head,
        secrets = %secrets::ids(&new_secrets),
        "deploying"
    );
    match crate::boot::boot(config, Run { retry_failed }).await? {
        None => Ok(()),
        Some(kept) => Err(Error::NotDeployed {
            reference: plan.git.reference.clone(),
            reason: kept.note,
            exit_code: kept.exit_code,
        }),
    }
}

/// What is new in the secrets since the boot `last` recorded, asked of DescribeSecret (no
/// values), with the deploy record that says which versions failed their gate.
pub struct SecretsSince {
    pub client: secrets::Client,
    pub record: Result<deploys::Deploys, deploys::Untrusted>,
    /// The secrets with a version to use.
    pub new: Vec<secrets::SecretVersion>,
    /// The warning that names the versions set aside, if any were.
    pub set_aside: Option<String>,
}

/// [`SecretsSince`]; versions that failed their gate are set aside unless `retry_failed`.
pub async fn secrets_since(
    config: &Config,
    plan: &Plan,
    last: &status::Status,
    retry_failed: bool,
) -> Result<SecretsSince, Error> {
    let region = &plan.identity.region;
    let client = secrets::client(&config.secrets, region, config.secrets.timeout).await?;
    let changed = match secrets::changed(&client, region, &plan.secrets, &last.secrets).await {
        Ok(changed) => changed,
        Err(e) => {
            secrets::fallback::forget_if_refused(&config.paths.state_dir, &e);
            return Err(e.into());
        }
    };
    let record = deploys::read(&config.paths.state_dir);
    // An untrusted record sets nothing aside here: the boot it leads to keeps the code in
    // service, and `deploy` refuses to go on without --retry.
    let (set_aside, new) = match &record {
        Ok(record) => record.set_aside_failed(changed, retry_failed),
        Err(_) => (None, changed),
    };
    Ok(SecretsSince {
        client,
        record,
        new,
        set_aside,
    })
}

/// What the ref names on the remote now: one listing, with the credentials a boot uses.
async fn remote_head(
    config: &Config,
    plan: &Plan,
    client: &secrets::Client,
) -> Result<git::RemoteRef, Error> {
    let remote = plan.git.remote.clone().map_err(git::GitError::from)?;
    let credentials = match git::Credentials::load(&config.git, &config.paths, plan, client).await {
        Ok(credentials) => credentials,
        Err(git::Unavailable::Secrets(e)) => {
            secrets::fallback::forget_if_refused(&config.paths.state_dir, &e);
            return Err(e.into());
        }
        Err(git::Unavailable::Git(e)) => return Err(e.into()),
    };
    let reference = plan.git.reference.clone();
    let limits = git::Limits::new(config.git.deadline, "git.deadline", git::Cancel::default());
    let dir = plan.git.dir.clone();
    tokio::task::spawn_blocking(move || {
        git::remote_ref(&remote, &reference, &dir, &credentials, &limits)
    })
    .await
    .map_err(|e| Error::io("the git listing failed", std::io::Error::other(e)))?
    .map_err(Error::from)
}
