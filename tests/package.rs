//! What `scripts/package` built (scripts/test runs it before the Rust tests): the packages'
//! contents and scripts as the package tools read them, lintian's verdict, the dependency list
//! in the binary, and the life of an image under a real systemd — the .deb installed with the
//! package manager, baked, rebooted (bootagent then boots the service with nothing else starting
//! it), upgraded, removed and purged.

use std::path::{Path, PathBuf};
use std::process::Command;

use support::container::{eventually, Container, PrivateRoot};
use support::*;

/// package/ in cargo's target directory, where scripts/package puts its artifacts: target/, or
/// CARGO_TARGET_DIR (relative to this directory, where scripts/package runs cargo) when set.
fn packages() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), |dir| root.join(dir))
        .join("package")
}

/// The one artifact whose name ends with `suffix`.
fn artifact(suffix: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(packages())
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/package first", packages().display()))
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.to_string_lossy().ends_with(suffix))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "*{suffix} in {}: {found:?}; run scripts/package",
        packages().display()
    );
    found.into_iter().next().unwrap()
}

fn output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What every package installs, as absolute paths; `units` is the system unit directory.
fn expected_files(units: &str) -> Vec<String> {
    let mut files = vec![
        "/usr/bin/bootagent".to_string(),
        "/etc/bootagent/config.toml".to_string(),
        "/usr/share/bootagent/defaults.toml".to_string(),
        "/usr/share/bootagent/doctor.schema.json".to_string(),
        "/usr/share/bootagent/ssm-bootagent-doctor.json".to_string(),
        "/usr/share/bootagent/ssm-bootagent-deploy.json".to_string(),
        "/usr/share/bash-completion/completions/bootagent".to_string(),
        "/usr/share/fish/vendor_completions.d/bootagent.fish".to_string(),
        "/usr/share/man/man1/bootagent.1.gz".to_string(),
        "/usr/share/man/man1/bootagent-boot.1.gz".to_string(),
        "/usr/share/man/man1/bootagent-lifecycle-complete.1.gz".to_string(),
        "/usr/share/man/man1/bootagent-doctor.1.gz".to_string(),
    ];
    for unit in [
        "bootagent-boot.service",
        "bootagent-health.service",
        "bootagent-lifecycle.service",
        "bootagent-refresh.service",
        "bootagent-refresh.timer",
        "bootagent-deploy.service",
        "bootagent-deploy.timer",
        "bootagent-credentials@.service",
    ] {
        files.push(format!("{units}/{unit}"));
    }
    files
}

#[test]
fn each_deb_lists_the_files_an_instance_needs_and_keeps_the_config_as_a_conffile() {
    support::needs_world!();
    for (arch, binary_arch) in [("amd64", "x86-64"), ("arm64", "ARM aarch64")] {
        let deb = artifact(&format!("_{arch}.deb"));
        let deb = deb.to_str().unwrap();
        let listing = output("dpkg-deb", &["--contents", deb]);
        let files: Vec<&str> = listing
            .lines()
            .filter_map(|line| line.split_whitespace().nth(5))
            .map(|path| path.trim_start_matches('.'))
            .collect();
        for file in expected_files("/lib/systemd/system") {
            assert!(
                files.contains(&file.as_str()),
                "{deb} lacks {file}:\n{listing}"
            );
        }
        assert!(files.contains(&"/usr/share/zsh/vendor-completions/_bootagent"));
        assert_eq!(
            output("dpkg-deb", &["--field", deb, "Architecture"]).trim(),
            arch
        );
        let control = tempfile::tempdir().unwrap();
        output(
            "dpkg-deb",
            &["--control", deb, control.path().to_str().unwrap()],
        );
        let conffiles = std::fs::read_to_string(control.path().join("conffiles")).unwrap();
        assert_eq!(conffiles.trim(), "/etc/bootagent/config.toml");
        // What git.verify needs, suggested: installed where signed code is wanted.
        let suggests = output("dpkg-deb", &["--field", deb, "Suggests"]);
        assert_eq!(suggests.trim(), "openssh-client, gpgv");

        let unpacked = tempfile::tempdir().unwrap();
        output(
            "dpkg-deb",
            &["--extract", deb, unpacked.path().to_str().unwrap()],
        );
        let binary = unpacked.path().join("usr/bin/bootagent");
        let described = output("file", &["-b", binary.to_str().unwrap()]);
        assert!(described.contains(binary_arch), "{described}");
        assert!(described.contains("static"), "{described}");
        let unit = std::fs::read_to_string(
            unpacked
                .path()
                .join("lib/systemd/system/bootagent-boot.service"),
        )
        .unwrap();
        assert!(unit.contains("ExecStart=/usr/bin/bootagent boot"), "{unit}");
    }
}

