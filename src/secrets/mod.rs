//! Secrets Manager: the main secret, a JSON object, becomes one variable per key. This module
//! reads what a plan names; `client` makes the calls (bootagent's retries over the SDK's),
//! `error` says what a failed call means, and `payload` turns a secret's text into variables.

mod client;
mod error;
pub mod fallback;
mod payload;
pub mod snapshot;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::plan::SecretsPlan;
use client::{current_version, fetch, Version};
use payload::json_field;

pub use client::{client, Client, Fetched};
pub use error::SecretsError;
pub use payload::{parse_object, SecretVars};

/// A variable and where it came from, so that a name set twice can be reported by both sources.
#[derive(Debug)]
pub struct SecretVar {
    pub value: Zeroizing<String>,
    pub source: String,
}

#[derive(Debug, Default)]
pub struct LoadedSecrets {
    /// Every secret read, with the version that was used.
    pub versions: Vec<SecretVersion>,
    pub vars: BTreeMap<String, SecretVar>,
    /// What each `[[files]]` entry with a `secret` holds, by entry (`files[N]`): no variable,
    /// so it reaches neither the env file nor the service's environment.
    pub files: BTreeMap<String, Zeroizing<String>>,
}

impl LoadedSecrets {
    fn insert(
        &mut self,
        name: String,
        value: Zeroizing<String>,
        source: String,
    ) -> Result<(), SecretsError> {
        if let Some(existing) = self.vars.get(&name) {
            return Err(SecretsError::Conflict {
                name,
                first: existing.source.clone(),
                second: source,
            });
        }
        self.vars.insert(name, SecretVar { value, source });
        Ok(())
    }
}

/// What status.json records of a secret: which version, never the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretVersion {
    pub id: String,
    pub version_id: Option<String>,
}

/// Every secret a plan names, each once, as one region gave it (or a snapshot kept it).
pub struct Read {
    pub region: String,
    pub secrets: BTreeMap<String, Fetched>,
}

impl Read {
    /// What status.json records: which version of each, never a value.
    pub fn versions(&self) -> Vec<SecretVersion> {
        (self.secrets.iter())
            .map(|(id, secret)| SecretVersion {
                id: id.clone(),
                version_id: secret.version_id.clone(),
            })
            .collect()
    }
}

/// Each secret the plan reads, once, with the version asked for: the main secret's (which may
/// be pinned) wins over the stage the others are read at.
fn wanted(plan: &SecretsPlan) -> BTreeMap<&str, Version<'_>> {
    let mut wanted = BTreeMap::new();
    if let Some(id) = &plan.main {
        let version = match &plan.version_id {
            Some(version_id) => Version::Id(version_id),
            None => Version::Stage(&plan.version_stage),
        };
        wanted.insert(id.as_str(), version);
    }
    let others = (plan.vars.values()).chain(plan.files.values());
    for reference in others {
        let stage = Version::Stage(&plan.version_stage);
        wanted.entry(reference.id.as_str()).or_insert(stage);
    }
    wanted
}

/// Reads every secret the plan names from `region`, each once.
pub async fn read(client: &Client, region: &str, plan: &SecretsPlan) -> Result<Read, SecretsError> {
    let mut secrets = BTreeMap::new();
    for (id, version) in wanted(plan) {
        let secret = fetch(client, region, id, version).await?;
        secrets.insert(id.to_string(), secret);
    }
    Ok(Read {
        region: region.to_string(),
        secrets,
    })
}

/// Why `read` cannot stand for what `plan` reads now (it lacks a secret, or holds another
/// version of one), or `None` when it can.
pub fn mismatch(read: &Read, plan: &SecretsPlan) -> Option<String> {
    wanted(plan)
        .into_iter()
        .find_map(|(id, version)| match read.secrets.get(id) {
            None => Some(format!("no secret {id}")),
            Some(kept) if kept.selector != version.selector() => Some(format!(
                "secret {id} {}, not {}",
                kept.selector,
                version.selector()
            )),
            Some(_) => None,
        })
}

