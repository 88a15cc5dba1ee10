//! The security matrix: every way to get code or secrets past bootagent that this suite knows,
//! each tried as the attacker would — against the real binary, with real counterparts: the git
//! daemon serving repositories the attacker tampered with (the hostile server), real
//! `ssh-keygen` and `gpg` keys (expired, revoked, unknown, signing in another namespace), IMDS
//! tags an attacker set, and state files edited on the instance's disk. Writes
//! docs/security-matrix.md (generated: edit this file, not that one), then fails if any row
//! differs from its expectation.
//!
//! A row checks the exit code, the outcome status.json records, which commit runs afterwards
//! (the one in service before the attack, nothing on a first boot, or the commit the signed tag
//! object names — never the attacker's, except where a row says the attack is out of scope),
//! what the message says, the `security_event` logged, and that the canary planted in the
//! instance's secret is in no output and in no file the run wrote outside the env file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use support::container::{Container, QUICK_GATE};
use support::matrix;
use support::*;

/// Which commit runs after the attack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Runs {
    /// The release in service before the attack.
    Earlier,
    /// Nothing: a first boot deployed nothing.
    Nothing,
    /// The commit the signed tag object itself names.
    Tagged,
    /// The attacker's commit: only where the row says the attack is out of scope.
    Attackers,
}

impl Runs {
    fn words(self) -> &'static str {
        match self {
            Runs::Earlier => "the earlier commit runs",
            Runs::Nothing => "nothing runs",
            Runs::Tagged => "the tag object's commit runs",
            Runs::Attackers => "the attacker's commit runs",
        }
    }
}

struct Expect {
    code: i32,
    /// As status.json records it.
    outcome: &'static str,
    runs: Runs,
    /// What the message must say.
    says: &'static [&'static str],
    /// The `security_event` field the run logs, where it logs one.
    event: Option<&'static str>,
    /// Why an attack this row lets through is not bootagent's to stop (docs/security.md).
    out_of_scope: Option<&'static str>,
}

/// What an attack left, read from wherever it ran (an exec-mode instance, or a container).
struct Attempt {
    run: Run,
    /// The commit the release link names afterwards.
    running: Option<String>,
    outcome: String,
    /// The release in service before the attack; `None` on a first boot.
    earlier: Option<String>,
    /// The commit the signed tag object names, in the rows about tags.
    tagged: Option<String>,
    /// The commit the attacker wants to run, if the attack is about one.
    hostile: Option<String>,
    /// Where the canary was found: files, the journal, status.
    leaks: Vec<String>,
    /// What else the row found wrong (a state file reset, say).
    problems: Vec<String>,
}

struct Attack {
    attack: &'static str,
    who: &'static str,
    strike: fn() -> Attempt,
    expect: Expect,
}

/// A row as docs/security-matrix.md prints it, and what did not match.
struct Row {
    attack: &'static str,
    who: &'static str,
    expected: String,
    observed: String,
    problems: Vec<String>,
}

/// An exec-mode instance of a service in `test` whose secret holds a canary; `git` is the body
/// of its [git] section.
struct Target {
    name: String,
    repo: SampleRepo,
    imds: Imds,
    canary: String,
    instance: Instance,
}

impl Target {
    fn new(prefix: &str, git: &str) -> Target {
        let canary = canary();
        let secret = serde_json::json!({ "A": "1", "TOKEN": canary }).to_string();
        let (name, repo, imds) = service_with_secret(prefix, "test", &secret);
        let instance = Instance::exec_mode(&format!("[git]\n{git}"));
        Target {
            name,
            repo,
            imds,
            canary,
            instance,
        }
    }

    fn boot(&self) -> Run {
        self.boot_as(&self.imds)
    }

    /// A boot that reads its tags from `imds`.
    fn boot_as(&self, imds: &Imds) -> Run {
        self.instance.run(imds, &["boot"])
    }

    /// A commit on `test` made with the `git -c` settings `sign`, deployed by a first boot; the
    /// commit.
    fn boot_signed(&mut self, sign: &[String]) -> String {
        self.repo.push_with("test", "signed build", sign);
        self.booted()
    }

    /// A first boot that must deploy; the commit it deployed.
    fn booted(&self) -> String {
        self.boot().expect(0);
        self.instance.running_commit(&self.name)
    }

