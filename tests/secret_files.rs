//! Secret files (`[[files]]`) from a real boot in exec mode, against moto: a TLS certificate
//! and key from one JSON secret, and a template over the secret variables and the identity,
//! each with its owner, group and mode. The failures (an unknown variable, an unknown owner, a
//! path outside the roots, a disk path) are rows of the fault matrix (tests/faults.rs).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use support::*;

/// Owner uid, group gid and permission bits of `path`.
fn owned(path: &Path) -> (u32, u32, u32) {
    let meta = std::fs::metadata(path).unwrap();
    (meta.uid(), meta.gid(), meta.mode() & 0o7777)
}

#[test]
fn a_boot_writes_a_tls_certificate_and_key_from_one_secret_and_a_template() {
    support::needs_world!();
    let (key_canary, password) = (canary(), canary());
    let cert = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ\n-----END CERTIFICATE-----\n";
    // CRLF, a template's braces and a trailing newline: all must arrive as they are.
    let key = format!(
        "-----BEGIN PRIVATE KEY-----\r\n{key_canary}{{{{ secrets.PORT }}}}\r\n-----END PRIVATE \
         KEY-----\n"
    );
    let secret = serde_json::json!({ "DB_PASSWORD": password, "PORT": 8443 });
    let (name, _repo, imds) = service_with_secret("tls", "prod", &secret.to_string());
    let tls_secret = serde_json::json!({ "cert": cert, "key": key });
    create_secret(&format!("{name}/tls"), &tls_secret.to_string());
    let instance = Instance::exec_mode("");
    let run_dir = instance.run.path().to_path_buf();
    instance.add_config(
        "20-files.toml",
        &format!(
            r#"[paths]
file_roots = ["{run}"]

[[files]]
path = "{run}/tls/{{service}}.crt"
secret = "{{service}}/tls#cert"
owner = "nobody"
group = "nogroup"
mode = "0444"

[[files]]
path = "{run}/tls/{{service}}.key"
secret = "{{service}}/tls#key"
owner = "nobody"
group = "nogroup"
mode = "0400"
on_change = "reload"

[[files]]
path = "{run}/app/{{service}}.conf"
template = "password={{{{ secrets.DB_PASSWORD }}}}\nlisten={{{{ secrets.PORT }}}} as {{{{ service }}}} in {{{{ env }}}}\n"
mode = "0640"
"#,
            run = run_dir.display()
        ),
    );
    let run = instance.run(&imds, &["boot"]);
    run.expect(0);

    let cert_path = run_dir.join(format!("tls/{name}.crt"));
    let key_path = run_dir.join(format!("tls/{name}.key"));
    let conf_path = run_dir.join(format!("app/{name}.conf"));
    assert_eq!(std::fs::read(&cert_path).unwrap(), cert.as_bytes());
    assert_eq!(std::fs::read(&key_path).unwrap(), key.as_bytes());
    assert_eq!(
        std::fs::read_to_string(&conf_path).unwrap(),
        format!("password={password}\nlisten=8443 as {name} in prod\n")
    );
    assert_eq!(owned(&cert_path), (65534, 65534, 0o444));
    assert_eq!(owned(&key_path), (65534, 65534, 0o400));
    assert_eq!(owned(&conf_path), (0, 0, 0o640));
    assert_eq!(owned(&run_dir.join("tls")), (0, 0, 0o755));

    // The key's secret is no variable: it reaches neither the env file nor the service's
    // environment, and no output, status.json, history or other file holds it.
    let received = instance.service_env();
    assert!(!received.values().any(|value| value.contains(&key_canary)));
    assert!(!received.contains_key("cert") && !received.contains_key("key"));
    instance.assert_no_canary(&key_canary, &run);
    let mut elsewhere = [
        files_containing(instance.root.path(), &key_canary),
        files_containing(&run_dir, &key_canary),
    ]
    .concat();
    elsewhere.retain(|path| *path != key_path);
    assert!(elsewhere.is_empty(), "the key is also in {elsewhere:?}");
    let mut password_in = instance.files_holding(&password, &name);
    password_in.retain(|path| *path != conf_path);
    assert!(
        password_in.is_empty(),
        "the password is also in {password_in:?}"
    );

    // The plan shows the files, never what they hold; the secret's version is recorded.
    let plan = instance.run(&imds, &["plan"]);
    plan.expect(0);
    let shown: serde_json::Value = serde_json::from_str(&plan.stdout()).unwrap();
    assert_eq!(shown["files"][1]["path"], key_path.display().to_string());
    assert_eq!(shown["files"][1]["mode"], "0400");
    assert_eq!(shown["files"][1]["on_change"], "reload");
    assert!(!plan.stdout().contains(&key_canary) && !plan.stdout().contains(&password));
    let versions = instance.status()["secrets"].to_string();
    assert!(versions.contains(&format!("{name}/tls")), "{versions}");

    // Unchanged, a second boot leaves every file as it is (the same inode).
    let inodes = |paths: &[&PathBuf]| -> Vec<u64> {
        paths
            .iter()
            .map(|path| std::fs::metadata(path).unwrap().ino())
            .collect()
    };
    let before = inodes(&[&cert_path, &key_path, &conf_path]);
    instance.run(&imds, &["boot"]).expect(0);
    assert_eq!(inodes(&[&cert_path, &key_path, &conf_path]), before);
}