#[test]
fn each_rpm_lists_the_files_marks_the_config_noreplace_and_never_starts_the_boot() {
    support::needs_world!();
    for arch in ["x86_64", "aarch64"] {
        let rpm = artifact(&format!(".{arch}.rpm"));
        let rpm = rpm.to_str().unwrap();
        let files = output("rpm", &["-qlp", rpm]);
        for file in expected_files("/usr/lib/systemd/system") {
            assert!(
                files.lines().any(|line| line == file),
                "{rpm} lacks {file}:\n{files}"
            );
        }
        assert_eq!(output("rpm", &["-qp", "--qf", "%{ARCH}", rpm]), arch);
        let suggests = output("rpm", &["-qp", "--suggests", rpm]);
        for tool in ["openssh-clients", "/usr/bin/gpgv"] {
            assert!(
                suggests.lines().any(|line| line.trim() == tool),
                "{rpm} does not suggest {tool}: {suggests}"
            );
        }
        let config = output(
            "rpm",
            &["-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]", rpm],
        );
        let flags = config
            .lines()
            .find_map(|line| line.strip_prefix("/etc/bootagent/config.toml "))
            .unwrap_or_else(|| panic!("{config}"));
        // c: a config file, n: noreplace.
        assert!(
            flags.contains('c') && flags.contains('n'),
            "flags {flags:?}"
        );
        let scripts = output("rpm", &["-qp", "--scripts", rpm]);
        assert!(
            scripts.contains("systemctl --no-reload enable bootagent-boot.service"),
            "{scripts}"
        );
        assert!(
            scripts.contains("try-restart bootagent-health.service"),
            "{scripts}"
        );
        assert!(!scripts.contains("start bootagent-boot"), "{scripts}");
        assert!(!scripts.contains("restart bootagent-boot"), "{scripts}");
    }
}

#[test]
fn lintian_reports_no_errors_on_the_deb() {
    support::needs_world!();
    let deb = artifact("_amd64.deb");
    let out = Command::new("lintian")
        .args(["--no-tag-display-limit"])
        .arg(&deb)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let errors: Vec<&str> = said.lines().filter(|line| line.starts_with("E:")).collect();
    assert!(errors.is_empty(), "lintian:\n{said}");
}

/// What rpmlint calls an error and this package is on purpose: a static binary (the point of
/// bootagent), no signature (signing is the release's step, with the project's key), and header
/// tags rpmbuild writes but cargo-generate-rpm does not (group, packager, changelog, build host).
const RPMLINT_ACCEPTED: [&str; 6] = [
    "statically-linked-binary",
    "no-signature",
    "no-packager-tag",
    "no-group-tag",
    "no-changelogname-tag",
    "no-buildhost-tag",
];

#[test]
fn rpmlint_reports_no_errors_but_the_accepted_ones() {
    support::needs_world!();
    for arch in ["x86_64", "aarch64"] {
        let rpm = artifact(&format!(".{arch}.rpm"));
        let out = Command::new("rpmlint").arg(&rpm).output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        let errors: Vec<&str> = said
            .lines()
            .filter(|line| line.contains(": E: "))
            .filter(|line| {
                let tag = line.split(": E: ").nth(1).unwrap_or("");
                !RPMLINT_ACCEPTED
                    .iter()
                    .any(|accepted| tag.starts_with(accepted))
            })
            .collect();
        assert!(errors.is_empty(), "rpmlint:\n{said}");
    }
}

