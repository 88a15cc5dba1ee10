//! The checkout: bring a release of the commit the planned branch, tag or commit names onto
//! disk, fetching only what is missing. The remote is anonymous, so its URL (and any credential
//! in it) never lands in `.git/config`.

use std::path::Path;
use std::time::{Duration, Instant};

use git2::{Direction, Repository};

use super::error::network_error;
use super::refs::{advertised_ref, fetch_options, target_of, warn_if_peel_forged, Listed};
use super::releases::Layout;
use super::seed;
use super::session::{ActiveSession, Limits};
use super::trust::{self, Target};
use super::{Credentials, GitError};
use crate::plan::{fetch_depth, GitPlan};
use crate::remote::Remote;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    pub commit: String,
    pub action: Action,
    /// What the fetch transferred (0 when nothing needed fetching).
    pub received_objects: usize,
    pub received_bytes: usize,
    /// The mirror it came from, when the remote did not answer (set by the caller).
    pub mirror: Option<String>,
    /// When the seed this first checkout started from was taken (`bootagent prepare`).
    pub seed: Option<String>,
}

/// What the boot did to the checkout; written in status.json and the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Cloned,
    Fetched,
    Unchanged,
    /// The checkout failed and the release already in service stays (`git.on_failure`).
    Kept,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Cloned => "cloned",
            Action::Fetched => "fetched",
            Action::Unchanged => "unchanged",
            Action::Kept => "kept",
        })
    }
}

const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Where the bare repository keeps the fetched commit.
const TRACKING: &str = "refs/bootagent/target";

/// Who owns a release's files.
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// A commit not to deploy again while a release is in service, and the error a sync that meets
/// it stops with (the deploy record's, which git knows nothing of).
pub struct Avoid {
    pub commit: String,
    pub because: GitError,
}

/// Blocking: makes a release of the commit `plan.reference` names on `url`, ready for
/// [`switch`]. A release is checked out in a temporary directory, synced and renamed into place;
/// the link switches only when the caller says (a rename too), so whatever is killed or fails
/// when, the link points at a complete release: the new one or the last good one. `Unchanged`:
/// the link already points at that commit.
///
/// `avoid` is a commit that failed before: when the ref still names it and a release is in
/// service, the sync stops with its error before making a release of it.
pub fn sync(
    plan: &GitPlan,
    remote: &Remote,
    owner: Option<Owner>,
    credentials: &Credentials,
    limits: &Limits,
    mut avoid: Option<Avoid>,
) -> Result<Checkout, GitError> {
    let layout = Layout::of(&plan.dir);
    let io = |action: &'static str| {
        let dir = plan.dir.clone();
        move |e: std::io::Error| GitError::Local {
            action,
            dir,
            message: e.to_string(),
        }
    };
    let session = credentials.session(remote, limits)?;
    std::fs::create_dir_all(&layout.releases).map_err(io("create the releases directory"))?;
    clear_interrupted_work(&layout.repo).map_err(io("clear what an interrupted fetch left"))?;
    let work = Work {
        plan,
        remote,
        layout,
        session,
        limits,
        owner,
    };
    match work.attempt(true, &mut avoid)? {
        Attempt::Done(checkout) => Ok(checkout),
        // The seed's packs were checked whole as they were planted, and each object is checked
        // as it is read: one that is not what its id says fails the work on this side, and the
        // seed is no reason for a failed boot.
        Attempt::SeedFailed(error) => {
            tracing::warn!("the checkout on the seed failed ({error}): fetching without the seed");
            let _ = std::fs::remove_dir_all(&work.layout.repo);
            match work.attempt(false, &mut avoid)? {
                Attempt::Done(checkout) => Ok(checkout),
                Attempt::SeedFailed(error) => Err(error),
            }
        }
    }
}

/// One sync's fixed inputs.
struct Work<'a> {
    plan: &'a GitPlan,
    remote: &'a Remote,
    layout: Layout,
    session: ActiveSession,
    limits: &'a Limits,
    owner: Option<Owner>,
}

