//! Releases: atomic switches, pruning, and convergence after the agent is killed mid-way.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

/// `diff -r` between a release and git's own extraction of the commit.
fn same_tree(release: &Path, reference: &Path) -> bool {
    Command::new("diff")
        .arg("-r")
        .arg(release)
        .arg(reference)
        .output()
        .unwrap()
        .status
        .success()
}

fn releases(instance: &Instance, name: &str) -> Vec<String> {
    let dir = instance
        .root
        .path()
        .join("srv")
        .join(format!(".{name}"))
        .join("releases");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn old_releases_are_pruned_to_the_configured_count() {
    support::needs_world!();
    let (name, mut repo, imds) = small_service("rel", "test");
    let instance = Instance::exec_mode("[git]\nkeep = 2\n");
    let mut commits = vec![repo.commits["test"].clone()];
    instance.run(&imds, &["boot"]).expect(0);
    for round in 2..=4 {
        commits.push(repo.push_version("test", &format!("test build {round}\n")));
        instance.run(&imds, &["boot"]).expect(0);
    }
    let mut expected = commits[2..].to_vec();
    expected.sort();
    assert_eq!(
        releases(&instance, &name),
        expected,
        "the current and the one before"
    );
    assert_eq!(instance.running_commit(&name), commits[3]);
    let files = instance.checkout(&name).join("VERSION");
    let meta = std::fs::metadata(files).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        meta.uid().to_string(),
        NOBODY_UID,
        "owned by the service user"
    );
}

