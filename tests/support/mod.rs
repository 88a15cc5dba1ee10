//! The local world for integration tests: the real `bootagent` binary, moto for Secrets
//! Manager, a git daemon, the IMDS fake and (for systemd mode) a container booted with nspawn.
//! `scripts/test` starts moto and the git daemon and exports `BOOTAGENT_WORLD_*`.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

pub mod container;
pub mod netns;

pub const BIN: &str = env!("CARGO_BIN_EXE_bootagent");
pub const NOBODY_UID: &str = "65534";

pub fn world(name: &str) -> String {
    let key = format!("BOOTAGENT_WORLD_{name}");
    std::env::var(&key).unwrap_or_else(|_| {
        panic!("{key} is not set: run the integration tests through scripts/test")
    })
}

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

pub struct Imds {
    _process: Reaped,
    pub url: String,
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

impl Imds {
    /// Starts the IMDS fake with `state` (see tests/world/imds_fake.py for its keys).
    pub fn start(state: serde_json::Value) -> Imds {
        let dir = tempfile::tempdir().unwrap();
        let state_file = dir.path().join("state.json");
        std::fs::write(&state_file, state.to_string()).unwrap();
        let (child, url) = start_fake("IMDS_FAKE", &["--state", state_file.to_str().unwrap()]);
        Imds {
            _process: Reaped(child),
            url,
        }
    }

    pub fn with_tags(tags: &[(&str, &str)]) -> Imds {
        let tags: BTreeMap<_, _> = tags.iter().copied().collect();
        Imds::start(serde_json::json!({ "tags": tags }))
    }

    /// An instance tagged for `service` in `env`, its code at `repository`.
    pub fn for_service(service: &str, env: &str, repository: &str) -> Imds {
        Imds::with_tags(&[
            ("Service", service),
            ("Environment", env),
            ("Repository", repository),
        ])
    }

    /// Merges `changes` into the fake's state, as a change on the instance would.
    pub fn set(&self, changes: serde_json::Value) {
        curl(&[
            "-sSf",
            "-X",
            "POST",
            "--data-binary",
            &changes.to_string(),
            &format!("{}/fake/state", self.url),
        ]);
    }

