//! A simulated Electrum server with fault injection, for tests, demos and wallet developers.
//!
//! The gateway has to be tested against servers that lag, lie, stall, fork and disappear,
//! and that is impractical with real ones. The simulator serves one deterministic regtest
//! chain (real headers, proof of work, merkle roots and transactions, so everything a client
//! verifies can be verified) on any number of endpoints, each with its own transport and its
//! own faults. It runs in-process ([`Sim::start`]) or as `electrum-gateway sim` ([`run`]).
//!
//! Tests drive it through the API ([`Sim::mine`], [`Sim::pay`], [`Sim::reorg`],
//! [`Sim::set_faults`], [`Sim::stop_endpoint`]) or through control methods on the wire
//! (`sim.mine`, `sim.pay`, `sim.reorg`). See `docs/sim.md` for the addresses, faults and
//! methods.
//!
//! All endpoints share one chain behind one lock. A change bumps a generation counter in a
//! `watch` channel; each connection then recomputes what it subscribed to from its endpoint's
//! view and notifies what changed.

pub mod addresses;
pub(crate) mod block;
pub(crate) mod chain;
mod endpoint;
pub mod faults;
pub(crate) mod rpc;
mod session;
pub(crate) mod view;

pub use addresses::{SimAddress, ADDRESSES};
pub use endpoint::MAX_REQUEST_SIZE;
pub use faults::{EndpointSpec, FaultError, Faults};

use anyhow::Context as _;
use bitcoin::consensus::encode::serialize_hex;
use bitcoin::Txid;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

use crate::listen::TlsIdentity;
use crate::transport::{Scheme, ServerUrl};
use chain::Chain;
use endpoint::Endpoint;
use view::{parse_sh, sh_hex, View};

/// Locks a mutex, carrying on if a panicking thread poisoned it (the data stays usable).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Configuration of a simulator.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed of the chain: the same seed gives the same blocks.
    pub seed: u64,
    /// Number of blocks generated at start (on top of genesis).
    pub blocks: u32,
    /// The endpoints to serve, sharing the chain.
    pub endpoints: Vec<EndpointSpec>,
    /// Peers returned by `server.peers.subscribe`, as `HOST:PORT[:t|s]`.
    pub peers: Vec<String>,
    /// A certificate and key (PEM files) for TLS endpoints; a self-signed one is generated
    /// for `localhost` and `127.0.0.1` when absent.
    pub cert: Option<(PathBuf, PathBuf)>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            blocks: 300,
            endpoints: Vec::new(),
            peers: Vec::new(),
            cert: None,
        }
    }
}

impl SimConfig {
    /// A default chain served on the given endpoints (`ADDR[,FAULT...]` each).
    pub fn with_endpoints(endpoints: &[&str]) -> anyhow::Result<SimConfig> {
        let endpoints = endpoints
            .iter()
            .map(|e| e.parse().with_context(|| format!("endpoint {e:?}")))
            .collect::<anyhow::Result<_>>()?;
        Ok(SimConfig {
            endpoints,
            ..SimConfig::default()
        })
    }
}

pub(crate) struct Inner {
    chain: Mutex<Chain>,
    /// Carries the chain generation; every change (and fault change) bumps it.
    changes: watch::Sender<u64>,
    endpoints: Vec<Endpoint>,
    peers: Value,
    tls: Option<TlsIdentity>,
    tls_config: Option<Arc<rustls::ServerConfig>>,
    genesis_hash: String,
    seed: u64,
    next_conn: AtomicU64,
    closed: AtomicBool,
}

impl Inner {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    fn urls(&self) -> Vec<ServerUrl> {
        self.endpoints.iter().map(|e| e.url()).collect()
    }

