//! How secrets reach the service besides the env file: systemd credentials
//! (`secrets.deliver`), secret files (`[[files]]`), and what a change to them does to the
//! running service (`on_change`).

use serde::{Deserialize, Deserializer};

/// The variable a service finds its credentials' directory in, under systemd and in exec mode.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// Where systemd keeps each unit's own copy of its credentials (`/run/credentials/UNIT`).
pub const SYSTEMD_CREDENTIALS_ROOT: &str = "/run/credentials";

/// Where the secret variables go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Deliver {
    /// Into the env file, as variables (the default).
    Env,
    /// One credential each, read from `$CREDENTIALS_DIRECTORY/NAME`; the env file keeps only the
    /// config's `[env.*]` variables.
    Credentials,
    /// Both.
    Both,
}

impl Deliver {
    /// As the config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Deliver::Env => "env",
            Deliver::Credentials => "credentials",
            Deliver::Both => "both",
        }
    }

    /// Whether the secret variables go into the service's environment.
    pub fn as_variables(self) -> bool {
        matches!(self, Deliver::Env | Deliver::Both)
    }

    /// Whether the secret variables become credentials.
    pub fn as_credentials(self) -> bool {
        matches!(self, Deliver::Credentials | Deliver::Both)
    }
}

/// What a change to a credential or a secret file does to the service that runs. Ordered by
/// how much it disturbs: when anything asks for a restart, the unit restarts and nothing else is
/// done; otherwise every distinct reload and signal asked for is applied, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OnChange {
    /// Nothing: the service reads the file again by itself.
    None,
    /// A signal to the unit's main process (`systemctl kill --kill-whom=main`).
    Signal(nix::sys::signal::Signal),
    /// `systemctl reload`: the unit's `ExecReload=`, the main process kept.
    Reload,
    /// `systemctl restart`.
    Restart,
}

impl std::str::FromStr for OnChange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        use nix::sys::signal::Signal;
        match text {
            "none" => Ok(OnChange::None),
            "reload" => Ok(OnChange::Reload),
            "restart" => Ok(OnChange::Restart),
            _ => match text.strip_prefix("signal:").map(str::parse::<Signal>) {
                Some(Ok(Signal::SIGKILL | Signal::SIGSTOP)) => Err(format!(
                    "{text:?} cannot be handled by the service, so it would only stop it; use \
                     \"restart\""
                )),
                Some(Ok(signal)) => Ok(OnChange::Signal(signal)),
                Some(Err(_)) => Err(format!(
                    "{text:?} names no signal: write it as systemctl kill does, e.g. \
                     \"signal:SIGHUP\""
                )),
                None => Err(format!(
                    "{text:?} is not one of \"restart\", \"reload\", \"signal:SIGNAME\" (e.g. \
                     \"signal:SIGHUP\") or \"none\""
                )),
            },
        }
    }
}

impl std::fmt::Display for OnChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OnChange::None => f.write_str("none"),
            OnChange::Signal(signal) => write!(f, "signal:{}", signal.as_str()),
            OnChange::Reload => f.write_str("reload"),
            OnChange::Restart => f.write_str("restart"),
        }
    }
}

impl<'de> Deserialize<'de> for OnChange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for OnChange {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One `[[files]]` entry: a file rendered from the secrets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// A template (`{service}` …); absolute, under one of `paths.file_roots`.
    pub path: String,
    /// `secret-id` (its whole value) or `secret-id#json-field`, written as it is; a template.
    #[serde(default, deserialize_with = "super::optional_text")]
    pub secret: Option<String>,
    /// A minijinja template over the secret variables and the identity.
    #[serde(default, deserialize_with = "super::optional_text")]
    pub template: Option<String>,
    /// User and group names; templates.
    #[serde(default = "root")]
    pub owner: String,
    #[serde(default = "root")]
    pub group: String,
    /// Permission bits, written in octal (`"0640"`).
    #[serde(default = "owner_only", deserialize_with = "mode")]
    pub mode: u32,
    #[serde(default = "restart")]
    pub on_change: OnChange,
    /// The operator allows this file on a disk-backed file system.
    #[serde(default)]
    pub persistent: bool,
}

