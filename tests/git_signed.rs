//! Signed code: with `git.verify`, only a commit (or, with `git.signed = "tag"`, an annotated
//! tag) signed by a trusted key deploys — SSH signatures checked with `ssh-keygen -Y` against an
//! allowed-signers file, OpenPGP ones with `gpgv` against a keyring — and with
//! `git.allow_rewind = false` a force push is refused. Each refusal keeps the release in service,
//! names the commit, the key seen and the file, and is logged as a security event. A hostile
//! server (a forged peeled tag, a signed tag replayed under another name), expired and revoked
//! OpenPGP keys and broken files of trusted keys are refused too.

use std::path::Path;

use support::*;

/// An instance that deploys `test` only when `trust` (the [git] keys) allows it, failing the
/// boot rather than keeping the last good release, so that each refusal has its exit code.
fn instance(trust: &str) -> Instance {
    Instance::exec_mode(&format!("[git]\non_failure = \"fail\"\n{trust}"))
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
    let (_keys, trusted, allowed) = one_trusted_signer();
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
    let (_keys, trusted, allowed) = one_trusted_signer();
    let trust = |tag: &str| tag_trust(tag, &allowed);
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

#[test]
fn a_forged_peeled_tag_does_not_choose_the_commit_that_runs() {
    support::needs_world!();
    let (name, mut repo, imds) = small_service("fpeel", "test");
    let (_keys, trusted, allowed) = one_trusted_signer();
    let instance = instance(&format!(
        "{}allow_rewind = false\n",
        tag_trust("rel-1", &allowed)
    ));
    // The server keeps the real signed tag but lists its peeled value as the unsigned commit
    // before it, which the whole-history fetch (allow_rewind = false) brings along.
    repo.push_tag("test", "rel-1", &trusted.settings());
    let signed = repo.commits["test"].clone();
    let unsigned = repo.rev_parse("test^");
    repo.forge_peeled_tag("rel-1", &unsigned);
    let boot = instance.run(&imds, &["boot"]);
    boot.expect(0);
    assert_eq!(instance.running_commit(&name), signed);
    boot.stderr_has(&format!("listed refs/tags/rel-1^{{}} as commit {unsigned}"))
        .stderr_has(&format!("names commit {signed}"))
        .stderr_has("security_event=\"forged-peeled-ref\"");

    // The tag moves on, and the listing claims it still names the release in service: the new
    // release deploys all the same.
    let newer = repo.push_version("test", "test build 2");
    repo.push_tag("test", "rel-1", &trusted.settings());
    repo.forge_peeled_tag("rel-1", &signed);
    let boot = instance.run(&imds, &["boot"]);
    boot.expect(0);
    assert_eq!(instance.running_commit(&name), newer);
    boot.stderr_has("security_event=\"forged-peeled-ref\"");
}

#[test]
fn a_signed_tag_published_under_another_name_is_refused() {
    support::needs_world!();
    let (name, mut repo, imds) = small_service("tren", "test");
    let (_keys, trusted, allowed) = one_trusted_signer();
    let instance = instance(&tag_trust("t-renamed", &allowed));
    repo.push_tag("test", "t-renamed", &trusted.settings());
    instance.run(&imds, &["boot"]).expect(0);
    let released = repo.commits["test"].clone();
    assert_eq!(instance.running_commit(&name), released);

    // Another signed release, t-old, replayed as t-renamed.
    repo.push_version("test", "test build 2");
    repo.push_tag("test", "t-old", &trusted.settings());
    repo.publish_tag_as(&repo.rev_parse("refs/tags/t-old"), "t-renamed");
    assert_refused(
        &instance,
        &imds,
        &name,
        "the signed tag object is named \"t-old\", but the remote publishes it as \"t-renamed\"",
        &allowed,
        Some(&released),
    );
}

#[test]
fn gpg_signatures_by_an_expired_or_a_revoked_key_are_refused_each_with_its_cause() {
    support::needs_world!();
    let (name, mut repo, imds) = small_service("gexp", "test");
    let good = GpgSigner::new("deploy");
    let expired = GpgSigner::expired("old");
    let leaver = GpgSigner::new("leaver");
    let keys = tempfile::tempdir().unwrap();
    let keyring = keys.path().join("trusted.gpg");
    // Binary keyrings concatenate: all three keys are trusted, as they are when exported.
    let trust_all = || {
        let bytes: Vec<u8> = [&good, &expired, &leaver]
            .iter()
            .flat_map(|signer| std::fs::read(&signer.keyring).unwrap())
            .collect();
        std::fs::write(&keyring, bytes).unwrap();
    };
    trust_all();
    let instance = instance(&format!(
        "verify = \"gpg\"\ngpg_keyring = \"{}\"\n",
        keyring.display()
    ));
    let first = repo.push_with("test", "good build", &good.settings());
    instance.run(&imds, &["boot"]).expect(0);
    assert_eq!(instance.running_commit(&name), first);

    let stale = repo.push_with("test", "expired build", &expired.settings());
    let said = format!(
        "refused commit {stale}: it is signed by key {} (old <old@example.com>), which expired \
         on 2020-01-02T00:00:00Z; sign it again with a current key",
        expired.fingerprint
    );
    assert_refused(&instance, &imds, &name, &said, &keyring, Some(&first));

    let gone = repo.push_with("test", "revoked build", &leaver.settings());
    leaver.revoke();
    trust_all();
    let said = format!(
        "refused commit {gone}: it is signed by key {} (leaver <leaver@example.com>), which is \
         revoked",
        leaver.fingerprint
    );
    assert_refused(&instance, &imds, &name, &said, &keyring, Some(&first));

    let second = repo.push_with("test", "good build 2", &good.settings());
    instance.run(&imds, &["boot"]).expect(0);
    assert_eq!(instance.running_commit(&name), second);
}

/// A first boot of a commit by a trusted signer, whose file of trusted keys is broken, is
/// refused with `cause` (and the file's name), not blamed on the signer, and deploys nothing.
fn assert_keys_blamed(service: &(String, SampleRepo, Imds), trust: &str, cause: &str) {
    let (name, _, imds) = service;
    let instance = instance(trust);
    let run = instance.run(imds, &["boot"]);
    run.expect(7).stderr_has(cause);
    for wrong in ["not an allowed signer", "not in the keyring"] {
        assert!(!run.stderr().contains(wrong), "{}", run.stderr());
    }
    assert!(!instance.checkout(name).exists(), "nothing was deployed");
}

#[test]
fn a_missing_empty_or_garbage_allowed_signers_file_is_named_as_the_cause() {
    support::needs_world!();
    let mut service = small_service("sfile", "test");
    let keys = tempfile::tempdir().unwrap();
    let trusted = SshSigner::new(keys.path(), "deploy");
    let signed = service
        .1
        .push_with("test", "signed build", &trusted.settings());
    let file = keys.path().join("allowed_signers");
    let trust = format!(
        "verify = \"ssh\"\nallowed_signers = \"{}\"\n",
        file.display()
    );
    let shown = file.display();
    assert_keys_blamed(
        &service,
        &trust,
        &format!("git.allowed_signers {shown} cannot be read (No such file or directory"),
    );
    std::fs::write(&file, "\n").unwrap();
    assert_keys_blamed(
        &service,
        &trust,
        &format!("git.allowed_signers {shown} is empty: it trusts no key; put the trusted keys"),
    );
    std::fs::write(&file, format!("{}\nnot a signer at all\n", trusted.allowed)).unwrap();
    assert_keys_blamed(
        &service,
        &trust,
        &format!("line 2 of git.allowed_signers {shown} is not an allowed-signers line"),
    );
    std::fs::write(&file, format!("{}\n", trusted.allowed)).unwrap();
    let (name, _, imds) = &service;
    let fixed = instance(&trust);
    fixed.run(imds, &["boot"]).expect(0);
    assert_eq!(fixed.running_commit(name), signed);
}

#[test]
fn a_missing_or_armoured_gpg_keyring_is_named_as_the_cause_and_doctor_says_so() {
    support::needs_world!();
    let mut service = small_service("gfile", "test");
    let trusted = GpgSigner::new("deploy");
    let signed = service
        .1
        .push_with("test", "signed build", &trusted.settings());
    let keys = tempfile::tempdir().unwrap();
    let file = keys.path().join("trusted.gpg");
    let trust = format!("verify = \"gpg\"\ngpg_keyring = \"{}\"\n", file.display());
    let shown = file.display();
    assert_keys_blamed(
        &service,
        &trust,
        &format!("git.gpg_keyring {shown} cannot be read (No such file or directory"),
    );
    std::fs::write(&file, trusted.armoured_keyring()).unwrap();
    let armoured =
        format!("git.gpg_keyring {shown} is ASCII-armoured; gpgv needs a binary keyring");
    assert_keys_blamed(&service, &trust, &armoured);
    let (name, _, imds) = &service;
    let (_, signing) = instance(&trust).doctor_check(imds, "signing");
    assert_eq!(signing["verdict"], "fail", "{signing}");
    assert!(
        signing["detail"].as_str().unwrap().contains(&armoured),
        "{signing}"
    );
    assert!(
        signing["hint"].as_str().unwrap().contains("gpg --dearmor"),
        "{signing}"
    );

    std::fs::copy(&trusted.keyring, &file).unwrap();
    let fixed = instance(&trust);
    let (_, signing) = fixed.doctor_check(imds, "signing");
    assert_eq!(signing["verdict"], "ok", "{signing}");
    fixed.run(imds, &["boot"]).expect(0);
    assert_eq!(fixed.running_commit(name), signed);
}

#[test]
fn a_mirror_serving_an_unsigned_commit_is_refused_and_the_last_good_release_kept() {
    support::needs_world!();
    let (name, mut repo, imds) = small_service("ssigm", "test");
    let (_keys, trusted, allowed) = one_trusted_signer();
    let instance = Instance::exec_mode(&format!(
        "[git]\nverify = \"ssh\"\nallowed_signers = \"{}\"\nmirrors = [{:?}]\n",
        allowed.display(),
        repo.url
    ));
    let signed = repo.push_with("test", "signed build", &trusted.settings());
    instance.run(&imds, &["boot"]).expect(0);
    assert_eq!(instance.running_commit(&name), signed);

    // The remote goes down; the mirror has an unsigned commit on the branch.
    let unsigned = repo.push_version("test", "unsigned build");
    let refusing = RefusingPort::bind();
    let dead = Imds::for_service(&name, "test", &refusing.url("git", "/gone.git"));
    instance
        .run(&dead, &["boot"])
        .expect(0)
        .stderr_has("fetching from a mirror")
        .stderr_has("security_event=\"code-signature-refused\"");
    assert_eq!(instance.running_commit(&name), signed);
    let status = instance.status();
    assert_eq!(status["outcome"], "degraded");
    let why = status["degraded"].as_str().unwrap();
    assert!(
        why.contains(&format!("refused commit {unsigned}: it is not signed")),
        "{why}"
    );
}
