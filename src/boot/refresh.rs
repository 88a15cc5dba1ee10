//! `refresh`: when a secret has a new version, boot again (which re-renders the env file and
//! restarts the unit), after a random part of the window so that a fleet does not restart at
//! once.

use std::time::Duration;

use crate::config::{Config, Manager};
use crate::secrets;
use crate::state::status;
use crate::Error;

/// Compares the secret versions in use (status.json) with the current ones (DescribeSecret,
/// which returns no values); when one changed, waits a random part of the window (none with
/// `now`) and boots again.
pub async fn refresh(config: &Config, now: bool) -> Result<(), Error> {
    if config.service.manager == Manager::Exec {
        return Err(Error::Usage(
            "refresh restarts services under systemd; in exec mode, restart the container or \
             process to pick up new secrets"
                .into(),
        ));
    }
    crate::boot::refuse_if_draining(&config.paths)?;
    if config.paths.apply_pending_marker().exists() {
        tracing::warn!(
            "an earlier boot wrote what the service reads and was stopped before the unit got              it: booting again now"
        );
        crate::boot::boot(config, crate::boot::Run::default()).await?;
        return Ok(());
    }
    let last = status::read(&config.paths)?;
    let plan = crate::plan::resolve(config).await?;
    let since = crate::boot::deploy::secrets_since(config, &plan, &last, false).await?;
    let (changed, avoided) = (since.new, since.set_aside);
    let on_snapshot = matches!(
        last.secrets_from,
        Some(status::SecretsFrom::Snapshot { .. })
    );
    if changed.is_empty() && !on_snapshot {
        match avoided {
            None => tracing::info!("secrets unchanged, nothing to do"),
            Some(warning) => tracing::warn!("{warning}"),
        }
        renew_snapshot(config, &plan, &since.client, &last).await;
        return Ok(());
    }
    let delay = if now {
        Duration::ZERO
    } else {
        // Spread over the window, so that a fleet does not restart at once.
        crate::retry::random_part_of(config.refresh.window)
    };
    match on_snapshot && changed.is_empty() {
        true => tracing::info!(
            delay = %humantime::format_duration(delay),
            "Secrets Manager answers again: booting again after the delay, to leave the snapshot"
        ),
        false => tracing::info!(
            secrets = %secrets::ids(&changed),
            delay = %humantime::format_duration(delay),
            "secrets have new versions, booting again after the delay"
        ),
    }
    tokio::time::sleep(delay).await;
    // The secrets are what refresh is for: a boot that applied them but kept the code in
    // service (the remote down, say) did what was asked.
    crate::boot::boot(config, crate::boot::Run::default()).await?;
    Ok(())
}

/// A snapshot is renewed (read again with GetSecretValue, never only DescribeSecret, so that a
/// revoked permission stops the renewals) once it is this part of `secrets.snapshot_max_age` old.
const RENEW_AT_PART_OF_MAX_AGE: u32 = 7;

/// Keeps the snapshot young while nothing changes and the host does not boot: an instance up
/// for weeks can still boot on it the day Secrets Manager does not answer. The versions must be
/// the ones in service, so that the snapshot only ever holds what the service runs with.
async fn renew_snapshot(
    config: &Config,
    plan: &crate::plan::Plan,
    client: &secrets::Client,
    last: &status::Status,
) {
    let max_age = config.secrets.snapshot_max_age;
    let state_dir = &config.paths.state_dir;
    let path = secrets::snapshot::path(state_dir);
    // The file's time only decides when to renew; the age a boot goes by is sealed inside.
    let written = std::fs::metadata(&path).and_then(|m| m.modified());
    let due = match written {
        Ok(written) => written.elapsed().unwrap_or_default() >= max_age / RENEW_AT_PART_OF_MAX_AGE,
        Err(_) => true,
    };
    // Only what a boot that succeeded read from Secrets Manager: never the versions of a
    // change that was rolled back.
    let served = matches!(
        last.outcome,
        status::Outcome::Succeeded | status::Outcome::Degraded
    ) && matches!(last.secrets_from, Some(status::SecretsFrom::Region(_)));
    if max_age.is_zero() || !due || !served {
        return;
    }
    let region = &plan.identity.region;
    let read = match secrets::read(client, region, &plan.secrets).await {
        Ok(read) => read,
        Err(e) => {
            secrets::fallback::forget_if_refused(state_dir, &e);
            tracing::warn!("could not renew the snapshot of the last good secrets: {e}");
            return;
        }
    };
    if read.versions() != last.secrets {
        tracing::info!("the secrets changed while renewing the snapshot: the next boot renews it");
        return;
    }
    match secrets::snapshot::save(state_dir, &read, std::time::SystemTime::now()).await {
        Ok(()) => tracing::info!("renewed the snapshot of the last good secrets"),
        Err(e) => tracing::warn!("could not renew the snapshot of the last good secrets: {e}"),
    }
}
