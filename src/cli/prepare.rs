use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;

use crate::config::{Config, Credential};
use crate::git::{self, seed};
use crate::plan::fetch_depth;
use crate::Error;

/// An image build knows no instance: the values git.url and git.ref are rendered with are
/// given here, as the instance's tags would give them at boot.
#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// The repository URL, as the Repository tag gives it at boot ({repository})
    #[arg(long, value_name = "URL")]
    repository: Option<String>,
    /// The service ({service}), as its tag gives it at boot
    #[arg(long, value_name = "NAME")]
    service: Option<String>,
    /// The region ({region}), when git.url or git.ref uses it
    #[arg(long, value_name = "REGION")]
    region: Option<String>,
    /// A tag git.url or git.ref reads ({tag:NAME})
    #[arg(long = "tag", value_name = "NAME=VALUE", value_parser = tag)]
    tags: Vec<(String, String)>,
    /// Seed the ref git.ref names in this environment [default: every environment]
    #[arg(long = "env", value_name = "ENV", conflicts_with = "refs")]
    envs: Vec<String>,
    /// Seed these refs (a branch, a tag or a commit id) instead of git.ref's
    #[arg(long = "ref", value_name = "REF")]
    refs: Vec<String>,
    /// The HTTP token for the image build, when git.token comes from a secret
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// The SSH deploy key for the image build, when git.ssh_key comes from a secret
    #[arg(long, value_name = "PATH")]
    ssh_key: Option<PathBuf>,
}

fn tag(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))
}

impl PrepareArgs {
    pub fn run(self, config: &Config) -> Result<(), Error> {
        let mut known = BTreeMap::new();
        let given = [
            ("service", &self.service),
            ("repository", &self.repository),
            ("region", &self.region),
        ];
        for (name, value) in given {
            if let Some(value) = value {
                known.insert(name.to_string(), value.clone());
            }
        }
        for (name, value) in &self.tags {
            known.insert(format!("tag:{name}"), value.clone());
        }
        let envs = match self.envs.is_empty() {
            true => config.environments.keys().cloned().collect(),
            false => self.envs.clone(),
        };
        let mut remote: Option<git::Remote> = None;
        let mut references = self.refs.clone();
        for env in &envs {
            let env =
                crate::plan::identity::canonical_environment(config, env).ok_or_else(|| {
                    Error::Usage(format!(
                        "--env {env} names no known environment; known: {}",
                        crate::plan::identity::known_environments(config)
                    ))
                })?;
            let url = crate::plan::seed_remote(config, &known, env)
                .map_err(unrendered)?
                .map_err(|_| {
                    Error::Usage(
                        "git.url needs the repository: give it with --repository URL".into(),
                    )
                })?;
            match &remote {
                Some(first) if first.url() != url.url() => {
                    return Err(Error::Usage(format!(
                        "git.url names {first} and {url} in different environments, and a seed \
                         holds one repository: give --env"
                    )))
                }
                _ => remote = Some(url),
            }
            if self.refs.is_empty() {
                let reference = crate::plan::seed_ref(config, &known, env).map_err(unrendered)?;
                if !references.contains(&reference) {
                    references.push(reference);
                }
            }
        }
        let remote = remote.ok_or_else(|| {
            Error::Usage("the config names no environment ([environments])".into())
        })?;
        let mut settings = config.git.clone();
        if let Some(path) = &self.token_file {
            settings.token = Some(Credential::File(path.clone()));
        }
        if let Some(path) = &self.ssh_key {
            settings.ssh_key = Some(Credential::File(path.clone()));
        }
        if settings.credentials_in_secrets() {
            return Err(Error::Usage(
                "git.token or git.ssh_key comes from a secret, which prepare does not read: give \
                 the credential for the image build with --token-file or --ssh-key"
                    .into(),
            ));
        }
        let mut none = Default::default();
        let credentials = git::Credentials::new(&settings, &config.paths, &mut none)?;
        let depth = fetch_depth(&remote, config.git.depth, config.git.allow_rewind);
        let dir = config.paths.seed_dir();
        let state_dir = &config.paths.state_dir;
        std::fs::create_dir_all(state_dir)
            .map_err(|e| Error::io(format!("failed to create {}", state_dir.display()), e))?;
        let record = super::runtime()?.block_on(async {
            // Another prepare of the same state dir would clear this one's staging as a leftover
            // and swap its own seed in at the same moment: the second waits for the first.
            let _lock = crate::boot::seed_lock(&config.paths, config.git.deadline).await?;
            // The fetch's own time starts once the lock is held: the wait is not part of it.
            let limits =
                git::Limits::new(config.git.deadline, "git.deadline", git::Cancel::default());
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || {
                seed::prepare(&remote, &references, depth, &credentials, &limits, &dir)
            })
            .await
            .map_err(|e| Error::io("the git fetch failed", std::io::Error::other(e)))
        })??;
        let history = match record.depth {
            Some(depth) => format!("{depth} commit(s) of history"),
            None => "the whole history".to_string(),
        };
        println!(
            "seed of {} in {}, {history}, taken {}:",
            record.url,
            dir.display(),
            record.taken_at
        );
        for (reference, commit) in &record.refs {
            println!("  {reference}  {commit}");
        }
        Ok(())
    }
}

fn unrendered(error: crate::config::ConfigError) -> Error {
    Error::Usage(format!(
        "{error}; an image build has no instance: give the values with --service, --repository, \
         --region or --tag NAME=VALUE, or the refs with --ref"
    ))
}
