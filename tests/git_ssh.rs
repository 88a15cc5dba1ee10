//! Checkouts over SSH from a real `sshd` on loopback: a deploy key from a secret or a file, the
//! server's host key pinned in known_hosts, and what happens when either does not match.

use std::path::PathBuf;

use support::*;

struct Setup {
    name: String,
    repo: SampleRepo,
    server: GitSsh,
    /// The deploy key the server authorizes.
    key: PathBuf,
    /// Pins the server's host key.
    known_hosts: PathBuf,
    keys: tempfile::TempDir,
}

/// A prod service whose repository is served over SSH to one deploy key; the service's secret
/// holds that key beside an ordinary variable.
fn setup() -> Setup {
    let name = unique("ssh");
    let repo = SampleRepo::create(&name);
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = ssh_keygen(keys.path(), "deploy");
    let server = GitSsh::start(&[&public]);
    let known_hosts = keys.path().join("known_hosts");
    std::fs::write(&known_hosts, server.known_hosts_line()).unwrap();
    create_secret(
        &format!("{name}_env_prod"),
        &serde_json::json!({
            "DEPLOY_KEY": std::fs::read_to_string(&key).unwrap(),
            "APP": "1",
        })
        .to_string(),
    );
    Setup {
        name,
        repo,
        server,
        key,
        known_hosts,
        keys,
    }
}

impl Setup {
    fn imds(&self) -> Imds {
        Imds::for_service(&self.name, "prod", &self.server.repo_url(&self.name))
    }

    /// An instance whose deploy key is `ssh_key` ("secret:NAME" or a path), failing the boot when
    /// the checkout fails so that exit codes tell.
    fn instance(&self, ssh_key: &str) -> Instance {
        Instance::exec_mode(&format!(
            "[git]\nssh_key = \"{ssh_key}\"\nknown_hosts = \"{}\"\non_failure = \"fail\"\n",
            self.known_hosts.display()
        ))
    }

    /// An instance booted with the deploy key from the secret, and the commit it runs; a newer
    /// commit is pushed afterwards, for a boot that would fetch it.
    fn booted_then_pushed(&mut self) -> (Instance, String) {
        let instance = self.instance("secret:DEPLOY_KEY");
        instance.run(&self.imds(), &["boot"]).expect(0);
        let first = instance.running_commit(&self.name);
        self.repo.push_version("prod", "prod build 2\n");
        (instance, first)
    }

    /// A line from the middle of the private key: what must never show up anywhere.
    fn key_canary(&self) -> String {
        let key = std::fs::read_to_string(&self.key).unwrap();
        key.lines().nth(2).unwrap().to_string()
    }
}

#[test]
fn a_deploy_key_from_a_secret_checks_out_and_is_left_nowhere() {
    support::needs_world!();
    let setup = setup();
    let instance = setup.instance("secret:DEPLOY_KEY");
    let run = instance.run(&setup.imds(), &["boot"]);
    run.expect(0);
    instance.assert_runs_without(&setup.name, &setup.repo.commits["prod"], "DEPLOY_KEY");
    instance.assert_left_nowhere(&setup.key_canary(), &run);

    let (doctor, git) = instance.doctor_check(&setup.imds(), "git");
    assert_eq!(git["verdict"], "ok", "{git}");
    instance.assert_left_nowhere(&setup.key_canary(), &doctor);
}

#[test]
fn a_deploy_key_file_checks_out_and_a_new_commit_is_fetched() {
    support::needs_world!();
    let mut setup = setup();
    let instance = setup.instance(&setup.key.display().to_string());
    instance.run(&setup.imds(), &["boot"]).expect(0);
    let next = setup.repo.push_version("prod", "prod build 2\n");
    instance.run(&setup.imds(), &["boot"]).expect(0);
    assert_eq!(instance.running_commit(&setup.name), next);
    assert_eq!(instance.status()["git"]["action"], "fetched");
}

#[test]
fn a_changed_host_key_is_refused_and_the_release_in_service_stays() {
    support::needs_world!();
    let mut setup = setup();
    let (instance, first) = setup.booted_then_pushed();

    setup.server.change_host_key();
    let run = instance.run(&setup.imds(), &["boot"]);
    run.expect(7)
        .stderr_has("is not the host pinned in")
        .stderr_has(&setup.known_hosts.display().to_string())
        .stderr_has("has changed and you have requested strict checking")
        .stderr_has("verify the new key out of band")
        .stderr_has("security_event=")
        .stderr_has("ssh-host-key-mismatch");
    assert_eq!(instance.running_commit(&setup.name), first);
    instance.assert_left_nowhere(&setup.key_canary(), &run);

    // With the default policy the boot goes on with the release it has, and says why.
    instance.add_config("60-last-good.toml", "[git]\non_failure = \"last-good\"\n");
    instance
        .run(&setup.imds(), &["boot"])
        .expect(0)
        .stderr_has("ssh-host-key-mismatch")
        .stderr_has("boot degraded: ");
    assert_eq!(instance.running_commit(&setup.name), first);
    let status = instance.status();
    assert_eq!(status["outcome"], "degraded");
    let note = status["git"]["note"].as_str().unwrap();
    assert!(
        note.starts_with(&format!("running last good commit {first} because ")),
        "{note}"
    );
}

#[test]
fn a_host_missing_from_known_hosts_is_refused() {
    support::needs_world!();
    let setup = setup();
    std::fs::write(&setup.known_hosts, "").unwrap();
    let instance = setup.instance("secret:DEPLOY_KEY");
    instance
        .run(&setup.imds(), &["boot"])
        .expect(7)
        .stderr_has("is not the host pinned in")
        .stderr_has("No ED25519 host key is known for [127.0.0.1]");
    assert!(!instance.checkout(&setup.name).exists());
}

