//! The gateway's shared services: what every wallet session, the explorer and the admin API
//! use, built once at start ([`super::Gateway::start`]) and passed around as `Arc<Core>`.
//!
//! [`Core::read`] is the one way to answer a routed read: from the cache when the call's row
//! allows and a valid answer is there, else through the router (which asks upstreams through
//! the pool's checked call), with the protocol fallbacks the row names; what passed goes into
//! the cache.

use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use super::cache::AnswerCache;
use super::hub::Hub;
use super::pool::Pool;
use super::router::Router;
use crate::config::Config;
use crate::metrics::{Counters, Metrics, Snapshot, Subscriptions};
use crate::protocol::error::{BAD_REQUEST, METHOD_NOT_FOUND};
use crate::protocol::methods::Fallback;
use crate::protocol::{from_raw, Args, Call, RpcError};

/// Everything a session needs, shared by all sessions.
pub struct Core {
    /// The configuration in force.
    pub cfg: Arc<Config>,
    /// The network served.
    pub network: bitcoin::Network,
    /// Upstreams and the verified chain.
    pub pool: Arc<Pool>,
    /// Routing and votes.
    pub router: Router,
    /// Subscriptions.
    pub hub: Arc<Hub>,
    /// Verified answers.
    pub cache: AnswerCache,
    /// Prometheus metrics and the recent-events log.
    pub metrics: Arc<Metrics>,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
    next_session: AtomicU64,
    sessions: AtomicI64,
}

fn raw<T: serde::Serialize>(v: &T) -> Result<Box<RawValue>, RpcError> {
    serde_json::value::to_raw_value(v).map_err(|e| RpcError::internal(e.to_string()))
}

impl Core {
    /// Assembles the services over a pool.
    pub fn new(
        cfg: Arc<Config>,
        pool: Arc<Pool>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Core {
        let router = Router::new(
            pool.clone(),
            metrics.clone(),
            std::time::Duration::from_millis(cfg.routing.hedge_min_ms),
            std::time::Duration::from_millis(cfg.routing.hedge_max_ms),
            cfg.routing.quorum,
        );
        let hub = Hub::new(
            pool.clone(),
            crate::config::secs(cfg.limits.request_timeout_secs),
            cfg.verify.statuses,
        );
        Core {
            network: pool.network(),
            cache: AnswerCache::new(cfg.verify.cache_entries, cfg.verify.cache_depth),
            cfg,
            pool,
            router,
            hub,
            metrics,
            shutdown,
            next_session: AtomicU64::new(1),
            sessions: AtomicI64::new(0),
        }
    }

    /// A fresh session id.
    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts sessions opening (+1) and closing (-1).
    pub fn count_session(&self, delta: i64) {
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

    /// A call the gateway itself makes (the explorer), with the configured policies.
    pub fn internal_call(&self, method: &str, params: Vec<Value>) -> Result<Call, RpcError> {
        Call::internal(method, params, self.network, &self.cfg.routing.policy)
    }

    /// Answers a routed read or broadcast: cached, or routed (with the row's fallback), then
    /// cached when the row allows. The answer is in the upstream form (`id_from_pos` with its
    /// merkle branch).
    pub async fn read(&self, call: &Call) -> Result<Box<RawValue>, RpcError> {
        let tracker = self.pool.tracker();
        let Some(key) = call.cache_key() else {
            return self.fetch(call).await;
        };
        if let Some(hit) = self.cache.get(tracker, &key) {
            self.metrics.cache_hit(call.method());
            return Ok(hit);
        }
        self.metrics.cache_miss(call.method());
        let v = self.fetch(call).await?;
        self.cache.put(tracker, call, key, &v);
        Ok(v)
    }

    /// Routes a call, and its fallback when upstreams do not know the method.
    async fn fetch(&self, call: &Call) -> Result<Box<RawValue>, RpcError> {
        let res = self.router.route(call).await;
        let Some(fallback) = call.info.fallback else {
            return res;
        };
        let e = match res {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let unknown = e.code == METHOD_NOT_FOUND;
        let other = |method: &str, args: Args| {
            call.as_method(method, args)
                .ok_or_else(|| RpcError::internal(format!("{method} is not in the catalogue")))
        };
        match fallback {
            Fallback::RelayFeeFromMempoolInfo if unknown => {
                let info = self
                    .router
                    .route(&other("mempool.get_info", Args::Any(vec![]))?)
                    .await?;
                let v: Value = from_raw(&info)?;
                raw(&v.get("minrelaytxfee").cloned().unwrap_or(json!(0.00001)))
            }
            Fallback::MempoolInfoFromRelayFee if unknown => {
                let fee = self
                    .router
                    .route(&other("blockchain.relayfee", Args::Any(vec![]))?)
                    .await?;
                let fee: Value = from_raw(&fee)?;
                raw(&json!({
                    "mempoolminfee": fee,
                    "minrelaytxfee": fee,
                    "incrementalrelayfee": fee,
                }))
            }
            Fallback::MempoolFromHistory if unknown => {
                let args = call.args.clone();
                let h = self
                    .router
                    .route(&other("blockchain.scripthash.get_history", args)?)
                    .await?;
                let hist: Vec<Value> = from_raw(&h)?;
                let mempool: Vec<Value> = hist
                    .into_iter()
                    .filter(|e| {
                        e.get("height")
                            .and_then(Value::as_i64)
                            .is_some_and(|h| h <= 0)
                    })
                    .collect();
                raw(&mempool)
            }
            Fallback::FeeWithoutMode if e.code != BAD_REQUEST => match &call.args {
                Args::Fee {
                    blocks,
                    mode: Some(_),
                } => {
                    self.router
                        .route(&call.with_args(Args::Fee {
                            blocks: *blocks,
                            mode: None,
                        }))
                        .await
                }
                _ => Err(e),
            },
            _ => Err(e),
        }
    }

    /// The gateway's state now, for metrics, the status page, the admin API and tests.
    pub fn snapshot(&self) -> Snapshot {
        let pool = &self.pool;
        let tracker = pool.tracker();
        let rs = &self.router.stats;
        let hub = &self.hub;
        Snapshot {
            software: self.software(),
            network: self.network,
            best_tip: pool.best_tip(),
            sync_target: tracker.target(),
            headers_verified: tracker.with_chain(|c| c.verified_count()),
            upstreams: pool.upstreams().iter().map(|u| u.view()).collect(),
            ranked: pool.ranked().iter().map(|(u, _)| u.id).collect(),
            candidates: pool.candidates().iter().map(ToString::to_string).collect(),
            sessions: self.sessions(),
            subscriptions: Subscriptions {
                scripthashes: hub.scripthashes(),
                sessions: hub.session_subscriptions(),
                upstream: hub.upstream_subscriptions(),
            },
            counters: Counters {
                failovers: pool.failovers.load(Ordering::Relaxed),
                hedges: rs.hedges.load(Ordering::Relaxed),
                retries: rs.retries.load(Ordering::Relaxed),
                disagreements: rs.disagreements.load(Ordering::Relaxed),
                subscription_moves: hub.moves.load(Ordering::Relaxed),
                notifications: hub.notifications.load(Ordering::Relaxed),
                reorgs: tracker.reorgs(),
                cache_hits: self.cache.hits.load(Ordering::Relaxed),
                cache_misses: self.cache.misses.load(Ordering::Relaxed),
                failures: pool.failures(),
                demotions: pool.demotions(),
            },
        }
    }
}
