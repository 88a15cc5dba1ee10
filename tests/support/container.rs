//! An nspawn container running a real systemd as PID 1, with the binary, the recorder and a
//! config under /share, reaching the test world over the shared loopback.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use super::*;

/// Stopped when dropped.
pub struct Container {
    name: String,
    leader: String,
    share: tempfile::TempDir,
    /// A root of its own that outlives a reboot; `None`: an overlay over the world's rootfs,
    /// thrown away at poweroff.
    root: Option<PrivateRoot>,
}

impl Container {
    /// Boots a container with the binary, the recorder and `config` under /share.
    pub fn boot(config: &str) -> Container {
        Container::boot_over("ROOTFS", config)
    }

    /// [`Container::boot`] over another of the world's root file systems (`ROOTFS_NGINX`).
    pub fn boot_over(lower: &str, config: &str) -> Container {
        let share = Container::share();
        std::fs::copy(bin(), share.path().join("bootagent")).unwrap();
        std::fs::write(share.path().join("config.toml"), config).unwrap();
        Container::start(share, Err(lower))
    }

    /// Boots a container from `root`, a writable layer of its own: what is installed in it
    /// survives [`Container::reboot`], as on an instance.
    pub fn boot_private(root: PrivateRoot) -> Container {
        Container::start(Container::share(), Ok(root))
    }

