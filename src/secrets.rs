//! Secrets Manager: the main secret, a JSON object, becomes one variable per key.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use zeroize::Zeroizing;

use crate::names::is_variable_name;
use crate::plan::SecretsPlan;
use crate::retry;

/// Variable values hold secret bytes: they are wiped when dropped.
pub type SecretVars = BTreeMap<String, Zeroizing<String>>;

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

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "secret {id} was not found in region {region} (or has no version {version}); create it, \
         or fix secrets.main / secrets.vars or the instance's Service/Environment tags"
    )]
    NotFound {
        id: String,
        region: String,
        version: String,
    },
    #[error(
        "reading secret {id} in region {region} was denied{detail}; grant the instance role \
         secretsmanager:GetSecretValue on this secret"
    )]
    AccessDenied {
        id: String,
        region: String,
        detail: String,
    },
    #[error(
        "secret {id} in region {region} could not be decrypted; grant the instance role \
         kms:Decrypt on the secret's KMS key"
    )]
    Decryption { id: String, region: String },
    #[error("Secrets Manager refused to return secret {id} in region {region}: {code}: {message}")]
    Refused {
        id: String,
        region: String,
        code: String,
        message: String,
    },
    #[error(
        "Secrets Manager did not return secret {id} in region {region} ({tries}): {detail}; this \
         is usually temporary (throttling, network): boot again later, and check network access \
         to the endpoint and the instance's credentials if it persists"
    )]
    Unreachable {
        id: String,
        region: String,
        detail: String,
        /// How many attempts over how long, once the retries gave up.
        tries: String,
        /// How long the server asked to wait before the next try.
        retry_after: Option<crate::retry::Asked>,
    },
    #[error("variable {name} is set both by {first} and by {second}; keep one of them")]
    Conflict {
        name: String,
        first: String,
        second: String,
    },
    #[error("secret {id} has no field {field:?}; add it, or fix the #field in secrets.vars")]
    MissingField { id: String, field: String },
    #[error(
        "Secrets Manager's answer for secret {id} in region {region} exceeded {limit} (a secret \
         holds at most 64 KiB) and was cut off: something else answers in its place; check \
         AWS_ENDPOINT_URL and any proxy between this instance and the endpoint"
    )]
    TooLarge {
        id: String,
        region: String,
        limit: String,
    },
    #[error(transparent)]
    NoTrustRoots(#[from] crate::aws::NoTrustRoots),
    #[error("secret {id} holds binary data; store the variables as a JSON object in SecretString")]
    Binary { id: String },
    #[error(
        "secret {id} is not valid JSON (syntax error at line {line}, column {column}); store the \
         variables as a JSON object: {{\"NAME\": \"value\"}}"
    )]
    NotJson {
        id: String,
        line: usize,
        column: usize,
    },
    #[error(
        "secret {id} starts with a byte order mark (U+FEFF), which JSON does not allow; store it \
         without one (an editor's \"UTF-8 with BOM\" setting adds it)"
    )]
    ByteOrderMark { id: String },
    #[error(
        "secret {id} is {found}, not a JSON object; store the variables as a JSON object: \
         {{\"NAME\": \"value\"}}"
    )]
    NotObject { id: String, found: &'static str },
    #[error(
        "secret {id}: key {key:?} holds {found}; a variable's value must be a string, number or \
         boolean"
    )]
    BadValue {
        id: String,
        key: String,
        found: &'static str,
    },
    #[error(
        "secret {id}: key {position} of {count} (in the order written) is not a valid variable name \
         (letters, digits and '_', not starting with a digit); it is not shown, since a \
         malformed key may be a pasted secret"
    )]
    BadKey {
        id: String,
        position: usize,
        count: usize,
    },
    #[error(
        "secret {id}: key {key:?} is given twice; JSON readers disagree on which value wins, so \
         keep one"
    )]
    DuplicateKey { id: String, key: String },
    #[error(
        "secret {id}: key {key:?} holds a string with a \\u escape that names no character (a lone \
         surrogate such as \\ud800); store the value as plain UTF-8 text"
    )]
    BadString { id: String, key: String },
}

