//! Layered configuration: the shipped defaults (`packaging/defaults.toml`), then the main file,
//! then `config.d/*.toml` drop-ins in lexical order, merged key by key and validated into typed
//! settings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

mod delivery;
mod load;
pub mod names;
pub(crate) mod template;
#[cfg(test)]
mod tests;
mod validate;

pub use delivery::{
    template_environment, Deliver, FileConfig, OnChange, CREDENTIALS_DIRECTORY,
    SYSTEMD_CREDENTIALS_ROOT, TEMPLATE_NAMES,
};
pub use load::{from_text, load};

use names::is_variable_name;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/bootagent/config.toml";
const DEFAULTS: &str = include_str!("../../packaging/defaults.toml");

/// The longest duration the config may set: far beyond any sensible wait, and far enough below
/// what a clock can add (an `Instant` plus 300000000000 years overflows) that no deadline
/// computed from one can.
const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 60 * 60);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("invalid configuration: {0}")]
    Template(#[from] crate::config::template::TemplateError),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub identity: IdentityConfig,
    pub environments: BTreeMap<String, Vec<String>>,
    pub secrets: SecretsConfig,
    #[serde(default)]
    pub env: BTreeMap<String, BTreeMap<String, String>>,
    pub paths: PathsConfig,
    pub git: GitConfig,
    pub service: ServiceConfig,
    pub health: HealthConfig,
    pub lifecycle: LifecycleConfig,
    pub refresh: RefreshConfig,
    pub deploy: DeployConfig,
    pub boot: BootConfig,
    #[serde(default)]
    pub files: Vec<FileConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployConfig {
    /// After a change to what runs, how long the unit may take to settle and the app to answer.
    #[serde(deserialize_with = "duration")]
    pub health_wait: Duration,
    /// The environments whose instances follow their ref on the deploy timer.
    pub follow: Vec<String>,
    /// Run in the new release, as the service's user with its environment, before the switch.
    pub pre_start: Vec<String>,
    /// Run once the outcome of a change is known.
    pub post: Vec<String>,
    /// Each hook's limit.
    #[serde(deserialize_with = "duration")]
    pub hook_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleConfig {
    #[serde(deserialize_with = "optional_text")]
    pub launch_hook: Option<String>,
    #[serde(deserialize_with = "optional_text")]
    pub termination_hook: Option<String>,
    /// `None`: the group named by the instance's `aws:autoscaling:groupName` tag.
    #[serde(deserialize_with = "optional_text")]
    pub group: Option<String>,
    #[serde(deserialize_with = "duration")]
    pub heartbeat: Duration,
    #[serde(deserialize_with = "duration")]
    pub drain: Duration,
    #[serde(deserialize_with = "duration")]
    pub health_wait: Duration,
    pub abandon_on_failure: bool,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    pub listen: String,
    #[serde(deserialize_with = "optional_url")]
    pub app_url: Option<String>,
    #[serde(deserialize_with = "duration")]
    pub app_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub header_timeout: Duration,
    pub max_connections: std::num::NonZeroUsize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshConfig {
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    pub service_tag: String,
    pub environment_tag: String,
    pub repository_tag: String,
    #[serde(deserialize_with = "duration")]
    pub tag_wait: Duration,
    #[serde(deserialize_with = "duration")]
    pub imds_deadline: Duration,
    pub describe_tags_fallback: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// A template; `None` when the service has no main secret.
    #[serde(deserialize_with = "optional_text")]
    pub main: Option<String>,
    pub version_stage: String,
    #[serde(deserialize_with = "optional_text")]
    pub version_id: Option<String>,
    pub format: EnvFileFormat,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    pub deliver: Deliver,
    /// What a change to the credentials does to the service (the env file always restarts it).
    pub on_change: OnChange,
    /// Replica regions, read in order when the instance's region does not answer.
    pub regions: Vec<String>,
    /// How long a boot may run on the encrypted snapshot of the last good secrets after
    /// Secrets Manager last answered; zero keeps no snapshot.
    #[serde(deserialize_with = "duration")]
    pub snapshot_max_age: Duration,
    /// How long one region's throttling, 5xx answers and timeouts are tried again before the
    /// next region, or the snapshot, is: only when there is one.
    #[serde(deserialize_with = "duration")]
    pub fallback_after: Duration,
}

/// The syntax of the env file: what reads it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EnvFileFormat {
    /// systemd's `EnvironmentFile=`.
    Systemd,
    /// python-dotenv / docker compose `env_file`.
    Dotenv,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathsConfig {
    pub run_dir: PathBuf,
    pub state_dir: PathBuf,
    pub systemd_runtime_dir: PathBuf,
    pub allow_persistent_env_file: bool,
    /// Where `[[files]]` may be written.
    pub file_roots: Vec<PathBuf>,
}

impl GitConfig {
    /// Whether the token or the deploy key is taken from the secrets: listing the remote then
    /// needs the secrets read first.
    pub fn credentials_in_secrets(&self) -> bool {
        [&self.token, &self.ssh_key]
            .iter()
            .any(|credential| matches!(credential, Some(Credential::Secret(_))))
    }
}

/// The one place that knows where bootagent's files live.
impl PathsConfig {
    /// What the last boot did, step by step (on tmpfs: it goes with each reboot).
    pub fn status_file(&self) -> PathBuf {
        self.run_dir.join("status.json")
    }

    /// Held by the boot that writes status.json, for as long as it runs.
    pub fn lock_file(&self) -> PathBuf {
        self.run_dir.join("boot.lock")
    }

    /// The service's environment, secrets included: only ever in the run dir.
    pub fn env_file(&self, service: &str) -> PathBuf {
        self.run_dir.join(format!("{service}.env"))
    }

    /// Present while the instance drains before termination: health answers 503 from then on.
    pub fn draining_marker(&self) -> PathBuf {
        self.run_dir.join("draining")
    }

    /// Present from the moment a boot starts writing what the service reads (env file, secret
    /// files, credentials) until the unit has been given it (restarted, reloaded, signalled): a
    /// boot that finds it restarts the unit, since an interrupted one may not have.
    pub fn apply_pending_marker(&self) -> PathBuf {
        self.run_dir.join("apply-pending")
    }

    /// The drop-in bootagent writes for `unit`: what it runs with, and from where.
    pub fn drop_in(&self, unit: &str) -> PathBuf {
        self.systemd_runtime_dir
            .join(format!("{unit}.d"))
            .join("50-bootagent.conf")
    }

    /// The repository `bootagent prepare` baked into the image, for a first boot to start from.
    pub fn seed_dir(&self) -> PathBuf {
        self.state_dir.join("seed")
    }

    /// Held by `bootagent prepare` while it makes and swaps in a seed: one at a time.
    pub fn seed_lock(&self) -> PathBuf {
        self.state_dir.join("seed.lock")
    }

    /// The service's secret variables as credentials, one file each (`secrets.deliver`).
    pub fn credentials_dir(&self, service: &str) -> PathBuf {
        self.run_dir.join("credentials").join(service)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitConfig {
    pub url: String,
    /// Templates: where the same repository is fetched when `url` does not answer.
    pub mirrors: Vec<String>,
    #[serde(rename = "ref")]
    pub reference: String,
    pub dir: String,
    pub depth: u32,
    pub keep: usize,
    pub on_failure: OnGitFailure,
    pub username: String,
    #[serde(deserialize_with = "optional_credential")]
    pub token: Option<Credential>,
    /// The hosts `token` may be sent to (`host`: any port; `host:port`).
    pub token_hosts: Vec<String>,
    #[serde(deserialize_with = "optional_credential")]
    pub ssh_key: Option<Credential>,
    pub known_hosts: PathBuf,
    /// Each connect, and each wait for the remote's next bytes.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// The whole checkout.
    #[serde(deserialize_with = "duration")]
    pub deadline: Duration,
    pub verify: Verify,
    pub signed: Signed,
    pub allowed_signers: PathBuf,
    pub gpg_keyring: PathBuf,
    pub allow_rewind: bool,
}

/// Where a git credential (`git.token`, `git.ssh_key`) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// `secret:NAME`: the variable NAME of the loaded secrets, which the service then does not
    /// receive.
    Secret(String),
    /// A file on the instance.
    File(PathBuf),
}

impl std::str::FromStr for Credential {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.strip_prefix("secret:") {
            Some(name) if is_variable_name(name) => Ok(Credential::Secret(name.to_string())),
            Some(name) => Err(format!(
                "\"secret:{name}\" must name a secret variable (letters, digits and '_', not \
                 starting with a digit)"
            )),
            None if Path::new(text).is_absolute() => Ok(Credential::File(PathBuf::from(text))),
            None => Err(format!(
                "{text:?} is neither \"secret:NAME\" nor an absolute file path"
            )),
        }
    }
}

/// How the code to deploy is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verify {
    None,
    /// SSH signatures, against `git.allowed_signers`.
    Ssh,
    /// OpenPGP signatures, against `git.gpg_keyring`.
    Gpg,
}

/// What carries the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Signed {
    /// The commit the ref names.
    Commit,
    /// The annotated tag the ref names (`git.ref` is then a tag).
    Tag,
}

/// What a boot does when the checkout fails but a release is already in service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnGitFailure {
    /// Go on with the release in service; status.json says why.
    LastGood,
    /// Fail the boot.
    Fail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Manager {
    Systemd,
    Exec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub manager: Manager,
    pub unit: String,
    pub user: String,
    pub command: Vec<String>,
    /// A template; `None` when the service has no public URL.
    #[serde(deserialize_with = "optional_text")]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub endpoints: BTreeMap<String, String>,
    #[serde(deserialize_with = "duration")]
    pub start_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub settle: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    #[serde(deserialize_with = "duration")]
    pub deadline: Duration,
}

/// An empty string is how the TOML files say "none".
fn optional_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(deserializer)?;
    Ok(Some(text).filter(|text| !text.is_empty()))
}

fn optional_credential<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Credential>, D::Error> {
    optional_text(deserializer)?
        .map(|text| text.parse().map_err(serde::de::Error::custom))
        .transpose()
}

/// An http:// or https:// URL, or none.
fn optional_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let url = optional_text(deserializer)?;
    if let Some(url) = &url {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| serde::de::Error::custom(format!("{url:?} is not a URL ({e})")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(serde::de::Error::custom(format!(
                "{url:?} is not an http:// or https:// URL"
            )));
        }
    }
    Ok(url)
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a duration ({e})")))
}
