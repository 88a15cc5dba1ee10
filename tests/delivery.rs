//! Secrets delivered besides the environment (`secrets.deliver`): under a real systemd with the
//! shipped units, and in exec mode; and applied without a restart (`on_change`).

use std::path::Path;

use support::container::{eventually, Container};
use support::*;

/// A service that reads its credentials from `$CREDENTIALS_DIRECTORY` and writes what it read,
/// and its own environment, to OUTDIR; again on SIGHUP (its ExecReload= sends that), counting.
const CREDENTIALS_APP: &str = r#"#!/bin/sh
out=$1
n=0
record() {
    for f in "$CREDENTIALS_DIRECTORY"/*; do
        printf '%s=%s\n' "$(basename "$f")" "$(cat "$f")"
    done > "$out/credentials.tmp"
    printf '%s\n' "$n" >> "$out/credentials.tmp"
    mv "$out/credentials.tmp" "$out/credentials"
}
trap 'n=$((n + 1)); record' HUP
env -0 > "$out/env"
record
while true; do sleep 0.1; done
"#;

fn config(extra: &str) -> String {
    format!(
        "[identity]\ntag_wait = \"2s\"\n\n[service]\nuser = \"nobody\"\nstart_timeout = \
         \"20s\"\nsettle = \"300ms\"\n\n[refresh]\nwindow = \"0s\"\n\n{extra}"
    )
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A service in a container: its name, its secret's id, the IMDS of its instance.
struct InContainer {
    name: String,
    secret: String,
    imds: Imds,
    container: Container,
}

/// A service named after `prefix`, with a sample repo; its secret `NAME{secret_suffix}` holding
/// `value`; an instance tagged `env_tag`; a container booted with `extra` config.
fn in_container(
    prefix: &str,
    secret_suffix: &str,
    value: &str,
    env_tag: &str,
    extra: &str,
) -> InContainer {
    let name = unique(prefix);
    let repo = SampleRepo::create(&name);
    let secret = format!("{name}{secret_suffix}");
    create_secret(&secret, value);
    let imds = Imds::for_service(&name, env_tag, &repo.url);
    let container = Container::boot(&config(extra));
    InContainer {
        name,
        secret,
        imds,
        container,
    }
}

/// `script` as /share/`name` in `container`, executable.
fn share_script(container: &Container, name: &str, script: &str) {
    let path = container.out().join(name);
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

#[test]
fn credentials_reach_the_service_in_its_credentials_directory_never_its_environment() {
    support::needs_world!();
    let (canary, rotated) = (canary(), canary());
    let InContainer {
        name,
        secret,
        imds,
        container,
    } = in_container(
        "cred",
        "_env_prod",
        &serde_json::json!({ "DB_PASSWORD": canary, "API_KEY": "k1" }).to_string(),
        "production",
        "[secrets]\ndeliver = \"credentials\"\non_change = \"reload\"\n\n[env.all]\nLOG_LEVEL = \"info\"\n",
    );
    container.install_shipped_units(&imds);
    share_script(&container, "credentials-app.sh", CREDENTIALS_APP);
    let unit = format!("{name}.service");
    let out = container.out().join("out");
    container.install_unit(
        &unit,
        "ExecStart=/share/credentials-app.sh /share/out\\nExecReload=/bin/sh -c \"kill -HUP $MAINPID\"",
    );
    container.sh("systemctl start bootagent-boot.service");
    assert_eq!(
        container.show("bootagent-boot.service", "Result"),
        "success"
    );

    let seen = read(&out.join("credentials"));
    assert_eq!(seen, format!("API_KEY=k1\nDB_PASSWORD={canary}\n0\n"));
    let environ = read(&out.join("env"));
    assert!(environ.contains("LOG_LEVEL=info"), "{environ:?}");
    assert!(
        environ.contains(&format!("CREDENTIALS_DIRECTORY=/run/credentials/{unit}")),
        "{environ:?}"
    );
    assert!(
        !environ.contains(&canary) && !environ.contains("k1"),
        "{environ:?}"
    );
    let store = format!("/run/bootagent/credentials/{name}");
    assert_eq!(
        container.sh(&format!("stat -c %a:%U {store} {store}/DB_PASSWORD")),
        "500:root\n400:root\n"
    );
    let drop_in = container.sh(&format!(
        "cat /run/systemd/system/{unit}.d/50-bootagent.conf"
    ));
    assert!(
        drop_in.contains(&format!("LoadCredential=DB_PASSWORD:{store}/DB_PASSWORD")),
        "{drop_in}"
    );
    // Every process of the unit: the main one and whatever it started (a short-lived child may
    // be gone by the time it is read; the main process may not).
    let pids = container.sh(&format!(
        "cat $(find /sys/fs/cgroup -path '*/{unit}/cgroup.procs' | head -n1)"
    ));
    let main_pid = container.show(&unit, "MainPID");
    assert!(pids.split_whitespace().any(|pid| pid == main_pid), "{pids}");
    for pid in pids.split_whitespace() {
        let environ = container.sh(&format!("tr '\\0' '\\n' < /proc/{pid}/environ || true"));
        assert!(
            pid != main_pid || environ.contains("LOG_LEVEL=info"),
            "{environ}"
        );
        assert!(!environ.contains(&canary), "process {pid}: {environ}");
    }

    // A rotation: refresh copies the new value into the running unit and reloads it.
    let pid = container.show(&unit, "MainPID");
    put_secret_value(
        &secret,
        &serde_json::json!({ "DB_PASSWORD": rotated, "API_KEY": "k1" }).to_string(),
    );
    container.sh("systemctl start bootagent-refresh.service");
    assert_eq!(
        container.show("bootagent-refresh.service", "Result"),
        "success"
    );
    eventually(10, "the service reads the rotated credential", || {
        read(&out.join("credentials")) == format!("API_KEY=k1\nDB_PASSWORD={rotated}\n1\n")
    });
    assert_eq!(
        container.show(&unit, "MainPID"),
        pid,
        "reloaded, not restarted"
    );
    let status: serde_json::Value =
        serde_json::from_str(&container.sh("cat /run/bootagent/status.json")).unwrap();
    assert_eq!(status["service"]["restarted"], false, "{status}");
    assert_eq!(status["service"]["applied"], serde_json::json!(["reload"]));
    let mount = container.sh(&format!("findmnt -n -o OPTIONS /run/credentials/{unit}"));
    assert!(mount.starts_with("ro,"), "sealed again: {mount}");

    for secret_value in [&canary, &rotated] {
        let found: Vec<String> = container
            .places_holding(secret_value, "", &out)
            .into_iter()
            .filter(|place| !place.starts_with(&store))
            .collect();
        assert!(found.is_empty(), "{secret_value} found in {found:?}");
    }
}

