//! The layers read, each checked on its own (unknown keys, templates) so that an error names its
//! file, then merged key by key and validated.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Config, ConfigError, DEFAULTS, DEFAULT_CONFIG_PATH};

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
    config.check_templates().map_err(|e| invalid(e.to_string()))
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
