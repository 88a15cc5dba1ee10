//! What a panic (a bug) ends in, the same in debug and release builds — where `panic = "abort"`
//! would otherwise end the process with SIGABRT (134) and leave `running` in status.json: one
//! line on stderr (the journal under systemd), the boot this process runs recorded as failed in
//! status.json and the history, and exit code 1 (`exit::INTERNAL`).
//!
//! The line and the record say where the panic happened, never its message: a message is
//! whatever the failing code formatted (an `unwrap` prints the error, which may carry a value
//! read from a secret), and no secret value may reach the journal or status.json.

use std::io::Write;
use std::sync::{Mutex, PoisonError};

use crate::config::PathsConfig;
use crate::state::status::{self, ErrorReport, Outcome};

/// The files of the boot this process runs, once it runs one.
static BOOT: Mutex<Option<PathsConfig>> = Mutex::new(None);

/// Replaces the default panic hook (which prints the message and lets the panic abort or
/// unwind) with the ending above. Called first thing in `main`.
pub fn install() {
    std::panic::set_hook(Box::new(|info| {
        // One ending, even when threads panic at once: the others wait here until the exit.
        static ENDING: Mutex<()> = Mutex::new(());
        let _ending = ENDING.lock();
        let place = info.location().map_or_else(
            || "an unknown place".to_string(),
            |at| format!("{}:{}", at.file(), at.line()),
        );
        let message = format!(
            "internal error: bootagent panicked at {place}, a bug (the panic's message is \
             withheld: it may hold a secret value)"
        );
        let recorded = record_failed_boot(&message);
        // Not eprintln: a closed stderr would panic inside the panic, and end in SIGABRT.
        let mut stderr = std::io::stderr();
        let _ = match recorded {
            Ok(()) => writeln!(stderr, "error: {message}"),
            Err(e) => writeln!(stderr, "error: {message}; {}", e.one_line()),
        };
        // Other threads may still be inside libgit2 or the SDK: nothing more runs on this path.
        std::process::exit(i32::from(crate::exit::INTERNAL));
    }));
}

/// A boot runs in this process, recorded in `paths`' status.json: a panic from now on ends it
/// as failed there.
pub fn watch_boot(paths: &PathsConfig) {
    *BOOT.lock().unwrap_or_else(PoisonError::into_inner) = Some(paths.clone());
}

/// The boot's record is closed: a panic from now on (`lifecycle watch` goes on for hours after
/// the boot it ran) is not the boot's, which keeps the outcome it was recorded with.
pub fn boot_ended() {
    *BOOT.lock().unwrap_or_else(PoisonError::into_inner) = None;
}

/// The boot this process runs, if any, ends as failed with `message`: in status.json, and in
/// the history when it had not ended yet (a boot that had already ended has its history line).
fn record_failed_boot(message: &str) -> Result<(), crate::Error> {
    let Some(paths) = BOOT.lock().unwrap_or_else(PoisonError::into_inner).clone() else {
        return Ok(());
    };
    let mut boot = status::read_as_written(&paths.status_file())?;
    if boot.pid != std::process::id() {
        return Ok(());
    }
    let was_running = boot.outcome == Outcome::Running;
    boot.outcome = Outcome::Failed;
    boot.finished_at = Some(status::now());
    boot.error = Some(ErrorReport {
        message: message.to_string(),
        exit_code: crate::exit::INTERNAL,
    });
    status::write(&paths.status_file(), &boot)?;
    if was_running {
        crate::state::history::record(&paths.state_dir, &boot)
            .map_err(|e| crate::Error::io("failed to record the boot in the history", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_fails_the_boot_in_progress_but_not_one_whose_record_was_closed() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[paths]\nrun_dir = \"{dir}/run\"\nstate_dir = \"{dir}/state\"\n",
            dir = dir.path().display()
        );
        let config = crate::config::from_text(std::path::Path::new("t.toml"), &text).unwrap();
        let paths = config.paths;
        std::fs::create_dir_all(&paths.run_dir).unwrap();
        let mut boot = status::Status::starting();
        boot.outcome = Outcome::Succeeded;
        status::write(&paths.status_file(), &boot).unwrap();

        watch_boot(&paths);
        boot_ended();
        record_failed_boot("internal error").unwrap();
        let kept = status::read_as_written(&paths.status_file()).unwrap();
        assert_eq!(kept.outcome, Outcome::Succeeded);

        watch_boot(&paths);
        record_failed_boot("internal error").unwrap();
        let failed = status::read_as_written(&paths.status_file()).unwrap();
        assert_eq!(failed.outcome, Outcome::Failed);
        assert_eq!(failed.error.unwrap().exit_code, crate::exit::INTERNAL);
        boot_ended();
    }
}