#[test]
fn in_exec_mode_the_credentials_are_the_service_users_own() {
    support::needs_world!();
    let canary = canary();
    let secret = serde_json::json!({ "DB_PASSWORD": canary, "PORT": "8080" }).to_string();
    let (name, _repo, imds) = service_with_secret("xcred", "test", &secret);
    let instance = Instance::exec_mode("");
    let out = instance.out.display().to_string();
    // The service, as nobody, reads its credential and records its environment.
    let command = serde_json::json!([
        "/bin/sh",
        "-c",
        format!(
            "cat \"$CREDENTIALS_DIRECTORY/DB_PASSWORD\" > {out}/credential && exec {} {out}",
            instance.root.path().join("recorder.sh").display()
        ),
    ]);
    instance.add_config(
        "60-credentials.toml",
        &format!("[secrets]\ndeliver = \"credentials\"\n\n[service]\ncommand = {command}\n"),
    );
    let run = instance.run(&imds, &["boot"]);
    run.expect(0);

    assert_eq!(instance.service_saw("credential"), canary);
    let store = instance.run.path().join("credentials").join(&name);
    let received = instance.service_env();
    assert_eq!(
        received["CREDENTIALS_DIRECTORY"],
        store.display().to_string()
    );
    assert!(!received.contains_key("DB_PASSWORD") && !received.contains_key("PORT"));
    assert!(
        !received.values().any(|value| value.contains(&canary)),
        "{received:?}"
    );
    use std::os::unix::fs::MetadataExt;
    for (path, mode) in [(store.clone(), 0o500), (store.join("DB_PASSWORD"), 0o400)] {
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (meta.mode() & 0o7777, meta.uid().to_string()),
            (mode, NOBODY_UID.to_string()),
            "{}",
            path.display()
        );
    }
    let env_file = std::fs::read_to_string(instance.env_file(&name)).unwrap();
    assert!(!env_file.contains(&canary), "{env_file}");
    instance.assert_no_canary(&canary, &run);
}

