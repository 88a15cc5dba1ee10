//! A real sshd serving git over ssh, with its own host key.

use crate::*;

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
