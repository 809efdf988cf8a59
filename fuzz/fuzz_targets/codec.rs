//! The line codec on arbitrary byte chunks with a small maximum line: whatever the chunking,
//! the lines it yields are exactly the non-blank lines of the stream (without `\r\n`), each
//! within the limit, until it refuses an over-long line or one that is not UTF-8.
#![no_main]

use arbitrary::Arbitrary;
use electrum_gateway::protocol::{CodecError, LineCodec};
use libfuzzer_sys::fuzz_target;
use tokio_util::bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

#[derive(Arbitrary, Debug)]
struct Input {
    max: u8,
    shrinking: bool,
    chunks: Vec<Vec<u8>>,
}

/// What the stream's lines should decode to, as far as they are valid: the reference model.
fn expected(stream: &[u8], max: usize) -> (Vec<String>, bool) {
    let mut out = Vec::new();
    let mut parts: Vec<&[u8]> = stream.split(|&b| b == b'\n').collect();
    // The bytes after the last newline are not a line yet (until EOF).
    let tail = parts.pop().unwrap_or_default();
    for p in parts {
        // The limit counts a line's bytes before its `\n`, a `\r` included.
        if p.len() > max {
            return (out, true);
        }
        let p = p.strip_suffix(b"\r").unwrap_or(p);
        let Ok(s) = std::str::from_utf8(p) else {
            return (out, true);
        };
        if !s.trim().is_empty() {
            out.push(s.to_string());
        }
    }
    (out, tail.len() > max)
}

fuzz_target!(|input: Input| {
    let max = usize::from(input.max).max(1);
    let mut codec = if input.shrinking {
        LineCodec::shrinking(max)
    } else {
        LineCodec::new(max)
    };
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut failed = false;
    let mut stream = Vec::new();
    'outer: for chunk in &input.chunks {
        stream.extend_from_slice(chunk);
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(line)) => {
                    assert!(line.len() <= max, "{} > {max}", line.len());
                    assert!(!line.contains('\n'));
                    got.push(line);
                }
                Ok(None) => break,
                Err(CodecError::TooLong(n)) => {
                    assert_eq!(n, max);
                    failed = true;
                    break 'outer;
                }
                Err(CodecError::Io(_)) => {
                    failed = true;
                    break 'outer;
                }
            }
        }
    }
    // Every good line before the first bad one came out, and a bad line (or more than `max`
    // bytes without a newline) was refused as soon as it was seen.
    let (want, bad) = expected(&stream, max);
    assert_eq!(got, want);
    assert_eq!(failed, bad, "{} bytes held", buf.len());
    // Whatever was decoded encodes back to one line each.
    let mut out = BytesMut::new();
    for line in &got {
        codec
            .encode(line.as_str(), &mut out)
            .expect("encoding cannot fail");
    }
    assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), got.len());
});
