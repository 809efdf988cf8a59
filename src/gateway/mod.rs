//! The gateway: wallet sessions in front of a pool of verified upstreams.
//!
//! The parts, each importing only what is below it (docs/architecture.md traces a request and
//! a notification through them):
//! - [`session`]: one task per wallet connection; parses each request once into a typed
//!   [`crate::protocol::Call`], answers local calls ([`local`]), orders replies and
//!   notifications ([`order`]);
//! - [`services`]: the shared services, and [`services::Core::read`], the one way to answer a routed
//!   read (cache, else router, with the row's fallback);
//! - [`router`]: policies (`fastest`, `quorum`, `median`, `broadcast`) and votes ([`vote`]);
//! - [`hub`]: one upstream subscription per scripthash, vetted, fanned out to sessions;
//! - [`pool`] and [`upstream`]: upstream connections, reconnection, ranking, standing, and
//!   [`pool::Pool::ask`], the one checked upstream call every request goes through;
//! - [`cache`]: verified answers by call;
//! - [`limits`]: the connection count and the per-client table (connections, token bucket,
//!   subscriptions);
//! - [`http`]: metrics, health, status page, admin API and explorer, reading a
//!   [`crate::metrics::Snapshot`] or the core.
//!
//! Verification itself lives in [`crate::verify`]; metrics in [`crate::metrics`].

pub(crate) mod broadcast;
pub(crate) mod cache;
pub(crate) mod candidates;
pub mod fds;
pub(crate) mod http;
pub(crate) mod hub;
pub(crate) mod isolation;
pub mod limits;
pub(crate) mod local;
pub mod memory;
pub(crate) mod order;
pub(crate) mod pool;
pub(crate) mod privacy;
pub(crate) mod router;
pub(crate) mod services;
pub(crate) mod session;
pub(crate) mod upstream;
pub(crate) mod vote;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::pool::Pool;
use self::services::Core;
use crate::config::{listen_addr, Config};
use crate::listen::{ListenOptions, Listener, TlsIdentity};
use crate::metrics::{Metrics, Snapshot};
use crate::protocol::Tip;
use crate::proxy_protocol::ProxySources;
use crate::transport::{Scheme, ServerUrl};
use crate::verify::ChainTracker;

/// A running gateway.
pub struct Gateway {
    core: Arc<Core>,
    tcp: Option<SocketAddr>,
    tls: Option<SocketAddr>,
    ws: Option<SocketAddr>,
    http: Option<SocketAddr>,
}

