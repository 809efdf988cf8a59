//! Transports: server URLs and framing of byte streams into Electrum messages.
//!
//! Every connection, upstream or wallet-facing, TCP, TLS or WebSocket, ends up as a
//! [`Framed`]: a sink and a stream of text messages (one JSON value each). TCP and TLS frame by
//! `\n`-terminated lines; WebSocket frames by message.

use futures::stream::SplitSink;
use futures::{Sink, Stream, StreamExt};
use std::fmt;
use std::io;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed as CodecFramed, FramedRead, FramedWrite};

use crate::protocol::codec::INITIAL_BUFFER;
use crate::protocol::{CodecError, LineCodec};

/// Bytes of queued lines past which a line sink writes before it takes more.
const WRITE_BATCH: usize = 8 * 1024;

/// The sending half of a framed connection: text messages, each sent as one line (TCP, TLS)
/// or one WebSocket message.
pub type FrameSink = Pin<Box<dyn FrameWrite>>;

/// A sink of text messages that also takes messages shared by many connections.
///
/// A message written to many connections (a block's header notification, say) is made once
/// as an `Arc<str>` and queued on each with [`FrameWrite::start_send_shared`]: no connection
/// allocates or serializes its own copy. Use it like `start_send`, after `poll_ready`;
/// [`feed_shared`] does both.
pub trait FrameWrite: Sink<String, Error = io::Error> + Send {
    /// Queues a shared message; the caller must have had `poll_ready` answer ready.
    fn start_send_shared(self: Pin<&mut Self>, message: Arc<str>) -> io::Result<()>;
}

/// Waits until `sink` can take a message, then queues the shared `message` (without flushing).
pub async fn feed_shared(sink: &mut FrameSink, message: Arc<str>) -> io::Result<()> {
    futures::future::poll_fn(|cx| sink.as_mut().poll_ready(cx)).await?;
    sink.as_mut().start_send_shared(message)
}

/// One outgoing line of the line framing: owned, or shared with other connections.
enum Line {
    Owned(String),
    Shared(Arc<str>),
}

impl AsRef<str> for Line {
    fn as_ref(&self) -> &str {
        match self {
            Line::Owned(s) => s,
            Line::Shared(s) => s,
        }
    }
}
/// The receiving half of a framed connection.
pub type FrameStream = Pin<Box<dyn Stream<Item = Result<String, io::Error>> + Send>>;

/// A connection split into a sink and a stream of text messages.
pub struct Framed {
    /// Outgoing messages.
    pub sink: FrameSink,
    /// Incoming messages.
    pub stream: FrameStream,
}

impl fmt::Debug for Framed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Framed")
    }
}

fn codec_to_io(e: CodecError) -> io::Error {
    match e {
        CodecError::Io(e) => e,
        CodecError::TooLong(n) => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("line longer than {n} bytes"),
        ),
    }
}

type LineFramed<S> = CodecFramed<S, LineCodec>;

/// The sending half of a line-framed stream. Its errors are `io::Error`s: every error is
/// mapped (unlike `SinkExt::sink_map_err`, which maps one error only and panics when the
/// failed sink is used again, closed after a failed write, say).
struct LineSink<T> {
    inner: T,
}

impl<T> LineSink<T>
where
    T: Sink<Line, Error = CodecError> + Unpin,
{
    fn inner(self: Pin<&mut Self>) -> Pin<&mut T> {
        Pin::new(&mut self.get_mut().inner)
    }
}

impl<T> Sink<String> for LineSink<T>
where
    T: Sink<Line, Error = CodecError> + Unpin,
{
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner().poll_ready(cx).map_err(codec_to_io)
    }

    fn start_send(self: Pin<&mut Self>, item: String) -> io::Result<()> {
        self.inner()
            .start_send(Line::Owned(item))
            .map_err(codec_to_io)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner().poll_flush(cx).map_err(codec_to_io)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner().poll_close(cx).map_err(codec_to_io)
    }
}

impl<T> FrameWrite for LineSink<T>
where
    T: Sink<Line, Error = CodecError> + Unpin + Send,
{
    fn start_send_shared(self: Pin<&mut Self>, message: Arc<str>) -> io::Result<()> {
        self.inner()
            .start_send(Line::Shared(message))
            .map_err(codec_to_io)
    }
}

/// The sending half of a WebSocket, as text messages.
struct WsSink<S> {
    inner: SplitSink<tokio_tungstenite::WebSocketStream<S>, WsMessage>,
}