    fn attempt(&self, run: Run, earlier: Option<String>, hostile: Option<String>) -> Attempt {
        let running = std::fs::read_link(self.instance.checkout(&self.name))
            .ok()
            .and_then(|link| Some(link.file_name()?.to_string_lossy().into_owned()));
        let status = self.instance.status_text();
        let outcome = serde_json::from_str::<serde_json::Value>(&status)
            .map(|status| status["outcome"].as_str().unwrap_or("?").to_string())
            .unwrap_or_else(|_| "no status".to_string());
        let mut leaks: Vec<String> = (self.instance)
            .files_holding(&self.canary, &self.name)
            .into_iter()
            .map(|path| path.display().to_string())
            .collect();
        if run.stdout().contains(&self.canary) || run.stderr().contains(&self.canary) {
            leaks.push("the run's output".into());
        }
        Attempt {
            run,
            running,
            outcome,
            earlier,
            tagged: None,
            hostile,
            leaks,
            problems: Vec::new(),
        }
    }

    /// The deploy record of this instance.
    fn record(&self) -> PathBuf {
        self.instance.root.path().join("state").join("deploys.json")
    }
}

const FAIL: &str = "on_failure = \"fail\"\n";

/// The [git] keys that trust the SSH keys in `allowed` (the URL is the tags').
fn ssh_trust(allowed: &Path, _url: &str) -> String {
    format!(
        "verify = \"ssh\"\nallowed_signers = \"{}\"\n",
        allowed.display()
    )
}

fn ssh_commit_trust(allowed: &Path) -> String {
    format!("{}{FAIL}", ssh_trust(allowed, ""))
}

/// A commit signed by the trusted key runs; then the attacker pushes one made with the `git -c`
/// settings `sign` gives (from the trusted signer and a stranger), and the instance boots.
fn ssh_commit(sign: fn(&SshSigner, &SshSigner) -> Vec<String>) -> Attempt {
    let keys = tempfile::tempdir().unwrap();
    let trusted = SshSigner::new(keys.path(), "deploy");
    let stranger = SshSigner::new(keys.path(), "stranger");
    let allowed = allowed_signers(keys.path(), &[&trusted]);
    let mut target = Target::new("sssh", &ssh_commit_trust(&allowed));
    let earlier = target.boot_signed(&trusted.settings());
    let hostile = target
        .repo
        .push_with("test", "hostile build", &sign(&trusted, &stranger));
    let run = target.boot();
    target.attempt(run, Some(earlier), Some(hostile))
}

/// How the attacker's OpenPGP key stands in the instance's keyring.
#[derive(Clone, Copy)]
enum GpgKey {
    Expired,
    Revoked,
    Unknown,
}

/// A commit signed by the trusted key runs; then the attacker pushes one signed by `key`.
fn gpg_commit(key: GpgKey) -> Attempt {
    let good = GpgSigner::new("deploy");
    let hostile_key = match key {
        GpgKey::Expired => GpgSigner::expired("old"),
        GpgKey::Revoked => GpgSigner::new("leaver"),
        GpgKey::Unknown => GpgSigner::new("stranger"),
    };
    let keys = tempfile::tempdir().unwrap();
    let keyring = keys.path().join("trusted.gpg");
    std::fs::copy(&good.keyring, &keyring).unwrap();
    let mut target = Target::new(
        "sgpg",
        &format!(
            "verify = \"gpg\"\ngpg_keyring = \"{}\"\n{FAIL}",
            keyring.display()
        ),
    );
    let earlier = target.boot_signed(&good.settings());
    let hostile = target
        .repo
        .push_with("test", "hostile build", &hostile_key.settings());
    if let GpgKey::Revoked = key {
        hostile_key.revoke();
    }
    // The expired and the revoked key are in the keyring, as keys once trusted are: it is their
    // state that refuses them.
    if !matches!(key, GpgKey::Unknown) {
        let trusted: Vec<u8> = [&good.keyring, &hostile_key.keyring]
            .iter()
            .flat_map(|ring| std::fs::read(ring).unwrap())
            .collect();
        std::fs::write(&keyring, trusted).unwrap();
    }
    let run = target.boot();
    target.attempt(run, Some(earlier), Some(hostile))
}

/// An instance that trusts one SSH signer (with `git` added to its [git] keys, and failing its
/// boot on a refusal), running a commit that signer signed: the signer's directory, the signer,
/// the instance and the commit.
fn running_signed(prefix: &str, git: &str) -> (tempfile::TempDir, SshSigner, Target, String) {
    let (keys, trusted, allowed) = one_trusted_signer();
    let mut target = Target::new(prefix, &format!("{}{git}", ssh_commit_trust(&allowed)));
    let earlier = target.boot_signed(&trusted.settings());
    (keys, trusted, target, earlier)
}

fn grafted_signature() -> Attempt {
    let (_keys, trusted, mut target, earlier) = running_signed("sgraft", "");
    let signed = target
        .repo
        .push_with("test", "signed build 2", &trusted.settings());
    let hostile_code = target.repo.push_version("test", "hostile build");
    let hostile = target.repo.graft_signature("test", &signed, &hostile_code);
    let run = target.boot();
    target.attempt(run, Some(earlier), Some(hostile))
}

