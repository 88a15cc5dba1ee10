//! The service checkout: bring `git.dir` to the planned branch, tag or commit with libgit2.
//! The remote is anonymous, so its URL (and any credential in it) never lands in `.git/config`.

mod daemon;
mod http;
mod ssh;
mod transport;
pub mod trust;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use git2::{Direction, FetchOptions, Oid, Repository};

use crate::config::{Config, Credential};
use crate::plan::GitPlan;
use crate::remote::redact;
use transport::{ActiveSession, Failure};
pub use transport::{Cancel, Limits};
use trust::Target;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error(
        "no git repository is configured: set git.url in the config or tag the instance with \
         {tag}=<url>"
    )]
    NoUrl { tag: String },
    #[error("cannot reach git remote {url}: {message}; check that the remote is up and reachable")]
    Unreachable { url: String, message: String },
    #[error("git remote {url} refused access: {message}; check the deploy key or token")]
    Denied { url: String, message: String },
    #[error(
        "git remote {url} sent a damaged pack ({message}), which was discarded; boot again, and \
         if it persists, run `git fsck` in the remote repository"
    )]
    DamagedPack { url: String, message: String },
    #[error(
        "{reference} is still at commit {commit}, which did not deploy at {at} ({reason}); it is \
         not tried again until the ref moves on: push a fix, or run `bootagent deploy --retry` to \
         try it again"
    )]
    FailedBefore {
        reference: String,
        commit: String,
        at: String,
        reason: String,
        /// What the run that failed with it exited with; `deploy` exits with it again.
        exit_code: u8,
    },
    #[error(
        "refused {object}: {reason}; trusted keys are in {keys} (git.verify): sign it with a \
         trusted key, or add its key there after checking whose it is"
    )]
    Unverified {
        object: String,
        commit: String,
        reason: String,
        keys: String,
    },
    #[error("{problem}; {fix}")]
    Keys { problem: String, fix: String },
    #[error(
        "git remote {url}: {reference} names {what}, not a commit; point it at a commit (an \
         annotated tag must tag the commit itself)"
    )]
    NotACommit {
        url: String,
        reference: String,
        what: String,
    },
    #[error(
        "refused {reference} at {commit}: it does not descend from {in_service}, the release in \
         service (a force push or a rewound branch), and git.allow_rewind = false; push a commit \
         on top of {in_service}, or deploy it deliberately with git.allow_rewind = true"
    )]
    Rewound {
        reference: String,
        commit: String,
        in_service: String,
    },
    #[error(
        "git remote {url} is not the host pinned in {known_hosts}: {message}; if its host key \
         really changed, verify the new key out of band and replace the old one in {known_hosts}"
    )]
    HostKey {
        url: String,
        known_hosts: String,
        message: String,
    },
    #[error(
        "git remote {url} presented a TLS certificate this instance does not trust ({message}); \
         if it is issued by a private CA, add the CA to the system's trust store (or point \
         SSL_CERT_FILE at a bundle that holds it)"
    )]
    Certificate { url: String, message: String },
    #[error(
        "git.known_hosts {known_hosts} cannot be read ({message}); put the remote's host key \
         there (ssh-keyscan prints it; check its fingerprint out of band)"
    )]
    NoKnownHosts {
        known_hosts: String,
        message: String,
    },
    #[error("{message}; fix git.ssh_key")]
    DeployKey { message: String },
    #[error("cannot fetch from git remote {url}: {message}")]
    Unusable { url: String, message: String },
    #[error(
        "git remote {url} has no branch or tag {reference}; push it, or fix git.ref (or the \
         Environment tag)"
    )]
    RefNotFound { url: String, reference: String },
    #[error(
        "git remote {url} does not serve commit {commit} ({message}): it is on none of the \
         branches and tags the remote lists, or the server does not let clients fetch a commit by \
         its id (git's uploadpack.allowReachableSHA1InWant); name a branch or tag in git.ref, or \
         push the commit"
    )]
    CommitNotServed {
        url: String,
        commit: String,
        message: String,
    },
    #[error(
        "git.token is set and the repository URL {url} comes from an instance tag, but its host \
         {host} is not in git.token_hosts, so the token is not sent: whoever can tag an instance \
         could otherwise collect it with a server of their own; list where the token goes in \
         git.token_hosts ([\"github.com\"] is https://github.com; write \"http://host:port\" \
         to allow plain HTTP), or set git.url to the repository"
    )]
    TokenNotForHost { url: String, host: String },
    #[error("{message}; fix git.token")]
    Token { message: String },
    #[error("failed to {action} in {dir}: {message}")]
    Local {
        action: &'static str,
        dir: PathBuf,
        message: String,
    },
}