    /// The requests it served, as "METHOD PATH STATUS" lines.
    pub fn requests(&self) -> Vec<String> {
        let out = curl(&["-sf", &format!("{}/fake/requests", self.url)]);
        out.lines().map(str::to_string).collect()
    }
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Calls a Secrets Manager action on the shared moto (JSON protocol); returns the JSON answer.
pub fn secretsmanager(action: &str, body: serde_json::Value) -> serde_json::Value {
    secretsmanager_at(&world("MOTO"), action, body)
}

fn secretsmanager_at(url: &str, action: &str, body: serde_json::Value) -> serde_json::Value {
    let out = curl(&[
        "-sS",
        "-X",
        "POST",
        "-H",
        &format!("X-Amz-Target: secretsmanager.{action}"),
        "-H",
        "Content-Type: application/x-amz-json-1.1",
        "-H",
        "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/secretsmanager/aws4_request, SignedHeaders=host, Signature=0",
        "--data-binary",
        &body.to_string(),
        &format!("{url}/"),
    ]);
    serde_json::from_str(&out).unwrap_or_else(|_| panic!("moto {action} answered {out}"))
}

/// Calls a Query-protocol action (EC2, IAM) on moto at `url` with form `params`; returns the XML.
fn query_at(url: &str, service: &str, params: &[(&str, &str)]) -> String {
    let mut args = vec![
        "-sS".to_string(),
        "-X".into(),
        "POST".into(),
        "-H".into(),
        format!(
            "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{service}/\
             aws4_request, SignedHeaders=host, Signature=0"
        ),
    ];
    for (key, value) in params {
        args.extend(["--data-urlencode".into(), format!("{key}={value}")]);
    }
    args.push(format!("{url}/"));
    curl(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Tags `instance_id` in the shared moto's EC2, as the launch template would.
pub fn ec2_create_tags(instance_id: &str, tags: &[(&str, &str)]) {
    ec2_create_tags_at(&world("MOTO"), instance_id, tags);
}

fn ec2_create_tags_at(url: &str, instance_id: &str, tags: &[(&str, &str)]) {
    let mut params = vec![
        ("Action".to_string(), "CreateTags".to_string()),
        ("Version".into(), "2016-11-15".into()),
        ("ResourceId.1".into(), instance_id.into()),
    ];
    for (n, (key, value)) in tags.iter().enumerate() {
        params.push((format!("Tag.{}.Key", n + 1), key.to_string()));
        params.push((format!("Tag.{}.Value", n + 1), value.to_string()));
    }
    let params: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let answer = query_at(url, "ec2", &params);
    assert!(answer.contains("CreateTagsResponse"), "{answer}");
}

/// The text of the first `<name>` element in `xml`.
fn xml_text<'a>(xml: &'a str, name: &str) -> &'a str {
    let open = format!("<{name}>");
    let start = xml
        .find(&open)
        .unwrap_or_else(|| panic!("no {name} in {xml}"))
        + open.len();
    let end = xml[start..].find('<').unwrap() + start;
    &xml[start..end]
}

pub fn create_secret(name: &str, value: &str) -> String {
    let answer = secretsmanager(
        "CreateSecret",
        serde_json::json!({ "Name": name, "SecretString": value }),
    );
    answer["VersionId"]
        .as_str()
        .unwrap_or_else(|| panic!("CreateSecret {name}: {answer}"))
        .to_string()
}

pub fn put_secret_value(name: &str, value: &str) -> String {
    let answer = secretsmanager(
        "PutSecretValue",
        serde_json::json!({ "SecretId": name, "SecretString": value }),
    );
    answer["VersionId"]
        .as_str()
        .unwrap_or_else(|| panic!("PutSecretValue {name}: {answer}"))
        .to_string()
}

/// An AWS endpoint that answers every call with one error (tests/world/aws_error_endpoint.py).
pub struct AwsError {
    _process: Reaped,
    pub url: String,
}

impl AwsError {
    pub fn start(code: &str, status: u16, message: &str) -> AwsError {
        Self::start_with(code, status, message, &[])
    }

    /// The same error in the EC2 Query protocol's XML shape.
    pub fn start_ec2(code: &str, status: u16, message: &str) -> AwsError {
        Self::start_with(code, status, message, &["--ec2"])
    }

    /// Its Date header runs `offset_seconds` ahead of this machine's clock.
    pub fn start_skewed(code: &str, status: u16, message: &str, offset_seconds: i64) -> AwsError {
        let offset = offset_seconds.to_string();
        Self::start_with(code, status, message, &["--date-offset", &offset])
    }

    fn start_with(code: &str, status: u16, message: &str, extra: &[&str]) -> AwsError {
        let status = status.to_string();
        let args = [
            &["--code", code, "--status", &status, "--message", message][..],
            extra,
        ]
        .concat();
        let (child, url) = start_fake("AWS_ERROR", &args);
        AwsError {
            _process: Reaped(child),
            url,
        }
    }

