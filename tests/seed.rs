//! The seed: `bootagent prepare` bakes the repository into the image, and a first boot fetches
//! only what the seed lacks. A seed that cannot serve (another repository, corrupt, too shallow)
//! is ignored with a warning and the boot succeeds; what runs is checked as without a seed.

use std::path::PathBuf;

use support::*;

fn seed_dir(instance: &Instance) -> PathBuf {
    instance.root.path().join("state").join("seed")
}

/// `bootagent prepare` for `repository`'s `env` branch, as an image build runs it.
fn prepare(instance: &Instance, imds: &Imds, repository: &str, env: &str) -> Run {
    instance.run(imds, &["prepare", "--repository", repository, "--env", env])
}

/// The pack file of `instance`'s seed (prepare fetches one).
fn seed_pack(instance: &Instance) -> PathBuf {
    let packs = seed_dir(instance).join("repo.git/objects/pack");
    std::fs::read_dir(&packs)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|ext| ext == "pack"))
        .unwrap()
}

/// What a prepare left beside the seed: a staging copy, or the seed it replaced.
fn beside_seed(instance: &Instance) -> Vec<String> {
    std::fs::read_dir(seed_dir(instance).parent().unwrap())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".seed"))
        .collect()
}

fn received_bytes(instance: &Instance) -> u64 {
    instance.status()["git"]["received_bytes"].as_u64().unwrap()
}

/// A service whose prod branch carries 400 files of 4 KiB that do not compress: a transfer of
/// the branch weighs 1.6 MB.
fn sizeable_service() -> (String, SampleRepo, Imds) {
    let (name, mut repo, imds) = small_service("seed", "prod");
    repo.push_incompressible_files("prod", 400, 1);
    (name, repo, imds)
}

#[test]
fn a_seeded_first_boot_fetches_only_what_the_seed_lacks() {
    support::needs_world!();
    let (name, mut repo, imds) = sizeable_service();
    let seeded = Instance::exec_mode("");
    let said = prepare(&seeded, &imds, &repo.url, "prod");
    said.expect(0);
    let seed_commit = repo.rev_parse("prod");
    assert!(said.stdout().contains(&seed_commit), "{}", said.stdout());
    // The image is baked; the branch moves on by one commit before the instance launches.
    let head = repo.push_version("prod", "prod build 2\n");

    let unseeded = Instance::exec_mode("");
    unseeded.run(&imds, &["boot"]).expect(0);
    let whole = received_bytes(&unseeded);
    assert_eq!(unseeded.status()["git"]["seed"], serde_json::Value::Null);

    seeded.run(&imds, &["boot"]).expect(0);
    assert_eq!(seeded.running_commit(&name), head);
    assert_eq!(
        std::fs::read_to_string(seeded.checkout(&name).join("VERSION")).unwrap(),
        "prod build 2\n"
    );
    assert_eq!(
        std::fs::read_dir(seeded.checkout(&name).join("assets"))
            .unwrap()
            .count(),
        400,
        "the files the seed brought are in the release"
    );
    let delta = received_bytes(&seeded);
    let status = seeded.status();
    assert_eq!(status["git"]["action"], "cloned");
    assert!(status["git"]["seed"].is_string(), "{status}");
    assert!(
        delta > 0 && delta * 20 < whole,
        "a seed one commit behind received {delta} bytes, the whole branch is {whole}"
    );
}

#[test]
fn a_seed_at_the_head_needs_no_transfer_at_all() {
    support::needs_world!();
    let (name, repo, imds) = small_service("seed", "prod");
    let instance = Instance::exec_mode("");
    prepare(&instance, &imds, &repo.url, "prod").expect(0);
    instance.run(&imds, &["boot"]).expect(0);
    assert_eq!(instance.running_commit(&name), repo.commits["prod"]);
    assert_eq!(received_bytes(&instance), 0);
}

#[test]
fn a_seed_of_another_repository_is_ignored_with_a_warning() {
    support::needs_world!();
    let (name, repo, imds) = small_service("seed", "prod");
    let other = SampleRepo::create(&unique("other"));
    let instance = Instance::exec_mode("");
    prepare(&instance, &imds, &other.url, "prod").expect(0);
    instance
        .run(&imds, &["boot"])
        .expect(0)
        .stderr_has("the seed is not used")
        .stderr_has(&format!("it holds {}", other.url));
    assert_eq!(instance.running_commit(&name), repo.commits["prod"]);
    assert_eq!(instance.status()["git"]["seed"], serde_json::Value::Null);
}

