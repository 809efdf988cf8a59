//! An async Electrum client: one [`Client`] per server connection.
//!
//! The client speaks to ElectrumX, Fulcrum and electrs over plain TCP, TLS, a SOCKS5 proxy
//! (Tor) or WebSocket, and hides what makes that awkward: requests are multiplexed by id over
//! one connection, batches are matched by id whatever order the server answers in,
//! subscriptions arrive as streams keyed by method *and* params, a keepalive ping detects dead
//! links, and a lost connection fails every call in flight at once (never a hang) and is
//! re-established in the background with exponential backoff, re-negotiating the protocol and
//! re-subscribing everything. A subscription whose value changed while the link was down
//! delivers the new value on its stream, so no change is lost across a reconnect.
//!
//! Calls made while the connection is down fail at once with [`ClientError::Disconnected`];
//! they are not queued, so a caller with several servers can go to another one immediately.
//!
//! Old `blockchain.address.*` methods are converted to their `blockchain.scripthash.*` twins
//! before they leave the process (servers no longer serve them); an address of the wrong
//! network is refused with [`ClientError::Address`] without touching the network.
//!
//! ```no_run
//! use electrum_gateway::client::{Client, ClientConfig};
//! use futures::StreamExt;
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::connect(ClientConfig::new("tcp://127.0.0.1:50001".parse()?)).await?;
//! let tip: serde_json::Value = client.call("blockchain.headers.subscribe", vec![]).await?;
//! let batch = client
//!     .batch(vec![
//!         ("blockchain.block.header".into(), vec![json!(0)]),
//!         ("blockchain.estimatefee".into(), vec![json!(6)]),
//!     ])
//!     .await?;
//! let scripthash = "8b01df4e368ea28f8dc0423bcf7a4923e3a12d307c875e47a0cfbf90b5c39161";
//! let (status, mut changes) = client
//!     .subscribe("blockchain.scripthash.subscribe", vec![json!(scripthash)])
//!     .await?;
//! while let Some(new_status) = changes.next().await {
//!     println!("status changed from {status} to {new_status}");
//! }
//! # let _ = (tip, batch);
//! # Ok(())
//! # }
//! ```

pub(crate) mod conn;
pub use conn::NOTIFICATION_FLOOD;
pub(crate) mod connect;
pub mod tls;

use futures::future::{self, BoxFuture};
use futures::{FutureExt, Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::Value;
use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{broadcast, oneshot};

use crate::address;
use crate::protocol::{methods, RpcError, SubscriptionKey, DEFAULT_MAX_LINE};
use crate::transport::ServerUrl;
use conn::Shared;

/// A SOCKS5 proxy (Tor, or any SOCKS5 server). Target host names are sent to the proxy
/// unresolved, so `.onion` names resolve inside Tor and no DNS query leaks locally.
///
/// Parsed from `socks5://[user:pass@]host:port` (`socks5h://` and a bare `host:port` work too).
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The proxy address, `host:port`.
    pub addr: String,
    /// Username for username/password authentication (Tor uses it for stream isolation).
    pub username: Option<String>,
    /// Password for username/password authentication.
    pub password: Option<String>,
}

impl ProxyConfig {
    /// Tor's default SOCKS port, `127.0.0.1:9050`: used for `.onion` hosts when no proxy is
    /// configured.
    pub fn tor() -> Self {
        ProxyConfig {
            addr: "127.0.0.1:9050".into(),
            username: None,
            password: None,
        }
    }
}

impl fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("addr", &self.addr)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl FromStr for ProxyConfig {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<Self, ClientError> {
        let bad = |why: &str| ClientError::Proxy(format!("invalid proxy {s:?}: {why}"));
        let s = s.trim();
        let rest = match s.split_once("://") {
            Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
                "socks5" | "socks5h" => rest,
                _ => return Err(bad("only socks5:// proxies are supported")),
            },
            None => s,
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((auth, hp)) => (Some(auth), hp),
            None => (None, rest),
        };
        let (username, password) = match auth {
            Some(a) => match a.split_once(':') {
                Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
                None => (Some(a.to_string()), None),
            },
            None => (None, None),
        };
        let (host, port) = hostport
            .rsplit_once(':')
            .ok_or_else(|| bad("missing port"))?;
        if host.is_empty() || host == "[]" {
            return Err(bad("missing host"));
        }
        port.parse::<u16>().map_err(|_| bad("invalid port"))?;
        Ok(ProxyConfig {
            addr: hostport.to_string(),
            username,
            password,
        })
    }
}

