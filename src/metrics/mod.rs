//! Prometheus metrics and the gateway's recent-events log.
//!
//! Most numbers already live where the work happens: the pool knows each upstream's state, tip,
//! score and reconnects; the router counts hedges, retries and quorum disagreements; the hub
//! counts subscriptions. Copying them into metrics on every change would thread a metrics
//! handle through every hot path, so they are *pulled* instead: [`Metrics::refresh`] reads that
//! state when Prometheus scrapes. Only what leaves no trace elsewhere is *pushed* as it
//! happens: wallet requests by method and outcome with their latency ([`Metrics::track_request`],
//! one call in the session), each upstream request's latency ([`UpstreamObserver`], one call
//! in `Upstream::record`), and the verification, cache and header-sync events of the chain
//! layer ([`Metrics::verification_failed`], [`Metrics::cache_hit`], [`Metrics::header_sync`]...).
//!
//! Label values are bounded by construction: methods come from the catalogue (anything else is
//! `other`), upstreams are the servers of the pool's slots (`host:port`, as configured or taken
//! from the server list), and reasons are short identifiers of which only a few distinct ones
//! are kept. No wallet address, scripthash or client IP ever becomes a label.

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::gateway::Ctx;
use crate::pool::{PoolEvent, Tip, UpState, Upstream};
use crate::protocol::methods::{lookup, Cache, MethodInfo, METHODS};
use crate::protocol::RpcError;

/// The prefix of every gateway metric.
pub const PREFIX: &str = "electrum_gateway_";

/// How many recent events are kept for the status page.
pub const EVENT_CAPACITY: usize = 256;

/// Most distinct reason labels kept per metric; further reasons count as `other`.
const MAX_REASONS: usize = 32;

/// Verification failure reasons exported at zero from the start, so dashboards and alerts see
/// the series before the first failure: the labels of the chain layer's answer checks
/// ([`crate::chain::VerifyError::reason`]) and header rejections
/// ([`crate::chain::RejectReason::as_str`]).
pub const VERIFICATION_REASONS: &[&str] = &[
    // Answer checks.
    "bad_encoding",
    "bad_txid",
    "bad_merkle",
    "bad_header",
    "bad_status",
    "history_mismatch",
    "bad_broadcast",
    // Answers outvoted by other upstreams.
    "vote_minority",
    // Header chain rejections.
    "bad_genesis",
    "bad_link",
    "bad_target",
    "bad_pow",
    "checkpoint",
    "bad_time",
    "bad_version",
    "too_old",
    "unconnected",
];

/// Demotion reasons exported at zero from the start.
pub const DEMOTION_REASONS: &[&str] = &["lag", "fork", "bad_header"];

const STATES: [(UpState, &str); 3] = [
    (UpState::Up, "up"),
    (UpState::Connecting, "connecting"),
    (UpState::Down, "down"),
];

/// The label of an upstream state.
pub fn state_name(s: UpState) -> &'static str {
    STATES
        .iter()
        .find(|(st, _)| *st == s)
        .map(|(_, n)| *n)
        .unwrap_or("down")
}

/// The bounded label of a method name: its catalogue name, or `other`.
pub fn method_label(method: &str) -> &'static str {
    lookup(method).map(|m| m.name).unwrap_or("other")
}

/// True when an upstream can serve now: connected, not cordoned, and at the best tip.
pub fn is_healthy(up: &Upstream, best: Option<&Tip>) -> bool {
    up.connected() > 0
        && !up.cordoned.load(Ordering::Relaxed)
        && matches!((up.tip(), best), (Some(t), Some(b)) if t.height >= b.height)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Something worth showing an operator: a failover, a demotion, a verification failure.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// When, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// What kind: `up`, `failover`, `replaced`, `verification`, `demotion`, `disagreement`,
    /// `cordon`, `uncordon`, `candidate`.
    pub kind: &'static str,
    /// The upstream concerned, when there is one.
    pub upstream: Option<String>,
    /// A sentence for people.
    pub message: String,
}

