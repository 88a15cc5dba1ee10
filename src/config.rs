//! Layered configuration: the shipped defaults (`packaging/defaults.toml`), then the main file,
//! then `config.d/*.toml` drop-ins in lexical order, merged key by key and validated into typed
//! settings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::names::{is_valid_name, is_variable_name};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/bootagent/config.toml";
const DEFAULTS: &str = include_str!("../packaging/defaults.toml");

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
    Template(#[from] crate::template::TemplateError),
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitConfig {
    pub url: String,
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

/// Where configuration comes from: an explicit file (which must exist) or the default location
/// (which may be absent: the defaults then serve the common pattern).
pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
    let (main, required) = match explicit {
        Some(path) => (path.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let mut merged = parse_layer(Path::new("<built-in defaults>"), DEFAULTS)?;
    match read_layer(&main) {
        Ok(text) => merge(&mut merged, parse_layer(&main, &text)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {}
        Err(source) => return Err(ConfigError::Read { path: main, source }),
    }
    for path in drop_ins(&main)? {
        let text = read_layer(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        merge(&mut merged, parse_layer(&path, &text)?);
    }
    settle(&main, merged)
}

/// A config file's text: a regular file (a link to one is fine) of at most 1 MiB, so that a FIFO
/// or a link to a device in config.d fails every command at once instead of hanging it;
/// `/dev/null` reads as empty.
fn read_layer(path: &Path) -> std::io::Result<String> {
    // `--config /dev/null`: the built-in defaults alone.
    if path == Path::new("/dev/null") {
        return Ok(String::new());
    }
    let bytes = crate::atomic::read_bounded(path, 1 << 20, crate::atomic::Links::Follow)?;
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "it is not UTF-8"))
}

/// The configuration one file's `text` makes over the defaults, without drop-ins: what a file
/// named `path` would give.
pub fn from_text(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let mut merged = parse_layer(Path::new("<built-in defaults>"), DEFAULTS)?;
    merge(&mut merged, parse_layer(path, text)?);
    settle(path, merged)
}

/// The merged layers as typed, validated settings.
fn settle(main: &Path, merged: toml::Table) -> Result<Config, ConfigError> {
    let config = Config::deserialize(merged).map_err(|e| ConfigError::Parse {
        path: main.to_path_buf(),
        message: e.message().to_string(),
    })?;
    config.validate()?;
    Ok(config)
}

/// `config.d/*.toml` beside the main file, in lexical order.
fn drop_ins(main: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let dir = main.parent().unwrap_or(Path::new(".")).join("config.d");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ConfigError::Read { path: dir, source }),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|source| ConfigError::Read {
                path: dir.clone(),
                source,
            })?
            .path();
        if path.extension().is_some_and(|ext| ext == "toml") {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// Parses one layer and checks it on its own, so an unknown key is reported with the file it
/// is in rather than after merging.
fn parse_layer(path: &Path, text: &str) -> Result<toml::Table, ConfigError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.message().to_string(),
    })?;
    check_known_keys(path, &table)?;
    Ok(table)
}

/// Rejects keys no version of the config knows, naming the file and the dotted key, and
/// templates no instance can fill, naming the file and the key.
fn check_known_keys(path: &Path, table: &toml::Table) -> Result<(), ConfigError> {
    let invalid = |message: String| ConfigError::Parse {
        path: path.to_path_buf(),
        message,
    };
    let mut probe: toml::Table = toml::from_str(DEFAULTS).expect("built-in defaults parse");
    merge(&mut probe, table.clone());
    let config = Config::deserialize(probe).map_err(|e| invalid(e.message().to_string()))?;
    for (key, template) in config.templates() {
        crate::template::check(&key, template).map_err(|e| invalid(e.to_string()))?;
    }
    Ok(())
}

