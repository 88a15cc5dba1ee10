//! Who wrote the code: the commit to deploy (or the tag that names it) must carry a valid
//! signature by a trusted key, checked as git itself does — `ssh-keygen -Y` against git's
//! allowed-signers file, or `gpgv` against a keyring — with no cryptography in this binary. And,
//! with `git.allow_rewind = false`, the new commit must descend from the release in service.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use git2::{Oid, Repository};

use super::GitError;
use crate::config::{Signed, Verify};
use crate::plan::Trust;

/// Checks `commit` (named by the tag object `tag`, when the ref is an annotated tag) before it
/// is deployed over `in_service`.
pub(super) fn check(
    repo: &Repository,
    trust: &Trust,
    reference: &str,
    commit: Oid,
    tag: Option<Oid>,
    in_service: Option<Oid>,
) -> Result<(), GitError> {
    if trust.verify != Verify::None {
        let (object, signature, payload) = match trust.signed {
            Signed::Commit => {
                let object = format!("commit {commit}");
                match repo.extract_signature(&commit, None) {
                    Ok((signature, payload)) => (object, signature.to_vec(), payload.to_vec()),
                    Err(_) => {
                        return Err(unverified(trust, commit, object, "it is not signed".into()))
                    }
                }
            }
            Signed::Tag => {
                let Some(tag) = tag else {
                    return Err(unverified(
                        trust,
                        commit,
                        format!("{reference} ({commit})"),
                        format!("{reference} is not an annotated tag, so it carries no signature"),
                    ));
                };
                let object = format!("tag {reference} ({tag}, commit {commit})");
                let unreadable =
                    |e: git2::Error| unverified(trust, commit, object.clone(), e.message().into());
                let odb = repo.odb().map_err(unreadable)?;
                let raw = odb.read(tag).map_err(unreadable)?;
                match split_tag_signature(raw.data()) {
                    Some((payload, signature)) => (object, signature.to_vec(), payload.to_vec()),
                    None => {
                        return Err(unverified(trust, commit, object, "it is not signed".into()))
                    }
                }
            }
        };
        let checked = match trust.verify {
            Verify::Ssh => ssh_verify(&trust.keys, &signature, &payload),
            Verify::Gpg => gpg_verify(&trust.keys, &signature, &payload),
            Verify::None => unreachable!("checked above"),
        };
        match checked {
            Ok(signer) => {
                tracing::info!(%commit, signer = %signer, "the code's signature is trusted")
            }
            Err(reason) => return Err(unverified(trust, commit, object, reason)),
        }
    }
    if let (false, Some(in_service)) = (trust.allow_rewind, in_service) {
        let descends = in_service == commit
            || repo
                .graph_descendant_of(commit, in_service)
                .unwrap_or(false);
        if !descends {
            return Err(GitError::Rewound {
                reference: reference.to_string(),
                commit: commit.to_string(),
                in_service: in_service.to_string(),
            });
        }
    }
    Ok(())
}

fn unverified(trust: &Trust, commit: Oid, object: String, reason: String) -> GitError {
    GitError::Unverified {
        object,
        commit: commit.to_string(),
        reason,
        keys: trust.keys.display().to_string(),
    }
}

