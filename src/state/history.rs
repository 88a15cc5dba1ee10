//! `state_dir/history.jsonl`: one line per boot, the last [`KEEP`], kept across reboots —
//! status.json lives on tmpfs and goes with each one. Lines are made from status.json, which
//! holds no secret values, and keep only what tells the boots apart.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::git::Action;
use crate::state::status::{Outcome, Status};

pub const FILE: &str = "history.jsonl";
pub const KEEP: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub started_at: String,
    pub finished_at: Option<String>,
    pub outcome: Outcome,
    pub exit_code: Option<u8>,
    pub service: Option<String>,
    pub env: Option<String>,
    pub commit: Option<String>,
    pub git_action: Option<Action>,
    /// The error with its causes, as status.json has it.
    pub error: Option<String>,
    /// Why a degraded boot kept something other than what was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
}

impl Entry {
    pub fn of(status: &Status) -> Entry {
        Entry {
            started_at: status.started_at.clone(),
            finished_at: status.finished_at.clone(),
            outcome: status.outcome,
            exit_code: status.error.as_ref().map(|e| e.exit_code),
            service: status.identity.as_ref().map(|id| id.service.clone()),
            env: status.identity.as_ref().map(|id| id.env.clone()),
            commit: status.git.as_ref().map(|git| git.commit.clone()),
            git_action: status.git.as_ref().map(|git| git.action),
            error: status.error.as_ref().map(|e| e.message.clone()),
            degraded: status.degraded.clone(),
        }
    }
}

/// Appends `status` as the newest line, dropping the oldest beyond [`KEEP`]; a boot recorded
/// again (its exec failed after it was recorded as succeeded) replaces its own line. The file is
/// replaced atomically, so a crash leaves the old history or the new one. A damaged line is
/// dropped (and reported, once: it is gone afterwards), so that one bad byte does not stop the
/// history for good.
pub fn record(state_dir: &Path, status: &Status) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let path = state_dir.join(FILE);
    let existing = read_bytes(&path)?;
    let (mut lines, damaged) = sound_lines(&existing);
    report_damage(&path, &damaged, "dropped; the history goes on without them");
    let newest = serde_json::to_string(&Entry::of(status)).map_err(std::io::Error::other)?;
    let same_boot = |line: &&str| {
        serde_json::from_str::<Entry>(line).is_ok_and(|e| e.started_at == status.started_at)
    };
    if lines.last().is_some_and(same_boot) {
        lines.pop();
    }
    lines.push(&newest);
    let kept = &lines[lines.len().saturating_sub(KEEP)..];
    let mut text = kept.join("\n");
    text.push('\n');
    crate::atomic::write_file(&path, text.as_bytes(), 0o644)
}

/// The recorded boots, oldest first; none when there is no history yet. A line that is JSON but
/// not a boot (written by a newer version, say) is skipped; a damaged one is skipped and
/// reported.
pub fn read(state_dir: &Path) -> std::io::Result<Vec<Entry>> {
    let path = state_dir.join(FILE);
    let bytes = read_bytes(&path)?;
    let (lines, damaged) = sound_lines(&bytes);
    report_damage(
        &path,
        &damaged,
        "skipped; the next boot drops them from the file",
    );
    Ok(lines
        .into_iter()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect())
}

/// The file's bytes; none when there is no history yet.
fn read_bytes(path: &Path) -> std::io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        read => read,
    }
}

/// The lines that are JSON, and the numbers (from 1) of those that are not: cut off by a full
/// disk, overwritten, not UTF-8.
fn sound_lines(bytes: &[u8]) -> (Vec<&str>, Vec<usize>) {
    let mut sound = Vec::new();
    let mut damaged = Vec::new();
    for (index, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match std::str::from_utf8(line) {
            Ok(text) if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => {
                sound.push(text)
            }
            _ => damaged.push(index + 1),
        }
    }
    (sound, damaged)
}

/// One warning for all the damaged lines, naming the file and the first few of them.
fn report_damage(path: &Path, damaged: &[usize], done: &str) {
    if damaged.is_empty() {
        return;
    }
    let mut named: Vec<String> = damaged.iter().take(5).map(usize::to_string).collect();
    if damaged.len() > named.len() {
        named.push(format!("{} more", damaged.len() - named.len()));
    }
    let lines = match named.as_slice() {
        [one] => format!("line {one} is"),
        many => format!("lines {} are", many.join(", ")),
    };
    tracing::warn!(
        "{} {lines} damaged (not UTF-8, or not JSON): {done}",
        path.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_boots_are_kept_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut status = Status::starting();
        for n in 0..KEEP + 5 {
            status.started_at = format!("boot {n}");
            record(&state, &status).unwrap();
        }
        let entries = read(&state).unwrap();
        assert_eq!(entries.len(), KEEP);
        assert_eq!(entries[0].started_at, "boot 5");
        assert_eq!(entries[KEEP - 1].started_at, format!("boot {}", KEEP + 4));
    }

    #[test]
    fn a_boot_recorded_twice_keeps_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut status = Status::starting();
        status.outcome = Outcome::Succeeded;
        record(dir.path(), &status).unwrap();
        status.outcome = Outcome::Failed;
        record(dir.path(), &status).unwrap();
        let entries = read(dir.path()).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].outcome, Outcome::Failed);
    }

    #[test]
    fn no_history_yet_is_empty_and_a_foreign_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_empty());
        let status = Status::starting();
        record(dir.path(), &status).unwrap();
        let path = dir.path().join(FILE);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.insert_str(0, "{\"from\": \"the future\"}\n");
        std::fs::write(&path, text).unwrap();
        assert_eq!(read(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn a_damaged_line_is_skipped_and_the_history_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut status = Status::starting();
        status.started_at = "boot 1".into();
        record(dir.path(), &status).unwrap();
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(b"{\"started_at\": \"\xff\"}\n{\"cut off\n");
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(sound_lines(&std::fs::read(&path).unwrap()).1, vec![2, 3]);
        assert_eq!(read(dir.path()).unwrap().len(), 1);

        status.started_at = "boot 2".into();
        record(dir.path(), &status).unwrap();
        let entries = read(dir.path()).unwrap();
        let started: Vec<&str> = entries.iter().map(|e| e.started_at.as_str()).collect();
        assert_eq!(started, ["boot 1", "boot 2"]);
        assert!(sound_lines(&std::fs::read(&path).unwrap()).1.is_empty());
    }
}
