//! An upstream's lines as the client library's reader takes them: responses to calls and
//! subscribes in flight, notifications for held subscriptions, batches, garbage. The reader
//! must never panic, must hand callers only JSON, and must close (not hang or grow) on a
//! notification flood. Also the client's reading of a `server.version` answer.
#![no_main]

use electrum_gateway::fuzzing::{client_read_lines, client_version_answer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    if sel & 1 == 0 {
        let lines: Vec<&str> = text.split('\n').collect();
        let taken = client_read_lines(&lines);
        assert!(taken <= lines.len());
    } else {
        // `min|max|answer`: the range offered, then the server's answer.
        let mut parts = text.splitn(3, '|');
        let (min, max, raw) = (
            parts.next().unwrap_or("1.4"),
            parts.next().unwrap_or("1.6"),
            parts.next().unwrap_or(""),
        );
        if let Some(Ok(info)) = client_version_answer(raw, min, max) {
            let v = electrum_gateway::protocol::methods::parse_version(&info.protocol)
                .expect("an accepted protocol version parses");
            if let Some(lo) = electrum_gateway::protocol::methods::parse_version(min) {
                assert!(v >= lo);
            }
            if let Some(hi) = electrum_gateway::protocol::methods::parse_version(max) {
                assert!(v <= hi);
            }
        }
    }
});
