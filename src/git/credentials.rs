//! How bootagent proves itself to the remote (a deploy token, a deploy key) and checks it (the
//! pinned host keys, the hosts a token may go to), and the session a sync starts with them.

use std::path::{Path, PathBuf};

use super::session::{self, ActiveSession, Limits};
use super::{ssh, GitError};
use crate::config::{Credential, GitConfig, PathsConfig};
use crate::plan::Plan;
use crate::remote::{Kind, Remote};
use crate::secrets::{self, LoadedSecrets, SecretsError};

/// How bootagent proves itself to the remote, and checks the remote: an HTTP deploy token, an
/// SSH deploy key and the pinned host keys. Secrets among them are never written to persistent
/// disk or `.git/config`, and are wiped or removed when this is dropped.
pub struct Credentials {
    options: session::Options,
    /// The origins the token may go to, when an instance tag chooses the URL's host (`None`: the
    /// config names the host).
    token_hosts: Option<Vec<String>>,
    /// A deploy key that came from a secret, on tmpfs while it is needed.
    _key_file: Option<KeyFile>,
}

/// Why the credentials a boot would use could not be had.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// One lives in a secret, which could not be read.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Git(#[from] GitError),
}

impl Credentials {
    /// The credentials as a boot would use them, outside a boot (deploy's listing, doctor):
    /// the plan's secrets are read only when a credential lives in one.
    pub async fn load(
        settings: &GitConfig,
        paths: &PathsConfig,
        plan: &Plan,
        client: &secrets::Client,
    ) -> Result<Credentials, Unavailable> {
        let mut loaded = LoadedSecrets::default();
        if settings.credentials_in_secrets() {
            loaded = secrets::load(client, &plan.identity.region, &plan.secrets).await?;
        }
        Ok(Credentials::new(settings, paths, &mut loaded)?)
    }

    /// The credentials the git settings name. A `secret:NAME` one is taken out of the loaded
    /// secrets (so the service does not receive it). A key from a secret is written, mode 0600,
    /// into `paths.run_dir`, which must be memory-backed.
    pub fn new(
        config: &GitConfig,
        paths: &PathsConfig,
        secrets: &mut LoadedSecrets,
    ) -> Result<Credentials, GitError> {
        let run_dir = &paths.run_dir;
        let allow_persistent = paths.allow_persistent_env_file;
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
            options: session::Options {
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
    fn check_token_host(&self, remote: &Remote) -> Result<(), GitError> {
        let (Some(_), Some(allowed)) = (&self.options.token, &self.token_hosts) else {
            return Ok(());
        };
        if !matches!(remote.kind(), Kind::Http(_)) {
            return Ok(());
        }
        let origin = remote.http_origin();
        let permitted = origin.as_ref().is_some_and(|origin| {
            allowed
                .iter()
                .any(|entry| token_origin(entry).as_ref() == Some(origin))
        });
        match permitted {
            true => Ok(()),
            false => Err(GitError::TokenNotForHost {
                url: remote.to_string(),
                host: origin.unwrap_or_else(|| "?".into()),
            }),
        }
    }

    /// Readies the transports for `remote`; the known_hosts must be readable when it is an ssh
    /// remote.
    pub(super) fn session(
        &self,
        remote: &Remote,
        limits: &Limits,
    ) -> Result<ActiveSession, GitError> {
        self.check_token_host(remote)?;
        if remote.ssh_address().is_ok() {
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
        Ok(ActiveSession::start(
            remote.clone(),
            self.options.clone(),
            limits.clone(),
        ))
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

pub(super) fn key_error(message: String) -> GitError {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
