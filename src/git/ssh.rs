//! ssh:// remotes (and scp-like `user@host:path`) through the system's OpenSSH client, the way
//! git itself fetches over SSH: libgit2 speaks the git protocol over the pipes of an `ssh` child.
//! So no SSH code or second crypto stack lives in this binary. `ssh` is told everything from
//! bootagent's config and nothing else: `-F /dev/null` keeps the user's and the system's
//! ssh_config out, the deploy key is the only identity offered, and host keys come only from
//! `git.known_hosts`, checked strictly: an unknown or changed host key is refused.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream};

use super::session::{fetch_program, lock, Failure, Options, Session};
use crate::remote::SshAddress;

/// What ssh printed, as a [`Failure`]: the last lines say why. ssh is given `timeout`
/// (git.timeout) as its ConnectTimeout, which also bounds the banner exchange: when it fires
/// first, the remote did not answer within git.timeout, as when bootagent's own wait does.
fn classify(stderr: &str, timeout: Duration) -> Failure {
    let summary = summarize(stderr);
    // A refused host key is told first, whatever else ssh printed.
    if stderr.contains("Host key verification failed") {
        Failure::HostKey(summary)
    } else if stderr.contains("Permission denied") {
        Failure::Denied(summary)
    } else if stderr.contains("Connection timed out") {
        Failure::silent(timeout)
    } else {
        Failure::Unreachable(summary)
    }
}

/// The last lines of what ssh printed, without the banner of `@` lines it frames warnings with.
fn summarize(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('@'))
        .collect();
    let joined = lines[lines.len().saturating_sub(2)..].join(" ");
    // The message goes on after it, so it ends without ssh's final full stop.
    let summary = joined.trim_end_matches('.');
    if summary.is_empty() {
        "ssh exited without saying why".to_string()
    } else {
        summary.to_string()
    }
}

/// The command the remote's login shell runs, the path quoted as git quotes it (`!` too, for
/// csh).
fn remote_command(address: &SshAddress, program: &str) -> String {
    let mut quoted = String::from("'");
    for c in address.path.chars() {
        match c {
            '\'' | '!' => {
                quoted.push_str("'\\");
                quoted.push(c);
                quoted.push('\'');
            }
            c => quoted.push(c),
        }
    }
    quoted.push('\'');
    format!("{program} {quoted}")
}

/// The ssh command line that runs `program` at `address`, told only what `options` say.
fn command(address: &SshAddress, options: &Options, program: &str) -> Command {
    let seconds = options.timeout.as_secs().max(1);
    let mut command = Command::new("ssh");
    command.args(["-F", "/dev/null", "-T", "-x"]);
    let mut settings = vec![
        "BatchMode=yes".to_string(),
        "StrictHostKeyChecking=yes".to_string(),
        format!("UserKnownHostsFile={}", options.known_hosts.display()),
        "GlobalKnownHostsFile=/dev/null".to_string(),
        "UpdateHostKeys=no".to_string(),
        format!("ConnectTimeout={seconds}"),
        format!("ServerAliveInterval={}", seconds.div_ceil(3)),
        "ServerAliveCountMax=3".to_string(),
        "LogLevel=ERROR".to_string(),
    ];
    if let Some(identity) = &options.identity {
        settings.extend([
            format!("IdentityFile={}", identity.display()),
            "IdentitiesOnly=yes".to_string(),
            "IdentityAgent=none".to_string(),
        ]);
    }
    for setting in settings {
        command.arg("-o").arg(setting);
    }
    if let Some(port) = address.port {
        command.arg("-p").arg(port.to_string());
    }
    if let Some(user) = &address.user {
        command.arg("-l").arg(user);
    }
    command
        .arg("--")
        .arg(&address.host)
        .arg(remote_command(address, program))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Whether a path can be handed to ssh as an option value: ssh splits values at whitespace,
/// takes quotes as quoting and expands `%` tokens.
pub fn fits_ssh_option(path: &Path) -> bool {
    let text = path.to_string_lossy();
    !text.is_empty()
        && !text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '%'))
}

pub(super) struct SshSubtransport {
    session: Arc<Session>,
    child: Mutex<Option<Arc<Mutex<Child>>>>,
}

impl SshSubtransport {
    pub fn new(session: Arc<Session>) -> SshSubtransport {
        SshSubtransport {
            session,
            child: Mutex::new(None),
        }
    }
}

