//! Git servers: the world's git daemon with sample repositories, git over HTTP(S) with a test CA,
//! a remote that drips, and a CONNECT proxy.

use crate::*;

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

    /// Like [`GitHttp::start`], each request answered `delay` late: a remote that is slow but
    /// answers.
    pub fn start_slow(user: &str, password: &str, delay: std::time::Duration) -> GitHttp {
        let seconds = delay.as_secs_f64().to_string();
        GitHttp::start_with(user, password, &["--delay", &seconds])
    }

    /// Like [`GitHttp::start`], answering its first `count` requests 429 Too Many Requests, with
    /// `Retry-After: SECONDS` when `retry_after` names them.
    pub fn start_throttled(
        user: &str,
        password: &str,
        count: u32,
        retry_after: Option<u64>,
    ) -> GitHttp {
        let throttle = match retry_after {
            Some(seconds) => format!("{count}:{seconds}"),
            None => count.to_string(),
        };
        GitHttp::start_with(user, password, &["--throttle", &throttle])
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

    /// The requests it answered so far, in order.
    pub fn requests(&self) -> Vec<GitHttpRequest> {
        let body = curl(&["-sSfk", &format!("{}/fake/requests", self.url)]);
        let requests: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        let text = |request: &serde_json::Value, key: &str| request[key].as_str().unwrap().into();
        (requests.iter())
            .map(|request| GitHttpRequest {
                method: text(request, "method"),
                path: text(request, "path"),
                status: request["status"].as_u64().unwrap() as u16,
                authorization: request["authorization"].as_u64().unwrap() as usize,
                authorized: request["authorized"].as_bool().unwrap(),
                at: request["at"].as_f64().unwrap(),
            })
            .collect()
    }
}

/// One request the smart HTTP server answered, as it recorded it (no credential).
#[derive(Debug)]
pub struct GitHttpRequest {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// How many Authorization headers it carried.
    pub authorization: usize,
    /// Whether it carried exactly the right one.
    pub authorized: bool,
    /// Seconds since the server started.
    pub at: f64,
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

    /// Commits a new VERSION on `branch` under the `git -c` settings `settings` (the signing
    /// ones of [`SshSigner`] or [`GpgSigner`]) and pushes it; returns the commit id.
    pub fn push_with(&mut self, branch: &str, version: &str, settings: &[String]) -> String {
        let work = self.clone_branch(branch);
        std::fs::write(work.path().join("VERSION"), version).unwrap();
        git(work.path(), &["add", "VERSION"]);
        let mut commit: Vec<&str> = settings.iter().flat_map(|s| ["-c", s.as_str()]).collect();
        commit.extend(["commit", "-q", "-m", version]);
        git(work.path(), &commit);
        self.push_head(work.path(), branch)
    }

    /// An annotated tag `name` at `branch`'s head, made under the `git -c` settings `settings`
    /// (with `tag.gpgSign=true` among them it is signed), pushed; a tag of that name moves.
    pub fn push_tag(&self, branch: &str, name: &str, settings: &[String]) {
        let work = self.clone_branch(branch);
        let mut tag: Vec<&str> = settings.iter().flat_map(|s| ["-c", s.as_str()]).collect();
        tag.extend(["tag", "-f", "-a", "-m", name, name]);
        git(work.path(), &tag);
        let path = self.path.to_str().unwrap();
        git(
            work.path(),
            &["push", "-q", path, &format!("+refs/tags/{name}")],
        );
    }

    /// A lightweight tag `name` at `branch`'s head, pushed.
    pub fn push_lightweight_tag(&self, branch: &str, name: &str) {
        let work = self.clone_branch(branch);
        git(work.path(), &["tag", name]);
        let path = self.path.to_str().unwrap();
        git(
            work.path(),
            &["push", "-q", path, &format!("refs/tags/{name}")],
        );
    }

    /// The object `revision` names on the server (`test^`, `refs/tags/rel-1`: for an annotated
    /// tag, its tag object).
    pub fn rev_parse(&self, revision: &str) -> String {
        self.served(&["rev-parse", revision])
    }

