//! Checkouts over smart HTTP with a deploy token from a secret, through `git http-backend`
//! behind Basic authentication.

use std::time::{Duration, Instant};

use support::*;

struct Setup {
    name: String,
    repo: SampleRepo,
    token: String,
    server: GitHttp,
}

/// A machine with no CA certificates at all: the paths rustls-native-certs reads, pointing nowhere.
const NO_CA_STORE: [(&str, &str); 2] = [
    ("SSL_CERT_FILE", "/nonexistent/ca.pem"),
    ("SSL_CERT_DIR", "/nonexistent"),
];

/// A service whose secret holds the deploy token (a canary) beside an ordinary variable.
fn setup() -> Setup {
    setup_serving("http", |_, token| GitHttp::start("deploy", token))
}

/// The same, its repository served by what `serve` starts for the service's name and token.
fn setup_serving(prefix: &str, serve: impl FnOnce(&str, &str) -> GitHttp) -> Setup {
    let name = unique(prefix);
    let repo = SampleRepo::create(&name);
    let token = canary();
    let server = serve(&name, &token);
    create_secret(
        &format!("{name}_env_prod"),
        &serde_json::json!({ "GIT_TOKEN": token, "APP": "1" }).to_string(),
    );
    Setup {
        name,
        repo,
        token,
        server,
    }
}

impl Setup {
    /// The deploy token from the secret, allowed to go to this server's origin alone.
    fn with_token(&self) -> String {
        format!(
            "[git]\ntoken = \"secret:GIT_TOKEN\"\nusername = \"deploy\"\ntoken_hosts = [\"{}\"]\n",
            self.server.url
        )
    }

    fn imds(&self) -> Imds {
        Imds::for_service(&self.name, "prod", &self.server.repo_url(&self.name))
    }

    /// `bootagent prepare` of prod as an image build runs it: the token from a file, and the
    /// environment variables `env` beside.
    fn prepare(&self, instance: &Instance, token: &str, env: &[(&str, &str)]) -> Run {
        let build = tempfile::tempdir().unwrap();
        let token_file = build.path().join("git-token");
        std::fs::write(&token_file, token).unwrap();
        let repository = self.server.repo_url(&self.name);
        let token_file = token_file.to_str().unwrap();
        let args = ["prepare", "--repository", &repository, "--env", "prod"];
        instance.run_with(
            &self.imds(),
            &[&args[..], &["--token-file", token_file]].concat(),
            env,
        )
    }

    /// The repository's URL with `user:password` in it, and the instance whose tag names it.
    fn with_credentials_in_url(&self, user_password: &str) -> (String, Imds) {
        let url = (self.server.repo_url(&self.name)).replacen(
            "http://",
            &format!("http://{user_password}@"),
            1,
        );
        let imds = Imds::for_service(&self.name, "prod", &url);
        (url, imds)
    }
}

#[test]
fn a_deploy_token_from_a_secret_checks_out_and_never_lands_anywhere() {
    support::needs_world!();
    let setup = setup();
    let instance = Instance::exec_mode(&setup.with_token());
    let run = instance.run(&setup.imds(), &["boot"]);
    run.expect(0);
    instance.assert_runs_without(&setup.name, &setup.repo.commits["prod"], "GIT_TOKEN");
    instance.assert_left_nowhere(&setup.token, &run);

    let (doctor, git) = instance.doctor_check(&setup.imds(), "git");
    assert_eq!(git["verdict"], "ok", "{git}");
    instance.assert_no_canary(&setup.token, &doctor);
}

/// A token kept in the secrets is needed to fetch: git begins once the secrets step has ended.
#[test]
fn with_the_token_in_a_secret_git_begins_after_the_secrets_step() {
    support::needs_world!();
    let setup = setup();
    let instance = Instance::exec_mode(&setup.with_token());
    instance.run(&setup.imds(), &["boot"]).expect(0);
    let status = instance.status();
    let (secrets, git) = (phase_span(&status, "secrets"), phase_span(&status, "git"));
    assert!(git.start >= secrets.end, "{status}");
}

