//! `state_dir/deploys.json`: what the deploys on this instance came to, kept across reboots —
//! how many changed what runs, how many were rolled back, the last good one, and the commit
//! that last failed its gate (not deployed again automatically until the ref moves on), and the
//! secret versions that last failed theirs (not used again automatically while they are
//! current). It holds commits, secret version ids and times, never secret values.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::secrets::SecretVersion;

pub const FILE: &str = "deploys.json";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deploys {
    /// Changes to what runs (code or environment) that passed the gate.
    pub succeeded: u64,
    /// Changes that failed the gate and were rolled back.
    pub rolled_back: u64,
    /// When the last change passed the gate, and the commit it brought.
    pub last_good_at: Option<String>,
    pub last_good_commit: Option<String>,
    /// The commit that last failed its gate, while the ref still names it.
    pub failed: Option<FailedCommit>,
    /// The secret versions a change brought that failed its gate, with the environment before
    /// them back in service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_secrets: Option<FailedSecrets>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedSecrets {
    pub versions: Vec<SecretVersion>,
    pub at: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedCommit {
    pub commit: String,
    #[serde(rename = "ref")]
    pub reference: String,
    pub at: String,
    pub reason: String,
}

/// The record, or an empty one when there is none yet (or it cannot be read: it only informs).
pub fn read(state_dir: &Path) -> Deploys {
    std::fs::read_to_string(state_dir.join(FILE))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

/// Replaces the record atomically.
pub fn write(state_dir: &Path, deploys: &Deploys) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let mut json = serde_json::to_vec_pretty(deploys).map_err(std::io::Error::other)?;
    json.push(b'\n');
    crate::atomic::write_file(&state_dir.join(FILE), &json, 0o644)
}

impl Deploys {
    /// A change to what runs passed the gate: the failed commit, if any, is behind it.
    pub fn succeeded(&mut self, commit: &str, at: String) {
        self.succeeded += 1;
        self.last_good_at = Some(at);
        self.last_good_commit = Some(commit.to_string());
        self.failed = None;
        self.failed_secrets = None;
    }

    /// A change failed the gate and what ran before it serves again: the commit it brought, if
    /// it brought one, and the secret versions, if the environment before them is back.
    pub fn rolled_back(&mut self, commit: Option<FailedCommit>, secrets: Option<FailedSecrets>) {
        self.rolled_back += 1;
        if commit.is_some() {
            self.failed = commit;
        }
        if secrets.is_some() {
            self.failed_secrets = secrets;
        }
    }

    /// Whether `current`, a secret's version now, is one that failed its gate.
    pub fn avoids(&self, current: &SecretVersion) -> bool {
        current.version_id.is_some()
            && self
                .failed_secrets
                .as_ref()
                .is_some_and(|failed| failed.versions.contains(current))
    }

    /// Splits the secrets that have new versions into those a change failed its gate with (set
    /// aside, unless `retry_failed`), told in the warning returned, and the rest.
    pub fn set_aside_failed(
        &self,
        changed: Vec<SecretVersion>,
        retry_failed: bool,
    ) -> (Option<String>, Vec<SecretVersion>) {
        let (avoided, rest): (Vec<_>, Vec<_>) = changed
            .into_iter()
            .partition(|version| !retry_failed && self.avoids(version));
        let warning = (self.failed_secrets.as_ref())
            .filter(|_| !avoided.is_empty())
            .map(|failed| {
                format!(
                    "the current versions of {} failed their gate at {} ({}); not using them \
                     until a newer version (`bootagent deploy --retry` tries them again)",
                    crate::secrets::ids(&avoided),
                    failed.at,
                    failed.reason
                )
            });
        (warning, rest)
    }

    /// The commit not to deploy again automatically, when `reference` still names it.
    pub fn avoided(&self, reference: &str) -> Option<&FailedCommit> {
        self.failed.as_ref().filter(|f| f.reference == reference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_success_clears_what_failed_and_the_record_survives_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), Deploys::default());
        let version = |id: &str, version: &str| SecretVersion {
            id: id.into(),
            version_id: Some(version.into()),
        };
        let mut deploys = Deploys::default();
        let reason = "the app answered HTTP 500".to_string();
        deploys.rolled_back(
            Some(FailedCommit {
                commit: "bad".into(),
                reference: "stage".into(),
                at: "t1".into(),
                reason: reason.clone(),
            }),
            Some(FailedSecrets {
                versions: vec![version("app_env_stage", "v-2")],
                at: "t1".into(),
                reason,
            }),
        );
        write(dir.path(), &deploys).unwrap();
        let read_back = read(dir.path());
        assert_eq!(read_back.avoided("stage").unwrap().commit, "bad");
        assert!(read_back.avoided("prod").is_none());
        assert!(read_back.avoids(&version("app_env_stage", "v-2")));
        assert!(!read_back.avoids(&version("app_env_stage", "v-3")));
        assert!(!read_back.avoids(&SecretVersion {
            id: "app_env_stage".into(),
            version_id: None
        }));
        let changed = vec![version("app_env_stage", "v-2"), version("shared", "v-9")];
        let (warning, rest) = read_back.set_aside_failed(changed.clone(), false);
        let warning = warning.unwrap();
        assert!(
            warning.contains("current versions of app_env_stage failed"),
            "{warning}"
        );
        assert!(warning.contains("HTTP 500"), "{warning}");
        assert_eq!(rest, [version("shared", "v-9")]);
        assert_eq!(
            read_back.set_aside_failed(changed.clone(), true),
            (None, changed)
        );
        let mut deploys = read_back;
        deploys.succeeded("good", "t2".into());
        assert_eq!((deploys.succeeded, deploys.rolled_back), (1, 1));
        assert!(deploys.avoided("stage").is_none());
        assert!(!deploys.avoids(&version("app_env_stage", "v-2")));
    }

    #[test]
    fn a_record_written_before_secret_versions_were_kept_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let older = r#"{"succeeded": 3, "rolled_back": 1, "last_good_at": null,
            "last_good_commit": null, "failed": null}"#;
        std::fs::write(dir.path().join(FILE), older).unwrap();
        let read_back = read(dir.path());
        assert_eq!(read_back.succeeded, 3);
        assert_eq!(read_back.failed_secrets, None);
    }
}