impl Work<'_> {
    /// Fetches, into a new repository from the seed when `seeded` (and there is one that fits),
    /// and makes the release.
    fn attempt(
        &self,
        seeded: bool,
        avoid: &mut Option<Avoid>,
    ) -> Result<Attempt<Checkout>, GitError> {
        let (plan, remote, layout) = (self.plan, self.remote, &self.layout);
        let fetched = match fetch_target(plan, remote, layout, &self.session, self.limits, seeded)?
        {
            Attempt::Done(fetched) => fetched,
            Attempt::SeedFailed(error) => return Ok(Attempt::SeedFailed(error)),
        };
        let planted = fetched.seed.is_some();
        match self.release(fetched, avoid) {
            Err(error) if planted && may_come_from_the_seed(&error) => {
                Ok(Attempt::SeedFailed(error))
            }
            made => made.map(Attempt::Done),
        }
    }

    /// The release of the fetched commit, made unless it exists.
    fn release(&self, fetched: Fetched, avoid: &mut Option<Avoid>) -> Result<Checkout, GitError> {
        let (plan, remote, layout, limits, owner) = (
            self.plan,
            self.remote,
            &self.layout,
            self.limits,
            self.owner,
        );
        let Fetched {
            repo,
            listed,
            target,
            fresh,
            received,
            seed,
        } = fetched;
        let local = |action: &'static str| {
            let dir = plan.dir.clone();
            move |e: git2::Error| GitError::Local {
                action,
                dir,
                message: e.message().to_string(),
            }
        };
        let io = |action: &'static str| {
            let dir = plan.dir.clone();
            move |e: std::io::Error| GitError::Local {
                action,
                dir,
                message: e.to_string(),
            }
        };
        // Past the deadline, or cancelled: the sync stops before its next step, and never
        // switches the release afterwards.
        let stop_if_exceeded = || match limits.exceeded() {
            Some(failure) => Err(GitError::Unreachable {
                url: remote.to_string(),
                message: failure.message().to_string(),
            }),
            None => Ok(()),
        };
        warn_if_peel_forged(&listed, &target, remote);
        let commit_id = target.commit;
        if layout.current().is_some()
            && avoid
                .as_ref()
                .is_some_and(|avoid| avoid.commit == commit_id.to_string())
        {
            return Err(avoid.take().expect("checked just above").because);
        }
        if layout.current() == Some(commit_id) {
            return Ok(Checkout {
                commit: commit_id.to_string(),
                action: Action::Unchanged,
                received_objects: received.0,
                received_bytes: received.1,
                mirror: None,
                seed: seed.map(|seed| seed.taken_at),
            });
        }
        let action = match fresh {
            true => Action::Cloned,
            false => Action::Fetched,
        };
        let release = layout.releases.join(commit_id.to_string());
        trust::check(
            &repo,
            &plan.trust,
            &plan.reference,
            &target,
            layout.current(),
        )?;
        if !release.exists() {
            let commit = repo
                .find_commit(commit_id)
                .map_err(local("find the fetched commit"))?;
            let staging = layout
                .releases
                .join(format!(".{commit_id}.tmp-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&staging);
            stop_if_exceeded()?;
            let mut checkout = git2::build::CheckoutBuilder::new();
            checkout
                .force()
                .target_dir(&staging)
                .notify_on(git2::CheckoutNotificationType::UPDATED)
                .notify(|_, _, _, _, _| limits.exceeded().is_none());
            repo.checkout_tree(commit.as_object(), Some(&mut checkout))
                .map_err(|e| match limits.exceeded() {
                    Some(failure) => GitError::Unreachable {
                        url: remote.to_string(),
                        message: failure.message().to_string(),
                    },
                    None => local("check out the fetched commit")(e),
                })?;
            if let Some(owner) = owner {
                chown_tree(&staging, owner).map_err(io("give the release to the service user"))?;
            }
            // The rename below must not outrun the data: a crash after it would leave a release of
            // empty files.
            sync_filesystem(&staging).map_err(io("flush the release to disk"))?;
            stop_if_exceeded()?;
            std::fs::rename(&staging, &release).map_err(io("move the release into place"))?;
        }
        stop_if_exceeded()?;
        Ok(Checkout {
            commit: commit_id.to_string(),
            action,
            received_objects: received.0,
            received_bytes: received.1,
            mirror: None,
            seed: seed.map(|seed| seed.taken_at),
        })
    }
}