    fn changed(&self) {
        self.changes.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// The view endpoint `ep` serves, given its `lag` and `fork` faults.
    fn view_for(&self, ep: usize) -> Arc<View> {
        let faults = self.endpoints[ep].faults();
        let chain = lock(&self.chain);
        if faults.lag == 0 && faults.fork == 0 {
            return chain.main().clone();
        }
        let key = (chain.generation, faults.lag, faults.fork);
        self.endpoints[ep].cached_view(key, || chain.branch_view(faults.lag, faults.fork))
    }

    fn main_view(&self) -> Arc<View> {
        lock(&self.chain).main().clone()
    }

    fn mine(&self, n: u32) -> u32 {
        let tip = lock(&self.chain).mine(n);
        if n > 0 {
            self.changed();
        }
        tip
    }

    fn pay(&self, target: &str, sats: u64) -> anyhow::Result<Txid> {
        let script = chain::pay_target(target)?;
        let txid = lock(&self.chain).pay(script, sats)?;
        self.changed();
        Ok(txid)
    }

    fn reorg(&self, depth: u32) -> anyhow::Result<u32> {
        let tip = lock(&self.chain).reorg(depth)?;
        self.changed();
        Ok(tip)
    }

    fn broadcast(&self, tx: bitcoin::Transaction) -> Result<Txid, String> {
        let r = lock(&self.chain).broadcast(tx);
        if r.is_ok() {
            self.changed();
        }
        r
    }

    fn broadcast_package(
        &self,
        txs: Vec<bitcoin::Transaction>,
    ) -> Result<Vec<Txid>, (Txid, String)> {
        let r = lock(&self.chain).broadcast_package(txs);
        if r.is_ok() {
            self.changed();
        }
        r
    }
}

/// Formats `--peer` entries as `server.peers.subscribe` answers.
fn peers_json(peers: &[String]) -> anyhow::Result<Value> {
    let mut out = Vec::with_capacity(peers.len());
    for p in peers {
        let text = if p.ends_with(":t") || p.ends_with(":s") {
            p.clone()
        } else {
            format!("{p}:t")
        };
        let url: ServerUrl = text.parse().with_context(|| format!("peer {p:?}"))?;
        let port = match url.scheme {
            Scheme::Ssl => format!("s{}", url.port),
            _ => format!("t{}", url.port),
        };
        out.push(json!([url.host, url.host, ["v1.6", "p10000", port]]));
    }
    Ok(Value::Array(out))
}

/// A running simulator. Cheap to clone; every clone controls the same chain and endpoints.
#[derive(Clone)]
pub struct Sim {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim").field("urls", &self.urls()).finish()
    }
}