use tokio_tungstenite::tungstenite::Message as WsMessage;

fn ws_to_io(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, e.to_string())
}

impl<S> WsSink<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn inner(
        self: Pin<&mut Self>,
    ) -> Pin<&mut SplitSink<tokio_tungstenite::WebSocketStream<S>, WsMessage>> {
        Pin::new(&mut self.get_mut().inner)
    }
}

impl<S> Sink<String> for WsSink<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner().poll_ready(cx).map_err(ws_to_io)
    }

    fn start_send(self: Pin<&mut Self>, item: String) -> io::Result<()> {
        self.inner()
            .start_send(WsMessage::Text(item))
            .map_err(ws_to_io)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner().poll_flush(cx).map_err(ws_to_io)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner().poll_close(cx).map_err(ws_to_io)
    }
}

impl<S> FrameWrite for WsSink<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    fn start_send_shared(self: Pin<&mut Self>, message: Arc<str>) -> io::Result<()> {
        // A WebSocket message owns its text: the shared line is copied once here.
        self.inner()
            .start_send(WsMessage::Text(message.to_string()))
            .map_err(ws_to_io)
    }
}

/// Frames a byte stream (TCP or TLS) by lines of at most `max_line` bytes.
pub fn frame_lines<S>(io: S, max_line: usize) -> Framed
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    line_framed(CodecFramed::new(io, LineCodec::new(max_line)))
}

/// Like [`frame_lines`], for one of a server's many, mostly idle connections: its read and
/// write buffers start small ([`INITIAL_BUFFER`]), grow for a long line or a burst, and are
/// made small again once empty (see [`LineCodec::shrinking`]).
pub fn frame_lines_small<S>(io: S, max_line: usize) -> Framed
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let mut framed = CodecFramed::with_capacity(io, LineCodec::shrinking(max_line), INITIAL_BUFFER);
    // Lines queued together are written together up to this many bytes (tokio-util's
    // default), however small the buffer starts.
    framed.set_backpressure_boundary(WRITE_BATCH);
    line_framed(framed)
}

/// Like [`frame_lines_small`], for a TCP connection: its halves are owned apart, so reading
/// and writing take no lock.
pub fn frame_tcp_small(stream: tokio::net::TcpStream, max_line: usize) -> Framed {
    let (read, write) = stream.into_split();
    let stream = FramedRead::with_capacity(read, LineCodec::shrinking(max_line), INITIAL_BUFFER);
    let mut sink =
        FramedWrite::with_capacity(write, LineCodec::shrinking(max_line), INITIAL_BUFFER);
    sink.set_backpressure_boundary(WRITE_BATCH);
    Framed {
        sink: Box::pin(LineSink { inner: sink }),
        stream: Box::pin(stream.map(|r| r.map_err(codec_to_io))),
    }
}

fn line_framed<S>(framed: LineFramed<S>) -> Framed
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (sink, stream) = framed.split();
    Framed {
        sink: Box::pin(LineSink { inner: sink }),
        stream: Box::pin(stream.map(|r| r.map_err(codec_to_io))),
    }
}

/// Frames a WebSocket: each text (or UTF-8 binary) message is one Electrum message.
/// Pings are answered by tungstenite itself; a close frame ends the stream.
pub fn frame_ws<S>(ws: tokio_tungstenite::WebSocketStream<S>, max_message: usize) -> Framed
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, stream) = ws.split();
    let sink = WsSink { inner: sink };
    let stream = stream
        .take_while(|m| futures::future::ready(!matches!(m, Ok(WsMessage::Close(_)))))
        .filter_map(move |m| async move {
            match m {
                Ok(WsMessage::Text(t)) => {
                    let t: String = t.to_string();
                    if t.len() > max_message {
                        Some(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("message longer than {max_message} bytes"),
                        )))
                    } else {
                        Some(Ok(t))
                    }
                }
                Ok(WsMessage::Binary(b)) => Some(
                    String::from_utf8(b.to_vec())
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
                ),
                Ok(_) => None,
                Err(e) => Some(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    e.to_string(),
                ))),
            }
        });
    Framed {
        sink: Box::pin(sink),
        stream: Box::pin(stream),
    }
}

/// How a server is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Plain TCP (`tcp://`, Electrum letter `t`).
    Tcp,
    /// TLS over TCP (`ssl://` or `tls://`, Electrum letter `s`).
    Ssl,
    /// WebSocket (`ws://`).
    Ws,
    /// WebSocket over TLS (`wss://`).
    Wss,
}