impl Gateway {
    /// Starts the pool and the listeners. Listener addresses may use port 0.
    pub async fn start(cfg: Config) -> anyhow::Result<Gateway> {
        cfg.validate()?;
        let needed = fds::fds_needed(&cfg);
        let limit = fds::open_files_limit().map(|(soft, _)| soft);
        if let Some(w) = fds::fit_warning(cfg.limits.max_sessions, needed, limit) {
            tracing::warn!("{w}");
        }
        let cfg = Arc::new(cfg);
        let network = cfg.network()?;
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create data directory {}: {e}",
                cfg.data_dir.display()
            )
        })?;
        let shutdown = CancellationToken::new();
        let metrics = Metrics::new();
        let servers = cfg.upstream_urls()?;
        let candidates = if cfg.upstreams.use_server_list {
            candidate_urls(&cfg, network)?
        } else {
            Vec::new()
        };
        let pool = Pool::new(
            cfg.clone(),
            servers,
            candidates,
            metrics.clone(),
            shutdown.clone(),
        )?;
        let core = Arc::new(Core::new(cfg.clone(), pool.clone(), metrics, shutdown));
        if cfg.verify.prove_history {
            let as_prover: Arc<dyn hub::HistoryProver> = core.clone();
            let prover = Arc::downgrade(&as_prover);
            core.hub.set_prover(prover);
        }
        pool.start();
        tokio::spawn(memory::run(core.shutdown.clone()));
        let mut gw = Gateway {
            core: core.clone(),
            tcp: None,
            tls: None,
            ws: None,
            http: None,
        };
        let max_line = cfg.limits.max_line_bytes;
        if let Some(addr) = listen_addr(&cfg.listen.tcp)? {
            let url = ServerUrl::new(Scheme::Tcp, addr.ip().to_string(), addr.port());
            gw.tcp = Some(spawn_listener(core.clone(), url, None, max_line).await?);
        }
        if let Some(addr) = listen_addr(&cfg.listen.tls)? {
            let identity = if cfg.listen.tls_cert.is_empty() {
                TlsIdentity::load_or_generate(&cfg.data_dir)?
            } else {
                TlsIdentity::load(
                    std::path::Path::new(&cfg.listen.tls_cert),
                    std::path::Path::new(&cfg.listen.tls_key),
                )?
            };
            let tls = identity.server_config()?;
            let url = ServerUrl::new(Scheme::Ssl, addr.ip().to_string(), addr.port());
            gw.tls = Some(spawn_listener(core.clone(), url, Some(tls), max_line).await?);
        }
        if let Some(addr) = listen_addr(&cfg.listen.ws)? {
            let url = ServerUrl::new(Scheme::Ws, addr.ip().to_string(), addr.port());
            gw.ws = Some(spawn_listener(core.clone(), url, None, max_line).await?);
        }
        if let Some(addr) = listen_addr(&cfg.listen.http)? {
            gw.http = Some(http::serve_http(core.clone(), addr).await?);
        }
        Ok(gw)
    }

    /// The gateway's state now: upstreams, tips, standings, subscriptions, counters.
    pub fn snapshot(&self) -> Snapshot {
        self.core.snapshot()
    }

    /// The Prometheus text exposition of the gateway's metrics, as `GET /metrics` serves it.
    pub fn metrics_text(&self) -> String {
        self.core.metrics.render(&self.core.snapshot())
    }

    /// Recent events (connections up and lost, verification failures, demotions, ...), newest
    /// first, as `/status` shows them.
    pub fn events(&self) -> Vec<crate::metrics::Event> {
        self.core.metrics.events()
    }

    /// The verified best tip, as a watch that changes with every new tip.
    pub fn tip_watch(&self) -> watch::Receiver<Option<Tip>> {
        self.core.pool.tip_watch()
    }

    /// The verified header chain: its tip, sync progress and headers.
    pub fn chain(&self) -> Arc<ChainTracker> {
        self.core.pool.tracker().clone()
    }

    /// Waits until at least `n` upstreams are connected, or the timeout passes.
    pub async fn wait_connected(&self, n: usize, timeout: Duration) -> bool {
        self.core.pool.wait_connected(n, timeout).await
    }

    /// Writes what the pool learned about servers to `upstreams.json` in the data directory
    /// now (it is also written every 30 seconds and at shutdown).
    pub fn save_state(&self) {
        self.core.pool.save();
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.core.cfg
    }

    /// The bound TCP listener address.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// The bound TLS listener address.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls
    }

    /// The bound WebSocket listener address.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws
    }

    /// The bound HTTP listener address (metrics, health, status, admin).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }

    /// Stops listeners, sessions and upstream connections at once, and writes the state one
    /// last time: the pool's (`upstreams.json`), and headers the header store lacks after a
    /// failed write.
    pub fn shutdown(&self) {
        self.core.shutdown.cancel();
        self.core.pool.save();
        if let Err(e) = self.core.pool.tracker().flush_store() {
            tracing::error!(error = %e, "writing the header store at shutdown failed");
        }
    }

    /// True once [`Gateway::drain`] has started.
    pub fn is_draining(&self) -> bool {
        self.core.is_draining()
    }

    /// Wallet sessions open now.
    pub fn sessions(&self) -> usize {
        self.core.sessions()
    }

    /// Stops gracefully: the wallet listeners stop accepting, `/health` answers 503
    /// (draining) so a balancer takes the gateway out, and each wallet session stops reading,
    /// writes the answers of the requests it has in flight and closes. Once every session has
    /// ended, or `grace` has passed, the rest is stopped as by [`Gateway::shutdown`] (which
    /// saves the state). The HTTP listener serves until then.
    pub async fn drain(&self, grace: Duration) -> Drained {
        let start = tokio::time::Instant::now();
        self.core.drain.cancel();
        tracing::info!(
            sessions = self.core.sessions(),
            grace_secs = grace.as_secs_f64(),
            "draining: no new wallet connections, closing sessions once their requests are answered"
        );
        let finished = self.core.sessions_ended(start + grace).await;
        let cut = self.core.sessions();
        if !finished {
            tracing::warn!(
                sessions = cut,
                "drain grace period over; closing the remaining sessions"
            );
        }
        self.shutdown();
        Drained {
            sessions_cut: cut,
            elapsed: start.elapsed(),
        }
    }
}

