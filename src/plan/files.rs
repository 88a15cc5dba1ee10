//! The `[[files]]` entries rendered for this instance: where each file goes, what it holds and
//! whose it is. A path is checked here, before anything is read or written: absolute and
//! written one way, under `paths.file_roots`, and none of bootagent's own files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::SecretRef;
use crate::config::names::is_normal_path;
use crate::config::{Config, ConfigError, OnChange};

#[derive(Debug, Clone, Serialize)]
pub struct FilePlan {
    /// `files[N]`: the entry in the config, which messages name.
    pub key: String,
    pub path: PathBuf,
    #[serde(flatten)]
    pub source: FileSource,
    pub owner: String,
    pub group: String,
    #[serde(serialize_with = "octal")]
    pub mode: u32,
    pub on_change: OnChange,
    /// The operator allows a disk-backed file system.
    pub persistent: bool,
}

/// What a file holds: a secret as it is, or a template's output (the template is config, not
/// a secret, so the plan prints it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileSource {
    Secret(SecretRef),
    Template(String),
}

fn octal<S: serde::Serializer>(mode: &u32, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&format_args!("{mode:04o}"))
}

/// Every `[[files]]` entry with its templates rendered by `required` (the plan's renderer), for
/// a service whose code lives at `git_dir`.
pub(super) fn build(
    config: &Config,
    required: impl Fn(&str, &str) -> Result<String, ConfigError>,
    git_dir: &Path,
) -> Result<Vec<FilePlan>, ConfigError> {
    let mut seen: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut files = Vec::with_capacity(config.files.len());
    for (i, file) in config.files.iter().enumerate() {
        let key = format!("files[{i}]");
        let path = required(&format!("{key}.path"), &file.path)?;
        let path = allowed(config, &key, &path, git_dir)?;
        if let Some(first) = seen.insert(path.clone(), key.clone()) {
            return Err(ConfigError::Invalid(format!(
                "{key}.path and {first}.path both render to {}: two entries cannot write one file",
                path.display()
            )));
        }
        let source = match (&file.secret, &file.template) {
            (Some(secret), _) => {
                let reference = SecretRef::parse(&required(&format!("{key}.secret"), secret)?);
                if reference.id.is_empty() || reference.field.as_deref() == Some("") {
                    return Err(ConfigError::Invalid(format!(
                        "{key}.secret renders to {:?}: name a secret, \"id\" or \"id#field\"",
                        secret
                    )));
                }
                FileSource::Secret(reference)
            }
            // Config validation leaves exactly one of the two.
            (None, template) => FileSource::Template(template.clone().unwrap_or_default()),
        };
        files.push(FilePlan {
            path,
            source,
            owner: required(&format!("{key}.owner"), &file.owner)?,
            group: required(&format!("{key}.group"), &file.group)?,
            mode: file.mode,
            on_change: file.on_change,
            persistent: file.persistent,
            key,
        });
    }
    Ok(files)
}