impl GitError {
    /// The commit a refusal of the code itself names: not to be tried again while the ref names
    /// it.
    pub fn refused_commit(&self) -> Option<&str> {
        match self {
            GitError::Unverified { commit, .. } | GitError::Rewound { commit, .. } => Some(commit),
            _ => None,
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            GitError::Unreachable { .. } | GitError::DamagedPack { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    pub commit: String,
    pub action: Action,
    /// What the fetch transferred (0 when nothing needed fetching).
    pub received_objects: usize,
    pub received_bytes: usize,
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

/// Bounds every network read and connect of libgit2, and adds the ssh transport.
///
/// # Safety
/// Sets libgit2 globals without synchronization: call before any thread is started.
pub unsafe fn init(timeout: Duration) -> Result<(), git2::Error> {
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // Neither call can fail: libgit2 only stores the value.
    let _ = git2::opts::set_server_connect_timeout_in_milliseconds(millis);
    let _ = git2::opts::set_server_timeout_in_milliseconds(millis);
    // SAFETY: the caller guarantees no other thread uses libgit2 yet.
    unsafe { transport::register() }
}

/// Where a service's code lives, for `git.dir = /srv/calendar`:
///   /srv/.calendar/repo.git            bare repository: the fetched objects
///   /srv/.calendar/releases/<commit>   one complete checkout per commit
///   /srv/calendar -> .calendar/releases/<commit>   what the service runs in, switched atomically
pub struct Layout {
    pub link: PathBuf,
    pub repo: PathBuf,
    pub releases: PathBuf,
}

impl Layout {
    pub fn of(dir: &Path) -> Layout {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let root = dir.with_file_name(format!(".{name}"));
        Layout {
            link: dir.to_path_buf(),
            repo: root.join("repo.git"),
            releases: root.join("releases"),
        }
    }

    /// The commit the service runs now: the release the link points at.
    pub fn current(&self) -> Option<Oid> {
        let target = std::fs::read_link(&self.link).ok()?;
        Oid::from_str(&target.file_name()?.to_string_lossy()).ok()
    }
}

/// How bootagent proves itself to the remote, and checks the remote: an HTTP deploy token, an
/// SSH deploy key and the pinned host keys. Secrets among them are never written to persistent
/// disk or `.git/config`, and are wiped or removed when this is dropped.
pub struct Credentials {
    options: transport::Options,
    /// The origins the token may go to, when an instance tag chooses the URL's host (`None`: the
    /// config names the host).
    token_hosts: Option<Vec<String>>,
    /// A deploy key that came from a secret, on tmpfs while it is needed.
    _key_file: Option<KeyFile>,
}

impl Credentials {
    /// The credentials `config` names. A `secret:NAME` one is taken out of the loaded secrets
    /// (so the service does not receive it). A key from a secret is written, mode 0600, into `run_dir`,
    /// which must be memory-backed.
    pub fn from_config(
        settings: &Config,
        secrets: &mut crate::secrets::LoadedSecrets,
    ) -> Result<Credentials, GitError> {
        let config = &settings.git;
        let run_dir = &settings.paths.run_dir;
        let allow_persistent = settings.paths.allow_persistent_env_file;
        let token = match &config.token {
            None => None,
            Some(Credential::Secret(name)) => {
                Some(take_secret(secrets, name, "git.token").map_err(token_error)?)
            }
            Some(Credential::File(path)) => Some(
                std::fs::read_to_string(path)
                    .map(|text| zeroize::Zeroizing::new(text.trim().to_string()))
                    .map_err(|e| {
                        token_error(format!(
                            "cannot read the token file {}: {e}",
                            path.display()
                        ))
                    })?,
            ),
        };
        let mut key_file = None;
        let identity = match &config.ssh_key {
            None => None,
            Some(Credential::Secret(name)) => {
                let key = take_secret(secrets, name, "git.ssh_key").map_err(key_error)?;
                crate::envfile::check_memory_backed(run_dir, allow_persistent)
                    .map_err(|e| key_error(e.to_string()))?;
                let written = KeyFile::write(run_dir, &key)
                    .map_err(|e| key_error(format!("cannot write the deploy key: {e}")))?;
                let path = written.path.clone();
                key_file = Some(written);
                Some(path)
            }
            Some(Credential::File(path)) => {
                std::fs::File::open(path).map_err(|e| {
                    key_error(format!(
                        "cannot read the deploy key {}: {e}",
                        path.display()
                    ))
                })?;
                Some(path.clone())
            }
        };
        // A URL whose host an instance tag names may point anywhere: the token then goes only
        // to the origins the config names.
        let tagged = host_from_tags(&config.url);
        Ok(Credentials {
            options: transport::Options {
                timeout: config.timeout,
                known_hosts: config.known_hosts.clone(),
                identity,
                token: token.map(|token| (config.username.clone(), token)),
            },
            token_hosts: tagged.then(|| config.token_hosts.clone()),
            _key_file: key_file,
        })
    }

    /// Refuses to send the token to `url` when the URL comes from an instance tag and its host
    /// is not one of `git.token_hosts`: whoever can tag an instance must not be able to collect
    /// the token with a server of their own.
    fn check_token_host(&self, url: &str) -> Result<(), GitError> {
        let (Some(_), Some(allowed)) = (&self.options.token, &self.token_hosts) else {
            return Ok(());
        };
        if !url.starts_with("http://") && !url.starts_with("https://") {
            return Ok(());
        }
        let origin = reqwest::Url::parse(url)
            .ok()
            .map(|url| url.origin().ascii_serialization());
        let permitted = origin.as_ref().is_some_and(|origin| {
            allowed
                .iter()
                .any(|entry| token_origin(entry).as_ref() == Some(origin))
        });
        match permitted {
            true => Ok(()),
            false => Err(GitError::TokenNotForHost {
                url: redact(url),
                host: origin.unwrap_or_else(|| "?".into()),
            }),
        }
    }
}

impl Credentials {
    /// Readies the transports for `url`; the known_hosts must be readable when `url` is an
    /// ssh remote.
    fn session(&self, url: &str, limits: &Limits) -> Result<ActiveSession, GitError> {
        self.check_token_host(url)?;
        if ssh::is_ssh_url(url) {
            let known_hosts = &self.options.known_hosts;
            let refused = |message: String| GitError::NoKnownHosts {
                known_hosts: known_hosts.display().to_string(),
                message,
            };
            if !ssh::fits_ssh_option(known_hosts) {
                return Err(refused(
                    "ssh cannot take a path with spaces, quotes or '%'".into(),
                ));
            }
            std::fs::File::open(known_hosts).map_err(|e| refused(e.to_string()))?;
            if let Some(identity) = self.options.identity.as_deref() {
                if !ssh::fits_ssh_option(identity) {
                    return Err(key_error(format!(
                        "ssh cannot take the deploy key path {} (spaces, quotes or '%')",
                        identity.display()
                    )));
                }
            }
        }
        Ok(ActiveSession::start(self.options.clone(), limits.clone()))
    }
}

/// Whether an instance tag chooses the host of the URL template `url`: the whole URL is a
/// placeholder, or one appears before the path.
fn host_from_tags(url: &str) -> bool {
    let authority = match url.split_once("://") {
        Some((_, rest)) => rest.split('/').next().unwrap_or_default(),
        None => url.split(['/', ':']).next().unwrap_or_default(),
    };
    url.starts_with('{') || authority.contains('{')
}

/// The origin a `git.token_hosts` entry allows: `host` or `host:port` is https (port 443
/// unless given); `http://host:port` or `https://host[:port]` is that origin exactly.
fn token_origin(entry: &str) -> Option<String> {
    let url = if entry.contains("://") {
        entry.to_string()
    } else {
        format!("https://{entry}")
    };
    let url = reqwest::Url::parse(&url).ok()?;
    // A bare entry with a path or credentials is no origin: refuse rather than guess.
    (url.path() == "/" && url.username().is_empty() && url.password().is_none())
        .then(|| url.origin().ascii_serialization())
}

fn take_secret(
    secrets: &mut crate::secrets::LoadedSecrets,
    name: &str,
    key: &str,
) -> Result<zeroize::Zeroizing<String>, String> {
    secrets
        .vars
        .remove(name)
        .map(|var| var.value)
        .ok_or_else(|| format!("{key} names secret variable {name}, which no secret defines"))
}

fn token_error(message: String) -> GitError {
    GitError::Token { message }
}

fn key_error(message: String) -> GitError {
    GitError::DeployKey { message }
}

/// A deploy key from a secret, as the file `ssh` reads it; removed when dropped. Named after the
/// process, so one a killed boot left behind is recognized and removed by the next.
struct KeyFile {
    path: PathBuf,
}

const KEY_FILE_PREFIX: &str = ".git-deploy-key.";

impl KeyFile {
    fn write(run_dir: &Path, key: &str) -> std::io::Result<KeyFile> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(run_dir)?;
        remove_orphaned_key_files(run_dir);
        let path = run_dir.join(format!("{KEY_FILE_PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let key_file = KeyFile { path };
        file.write_all(key.trim_end().as_bytes())?;
        // OpenSSH refuses a private key without its final newline.
        file.write_all(b"\n")?;
        Ok(key_file)
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Removes the key files of processes that no longer run.
fn remove_orphaned_key_files(run_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(KEY_FILE_PREFIX))
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        if !alive {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Who owns a release's files.
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Blocking: makes a release of the commit `plan.reference` names on `url`, ready for
/// [`switch`]. A release is checked out in a temporary directory, synced and renamed into place;
/// the link switches only when the caller says (a rename too), so whatever is killed or fails
/// when, the link points at a complete release: the new one or the last good one. `Unchanged`:
/// the link already points at that commit.
///
/// `avoid` is a commit that failed its deploy gate: when the ref still names it and a release is
/// in service, the sync stops with [`GitError::FailedBefore`] before fetching anything.
pub fn sync(
    plan: &GitPlan,
    url: &str,
    owner: Option<Owner>,
    credentials: &Credentials,
    limits: &Limits,
    avoid: Option<&crate::deploys::FailedCommit>,
) -> Result<Checkout, GitError> {
    let layout = Layout::of(&plan.dir);
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
    let session = credentials.session(url, limits)?;
    // Past the deadline, or cancelled: the sync stops before its next step, and never switches
    // the release afterwards.
    let stop_if_exceeded = || match limits.exceeded() {
        Some(failure) => Err(GitError::Unreachable {
            url: redact(url),
            message: failure.message().to_string(),
        }),
        None => Ok(()),
    };
    std::fs::create_dir_all(&layout.releases).map_err(io("create the releases directory"))?;
    clear_interrupted_work(&layout.repo).map_err(io("clear what an interrupted fetch left"))?;
    let (repo, fresh) = match Repository::open_bare(&layout.repo) {
        Ok(repo) => (repo, false),
        Err(_) => {
            let _ = std::fs::remove_dir_all(&layout.repo);
            (
                Repository::init_bare(&layout.repo).map_err(local("create the repository"))?,
                true,
            )
        }
    };

    let mut remote = repo
        .remote_anonymous(url)
        .map_err(local("set up the remote"))?;
    // One connection lists the refs and, when needed, fetches: over ssh a second connection
    // would cost a second handshake.
    let mut connection = remote
        .connect_auth(Direction::Fetch, None, None)
        .map_err(|e| network_error(e, url, &session))?;
    let listed = advertised_ref(&mut connection, url, &plan.reference, &session)?;
    // What runs is read from the objects on this side: the commit the ref names, or for an
    // annotated tag the commit its (verified) tag object names. The remote's word is only what
    // to fetch.
    let known = target_of(&repo, &listed, url)?;
    let mut received = (0, 0);
    let fetched = known.is_none();
    let target = match known {
        Some(target) => target,
        None => {
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
            let mut options = FetchOptions::new();
            options.remote_callbacks(callbacks);
            // libgit2's local transport cannot fetch shallow; a repository on this machine's
            // disk costs no network, so it is fetched whole.
            // Whether the new commit descends from the one in service needs the history.
            if !is_local(url) && plan.trust.allow_rewind {
                options.depth(i32::try_from(plan.depth).unwrap_or(i32::MAX));
            }
            connection
                .remote()
                .download(
                    &[format!("+{}:{TRACKING}", listed.name)],
                    Some(&mut options),
                )
                .map_err(|e| match network_error(e, url, &session) {
                    // A commit id the remote does not list: a server that answered and said no
                    // is no outage.
                    GitError::Unreachable { message, .. }
                        if !listed.name.starts_with("refs/") && session.failure().is_none() =>
                    {
                        GitError::CommitNotServed {
                            url: redact(url),
                            commit: listed.name.clone(),
                            message,
                        }
                    }
                    other => other,
                })?;
            drop(options);
            let target = target_of(&repo, &listed, url)?.ok_or_else(|| GitError::Unusable {
                url: redact(url),
                message: format!(
                    "the fetch of {} did not bring {} and the commit it names",
                    listed.name, listed.object
                ),
            })?;
            // A ref keeps the commit: the next fetch offers it as what this side has, so only
            // what is new comes.
            repo.reference(TRACKING, target.commit, true, "bootagent fetch")
                .map_err(local("record the fetched commit"))?;
            target
        }
    };
    warn_if_peel_forged(&listed, &target, url);
    let commit_id = target.commit;
    if let Some(failed) = avoid.filter(|f| f.commit == commit_id.to_string()) {
        if layout.current().is_some() {
            return Err(GitError::FailedBefore {
                reference: plan.reference.clone(),
                commit: failed.commit.clone(),
                at: failed.at.clone(),
                reason: failed.reason.clone(),
                exit_code: failed.exit_code,
            });
        }
    }
    if layout.current() == Some(commit_id) {
        return Ok(Checkout {
            commit: commit_id.to_string(),
            action: Action::Unchanged,
            received_objects: received.0,
            received_bytes: received.1,
        });
    }
    let action = match (fetched, fresh) {
        (true, true) => Action::Cloned,
        _ => Action::Fetched,
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
                    url: redact(url),
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
    })
}

/// Points the link at `release` with a rename, which replaces it atomically. A directory left
/// at the link's place by an older layout is moved aside into the releases first.
fn switch_link(layout: &Layout, release: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(&layout.link);
    if meta.as_ref().is_ok_and(|m| m.is_dir()) {
        let aside = layout.releases.join(format!(
            "previous-directory-{}",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        ));
        std::fs::rename(&layout.link, aside)?;
    }
    let parent = layout.link.parent().unwrap_or(Path::new("/"));
    let relative = release.strip_prefix(parent).unwrap_or(release);
    let prefix = format!(
        ".{}.link-",
        layout
            .link
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
    );
    // Staging links of switches that were killed midway (under the boot lock, none is live).
    for entry in std::fs::read_dir(parent)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let staging = layout
        .link
        .with_file_name(format!("{prefix}{}", std::process::id()));
    std::os::unix::fs::symlink(relative, &staging)?;
    crate::failpoint::hit("release-switch");
    std::fs::rename(&staging, &layout.link)?;
    std::fs::File::open(parent)?.sync_all()
}

/// The directory of the release of `commit` under the link `dir`.
pub fn release_dir(dir: &Path, commit: &str) -> PathBuf {
    Layout::of(dir).releases.join(commit)
}

/// Points the link at the release of `commit`: a new one [`sync`] made, or one still on disk (a
/// rollback).
pub fn switch(dir: &Path, commit: &str) -> std::io::Result<()> {
    let layout = Layout::of(dir);
    let release = layout.releases.join(commit);
    if !release.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("the release {} is gone", release.display()),
        ));
    }
    switch_link(&layout, &release)
}

/// Removes all but the `keep` newest releases (and leftovers of interrupted checkouts), never
/// the one the link points at. Called once the new release is in service.
pub fn prune(dir: &Path, keep: usize) -> std::io::Result<usize> {
    let layout = Layout::of(dir);
    let current = std::fs::read_link(&layout.link)
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_os_string()));
    let mut releases = Vec::new();
    for entry in std::fs::read_dir(&layout.releases)? {
        let entry = entry?;
        let name = entry.file_name();
        if Some(&name) == current.as_ref() {
            continue;
        }
        if name.to_string_lossy().starts_with('.') {
            std::fs::remove_dir_all(entry.path())?;
            continue;
        }
        let modified = entry.metadata()?.modified()?;
        releases.push((modified, entry.path()));
    }
    releases.sort();
    let excess = releases.len().saturating_sub(keep.saturating_sub(1));
    for (_, path) in releases.iter().take(excess) {
        std::fs::remove_dir_all(path)?;
    }
    Ok(excess)
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
        name.starts_with("pack_git2_") || name.ends_with(".lock")
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

/// What `reference` names on the remote, asking the remote alone (like `git ls-remote`): no
/// checkout is touched. The commit is known only when this instance already has the object the
/// ref names (`dir` is `git.dir`): for an annotated tag, the remote's peeled value is not taken
/// on its word.
pub fn remote_ref(
    url: &str,
    reference: &str,
    dir: &Path,
    credentials: &Credentials,
    limits: &Limits,
) -> Result<RemoteRef, GitError> {
    let session = credentials.session(url, limits)?;
    let mut remote =
        git2::Remote::create_detached(url).map_err(|e| network_error(e, url, &session))?;
    let mut connection = remote
        .connect_auth(Direction::Fetch, None, None)
        .map_err(|e| network_error(e, url, &session))?;
    let listed = advertised_ref(&mut connection, url, reference, &session)?;
    let commit = match Repository::open_bare(Layout::of(dir).repo) {
        Ok(repo) => target_of(&repo, &listed, url)?.map(|target| target.commit),
        Err(_) => None,
    };
    Ok(RemoteRef {
        object: listed.object,
        commit,
    })
}

/// What a ref names on the remote, as far as this instance can tell before it fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteRef {
    /// The object the ref names: a commit, or an annotated tag's object.
    pub object: Oid,
    /// Its commit, read from the object this instance has; `None` when it has not fetched it.
    pub commit: Option<Oid>,
}

impl std::fmt::Display for RemoteRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.commit {
            Some(commit) if commit == self.object => write!(f, "{commit}"),
            Some(commit) => write!(f, "{commit} (tag object {})", self.object),
            None => write!(f, "{} (not fetched yet)", self.object),
        }
    }
}