    pub fn calls(&self) -> usize {
        curl(&["-sf", &format!("{}/fake/requests", self.url)])
            .trim()
            .parse()
            .unwrap()
    }
}

/// A private CA and one server certificate it issued, made with the openssl CLI.
pub struct TestCa {
    _dir: tempfile::TempDir,
    /// The CA's certificate: what a client must trust (SSL_CERT_FILE).
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TestCa {
    /// A CA and a certificate for the IP address `server_ip`.
    pub fn issue_for(server_ip: &str) -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &[
                    "req",
                    "-x509",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=bootagent test CA",
                ],
                &ec[..],
                &["-keyout", "ca.key", "-out", "ca.pem"],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req", "-subj", "/CN=git server"],
                &ec[..],
                &["-keyout", "server.key", "-out", "server.csr"],
            ]
            .concat(),
        );
        std::fs::write(
            path("server.ext"),
            format!(
                "subjectAltName=IP:{server_ip}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ]);
        TestCa {
            ca_cert: path("ca.pem"),
            server_cert: path("server.pem"),
            server_key: path("server.key"),
            _dir: dir,
        }
    }
}

/// Smart HTTP for the world's repositories behind Basic auth (tests/world/git_http_server.py).
pub struct GitHttp {
    _process: Reaped,
    pub url: String,
}

impl GitHttp {
    pub fn start(user: &str, password: &str) -> GitHttp {
        GitHttp::start_with(user, password, &[])
    }

    /// The same over HTTPS, with the certificate `tls` issued.
    pub fn start_tls(user: &str, password: &str, tls: &TestCa) -> GitHttp {
        let (cert, key) = (tls.server_cert.to_str(), tls.server_key.to_str());
        GitHttp::start_with(
            user,
            password,
            &["--tls-cert", cert.unwrap(), "--tls-key", key.unwrap()],
        )
    }

    /// Like [`GitHttp::start`], with the repository `old` renamed to `new`: requests under the
    /// old name are redirected (301) to the new one.
    pub fn start_moved(user: &str, password: &str, old: &str, new: &str) -> GitHttp {
        GitHttp::start_with(user, password, &["--moved", &format!("{old}={new}")])
    }

    fn start_with(user: &str, password: &str, extra: &[&str]) -> GitHttp {
        let root = world("GIT_ROOT");
        let args = [
            &["--root", &root, "--user", user, "--password", password][..],
            extra,
        ]
        .concat();
        let (child, url) = start_fake("GIT_HTTP", &args);
        GitHttp {
            _process: Reaped(child),
            url,
        }
    }

    pub fn repo_url(&self, name: &str) -> String {
        format!("{}/{name}.git", self.url)
    }
}

/// A git remote that answers a byte at a time and never finishes (tests/world/drip_server.py):
/// every read returns quickly, so only a deadline over the whole checkout ends it.
pub struct DripRemote {
    _process: Reaped,
    pub url: String,
}

impl DripRemote {
    /// Over git:// (`http = false`) or over HTTP.
    pub fn start(http: bool) -> DripRemote {
        let (child, url) = start_fake("DRIP", if http { &["--http"] } else { &[] });
        let base = url.replacen("tcp://", "git://", 1);
        DripRemote {
            _process: Reaped(child),
            url: format!("{base}/app.git"),
        }
    }
}

/// A loopback port whose connections complete (into the listen backlog) and are never
/// accepted or answered: a remote that hangs.
pub fn silent_listener() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap()
}

/// Runs doctor's git check against `imds`'s remote with `git.timeout = "1s"` in `instance`'s
/// config, and asserts that the transport's own deadline ended it (doctor's 5 s limit on a check
/// would say something else).
pub fn assert_gives_up_after_git_timeout(instance: &Instance, imds: &Imds) {
    let (_, git) = instance.doctor_check(imds, "git");
    assert_eq!(git["verdict"], "fail", "{git}");
    let detail = git["detail"].as_str().unwrap();
    assert!(
        detail.contains("the remote did not answer within 1s (git.timeout)"),
        "{detail}"
    );
}

/// A new ed25519 key pair in `dir`: the private key's path and the public key's line.
pub fn ssh_keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let private = dir.join(name);
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&private)
        .status()
        .unwrap();
    assert!(status.success(), "ssh-keygen failed");
    let public = std::fs::read_to_string(private.with_extension("pub")).unwrap();
    (private, public.trim().to_string())
}

/// `sshd` on a loopback port with its own host key, serving the world's repositories to the
/// authorized deploy keys (as root: the world has no git user, and the authorized_keys file is
/// the server's own, so no other key gets in).
pub struct GitSsh {
    dir: tempfile::TempDir,
    port: u16,
    host_key: String,
    process: Reaped,
}