impl Scheme {
    /// The default port: 50001 (t), 50002 (s), 50003 (ws), 50004 (wss).
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Tcp => 50001,
            Scheme::Ssl => 50002,
            Scheme::Ws => 50003,
            Scheme::Wss => 50004,
        }
    }
    /// True for TLS-carrying schemes.
    pub fn is_tls(self) -> bool {
        matches!(self, Scheme::Ssl | Scheme::Wss)
    }
    /// True for WebSocket schemes.
    pub fn is_ws(self) -> bool {
        matches!(self, Scheme::Ws | Scheme::Wss)
    }
    /// The URL scheme name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Tcp => "tcp",
            Scheme::Ssl => "ssl",
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
        }
    }
}

/// A server address: scheme, host and port.
///
/// Parsed from `tcp://host:port`, `ssl://host:port` (or `tls://`), `ws://host:port[/path]`,
/// `wss://...`, and Electrum's `host:port:t` / `host:port:s`. IPv6 hosts go in brackets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerUrl {
    /// Transport.
    pub scheme: Scheme,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path for WebSocket URLs (default `/`).
    pub path: String,
}

impl ServerUrl {
    /// A URL from parts.
    pub fn new(scheme: Scheme, host: impl Into<String>, port: u16) -> Self {
        ServerUrl {
            scheme,
            host: host.into(),
            port,
            path: "/".into(),
        }
    }

    /// True for Tor hidden-service hosts.
    pub fn is_onion(&self) -> bool {
        self.host.to_ascii_lowercase().ends_with(".onion")
    }

    /// `host:port`, with brackets around IPv6 hosts.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.authority())?;
        if self.scheme.is_ws() && self.path != "/" {
            f.write_str(&self.path)?;
        }
        Ok(())
    }
}

/// Why a server URL could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid server address {input:?}: {reason}")]
pub struct UrlError {
    input: String,
    reason: &'static str,
}

fn split_host_port(s: &str) -> Result<(String, Option<&str>), &'static str> {
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']').ok_or("unclosed '[' in IPv6 host")?;
        let host = &rest[..end];
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err("junk after IPv6 host"),
        };
        return Ok((host.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Ok((h.to_string(), Some(p))),
        None => Ok((s.to_string(), None)),
    }
}

impl FromStr for ServerUrl {
    type Err = UrlError;

    fn from_str(input: &str) -> Result<Self, UrlError> {
        let err = |reason| UrlError {
            input: input.to_string(),
            reason,
        };
        let s = input.trim();
        if let Some((scheme, rest)) = s.split_once("://") {
            let scheme = match scheme.to_ascii_lowercase().as_str() {
                "tcp" => Scheme::Tcp,
                "ssl" | "tls" => Scheme::Ssl,
                "ws" => Scheme::Ws,
                "wss" => Scheme::Wss,
                _ => return Err(err("unknown scheme (use tcp, ssl, ws or wss)")),
            };
            let (hostport, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            if !scheme.is_ws() && path != "/" {
                return Err(err("a path is only allowed for ws:// and wss://"));
            }
            let (host, port) = split_host_port(hostport).map_err(err)?;
            let port = match port {
                Some(p) => p.parse().map_err(|_| err("invalid port"))?,
                None => scheme.default_port(),
            };
            if host.is_empty() {
                return Err(err("empty host"));
            }
            return Ok(ServerUrl {
                scheme,
                host,
                port,
                path: path.to_string(),
            });
        }
        // Electrum style: host:port:t or host:port:s
        let (rest, letter) = s.rsplit_once(':').ok_or_else(|| err("missing port"))?;
        let scheme = match letter {
            "t" => Scheme::Tcp,
            "s" => Scheme::Ssl,
            _ => return Err(err("expected scheme://host:port or host:port:t|s")),
        };
        let (host, port) = split_host_port(rest).map_err(err)?;
        let port = port
            .ok_or_else(|| err("missing port"))?
            .parse()
            .map_err(|_| err("invalid port"))?;
        if host.is_empty() {
            return Err(err("empty host"));
        }
        Ok(ServerUrl::new(scheme, host, port))
    }
}

impl serde::Serialize for ServerUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ServerUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::SinkExt;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_shared_line_goes_out_whole_on_every_connection() {
        let shared: Arc<str> = Arc::from(r#"{"jsonrpc":"2.0","method":"m","params":[1]}"#);
        let mut peers = Vec::new();
        for _ in 0..3 {
            let (ours, mut theirs) = tokio::io::duplex(4096);
            let mut framed = frame_lines_small(ours, 1024);
            framed.sink.send("first".into()).await.unwrap();
            feed_shared(&mut framed.sink, shared.clone()).await.unwrap();
            framed.sink.send("last".into()).await.unwrap();
            let mut got = vec![0u8; 5 + 1 + shared.len() + 1 + 4 + 1];
            theirs.read_exact(&mut got).await.unwrap();
            peers.push((String::from_utf8(got).unwrap(), framed));
        }
        for (got, _) in &peers {
            assert_eq!(*got, format!("first\n{shared}\nlast\n"));
        }
    }

