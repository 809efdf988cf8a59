//! Line framing for TCP and TLS: one JSON value per `\n`-terminated line, with a maximum size.
//!
//! A line over the limit is an error that ends the connection (its remaining bytes cannot be
//! told apart from the next message), as ElectrumX and Fulcrum do.

use bytes_compat::BytesMut;
use tokio_util::codec::{Decoder, Encoder, LinesCodec, LinesCodecError};

/// The default maximum line size, 8,100,000 bytes: what the Electrum wallet accepts.
pub const DEFAULT_MAX_LINE: usize = 8_100_000;

/// What a connection's read and write buffers start with, in bytes: enough for a wallet's
/// requests and most answers. They grow to fit a longer line or a burst, and are given back
/// once empty if they grew past [`SHRINK_ABOVE`], so an idle connection holds little.
pub const INITIAL_BUFFER: usize = 1024;

/// A buffer that grew past this many bytes is replaced by a small one when it is empty.
pub const SHRINK_ABOVE: usize = 16 * 1024;

/// Notes when `buf` holds more than [`SHRINK_ABOVE`] bytes, and once it is empty again replaces
/// it by a small one. (A `BytesMut` that was read from or written out reports only what is
/// left of its allocation as capacity, so the size is noted while it is seen whole.)
fn shrink_if_empty(buf: &mut BytesMut, grown: &mut bool, keep: usize) {
    if buf.capacity() > SHRINK_ABOVE {
        *grown = true;
    }
    if *grown && buf.is_empty() {
        *buf = BytesMut::with_capacity(keep.max(INITIAL_BUFFER));
        *grown = false;
    }
}

mod bytes_compat {
    pub use tokio_util::bytes::BytesMut;
}

/// Errors from the line codec.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A line exceeded the configured maximum.
    #[error("line longer than {0} bytes")]
    TooLong(usize),
    /// An I/O error on the underlying stream.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// A `\n`-delimited codec for Electrum messages with a maximum line length.
/// Carriage returns before `\n` are stripped; blank lines are skipped.
#[derive(Debug, Clone)]
pub struct LineCodec {
    inner: LinesCodec,
    max: usize,
    /// The read buffer grew past [`SHRINK_ABOVE`].
    read_grown: bool,
    /// The write buffer grew past [`SHRINK_ABOVE`].
    write_grown: bool,
    /// Whether buffers that grew are replaced by small ones once empty.
    shrink: bool,
}

impl LineCodec {
    /// A codec that refuses lines longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        LineCodec {
            inner: LinesCodec::new_with_max_length(max),
            max,
            read_grown: false,
            write_grown: false,
            shrink: false,
        }
    }

    /// A codec that refuses lines longer than `max` bytes and gives back the memory of a
    /// buffer that grew past [`SHRINK_ABOVE`] once it is empty: for the many, mostly idle
    /// connections of a server. (A connection that carries long lines all the time, to an
    /// upstream, keeps its buffers.)
    pub fn shrinking(max: usize) -> Self {
        LineCodec {
            shrink: true,
            ..Self::new(max)
        }
    }
}

impl Default for LineCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LINE)
    }
}

