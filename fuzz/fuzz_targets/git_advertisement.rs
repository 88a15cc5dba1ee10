//! A git remote's answer to the ref listing (pkt-lines from an untrusted remote) through libgit2's
//! smart protocol, as bootagent's transports hand it over (a stateful stream, like git:// and
//! ssh://), and through bootagent's own reading of the listed refs (`git::remote_ref`). It
//! must find the ref or fail, never crash: a ref name that is not UTF-8 once did.
#![no_main]

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Once, OnceLock};
use std::time::Duration;

use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream, Transport};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static ANSWER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

struct Remote;

impl SmartSubtransport for Remote {
    fn action(
        &self,
        _url: &str,
        _action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
        let answer = ANSWER.with(|answer| answer.borrow().clone());
        Ok(Box::new(Answer(io::Cursor::new(answer))))
    }

    fn close(&self) -> Result<(), git2::Error> {
        Ok(())
    }
}

struct Answer(io::Cursor<Vec<u8>>);

impl Read for Answer {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Answer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn credentials() -> &'static bootagent::git::Credentials {
    static CREDENTIALS: OnceLock<bootagent::git::Credentials> = OnceLock::new();
    CREDENTIALS.get_or_init(|| {
        let config = bootagent::config::from_text(Path::new("fuzz.toml"), "").expect("defaults");
        let mut none = bootagent::secrets::LoadedSecrets::default();
        bootagent::git::Credentials::new(&config.git, &config.paths, &mut none)
            .expect("no credentials to read")
    })
}

fuzz_target!(|data: &[u8]| {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: once, before this thread uses libgit2 for anything else.
        unsafe {
            git2::transport::register("fuzz", |remote| Transport::smart(remote, false, Remote))
        }
        .expect("the fuzz transport registers");
    });
    ANSWER.with(|answer| *answer.borrow_mut() = data.to_vec());
    let limits = bootagent::git::Limits::new(
        Duration::from_secs(10),
        "fuzz",
        bootagent::git::Cancel::default(),
    );
    let remote = bootagent::git::Remote::parse("fuzz://remote/app.git");
    for reference in ["prod", "v1", "0123456789012345678901234567890123456789"] {
        let _ = bootagent::git::remote_ref(
            &remote,
            reference,
            Path::new("/nonexistent/bootagent-fuzz"),
            credentials(),
            &limits,
        );
    }
});