impl retry::Retryable for SecretsError {
    fn is_transient(&self) -> bool {
        SecretsError::is_transient(self)
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            SecretsError::Unreachable { retry_after, .. } => {
                retry_after.map(crate::retry::Asked::duration)
            }
            _ => None,
        }
    }

    fn after(self, attempts: u32, waited: Duration) -> SecretsError {
        match self {
            SecretsError::Unreachable {
                id,
                region,
                detail,
                retry_after,
                ..
            } => SecretsError::Unreachable {
                id,
                region,
                detail,
                tries: retry::tries(attempts, waited),
                retry_after,
            },
            other => other,
        }
    }
}

impl SecretsError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SecretsError::Unreachable { .. })
    }

    /// A problem of this machine rather than of the secret or of AWS.
    pub fn is_local(&self) -> bool {
        matches!(self, SecretsError::NoTrustRoots(_))
    }

    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            SecretsError::Binary { .. }
                | SecretsError::Conflict { .. }
                | SecretsError::MissingField { .. }
                | SecretsError::NotJson { .. }
                | SecretsError::ByteOrderMark { .. }
                | SecretsError::NotObject { .. }
                | SecretsError::BadValue { .. }
                | SecretsError::BadKey { .. }
                | SecretsError::DuplicateKey { .. }
                | SecretsError::BadString { .. }
        )
    }
}

/// A Secrets Manager client that retries on its own: each call is one attempt of the SDK's
/// (whose own retries, 3 attempts, are off), and throttling, 5xx answers and timeouts are tried
/// again with full jitter for as long as `retry_for` allows — a fleet that boots at once and
/// meets throttling waits its turn within its boot deadline instead of giving up after three.
#[derive(Clone, Debug)]
pub struct Client {
    sdk: aws_sdk_secretsmanager::Client,
    backoff: retry::Backoff,
    retry_for: Duration,
}

impl Client {
    /// A client over `sdk_config`, which must have the SDK's retries off.
    pub fn with_sdk(
        sdk: aws_sdk_secretsmanager::Client,
        backoff: retry::Backoff,
        retry_for: Duration,
    ) -> Client {
        Client {
            sdk,
            backoff,
            retry_for,
        }
    }

    pub fn sdk(&self) -> &aws_sdk_secretsmanager::Client {
        &self.sdk
    }

    /// `call` until it succeeds, fails for good, or `retry_for` leaves no room for another try.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, SecretsError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, SecretsError>>,
    {
        retry::retry_call(self.backoff, self.retry_for, call).await
    }
}

/// A Secrets Manager client for `region`: each attempt within `timeout`, retried for
/// `retry_for`.
pub async fn client(
    region: &str,
    timeout: Duration,
    retry_for: Duration,
) -> Result<Client, SecretsError> {
    let sdk_config = crate::aws::load(region, timeout).await?;
    Ok(Client::with_sdk(
        sdk(&sdk_config),
        retry::AWS_BACKOFF,
        retry_for,
    ))
}

/// The SDK's client over `sdk_config`, reading no answer past [`crate::aws::MAX_ANSWER_BYTES`].
pub fn sdk(sdk_config: &aws_config::SdkConfig) -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::from_conf(
        aws_sdk_secretsmanager::config::Builder::from(sdk_config)
            .interceptor(crate::aws::BoundedAnswers)
            .build(),
    )
}

/// Which version of a secret to read.
enum Version<'a> {
    Stage(&'a str),
    Id(&'a str),
}

impl Version<'_> {
    fn describe(&self) -> String {
        match self {
            Version::Stage(stage) => format!("labelled {stage}"),
            Version::Id(id) => format!("with VersionId {id}"),
        }
    }
}

struct Fetched {
    version: SecretVersion,
    text: Zeroizing<String>,
}

