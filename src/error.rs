//! The top-level error, the exit code each failure maps to, and how the chain is printed.

use std::error::Error as StdError;
use std::fmt::Write as _;

use crate::aws::autoscaling::LifecycleError;
use crate::aws::ec2::Ec2Error;
use crate::aws::imds::ImdsError;
use crate::config::ConfigError;
use crate::deliver::files::FileError;
use crate::envfile::EnvFileError;
use crate::exit;
use crate::git::GitError;
use crate::plan::identity::{FetchError, IdentityError};
use crate::plan::ResolveError;
use crate::secrets::SecretsError;
use crate::service::{HookError, ServiceError};
use crate::state::status::StatusError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("failed to read instance metadata")]
    Imds(#[from] ImdsError),
    #[error("failed to resolve the instance's identity")]
    Identity(#[from] IdentityError),
    #[error("tags in instance metadata are disabled, and reading them from the EC2 API failed")]
    Ec2(#[from] Ec2Error),
    #[error("failed to load secrets")]
    Secrets(#[from] SecretsError),
    #[error("failed to write the env file")]
    EnvFile(#[from] EnvFileError),
    #[error("failed to deliver the service's credentials")]
    Credentials(#[from] crate::deliver::credentials::CredentialsError),
    #[error("failed to hand the unit its new credentials")]
    CredentialsSync(#[from] crate::deliver::live::SyncError),
    #[error("failed to deliver a secret file")]
    Files(#[from] FileError),
    #[error("failed to get the service's code")]
    Git(#[from] GitError),
    #[error("failed to start the service")]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Hook(#[from] HookError),
    #[error(transparent)]
    Status(#[from] StatusError),
    #[error("failed to answer the lifecycle hook")]
    Lifecycle(#[from] LifecycleError),
    #[error(
        "another bootagent {holder} holds {path} (waited {waited}); it is still running or hung"
    )]
    Locked {
        /// What takes the lock: `boot` (also refresh and deploy) or `prepare`.
        holder: &'static str,
        path: String,
        waited: String,
    },
    #[error("{0}")]
    Usage(String),
    #[error("the environments' secrets define different variables")]
    EnvironmentsDiffer,
    #[error("some checks failed")]
    ChecksFailed,
    #[error("the instance is not healthy")]
    Unhealthy,
    #[error("rolled back from {from} to {to} because {cause}; {next}")]
    RolledBack {
        from: String,
        to: String,
        cause: String,
        /// What happens to `from` next: avoided, or, when that could not be recorded, tried again.
        next: String,
    },
    #[error(
        "rolled back the new versions of {secrets} on {commit} because {cause}; the service runs \
         with its environment from before them; {next}"
    )]
    SecretsRolledBack {
        secrets: String,
        commit: String,
        cause: String,
        next: String,
    },
    #[error("did not deploy what {reference} names: {reason}")]
    NotDeployed {
        reference: String,
        reason: String,
        exit_code: u8,
    },
    #[error(transparent)]
    Deploys(#[from] crate::state::deploys::Untrusted),
    #[error(
        "the instance is draining before termination ({marker} exists): nothing is started or \
         deployed until it launches again"
    )]
    Draining { marker: String },
    #[error(
        "the change to {from} failed ({cause}), and rolling back to {to} failed too: {failure}; \
         the service may be down: see `systemctl status` and `journalctl -u` for its unit"
    )]
    RollbackFailed {
        from: String,
        to: String,
        cause: String,
        failure: String,
    },
    #[error(
        "the app's health URL did not answer 2xx within {waited} (deploy.health_wait): {reason}"
    )]
    Gate { reason: String, waited: String },
    #[error("the last boot failed")]
    LastBootFailed { exit_code: u8 },
    #[error(
        "the {phase} step did not finish within {limit}; this is usually temporary (a slow or \
         unreachable service): boot again later, and check the network path if it persists"
    )]
    Deadline { phase: &'static str, limit: String },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// Each cause keeps the message and exit code it has when it stands alone.
impl From<FetchError> for Error {
    fn from(error: FetchError) -> Self {
        match error {
            FetchError::Imds(e) => e.into(),
            FetchError::Ec2(e) => e.into(),
            FetchError::Identity(e) => e.into(),
        }
    }
}

impl From<ResolveError> for Error {
    fn from(error: ResolveError) -> Self {
        match error {
            ResolveError::Identity(e) => e.into(),
            ResolveError::Config(e) => e.into(),
        }
    }
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => exit::USAGE,
            Error::Imds(e) if e.is_tags_disabled() => exit::TAGS_DISABLED,
            Error::Imds(e) if e.is_transient() => exit::TRANSIENT,
            Error::Imds(_) => exit::METADATA_UNUSABLE,
            Error::Identity(_) => exit::IDENTITY,
            Error::Ec2(e) if e.is_transient() => exit::TRANSIENT,
            Error::Ec2(e) if e.is_local() => exit::LOCAL,
            Error::Ec2(_) => exit::TAGS_DISABLED,
            Error::Secrets(e) if e.is_transient() => exit::TRANSIENT,
            Error::Secrets(e) if e.is_malformed() => exit::SECRET_MALFORMED,
            Error::Secrets(e) if e.is_local() => exit::LOCAL,
            Error::Secrets(_) => exit::SECRET_UNAVAILABLE,
            Error::EnvFile(
                EnvFileError::Unrepresentable { .. }
                | EnvFileError::Nul { .. }
                | EnvFileError::TooLong { .. },
            ) => exit::SECRET_MALFORMED,
            Error::Files(e) if e.is_malformed() => exit::SECRET_MALFORMED,
            Error::EnvFile(_)
            | Error::Files(_)
            | Error::Credentials(_)
            | Error::CredentialsSync(_)
            | Error::Io { .. }
            | Error::Status(_)
            | Error::Deploys(_) => exit::LOCAL,
            Error::Git(GitError::NoTrustRoots { .. }) => exit::LOCAL,
            Error::Git(e) if e.is_transient() => exit::TRANSIENT,
            Error::RolledBack { .. } | Error::SecretsRolledBack { .. } => exit::ROLLED_BACK,
            Error::RollbackFailed { .. } | Error::Gate { .. } => exit::SERVICE,
            Error::Git(_) => exit::GIT,
            Error::Service(_) | Error::Hook(_) => exit::SERVICE,
            Error::Lifecycle(LifecycleError::NoTrustRoots(_)) => exit::LOCAL,
            Error::Lifecycle(LifecycleError::NoGroup) => exit::USAGE,
            Error::Lifecycle(e) if e.is_transient() => exit::TRANSIENT,
            Error::Lifecycle(_) => exit::LIFECYCLE,
            Error::Locked { .. } => exit::LOCKED,
            Error::Draining { .. } => exit::DRAINING,
            Error::Deadline { .. } => exit::TRANSIENT,
            Error::LastBootFailed { exit_code } | Error::NotDeployed { exit_code, .. } => {
                *exit_code
            }
            Error::Usage(_) => exit::USAGE,
            Error::EnvironmentsDiffer => exit::DIFFERENT,
            Error::Unhealthy => exit::UNHEALTHY,
            Error::ChecksFailed => exit::CHECKS_FAILED,
        }
    }

    /// The chain on one line, `what: cause: cause`, for a log line or a message that quotes it.
    pub fn one_line(&self) -> String {
        one_line(&self.chain())
    }

    /// `first line` then one ` -> cause` line per source, as operators read it over SSM; status.json
    /// keeps it so.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = self.source();
        while let Some(cause) = source {
            let _ = write!(text, "\n -> {cause}");
            source = cause.source();
        }
        text
    }
}

