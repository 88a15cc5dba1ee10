//! Who the processes bootagent starts for the service run as (the service itself in exec mode, a
//! deploy hook), and with what environment: nothing of bootagent's own.

use std::process::Command;

use nix::unistd::User;

use super::error::ServiceError;

/// The PATH of the service's processes; where a command named without a path is looked for.
pub(super) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The service user (`service.user`): the owner of the checkout, and who the exec and the hooks
/// run as.
pub fn user(name: &str) -> Result<User, ServiceError> {
    User::from_name(name)
        .ok()
        .flatten()
        .ok_or_else(|| ServiceError::UnknownUser {
            user: name.to_string(),
        })
}

/// Gives `command` exactly `vars` beside a minimal PATH and `user`'s HOME, USER and LOGNAME
/// (which `vars` may override): nothing bootagent runs with, its credentials' variables
/// included, reaches the child unless it is asked for.
pub(super) fn set<'a>(
    command: &mut Command,
    user: &User,
    vars: impl IntoIterator<Item = (&'a str, &'a str)>,
) {
    command
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", &user.dir)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .envs(vars);
}
