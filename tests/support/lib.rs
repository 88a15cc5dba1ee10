//! The local world for the integration tests, one module per counterpart: the IMDS fake
//! (`imds`), moto and the AWS fakes (`aws`), the git servers (`git`), sshd (`sshd`), nspawn
//! containers (`container`), network namespaces (`netns`), and the instance under test with the
//! real `bootagent` binary (`instance`). `scripts/test` starts moto and the git daemon and exports
//! `BOOTAGENT_WORLD_*`; a plain `cargo test` without them skips the tests that need them.
//!
//! A crate of its own, so that each test binary links what it uses and nothing is dead code.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

pub mod aws;
pub mod container;
pub mod git;
pub mod imds;
pub mod instance;
pub mod matrix;
pub mod netns;
pub mod sshd;

pub use aws::*;
pub use git::*;
pub use imds::*;
pub use instance::*;
pub use sshd::*;

/// The `bootagent` binary cargo built beside the test binary (`target/<profile>/deps/`).
pub fn bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        let test = std::env::current_exe().unwrap();
        let profile_dir = test.parent().and_then(Path::parent).unwrap();
        let bin = profile_dir.join("bootagent");
        assert!(bin.exists(), "{} was not built", bin.display());
        bin.display().to_string()
    })
}

/// The bootagent repository: this crate is `tests/support` in it.
pub fn repository() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// What `scripts/test` exports when the test world runs: every test that needs it starts with
/// [`needs_world!`].
const WORLD_MARK: &str = "BOOTAGENT_WORLD_MOTO";
/// Set by `scripts/test`: a world that is not there then fails the tests instead of skipping them.
const WORLD_REQUIRED: &str = "BOOTAGENT_WORLD_REQUIRED";

/// Returns from the test, after one line on the terminal, when the test world is not running.
#[macro_export]
macro_rules! needs_world {
    () => {
        if !$crate::world_is_up() {
            return;
        }
    };
}

/// Whether the test world runs. When it does not, says so once per test binary, on the terminal
/// (past the test harness's capture), and the tests that need it are skipped.
pub fn world_is_up() -> bool {
    if std::env::var_os(WORLD_MARK).is_some() {
        return true;
    }
    assert!(
        std::env::var_os(WORLD_REQUIRED).is_none(),
        "{WORLD_REQUIRED} is set but {WORLD_MARK} is not: the test world did not start"
    );
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        let binary = std::env::current_exe().unwrap_or_default();
        let name = binary.file_name().unwrap_or_default().to_string_lossy();
        // cargo names test binaries NAME-HASH.
        let name = name.rsplit_once('-').map_or(&*name, |(name, _)| name);
        let _ = writeln!(
            std::io::stderr(),
            "skipping the tests in tests/{name}.rs that need the test world (moto, git servers, \
             the IMDS fake, nspawn): run them with scripts/test"
        );
    });
    false
}

/// A path or URL of the test world, `BOOTAGENT_WORLD_<name>`.
pub fn world(name: &str) -> String {
    let key = format!("BOOTAGENT_WORLD_{name}");
    std::env::var(&key).unwrap_or_else(|_| {
        panic!("{key} is not set: run the integration tests through scripts/test")
    })
}

pub const NOBODY_UID: &str = "65534";

/// A name no other test in this run uses (services, secrets and repos share moto and git).
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A secret value no test output may ever contain.
pub fn canary() -> String {
    unique("canary-c4n4ry-")
}

/// A temp dir that the unprivileged service user can traverse.
pub fn open_tempdir(base: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("bootagent-test-")
        .tempdir_in(base)
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A child process that is killed and reaped when the guard goes.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port that refuses every connection for as long as it lives: bound but never
/// listening, so no other process can take the port meanwhile (a port bound and let go can be).
pub struct RefusingPort {
    _socket: std::os::fd::OwnedFd,
    pub port: u16,
}

impl RefusingPort {
    pub fn bind() -> RefusingPort {
        use nix::sys::socket::{bind, getsockname, socket, AddressFamily, SockFlag, SockType};
        use std::os::fd::AsRawFd;
        let socket = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let loopback = nix::sys::socket::SockaddrIn::new(127, 0, 0, 1, 0);
        bind(socket.as_raw_fd(), &loopback).unwrap();
        let bound: nix::sys::socket::SockaddrIn = getsockname(socket.as_raw_fd()).unwrap();
        RefusingPort {
            _socket: socket,
            port: bound.port(),
        }
    }

    /// `scheme://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }
}

/// Starts one of the Python servers in tests/world, which bind a free port themselves and print
/// "listening on URL" first, once they accept connections: the port is theirs from then on.
fn start_fake(script: &str, args: &[&str]) -> (Child, String) {
    let mut command = Command::new(world("PYTHON"));
    command.arg(world(script)).args(args);
    start_listening(command)
}

/// The first line `child` prints on its piped stdout (which it takes).
pub fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line
}

