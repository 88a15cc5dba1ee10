//! A request head as anyone who reaches the health port may send it. Property: only GET and HEAD
//! of the health and metrics paths are served.
#![no_main]

use bootagent::report::health_server::{route, Route};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (route, head_only) = route(data);
    // Empty lines before the request line are allowed (RFC 9112, 2.2), as httparse does.
    let start = data
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(data.len());
    let request = &data[start..];
    if matches!(route, Route::Health | Route::Metrics) {
        assert!(request.starts_with(b"GET ") || request.starts_with(b"HEAD "));
    }
    assert!(!head_only || request.starts_with(b"HEAD "));
});