/// Every metric of the gateway, in one registry.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    sessions: IntGauge,
    upstreams: IntGauge,
    upstreams_healthy: IntGauge,
    candidates: IntGauge,
    upstream_state: IntGaugeVec,
    upstream_connections: IntGaugeVec,
    upstream_cordoned: IntGaugeVec,
    upstream_tip: IntGaugeVec,
    upstream_lag: IntGaugeVec,
    upstream_score: GaugeVec,
    upstream_latency_ewma: GaugeVec,
    upstream_reconnects: IntCounterVec,
    upstream_requests: IntCounterVec,
    upstream_duration: HistogramVec,
    tip_height: IntGauge,
    tip_updated: Gauge,
    failovers: IntCounter,
    hedges: IntCounter,
    retries: IntCounter,
    disagreements: IntCounter,
    verification_failures: IntCounterVec,
    demotions: IntCounterVec,
    sub_scripthashes: IntGauge,
    sub_sessions: IntGauge,
    sub_upstream: IntGauge,
    sub_moves: IntCounter,
    notifications: IntCounter,
    cache_hits: IntCounterVec,
    cache_misses: IntCounterVec,
    header_sync_height: IntGauge,
    header_sync_target: IntGauge,
    /// Serialises scrapes, and remembers which upstream labels are exported.
    scrape: Mutex<HashSet<String>>,
    reasons: Mutex<HashSet<String>>,
    events: Mutex<VecDeque<Event>>,
}

fn name(s: &str) -> String {
    format!("{PREFIX}{s}")
}

/// Latency buckets in seconds, from a cached answer to a stuck upstream.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

struct Builder {
    registry: Registry,
}

// Registration fails only for a duplicate or malformed name, which the definitions below rule
// out; a failure there is a programming error caught by every test.
impl Builder {
    fn reg<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        self.registry
            .register(Box::new(c.clone()))
            .expect("metric definitions are unique and well-formed");
        c
    }
    fn counter(&self, n: &str, help: &str) -> IntCounter {
        self.reg(IntCounter::with_opts(Opts::new(name(n), help)).expect("valid counter"))
    }
    fn counter_vec(&self, n: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.reg(IntCounterVec::new(Opts::new(name(n), help), labels).expect("valid counter"))
    }
    fn gauge(&self, n: &str, help: &str) -> IntGauge {
        self.reg(IntGauge::with_opts(Opts::new(name(n), help)).expect("valid gauge"))
    }
    fn gauge_vec(&self, n: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.reg(IntGaugeVec::new(Opts::new(name(n), help), labels).expect("valid gauge"))
    }
    fn fgauge_vec(&self, n: &str, help: &str, labels: &[&str]) -> GaugeVec {
        self.reg(GaugeVec::new(Opts::new(name(n), help), labels).expect("valid gauge"))
    }
    /// CPU, memory, open files and start time of this process (`process_*`).
    #[cfg(target_os = "linux")]
    fn reg_process(&self) {
        let pc = prometheus::process_collector::ProcessCollector::for_self();
        // Fails only when registered twice.
        let _ = self.registry.register(Box::new(pc));
    }
    fn histogram_vec(&self, n: &str, help: &str, labels: &[&str]) -> HistogramVec {
        let opts = HistogramOpts::new(name(n), help).buckets(LATENCY_BUCKETS.to_vec());
        self.reg(HistogramVec::new(opts, labels).expect("valid histogram"))
    }
}

