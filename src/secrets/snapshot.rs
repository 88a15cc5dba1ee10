//! The last good secrets, kept under the state dir encrypted by `systemd-creds` (the host key
//! in /var/lib/systemd/credential.secret, with a TPM2 where one exists): what a boot may run on
//! when Secrets Manager does not answer. The clear text only ever passes through pipes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use zeroize::Zeroizing;

use super::client::Fetched;
use super::Read;

/// The file's name under the state dir.
const FILE_NAME: &str = "secrets.snapshot";
/// The name sealed into the credential: a file renamed or made for something else does not
/// decrypt as a snapshot.
const CREDENTIAL_NAME: &str = "bootagent-secrets-snapshot";
/// Secrets Manager holds at most 64 KiB a secret; a snapshot past this is not one.
const MAX_BYTES: u64 = 16 << 20;
/// How far ahead of the clock a snapshot's `taken_at` may be: SigV4's own tolerance, since
/// Secrets Manager accepted the read it seals only within it. Past this, the clock went back or
/// the snapshot is not one bootagent sealed, and its age cannot be known.
const FUTURE_TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// `systemd-creds` with a TPM2 can take seconds; past this it is not answering.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);
/// The key id systemd writes for `--with-key=tpm2-absent` (and, in newer releases, `null`):
/// a credential sealed with no key at all, which `auto` must never produce for a snapshot.
const NULL_KEY_ID: [u8; 16] = [
    0x05, 0x84, 0x69, 0xda, 0xf6, 0xf5, 0x43, 0x24, 0x80, 0x05, 0x49, 0xda, 0x0f, 0x8e, 0xa2, 0xfb,
];

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// What the encrypted file holds.
#[derive(Serialize, Deserialize)]
struct Sealed {
    /// Seconds since the epoch when Secrets Manager last gave these values.
    taken_at: u64,
    /// The region that served them.
    region: String,
    secrets: BTreeMap<String, SealedSecret>,
}

#[derive(Serialize, Deserialize)]
struct SealedSecret {
    /// Which version was asked for: `stage:AWSCURRENT` or `id:…`.
    selector: String,
    version_id: Option<String>,
    text: Zeroizing<String>,
}

/// A snapshot read back: the secrets as a read of the region that served them, and when.
pub struct Snapshot {
    pub read: Read,
    pub taken_at: SystemTime,
}

impl Snapshot {
    pub fn age(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.taken_at)
            .unwrap_or_default()
    }
}

/// Why there is no snapshot to use: said after Secrets Manager's own error.
#[derive(Debug, thiserror::Error)]
pub enum Unusable {
    #[error("no snapshot of the last good secrets is kept (secrets.snapshot_max_age is 0)")]
    Off,
    #[error("there is no snapshot of the last good secrets ({path}): no boot has succeeded with them on this host yet")]
    Missing { path: String },
    #[error(
        "the snapshot of the last good secrets is {age} old, past secrets.snapshot_max_age \
         ({max}): it is not used"
    )]
    TooOld { age: String, max: String },
    #[error(
        "the snapshot of the last good secrets says it was taken at {taken}, {ahead} ahead of \
         this host's clock: its age cannot be known (the clock went back, or it is not one \
         bootagent sealed), so it is not used"
    )]
    InTheFuture { taken: String, ahead: String },
    #[error(
        "the snapshot of the last good secrets ({path}) could not be decrypted on this host \
         ({detail}): it was made on another host, or this host's key \
         /var/lib/systemd/credential.secret (or TPM2) changed"
    )]
    Undecryptable { path: String, detail: String },
    #[error("the snapshot of the last good secrets ({path}) cannot be used: {detail}")]
    Unreadable { path: String, detail: String },
    #[error(
        "the snapshot of the last good secrets does not hold what this boot reads ({detail}): \
         the config or the tags changed since it was taken"
    )]
    OtherSecrets { detail: String },
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Seals `read`, as Secrets Manager gave it at `taken_at`, into the state dir's snapshot,
/// replacing the one there.
pub async fn save(state_dir: &Path, read: &Read, taken_at: SystemTime) -> Result<(), String> {
    let secrets = (read.secrets.iter())
        .map(|(id, fetched)| {
            let sealed = SealedSecret {
                selector: fetched.selector.clone(),
                version_id: fetched.version_id.clone(),
                text: fetched.text.clone(),
            };
            (id.clone(), sealed)
        })
        .collect();
    let sealed = Sealed {
        taken_at: unix_seconds(taken_at),
        region: read.region.clone(),
        secrets,
    };
    // Room for every text and its escapes up front: a growing buffer would leave copies behind.
    let room = (read.secrets.values())
        .map(|f| 2 * f.text.len() + 256)
        .sum::<usize>()
        + 1024;
    let mut clear = Zeroizing::new(Vec::with_capacity(room));
    serde_json::to_writer(&mut *clear, &sealed).map_err(|e| e.to_string())?;
    let args = [
        "encrypt",
        "--with-key=auto",
        "--name",
        CREDENTIAL_NAME,
        "-",
        "-",
    ];
    let sealed_bytes = systemd_creds(&args, &clear).await?;
    check_keyed(&sealed_bytes)?;
    let path = path(state_dir);
    std::fs::create_dir_all(state_dir)
        .map_err(|e| format!("failed to create {}: {e}", state_dir.display()))?;
    crate::atomic::write_file(&path, &sealed_bytes, 0o600)
        .map_err(|e| format!("failed to write {}: {e}", path.display()))
}

