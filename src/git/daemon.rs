//! git:// remotes (git daemon) on a plain socket, as libgit2's own transport speaks them, but with
//! every wait bounded by the session's limits: libgit2's socket would keep a remote that sends a
//! byte at a time going past any deadline.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream};

use super::session::{fetch_program, Failure, Session};
use crate::remote::DaemonAddress;

/// The request git daemon expects first at `address`: one pkt-line naming the service, the path and the
/// host.
fn request(address: &DaemonAddress, program: &str) -> Vec<u8> {
    let body = format!("{program} {}\0host={}\0", address.path, address.authority);
    let mut line = format!("{:04x}", body.len() + 4).into_bytes();
    line.extend_from_slice(body.as_bytes());
    line
}

pub(super) struct DaemonSubtransport {
    session: Arc<Session>,
}

impl DaemonSubtransport {
    pub fn new(session: Arc<Session>) -> DaemonSubtransport {
        DaemonSubtransport { session }
    }

    fn connect(&self, remote: &DaemonAddress) -> io::Result<TcpStream> {
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
        _url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
        let program = fetch_program(action)?;
        // libgit2's `_url` is the session's remote, which was parsed when the plan was built.
        let remote = self.session.remote.daemon_address().map_err(|e| {
            self.session
                .refuse(Failure::Unusable(format!("not a usable git:// URL: {e}")))
        })?;
        let socket = self
            .connect(remote)
            .map_err(|e| git2::Error::from_str(&e.to_string()))?;
        let mut stream = DaemonStream {
            socket,
            session: self.session.clone(),
        };
        stream
            .write_all(&request(remote, program))
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
        acknowledge_at_once(&self.socket);
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

/// Asks the kernel to acknowledge what arrives next at once rather than after its delayed-ACK
/// timer (Linux only, and only until it decides otherwise: hence before every read). git daemon
/// sends its shallow list and the flush after it as two small writes and leaves Nagle's algorithm
/// on, so the flush waits for the acknowledgement of the list: 40 ms of every shallow fetch was
/// that wait. The option is an optimisation only: a socket that refuses it is read as it is.
fn acknowledge_at_once(socket: &TcpStream) {
    let on: libc::c_int = 1;
    // SAFETY: the descriptor is the open socket `socket` borrows, and the option's value is a
    // c_int that lives across the call, with its size given.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
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
    fn the_first_request_names_the_program_the_path_and_the_host() {
        let remote = crate::remote::Remote::parse("git://example.com:9000/org/app.git");
        assert_eq!(
            request(remote.daemon_address().unwrap(), "git-upload-pack"),
            b"0037git-upload-pack /org/app.git\0host=example.com:9000\0".to_vec()
        );
    }
}
