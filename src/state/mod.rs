//! The files that say what bootagent did, read by operators, the health report and the next
//! boot: status.json (`status`: the last boot, on tmpfs), the history of boots (`history`) and
//! deploys.json (`deploys`: the release last proven healthy and what failed its gate), both kept
//! across reboots in `paths.state_dir`.

pub mod deploys;
pub mod history;
pub mod status;
