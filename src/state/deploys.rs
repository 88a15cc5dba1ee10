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
    /// When the last change passed the gate.
    pub last_good_at: Option<String>,
    /// The release last proven healthy (settled, and answered when the gate asks the app),
    /// whatever happened after: a failed or killed boot does not change it.
    pub last_good_commit: Option<String>,
    /// The secret versions it was proven with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_good_secrets: Vec<SecretVersion>,
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
    /// What the run that failed with it exited with: 16 (rolled back) or 7 (refused code).
    /// `deploy` exits with it while the ref still names the commit.
    #[serde(default = "rolled_back_code")]
    pub exit_code: u8,
}

fn rolled_back_code() -> u8 {
    crate::exit::ROLLED_BACK
}

/// deploys.json could not be read, or did not hold a record. Never replaced by an empty one:
/// which commit failed its gate, and which release was last proven healthy, would be lost.
#[derive(Debug, thiserror::Error)]
#[error(
    "the deploy record {path} {problem}, so which commits and secret versions failed their \
     gate, and which release was last healthy, are unknown; bootagent keeps the release in \
     service and deploys nothing new: look at the file (or restore it), then remove it to start \
     a new record, or run `bootagent deploy --retry` to deploy the ref's head anyway"
)]
pub struct Untrusted {
    pub path: std::path::PathBuf,
    pub problem: String,
}

/// The record; an empty one when there is none yet.
pub fn read(state_dir: &Path) -> Result<Deploys, Untrusted> {
    let path = state_dir.join(FILE);
    let untrusted = |problem: String| Untrusted {
        path: path.clone(),
        problem,
    };
    let bytes = match crate::atomic::read_bounded(&path, MAX_BYTES, crate::atomic::Links::Refuse) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Deploys::default()),
        Err(e) => return Err(untrusted(format!("cannot be read ({e})"))),
    };
    serde_json::from_slice(&bytes).map_err(|e| untrusted(format!("is damaged ({e})")))
}

/// Far more than a record ever holds; a larger file is not one bootagent wrote.
const MAX_BYTES: u64 = 1 << 20;

/// Replaces the record atomically.
pub fn write(state_dir: &Path, deploys: &Deploys) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let mut json = serde_json::to_vec_pretty(deploys).map_err(std::io::Error::other)?;
    json.push(b'\n');
    crate::atomic::write_file(&state_dir.join(FILE), &json, 0o644)
}

impl Deploys {
    /// A change to what runs passed the gate with `commit` and the secret `versions`. What
    /// failed before is forgotten once it is behind: tried again and passed, or followed by a
    /// newer commit or version that passed. A change on the release kept in service (a
    /// rotation) says nothing about the commit that failed, nor one of another secret about a
    /// version that failed.
    pub fn succeeded(&mut self, commit: &str, versions: &[SecretVersion], at: String) {
        // Behind: a commit other than the release proven before (the ref moved on), or the
        // failed one itself; a version newer than the one proven before, or the failed one.
        let commit_behind = |failed: &FailedCommit| {
            failed.commit == commit || self.last_good_commit.as_deref() != Some(commit)
        };
        let version_behind = |failed: &SecretVersion| {
            versions.iter().any(|passed| {
                passed == failed
                    || (passed.id == failed.id && !self.last_good_secrets.contains(passed))
            })
        };
        if self.failed.as_ref().is_some_and(commit_behind) {
            self.failed = None;
        }
        if (self.failed_secrets.as_ref()).is_some_and(|f| f.versions.iter().all(version_behind)) {
            self.failed_secrets = None;
        }
        self.succeeded = self.succeeded.saturating_add(1);
        self.last_good_at = Some(at);
        self.proven_healthy(commit, versions);
    }

    /// `commit` with the secret `versions` settled under the service manager (and answered, when
    /// the gate asks the app): the release a failed change rolls back to. Whether anything
    /// changed since it is recorded.
    pub fn proven_healthy(&mut self, commit: &str, versions: &[SecretVersion]) -> bool {
        let changed =
            self.last_good_commit.as_deref() != Some(commit) || self.last_good_secrets != versions;
        self.last_good_commit = Some(commit.to_string());
        self.last_good_secrets = versions.to_vec();
        changed
    }