/// Whether `sealed` is a credential sealed with systemd's null key: decrypted by any host.
fn null_keyed(sealed: &[u8]) -> bool {
    check_keyed(sealed).is_err_and(|e| e.contains("with no key"))
}

/// Refuses a credential sealed without a key: `--with-key=auto` on a host with neither a TPM2
/// nor a persistent /var/lib/systemd may fall back to one in newer systemd releases.
fn check_keyed(sealed: &[u8]) -> Result<(), String> {
    let text: String = (String::from_utf8_lossy(sealed).chars())
        .filter(|c| !c.is_ascii_whitespace())
        .take(24)
        .collect();
    let header = aws_smithy_types::base64::decode(&text)
        .map_err(|e| format!("systemd-creds wrote no base64 credential ({e})"))?;
    match header.get(..16) {
        Some(id) if id == NULL_KEY_ID => Err(
            "systemd-creds sealed the snapshot with no key (no TPM2 and no host key); \
             run `systemd-creds setup` so that /var/lib/systemd/credential.secret exists"
                .into(),
        ),
        Some(_) => Ok(()),
        None => Err("systemd-creds wrote a credential too short to be one".into()),
    }
}

/// The snapshot, when there is one younger than `max_age` that decrypts on this host.
pub async fn open(state_dir: &Path, max_age: Duration) -> Result<Snapshot, Unusable> {
    if max_age.is_zero() {
        return Err(Unusable::Off);
    }
    let path = path(state_dir);
    let shown = path.display().to_string();
    let unreadable = |detail: String| Unusable::Unreadable {
        path: shown.clone(),
        detail,
    };
    let sealed = match crate::atomic::read_bounded(&path, MAX_BYTES, crate::atomic::Links::Refuse) {
        Ok(sealed) => sealed,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Unusable::Missing { path: shown })
        }
        Err(e) => return Err(unreadable(e.to_string())),
    };
    // systemd-creds decrypts a credential sealed with its null key on any host without a TPM2
    // (with a warning only): anyone can make one, so it is refused here as when sealing.
    if null_keyed(&sealed) {
        return Err(unreadable(
            "it is sealed with no key (systemd's null key, which any host decrypts), so it is \
             not one bootagent sealed here; it is not used"
                .into(),
        ));
    }
    let args = ["decrypt", "--name", CREDENTIAL_NAME, "-", "-"];
    let clear = systemd_creds(&args, &sealed)
        .await
        .map(Zeroizing::new)
        .map_err(|detail| Unusable::Undecryptable {
            path: shown.clone(),
            detail,
        })?;
    // Sealed by this host's key: what it says was written by bootagent, so a parse error is
    // a bug or a version skew, never an attack; it still names no value.
    let sealed: Sealed = serde_json::from_slice(&clear).map_err(|e| {
        unreadable(format!(
            "not a snapshot bootagent reads ({})",
            classified(&e)
        ))
    })?;
    // `+` panics past what SystemTime holds.
    let taken_at = (UNIX_EPOCH.checked_add(Duration::from_secs(sealed.taken_at)))
        .ok_or_else(|| unreadable("its time is out of range; it is not used".into()))?;
    let secrets = (sealed.secrets.into_iter())
        .map(|(id, secret)| {
            let fetched = Fetched {
                selector: secret.selector,
                version_id: secret.version_id,
                text: secret.text,
            };
            (id, fetched)
        })
        .collect();
    let snapshot = Snapshot {
        read: Read {
            region: sealed.region,
            secrets,
        },
        taken_at,
    };
    if let Ok(ahead) = taken_at.duration_since(SystemTime::now()) {
        if ahead > FUTURE_TOLERANCE {
            return Err(Unusable::InTheFuture {
                taken: humantime::format_rfc3339_seconds(taken_at).to_string(),
                ahead: humantime::format_duration(Duration::from_secs(ahead.as_secs())).to_string(),
            });
        }
    }
    let age = snapshot.age();
    if age > max_age {
        return Err(Unusable::TooOld {
            age: humantime::format_duration(Duration::from_secs(age.as_secs())).to_string(),
            max: humantime::format_duration(max_age).to_string(),
        });
    }
    Ok(snapshot)
}