/// `path` (the value `files[N].path` renders to) when a file may go there: normal, absolute,
/// under a root, and not where bootagent keeps its own files, which a secret file would
/// replace or which would then hold a secret.
fn allowed(config: &Config, key: &str, path: &str, git_dir: &Path) -> Result<PathBuf, ConfigError> {
    let invalid =
        |why: String| ConfigError::Invalid(format!("{key}.path renders to {path:?}, {why}"));
    if !is_normal_path(path) {
        return Err(invalid(
            "which is not an absolute path written without \".\", \"..\", \"//\" or a trailing \
             slash"
                .into(),
        ));
    }
    let path = PathBuf::from(path);
    let roots = &config.paths.file_roots;
    if !roots
        .iter()
        .any(|root| path.starts_with(root) && path != *root)
    {
        let roots: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        return Err(invalid(format!(
            "a path outside the allowed roots (paths.file_roots: {}); move the file under one of \
             them, or add its directory to paths.file_roots",
            roots.join(", ")
        )));
    }
    let paths = &config.paths;
    // The run dir holds the env file (`paths.env_file`), status.json, the lock, the draining
    // marker and the temporary files of each: its own entries are bootagent's, its
    // subdirectories are free.
    let in_run_dir = path.parent() == Some(paths.run_dir.as_path()) || path == paths.run_dir;
    // The release link, and beside it the repository and releases (git::Layout's `.NAME`).
    let hidden = git_dir
        .file_name()
        .map(|name| git_dir.with_file_name(format!(".{}", name.to_string_lossy())));
    let own_dirs = [
        // The credential store (`secrets.deliver`), every service's: root's private directory,
        // whose entries bootagent removes or replaces.
        Some(paths.run_dir.join("credentials")),
        Some(paths.state_dir.clone()),
        Some(paths.systemd_runtime_dir.clone()),
        Some(git_dir.to_path_buf()),
        hidden,
        // systemd's own copies of every unit's credentials.
        Some(PathBuf::from(crate::config::SYSTEMD_CREDENTIALS_ROOT)),
    ];
    if in_run_dir || own_dirs.iter().flatten().any(|dir| path.starts_with(dir)) {
        return Err(invalid(format!(
            "which is bootagent's own (the run dir {} itself, the state dir {}, the systemd \
             runtime dir {}, the code in {}, or the credentials in {} and /run/credentials); put \
             the file in a directory of its own, such as {}",
            paths.run_dir.display(),
            paths.state_dir.display(),
            paths.systemd_runtime_dir.display(),
            git_dir.display(),
            paths.run_dir.join("credentials").display(),
            paths.run_dir.join("tls").display()
        )));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::build;
    use crate::plan::identity::Identity;

    fn identity() -> Identity {
        Identity {
            service: "calendar".into(),
            env: "prod".into(),
            env_tag: "production".into(),
            repository: Some("git://git.example/calendar.git".into()),
            asg_group: None,
            tags: BTreeMap::new(),
            instance_id: "i-0abc".into(),
            region: "eu-west-1".into(),
        }
    }

    /// The plan's files for one `[[files]]` entry with `path` (and a secret), or the error.
    fn planned(path: &str, extra: &str) -> Result<Vec<FilePlan>, String> {
        let text = format!("{extra}[[files]]\npath = {path:?}\nsecret = \"{{service}}/tls#key\"\n");
        let config = crate::config::from_text(Path::new("t.toml"), &text).unwrap();
        build(&config, &identity())
            .map(|plan| plan.files)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_file_is_planned_with_its_path_rendered_and_its_secret_read_with_the_others() {
        let text = "[[files]]\npath = \"/run/tls/{service}.key\"\nsecret = \"{service}/tls#key\"\n\
                    owner = \"{service}\"\nmode = \"0640\"\n\
                    [[files]]\npath = \"/run/{service}/app.conf\"\n\
                    template = \"region={{ region }}\"\non_change = \"reload\"\n";
        let config = crate::config::from_text(Path::new("t.toml"), text).unwrap();
        let plan = build(&config, &identity()).unwrap();
        assert_eq!(plan.files[0].path, Path::new("/run/tls/calendar.key"));
        assert_eq!(plan.files[0].owner, "calendar");
        let key = SecretRef {
            id: "calendar/tls".into(),
            field: Some("key".into()),
        };
        assert_eq!(plan.files[0].source, FileSource::Secret(key.clone()));
        assert_eq!(
            plan.secrets.files,
            BTreeMap::from([("files[0]".to_string(), key)])
        );
        let printed = serde_json::to_value(&plan).unwrap();
        assert_eq!(printed["files"][0]["mode"], "0640");
        assert_eq!(printed["files"][0]["secret"]["id"], "calendar/tls");
        assert_eq!(printed["files"][1]["template"], "region={{ region }}");
        assert_eq!(printed["files"][1]["on_change"], "reload");
    }

    #[test]
    fn a_path_outside_the_roots_is_refused_naming_the_key_and_the_roots() {
        let err = planned("/etc/{service}/app.key", "").unwrap_err();
        assert!(
            err.contains("files[0].path renders to \"/etc/calendar/app.key\""),
            "{err}"
        );
        assert!(
            err.contains("outside the allowed roots (paths.file_roots: /run)"),
            "{err}"
        );
        let roots = "[paths]\nfile_roots = [\"/run\", \"/etc/calendar\"]\n";
        planned("/etc/{service}/app.key", roots).unwrap();
        // A root itself is a directory, not a file.
        assert!(planned("/run", "")
            .unwrap_err()
            .contains("outside the allowed roots"));
        assert!(planned("/running/x", "")
            .unwrap_err()
            .contains("outside the allowed roots"));
    }

    #[test]
    fn a_path_that_is_not_written_one_way_is_refused() {
        for path in [
            "/run/../etc/shadow",
            "/run/./x",
            "/run//x",
            "/run/tls/",
            "run/x",
        ] {
            let err = planned(path, "").unwrap_err();
            assert!(
                err.contains("which is not an absolute path written without"),
                "{path}: {err}"
            );
        }
    }

    #[test]
    fn bootagents_own_files_are_refused() {
        let roots = "[paths]\nfile_roots = [\"/\"]\n";
        for path in [
            "/run/bootagent/{service}.env",
            "/run/bootagent/status.json",
            "/run/bootagent/boot.lock",
            "/run/bootagent/draining",
            "/var/lib/bootagent/history.jsonl",
            "/run/systemd/system/{service}.service",
            "/srv/{service}/config/app.key",
            "/srv/.{service}/repo.git/config",
            "/run/bootagent/credentials/{service}/DB_PASSWORD",
            "/run/credentials/other.service/key",
        ] {
            let err = planned(path, roots).unwrap_err();
            assert!(err.contains("which is bootagent's own"), "{path}: {err}");
        }
        planned("/run/bootagent/tls/{service}.key", roots).unwrap();
    }

    #[test]
    fn the_credential_store_is_bootagents_own() {
        // A file in the store would be removed as a stale credential (or overwritten by one) at
        // every boot, and one owned by the service user would sit in root's private store; the
        // store's directory itself as a file stops the credentials being written at all.
        for path in [
            "/run/bootagent/credentials/{service}/DB_PASSWORD",
            "/run/bootagent/credentials/{service}",
            "/run/bootagent/credentials/other/x",
        ] {
            let err = planned(path, "").unwrap_err();
            assert!(err.contains("which is bootagent's own"), "{path}: {err}");
        }
    }

    #[test]
    fn two_paths_that_render_alike_are_refused() {
        let text = "[[files]]\npath = \"/run/{service}.key\"\nsecret = \"a\"\n\
                    [[files]]\npath = \"/run/calendar.key\"\nsecret = \"b\"\n";
        let config = crate::config::from_text(Path::new("t.toml"), text).unwrap();
        let err = build(&config, &identity()).unwrap_err().to_string();
        assert!(
            err.contains("files[1].path and files[0].path both render to /run/calendar.key"),
            "{err}"
        );
    }
}
