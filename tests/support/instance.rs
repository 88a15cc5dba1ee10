//! The instance under test: its config and directories, and runs of the real `bootagent`
//! binary against the world.

use crate::*;
use std::process::Output;

/// A service in `env` with a one-variable secret and a sample repo, and the IMDS of an instance
/// tagged for it: (name, repo, IMDS).
pub fn small_service(prefix: &str, env: &str) -> (String, SampleRepo, Imds) {
    service_with_secret(prefix, env, r#"{"A": "1"}"#)
}

/// [`small_service`] whose secret is `secret` (a JSON object).
pub fn service_with_secret(prefix: &str, env: &str, secret: &str) -> (String, SampleRepo, Imds) {
    let name = unique(prefix);
    let repo = SampleRepo::create(&name);
    create_secret(&format!("{name}_env_{env}"), secret);
    let imds = Imds::for_service(&name, env, &repo.url);
    (name, repo, imds)
}

/// One instance's files: config, run dir on tmpfs, checkout and the service's output.
pub struct Instance {
    pub root: tempfile::TempDir,
    pub run: tempfile::TempDir,
    pub config: PathBuf,
    pub out: PathBuf,
}

impl Instance {
    /// An exec-mode instance whose service is the recorder, run as `nobody`. `extra`, if any,
    /// becomes a config drop-in.
    pub fn exec_mode(extra: &str) -> Instance {
        let root = open_tempdir("/tmp");
        let run = open_tempdir("/dev/shm");
        let out = root.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
        let recorder = root.path().join("recorder.sh");
        std::fs::copy(world("RECORDER"), &recorder).unwrap();
        let config = root.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"[identity]
tag_wait = "2s"
imds_deadline = "3s"

[paths]
run_dir = "{run}"
state_dir = "{root}/state"
systemd_runtime_dir = "{root}/systemd"

[git]
dir = "{root}/srv/{{service}}"

[service]
manager = "exec"
user = "nobody"
command = ["{recorder}", "{out}"]

[boot]
deadline = "60s"
"#,
                run = run.path().display(),
                root = root.path().display(),
                recorder = recorder.display(),
                out = out.display(),
            ),
        )
        .unwrap();
        let instance = Instance {
            root,
            run,
            config,
            out,
        };
        if !extra.is_empty() {
            instance.add_config("50-test.toml", extra);
        }
        instance
    }

    /// Adds a config drop-in (config.d/NAME).
    pub fn add_config(&self, name: &str, text: &str) {
        let drop_ins = self.root.path().join("config.d");
        std::fs::create_dir_all(&drop_ins).unwrap();
        std::fs::write(drop_ins.join(name), text).unwrap();
    }

    /// Another process holding the boot lock, as a boot in progress would, until the guard
    /// goes. It holds it once this returns: flock runs the command only then, and the command's
    /// first line says so. (-o: the lock is flock's alone, and goes with it when it is killed.)
    pub fn hold_boot_lock(&self) -> Reaped {
        let mut holder = Command::new("flock")
            .arg("-o")
            .arg(self.run.path().join("boot.lock"))
            .args(["sh", "-c", "echo held; exec sleep 30"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        assert_eq!(first_line(&mut holder), "held\n");
        Reaped(holder)
    }

    /// The recorder's command line in config, for a drop-in that changes it.
    pub fn recorder_command(&self, extra_args: &[&str]) -> String {
        let mut argv = vec![
            self.root.path().join("recorder.sh").display().to_string(),
            self.out.display().to_string(),
        ];
        argv.extend(extra_args.iter().map(|a| a.to_string()));
        serde_json::to_string(&argv).unwrap()
    }

    pub fn env_file(&self, service: &str) -> PathBuf {
        self.run.path().join(format!("{service}.env"))
    }

    /// The link the service runs in.
    pub fn checkout(&self, service: &str) -> PathBuf {
        self.root.path().join("srv").join(service)
    }

    /// The bare repository behind the releases.
    pub fn repository(&self, service: &str) -> PathBuf {
        self.root
            .path()
            .join("srv")
            .join(format!(".{service}"))
            .join("repo.git")
    }

    /// The commit of the release the checkout link points at.
    pub fn running_commit(&self, service: &str) -> String {
        let target = std::fs::read_link(self.checkout(service)).expect("the checkout is a link");
        target.file_name().unwrap().to_string_lossy().into_owned()
    }

    pub fn status(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.run.path().join("status.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    pub fn status_text(&self) -> String {
        std::fs::read_to_string(self.run.path().join("status.json")).unwrap_or_default()
    }

    /// The environment the recorder service was started with.
    pub fn service_env(&self) -> BTreeMap<String, String> {
        let raw = std::fs::read(self.out.join("env")).expect("the service ran");
        raw.split(|b| *b == 0)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                let entry = String::from_utf8(entry.to_vec()).unwrap();
                let (name, value) = entry.split_once('=').unwrap();
                (name.to_string(), value.to_string())
            })
            .collect()
    }

    pub fn service_saw(&self, file: &str) -> String {
        std::fs::read_to_string(self.out.join(file))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Asserts that `canary` is in none of what `run` printed and not in status.json.
    pub fn assert_no_canary(&self, canary: &str, run: &Run) {
        assert_no_canary(
            canary,
            &[
                ("stdout", &run.stdout()),
                ("stderr", &run.stderr()),
                ("status.json", &self.status_text()),
            ],
        );
    }

    /// Asserts that `service` runs `commit` and got the secret's variables except `withheld`,
    /// which bootagent keeps for itself (a deploy token or key).
    pub fn assert_runs_without(&self, service: &str, commit: &str, withheld: &str) {
        assert_eq!(self.running_commit(service), commit);
        let received = self.service_env();
        assert_eq!(received["APP"], "1");
        assert!(
            !received.contains_key(withheld),
            "the service got {withheld}"
        );
    }

    /// Asserts that `canary` is neither in what `run` printed, nor in status.json, nor in any
    /// file under the instance's directories.
    pub fn assert_left_nowhere(&self, canary: &str, run: &Run) {
        self.assert_no_canary(canary, run);
        let leaks = [
            files_containing(self.root.path(), canary),
            files_containing(self.run.path(), canary),
        ]
        .concat();
        assert!(leaks.is_empty(), "the canary was written to {leaks:?}");
    }

    /// Every file under the instance's directories that holds `needle`, except the two places
    /// a secret value belongs: `service`'s env file and what the recorder service wrote of the
    /// environment it received (`out/`).
    pub fn files_holding(&self, needle: &str, service: &str) -> Vec<PathBuf> {
        let env_file = self.env_file(service);
        [
            files_containing(self.root.path(), needle),
            files_containing(self.run.path(), needle),
        ]
        .concat()
        .into_iter()
        .filter(|path| *path != env_file && !path.starts_with(&self.out))
        .collect()
    }

    /// Runs `doctor --json`; returns the run and the finding of the check `name`.
    pub fn doctor_check(&self, imds: &Imds, name: &str) -> (Run, serde_json::Value) {
        let run = self.run(imds, &["doctor", "--json"]);
        let report: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
        let finding = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check in {report}"))
            .clone();
        (run, finding)
    }

    pub fn command(&self, imds: &Imds, args: &[&str]) -> Command {
        self.command_via(&[], imds, args)
    }

    /// [`Instance::command`] run through `prefix` (`ip netns exec NAME`, say).
    pub fn command_via(&self, prefix: &[String], imds: &Imds, args: &[&str]) -> Command {
        let command = match prefix.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(bin());
                command
            }
            None => Command::new(bin()),
        };
        self.against(command, imds, args)
    }

    /// [`Instance::command`] running `binary` instead of the one cargo built (a packaged one).
    pub fn command_of(&self, binary: &Path, imds: &Imds, args: &[&str]) -> Command {
        self.against(Command::new(binary), imds, args)
    }

    /// `command` with `args`, this instance's config and the test world's endpoints.
    fn against(&self, mut command: Command, imds: &Imds, args: &[&str]) -> Command {
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("BOOTAGENT_CONFIG", &self.config)
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.url)
            .env("AWS_ENDPOINT_URL", world("MOTO"))
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing");
        command
    }

    pub fn run(&self, imds: &Imds, args: &[&str]) -> Run {
        Run(self.command(imds, args).output().unwrap())
    }

    /// [`Instance::run`] with `env` (name, value) on top of the test world's.
    pub fn run_with(&self, imds: &Imds, args: &[&str], env: &[(&str, &str)]) -> Run {
        Run(self
            .command(imds, args)
            .envs(env.iter().copied())
            .output()
            .unwrap())
    }
}

/// A finished run of the binary.
pub struct Run(pub Output);

impl Run {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }

    /// Asserts the exit code, printing both streams when it differs, and that nothing was
    /// coloured: the output is not a terminal (SSM Run Command, log collectors).
    pub fn expect(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout(),
            self.stderr()
        );
        assert!(
            !self.stderr().contains('\u{1b}') && !self.stdout().contains('\u{1b}'),
            "escape sequences in output that is not a terminal:\n{}",
            self.stderr()
        );
        // No input may make the binary panic, whatever the exit code (a panic on a thread of
        // its own can still end in the expected one).
        assert!(
            !self.stderr().contains("panicked at"),
            "the binary panicked:\n{}",
            self.stderr()
        );
        self
    }

    pub fn stderr_has(&self, needle: &str) -> &Self {
        assert!(
            self.stderr().contains(needle),
            "stderr lacks {needle:?}:\n{}",
            self.stderr()
        );
        self
    }
}
