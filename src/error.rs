//! The top-level error, the exit code each failure maps to, and how the chain is printed.

use std::error::Error as StdError;
use std::fmt::Write as _;

use crate::autoscaling::LifecycleError;
use crate::config::ConfigError;
use crate::ec2::Ec2Error;
use crate::envfile::EnvFileError;
use crate::git::GitError;
use crate::identity::IdentityError;
use crate::imds::ImdsError;
use crate::secrets::SecretsError;
use crate::service::ServiceError;
use crate::status::StatusError;

/// Exit codes are part of the contract (README "Exit codes"): a caller — cloud-init, an ASG
/// lifecycle script, an operator — decides from them whether retrying can help.
pub mod exit {
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
    /// Another `bootagent boot` held the lock for longer than the boot deadline.
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
        (TRANSIENT, Some(true)),
    ];
}

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
    #[error("failed to check out the service's code")]
    Git(#[from] GitError),
    #[error("failed to start the service")]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Status(#[from] StatusError),
    #[error("failed to answer the lifecycle hook")]
    Lifecycle(#[from] LifecycleError),
    #[error("another bootagent boot holds {path} (waited {waited}); it is still running or hung")]
    Locked { path: String, waited: String },
    #[error("{0}")]
    Usage(String),
    #[error("the environments' secrets define different variables")]
    EnvironmentsDiffer,
    #[error("some checks failed")]
    ChecksFailed,
    #[error("the instance is not healthy")]
    Unhealthy,
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
            Error::EnvFile(EnvFileError::Unrepresentable { .. } | EnvFileError::Nul { .. }) => {
                exit::SECRET_MALFORMED
            }
            Error::EnvFile(_) | Error::Io { .. } | Error::Status(_) => exit::LOCAL,
            Error::Git(e) if e.is_transient() => exit::TRANSIENT,
            Error::Git(_) => exit::GIT,
            Error::Service(_) => exit::SERVICE,
            Error::Lifecycle(LifecycleError::NoTrustRoots(_)) => exit::LOCAL,
            Error::Lifecycle(LifecycleError::NoGroup) => exit::USAGE,
            Error::Lifecycle(e) if e.is_transient() => exit::TRANSIENT,
            Error::Lifecycle(_) => exit::LIFECYCLE,
            Error::Locked { .. } => exit::LOCKED,
            Error::Deadline { .. } => exit::TRANSIENT,
            Error::LastBootFailed { exit_code } => *exit_code,
            Error::Usage(_) => exit::USAGE,
            Error::EnvironmentsDiffer => exit::DIFFERENT,
            Error::Unhealthy => exit::UNHEALTHY,
            Error::ChecksFailed => exit::CHECKS_FAILED,
        }
    }

    /// `first line` then one ` -> cause` line per source, as operators read it over SSM.
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
