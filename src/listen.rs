//! Listeners for Electrum connections over TCP, TLS, WebSocket and WebSocket over TLS.
//!
//! A [`Listener`] binds a [`ServerUrl`] and yields connections already framed into Electrum
//! messages, whatever the transport, so a server's session code never sees TLS or WebSocket.
//! Handshakes run in their own tasks with a timeout: a client that connects and says nothing,
//! or fails its TLS handshake, never holds up the next one. Dropping the listener closes the
//! socket and abandons pending handshakes.
//!
//! [`TlsIdentity`] holds a certificate and key: generated self-signed (for tests and for a
//! gateway's first start) or loaded from PEM files, so an operator can pin it.

use anyhow::Context as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::protocol::DEFAULT_MAX_LINE;
use crate::proxy_protocol::ProxySources;
use crate::transport::{frame_lines_small, frame_tcp_small, frame_ws, Framed, Scheme, ServerUrl};

/// A TLS certificate chain and its private key.
pub struct TlsIdentity {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_pem: String,
    key_pem: String,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        TlsIdentity {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("certs", &self.certs.len())
            .finish_non_exhaustive()
    }
}

/// File names used by [`TlsIdentity::load_or_generate`].
pub const CERT_FILE: &str = "cert.pem";
/// File names used by [`TlsIdentity::load_or_generate`].
pub const KEY_FILE: &str = "key.pem";

impl TlsIdentity {
    /// Generates a self-signed certificate for `names` (host names or IP addresses).
    pub fn generate(names: &[&str]) -> anyhow::Result<TlsIdentity> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let ck = rcgen::generate_simple_self_signed(names)
            .context("generating a self-signed certificate")?;
        let cert_pem = ck.cert.pem();
        let key_pem = ck.key_pair.serialize_pem();
        Ok(TlsIdentity {
            certs: vec![ck.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der())),
            cert_pem,
            key_pem,
        })
    }

    /// A self-signed certificate for `localhost` and `127.0.0.1`.
    pub fn generate_localhost() -> anyhow::Result<TlsIdentity> {
        Self::generate(&["localhost", "127.0.0.1", "::1"])
    }

    /// Parses a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> anyhow::Result<TlsIdentity> {
        let certs: Vec<CertificateDer<'static>> =
            rustls_pemfile::certs(&mut io::BufReader::new(cert_pem.as_bytes()))
                .collect::<Result<_, _>>()
                .context("reading PEM certificates")?;
        if certs.is_empty() {
            anyhow::bail!("no certificate found in PEM data");
        }
        let key = rustls_pemfile::private_key(&mut io::BufReader::new(key_pem.as_bytes()))
            .context("reading PEM private key")?
            .ok_or_else(|| anyhow::anyhow!("no private key found in PEM data"))?;
        Ok(TlsIdentity {
            certs,
            key,
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }

    /// Loads a certificate chain and key from PEM files.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<TlsIdentity> {
        let cert_pem = std::fs::read_to_string(cert)
            .with_context(|| format!("reading certificate {}", cert.display()))?;
        let key_pem = std::fs::read_to_string(key)
            .with_context(|| format!("reading private key {}", key.display()))?;
        Self::from_pem(&cert_pem, &key_pem)
            .with_context(|| format!("loading {} and {}", cert.display(), key.display()))
    }

    /// Writes the certificate and key as PEM files (the key readable by the owner only).
    pub fn save(&self, cert: &Path, key: &Path) -> anyhow::Result<()> {
        crate::files::write_atomic(cert, self.cert_pem.as_bytes())
            .with_context(|| format!("writing {}", cert.display()))?;
        crate::files::write_atomic_private(key, self.key_pem.as_bytes())
            .with_context(|| format!("writing {}", key.display()))?;
        Ok(())
    }

    /// Loads `dir/cert.pem` and `dir/key.pem`, or generates a self-signed localhost
    /// certificate and saves it there (creating `dir`) when neither exists.
    pub fn load_or_generate(dir: &Path) -> anyhow::Result<TlsIdentity> {
        let (cert, key): (PathBuf, PathBuf) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        match (cert.exists(), key.exists()) {
            (true, true) => Self::load(&cert, &key),
            (false, false) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let id = Self::generate_localhost()?;
                id.save(&cert, &key)?;
                Ok(id)
            }
            _ => anyhow::bail!(
                "only one of {} and {} exists; remove it or provide both",
                cert.display(),
                key.display()
            ),
        }
    }

    /// The leaf certificate, DER-encoded (what a client pins).
    pub fn cert_der(&self) -> &[u8] {
        self.certs[0].as_ref()
    }

    /// The certificate chain, PEM-encoded.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key, PEM-encoded.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A rustls server configuration (ring provider, TLS 1.2 and 1.3) for this identity.
    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let key = self.key.clone_key();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(self.certs.clone(), key)
        .context("TLS certificate and key do not match or are unsupported")?;
        Ok(Arc::new(config))
    }
}