#[test]
fn a_corrupt_seed_is_ignored_with_a_warning() {
    support::needs_world!();
    let (name, repo, imds) = sizeable_service();
    let instance = Instance::exec_mode("");
    prepare(&instance, &imds, &repo.url, "prod").expect(0);
    let pack = seed_pack(&instance);
    let mut bytes = std::fs::read(&pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&pack, bytes).unwrap();
    instance
        .run(&imds, &["boot"])
        .expect(0)
        .stderr_has("the seed is not used")
        .stderr_has("is not a sound pack");
    assert_eq!(instance.running_commit(&name), repo.rev_parse("prod"));
    assert!(received_bytes(&instance) > 400 * 4096, "fetched whole");
}

#[test]
fn an_unreadable_seed_record_is_ignored_with_a_warning() {
    support::needs_world!();
    let (name, repo, imds) = small_service("seed", "prod");
    let instance = Instance::exec_mode("");
    prepare(&instance, &imds, &repo.url, "prod").expect(0);
    std::fs::write(seed_dir(&instance).join("seed.json"), "{\"url\": ").unwrap();
    instance
        .run(&imds, &["boot"])
        .expect(0)
        .stderr_has("the seed is not used")
        .stderr_has("is not a seed record");
    assert_eq!(instance.running_commit(&name), repo.commits["prod"]);
}

#[test]
fn a_shallow_seed_is_not_used_where_the_whole_history_is_needed() {
    support::needs_world!();
    let (name, mut repo, imds) = small_service("seed", "prod");
    let instance = Instance::exec_mode("");
    prepare(&instance, &imds, &repo.url, "prod").expect(0);
    let head = repo.push_version("prod", "prod build 2\n");
    instance.add_config("60-history.toml", "[git]\nallow_rewind = false\n");
    instance
        .run(&imds, &["boot"])
        .expect(0)
        .stderr_has("the seed is not used")
        .stderr_has("needs the whole history");
    assert_eq!(instance.running_commit(&name), head);
}

/// An instance that deploys only commits `trusted` signed (`git.verify = "ssh"`), with the
/// `[git]` line `git` besides; the keys' directory lives as long as the first value.
fn verifying_instance(git: &str) -> (tempfile::TempDir, SshSigner, Instance) {
    let keys = tempfile::tempdir().unwrap();
    let trusted = SshSigner::new(keys.path(), "deploy");
    let allowed = allowed_signers(keys.path(), &[&trusted]);
    let instance = Instance::exec_mode(&format!(
        "[git]\n{git}\nverify = \"ssh\"\nallowed_signers = \"{}\"\n",
        allowed.display()
    ));
    (keys, trusted, instance)
}

#[test]
fn an_unsigned_commit_on_top_of_a_signed_seed_is_refused() {
    support::needs_world!();
    let (name, mut repo, imds) = small_service("seed", "prod");
    let (_keys, trusted, instance) = verifying_instance("on_failure = \"fail\"");
    repo.push_with("prod", "signed build", &trusted.settings());
    prepare(&instance, &imds, &repo.url, "prod").expect(0);
    let unsigned = repo.push_version("prod", "unsigned build");
    instance
        .run(&imds, &["boot"])
        .expect(7)
        .stderr_has(&format!("refused commit {unsigned}: it is not signed"))
        .stderr_has("security_event=");
    assert!(!instance.checkout(&name).exists(), "nothing was deployed");
}

#[test]
fn prepare_says_what_it_needs_when_the_image_build_cannot_render_the_url() {
    support::needs_world!();
    let (_, _, imds) = small_service("seed", "prod");
    let instance = Instance::exec_mode("");
    instance
        .run(&imds, &["prepare"])
        .expect(2)
        .stderr_has("--repository");
    assert!(!seed_dir(&instance).exists());
}

/// Doctor's `seed` check, as `doctor --json` reports it: (verdict, detail).
fn doctor_seed(instance: &Instance, imds: &Imds) -> (String, String) {
    let report: serde_json::Value =
        serde_json::from_str(&instance.run(imds, &["doctor", "--json"]).stdout()).unwrap();
    let check = (report["checks"].as_array().unwrap().iter())
        .find(|check| check["name"] == "seed")
        .unwrap_or_else(|| panic!("no seed check in {report}"))
        .clone();
    let text = |key: &str| check[key].as_str().unwrap().to_string();
    (text("verdict"), text("detail"))
}