/// A commit the trusted key signed for another branch (`stage`), published as the branch the
/// instance follows (`test`).
fn signed_elsewhere() -> Attempt {
    let (_keys, trusted, mut target, earlier) = running_signed("soth", "");
    let elsewhere = target
        .repo
        .push_with("stage", "signed stage build", &trusted.settings());
    target.repo.force_push("test", &elsewhere);
    let run = target.boot();
    target.attempt(run, Some(earlier), Some(elsewhere))
}

fn forged_peel() -> Attempt {
    let (_keys, trusted, allowed) = one_trusted_signer();
    let target = Target::new(
        "speel",
        &format!(
            "{}allow_rewind = false\n{FAIL}",
            tag_trust("rel-1", &allowed)
        ),
    );
    // The server keeps the real signed tag but lists its peeled value as the unsigned commit
    // before it, which the whole-history fetch (allow_rewind = false) brings along.
    target.repo.push_tag("test", "rel-1", &trusted.settings());
    let tagged = target.repo.commits["test"].clone();
    let unsigned = target.repo.rev_parse("test^");
    target.repo.forge_peeled_tag("rel-1", &unsigned);
    let run = target.boot();
    Attempt {
        tagged: Some(tagged),
        ..target.attempt(run, None, Some(unsigned))
    }
}

fn renamed_tag() -> Attempt {
    let (_keys, trusted, allowed) = one_trusted_signer();
    let mut target = Target::new(
        "stren",
        &format!("{}{FAIL}", tag_trust("t-current", &allowed)),
    );
    target.repo.push_tag("test", "t-old", &trusted.settings());
    let old = target.repo.commits["test"].clone();
    target.repo.push_version("test", "test build 2");
    target
        .repo
        .push_tag("test", "t-current", &trusted.settings());
    let earlier = target.booted();
    // The old signed release, replayed under the name the instance follows: a downgrade.
    let old_tag = target.repo.rev_parse("refs/tags/t-old");
    target.repo.publish_tag_as(&old_tag, "t-current");
    let run = target.boot();
    target.attempt(run, Some(earlier), Some(old))
}

fn lightweight_tag() -> Attempt {
    let (_keys, trusted, allowed) = one_trusted_signer();
    let mut target = Target::new("slight", &format!("{}{FAIL}", tag_trust("rel", &allowed)));
    target.repo.push_tag("test", "rel", &trusted.settings());
    let earlier = target.booted();
    let hostile = target.repo.push_version("test", "hostile build");
    target.repo.publish_tag_as(&hostile, "rel");
    let run = target.boot();
    target.attempt(run, Some(earlier), Some(hostile))
}

fn rewind() -> Attempt {
    let (_keys, trusted, mut target, older) = running_signed("srew", "allow_rewind = false\n");
    target
        .repo
        .push_with("test", "signed build 2", &trusted.settings());
    let earlier = target.booted();
    // Back to an older release its signer once signed: signatures alone let it through.
    target.repo.force_push("test", &older);
    let run = target.boot();
    target.attempt(run, Some(earlier), Some(older))
}

/// The attacker's own repository with one commit on `test`, made with the `git -c` settings
/// `sign`; its URL and the commit.
fn attackers_repository(sign: &[String]) -> (SampleRepo, String) {
    let mut theirs = SampleRepo::create(&unique("evil"));
    let commit = theirs.push_with("test", "the attacker's build", sign);
    (theirs, commit)
}

/// A signed commit runs (unless `first_boot`); then whoever can tag the instance points
/// `Repository` at a repository of their own, signed by their own key, and the instance boots
/// (with `git` as its [git] keys).
fn remote_swapped(first_boot: bool, git: fn(&Path, &str) -> String) -> Attempt {
    let keys = tempfile::tempdir().unwrap();
    let trusted = SshSigner::new(keys.path(), "deploy");
    let attacker = SshSigner::new(keys.path(), "attacker");
    let allowed = allowed_signers(keys.path(), &[&trusted]);
    let mut target = Target::new("sswap", "");
    let keys = git(&allowed, &target.repo.url);
    target
        .instance
        .add_config("60-git.toml", &format!("[git]\n{keys}"));
    target
        .repo
        .push_with("test", "signed build", &trusted.settings());
    let earlier = (!first_boot).then(|| target.booted());
    let (theirs, hostile) = attackers_repository(&attacker.settings());
    let retagged = Imds::for_service(&target.name, "test", &theirs.url);
    let run = target.boot_as(&retagged);
    target.attempt(run, earlier, Some(hostile))
}

/// An HTTP server of the attacker's that asks for credentials (401, Basic) on every request and
/// keeps what each request's head said.
struct CredentialCatcher {
    url: String,
    heads: Arc<Mutex<Vec<u8>>>,
}