/// Something held for a connection from TCP accept on (a slot counted against a server's
/// connection limit, released when dropped). [`Listener::accept_permitted`] hands it over
/// with the connection.
pub type Permit = Box<dyn std::any::Any + Send + Sync>;

/// Decides at TCP accept, before any handshake, whether a connection may proceed: a
/// [`Permit`] to hold while it lives, or None to close it at once.
pub type Admission = Arc<dyn Fn(SocketAddr) -> Option<Permit> + Send + Sync>;

/// Told why the listener refused a connection: `"handshakes"` (more than `max_handshakes`
/// in progress), `"handshakes_per_client"` (more than `max_handshakes_per_client` of one
/// client's) or `"origin"` (a WebSocket origin not allowed).
pub type OnRefused = Arc<dyn Fn(&'static str) + Send + Sync>;

/// Who a limit applies to: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    /// The key of a peer address (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn of(peer: SocketAddr) -> ClientKey {
        match peer.ip() {
            IpAddr::V4(v4) => ClientKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(IpAddr::V4(v4)),
                None => {
                    let bits = u128::from(v6) & !((1u128 << 64) - 1);
                    ClientKey(IpAddr::V6(bits.into()))
                }
            },
        }
    }
}

/// Handshakes in progress per client at one listener, and the guard that counts one.
#[derive(Default)]
struct Shaking(std::sync::Mutex<std::collections::HashMap<ClientKey, usize>>);

struct ShakeGuard(Arc<Shaking>, ClientKey);

impl Shaking {
    /// Counts a handshake of `key`'s, unless it has `max` in progress already.
    fn try_start(self: &Arc<Self>, key: ClientKey, max: usize) -> Option<ShakeGuard> {
        let mut m = self.0.lock().ok()?;
        let n = m.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ShakeGuard(self.clone(), key))
    }
}

impl Drop for ShakeGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.0 .0.lock() {
            if let Some(n) = m.get_mut(&self.1) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.1);
                }
            }
        }
    }
}

/// How a [`Listener`] treats its connections.
#[derive(Clone)]
pub struct ListenOptions {
    /// Largest accepted line (TCP/TLS) or message (WebSocket), in bytes.
    pub max_message: usize,
    /// TLS configuration, required for `ssl://` and `wss://`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Time allowed for the TLS and WebSocket handshakes (and a PROXY protocol header).
    pub handshake_timeout: Duration,
    /// Balancers whose connections start with a PROXY protocol header naming the client
    /// ([`crate::proxy_protocol`]); none by default.
    pub proxy_sources: Arc<ProxySources>,
    /// Most handshakes in progress at once on this listener; a connection beyond it is
    /// closed at once.
    pub max_handshakes: usize,
    /// Most handshakes in progress at once from one client ([`ClientKey`]) that connects
    /// directly; a connection beyond it is closed at once, so that one client cannot hold
    /// every handshake place. A balancer's connections (PROXY protocol sources) carry many
    /// clients and are not counted here.
    pub max_handshakes_per_client: usize,
    /// Asked at TCP accept; None admits every connection (up to `max_handshakes`).
    pub admission: Option<Admission>,
    /// Browser origins allowed to open a WebSocket (`"*"`: any). A WebSocket handshake that
    /// carries an `Origin` header not listed is refused with HTTP 403; one without an
    /// `Origin` header (not a browser) is allowed.
    pub ws_origins: Arc<Vec<String>>,
    /// Called for each connection the listener refuses itself (for counting).
    pub on_refused: Option<OnRefused>,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            max_message: DEFAULT_MAX_LINE,
            tls: None,
            handshake_timeout: Duration::from_secs(10),
            proxy_sources: Arc::default(),
            max_handshakes: 1024,
            max_handshakes_per_client: 1024,
            admission: None,
            ws_origins: Arc::new(Vec::new()),
            on_refused: None,
        }
    }
}

