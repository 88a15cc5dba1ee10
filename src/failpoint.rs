//! Named points at which a test has the process killed with SIGKILL, as a power loss or the OOM
//! killer would: `BOOTAGENT_FAILPOINT=NAME`. The fault matrix (tests/faults.rs) kills a boot at
//! every phase boundary (`after-identity`, `after-secrets`, `after-git`, …), inside the env
//! file's write (`before-rename:<service>.env`), inside the release switch (`release-switch`)
//! and in a rollback, once the failed change is recorded (`rolling-back`), and checks that the
//! next boot converges. `BOOTAGENT_FAILPOINT=panic:NAME` panics there instead, as a bug would.
//!
//! Only builds with the `failpoints` feature (the test build) have them: in the shipped binary
//! `hit` does nothing, so no environment variable can make it kill itself.

#[cfg(feature = "failpoints")]
pub const ENV: &str = "BOOTAGENT_FAILPOINT";

/// Unset, a point costs one comparison.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let Some(armed) = ARMED.get_or_init(|| std::env::var(ENV).ok()).as_deref() else {
        return;
    };
    if armed == name {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    } else if armed.strip_prefix("panic:") == Some(name) {
        panic!("failpoint {name}");
    }
}

#[cfg(not(feature = "failpoints"))]
pub fn hit(_name: &str) {}
