//! Starting the service: under systemd (`systemd`: a runtime drop-in, then restart and wait), or
//! by replacing bootagent with the service's command (`exec`: containers, tests); and the deploy
//! hooks around a start (`hooks`). The exec and the hooks run as the service user, with the
//! environment `environment` builds.

mod environment;
mod error;
mod exec;
mod hooks;
mod systemd;

pub use environment::user;
pub use error::ServiceError;
pub use exec::{prepare_exec, ExecCommand};
pub use hooks::{run_hook, HookError};
pub use systemd::{start_systemd, stop_systemd, unit_state, Changes, UnitReport};