/// How a [`Gateway::drain`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Sessions still open when the grace period ended, closed without waiting further.
    pub sessions_cut: usize,
    /// How long the drain took.
    pub elapsed: Duration,
}

/// Candidate upstreams: from the configured server list file, or the bundled list.
fn candidate_urls(cfg: &Config, network: bitcoin::Network) -> anyhow::Result<Vec<ServerUrl>> {
    use crate::servers::ServerList;
    let list = if cfg.upstreams.server_list.is_empty() {
        ServerList::bundled(network)
    } else {
        ServerList::load(std::path::Path::new(&cfg.upstreams.server_list))?
    };
    let proxied = !cfg.upstreams.proxy.is_empty();
    Ok(list
        .iter()
        .filter(|s| proxied || !s.is_onion())
        .filter_map(|s| s.url(Scheme::Ssl).or_else(|| s.url(Scheme::Tcp)))
        .collect())
}

async fn spawn_listener(
    core: Arc<Core>,
    url: ServerUrl,
    tls: Option<Arc<rustls::ServerConfig>>,
    max_line: usize,
) -> anyhow::Result<SocketAddr> {
    // Every connection counts against `max_sessions` from TCP accept on, its TLS or
    // WebSocket handshake included, until its session ends.
    let connections = core.connections.clone();
    let metrics = core.metrics.clone();
    let admission: crate::listen::Admission = Arc::new(move |_peer| {
        let permit = connections.try_open();
        if permit.is_none() {
            metrics.limit_rejected("sessions");
            tracing::warn!("session limit reached; refusing a wallet connection");
        }
        permit.map(|p| Box::new(p) as crate::listen::Permit)
    });
    let metrics = core.metrics.clone();
    let on_refused: crate::listen::OnRefused = Arc::new(move |why| metrics.limit_rejected(why));
    let options = ListenOptions {
        on_refused: Some(on_refused),
        max_message: max_line,
        tls,
        proxy_sources: Arc::new(ProxySources::new(core.cfg.listen.proxy_networks()?)),
        max_handshakes: core.cfg.limits.max_sessions,
        max_handshakes_per_client: core.cfg.limits.max_sessions_per_client,
        admission: Some(admission),
        ws_origins: Arc::new(core.cfg.listen.ws_origins.clone()),
        ..ListenOptions::default()
    };
    let mut listener = Listener::bind(&url, options)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {url}: {e}"))?;
    let addr = listener.local_addr();
    tracing::info!(%url, %addr, "listening for wallets");
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept_permitted() => a,
                _ = core.shutdown.cancelled() => return,
                // Draining: the socket closes here, so a balancer's next try goes elsewhere.
                _ = core.drain.cancelled() => return,
            };
            let (framed, peer, permit) = accepted;
            let core = core.clone();
            tokio::spawn(async move {
                session::run(core, framed, peer).await;
                drop(permit);
            });
        }
    });
    Ok(addr)
}