impl Decoder for LineCodec {
    type Item = String;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<String>, CodecError> {
        loop {
            if self.shrink && src.capacity() > SHRINK_ABOVE {
                self.read_grown = true;
            }
            let decoded = self.inner.decode(src);
            // The next read goes into this buffer: after a long line, a small one will do.
            if self.shrink {
                shrink_if_empty(src, &mut self.read_grown, 0);
            }
            match decoded {
                Ok(Some(line)) if line.trim().is_empty() => continue,
                Ok(other) => return Ok(other),
                Err(LinesCodecError::MaxLineLengthExceeded) => {
                    return Err(CodecError::TooLong(self.max))
                }
                Err(LinesCodecError::Io(e)) => return Err(CodecError::Io(e)),
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<String>, CodecError> {
        loop {
            match self.inner.decode_eof(src) {
                Ok(Some(line)) if line.trim().is_empty() => continue,
                Ok(other) => return Ok(other),
                Err(LinesCodecError::MaxLineLengthExceeded) => {
                    return Err(CodecError::TooLong(self.max))
                }
                Err(LinesCodecError::Io(e)) => return Err(CodecError::Io(e)),
            }
        }
    }
}

impl<T: AsRef<str>> Encoder<T> for LineCodec {
    type Error = CodecError;

    fn encode(&mut self, line: T, dst: &mut BytesMut) -> Result<(), CodecError> {
        let line = line.as_ref();
        // The buffer still holds a long line written earlier: give its memory back.
        if self.shrink {
            shrink_if_empty(dst, &mut self.write_grown, line.len() + 1);
        }
        dst.reserve(line.len() + 1);
        dst.extend_from_slice(line.as_bytes());
        dst.extend_from_slice(b"\n");
        if self.shrink && dst.capacity() > SHRINK_ABOVE {
            self.write_grown = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_and_skips_blank() {
        let mut c = LineCodec::new(100);
        let mut buf = BytesMut::from(&b"{\"a\":1}\r\n\n{\"b\":2}\n{\"c\""[..]);
        assert_eq!(c.decode(&mut buf).unwrap().unwrap(), "{\"a\":1}");
        assert_eq!(c.decode(&mut buf).unwrap().unwrap(), "{\"b\":2}");
        assert!(c.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b":3}\n");
        assert_eq!(c.decode(&mut buf).unwrap().unwrap(), "{\"c\":3}");
    }

    #[test]
    fn refuses_oversized_line() {
        let mut c = LineCodec::new(16);
        let mut buf = BytesMut::from(&[b'x'; 40][..]);
        assert!(matches!(c.decode(&mut buf), Err(CodecError::TooLong(16))));
    }

    #[test]
    fn read_buffer_grows_for_a_long_line_and_shrinks_once_empty() {
        let mut c = LineCodec::shrinking(1 << 20);
        let mut buf = BytesMut::with_capacity(INITIAL_BUFFER);
        let long = format!("{{\"x\":\"{}\"}}", "a".repeat(100_000));
        buf.extend_from_slice(long.as_bytes());
        assert!(c.decode(&mut buf).unwrap().is_none(), "no newline yet");
        assert!(buf.capacity() > SHRINK_ABOVE);
        buf.extend_from_slice(b"\n");
        assert_eq!(c.decode(&mut buf).unwrap().unwrap(), long);
        assert!(buf.is_empty());
        assert!(buf.capacity() <= SHRINK_ABOVE, "{}", buf.capacity());
        // Lines keep being read after the shrink.
        buf.extend_from_slice(b"{\"a\":1}\n{\"b\"");
        assert_eq!(c.decode(&mut buf).unwrap().unwrap(), "{\"a\":1}");
        // A partial line keeps its bytes, whatever the capacity.
        assert!(c.decode(&mut buf).unwrap().is_none());
        assert_eq!(&buf[..], b"{\"b\"");
    }

    #[test]
    fn write_buffer_shrinks_after_a_long_line_was_written() {
        let mut c = LineCodec::shrinking(1 << 20);
        let mut buf = BytesMut::with_capacity(INITIAL_BUFFER);
        let long = "x".repeat(100_000);
        c.encode(long.as_str(), &mut buf).unwrap();
        assert!(buf.capacity() > SHRINK_ABOVE);
        // Written out (what a flush does), then the next small line.
        tokio_util::bytes::Buf::advance(&mut buf, long.len() + 1);
        c.encode("{}", &mut buf).unwrap();
        assert_eq!(&buf[..], b"{}\n");
        assert!(buf.capacity() <= SHRINK_ABOVE, "{}", buf.capacity());
        // Small lines queued together stay together.
        c.encode("{}", &mut buf).unwrap();
        assert_eq!(&buf[..], b"{}\n{}\n");
    }

    #[test]
    fn buffers_of_a_codec_that_does_not_shrink_are_kept() {
        let mut c = LineCodec::new(1 << 20);
        let mut buf = BytesMut::new();
        c.encode("x".repeat(100_000).as_str(), &mut buf).unwrap();
        tokio_util::bytes::Buf::advance(&mut buf, 100_001);
        c.encode("{}", &mut buf).unwrap();
        // Still the same allocation: its room before the line was reclaimed.
        assert!(buf.capacity() > SHRINK_ABOVE, "{}", buf.capacity());
    }

    #[test]
    fn encodes_with_newline() {
        let mut c = LineCodec::new(16);
        let mut buf = BytesMut::new();
        c.encode("{}", &mut buf).unwrap();
        assert_eq!(&buf[..], b"{}\n");
    }
}
