//! The service checkout with libgit2: the releases on disk, the sync that makes a new one, the
//! remote's refs, and the transports bootagent gives libgit2. What the rest of the crate uses is
//! re-exported here.

mod credentials;
mod daemon;
mod error;
mod http;
mod refs;
mod releases;
pub mod seed;
mod session;
mod ssh;
mod sync;
mod tag_object;
mod transport;
pub mod trust;
pub mod trusted_keys;

pub use crate::remote::Remote;
pub use credentials::{Credentials, Unavailable};
pub use error::GitError;
pub use refs::{remote_ref, RemoteRef};
pub use releases::{prune, release_dir, switch, Layout};
pub use session::{Cancel, Limits};
pub use sync::{sync, Action, Avoid, Checkout, Owner};
pub use transport::init;

/// A new bare repository at `path` from libgit2's own minimal template alone: the machine's git
/// templates (`init.templateDir`, /usr/share/git-core/templates) would copy sample hooks and
/// whatever else an image holds into every repository bootagent makes.
fn init_bare(path: &std::path::Path) -> Result<git2::Repository, git2::Error> {
    git2::Repository::init_opts(
        path,
        git2::RepositoryInitOptions::new()
            .bare(true)
            .external_template(false),
    )
}
