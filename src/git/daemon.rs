//! git:// remotes (git daemon) on a plain socket, as libgit2's own transport speaks them, but with
//! every wait bounded by the session's limits: libgit2's socket would keep a remote that sends a
//! byte at a time going past any deadline.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;

use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream};

use super::session::{fetch_program, Failure, Session};

/// The port git daemon listens on unless the URL names another.
const DEFAULT_PORT: u16 = 9418;

/// Where a git:// remote is: `git://host[:port]/path`.
#[derive(Debug, PartialEq, Eq)]
struct DaemonRemote {
    /// As written in the URL (`[::1]` keeps its brackets), for the request's `host=`.
    authority: String,
    host: String,
    port: u16,
    path: String,
}

impl DaemonRemote {
    fn parse(url: &str) -> Result<DaemonRemote, String> {
        let rest = url.strip_prefix("git://").ok_or("not a git:// URL")?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (
                host,
                port.parse()
                    .map_err(|_| format!("{port:?} is not a port number"))?,
            ),
            _ => (authority, DEFAULT_PORT),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || path.len() < 2 {
            return Err("a git:// URL needs a host and a path".into());
        }
        if path.contains('\0') || authority.contains('\0') {
            return Err("a NUL in a git:// URL is refused".into());
        }
        Ok(DaemonRemote {
            authority: authority.to_string(),
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    /// The request git daemon expects first: one pkt-line naming the service, the path and the
    /// host.
    fn request(&self, program: &str) -> Vec<u8> {
        let body = format!("{program} {}\0host={}\0", self.path, self.authority);
        let mut line = format!("{:04x}", body.len() + 4).into_bytes();
        line.extend_from_slice(body.as_bytes());
        line
    }
}

pub(super) struct DaemonSubtransport {
    session: Arc<Session>,
}

impl DaemonSubtransport {
    pub fn new(session: Arc<Session>) -> DaemonSubtransport {
        DaemonSubtransport { session }
    }

    fn connect(&self, remote: &DaemonRemote) -> io::Result<TcpStream> {
        let addresses = (remote.host.as_str(), remote.port)
            .to_socket_addrs()
            .map_err(|e| {
                self.session.fail(Failure::Unreachable(format!(
                    "cannot resolve {}: {e}",
                    remote.host
                )))
            })?;
        let mut last = None;
        for address in addresses {
            let limit = self.session.wait_limit()?;
            match TcpStream::connect_timeout(&address, limit) {
                Ok(socket) => return Ok(socket),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    last = Some(self.session.waited_in_vain())
                }
                Err(e) => last = Some(self.session.fail(Failure::Unreachable(e.to_string()))),
            }
        }
        Err(last.unwrap_or_else(|| {
            self.session.fail(Failure::Unreachable(format!(
                "{} has no address",
                remote.host
            )))
        }))
    }
}

impl SmartSubtransport for DaemonSubtransport {
    /// Called for the ref listing only: the transport is stateful, so libgit2 (through git2)
    /// goes on with the same stream for the fetch.
    fn action(
        &self,
        url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
        let program = fetch_program(action)?;
        let remote = DaemonRemote::parse(url).map_err(|e| {
            self.session
                .refuse(Failure::Unusable(format!("not a usable git:// URL: {e}")))
        })?;
        let socket = self
            .connect(&remote)
            .map_err(|e| git2::Error::from_str(&e.to_string()))?;
        let mut stream = DaemonStream {
            socket,
            session: self.session.clone(),
        };
        stream
            .write_all(&remote.request(program))
            .map_err(|e| git2::Error::from_str(&e.to_string()))?;
        Ok(Box::new(stream))
    }

    fn close(&self) -> Result<(), git2::Error> {
        Ok(())
    }
}

struct DaemonStream {
    socket: TcpStream,
    session: Arc<Session>,
}

impl Read for DaemonStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let limit = self.session.wait_limit()?;
        self.socket.set_read_timeout(Some(limit))?;
        match self.socket.read(buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(self.session.waited_in_vain())
            }
            Err(e) => Err(self.session.fail(Failure::Unreachable(e.to_string()))),
            Ok(n) => Ok(n),
        }
    }
}

impl Write for DaemonStream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let limit = self.session.wait_limit()?;
        self.socket.set_write_timeout(Some(limit))?;
        self.socket
            .write(data)
            .map_err(|e| self.session.fail(Failure::Unreachable(e.to_string())))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.socket.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_urls_name_host_port_and_path() {
        let remote = DaemonRemote::parse("git://example.com:9000/org/app.git").unwrap();
        assert_eq!(
            remote,
            DaemonRemote {
                authority: "example.com:9000".into(),
                host: "example.com".into(),
                port: 9000,
                path: "/org/app.git".into(),
            }
        );
        assert_eq!(
            remote.request("git-upload-pack"),
            b"0037git-upload-pack /org/app.git\0host=example.com:9000\0".to_vec()
        );
        let v6 = DaemonRemote::parse("git://[::1]/app.git").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", DEFAULT_PORT));
        for bad in [
            "git://host",
            "git:///app.git",
            "git://h:x/app.git",
            "http://h/a.git",
        ] {
            assert!(DaemonRemote::parse(bad).is_err(), "{bad}");
        }
    }
}
