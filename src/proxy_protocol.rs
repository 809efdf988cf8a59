//! PROXY protocol (v1 and v2) on the wallet listeners: the real client address behind a
//! balancer.
//!
//! HAProxy, and the load balancers of cloud providers, can put a header before the bytes of
//! each connection they pass on, naming the client they accepted it from. A listener with
//! `[listen] proxy_protocol_from` set reads that header from connections whose source address
//! is in one of the listed networks, and nowhere else: anyone else could name any address.
//! A connection from a listed network must start with a header (v1 or v2, told apart by its
//! first bytes); one that does not is bad input and closed. Connections from other addresses
//! are direct clients, whose bytes are never looked at here.
//!
//! The header is read before the TLS or WebSocket handshake, exactly: a v1 header is one line
//! of at most 107 bytes ending in CRLF, read byte by byte up to its end; a v2 header is 16
//! bytes that give the length of the rest. No byte of the wallet's own stream is consumed.
//! Parsing is the `ppp` crate's. A v2 `LOCAL` header (a balancer's own health check) and a
//! v1 `UNKNOWN` one name no client: the connection keeps its source address.

use ipnet::IpNet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The twelve bytes every v2 header starts with.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Longest v1 header, CRLF included (the specification's limit).
const V1_MAX: usize = 107;

/// Longest v2 header accepted, the 16 fixed bytes included: addresses plus room for the
/// TLVs a balancer adds (unique id, TLS details). Larger is refused as bad input.
const V2_MAX: usize = 4096;

/// The source networks whose connections start with a PROXY protocol header.
#[derive(Debug, Clone, Default)]
pub struct ProxySources {
    networks: Vec<IpNet>,
}

impl ProxySources {
    /// Headers expected from connections whose source is in `networks`; none when empty.
    pub fn new(networks: Vec<IpNet>) -> ProxySources {
        ProxySources { networks }
    }

    /// True when no network is listed (PROXY protocol off).
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    /// True when a connection from `ip` must start with a header. An IPv4 address mapped into
    /// IPv6 (a dual-stack listener) counts as the IPv4 address.
    pub fn expects_header(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.networks.iter().any(|n| n.contains(&ip))
    }

    /// The client's address for a connection accepted from `peer`: `peer` itself for a direct
    /// client, else the address the balancer's header names (read from `stream`, exactly).
    pub async fn client_address<S: AsyncRead + Unpin>(
        &self,
        stream: &mut S,
        peer: SocketAddr,
    ) -> io::Result<SocketAddr> {
        if !self.expects_header(peer.ip()) {
            return Ok(peer);
        }
        Ok(read_header(stream).await?.unwrap_or(peer))
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads one PROXY protocol header (v1 or v2) from the start of `stream`, consuming exactly
/// its bytes. `Some(address)` of the client it names; `None` for a header that names none
/// (v2 `LOCAL`, v1 `UNKNOWN`, v2 unspecified or UNIX addresses). An error for anything that
/// is not a well-formed header.
pub async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Option<SocketAddr>> {
    // Eight bytes tell the versions apart and fit in the shortest header of either
    // ("PROXY UNKNOWN\r\n" is 15 bytes, a v2 header at least 16).
    let mut buf = vec![0u8; 8];
    stream.read_exact(&mut buf).await?;
    if buf.starts_with(b"PROXY ") {
        // v1: up to the CRLF, a byte at a time so that nothing after it is read.
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= V1_MAX {
                return Err(bad("PROXY v1 header without CRLF within 107 bytes"));
            }
            buf.push(stream.read_u8().await?);
        }
        let header = ppp::v1::Header::try_from(buf.as_slice())
            .map_err(|e| bad(format!("PROXY v1 header: {e}")))?;
        return Ok(match header.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
            }
            ppp::v1::Addresses::Unknown => None,
        });
    }
    if buf[..] != V2_SIGNATURE[..8] {
        return Err(bad("expected a PROXY protocol header"));
    }
    buf.resize(16, 0);
    stream.read_exact(&mut buf[8..]).await?;
    if buf[..12] != V2_SIGNATURE {
        return Err(bad("expected a PROXY protocol header"));
    }
    let rest = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if 16 + rest > V2_MAX {
        return Err(bad(format!("PROXY v2 header of {} bytes", 16 + rest)));
    }
    buf.resize(16 + rest, 0);
    stream.read_exact(&mut buf[16..]).await?;
    let header = ppp::v2::Header::try_from(buf.as_slice())
        .map_err(|e| bad(format!("PROXY v2 header: {e}")))?;
    if header.command == ppp::v2::Command::Local {
        return Ok(None);
    }
    Ok(match header.addresses {
        ppp::v2::Addresses::IPv4(a) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        ppp::v2::Addresses::IPv6(a) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: ppp::v2::Command, from: &str, to: &str) -> Vec<u8> {
        let from: SocketAddr = from.parse().unwrap();
        let to: SocketAddr = to.parse().unwrap();
        ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | command,
            ppp::v2::Protocol::Stream,
            (from, to),
        )
        .write_tlv(ppp::v2::Type::UniqueId, b"abc")
        .unwrap()
        .build()
        .unwrap()
    }

    /// Reads a header from `bytes`, and what is left after it.
    async fn read(bytes: &[u8]) -> (io::Result<Option<SocketAddr>>, Vec<u8>) {
        let mut r = bytes;
        let got = read_header(&mut r).await;
        (got, r.to_vec())
    }

    #[tokio::test]
    async fn v1_names_the_client_and_leaves_the_stream() {
        let (got, rest) = read(b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 50001\r\n{\"id\":1}\n").await;
        assert_eq!(got.unwrap(), Some("127.0.0.2:40000".parse().unwrap()));
        assert_eq!(rest, b"{\"id\":1}\n");
        let (got, rest) = read(b"PROXY TCP6 2001:db8::1 ::1 40000 50001\r\nX").await;
        assert_eq!(got.unwrap(), Some("[2001:db8::1]:40000".parse().unwrap()));
        assert_eq!(rest, b"X");
        let (got, rest) = read(b"PROXY UNKNOWN\r\nX").await;
        assert_eq!(got.unwrap(), None);
        assert_eq!(rest, b"X");
    }

    #[tokio::test]
    async fn v2_names_the_client_and_leaves_the_stream() {
        let mut bytes = v2(ppp::v2::Command::Proxy, "10.1.2.3:4567", "10.0.0.1:50001");
        bytes.extend_from_slice(b"\x16\x03\x01 tls hello");
        let (got, rest) = read(&bytes).await;
        assert_eq!(got.unwrap(), Some("10.1.2.3:4567".parse().unwrap()));
        assert_eq!(rest, b"\x16\x03\x01 tls hello");
        let bytes = v2(ppp::v2::Command::Proxy, "[2001:db8::7]:1", "[::1]:2");
        assert_eq!(
            read(&bytes).await.0.unwrap(),
            Some("[2001:db8::7]:1".parse().unwrap())
        );
        // A balancer's own health check names no client.
        let mut bytes = v2(ppp::v2::Command::Local, "10.1.2.3:4567", "10.0.0.1:50001");
        bytes.push(b'{');
        let (got, rest) = read(&bytes).await;
        assert_eq!(got.unwrap(), None);
        assert_eq!(rest, b"{");
    }

    #[tokio::test]
    async fn bad_headers_are_errors() {
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(120));
        let mut over = v2(ppp::v2::Command::Proxy, "10.1.2.3:4567", "10.0.0.1:50001");
        over[14..16].copy_from_slice(&5000u16.to_be_bytes());
        for bytes in [
            &b"{\"id\":1,\"method\":\"server.ping\"}\n"[..],
            b"PROXY TCP4 not an address\r\n",
            b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 50001\n\n",
            long.as_bytes(),
            b"PROXY TC",
            b"\r\n\r\n\0\r\nQUIT\nxx",
            b"\r\n\r\n\0\r\nQUIX\n\x21\x11\x00\x0c",
            &over,
        ] {
            let (got, _) = read(bytes).await;
            let err = got.expect_err(&String::from_utf8_lossy(bytes));
            assert!(
                matches!(
                    err.kind(),
                    io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                ),
                "{err}"
            );
        }
    }

    #[tokio::test]
    async fn only_listed_sources_send_headers() {
        let sources = ProxySources::new(vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ]);
        assert!(sources.expects_header("10.9.8.7".parse().unwrap()));
        assert!(sources.expects_header("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!sources.expects_header("127.0.0.2".parse().unwrap()));
        // A direct client's bytes, even one that looks like a header, are its own.
        let direct: SocketAddr = "127.0.0.2:999".parse().unwrap();
        let mut r: &[u8] = b"PROXY TCP4 1.2.3.4 127.0.0.1 1 2\r\n";
        assert_eq!(
            sources.client_address(&mut r, direct).await.unwrap(),
            direct
        );
        assert_eq!(r.len(), 34);
        let balancer: SocketAddr = "127.0.0.1:999".parse().unwrap();
        let mut r: &[u8] = b"PROXY TCP4 1.2.3.4 127.0.0.1 1 2\r\n";
        assert_eq!(
            sources.client_address(&mut r, balancer).await.unwrap(),
            "1.2.3.4:1".parse().unwrap()
        );
        let mut r: &[u8] = b"{\"id\":1}\n";
        assert!(sources.client_address(&mut r, balancer).await.is_err());
        assert!(ProxySources::default().is_empty());
    }

    #[tokio::test]
    async fn the_header_comes_before_the_tls_handshake() {
        use crate::listen::{ListenOptions, Listener, TlsIdentity};
        use futures::{SinkExt, StreamExt};
        use std::sync::Arc;
        let id = TlsIdentity::generate_localhost().unwrap();
        let options = ListenOptions {
            tls: Some(id.server_config().unwrap()),
            proxy_sources: Arc::new(ProxySources::new(vec!["127.0.0.1/32".parse().unwrap()])),
            ..ListenOptions::default()
        };
        let url = "ssl://127.0.0.1:0".parse().unwrap();
        let mut listener = Listener::bind(&url, options).await.unwrap();
        let addr = listener.local_addr();
        let client = tokio::spawn(crate::listen::tests::tls_ping(
            addr,
            id.clone(),
            b"PROXY TCP4 198.51.100.9 127.0.0.1 1234 50002\r\n",
        ));
        let (mut framed, peer) = listener.accept().await;
        assert_eq!(peer, "198.51.100.9:1234".parse::<SocketAddr>().unwrap());
        assert_eq!(framed.stream.next().await.unwrap().unwrap(), "{\"ping\":1}");
        framed.sink.send("{\"pong\":1}".into()).await.unwrap();
        assert_eq!(client.await.unwrap(), "{\"pong\":1}\n");
    }
}