/// True when a WebSocket handshake with this `Origin` header (None: no header) may proceed.
pub fn origin_allowed(origin: Option<&str>, allowed: &[String]) -> bool {
    match origin {
        None => true,
        Some(o) => {
            let o = o.trim().trim_end_matches('/');
            allowed
                .iter()
                .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(o))
        }
    }
}

impl std::fmt::Debug for ListenOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenOptions")
            .field("max_message", &self.max_message)
            .field("tls", &self.tls.is_some())
            .field("handshake_timeout", &self.handshake_timeout)
            .field("proxy_sources", &self.proxy_sources)
            .field("max_handshakes", &self.max_handshakes)
            .field("max_handshakes_per_client", &self.max_handshakes_per_client)
            .field("admission", &self.admission.is_some())
            .field("ws_origins", &self.ws_origins)
            .field("on_refused", &self.on_refused.is_some())
            .finish()
    }
}

type Accepted = Option<(Framed, SocketAddr, Option<Permit>)>;

/// A bound listener yielding framed connections.
pub struct Listener {
    tcp: TcpListener,
    url: ServerUrl,
    local: SocketAddr,
    scheme: Scheme,
    tls: Option<TlsAcceptor>,
    options: ListenOptions,
    pending: JoinSet<Accepted>,
    shaking: Arc<Shaking>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Listener({})", self.url)
    }
}

impl Listener {
    /// Binds `url` (port 0 picks a free port). `ssl://` and `wss://` need `options.tls`.
    pub async fn bind(url: &ServerUrl, options: ListenOptions) -> io::Result<Listener> {
        let tls = match (url.scheme.is_tls(), &options.tls) {
            (true, Some(cfg)) => Some(TlsAcceptor::from(cfg.clone())),
            (true, None) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{url} needs a TLS certificate"),
                ))
            }
            (false, _) => None,
        };
        let tcp = TcpListener::bind((url.host.as_str(), url.port)).await?;
        let local = tcp.local_addr()?;
        let mut bound = url.clone();
        bound.port = local.port();
        Ok(Listener {
            tcp,
            url: bound,
            local,
            scheme: url.scheme,
            tls,
            options,
            pending: JoinSet::new(),
            shaking: Arc::default(),
        })
    }

    /// The bound socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The URL clients use: the configured host with the bound port.
    pub fn url(&self) -> &ServerUrl {
        &self.url
    }

    /// Waits for the next connection that completes its handshake, with the client's address
    /// (the one a PROXY protocol header names, from a balancer). Failed handshakes are
    /// logged at debug level and skipped; this never returns an error, so a server's accept
    /// loop cannot be stopped by a misbehaving client. Cancel-safe.
    pub async fn accept(&mut self) -> (Framed, SocketAddr) {
        let (framed, peer, _) = self.accept_permitted().await;
        (framed, peer)
    }

    /// Like [`Listener::accept`], with the [`Permit`] the admission gave the connection at
    /// TCP accept (None without an admission), for the caller to hold while it serves it.
    /// A connection the admission refuses, or past `max_handshakes`, is closed at once.
    pub async fn accept_permitted(&mut self) -> (Framed, SocketAddr, Option<Permit>) {
        loop {
            tokio::select! {
                r = self.tcp.accept() => match r {
                    Ok((mut stream, peer)) => {
                        if self.pending.len() >= self.options.max_handshakes {
                            tracing::debug!(%peer, "too many handshakes in progress; closing");
                            if let Some(refused) = &self.options.on_refused {
                                refused("handshakes");
                            }
                            continue;
                        }
                        // A direct client's handshakes count against it until they end.
                        let shake = if self.options.proxy_sources.expects_header(peer.ip()) {
                            None
                        } else {
                            let max = self.options.max_handshakes_per_client;
                            match self.shaking.try_start(ClientKey::of(peer), max) {
                                Some(g) => Some(g),
                                None => {
                                    tracing::debug!(%peer, "too many handshakes from one client; closing");
                                    if let Some(refused) = &self.options.on_refused {
                                        refused("handshakes_per_client");
                                    }
                                    continue;
                                }
                            }
                        };
                        let permit = match &self.options.admission {
                            Some(admit) => match admit(peer) {
                                Some(p) => Some(p),
                                None => continue,
                            },
                            None => None,
                        };
                        let _ = stream.set_nodelay(true);
                        let proxy = self.options.proxy_sources.clone();
                        let scheme = self.scheme;
                        let tls = self.tls.clone();
                        let max = self.options.max_message;
                        let origins = self.options.ws_origins.clone();
                        let refused = self.options.on_refused.clone();
                        let timeout = self.options.handshake_timeout;
                        self.pending.spawn(async move {
                            let _shake = shake;
                            // Behind a balancer, the client's address comes first.
                            let accepted = async {
                                let client = proxy.client_address(&mut stream, peer).await?;
                                let framed =
                                    handshake(stream, scheme, tls, max, origins, refused).await?;
                                Ok::<_, io::Error>((framed, client))
                            };
                            match tokio::time::timeout(timeout, accepted).await {
                                Ok(Ok((framed, client))) => Some((framed, client, permit)),
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "handshake failed");
                                    None
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "handshake timed out");
                                    None
                                }
                            }
                        });
                    }
                    Err(e) => {
                        // Per-connection errors (ECONNABORTED) and resource exhaustion
                        // (EMFILE) alike: wait a little instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(done) = self.pending.join_next(), if !self.pending.is_empty() => {
                    if let Ok(Some(conn)) = done {
                        return conn;
                    }
                }
            }
        }
    }
}

