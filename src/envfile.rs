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
    #[error(
        "variable {name} takes {bytes} bytes as NAME=value; the kernel passes at most \
         {MAX_VARIABLE_BYTES} bytes per environment variable to a program it starts, so the \
         service could never receive it: shorten the value, or split it into several variables"
    )]
    TooLong { name: String, bytes: usize },
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

/// Linux's MAX_ARG_STRLEN (32 pages): the longest `NAME=value` string, its NUL included, that
/// execve passes on.
const MAX_VARIABLE_BYTES: usize = 32 * 4096;

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
    // Checked here, before the env file changes: exec (and systemd's exec of the unit) would
    // fail only after it was rewritten.
    if let Some((name, bytes)) = environment
        .iter()
        .map(|(name, value)| (name, name.len() + 1 + value.len() + 1))
        .find(|(_, bytes)| *bytes > MAX_VARIABLE_BYTES)
    {
        return Err(EnvFileError::TooLong {
            name: name.clone(),
            bytes,
        });
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

/// How systemd (252, `parse_env_file` in env-file.c) reads an `EnvironmentFile=`: the model the
/// renderer is checked against — by property tests and fuzzing, and the model itself against
/// real systemd in the container tests. Keys and values in file order; a key without `=` is
/// skipped, as systemd skips it.
pub fn parse_systemd(text: &str) -> Vec<(String, String)> {
    #[derive(Clone, Copy)]
    enum State {
        PreKey,
        Key,
        PreValue,
        Value,
        ValueEscape,
        SingleQuoted,
        DoubleQuoted,
        DoubleQuotedEscape,
        Comment,
        CommentEscape,
    }
    const NEWLINE: &[char] = &['\n', '\r'];
    const WHITESPACE: &[char] = &[' ', '\t', '\n', '\r'];
    // What a backslash escapes inside double quotes (SHELL_NEED_ESCAPE); before anything else
    // it stays.
    const ESCAPED: &[char] = &['"', '\\', '`', '$'];
    let mut pairs = Vec::new();
    let (mut key, mut value) = (String::new(), String::new());
    // Unquoted trailing whitespace is dropped: how much of `value` it is.
    let mut trailing = 0;
    let mut state = State::PreKey;
    let mut push = |key: &mut String, value: &mut String, trailing: &mut usize| {
        value.truncate(value.len() - *trailing);
        pairs.push((key.trim().to_string(), std::mem::take(value)));
        key.clear();
        *trailing = 0;
    };
    for c in text.chars() {
        state = match state {
            State::PreKey if c == '#' || c == ';' => State::Comment,
            State::PreKey if WHITESPACE.contains(&c) => State::PreKey,
            State::PreKey => {
                key.push(c);
                State::Key
            }
            State::Key if NEWLINE.contains(&c) => {
                key.clear();
                State::PreKey
            }
            State::Key if c == '=' => State::PreValue,
            State::Key => {
                key.push(c);
                State::Key
            }
            State::PreValue if NEWLINE.contains(&c) => {
                push(&mut key, &mut value, &mut trailing);
                State::PreKey
            }
            State::PreValue if c == '\'' => State::SingleQuoted,
            State::PreValue if c == '"' => State::DoubleQuoted,
            State::PreValue if c == '\\' => State::ValueEscape,
            State::PreValue if WHITESPACE.contains(&c) => State::PreValue,
            State::Value if NEWLINE.contains(&c) => {
                push(&mut key, &mut value, &mut trailing);
                State::PreKey
            }
            State::Value if c == '\\' => {
                trailing = 0;
                State::ValueEscape
            }
            State::PreValue | State::Value => {
                trailing = if WHITESPACE.contains(&c) {
                    trailing + c.len_utf8()
                } else {
                    0
                };
                value.push(c);
                State::Value
            }
            State::ValueEscape => {
                // A backslash before a newline continues the line.
                if !NEWLINE.contains(&c) {
                    value.push(c);
                }
                State::Value
            }
            State::SingleQuoted if c == '\'' => State::Value,
            State::SingleQuoted => {
                value.push(c);
                State::SingleQuoted
            }
            State::DoubleQuoted if c == '"' => State::Value,
            State::DoubleQuoted if c == '\\' => State::DoubleQuotedEscape,
            State::DoubleQuoted => {
                value.push(c);
                State::DoubleQuoted
            }
            State::DoubleQuotedEscape => {
                if ESCAPED.contains(&c) {
                    value.push(c);
                } else if c != '\n' {
                    value.push('\\');
                    value.push(c);
                }
                State::DoubleQuoted
            }
            State::Comment if c == '\\' => State::CommentEscape,
            State::Comment if NEWLINE.contains(&c) => State::PreKey,
            State::Comment | State::CommentEscape => State::Comment,
        };
    }
    if matches!(
        state,
        State::PreValue
            | State::Value
            | State::ValueEscape
            | State::SingleQuoted
            | State::DoubleQuoted
            | State::DoubleQuotedEscape
    ) {
        push(&mut key, &mut value, &mut trailing);
    }
    pairs
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
            files: Default::default(),
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

    /// Values made of what quoting and escaping trip over, from a fixed-seed generator.
    fn nasty_environment(seed: u64, size: usize) -> Environment {
        const PIECES: &[&str] = &[
            "\"", "\\", "$", "`", "%h", "#", ";", "'", " ", "\t", "\n", "\r", "=", "é", "€", "😀",
            "a", "Z", "0", "\\n", "\\\"", "${X}", "\\\n",
        ];
        let mut state = seed | 1;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        (0..size)
            .map(|i| {
                let length = next(12);
                let value: String = (0..length).map(|_| PIECES[next(PIECES.len())]).collect();
                (format!("V{i}_{}", next(1000)), Zeroizing::new(value))
            })
            .collect()
    }

    #[test]
    fn what_systemd_reads_back_is_what_was_rendered() {
        for seed in 0..2000 {
            let environment = nasty_environment(seed, 6);
            let rendered = render(&environment, EnvFileFormat::Systemd).unwrap();
            let read = parse_systemd(&rendered);
            let expected: Vec<(String, String)> = environment
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect();
            assert_eq!(read, expected, "seed {seed}: {:?}", rendered.as_str());
        }
    }

    #[test]
    fn the_model_reads_systemds_documented_cases() {
        let file = "# comment\n; also\nA=plain  \nB=\"in \\\"quotes\\\" \\n $X\"\nC='single \\ kept'\nNOVALUE\nD=\"multi\nline\"\nE=a\\\nb\n";
        assert_eq!(
            parse_systemd(file),
            [
                ("A", "plain"),
                ("B", "in \"quotes\" \\n $X"),
                ("C", "single \\ kept"),
                ("D", "multi\nline"),
                ("E", "ab"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
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
    fn a_variable_no_exec_can_pass_is_refused_by_name_before_anything_is_written() {
        // "BIG=" + value + NUL at the limit passes; one byte more does not.
        let fits = "x".repeat(MAX_VARIABLE_BYTES - 5);
        let over = "x".repeat(MAX_VARIABLE_BYTES - 4);
        for format in [EnvFileFormat::Systemd, EnvFileFormat::Dotenv] {
            assert!(render(&environment(&[("BIG", &fits)]), format).is_ok());
            let err = render(&environment(&[("BIG", &over)]), format).unwrap_err();
            assert!(
                matches!(&err, EnvFileError::TooLong { name, bytes } if name == "BIG" && *bytes == MAX_VARIABLE_BYTES + 1),
                "{err}"
            );
            assert!(err.to_string().contains("split it"), "{err}");
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