#[test]
fn a_missing_known_hosts_file_is_named_with_the_fix() {
    support::needs_world!();
    let setup = setup();
    std::fs::remove_file(&setup.known_hosts).unwrap();
    let instance = setup.instance("secret:DEPLOY_KEY");
    instance
        .run(&setup.imds(), &["boot"])
        .expect(7)
        .stderr_has(&format!(
            "git.known_hosts {} cannot be read",
            setup.known_hosts.display()
        ))
        .stderr_has("ssh-keyscan");
}

#[test]
fn a_wrong_deploy_key_is_refused_and_the_release_in_service_stays() {
    support::needs_world!();
    let mut setup = setup();
    let (instance, first) = setup.booted_then_pushed();

    let (stranger, _) = ssh_keygen(setup.keys.path(), "stranger");
    instance.add_config(
        "60-stranger.toml",
        &format!("[git]\nssh_key = \"{}\"\n", stranger.display()),
    );
    let run = instance.run(&setup.imds(), &["boot"]);
    run.expect(7)
        .stderr_has("refused access")
        .stderr_has("Permission denied (publickey)")
        .stderr_has("check the deploy key");
    assert_eq!(instance.running_commit(&setup.name), first);
    let stranger_key = std::fs::read_to_string(&stranger).unwrap();
    instance.assert_no_canary(stranger_key.lines().nth(2).unwrap(), &run);
}

#[test]
fn a_deploy_key_others_can_read_is_refused_by_ssh_with_its_reason() {
    support::needs_world!();
    let setup = setup();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&setup.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let instance = setup.instance(&setup.key.display().to_string());
    instance
        .run(&setup.imds(), &["boot"])
        .expect(7)
        .stderr_has("bad permissions");
}

#[test]
fn a_server_that_is_down_is_transient_and_named() {
    support::needs_world!();
    let mut setup = setup();
    setup.server.stop();
    let instance = setup.instance("secret:DEPLOY_KEY");
    instance
        .run(&setup.imds(), &["boot"])
        .expect(75)
        .stderr_has("cannot reach git remote ssh://root@")
        .stderr_has("Connection refused");
}

#[test]
fn no_key_file_outlives_the_boot_that_wrote_it() {
    support::needs_world!();
    let setup = setup();
    let instance = setup.instance("secret:DEPLOY_KEY");
    // One left by a boot that was killed (no process has this pid).
    let orphan = instance.run.path().join(".git-deploy-key.999999999");
    std::fs::write(&orphan, "left by a killed boot").unwrap();
    instance.run(&setup.imds(), &["boot"]).expect(0);
    let left: Vec<_> = std::fs::read_dir(instance.run.path())
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("deploy-key"))
        .collect();
    assert!(left.is_empty(), "key files left in the run dir: {left:?}");
}

#[test]
fn a_remote_that_accepts_and_never_answers_is_given_up_on_after_git_timeout() {
    support::needs_world!();
    let setup = setup();
    let silent = silent_listener();
    let port = silent.local_addr().unwrap().port();
    let url = format!("ssh://git@127.0.0.1:{port}/app.git");
    let instance = Instance::exec_mode(&format!(
        "[git]\nknown_hosts = \"{}\"\ntimeout = \"1s\"\n",
        setup.known_hosts.display()
    ));
    assert_gives_up_after_git_timeout(&instance, &Imds::for_service(&setup.name, "prod", &url));
}

#[test]
fn an_ssh_url_that_would_pass_options_to_ssh_is_refused_before_ssh_runs() {
    support::needs_world!();
    let setup = setup();
    // A Repository tag is untrusted input: as an ssh host this is an option whose command would
    // create `injected` in bootagent's working directory.
    let url = "ssh://-oProxyCommand=touch${IFS}injected/repo.git";
    let instance = setup.instance("secret:DEPLOY_KEY");
    let run = Run(instance
        .command(&Imds::for_service(&setup.name, "prod", url), &["boot"])
        .current_dir(setup.keys.path())
        .output()
        .unwrap());
    run.expect(7)
        .stderr_has("not a usable ssh URL: a user, host or path starting with '-' is refused");
    assert!(
        !setup.keys.path().join("injected").exists(),
        "ssh ran the injected command"
    );
}

#[test]
fn a_machine_without_the_ssh_client_is_told_so() {
    support::needs_world!();
    let setup = setup();
    let instance = setup.instance("secret:DEPLOY_KEY");
    // Nothing on this PATH: bootagent itself needs no program before the service.
    let run = instance.run_with(&setup.imds(), &["boot"], &[("PATH", "/nonexistent")]);
    run.expect(7)
        .stderr_has("ssh:// remotes need the OpenSSH client installed");
}

#[test]
fn a_deploy_key_stored_without_its_final_newline_still_works() {
    support::needs_world!();
    let setup = setup();
    // Secret consoles and `jq -r` often drop it; OpenSSH refuses a key file without it.
    let trimmed = std::fs::read_to_string(&setup.key)
        .unwrap()
        .trim_end()
        .to_string();
    create_secret(
        &format!("{}-trimmed", setup.name),
        &serde_json::json!({ "KEY": trimmed }).to_string(),
    );
    let instance = setup.instance("secret:TRIMMED_KEY");
    instance.add_config(
        "60-trimmed.toml",
        &format!(
            "[secrets.vars]\nTRIMMED_KEY = \"{}-trimmed#KEY\"\n",
            setup.name
        ),
    );
    instance.run(&setup.imds(), &["boot"]).expect(0);
    assert_eq!(
        instance.running_commit(&setup.name),
        setup.repo.commits["prod"]
    );
}
