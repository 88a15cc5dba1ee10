//! Signed code: with `git.verify`, only a commit (or, with `git.signed = "tag"`, an annotated
//! tag) signed by a trusted key deploys — SSH signatures checked with `ssh-keygen -Y` against an
//! allowed-signers file, OpenPGP ones with `gpgv` against a keyring — and with
//! `git.allow_rewind = false` a force push is refused. Each refusal keeps the release in service,
//! names the commit, the key seen and the file, and is logged as a security event.

use std::path::Path;

use support::*;

/// An instance that deploys `test` only when `trust` (the [git] keys) allows it, failing the
/// boot rather than keeping the last good release, so that each refusal has its exit code.
fn instance(trust: &str) -> Instance {
    Instance::exec_mode(&format!("[git]\non_failure = \"fail\"\n{trust}"))
}

fn allowed_signers(dir: &Path, signers: &[&SshSigner]) -> std::path::PathBuf {
    let path = dir.join("allowed_signers");
    let lines: Vec<&str> = signers.iter().map(|s| s.allowed.as_str()).collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// The boot is refused as a security event naming `what` and the trusted keys' file, and the
/// release in service stays `kept` (`None`: there was none).
fn assert_refused(
    instance: &Instance,
    imds: &Imds,
    name: &str,
    what: &str,
    keys: &Path,
    kept: Option<&str>,
) {
    instance
        .run(imds, &["boot"])
        .expect(7)
        .stderr_has(what)
        .stderr_has(&keys.display().to_string())
        .stderr_has("security_event=");
    match kept {
        Some(commit) => assert_eq!(instance.running_commit(name), commit),
        None => assert!(!instance.checkout(name).exists(), "nothing was deployed"),
    }
}

/// With the trust settings given, a commit by the trusted signer deploys; then one by a
/// stranger (whose key the message shows as `stranger_seen`) and an unsigned one are refused,
/// and the trusted one keeps running.
fn only_the_trusted_signer_deploys(
    (name, mut repo, imds): (String, SampleRepo, Imds),
    instance: &Instance,
    keys: &Path,
    (trusted, stranger): (&[String], &[String]),
    stranger_seen: &str,
) {
    let signed = repo.push_with("test", "signed build", trusted);
    instance.run(&imds, &["boot"]).expect(0);
    assert_eq!(instance.running_commit(&name), signed);

    let strange = repo.push_with("test", "stranger build", stranger);
    let said = format!("refused commit {strange}: it is signed by {stranger_seen}");
    assert_refused(instance, &imds, &name, &said, keys, Some(&signed));
    let unsigned = repo.push_version("test", "unsigned build");
    let said = format!("refused commit {unsigned}: it is not signed");
    assert_refused(instance, &imds, &name, &said, keys, Some(&signed));
}

#[test]
fn a_commit_signed_by_an_allowed_ssh_key_deploys_and_others_are_refused() {
    support::needs_world!();
    let service = small_service("ssig", "test");
    let keys = tempfile::tempdir().unwrap();
    let trusted = SshSigner::new(keys.path(), "deploy");
    let stranger = SshSigner::new(keys.path(), "stranger");
    let allowed = allowed_signers(keys.path(), &[&trusted]);
    let instance = instance(&format!(
        "verify = \"ssh\"\nallowed_signers = \"{}\"\n",
        allowed.display()
    ));
    // The branch's first commit is unsigned: a first boot deploys nothing.
    let (name, _, imds) = &service;
    let unsigned = service.1.commits["test"].clone();
    let said = format!("refused commit {unsigned}: it is not signed");
    assert_refused(&instance, imds, name, &said, &allowed, None);
    only_the_trusted_signer_deploys(
        service,
        &instance,
        &allowed,
        (&trusted.settings(), &stranger.settings()),
        "ED25519 key SHA256:",
    );
}

#[test]
fn with_last_good_a_refused_commit_leaves_a_degraded_boot_that_names_it() {
    support::needs_world!();
    let (name, mut repo, imds) = small_service("ssigl", "test");
    let keys = tempfile::tempdir().unwrap();
    let trusted = SshSigner::new(keys.path(), "deploy");
    let allowed = allowed_signers(keys.path(), &[&trusted]);
    let instance = Instance::exec_mode(&format!(
        "[git]\nverify = \"ssh\"\nallowed_signers = \"{}\"\n",
        allowed.display()
    ));
    let signed = repo.push_with("test", "signed build", &trusted.settings());
    instance.run(&imds, &["boot"]).expect(0);
    let unsigned = repo.push_version("test", "unsigned build");
    instance.run(&imds, &["boot"]).expect(0);
    assert_eq!(instance.running_commit(&name), signed);
    let status = instance.status();
    assert_eq!(status["outcome"], "degraded");
    let why = status["degraded"].as_str().unwrap();
    assert!(
        why.contains(&format!("refused commit {unsigned}: it is not signed")),
        "{why}"
    );
}

#[test]
fn a_commit_signed_by_a_key_in_the_gpg_keyring_deploys_and_an_unknown_key_is_refused() {
    support::needs_world!();
    let trusted = GpgSigner::new("deploy");
    let stranger = GpgSigner::new("stranger");
    let instance = instance(&format!(
        "verify = \"gpg\"\ngpg_keyring = \"{}\"\n",
        trusted.keyring.display()
    ));
    only_the_trusted_signer_deploys(
        small_service("gsig", "test"),
        &instance,
        &trusted.keyring,
        (&trusted.settings(), &stranger.settings()),
        "key ",
    );
}

#[test]
fn in_tag_mode_only_a_signed_annotated_tag_deploys() {
    support::needs_world!();
    let (name, repo, imds) = small_service("tsig", "test");
    let keys = tempfile::tempdir().unwrap();
    let trusted = SshSigner::new(keys.path(), "deploy");
    let allowed = allowed_signers(keys.path(), &[&trusted]);
    let trust = |tag: &str| {
        format!(
            "ref = \"{tag}\"\nverify = \"ssh\"\nsigned = \"tag\"\nallowed_signers = \"{}\"\n",
            allowed.display()
        )
    };
    repo.push_tag("test", "v1", &trusted.settings());
    let signed = instance(&trust("v1"));
    signed.run(&imds, &["boot"]).expect(0);
    assert_eq!(signed.running_commit(&name), repo.commits["test"]);

    repo.push_tag("test", "v2", &[]);
    assert_refused(
        &instance(&trust("v2")),
        &imds,
        &name,
        "refused tag v2 (",
        &allowed,
        None,
    );
    repo.push_lightweight_tag("test", "v3");
    assert_refused(
        &instance(&trust("v3")),
        &imds,
        &name,
        "v3 is not an annotated tag, so it carries no signature",
        &allowed,
        None,
    );
    instance(&trust("v9"))
        .run(&imds, &["boot"])
        .expect(7)
        .stderr_has("v9");
}

#[test]
fn a_force_push_is_refused_when_rewinds_are_not_allowed() {
    support::needs_world!();
    let (name, mut repo, imds) = small_service("rew", "test");
    let instance = instance("allow_rewind = false\n");
    let first = repo.commits["test"].clone();
    instance.run(&imds, &["boot"]).expect(0);
    let second = repo.push_version("test", "test build 2");
    instance.run(&imds, &["boot"]).expect(0);
    assert_eq!(instance.running_commit(&name), second);

    repo.force_push("test", &first);
    instance
        .run(&imds, &["boot"])
        .expect(7)
        .stderr_has(&format!(
            "refused test at {first}: it does not descend from {second}"
        ))
        .stderr_has("git.allow_rewind = false")
        .stderr_has("security_event=");
    assert_eq!(instance.running_commit(&name), second);
}
