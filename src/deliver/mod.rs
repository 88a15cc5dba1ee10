//! How secrets reach the service besides its environment: `credentials`, the secret variables
//! as credentials, for services that should not hold secrets in their environment; `live`, the
//! copy of new ones into a running unit; and `files`, the `[[files]]` entries rendered from the
//! secrets and written with their owner, group and mode.

pub mod credentials;
pub mod files;
pub mod live;
#[cfg(test)]
mod tests;

use std::path::Path;

use zeroize::Zeroizing;

/// Past anything bootagent delivers (each secret answer is cut off at 1 MiB): a file this large
/// was not written by it.
const MAX_DELIVERED_BYTES: u64 = 16 * 1024 * 1024;

/// A file bootagent delivered (a credential, a unit's copy of one, a secret file), read back: a
/// regular file, never through a link, and bounded. Such files sit in directories another user
/// may write (exec mode's store, a unit's credentials), who could put there a link to a file
/// only root may read, a FIFO or /dev/zero.
pub fn read_delivered(path: &Path) -> std::io::Result<Zeroizing<Vec<u8>>> {
    crate::atomic::read_bounded(path, MAX_DELIVERED_BYTES, crate::atomic::Links::Refuse)
        .map(Zeroizing::new)
}

/// Where systemd keeps `unit`'s own copy of its credentials.
pub fn live_credentials_dir(unit: &str) -> std::path::PathBuf {
    Path::new(crate::config::SYSTEMD_CREDENTIALS_ROOT).join(unit)
}