impl GitSsh {
    pub fn start(authorized: &[&str]) -> GitSsh {
        let dir = tempfile::tempdir().unwrap();
        let keys: String = authorized
            .iter()
            .map(|key| format!("restrict {key}\n"))
            .collect();
        std::fs::write(dir.path().join("authorized_keys"), keys).unwrap();
        // sshd's privilege separation needs it; a host without a running sshd lacks it.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let host_key = GitSsh::configure(dir.path(), "host_key_1");
        // sshd cannot bind port 0 and tell which port it got: tests/world/inetd.py holds the
        // port and runs `sshd -i` per connection, reading the configuration anew each time.
        let mut inetd = Command::new(world("PYTHON"));
        inetd
            .arg(world("INETD"))
            .arg(world("SSHD"))
            .args(["-i", "-e", "-f"])
            .arg(dir.path().join("sshd_config"))
            .stderr(std::fs::File::create(dir.path().join("sshd.log")).unwrap());
        let (child, url) = start_listening(inetd);
        let port = url.rsplit(':').next().unwrap().parse().unwrap();
        GitSsh {
            dir,
            port,
            host_key,
            process: Reaped(child),
        }
    }

    /// Writes sshd's configuration with a new host key; returns the host key's public line.
    fn configure(dir: &Path, host_key_name: &str) -> String {
        let (host_key, public) = ssh_keygen(dir, host_key_name);
        std::fs::write(
            dir.join("sshd_config"),
            format!(
                "HostKey {host_key}\nAuthorizedKeysFile {dir}/authorized_keys\n\
                 StrictModes no\nUsePAM no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n",
                host_key = host_key.display(),
                dir = dir.display(),
            ),
        )
        .unwrap();
        public
    }

    /// The line a known_hosts file pins this server's host key with.
    pub fn known_hosts_line(&self) -> String {
        let mut fields = self.host_key.split_whitespace();
        let (kind, key) = (fields.next().unwrap(), fields.next().unwrap());
        format!("[127.0.0.1]:{} {kind} {key}\n", self.port)
    }

    pub fn repo_url(&self, name: &str) -> String {
        format!(
            "ssh://root@127.0.0.1:{}{}/{name}.git",
            self.port,
            world("GIT_ROOT")
        )
    }

    pub fn stop(&mut self) {
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
    }

    /// From the next connection on, the server on the same port has a new host key: what a
    /// client that pinned the old key must refuse.
    pub fn change_host_key(&mut self) {
        self.host_key = GitSsh::configure(self.dir.path(), "host_key_2");
    }
}

/// Every file under `dir` that contains `needle`.
pub fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            found.extend(files_containing(&path, needle));
        } else if std::fs::read(&path)
            .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
        {
            found.push(path);
        }
    }
    found
}

/// An HTTPS proxy (CONNECT tunnels only) that records where it was asked to connect
/// (tests/world/connect_proxy.py).
pub struct ConnectProxy {
    _process: Reaped,
    pub url: String,
}

impl ConnectProxy {
    pub fn start() -> ConnectProxy {
        let (child, url) = start_fake("PROXY", &[]);
        ConnectProxy {
            _process: Reaped(child),
            url,
        }
    }

    /// The `host:port` of every CONNECT so far.
    pub fn connects(&self) -> Vec<String> {
        let body = curl(&["-sSf", &format!("{}/fake/connects", self.url)]);
        serde_json::from_str(&body).unwrap()
    }
}

/// The Auto Scaling lifecycle fake (tests/world/autoscaling_fake.py).
pub struct AsgFake {
    _process: Reaped,
    pub url: String,
}

impl AsgFake {
    pub fn start() -> AsgFake {
        let (child, url) = start_fake("ASG_FAKE", &[]);
        AsgFake {
            _process: Reaped(child),
            url,
        }
    }

