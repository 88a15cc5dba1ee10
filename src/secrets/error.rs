//! What a failed read of a secret means: the error, whether another try can help, and the one
//! place that classifies what the SDK returned.

use std::time::Duration;

use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::retry;

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
    /// No region answered and the snapshot could not stand in.
    #[error("{error}; {snapshot}")]
    NoFallback {
        error: Box<SecretsError>,
        snapshot: String,
    },
    #[error("variable {name} is set both by {first} and by {second}; keep one of them")]
    Conflict {
        name: String,
        first: String,
        second: String,
    },
    #[error(
        "secret {id} has no field {field:?}; add it, or fix the #field in secrets.vars or \
         files[].secret"
    )]
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
        matches!(
            self,
            SecretsError::Unreachable { .. } | SecretsError::NoFallback { .. }
        )
    }

    /// Secrets Manager answered, and said no: the secret is not there, may not be read or
    /// cannot be decrypted. Never retried elsewhere, and never answered from the snapshot.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            SecretsError::NotFound { .. }
                | SecretsError::AccessDenied { .. }
                | SecretsError::Decryption { .. }
                | SecretsError::Refused { .. }
        )
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

/// One place decides what a failed call means. moto answers "not found" with 404 where AWS says
/// 400, and a denial reaches the Rust SDK as a bare 403: match codes first, then status.
pub(super) fn classify<E>(
    error: SdkError<E>,
    id: &str,
    region: &str,
    version: String,
) -> SecretsError
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