/// A tag object's text and the signature appended to it, as git writes them.
fn split_tag_signature(data: &[u8]) -> Option<(&[u8], &[u8])> {
    [
        "-----BEGIN SSH SIGNATURE-----",
        "-----BEGIN PGP SIGNATURE-----",
    ]
    .iter()
    .find_map(|marker| {
        let at = find(data, marker.as_bytes())?;
        (at == 0 || data[at - 1] == b'\n').then(|| data.split_at(at))
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Files for the verifying tool, in a directory of their own, removed when dropped.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(signature: &[u8], payload: &[u8]) -> Result<Scratch, String> {
        use std::os::unix::fs::DirBuilderExt;
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "bootagent-verify-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let scratch = std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map(|()| Scratch { dir })
            .map_err(|e| format!("cannot make a scratch directory: {e}"))?;
        std::fs::write(scratch.path("signature"), signature)
            .and_then(|()| std::fs::write(scratch.path("payload"), payload))
            .map_err(|e| format!("cannot write the signature to check: {e}"))?;
        Ok(scratch)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `command` with `stdin` from a file; its exit status and what it printed.
fn run(mut command: Command, stdin: Option<&Path>) -> Result<(bool, String), String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let input = match stdin {
        Some(path) => Stdio::from(
            std::fs::File::open(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        ),
        None => Stdio::null(),
    };
    let output = command
        .stdin(input)
        .output()
        .map_err(|e| format!("cannot run {program} (install it in the image): {e}"))?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Ok((output.status.success(), text))
}

/// As git does for `gpg.format = ssh`: the principal the allowed-signers file gives the key,
/// then a verification as that principal in the `git` namespace. Ok: who signed.
fn ssh_verify(allowed_signers: &Path, signature: &[u8], payload: &[u8]) -> Result<String, String> {
    let scratch = Scratch::new(signature, payload)?;
    let (sig, data) = (scratch.path("signature"), scratch.path("payload"));
    let mut seen = Command::new("ssh-keygen");
    seen.args(["-Y", "check-novalidate", "-n", "git", "-s"])
        .arg(&sig);
    let key = match run(seen, Some(&data))? {
        (true, text) => key_of(&text),
        (false, text) => return Err(format!("its signature is not valid: {}", one_line(&text))),
    };
    let mut find = Command::new("ssh-keygen");
    find.args(["-Y", "find-principals", "-f"])
        .arg(allowed_signers)
        .arg("-s")
        .arg(&sig);
    let principal = match run(find, None)? {
        (true, text) => text.lines().next().unwrap_or_default().trim().to_string(),
        (false, _) => {
            return Err(format!(
                "it is signed by {key}, which is not an allowed signer"
            ))
        }
    };
    let mut verify = Command::new("ssh-keygen");
    verify
        .args(["-Y", "verify", "-n", "git", "-f"])
        .arg(allowed_signers)
        .args(["-I", &principal, "-s"])
        .arg(&sig);
    match run(verify, Some(&data))? {
        (true, _) => Ok(format!("{principal} ({key})")),
        (false, text) => Err(format!(
            "its signature by {key} ({principal}) does not verify: {}",
            one_line(&text)
        )),
    }
}

/// `… with ED25519 key SHA256:…` → `ED25519 key SHA256:…`.
fn key_of(text: &str) -> String {
    text.split_once(" with ")
        .map(|(_, key)| key.lines().next().unwrap_or_default().trim().to_string())
        .unwrap_or_else(|| "an unknown key".to_string())
}

/// gpgv against the keyring, reading its machine-readable status lines. Ok: who signed.
fn gpg_verify(keyring: &Path, signature: &[u8], payload: &[u8]) -> Result<String, String> {
    let scratch = Scratch::new(signature, payload)?;
    let keyring = std::path::absolute(keyring).unwrap_or_else(|_| keyring.to_path_buf());
    let mut gpgv = Command::new("gpgv");
    gpgv.arg("--homedir")
        .arg(&scratch.dir)
        .args(["--status-fd", "1", "--keyring"])
        .arg(&keyring)
        .arg(scratch.path("signature"))
        .arg(scratch.path("payload"));
    let (good, text) = run(gpgv, None)?;
    let status = |tag: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("[GNUPG:] {tag} ")))
            .map(str::to_string)
    };
    if let (true, Some(valid)) = (good, status("VALIDSIG")) {
        let fingerprint = valid.split_whitespace().next().unwrap_or_default();
        let who = status("GOODSIG").map(|g| {
            g.split_once(' ')
                .map_or(g.clone(), |(_, uid)| uid.to_string())
        });
        return Ok(format!("{} (key {fingerprint})", who.unwrap_or_default()));
    }
    if let Some(missing) = status("NO_PUBKEY") {
        return Err(format!(
            "it is signed by key {missing}, which is not in the keyring"
        ));
    }
    if let Some(bad) = status("BADSIG") {
        return Err(format!("its signature by key {bad} does not verify"));
    }
    Err(format!(
        "its signature does not verify: {}",
        one_line(&text)
    ))
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tags_signature_is_split_from_its_text_at_the_line_that_starts_it() {
        let tag = b"object abc\ntype commit\ntag v1\n\nv1\n-----BEGIN SSH SIGNATURE-----\nU1NI\n-----END SSH SIGNATURE-----\n";
        let (payload, signature) = split_tag_signature(tag).unwrap();
        assert!(payload.ends_with(b"\nv1\n"));
        assert!(signature.starts_with(b"-----BEGIN SSH SIGNATURE-----"));
        // A message that merely quotes the marker mid-line is no signature.
        let quoted = b"object abc\ntag v1\n\nsee -----BEGIN PGP SIGNATURE----- here\n";
        assert!(split_tag_signature(quoted).is_none());
    }

    #[test]
    fn the_key_seen_is_taken_from_ssh_keygens_words() {
        assert_eq!(
            key_of("Good \"git\" signature with ED25519 key SHA256:abc\n"),
            "ED25519 key SHA256:abc"
        );
        assert_eq!(key_of("something else"), "an unknown key");
    }
}