/// With the token in a file, a remote slow to answer is fetched while the secrets are read:
/// git's phase begins before the secrets' ends, so that the two take less than one after the
/// other; `bootagent status` shows it.
#[test]
fn a_slow_remote_is_fetched_while_the_secrets_are_read() {
    support::needs_world!();
    let slow = std::time::Duration::from_secs(1);
    let setup = setup_serving("slow", |_, token| {
        GitHttp::start_slow("deploy", token, slow)
    });
    let instance = Instance::exec_mode("");
    let token_file = instance.root.path().join("git-token");
    std::fs::write(&token_file, &setup.token).unwrap();
    instance.add_config(
        "50-test.toml",
        &format!(
            "[git]\ntoken = \"{}\"\nusername = \"deploy\"\ntoken_hosts = [\"{}\"]\n",
            token_file.display(),
            setup.server.url
        ),
    );
    instance.run(&setup.imds(), &["boot"]).expect(0);
    assert_eq!(
        instance.running_commit(&setup.name),
        setup.repo.commits["prod"]
    );
    let status = instance.status();
    let (secrets, git) = (phase_span(&status, "secrets"), phase_span(&status, "git"));
    assert!(git.start < secrets.end, "{status}");
    // Each request waited `slow`: git was the longer.
    assert!(git.end - git.start >= slow.as_millis() as u64, "{status}");
    let both = git.end.max(secrets.end) - git.start.min(secrets.start);
    assert!(
        both < (git.end - git.start) + (secrets.end - secrets.start),
        "{status}"
    );
    let shown = instance.run(&setup.imds(), &["status"]).stdout();
    // Which of the two began first, within a millisecond, decides which is said to be beside
    // the other.
    let beside = ["beside secrets)", "beside git)"];
    assert!(
        shown.contains("(from ") && beside.iter().any(|said| shown.contains(said)),
        "{shown}"
    );
}

#[test]
fn the_token_goes_only_to_the_hosts_the_config_names() {
    support::needs_world!();
    let setup = setup();
    // The URL comes from the Repository tag and no host is named: the token is not sent.
    let unnamed =
        Instance::exec_mode("[git]\ntoken = \"secret:GIT_TOKEN\"\nusername = \"deploy\"\n");
    let run = unnamed.run(&setup.imds(), &["boot"]);
    run.expect(7)
        .stderr_has("is not in git.token_hosts, so the token is not sent")
        .stderr_has("token-host-refused");
    unnamed.assert_left_nowhere(&setup.token, &run);
    // The config names the repository itself: its host is the operator's choice.
    let pinned = Instance::exec_mode(&format!(
        "[git]\ntoken = \"secret:GIT_TOKEN\"\nusername = \"deploy\"\nurl = \"{}\"\n",
        setup.server.repo_url(&setup.name)
    ));
    pinned.run(&setup.imds(), &["boot"]).expect(0);
    pinned.assert_runs_without(&setup.name, &setup.repo.commits["prod"], "GIT_TOKEN");
}

/// libgit2 picks the transport whatever the case of the scheme: a Repository tag that writes
/// `HTTP://` is still http to the token's host check, and the token is not sent.
#[test]
fn an_upper_case_scheme_in_the_tag_does_not_take_the_token_past_the_host_check() {
    support::needs_world!();
    let setup = setup();
    let shouted = setup
        .server
        .repo_url(&setup.name)
        .replacen("http://", "HTTP://", 1);
    let imds = Imds::for_service(&setup.name, "prod", &shouted);
    let instance =
        Instance::exec_mode("[git]\ntoken = \"secret:GIT_TOKEN\"\nusername = \"deploy\"\n");
    let run = instance.run(&imds, &["boot"]);
    run.expect(7)
        .stderr_has("is not in git.token_hosts, so the token is not sent")
        .stderr_has("token-host-refused");
    instance.assert_left_nowhere(&setup.token, &run);
}

#[test]
fn a_wrong_token_is_refused_with_a_clear_message() {
    support::needs_world!();
    let setup = setup();
    create_secret(
        &format!("{}-wrong", setup.name),
        &serde_json::json!({ "T": "not-the-token" }).to_string(),
    );
    let instance = Instance::exec_mode(&format!(
        "[git]\ntoken = \"secret:WRONG\"\nusername = \"deploy\"\ntoken_hosts = [\"{}\"]\n\
         [secrets.vars]\nWRONG = \"{}-wrong#T\"\n",
        setup.server.url, setup.name
    ));
    let run = instance.run(&setup.imds(), &["boot"]);
    run.expect(7)
        .stderr_has("refused access")
        .stderr_has("the remote refused the token");
    instance.assert_no_canary("not-the-token", &run);
}

