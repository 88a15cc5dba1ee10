//! Who this instance is: service and environment from instance tags, validated strictly because a
//! tag value ends up in paths, unit names and secret ids.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::aws::imds::{round_to_ms, ImdsClient, ImdsError};
use crate::config::names::{is_valid_name, MAX_NAME_LEN};
use crate::config::{Config, IdentityConfig};
use crate::retry::{self, Look, Unready};

const TAG_POLL_INTERVAL: Duration = Duration::from_secs(1);
pub const ASG_GROUP_TAG: &str = "aws:autoscaling:groupName";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub service: String,
    /// Canonical environment name (`test`, `stage`, `prod` by default).
    pub env: String,
    /// The environment tag as written on the instance (`production`).
    pub env_tag: String,
    /// Written (status.json, `plan`) without credentials: the tag may carry a token.
    #[serde(serialize_with = "crate::remote::serialize_redacted")]
    pub repository: Option<String>,
    /// The Auto Scaling group, from the tag Auto Scaling puts on its instances.
    pub asg_group: Option<String>,
    /// Other instance tags the config's templates read (`{tag:NAME}`), those present.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub instance_id: String,
    pub region: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "instance tag {tag} is missing (waited {waited} for it to appear); tag the instance \
         (launch template TagSpecifications) with {tag}=<value>, or set identity.{setting} to the \
         tag your instances carry"
    )]
    MissingTag {
        tag: String,
        setting: &'static str,
        waited: String,
    },
    #[error(
        "instance tag {tag}={value:?} is not a valid name: use 1 to 64 lower-case letters, digits, \
         '-' and '_', starting with a letter or digit"
    )]
    InvalidTag { tag: String, value: String },
    #[error(
        "instance tag {tag}={value:?} names no known environment; known: {known}; fix the tag or \
         add the value under [environments] in the config"
    )]
    UnknownEnvironment {
        tag: String,
        value: String,
        known: String,
    },
    #[error(
        "instance tag {tag}={value:?}, used in a template, must be 1 to 128 letters, digits, '.', \
         '_' or '-', not starting with '.' or '-' and without '..'"
    )]
    InvalidTemplateTag { tag: String, value: String },
    #[error("instance tag {tag} holds a value with whitespace or control characters, which is not a repository URL")]
    InvalidRepository { tag: String },
    #[error("instance metadata returned an implausible {what} {value:?}")]
    InvalidMetadata { what: &'static str, value: String },
}

/// The instance metadata client the identity settings ask for.
pub fn imds_client(settings: &IdentityConfig) -> ImdsClient {
    ImdsClient::from_env(settings.imds_deadline)
}