impl Metrics {
    /// A registry with every gateway metric and the process metrics.
    pub fn new() -> Arc<Metrics> {
        let b = Builder {
            registry: Registry::new(),
        };
        #[cfg(target_os = "linux")]
        b.reg_process();
        let build = b.gauge_vec(
            "build_info",
            "Always 1; the version label says which gateway runs.",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let m = Metrics {
            requests: b.counter_vec(
                "requests_total",
                "Wallet requests answered, by method and outcome (ok, error, unavailable, timeout).",
                &["method", "outcome"],
            ),
            request_duration: b.histogram_vec(
                "request_duration_seconds",
                "Time to answer a wallet request, by method.",
                &["method"],
            ),
            sessions: b.gauge("sessions", "Wallet connections open now."),
            upstreams: b.gauge("upstreams", "Upstream slots in the pool."),
            upstreams_healthy: b.gauge(
                "upstreams_healthy",
                "Upstreams able to serve now: connected, not cordoned, at the best tip.",
            ),
            candidates: b.gauge(
                "upstream_candidates",
                "Servers waiting to replace a failing upstream.",
            ),
            upstream_state: b.gauge_vec(
                "upstream_state",
                "1 for the state each upstream is in (up, connecting, down), 0 for the others.",
                &["upstream", "state"],
            ),
            upstream_connections: b.gauge_vec(
                "upstream_connections",
                "Connected connections per upstream.",
                &["upstream"],
            ),
            upstream_cordoned: b.gauge_vec(
                "upstream_cordoned",
                "1 when an operator took the upstream out of rotation.",
                &["upstream"],
            ),
            upstream_tip: b.gauge_vec(
                "upstream_tip_height",
                "The tip height each upstream announced last.",
                &["upstream"],
            ),
            upstream_lag: b.gauge_vec(
                "upstream_lag_blocks",
                "Blocks each upstream is behind the best tip.",
                &["upstream"],
            ),
            upstream_score: b.fgauge_vec(
                "upstream_score",
                "Routing score per upstream (latency inflated by errors; lower is better).",
                &["upstream"],
            ),
            upstream_latency_ewma: b.fgauge_vec(
                "upstream_latency_ewma_seconds",
                "Moving average of each upstream's request latency.",
                &["upstream"],
            ),
            upstream_reconnects: b.counter_vec(
                "upstream_reconnects_total",
                "Successful reconnections per upstream (since it took its slot).",
                &["upstream"],
            ),
            upstream_requests: b.counter_vec(
                "upstream_requests_total",
                "Requests sent to upstreams, by outcome (ok: answered, failed: transport error or timeout).",
                &["upstream", "outcome"],
            ),
            upstream_duration: b.histogram_vec(
                "upstream_request_duration_seconds",
                "Latency of answered upstream requests.",
                &["upstream"],
            ),
            tip_height: b.gauge("tip_height", "Height of the best tip any upstream announced."),
            tip_updated: b.reg(
                Gauge::with_opts(Opts::new(
                    name("tip_updated_timestamp_seconds"),
                    "When the best tip last changed, seconds since the Unix epoch.",
                ))
                .expect("valid gauge"),
            ),
            failovers: b.counter(
                "failovers_total",
                "Upstream connections lost after having been up.",
            ),
            hedges: b.counter(
                "hedges_total",
                "Reads also sent to a second upstream because the first was slow.",
            ),
            retries: b.counter(
                "retries_total",
                "Reads retried on another upstream after an error or timeout.",
            ),
            disagreements: b.counter(
                "quorum_disagreements_total",
                "Quorum reads whose upstream answers disagreed.",
            ),
            verification_failures: b.counter_vec(
                "verification_failures_total",
                "Upstream answers that failed verification, by reason.",
                &["reason"],
            ),
            demotions: b.counter_vec(
                "demotions_total",
                "Upstreams demoted, by reason.",
                &["reason"],
            ),
            sub_scripthashes: b.gauge(
                "subscribed_scripthashes",
                "Distinct scripthashes at least one wallet subscribed to.",
            ),
            sub_sessions: b.gauge(
                "session_subscriptions",
                "Scripthash subscriptions held by wallets (summed over sessions).",
            ),
            sub_upstream: b.gauge(
                "upstream_subscriptions",
                "Scripthash subscriptions held on upstreams.",
            ),
            sub_moves: b.counter(
                "subscription_moves_total",
                "Scripthash subscriptions moved to another upstream after a failover.",
            ),
            notifications: b.counter(
                "notifications_total",
                "Scripthash notifications sent to wallets.",
            ),
            cache_hits: b.counter_vec(
                "cache_hits_total",
                "Requests answered from the cache, by method.",
                &["method"],
            ),
            cache_misses: b.counter_vec(
                "cache_misses_total",
                "Cacheable requests not found in the cache, by method.",
                &["method"],
            ),
            header_sync_height: b.gauge(
                "header_sync_height",
                "Height of the verified header chain.",
            ),
            header_sync_target: b.gauge(
                "header_sync_target_height",
                "Height the header sync is heading for.",
            ),
            scrape: Mutex::new(HashSet::new()),
            reasons: Mutex::new(HashSet::new()),
            events: Mutex::new(VecDeque::new()),
            registry: b.registry,
        };
        for r in VERIFICATION_REASONS {
            m.verification_failures.with_label_values(&[*r]);
        }
        for r in DEMOTION_REASONS {
            m.demotions.with_label_values(&[*r]);
        }
        for method in METHODS.iter().filter(|m| m.cache != Cache::Never) {
            m.cache_hits.with_label_values(&[method.name]);
            m.cache_misses.with_label_values(&[method.name]);
        }
        Arc::new(m)
    }

    /// The registry, for embedding the gateway's metrics elsewhere.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Wraps the handling of one wallet request: counts it by method and outcome and times
    /// it. A request whose future is dropped unfinished (the session's request timeout)
    /// counts as `timeout`.
    pub fn track_request<'a, C, F>(
        &'a self,
        method: Option<&'static MethodInfo>,
        fut: F,
    ) -> impl Future<Output = (Result<Box<RawValue>, RpcError>, C)> + 'a
    where
        F: Future<Output = (Result<Box<RawValue>, RpcError>, C)> + 'a,
    {
        let guard = RequestGuard {
            metrics: self,
            method: method.map(|m| m.name).unwrap_or("other"),
            start: Instant::now(),
            outcome: "timeout",
        };
        async move {
            // The whole guard moves into the future, so dropping it unfinished records it.
            let mut guard = guard;
            let out = fut.await;
            guard.outcome = outcome(&out.0);
            out
        }
    }

