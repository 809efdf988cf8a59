//! Dialing: from a [`ServerUrl`] to a [`Framed`] connection.
//!
//! The layers stack in a fixed order: a TCP stream (direct, or through a SOCKS5 proxy that
//! resolves the host name itself so `.onion` names work inside Tor), then TLS for `ssl` and
//! `wss`, then the WebSocket handshake for `ws` and `wss`. The result is framed by lines (TCP,
//! TLS) or by WebSocket messages, so the connection task above never knows which it got.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_socks::tcp::Socks5Stream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{debug, info};

use super::tls::{self, AfterHandshake};
use super::{ClientConfig, ClientError, ProxyConfig};
use crate::transport::{frame_lines, frame_ws, Framed};

/// Any byte stream the layers can be stacked on.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

pub(crate) type BoxIo = Box<dyn Io>;

/// Opens a framed connection to the configured server, within the connect timeout.
pub(crate) async fn dial(config: &ClientConfig) -> Result<Framed, ClientError> {
    let url = &config.server;
    match tokio::time::timeout(config.connect_timeout, dial_inner(config)).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Connect(format!(
            "connecting to {url} timed out after {:?}",
            config.connect_timeout
        ))),
    }
}

async fn dial_inner(config: &ClientConfig) -> Result<Framed, ClientError> {
    let url = &config.server;
    let mut io = open_stream(config).await?;
    if url.scheme.is_tls() {
        io = Box::new(tls_handshake(config, io).await?);
    }
    if url.scheme.is_ws() {
        let target = format!("{}://{}{}", url.scheme.as_str(), url.authority(), url.path);
        let ws_config = WebSocketConfig {
            max_message_size: Some(config.max_message),
            max_frame_size: Some(config.max_message),
            ..Default::default()
        };
        let (ws, _response) =
            tokio_tungstenite::client_async_with_config(target, io, Some(ws_config))
                .await
                .map_err(|e| {
                    ClientError::Connect(format!("WebSocket handshake with {url} failed: {e}"))
                })?;
        return Ok(frame_ws(ws, config.max_message));
    }
    Ok(frame_lines(io, config.max_message))
}

/// The proxy to use: the configured one, else Tor's default port for `.onion` hosts.
fn effective_proxy(config: &ClientConfig) -> Option<ProxyConfig> {
    match &config.proxy {
        Some(p) => Some(p.clone()),
        None if config.server.is_onion() => Some(ProxyConfig::tor()),
        None => None,
    }
}

/// Opens the TCP stream to `config.server`, directly or through the SOCKS5 proxy (remote DNS).
pub(crate) async fn open_stream(config: &ClientConfig) -> Result<BoxIo, ClientError> {
    let url = &config.server;
    let Some(proxy) = effective_proxy(config) else {
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| ClientError::Connect(format!("{}: {e}", url.authority())))?;
        let _ = tcp.set_nodelay(true);
        return Ok(Box::new(tcp));
    };
    // The host goes to the proxy as a name (ATYP 3) unless it is an IP literal, so the proxy
    // resolves it: no local DNS leak, and `.onion` names resolve inside Tor.
    let target = (url.host.as_str(), url.port);
    let addr = proxy.addr.as_str();
    let result = match &proxy.username {
        Some(user) => {
            let password = proxy.password.as_deref().unwrap_or("");
            Socks5Stream::connect_with_password(addr, target, user, password).await
        }
        None => Socks5Stream::connect(addr, target).await,
    };
    let stream = result.map_err(|e| {
        ClientError::Proxy(format!(
            "SOCKS5 proxy {addr} could not reach {}: {e}",
            url.authority()
        ))
    })?;
    debug!(proxy = %addr, "connected through SOCKS5 proxy");
    let tcp = stream.into_inner();
    let _ = tcp.set_nodelay(true);
    Ok(Box::new(tcp))
}

async fn tls_handshake(
    config: &ClientConfig,
    io: BoxIo,
) -> Result<tokio_rustls::client::TlsStream<BoxIo>, ClientError> {
    let url = &config.server;
    let server = url.authority();
    let (tls_config, after) = tls::client_config(&config.tls, &server)?;
    let name = tls::server_name(&url.host)?;
    let stream = TlsConnector::from(tls_config)
        .connect(name, io)
        .await
        .map_err(|e| tls::handshake_error(e, &server))?;
    if let AfterHandshake::Pin { store, server } = after {
        let cert = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .ok_or_else(|| ClientError::Tls(format!("{server} presented no certificate")))?;
        let fp = tls::fingerprint(cert.as_ref());
        store.set(&server, &fp)?;
        info!(%server, fingerprint = %fp, pin_file = %store.path().display(), "pinned server certificate on first use");
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::ServerUrl;

    #[test]
    fn onion_hosts_default_to_tor() {
        let onion: ServerUrl = "tcp://abcdefghij.onion:50001".parse().unwrap();
        let p = effective_proxy(&ClientConfig::new(onion.clone())).unwrap();
        assert_eq!(p.addr, "127.0.0.1:9050");
        let mut cfg = ClientConfig::new(onion);
        cfg.proxy = Some("socks5://localhost:1080".parse().unwrap());
        assert_eq!(effective_proxy(&cfg).unwrap().addr, "localhost:1080");
        let clear: ServerUrl = "tcp://electrum.example.org:50001".parse().unwrap();
        assert!(effective_proxy(&ClientConfig::new(clear)).is_none());
    }
}
