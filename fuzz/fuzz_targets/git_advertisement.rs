//! A git remote's answer to the ref listing (pkt-lines from an untrusted remote) through libgit2's
//! smart protocol, as bootagent's transports hand it over: a stateful stream, like git:// and
//! ssh://. libgit2 must list refs or fail, never crash.
#![no_main]

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::sync::Once;

use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream, Transport};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static ANSWER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

struct Remote;

impl SmartSubtransport for Remote {
    fn action(&self, _url: &str, _action: Service) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
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

fuzz_target!(|data: &[u8]| {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: once, before this thread uses libgit2 for anything else.
        unsafe { git2::transport::register("fuzz", |remote| Transport::smart(remote, false, Remote)) }
            .expect("the fuzz transport registers");
    });
    ANSWER.with(|answer| *answer.borrow_mut() = data.to_vec());
    let Ok(mut remote) = git2::Remote::create_detached("fuzz://remote/app.git") else {
        return;
    };
    let connected = remote.connect_auth(git2::Direction::Fetch, None, None);
    if let Ok(connection) = &connected {
        if let Ok(heads) = connection.list() {
            for head in heads {
                let _ = (head.name(), head.oid());
            }
        }
    }
    drop(connected);
});