    /// Counts a verification failure. `reason` should be a short identifier such as
    /// `bad_merkle` (see [`VERIFICATION_REASONS`]); it is also logged and shown on the status
    /// page.
    pub fn verification_failed(&self, reason: &str) {
        self.verification_failed_at(None, reason);
    }

    /// Counts a verification failure of a named upstream's answer. The metric is labelled by
    /// reason only; the upstream appears in the log line and the status page's events.
    pub fn verification_failed_at(&self, upstream: Option<&str>, reason: &str) {
        let label = self.reason_label(reason);
        self.verification_failures
            .with_label_values(&[&label])
            .inc();
        tracing::warn!(
            upstream = upstream.unwrap_or("-"),
            reason,
            "verification failed"
        );
        self.event(
            "verification",
            upstream,
            format!("an answer failed verification: {reason}"),
        );
    }

    /// Counts an upstream demotion. `reason` should be a short identifier such as
    /// `verification` or `lagging` (see [`DEMOTION_REASONS`]).
    pub fn demoted(&self, reason: &str) {
        self.demoted_upstream(None, reason);
    }

    /// Counts the demotion of a named upstream.
    pub fn demoted_upstream(&self, upstream: Option<&str>, reason: &str) {
        let label = self.reason_label(reason);
        self.demotions.with_label_values(&[&label]).inc();
        tracing::warn!(
            upstream = upstream.unwrap_or("-"),
            reason,
            "upstream demoted"
        );
        self.event("demotion", upstream, format!("demoted: {reason}"));
    }

    /// Counts a request answered from the cache.
    pub fn cache_hit(&self, method: &str) {
        self.cache_hits
            .with_label_values(&[method_label(method)])
            .inc();
    }

    /// Counts a cacheable request that was not in the cache.
    pub fn cache_miss(&self, method: &str) {
        self.cache_misses
            .with_label_values(&[method_label(method)])
            .inc();
    }

    /// Reports header sync progress: the verified chain's height and the height it heads for.
    pub fn header_sync(&self, height: u32, target: u32) {
        self.header_sync_height.set(i64::from(height));
        self.header_sync_target.set(i64::from(target));
    }

    /// Adds an event to the recent-events log (oldest dropped past [`EVENT_CAPACITY`]).
    pub fn event(&self, kind: &'static str, upstream: Option<&str>, message: String) {
        let Ok(mut ev) = self.events.lock() else {
            return;
        };
        if ev.len() == EVENT_CAPACITY {
            ev.pop_front();
        }
        ev.push_back(Event {
            time_ms: now_ms(),
            kind,
            upstream: upstream.map(str::to_string),
            message,
        });
    }