    /// Publishes the object `object` (a tag object) as `refs/tags/{name}`, whatever name the
    /// object itself carries.
    pub fn publish_tag_as(&self, object: &str, name: &str) {
        self.served(&["update-ref", &format!("refs/tags/{name}"), object]);
    }

    /// Makes the server a liar: it keeps the real tag object under `refs/tags/{tag}` but
    /// advertises `refs/tags/{tag}^{}` as `forged`. `git upload-pack` advertises the peeled values
    /// recorded in `packed-refs` when its header says they are fully peeled, so the refs are
    /// packed and the tag's `^` line rewritten. What the daemon then advertises is checked with
    /// `git ls-remote` over both protocol versions, so a forgery that did not take fails here.
    pub fn forge_peeled_tag(&self, tag: &str, forged: &str) {
        self.served(&["pack-refs", "--all"]);
        let packed = self.path.join("packed-refs");
        let text = std::fs::read_to_string(&packed).unwrap();
        let name = format!("refs/tags/{tag}");
        let mut lines: Vec<String> = Vec::new();
        let mut after_tag = false;
        for line in text.lines() {
            if line.starts_with('#') {
                lines.push("# pack-refs with: peeled fully-peeled sorted ".into());
            } else if after_tag && line.starts_with('^') {
                lines.push(format!("^{forged}"));
            } else {
                lines.push(line.to_string());
            }
            after_tag = line.ends_with(&format!(" {name}"));
        }
        assert!(
            lines.contains(&format!("^{forged}")),
            "{name} is no annotated tag in {text}"
        );
        std::fs::write(&packed, lines.join("\n") + "\n").unwrap();
        for version in ["0", "2"] {
            let listed = git(
                Path::new("/"),
                &[
                    "-c",
                    &format!("protocol.version={version}"),
                    "ls-remote",
                    &self.url,
                ],
            );
            assert!(
                listed.contains(&format!("{forged}\t{name}^{{}}")),
                "the daemon does not advertise the forged peel (protocol {version}): {listed}"
            );
        }
    }

    /// Moves `branch` to a commit made by hand from the signed commit `signed` — its parents,
    /// author, message and signature — with the tree of `tree_of` put in: a signature carried
    /// over onto other code, as a hostile host, or a man in the middle on git://, can send it.
    /// Returns the new commit.
    pub fn graft_signature(&mut self, branch: &str, signed: &str, tree_of: &str) -> String {
        let raw = self.served(&["cat-file", "commit", signed]);
        let tree = self.served(&["rev-parse", &format!("{tree_of}^{{tree}}")]);
        let (first, rest) = raw.split_once('\n').unwrap();
        assert!(first.starts_with("tree "), "{raw}");
        assert!(rest.contains("\ngpgsig "), "{signed} is not signed: {raw}");
        let object = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(object.path(), format!("tree {tree}\n{rest}\n")).unwrap();
        let path = object.path().to_str().unwrap();
        let grafted = self.served(&["hash-object", "-t", "commit", "-w", path]);
        self.force_push(branch, &grafted);
        grafted
    }

    /// Runs git in the served bare repository.
    fn served(&self, args: &[&str]) -> String {
        let path = self.path.to_str().unwrap();
        git(Path::new("/"), &[&["--git-dir", path][..], args].concat())
    }

    /// Moves `branch` to `commit`, as a force push does.
    pub fn force_push(&mut self, branch: &str, commit: &str) {
        let path = self.path.to_str().unwrap();
        git(
            Path::new("/"),
            &[
                "--git-dir",
                path,
                "update-ref",
                &format!("refs/heads/{branch}"),
                commit,
            ],
        );
        self.commits.insert(branch.to_string(), commit.to_string());
    }