    /// A /share with the recorder and an `out/` anyone may write.
    fn share() -> tempfile::TempDir {
        let share = open_tempdir("/tmp");
        std::fs::set_permissions(share.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::copy(world("RECORDER"), share.path().join("recorder.sh")).unwrap();
        let out = share.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
        share
    }

    /// Boots from `root`, a private root, or else over the world's root file system named.
    fn start(share: tempfile::TempDir, root: Result<PrivateRoot, &str>) -> Container {
        let name = unique("ba");
        let leader = Container::start_systemd(&name, share.path(), root.as_ref().map_err(|l| *l));
        Container {
            name,
            leader,
            share,
            root: root.ok(),
        }
    }

    /// Starts systemd in the container; its leader's PID.
    fn start_systemd(name: &str, share: &Path, root: Result<&PrivateRoot, &str>) -> String {
        let mut command = Command::new(world("NSPAWN"));
        match root {
            Ok(root) => command.args(["start-persistent", name]).arg(root.merged()),
            Err(lower) => command.args(["start", name, &world(lower)]),
        };
        let started = command.arg(share).output().unwrap();
        assert!(
            started.status.success(),
            "nspawn: {}",
            String::from_utf8_lossy(&started.stderr)
        );
        String::from_utf8(started.stdout)
            .unwrap()
            .trim()
            .to_string()
    }

    /// Powers the container off and boots it again from the same root.
    pub fn reboot(&mut self) {
        assert!(self.root.is_some(), "only a private root survives a reboot");
        self.stop();
        let root = self.root.as_ref().expect("checked above");
        self.leader = Container::start_systemd(&self.name, self.share.path(), Ok(root));
    }

    fn stop(&self) {
        let _ = Command::new(world("NSPAWN"))
            .args(["stop", &self.name, &self.leader])
            .status();
    }

    pub fn exec(&self, argv: &[&str]) -> Output {
        Command::new(world("NSPAWN"))
            .args(["run", &self.leader])
            .args(argv)
            .output()
            .unwrap()
    }

    pub fn sh(&self, script: &str) -> String {
        let out = self.exec(&["sh", "-c", script]);
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn install_unit(&self, unit: &str, service_section: &str) {
        self.sh(&format!(
            "printf '[Unit]\\nDescription=sample service\\nStartLimitIntervalSec=0\\n[Service]\\n{service_section}\\n' \
             > /etc/systemd/system/{unit} && systemctl daemon-reload"
        ));
    }

    pub fn bootagent(&self, imds: &Imds, args: &[&str]) -> Run {
        self.bootagent_with(imds, &[], args)
    }

    /// Runs bootagent inside with the test world's endpoints plus `env` (NAME=value).
    pub fn bootagent_with(&self, imds: &Imds, env: &[&str], args: &[&str]) -> Run {
        Run(self.bootagent_command(imds, env, args).output().unwrap())
    }

    /// Starts a long-running bootagent command inside; [`Container::stop_watch`] ends it.
    pub fn spawn_watch(&self, imds: &Imds, env: &[&str]) -> std::process::Child {
        self.bootagent_command(imds, env, &["lifecycle", "watch", "--interval", "200ms"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Ends a spawned command: its child inside the container (nsenter forks into the PID
    /// namespace), then nsenter itself follows.
    pub fn stop_watch(mut watch: std::process::Child) {
        let _ = Command::new("pkill")
            .args(["-P", &watch.id().to_string()])
            .status();
        let _ = watch.wait();
    }

    pub fn bootagent_command(&self, imds: &Imds, env: &[&str], args: &[&str]) -> Command {
        let imds_endpoint = format!("AWS_EC2_METADATA_SERVICE_ENDPOINT={}", imds.url);
        let moto = format!("AWS_ENDPOINT_URL={}", world("MOTO"));
        let mut argv = vec![
            "env",
            "-i",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "BOOTAGENT_CONFIG=/share/config.toml",
            "AWS_ACCESS_KEY_ID=testing",
            "AWS_SECRET_ACCESS_KEY=testing",
            &imds_endpoint,
            &moto,
        ];
        argv.extend_from_slice(env);
        argv.push("/share/bootagent");
        argv.extend_from_slice(args);
        let mut command = Command::new(world("NSPAWN"));
        command.args(["run", &self.leader]).args(&argv);
        command
    }

    /// Installs the binary, /share/config.toml and the shipped units as a package would, with
    /// drop-ins that point them at the test world (and the health server at a port of its own
    /// choosing: [`Container::health_url`]).
    pub fn install_shipped_units(&self, imds: &Imds) {
        let shipped = crate::repository().join("systemd");
        for unit_file in [
            "bootagent-boot.service",
            "bootagent-health.service",
            "bootagent-lifecycle.service",
            "bootagent-refresh.service",
            "bootagent-refresh.timer",
            "bootagent-deploy.service",
            "bootagent-deploy.timer",
            "bootagent-credentials@.service",
        ] {
            std::fs::copy(shipped.join(unit_file), self.out().join(unit_file)).unwrap();
        }
        self.sh(&format!(
            "set -e
             mkdir -p /etc/bootagent
             cp /share/bootagent /usr/bin/bootagent
             cp /share/config.toml /etc/bootagent/config.toml
             cp /share/bootagent-*.service /share/bootagent-*.timer /etc/systemd/system/
             for unit in boot refresh deploy; do
                 mkdir -p /etc/systemd/system/bootagent-$unit.service.d
                 printf '[Service]\\nEnvironment=AWS_EC2_METADATA_SERVICE_ENDPOINT={imds} AWS_ENDPOINT_URL={moto} AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing\\n' \\
                     > /etc/systemd/system/bootagent-$unit.service.d/test-world.conf
             done
             mkdir -p /etc/systemd/system/bootagent-health.service.d
             printf '[Service]\\nExecStart=\\nExecStart=/usr/bin/bootagent health-report --listen 127.0.0.1:0\\n' \\
                 > /etc/systemd/system/bootagent-health.service.d/test-port.conf
             systemctl daemon-reload",
            imds = imds.url,
            moto = world("MOTO"),
        ));
    }

    /// The started health server's URL: the address it logged (field ADDRESS) once it listened.
    pub fn health_url(&self) -> String {
        let mut address = None;
        eventually(10, "the health server's address in the journal", || {
            let journal = self.sh("journalctl --no-pager -o json -u bootagent-health.service");
            address = journal
                .lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .find(|entry| entry["MESSAGE"] == "serving health reports")
                .and_then(|entry| entry["F_ADDRESS"].as_str().map(str::to_string));
            address.is_some()
        });
        format!("http://{}/health", address.unwrap())
    }

    pub fn show(&self, unit: &str, property: &str) -> String {
        self.sh(&format!("systemctl show --value -p {property} {unit}"))
            .trim()
            .to_string()
    }

    /// The commit of the release `/srv/{service}` links to.
    pub fn release_of(&self, service: &str) -> Option<String> {
        let out = self.exec(&["readlink", &format!("/srv/{service}")]);
        let link = String::from_utf8(out.stdout).ok()?;
        Some(
            Path::new(link.trim())
                .file_name()?
                .to_string_lossy()
                .into_owned(),
        )
    }

    pub fn out(&self) -> &Path {
        self.share.path()
    }

    /// Where `needle` is in the container but for the two places a secret value belongs: the
    /// env file `env_file` (a path inside) and what a service recorded of its environment
    /// (`record`, under [`Container::out`]). The journal and the files bootagent and systemd
    /// write are searched, and all of /share.
    pub fn places_holding(&self, needle: &str, env_file: &str, record: &Path) -> Vec<String> {
        let mut found = Vec::new();
        if self.sh("journalctl --no-pager -o cat").contains(needle) {
            found.push("the journal".to_string());
        }
        let inside = self.sh(&format!(
            "grep -rlsF -e '{needle}' /run/bootagent /var/lib/bootagent /srv /etc /run/systemd || true"
        ));
        found.extend(
            inside
                .lines()
                .filter(|path| *path != env_file)
                .map(str::to_string),
        );
        found.extend(
            files_containing(self.out(), needle)
                .into_iter()
                .filter(|path| !path.starts_with(record))
                .map(|path| path.display().to_string()),
        );
        found
    }

    /// Installs `unit`, running [`CRASHING_APP`] (as /share/app.sh).
    pub fn install_app(&self, unit: &str) {
        let app = self.out().join("app.sh");
        std::fs::write(&app, CRASHING_APP).unwrap();
        std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).unwrap();
        self.install_unit(unit, "ExecStart=/share/app.sh");
    }
}

/// A config for a container whose services are gated quickly: a short settle and health wait.
pub const QUICK_GATE: &str = r#"[identity]
tag_wait = "2s"

[service]
user = "nobody"
start_timeout = "20s"
settle = "500ms"

[deploy]
health_wait = "5s"
"#;

/// A sample service that crashes at start when its release's VERSION or the environment's
/// RELEASE says so (`crash…`); otherwise records what it received in /share/out and stays up.
pub const CRASHING_APP: &str = r#"#!/bin/sh
case "$(cat VERSION 2>/dev/null)" in
crash*) echo "this release crashes at start" >&2; exit 3 ;;
esac
case "$RELEASE" in
crash*) echo "this environment crashes at start" >&2; exit 3 ;;
esac
exec /share/recorder.sh /share/out --stay
"#;

impl Drop for Container {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An overlay over one of the world's root file systems with an upper layer of its own,
/// unmounted when dropped. Before the container boots, a test may change it from outside (as an
/// image build would).
pub struct PrivateRoot {
    dir: tempfile::TempDir,
}

impl PrivateRoot {
    /// Over `lower`: the world's `ROOTFS`, or `ROOTFS_CLOUD_INIT` (the same with cloud-init).
    pub fn mount(lower: &str) -> PrivateRoot {
        let dir = open_tempdir("/tmp");
        for sub in ["upper", "work", "merged"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            world(lower),
            dir.path().join("upper").display(),
            dir.path().join("work").display()
        );
        let status = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &options])
            .arg(dir.path().join("merged"))
            .status()
            .unwrap();
        assert!(status.success(), "mount overlay {options}");
        PrivateRoot { dir }
    }

    /// The root as the container sees it.
    pub fn merged(&self) -> std::path::PathBuf {
        self.dir.path().join("merged")
    }

    /// Runs `script` with this root as `/` (chroot), as an image build does before the image
    /// ever boots.
    pub fn chroot(&self, script: &str) {
        let out = Command::new("chroot")
            .arg(self.merged())
            .args(["sh", "-c", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "chroot: {script}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivateRoot {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.merged()).status();
    }
}

/// Waits up to `seconds` for `condition`, looking every 50 ms.
pub fn eventually(seconds: u64, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
