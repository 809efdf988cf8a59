//! The gateway assembled: pool, router, hub and wallet listeners, started from a [`Config`].

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use crate::config::{listen_addr, secs, Config};
use crate::hub::Hub;
use crate::listen::{ListenOptions, Listener, TlsIdentity};
use crate::pool::Pool;
use crate::router::Router;
use crate::transport::ServerUrl;

/// Everything a session needs, shared by all sessions.
pub struct Ctx {
    /// The configuration in force.
    pub cfg: Arc<Config>,
    /// The network served.
    pub network: bitcoin::Network,
    /// Upstreams.
    pub pool: Arc<Pool>,
    /// Routing.
    pub router: Router,
    /// Subscriptions.
    pub hub: Arc<Hub>,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
    /// Verified immutable answers.
    pub cache: crate::cache::AnswerCache,
    /// Prometheus metrics and the recent-events log.
    pub metrics: Arc<crate::metrics::Metrics>,
    next_session: AtomicU64,
    sessions: AtomicI64,
}

impl Ctx {
    /// A fresh session id.
    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts sessions opening (+1) and closing (-1).
    pub fn metrics_session(&self, delta: i64) {
        self.sessions.fetch_add(delta, Ordering::Relaxed);
    }

    /// Wallet sessions open now.
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Relaxed).max(0) as usize
    }

    /// `server.version`'s software string.
    pub fn software(&self) -> String {
        format!("electrum-gateway {}", env!("CARGO_PKG_VERSION"))
    }

    /// `server.banner`.
    pub fn banner(&self) -> String {
        let ups = self.pool.upstreams();
        let connected = ups.iter().filter(|u| u.connected() > 0).count();
        format!(
            "{} — a verifying gateway in front of {} upstream Electrum servers ({} connected).",
            self.software(),
            ups.len(),
            connected
        )
    }

    /// `server.features`: the gateway's own, with the genesis hash of its network.
    pub fn features(&self) -> Value {
        let genesis = bitcoin::blockdata::constants::genesis_block(self.network)
            .block_hash()
            .to_string();
        json!({
            "hosts": {},
            "genesis_hash": genesis,
            "hash_function": "sha256",
            "server_version": self.software(),
            "protocol_min": "1.4",
            "protocol_max": "1.6",
            "pruning": null,
        })
    }
}

/// A running gateway.
pub struct Gateway {
    ctx: Arc<Ctx>,
    tcp: Option<SocketAddr>,
    tls: Option<SocketAddr>,
    ws: Option<SocketAddr>,
    http: Option<SocketAddr>,
}

impl Gateway {
    /// Starts the pool and the listeners. Listener addresses may use port 0.
    pub async fn start(cfg: Config) -> anyhow::Result<Gateway> {
        cfg.validate()?;
        let cfg = Arc::new(cfg);
        let network = cfg.network()?;
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create data directory {}: {e}",
                cfg.data_dir.display()
            )
        })?;
        let shutdown = CancellationToken::new();
        let servers = cfg.upstream_urls()?;
        let candidates = if cfg.upstreams.use_server_list {
            candidate_urls(&cfg, network)?
        } else {
            Vec::new()
        };
        let pool = Pool::new(cfg.clone(), servers, candidates, shutdown.clone())?;
        let router = Router::new(
            pool.clone(),
            std::time::Duration::from_millis(cfg.routing.hedge_min_ms),
            std::time::Duration::from_millis(cfg.routing.hedge_max_ms),
            cfg.routing.quorum,
        );
        let hub = Hub::new(
            pool.clone(),
            secs(cfg.limits.request_timeout_secs),
            cfg.verify.statuses,
        );
        let ctx = Arc::new(Ctx {
            cfg: cfg.clone(),
            network,
            pool: pool.clone(),
            router,
            hub,
            shutdown: shutdown.clone(),
            cache: crate::cache::AnswerCache::new(cfg.verify.cache_entries, cfg.verify.cache_depth),
            metrics: crate::metrics::Metrics::new(),
            next_session: AtomicU64::new(1),
            sessions: AtomicI64::new(0),
        });
        pool.consensus().set_metrics(ctx.metrics.clone());
        pool.start();
        let mut gw = Gateway {
            ctx: ctx.clone(),
            tcp: None,
            tls: None,
            ws: None,
            http: None,
        };
        let max_line = cfg.limits.max_line_bytes;
        if let Some(addr) = listen_addr(&cfg.listen.tcp)? {
            let url = ServerUrl::new(
                crate::transport::Scheme::Tcp,
                addr.ip().to_string(),
                addr.port(),
            );
            gw.tcp = Some(spawn_listener(ctx.clone(), url, None, max_line).await?);
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
            let url = ServerUrl::new(
                crate::transport::Scheme::Ssl,
                addr.ip().to_string(),
                addr.port(),
            );
            gw.tls = Some(spawn_listener(ctx.clone(), url, Some(tls), max_line).await?);
        }
        if let Some(addr) = listen_addr(&cfg.listen.ws)? {
            let url = ServerUrl::new(
                crate::transport::Scheme::Ws,
                addr.ip().to_string(),
                addr.port(),
            );
            gw.ws = Some(spawn_listener(ctx.clone(), url, None, max_line).await?);
        }
        if let Some(addr) = listen_addr(&cfg.listen.http)? {
            gw.http = Some(crate::http::serve_http(ctx.clone(), addr).await?);
        }
        Ok(gw)
    }

    /// The shared context (pool, hub, router).
    pub fn ctx(&self) -> &Arc<Ctx> {
        &self.ctx
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

    /// Stops listeners, sessions and upstream connections.
    pub fn shutdown(&self) {
        self.ctx.shutdown.cancel();
    }
}

/// Candidate upstreams: from the configured server list file, or the bundled list.
fn candidate_urls(cfg: &Config, network: bitcoin::Network) -> anyhow::Result<Vec<ServerUrl>> {
    use crate::servers::ServerList;
    use crate::transport::Scheme;
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
    ctx: Arc<Ctx>,
    url: ServerUrl,
    tls: Option<Arc<rustls::ServerConfig>>,
    max_line: usize,
) -> anyhow::Result<SocketAddr> {
    let options = ListenOptions {
        max_message: max_line,
        tls,
        ..ListenOptions::default()
    };
    let mut listener = Listener::bind(&url, options)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {url}: {e}"))?;
    let addr = listener.local_addr();
    tracing::info!(%url, %addr, "listening for wallets");
    let max_sessions = ctx.cfg.limits.max_sessions;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = ctx.shutdown.cancelled() => return,
            };
            let (framed, peer) = accepted;
            if ctx.sessions() >= max_sessions {
                tracing::warn!("session limit reached; refusing a wallet connection");
                continue;
            }
            let ctx = ctx.clone();
            tokio::spawn(crate::server::run_session(ctx, framed, peer));
        }
    });
    Ok(addr)
}