/// A ref as the remote listed it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    /// `refs/heads/prod`, `refs/tags/rel-1`, or a commit id as given.
    name: String,
    /// The object the ref names.
    object: Oid,
    /// The commit the remote says an annotated tag peels to (`refs/tags/rel-1^{}`): unverified,
    /// only compared with what the tag object says.
    peeled: Option<Oid>,
}

/// Finds `reference` among the refs the connected remote lists.
fn advertised_ref(
    connection: &mut git2::RemoteConnection<'_, '_, '_>,
    url: &str,
    reference: &str,
    session: &ActiveSession,
) -> Result<Listed, GitError> {
    let heads = list_refs(connection.remote()).map_err(|e| network_error(e, url, session))?;
    find_ref(&heads, reference).ok_or_else(|| GitError::RefNotFound {
        url: redact(url),
        reference: reference.to_string(),
    })
}

/// The commit `listed` names, and the tag object on the way, read from `repo`'s objects (the
/// tag object's own `object` and `type` headers): `None` while they are not all there.
fn target_of(repo: &Repository, listed: &Listed, url: &str) -> Result<Option<Target>, GitError> {
    let odb = repo.odb().map_err(|e| GitError::Local {
        action: "open the object database",
        dir: repo.path().to_path_buf(),
        message: e.message().to_string(),
    })?;
    let not_a_commit = |what: String| GitError::NotACommit {
        url: redact(url),
        reference: listed.name.clone(),
        what,
    };
    let present = |oid: Oid| odb.read_header(oid).ok().map(|(_, kind)| kind);
    let (commit, tag) = match present(listed.object) {
        None => return Ok(None),
        Some(git2::ObjectType::Commit) => (listed.object, None),
        Some(git2::ObjectType::Tag) => {
            let raw = odb.read(listed.object).map_err(|e| GitError::Local {
                action: "read the fetched tag",
                dir: repo.path().to_path_buf(),
                message: e.message().to_string(),
            })?;
            let header = trust::TagHeader::parse(raw.data()).ok_or_else(|| {
                not_a_commit(format!(
                    "a tag object {} that does not parse",
                    listed.object
                ))
            })?;
            if header.kind != "commit" {
                return Err(not_a_commit(format!(
                    "a tag object {} that tags a {} ({})",
                    listed.object, header.kind, header.object
                )));
            }
            (header.object, Some(listed.object))
        }
        Some(kind) => return Err(not_a_commit(format!("a {kind} ({})", listed.object))),
    };
    if present(commit) != Some(git2::ObjectType::Commit) {
        return Ok(None);
    }
    Ok(Some(Target {
        reference: listed.name.clone(),
        commit,
        tag,
    }))
}