/// A self-signed certificate for 127.0.0.1 whose subject is `CN=<cn>`, and its key (PEM).
fn certificate(cn: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", &format!("/CN={cn}")])
        .arg("-keyout")
        .arg(dir.path().join("key.pem"))
        .arg("-out")
        .arg(dir.path().join("cert.pem"))
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    (
        read(&dir.path().join("cert.pem")),
        read(&dir.path().join("key.pem")),
    )
}

/// The subject of the certificate a TLS server on 127.0.0.1:`port` presents.
fn served_subject(port: u16) -> String {
    let shown = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} </dev/null 2>/dev/null \
             | openssl x509 -noout -subject"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&shown.stdout).trim().to_string()
}

#[test]
fn a_tls_service_gets_its_certificate_and_key_as_files_and_a_rotation_reloads_it() {
    support::needs_world!();
    let name = unique("tls");
    let repo = SampleRepo::create(&name);
    let (cert, key) = certificate("first");
    let tls = format!("{name}/tls");
    create_secret(
        &tls,
        &serde_json::json!({ "cert": cert, "key": key }).to_string(),
    );
    let imds = Imds::for_service(&name, "production", &repo.url);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = |ext: &str, field: &str| {
        format!(
            "[[files]]\npath = \"/run/tls/{{service}}.{ext}\"\nsecret = \"{{service}}/tls#{field}\"\n\
             group = \"www-data\"\nmode = \"0640\"\non_change = \"reload\"\n\n"
        )
    };
    let container = Container::boot_over(
        "ROOTFS_NGINX",
        &config(&format!(
            "[secrets]\nmain = \"\"\n\n{}{}",
            file("crt", "cert"),
            file("key", "key")
        ))
        .replace(
            "user = \"nobody\"",
            "user = \"root\"\nunit = \"nginx.service\"",
        ),
    );
    container.sh(&format!(
        "printf 'server {{\\n listen 127.0.0.1:{port} ssl;\\n ssl_certificate /run/tls/{name}.crt;\\n \
         ssl_certificate_key /run/tls/{name}.key;\\n}}\\n' > /etc/nginx/sites-enabled/default"
    ));
    // Under the shipped units' confinement (ProtectSystem=strict), as on an instance.
    container.install_shipped_units(&imds);
    container.sh("systemctl start bootagent-boot.service");
    assert_eq!(
        container.show("bootagent-boot.service", "Result"),
        "success"
    );
    assert_eq!(
        container.sh(&format!(
            "stat -c %a:%U:%G /run/tls/{name}.crt /run/tls/{name}.key"
        )),
        "640:root:www-data\n640:root:www-data\n"
    );
    assert_eq!(container.sh(&format!("cat /run/tls/{name}.key")), key);
    eventually(10, "nginx serves the first certificate", || {
        served_subject(port) == "subject=CN = first"
    });

    let pid = container.show("nginx.service", "MainPID");
    let (cert, rotated_key) = certificate("second");
    put_secret_value(
        &tls,
        &serde_json::json!({ "cert": cert, "key": rotated_key }).to_string(),
    );
    container.sh("systemctl start bootagent-refresh.service");
    assert_eq!(
        container.show("bootagent-refresh.service", "Result"),
        "success"
    );
    eventually(10, "nginx serves the rotated certificate", || {
        served_subject(port) == "subject=CN = second"
    });
    assert_eq!(
        container.show("nginx.service", "MainPID"),
        pid,
        "reloaded, not restarted"
    );
    let status: serde_json::Value =
        serde_json::from_str(&container.sh("cat /run/bootagent/status.json")).unwrap();
    assert_eq!(
        status["service"]["applied"],
        serde_json::json!(["reload"]),
        "{status}"
    );

    // The key's lines (without the armour) are in its file and nowhere else.
    for line in rotated_key.lines().filter(|l| !l.starts_with("-----")) {
        let found: Vec<String> = container
            .places_holding(
                line,
                &format!("/run/tls/{name}.key"),
                &container.out().join("out"),
            )
            .into_iter()
            .filter(|place| !place.starts_with("/run/tls/"))
            .collect();
        assert!(found.is_empty(), "part of the key in {found:?}");
    }
}

