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

#[test]
fn credentials_reach_the_service_in_its_credentials_directory_never_its_environment() {
    support::needs_world!();
    let name = unique("cred");
    let repo = SampleRepo::create(&name);
    let (canary, rotated) = (canary(), canary());
    let secret = format!("{name}_env_prod");
    create_secret(
        &secret,
        &serde_json::json!({ "DB_PASSWORD": canary, "API_KEY": "k1" }).to_string(),
    );
    let imds = Imds::for_service(&name, "production", &repo.url);
    let container = Container::boot(&config(
        "[secrets]\ndeliver = \"credentials\"\non_change = \"reload\"\n\n[env.all]\nLOG_LEVEL = \"info\"\n",
    ));
    container.install_shipped_units(&imds);
    let app = container.out().join("credentials-app.sh");
    std::fs::write(&app, CREDENTIALS_APP).unwrap();
    let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&app, executable).unwrap();
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
    // Every process of the unit: the main one and whatever it started.
    let pids = container.sh(&format!(
        "cat $(find /sys/fs/cgroup -path '*/{unit}/cgroup.procs' | head -n1)"
    ));
    assert!(!pids.trim().is_empty(), "the unit has processes");
    for pid in pids.split_whitespace() {
        let environ = container.sh(&format!("tr '\\0' '\\n' < /proc/{pid}/environ"));
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