/// What reading the identity can fail on: instance metadata, the EC2 API (for tags when
/// metadata has none), or the tags themselves.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Imds(#[from] ImdsError),
    #[error(transparent)]
    Ec2(#[from] crate::aws::ec2::Ec2Error),
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// Reads instance id, region and the identity tags from IMDS, waiting up to
/// `identity.tag_wait` for tags that lag a fresh launch.
///
/// `describe_tags_for` bounds the ec2:DescribeTags fallback, retries included: a boot gives it
/// what its deadline leaves, since a fleet booting at once shares DescribeTags' bucket.
pub async fn fetch(
    imds: &ImdsClient,
    config: &Config,
    describe_tags_for: Duration,
) -> Result<Identity, FetchError> {
    let instance_id = imds.get_required("meta-data/instance-id").await?;
    let region = region(imds).await?;
    let ids = &config.identity;
    let referenced = config.referenced_tags();
    let mut keys = vec![
        ids.service_tag.as_str(),
        ids.environment_tag.as_str(),
        ids.repository_tag.as_str(),
        ASG_GROUP_TAG,
    ];
    keys.extend(referenced.iter().map(String::as_str));
    let start = Instant::now();
    let found = retry::poll(TAG_POLL_INTERVAL, ids.tag_wait, || async {
        let tags = match read_tags(
            imds,
            config,
            &region,
            &instance_id,
            &keys,
            describe_tags_for,
        )
        .await
        {
            Ok(tags) => tags,
            Err(e) => return Look::Failed(e),
        };
        match resolve(config, &tags, &instance_id, &region, start.elapsed()) {
            Ok(identity) => Look::Ready(identity),
            Err(IdentityError::MissingTag { tag, setting, .. }) => {
                tracing::info!(%tag, "instance tag not present yet, waiting");
                Look::Pending((tag, setting))
            }
            Err(e) => Look::Failed(e.into()),
        }
    })
    .await;
    found.map_err(|unready| match unready {
        Unready::Failed(e) => e,
        Unready::TimedOut((tag, setting)) => IdentityError::MissingTag {
            tag,
            setting,
            waited: humantime::format_duration(round_to_ms(start.elapsed())).to_string(),
        }
        .into(),
    })
}

/// The instance's tags named in `keys`, from instance metadata or, when tags are disabled there
/// and `identity.describe_tags_fallback` allows it, from ec2:DescribeTags.
pub async fn read_tags(
    imds: &ImdsClient,
    config: &Config,
    region: &str,
    instance_id: &str,
    keys: &[&str],
    describe_tags_for: Duration,
) -> Result<BTreeMap<String, String>, FetchError> {
    match imds.tags(keys).await {
        Err(e) if e.is_tags_disabled() && config.identity.describe_tags_fallback => {
            tracing::info!(
                "tags in instance metadata are disabled: reading them with ec2:DescribeTags"
            );
            let mut tags =
                crate::aws::ec2::instance_tags(region, instance_id, describe_tags_for).await?;
            tags.retain(|key, _| keys.contains(&key.as_str()));
            Ok(tags)
        }
        other => Ok(other?),
    }
}

/// AWS_REGION wins, as it does for every AWS SDK; IMDS knows the instance's own region.
pub async fn region(imds: &ImdsClient) -> Result<String, ImdsError> {
    match std::env::var("AWS_REGION") {
        Ok(region) if !region.is_empty() => Ok(region),
        _ => imds.get_required("meta-data/placement/region").await,
    }
}

/// Pure part of [`fetch`]: tags and metadata to a validated identity.
pub fn resolve(
    config: &Config,
    tags: &BTreeMap<String, String>,
    instance_id: &str,
    region: &str,
    waited: Duration,
) -> Result<Identity, IdentityError> {
    let ids = &config.identity;
    let required = |tag: &str, setting: &'static str| {
        tags.get(tag).ok_or_else(|| IdentityError::MissingTag {
            tag: tag.to_string(),
            setting,
            waited: humantime::format_duration(round_to_ms(waited)).to_string(),
        })
    };
    let service = required(&ids.service_tag, "service_tag")?;
    let env_tag = required(&ids.environment_tag, "environment_tag")?;
    for (tag, value) in [(&ids.service_tag, service), (&ids.environment_tag, env_tag)] {
        if !is_valid_name(value) {
            return Err(IdentityError::InvalidTag {
                tag: tag.clone(),
                value: shorten(value),
            });
        }
    }
    let env = canonical_environment(config, env_tag)
        .ok_or_else(|| unknown_environment(config, env_tag))?;
    let repository = tags.get(&ids.repository_tag).cloned();
    if let Some(url) = &repository {
        if url.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(IdentityError::InvalidRepository {
                tag: ids.repository_tag.clone(),
            });
        }
    }
    for (what, value) in [("instance id", instance_id), ("region", region)] {
        if !is_valid_name(value) {
            return Err(IdentityError::InvalidMetadata {
                what,
                value: shorten(value),
            });
        }
    }
    let mut template_tags = BTreeMap::new();
    for name in config.referenced_tags() {
        if let Some(value) = tags.get(&name) {
            if !is_safe_tag_value(value) {
                return Err(IdentityError::InvalidTemplateTag {
                    tag: name,
                    value: shorten(value),
                });
            }
            template_tags.insert(name, value.clone());
        }
    }
    Ok(Identity {
        service: service.clone(),
        env: env.to_string(),
        env_tag: env_tag.clone(),
        repository,
        asg_group: tags.get(ASG_GROUP_TAG).cloned(),
        tags: template_tags,
        instance_id: instance_id.to_string(),
        region: region.to_string(),
    })
}