    /// A lifecycle action for this instance and hook becomes active, as at a launch.
    pub fn activate(&self, group: &str, hook: &str, instance: &str) {
        curl(&[
            "-sSf",
            "-X",
            "POST",
            "--data-binary",
            &serde_json::json!({"group": group, "hook": hook, "instance": instance}).to_string(),
            &format!("{}/fake/actions", self.url),
        ]);
    }

    /// The next `count` calls are answered with Throttling.
    pub fn throttle(&self, count: u32) {
        curl(&[
            "-sSf",
            "-X",
            "POST",
            "--data-binary",
            &serde_json::json!({ "count": count }).to_string(),
            &format!("{}/fake/throttle", self.url),
        ]);
    }

    /// The calls received so far: (Action, LifecycleActionResult if any).
    pub fn calls(&self) -> Vec<(String, Option<String>)> {
        let out = curl(&["-sSf", &format!("{}/fake/calls", self.url)]);
        let calls: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        calls
            .iter()
            .map(|c| {
                (
                    c["Action"].as_str().unwrap().to_string(),
                    c["LifecycleActionResult"].as_str().map(str::to_string),
                )
            })
            .collect()
    }
}

/// A moto of one test's own, for what would disturb the shared one (switching auth on).
pub struct Moto {
    _process: Reaped,
    pub url: String,
}

impl Moto {
    pub fn start_private() -> Moto {
        let mut command = Command::new(world("PYTHON"));
        command.arg(world("MOTO_SERVER")).stderr(Stdio::null());
        let (child, url) = start_listening(command);
        Moto {
            _process: Reaped(child),
            url,
        }
    }

    pub fn create_secret(&self, name: &str, value: &str) {
        let answer = secretsmanager_at(
            &self.url,
            "CreateSecret",
            serde_json::json!({ "Name": name, "SecretString": value }),
        );
        assert!(answer["VersionId"].is_string(), "{answer}");
    }

    /// An IAM user allowed `actions` (and nothing else); returns its access key id and secret.
    pub fn user_allowed(&self, name: &str, actions: &[&str]) -> (String, String) {
        let iam = |params: &[(&str, &str)]| {
            query_at(
                &self.url,
                "iam",
                &[&[("Version", "2010-05-08")][..], params].concat(),
            )
        };
        iam(&[("Action", "CreateUser"), ("UserName", name)]);
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{ "Effect": "Allow", "Action": actions, "Resource": "*" }],
        })
        .to_string();
        iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", name),
            ("PolicyName", "bootagent"),
            ("PolicyDocument", &policy),
        ]);
        let key = iam(&[("Action", "CreateAccessKey"), ("UserName", name)]);
        (
            xml_text(&key, "AccessKeyId").to_string(),
            xml_text(&key, "SecretAccessKey").to_string(),
        )
    }

    /// Tags `instance_id` in this moto's EC2.
    pub fn ec2_create_tags(&self, instance_id: &str, tags: &[(&str, &str)]) {
        ec2_create_tags_at(&self.url, instance_id, tags);
    }

    /// From now on moto checks signatures and IAM: the test credentials have no permissions.
    pub fn require_auth(&self) {
        curl(&[
            "-sSf",
            "-X",
            "POST",
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            "0",
            &format!("{}/moto-api/reset-auth", self.url),
        ]);
    }
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

/// A repository on the git daemon with `test`, `stage` and `prod` branches that differ.
pub struct SampleRepo {
    pub url: String,
    pub path: PathBuf,
    pub commits: BTreeMap<String, String>,
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

impl SampleRepo {
    /// Where the world's git daemon serves the repository of service `name`.
    pub fn url_of(name: &str) -> String {
        format!("{}/{name}.git", world("GIT_URL"))
    }

    /// The bare repository of service `name` on disk.
    pub fn path_of(name: &str) -> PathBuf {
        PathBuf::from(world("GIT_ROOT")).join(format!("{name}.git"))
    }