/// A [`Error::chain`] as kept in status.json, on one line: `what: cause: cause`.
pub fn one_line(chain: &str) -> String {
    chain.replace("\n -> ", ": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of the README's exit-code table: code and the "retry helps?" column.
    fn readme_table() -> Vec<(u8, Option<bool>)> {
        let readme = include_str!("../README.md");
        let section = readme
            .split("\n## Exit codes\n")
            .nth(1)
            .expect("README has an Exit codes section");
        section
            .lines()
            .skip_while(|line| !line.starts_with("| 0 "))
            .take_while(|line| line.starts_with('|'))
            .map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let retry = match cells[3] {
                    "yes" => Some(true),
                    "no" => Some(false),
                    "" => None,
                    other => panic!("retry column {other:?} in {line}"),
                };
                (cells[1].parse().expect("a code"), retry)
            })
            .collect()
    }

    #[test]
    fn a_secret_file_a_template_cannot_fill_is_a_malformed_secret_and_the_rest_local() {
        let path = std::path::PathBuf::from("/run/tls/app.conf");
        let undefined = FileError::Undefined {
            path: path.clone(),
            key: "files[0]".into(),
            name: "secrets.NOPE".into(),
        };
        assert_eq!(Error::from(undefined).exit_code(), exit::SECRET_MALFORMED);
        let unknown = FileError::Unknown {
            path,
            key: "files[0]".into(),
            field: "owner",
            name: "nginx".into(),
        };
        assert_eq!(Error::from(unknown).exit_code(), exit::LOCAL);
    }

    /// What libgit2 could not do locally (a tree it refuses, a disk full under the checkout) is
    /// a failed checkout; a machine with no CA certificates is a local problem, as for AWS.
    #[test]
    fn a_checkout_that_cannot_be_written_is_7_and_no_ca_store_is_9() {
        let local = GitError::Local {
            action: "check out the fetched commit",
            dir: "/srv/app".into(),
            message: "No space left on device".into(),
        };
        assert_eq!(Error::from(local).exit_code(), exit::GIT);
        let no_roots = GitError::NoTrustRoots {
            url: "https://git.example.com/app.git".into(),
            detail: "No such file or directory".into(),
        };
        assert_eq!(Error::from(no_roots).exit_code(), exit::LOCAL);
    }

    #[test]
    fn the_exit_codes_are_the_readmes() {
        assert_eq!(readme_table(), exit::TABLE);
    }

    #[test]
    fn transient_errors_are_the_ones_worth_retrying() {
        let retryable = |code: u8| {
            exit::TABLE
                .iter()
                .find(|(c, _)| *c == code)
                .and_then(|(_, retry)| *retry)
        };
        let deadline = Error::Deadline {
            phase: "git",
            limit: "1s".into(),
        };
        assert_eq!(retryable(deadline.exit_code()), Some(true));
        let locked = Error::Locked {
            holder: "boot",
            path: "/run/bootagent/boot.lock".into(),
            waited: "1s".into(),
        };
        assert_eq!(retryable(locked.exit_code()), Some(true));
        let forbidden = Error::Imds(ImdsError::Forbidden {
            path: "/latest/api/token".into(),
        });
        assert_eq!(forbidden.exit_code(), exit::METADATA_UNUSABLE);
        assert_eq!(retryable(forbidden.exit_code()), Some(false));
        let unreachable = Error::Imds(ImdsError::Unreachable {
            endpoint: "http://169.254.169.254".into(),
            path: "meta-data/instance-id".into(),
            waited: "10s".into(),
            attempts: 12,
            last: "timed out".into(),
        });
        assert_eq!(retryable(unreachable.exit_code()), Some(true));
    }
}
