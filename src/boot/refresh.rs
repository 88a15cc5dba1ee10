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
    if changed.is_empty() {
        match avoided {
            None => tracing::info!("secrets unchanged, nothing to do"),
            Some(warning) => tracing::warn!("{warning}"),
        }
        return Ok(());
    }
    let delay = if now {
        Duration::ZERO
    } else {
        // Spread over the window, so that a fleet does not restart at once.
        crate::retry::random_part_of(config.refresh.window)
    };
    tracing::info!(
        secrets = %secrets::ids(&changed),
        delay = %humantime::format_duration(delay),
        "secrets have new versions, booting again after the delay"
    );
    tokio::time::sleep(delay).await;
    // The secrets are what refresh is for: a boot that applied them but kept the code in
    // service (the remote down, say) did what was asked.
    crate::boot::boot(config, crate::boot::Run::default()).await?;
    Ok(())
}