/// What kind of JSON error, without serde_json's text, which may quote the clear text.
fn classified(error: &serde_json::Error) -> &'static str {
    match error.classify() {
        serde_json::error::Category::Io => "cut short",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "fields bootagent does not know",
        serde_json::error::Category::Eof => "cut short",
    }
}

/// Removes the snapshot: Secrets Manager said no to a secret in it. Whether there was one.
pub fn delete(state_dir: &Path) -> std::io::Result<bool> {
    match std::fs::remove_file(path(state_dir)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs `systemd-creds` with `input` on its standard input; what it wrote on its output. Its
/// own message on failure: it names files and keys, never the credential's contents.
async fn systemd_creds(args: &[&str], input: &[u8]) -> Result<Vec<u8>, String> {
    let mut child = tokio::process::Command::new("systemd-creds")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("systemd-creds could not be run ({e}); install systemd"))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let feed = async move {
        // A tool that exits early closes its input: its exit status says why.
        let _ = stdin.write_all(input).await;
        drop(stdin);
    };
    let run = async {
        let (_, output) = tokio::join!(feed, child.wait_with_output());
        output
    };
    let output = tokio::time::timeout(TOOL_TIMEOUT, run)
        .await
        .map_err(|_| format!("systemd-creds did not finish within {TOOL_TIMEOUT:?}"))?
        .map_err(|e| format!("systemd-creds failed: {e}"))?;
    if output.status.success() {
        return Ok(output.stdout);
    }
    // A decryption that failed half way may have written part of the clear text.
    drop(Zeroizing::new(output.stdout));
    let said = String::from_utf8_lossy(&output.stderr);
    // Its warnings ("not located on encrypted media") come before the error: the last line.
    let last = said
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Err(format!("systemd-creds {}: {}", output.status, last.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_sealed_without_a_key_is_refused() {
        let mut header = NULL_KEY_ID.to_vec();
        header.extend_from_slice(&[32, 0, 0, 0, 1, 0, 0, 0]);
        let encoded = aws_smithy_types::base64::encode(&header);
        let err = check_keyed(encoded.as_bytes()).unwrap_err();
        assert!(err.contains("with no key"), "{err}");
        assert!(null_keyed(encoded.as_bytes()));
        // The host key's id (CRED_AES256_GCM_BY_HOST), line-wrapped as systemd-creds writes.
        let host: [u8; 16] = [
            0x5a, 0x1c, 0x6a, 0x86, 0xdf, 0x9d, 0x40, 0x96, 0xb1, 0xd5, 0xa6, 0x5e, 0x08, 0x62,
            0xf1, 0x9a,
        ];
        let mut header = host.to_vec();
        header.extend_from_slice(&[32, 0, 0, 0, 1, 0, 0, 0]);
        let encoded = aws_smithy_types::base64::encode(&header);
        let wrapped = format!("{}\n{}", &encoded[..10], &encoded[10..]);
        check_keyed(wrapped.as_bytes()).unwrap();
        assert!(!null_keyed(wrapped.as_bytes()));
        assert!(check_keyed(b"AAAA").is_err());
        assert!(!null_keyed(b"AAAA"), "left to systemd-creds to refuse");
    }
}