    fn push_head(&mut self, work: &Path, branch: &str) -> String {
        let path = self.path.to_str().unwrap().to_string();
        git(work, &["push", "-q", &path, &format!("{branch}:{branch}")]);
        let commit = git(work, &["rev-parse", "HEAD"]);
        self.commits.insert(branch.to_string(), commit.clone());
        commit
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

    /// Commits `count` files of 4 KiB of pseudo-random bytes (which no compression shrinks) on
    /// `branch`: a repository whose transfer size is what its files weigh. Returns the commit.
    pub fn push_incompressible_files(&mut self, branch: &str, count: usize, seed: u64) -> String {
        let work = self.clone_branch(branch);
        let dir = work.path().join("assets");
        std::fs::create_dir_all(&dir).unwrap();
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        for i in 0..count {
            let bytes: Vec<u8> = (0..4096)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            std::fs::write(dir.join(format!("a{i:04}.bin")), bytes).unwrap();
        }
        git(work.path(), &["add", "assets"]);
        self.commit_on(work.path(), branch, &format!("{branch} assets {seed}\n"))
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
        self.push_head(work, branch)
    }
}

/// An SSH signing key, and the allowed-signers line that trusts it.
pub struct SshSigner {
    key: PathBuf,
    pub allowed: String,
}

impl SshSigner {
    pub fn new(dir: &Path, name: &str) -> SshSigner {
        let (key, public) = crate::ssh_keygen(dir, name);
        SshSigner {
            key,
            allowed: format!("{name}@example.com {public}"),
        }
    }

    /// The `git -c` settings that sign commits and tags with this key.
    pub fn settings(&self) -> Vec<String> {
        vec![
            "gpg.format=ssh".into(),
            format!("user.signingkey={}", self.key.display()),
            "commit.gpgSign=true".into(),
            "tag.gpgSign=true".into(),
        ]
    }