/// Later layers win key by key; tables merge recursively, everything else is replaced.
fn merge(base: &mut toml::Table, layer: toml::Table) {
    for (key, value) in layer {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(incoming)) => {
                merge(existing, incoming)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

impl Config {
    /// Every value that is a template, by key.
    fn templates(&self) -> Vec<(String, &str)> {
        let mut all: Vec<(String, &str)> = vec![
            ("git.url".into(), &self.git.url),
            ("git.ref".into(), &self.git.reference),
            ("git.dir".into(), &self.git.dir),
            ("service.unit".into(), &self.service.unit),
            ("service.user".into(), &self.service.user),
        ];
        all.extend(
            self.secrets
                .main
                .as_deref()
                .map(|t| ("secrets.main".into(), t)),
        );
        all.extend(
            self.service
                .endpoint
                .as_deref()
                .map(|t| ("service.endpoint".into(), t)),
        );
        fn keyed<'a>(prefix: &str, (name, template): (&String, &'a String)) -> (String, &'a str) {
            (format!("{prefix}.{name}"), template.as_str())
        }
        all.extend(
            self.secrets
                .vars
                .iter()
                .map(|var| keyed("secrets.vars", var)),
        );
        for (section, vars) in &self.env {
            all.extend(vars.iter().map(|var| keyed(&format!("env.{section}"), var)));
        }
        let command = self.service.command.iter().enumerate();
        all.extend(command.map(|(i, arg)| (format!("service.command[{i}]"), arg.as_str())));
        let endpoints = self.service.endpoints.iter();
        all.extend(endpoints.map(|endpoint| keyed("service.endpoints", endpoint)));
        all
    }

    /// The instance tags templates read with `{tag:NAME}`.
    pub fn referenced_tags(&self) -> std::collections::BTreeSet<String> {
        self.templates()
            .into_iter()
            .flat_map(|(_, template)| crate::template::tag_placeholders(template))
            .map(str::to_string)
            .collect()
    }

    /// Every duration in the config, by key.
    fn durations(&self) -> [(&'static str, Duration); 17] {
        [
            ("identity.tag_wait", self.identity.tag_wait),
            ("identity.imds_deadline", self.identity.imds_deadline),
            ("secrets.timeout", self.secrets.timeout),
            ("git.timeout", self.git.timeout),
            ("git.deadline", self.git.deadline),
            ("service.start_timeout", self.service.start_timeout),
            ("service.settle", self.service.settle),
            ("health.app_timeout", self.health.app_timeout),
            ("health.header_timeout", self.health.header_timeout),
            ("lifecycle.heartbeat", self.lifecycle.heartbeat),
            ("lifecycle.drain", self.lifecycle.drain),
            ("lifecycle.health_wait", self.lifecycle.health_wait),
            ("lifecycle.timeout", self.lifecycle.timeout),
            ("refresh.window", self.refresh.window),
            ("deploy.health_wait", self.deploy.health_wait),
            ("deploy.hook_timeout", self.deploy.hook_timeout),
            ("boot.deadline", self.boot.deadline),
        ]
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        for (canonical, aliases) in &self.environments {
            if !is_valid_name(canonical) {
                return Err(ConfigError::Invalid(format!(
                    "environment name {canonical:?} must match [a-z0-9][a-z0-9_-]*"
                )));
            }
            for alias in std::iter::once(canonical).chain(aliases) {
                if let Some(other) = seen.insert(alias, canonical) {
                    if other != canonical {
                        return Err(ConfigError::Invalid(format!(
                            "tag value {alias:?} is listed under both environments.{other} and environments.{canonical}"
                        )));
                    }
                }
            }
        }
        for section in self.env.keys() {
            if section != "all" && !self.environments.contains_key(section) {
                return Err(ConfigError::Invalid(format!(
                    "[env.{section}] names no environment; use [env.all] or one of: {}",
                    self.environments
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        for (section, vars) in &self.env {
            if let Some(name) = vars.keys().find(|name| !is_variable_name(name)) {
                return Err(ConfigError::Invalid(format!(
                    "env.{section}: {name:?} is not a valid variable name (letters, digits and \
                     '_', not starting with a digit)"
                )));
            }
        }
        for (key, argv) in [
            ("deploy.pre_start", &self.deploy.pre_start),
            ("deploy.post", &self.deploy.post),
        ] {
            if argv.first().is_some_and(|program| program.is_empty()) {
                return Err(ConfigError::Invalid(format!(
                    "{key} starts with an empty program name"
                )));
            }
        }
        for (key, dir) in [
            ("paths.run_dir", &self.paths.run_dir),
            ("paths.state_dir", &self.paths.state_dir),
        ] {
            if !dir.is_absolute() {
                return Err(ConfigError::Invalid(format!(
                    "{key} must be an absolute path, not {:?}: bootagent runs from systemd, \
                     cloud-init or a shell, each in another directory",
                    dir.display().to_string()
                )));
            }
        }
        for env in &self.deploy.follow {
            if !self.environments.contains_key(env) {
                return Err(ConfigError::Invalid(format!(
                    "deploy.follow names {env:?}, which is no environment"
                )));
            }
        }
        for env in self.service.endpoints.keys() {
            if !self.environments.contains_key(env) {
                return Err(ConfigError::Invalid(format!(
                    "service.endpoints.{env} names no environment"
                )));
            }
        }
        for name in self.secrets.vars.keys() {
            if !is_variable_name(name) {
                return Err(ConfigError::Invalid(format!(
                    "secrets.vars.{name}: not a valid variable name (letters, digits and '_', not \
                     starting with a digit)"
                )));
            }
        }
        // A zero here would spin (heartbeat) or give up before the first try (the timeouts).
        let may_be_zero = [
            "identity.tag_wait",
            "lifecycle.drain",
            "lifecycle.health_wait",
            "refresh.window",
            "service.settle",
        ];
        let durations = self.durations();
        if let Some((key, _)) = durations
            .iter()
            .find(|(key, value)| value.is_zero() && !may_be_zero.contains(key))
        {
            return Err(ConfigError::Invalid(format!(
                "{key} must be longer than 0s"
            )));
        }
        if let Some((key, value)) = durations.iter().find(|(_, value)| *value > MAX_DURATION) {
            return Err(ConfigError::Invalid(format!(
                "{key} = \"{}\" is longer than bootagent accepts for any duration ({} at \
                 most): set a shorter one",
                humantime::format_duration(*value),
                humantime::format_duration(MAX_DURATION)
            )));
        }
        if self.git.keep == 0 {
            return Err(ConfigError::Invalid(
                "git.keep must be at least 1 (the release in service)".into(),
            ));
        }
        if self.git.depth == 0 {
            return Err(ConfigError::Invalid(
                "git.depth must be at least 1 (1 is a shallow clone)".into(),
            ));
        }
        if self.service.manager == Manager::Exec && self.lifecycle.launch_hook.is_some() {
            return Err(ConfigError::Invalid(
                "lifecycle.launch_hook needs service.manager = \"systemd\": in exec mode bootagent \
                 becomes the service and cannot complete the hook after it starts; leave it unset \
                 and have the service run `bootagent lifecycle complete --hook NAME --result \
                 continue` once it is ready"
                    .into(),
            ));
        }
        if self.service.manager == Manager::Exec && self.service.command.is_empty() {
            return Err(ConfigError::Invalid(
                "service.manager = \"exec\" needs service.command (the argv to run)".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn defaults_serve_the_common_pattern_without_any_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = load(Some(&write(dir.path(), "config.toml", ""))).unwrap();
        assert_eq!(config.identity.service_tag, "Service");
        assert_eq!(config.secrets.main.as_deref(), Some("{service}_env_{env}"));
        assert_eq!(config.git.reference, "{env}");
        assert_eq!(config.identity.tag_wait, Duration::from_secs(30));
        assert_eq!(config.environments["prod"], ["prod", "production"]);
    }

    #[test]
    fn drop_ins_override_in_lexical_order_and_keep_other_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "config.toml", "[git]\ndepth = 5\n");
        write(
            dir.path(),
            "config.d/20-b.toml",
            "[git]\nref = \"release\"\n",
        );
        write(
            dir.path(),
            "config.d/10-a.toml",
            "[git]\nref = \"main\"\ndepth = 3\n",
        );
        write(dir.path(), "config.d/ignored.txt", "not toml at all [");
        write(
            dir.path(),
            "config.d/30-env.toml",
            "[environments]\nqa = [\"qa\"]\n",
        );
        let config = load(Some(&main)).unwrap();
        assert_eq!(config.git.reference, "release");
        assert_eq!(config.git.depth, 3);
        assert_eq!(config.git.dir, "/srv/{service}");
        assert_eq!(config.environments.len(), 4, "qa is added, not substituted");
    }

    #[test]
    fn a_fifo_or_a_device_in_config_d_fails_at_once_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "config.toml", "");
        std::fs::create_dir(dir.path().join("config.d")).unwrap();
        let fifo = dir.path().join("config.d/10-fifo.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = load(Some(&main)).unwrap_err();
        assert!(
            matches!(err, ConfigError::Read { ref path, .. } if *path == fifo),
            "{err}"
        );
        std::fs::remove_file(&fifo).unwrap();
        let zero = dir.path().join("config.d/20-zero.toml");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let err = load(Some(&main)).unwrap_err();
        assert!(
            matches!(err, ConfigError::Read { ref path, .. } if *path == zero),
            "{err}"
        );
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(source.contains("not a regular file"), "{source}");
    }

    #[test]
    fn run_and_state_dirs_must_be_absolute() {
        for dirs in [
            "run_dir = \"\"",
            "run_dir = \"run\"",
            "state_dir = \"var/lib\"",
        ] {
            let err = from_text(Path::new("t.toml"), &format!("[paths]\n{dirs}\n")).unwrap_err();
            assert!(
                err.to_string().contains("must be an absolute path"),
                "{dirs}: {err}"
            );
        }
    }

    #[test]
    fn unknown_key_is_reported_with_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "config.toml", "");
        let bad = write(dir.path(), "config.d/10.toml", "[git]\nbranch = \"x\"\n");
        let err = load(Some(&main)).unwrap_err().to_string();
        assert!(err.contains(&bad.display().to_string()), "{err}");
        assert!(err.contains("branch"), "{err}");
    }

    #[test]
    fn explicit_config_file_must_exist() {
        let err = load(Some(Path::new("/nonexistent/bootagent.toml"))).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    }

    #[test]
    fn alias_in_two_environments_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(
            dir.path(),
            "config.toml",
            "[environments]\nqa = [\"staging\"]\n",
        );
        let err = load(Some(&main)).unwrap_err().to_string();
        assert!(err.contains("\"staging\""), "{err}");
    }

    #[test]
    fn a_zero_heartbeat_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(
            dir.path(),
            "config.toml",
            "[lifecycle]\nheartbeat = \"0s\"\n",
        );
        let err = load(Some(&main)).unwrap_err().to_string();
        assert!(
            err.contains("lifecycle.heartbeat must be longer than 0s"),
            "{err}"
        );
    }

    #[test]
    fn a_launch_hook_in_exec_mode_is_refused_with_what_to_do_instead() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(
            dir.path(),
            "config.toml",
            "[lifecycle]\nlaunch_hook = \"launching\"\n[service]\nmanager = \"exec\"\n\
             command = [\"/bin/true\"]\n",
        );
        let err = load(Some(&main)).unwrap_err().to_string();
        assert!(err.contains("lifecycle.launch_hook needs"), "{err}");
        assert!(err.contains("bootagent lifecycle complete"), "{err}");
    }

    #[test]
    fn an_env_variable_name_that_could_smuggle_another_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(
            dir.path(),
            "config.toml",
            "[env.all]\n\"PORT=9999;X\" = \"1\"\n",
        );
        let err = load(Some(&main)).unwrap_err().to_string();
        assert!(
            err.contains("env.all: \"PORT=9999;X\" is not a valid variable name"),
            "{err}"
        );
    }

    #[test]
    fn a_duration_beyond_the_maximum_names_the_key_and_the_maximum() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(
            dir.path(),
            "config.toml",
            "[boot]\ndeadline = \"300000000000y\"\n",
        );
        let err = load(Some(&main)).unwrap_err().to_string();
        assert!(
            err.contains("boot.deadline = \"300000000000years\" is longer than bootagent accepts for any duration (30days at most)"),
            "{err}"
        );
        let main = write(
            dir.path(),
            "config.toml",
            "[refresh]\nwindow = \"30days\"\n",
        );
        assert_eq!(load(Some(&main)).unwrap().refresh.window, MAX_DURATION);
    }

    #[test]
    fn bad_duration_names_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(
            dir.path(),
            "config.toml",
            "[identity]\ntag_wait = \"soon\"\n",
        );
        let err = load(Some(&main)).unwrap_err().to_string();
        assert!(err.contains("\"soon\" is not a duration"), "{err}");
    }

    #[test]
    fn empty_strings_are_none_and_credentials_are_typed_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let defaults = load(Some(&write(dir.path(), "config.toml", ""))).unwrap();
        assert_eq!(defaults.lifecycle.launch_hook, None);
        assert_eq!(defaults.health.app_url, None);
        assert_eq!(defaults.git.token, None);
        let main = write(
            dir.path(),
            "config.toml",
            "[git]\ntoken = \"secret:GIT_TOKEN\"\nssh_key = \"/etc/bootagent/deploy_key\"\n\
             [secrets]\nmain = \"\"\n",
        );
        let config = load(Some(&main)).unwrap();
        assert_eq!(
            config.git.token,
            Some(Credential::Secret("GIT_TOKEN".into()))
        );
        assert_eq!(
            config.git.ssh_key,
            Some(Credential::File("/etc/bootagent/deploy_key".into()))
        );
        assert_eq!(config.secrets.main, None);
    }

    #[test]
    fn a_credential_that_is_neither_a_secret_variable_nor_an_absolute_path_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (value, said) in [
            ("secret:{service}_key", "must name a secret variable"),
            (
                "deploy_key",
                "is neither \"secret:NAME\" nor an absolute file path",
            ),
        ] {
            let main = write(
                dir.path(),
                "config.toml",
                &format!("[git]\nssh_key = {value:?}\n"),
            );
            let err = load(Some(&main)).unwrap_err().to_string();
            assert!(err.contains(said), "{value}: {err}");
        }
    }

    #[test]
    fn an_app_url_that_is_not_http_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(
            dir.path(),
            "config.toml",
            "[health]\napp_url = \"localhost:8080/healthz\"\n",
        );
        let err = load(Some(&main)).unwrap_err().to_string();
        assert!(err.contains("is not an http:// or https:// URL"), "{err}");
    }
}