/// A peeled value the remote listed that is not what the tag object says is a forgery (by the
/// server or on the way): what runs was read from the tag object, but someone tried.
fn warn_if_peel_forged(listed: &Listed, target: &Target, url: &str) {
    if let Some(peeled) = listed.peeled.filter(|peeled| *peeled != target.commit) {
        tracing::warn!(
            security_event = "forged-peeled-ref",
            reference = %listed.name,
            "git remote {} listed {}^{{}} as commit {peeled}, but the tag object {} names commit \
             {}: the listing was forged (by the server or on the way); only the tag object's \
             commit is considered. Check the remote and the network path to it",
            redact(url),
            listed.name,
            listed.object,
            target.commit
        );
    }
}

/// The refs a connected remote advertised: each name as the bytes it is, and its commit. Ref
/// names are bytes and the remote is untrusted, so git2's `RemoteConnection::list` (whose
/// `RemoteHead::name` panics on a name that is not UTF-8) is not used.
fn list_refs(remote: &git2::Remote<'_>) -> Result<Vec<(Vec<u8>, Oid)>, git2::Error> {
    use git2::Binding;
    let mut heads: *mut *const libgit2_sys::git_remote_head = std::ptr::null_mut();
    let mut count: usize = 0;
    // SAFETY: `remote` is connected (git_remote_ls fails otherwise); libgit2 fills `heads` with
    // `count` pointers to heads it owns until the connection ends, which outlives this call.
    unsafe {
        if libgit2_sys::git_remote_ls(&mut heads, &mut count, remote.raw()) < 0 {
            return Err(git2::Error::last_error(-1));
        }
        if heads.is_null() || count == 0 {
            return Ok(Vec::new());
        }
        let mut refs = Vec::with_capacity(count);
        for &head in std::slice::from_raw_parts(heads, count) {
            if head.is_null() || (*head).name.is_null() {
                continue;
            }
            let name = std::ffi::CStr::from_ptr((*head).name).to_bytes().to_vec();
            let id = (*head).oid.id;
            refs.push((name, Oid::from_bytes(&id)?));
        }
        Ok(refs)
    }
}