impl CredentialCatcher {
    fn start() -> CredentialCatcher {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/theirs.git", listener.local_addr().unwrap());
        let heads = Arc::new(Mutex::new(Vec::new()));
        let kept = heads.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let mut reader = std::io::BufReader::new(&client);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    kept.lock().unwrap().extend(line.as_bytes());
                    line.clear();
                }
                let _ = (&client).write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\n\
                      Content-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        CredentialCatcher { url, heads }
    }

    /// Whether a request carried `secret`, as it is or as HTTP Basic sends it with `user`.
    fn received(&self, user: &str, secret: &str) -> bool {
        let encoded = std::process::Command::new("base64")
            .arg("-w0")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut base64| {
                use std::io::Write;
                base64
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(format!("{user}:{secret}").as_bytes())?;
                base64.wait_with_output()
            })
            .unwrap();
        let heads = String::from_utf8_lossy(&self.heads.lock().unwrap()).into_owned();
        heads.contains(secret) || heads.contains(&*String::from_utf8_lossy(&encoded.stdout))
    }
}

/// The deploy token (the canary, in the instance's secret) serves the trusted remote; then
/// whoever can tag the instance points `Repository` at a server of their own, and it boots.
fn token_sent_elsewhere() -> Attempt {
    // The config lists the trusted host; the tag points at another scheme and port of it.
    let target = Target::new(
        "stoken",
        "token = \"secret:TOKEN\"\ntoken_hosts = [\"127.0.0.1\"]\n",
    );
    let earlier = target.booted();
    let catcher = CredentialCatcher::start();
    let retagged = Imds::for_service(&target.name, "test", &catcher.url);
    let run = target.boot_as(&retagged);
    let mut attempt = target.attempt(run, Some(earlier), None);
    if catcher.received("git", &target.canary) {
        attempt.leaks.push(format!(
            "the requests the attacker's server {} received (the deploy token)",
            catcher.url
        ));
    }
    attempt
}

/// A release runs, under the tags Service, Environment, Repository and Release (`test`); then
/// the instance boots with `tag` changed.
fn bad_tag(git: &str, tag: (&str, &str)) -> Attempt {
    let target = Target::new("stag", git);
    let mut tags = vec![
        ("Service", target.name.as_str()),
        ("Environment", "test"),
        ("Repository", target.repo.url.as_str()),
        ("Release", "test"),
    ];
    target.boot_as(&Imds::with_tags(&tags)).expect(0);
    let earlier = target.instance.running_commit(&target.name);
    tags.retain(|(key, _)| *key != tag.0);
    tags.push(tag);
    let run = target.boot_as(&Imds::with_tags(&tags));
    target.attempt(run, Some(earlier), None)
}

/// A release runs, a new commit is pushed, `tamper` damages the deploy record, and the instance
/// boots. The record must be left as the tampering left it, never reset.
fn damaged_record(tamper: fn(&Path)) -> Attempt {
    let mut target = Target::new("srec", "");
    let earlier = target.booted();
    let hostile = target.repo.push_version("test", "test build 2");
    let record = target.record();
    std::fs::create_dir_all(record.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&record);
    tamper(&record);
    let before = describe(&record);
    let run = target.boot();
    let mut attempt = target.attempt(run, Some(earlier), Some(hostile));
    let after = describe(&record);
    if after != before {
        attempt
            .problems
            .push(format!("the record was {before}, is now {after}"));
    }
    attempt
}

/// What is at `path`: its kind, and a regular file's bytes.
fn describe(path: &Path) -> String {
    match std::fs::symlink_metadata(path) {
        Err(e) => format!("absent ({e})"),
        Ok(meta) if meta.file_type().is_symlink() => {
            format!("a link to {:?}", std::fs::read_link(path).unwrap())
        }
        Ok(meta) if meta.is_file() => {
            format!(
                "{:?}",
                String::from_utf8_lossy(&std::fs::read(path).unwrap())
            )
        }
        Ok(meta) => format!("{:?}", meta.file_type()),
    }
}