/// How a TLS server's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// Against the webpki (Mozilla) root certificates, with the host name checked.
    Verified,
    /// Pinned on first use: the certificate's SHA-256 fingerprint is stored in `pin_file` the
    /// first time and must match afterwards ([`ClientError::PinMismatch`] otherwise). See
    /// [`tls::PinStore`] for the file format.
    Pinned {
        /// The pin file (created when missing).
        pin_file: PathBuf,
    },
    /// No certificate check at all (the handshake signature is still checked). Only for
    /// testing, or when the link is otherwise authenticated.
    Insecure,
}

/// Reconnection delays: exponential from `initial` by `factor` up to `max`, each randomized by
/// `±jitter` (a fraction) so that many clients do not reconnect in lockstep.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
    /// Growth per failed attempt.
    pub factor: f64,
    /// Random spread, as a fraction of the delay (0.2 = ±20 %).
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            factor: 2.0,
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The delay before reconnection attempt number `attempt` (0 for the first).
    pub fn delay(&self, attempt: u32) -> Duration {
        use rand::Rng;
        let max = self.max.as_secs_f64();
        let base = self.initial.as_secs_f64() * self.factor.max(1.0).powi(attempt.min(1024) as i32);
        let base = base.min(max);
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let k = if jitter > 0.0 {
            rand::thread_rng().gen_range(1.0 - jitter..=1.0 + jitter)
        } else {
            1.0
        };
        Duration::try_from_secs_f64((base * k).min(max).max(0.0)).unwrap_or(self.max)
    }
}

/// Everything a [`Client`] needs to know. [`ClientConfig::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The server.
    pub server: ServerUrl,
    /// A SOCKS5 proxy; `.onion` hosts use Tor at `127.0.0.1:9050` when this is `None`.
    pub proxy: Option<ProxyConfig>,
    /// Certificate checking for `ssl://` and `wss://` (default: [`TlsMode::Verified`]).
    pub tls: TlsMode,
    /// The client name sent in `server.version` (default `electrum-gateway/<version>`).
    pub client_name: String,
    /// The lowest protocol version accepted (default `"1.4"`).
    pub protocol_min: String,
    /// The highest protocol version offered (default `"1.6"`).
    pub protocol_max: String,
    /// Limit for connecting, including proxy, TLS and WebSocket handshakes (default 10 s).
    pub connect_timeout: Duration,
    /// Limit for each request or batch (default 30 s).
    pub request_timeout: Duration,
    /// Interval of keepalive `server.ping`s; a ping without answer within the request timeout
    /// marks the connection dead (default 60 s; `None` disables pings).
    pub ping_interval: Option<Duration>,
    /// Reconnection policy; `None` closes the client when the connection is lost.
    pub reconnect: Option<Backoff>,
    /// The largest message accepted from the server, in bytes; a larger one closes the
    /// connection (default [`DEFAULT_MAX_LINE`]).
    pub max_message: usize,
    /// The network addresses must belong to, for `blockchain.address.*` calls (default
    /// Bitcoin mainnet).
    pub network: bitcoin::Network,
    /// Notifications queued per subscription stream at most; a server that sends more than a
    /// subscriber takes is flooding, and the connection is closed (default 1024).
    pub max_queued_notifications: usize,
    /// Servers that hold small answers back (ElectrumX 1.18+ over TCP and TLS sends output only
    /// once 1,024 bytes are buffered or a second has passed): when requests have waited this
    /// long with nothing read, the client asks for something about 1.3 kB long
    /// (`blockchain.block.headers` of the first eight blocks) so that the held answers go out at
    /// once. Only for servers whose software is ElectrumX, never over WebSocket; `None` turns it
    /// off (default 25 ms, or three times the connection's round trip if that is longer).
    pub hold_back_nudge: Option<Duration>,
}

impl ClientConfig {
    /// A configuration for `server` with every default.
    pub fn new(server: ServerUrl) -> Self {
        ClientConfig {
            server,
            proxy: None,
            tls: TlsMode::Verified,
            client_name: format!("electrum-gateway/{}", env!("CARGO_PKG_VERSION")),
            protocol_min: "1.4".into(),
            protocol_max: "1.6".into(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            ping_interval: Some(Duration::from_secs(60)),
            reconnect: Some(Backoff::default()),
            max_message: DEFAULT_MAX_LINE,
            network: bitcoin::Network::Bitcoin,
            max_queued_notifications: 1024,
            hold_back_nudge: Some(Duration::from_millis(25)),
        }
    }
}

/// What the server said about itself in `server.version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// Server software and version, e.g. `ElectrumX 1.18.0`.
    pub software: String,
    /// The negotiated protocol version, e.g. `1.4`.
    pub protocol: String,
}

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    /// Dialing or negotiating.
    Connecting,
    /// Negotiated; calls go through.
    Connected,
    /// Lost; waiting to reconnect. Calls fail at once.
    Disconnected,
    /// Closed for good ([`Client::close`], or lost without a reconnect policy).
    Closed,
}