/// The WebSocket handshake callback: refuses a browser origin not allowed with HTTP 403.
// The callback's error type is tungstenite's HTTP response, as its `Callback` trait requires.
#[allow(clippy::result_large_err)]
fn check_origin(
    origins: Arc<Vec<String>>,
    refused: Option<OnRefused>,
) -> impl FnOnce(
    &tokio_tungstenite::tungstenite::handshake::server::Request,
    tokio_tungstenite::tungstenite::handshake::server::Response,
) -> Result<
    tokio_tungstenite::tungstenite::handshake::server::Response,
    tokio_tungstenite::tungstenite::handshake::server::ErrorResponse,
> + Unpin {
    move |req, resp| {
        let origin = req
            .headers()
            .get("origin")
            .map(|v| v.to_str().unwrap_or("\u{fffd}"));
        if origin_allowed(origin, &origins) {
            return Ok(resp);
        }
        tracing::debug!(origin = ?origin, "WebSocket origin not allowed");
        if let Some(refused) = &refused {
            refused("origin");
        }
        let mut refusal = tokio_tungstenite::tungstenite::handshake::server::ErrorResponse::new(
            Some("origin not allowed; see [listen] ws_origins".to_string()),
        );
        *refusal.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::FORBIDDEN;
        Err(refusal)
    }
}