    /// Recent events, newest first.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .map(|e| e.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    /// A reason as a bounded label: a short lowercase identifier among the first
    /// [`MAX_REASONS`] seen, else `other`.
    fn reason_label(&self, reason: &str) -> String {
        let ok = !reason.is_empty()
            && reason.len() <= 32
            && reason
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            return "other".into();
        }
        if VERIFICATION_REASONS.contains(&reason) || DEMOTION_REASONS.contains(&reason) {
            return reason.into();
        }
        let Ok(mut seen) = self.reasons.lock() else {
            return "other".into();
        };
        if seen.contains(reason) || seen.len() < MAX_REASONS {
            seen.insert(reason.to_string());
            reason.into()
        } else {
            "other".into()
        }
    }

    /// Connects the metrics to a running gateway: upstreams report their request latencies,
    /// and a task turns pool events into the recent-events log until shutdown.
    pub fn attach(self: &Arc<Self>, ctx: &Arc<Ctx>) {
        for up in ctx.pool.upstreams() {
            up.observer.attach(self);
        }
        if ctx.pool.best_tip().is_some() {
            self.tip_updated.set(now_ms() as f64 / 1000.0);
        }
        let metrics = self.clone();
        let weak: Weak<Ctx> = Arc::downgrade(ctx);
        let mut events = ctx.pool.events();
        let shutdown = ctx.shutdown.clone();
        tokio::spawn(async move {
            let mut names: Vec<String> = Vec::new();
            let mut disagreements = 0u64;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                let ev = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    ev = events.recv() => Some(ev),
                    _ = tick.tick() => None,
                };
                let Some(ctx) = weak.upgrade() else { return };
                metrics.notice_replacements(&ctx, &mut names);
                match ev {
                    Some(Ok(PoolEvent::Up(i))) => {
                        let name = ctx.pool.upstreams().get(i).map(|u| u.name());
                        metrics.event("up", name.as_deref(), "connection up".into());
                    }
                    Some(Ok(PoolEvent::Down(i))) => {
                        let name = ctx.pool.upstreams().get(i).map(|u| u.name());
                        metrics.event(
                            "failover",
                            name.as_deref(),
                            "connection lost; requests and subscriptions move to other upstreams"
                                .into(),
                        );
                    }
                    Some(Ok(PoolEvent::Tip(_))) => {
                        metrics.tip_updated.set(now_ms() as f64 / 1000.0);
                    }
                    // Demotions and sit-outs are reported by the consensus layer itself.
                    Some(Ok(PoolEvent::Standing(_))) => {}
                    Some(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return,
                    Some(Err(_)) | None => {}
                }
                let d = ctx.router.stats.disagreements.load(Ordering::Relaxed);
                if d > disagreements {
                    metrics.event(
                        "disagreement",
                        None,
                        format!(
                            "{} quorum read(s) got disagreeing answers",
                            d - disagreements
                        ),
                    );
                    disagreements = d;
                }
            }
        });
    }

    /// Logs slots whose server changed since the last look (the pool replaced a failing one).
    fn notice_replacements(&self, ctx: &Ctx, names: &mut Vec<String>) {
        let now: Vec<String> = ctx.pool.upstreams().iter().map(|u| u.name()).collect();
        for (old, new) in names.iter().zip(&now) {
            if old != new {
                self.event(
                    "replaced",
                    Some(new),
                    format!("replaced {old}, which kept failing"),
                );
            }
        }
        *names = now;
    }

    /// Reads the gateway's state into the pulled metrics.
    pub fn refresh(&self, ctx: &Ctx) {
        let Ok(mut exported) = self.scrape.lock() else {
            return;
        };
        self.refresh_locked(ctx, &mut exported);
    }

    fn refresh_locked(&self, ctx: &Ctx, exported: &mut HashSet<String>) {
        let pool = &ctx.pool;
        let (height, target) = pool.consensus().progress();
        self.header_sync(height, target);
        let best = pool.best_tip();
        let ups = pool.upstreams();
        self.tip_height
            .set(best.as_ref().map(|t| i64::from(t.height)).unwrap_or(0));
        self.upstreams.set(ups.len() as i64);
        self.candidates.set(pool.candidates().len() as i64);
        let mut current = HashSet::new();
        let mut healthy = 0;
        for up in ups {
            let n = up.name();
            let l = [n.as_str()];
            let state = up.state();
            for (s, sname) in STATES {
                self.upstream_state
                    .with_label_values(&[n.as_str(), sname])
                    .set(i64::from(s == state));
            }
            self.upstream_connections
                .with_label_values(&l)
                .set(up.connected() as i64);
            self.upstream_cordoned
                .with_label_values(&l)
                .set(i64::from(up.cordoned.load(Ordering::Relaxed)));
            match (up.tip(), best.as_ref()) {
                (Some(t), b) => {
                    self.upstream_tip
                        .with_label_values(&l)
                        .set(i64::from(t.height));
                    let lag = b.map(|b| b.height.saturating_sub(t.height)).unwrap_or(0);
                    self.upstream_lag.with_label_values(&l).set(i64::from(lag));
                }
                (None, _) => {
                    let _ = self.upstream_tip.remove_label_values(&l);
                    let _ = self.upstream_lag.remove_label_values(&l);
                }
            }
            let stats = up.stats();
            self.upstream_score.with_label_values(&l).set(up.score());
            match stats.ewma_ms {
                Some(ms) => self
                    .upstream_latency_ewma
                    .with_label_values(&l)
                    .set(ms / 1000.0),
                None => {
                    let _ = self.upstream_latency_ewma.remove_label_values(&l);
                }
            }
            set_counter(
                &self.upstream_reconnects.with_label_values(&l),
                stats.reconnects,
            );
            for o in ["ok", "failed"] {
                self.upstream_requests.with_label_values(&[n.as_str(), o]);
            }
            self.upstream_duration.with_label_values(&l);
            if is_healthy(up, best.as_ref()) {
                healthy += 1;
            }
            current.insert(n);
        }
        for gone in exported.difference(&current) {
            self.forget_upstream(gone);
        }
        *exported = current;
        self.upstreams_healthy.set(healthy);
        self.sessions.set(ctx.sessions() as i64);
        self.sub_scripthashes.set(ctx.hub.scripthashes() as i64);
        self.sub_sessions
            .set(ctx.hub.session_subscriptions() as i64);
        self.sub_upstream
            .set(ctx.hub.upstream_subscriptions() as i64);
        set_counter(&self.sub_moves, ctx.hub.moves.load(Ordering::Relaxed));
        set_counter(
            &self.notifications,
            ctx.hub.notifications.load(Ordering::Relaxed),
        );
        set_counter(&self.failovers, pool.failovers.load(Ordering::Relaxed));
        let rs = &ctx.router.stats;
        set_counter(&self.hedges, rs.hedges.load(Ordering::Relaxed));
        set_counter(&self.retries, rs.retries.load(Ordering::Relaxed));
        set_counter(
            &self.disagreements,
            rs.disagreements.load(Ordering::Relaxed),
        );
    }

    /// Drops the series of a server that no longer holds a slot.
    fn forget_upstream(&self, n: &str) {
        let l = [n];
        for (_, s) in STATES {
            let _ = self.upstream_state.remove_label_values(&[n, s]);
        }
        for o in ["ok", "failed"] {
            let _ = self.upstream_requests.remove_label_values(&[n, o]);
        }
        let _ = self.upstream_connections.remove_label_values(&l);
        let _ = self.upstream_cordoned.remove_label_values(&l);
        let _ = self.upstream_tip.remove_label_values(&l);
        let _ = self.upstream_lag.remove_label_values(&l);
        let _ = self.upstream_score.remove_label_values(&l);
        let _ = self.upstream_latency_ewma.remove_label_values(&l);
        let _ = self.upstream_reconnects.remove_label_values(&l);
        let _ = self.upstream_duration.remove_label_values(&l);
    }

    /// Refreshes the pulled metrics and encodes everything in the Prometheus text format.
    pub fn render(&self, ctx: &Ctx) -> String {
        let Ok(mut exported) = self.scrape.lock() else {
            return String::new();
        };
        self.refresh_locked(ctx, &mut exported);
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    fn observe_upstream(&self, upstream: &str, elapsed: Duration, failed: bool) {
        let outcome = if failed { "failed" } else { "ok" };
        self.upstream_requests
            .with_label_values(&[upstream, outcome])
            .inc();
        if !failed {
            self.upstream_duration
                .with_label_values(&[upstream])
                .observe(elapsed.as_secs_f64());
        }
    }
}