/// Spawns `command`, a server that prints "listening on URL" first; returns it and the URL.
fn start_listening(mut command: Command) -> (Child, String) {
    let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
    let line = first_line(&mut child);
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{command:?} said {line:?}"))
        .to_string();
    (child, url)
}

/// When the phase `name` of the boot `status` (status.json) began and ended, in milliseconds
/// after the boot began.
pub fn phase_span(status: &serde_json::Value, name: &str) -> std::ops::Range<u64> {
    let phases = status["phases"].as_array().expect("phases");
    let phase = (phases.iter())
        .find(|phase| phase["name"] == name)
        .unwrap_or_else(|| panic!("no {name} phase in {status}"));
    let started = phase["started_ms"].as_u64().expect("started_ms");
    started..started + phase["duration_ms"].as_u64().expect("duration_ms")
}

/// curl with `args`; its stdout, after it succeeded.
pub fn curl(args: &[&str]) -> String {
    let out = Command::new("curl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A loopback port whose connections complete (into the listen backlog) and are never
/// accepted or answered: a remote that hangs.
pub fn silent_listener() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap()
}

/// Every regular file under `dir` that contains `needle` (links are not followed, and a FIFO
/// is not opened: a read would wait for a writer).
pub fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if kind.is_file()
            && std::fs::read(&path)
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
        {
            found.push(path);
        }
    }
    found
}

/// Small deterministic random numbers for generated test data; the seed is printed so a failure
/// can be replayed with BOOTAGENT_TEST_SEED.
pub struct Rng(u64);

impl Rng {
    pub fn from_env() -> Rng {
        let seed = std::env::var("BOOTAGENT_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("random test data from BOOTAGENT_TEST_SEED={seed}");
        Rng(seed)
    }

    pub fn below(&mut self, n: usize) -> usize {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }

    /// A value built from pieces that break naive quoting: quotes, backslashes, newlines,
    /// `$` and `%` expansions, comment signs, multi-byte UTF-8, edge whitespace, or nothing.
    pub fn nasty_value(&mut self, carriage_returns: bool) -> String {
        const PIECES: &[&str] = &[
            "\n",
            "\"",
            "'",
            "\\",
            "\\n",
            "\\\"",
            "$",
            "${HOME}",
            "$HOME",
            "$$",
            "%",
            "%h",
            "%%",
            "#",
            " # x",
            "=",
            " ",
            "\t",
            "`id`",
            "é",
            "日本",
            "😀",
            "a",
            "Z",
            "0",
            "-----BEGIN KEY-----\n",
            ";",
            "&&",
            "\\'",
            "''",
            "\"\"",
        ];
        let mut value = String::new();
        if self.below(8) == 0 {
            return value;
        }
        if self.below(4) == 0 {
            value.push_str("  ");
        }
        for _ in 0..self.below(12) + 1 {
            value.push_str(PIECES[self.below(PIECES.len())]);
            if carriage_returns && self.below(20) == 0 {
                value.push('\r');
            }
        }
        if self.below(4) == 0 {
            value.push(' ');
        }
        value
    }

    pub fn nasty_map(&mut self, size: usize, carriage_returns: bool) -> BTreeMap<String, String> {
        (0..size)
            .map(|i| (format!("VAR_{i}"), self.nasty_value(carriage_returns)))
            .collect()
    }
}

/// Asserts that none of `outputs` contains `canary`.
pub fn assert_no_canary(canary: &str, outputs: &[(&str, &str)]) {
    for (what, text) in outputs {
        assert!(
            !text.contains(canary),
            "the canary leaked into {what}:\n{text}"
        );
    }
}

/// A small tmpfs that is unmounted when the guard goes.
pub struct SmallTmpfs(std::path::PathBuf);

impl SmallTmpfs {
    pub fn mount(at: &Path, size: &str) -> SmallTmpfs {
        std::fs::create_dir_all(at).unwrap();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=755"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs needs root");
        SmallTmpfs(at.to_path_buf())
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// The HTTP status code curl gets for `url` (`000`: no answer within 5 s).
pub fn http_status(url: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            url,
        ])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}