    /// A change failed the gate: the commit it brought, if it brought one, and the secret
    /// versions, if the environment before them is back. Recorded before the rollback starts,
    /// so that a rollback killed midway leaves them avoided all the same.
    pub fn rolled_back(&mut self, commit: Option<FailedCommit>, secrets: Option<FailedSecrets>) {
        self.rolled_back = self.rolled_back.saturating_add(1);
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
        assert_eq!(read(dir.path()).unwrap(), Deploys::default());
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
                exit_code: crate::exit::ROLLED_BACK,
            }),
            Some(FailedSecrets {
                versions: vec![version("app_env_stage", "v-2")],
                at: "t1".into(),
                reason,
            }),
        );
        write(dir.path(), &deploys).unwrap();
        let read_back = read(dir.path()).unwrap();
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
        deploys.proven_healthy("good", &[version("app_env_stage", "v-1")]);
        // A rotation of another secret that passed on the release kept in service says nothing
        // about the failed commit, nor the failed version.
        let rotated = [version("app_env_stage", "v-1"), version("shared", "v-9")];
        deploys.succeeded("good", &rotated, "t2".into());
        assert_eq!((deploys.succeeded, deploys.rolled_back), (1, 1));
        assert_eq!(deploys.avoided("stage").unwrap().commit, "bad");
        assert!(deploys.avoids(&version("app_env_stage", "v-2")));
        assert_eq!(deploys.last_good_commit.as_deref(), Some("good"));
        // The ref moved on, with a newer version: both are behind.
        deploys.succeeded("fixed", &[version("app_env_stage", "v-3")], "t3".into());
        assert!(deploys.avoided("stage").is_none());
        assert!(!deploys.avoids(&version("app_env_stage", "v-2")));
    }

    #[test]
    fn a_record_that_cannot_be_read_is_never_taken_for_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let damaged: [&[u8]; 6] = [
            b"garbage",
            b"",
            b"\0\0\0\0",
            br#"{"succeeded": "three"}"#,
            b"{\"succeeded\": 1, \"failed\": {\"commit\": \"\xff\"}}",
            br#"{"succeeded": 18446744073709551616}"#,
        ];
        for bytes in damaged {
            std::fs::write(&path, bytes).unwrap();
            let untrusted = read(dir.path()).unwrap_err().to_string();
            assert!(untrusted.contains("is damaged"), "{untrusted}");
            assert!(
                untrusted.contains(&path.display().to_string()),
                "{untrusted}"
            );
            assert!(untrusted.contains("deploys nothing new"), "{untrusted}");
        }
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let fifo = read(dir.path()).unwrap_err().to_string();
        assert!(fifo.contains("not a regular file"), "{fifo}");
    }

    #[test]
    fn the_release_proven_healthy_is_recorded_only_when_it_changes() {
        let mut deploys = Deploys::default();
        let versions = [SecretVersion {
            id: "app_env_prod".into(),
            version_id: Some("v-1".into()),
        }];
        assert!(deploys.proven_healthy("c1", &versions));
        assert!(!deploys.proven_healthy("c1", &versions));
        assert!(deploys.proven_healthy("c1", &[]));
        assert_eq!(
            deploys.succeeded, 0,
            "a boot that changed nothing is no deploy"
        );
        deploys.rolled_back = u64::MAX;
        deploys.rolled_back(None, None);
        assert_eq!(deploys.rolled_back, u64::MAX);
    }

    #[test]
    fn a_record_written_before_secret_versions_were_kept_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let older = r#"{"succeeded": 3, "rolled_back": 1, "last_good_at": null,
            "last_good_commit": null, "failed": null}"#;
        std::fs::write(dir.path().join(FILE), older).unwrap();
        let read_back = read(dir.path()).unwrap();
        assert_eq!(read_back.succeeded, 3);
        assert_eq!(read_back.failed_secrets, None);
    }
}
