//! The file of trusted keys (`git.allowed_signers` or `git.gpg_keyring`), read before any
//! signature is checked against it, by the sync and by doctor alike.

use std::path::Path;

use crate::config::Verify;

/// What is wrong with the file of trusted keys, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysProblem {
    pub problem: String,
    pub fix: String,
}

/// Reads the file of trusted keys before any signature is checked against it: a file that is
/// missing, empty or not in its format would otherwise read as "not an allowed signer" or "not
/// in the keyring", blaming the code for a broken setup. Either way nothing is trusted.
pub fn check_keys(verify: Verify, keys: &Path) -> Result<(), KeysProblem> {
    use std::io::Read;
    let (setting, fix) = match verify {
        Verify::None => return Ok(()),
        Verify::Ssh => (
            "git.allowed_signers",
            "put the trusted keys there in git's allowed-signers format, one line each: \
             `deploy@example.com ssh-ed25519 AAAA…`"
                .to_string(),
        ),
        Verify::Gpg => (
            "git.gpg_keyring",
            format!(
                "export the trusted public keys there as a binary keyring: `gpg --export KEYID > {}`",
                keys.display()
            ),
        ),
    };
    let problem = |what: String| KeysProblem {
        problem: format!("{setting} {} {what}", keys.display()),
        fix: fix.clone(),
    };
    let mut text = Vec::new();
    std::fs::File::open(keys)
        .and_then(|file| file.take(MAX_KEYS_FILE).read_to_end(&mut text))
        .map_err(|e| problem(format!("cannot be read ({e})")))?;
    if text.iter().all(u8::is_ascii_whitespace) {
        return Err(problem("is empty: it trusts no key".into()));
    }
    match verify {
        Verify::Ssh => match String::from_utf8_lossy(&text)
            .lines()
            .enumerate()
            .find(|(_, line)| !is_allowed_signer_line(line))
        {
            Some((at, _)) => Err(KeysProblem {
                problem: format!(
                    "line {} of {setting} {} is not an allowed-signers line \
                     (`principals [options] key-type base64-key`)",
                    at + 1,
                    keys.display()
                ),
                fix: format!("fix or remove that line; {fix}"),
            }),
            None => Ok(()),
        },
        _ => gpg_keyring_problem(&text).map_or(Ok(()), |(what, own_fix)| {
            Err(KeysProblem {
                fix: own_fix.unwrap_or_else(|| fix.clone()),
                ..problem(what)
            })
        }),
    }
}

/// More than any keyring of trusted signers: the file is read no further.
const MAX_KEYS_FILE: u64 = 16 << 20;

/// A line of an allowed-signers file: blank, a comment, or principals, options and a key whose
/// base64 blob carries its own type, as OpenSSH writes keys.
fn is_allowed_signer_line(line: &str) -> bool {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return true;
    }
    let fields: Vec<&str> = line.split_whitespace().collect();
    // The principals come first; the key type may follow options.
    (1..fields.len().saturating_sub(1)).any(|at| blob_has_type(fields[at + 1], fields[at]))
}

