use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn defaults_serve_the_common_pattern_without_any_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = load(Some(&write(dir.path(), "config.toml", ""))).unwrap();
    assert_eq!(config.identity.service_tag, "Service");
    assert_eq!(config.secrets.main.as_deref(), Some("{service}_env_{env}"));
    assert_eq!(config.git.reference, "{env}");
    assert_eq!(config.identity.tag_wait, Duration::from_secs(30));
    assert_eq!(config.environments["prod"], ["prod", "production"]);
}

#[test]
fn drop_ins_override_in_lexical_order_and_keep_other_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(dir.path(), "config.toml", "[git]\ndepth = 5\n");
    write(
        dir.path(),
        "config.d/20-b.toml",
        "[git]\nref = \"release\"\n",
    );
    write(
        dir.path(),
        "config.d/10-a.toml",
        "[git]\nref = \"main\"\ndepth = 3\n",
    );
    write(dir.path(), "config.d/ignored.txt", "not toml at all [");
    write(
        dir.path(),
        "config.d/30-env.toml",
        "[environments]\nqa = [\"qa\"]\n",
    );
    let config = load(Some(&main)).unwrap();
    assert_eq!(config.git.reference, "release");
    assert_eq!(config.git.depth, 3);
    assert_eq!(config.git.dir, "/srv/{service}");
    assert_eq!(config.environments.len(), 4, "qa is added, not substituted");
}

#[test]
fn a_fifo_or_a_device_in_config_d_fails_at_once_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(dir.path(), "config.toml", "");
    std::fs::create_dir(dir.path().join("config.d")).unwrap();
    let fifo = dir.path().join("config.d/10-fifo.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let err = load(Some(&main)).unwrap_err();
    assert!(
        matches!(err, ConfigError::Read { ref path, .. } if *path == fifo),
        "{err}"
    );
    std::fs::remove_file(&fifo).unwrap();
    let zero = dir.path().join("config.d/20-zero.toml");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let err = load(Some(&main)).unwrap_err();
    assert!(
        matches!(err, ConfigError::Read { ref path, .. } if *path == zero),
        "{err}"
    );
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("not a regular file"), "{source}");
}

#[test]
fn run_and_state_dirs_must_be_absolute() {
    for dirs in [
        "run_dir = \"\"",
        "run_dir = \"run\"",
        "state_dir = \"var/lib\"",
    ] {
        let err = from_text(Path::new("t.toml"), &format!("[paths]\n{dirs}\n")).unwrap_err();
        assert!(
            err.to_string().contains("must be an absolute path"),
            "{dirs}: {err}"
        );
    }
}

#[test]
fn unknown_key_is_reported_with_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(dir.path(), "config.toml", "");
    let bad = write(dir.path(), "config.d/10.toml", "[git]\nbranch = \"x\"\n");
    let err = load(Some(&main)).unwrap_err().to_string();
    assert!(err.contains(&bad.display().to_string()), "{err}");
    assert!(err.contains("branch"), "{err}");
}

#[test]
fn explicit_config_file_must_exist() {
    let err = load(Some(Path::new("/nonexistent/bootagent.toml"))).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err}");
}

#[test]
fn alias_in_two_environments_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(
        dir.path(),
        "config.toml",
        "[environments]\nqa = [\"staging\"]\n",
    );
    let err = load(Some(&main)).unwrap_err().to_string();
    assert!(err.contains("\"staging\""), "{err}");
}

#[test]
fn a_zero_heartbeat_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(
        dir.path(),
        "config.toml",
        "[lifecycle]\nheartbeat = \"0s\"\n",
    );
    let err = load(Some(&main)).unwrap_err().to_string();
    assert!(
        err.contains("lifecycle.heartbeat must be longer than 0s"),
        "{err}"
    );
}

#[test]
fn a_launch_hook_in_exec_mode_is_refused_with_what_to_do_instead() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(
        dir.path(),
        "config.toml",
        "[lifecycle]\nlaunch_hook = \"launching\"\n[service]\nmanager = \"exec\"\n\
         command = [\"/bin/true\"]\n",
    );
    let err = load(Some(&main)).unwrap_err().to_string();
    assert!(err.contains("lifecycle.launch_hook needs"), "{err}");
    assert!(err.contains("bootagent lifecycle complete"), "{err}");
}

#[test]
fn an_env_variable_name_that_could_smuggle_another_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(
        dir.path(),
        "config.toml",
        "[env.all]\n\"PORT=9999;X\" = \"1\"\n",
    );
    let err = load(Some(&main)).unwrap_err().to_string();
    assert!(
        err.contains("env.all: \"PORT=9999;X\" is not a valid variable name"),
        "{err}"
    );
}

#[test]
fn a_duration_beyond_the_maximum_names_the_key_and_the_maximum() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(
        dir.path(),
        "config.toml",
        "[boot]\ndeadline = \"300000000000y\"\n",
    );
    let err = load(Some(&main)).unwrap_err().to_string();
    assert!(
        err.contains("boot.deadline = \"300000000000years\" is longer than bootagent accepts for any duration (30days at most)"),
        "{err}"
    );
    let main = write(
        dir.path(),
        "config.toml",
        "[refresh]\nwindow = \"30days\"\n",
    );
    assert_eq!(load(Some(&main)).unwrap().refresh.window, MAX_DURATION);
}

#[test]
fn bad_duration_names_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(
        dir.path(),
        "config.toml",
        "[identity]\ntag_wait = \"soon\"\n",
    );
    let err = load(Some(&main)).unwrap_err().to_string();
    assert!(err.contains("\"soon\" is not a duration"), "{err}");
}

