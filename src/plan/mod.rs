//! The plan: every template rendered against the identity. Pure data; `bootagent plan` prints it.

mod files;
pub mod identity;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::aws::imds::ImdsClient;
use crate::config::template::{render, render_required, TemplateVars};
use crate::config::{
    Config, ConfigError, Deliver, EnvFileFormat, Manager, OnChange, Signed, Verify,
};
use crate::remote::{NoRemote, Remote};
pub use files::{FilePlan, FileSource};
use identity::Identity;

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub identity: Identity,
    pub secrets: SecretsPlan,
    /// Non-secret variables: `[env.all]`, `[env.<env>]` and the `BOOTAGENT_*` ones.
    pub env: BTreeMap<String, String>,
    pub env_file: PathBuf,
    pub status_file: PathBuf,
    pub lock_file: PathBuf,
    pub git: GitPlan,
    pub service: ServicePlan,
    /// `[[files]]`, rendered.
    pub files: Vec<FilePlan>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SecretsPlan {
    /// The JSON-object secret whose keys become variables, if any.
    pub main: Option<String>,
    pub version_stage: String,
    /// Pins the main secret to one version.
    pub version_id: Option<String>,
    /// Variables taken from one secret each (a whole plain value or one JSON field).
    pub vars: BTreeMap<String, SecretRef>,
    pub format: EnvFileFormat,
    pub deliver: Deliver,
    /// Where the credentials are kept, when the secrets are delivered as credentials.
    pub credentials_dir: Option<PathBuf>,
    /// What new credentials do to the service.
    pub on_change: OnChange,
    /// The secrets `[[files]]` entries hold as they are, by entry (`files[N]`); read with the
    /// others. `files` prints them.
    #[serde(skip)]
    pub files: BTreeMap<String, SecretRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretRef {
    pub id: String,
    pub field: Option<String>,
}

impl SecretRef {
    /// `secret-id` or `secret-id#field`.
    fn parse(text: &str) -> SecretRef {
        match text.rsplit_once('#') {
            Some((id, field)) => SecretRef {
                id: id.to_string(),
                field: Some(field.to_string()),
            },
            None => SecretRef {
                id: text.to_string(),
                field: None,
            },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GitPlan {
    /// `NoRemote` when the URL template uses an unset value (no `Repository` tag): the plan
    /// still prints (its `url` null), and whatever needs the remote fails with it. Printed
    /// without credentials.
    #[serde(rename = "url", serialize_with = "serialize_remote")]
    pub remote: Result<Remote, NoRemote>,
    /// The same repository elsewhere, in the order they are tried when `remote` does not answer.
    pub mirrors: Vec<Remote>,
    #[serde(rename = "ref")]
    pub reference: String,
    pub dir: PathBuf,
    pub depth: u32,
    /// Whose signature the code must carry, and whether the branch may rewind.
    pub trust: Trust,
    /// The repository `bootagent prepare` baked into the image, which a first checkout starts
    /// from.
    pub seed: PathBuf,
}

/// The history a fetch from `remote` keeps: `depth` commits, or all of it (`None`) where that
/// is needed or free. libgit2's local transport cannot fetch shallow, and a repository on this
/// machine's disk costs no network; whether a new commit descends from the one in service
/// (`allow_rewind = false`) needs the history.
pub fn fetch_depth(remote: &Remote, depth: u32, allow_rewind: bool) -> Option<u32> {
    (!remote.is_local() && allow_rewind).then_some(depth)
}

fn serialize_remote<S: serde::Serializer>(
    remote: &Result<Remote, NoRemote>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    remote.as_ref().ok().serialize(serializer)
}

/// The checks a sync makes before a commit becomes a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trust {
    pub verify: Verify,
    pub signed: Signed,
    /// The allowed-signers file (ssh) or the keyring (gpg).
    pub keys: PathBuf,
    pub allow_rewind: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServicePlan {
    pub manager: Manager,
    pub unit: String,
    pub user: String,
    pub command: Vec<String>,
    /// systemd mode: the runtime drop-in that points the unit at the env file and checkout.
    pub drop_in: Option<PathBuf>,
}

/// Who the instance is could not be read, or the config does not render for it.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Identity(#[from] identity::FetchError),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Identity from IMDS, then the plan. Needs no AWS credentials (unless tags come from the EC2
/// API).
pub async fn resolve(config: &Config) -> Result<Plan, ResolveError> {
    let imds = identity::imds_client(&config.identity);
    resolve_with(&imds, config, config.identity.imds_deadline).await
}

/// [`resolve`] with a client the caller keeps using (and whose token it reuses), and the time
/// the ec2:DescribeTags fallback may take.
pub async fn resolve_with(
    imds: &ImdsClient,
    config: &Config,
    describe_tags_for: Duration,
) -> Result<Plan, ResolveError> {
    let identity = identity::fetch(imds, config, describe_tags_for).await?;
    Ok(build(config, &identity)?)
}

pub fn build(config: &Config, identity: &Identity) -> Result<Plan, ConfigError> {
    let mut vars: TemplateVars = BTreeMap::from([
        ("service".into(), Some(identity.service.clone())),
        ("env".into(), Some(identity.env.clone())),
        ("env_tag".into(), Some(identity.env_tag.clone())),
        ("region".into(), Some(identity.region.clone())),
        ("instance_id".into(), Some(identity.instance_id.clone())),
        ("repository".into(), identity.repository.clone()),
    ]);
    for name in config.referenced_tags() {
        vars.insert(format!("tag:{name}"), identity.tags.get(&name).cloned());
    }
    let required = |key: &str, template: &str| render_required(key, template, &vars);

    let mut env = BTreeMap::new();
    for section in ["all", identity.env.as_str()] {
        for (name, template) in config.env.get(section).into_iter().flatten() {
            env.insert(
                name.clone(),
                required(&format!("env.{section}.{name}"), template)?,
            );
        }
    }
    env.insert("BOOTAGENT_SERVICE".into(), identity.service.clone());
    env.insert("BOOTAGENT_ENV".into(), identity.env.clone());
    let endpoint = match config.service.endpoints.get(&identity.env) {
        Some(template) => Some((format!("service.endpoints.{}", identity.env), template)),
        None => config
            .service
            .endpoint
            .as_ref()
            .map(|template| ("service.endpoint".to_string(), template)),
    };
    if let Some((key, template)) = endpoint {
        env.insert("BOOTAGENT_ENDPOINT".into(), required(&key, template)?);
    }
    let credentials_dir = (config.secrets.deliver.as_credentials())
        .then(|| config.paths.credentials_dir(&identity.service));
    if let (Some(dir), Manager::Exec) = (&credentials_dir, config.service.manager) {
        // Under systemd, systemd sets it to the unit's own copy.
        env.insert(
            crate::config::CREDENTIALS_DIRECTORY.into(),
            dir.display().to_string(),
        );
    }

    let unit = required("service.unit", &config.service.unit)?;
    if !is_unit_name(&unit) {
        return Err(ConfigError::Invalid(format!(
            "service.unit renders to {unit:?}, which is not a systemd service unit name"
        )));
    }
    let git_dir = PathBuf::from(required("git.dir", &config.git.dir)?);
    if !git_dir.is_absolute() {
        return Err(ConfigError::Invalid(format!(
            "git.dir renders to {}, which is not an absolute path",
            git_dir.display()
        )));
    }
    let drop_in = (config.service.manager == Manager::Systemd).then(|| config.paths.drop_in(&unit));
    let files = files::build(
        config,
        |key, template| Ok(required(key, template)?),
        &git_dir,
    )?;
    let command = config
        .service
        .command
        .iter()
        .enumerate()
        .map(|(i, arg)| required(&format!("service.command[{i}]"), arg))
        .collect::<Result<_, _>>()?;

    Ok(Plan {
        secrets: SecretsPlan {
            main: config
                .secrets
                .main
                .as_deref()
                .map(|template| required("secrets.main", template))
                .transpose()?
                .filter(|id| !id.is_empty()),
            version_stage: config.secrets.version_stage.clone(),
            version_id: config.secrets.version_id.clone(),
            vars: config
                .secrets
                .vars
                .iter()
                .map(|(name, template)| {
                    let rendered = required(&format!("secrets.vars.{name}"), template)?;
                    Ok((name.clone(), SecretRef::parse(&rendered)))
                })
                .collect::<Result<_, ConfigError>>()?,
            format: config.secrets.format,
            deliver: config.secrets.deliver,
            credentials_dir,
            on_change: config.secrets.on_change,
            files: files
                .iter()
                .filter_map(|file| match &file.source {
                    FileSource::Secret(reference) => Some((file.key.clone(), reference.clone())),
                    FileSource::Template(_) => None,
                })
                .collect(),
        },
        env,
        env_file: config.paths.env_file(&identity.service),
        status_file: config.paths.status_file(),
        lock_file: config.paths.lock_file(),
        git: GitPlan {
            remote: git_remote(config, &vars)?,
            mirrors: (config.git.mirrors.iter().enumerate())
                .map(|(i, url)| Ok(Remote::parse(&required(&format!("git.mirrors[{i}]"), url)?)))
                .collect::<Result<_, ConfigError>>()?,
            reference: required("git.ref", &config.git.reference)?,
            dir: git_dir,
            depth: config.git.depth,
            trust: Trust {
                verify: config.git.verify,
                signed: config.git.signed,
                keys: match config.git.verify {
                    Verify::Gpg => config.git.gpg_keyring.clone(),
                    _ => config.git.allowed_signers.clone(),
                },
                allow_rewind: config.git.allow_rewind,
            },
            seed: config.paths.seed_dir(),
        },
        service: ServicePlan {
            manager: config.service.manager,
            user: required("service.user", &config.service.user)?,
            unit,
            command,
            drop_in,
        },
        identity: identity.clone(),
        files,
    })
}

/// `git.url` rendered: the remote, or which tag it lacks.
fn git_remote(
    config: &Config,
    vars: &TemplateVars,
) -> Result<Result<Remote, NoRemote>, ConfigError> {
    Ok(render("git.url", &config.git.url, vars)?
        .map(|url| Remote::parse(&url))
        .ok_or_else(|| NoRemote {
            tag: config.identity.repository_tag.clone(),
        }))
}

/// `git.url` as `bootagent prepare` renders it for environment `env`, with what an image build
/// knows (`known`: `service`, `repository`, `region`, `tag:NAME`) and no instance.
pub fn seed_remote(
    config: &Config,
    known: &BTreeMap<String, String>,
    env: &str,
) -> Result<Result<Remote, NoRemote>, ConfigError> {
    git_remote(config, &image_vars(config, known, env))
}

/// `git.ref` as `bootagent prepare` renders it (see [`seed_remote`]).
pub fn seed_ref(
    config: &Config,
    known: &BTreeMap<String, String>,
    env: &str,
) -> Result<String, ConfigError> {
    let vars = image_vars(config, known, env);
    Ok(render_required("git.ref", &config.git.reference, &vars)?)
}

fn image_vars(config: &Config, known: &BTreeMap<String, String>, env: &str) -> TemplateVars {
    let names = ["service", "region", "instance_id", "repository"].map(String::from);
    let tags = config
        .referenced_tags()
        .into_iter()
        .map(|tag| format!("tag:{tag}"));
    let mut vars: TemplateVars = (names.into_iter().chain(tags))
        .map(|name| (name.clone(), known.get(&name).cloned()))
        .collect();
    vars.insert("env".into(), Some(env.to_string()));
    vars.insert("env_tag".into(), Some(env.to_string()));
    vars
}

fn is_unit_name(name: &str) -> bool {
    name.strip_suffix(".service").is_some_and(|stem| {
        !stem.is_empty()
            && stem
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":-_.@\\".contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(env: &str, env_tag: &str) -> Identity {
        Identity {
            service: "calendar".into(),
            env: env.into(),
            env_tag: env_tag.into(),
            repository: Some("git://git.example/calendar.git".into()),
            asg_group: None,
            tags: BTreeMap::new(),
            instance_id: "i-0abc".into(),
            region: "eu-west-1".into(),
        }
    }

    fn config(extra: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, extra).unwrap();
        crate::config::load(Some(&path)).unwrap()
    }

    #[test]
    fn defaults_follow_the_common_pattern() {
        let plan = build(&config(""), &identity("stage", "staging")).unwrap();
        assert_eq!(plan.secrets.main.as_deref(), Some("calendar_env_stage"));
        assert_eq!(plan.git.reference, "stage");
        assert_eq!(
            plan.git.remote.as_ref().map(ToString::to_string),
            Ok("git://git.example/calendar.git".to_string())
        );
        assert_eq!(plan.git.dir, PathBuf::from("/srv/calendar"));
        assert_eq!(plan.env_file, PathBuf::from("/run/bootagent/calendar.env"));
        assert_eq!(plan.service.unit, "calendar.service");
        assert_eq!(
            plan.service.drop_in,
            Some(PathBuf::from(
                "/run/systemd/system/calendar.service.d/50-bootagent.conf"
            ))
        );
        assert_eq!(plan.env["BOOTAGENT_ENV"], "stage");
    }

    #[test]
    fn a_missing_repository_is_no_remote_and_prints_as_no_url() {
        let mut id = identity("prod", "production");
        id.repository = None;
        let plan = build(&config(""), &id).unwrap();
        assert_eq!(
            plan.git.remote,
            Err(NoRemote {
                tag: "Repository".into()
            })
        );
        assert_eq!(
            serde_json::to_value(&plan).unwrap()["git"]["url"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn per_environment_variables_override_all() {
        let cfg = config(
            "[env.all]\nLOG_LEVEL = \"info\"\nPUBLIC_URL = \"https://{env}.domain.com/{service}\"\n\
             [env.test]\nLOG_LEVEL = \"debug\"\n",
        );
        let test = build(&cfg, &identity("test", "dev")).unwrap();
        assert_eq!(test.env["LOG_LEVEL"], "debug");
        assert_eq!(test.env["PUBLIC_URL"], "https://test.domain.com/calendar");
        let prod = build(&cfg, &identity("prod", "prod")).unwrap();
        assert_eq!(prod.env["LOG_LEVEL"], "info");
    }

    #[test]
    fn the_endpoint_follows_its_pattern_with_per_environment_overrides() {
        let cfg = config(
            "[service]\nendpoint = \"https://{env}.domain.com/{service}\"\n\
             [service.endpoints]\nprod = \"https://domain.com/{service}\"\n",
        );
        let stage = build(&cfg, &identity("stage", "staging")).unwrap();
        assert_eq!(
            stage.env["BOOTAGENT_ENDPOINT"],
            "https://stage.domain.com/calendar"
        );
        let prod = build(&cfg, &identity("prod", "production")).unwrap();
        assert_eq!(
            prod.env["BOOTAGENT_ENDPOINT"],
            "https://domain.com/calendar"
        );
        let none = build(&config(""), &identity("prod", "prod")).unwrap();
        assert!(!none.env.contains_key("BOOTAGENT_ENDPOINT"));
    }

    #[test]
    fn long_environment_name_layouts_work() {
        let cfg = config(
            "[secrets]\nmain = \"\"\n[secrets.vars]\n\
             DATABASE_URL = \"taskmanager/{env_tag}/database-url\"\n\
             JWT_SECRET_KEY = \"taskmanager/{env_tag}/app#jwt\"\n",
        );
        let plan = build(&cfg, &identity("prod", "production")).unwrap();
        assert_eq!(plan.secrets.main, None);
        assert_eq!(
            plan.secrets.vars["DATABASE_URL"],
            SecretRef {
                id: "taskmanager/production/database-url".into(),
                field: None
            }
        );
        assert_eq!(
            plan.secrets.vars["JWT_SECRET_KEY"],
            SecretRef {
                id: "taskmanager/production/app".into(),
                field: Some("jwt".into())
            }
        );
    }

    #[test]
    fn unit_template_must_render_to_a_service_unit() {
        let cfg = config("[service]\nunit = \"{service}\"\n");
        assert!(build(&cfg, &identity("prod", "prod")).is_err());
    }
}