/// Whether `blob` is base64 of an SSH public key of type `kind` (a length-prefixed string).
fn blob_has_type(blob: &str, kind: &str) -> bool {
    let Some(bytes) = base64_decode(blob) else {
        return false;
    };
    let Some((len, rest)) = bytes.split_first_chunk::<4>() else {
        return false;
    };
    let len = u32::from_be_bytes(*len) as usize;
    !kind.is_empty() && rest.get(..len) == Some(kind.as_bytes())
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let text = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for &c in text {
        acc = (acc << 6) | u32::from(digit(c)?);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Why `keyring` is not a keyring gpgv reads (its problem, and a fix of its own when the general
/// one would not help), from its first bytes: an OpenPGP public key packet, or GnuPG's keybox.
fn gpg_keyring_problem(keyring: &[u8]) -> Option<(String, Option<String>)> {
    let start = keyring.trim_ascii_start();
    if start.starts_with(b"-----BEGIN PGP") {
        return Some((
            "is ASCII-armoured; gpgv needs a binary keyring".into(),
            Some(
                "convert it with `gpg --dearmor < FILE > FILE.gpg` and point git.gpg_keyring at \
                 the result (or export the keys without --armor)"
                    .into(),
            ),
        ));
    }
    if keyring.get(8..12) == Some(b"KBXf") {
        return None;
    }
    let first = keyring[0];
    let tag = if first & 0x40 != 0 {
        first & 0x3f
    } else {
        (first >> 2) & 0x0f
    };
    (first & 0x80 == 0 || tag != 6).then(|| {
        (
            "is not an OpenPGP keyring (it does not start with a public key)".into(),
            None,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_empty_or_garbage_allowed_signers_file_is_named_as_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("allowed_signers");
        let problem = |text: Option<&str>| {
            if let Some(text) = text {
                std::fs::write(&file, text).unwrap();
            }
            check_keys(Verify::Ssh, &file).map_err(|p| p.problem)
        };
        let err = problem(None).unwrap_err();
        assert!(
            err.contains("allowed_signers cannot be read (No such file"),
            "{err}"
        );
        assert!(problem(Some("\n \n"))
            .unwrap_err()
            .ends_with("is empty: it trusts no key"));
        let key = "AAAAC3NzaC1lZDI1NTE5AAAAIE3Ku3ng0/0dD47e7xqL4Eq6FkCw3D2xgnDq0LZXKq2w";
        let good = format!(
            "# the deployers\ndeploy@example.com ssh-ed25519 {key}\n\
             ops@example.com namespaces=\"git\" ssh-ed25519 {key} comment\n"
        );
        assert_eq!(problem(Some(&good)), Ok(()));
        let garbage = format!("{good}this is not a key\n");
        let err = problem(Some(&garbage)).unwrap_err();
        assert!(err.starts_with("line 4 of git.allowed_signers"), "{err}");
        // A key whose blob does not carry the type it claims is no key.
        let mislabelled = format!("deploy@example.com ssh-rsa {key}\n");
        assert!(problem(Some(&mislabelled)).is_err());
        assert!(problem(Some("deploy@example.com ssh-ed25519 !!!\n")).is_err());
    }

    #[test]
    fn a_missing_empty_armoured_or_garbage_keyring_is_named_as_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("trusted.gpg");
        let problem = |bytes: Option<&[u8]>| {
            if let Some(bytes) = bytes {
                std::fs::write(&file, bytes).unwrap();
            }
            check_keys(Verify::Gpg, &file)
        };
        assert!(problem(None)
            .unwrap_err()
            .problem
            .contains("cannot be read"));
        assert!(problem(Some(b"")).unwrap_err().problem.contains("is empty"));
        let armoured =
            problem(Some(b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ...\n")).unwrap_err();
        assert!(
            armoured
                .problem
                .ends_with("is ASCII-armoured; gpgv needs a binary keyring"),
            "{armoured:?}"
        );
        assert!(armoured.fix.contains("gpg --dearmor"), "{armoured:?}");
        let garbage = problem(Some(b"hello")).unwrap_err();
        assert!(
            garbage.problem.contains("is not an OpenPGP keyring"),
            "{garbage:?}"
        );
        assert!(garbage.fix.contains("gpg --export"), "{garbage:?}");
        // A public key packet, new (0xc6) or old (0x98) format, and GnuPG's keybox.
        assert_eq!(problem(Some(b"\xc6\x33\x04")), Ok(()));
        assert_eq!(problem(Some(b"\x98\x33\x04")), Ok(()));
        assert_eq!(problem(Some(b"\0\0\0\x20\x01\x01\0\x02KBXf")), Ok(()));
        // A secret key (tag 5) is not what gpgv checks against.
        assert!(problem(Some(b"\xc5\x33\x04")).is_err());
    }
}