/// Whether `error`, met in a repository the seed was planted in, may be the seed's doing: an
/// object of the seed that cannot be read fails as a local error, or as "not signed", "not a
/// commit", "rewound". Each is asked again without the seed, and stands only if the remote's
/// own objects get the same answer.
fn may_come_from_the_seed(error: &GitError) -> bool {
    matches!(
        error,
        GitError::Local { .. }
            | GitError::Unverified { .. }
            | GitError::NotACommit { .. }
            | GitError::Rewound { .. }
            | GitError::Unusable { .. }
    )
}

/// What the fetch part of a sync found and brought.
struct Fetched {
    repo: Repository,
    listed: Listed,
    target: Target,
    /// The repository was made by this sync.
    fresh: bool,
    /// Objects and bytes received.
    received: (usize, usize),
    /// The seed planted in the new repository, if one was.
    seed: Option<seed::Planted>,
}

enum Attempt<T> {
    Done(T),
    /// A local failure in a repository the seed was planted in: worth a try without the seed.
    SeedFailed(GitError),
}

/// Lists `plan.reference` on the remote and fetches its commit unless this side has it. A new
/// repository gets the seed first (`seeded`), when there is one that fits.
fn fetch_target(
    plan: &GitPlan,
    remote: &Remote,
    layout: &Layout,
    session: &ActiveSession,
    limits: &Limits,
    seeded: bool,
) -> Result<Attempt<Fetched>, GitError> {
    let local = |action: &'static str| {
        let dir = plan.dir.clone();
        move |e: git2::Error| GitError::Local {
            action,
            dir,
            message: e.message().to_string(),
        }
    };
    let init = || super::init_bare(&layout.repo).map_err(local("create the repository"));
    let (mut repo, fresh) = match Repository::open_bare(&layout.repo) {
        Ok(repo) => (repo, false),
        Err(_) => {
            let _ = std::fs::remove_dir_all(&layout.repo);
            (init()?, true)
        }
    };
    let depth = fetch_depth(remote, plan.depth, plan.trust.allow_rewind);
    let mut seed = None;
    if fresh && seeded {
        match seed::plant(
            &repo,
            &plan.seed,
            remote,
            &plan.mirrors,
            depth.is_some(),
            limits,
        ) {
            Ok(planted) => seed = planted,
            Err(why) => {
                tracing::warn!(
                    seed = %plan.seed.display(),
                    "the seed is not used: {why}"
                );
                drop(repo);
                let _ = std::fs::remove_dir_all(&layout.repo);
                repo = init()?;
            }
        }
    }
    let planted = seed.is_some();
    let fetched = fetch_into(&repo, plan, remote, session, limits, depth);
    let (listed, target, received) = match fetched {
        Ok(fetched) => fetched,
        Err(error) if planted && may_come_from_the_seed(&error) => {
            return Ok(Attempt::SeedFailed(error))
        }
        Err(error) => return Err(error),
    };
    Ok(Attempt::Done(Fetched {
        repo,
        listed,
        target,
        fresh,
        received,
        seed,
    }))
}