    /// [`SshSigner::settings`] with the signature made in `namespace` instead of git's own
    /// (`git`), as a signature this key made for another purpose (`-n file`) would be: git signs
    /// with `ssh-keygen -Y sign -n git … FILE` through `gpg.ssh.program`, a wrapper here that
    /// replaces the namespace and then checks that the signature is valid in `namespace`, so a
    /// forgery that did not take fails the commit.
    pub fn settings_in_namespace(&self, namespace: &str) -> Vec<String> {
        let wrapper = self.key.with_extension(format!("sign-{namespace}"));
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\n\
                 for arg; do shift; [ \"$previous\" = -n ] && arg={namespace}; previous=$arg; \
                 set -- \"$@\" \"$arg\"; done\n\
                 ssh-keygen \"$@\" || exit\n\
                 eval \"signed=\\${{$#}}\"\n\
                 ssh-keygen -Y check-novalidate -n {namespace} -s \"$signed.sig\" < \"$signed\"\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut settings = self.settings();
        settings.push(format!("gpg.ssh.program={}", wrapper.display()));
        settings
    }
}

/// `dir/allowed_signers`, trusting `signers`.
pub fn allowed_signers(dir: &Path, signers: &[&SshSigner]) -> PathBuf {
    let path = dir.join("allowed_signers");
    let lines: Vec<&str> = signers.iter().map(|s| s.allowed.as_str()).collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// A directory with one SSH signer, "deploy", and the allowed-signers file that trusts it.
pub fn one_trusted_signer() -> (tempfile::TempDir, SshSigner, PathBuf) {
    let keys = tempfile::tempdir().unwrap();
    let trusted = SshSigner::new(keys.path(), "deploy");
    let allowed = allowed_signers(keys.path(), &[&trusted]);
    (keys, trusted, allowed)
}

/// The [git] keys of a tag-mode instance that follows the tag `tag`, trusting `allowed`.
pub fn tag_trust(tag: &str, allowed: &Path) -> String {
    format!(
        "ref = \"{tag}\"\nverify = \"ssh\"\nsigned = \"tag\"\nallowed_signers = \"{}\"\n",
        allowed.display()
    )
}

/// An OpenPGP signing key in a GnuPG home of its own (its agent stopped when dropped), and its
/// public key exported as a keyring gpgv reads.
pub struct GpgSigner {
    home: tempfile::TempDir,
    pub fingerprint: String,
    pub keyring: PathBuf,
}

/// When [`GpgSigner::expired`] makes and uses its key: a day before the key's expiry.
const EXPIRED_KEY_TIME: &str = "20200101T000000";
const EXPIRED_SIGNING_TIME: &str = "20200101T010000";

impl GpgSigner {
    pub fn new(name: &str) -> GpgSigner {
        GpgSigner::make(name, None, "never")
    }

    /// A key that expired on 2020-01-02 (made the day before, valid for one day); its
    /// signatures are dated while it was valid, as a key's owner makes them before it expires.
    pub fn expired(name: &str) -> GpgSigner {
        let signer = GpgSigner::make(name, Some(EXPIRED_SIGNING_TIME), "1d");
        assert!(
            signer.listing().contains(":e:"),
            "the key did not expire: {}",
            signer.listing()
        );
        signer
    }

    /// Revokes the key with the revocation certificate gpg wrote when it made it, and exports
    /// the keyring again: the revocation goes with the key.
    pub fn revoke(&self) {
        let certificate = self
            .home
            .path()
            .join("openpgp-revocs.d")
            .join(format!("{}.rev", self.fingerprint));
        // gpg guards the certificate's armour line with a ':' so that it is not imported by
        // accident.
        let text = std::fs::read_to_string(&certificate).unwrap().replace(
            ":-----BEGIN PGP PUBLIC KEY BLOCK-----",
            "-----BEGIN PGP PUBLIC KEY BLOCK-----",
        );
        let armoured = self.home.path().join("revocation.asc");
        std::fs::write(&armoured, text).unwrap();
        self.gpg(&["--import", armoured.to_str().unwrap()]);
        assert!(
            self.listing().contains("\npub:r:"),
            "the key is not revoked: {}",
            self.listing()
        );
        self.export();
    }

    /// The keyring armoured (`gpg --export --armor`), as gpgv does not read it.
    pub fn armoured_keyring(&self) -> Vec<u8> {
        self.gpg(&["--export", "--armor", &self.fingerprint])
    }

    fn make(name: &str, signing_time: Option<&str>, expire: &str) -> GpgSigner {
        let home = tempfile::Builder::new()
            .prefix("gpg")
            .tempdir_in("/tmp")
            .unwrap();
        let keyring = home.path().join("exported.gpg");
        let mut signer = GpgSigner {
            home,
            fingerprint: String::new(),
            keyring,
        };
        let made_at: Vec<&str> = match signing_time {
            Some(_) => vec!["--faked-system-time", EXPIRED_KEY_TIME],
            None => vec![],
        };
        signer.gpg(
            &[
                &made_at[..],
                &[
                    "--passphrase",
                    "",
                    "--quick-gen-key",
                    &format!("{name} <{name}@example.com>"),
                    "ed25519",
                    "sign",
                    expire,
                ],
            ]
            .concat(),
        );
        signer.fingerprint = signer
            .listing()
            .lines()
            .find_map(|line| line.strip_prefix("fpr:"))
            .and_then(|rest| rest.split(':').find(|field| !field.is_empty()))
            .unwrap()
            .to_string();
        signer.export();
        let signs_at = signing_time
            .map(|at| format!(" --faked-system-time {at}"))
            .unwrap_or_default();
        let wrapper = signer.home.path().join("gpg-for-git");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec gpg --homedir {}{signs_at} \"$@\"\n",
                signer.home.path().display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        signer
    }

    fn gpg(&self, args: &[&str]) -> Vec<u8> {
        let out = Command::new("gpg")
            .arg("--homedir")
            .arg(self.home.path())
            .args(["--batch", "--quiet"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn listing(&self) -> String {
        String::from_utf8(self.gpg(&["--with-colons", "--list-keys"])).unwrap()
    }

    fn export(&self) {
        std::fs::write(&self.keyring, self.gpg(&["--export", &self.fingerprint])).unwrap();
    }

    /// The `git -c` settings that sign commits and tags with this key.
    pub fn settings(&self) -> Vec<String> {
        vec![
            format!(
                "gpg.program={}",
                self.home.path().join("gpg-for-git").display()
            ),
            format!("user.signingkey={}", self.fingerprint),
            "commit.gpgSign=true".into(),
            "tag.gpgSign=true".into(),
        ]
    }
}

impl Drop for GpgSigner {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(self.home.path())
            .args(["--kill", "gpg-agent"])
            .status();
    }
}