#[test]
fn a_protected_remote_without_a_token_names_the_setting() {
    support::needs_world!();
    let setup = setup();
    let instance = Instance::exec_mode("");
    instance
        .run(&setup.imds(), &["boot"])
        .expect(7)
        .stderr_has("none are configured (git.token)");
}

#[test]
fn a_token_variable_no_secret_defines_is_named() {
    support::needs_world!();
    let setup = setup();
    let instance = Instance::exec_mode("[git]\ntoken = \"secret:NOPE\"\n");
    instance
        .run(&setup.imds(), &["boot"])
        .expect(7)
        .stderr_has("git.token names secret variable NOPE, which no secret defines");
}

/// A prod service whose repository is served over HTTPS with a certificate from a private CA
/// (issued for `certificate_ip`), behind the same token.
fn setup_tls(certificate_ip: &str) -> (Setup, TestCa) {
    let ca = TestCa::issue_for(certificate_ip);
    let setup = setup_serving("https", |_, token| GitHttp::start_tls("deploy", token, &ca));
    (setup, ca)
}

fn boot_trusting(instance: &Instance, imds: &Imds, ca: &TestCa) -> Run {
    instance.run_with(
        imds,
        &["boot"],
        &[("SSL_CERT_FILE", ca.ca_cert.to_str().unwrap())],
    )
}

#[test]
fn https_with_a_trusted_private_ca_checks_out_with_the_token() {
    support::needs_world!();
    let (setup, ca) = setup_tls("127.0.0.1");
    assert!(setup.server.url.starts_with("https://"));
    let instance = Instance::exec_mode(&setup.with_token());
    let run = boot_trusting(&instance, &setup.imds(), &ca);
    run.expect(0);
    instance.assert_runs_without(&setup.name, &setup.repo.commits["prod"], "GIT_TOKEN");
    instance.assert_left_nowhere(&setup.token, &run);
}

/// With no CA store at all, an https:// remote is not blamed for a certificate nobody could
/// have verified: the message names the missing store and its fix.
#[test]
fn an_https_remote_without_a_ca_store_names_the_missing_store() {
    support::needs_world!();
    let (setup, _ca) = setup_tls("127.0.0.1");
    let instance = Instance::exec_mode(&setup.with_token());
    let run = setup.prepare(&instance, &setup.token, &NO_CA_STORE);
    run.expect(9)
        .stderr_has("no CA certificates were found")
        .stderr_has("ca-certificates");
    assert!(!run.stderr().contains("does not trust"), "{}", run.stderr());
}

#[test]
fn an_untrusted_certificate_is_refused_and_the_release_in_service_stays() {
    support::needs_world!();
    let (mut setup, ca) = setup_tls("127.0.0.1");
    let instance = Instance::exec_mode(&format!("{}on_failure = \"fail\"\n", setup.with_token()));
    boot_trusting(&instance, &setup.imds(), &ca).expect(0);
    let first = instance.running_commit(&setup.name);
    setup.repo.push_version("prod", "prod build 2\n");

    // Without the private CA, only the system's roots are trusted.
    let run = instance.run(&setup.imds(), &["boot"]);
    run.expect(7)
        .stderr_has("presented a TLS certificate this instance does not trust")
        .stderr_has("UnknownIssuer")
        .stderr_has("add the CA to the system's trust store")
        .stderr_has("security_event=")
        .stderr_has("tls-certificate-refused");
    assert_eq!(instance.running_commit(&setup.name), first);
    instance.assert_left_nowhere(&setup.token, &run);
}

#[test]
fn a_certificate_for_another_name_is_refused() {
    support::needs_world!();
    let (setup, ca) = setup_tls("127.0.0.2");
    let instance = Instance::exec_mode(&setup.with_token());
    boot_trusting(&instance, &setup.imds(), &ca)
        .expect(7)
        .stderr_has("does not trust")
        .stderr_has("certificate not valid for name \"127.0.0.1\"");
}