impl Sim {
    /// Generates the chain and binds every endpoint.
    pub async fn start(config: SimConfig) -> anyhow::Result<Sim> {
        let peers = peers_json(&config.peers)?;
        let needs_tls = config.endpoints.iter().any(|e| e.url.scheme.is_tls());
        let tls = match &config.cert {
            Some((cert, key)) => Some(TlsIdentity::load(cert, key)?),
            None if needs_tls => Some(TlsIdentity::generate_localhost()?),
            None => None,
        };
        let tls_config = tls.as_ref().map(|t| t.server_config()).transpose()?;
        let (seed, blocks) = (config.seed, config.blocks);
        let chain = tokio::task::spawn_blocking(move || Chain::generate(seed, blocks))
            .await
            .context("chain generation")?;
        let genesis_hash = chain.main().blocks()[0].hash.to_string();
        let inner = Arc::new(Inner {
            chain: Mutex::new(chain),
            changes: watch::channel(0).0,
            endpoints: config
                .endpoints
                .iter()
                .map(|e| Endpoint::new(e.url.clone(), e.faults.clone()))
                .collect(),
            peers,
            tls,
            tls_config,
            genesis_hash,
            seed: config.seed,
            next_conn: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        let sim = Sim { inner };
        for ep in 0..sim.inner.endpoints.len() {
            if let Err(e) = endpoint::start(&sim.inner, ep).await {
                sim.shutdown().await;
                return Err(e);
            }
            endpoint::spawn_flap(&sim.inner, ep);
        }
        Ok(sim)
    }

    /// The endpoints' URLs with their bound ports, in configuration order.
    pub fn urls(&self) -> Vec<ServerUrl> {
        self.inner.urls()
    }

    /// The URL of one endpoint.
    pub fn url(&self, endpoint: usize) -> ServerUrl {
        self.inner.endpoints[endpoint].url()
    }

    /// The TLS certificate (DER) of ssl/wss endpoints, for clients to pin.
    pub fn cert_der(&self) -> Option<Vec<u8>> {
        self.inner.tls.as_ref().map(|t| t.cert_der().to_vec())
    }

    /// The TLS certificate (PEM) of ssl/wss endpoints.
    pub fn cert_pem(&self) -> Option<String> {
        self.inner.tls.as_ref().map(|t| t.cert_pem().to_string())
    }

    /// Mines `n` blocks, the first confirming the mempool; returns the new tip height.
    pub fn mine(&self, n: u32) -> u32 {
        self.inner.mine(n)
    }

    /// Pays `sats` to a regtest address (or the scripthash of a documented address) in a new
    /// mempool transaction; returns its txid.
    pub fn pay(&self, address_or_scripthash: &str, sats: u64) -> anyhow::Result<Txid> {
        self.inner.pay(address_or_scripthash, sats)
    }

    /// Replaces the last `depth` blocks by `depth + 1` new ones; their transactions return to
    /// the mempool.
    pub fn reorg(&self, depth: u32) -> anyhow::Result<()> {
        self.inner.reorg(depth).map(|_| ())
    }

    /// Adds a raw transaction to the mempool, as `blockchain.transaction.broadcast` does.
    pub fn broadcast(&self, tx: bitcoin::Transaction) -> anyhow::Result<Txid> {
        self.inner.broadcast(tx).map_err(|e| anyhow::anyhow!(e))
    }

    /// The main chain's tip height.
    pub fn tip_height(&self) -> u32 {
        self.inner.main_view().tip_height()
    }

    /// The main chain's tip header, hex.
    pub fn tip_header_hex(&self) -> String {
        serialize_hex(&self.inner.main_view().tip().header)
    }

    /// The main chain's header at `height`, hex.
    pub fn header_hex(&self, height: u32) -> Option<String> {
        self.inner
            .main_view()
            .block(height)
            .map(|b| serialize_hex(&b.header))
    }

    /// The main chain's block hash at `height`.
    pub fn block_hash(&self, height: u32) -> Option<bitcoin::BlockHash> {
        self.inner.main_view().block_hash(height)
    }

    /// The txids of a main-chain block.
    pub fn block_txids(&self, height: u32) -> Option<Vec<Txid>> {
        self.inner
            .main_view()
            .block(height)
            .map(|b| b.txids.clone())
    }

    /// The mempool's txids, in acceptance order.
    pub fn mempool_txids(&self) -> Vec<Txid> {
        self.inner
            .main_view()
            .mempool()
            .iter()
            .map(|m| m.txid)
            .collect()
    }

    /// A transaction (confirmed or in the mempool) as raw hex.
    pub fn tx_hex(&self, txid: &Txid) -> Option<String> {
        self.inner
            .main_view()
            .tx(txid)
            .map(|l| serialize_hex(&*l.tx))
    }

    /// The honest status of a scripthash (`None`: no history).
    pub fn status(&self, scripthash: &str) -> anyhow::Result<Option<String>> {
        let sh = parse_scripthash(scripthash)?;
        Ok(view::status(&self.inner.main_view().history(&sh)))
    }

    /// The status endpoint `endpoint` serves for a scripthash, faults included.
    pub fn served_status(
        &self,
        endpoint: usize,
        scripthash: &str,
    ) -> anyhow::Result<Option<String>> {
        let sh = parse_scripthash(scripthash)?;
        let faults = self.inner.endpoints[endpoint].faults();
        let view = self.inner.view_for(endpoint);
        Ok(view::status(&rpc::served_history(&view, &faults, &sh)))
    }

    /// The honest `get_history` answer for a scripthash.
    pub fn history_json(&self, scripthash: &str) -> anyhow::Result<Value> {
        let sh = parse_scripthash(scripthash)?;
        Ok(rpc::history_json(&self.inner.main_view().history(&sh)))
    }

    /// The honest `listunspent` answer for a scripthash.
    pub fn listunspent_json(&self, scripthash: &str) -> anyhow::Result<Value> {
        let sh = parse_scripthash(scripthash)?;
        Ok(rpc::listunspent_json(&self.inner.main_view(), &sh))
    }

    /// The honest balance (confirmed, unconfirmed) of a scripthash.
    pub fn balance(&self, scripthash: &str) -> anyhow::Result<(u64, i64)> {
        let sh = parse_scripthash(scripthash)?;
        Ok(self.inner.main_view().balance(&sh))
    }

    /// The faults of an endpoint now.
    pub fn faults(&self, endpoint: usize) -> Faults {
        self.inner.endpoints[endpoint].faults()
    }

    /// Changes an endpoint's faults at once; connections see the new behaviour on their next
    /// message (and are notified if their view changed, e.g. when `lag` is lifted).
    pub fn set_faults(&self, endpoint: usize, faults: Faults) {
        let e = &self.inner.endpoints[endpoint];
        let new_flap = faults.flap_secs;
        let old = e.set_faults(faults);
        if new_flap.is_some() && new_flap != old.flap_secs {
            endpoint::spawn_flap(&self.inner, endpoint);
        }
        self.inner.changed();
    }

    /// Closes an endpoint's listener and all its connections (a killed server).
    pub async fn stop_endpoint(&self, endpoint: usize) {
        endpoint::stop(&self.inner, endpoint).await;
    }

    /// Listens again on the same address after [`Sim::stop_endpoint`].
    pub async fn start_endpoint(&self, endpoint: usize) -> anyhow::Result<()> {
        endpoint::start(&self.inner, endpoint).await
    }

    /// True while the endpoint accepts connections.
    pub async fn is_listening(&self, endpoint: usize) -> bool {
        self.inner.endpoints[endpoint].is_listening().await
    }

    /// Open connections of an endpoint now.
    pub fn connections(&self, endpoint: usize) -> usize {
        self.inner.endpoints[endpoint].connections()
    }

    /// Scripthash subscriptions held by the endpoint's open connections: the sum over
    /// connections of the distinct scripthashes each subscribed.
    pub fn subscriptions(&self, endpoint: usize) -> usize {
        self.inner.endpoints[endpoint].subscriptions()
    }

    /// The distinct scripthashes subscribed by any open connection of the endpoint.
    pub fn subscribed_scripthashes(&self, endpoint: usize) -> Vec<String> {
        self.inner.endpoints[endpoint]
            .subscribed()
            .iter()
            .map(sh_hex)
            .collect()
    }

    /// Every scripthash the endpoint was asked about (subscribed to, or read) since it
    /// started, by any connection: what this server has learnt of the wallets behind its
    /// clients.
    pub fn asked_scripthashes(&self, endpoint: usize) -> BTreeSet<String> {
        self.inner.endpoints[endpoint]
            .asked()
            .iter()
            .map(sh_hex)
            .collect()
    }

    /// [`Sim::asked_scripthashes`] per connection, closed ones included: which scripthashes
    /// arrived together on one connection (what lets a server link them).
    pub fn asked_by_connection(&self, endpoint: usize) -> Vec<BTreeSet<String>> {
        self.inner.endpoints[endpoint]
            .asked_by_connection()
            .iter()
            .map(|set| set.iter().map(sh_hex).collect())
            .collect()
    }

    /// Requests the endpoint has answered so far (each request of a batch counts).
    pub fn requests(&self, endpoint: usize) -> u64 {
        self.inner.endpoints[endpoint].requests()
    }

    /// Requests for `method` the endpoint has answered so far (or refused with an error).
    pub fn requests_of(&self, endpoint: usize, method: &str) -> u64 {
        self.inner.endpoints[endpoint].requests_of(method)
    }

    /// Stops every endpoint and ends every connection.
    pub async fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        for (ep, e) in self.inner.endpoints.iter().enumerate() {
            e.set_faults(e.faults());
            endpoint::stop(&self.inner, ep).await;
        }
    }
}

fn parse_scripthash(s: &str) -> anyhow::Result<view::Sh> {
    parse_sh(&s.trim().to_ascii_lowercase())
        .ok_or_else(|| anyhow::anyhow!("{s:?} is not a 64-hex-digit scripthash"))
}

/// Command-line arguments of `electrum-gateway sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// An endpoint to serve: `HOST:PORT` (TCP) or a tcp://, ssl://, ws:// or wss:// URL,
    /// followed by comma-separated faults (e.g. `127.0.0.1:0,latency=200,lie-balance`).
    /// Repeatable; all endpoints share the chain.
    #[arg(
        long = "listen",
        value_name = "ADDR[,FAULT...]",
        default_value = "127.0.0.1:51001"
    )]
    pub listen: Vec<EndpointSpec>,
    /// A peer returned by `server.peers.subscribe`, `HOST:PORT[:t|s]`. Repeatable.
    #[arg(long = "peer", value_name = "HOST:PORT[:t|s]")]
    pub peer: Vec<String>,
    /// Chain seed: the same seed gives the same blocks.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Blocks generated at start.
    #[arg(long, default_value_t = 300)]
    pub blocks: u32,
    /// TLS certificate (PEM) for ssl/wss endpoints; self-signed when absent.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// TLS private key (PEM) matching `--cert`.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