/// The listing and, when this side lacks the commit, the fetch: (what the remote listed, the
/// target, objects and bytes received).
fn fetch_into(
    repo: &Repository,
    plan: &GitPlan,
    remote: &Remote,
    session: &ActiveSession,
    limits: &Limits,
    depth: Option<u32>,
) -> Result<(Listed, Target, (usize, usize)), GitError> {
    let local = |action: &'static str| {
        let dir = plan.dir.clone();
        move |e: git2::Error| GitError::Local {
            action,
            dir,
            message: e.message().to_string(),
        }
    };
    let mut anonymous = repo
        .remote_anonymous(remote.url())
        .map_err(local("set up the remote"))?;
    // One connection lists the refs and, when needed, fetches: over ssh a second connection
    // would cost a second handshake.
    let mut connection = anonymous
        .connect_auth(Direction::Fetch, None, None)
        .map_err(|e| network_error(e, remote, session))?;
    let listed = advertised_ref(&mut connection, remote, &plan.reference, session)?;
    // What runs is read from the objects on this side: the commit the ref names, or for an
    // annotated tag the commit its (verified) tag object names. The remote's word is only what
    // to fetch.
    if let Some(target) = target_of(repo, &listed, remote)? {
        return Ok((listed, target, (0, 0)));
    }
    let mut received = (0, 0);
    let mut last_report = Instant::now();
    let mut callbacks = git2::RemoteCallbacks::new();
    callbacks.transfer_progress(|progress| {
        received = (progress.received_objects(), progress.received_bytes());
        // A local fetch has no transport of ours to stop it: false aborts it here.
        if limits.exceeded().is_some() {
            return false;
        }
        // A long transfer says how far it got, at a steady pace.
        if last_report.elapsed() >= PROGRESS_EVERY {
            last_report = Instant::now();
            tracing::info!(
                objects = progress.received_objects(),
                total = progress.total_objects(),
                bytes = progress.received_bytes(),
                "fetching"
            );
        }
        true
    });
    let mut options = fetch_options(callbacks, depth);
    connection
        .remote()
        .download(
            &[format!("+{}:{TRACKING}", listed.name)],
            Some(&mut options),
        )
        .map_err(|e| match network_error(e, remote, session) {
            // A commit id the remote does not list: a server that answered and said no is no
            // outage.
            GitError::Unreachable { message, .. }
                if !listed.name.starts_with("refs/") && session.failure().is_none() =>
            {
                GitError::CommitNotServed {
                    url: remote.to_string(),
                    commit: listed.name.clone(),
                    message,
                }
            }
            other => other,
        })?;
    drop(options);
    let target = target_of(repo, &listed, remote)?.ok_or_else(|| GitError::Unusable {
        url: remote.to_string(),
        message: format!(
            "the fetch of {} did not bring {} and the commit it names",
            listed.name, listed.object
        ),
    })?;
    // A ref keeps the commit: the next fetch offers it as what this side has, so only what is
    // new comes.
    repo.reference(TRACKING, target.commit, true, "bootagent fetch")
        .map_err(local("record the fetched commit"))?;
    Ok((listed, target, received))
}

/// A fetch killed mid-way leaves lock files (`shallow.lock`, `refs/…/x.lock`) that make every
/// later fetch fail, and half-written packs. The boot lock guarantees no other fetch is running,
/// so whatever is there is stale.
fn clear_interrupted_work(repo: &Path) -> std::io::Result<()> {
    fn walk(dir: &Path, stale: &dyn Fn(&str) -> bool) -> std::io::Result<()> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if entry.file_type()?.is_dir() {
                walk(&entry.path(), stale)?;
            } else if stale(&name.to_string_lossy()) {
                tracing::info!(file = %entry.path().display(), "removing what an interrupted fetch left");
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }
    let lock = |name: &str| name.ends_with(".lock");
    for top in [
        "shallow.lock",
        "packed-refs.lock",
        "config.lock",
        "HEAD.lock",
        "FETCH_HEAD.lock",
    ] {
        match std::fs::remove_file(repo.join(top)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    walk(&repo.join("refs"), &lock)?;
    walk(&repo.join("objects").join("pack"), &|name: &str| {
        name.starts_with("pack_git2_") || name.ends_with(".lock") || seed::is_staged_pack(name)
    })
}

fn chown_tree(dir: &Path, owner: Owner) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(owner.uid), Some(owner.gid))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            chown_tree(&entry.path(), owner)?;
        } else {
            std::os::unix::fs::lchown(entry.path(), Some(owner.uid), Some(owner.gid))?;
        }
    }
    Ok(())
}

fn sync_filesystem(path: &Path) -> std::io::Result<()> {
    let dir = std::fs::File::open(path)?;
    nix::unistd::syncfs(&dir).map_err(std::io::Error::from)
}
