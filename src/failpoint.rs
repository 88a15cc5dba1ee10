//! Named points at which a test has the process killed with SIGKILL, as a power loss or the OOM
//! killer would: `BOOTAGENT_FAILPOINT=NAME`. The fault matrix (tests/faults.rs) kills a boot at
//! every phase boundary (`after-identity`, `after-secrets`, `after-git`, …), inside the env
//! file's write (`before-rename:<service>.env`), inside the release switch (`release-switch`)
//! and in a rollback, once the failed change is recorded (`rolling-back`), and checks that the next boot converges. Unset, a point costs one
//! comparison.

use std::sync::OnceLock;

pub const ENV: &str = "BOOTAGENT_FAILPOINT";

pub fn hit(name: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    if ARMED.get_or_init(|| std::env::var(ENV).ok()).as_deref() == Some(name) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