/// A service that takes its RELEASE from a file (by default its credential RELEASE) at start
/// and at each SIGHUP, records it, and exits when it says "crash".
const RELEASE_APP: &str = r#"#!/bin/sh
out=$1
file=${2:-$CREDENTIALS_DIRECTORY/RELEASE}
check() {
    release=$(cat "$file")
    echo "$release" > "$out/release"
    [ "$release" != crash ] || exit 3
}
trap check HUP
check
while true; do sleep 0.1; done
"#;

#[test]
fn credentials_that_break_the_service_on_reload_are_rolled_back_with_a_restart() {
    support::needs_world!();
    let InContainer {
        name,
        secret,
        imds,
        container,
    } = in_container(
        "credback",
        "_env_stage",
        r#"{"RELEASE": "one"}"#,
        "staging",
        "[secrets]\ndeliver = \"credentials\"\non_change = \"reload\"\n",
    );
    container.install_shipped_units(&imds);
    share_script(&container, "release-app.sh", RELEASE_APP);
    let unit = format!("{name}.service");
    container.install_unit(
        &unit,
        "ExecStart=/share/release-app.sh /share/out\\nExecReload=/bin/sh -c \"kill -HUP $MAINPID\"",
    );
    container.bootagent(&imds, &["boot"]).expect(0);
    let out = container.out().join("out");
    assert_eq!(read(&out.join("release")), "one\n");

    let crashing = put_secret_value(&secret, r#"{"RELEASE": "crash"}"#);
    container
        .bootagent(&imds, &["refresh", "--now"])
        .expect(16)
        .stderr_has("applying new secrets without a restart")
        .stderr_has(&format!("rolled back the new versions of {secret}"));
    eventually(10, "the service runs with the credentials before", || {
        read(&out.join("release")) == "one\n" && container.show(&unit, "ActiveState") == "active"
    });
    assert_eq!(
        container.sh(&format!("cat /run/bootagent/credentials/{name}/RELEASE")),
        "one"
    );
    let record: serde_json::Value =
        serde_json::from_str(&container.sh("cat /var/lib/bootagent/deploys.json")).unwrap();
    assert_eq!(
        record["failed_secrets"]["versions"][0]["version_id"],
        crashing.as_str()
    );
}

/// A service that reads /run/NAME/release, a secret file from the secret NAME/release ("one")
/// with `on_change = "signal:SIGHUP"`, under the shipped units, booted once.
struct ReleaseFile {
    name: String,
    secret: String,
    imds: Imds,
    container: Container,
    unit: String,
    out: std::path::PathBuf,
}

impl ReleaseFile {
    fn booted(prefix: &str) -> ReleaseFile {
        // The file's secret is the one in_container makes: NAME/release.
        let InContainer {
            name,
            secret,
            imds,
            container,
        } = in_container(
            prefix,
            "/release",
            "one",
            "staging",
            "[secrets]\nmain = \"\"\n\n[[files]]\npath = \"/run/{service}/release\"\n\
             secret = \"{service}/release\"\nmode = \"0644\"\non_change = \"signal:SIGHUP\"\n",
        );
        container.install_shipped_units(&imds);
        share_script(&container, "release-app.sh", RELEASE_APP);
        let unit = format!("{name}.service");
        container.install_unit(
            &unit,
            &format!("ExecStart=/share/release-app.sh /share/out /run/{name}/release"),
        );
        container.bootagent(&imds, &["boot"]).expect(0);
        let out = container.out().join("out");
        assert_eq!(read(&out.join("release")), "one\n");
        ReleaseFile {
            name,
            secret,
            imds,
            container,
            unit,
            out,
        }
    }
}

#[test]
fn a_secret_file_that_breaks_the_service_on_reload_is_rolled_back_with_a_restart() {
    support::needs_world!();
    let ReleaseFile {
        name,
        secret,
        imds,
        container,
        unit,
        out,
    } = ReleaseFile::booted("fileback");
    let pid = container.show(&unit, "MainPID");

    // A signal alone delivers a good version: the same process reads the new file.
    put_secret_value(&secret, "two");
    container.bootagent(&imds, &["refresh", "--now"]).expect(0);
    eventually(10, "the service reads the new file", || {
        read(&out.join("release")) == "two\n"
    });
    assert_eq!(
        container.show(&unit, "MainPID"),
        pid,
        "signalled, not restarted"
    );

    let crashing = put_secret_value(&secret, "crash");
    container
        .bootagent(&imds, &["refresh", "--now"])
        .expect(16)
        .stderr_has("applying new secrets without a restart")
        .stderr_has(&format!("rolled back the new versions of {secret}"));
    eventually(10, "the service runs with the file before", || {
        read(&out.join("release")) == "two\n" && container.show(&unit, "ActiveState") == "active"
    });
    assert_eq!(container.sh(&format!("cat /run/{name}/release")), "two");
    let record: serde_json::Value =
        serde_json::from_str(&container.sh("cat /var/lib/bootagent/deploys.json")).unwrap();
    assert_eq!(
        record["failed_secrets"]["versions"][0]["version_id"],
        crashing.as_str()
    );
}

/// `bootagent doctor --json`'s `delivered` check, run in `container`.
fn delivered_check(container: &Container, imds: &Imds) -> serde_json::Value {
    let run = container.bootagent(imds, &["doctor", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    (report["checks"].as_array().unwrap().iter())
        .find(|check| check["name"] == "delivered")
        .cloned()
        .unwrap_or_else(|| panic!("no delivered check in {report}"))
}

#[test]
fn status_and_doctor_name_what_is_delivered_and_what_is_stale_never_a_value() {
    support::needs_world!();
    let (canary, rotated) = (canary(), canary());
    let InContainer {
        name,
        secret,
        imds,
        container,
    } = in_container(
        "credstale",
        "_env_prod",
        &serde_json::json!({ "DB_PASSWORD": canary }).to_string(),
        "production",
        "[secrets]\ndeliver = \"credentials\"\non_change = \"none\"\n\n[[files]]\n\
         path = \"/run/{service}/db.conf\"\ntemplate = \"password={{ secrets.DB_PASSWORD }}\"\n\
         group = \"nogroup\"\nmode = \"0640\"\non_change = \"none\"\n",
    );
    // Without bootagent-credentials@.service, new credentials cannot reach the running unit.
    share_script(&container, "credentials-app.sh", CREDENTIALS_APP);
    let unit = format!("{name}.service");
    container.install_unit(&unit, "ExecStart=/share/credentials-app.sh /share/out");
    container.bootagent(&imds, &["boot"]).expect(0);

    let status = container.bootagent(&imds, &["status"]);
    status.expect(0);
    for line in [
        format!("credentials: 1 in /run/bootagent/credentials/{name} (new values): DB_PASSWORD"),
        format!("file:     /run/{name}/db.conf 0640 root:nogroup (written)"),
    ] {
        assert!(
            status.stdout().contains(&line),
            "{line:?} not in:\n{}",
            status.stdout()
        );
    }
    let check = delivered_check(&container, &imds);
    assert_eq!(check["verdict"], "ok", "{check}");
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("{unit} holds them as written")),
        "{check}"
    );

    // on_change = "none": the store and the file change, the running unit keeps what it has.
    let pid = container.show(&unit, "MainPID");
    put_secret_value(
        &secret,
        &serde_json::json!({ "DB_PASSWORD": rotated }).to_string(),
    );
    let refresh = container.bootagent(&imds, &["refresh", "--now"]);
    refresh
        .expect(0)
        .stderr_has("the unit keeps its credentials from before");
    assert_eq!(container.show(&unit, "MainPID"), pid);
    assert_eq!(
        container.sh(&format!("cat /run/{name}/db.conf")),
        format!("password={rotated}")
    );
    let check = delivered_check(&container, &imds);
    assert_eq!(check["verdict"], "warn", "{check}");
    let detail = check["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("{unit} runs with older values of DB_PASSWORD")),
        "{check}"
    );

    // A file changed by hand is named with what the config says.
    container.sh(&format!("chmod 0644 /run/{name}/db.conf"));
    let check = delivered_check(&container, &imds);
    assert_eq!(check["verdict"], "fail", "{check}");
    assert!(
        check["detail"].as_str().unwrap().contains(&format!(
            "/run/{name}/db.conf is 0644 root:nogroup; files[0] says 0640 root:nogroup"
        )),
        "{check}"
    );
    let doctor = container.bootagent(&imds, &["doctor"]);
    for secret_value in [&canary, &rotated] {
        assert_no_canary(
            secret_value,
            &[
                ("status", &status.stdout()),
                ("doctor", &doctor.stdout()),
                ("doctor's stderr", &doctor.stderr()),
                ("refresh", &refresh.stderr()),
                ("check", &check.to_string()),
            ],
        );
    }
}

#[test]
fn env_diff_names_the_files_an_environment_cannot_fill_and_how_variables_are_delivered() {
    support::needs_world!();
    let name = unique("filediff");
    let canary = canary();
    create_secret(
        &format!("{name}_env_stage"),
        &serde_json::json!({ "DB_PASSWORD": canary, "TLS_PIN": canary }).to_string(),
    );
    create_secret(
        &format!("{name}_env_prod"),
        &serde_json::json!({ "DB_PASSWORD": canary }).to_string(),
    );
    let instance = Instance::exec_mode(
        "[paths]\nfile_roots = [\"/dev/shm\"]\n\n[secrets]\ndeliver = \"both\"\n\n[[files]]\npath = \"/dev/shm/{service}-pin\"\n\
         template = \"{{ secrets.TLS_PIN }}\"\n",
    );
    let imds = Imds::with_tags(&[("Service", &name), ("Environment", "test")]);
    let run = instance.run(&imds, &["env", "diff", "stage", "prod"]);
    run.expect(11);
    assert_eq!(
        run.stdout(),
        format!(
            "service {name}: 1 variable(s) in both stage and prod (delivered as both)\n\
             only in stage: TLS_PIN\nonly in prod: -\n\
             prod: /dev/shm/{name}-pin (files[0].template) uses secrets.TLS_PIN, which no \
             secret variable defines; add it to the secrets, or fix files[0].template\n"
        )
    );
    instance.assert_no_canary(&canary, &run);
}

#[test]
fn a_refresh_killed_after_writing_a_file_still_applies_its_on_change_later() {
    // The file is written, then the refresh dies (power loss, OOM, the boot deadline) before it
    // signals the unit. status.json already names the new version and the file is as the secret
    // says, so only the marker the boot left tells the next refresh that the unit lacks it.
    support::needs_world!();
    let ReleaseFile {
        name,
        secret,
        imds,
        container,
        unit: _,
        out,
    } = ReleaseFile::booted("filekill");

    put_secret_value(&secret, "two");
    container.bootagent_with(
        &imds,
        &["BOOTAGENT_FAILPOINT=after-env_file"],
        &["refresh", "--now"],
    );
    assert_eq!(container.sh(&format!("cat /run/{name}/release")), "two");
    container.bootagent(&imds, &["refresh", "--now"]).expect(0);
    container.bootagent(&imds, &["boot"]).expect(0);
    eventually(10, "the service is told to read the new file", || {
        read(&out.join("release")) == "two\n"
    });
}

#[test]
fn with_on_change_none_new_credentials_reach_the_running_unit_untouched() {
    support::needs_world!();
    let InContainer {
        name,
        secret,
        imds,
        container,
    } = in_container(
        "credquiet",
        "_env_prod",
        r#"{"TOKEN": "first"}"#,
        "production",
        "[secrets]\ndeliver = \"credentials\"\non_change = \"none\"\n",
    );
    container.install_shipped_units(&imds);
    share_script(&container, "credentials-app.sh", CREDENTIALS_APP);
    let unit = format!("{name}.service");
    container.install_unit(&unit, "ExecStart=/share/credentials-app.sh /share/out");
    container.bootagent(&imds, &["boot"]).expect(0);
    let pid = container.show(&unit, "MainPID");

    put_secret_value(&secret, r#"{"TOKEN": "second"}"#);
    container.bootagent(&imds, &["refresh", "--now"]).expect(0);
    assert_eq!(container.show(&unit, "MainPID"), pid, "not restarted");
    // What the service reads by itself, when it reads it again.
    assert_eq!(
        container.sh(&format!("cat /run/credentials/{unit}/TOKEN")),
        "second"
    );
    let status: serde_json::Value =
        serde_json::from_str(&container.sh("cat /run/bootagent/status.json")).unwrap();
    assert_eq!(status["service"]["restarted"], false, "{status}");
    assert!(status["service"].get("applied").is_none(), "{status}");
    assert_eq!(delivered_check(&container, &imds)["verdict"], "ok");
}
