//! Exit codes are part of the contract (README "Exit codes"): a caller — cloud-init, an ASG
//! lifecycle script, an operator — decides from them whether retrying can help.

pub const SUCCESS: u8 = 0;
/// A bug or an unexpected local failure.
pub const INTERNAL: u8 = 1;
/// Bad command line or configuration.
pub const USAGE: u8 = 2;
/// A required tag is missing or invalid, or names an unknown environment.
pub const IDENTITY: u8 = 3;
/// Instance tags are not exposed in instance metadata.
pub const TAGS_DISABLED: u8 = 4;
/// The secret does not exist or may not be read.
pub const SECRET_UNAVAILABLE: u8 = 5;
/// The secret exists but its content cannot become an environment.
pub const SECRET_MALFORMED: u8 = 6;
/// The git checkout could not be brought to the planned commit.
pub const GIT: u8 = 7;
/// The service did not start or did not stay up.
pub const SERVICE: u8 = 8;
/// A local file system problem: run dir not on tmpfs, disk full, permissions.
pub const LOCAL: u8 = 9;
/// Another `bootagent boot` held the lock for longer than the boot deadline (or another
/// `bootagent prepare` the seed's, for longer than `git.deadline`).
pub const LOCKED: u8 = 10;
/// `env diff`: the environments define different variables.
pub const DIFFERENT: u8 = 11;
/// `health-report`: the instance is not healthy.
pub const UNHEALTHY: u8 = 12;
/// `doctor`: at least one check failed.
pub const CHECKS_FAILED: u8 = 13;
/// Auto Scaling refused a lifecycle call.
pub const LIFECYCLE: u8 = 14;
/// Instance metadata refused the request (HTTP 403: the endpoint is disabled or this request
/// is not allowed) or answered what EC2's never does. Retrying cannot help.
pub const METADATA_UNUSABLE: u8 = 15;
/// A change to what runs failed its gate (the unit did not settle, or the app's health URL did
/// not turn green) and the release before it serves again.
pub const ROLLED_BACK: u8 = 16;
/// The instance is draining before termination (`lifecycle watch` saw it leave service): nothing
/// is started, restarted or deployed until it launches again.
pub const DRAINING: u8 = 17;
/// Retries or a deadline ran out on something that may work later (EX_TEMPFAIL).
pub const TRANSIENT: u8 = 75;

/// Every code and whether running the command again can help (`None`: not a failure, or a
/// command's answer rather than an error). The README's table must say the same; a test
/// checks it.
pub const TABLE: &[(u8, Option<bool>)] = &[
    (SUCCESS, None),
    (INTERNAL, Some(false)),
    (USAGE, Some(false)),
    (IDENTITY, Some(false)),
    (TAGS_DISABLED, Some(false)),
    (SECRET_UNAVAILABLE, Some(false)),
    (SECRET_MALFORMED, Some(false)),
    (GIT, Some(false)),
    (SERVICE, Some(false)),
    (LOCAL, Some(false)),
    (LOCKED, Some(true)),
    (DIFFERENT, None),
    (UNHEALTHY, None),
    (CHECKS_FAILED, None),
    (LIFECYCLE, Some(false)),
    (METADATA_UNUSABLE, Some(false)),
    (ROLLED_BACK, Some(false)),
    (DRAINING, Some(false)),
    (TRANSIENT, Some(true)),
];