    pub fn create(name: &str) -> SampleRepo {
        let path = SampleRepo::path_of(name);
        git(
            Path::new("/"),
            &["init", "-q", "--bare", path.to_str().unwrap()],
        );
        let work = tempfile::tempdir().unwrap();
        git(work.path(), &["init", "-q", "-b", "test"]);
        std::fs::write(work.path().join("README"), "sample service\n").unwrap();
        git(work.path(), &["add", "."]);
        git(work.path(), &["commit", "-q", "-m", "base"]);
        let mut repo = SampleRepo {
            url: SampleRepo::url_of(name),
            path,
            commits: BTreeMap::new(),
        };
        for env in ["test", "stage", "prod"] {
            git(work.path(), &["checkout", "-q", "-B", env, "test"]);
            repo.commit_on(work.path(), env, &format!("{env} build 1\n"));
        }
        repo
    }

    /// A working clone of `branch`, to commit on and push from.
    fn clone_branch(&self, branch: &str) -> tempfile::TempDir {
        let work = tempfile::tempdir().unwrap();
        git(
            Path::new("/"),
            &[
                "clone",
                "-q",
                "-b",
                branch,
                self.path.to_str().unwrap(),
                work.path().to_str().unwrap(),
            ],
        );
        work
    }

    /// Commits a new VERSION on `branch` and pushes it; returns the commit id.
    pub fn push_version(&mut self, branch: &str, version: &str) -> String {
        let work = self.clone_branch(branch);
        self.commit_on(work.path(), branch, version)
    }

    /// Commits `count` files of about 4 KiB each (contents depend on `round`) on `branch`,
    /// for checkouts that take a while; returns the commit id.
    pub fn push_many_files(&mut self, branch: &str, count: usize, round: usize) -> String {
        let work = self.clone_branch(branch);
        let dir = work.path().join("data");
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..count {
            let line = format!("round {round} file {i}\n");
            std::fs::write(
                dir.join(format!("f{i:04}.txt")),
                line.repeat(4096 / line.len()),
            )
            .unwrap();
        }
        git(work.path(), &["add", "data"]);
        self.commit_on(work.path(), branch, &format!("{branch} round {round}\n"))
    }

    /// The tree of `commit` extracted by git itself, to compare releases with.
    pub fn extract(&self, commit: &str, into: &Path) {
        let archive = Command::new("git")
            .arg("--git-dir")
            .arg(&self.path)
            .args(["archive", "--format=tar", commit])
            .output()
            .unwrap();
        assert!(archive.status.success());
        std::fs::create_dir_all(into).unwrap();
        let mut tar = Command::new("tar")
            .arg("-x")
            .arg("-C")
            .arg(into)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        tar.stdin
            .take()
            .unwrap()
            .write_all(&archive.stdout)
            .unwrap();
        assert!(tar.wait().unwrap().success());
    }

    fn commit_on(&mut self, work: &Path, branch: &str, version: &str) -> String {
        std::fs::write(work.join("VERSION"), version).unwrap();
        git(work, &["add", "VERSION"]);
        git(work, &["commit", "-q", "-m", version.trim()]);
        git(
            work,
            &[
                "push",
                "-q",
                self.path.to_str().unwrap(),
                &format!("{branch}:{branch}"),
            ],
        );
        let commit = git(work, &["rev-parse", "HEAD"]);
        self.commits.insert(branch.to_string(), commit.clone());
        commit
    }
}

/// A service in `env` with a one-variable secret and a sample repo, and the IMDS of an instance
/// tagged for it: (name, repo, IMDS).
pub fn small_service(prefix: &str, env: &str) -> (String, SampleRepo, Imds) {
    let name = unique(prefix);
    let repo = SampleRepo::create(&name);
    create_secret(&format!("{name}_env_{env}"), r#"{"A": "1"}"#);
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
        let mut command = match prefix.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(BIN);
                command
            }
            None => Command::new(BIN),
        };
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
