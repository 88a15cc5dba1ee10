//! What can go wrong starting the service.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("user {user} does not exist; create it in the image or set service.user")]
    UnknownUser { user: String },

    #[error("cannot run the service as {user}: bootagent runs unprivileged as uid {uid}; run it as root")]
    CannotSwitchUser { user: String, uid: u32 },
    #[error("failed to write the systemd drop-in {path}")]
    DropIn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`systemctl {args}` failed: {message}{hint}")]
    Systemctl {
        args: String,
        message: String,
        hint: String,
    },
    #[error(
        "{unit} is {state} (result: {result}) after its start; see `journalctl -u {unit}` for \
         why it stopped"
    )]
    NotActive {
        unit: String,
        state: String,
        result: String,
    },
    #[error(
        "{unit} started but did not stay up: within {settle} it became {state} (result: \
         {result}){restarted}; see `journalctl -u {unit}` for why it exits (bad config, a missing \
         file, a port in use)"
    )]
    DidNotStay {
        unit: String,
        settle: String,
        state: String,
        result: String,
        restarted: String,
    },
    #[error(
        "{unit} was still {state} after {waited}; see `journalctl -u {unit}` for what its start \
         waits on, and raise service.start_timeout if it needs longer"
    )]
    StartTimeout {
        unit: String,
        state: String,
        waited: String,
    },
    #[error(
        "{program} cannot be run as {user}: {reason}; fix service.command, or the file's location \
         or mode"
    )]
    NotExecutable {
        program: String,
        user: String,
        reason: String,
    },
    #[error("failed to run {program}")]
    Exec {
        program: String,
        #[source]
        source: std::io::Error,
    },
}
