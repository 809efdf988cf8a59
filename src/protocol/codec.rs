//! Line framing for TCP and TLS: one JSON value per `\n`-terminated line, with a maximum size.
//!
//! A line over the limit is an error that ends the connection (its remaining bytes cannot be
//! told apart from the next message), as ElectrumX and Fulcrum do.

use bytes_compat::BytesMut;
use tokio_util::codec::{Decoder, Encoder, LinesCodec, LinesCodecError};

/// The default maximum line size, 8,100,000 bytes: what the Electrum wallet accepts.
pub const DEFAULT_MAX_LINE: usize = 8_100_000;

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
}

impl LineCodec {
    /// A codec that refuses lines longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        LineCodec {
            inner: LinesCodec::new_with_max_length(max),
            max,
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
            match self.inner.decode(src) {
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
        dst.reserve(line.len() + 1);
        dst.extend_from_slice(line.as_bytes());
        dst.extend_from_slice(b"\n");
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
    fn encodes_with_newline() {
        let mut c = LineCodec::new(16);
        let mut buf = BytesMut::new();
        c.encode("{}", &mut buf).unwrap();
        assert_eq!(&buf[..], b"{}\n");
    }
}