/// The advertised ref for `reference`: a branch first, then a tag (with the peeled value the
/// remote lists for an annotated one), or a full commit id as itself.
fn find_ref(heads: &[(Vec<u8>, Oid)], reference: &str) -> Option<Listed> {
    let lookup = |name: &str| {
        heads
            .iter()
            .find(|(advertised, _)| advertised == name.as_bytes())
            .map(|(_, oid)| *oid)
    };
    let listed = |name: String, object: Oid| {
        let peeled = lookup(&format!("{name}^{{}}"));
        Listed {
            name,
            object,
            peeled,
        }
    };
    let branch = format!("refs/heads/{reference}");
    if let Some(oid) = lookup(&branch) {
        return Some(listed(branch, oid));
    }
    let tag = format!("refs/tags/{reference}");
    if let Some(oid) = lookup(&tag) {
        return Some(listed(tag, oid));
    }
    if reference.len() == 40 {
        let oid = Oid::from_str(reference).ok()?;
        return Some(listed(reference.to_string(), oid));
    }
    None
}

/// The error of a network step on `url`: in our transports' words when one of them failed,
/// else in libgit2's.
fn network_error(error: git2::Error, url: &str, session: &ActiveSession) -> GitError {
    let shown = redact(url);
    if let Some(failure) = session.failure() {
        return match failure {
            Failure::HostKey(message) => GitError::HostKey {
                url: shown,
                known_hosts: session.options().known_hosts.display().to_string(),
                message,
            },
            Failure::Certificate(message) => GitError::Certificate {
                url: shown,
                message,
            },
            Failure::Denied(message) => GitError::Denied {
                url: shown,
                message,
            },
            Failure::Unreachable(message) => GitError::Unreachable {
                url: shown,
                message,
            },
            Failure::Unusable(message) => GitError::Unusable {
                url: shown,
                message,
            },
        };
    }
    let message = error.message().replace(url, &shown);
    if error.code() == git2::ErrorCode::Auth {
        GitError::Denied {
            url: shown.to_string(),
            message,
        }
    } else if matches!(
        error.class(),
        git2::ErrorClass::Zlib | git2::ErrorClass::Indexer
    ) {
        // What arrived does not unpack or does not match its checksum: bytes damaged in
        // transit, or a broken repository on the server.
        GitError::DamagedPack {
            url: shown.to_string(),
            message,
        }
    } else {
        GitError::Unreachable {
            url: shown.to_string(),
            message,
        }
    }
}