/// A change of connection state, from [`Client::events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// A reconnection attempt started.
    Connecting,
    /// Connected and negotiated.
    Connected {
        /// Server software.
        software: String,
        /// Negotiated protocol version.
        protocol: String,
    },
    /// The connection was lost, or a reconnection attempt failed.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// After a reconnect, this many subscriptions were re-established.
    Resubscribed {
        /// Subscriptions the server accepted again.
        count: usize,
    },
    /// The client is closed and will not reconnect.
    Closed,
}

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// TLS failed (handshake, certificate, pin file).
    #[error("TLS: {0}")]
    Tls(String),
    /// The server's certificate differs from the pinned one.
    #[error(
        "certificate of {server} changed: pinned fingerprint {expected}, presented {got} \
         (remove the pin from the pin file if the change is expected)"
    )]
    PinMismatch {
        /// `host:port`.
        server: String,
        /// The pinned fingerprint.
        expected: String,
        /// The fingerprint presented.
        got: String,
    },
    /// The proxy failed or refused.
    #[error("proxy: {0}")]
    Proxy(String),
    /// No answer within the request timeout.
    #[error("request timed out")]
    Timeout,
    /// The connection is down (or went down while the call was in flight).
    #[error("disconnected: {0}")]
    Disconnected(String),
    /// The client was closed.
    #[error("client closed")]
    Closed,
    /// The server answered with an error.
    #[error("server error: {0}")]
    Rpc(RpcError),
    /// The server broke the protocol (bad negotiation, malformed or unexpected answer).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// An address that is invalid or belongs to another network.
    #[error("address: {0}")]
    Address(String),
}

/// The client's handle on its background task; dropping the last [`Client`] clone stops it.
struct ClientInner {
    shared: Arc<Shared>,
    /// Completes when the background task has ended; every clone may await it.
    task: future::Shared<BoxFuture<'static, ()>>,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        self.shared.shutdown();
    }
}

/// A connection to one Electrum server, kept alive in the background. Cheap to clone; all
/// clones share the connection. Dropping the last clone closes it.
///
/// ```no_run
/// use electrum_gateway::client::{Client, ClientConfig, TlsMode};
/// use futures::StreamExt;
/// use serde_json::json;
///
/// # async fn demo() -> Result<(), electrum_gateway::client::ClientError> {
/// let mut config = ClientConfig::new("ssl://electrum.example.org:50002".parse().unwrap());
/// config.tls = TlsMode::Pinned { pin_file: "pins.json".into() };
/// let client = Client::connect(config).await?;
/// println!("talking to {:?}", client.server_info());
///
/// // One call; the result is deserialized into any serde type.
/// let header: String = client.call("blockchain.block.header", vec![json!(0)]).await?;
///
/// // Several calls on one line; results come back in call order.
/// let answers = client
///     .batch(vec![
///         ("blockchain.block.header".into(), vec![json!(1)]),
///         ("server.banner".into(), vec![]),
///     ])
///     .await?;
///
/// // A subscription: the current value now, later values on the stream.
/// let (tip, mut tips) = client.subscribe("blockchain.headers.subscribe", vec![]).await?;
/// while let Some(new_tip) = tips.next().await {
///     println!("new tip {new_tip}");
/// }
/// # let _ = (header, answers, tip);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.url().to_string())
            .field("state", &self.state())
            .finish()
    }
}

impl Client {
    /// Connects and negotiates the protocol version. This first attempt must succeed; after
    /// it, a background task keeps the connection up (reconnecting per the policy).
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        for v in [&config.protocol_min, &config.protocol_max] {
            if methods::parse_version(v).is_none() {
                return Err(ClientError::Protocol(format!(
                    "invalid protocol version {v:?} in the client configuration"
                )));
            }
        }
        let framed = connect::dial(&config).await?;
        let shared = Arc::new(Shared::new(config));
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(conn::run(shared.clone(), framed, ready_tx));
        let task = async move {
            let _ = task.await;
        };
        let client = Client {
            inner: Arc::new(ClientInner {
                shared,
                task: task.boxed().shared(),
            }),
        };
        match ready_rx.await {
            Ok(Ok(())) => Ok(client),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Disconnected(
                "connection task ended during negotiation".into(),
            )),
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// Sends one request and returns the raw result. `blockchain.address.*` methods are
    /// converted to `blockchain.scripthash.*`.
    pub async fn request(
        &self,
        method: &str,
        params: Vec<Value>,
    ) -> Result<Box<RawValue>, ClientError> {
        let (method, params) = convert_address(method, params, self.shared().config.network)?;
        let mut answers = self
            .shared()
            .call(vec![(method, params)], false, false)
            .await?;
        answers
            .pop()
            .ok_or_else(|| ClientError::Protocol("no answer".into()))?
            .map_err(ClientError::Rpc)
    }