/// The variables and file texts a read gives: the main secret's keys, then each of
/// `secrets.vars`; then the texts `[[files]]` take as they are.
pub fn assemble(read: &Read, plan: &SecretsPlan) -> Result<LoadedSecrets, SecretsError> {
    let mut loaded = LoadedSecrets::default();
    let text_of = |id: &str| match read.secrets.get(id) {
        Some(secret) => Ok(&secret.text),
        None => Err(SecretsError::MissingField {
            id: id.to_string(),
            field: String::new(),
        }),
    };
    if let Some(id) = &plan.main {
        for (name, value) in parse_object(id, text_of(id)?)? {
            loaded.insert(name, value, format!("secret {id}"))?;
        }
    }
    for (name, reference) in &plan.vars {
        let (id, text) = (&reference.id, text_of(&reference.id)?);
        let (value, source) = match &reference.field {
            None => (text.clone(), format!("secrets.vars ({id})")),
            Some(field) => (
                json_field(id, text, field)?,
                format!("secrets.vars ({id}#{field})"),
            ),
        };
        loaded.insert(name.clone(), value, source)?;
    }
    for (key, reference) in &plan.files {
        let (id, text) = (&reference.id, text_of(&reference.id)?);
        let value = match &reference.field {
            None => text.clone(),
            Some(field) => json_field(id, text, field)?,
        };
        loaded.files.insert(key.clone(), value);
    }
    loaded.versions = read.versions();
    Ok(loaded)
}

/// Reads every secret the plan names, each once, and turns them into variables.
pub async fn load(
    client: &Client,
    region: &str,
    plan: &SecretsPlan,
) -> Result<LoadedSecrets, SecretsError> {
    assemble(&read(client, region, plan).await?, plan)
}

/// The secrets whose version in use (`recorded`, from status.json) is no longer the one the plan
/// would read now, with that version, plus any the plan reads that were not read at all.
pub async fn changed(
    client: &Client,
    region: &str,
    plan: &SecretsPlan,
    recorded: &[SecretVersion],
) -> Result<Vec<SecretVersion>, SecretsError> {
    let wanted: BTreeSet<&str> = plan
        .main
        .iter()
        .chain(plan.vars.values().map(|r| &r.id))
        .chain(plan.files.values().map(|r| &r.id))
        .map(String::as_str)
        .collect();
    // A secret the plan names and the last boot did not use: its version is not asked for.
    let mut changed: Vec<SecretVersion> = wanted
        .iter()
        .filter(|id| !recorded.iter().any(|v| v.id == **id))
        .map(|id| SecretVersion {
            id: id.to_string(),
            version_id: None,
        })
        .collect();
    for version in recorded {
        let pinned = plan.version_id.is_some() && plan.main.as_deref() == Some(version.id.as_str());
        if pinned || !wanted.contains(version.id.as_str()) {
            continue;
        }
        let current = current_version(client, region, &version.id, &plan.version_stage).await?;
        if current != version.version_id {
            changed.push(SecretVersion {
                id: version.id.clone(),
                version_id: current,
            });
        }
    }
    Ok(changed)
}

/// The ids of `versions`, for messages: `app_env_prod, shared_db`.
pub fn ids(versions: &[SecretVersion]) -> String {
    let ids: Vec<&str> = versions.iter().map(|v| v.id.as_str()).collect();
    ids.join(", ")
}

#[cfg(test)]
mod tests {
    //! The client's calls answered in process, as Secrets Manager answers them.

    use std::time::Duration;

    use super::client::sdk;
    use super::*;
    use crate::config::EnvFileFormat;
    use crate::testing::{SdkAnswers, FAST};

    const CANARY: &str = "canary-7f3a9";