/// Whether `url` names a repository on this machine (`file://`, or a path), which libgit2
/// reads with its local transport.
fn is_local(url: &str) -> bool {
    url.starts_with("file://") || (!url.contains("://") && !ssh::is_ssh_url(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs git in `dir`; the repository's own config only.
    fn git(dir: &Path, args: &[&std::ffi::OsStr]) {
        let status = std::process::Command::new("git")
            .current_dir(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .status()
            .expect("git runs");
        assert!(status.success(), "git {args:?}");
    }

    #[test]
    fn a_ref_name_that_is_not_utf8_is_listed_without_a_panic() {
        // Found by fuzzing (git_advertisement): git allows bytes over 0x7f in ref names, and a
        // remote may advertise any; git2's `RemoteHead::name` panics on them.
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let os = |s: &str| std::ffi::OsStr::new(s).to_owned();
        git(
            dir.path(),
            &[&os("init"), &os("-q"), &os("-b"), &os("prod")],
        );
        git(
            dir.path(),
            &[
                &os("commit"),
                &os("-q"),
                &os("--allow-empty"),
                &os("-m"),
                &os("x"),
            ],
        );
        let odd = std::ffi::OsStr::from_bytes(b"refs/heads/odd-\xff");
        git(dir.path(), &[&os("update-ref"), odd, &os("HEAD")]);
        let config = crate::config::from_text(Path::new("t.toml"), "").unwrap();
        let mut none = crate::secrets::LoadedSecrets {
            versions: Vec::new(),
            vars: Default::default(),
        };
        let credentials = Credentials::from_config(&config, &mut none).unwrap();
        let limits = Limits::new(Duration::from_secs(30), "test", Cancel::default());
        let url = format!("file://{}", dir.path().display());
        let nowhere = dir.path().join("checkout");
        let head = remote_ref(&url, "prod", &nowhere, &credentials, &limits).unwrap();
        assert!(!head.object.is_zero());
        assert_eq!(head.commit, None, "nothing is fetched");
        let err = remote_ref(&url, "nosuch", &nowhere, &credentials, &limits).unwrap_err();
        assert!(matches!(err, GitError::RefNotFound { .. }), "{err}");
    }

    #[test]
    fn a_host_chosen_by_a_tag_is_told_from_one_the_config_names() {
        for tagged in [
            "{repository}",
            "{tag:Repo}",
            "https://{service}.git.example.com/app.git",
            "https://git.example.com:{tag:Port}/app.git",
        ] {
            assert!(host_from_tags(tagged), "{tagged}");
        }
        for fixed in [
            "https://github.com/org/{service}.git",
            "https://github.com/{tag:Repo}",
            "git@github.com:org/{service}.git",
        ] {
            assert!(!host_from_tags(fixed), "{fixed}");
        }
    }

    #[test]
    fn a_token_host_entry_names_one_origin_https_unless_it_says_otherwise() {
        let allows = |entry: &str, url: &str| {
            let origin = reqwest::Url::parse(url)
                .unwrap()
                .origin()
                .ascii_serialization();
            token_origin(entry) == Some(origin)
        };
        assert!(allows("github.com", "https://github.com/o/r.git"));
        assert!(allows("GitHub.com", "https://github.com:443/o/r.git"));
        assert!(!allows("github.com", "http://github.com/o/r.git"));
        assert!(!allows("github.com", "https://github.com:8443/o/r.git"));
        assert!(!allows(
            "github.com",
            "https://github.com.evil.example/o/r.git"
        ));
        assert!(!allows(
            "github.com",
            "https://github.com@evil.example/o/r.git"
        ));
        assert!(allows(
            "git.example.com:8443",
            "https://git.example.com:8443/r.git"
        ));
        assert!(allows(
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/r.git"
        ));
        assert!(!allows(
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8081/r.git"
        ));
        assert_eq!(token_origin("github.com/org"), None);
        assert_eq!(token_origin("user@github.com"), None);
    }

    #[test]
    fn local_repositories_are_told_from_remote_ones() {
        for local in ["file:///srv/app.git", "/srv/app.git", "app.git"] {
            assert!(is_local(local), "{local}");
        }
        for remote in [
            "git://h/app.git",
            "https://h/app.git",
            "ssh://git@h/app.git",
            "git@h:app.git",
        ] {
            assert!(!is_local(remote), "{remote}");
        }
    }
}
