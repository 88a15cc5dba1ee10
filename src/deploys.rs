//! `state_dir/deploys.json`: what the deploys on this instance came to, kept across reboots —
//! how many changed what runs, how many were rolled back, the last good one, and the commit
//! that last failed its gate (not deployed again automatically until the ref moves on). It holds
//! commits and times, never secrets.

use std::path::Path;

use serde::{Deserialize, Serialize};

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
    }

    /// A change failed the gate and the release before it serves again.
    pub fn rolled_back(&mut self, failed: FailedCommit) {
        self.rolled_back += 1;
        self.failed = Some(failed);
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
    fn a_success_clears_the_failed_commit_and_the_record_survives_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), Deploys::default());
        let mut deploys = Deploys::default();
        deploys.rolled_back(FailedCommit {
            commit: "bad".into(),
            reference: "stage".into(),
            at: "t1".into(),
            reason: "the app answered HTTP 500".into(),
        });
        write(dir.path(), &deploys).unwrap();
        let read_back = read(dir.path());
        assert_eq!(read_back.avoided("stage").unwrap().commit, "bad");
        assert!(read_back.avoided("prod").is_none());
        let mut deploys = read_back;
        deploys.succeeded("good", "t2".into());
        assert_eq!((deploys.succeeded, deploys.rolled_back), (1, 1));
        assert!(deploys.avoided("stage").is_none());
    }
}