async fn handshake(
    stream: TcpStream,
    scheme: Scheme,
    tls: Option<TlsAcceptor>,
    max: usize,
    origins: Arc<Vec<String>>,
    refused: Option<OnRefused>,
) -> io::Result<Framed> {
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    let ws_config = || {
        Some(WebSocketConfig {
            max_message_size: Some(max),
            max_frame_size: Some(max),
            ..WebSocketConfig::default()
        })
    };
    let ws_err = |e: tokio_tungstenite::tungstenite::Error| {
        io::Error::new(io::ErrorKind::InvalidData, e.to_string())
    };
    match (scheme, tls) {
        (Scheme::Tcp, _) => Ok(frame_tcp_small(stream, max)),
        (Scheme::Ws, _) => {
            let ws = tokio_tungstenite::accept_hdr_async_with_config(
                stream,
                check_origin(origins, refused),
                ws_config(),
            )
            .await
            .map_err(ws_err)?;
            Ok(frame_ws(ws, max))
        }
        (Scheme::Ssl, Some(acceptor)) => Ok(frame_lines_small(acceptor.accept(stream).await?, max)),
        (Scheme::Wss, Some(acceptor)) => {
            let tls = acceptor.accept(stream).await?;
            let ws = tokio_tungstenite::accept_hdr_async_with_config(
                tls,
                check_origin(origins, refused),
                ws_config(),
            )
            .await
            .map_err(ws_err)?;
            Ok(frame_ws(ws, max))
        }
        (_, None) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TLS scheme without a certificate",
        )),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    /// A TLS client trusting `id`'s certificate: writes `prefix` in the clear (a PROXY
    /// protocol header), then over TLS a `{"ping":1}` line, and returns the line it reads back.
    pub(crate) async fn tls_ping(
        addr: SocketAddr,
        id: TlsIdentity,
        prefix: &'static [u8],
    ) -> String {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(id.cert_der().to_vec()))
            .unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(prefix).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .unwrap();
        let mut r = BufReader::new(tls);
        r.get_mut().write_all(b"{\"ping\":1}\n").await.unwrap();
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        line
    }

    #[tokio::test]
    async fn tcp_lines_and_bad_tls_client_do_not_stop_listener() {
        let id = TlsIdentity::generate_localhost().unwrap();
        let url: ServerUrl = "ssl://127.0.0.1:0".parse().unwrap();
        let mut l = Listener::bind(
            &url,
            ListenOptions {
                tls: Some(id.server_config().unwrap()),
                handshake_timeout: Duration::from_secs(2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_ne!(l.url().port, 0);
        let addr = l.local_addr();
        // A client that speaks garbage instead of TLS.
        let mut bad = TcpStream::connect(addr).await.unwrap();
        bad.write_all(b"hello, not tls\n").await.unwrap();
        // A good TLS client.
        let client = tokio::spawn(tls_ping(addr, id.clone(), b""));
        let (mut framed, _) = l.accept().await;
        assert_eq!(framed.stream.next().await.unwrap().unwrap(), "{\"ping\":1}");
        framed.sink.send("{\"pong\":1}".into()).await.unwrap();
        assert_eq!(client.await.unwrap(), "{\"pong\":1}\n");
    }

    #[test]
    fn pem_round_trip_and_load_or_generate() {
        let dir = tempfile::tempdir().unwrap();
        let a = TlsIdentity::load_or_generate(dir.path()).unwrap();
        let b = TlsIdentity::load_or_generate(dir.path()).unwrap();
        assert_eq!(a.cert_der(), b.cert_der());
        assert!(b.server_config().is_ok());
        let c = TlsIdentity::from_pem(a.cert_pem(), a.key_pem()).unwrap();
        assert_eq!(c.cert_der(), a.cert_der());
        assert!(TlsIdentity::from_pem("junk", a.key_pem()).is_err());
        assert!(TlsIdentity::from_pem(a.cert_pem(), "junk").is_err());
        std::fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
        assert!(TlsIdentity::load_or_generate(dir.path()).is_err());
    }

    #[test]
    fn origins_are_matched_exactly_and_no_origin_is_allowed() {
        let none: Vec<String> = Vec::new();
        assert!(origin_allowed(None, &none));
        assert!(!origin_allowed(Some("https://evil.example"), &none));
        let some = vec!["https://wallet.example".to_string()];
        assert!(origin_allowed(Some("https://Wallet.example"), &some));
        assert!(origin_allowed(Some("https://wallet.example/"), &some));
        assert!(!origin_allowed(Some("https://wallet.example.evil"), &some));
        assert!(!origin_allowed(Some("null"), &some));
        assert!(origin_allowed(Some("null"), &["*".to_string()]));
    }

    #[tokio::test]
    async fn tls_scheme_without_certificate_is_refused() {
        let url: ServerUrl = "wss://127.0.0.1:0".parse().unwrap();
        assert!(Listener::bind(&url, ListenOptions::default())
            .await
            .is_err());
    }
}
