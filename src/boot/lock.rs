//! One boot at a time, and what an interrupted boot left behind.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use crate::config::PathsConfig;
use crate::retry::{self, Look, Unready};
use crate::state::status::{self, Outcome};
use crate::Error;

const LOCK_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// One boot at a time: cloud-init and the boot unit may both start one. Waits for the other to
/// finish, up to `wait`. `holder` names what takes the lock, for the message when it is held
/// elsewhere: `boot` or `prepare`.
pub async fn lock(path: &Path, wait: Duration, holder: &'static str) -> Result<Flock<File>, Error> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o644)
        .open(path)
        .map_err(|e| Error::io(format!("failed to open the lock {}", path.display()), e))?;
    // flock takes the file and gives it back when the lock is held elsewhere.
    let mut unlocked = Some(file);
    let mut looks = 0;
    let locked = retry::poll(LOCK_POLL_INTERVAL, wait, || {
        looks += 1;
        let file = unlocked
            .take()
            .expect("a pending look gives the file back for the next");
        let look = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Look::Ready(lock),
            Err((returned, nix::errno::Errno::EWOULDBLOCK)) => {
                if looks == 1 {
                    tracing::info!(lock = %path.display(), "another {holder} is running, waiting for it");
                }
                unlocked = Some(returned);
                Look::Pending(())
            }
            Err((_, errno)) => Look::Failed(Error::io(
                format!("failed to lock {}", path.display()),
                errno.into(),
            )),
        };
        std::future::ready(look)
    })
    .await;
    locked.map_err(|unready| match unready {
        Unready::Failed(e) => e,
        Unready::TimedOut(()) => Error::Locked {
            holder,
            path: path.display().to_string(),
            waited: humantime::format_duration(wait).to_string(),
        },
    })
}

/// What a boot killed midway left, cleared under the lock (so no other boot is writing): its
/// `running` status goes into the history as failed, and its temporary files, which may hold
/// secret values, are removed.
pub fn clear_interrupted_boot(paths: &PathsConfig) {
    if let Ok(mut previous) = status::read_as_written(&paths.status_file()) {
        if previous.outcome == Outcome::Running {
            previous.mark_interrupted();
            tracing::warn!(
                started_at = %previous.started_at,
                pid = previous.pid,
                "the previous boot was interrupted before it finished"
            );
            if let Err(e) = crate::state::history::record(&paths.state_dir, &previous) {
                tracing::warn!(error = %e, "could not record the interrupted boot in the history");
            }
        }
    }
    for entry in std::fs::read_dir(&paths.run_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        if crate::atomic::is_temporary(&entry.file_name()) {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(error = %e, file = %entry.path().display(), "could not remove a file an interrupted boot left");
            }
        }
    }
}
