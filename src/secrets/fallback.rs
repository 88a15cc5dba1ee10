//! Where a boot's secrets come from when Secrets Manager does not answer: the instance's region,
//! then each replica region (`secrets.regions`), then the encrypted snapshot of the last good
//! secrets. Only silence falls through: an answer that says no (denied, not found, a key that
//! cannot decrypt) is final, and deletes the snapshot, so that revoking a secret is never undone
//! by an outage.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::snapshot::{self, Unusable};
use super::{client, Read, SecretsError};
use crate::config::SecretsConfig;
use crate::plan::SecretsPlan;

/// Who gave a boot its secrets.
pub enum Served {
    /// Secrets Manager, in this region.
    Region(String),
    /// The snapshot: Secrets Manager last gave these values at `taken_at`.
    Snapshot { taken_at: SystemTime, age: Duration },
}

pub struct Obtained {
    pub read: Read,
    pub served: Served,
}

/// Reads the plan's secrets from the first region that answers (the instance's, then
/// `settings.regions`), or from the snapshot when none does; `time` is what the boot leaves.
/// A region gets `settings.fallback_after` of retries (at most half the time left) when
/// something comes after it.
pub async fn obtain(
    settings: &SecretsConfig,
    state_dir: &Path,
    region: &str,
    plan: &SecretsPlan,
    time: Duration,
) -> Result<Obtained, SecretsError> {
    let started = tokio::time::Instant::now();
    let snapshot_kept = !settings.snapshot_max_age.is_zero() && snapshot::path(state_dir).exists();
    if settings.snapshot_max_age.is_zero() {
        delete_snapshot(state_dir, "secrets.snapshot_max_age is 0");
    }
    let regions: Vec<&str> = std::iter::once(region)
        .chain(settings.regions.iter().map(String::as_str))
        .filter({
            let mut seen = Vec::new();
            move |r| {
                let first = !seen.contains(r);
                seen.push(*r);
                first
            }
        })
        .collect();
    let mut first_error = None;
    for (i, region) in regions.iter().enumerate() {
        let left = time.saturating_sub(started.elapsed());
        let more_to_try = i + 1 < regions.len() || snapshot_kept;
        // At most half of what is left, so that what comes after always gets its turn.
        let retry_for = match more_to_try {
            true => (left / 2).min(settings.fallback_after),
            false => left,
        };
        // One call's time at least (secrets.fallback_after may be 0s: one try), but never past
        // half of what the step has left: `time` and the one call after it (fetch_secrets gives
        // the step secrets.timeout and a second more), so that a deadline shorter than a call
        // still gets its one try.
        let step_left = left + settings.timeout + Duration::from_secs(1);
        let cut = more_to_try.then(|| retry_for.max(settings.timeout).min(step_left / 2));
        let read = read_region(settings, region, plan, retry_for, cut).await;
        let error = match read {
            Ok(read) => {
                if i > 0 {
                    tracing::warn!(region, "secrets read from replica region {region}");
                }
                let served = Served::Region(region.to_string());
                return Ok(Obtained { read, served });
            }
            Err(e) if e.is_transient() => e,
            Err(e) => {
                if e.is_refusal() {
                    delete_snapshot(state_dir, "Secrets Manager refused a secret it holds");
                }
                return Err(e);
            }
        };
        if more_to_try {
            tracing::warn!(region, "{error}; trying the next fallback");
        }
        first_error.get_or_insert(error);
    }
    let error = first_error.expect("the instance's region is always tried");
    let unusable = match snapshot::open(state_dir, settings.snapshot_max_age).await {
        Ok(snapshot) => match super::mismatch(&snapshot.read, plan) {
            None => {
                let served = Served::Snapshot {
                    taken_at: snapshot.taken_at,
                    age: snapshot.age(),
                };
                let read = snapshot.read;
                return Ok(Obtained { read, served });
            }
            Some(detail) => Unusable::OtherSecrets { detail },
        },
        Err(unusable) => unusable,
    };
    // The snapshot cannot stand in: the time kept for it goes to the instance's region, as
    // when there is none.
    let left = time.saturating_sub(started.elapsed());
    let error = match snapshot_kept && !left.is_zero() {
        true => {
            let region = regions[0];
            tracing::warn!(region, "{unusable}; asking region {region} again");
            match read_region(settings, region, plan, left, None).await {
                Ok(read) => {
                    let served = Served::Region(region.to_string());
                    return Ok(Obtained { read, served });
                }
                Err(e) if e.is_transient() => e,
                Err(e) => {
                    forget_if_refused(state_dir, &e);
                    return Err(e);
                }
            }
        }
        false => error,
    };
    Err(SecretsError::NoFallback {
        error: Box::new(error),
        snapshot: unusable.to_string(),
    })
}

/// Every secret the plan reads, from `region`, retried for `retry_for`; cut off after `cut`:
/// the retries bound when a try may start, not when it ends (secrets.timeout later), and each
/// secret has its own, so only a read cut off at its share leaves the rest their turn.
async fn read_region(
    settings: &SecretsConfig,
    region: &str,
    plan: &SecretsPlan,
    retry_for: Duration,
    cut: Option<Duration>,
) -> Result<Read, SecretsError> {
    let client = client(settings, region, retry_for).await?;
    let read = super::read(&client, region, plan);
    match cut {
        Some(cut) => (tokio::time::timeout(cut, read).await)
            .unwrap_or_else(|_| Err(cut_off(plan, region, cut))),
        None => read.await,
    }
}

/// A region that did not answer within its share of the time, as a transient error.
fn cut_off(plan: &SecretsPlan, region: &str, share: Duration) -> SecretsError {
    let ids: Vec<&str> = super::wanted(plan).into_keys().collect();
    let share = humantime::format_duration(Duration::from_millis(share.as_millis() as u64));
    SecretsError::Unreachable {
        id: ids.join(", "),
        region: region.to_string(),
        detail: "no answer within the region's share of the boot's time, so that the next \
                 fallback gets its turn"
            .into(),
        tries: format!("cut off after {share}"),
        retry_after: None,
    }
}

/// Deletes the snapshot when `error` is Secrets Manager saying no: wherever bootagent reads a
/// secret (a boot, `refresh`, `deploy`'s listing with a token kept in a secret), a "no" is final.
pub fn forget_if_refused(state_dir: &Path, error: &SecretsError) {
    if error.is_refusal() {
        delete_snapshot(state_dir, "Secrets Manager refused a secret it holds");
    }
}

/// Deletes the snapshot, saying why when there was one; a snapshot that cannot be deleted is
/// an error in the journal (what it holds stays encrypted).
pub fn delete_snapshot(state_dir: &Path, why: &str) {
    match snapshot::delete(state_dir) {
        Ok(true) => tracing::warn!(
            security_event = "secrets-snapshot-deleted",
            "deleted the snapshot of the last good secrets: {why}"
        ),
        Ok(false) => {}
        Err(e) => tracing::error!(
            "could not delete the snapshot of the last good secrets ({}): {e}; {why}",
            snapshot::path(state_dir).display()
        ),
    }
}