#[test]
fn a_killed_boot_never_leaves_a_half_written_release_in_service() {
    support::needs_world!();
    let mut rng = Rng::from_env();
    let (name, mut repo, imds) = small_service("rel", "prod");
    let instance = Instance::exec_mode("");
    let references = tempfile::tempdir().unwrap();
    let mut extracted: BTreeMap<String, std::path::PathBuf> = BTreeMap::new();
    let mut reference = |repo: &SampleRepo, commit: &str| {
        extracted
            .entry(commit.to_string())
            .or_insert_with(|| {
                let dir = references.path().join(commit);
                repo.extract(commit, &dir);
                dir
            })
            .clone()
    };
    let mut kills = 0;
    // Kills land at a random moment within the last whole boot's duration (a guess for the
    // first): a slower or faster machine moves them with it, so most land inside a boot.
    let mut boot_time = Duration::from_millis(300);
    for round in 0..12 {
        let commit = repo.push_many_files("prod", 400, round);
        let mut boot = instance
            .command(&imds, &["boot"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let kill_after = boot_time.as_millis() as usize;
        std::thread::sleep(Duration::from_millis(rng.below(kill_after) as u64));
        let killed_midway = boot.try_wait().unwrap().is_none();
        let _ = boot.kill();
        let _ = boot.wait();
        kills += usize::from(killed_midway);
        // Whatever the moment of the kill, the link names a release identical to its commit.
        if let Ok(target) = std::fs::read_link(instance.checkout(&name)) {
            let running = target.file_name().unwrap().to_string_lossy().into_owned();
            let release = std::fs::canonicalize(instance.checkout(&name)).unwrap();
            let expected = reference(&repo, &running);
            assert!(
                same_tree(&release, &expected),
                "round {round}: release {running} differs from its commit"
            );
        }
        let started = std::time::Instant::now();
        instance.run(&imds, &["boot"]).expect(0);
        boot_time = started.elapsed();
        assert_eq!(
            instance.running_commit(&name),
            commit,
            "round {round} converged"
        );
        let release = std::fs::canonicalize(instance.checkout(&name)).unwrap();
        assert!(
            same_tree(&release, &reference(&repo, &commit)),
            "round {round}"
        );
        let leftovers: Vec<_> = releases(&instance, &name)
            .into_iter()
            .filter(|r| r.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "round {round}: {leftovers:?}");
    }
    assert!(
        kills >= 3,
        "only {kills} of 12 boots were killed before they ended"
    );
}

#[test]
fn a_remote_down_keeps_the_last_good_release_and_says_why() {
    support::needs_world!();
    let (name, repo, imds) = small_service("rel", "stage");
    let instance = Instance::exec_mode("");
    instance.run(&imds, &["boot"]).expect(0);
    let refusing = RefusingPort::bind();
    let dead = Imds::for_service(&name, "stage", &refusing.url("git", "/gone.git"));
    let run = instance.run(&dead, &["boot"]);
    // Degraded: the service runs, so the boot exits 0, but every report says what runs is not
    // what was asked.
    run.expect(0).stderr_has("boot degraded: ");
    let status = instance.status();
    assert_eq!(status["outcome"], "degraded");
    assert!(
        status["degraded"]
            .as_str()
            .unwrap()
            .starts_with("running last good commit"),
        "{status}"
    );
    assert_eq!(status["git"]["action"], "kept");
    let note = status["git"]["note"].as_str().unwrap();
    let good = &repo.commits["stage"];
    assert!(
        note.starts_with(&format!("running last good commit {good} because ")),
        "{note}"
    );
    assert!(note.contains("cannot reach git remote"), "{note}");
    assert_eq!(instance.running_commit(&name), *good);
    assert_eq!(instance.service_saw("version"), "stage build 1");
    let text = instance.run(&dead, &["status"]).expect(0).stdout();
    assert!(
        text.starts_with("boot:     degraded") && text.contains("running last good commit"),
        "{text}"
    );
    let history = instance.run(&dead, &["status", "--history"]).stdout();
    let last = history.lines().last().unwrap();
    assert!(
        last.contains("degraded") && last.contains("running last good commit"),
        "{history}"
    );
    let (_, last_boot) = instance.doctor_check(&dead, "last-boot");
    assert_eq!(last_boot["verdict"], "fail", "{last_boot}");
}

#[test]
fn with_on_failure_fail_a_remote_down_fails_the_boot() {
    support::needs_world!();
    let (name, repo, imds) = small_service("rel", "stage");
    let instance = Instance::exec_mode("[git]\non_failure = \"fail\"\n");
    instance.run(&imds, &["boot"]).expect(0);
    let refusing = RefusingPort::bind();
    let dead = Imds::for_service(&name, "stage", &refusing.url("git", "/gone.git"));
    instance
        .run(&dead, &["boot"])
        .expect(75)
        .stderr_has("cannot reach git remote");
    assert_eq!(instance.running_commit(&name), repo.commits["stage"]);
}

#[test]
fn locks_left_by_a_killed_fetch_do_not_block_the_next() {
    support::needs_world!();
    let (name, mut repo, imds) = small_service("rel", "test");
    let instance = Instance::exec_mode("[git]\non_failure = \"fail\"\n");
    instance.run(&imds, &["boot"]).expect(0);
    let bare = instance.repository(&name);
    std::fs::write(bare.join("shallow.lock"), "").unwrap();
    std::fs::create_dir_all(bare.join("refs/bootagent")).unwrap();
    std::fs::write(bare.join("refs/bootagent/target.lock"), "").unwrap();
    let commit = repo.push_version("test", "test build 2\n");
    instance.run(&imds, &["boot"]).expect(0);
    assert_eq!(instance.running_commit(&name), commit);
}

#[test]
fn a_release_tag_or_a_full_commit_id_can_pin_the_checkout() {
    support::needs_world!();
    let (name, mut repo, imds) = small_service("rel", "prod");
    let pinned = repo.commits["prod"].clone();
    git(&repo.path, &["tag", "-a", "-m", "release", "v1.0", &pinned]);
    let newer = repo.push_version("prod", "prod build 2\n");

    let by_tag = Instance::exec_mode("[git]\nref = \"v1.0\"\n");
    by_tag.run(&imds, &["boot"]).expect(0);
    assert_eq!(
        by_tag.running_commit(&name),
        pinned,
        "an annotated tag gives its commit"
    );
    assert_eq!(by_tag.service_saw("version"), "prod build 1");

    // A server that does not let clients fetch by id answers, and says no: a permanent
    // refusal naming the commit and the setting, not an outage.
    let refused = Instance::exec_mode(&format!("[git]\nref = \"{pinned}\"\n"));
    refused
        .run(&imds, &["boot"])
        .expect(7)
        .stderr_has(&format!("does not serve commit {pinned}"))
        .stderr_has("uploadpack.allowReachableSHA1InWant");

    // Fetching by id needs the server to allow it, as GitHub and GitLab do.
    git(
        &repo.path,
        &["config", "uploadpack.allowAnySHA1InWant", "true"],
    );
    let by_id = Instance::exec_mode(&format!("[git]\nref = \"{pinned}\"\n"));
    by_id.run(&imds, &["boot"]).expect(0);
    assert_eq!(by_id.running_commit(&name), pinned);

    let branch = Instance::exec_mode("");
    branch.run(&imds, &["boot"]).expect(0);
    assert_eq!(branch.running_commit(&name), newer);
}

#[test]
fn an_instance_tag_can_name_the_release() {
    support::needs_world!();
    let (name, mut repo, _imds) = small_service("rel", "prod");
    let pinned = repo.commits["prod"].clone();
    git(&repo.path, &["tag", "v2.3.1", &pinned]);
    repo.push_version("prod", "prod build 2\n");
    let instance = Instance::exec_mode("[git]\nref = \"{tag:Release}\"\n");
    let tagged = |release: &str| {
        Imds::with_tags(&[
            ("Service", &name),
            ("Environment", "prod"),
            ("Repository", &repo.url),
            ("Release", release),
        ])
    };
    instance.run(&tagged("v2.3.1"), &["boot"]).expect(0);
    assert_eq!(instance.running_commit(&name), pinned);
    assert_eq!(instance.status()["identity"]["tags"]["Release"], "v2.3.1");

    instance
        .run(&tagged("../../etc"), &["boot"])
        .expect(3)
        .stderr_has("instance tag Release=\"../../etc\", used in a template");
}

#[test]
fn a_new_commit_fetches_only_what_is_new() {
    support::needs_world!();
    let (name, mut repo, imds) = small_service("delta", "test");
    repo.push_many_files("test", 300, 0);
    let instance = Instance::exec_mode("");
    instance.run(&imds, &["boot"]).expect(0);
    let first = instance.status()["git"]["received_bytes"].as_u64().unwrap();
    // One small file changes; the 300 others are already here.
    let next = repo.push_version("test", "test build 2\n");
    instance.run(&imds, &["boot"]).expect(0);
    assert_eq!(instance.running_commit(&name), next);
    let status = instance.status();
    assert_eq!(status["git"]["action"], "fetched");
    let second = status["git"]["received_bytes"].as_u64().unwrap();
    assert!(
        second * 10 < first,
        "the second fetch took {second} bytes, the first {first}"
    );
}

#[test]
fn a_file_url_checks_out_whole_and_follows_new_commits() {
    support::needs_world!();
    let (name, mut repo, _) = small_service("file", "stage");
    let url = format!("file://{}", repo.path.display());
    let imds = Imds::for_service(&name, "stage", &url);
    // The default depth is 1: shallow, which the local transport cannot do.
    let instance = Instance::exec_mode("");
    instance.run(&imds, &["boot"]).expect(0);
    assert_eq!(instance.running_commit(&name), repo.commits["stage"]);
    assert_eq!(instance.status()["git"]["action"], "cloned");
    let next = repo.push_version("stage", "stage build 2");
    instance.run(&imds, &["boot"]).expect(0);
    assert_eq!(instance.running_commit(&name), next);
    assert_eq!(instance.status()["git"]["action"], "fetched");
    assert_eq!(instance.service_saw("version"), "stage build 2");
}

/// A local repository owned by another user is refused by libgit2's owner check, which no
/// config bootagent reads can lift: the boot says so at once, not as an unreachable remote
/// retried until its deadline.
#[test]
fn a_local_repository_another_user_owns_is_refused_at_once_with_the_fix() {
    support::needs_world!();
    let (name, repo, _) = small_service("file-owner", "stage");
    let nobody = Command::new("chown")
        .args(["-R", "nobody:nogroup"])
        .arg(&repo.path)
        .status()
        .unwrap();
    assert!(nobody.success());
    let url = format!("file://{}", repo.path.display());
    let imds = Imds::for_service(&name, "stage", &url);
    let instance = Instance::exec_mode("");
    let started = std::time::Instant::now();
    instance
        .run(&imds, &["boot"])
        .expect(7)
        .stderr_has("not owned by current user")
        .stderr_has("make it that user's");
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// Boots `instance` against `remote` after a first boot from the real repository: the
/// checkout must end at its deadline, keep the release in service and let the process exit.
fn assert_drip_is_cut_off(remote: &DripRemote, config: &str, expected: &str) -> Run {
    let (name, repo, imds) = small_service("drip", "stage");
    let instance = Instance::exec_mode(config);
    instance.run(&imds, &["boot"]).expect(0);
    let dripping = Imds::for_service(&name, "stage", &remote.url);
    let started = std::time::Instant::now();
    let run = instance.run(&dripping, &["boot"]);
    let took = started.elapsed();
    // The remote drips for 60 s: a boot that waited for it would take that long.
    assert!(took < Duration::from_secs(20), "the boot took {took:?}");
    run.stderr_has(expected);
    assert_eq!(instance.running_commit(&name), repo.commits["stage"]);
    run
}

#[test]
fn a_remote_that_drips_over_git_is_cut_off_at_git_deadline() {
    support::needs_world!();
    let remote = DripRemote::start(false);
    let run = assert_drip_is_cut_off(
        &remote,
        "[git]\ntimeout = \"10s\"\ndeadline = \"2s\"\n",
        "the checkout did not finish within 2s (git.deadline)",
    );
    run.expect(0).stderr_has("boot degraded: ");
}

#[test]
fn a_remote_that_drips_over_http_is_cut_off_at_git_deadline() {
    support::needs_world!();
    let remote = DripRemote::start(true);
    assert!(remote.url.starts_with("http://"), "{}", remote.url);
    assert_drip_is_cut_off(
        &remote,
        "[git]\ntimeout = \"10s\"\ndeadline = \"2s\"\non_failure = \"fail\"\n",
        "the checkout did not finish within 2s (git.deadline)",
    )
    .expect(75);
}

#[test]
fn the_boot_deadline_stops_git_before_the_status_is_written() {
    support::needs_world!();
    let remote = DripRemote::start(false);
    // Git's own limit (what is left of the boot's) and the boot's deadline end together;
    // either way the boot stops git and waits for it before it writes its status.
    let run = assert_drip_is_cut_off(
        &remote,
        "[git]\ntimeout = \"10s\"\ndeadline = \"60s\"\non_failure = \"fail\"\n[boot]\ndeadline = \"4s\"\n",
        "did not finish within",
    );
    run.expect(75);
}

#[test]
fn a_remote_down_and_a_mirror_up_deploys_from_the_mirror_and_says_so() {
    support::needs_world!();
    let (name, repo, _) = small_service("mirror", "stage");
    let refusing = RefusingPort::bind();
    let dead = Imds::for_service(&name, "stage", &refusing.url("git", "/gone.git"));
    let instance = Instance::exec_mode(&format!("[git]\nmirrors = [{:?}]\n", repo.url));
    let run = instance.run(&dead, &["boot"]);
    run.expect(0)
        .stderr_has("the remote did not answer, fetching from a mirror")
        .stderr_has("cannot reach git remote");
    let status = instance.status();
    assert_eq!(status["outcome"], "succeeded", "{status}");
    assert_eq!(status["git"]["mirror"], repo.url.as_str(), "{status}");
    assert_eq!(instance.running_commit(&name), repo.commits["stage"]);
    assert_eq!(instance.service_saw("version"), "stage build 1");

    // The remote answers again: the mirror is not asked.
    let imds = Imds::for_service(&name, "stage", &repo.url);
    instance.run(&imds, &["boot"]).expect(0);
    assert!(instance.status()["git"].get("mirror").is_none());
}

/// A git config left in the image (root's `~/.gitconfig`, as a developer's `git config --global`
/// leaves it) changes nothing bootagent deploys: no line endings converted (`core.autocrlf`; it
/// did), no template copied into the repository (`init.templateDir`; it was), and no other
/// repository fetched (`url.*.insteadOf`; bootagent's transports connect to the plan's remote).
#[test]
fn the_machines_git_config_changes_nothing_bootagent_deploys() {
    support::needs_world!();
    let (name, repo, imds) = small_service("gitconfig", "test");
    let (_, elsewhere, _) = small_service("gitconfig-elsewhere", "test");
    let home = tempfile::tempdir().unwrap();
    let templates = home.path().join("templates");
    std::fs::create_dir_all(templates.join("hooks")).unwrap();
    std::fs::write(templates.join("hooks/post-checkout"), "#!/bin/sh\n").unwrap();
    std::fs::write(
        home.path().join(".gitconfig"),
        format!(
            "[url \"{}\"]\n\tinsteadOf = {}\n[core]\n\tautocrlf = true\n[init]\n\ttemplateDir = {}\n",
            elsewhere.url,
            repo.url,
            templates.display()
        ),
    )
    .unwrap();
    let instance = Instance::exec_mode("");
    let home = home.path().to_str().unwrap();
    instance
        .run_with(
            &imds,
            &["boot"],
            &[("HOME", home), ("XDG_CONFIG_HOME", home)],
        )
        .expect(0);
    let commit = &repo.commits["test"];
    assert_eq!(&instance.running_commit(&name), commit);
    let reference = tempfile::tempdir().unwrap();
    repo.extract(commit, reference.path());
    assert!(same_tree(&instance.checkout(&name), reference.path()));
    let copied = instance.repository(&name).join("hooks/post-checkout");
    assert!(
        !copied.exists(),
        "{} was copied from init.templateDir",
        copied.display()
    );
}