    const FOUND: &str = r#"{"ARN": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:calendar_env_prod-AbCdEf",
        "Name": "calendar_env_prod", "VersionId": "v-1", "VersionStages": ["AWSCURRENT"],
        "SecretString": "{\"PORT\": \"8080\"}"}"#;

    fn plan() -> SecretsPlan {
        SecretsPlan {
            main: Some("calendar_env_prod".into()),
            version_stage: "AWSCURRENT".into(),
            version_id: None,
            vars: BTreeMap::new(),
            format: EnvFileFormat::Systemd,
            deliver: crate::config::Deliver::Env,
            credentials_dir: None,
            on_change: crate::config::OnChange::Restart,
            files: BTreeMap::new(),
        }
    }

    fn error(code: &str, message: &str) -> String {
        format!(r#"{{"__type": "{code}", "Message": "{message}"}}"#)
    }

    /// bootagent's retries over the answers, for up to a second.
    async fn answered_client(answers: &SdkAnswers) -> Client {
        let sdk = sdk(&answers.sdk_config().await);
        Client::with_sdk(sdk, FAST, Duration::from_secs(1))
    }

    async fn load_answered(answers: &SdkAnswers) -> Result<LoadedSecrets, SecretsError> {
        load(&answered_client(answers).await, "eu-west-1", &plan()).await
    }

    /// The error's message and the exit code `boot` would end with, and the calls made.
    async fn failed(answers: &[(u16, &str)]) -> (String, u8, Vec<String>) {
        let answers = SdkAnswers::new(answers);
        let err = load_answered(&answers).await.unwrap_err();
        let message = err.to_string();
        (
            message,
            crate::Error::from(err).exit_code(),
            answers.requests(),
        )
    }

    #[tokio::test]
    async fn a_found_secret_becomes_variables_and_its_version_is_kept() {
        let answers = SdkAnswers::new(&[(200, FOUND)]);
        let loaded = load_answered(&answers).await.unwrap();
        assert_eq!(loaded.vars["PORT"].value.as_str(), "8080");
        assert_eq!(
            loaded.versions,
            [SecretVersion {
                id: "calendar_env_prod".into(),
                version_id: Some("v-1".into())
            }]
        );
        assert_eq!(answers.requests(), ["secretsmanager.GetSecretValue"]);
    }

    #[tokio::test]
    async fn a_missing_secret_names_itself_and_is_not_retried() {
        let not_found = error(
            "ResourceNotFoundException",
            "Secrets Manager can't find the specified secret.",
        );
        let (message, code, calls) = failed(&[(400, &not_found)]).await;
        assert_eq!(code, crate::exit::SECRET_UNAVAILABLE);
        assert!(
            message.contains("secret calendar_env_prod was not found in region eu-west-1"),
            "{message}"
        );
        assert_eq!(calls.len(), 1);
    }

    #[tokio::test]
    async fn a_denial_names_the_permission_to_grant() {
        let denied = error(
            "AccessDeniedException",
            "User: arn:aws:sts::123456789012:assumed-role/app is not authorized",
        );
        let (message, code, _) = failed(&[(400, &denied)]).await;
        assert_eq!(code, crate::exit::SECRET_UNAVAILABLE);
        assert!(
            message.contains("secretsmanager:GetSecretValue"),
            "{message}"
        );
        assert!(message.contains("assumed-role/app"), "{message}");
        // A denial that reaches the SDK as a bare 403, without a code.
        let (message, _, _) = failed(&[(403, "")]).await;
        assert!(message.contains("was denied"), "{message}");
    }

    #[tokio::test]
    async fn a_key_the_role_may_not_use_names_kms_decrypt() {
        let kms = error("DecryptionFailure", "Access to KMS is not allowed");
        let (message, code, _) = failed(&[(400, &kms)]).await;
        assert_eq!(code, crate::exit::SECRET_UNAVAILABLE);
        assert!(message.contains("kms:Decrypt"), "{message}");
    }

    #[tokio::test]
    async fn a_refusal_without_a_known_meaning_is_shown_as_aws_says_it() {
        let deleted = error(
            "InvalidRequestException",
            "You can't perform this operation on the secret because it was marked for deletion.",
        );
        let (message, code, calls) = failed(&[(400, &deleted)]).await;
        assert_eq!(code, crate::exit::SECRET_UNAVAILABLE);
        assert!(
            message.contains("InvalidRequestException: You can't perform this operation"),
            "{message}"
        );
        assert_eq!(calls.len(), 1);
    }

    #[tokio::test]
    async fn throttling_and_server_errors_are_retried_then_transient() {
        let throttled = error("ThrottlingException", "Rate exceeded");
        let (message, code, calls) = failed(&[(400, &throttled)]).await;
        assert_eq!(code, crate::exit::TRANSIENT);
        assert!(
            message.contains("ThrottlingException: Rate exceeded"),
            "{message}"
        );
        // bootagent's own retries, for as long as the client's time allows: not three.
        let attempts = format!("({} attempts over ", calls.len());
        assert!(message.contains(&attempts), "{message}");
        assert!(calls.len() > 3, "{calls:?}");
        let internal = error(
            "InternalServiceError",
            "An error occurred on the server side.",
        );
        let (message, code, _) = failed(&[(500, &internal)]).await;
        assert_eq!(code, crate::exit::TRANSIENT);
        assert!(message.contains("boot again later"), "{message}");
    }

    #[tokio::test]
    async fn a_throttled_call_that_then_passes_loads_the_secret() {
        let throttled = error("ThrottlingException", "Rate exceeded");
        let answers = SdkAnswers::new(&[(400, &throttled), (200, FOUND)]);
        let loaded = load_answered(&answers).await.unwrap();
        assert_eq!(loaded.vars["PORT"].value.as_str(), "8080");
        assert_eq!(answers.requests().len(), 2);
    }

    #[tokio::test]
    async fn an_answer_past_a_mebibyte_is_cut_off_and_named() {
        let answers = SdkAnswers::new(&[(200, "")]).with_generated_body(500 << 20);
        let err = load_answered(&answers).await.unwrap_err();
        assert!(
            err.to_string().starts_with(
                "Secrets Manager's answer for secret calendar_env_prod in region eu-west-1 \
                 exceeded 1 MiB (a secret holds at most 64 KiB) and was cut off"
            ),
            "{err}"
        );
        assert!(!err.is_transient(), "another try would read as much again");
        assert_eq!(answers.requests().len(), 1);
        let read = answers.generated_read();
        assert!(
            read <= (crate::aws::MAX_ANSWER_BYTES + 64 * 1024) as u64,
            "read {read} bytes of a 500 MiB answer"
        );
    }

    #[tokio::test]
    async fn a_throttled_call_waits_as_long_as_the_server_asked() {
        let throttled = error("ThrottlingException", "Rate exceeded");
        async fn client(answers: &SdkAnswers, within: Duration) -> Client {
            let patient = crate::retry::Backoff {
                base: Duration::from_millis(1),
                cap: Duration::from_secs(10),
            };
            let sdk = sdk(&answers.sdk_config().await);
            Client::with_sdk(sdk, patient, within)
        }
        // AWS's header, in milliseconds.
        let answers = SdkAnswers::new(&[(400, &throttled), (200, FOUND)])
            .with_header("x-amz-retry-after", "300");
        let started = std::time::Instant::now();
        let client_of = client(&answers, Duration::from_secs(5)).await;
        load(&client_of, "eu-west-1", &plan()).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(answers.requests().len(), 2);
        // HTTP's, in seconds: a wait the time left cannot hold ends the tries at once.
        let answers = SdkAnswers::new(&[(503, &throttled)]).with_header("retry-after", "3");
        let client_of = client(&answers, Duration::from_secs(1)).await;
        let err = load(&client_of, "eu-west-1", &plan()).await.unwrap_err();
        assert!(err.to_string().contains("(1 attempt over "), "{err}");
        assert_eq!(answers.requests().len(), 1);
    }

    #[tokio::test]
    async fn an_answer_that_does_not_parse_is_reported_by_status_only() {
        let garbled = format!("{{\"SecretString\": \"{CANARY}");
        let (message, code, _) = failed(&[(200, &garbled)]).await;
        assert_eq!(code, crate::exit::TRANSIENT, "{message}");
        assert!(
            message.contains("unreadable response with HTTP 200"),
            "{message}"
        );
        assert!(!message.contains(CANARY), "{message}");
    }

    #[test]
    fn a_read_stands_for_a_plan_only_with_every_secret_at_the_version_asked() {
        let kept = |selector: &str| Fetched {
            selector: selector.into(),
            version_id: Some("v-1".into()),
            text: Zeroizing::new(r#"{"PORT": "8080"}"#.into()),
        };
        let read = Read {
            region: "eu-west-1".into(),
            secrets: BTreeMap::from([("calendar_env_prod".into(), kept("stage:AWSCURRENT"))]),
        };
        assert_eq!(mismatch(&read, &plan()), None);
        assert_eq!(
            assemble(&read, &plan()).unwrap().vars["PORT"]
                .value
                .as_str(),
            "8080"
        );
        // Pinned since: the snapshot's AWSCURRENT is not that version.
        let pinned = SecretsPlan {
            version_id: Some("v-9".into()),
            ..plan()
        };
        assert_eq!(
            mismatch(&read, &pinned).as_deref(),
            Some("secret calendar_env_prod stage:AWSCURRENT, not id:v-9")
        );
        // A secret added to secrets.vars since.
        let mut more = plan();
        let reference = crate::plan::SecretRef {
            id: "shared_db".into(),
            field: None,
        };
        more.vars.insert("DB".into(), reference);
        assert_eq!(
            mismatch(&read, &more).as_deref(),
            Some("no secret shared_db")
        );
    }

    #[tokio::test]
    async fn describe_finds_the_version_that_carries_the_stage() {
        let described = r#"{"Name": "calendar_env_prod", "VersionIdsToStages":
            {"v-1": ["AWSPREVIOUS"], "v-2": ["AWSCURRENT", "AWSPENDING"]}}"#;
        let answers = SdkAnswers::new(&[(200, described)]);
        let client = answered_client(&answers).await;
        let recorded = [SecretVersion {
            id: "calendar_env_prod".into(),
            version_id: Some("v-1".into()),
        }];
        let changed = changed(&client, "eu-west-1", &plan(), &recorded)
            .await
            .unwrap();
        let current = SecretVersion {
            id: "calendar_env_prod".into(),
            version_id: Some("v-2".into()),
        };
        assert_eq!(changed, [current]);
        assert_eq!(answers.requests(), ["secretsmanager.DescribeSecret"]);
    }
}