fn attacks() -> Vec<Attack> {
    let refused = |says, event| Expect {
        code: 7,
        outcome: "failed",
        runs: Runs::Earlier,
        says,
        event,
        out_of_scope: None,
    };
    const SIGNATURE: Option<&str> = Some("code-signature-refused");
    const DISK: &str = "root on the instance, or whoever can write its disk";
    // An attack this row shows bootagent does not stop, and why that is not its to stop.
    let let_through = |why| Expect {
        code: 0,
        outcome: "succeeded",
        runs: Runs::Attackers,
        says: &[],
        event: None,
        out_of_scope: Some(why),
    };
    let record_kept = |says| Expect {
        code: 0,
        outcome: "degraded",
        runs: Runs::Earlier,
        says,
        event: None,
        out_of_scope: None,
    };
    vec![
        // What the git host (or a man in the middle on git:// or http://) can send.
        Attack {
            attack: "signed tag whose advertised peel (`rel-1^{}`) is forged to an unsigned \
                     ancestor (first boot)",
            who: "the git host; a man in the middle on git:// or http://",
            strike: forged_peel,
            expect: Expect {
                code: 0,
                outcome: "succeeded",
                runs: Runs::Tagged,
                says: &[
                    "listed refs/tags/rel-1^{} as commit",
                    "the listing was forged",
                ],
                event: Some("forged-peeled-ref"),
                out_of_scope: None,
            },
        },
        Attack {
            attack: "an older signed tag (`t-old`) republished as the tag the instance follows \
                     (`t-current`): a downgrade",
            who: "the git host; whoever can push tags",
            strike: renamed_tag,
            expect: refused(
                &[
                    "the signed tag object is named \"t-old\", but the remote publishes it as \
                   \"t-current\"",
                ],
                SIGNATURE,
            ),
        },
        Attack {
            attack: "the followed tag moved to a lightweight tag (no tag object, no signature), \
                     `signed = \"tag\"`",
            who: "the git host; whoever can push tags",
            strike: lightweight_tag,
            expect: refused(
                &["rel is not an annotated tag, so it carries no signature"],
                SIGNATURE,
            ),
        },
        Attack {
            attack: "an unsigned commit",
            who: "the git host; whoever can push",
            strike: || ssh_commit(|_, _| Vec::new()),
            expect: refused(&["it is not signed"], SIGNATURE),
        },
        Attack {
            attack: "a commit signed by an SSH key not in allowed_signers",
            who: "the git host; whoever can push",
            strike: || ssh_commit(|_, stranger| stranger.settings()),
            expect: refused(
                &["ED25519 key SHA256:", "which is not an allowed signer"],
                SIGNATURE,
            ),
        },
        Attack {
            attack: "a signed commit's signature carried over onto other code (the tree \
                     swapped)",
            who: "the git host; a man in the middle on git:// or http://",
            strike: grafted_signature,
            expect: refused(
                &["its signature is not valid", "incorrect signature"],
                SIGNATURE,
            ),
        },
        Attack {
            attack: "a commit the trusted key signed for another branch (`stage`) published as \
                     the followed branch (`test`)",
            who: "the git host; whoever can push",
            strike: signed_elsewhere,
            expect: let_through(
                "a commit's signature does not name its branch: `signed = \"tag\"` binds \
                     the name, `allow_rewind = false` refuses a commit off the line in service",
            ),
        },
        Attack {
            attack: "a commit signed by the trusted SSH key in another namespace (`ssh-keygen -Y \
                     sign -n file`, a signature made for another purpose)",
            who: "whoever obtains a file signature from the signer",
            strike: || ssh_commit(|trusted, _| trusted.settings_in_namespace("file")),
            expect: refused(
                &["its signature is not valid", "namespace does not match"],
                SIGNATURE,
            ),
        },
        Attack {
            attack: "a commit signed by a gpg key in the keyring that expired",
            who: "whoever holds an expired key",
            strike: || gpg_commit(GpgKey::Expired),
            expect: refused(&["which expired on 2020-01-02"], SIGNATURE),
        },
        Attack {
            attack: "a commit signed by a gpg key in the keyring that its owner revoked",
            who: "whoever holds a revoked (stolen, withdrawn) key",
            strike: || gpg_commit(GpgKey::Revoked),
            expect: refused(&["which is revoked"], SIGNATURE),
        },
        Attack {
            attack: "a commit signed by a gpg key not in the keyring",
            who: "the git host; whoever can push",
            strike: || gpg_commit(GpgKey::Unknown),
            expect: refused(&["which is not in the keyring"], SIGNATURE),
        },
        Attack {
            attack: "a force push back to an older commit the trusted key signed, \
                     `allow_rewind = false`",
            who: "the git host; whoever can force-push",
            strike: rewind,
            expect: refused(
                &["does not descend from", "git.allow_rewind = false"],
                Some("ref-rewound"),
            ),
        },
        // What whoever can tag the instance (ec2:CreateTags) can choose.
        Attack {
            attack: "`Repository` tag swapped to the attacker's repository, signed by the \
                     attacker's key (`git.on_failure = \"last-good\"`)",
            who: "whoever can set instance tags (ec2:CreateTags)",
            strike: || remote_swapped(false, ssh_trust),
            expect: Expect {
                code: 0,
                outcome: "degraded",
                runs: Runs::Earlier,
                says: &["which is not an allowed signer", "running last good commit"],
                event: SIGNATURE,
                out_of_scope: None,
            },
        },
        Attack {
            attack: "`Repository` tag of a new instance set to the attacker's repository, signed \
                     by the attacker's key (first boot)",
            who: "whoever can set instance tags (ec2:CreateTags), or launch instances",
            strike: || remote_swapped(true, ssh_trust),
            expect: Expect {
                code: 7,
                outcome: "failed",
                runs: Runs::Nothing,
                says: &["which is not an allowed signer"],
                event: SIGNATURE,
                out_of_scope: None,
            },
        },
        Attack {
            attack: "`Repository` tag swapped, `git.url` pinned in the config",
            who: "whoever can set instance tags (ec2:CreateTags)",
            strike: || remote_swapped(false, |_, url| format!("url = \"{url}\"\n")),
            expect: Expect {
                code: 0,
                outcome: "succeeded",
                runs: Runs::Earlier,
                says: &[],
                event: None,
                out_of_scope: None,
            },
        },
        Attack {
            attack: "`Repository` tag swapped, no `git.verify` and no pinned `git.url`",
            who: "whoever can set instance tags (ec2:CreateTags)",
            strike: || remote_swapped(false, |_, _| String::new()),
            expect: let_through(
                "without `git.verify` or a pinned `git.url`, the tags choose the code",
            ),
        },
        Attack {
            attack: "`Repository` tag pointed at the attacker's HTTP server, `git.token` set (a \
                     secret): the token must reach no server the config does not name",
            who: "whoever can set instance tags (ec2:CreateTags)",
            strike: token_sent_elsewhere,
            expect: Expect {
                code: 0,
                outcome: "degraded",
                runs: Runs::Earlier,
                says: &["running last good commit", "is not in git.token_hosts"],
                event: Some("token-host-refused"),
                out_of_scope: None,
            },
        },
        Attack {
            attack: "`Environment` tag `../../etc` (the git ref and paths climb out)",
            who: "whoever can set instance tags (ec2:CreateTags)",
            strike: || bad_tag("", ("Environment", "../../etc")),
            expect: Expect {
                code: 3,
                outcome: "failed",
                runs: Runs::Earlier,
                says: &["instance tag Environment=\"../../etc\" is not a valid name"],
                event: None,
                out_of_scope: None,
            },
        },
        Attack {
            attack: "`git.ref = \"{tag:Release}\"` and the tag `Release=../../etc`",
            who: "whoever can set instance tags (ec2:CreateTags)",
            strike: || bad_tag("ref = \"{tag:Release}\"\n", ("Release", "../../etc")),
            expect: Expect {
                code: 3,
                outcome: "failed",
                runs: Runs::Earlier,
                says: &["instance tag Release=\"../../etc\", used in a template"],
                event: None,
                out_of_scope: None,
            },
        },
        // The instance's disk: the record of what failed and what was proven healthy.
        Attack {
            attack: "deploys.json overwritten with garbage, a new commit on the ref",
            who: DISK,
            strike: || damaged_record(|record| std::fs::write(record, "garbage").unwrap()),
            expect: record_kept(&["deploy record", "is damaged", "deploys nothing new"]),
        },
        Attack {
            attack: "deploys.json emptied, a new commit on the ref",
            who: DISK,
            strike: || damaged_record(|record| std::fs::write(record, "").unwrap()),
            expect: record_kept(&["deploy record", "is damaged", "deploys nothing new"]),
        },
        Attack {
            attack: "deploys.json replaced by a FIFO (a read would block), a new commit on the ref",
            who: DISK,
            strike: || {
                damaged_record(|record| {
                    nix::unistd::mkfifo(record, nix::sys::stat::Mode::S_IRWXU).unwrap()
                })
            },
            expect: record_kept(&["deploy record", "not a regular file", "deploys nothing new"]),
        },
        Attack {
            attack: "deploys.json replaced by a link to another file (unreadable: links are not \
                     followed), a new commit on the ref",
            who: DISK,
            strike: || {
                damaged_record(|record| {
                    std::os::unix::fs::symlink("/etc/hostname", record).unwrap()
                })
            },
            expect: record_kept(&["deploy record", "cannot be read", "deploys nothing new"]),
        },
    ]
}

