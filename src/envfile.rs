//! The service's environment: config variables and secret variables, rendered for systemd's
//! `EnvironmentFile=` and written only to memory-backed storage.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nix::sys::statfs::{statfs, TMPFS_MAGIC};
use zeroize::Zeroizing;

use crate::config::EnvFileFormat;
use crate::secrets::{LoadedSecrets, SecretsError};

/// linux/magic.h; nix names no constant for ramfs.
const RAMFS_MAGIC: u64 = 0x8584_58f6;

pub type Environment = BTreeMap<String, Zeroizing<String>>;

#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    #[error(
        "{dir} is not on tmpfs or ramfs, so secrets written there would reach persistent disk; \
         point paths.run_dir at a tmpfs (such as /run/bootagent) or set \
         paths.allow_persistent_env_file = true"
    )]
    NotMemoryBacked { dir: PathBuf },
    #[error(
        "variable {name} holds {what}, which the dotenv format cannot carry; use \
         secrets.format = \"systemd\" or change the value"
    )]
    Unrepresentable { name: String, what: &'static str },
    #[error(
        "variable {name} holds a NUL character, which no process environment can carry; remove it \
         from the value"
    )]
    Nul { name: String },
    #[error("failed to {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Config variables plus the secrets'. A name set twice is refused rather than silently
/// resolved, because either choice would surprise someone.
pub fn compose(
    config_vars: &BTreeMap<String, String>,
    secrets: LoadedSecrets,
) -> Result<Environment, SecretsError> {
    let mut environment: Environment = config_vars
        .iter()
        .map(|(name, value)| (name.clone(), Zeroizing::new(value.clone())))
        .collect();
    for (name, var) in secrets.vars {
        if environment.contains_key(&name) {
            return Err(SecretsError::Conflict {
                name,
                first: "the config's [env] tables".into(),
                second: var.source,
            });
        }
        environment.insert(name, var.value);
    }
    Ok(environment)
}

pub fn render(
    environment: &Environment,
    format: EnvFileFormat,
) -> Result<Zeroizing<String>, EnvFileError> {
    // An environment is a list of C strings: a NUL would cut the value (or fail the exec).
    if let Some(name) = environment
        .iter()
        .find_map(|(name, value)| value.contains('\0').then_some(name))
    {
        return Err(EnvFileError::Nul { name: name.clone() });
    }
    match format {
        EnvFileFormat::Systemd => Ok(render_systemd(environment)),
        EnvFileFormat::Dotenv => render_dotenv(environment),
    }
}

/// `NAME="value"` lines. systemd keeps a real newline inside double quotes and unescapes only
/// `\"` and `\\` there, expanding neither `$` nor `%`, so escaping those two carries any text.
fn render_systemd(environment: &Environment) -> Zeroizing<String> {
    render_quoted(environment, '"')
}

/// `NAME='value'` lines, as python-dotenv writes them itself: in single quotes only `\'` and
/// `\\` are escapes, and docker compose takes such values literally. python-dotenv reads files
/// with universal newlines, so a carriage return cannot survive: such values are refused.
fn render_dotenv(environment: &Environment) -> Result<Zeroizing<String>, EnvFileError> {
    if let Some(name) = environment
        .iter()
        .find_map(|(name, value)| value.contains('\r').then_some(name))
    {
        return Err(EnvFileError::Unrepresentable {
            name: name.clone(),
            what: "a carriage return",
        });
    }
    Ok(render_quoted(environment, '\''))
}

fn render_quoted(environment: &Environment, quote: char) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::new());
    for (name, value) in environment {
        out.push_str(name);
        out.push('=');
        out.push(quote);
        for c in value.chars() {
            if c == quote || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push(quote);
        out.push('\n');
    }
    out
}