/// Reads every secret the plan names, each once, and turns them into variables: the main
/// secret's keys, then each of `secrets.vars`.
pub async fn load(
    client: &Client,
    region: &str,
    plan: &SecretsPlan,
) -> Result<LoadedSecrets, SecretsError> {
    let mut fetched: BTreeMap<String, Fetched> = BTreeMap::new();
    let mut loaded = LoadedSecrets::default();
    if let Some(id) = &plan.main {
        let version = match &plan.version_id {
            Some(version_id) => Version::Id(version_id),
            None => Version::Stage(&plan.version_stage),
        };
        let secret = fetch(client, region, id, version).await?;
        for (name, value) in parse_object(id, &secret.text)? {
            loaded.insert(name, value, format!("secret {id}"))?;
        }
        fetched.insert(id.clone(), secret);
    }
    for (name, reference) in &plan.vars {
        let id = &reference.id;
        if !fetched.contains_key(id) {
            let secret = fetch(client, region, id, Version::Stage(&plan.version_stage)).await?;
            fetched.insert(id.clone(), secret);
        }
        let text = &fetched[id].text;
        let (value, source) = match &reference.field {
            None => (text.clone(), format!("secrets.vars ({id})")),
            Some(field) => (
                json_field(id, text, field)?,
                format!("secrets.vars ({id}#{field})"),
            ),
        };
        loaded.insert(name.clone(), value, source)?;
    }
    loaded.versions = fetched.into_values().map(|f| f.version).collect();
    Ok(loaded)
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

/// The VersionId that carries `stage`, from DescribeSecret: metadata only, no secret value.
async fn current_version(
    client: &Client,
    region: &str,
    id: &str,
    stage: &str,
) -> Result<Option<String>, SecretsError> {
    let output = client
        .call(|| async {
            client
                .sdk
                .describe_secret()
                .secret_id(id)
                .send()
                .await
                .map_err(|e| classify(e, id, region, format!("labelled {stage}")))
        })
        .await?;
    Ok(output.version_ids_to_stages().and_then(|versions| {
        versions
            .iter()
            .find(|(_, stages)| stages.iter().any(|s| s == stage))
            .map(|(version_id, _)| version_id.clone())
    }))
}

async fn fetch(
    client: &Client,
    region: &str,
    id: &str,
    version: Version<'_>,
) -> Result<Fetched, SecretsError> {
    let output = client
        .call(|| async {
            let request = client.sdk.get_secret_value().secret_id(id);
            let request = match version {
                Version::Stage(stage) => request.version_stage(stage),
                Version::Id(version_id) => request.version_id(version_id),
            };
            request
                .send()
                .await
                .map_err(|e| classify(e, id, region, version.describe()))
        })
        .await?;
    let text = match output.secret_string() {
        Some(text) => Zeroizing::new(text.to_string()),
        None => return Err(SecretsError::Binary { id: id.to_string() }),
    };
    Ok(Fetched {
        version: SecretVersion {
            id: id.to_string(),
            version_id: output.version_id().map(str::to_string),
        },
        text,
    })
}

/// One place decides what a failed call means. moto answers "not found" with 404 where AWS says
/// 400, and a denial reaches the Rust SDK as a bare 403: match codes first, then status.
fn classify<E>(error: SdkError<E>, id: &str, region: &str, version: String) -> SecretsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let (id, region) = (id.to_string(), region.to_string());
    if crate::aws::answer_too_large(&error) {
        let limit = crate::aws::max_answer();
        return SecretsError::TooLarge { id, region, limit };
    }
    let status = error.raw_response().map(|r| r.status().as_u16());
    let retry_after = error.raw_response().and_then(|r| {
        retry::server_asked(
            r.headers().get("x-amz-retry-after"),
            r.headers().get("retry-after"),
        )
    });
    match &error {
        SdkError::ServiceError(service) => {
            let service = service.err();
            let code = service.code().unwrap_or_default();
            let message = service.message().unwrap_or_default().to_string();
            match code {
                // What the SDK could not read as an error of Secrets Manager's has no code.
                "" if status != Some(403) => unreadable(id, region, status, retry_after),
                "ResourceNotFoundException" => SecretsError::NotFound {
                    id,
                    region,
                    version,
                },
                "DecryptionFailure" => SecretsError::Decryption { id, region },
                _ if code == "AccessDeniedException" || status == Some(403) => {
                    let detail = if message.is_empty() {
                        String::new()
                    } else {
                        format!(" ({message})")
                    };
                    SecretsError::AccessDenied { id, region, detail }
                }
                _ if is_retryable_code(code) || status.is_some_and(|s| s >= 500) => {
                    SecretsError::Unreachable {
                        id,
                        region,
                        detail: format!("{code}: {message}"),
                        tries: retry::ONE_ATTEMPT.into(),
                        retry_after,
                    }
                }
                _ => SecretsError::Refused {
                    id,
                    region,
                    code: code.to_string(),
                    message,
                },
            }
        }
        // These carry no response body, so their text cannot hold secret bytes.
        SdkError::TimeoutError(_)
        | SdkError::DispatchFailure(_)
        | SdkError::ConstructionFailure(_) => SecretsError::Unreachable {
            id,
            region,
            detail: DisplayErrorContext(&error).to_string(),
            tries: retry::ONE_ATTEMPT.into(),
            retry_after: None,
        },
        // A response that did not parse may echo the secret: report only its status.
        _ => unreadable(id, region, status, retry_after),
    }
}