/// Runs `strike` and compares what it left with `expect`. A row whose setup fails (a panic)
/// is a mismatch that says so; the other rows still run.
fn judge(
    attack: &'static str,
    who: &'static str,
    expect: &Expect,
    strike: impl FnOnce() -> Attempt,
) -> Row {
    let attempt = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(strike)) {
        Ok(attempt) => attempt,
        Err(panic) => {
            let why = (panic.downcast_ref::<String>().cloned())
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let why = format!("the row's setup failed: {}", why.replace('\n', " "));
            return Row {
                attack,
                who,
                expected: String::new(),
                observed: why.clone(),
                problems: vec![why],
            };
        }
    };
    let code = attempt.run.code();
    let mut problems = attempt.problems;
    if code != expect.code {
        problems.push(format!("exit {code}"));
    }
    if attempt.outcome != expect.outcome {
        problems.push(format!("outcome {}", attempt.outcome));
    }
    let wanted = match expect.runs {
        Runs::Earlier => attempt.earlier.clone(),
        Runs::Nothing => None,
        Runs::Tagged => attempt.tagged.clone(),
        Runs::Attackers => attempt.hostile.clone(),
    };
    if attempt.running != wanted {
        let which = match &attempt.running {
            Some(commit) if attempt.hostile.as_ref() == Some(commit) => {
                format!("THE ATTACKER'S COMMIT {commit} RUNS")
            }
            Some(commit) if attempt.earlier.as_ref() == Some(commit) => {
                format!("the earlier commit {commit} runs")
            }
            Some(commit) => format!("commit {commit} runs"),
            None => "nothing runs".to_string(),
        };
        problems.push(which);
    }
    let said = format!("{}{}", attempt.run.stdout(), attempt.run.stderr());
    for needle in expect.says {
        if !said.contains(needle) {
            let tail = &said[said.len().saturating_sub(400)..];
            problems.push(format!("message lacks {needle:?} (it ends: {tail:?})"));
        }
    }
    if let Some(event) = expect.event {
        let field = format!("security_event=\"{event}\"");
        if !said.contains(&field) {
            problems.push(format!("no {field} logged"));
        }
    }
    if !attempt.leaks.is_empty() {
        problems.push(format!("the canary is in {}", attempt.leaks.join(", ")));
    }
    let mut expected = format!(
        "{}, {}; {}",
        expect.code,
        expect.outcome,
        expect.runs.words()
    );
    if !expect.says.is_empty() {
        let needles: Vec<String> = expect.says.iter().map(|s| format!("`{s}`")).collect();
        let _ = write!(expected, "; says {}", needles.join(" + "));
    }
    if let Some(event) = expect.event {
        let _ = write!(expected, "; `security_event={event}`");
    }
    if let Some(why) = expect.out_of_scope {
        let _ = write!(expected, "; **out of scope, documented**: {why}");
    }
    let observed = if problems.is_empty() {
        "as expected; the canary is in no output or file".to_string()
    } else {
        problems.join("; ")
    };
    Row {
        attack,
        who,
        expected,
        observed,
        problems,
    }
}

