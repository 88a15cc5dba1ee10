//! Releases: atomic switches, pruning, and convergence after the agent is killed mid-way.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

fn service_in(env: &str) -> (String, SampleRepo, Imds) {
    let name = unique("rel");
    let repo = SampleRepo::create(&name);
    create_secret(&format!("{name}_env_{env}"), r#"{"A": "1"}"#);
    let imds = Imds::with_tags(&[
        ("Service", &name),
        ("Environment", env),
        ("Repository", &repo.url),
    ]);
    (name, repo, imds)
}

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
    let (name, mut repo, imds) = service_in("test");
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
    let mut rng = Rng::from_env();
    let (name, mut repo, imds) = service_in("prod");
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
    for round in 0..12 {
        let commit = repo.push_many_files("prod", 400, round);
        let mut boot = instance
            .command(&imds, &["boot"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // A boot of this repository takes about 300 ms here: most kills land inside it.
        std::thread::sleep(Duration::from_millis(rng.below(300) as u64));
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
        instance.run(&imds, &["boot"]).expect(0);
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