/// An answer that is not Secrets Manager's (a truncated body, a proxy's page): reported by its
/// status only, since its text may hold secret bytes, and worth another try.
fn unreadable(
    id: String,
    region: String,
    status: Option<u16>,
    retry_after: Option<crate::retry::Asked>,
) -> SecretsError {
    SecretsError::Unreachable {
        id,
        region,
        detail: match status {
            Some(status) => format!("unreadable response with HTTP {status}"),
            None => "unreadable response".to_string(),
        },
        tries: retry::ONE_ATTEMPT.into(),
        retry_after,
    }
}

fn is_retryable_code(code: &str) -> bool {
    matches!(
        code,
        "ThrottlingException" | "Throttling" | "TooManyRequestsException" | "InternalServiceError"
    )
}

/// A JSON object of strings, numbers and booleans to variables. Errors name keys and JSON kinds
/// but never quote the input, which is secret.
pub fn parse_object(id: &str, text: &str) -> Result<SecretVars, SecretsError> {
    let members = json_members(id, text)?;
    let count = members.len();
    if let Some(position) = members.iter().position(|(key, _)| !is_variable_name(key)) {
        return Err(SecretsError::BadKey {
            id: id.to_string(),
            position: position + 1,
            count,
        });
    }
    let mut vars = SecretVars::new();
    for (key, value) in members {
        let value = scalar(id, &key, &value)?;
        if vars.insert(key.clone(), value).is_some() {
            return Err(SecretsError::DuplicateKey {
                id: id.to_string(),
                key,
            });
        }
    }
    Ok(vars)
}

/// One field of a JSON-object secret, as a variable value.
fn json_field(id: &str, text: &str, field: &str) -> Result<Zeroizing<String>, SecretsError> {
    let members = json_members(id, text)?;
    let mut matching = members.iter().filter(|(key, _)| key == field);
    let (_, value) = matching.next().ok_or_else(|| SecretsError::MissingField {
        id: id.to_string(),
        field: field.to_string(),
    })?;
    if matching.next().is_some() {
        return Err(SecretsError::DuplicateKey {
            id: id.to_string(),
            key: field.to_string(),
        });
    }
    scalar(id, field, value)
}

/// The members of a JSON object in the order written, each value as its JSON text, a key given
/// twice included (serde_json's own maps keep the last silently).
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// The secret's text as a JSON object's members; errors give positions and kinds, never content.
fn json_members(id: &str, text: &str) -> Result<Vec<(String, Box<RawValue>)>, SecretsError> {
    let not_json = |e: serde_json::Error| SecretsError::NotJson {
        id: id.to_string(),
        line: e.line(),
        column: e.column(),
    };
    if text.starts_with('\u{feff}') {
        return Err(SecretsError::ByteOrderMark { id: id.to_string() });
    }
    let whole: Box<RawValue> = serde_json::from_str(text).map_err(not_json)?;
    if !whole.get().starts_with('{') {
        return Err(SecretsError::NotObject {
            id: id.to_string(),
            found: kind(whole.get()),
        });
    }
    let Members(members) = serde_json::from_str(whole.get()).map_err(not_json)?;
    Ok(members)
}

/// Strings as they are, numbers and booleans as their JSON text (as written: `1e3` stays
/// `1e3`); anything else is refused.
fn scalar(id: &str, key: &str, value: &RawValue) -> Result<Zeroizing<String>, SecretsError> {
    let text = value.get();
    match kind(text) {
        // Valid JSON text, yet no string: a lone surrogate escape (`\ud800`) names no character.
        "a JSON string" => {
            serde_json::from_str(text)
                .map(Zeroizing::new)
                .map_err(|_| SecretsError::BadString {
                    id: id.to_string(),
                    key: key.to_string(),
                })
        }
        "a number" | "a boolean" => Ok(Zeroizing::new(text.to_string())),
        found => Err(SecretsError::BadValue {
            id: id.to_string(),
            key: key.to_string(),
            found,
        }),
    }
}