/// Refuses a directory whose storage survives a reboot, unless config allows it.
pub fn check_memory_backed(dir: &Path, allow_persistent: bool) -> Result<(), EnvFileError> {
    if allow_persistent {
        return Ok(());
    }
    let fs = statfs(dir).map_err(|errno| EnvFileError::Io {
        action: "inspect the file system of",
        path: dir.to_path_buf(),
        source: errno.into(),
    })?;
    let kind = fs.filesystem_type();
    if kind == TMPFS_MAGIC || kind.0 as u64 == RAMFS_MAGIC {
        Ok(())
    } else {
        Err(EnvFileError::NotMemoryBacked {
            dir: dir.to_path_buf(),
        })
    }
}

/// Writes the env file (mode 0600) atomically. Returns whether its content changed.
pub fn write(path: &Path, rendered: &str) -> Result<bool, EnvFileError> {
    let previous = std::fs::read(path).ok().map(Zeroizing::new);
    if previous.as_deref().map(Vec::as_slice) == Some(rendered.as_bytes()) {
        return Ok(false);
    }
    crate::atomic::write_file(path, rendered.as_bytes(), 0o600).map_err(|source| {
        EnvFileError::Io {
            action: "write",
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::SecretVar;

    fn secrets(pairs: &[(&str, &str)]) -> LoadedSecrets {
        LoadedSecrets {
            versions: Vec::new(),
            vars: pairs
                .iter()
                .map(|(k, v)| {
                    let var = SecretVar {
                        value: Zeroizing::new(v.to_string()),
                        source: "secret calendar_env_test".into(),
                    };
                    (k.to_string(), var)
                })
                .collect(),
        }
    }

    fn environment(pairs: &[(&str, &str)]) -> Environment {
        compose(&BTreeMap::new(), secrets(pairs)).unwrap()
    }

    #[test]
    fn systemd_quotes_and_backslashes_are_escaped_newlines_kept() {
        let env = environment(&[
            ("A", "say \"hi\"\\n"),
            ("PEM", "line1\nline2"),
            ("C", "$HOME %h #'"),
        ]);
        assert_eq!(
            render(&env, EnvFileFormat::Systemd).unwrap().as_str(),
            "A=\"say \\\"hi\\\"\\\\n\"\nC=\"$HOME %h #'\"\nPEM=\"line1\nline2\"\n"
        );
    }

    #[test]
    fn dotenv_uses_single_quotes_and_refuses_carriage_returns() {
        let env = environment(&[("A", "it's \\ \"x\" ${HOME}"), ("B", "")]);
        assert_eq!(
            render(&env, EnvFileFormat::Dotenv).unwrap().as_str(),
            "A='it\\'s \\\\ \"x\" ${HOME}'\nB=''\n"
        );
        let err = render(&environment(&[("KEY", "a\rb")]), EnvFileFormat::Dotenv)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("variable KEY holds a carriage return"),
            "{err}"
        );
    }

    #[test]
    fn a_nul_is_refused_by_name_in_every_format() {
        for format in [EnvFileFormat::Systemd, EnvFileFormat::Dotenv] {
            let err = render(&environment(&[("CUT", "a\0b")]), format).unwrap_err();
            assert!(
                matches!(&err, EnvFileError::Nul { name } if name == "CUT"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_variable_set_twice_names_both_sources() {
        let config = BTreeMap::from([("LOG_LEVEL".to_string(), "info".to_string())]);
        let err = compose(&config, secrets(&[("LOG_LEVEL", "debug")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("LOG_LEVEL") && err.contains("calendar_env_test"),
            "{err}"
        );
        assert!(err.contains("[env]"), "{err}");
    }

    #[test]
    fn disk_backed_directory_is_refused_unless_allowed() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let err = check_memory_backed(dir.path(), false).unwrap_err();
        assert!(matches!(err, EnvFileError::NotMemoryBacked { .. }), "{err}");
        check_memory_backed(dir.path(), true).unwrap();
        check_memory_backed(Path::new("/dev/shm"), false).unwrap();
    }
}
