//! Probing one server endpoint: everything the spider records about it, in one visit.
//!
//! For TLS endpoints the certificate is fetched first over its own handshake (the client
//! library does not hand certificates out), then a client connects without certificate
//! checks, measures one `server.ping` round trip as the latency (the first small request,
//! before ElectrumX's output padding can hold answers back), and asks the rest in one
//! pipelined go. Each question may fail on its own; only failing to connect makes the
//! endpoint unreachable.

use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime};

use super::cert::{self, CertKind, CertReport, FetchError};
use super::header_hash;
use super::software::{self, Evidence, Software};
use crate::client::{Client, ClientConfig, ClientError, ProxyConfig, TlsMode};
use crate::protocol::methods::parse_version;
use crate::servers::{parse_peers, ServerInfo};
use crate::transport::ServerUrl;

/// What an endpoint told about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    /// The software string of `server.version`, e.g. `ElectrumX 1.16.0`.
    pub server_version: String,
    /// The negotiated protocol version.
    pub protocol: String,
    /// `protocol_min` of `server.features`.
    pub protocol_min: Option<String>,
    /// `protocol_max` of `server.features`.
    pub protocol_max: Option<String>,
    /// The implementation (see [`super::software`]).
    pub software: Software,
    /// The hash of the block at height 0 it serves (or, failing that, the `genesis_hash` of
    /// its features), lower-case hex.
    pub genesis_hash: Option<String>,
    /// `pruning` of `server.features` (absent or null: keeps everything).
    pub pruning: Option<u64>,
    /// The tip height.
    pub tip_height: Option<u64>,
    /// The tip block hash.
    pub tip_hash: Option<String>,
    /// The round trip of one `server.ping`.
    pub latency: Duration,
    /// `server.banner`.
    pub banner: Option<String>,
    /// Its `server.peers.subscribe` answer (`None`: refused or not a list).
    pub peers: Option<Vec<ServerInfo>>,
    /// When it answered.
    pub seen_at: SystemTime,
}

/// One endpoint visited.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointReport {
    /// The endpoint.
    pub url: ServerUrl,
    /// What it said, or why it could not be asked.
    pub outcome: Result<Facts, String>,
    /// The certificate verdict, for TLS endpoints whose handshake got that far.
    pub cert: Option<CertReport>,
}

impl EndpointReport {
    /// The facts, if reachable.
    pub fn facts(&self) -> Option<&Facts> {
        self.outcome.as_ref().ok()
    }
}

/// The most peers taken from one server's answer; the rest are ignored.
pub(crate) const MAX_PEERS_PER_SERVER: usize = 1000;

/// Visits `url`, within `timeout` for the whole visit.
pub(crate) async fn probe(
    url: ServerUrl,
    proxy: Option<ProxyConfig>,
    timeout: Duration,
) -> EndpointReport {
    let mut report = EndpointReport {
        url: url.clone(),
        outcome: Err(String::new()),
        cert: None,
    };
    let visit = visit(&url, proxy, timeout, &mut report.cert);
    report.outcome = match tokio::time::timeout(timeout, visit).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("timed out after {:.1} s", timeout.as_secs_f64())),
    };
    report
}

async fn visit(
    url: &ServerUrl,
    proxy: Option<ProxyConfig>,
    timeout: Duration,
    cert_out: &mut Option<CertReport>,
) -> Result<Facts, String> {
    if url.scheme.is_tls() {
        match cert::fetch_chain(url, proxy.as_ref(), timeout).await {
            Ok(chain) => *cert_out = Some(cert::classify(&chain, &url.host)),
            Err(FetchError::Connect(e)) => return Err(format!("cannot connect: {e}")),
            Err(FetchError::Tls(e)) => {
                *cert_out = Some(CertReport {
                    kind: CertKind::Broken,
                    sha256: String::new(),
                    detail: Some(format!("handshake failed: {e}")),
                });
                return Err(format!("TLS handshake failed: {e}"));
            }
        }
    }
    let mut config = ClientConfig::new(url.clone());
    config.proxy = proxy;
    config.tls = TlsMode::Insecure;
    config.connect_timeout = timeout;
    config.request_timeout = timeout;
    config.ping_interval = None;
    config.reconnect = None;
    let client = Client::connect(config).await.map_err(|e| e.to_string())?;
    let facts = ask(&client).await;
    client.close().await;
    facts
}

/// A result as JSON, or `None` when the server answered with an error. A lost connection
/// is an error of the whole visit.
async fn get(client: &Client, method: &str, params: Vec<Value>) -> Result<Option<Value>, String> {
    match client.request(method, params).await {
        Ok(raw) => Ok(serde_json::from_str(raw.get()).ok()),
        Err(ClientError::Rpc(_)) => Ok(None),
        Err(e) => Err(format!("{method}: {e}")),
    }
}

async fn ask(client: &Client) -> Result<Facts, String> {
    let started = Instant::now();
    get(client, "server.ping", vec![]).await?;
    let latency = started.elapsed();
    let (features, header0, tip, peers, banner, donation) = futures::join!(
        get(client, "server.features", vec![]),
        get(client, "blockchain.block.header", vec![json!(0)]),
        get(client, "blockchain.headers.subscribe", vec![]),
        get(client, "server.peers.subscribe", vec![]),
        get(client, "server.banner", vec![]),
        get(client, "server.donation_address", vec![]),
    );
    let (features, header0, tip, peers, banner, donation) =
        (features?, header0?, tip?, peers?, banner?, donation?);
    let info = client
        .server_info()
        .ok_or("connection closed during the visit")?;

    let features = features.filter(Value::is_object);
    let feature = |key: &str| {
        features
            .as_ref()
            .and_then(|f| f.get(key))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let genesis_hash = header0
        .as_ref()
        .and_then(Value::as_str)
        .and_then(header_hash)
        .or_else(|| feature("genesis_hash").map(|g| g.to_ascii_lowercase()));
    // Junk versions are dropped rather than written to server lists.
    let version = |key: &str| feature(key).filter(|v| parse_version(v).is_some());
    let protocol_min = version("protocol_min");
    let protocol_max = version("protocol_max");
    let pruning = features
        .as_ref()
        .and_then(|f| f.get("pruning"))
        .and_then(Value::as_u64);
    let tip_height = tip
        .as_ref()
        .and_then(|t| t.get("height"))
        .and_then(Value::as_u64);
    let tip_hash = tip
        .as_ref()
        .and_then(|t| t.get("hex"))
        .and_then(Value::as_str)
        .and_then(header_hash);
    let peer_list: Option<Vec<ServerInfo>> = peers.as_ref().and_then(|p| {
        let mut list = parse_peers(p).ok()?;
        list.truncate(MAX_PEERS_PER_SERVER);
        Some(list)
    });
    let banner = banner.and_then(|b| b.as_str().map(str::to_string));
    let max_version = protocol_max
        .as_deref()
        .and_then(parse_version)
        .or_else(|| parse_version(&info.protocol));
    let software = software::classify(&Evidence {
        server_version: &info.software,
        features_version: feature("server_version").as_deref(),
        banner: banner.as_deref(),
        protocol_max: max_version,
        peers_empty: peers.as_ref().and_then(Value::as_array).map(Vec::is_empty),
        donation_null: donation.as_ref().is_some_and(Value::is_null),
    });
    Ok(Facts {
        server_version: info.software,
        protocol: info.protocol,
        protocol_min,
        protocol_max,
        software,
        genesis_hash,
        pruning,
        tip_height,
        tip_hash,
        latency,
        banner,
        peers: peer_list,
        seen_at: SystemTime::now(),
    })
}