#[test]
fn doctor_tells_whether_a_first_boot_would_start_from_the_seed() {
    support::needs_world!();
    let (_name, mut repo, imds) = small_service("seed", "prod");
    let instance = Instance::exec_mode("");
    assert_eq!(doctor_seed(&instance, &imds).0, "skip");
    prepare(&instance, &imds, &repo.url, "prod").expect(0);
    let seed_commit = repo.rev_parse("prod");

    let (verdict, detail) = doctor_seed(&instance, &imds);
    assert_eq!(verdict, "ok", "{detail}");
    assert!(
        detail.contains(&format!("holds prod at {seed_commit}")),
        "{detail}"
    );
    assert!(detail.contains("up to date"), "{detail}");

    let head = repo.push_version("prod", "prod build 2\n");
    let (verdict, detail) = doctor_seed(&instance, &imds);
    assert_eq!(verdict, "ok", "{detail}");
    assert!(detail.contains(&format!("at {head}")), "{detail}");
    assert!(detail.contains("which the seed lacks"), "{detail}");

    instance.run(&imds, &["boot"]).expect(0);
    let (verdict, detail) = doctor_seed(&instance, &imds);
    assert_eq!(verdict, "skip", "{detail}");
    assert!(detail.contains("1 commit(s) later"), "{detail}");
    assert!(detail.contains("this instance has one"), "{detail}");
}

#[test]
fn doctor_warns_of_a_seed_a_first_boot_would_not_use() {
    support::needs_world!();
    let (_name, repo, imds) = small_service("seed", "prod");
    let other = SampleRepo::create(&unique("other"));
    let instance = Instance::exec_mode("");
    prepare(&instance, &imds, &other.url, "prod").expect(0);
    let (verdict, detail) = doctor_seed(&instance, &imds);
    assert_eq!(verdict, "warn", "{detail}");
    assert!(
        detail.contains(&format!("it holds {}", other.url)),
        "{detail}"
    );

    instance
        .run(
            &imds,
            &["prepare", "--repository", &repo.url, "--ref", "test"],
        )
        .expect(0);
    let (verdict, detail) = doctor_seed(&instance, &imds);
    assert_eq!(verdict, "warn", "{detail}");
    assert!(detail.contains("holds test, not prod"), "{detail}");
}

#[test]
fn a_prepare_that_fails_leaves_the_seed_in_place_and_nothing_beside_it() {
    support::needs_world!();
    let (_name, repo, imds) = small_service("seed", "prod");
    let instance = Instance::exec_mode("");
    prepare(&instance, &imds, &repo.url, "prod").expect(0);
    let record = std::fs::read(seed_dir(&instance).join("seed.json")).unwrap();
    // Nothing listens on port 1.
    let dead = "git://127.0.0.1:1/gone.git";
    prepare(&instance, &imds, dead, "prod")
        .expect(75)
        .stderr_has("cannot reach git remote");
    assert_eq!(
        std::fs::read(seed_dir(&instance).join("seed.json")).unwrap(),
        record
    );
    let beside = beside_seed(&instance);
    assert!(beside.is_empty(), "{beside:?}");
}

/// Whatever an image build left at the seed's path, a link (dangling or not) or a file, prepare
/// replaces with the seed, and never touches what a link named.
#[test]
fn prepare_replaces_a_link_or_a_file_at_the_seed_path_and_follows_neither() {
    support::needs_world!();
    let (name, repo, imds) = small_service("seed", "prod");
    let instance = Instance::exec_mode("");
    let seed = seed_dir(&instance);
    std::fs::create_dir_all(seed.parent().unwrap()).unwrap();
    let elsewhere = instance.root.path().join("elsewhere");
    let kept = elsewhere.join("kept");
    let plant: [(&str, &dyn Fn()); 3] = [
        ("a dangling link", &|| {
            std::os::unix::fs::symlink(&elsewhere, &seed).unwrap();
        }),
        ("a file", &|| std::fs::write(&seed, "not a seed").unwrap()),
        ("a link to a directory", &|| {
            std::fs::create_dir_all(&elsewhere).unwrap();
            std::fs::write(&kept, "untouched").unwrap();
            std::os::unix::fs::symlink(&elsewhere, &seed).unwrap();
        }),
    ];
    for (what, plant) in plant {
        if seed.symlink_metadata().is_ok_and(|found| found.is_dir()) {
            std::fs::remove_dir_all(&seed).unwrap();
        }
        plant();
        let prepared = prepare(&instance, &imds, &repo.url, "prod");
        assert_eq!(prepared.code(), 0, "with {what}: {}", prepared.stderr());
        assert!(seed.symlink_metadata().unwrap().is_dir(), "with {what}");
        let beside = beside_seed(&instance);
        assert!(beside.is_empty(), "with {what}: {beside:?}");
    }
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), "untouched");
    instance.run(&imds, &["boot"]).expect(0);
    assert_eq!(instance.running_commit(&name), repo.commits["prod"]);
    assert!(instance.status()["git"]["seed"].is_string());
}

