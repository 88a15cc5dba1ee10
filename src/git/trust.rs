//! Who wrote the code: the commit to deploy (or the tag that names it) must carry a valid
//! signature by a trusted key, checked as git itself does — `ssh-keygen -Y` against git's
//! allowed-signers file, or `gpgv` against a keyring — with no cryptography in this binary. And,
//! with `git.allow_rewind = false`, the new commit must descend from the release in service.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use git2::{Oid, Repository};

use super::tag_object::{bound_to, split_tag_signature};
use super::trusted_keys::check_keys;
use super::GitError;
use crate::config::{Signed, Verify};
use crate::plan::Trust;

/// Checks `target` (the commit to deploy, and the tag object that names it when the ref is an
/// annotated tag) before it is deployed over `in_service`. `reference` is `git.ref`, as the
/// messages name it.
pub(super) fn check(
    repo: &Repository,
    trust: &Trust,
    reference: &str,
    target: &Target,
    in_service: Option<Oid>,
) -> Result<(), GitError> {
    let commit = target.commit;
    if trust.verify != Verify::None {
        check_keys(trust.verify, &trust.keys).map_err(|problem| GitError::Keys {
            problem: problem.problem,
            fix: problem.fix,
        })?;
        let (object, signature, payload) = match trust.signed {
            Signed::Commit => {
                let object = format!("commit {commit}");
                match commit_signature(repo, commit) {
                    Ok(Ok((signature, payload))) => (object, signature, payload),
                    Ok(Err(why)) => return Err(unverified(trust, commit, object, why)),
                    Err(e) => {
                        return Err(GitError::Local {
                            action: "read the commit to verify",
                            dir: repo.path().to_path_buf(),
                            message: e.message().to_string(),
                        })
                    }
                }
            }
            Signed::Tag => {
                let Some(tag) = target.tag else {
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
                // What the signature covers is what binds the tag to its commit and its name:
                // the headers of these very bytes, not what the remote advertised.
                if let Err(reason) = bound_to(raw.data(), &target.reference, commit) {
                    return Err(unverified(trust, commit, object, reason));
                }
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

/// A signature and the bytes it signs.
type SignatureAndPayload = (Vec<u8>, Vec<u8>);

/// The commit's signature and what it signs: `Ok(Err(why))` when it carries none that can be
/// read, which refuses it. `Err` is only a commit whose object cannot be read (missing,
/// damaged), which says nothing about its signature: told as "not signed", a damaged repository
/// would pass for an attack. Whatever the object's content does to libgit2's parser (a
/// malformed header a remote can push) is the remote's doing, and refuses the commit.
fn commit_signature(
    repo: &Repository,
    commit: Oid,
) -> Result<Result<SignatureAndPayload, String>, git2::Error> {
    repo.odb()?.read(commit)?;
    Ok(match repo.extract_signature(&commit, None) {
        Ok((signature, payload)) => Ok((signature.to_vec(), payload.to_vec())),
        Err(e)
            if e.code() == git2::ErrorCode::NotFound && e.class() == git2::ErrorClass::Object =>
        {
            Err("it is not signed".into())
        }
        Err(e) => Err(format!("its signature cannot be read ({})", e.message())),
    })
}

/// What a ref names, read from this side's object database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    /// The ref as the remote listed it (`refs/tags/rel-1`).
    pub reference: String,
    pub commit: Oid,
    /// The annotated tag's object, when the ref names one.
    pub tag: Option<Oid>,
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

/// gpgv against the keyring, deciding from its machine-readable status lines. Ok: who signed.
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
    gpg_verdict(&text, good)
}

/// What gpgv's status lines say of one detached signature, decided with an allow-list: exactly
/// one signature (`NEWSIG`), reported both `GOODSIG` and `VALIDSIG`, by a key neither expired nor
/// revoked, and no status line bootagent does not know. gpgv itself exits 0 for a signature by
/// an expired or a revoked key (`EXPKEYSIG`, `REVKEYSIG`), so its exit status alone decides
/// nothing. `KEYEXPIRED` is allowed: gpgv prints it for any expired subkey of a key it
/// considers, also one that did not sign; the signing key's expiry is `EXPKEYSIG`.
fn gpg_verdict(output: &str, exited_ok: bool) -> Result<String, String> {
    let lines: Vec<(&str, &str)> = output
        .lines()
        .filter_map(|line| line.strip_prefix("[GNUPG:] "))
        .map(|line| line.split_once(' ').unwrap_or((line, "")))
        .collect();
    let first = |keyword: &str| {
        lines
            .iter()
            .find(|(k, _)| *k == keyword)
            .map(|(_, args)| *args)
    };
    // `KEYID user id` → (`KEYID`, ` (user id)`).
    let key_and_user = |args: &str| match args.split_once(' ') {
        Some((key, user)) => (key.to_string(), format!(" ({user})")),
        None => (args.to_string(), String::new()),
    };
    // The signing key's primary fingerprint when gpgv got that far, else the key id it named.
    let signer = |args: &str| {
        let (id, user) = key_and_user(args);
        let primary = first("VALIDSIG").and_then(|valid| valid.split_whitespace().nth(9));
        format!("{}{user}", primary.unwrap_or(&id))
    };
    match lines.iter().filter(|(k, _)| *k == "NEWSIG").count() {
        1 => {}
        0 => {
            return Err(format!(
                "gpgv found no signature in it: {}",
                one_line(output)
            ))
        }
        n => {
            return Err(format!(
                "it carries {n} OpenPGP signatures, and only one is accepted: sign it once"
            ))
        }
    }
    if let Some(args) = first("REVKEYSIG") {
        return Err(format!(
            "it is signed by key {}, which is revoked: its owner withdrew it; sign it with a key \
             that is not revoked, and remove the revoked key from the keyring",
            signer(args)
        ));
    }
    if first("KEYREVOKED").is_some() {
        return Err(
            "the key that signed it is revoked (gpgv: KEYREVOKED); sign it with a key \
                    that is not revoked, and remove the revoked key from the keyring"
                .into(),
        );
    }
    if let Some(args) = first("EXPKEYSIG") {
        let mut expired: Vec<&str> = lines
            .iter()
            .filter(|(k, _)| *k == "KEYEXPIRED")
            .map(|(_, at)| *at)
            .collect();
        expired.dedup();
        // Only a single expiry is surely the signing key's.
        let when = match expired.as_slice() {
            [at] => at
                .parse::<u64>()
                .map(|secs| {
                    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
                    format!(" on {}", humantime::format_rfc3339_seconds(at))
                })
                .unwrap_or_default(),
            _ => String::new(),
        };
        let signed_by = signer(args);
        let key = signed_by.split(' ').next().unwrap_or_default();
        return Err(format!(
            "it is signed by key {signed_by}, which expired{when}; sign it again with a current \
             key, or extend the key's expiry (`gpg --quick-set-expire {key} 1y`) and export it \
             to the keyring again"
        ));
    }
    if let Some(args) = first("EXPSIG") {
        return Err(format!(
            "its signature by key {} has expired (the signature's own expiry); sign it again",
            signer(args)
        ));
    }
    if let Some(args) = first("BADSIG") {
        let (key, user) = key_and_user(args);
        return Err(format!(
            "its signature by key {key}{user} does not verify: what was signed is not this"
        ));
    }
    if let Some(key) = first("NO_PUBKEY") {
        return Err(format!(
            "it is signed by key {key}, which is not in the keyring"
        ));
    }
    if let Some(args) = first("ERRSIG") {
        return Err(format!(
            "gpgv could not check its signature (ERRSIG {args})"
        ));
    }
    const INFORMATIONAL: &[&str] = &[
        "NEWSIG",
        "KEY_CONSIDERED",
        "SIG_ID",
        "KEYEXPIRED",
        "NOTATION_NAME",
        "NOTATION_FLAGS",
        "NOTATION_DATA",
        "POLICY_URL",
        "GOODSIG",
        "VALIDSIG",
    ];
    if let Some((keyword, args)) = lines.iter().find(|(k, _)| !INFORMATIONAL.contains(k)) {
        return Err(format!(
            "gpgv reported {keyword} {args}, a status bootagent does not accept, so the \
             signature is not trusted"
        ));
    }
    match (exited_ok, first("GOODSIG"), first("VALIDSIG")) {
        (true, Some(good), Some(valid)) => {
            let fingerprint = valid.split_whitespace().next().unwrap_or_default();
            let (_, user) = key_and_user(good);
            Ok(format!("key {fingerprint}{user}"))
        }
        _ => Err(format!(
            "gpgv did not report a good, valid signature: {}",
            one_line(output)
        )),
    }
}

/// The program `verify` runs to check a signature.
pub fn tool(verify: Verify) -> Option<&'static str> {
    match verify {
        Verify::None => None,
        Verify::Ssh => Some("ssh-keygen"),
        Verify::Gpg => Some("gpgv"),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// gpgv 2.2's status lines (`--status-fd 1`) for a detached signature, as it printed them
    /// for keys made for the purpose; `sig` is the one verdict line, `extra` what comes before.
    fn gpgv_says(extra: &str, sig: &str, valid: bool) -> String {
        let fpr = "023D94D4123006E2C6E112621E77F20237FE9465";
        let mut text = format!(
            "[GNUPG:] NEWSIG\n[GNUPG:] KEY_CONSIDERED {fpr} 0\n{extra}\
             [GNUPG:] SIG_ID Ux+2iS++HtaZiHKhweOMcwzcodE 2020-01-01 1577840400\n\
             [GNUPG:] KEY_CONSIDERED {fpr} 0\n[GNUPG:] {sig} 1E77F20237FE9465 exp <e@x>\n"
        );
        if valid {
            text.push_str(&format!(
                "[GNUPG:] VALIDSIG {fpr} 2020-01-01 1577840400 0 4 0 22 8 00 {fpr}\n"
            ));
        }
        text
    }

    #[test]
    fn only_one_good_valid_signature_by_a_current_key_is_trusted() {
        let good = gpgv_says("", "GOODSIG", true);
        let signer = gpg_verdict(&good, true).unwrap();
        assert_eq!(
            signer,
            "key 023D94D4123006E2C6E112621E77F20237FE9465 (exp <e@x>)"
        );
        // An expired subkey that did not sign is no reason to refuse.
        let subkey = gpgv_says("[GNUPG:] KEYEXPIRED 1577923200\n", "GOODSIG", true);
        assert!(gpg_verdict(&subkey, true).is_ok());
        // gpgv's exit status, or a missing VALIDSIG, is enough to refuse.
        assert!(gpg_verdict(&good, false).is_err());
        assert!(gpg_verdict(&gpgv_says("", "GOODSIG", false), true).is_err());
        // Two signatures, or none.
        let twice = format!("{good}{good}");
        let err = gpg_verdict(&twice, true).unwrap_err();
        assert!(err.contains("it carries 2 OpenPGP signatures"), "{err}");
        let err = gpg_verdict("gpgv: no signature found\n", false).unwrap_err();
        assert!(err.contains("gpgv found no signature"), "{err}");
    }

    #[test]
    fn expired_and_revoked_keys_are_refused_though_gpgv_exits_0() {
        // gpgv exits 0 for both: only the status lines tell.
        let expired = gpgv_says("[GNUPG:] KEYEXPIRED 1577923200\n", "EXPKEYSIG", true);
        let err = gpg_verdict(&expired, true).unwrap_err();
        assert!(
            err.contains(
                "signed by key 023D94D4123006E2C6E112621E77F20237FE9465 (exp <e@x>), which \
                 expired on 2020-01-02T00:00:00Z"
            ),
            "{err}"
        );
        assert!(err.contains("gpg --quick-set-expire 023D94D4"), "{err}");
        let revoked = gpgv_says("", "REVKEYSIG", true);
        let err = gpg_verdict(&revoked, true).unwrap_err();
        assert!(err.contains("which is revoked"), "{err}");
        let err =
            gpg_verdict(&gpgv_says("[GNUPG:] KEYREVOKED\n", "GOODSIG", true), true).unwrap_err();
        assert!(err.contains("KEYREVOKED"), "{err}");
        let err = gpg_verdict(&gpgv_says("", "EXPSIG", true), true).unwrap_err();
        assert!(
            err.contains("has expired (the signature's own expiry)"),
            "{err}"
        );
    }

    #[test]
    fn bad_unknown_and_unchecked_signatures_are_refused_each_with_its_cause() {
        let bad = "[GNUPG:] NEWSIG\n[GNUPG:] BADSIG 21C9A1FDDCA07DD4 good <g@x>\n";
        let err = gpg_verdict(bad, false).unwrap_err();
        assert!(
            err.contains("by key 21C9A1FDDCA07DD4 (good <g@x>) does not verify"),
            "{err}"
        );
        let unknown = "[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG 21C9A1FDDCA07DD4 22 8 00 1796403493 9 \
                       806A3C16EB71A955F471953121C9A1FDDCA07DD4\n\
                       [GNUPG:] NO_PUBKEY 21C9A1FDDCA07DD4\n";
        let err = gpg_verdict(unknown, false).unwrap_err();
        assert_eq!(
            err,
            "it is signed by key 21C9A1FDDCA07DD4, which is not in the keyring"
        );
        let errsig = "[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG 21C9A1FDDCA07DD4 99 8 00 1 4 -\n";
        let err = gpg_verdict(errsig, false).unwrap_err();
        assert!(
            err.contains("could not check its signature (ERRSIG 21C9"),
            "{err}"
        );
        // A status line nobody taught bootagent is a refusal that names it (fail closed).
        let novel = gpgv_says("[GNUPG:] TOFU_STATS 1 2 3\n", "GOODSIG", true);
        let err = gpg_verdict(&novel, true).unwrap_err();
        assert!(err.contains("gpgv reported TOFU_STATS 1 2 3"), "{err}");
    }

    #[test]
    fn the_key_seen_is_taken_from_ssh_keygens_words() {
        assert_eq!(
            key_of("Good \"git\" signature with ED25519 key SHA256:abc\n"),
            "ED25519 key SHA256:abc"
        );
        assert_eq!(key_of("something else"), "an unknown key");
    }

    #[test]
    fn a_commit_that_cannot_be_read_is_an_error_not_an_unsigned_commit() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let tree = repo.treebuilder(None).unwrap().write().unwrap();
        let tree = repo.find_tree(tree).unwrap();
        let who = git2::Signature::now("t", "t@example.invalid").unwrap();
        let plain = repo.commit(None, &who, &who, "plain", &tree, &[]).unwrap();
        assert_eq!(
            commit_signature(&repo, plain).unwrap().unwrap_err(),
            "it is not signed"
        );
        let content = repo
            .commit_create_buffer(&who, &who, "signed", &tree, &[])
            .unwrap();
        let content = content.as_str().unwrap();
        let signed = repo.commit_signed(content, "SIGNATURE", None).unwrap();
        let (signature, payload) = commit_signature(&repo, signed).unwrap().unwrap();
        assert_eq!(signature, b"SIGNATURE");
        assert_eq!(payload, content.as_bytes());
        // A message ending in a header-like `gpgsig` line: git takes the commit, libgit2's
        // signature parser fails on it. The remote's content refuses, never a local error.
        let forged = repo
            .commit(None, &who, &who, "ok\n\ngpgsig a\n b", &tree, &[])
            .unwrap();
        let refused = commit_signature(&repo, forged).unwrap().unwrap_err();
        assert!(refused.contains("cannot be read"), "{refused}");
        let missing = Oid::from_str("0123456789012345678901234567890123456789").unwrap();
        assert!(commit_signature(&repo, missing).is_err());
    }
}