/// Sets a counter that mirrors a monotonic count kept elsewhere. A count that went down (its
/// owner was reset, e.g. a slot took a new server) restarts the counter, which Prometheus
/// reads as a counter reset.
fn set_counter(c: &IntCounter, v: u64) {
    let cur = c.get();
    if v >= cur {
        c.inc_by(v - cur);
    } else {
        c.reset();
        c.inc_by(v);
    }
}

/// The outcome label of a wallet request's result.
fn outcome(res: &Result<Box<RawValue>, RpcError>) -> &'static str {
    match res {
        Ok(_) => "ok",
        // `router::unavailable`: no upstream produced an answer at all.
        Err(e) if e.message.starts_with("no upstream could answer") => "unavailable",
        Err(_) => "error",
    }
}

struct RequestGuard<'a> {
    metrics: &'a Metrics,
    method: &'static str,
    start: Instant,
    outcome: &'static str,
}

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        self.metrics
            .requests
            .with_label_values(&[self.method, self.outcome])
            .inc();
        self.metrics
            .request_duration
            .with_label_values(&[self.method])
            .observe(self.start.elapsed().as_secs_f64());
    }
}

/// Where an upstream reports each request's outcome and latency: a slot in
/// [`Upstream`] that [`Metrics::attach`] fills. Until then (or without an HTTP listener)
/// reports go nowhere.
#[derive(Default)]
pub struct UpstreamObserver(OnceLock<Weak<Metrics>>);