#[test]
fn a_seed_pack_that_is_a_link_is_ignored_with_a_warning() {
    support::needs_world!();
    let (name, repo, imds) = small_service("seed", "prod");
    let instance = Instance::exec_mode("");
    prepare(&instance, &imds, &repo.url, "prod").expect(0);
    let pack = seed_pack(&instance);
    // The same bytes elsewhere, the pack a link to them: a link could as well lead to a device.
    let elsewhere = instance.root.path().join("elsewhere.pack");
    std::fs::rename(&pack, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &pack).unwrap();
    instance
        .run(&imds, &["boot"])
        .expect(0)
        .stderr_has("the seed is not used")
        .stderr_has("is not a regular file");
    assert_eq!(instance.running_commit(&name), repo.commits["prod"]);
    assert_eq!(instance.status()["git"]["seed"], serde_json::Value::Null);
}

/// The SHA-1 of `bytes`, by coreutils' sha1sum.
fn sha1(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("sha1sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    let hex = String::from_utf8(out.stdout).unwrap();
    (0..40)
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// Flips a byte at `offset` of `instance`'s seed pack, then makes the pack's and its index's
/// checksums again: damage that only a read of the object finds.
fn damage_seed_pack(instance: &Instance, offset: usize) {
    let pack = seed_pack(instance);
    let index = pack.with_extension("idx");
    let mut bytes = std::fs::read(&pack).unwrap();
    let body = bytes.len() - 20;
    bytes[offset] ^= 0x55;
    let sum = sha1(&bytes[..body]);
    bytes[body..].copy_from_slice(&sum);
    std::fs::write(&pack, &bytes).unwrap();
    let mut index_bytes = std::fs::read(&index).unwrap();
    let end = index_bytes.len();
    index_bytes[end - 40..end - 20].copy_from_slice(&sum);
    let index_sum = sha1(&index_bytes[..end - 20]);
    index_bytes[end - 20..].copy_from_slice(&index_sum);
    std::fs::write(&index, &index_bytes).unwrap();
}

/// Where object `id` ends in `instance`'s seed pack, by `git verify-pack -v`.
fn end_of_object(instance: &Instance, id: &str) -> usize {
    let index = seed_pack(instance).with_extension("idx");
    let out = std::process::Command::new("git")
        .args(["verify-pack", "-v"])
        .arg(&index)
        .output()
        .unwrap();
    let listing = String::from_utf8(out.stdout).unwrap();
    let line = listing.lines().find(|line| line.starts_with(id)).unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    fields[4].parse::<usize>().unwrap() + fields[3].parse::<usize>().unwrap()
}

/// With `git.verify`, a commit of the seed that cannot be read (its checksums made again) is
/// not a signature refused: the checkout is done again without the seed, from the remote's own
/// objects, which are signed. The seed names another commit (the branch went back one since).
#[test]
fn an_unreadable_commit_in_a_seed_is_no_signature_refusal() {
    support::needs_world!();
    let (name, mut repo, imds) = small_service("seed", "prod");
    let (_keys, trusted, instance) = verifying_instance("depth = 5");
    let earlier = repo.push_with("prod", "signed build 1", &trusted.settings());
    repo.push_with("prod", "signed build 2", &trusted.settings());
    prepare(&instance, &imds, &repo.url, "prod").expect(0);
    // The adler32 at the end of the commit's compressed bytes.
    damage_seed_pack(&instance, end_of_object(&instance, &earlier) - 2);
    git(&repo.path, &["update-ref", "refs/heads/prod", &earlier]);
    instance
        .run(&imds, &["boot"])
        .expect(0)
        .stderr_has("fetching without the seed");
    assert_eq!(instance.running_commit(&name), earlier);
}

/// A seed whose pack and index checksums are right but whose objects are not what their ids
/// say (the pack damaged, then its checksums made again): the packs are taken, the checkout on
/// them fails as it reads the objects, and is done again without the seed.
#[test]
fn objects_that_are_not_what_their_ids_say_fail_the_seeded_checkout_which_is_done_again() {
    support::needs_world!();
    let (name, repo, imds) = sizeable_service();
    let instance = Instance::exec_mode("");
    prepare(&instance, &imds, &repo.url, "prod").expect(0);
    let pack = seed_pack(&instance);
    let middle = std::fs::metadata(&pack).unwrap().len() as usize / 2;
    damage_seed_pack(&instance, middle);

    instance
        .run(&imds, &["boot"])
        .expect(0)
        .stderr_has("the checkout on the seed failed")
        .stderr_has("fetching without the seed");
    assert_eq!(instance.running_commit(&name), repo.rev_parse("prod"));
    assert_eq!(
        std::fs::read_dir(instance.checkout(&name).join("assets"))
            .unwrap()
            .count(),
        400
    );
    assert_eq!(instance.status()["git"]["seed"], serde_json::Value::Null);
    assert!(received_bytes(&instance) > 400 * 4096, "fetched whole");
}