impl SmartSubtransport for SshSubtransport {
    fn action(
        &self,
        _url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
        let program = fetch_program(action)?;
        let refuse = |message: String| self.session.refuse(Failure::Unusable(message));
        // libgit2's `_url` is the session's remote, which was parsed when the plan was built.
        let address = (self.session.remote.ssh_address())
            .map_err(|e| refuse(format!("not a usable ssh URL: {e}")))?;
        let mut child = command(address, &self.session.options, program)
            .spawn()
            .map_err(|e| {
                refuse(format!(
                    "cannot run ssh ({e}): ssh:// remotes need the OpenSSH client installed"
                ))
            })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(git2::Error::from_str("ssh started without its pipes"));
        };
        let stderr = collect(stderr);
        let child = Arc::new(Mutex::new(child));
        *lock(&self.child) = Some(child.clone());
        Ok(Box::new(SshStream {
            stdin,
            stdout,
            stderr: Some(stderr),
            child,
            session: self.session.clone(),
        }))
    }

    fn close(&self) -> Result<(), git2::Error> {
        if let Some(child) = lock(&self.child).take() {
            end(&mut lock(&child), CLOSE_GRACE);
        }
        Ok(())
    }
}

impl Drop for SshSubtransport {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// How long a finished ssh gets to exit by itself before it is killed.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Waits up to `grace` for `child` to exit, then kills it; reaps it either way.
fn end(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// What ssh prints, kept (up to a bound) by a thread so ssh never blocks on a full pipe.
type Collected = std::thread::JoinHandle<String>;

fn collect(mut stderr: std::process::ChildStderr) -> Collected {
    std::thread::spawn(move || {
        const KEEP: usize = 16 * 1024;
        let mut kept = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut chunk) {
            if n == 0 {
                break;
            }
            let room = KEEP.saturating_sub(kept.len()).min(n);
            kept.extend_from_slice(&chunk[..room]);
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

struct SshStream {
    stdin: ChildStdin,
    stdout: ChildStdout,
    stderr: Option<Collected>,
    child: Arc<Mutex<Child>>,
    session: Arc<Session>,
}

impl SshStream {
    /// Once the pipe ended or broke: ssh's own reason when it exited with one, recorded for the
    /// session.
    fn ssh_failure(&mut self) -> Option<io::Error> {
        let status = end(&mut lock(&self.child), CLOSE_GRACE);
        if status.is_some_and(|status| status.success()) {
            return None;
        }
        let said = self.stderr.take()?.join().unwrap_or_default();
        Some(
            self.session
                .fail(classify(&said, self.session.options.timeout)),
        )
    }
}

impl Read for SshStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use nix::poll::{PollFd, PollFlags, PollTimeout};
        let wait = self.session.wait_limit().inspect_err(|_| {
            let _ = lock(&self.child).kill();
        })?;
        let limit = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
        let ready = loop {
            let mut fds = [PollFd::new(self.stdout.as_fd(), PollFlags::POLLIN)];
            match nix::poll::poll(&mut fds, limit) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other.map_err(io::Error::from)?,
            }
        };
        if ready == 0 {
            let _ = lock(&self.child).kill();
            return Err(self.session.waited_in_vain());
        }
        match self.stdout.read(buf) {
            Ok(0) if !buf.is_empty() => self.ssh_failure().map_or(Ok(0), Err),
            Ok(n) => Ok(n),
            Err(e) => Err(self.ssh_failure().unwrap_or(e)),
        }
    }
}

impl Write for SshStream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.stdin
            .write(data)
            .map_err(|e| self.ssh_failure().unwrap_or(e))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stdin.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remote_path_is_quoted_for_the_login_shell() {
        let tricky = SshAddress {
            user: None,
            host: "h".into(),
            port: None,
            path: "/srv/it's here!.git".into(),
        };
        assert_eq!(
            remote_command(&tricky, "git-upload-pack"),
            r"git-upload-pack '/srv/it'\''s here'\!'.git'"
        );
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn ssh_failures_are_classified_and_summarized() {
        let changed = "@@@@@@@\n@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @\n@@@@@@@\n\
                       IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\n\
                       Host key for [127.0.0.1]:2299 has changed and you have requested strict \
                       checking.\nHost key verification failed.\n";
        assert_eq!(
            classify(changed, SECOND),
            Failure::HostKey(
                "Host key for [127.0.0.1]:2299 has changed and you have requested strict \
                 checking. Host key verification failed"
                    .into()
            )
        );
        assert!(matches!(
            classify("git@h: Permission denied (publickey).\n", SECOND),
            Failure::Denied(_)
        ));
        assert_eq!(
            classify("", SECOND),
            Failure::Unreachable("ssh exited without saying why".into())
        );
        // ssh's ConnectTimeout is git.timeout: its own timeout says what bootagent's would.
        for timed_out in [
            "Connection timed out during banner exchange\nConnection to 127.0.0.1 port 2299 timed out\n",
            "ssh: connect to host 10.0.0.9 port 22: Connection timed out\n",
        ] {
            assert_eq!(
                classify(timed_out, SECOND),
                Failure::Unreachable("the remote did not answer within 1s (git.timeout)".into())
            );
        }
    }

    #[test]
    fn paths_ssh_would_split_or_expand_do_not_fit_an_option() {
        assert!(fits_ssh_option(Path::new("/etc/bootagent/known_hosts")));
        for bad in ["/etc/known hosts", "/etc/%h", "/etc/\"x", ""] {
            assert!(!fits_ssh_option(Path::new(bad)), "{bad}");
        }
    }
}