#[test]
fn the_tarballs_hold_binary_units_docs_and_examples_and_the_sums_match() {
    support::needs_world!();
    let check = Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(packages())
        .output()
        .unwrap();
    let checked = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{checked}");
    // Two .deb, two .rpm, two tarballs.
    assert_eq!(
        checked
            .lines()
            .filter(|line| line.ends_with(": OK"))
            .count(),
        6,
        "{checked}"
    );
    for arch in ["x86_64", "aarch64"] {
        let tarball = artifact(&format!("-{arch}-linux.tar.gz"));
        let listing = output("tar", &["-tzf", tarball.to_str().unwrap()]);
        let top = listing
            .lines()
            .next()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string();
        for file in [
            "bootagent",
            "systemd/bootagent-boot.service",
            "man/bootagent.1.gz",
            "completions/bootagent.bash",
            "config.toml",
            "defaults.toml",
            "ssm-bootagent-doctor.json",
            "ssm-bootagent-deploy.json",
            "examples/cloud-init/run-bootagent.yaml",
            "examples/terraform/main.tf",
        ] {
            let path = format!("{top}/{file}");
            assert!(
                listing.lines().any(|line| line == path),
                "{tarball:?} lacks {path}"
            );
        }
    }
}

/// The crates and versions cargo-auditable embedded in the binary's `.dep-v0` section (zlib-
/// compressed JSON), as an image scanner reads them.
fn embedded_dependencies(binary: &Path) -> Vec<(String, String)> {
    let dir = tempfile::tempdir().unwrap();
    let section = dir.path().join("dep-v0");
    output(
        "objcopy",
        &[
            "--dump-section",
            &format!(".dep-v0={}", section.display()),
            binary.to_str().unwrap(),
            dir.path().join("scratch").to_str().unwrap(),
        ],
    );
    let json = output(
        "python3",
        &[
            "-c",
            "import sys, zlib; print(zlib.decompress(open(sys.argv[1], 'rb').read()).decode())",
            section.to_str().unwrap(),
        ],
    );
    let audit: serde_json::Value = serde_json::from_str(&json).unwrap();
    audit["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["version"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The x86_64 .deb unpacked into `into`; returns its /usr/bin/bootagent.
fn packaged_binary(into: &Path) -> PathBuf {
    let deb = artifact("_amd64.deb");
    output(
        "dpkg-deb",
        &["--extract", deb.to_str().unwrap(), into.to_str().unwrap()],
    );
    into.join("usr/bin/bootagent")
}

#[test]
fn the_packaged_binary_names_its_crates_for_image_scanners() {
    support::needs_world!();
    let unpacked = tempfile::tempdir().unwrap();
    let crates = embedded_dependencies(&packaged_binary(unpacked.path()));
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap();
    for name in ["git2", "aws-sdk-secretsmanager", "rustls", "tokio"] {
        let (_, version) = crates
            .iter()
            .find(|(crate_name, _)| crate_name == name)
            .unwrap_or_else(|| panic!("{name} not in the embedded list"));
        let locked = format!("name = \"{name}\"\nversion = \"{version}\"");
        assert!(
            lock.contains(&locked),
            "{name} {version} is not the locked version"
        );
    }
}

/// The shipped binary has no test hooks: `BOOTAGENT_FAILPOINT`, which kills a test build at the
/// end of the git step (or makes it panic there), changes nothing in it.
#[test]
fn the_packaged_binary_ignores_bootagent_failpoint() {
    support::needs_world!();
    let unpacked = tempfile::tempdir().unwrap();
    let binary = packaged_binary(unpacked.path());
    let (_name, _repo, imds) = small_service("pkgfp", "test");
    for point in ["after-git", "panic:after-git"] {
        let instance = Instance::exec_mode("");
        let boot = instance
            .command_of(&binary, &imds, &["boot"])
            .env("BOOTAGENT_FAILPOINT", point)
            .output()
            .unwrap();
        Run(boot).expect(0);
        assert_eq!(instance.status()["outcome"], "succeeded", "{point}");
        assert_eq!(instance.service_env()["A"], "1", "{point}");
    }
}

/// The image's settings as a bake writes them, as a shell script: the sample service's unit
/// (its record of what it received goes to `out`), a config drop-in, and unit drop-ins that
/// point bootagent at the test world (on an instance, the real endpoints are the defaults).
fn bake(name: &str, out: &str, imds: &Imds) -> String {
    format!(
        "set -e
         mkdir -p -m 777 {out}
         printf '[Unit]\\nDescription=sample service\\n[Service]\\nExecStart=/usr/local/bin/recorder.sh {out} --stay\\n' \\
             > /etc/systemd/system/{name}.service
         mkdir -p /etc/bootagent/config.d
         printf '[service]\\nuser = \"nobody\"\\nsettle = \"200ms\"\\n[health]\\nlisten = \"127.0.0.1:0\"\\napp_url = \"\"\\n' \\
             > /etc/bootagent/config.d/90-test-world.toml
         for unit in bootagent-boot bootagent-refresh bootagent-lifecycle cloud-final; do
             mkdir -p /etc/systemd/system/$unit.service.d
             printf '[Service]\\nEnvironment=AWS_EC2_METADATA_SERVICE_ENDPOINT={imds} AWS_ENDPOINT_URL={moto} AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing\\n' \\
                 > /etc/systemd/system/$unit.service.d/test-world.conf
         done",
        imds = imds.url,
        moto = world("MOTO"),
    )
}

/// The recorder (the sample service) in the image.
fn install_recorder(root: &Path) {
    let bin = root.join("usr/local/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(world("RECORDER"), bin.join("recorder.sh")).unwrap();
}

/// A copy of `deb` with the next Debian revision: an upgrade, as far as dpkg and the maintainer
/// scripts can tell.
fn next_revision(deb: &Path, into: &Path) -> PathBuf {
    let tree = into.join("tree");
    output(
        "dpkg-deb",
        &[
            "--raw-extract",
            deb.to_str().unwrap(),
            tree.to_str().unwrap(),
        ],
    );
    let control_path = tree.join("DEBIAN/control");
    let control = std::fs::read_to_string(&control_path).unwrap();
    let version = control
        .lines()
        .find_map(|line| line.strip_prefix("Version: "))
        .unwrap()
        .to_string();
    let (upstream, revision) = version.rsplit_once('-').unwrap();
    let next = format!("{upstream}-{}", revision.parse::<u32>().unwrap() + 1);
    std::fs::write(&control_path, control.replace(&version, &next)).unwrap();
    let newer = into.join("bootagent-next.deb");
    output(
        "dpkg-deb",
        &[
            "--root-owner-group",
            "--build",
            tree.to_str().unwrap(),
            newer.to_str().unwrap(),
        ],
    );
    newer
}

#[test]
fn an_image_with_the_deb_boots_its_service_by_itself_then_upgrades_removes_and_purges() {
    support::needs_world!();
    let (name, _repo, imds) = small_service("ami", "prod");
    let canary = canary();
    put_secret_value(
        &format!("{name}_env_prod"),
        &serde_json::json!({ "DB_PASSWORD": canary }).to_string(),
    );
    let root = PrivateRoot::mount("ROOTFS");
    install_recorder(&root.merged());
    let mut container = Container::boot_private(root);
    let deb = artifact("_amd64.deb");
    std::fs::copy(&deb, container.out().join("bootagent.deb")).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    std::fs::copy(
        next_revision(&deb, scratch.path()),
        container.out().join("bootagent-next.deb"),
    )
    .unwrap();

    // Installed with the package manager on the image-build instance: enabled, not booted.
    container.sh("apt-get install -y -q --no-install-recommends /share/bootagent.deb");
    for unit in [
        "bootagent-boot.service",
        "bootagent-health.service",
        "bootagent-lifecycle.service",
        "bootagent-refresh.timer",
        "bootagent-deploy.timer",
    ] {
        assert_enabled(&container, unit);
    }
    assert_eq!(
        container.show("bootagent-boot.service", "ActiveState"),
        "inactive"
    );
    container.sh("test ! -e /run/bootagent/status.json");
    let out = format!("/share/out/{name}");
    container.sh(&bake(&name, &out, &imds));
    container.sh("echo '# edited by the image bake' >> /etc/bootagent/config.toml");

    // The instance launches: nothing but systemd starts bootagent.
    container.reboot();
    let unit = format!("{name}.service");
    assert_boot_unit_succeeded(&container);
    assert_eq!(container.show(&unit, "ActiveState"), "active");
    let received = container.sh(&format!("cat {out}/env"));
    assert!(
        received.contains(&format!("BOOTAGENT_SERVICE={name}")),
        "{received}"
    );
    assert!(received.contains("BOOTAGENT_ENV=prod"), "{received}");
    let secret = format!("DB_PASSWORD={canary}");
    assert!(received.split('\0').any(|variable| variable == secret));
    let everything = container.sh("journalctl --no-pager -o cat; cat /run/bootagent/status.json");
    assert_no_canary(&canary, &[("journal and status.json", &everything)]);
    let status = container.exec(&["bootagent", "status"]);
    let told = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{told}");
    assert!(told.contains("succeeded"), "{told}");
    let journal = container.sh("journalctl --no-pager -o cat -u bootagent-boot.service");
    assert!(journal.contains("boot succeeded"), "{journal}");
    let health = container.health_url();
    eventually(30, "health 200", || http_status(&health) == "200");

    // An upgrade keeps the edited config, restarts the health server, and neither boots again
    // nor restarts the service.
    let service_pid = container.show(&unit, "MainPID");
    let health_pid = container.show("bootagent-health.service", "MainPID");
    let booted_at = container.sh("cat /run/bootagent/status.json");
    container.sh("apt-get install -y -q --no-install-recommends /share/bootagent-next.deb");
    assert!(container
        .sh("cat /etc/bootagent/config.toml")
        .contains("# edited by the image bake"));
    assert_eq!(container.show(&unit, "MainPID"), service_pid);
    assert_eq!(container.sh("cat /run/bootagent/status.json"), booted_at);
    eventually(30, "the health server restarted", || {
        let pid = container.show("bootagent-health.service", "MainPID");
        pid != health_pid && pid != "0"
    });

    // Removed: stopped and disabled, the service left running, the config and history kept.
    container.sh("apt-get remove -y -q bootagent");
    assert_eq!(
        container.show("bootagent-health.service", "ActiveState"),
        "inactive"
    );
    container.sh("test ! -e /usr/bin/bootagent");
    container.sh("test ! -e /etc/systemd/system/multi-user.target.wants/bootagent-boot.service");
    assert_eq!(container.show(&unit, "ActiveState"), "active");
    container.sh("test -e /etc/bootagent/config.toml && test -d /var/lib/bootagent");

    // Purged: the config and the boot history go too.
    container.sh("apt-get purge -y -q bootagent");
    container.sh("test ! -e /etc/bootagent/config.toml && test ! -e /var/lib/bootagent");
}

/// bootagent-boot.service ran, to the end, and succeeded (a oneshot that remains active).
fn assert_boot_unit_succeeded(container: &Container) {
    eventually(60, "bootagent-boot to finish", || {
        container.show("bootagent-boot.service", "ActiveState") != "activating"
    });
    assert_eq!(
        container.show("bootagent-boot.service", "ActiveState"),
        "active",
        "{}",
        container.sh("journalctl --no-pager -u bootagent-boot.service")
    );
}

fn assert_enabled(container: &Container, unit: &str) {
    let enabled = container.exec(&["systemctl", "is-enabled", unit]);
    assert_eq!(
        String::from_utf8_lossy(&enabled.stdout).trim(),
        "enabled",
        "{unit}"
    );
}

/// An image with the package whose cloud-init runs bootagent, as `user_data` (an example from
/// packaging/examples/cloud-init) says: the package installed with dpkg into the image before it
/// ever boots, the units enabled or not (`units_enabled`), the NoCloud seed written. Boots it once
/// and waits for cloud-init to finish. The service's name, the container and where the service's
/// record is.
fn boot_with_cloud_init(user_data: &str, units_enabled: bool) -> (String, Container, SampleRepo) {
    let (name, repo, imds) = small_service("cloud", "prod");
    let root = PrivateRoot::mount("ROOTFS_CLOUD_INIT");
    std::fs::copy(
        artifact("_amd64.deb"),
        root.merged().join("tmp/bootagent.deb"),
    )
    .unwrap();
    install_recorder(&root.merged());
    let seed = root.merged().join("var/lib/cloud/seed/nocloud");
    std::fs::create_dir_all(&seed).unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging/examples/cloud-init")
        .join(user_data);
    std::fs::copy(&example, seed.join("user-data")).unwrap();
    std::fs::write(seed.join("meta-data"), format!("instance-id: i-{name}\n")).unwrap();
    std::fs::write(
        root.merged().join("etc/cloud/cloud.cfg.d/90-nocloud.cfg"),
        // The container's console is read by no one (nspawn --console=passive): once its buffer
        // is full, whatever writes there blocks. So cloud-init logs to its file only. And the
        // minimal image has no locales but C.UTF-8.
        "datasource_list: [ NoCloud, None ]\n\
         output: {all: '>> /var/log/cloud-init-output.log'}\n\
         no_ssh_fingerprints: true\n\
         ssh: {emit_keys_to_console: false}\n\
         locale: C.UTF-8\n",
    )
    .unwrap();
    root.chroot("dpkg -i /tmp/bootagent.deb");
    root.chroot(&bake(&name, &format!("/var/tmp/{name}"), &imds));
    if !units_enabled {
        root.chroot(
            "systemctl disable bootagent-boot.service bootagent-health.service \
             bootagent-lifecycle.service bootagent-refresh.timer bootagent-deploy.timer",
        );
    }
    let container = Container::boot_private(root);
    let waited = container.exec(&["cloud-init", "status", "--wait", "--long"]);
    assert!(
        waited.status.success(),
        "cloud-init: {}{}",
        String::from_utf8_lossy(&waited.stdout),
        container.sh("cat /var/log/cloud-init-output.log; journalctl --no-pager -u cloud-final")
    );
    (name, container, repo)
}

/// What every cloud-init test shows once cloud-init finished: the service runs with its
/// environment, and `bootagent status` tells a successful boot.
fn assert_booted(name: &str, container: &Container) {
    let unit = format!("{name}.service");
    eventually(60, "the service to be active", || {
        container.show(&unit, "ActiveState") == "active"
    });
    let received = container.sh(&format!("cat /var/tmp/{name}/env"));
    assert!(
        received.contains(&format!("BOOTAGENT_SERVICE={name}")),
        "{received}"
    );
    // small_service's secret.
    assert!(
        received.split('\0').any(|variable| variable == "A=1"),
        "{received}"
    );
    let status = container.exec(&["bootagent", "status"]);
    let told = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success() && told.contains("succeeded"),
        "{told}"
    );
}

#[test]
fn cloud_init_runs_bootagent_boot_from_runcmd() {
    support::needs_world!();
    let (name, container, _repo) = boot_with_cloud_init("run-bootagent.yaml", false);
    assert_booted(&name, &container);
    // cloud-init ran it (its output is in cloud-init's log), not the unit, which stayed off.
    let output = container.sh("cat /var/log/cloud-init-output.log");
    assert!(output.contains("boot succeeded"), "{output}");
    assert_eq!(
        container.show("bootagent-boot.service", "ActiveState"),
        "inactive"
    );
    // And the user-data's drop-in is in place.
    container.sh("test -s /etc/bootagent/config.d/50-user-data.toml");
}

#[test]
fn cloud_init_user_data_that_enables_the_packaged_unit_boots_through_systemd() {
    support::needs_world!();
    let (name, container, _repo) = boot_with_cloud_init("enable-unit.yaml", false);
    assert_boot_unit_succeeded(&container);
    assert_booted(&name, &container);
    assert_enabled(&container, "bootagent-boot.service");
    let journal = container.sh("journalctl --no-pager -o cat -u bootagent-boot.service");
    assert!(journal.contains("boot succeeded"), "{journal}");
}

#[test]
fn cloud_init_accepts_every_example_user_data_by_its_schema() {
    support::needs_world!();
    let root = PrivateRoot::mount("ROOTFS_CLOUD_INIT");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/examples/cloud-init");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap().flatten() {
        std::fs::copy(entry.path(), root.merged().join("tmp/user-data.yaml")).unwrap();
        root.chroot("cloud-init schema --config-file /tmp/user-data.yaml");
        checked += 1;
    }
    assert_eq!(checked, 2);
}
