//! Real network faults: a network namespace whose only way out is one veth pair per server it
//! may reach, each ending at a relay on the host side that forwards to the server on loopback.
//! What a link does to packets is set with `tc` (tbf) and routes on that link alone.
//!
//! This machine's kernel has no `netem` (delay, loss) and no tc classifiers or actions; `tbf`
//! and routes are what it has: a slow link, packets silently dropped (a bucket too small for
//! any packet), and a host that cannot be routed to.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Removed, with its links, when dropped.
pub struct NetNs {
    name: String,
}

/// A server as the namespace reaches it.
pub struct Peer {
    /// `address:port` inside the namespace.
    pub address: String,
    host_device: String,
    namespace_device: String,
}

static LINKS: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().unwrap();
    assert!(status.success(), "ip {}", args.join(" "));
}

impl NetNs {
    pub fn create() -> NetNs {
        let name = super::unique("bans");
        ip(&["netns", "add", &name]);
        let netns = NetNs { name };
        netns.inside(&["ip", "link", "set", "lo", "up"]);
        netns
    }

    /// Runs `argv` inside the namespace.
    fn inside(&self, argv: &[&str]) {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(argv);
        ip(&args);
    }

    /// The command prefix that runs a program inside.
    pub fn exec_prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .map(str::to_string)
            .to_vec()
    }

    /// A link of its own to `upstream` (`127.0.0.1:port` on the host): a veth pair on a /30 of
    /// its own, and a relay on the host's end.
    pub fn reach(&self, upstream: &str) -> Peer {
        let n = LINKS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Device names have at most 15 bytes; subnets differ by process and by link.
        let (host_device, namespace_device) = (
            format!("vb{}x{n}h", pid % 100_000),
            format!("vb{}x{n}n", pid % 100_000),
        );
        let (second, third, fourth) = (200 + pid % 50, n / 64, (n % 64) * 4);
        let host_ip = format!("10.{second}.{third}.{}", fourth + 1);
        let namespace_ip = format!("10.{second}.{third}.{}", fourth + 2);
        ip(&[
            "link",
            "add",
            &host_device,
            "type",
            "veth",
            "peer",
            "name",
            &namespace_device,
        ]);
        ip(&["link", "set", &namespace_device, "netns", &self.name]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_device]);
        ip(&["link", "set", &host_device, "up"]);
        self.inside(&[
            "ip",
            "addr",
            "add",
            &format!("{namespace_ip}/30"),
            "dev",
            &namespace_device,
        ]);
        self.inside(&["ip", "link", "set", &namespace_device, "up"]);
        let listener = std::net::TcpListener::bind(format!("{host_ip}:0")).unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if let Ok(server) = std::net::TcpStream::connect(&upstream) {
                    relay(client, server);
                }
            }
        });
        Peer {
            address,
            host_device,
            namespace_device,
        }
    }

    /// Both directions of `peer`'s link limited to `rate` (tc's units: `512kbit`).
    pub fn slow(&self, peer: &Peer, rate: &str) {
        let shape = [
            "root", "tbf", "rate", rate, "burst", "16kbit", "latency", "5s",
        ];
        let mut host = vec!["tc", "qdisc", "add", "dev", &peer.host_device];
        host.extend_from_slice(&shape);
        let status = Command::new(host[0]).args(&host[1..]).status().unwrap();
        assert!(status.success(), "{}", host.join(" "));
        let mut inside = vec!["tc", "qdisc", "add", "dev", &peer.namespace_device];
        inside.extend_from_slice(&shape);
        self.inside(&inside);
    }

    /// Every packet toward `peer` silently dropped (a token bucket smaller than any packet): a
    /// firewall that drops, so connections hang rather than fail.
    pub fn drop_packets(&self, peer: &Peer) {
        self.inside(&[
            "tc",
            "qdisc",
            "add",
            "dev",
            &peer.namespace_device,
            "root",
            "tbf",
            "rate",
            "8bit",
            "burst",
            "10",
            "limit",
            "10",
        ]);
    }

    /// No route to `peer`: connections fail at once (EHOSTUNREACH).
    pub fn unreachable(&self, peer: &Peer) {
        let host = peer.address.rsplit_once(':').unwrap().0;
        self.inside(&["ip", "route", "add", "unreachable", &format!("{host}/32")]);
    }
}

impl Drop for NetNs {
    /// Deleting the namespace deletes the veth pairs with it.
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Copies each way until either side closes.
fn relay(client: std::net::TcpStream, server: std::net::TcpStream) {
    let (Ok(mut client_reads), Ok(mut server_writes)) = (client.try_clone(), server.try_clone())
    else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_reads, &mut server_writes);
        let _ = server_writes.shutdown(std::net::Shutdown::Write);
    });
    let (mut server_reads, mut client_writes) = (server, client);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut server_reads, &mut client_writes);
        let _ = client_writes.shutdown(std::net::Shutdown::Write);
    });
}