    /// [`Client::request`] answered within `limit` (at most the configured request timeout),
    /// else [`ClientError::Timeout`].
    pub async fn request_within(
        &self,
        method: &str,
        params: Vec<Value>,
        limit: Duration,
    ) -> Result<Box<RawValue>, ClientError> {
        let (method, params) = convert_address(method, params, self.shared().config.network)?;
        let limit = limit.min(self.shared().config.request_timeout);
        self.shared()
            .call_one(method, params, false, limit)
            .await?
            .map_err(ClientError::Rpc)
    }

    /// Sends one request and deserializes the result.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        params: Vec<Value>,
    ) -> Result<T, ClientError> {
        let raw = self.request(method, params).await?;
        serde_json::from_str(raw.get()).map_err(|e| {
            ClientError::Protocol(format!("unexpected result shape for {method}: {e}"))
        })
    }

    /// Sends several requests as one batch (one JSON array). The server may answer in any
    /// order; results are returned in call order, each the result or the server's error for
    /// that call. A lost connection or a timeout fails the whole batch.
    ///
    /// Subscription methods in a batch are plain calls: their notifications are not routed
    /// to any stream (use [`Client::subscribe`]).
    pub async fn batch(
        &self,
        calls: Vec<(String, Vec<Value>)>,
    ) -> Result<Vec<Result<Box<RawValue>, RpcError>>, ClientError> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let network = self.shared().config.network;
        let calls = calls
            .into_iter()
            .map(|(m, p)| convert_address(&m, p, network))
            .collect::<Result<Vec<_>, _>>()?;
        self.shared().call(calls, true, false).await
    }

    /// Subscribes: returns the current value and a stream of later values (a scripthash
    /// status string or null, or a header dict). Subscriptions are keyed by method and
    /// params; several local subscribers to the same key share one server subscription.
    /// `blockchain.address.subscribe` is converted to `blockchain.scripthash.subscribe`.
    pub async fn subscribe(
        &self,
        method: &str,
        params: Vec<Value>,
    ) -> Result<(Box<RawValue>, Subscription), ClientError> {
        let (method, params) = convert_address(method, params, self.shared().config.network)?;
        self.shared().subscribe(method, params).await
    }

    /// The server's software and negotiated protocol, once negotiated (the latest).
    pub fn server_info(&self) -> Option<ServerInfo> {
        self.shared().server_info()
    }

    /// The connection state now.
    pub fn state(&self) -> ConnectionState {
        self.shared().connection_state()
    }

    /// A stream of connection state changes from now on.
    pub fn events(&self) -> broadcast::Receiver<ClientEvent> {
        self.shared().events.subscribe()
    }

    /// Sets where this connection's scripthash notifications that no [`Subscription`] takes
    /// go ([`StatusSink`]). A client has at most one sink: false when one was set already.
    pub fn set_status_sink(&self, sink: Arc<dyn StatusSink>) -> bool {
        self.shared().set_sink(sink)
    }

    /// True once a [`StatusSink`] is set.
    pub fn has_status_sink(&self) -> bool {
        self.shared().has_sink()
    }

    /// Sends a request without waiting for its answer (which is dropped), such as
    /// `blockchain.scripthash.unsubscribe`. False when no connection is up to send it on.
    pub fn cast(&self, method: &str, params: Vec<Value>) -> bool {
        self.shared().cast(method, params)
    }

    /// Tells this client from every other in the process (clones share it).
    pub fn id(&self) -> u64 {
        self.shared().id
    }

    /// The server this client talks to.
    pub fn url(&self) -> &ServerUrl {
        &self.shared().config.server
    }

    /// Closes the connection and stops reconnecting. Calls in flight fail with
    /// [`ClientError::Closed`], subscription streams end. Returns when the connection is
    /// closed.
    pub async fn close(&self) {
        self.shared().shutdown();
        self.inner.task.clone().await;
    }
}

