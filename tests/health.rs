//! `bootagent health-report`, one-shot and served to the ALB, on the host in exec mode.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// A booted exec-mode instance whose service (the recorder) keeps running.
struct Booted {
    instance: Instance,
    imds: Imds,
    service: Child,
}

impl Booted {
    fn start(extra: &str) -> Booted {
        let (_name, _repo, imds) = small_service("health", "test");
        let instance = Instance::exec_mode(extra);
        instance.add_config(
            "60-stay.toml",
            &format!(
                "[service]\ncommand = {}\n",
                instance.recorder_command(&["--stay"])
            ),
        );
        let service = instance
            .command(&imds, &["boot"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !instance.out.join("env").exists() {
            assert!(Instant::now() < deadline, "the service did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Booted {
            instance,
            imds,
            service,
        }
    }

    fn report(&self) -> (i32, serde_json::Value) {
        let run = self.instance.run(&self.imds, &["health-report"]);
        let json = serde_json::from_str(&run.stdout())
            .unwrap_or_else(|_| panic!("not JSON: {}", run.stdout()));
        (run.code(), json)
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        let _ = self.service.kill();
        let _ = self.service.wait();
    }
}

/// A stand-in for the app's own health URL: python's http.server on a directory.
struct App {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl App {
    fn start() -> App {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("health"), "ok").unwrap();
        // Port 0: the server binds a free port and says which ("Serving HTTP on 127.0.0.1 port
        // N …") once it listens, unbuffered (-u).
        let mut child = Command::new(world("PYTHON"))
            .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "0"])
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let line = first_line(&mut child);
        let port = line
            .split_whitespace()
            .skip_while(|word| *word != "port")
            .nth(1)
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("http.server said {line:?}"));
        App { child, dir, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/health", self.port)
    }

    fn fail(&self) {
        std::fs::remove_file(self.dir.path().join("health")).unwrap();
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn one_shot_report_follows_boot_service_app_and_draining() {
    support::needs_world!();
    let app = App::start();
    let booted = Booted::start(&format!("[health]\napp_url = \"{}\"\n", app.url()));
    let (code, health) = booted.report();
    assert_eq!(
        (code, &health),
        (0, &serde_json::json!({"healthy": true, "state": "healthy"}))
    );

    app.fail();
    let (code, health) = booted.report();
    assert_eq!(code, 12);
    assert_eq!(health["state"], "app-unhealthy");
    assert_eq!(health["reason"], "the app's health URL answered HTTP 404");

    std::fs::write(booted.instance.run.path().join("draining"), "").unwrap();
    assert_eq!(booted.report().1["state"], "draining");
}

/// An https:// `health.app_url` is verified against the system's CA store: healthy when the
/// store trusts the app's certificate (SSL_CERT_FILE names the test CA), not when it does not.
/// The checker used to trust no CA at all, so an https:// app could never be healthy.
#[test]
fn an_https_app_url_is_verified_against_the_system_ca_store() {
    support::needs_world!();
    let ca = TestCa::issue_for("127.0.0.1");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // `-www` answers every GET with 200 and a status page.
    let mut server = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept", &port.to_string()])
        .arg("-cert")
        .arg(&ca.server_cert)
        .arg("-key")
        .arg(&ca.server_key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let booted = Booted::start("");
    booted.instance.add_config(
        "70-app.toml",
        // The scheme as an operator may write it: the URL parser reads it whatever its case.
        &format!("[health]\napp_url = \"HTTPS://127.0.0.1:{port}/\"\n"),
    );
    let trusting = [("SSL_CERT_FILE", ca.ca_cert.to_str().unwrap())];
    let trusted = booted
        .instance
        .run_with(&booted.imds, &["health-report"], &trusting);
    let untrusted = booted.instance.run(&booted.imds, &["health-report"]);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(trusted.code(), 0, "{}", trusted.stdout());
    assert_eq!(untrusted.code(), 12, "{}", untrusted.stdout());
    assert!(
        untrusted.stdout().contains("app-unhealthy"),
        "{}",
        untrusted.stdout()
    );
    assert!(
        untrusted.stdout().contains("does not trust"),
        "{}",
        untrusted.stdout()
    );
}

#[test]
fn one_shot_report_sees_a_missing_boot_and_a_dead_service() {
    support::needs_world!();
    let instance = Instance::exec_mode("");
    let imds = Imds::with_tags(&[]);
    let run = instance.run(&imds, &["health-report"]);
    run.expect(12);
    assert!(
        run.stdout().contains("\"state\":\"booting\""),
        "{}",
        run.stdout()
    );

    let mut booted = Booted::start("");
    assert_eq!(booted.report().0, 0);
    booted.service.kill().unwrap();
    booted.service.wait().unwrap();
    let (code, health) = booted.report();
    assert_eq!(code, 12);
    assert_eq!(health["state"], "service-down");
}

#[test]
fn a_failed_boot_is_unhealthy_with_its_exit_code() {
    support::needs_world!();
    let instance = Instance::exec_mode("");
    let imds = Imds::with_tags(&[("Service", "nosuch"), ("Environment", "qa")]);
    instance.run(&imds, &["boot"]).expect(3);
    let run = instance.run(&imds, &["health-report"]);
    run.expect(12);
    assert!(
        run.stdout().contains("the last boot failed (exit code 3)"),
        "{}",
        run.stdout()
    );
}

/// The server closed the connection (FIN, or RST when our unread bytes were still queued)
/// without a byte of answer (bounded, generously past any header timeout the tests set).
fn assert_closed_without_answer(mut stream: TcpStream) {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection closed, got {other:?}"),
    }
}

/// A running `health-report --listen`.
struct HealthServer {
    child: Child,
    port: u16,
}

impl HealthServer {
    fn start(booted: &Booted) -> HealthServer {
        // Port 0: the server logs the address it got once it listens.
        let mut child = booted
            .instance
            .command(&booted.imds, &["health-report", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
        let port = loop {
            let line = log
                .next()
                .expect("the health server ended before it listened")
                .unwrap();
            if let Some((_, address)) = line.split_once("serving health reports address=") {
                break address.rsplit(':').next().unwrap().parse().unwrap();
            }
        };
        // Whatever it logs later must not fill the pipe and stall it.
        std::thread::spawn(move || log.for_each(drop));
        HealthServer { child, port }
    }

    /// Sends `request` as it is and returns the whole answer.
    fn raw(&self, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    fn get(&self, path: &str) -> String {
        self.raw(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_alb_sees_200_then_503_within_one_interval_of_draining() {
    support::needs_world!();
    let booted = Booted::start("");
    let server = HealthServer::start(&booted);
    let answer = server.get("/health");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.ends_with("{\"healthy\":true,\"state\":\"healthy\"}\n"),
        "{answer}"
    );

    std::fs::write(booted.instance.run.path().join("draining"), "").unwrap();
    let started = Instant::now();
    while !server.get("/").starts_with("HTTP/1.1 503") {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still 200 after 5 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let metrics = server.get("/metrics");
    assert!(
        metrics.contains("\r\n\r\n# HELP bootagent_healthy"),
        "{metrics}"
    );
    assert!(metrics.contains("\nbootagent_healthy 0\n"), "{metrics}");
    assert!(
        metrics.contains("bootagent_boot_phase_duration_seconds{phase=\"git\"} "),
        "{metrics}"
    );
}

#[test]
fn the_health_server_refuses_what_it_does_not_serve() {
    support::needs_world!();
    let booted = Booted::start("");
    let server = HealthServer::start(&booted);
    assert!(server.get("/secrets").starts_with("HTTP/1.1 404"));
    let post = server.raw(b"POST /health HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
    assert!(
        post.starts_with("HTTP/1.1 405") && post.contains("Allow: GET, HEAD\r\n"),
        "{post}"
    );
    let head = server.raw(b"HEAD /health HTTP/1.1\r\n\r\n");
    assert!(
        head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
        "{head}"
    );
    let huge = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    assert!(server.raw(huge.as_bytes()).starts_with("HTTP/1.1 431"));
    assert!(server
        .raw(b"\x16\x03\x01garbage\r\n\r\n")
        .starts_with("HTTP/1.1 400"));
}

#[test]
fn slow_clients_cannot_starve_the_health_check() {
    support::needs_world!();
    // The bounds below are the header timeout itself: an answer that had to wait for a slow
    // client to time out comes after it, however fast or slow the machine.
    let header_timeout = Duration::from_secs(3);
    let booted = Booted::start("[health]\nheader_timeout = \"3s\"\nmax_connections = 4\n");
    let server = HealthServer::start(&booted);
    // Three slowloris clients: a partial request each, never finished.
    let slow_since = Instant::now();
    let slow: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
            s.write_all(b"GET /health HTTP/1.1\r\nX-Slow: ").unwrap();
            s
        })
        .collect();
    assert!(server.get("/health").starts_with("HTTP/1.1 200"));
    assert!(
        slow_since.elapsed() < header_timeout,
        "answered while slow clients wait"
    );

    // The slow ones are cut off after the header timeout.
    for stream in slow {
        assert_closed_without_answer(stream);
    }

    // With every slot held by a slow client, a new request still gets its answer: the oldest
    // slow client gives way, and only it. The server accepts in connection order, so the
    // first of these is the oldest.
    let idle_since = Instant::now();
    let mut idle: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
            s.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    assert!(
        server.get("/health").starts_with("HTTP/1.1 200"),
        "served when full"
    );
    assert!(
        idle_since.elapsed() < header_timeout,
        "without waiting for the header timeout"
    );
    assert_closed_without_answer(idle.remove(0));
    for mut newer in idle {
        newer.write_all(b"\r\n").unwrap();
        let mut answer = String::new();
        newer.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "newer slow clients keep their slots"
        );
    }
}

#[test]
fn the_alb_sees_503_within_one_interval_of_the_app_failing() {
    support::needs_world!();
    let app = App::start();
    let booted = Booted::start(&format!("[health]\napp_url = \"{}\"\n", app.url()));
    let server = HealthServer::start(&booted);
    assert!(server.get("/health").starts_with("HTTP/1.1 200"));
    app.fail();
    let started = Instant::now();
    loop {
        let answer = server.get("/health");
        if answer.starts_with("HTTP/1.1 503") {
            assert!(answer.contains("\"state\":\"app-unhealthy\""), "{answer}");
            break;
        }
        // An ALB checks every 5 s at the fastest: the next check must see it.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still 200 after 5 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