impl UpstreamObserver {
    /// Routes later reports to `metrics`.
    pub fn attach(&self, metrics: &Arc<Metrics>) {
        let _ = self.0.set(Arc::downgrade(metrics));
    }

    /// Reports one request: `name` gives the upstream's label (only called when attached).
    pub fn observe(&self, name: impl FnOnce() -> String, elapsed: Duration, failed: bool) {
        if let Some(m) = self.0.get().and_then(Weak::upgrade) {
            m.observe_upstream(&name(), elapsed, failed);
        }
    }
}

impl std::fmt::Debug for UpstreamObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamObserver")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Metrics) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&m.registry.gather(), &mut buf)
            .unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[tokio::test]
    async fn requests_are_counted_by_catalogue_method_and_outcome() {
        let m = Metrics::new();
        let ok: Result<Box<RawValue>, RpcError> = Ok(RawValue::from_string("1".into()).unwrap());
        let (r, ()) = m
            .track_request(lookup("server.ping"), async { (ok, ()) })
            .await;
        assert!(r.is_ok());
        let err = Err(crate::router::unavailable("no upstream is connected"));
        let _ = m
            .track_request(lookup("blockchain.scripthash.get_balance"), async {
                (err, ())
            })
            .await;
        let bad = Err(RpcError::bad_request("nope"));
        let _ = m.track_request(None, async { (bad, ()) }).await;
        // A request dropped before it finished: the session's timeout.
        let pending = m.track_request(lookup("blockchain.transaction.get"), async {
            futures::future::pending::<(Result<Box<RawValue>, RpcError>, ())>().await
        });
        let _ = tokio::time::timeout(Duration::from_millis(1), pending).await;
        let t = text(&m);
        for line in [
            r#"electrum_gateway_requests_total{method="server.ping",outcome="ok"} 1"#,
            r#"electrum_gateway_requests_total{method="blockchain.scripthash.get_balance",outcome="unavailable"} 1"#,
            r#"electrum_gateway_requests_total{method="other",outcome="error"} 1"#,
            r#"electrum_gateway_requests_total{method="blockchain.transaction.get",outcome="timeout"} 1"#,
            r#"electrum_gateway_request_duration_seconds_count{method="server.ping"} 1"#,
        ] {
            assert!(t.contains(line), "missing {line} in\n{t}");
        }
    }

    #[test]
    fn verification_metrics_exist_at_zero_and_reasons_stay_bounded() {
        let m = Metrics::new();
        let t = text(&m);
        assert!(
            t.contains(r#"electrum_gateway_verification_failures_total{reason="bad_merkle"} 0"#)
        );
        assert!(t.contains(r#"electrum_gateway_demotions_total{reason="lag"} 0"#));
        assert!(t.contains(
            r#"electrum_gateway_cache_hits_total{method="blockchain.transaction.get"} 0"#
        ));
        assert!(!t.contains(r#"cache_hits_total{method="blockchain.scripthash.get_balance"}"#));
        m.verification_failed("bad_merkle");
        m.verification_failed_at(Some("a:1"), "bad_merkle");
        m.verification_failed("Not An Identifier: 1.2.3.4");
        for i in 0..100 {
            m.demoted(&format!("r{i}"));
        }
        m.cache_hit("blockchain.transaction.get");
        m.cache_miss("no.such.method");
        m.header_sync(100, 200);
        let t = text(&m);
        assert!(
            t.contains(r#"electrum_gateway_verification_failures_total{reason="bad_merkle"} 2"#)
        );
        assert!(t.contains(r#"electrum_gateway_verification_failures_total{reason="other"} 1"#));
        let demotion_series = t
            .lines()
            .filter(|l| l.starts_with("electrum_gateway_demotions_total{"))
            .count();
        assert!(
            demotion_series <= DEMOTION_REASONS.len() + MAX_REASONS + 1,
            "{demotion_series} series"
        );
        assert!(t.contains(r#"electrum_gateway_demotions_total{reason="other"}"#));
        assert!(t.contains(
            r#"electrum_gateway_cache_hits_total{method="blockchain.transaction.get"} 1"#
        ));
        assert!(t.contains(r#"electrum_gateway_cache_misses_total{method="other"} 1"#));
        assert!(t.contains("electrum_gateway_header_sync_height 100"));
        assert!(t.contains("electrum_gateway_header_sync_target_height 200"));
        let ev = m.events();
        assert_eq!(ev[0].kind, "demotion");
        assert!(ev
            .iter()
            .any(|e| e.kind == "verification" && e.upstream.as_deref() == Some("a:1")));
    }

    #[test]
    fn every_chain_layer_reason_is_exported_from_the_start() {
        use crate::chain::{RejectReason as R, VerifyError as V};
        let s = String::new;
        let checks = [
            V::BadEncoding(s()),
            V::BadTxid,
            V::BadMerkle(s()),
            V::BadHeader(s()),
            V::BadStatus,
            V::HistoryMismatch(s()),
            V::BadBroadcast(s()),
        ];
        for e in &checks {
            // A new variant makes this match fail to compile: add its label above.
            match e {
                V::BadEncoding(_)
                | V::BadTxid
                | V::BadMerkle(_)
                | V::BadHeader(_)
                | V::BadStatus
                | V::HistoryMismatch(_)
                | V::BadBroadcast(_) => {}
            }
            assert!(VERIFICATION_REASONS.contains(&e.reason()), "{}", e.reason());
        }
        let rejects = [
            R::BadGenesis,
            R::BadLink,
            R::BadTarget,
            R::BadPow,
            R::Checkpoint,
            R::BadTime,
            R::BadVersion,
            R::TooOld,
            R::Unconnected,
            R::BadEncoding,
        ];
        for r in rejects {
            match r {
                R::BadGenesis
                | R::BadLink
                | R::BadTarget
                | R::BadPow
                | R::Checkpoint
                | R::BadTime
                | R::BadVersion
                | R::TooOld
                | R::Unconnected
                | R::BadEncoding => {}
            }
            assert!(VERIFICATION_REASONS.contains(&r.as_str()), "{}", r.as_str());
        }
    }

    #[test]
    fn the_event_log_is_bounded_and_newest_first() {
        let m = Metrics::new();
        for i in 0..EVENT_CAPACITY + 10 {
            m.event("up", None, format!("e{i}"));
        }
        let ev = m.events();
        assert_eq!(ev.len(), EVENT_CAPACITY);
        assert_eq!(ev[0].message, format!("e{}", EVENT_CAPACITY + 9));
        assert_eq!(ev[EVENT_CAPACITY - 1].message, "e10");
    }

    #[test]
    fn mirrored_counters_follow_their_source() {
        let c = IntCounter::new("c_total", "c").unwrap();
        set_counter(&c, 5);
        set_counter(&c, 7);
        assert_eq!(c.get(), 7);
        set_counter(&c, 2);
        assert_eq!(c.get(), 2);
    }
}