/// Converts a `blockchain.address.*` call to its `blockchain.scripthash.*` twin; any other
/// call is returned unchanged.
fn convert_address(
    method: &str,
    mut params: Vec<Value>,
    network: bitcoin::Network,
) -> Result<(String, Vec<Value>), ClientError> {
    let Some(twin) = methods::scripthash_twin(method) else {
        return Ok((method.to_string(), params));
    };
    let Some(Value::String(addr)) = params.first() else {
        return Err(ClientError::Address(format!(
            "{method} takes an address string as its first parameter"
        )));
    };
    let sh =
        address::script_hash(addr, network).map_err(|e| ClientError::Address(e.to_string()))?;
    params[0] = Value::String(sh);
    Ok((twin.to_string(), params))
}

/// Takes a connection's scripthash notifications that no [`Subscription`] takes: those of
/// subscriptions made with plain requests (`Client::request("blockchain.scripthash.subscribe",
/// ..)`) by an owner that keeps its own table of them, as the gateway's subscription hub does
/// (one table for every upstream connection instead of a stream per subscription). Set with
/// [`Client::set_status_sink`].
pub trait StatusSink: Send + Sync {
    /// The server says `scripthash`'s status is now `status`. Called on the connection's
    /// reader, in the order the server sent it: it must not block. False when the server sends
    /// more than is taken (a flood): the connection is closed with a reason starting with
    /// [`NOTIFICATION_FLOOD`].
    fn status(&self, scripthash: &str, status: &Value) -> bool;
    /// The connection was lost or closed: the server dropped every subscription made on it.
    fn lost(&self);
}

/// The values of one subscription after the initial one, as a [`Stream`]. The stream ends
/// when the client is closed, or when the server refuses the subscription after a
/// reconnect.
///
/// Dropping it removes this subscriber; when it was the last one for a scripthash, the
/// server subscription is ended with `blockchain.scripthash.unsubscribe`.
pub struct Subscription {
    shared: Arc<Shared>,
    key: Arc<SubscriptionKey>,
    id: u64,
    rx: futures::channel::mpsc::Receiver<Value>,
}

impl Subscription {
    /// The key: method and params (scripthash form for converted address subscriptions).
    pub fn key(&self) -> &SubscriptionKey {
        &self.key
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("method", &self.key.method)
            .finish_non_exhaustive()
    }
}

impl Stream for Subscription {
    type Item = Value;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Value>> {
        self.get_mut().rx.poll_next_unpin(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.shared.remove_subscriber(&self.key, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn proxy_urls() {
        let p: ProxyConfig = "socks5://127.0.0.1:9050".parse().unwrap();
        assert_eq!(p, ProxyConfig::tor());
        let p: ProxyConfig = "socks5h://alice:s3cret@[::1]:1080".parse().unwrap();
        assert_eq!(p.addr, "[::1]:1080");
        assert_eq!(p.username.as_deref(), Some("alice"));
        assert_eq!(p.password.as_deref(), Some("s3cret"));
        assert!(!format!("{p:?}").contains("s3cret"));
        let p: ProxyConfig = "localhost:1080".parse().unwrap();
        assert_eq!(p.addr, "localhost:1080");
        for bad in ["http://h:1", "socks5://h", "socks5://h:x", "socks5://:1"] {
            assert!(bad.parse::<ProxyConfig>().is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_grows_caps_and_jitters_within_bounds() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            factor: 2.0,
            jitter: 0.0,
        };
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(1), Duration::from_millis(200));
        assert_eq!(b.delay(3), Duration::from_millis(800));
        assert_eq!(b.delay(4), Duration::from_secs(1));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
        let j = Backoff { jitter: 0.5, ..b };
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let d = j.delay(1);
            assert!(d >= Duration::from_millis(100) && d <= Duration::from_millis(300));
            seen.insert(d);
        }
        assert!(seen.len() > 1, "jitter must vary the delay");
    }

    #[test]
    fn address_methods_are_converted() {
        let (m, p) = convert_address(
            "blockchain.address.get_balance",
            vec![json!("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa")],
            bitcoin::Network::Bitcoin,
        )
        .unwrap();
        assert_eq!(m, "blockchain.scripthash.get_balance");
        assert_eq!(
            p,
            vec![json!(
                "8b01df4e368ea28f8dc0423bcf7a4923e3a12d307c875e47a0cfbf90b5c39161"
            )]
        );
        let (m, p) =
            convert_address("server.ping", vec![json!(1)], bitcoin::Network::Bitcoin).unwrap();
        assert_eq!((m.as_str(), p), ("server.ping", vec![json!(1)]));
        for params in [vec![], vec![json!(5)]] {
            assert!(matches!(
                convert_address(
                    "blockchain.address.subscribe",
                    params,
                    bitcoin::Network::Bitcoin
                ),
                Err(ClientError::Address(_))
            ));
        }
    }
}