    #[tokio::test]
    async fn tcp_halves_read_and_write_lines_apart() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut framed = frame_tcp_small(server, 1 << 20);
        // A line longer than the buffers it starts with, then a short one.
        let long = format!("{{\"x\":\"{}\"}}", "a".repeat(50_000));
        client
            .write_all(format!("{long}\n{{}}\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(framed.stream.next().await.unwrap().unwrap(), long);
        assert_eq!(framed.stream.next().await.unwrap().unwrap(), "{}");
        let shared: Arc<str> = Arc::from("{\"n\":1}");
        framed.sink.feed(long.clone()).await.unwrap();
        feed_shared(&mut framed.sink, shared.clone()).await.unwrap();
        framed.sink.flush().await.unwrap();
        let mut got = vec![0u8; long.len() + 1 + shared.len() + 1];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, format!("{long}\n{shared}\n").into_bytes());
        drop(client);
        assert!(framed.stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_shared_line_is_one_websocket_message() {
        use tokio_tungstenite::tungstenite::protocol::Role;
        let (ours, theirs) = tokio::io::duplex(4096);
        let server =
            tokio_tungstenite::WebSocketStream::from_raw_socket(ours, Role::Server, None).await;
        let mut client =
            tokio_tungstenite::WebSocketStream::from_raw_socket(theirs, Role::Client, None).await;
        let mut framed = frame_ws(server, 1024);
        let shared: Arc<str> = Arc::from(r#"{"method":"m"}"#);
        feed_shared(&mut framed.sink, shared.clone()).await.unwrap();
        framed.sink.flush().await.unwrap();
        match client.next().await {
            Some(Ok(WsMessage::Text(t))) => assert_eq!(t.as_str(), &*shared),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_failed_line_sink_can_still_be_closed() {
        let (ours, theirs) = tokio::io::duplex(64);
        drop(theirs);
        let mut framed = frame_lines(ours, 1024);
        // The peer is gone: the write fails, and so does every later use, without a panic.
        assert!(framed.sink.send("x".repeat(100)).await.is_err());
        assert!(framed.sink.send("y".into()).await.is_err());
        let _ = framed.sink.close().await;
    }

    #[test]
    fn parses_all_forms() {
        let u: ServerUrl = "tcp://127.0.0.1:50001".parse().unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port),
            (Scheme::Tcp, "127.0.0.1", 50001)
        );
        let u: ServerUrl = "ssl://electrum.example.org".parse().unwrap();
        assert_eq!((u.scheme, u.port), (Scheme::Ssl, 50002));
        let u: ServerUrl = "electrum.example.org:50002:s".parse().unwrap();
        assert_eq!((u.scheme, u.port), (Scheme::Ssl, 50002));
        let u: ServerUrl = "abc.onion:110:t".parse().unwrap();
        assert!(u.is_onion());
        let u: ServerUrl = "wss://h:443/electrum".parse().unwrap();
        assert_eq!(u.path, "/electrum");
        assert_eq!(u.to_string(), "wss://h:443/electrum");
        let u: ServerUrl = "tcp://[::1]:50001".parse().unwrap();
        assert_eq!(u.host, "::1");
        assert_eq!(u.to_string(), "tcp://[::1]:50001");
        let u: ServerUrl = "[::1]:50001:t".parse().unwrap();
        assert_eq!(u.authority(), "[::1]:50001");
    }

    #[test]
    fn rejects_bad_forms() {
        for bad in [
            "",
            "ftp://h:1",
            "h:1:x",
            "tcp://h:notaport",
            "tcp://:1",
            "h",
            "tcp://h:1/x",
            "tcp://[::1",
        ] {
            assert!(bad.parse::<ServerUrl>().is_err(), "{bad} should fail");
        }
    }
}