#[test]
fn a_remote_that_accepts_and_never_answers_is_given_up_on_after_git_timeout() {
    support::needs_world!();
    let silent = silent_listener();
    let url = format!("https://{}/app.git", silent.local_addr().unwrap());
    let name = unique("silent");
    create_secret(&format!("{name}_env_prod"), r#"{"A": "1"}"#);
    let instance = Instance::exec_mode("[git]\ntimeout = \"1s\"\n");
    assert_gives_up_after_git_timeout(&instance, &Imds::for_service(&name, "prod", &url));
}

#[test]
fn a_renamed_repository_is_followed_to_its_new_name() {
    support::needs_world!();
    let setup = setup_serving("moved", |name, token| {
        GitHttp::start_moved("deploy", token, &format!("{name}-old"), name)
    });
    let old_url = setup.server.repo_url(&format!("{}-old", setup.name));
    let instance = Instance::exec_mode(&setup.with_token());
    let run = instance.run(&Imds::for_service(&setup.name, "prod", &old_url), &["boot"]);
    run.expect(0)
        .stderr_has("the repository moved: following the redirect");
    instance.assert_runs_without(&setup.name, &setup.repo.commits["prod"], "GIT_TOKEN");
}

#[test]
fn a_redirect_to_another_host_is_refused_not_followed() {
    support::needs_world!();
    // Another origin: were the redirect followed, the request would meet a closed port (and
    // end transient, exit 75); it must not be sent at all.
    let setup = setup_serving("offsite", |name, token| {
        GitHttp::start_moved(
            "deploy",
            token,
            &format!("{name}-old"),
            &format!("http://localhost:1/{name}"),
        )
    });
    let old_url = setup.server.repo_url(&format!("{}-old", setup.name));
    let instance = Instance::exec_mode(&setup.with_token());
    let run = instance.run(&Imds::for_service(&setup.name, "prod", &old_url), &["boot"]);
    run.expect(7)
        .stderr_has("the remote redirected to http://localhost:")
        .stderr_has("which bootagent does not follow")
        .stderr_has("set git.url");
    assert!(!instance.checkout(&setup.name).exists(), "nothing deployed");
    instance.assert_left_nowhere(&setup.token, &run);
}

#[test]
fn wrong_credentials_in_the_repository_url_are_named_as_the_cause() {
    support::needs_world!();
    let setup = setup();
    let (_, imds) = setup.with_credentials_in_url("deploy:wrong");
    let instance = Instance::exec_mode("[secrets]\nmain = \"\"\n");
    instance
        .run(&imds, &["boot"])
        .expect(7)
        .stderr_has("refused the user and password in the repository URL (HTTP 401");
}

#[test]
fn https_goes_through_the_proxy_the_environment_names() {
    support::needs_world!();
    let (setup, ca) = setup_tls("127.0.0.1");
    let proxy = ConnectProxy::start();
    let instance = Instance::exec_mode(&setup.with_token());
    let run = instance.run_with(
        &setup.imds(),
        &["boot"],
        &[
            ("SSL_CERT_FILE", ca.ca_cert.to_str().unwrap()),
            ("HTTPS_PROXY", proxy.url.as_str()),
        ],
    );
    run.expect(0);
    instance.assert_runs_without(&setup.name, &setup.repo.commits["prod"], "GIT_TOKEN");
    let server = setup.server.url.trim_start_matches("https://");
    let connects = proxy.connects();
    assert!(
        !connects.is_empty() && connects.iter().all(|c| c == server),
        "the proxy tunnelled {connects:?}, the server is {server}"
    );
}

#[test]
fn credentials_in_the_repository_tag_are_redacted_wherever_it_is_shown() {
    support::needs_world!();
    let setup = setup();
    let (url, imds) = setup.with_credentials_in_url(&format!("deploy:{}", setup.token));
    // No secret: the credentials in the tag alone must get the checkout through.
    let instance = Instance::exec_mode("[secrets]\nmain = \"\"\n");
    let plan = instance.run(&imds, &["plan"]);
    plan.expect(0);
    assert!(
        plan.stdout().contains("http://***@127.0.0.1:"),
        "{}",
        plan.stdout()
    );
    instance.assert_no_canary(&setup.token, &plan);
    let boot = instance.run(&imds, &["boot"]);
    boot.expect(0);
    assert_eq!(
        instance.running_commit(&setup.name),
        setup.repo.commits["prod"]
    );
    instance.assert_left_nowhere(&setup.token, &boot);
    let status = instance.run(&imds, &["status", "--json"]);
    instance.assert_no_canary(&setup.token, &status);
    assert_eq!(
        instance.status()["identity"]["repository"],
        url.replacen(&format!("deploy:{}", setup.token), "***", 1)
    );
}

/// Asserts that every request `server` answered carried exactly one Authorization header, the
/// right one: none went out anonymous first, to learn from a 401 that credentials are wanted.
fn assert_every_request_authorized(server: &GitHttp) {
    let requests = server.requests();
    assert!(
        requests.iter().any(|r| r.method == "GET") && requests.iter().any(|r| r.method == "POST"),
        "{requests:?}"
    );
    let anonymous: Vec<_> = requests
        .iter()
        .filter(|r| r.authorization != 1 || !r.authorized)
        .collect();
    assert!(anonymous.is_empty(), "{anonymous:?}");
}

#[test]
fn a_token_goes_with_every_request_from_the_first_on() {
    support::needs_world!();
    let setup = setup();
    let instance = Instance::exec_mode(&setup.with_token());
    instance.run(&setup.imds(), &["boot"]).expect(0);
    assert_every_request_authorized(&setup.server);
}

#[test]
fn credentials_in_the_url_go_with_every_request_from_the_first_on() {
    support::needs_world!();
    let setup = setup();
    let (_, imds) = setup.with_credentials_in_url(&format!("deploy:{}", setup.token));
    let instance = Instance::exec_mode("[secrets]\nmain = \"\"\n");
    let run = instance.run(&imds, &["boot"]);
    run.expect(0);
    assert_every_request_authorized(&setup.server);
    instance.assert_left_nowhere(&setup.token, &run);
}

/// With a token and credentials in the URL both, the token alone goes: two Authorization headers
/// make no valid request.
#[test]
fn a_token_replaces_credentials_in_the_url() {
    support::needs_world!();
    let setup = setup();
    let (_, imds) = setup.with_credentials_in_url("deploy:stale");
    let instance = Instance::exec_mode(&setup.with_token());
    let run = instance.run(&imds, &["boot"]);
    run.expect(0);
    instance.assert_runs_without(&setup.name, &setup.repo.commits["prod"], "GIT_TOKEN");
    assert_every_request_authorized(&setup.server);
}

#[test]
fn a_throttled_remote_is_asked_again_after_the_wait_it_names() {
    support::needs_world!();
    let setup = setup_serving("throttled", |_, token| {
        GitHttp::start_throttled("deploy", token, 2, Some(1))
    });
    let instance = Instance::exec_mode(&setup.with_token());
    let run = instance.run(&setup.imds(), &["boot"]);
    // At least the second asked for, and a random part of the backoff on top.
    run.expect(0)
        .stderr_has(
            "the remote answered HTTP 429 Too Many Requests: sending the request again in 1s",
        )
        .stderr_has("(it asked to retry after 1s)");
    instance.assert_runs_without(&setup.name, &setup.repo.commits["prod"], "GIT_TOKEN");
    instance.assert_left_nowhere(&setup.token, &run);
    let requests = setup.server.requests();
    let statuses: Vec<_> = requests.iter().map(|r| r.status).take(3).collect();
    assert_eq!(statuses, [429, 429, 200], "{requests:?}");
    // The same request, each after the second the remote asked for.
    assert!(requests[..3].iter().all(|r| r.path == requests[0].path));
    for pair in requests[..3].windows(2) {
        assert!(pair[1].at - pair[0].at >= 1.0, "{requests:?}");
    }
    assert_every_request_authorized(&setup.server);
}

#[test]
fn a_retry_after_past_the_git_deadline_fails_the_checkout_at_once_and_keeps_the_release() {
    support::needs_world!();
    let mut setup = setup();
    let throttled = GitHttp::start_throttled("deploy", &setup.token, u32::MAX, Some(600));
    let instance = Instance::exec_mode(&format!(
        "[git]\ntoken = \"secret:GIT_TOKEN\"\nusername = \"deploy\"\ndeadline = \"20s\"\n\
         token_hosts = [\"{}\", \"{}\"]\n",
        setup.server.url, throttled.url
    ));
    instance.run(&setup.imds(), &["boot"]).expect(0);
    let first = instance.running_commit(&setup.name);
    let env_file = std::fs::read_to_string(instance.env_file(&setup.name)).unwrap();
    setup.repo.push_version("prod", "prod build 2\n");

    let imds = Imds::for_service(&setup.name, "prod", &throttled.repo_url(&setup.name));
    let started = Instant::now();
    let run = instance.run(&imds, &["boot"]);
    let elapsed = started.elapsed();
    run.expect(0)
        .stderr_has(
            "the remote asked to retry after 600s (HTTP 429 Too Many Requests), past the \
             checkout's deadline 20s (git.deadline)",
        )
        .stderr_has("running last good commit");
    // Neither the Retry-After nor the deadline was waited out.
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    assert_eq!(throttled.requests().len(), 1);
    assert_eq!(instance.running_commit(&setup.name), first);
    assert_eq!(
        std::fs::read_to_string(instance.env_file(&setup.name)).unwrap(),
        env_file
    );
    assert_eq!(instance.status()["outcome"], "degraded");
    instance.assert_left_nowhere(&setup.token, &run);
}

/// An image build fetches the seed with a token from a file: the token goes nowhere else (not
/// in prepare's output, the seed or any file of the instance), a wrong one is refused without
/// being shown, and the first boot, with the token from the secret, starts from the seed.
#[test]
fn prepare_over_http_keeps_its_token_to_the_request() {
    support::needs_world!();
    let setup = setup();
    let instance = Instance::exec_mode(&setup.with_token());
    let prepare = |token: &str| setup.prepare(&instance, token, &[]);
    let wrong = canary();
    let refused = prepare(&wrong);
    refused.expect(7);
    instance.assert_left_nowhere(&wrong, &refused);

    let prepared = prepare(&setup.token);
    prepared.expect(0);
    instance.assert_left_nowhere(&setup.token, &prepared);
    let boot = instance.run(&setup.imds(), &["boot"]);
    boot.expect(0);
    assert!(instance.status()["git"]["seed"].is_string());
    instance.assert_runs_without(&setup.name, &setup.repo.commits["prod"], "GIT_TOKEN");
    instance.assert_left_nowhere(&setup.token, &boot);
}

/// An image build may have no CA store yet: a plain http:// remote needs none, so prepare must
/// not fail setting up TLS it will not use.
#[test]
fn prepare_over_plain_http_needs_no_ca_store() {
    support::needs_world!();
    let setup = setup();
    let instance = Instance::exec_mode(&setup.with_token());
    let prepared = setup.prepare(&instance, &setup.token, &NO_CA_STORE);
    prepared.expect(0);
    let commit = &setup.repo.commits["prod"];
    assert!(
        prepared.stdout().contains(commit.as_str()),
        "{}",
        prepared.stdout()
    );
}

/// An image build that runs prepare twice over the same state dir (two provisioners, a retry
/// beside a straggler): the second waits for the first, rather than clearing its half-made seed
/// as a leftover, and one whole seed is left that a first boot starts from.
#[test]
fn two_prepares_at_once_take_turns_and_leave_one_whole_seed() {
    support::needs_world!();
    // Each request answered late: the first prepare is still fetching when the second starts.
    let setup = setup_serving("http", |_, token| {
        GitHttp::start_slow("deploy", token, std::time::Duration::from_millis(700))
    });
    let instance = Instance::exec_mode(&setup.with_token());
    let build = tempfile::tempdir().unwrap();
    let token_file = build.path().join("git-token");
    std::fs::write(&token_file, &setup.token).unwrap();
    let repository = setup.server.repo_url(&setup.name);
    let args = [
        "prepare",
        "--repository",
        &repository,
        "--env",
        "prod",
        "--token-file",
        token_file.to_str().unwrap(),
    ];
    let first = (instance.command(&setup.imds(), &args))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let state = instance.root.path().join("state");
    let staging = || {
        std::fs::read_dir(&state)
            .into_iter()
            .flatten()
            .any(|entry| (entry.unwrap().file_name().to_string_lossy()).starts_with(".seed.tmp-"))
    };
    let started = std::time::Instant::now();
    while !staging() {
        assert!(
            started.elapsed().as_secs() < 30,
            "the first prepare never staged a seed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let second = instance.run(&setup.imds(), &args);
    let first = Run(first.wait_with_output().unwrap());
    first.expect(0);
    second
        .expect(0)
        .stderr_has("another prepare is running, waiting for it");
    let beside: Vec<_> = (std::fs::read_dir(&state).unwrap())
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".seed"))
        .collect();
    assert!(beside.is_empty(), "{beside:?}");
    instance.run(&setup.imds(), &["boot"]).expect(0);
    assert!(instance.status()["git"]["seed"].is_string());
}
