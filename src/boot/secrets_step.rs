//! Step 3 of a boot, the secrets: fetched from Secrets Manager (or its fallbacks), checked and
//! rendered for the env file, the credentials and the secret files; and, once the boot serves,
//! sealed into the snapshot.

use std::time::Duration;

use zeroize::Zeroizing;

use super::{within, Steps};
use crate::deadline::Deadline;
use crate::deliver::{self, files};
use crate::envfile::{self, Environment};
use crate::git;
use crate::plan::Plan;
use crate::secrets::{self, fallback};
use crate::state::status::{Outcome, SecretsFrom};
use crate::Error;

/// What the secrets step hands on.
pub(super) struct Fetched {
    /// Taken out of the secrets when a git credential is one of them (`secret:NAME`).
    pub(super) git_credentials: Option<git::Credentials>,
    pub(super) environment: Environment,
    pub(super) rendered: Zeroizing<String>,
    /// The secret variables as credentials (none unless `secrets.deliver` says so).
    pub(super) delivered: deliver::credentials::Credentials,
    /// The `[[files]]`, rendered.
    pub(super) files: Vec<files::Rendered>,
}

impl Steps<'_> {
    /// Step 3, secrets: fetched, checked and rendered; a git credential kept in them is taken out.
    pub(super) async fn fetch_secrets(&mut self, plan: &Plan) -> Result<Fetched, Error> {
        let config = self.config;
        self.recorder.begin("secrets");
        // Throttling, 5xx and timeouts are tried again for as long as the boot deadline leaves
        // room for one more call (secrets.timeout each) and a second to spare.
        let call = config.secrets.timeout + Duration::from_secs(1);
        let retry_for = self.deadline.left().saturating_sub(call);
        // The last call may start as the retries' time ends; the step gets that call and a
        // second more, so that a stalled call ends with its own error, which names the secret,
        // rather than the step's, whichever timer the scheduler happens to wake first.
        let (state_dir, region) = (&config.paths.state_dir, &plan.identity.region);
        let obtain = fallback::obtain(&config.secrets, state_dir, region, &plan.secrets, retry_for);
        let obtained = within("secrets", Deadline::after(retry_for + call), obtain).await??;
        let mut loaded = secrets::assemble(&obtained.read, &plan.secrets)?;
        self.recorder.status.secrets = loaded.versions.clone();
        self.recorder.status.secrets_from = Some(match obtained.served {
            fallback::Served::Region(region) => {
                self.fresh_secrets = Some(obtained.read);
                SecretsFrom::Region(region)
            }
            fallback::Served::Snapshot { taken_at, age } => {
                let age_seconds = age.as_secs();
                let age = humantime::format_duration(Duration::from_secs(age_seconds));
                let taken = humantime::format_rfc3339_seconds(taken_at);
                tracing::warn!(
                    degraded = "secrets-snapshot",
                    snapshot_taken_at = %taken,
                    "Secrets Manager did not answer: the secrets are the snapshot of {taken} \
                     ({age} old)"
                );
                self.recorder.degrade(format!(
                    "Secrets Manager did not answer: running on the snapshot of the last good \
                     secrets, taken {taken} ({age} old); refresh replaces it once Secrets \
                     Manager answers"
                ));
                SecretsFrom::Snapshot {
                    taken_at: taken.to_string(),
                    age_seconds,
                }
            }
        });
        let git_credentials = match config.git.credentials_in_secrets() {
            true => Some(git::Credentials::new(
                &config.git,
                &config.paths,
                &mut loaded,
            )?),
            false => None,
        };
        // Rendered and checked now, before the checkout: a template naming an unknown
        // variable, an owner that does not exist or an unsafe directory fails the boot before
        // anything changes. A git credential is no longer among the variables.
        let texts = std::mem::take(&mut loaded.files);
        let files = files::render(&plan.files, &plan.identity, &loaded.vars, &texts)?;
        files::check_all(&files)?;
        let delivered = match plan.secrets.deliver.as_credentials() {
            true => (loaded.vars.iter())
                .map(|(name, var)| (name.clone(), var.value.clone()))
                .collect(),
            false => Default::default(),
        };
        if !plan.secrets.deliver.as_variables() {
            loaded.vars.clear();
        }
        let environment = envfile::compose(&plan.env, loaded)?;
        let rendered = envfile::render(&environment, plan.secrets.format)?;
        self.recorder.end(Outcome::Succeeded)?;
        Ok(Fetched {
            git_credentials,
            environment,
            rendered,
            delivered,
            files,
        })
    }

    /// Seals what Secrets Manager gave this boot into the snapshot: the service runs with it.
    /// A snapshot that cannot be written leaves the one before (or none) and says so.
    pub(super) async fn keep_snapshot(&mut self) {
        let settings = &self.config.secrets;
        let Some(read) = self.fresh_secrets.take() else {
            return;
        };
        if settings.snapshot_max_age.is_zero() {
            return;
        }
        let state_dir = &self.config.paths.state_dir;
        let taken_at = std::time::SystemTime::now();
        if let Err(e) = secrets::snapshot::save(state_dir, &read, taken_at).await {
            tracing::warn!(
                "could not keep a snapshot of the last good secrets: {e}; a boot while Secrets \
                 Manager does not answer will fail"
            );
        }
    }
}