/// The names a `[[files]]` template may use at its top level; `secrets` holds every secret
/// variable by name.
pub const TEMPLATE_NAMES: [&str; 6] = [
    "secrets",
    "service",
    "env",
    "env_tag",
    "region",
    "instance_id",
];

/// The one way `[[files]]` templates are read, at load and at render: a name that is not
/// defined is an error (never an empty string in a secret file), nothing is escaped, since the
/// output is a config file or a key, not HTML, and the file ends as the template does (Jinja
/// drops a final newline, which config files and PEM readers expect).
pub fn template_environment() -> minijinja::Environment<'static> {
    let mut environment = minijinja::Environment::new();
    environment.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    environment.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
        .expect("Jinja's own delimiters are a valid syntax");
    environment.set_syntax(syntax);
    environment
}

impl FileConfig {
    /// What the entry `key` (`files[N]`) must satisfy beyond its types: one source, and a
    /// template that parses and uses only names a boot defines.
    pub(super) fn check(&self, key: &str) -> Result<(), String> {
        match (&self.secret, &self.template) {
            (Some(_), Some(_)) => Err(format!(
                "{key} sets both secret and template: a file is either a secret as it is or a \
                 template; keep one"
            )),
            (None, None) => Err(format!(
                "{key} sets neither secret nor template: name the secret (\"id\" or \
                 \"id#field\") or give a template"
            )),
            (Some(_), None) => Ok(()),
            (None, Some(text)) => check_template(key, text),
        }
    }
}

/// The template parses, and its top-level names are ones a boot defines: a misspelled one fails
/// the load, not a boot.
fn check_template(key: &str, text: &str) -> Result<(), String> {
    let environment = template_environment();
    let template = environment
        .template_from_str(text)
        .map_err(|e| format!("{key}.template does not parse: {e}"))?;
    let mut unknown: Vec<String> = template
        .undeclared_variables(false)
        .into_iter()
        .filter(|name| !TEMPLATE_NAMES.contains(&name.as_str()))
        .collect();
    unknown.sort();
    match unknown.first() {
        None => Ok(()),
        Some(name) => Err(format!(
            "{key}.template uses {name:?}, which a file template does not have; it may use \
             secrets.NAME (a secret variable), {}",
            TEMPLATE_NAMES[1..].join(", ")
        )),
    }
}

fn root() -> String {
    "root".to_string()
}

fn owner_only() -> u32 {
    0o600
}

fn restart() -> OnChange {
    OnChange::Restart
}

/// Permission bits in octal, as chmod takes them; never world-writable, nor setuid, setgid or
/// sticky, which a data file has no use for.
fn mode<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let text = String::deserialize(deserializer)?;
    let bits = u32::from_str_radix(&text, 8)
        .ok()
        .filter(|_| (3..=4).contains(&text.len()));
    match bits {
        Some(bits) if bits & 0o7002 == 0 => Ok(bits),
        Some(_) => Err(serde::de::Error::custom(format!(
            "mode {text:?} is world-writable or sets setuid, setgid or sticky bits: a secret \
             file takes read and write bits only, such as \"0640\""
        ))),
        None => Err(serde::de::Error::custom(format!(
            "mode {text:?} is not octal permission bits such as \"0640\""
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_change_reads_what_it_writes_and_refuses_the_rest() {
        for text in [
            "none",
            "reload",
            "restart",
            "signal:SIGHUP",
            "signal:SIGUSR1",
        ] {
            let parsed: OnChange = text.parse().unwrap();
            assert_eq!(parsed.to_string(), text);
        }
        for (text, says) in [
            ("signal:SIGKILL", "use \"restart\""),
            ("signal:HUP", "names no signal"),
            ("Reload", "is not one of"),
            ("", "is not one of"),
        ] {
            let error = text.parse::<OnChange>().unwrap_err();
            assert!(error.contains(says), "{text:?}: {error}");
        }
    }

    #[test]
    fn the_strongest_action_wins() {
        let hup = OnChange::Signal(nix::sys::signal::Signal::SIGHUP);
        let mut actions = [OnChange::Reload, OnChange::None, hup];
        actions.sort();
        assert_eq!(actions, [OnChange::None, hup, OnChange::Reload]);
        assert!(OnChange::Restart > OnChange::Reload);
    }
}