impl From<SimArgs> for SimConfig {
    fn from(a: SimArgs) -> SimConfig {
        SimConfig {
            seed: a.seed,
            blocks: a.blocks,
            endpoints: a.listen,
            peers: a.peer,
            cert: a.cert.zip(a.key),
        }
    }
}

/// Runs `electrum-gateway sim`: prints each endpoint's URL on its own line, then serves
/// until interrupted.
pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    let sim = Sim::start(args.into()).await?;
    for url in sim.urls() {
        println!("{url}");
    }
    tokio::signal::ctrl_c()
        .await
        .context("waiting for ctrl-c")?;
    sim.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn command_line() {
        let cli = Cli::try_parse_from(["sim"]).unwrap();
        let config = SimConfig::from(cli.sim);
        assert_eq!((config.seed, config.blocks), (1, 300));
        assert_eq!(config.endpoints.len(), 1);
        assert_eq!(config.endpoints[0].url.to_string(), "tcp://127.0.0.1:51001");

        let cli = Cli::try_parse_from([
            "sim",
            "--listen",
            "127.0.0.1:0,latency=5",
            "--listen",
            "wss://localhost:0,fork=2",
            "--peer",
            "h:1:s",
            "--seed",
            "9",
            "--blocks",
            "150",
        ])
        .unwrap();
        let config = SimConfig::from(cli.sim);
        assert_eq!(config.endpoints.len(), 2);
        assert_eq!(config.endpoints[0].faults.latency_ms, 5);
        assert_eq!(config.endpoints[1].faults.fork, 2);
        assert_eq!((config.seed, config.blocks), (9, 150));
        assert_eq!(config.peers, ["h:1:s"]);

        assert!(Cli::try_parse_from(["sim", "--listen", "127.0.0.1:0,bogus"]).is_err());
        assert!(
            Cli::try_parse_from(["sim", "--cert", "c.pem"]).is_err(),
            "--cert needs --key"
        );
    }

    #[test]
    fn peers_are_formatted_like_electrumx() {
        let p = peers_json(&["a.example:50002:s".into(), "[::1]:7".into()]).unwrap();
        assert_eq!(
            p,
            json!([
                ["a.example", "a.example", ["v1.6", "p10000", "s50002"]],
                ["::1", "::1", ["v1.6", "p10000", "t7"]]
            ])
        );
        assert!(peers_json(&["nope".into()]).is_err());
    }
}