impl Identity {
    /// The same instance seen as belonging to another environment (`stage`, or an alias such as
    /// `production`), for comparing environments.
    pub fn in_environment(&self, config: &Config, name: &str) -> Result<Identity, IdentityError> {
        let env =
            canonical_environment(config, name).ok_or_else(|| unknown_environment(config, name))?;
        Ok(Identity {
            env: env.to_string(),
            env_tag: name.to_string(),
            ..self.clone()
        })
    }
}

fn unknown_environment(config: &Config, value: &str) -> IdentityError {
    IdentityError::UnknownEnvironment {
        tag: config.identity.environment_tag.clone(),
        value: shorten(value),
        known: known_environments(config),
    }
}

/// Each environment with its aliases: `prod (prod, production), …`.
pub fn known_environments(config: &Config) -> String {
    config
        .environments
        .iter()
        .map(|(name, aliases)| format!("{name} ({})", aliases.join(", ")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Safe in a ref, a path component, a unit name: what `{tag:NAME}` may carry.
fn is_safe_tag_value(value: &str) -> bool {
    (1..=128).contains(&value.len())
        && !value.starts_with(['.', '-'])
        && !value.contains("..")
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

pub fn canonical_environment<'a>(config: &'a Config, tag_value: &str) -> Option<&'a str> {
    config
        .environments
        .iter()
        .find(|(name, aliases)| *name == tag_value || aliases.iter().any(|a| a == tag_value))
        .map(|(name, _)| name.as_str())
}

/// Untrusted text quoted in a message: bounded so a huge tag cannot flood the journal.
fn shorten(value: &str) -> String {
    match value.char_indices().nth(MAX_NAME_LEN) {
        Some((cut, _)) => format!("{}…", &value[..cut]),
        None => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        crate::config::load(Some(std::path::Path::new("/dev/null"))).unwrap()
    }

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn resolve_tags(pairs: &[(&str, &str)]) -> Result<Identity, IdentityError> {
        resolve(
            &config(),
            &tags(pairs),
            "i-0abc",
            "eu-west-1",
            Duration::from_secs(30),
        )
    }

    #[test]
    fn aliases_map_to_canonical_environment() {
        for (tag, canonical) in [
            ("production", "prod"),
            ("staging", "stage"),
            ("dev", "test"),
            ("test", "test"),
        ] {
            let id = resolve_tags(&[("Service", "calendar"), ("Environment", tag)]).unwrap();
            assert_eq!((id.env.as_str(), id.env_tag.as_str()), (canonical, tag));
        }
    }

    #[test]
    fn path_traversal_in_service_tag_is_refused() {
        let err = resolve_tags(&[("Service", "../../etc"), ("Environment", "prod")]).unwrap_err();
        assert!(matches!(err, IdentityError::InvalidTag { .. }), "{err}");
        assert!(err.to_string().contains("\"../../etc\""), "{err}");
    }

    #[test]
    fn unknown_environment_lists_known_ones() {
        let err = resolve_tags(&[("Service", "calendar"), ("Environment", "qa")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("Environment=\"qa\""), "{err}");
        assert!(err.contains("prod (prod, production)"), "{err}");
    }

    #[test]
    fn missing_tag_names_tag_and_setting() {
        let err = resolve_tags(&[("Environment", "prod")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("instance tag Service is missing"), "{err}");
        assert!(err.contains("identity.service_tag"), "{err}");
    }

    #[test]
    fn repository_tag_is_optional_but_checked() {
        let id = resolve_tags(&[("Service", "calendar"), ("Environment", "prod")]).unwrap();
        assert_eq!(id.repository, None);
        let err = resolve_tags(&[
            ("Service", "calendar"),
            ("Environment", "prod"),
            ("Repository", "git://h/x y"),
        ])
        .unwrap_err();
        assert!(matches!(err, IdentityError::InvalidRepository { .. }));
    }
}