#[test]
fn empty_strings_are_none_and_credentials_are_typed_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let defaults = load(Some(&write(dir.path(), "config.toml", ""))).unwrap();
    assert_eq!(defaults.lifecycle.launch_hook, None);
    assert_eq!(defaults.health.app_url, None);
    assert_eq!(defaults.git.token, None);
    let main = write(
        dir.path(),
        "config.toml",
        "[git]\ntoken = \"secret:GIT_TOKEN\"\nssh_key = \"/etc/bootagent/deploy_key\"\n\
         [secrets]\nmain = \"\"\n",
    );
    let config = load(Some(&main)).unwrap();
    assert_eq!(
        config.git.token,
        Some(Credential::Secret("GIT_TOKEN".into()))
    );
    assert_eq!(
        config.git.ssh_key,
        Some(Credential::File("/etc/bootagent/deploy_key".into()))
    );
    assert_eq!(config.secrets.main, None);
}

#[test]
fn a_credential_that_is_neither_a_secret_variable_nor_an_absolute_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (value, said) in [
        ("secret:{service}_key", "must name a secret variable"),
        (
            "deploy_key",
            "is neither \"secret:NAME\" nor an absolute file path",
        ),
    ] {
        let main = write(
            dir.path(),
            "config.toml",
            &format!("[git]\nssh_key = {value:?}\n"),
        );
        let err = load(Some(&main)).unwrap_err().to_string();
        assert!(err.contains(said), "{value}: {err}");
    }
}

#[test]
fn an_app_url_that_is_not_http_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(
        dir.path(),
        "config.toml",
        "[health]\napp_url = \"localhost:8080/healthz\"\n",
    );
    let err = load(Some(&main)).unwrap_err().to_string();
    assert!(err.contains("is not an http:// or https:// URL"), "{err}");
}

/// The error a config with these `[[files]]` entries (TOML) is refused with.
fn files_refused(entries: &str) -> String {
    from_text(Path::new("t.toml"), entries)
        .unwrap_err()
        .to_string()
}

const CERT: &str =
    "[[files]]\npath = \"/run/tls/{service}.crt\"\nsecret = \"{service}/tls#cert\"\n";

#[test]
fn files_load_with_their_templates_and_defaults() {
    let text = format!(
        "{CERT}[[files]]\npath = \"/run/{{service}}/app.conf\"\n\
         template = \"password={{{{ secrets.DB_PASSWORD }}}}\\nregion={{{{ region }}}}\\n\"\n\
         owner = \"{{service}}\"\nmode = \"0640\"\non_change = \"signal:SIGHUP\"\n"
    );
    let config = from_text(Path::new("t.toml"), &text).unwrap();
    assert_eq!(config.files.len(), 2);
    assert_eq!(config.files[0].owner, "root");
    assert_eq!(config.files[0].mode, 0o600);
    assert_eq!(config.files[1].mode, 0o640);
    let keys: Vec<String> = config.templates().into_iter().map(|(k, _)| k).collect();
    for key in [
        "files[0].path",
        "files[0].secret",
        "files[1].owner",
        "files[1].group",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} in {keys:?}");
    }
}

#[test]
fn a_file_needs_exactly_one_source() {
    let both = format!("{CERT}template = \"x\"\n");
    assert!(files_refused(&both).contains("files[0] sets both secret and template"));
    let neither = "[[files]]\npath = \"/run/x\"\n";
    assert!(files_refused(neither).contains("files[0] sets neither secret nor template"));
}

#[test]
fn a_file_template_that_does_not_parse_or_names_an_unknown_top_level_name_is_refused() {
    let unparsed = format!("{CERT}[[files]]\npath = \"/run/y\"\ntemplate = \"{{{{ secrets.A \"\n");
    let err = files_refused(&unparsed);
    assert!(err.contains("files[1].template does not parse"), "{err}");
    let unknown = "[[files]]\npath = \"/run/y\"\ntemplate = \"{{ secret.A }}{{ service }}\"\n";
    let err = files_refused(unknown);
    assert!(err.contains("files[0].template uses \"secret\""), "{err}");
    assert!(err.contains("secrets.NAME"), "{err}");
}

#[test]
fn file_path_secret_owner_and_group_are_bootagent_templates_checked_at_load() {
    for (key, line) in [
        (
            "files[0].path",
            "path = \"/run/{servce}.key\"\nsecret = \"s\"\n",
        ),
        (
            "files[0].secret",
            "path = \"/run/k\"\nsecret = \"{nope}/tls\"\n",
        ),
        (
            "files[0].owner",
            "path = \"/run/k\"\nsecret = \"s\"\nowner = \"{user}\"\n",
        ),
        (
            "files[0].group",
            "path = \"/run/k\"\nsecret = \"s\"\ngroup = \"{x\"\n",
        ),
    ] {
        let err = files_refused(&format!("[[files]]\n{line}"));
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[test]
fn two_files_with_one_path_are_refused_naming_both() {
    let twice = format!("{CERT}{CERT}");
    let err = files_refused(&twice);
    assert!(err.contains("files[1].path"), "{err}");
    assert!(err.contains("as files[0].path is"), "{err}");
}

#[test]
fn file_roots_must_be_normal_absolute_paths() {
    for root in ["run", "/run/", "/run/../etc"] {
        let err = files_refused(&format!("[paths]\nfile_roots = [\"/srv\", {root:?}]\n"));
        assert!(err.contains("paths.file_roots[1]"), "{root}: {err}");
    }
    from_text(Path::new("t.toml"), "[paths]\nfile_roots = [\"/\"]\n").unwrap();
}