/// The JSON kind of a valid JSON value's text, told by its first character.
fn kind(json: &str) -> &'static str {
    match json.as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a JSON string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        _ => "a number",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "canary-7f3a9";

    #[test]
    fn scalars_become_strings() {
        let vars = parse_object(
            "s",
            r#"{"A": "x", "PORT": 8080, "RATIO": 0.5, "ON": true, "EMPTY": ""}"#,
        )
        .unwrap();
        let plain: BTreeMap<_, _> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            plain,
            BTreeMap::from([
                ("A", "x"),
                ("EMPTY", ""),
                ("ON", "true"),
                ("PORT", "8080"),
                ("RATIO", "0.5")
            ])
        );
    }

    #[test]
    fn a_byte_order_mark_is_named_as_the_cause() {
        let err = parse_object("s", "\u{feff}{\"A\": \"x\"}").unwrap_err();
        assert!(matches!(err, SecretsError::ByteOrderMark { .. }), "{err}");
        assert!(err.is_malformed());
        assert!(err.to_string().contains("byte order mark"), "{err}");
    }

    #[test]
    fn nested_values_are_refused_by_key() {
        for (json, found) in [
            (r#"{"DB": {"user": "x"}}"#, "an object"),
            (r#"{"DB": [1]}"#, "an array"),
            (r#"{"DB": null}"#, "null"),
        ] {
            let err = parse_object("s", json).unwrap_err().to_string();
            assert!(err.contains("\"DB\"") && err.contains(found), "{err}");
        }
    }

    #[test]
    fn errors_never_quote_the_secret() {
        let inputs = [
            format!("\"{CANARY}\""),
            format!("{{\"A\": \"{CANARY}\""),
            format!("[\"{CANARY}\"]"),
            format!("{{\"A\": [\"{CANARY}\"]}}"),
            CANARY.to_string(),
            format!("{{\"A\": \"{CANARY}\"}} trailing"),
            format!("{{\"{CANARY}\": \"x\"}}"),
        ];
        for input in inputs {
            let err = parse_object("s", &input).unwrap_err().to_string();
            assert!(!err.contains(CANARY), "{input} gave {err}");
        }
    }

    #[test]
    fn numbers_keep_their_json_text_and_strings_are_unescaped() {
        let vars = parse_object(
            "s",
            r#" {"A": 1e3, "B": 12345678901234567890123, "C": -0, "D": true, "E": "x\"\u00e9"} "#,
        )
        .unwrap();
        let text: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            text,
            [
                ("A", "1e3"),
                ("B", "12345678901234567890123"),
                ("C", "-0"),
                ("D", "true"),
                ("E", "x\"\u{e9}")
            ]
        );
    }

    #[test]
    fn a_lone_surrogate_escape_is_refused_by_key_not_a_crash() {
        // Found by fuzzing (secret_to_env_file): valid JSON text, but no string.
        let err =
            parse_object("s", &format!(r#"{{"OK": "{CANARY}", "BAD": "x\ud800y"}}"#)).unwrap_err();
        assert!(matches!(err, SecretsError::BadString { .. }), "{err}");
        assert!(err.is_malformed());
        let text = err.to_string();
        assert!(
            text.contains("key \"BAD\" holds a string with a \\u escape"),
            "{text}"
        );
        assert!(!text.contains(CANARY), "{text}");
    }

    #[test]
    fn a_key_given_twice_is_refused_by_name() {
        let err = parse_object("s", &format!(r#"{{"A": "{CANARY}", "A": "x"}}"#))
            .unwrap_err()
            .to_string();
        assert!(err.contains("key \"A\" is given twice"), "{err}");
        assert!(!err.contains(CANARY), "{err}");
        let err = json_field("s", r#"{"F": 1, "F": 2}"#, "F").unwrap_err();
        assert!(matches!(err, SecretsError::DuplicateKey { .. }), "{err}");
    }

    #[test]
    fn keys_must_be_variable_names() {
        let err = parse_object("s", r#"{"A": "x", "DB-URL": "x"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("key 2 of 2 (in the order written) is not a valid"),
            "{err}"
        );
        assert!(!err.contains("DB-URL"), "{err}");
    }

    /// The client's calls answered in process, as Secrets Manager answers them.
    mod answered {
        use super::*;
        use crate::config::EnvFileFormat;
        use crate::testing::{SdkAnswers, FAST};

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
}