const RECORD_INSIDE: &str = "/var/lib/bootagent/deploys.json";

struct UnitAttack {
    attack: &'static str,
    who: &'static str,
    strike: fn(&Container) -> Attempt,
    expect: Expect,
}

/// A service in `stage` (followed by the deploy timer) in the container, whose secret holds a
/// canary, booted once on a fresh deploy record.
struct Unit<'c> {
    container: &'c Container,
    name: String,
    repo: SampleRepo,
    imds: Imds,
    canary: String,
    earlier: String,
}

impl<'c> Unit<'c> {
    fn boot(container: &'c Container) -> Unit<'c> {
        let canary = canary();
        let secret = serde_json::json!({ "RELEASE": "one", "TOKEN": canary }).to_string();
        let (name, repo, _) = service_with_secret("sunit", "stage", &secret);
        let imds = Imds::for_service(&name, "staging", &repo.url);
        // One instance, one record: each row starts from a fresh one.
        container.sh(&format!("rm -f {RECORD_INSIDE}"));
        container.install_app(&format!("{name}.service"));
        container.bootagent(&imds, &["boot"]).expect(0);
        let earlier = container.release_of(&name).unwrap();
        Unit {
            container,
            name,
            repo,
            imds,
            canary,
            earlier,
        }
    }

    fn deploy(&self) -> Run {
        self.container
            .bootagent(&self.imds, &["deploy", "--follow"])
    }

    fn attempt(&self, run: Run, hostile: String) -> Attempt {
        let status = self.container.exec(&["cat", "/run/bootagent/status.json"]);
        let outcome = serde_json::from_slice::<serde_json::Value>(&status.stdout)
            .map(|status| status["outcome"].as_str().unwrap_or("?").to_string())
            .unwrap_or_else(|_| "no status".to_string());
        let env_file = format!("/run/bootagent/{}.env", self.name);
        let record = self.container.out().join("out");
        let mut leaks = self
            .container
            .places_holding(&self.canary, &env_file, &record);
        if run.stdout().contains(&self.canary) || run.stderr().contains(&self.canary) {
            leaks.push("the run's output".into());
        }
        let mut problems = Vec::new();
        let unit = self
            .container
            .show(&format!("{}.service", self.name), "ActiveState");
        if unit != "active" {
            problems.push(format!("the unit is {unit}"));
        }
        Attempt {
            running: self.container.release_of(&self.name),
            run,
            outcome,
            earlier: Some(self.earlier.clone()),
            tagged: None,
            hostile: Some(hostile),
            leaks,
            problems,
        }
    }
}

fn unit_attacks() -> Vec<UnitAttack> {
    vec![
        UnitAttack {
            attack: "deploys.json overwritten with garbage, a new commit on the ref, `deploy \
                     --follow`",
            who: "root on the instance, or whoever can write its disk",
            strike: |container| {
                let mut unit = Unit::boot(container);
                let hostile = unit.repo.push_version("stage", "stage build 2");
                container.sh(&format!("printf garbage > {RECORD_INSIDE}"));
                let run = unit.deploy();
                let mut attempt = unit.attempt(run, hostile);
                let left = container.sh(&format!("cat {RECORD_INSIDE}"));
                if left != "garbage" {
                    attempt.problems.push(format!("the record is now {left:?}"));
                }
                attempt
            },
            // `deploy` refuses before it boots: status.json keeps the last boot's outcome.
            expect: Expect {
                code: 9,
                outcome: "succeeded",
                runs: Runs::Earlier,
                says: &[RECORD_INSIDE, "deploys nothing new"],
                event: None,
                out_of_scope: None,
            },
        },
        UnitAttack {
            attack: "the `failed` entry removed from deploys.json by hand after a commit failed \
                     its gate, `deploy --follow`",
            who: "root on the instance, or whoever can write its disk",
            strike: |container| {
                let mut unit = Unit::boot(container);
                let crashing = unit.repo.push_version("stage", "crash at start");
                unit.deploy().expect(16);
                let mut record: serde_json::Value =
                    serde_json::from_str(&container.sh(&format!("cat {RECORD_INSIDE}"))).unwrap();
                assert_eq!(record["failed"]["commit"], crashing.as_str(), "{record}");
                record["failed"] = serde_json::Value::Null;
                let edited = container.out().join("out").join("deploys.json");
                std::fs::write(&edited, record.to_string()).unwrap();
                container.sh(&format!("cp /share/out/deploys.json {RECORD_INSIDE}"));
                std::fs::remove_file(&edited).unwrap();
                let run = unit.deploy();
                unit.attempt(run, crashing)
            },
            expect: Expect {
                code: 16,
                outcome: "rolled-back",
                runs: Runs::Earlier,
                says: &["rolled back from"],
                event: None,
                out_of_scope: Some(
                    "the instance's disk is trusted: the known-bad commit is tried again (a \
                     restart), and the gate rolls it back again",
                ),
            },
        },
    ]
}

fn check_units(attacks: &[UnitAttack]) -> Vec<Row> {
    let container = Container::boot(QUICK_GATE);
    attacks
        .iter()
        .map(|attack| {
            judge(attack.attack, attack.who, &attack.expect, || {
                (attack.strike)(&container)
            })
        })
        .collect()
}

#[test]
fn the_security_matrix_holds_and_is_written_to_docs_security_matrix_md() {
    support::needs_world!();
    let attacks = attacks();
    let unit_attacks = unit_attacks();
    let rows = matrix::run_rows(
        &attacks,
        |attack| judge(attack.attack, attack.who, &attack.expect, attack.strike),
        || check_units(&unit_attacks),
    );
    let table: Vec<matrix::TableRow> = rows
        .into_iter()
        .map(|row| matrix::TableRow {
            matched: row.problems.is_empty(),
            cells: vec![row.attack.to_string(), row.who.to_string(), row.expected],
            observed: row.observed,
        })
        .collect();
    let mismatched = matrix::write_table(
        "docs/security-matrix.md",
        "# Security matrix\n\n\
         Generated by `tests/security.rs` on every run of the suite — do not edit by hand; \
         [security.md](security.md) is the threat model it tests. Each row is one way to get code \
         or secrets past bootagent, tried against the real binary: the world's git daemon \
         serving a repository the attacker tampered with, real `ssh-keygen` and `gpg` keys, \
         instance tags the attacker set, state files edited on the instance's disk. *Expected* \
         is what the row requires: the exit code and the outcome status.json records, which \
         commit runs afterwards (the one in service before the attack, nothing on a first boot, \
         or the commit the signed tag object names), what the message says and the \
         `security_event` logged. Rows marked *out of scope, documented* show what bootagent \
         does not defend against, and security.md says why. Every row also plants a canary in \
         the instance's secret and searches every output and every file the run wrote outside \
         the env file (and, under systemd, the journal) for it. Where a row exits 7 it sets \
         `git.on_failure = \"fail\"`; under the default `\"last-good\"` the same refusal keeps \
         the release in service and the boot exits 0, degraded (the row that says \
         `git.on_failure = \"last-good\"`).\n\n",
        &["attack", "who can do it", "expected"],
        &table,
    );
    assert!(mismatched.is_empty(), "{}", mismatched.join("\n"));
}
