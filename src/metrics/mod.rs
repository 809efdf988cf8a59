//! Prometheus metrics and the gateway's recent-events log.
//!
//! The gateway creates one [`Metrics`] at start and hands it to the parts that report to it, so
//! metrics and the event log work whether or not the HTTP listener is on.
//!
//! Most numbers already live where the work happens: the pool knows each upstream's state, tip,
//! score, reconnects, verification failures and demotions; the router counts hedges, retries
//! and disagreements; the hub counts subscriptions. Copying them into metrics on every change
//! would put a metrics call on every hot path, so they are *pulled* instead: the gateway builds
//! a [`Snapshot`] and [`Metrics::render`] reads it when Prometheus scrapes. Only what leaves no
//! trace elsewhere is *pushed* as it happens: wallet requests by method and outcome with their
//! latency ([`Metrics::track_request`], one call in the session), each upstream request's
//! latency ([`Metrics::observe_upstream`], one call in the gateway's checked upstream call),
//! cache hits and misses by method, tip changes, and the event log.
//!
//! Label values are bounded by construction: methods come from the catalogue (anything else is
//! `other`), upstreams are the servers of the pool's slots (`host:port`, as configured or taken
//! from the server list), and reasons are the variants of [`crate::verify::Reason`] and
//! [`crate::verify::Demotion`]. No wallet address, scripthash or client IP ever becomes a label.

pub mod snapshot;

pub use snapshot::{Counters, Snapshot, Subscriptions, UpState, UpstreamView};

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::protocol::methods::{lookup, Cache, METHODS};
use crate::protocol::RpcError;
use crate::verify::{Demotion, Reason};

/// The prefix of every gateway metric.
pub const PREFIX: &str = "electrum_gateway_";

/// How many recent events are kept for the status page.
pub const EVENT_CAPACITY: usize = 256;

/// The bounded label of a method name: its catalogue name, or `other`.
pub fn method_label(method: &str) -> &'static str {
    lookup(method).map(|m| m.name).unwrap_or("other")
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
    upstream_scripthashes: IntGaugeVec,
    upstream_latency_ewma: GaugeVec,
    upstream_reconnects: IntCounterVec,
    upstream_requests: IntCounterVec,
    upstream_duration: HistogramVec,
    tip_height: IntGauge,
    tip_updated: Gauge,
    failovers: IntCounter,
    hedges: IntCounter,
    retries: IntCounter,
    in_step_waits: IntCounter,
    disagreements: IntCounter,
    verification_failures: IntCounterVec,
    demotions: IntCounterVec,
    sub_scripthashes: IntGauge,
    sub_sessions: IntGauge,
    sub_upstream: IntGauge,
    sub_moves: IntCounter,
    notifications: IntCounter,
    cache_hits: IntCounterVec,
    shared_reads: IntCounterVec,
    cache_misses: IntCounterVec,
    header_sync_height: IntGauge,
    header_sync_target: IntGauge,
    limit_rejections: IntCounterVec,
    abuse_disconnects: IntCounter,
    /// Serialises scrapes, and remembers which upstream labels are exported.
    scrape: Mutex<HashSet<String>>,
    events: Mutex<VecDeque<Event>>,
}

/// The `limit` label values of `limit_rejections_total`.
pub const LIMITS: [&str; 9] = [
    "sessions",
    "handshakes",
    "origin",
    "connections",
    "rate",
    "subscriptions",
    "subscriptions_global",
    "batch",
    "batch_answer",
];

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
            upstream_scripthashes: b.gauge_vec(
                "upstream_scripthashes",
                "Distinct scripthashes each upstream was asked about (subscribed to or read) \
                 since it took its slot: how much of the wallets it has seen.",
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
            in_step_waits: b.counter(
                "in_step_waits_total",
                "Reads that found no upstream in step and waited for one (after a kill, a block \
                 or a reorg).",
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
            shared_reads: b.counter_vec(
                "shared_reads_total",
                "Reads answered by an identical read already in flight (one upstream request \
                 and vote for both), by method.",
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
            limit_rejections: b.counter_vec(
                "limit_rejections_total",
                "Wallet connections or requests refused by a limit, by limit: sessions (the \
                 gateway's), handshakes (in progress on a listener), origin (a WebSocket \
                 origin not allowed), connections (one client's), rate, subscriptions (one client's or \
                 connection's), subscriptions_global, batch, batch_answer.",
                &["limit"],
            ),
            abuse_disconnects: b.counter(
                "abuse_disconnects_total",
                "Wallet connections closed after `abuse_strikes` over-limit errors in a row.",
            ),
            scrape: Mutex::new(HashSet::new()),
            events: Mutex::new(VecDeque::new()),
            registry: b.registry,
        };
        for l in LIMITS {
            m.limit_rejections.with_label_values(&[l]);
        }
        for r in Reason::ALL {
            m.verification_failures.with_label_values(&[r.as_str()]);
        }
        for d in Demotion::ALL {
            m.demotions.with_label_values(&[d.as_str()]);
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
        method: &'static str,
        fut: F,
    ) -> impl Future<Output = (Result<Box<RawValue>, RpcError>, C)> + 'a
    where
        F: Future<Output = (Result<Box<RawValue>, RpcError>, C)> + 'a,
    {
        let guard = RequestGuard {
            metrics: self,
            method,
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

    /// Counts a connection or request refused by a limit (one of [`LIMITS`]).
    pub fn limit_rejected(&self, limit: &'static str) {
        self.limit_rejections.with_label_values(&[limit]).inc();
    }

    /// Counts a connection closed for abuse.
    pub fn abuse_disconnect(&self) {
        self.abuse_disconnects.inc();
    }

    /// Counts a request answered from the cache.
    pub fn cache_hit(&self, method: &str) {
        self.cache_hits
            .with_label_values(&[method_label(method)])
            .inc();
    }

    /// Counts a read that waited for an identical one in flight instead of asking upstreams.
    pub fn shared_read(&self, method: &str) {
        self.shared_reads
            .with_label_values(&[method_label(method)])
            .inc();
    }

    /// Counts a cacheable request that was not in the cache.
    pub fn cache_miss(&self, method: &str) {
        self.cache_misses
            .with_label_values(&[method_label(method)])
            .inc();
    }

    /// Notes that the verified best tip moved.
    pub fn tip_changed(&self) {
        self.tip_updated.set(now_ms() as f64 / 1000.0);
    }

    /// Logs a verification failure of a named upstream's answer and puts it in the event log
    /// (the counter is pulled from the snapshot).
    pub fn verification_failed(&self, upstream: &str, reason: Reason) {
        tracing::warn!(upstream, reason = reason.as_str(), "verification failed");
        self.event(
            "verification",
            Some(upstream),
            format!("an answer failed verification: {reason}"),
        );
    }

    /// Logs a demotion of a named upstream and puts it in the event log.
    pub fn demoted(&self, upstream: &str, reason: Demotion) {
        tracing::warn!(upstream, reason = reason.as_str(), "upstream demoted");
        self.event(
            "demotion",
            Some(upstream),
            format!("demoted: {}", reason.as_str()),
        );
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

    /// Reads a snapshot of the gateway into the pulled metrics.
    fn refresh(&self, snap: &Snapshot, exported: &mut HashSet<String>) {
        self.header_sync_height.set(i64::from(
            snap.best_tip.as_ref().map(|t| t.height).unwrap_or(0),
        ));
        let best = snap.best_tip.as_ref();
        let height = best.map(|t| t.height).unwrap_or(0);
        self.header_sync_target
            .set(i64::from(snap.sync_target.max(height)));
        self.tip_height.set(i64::from(height));
        self.upstreams.set(snap.upstreams.len() as i64);
        self.candidates.set(snap.candidates.len() as i64);
        let mut current = HashSet::new();
        for up in &snap.upstreams {
            let n = up.name.as_str();
            let l = [n];
            for s in UpState::ALL {
                self.upstream_state
                    .with_label_values(&[n, s.as_str()])
                    .set(i64::from(s == up.state));
            }
            self.upstream_connections
                .with_label_values(&l)
                .set(up.connections as i64);
            self.upstream_cordoned
                .with_label_values(&l)
                .set(i64::from(up.cordoned));
            match (&up.tip, up.lag(best)) {
                (Some(t), lag) => {
                    self.upstream_tip
                        .with_label_values(&l)
                        .set(i64::from(t.height));
                    self.upstream_lag
                        .with_label_values(&l)
                        .set(i64::from(lag.unwrap_or(0)));
                }
                (None, _) => {
                    let _ = self.upstream_tip.remove_label_values(&l);
                    let _ = self.upstream_lag.remove_label_values(&l);
                }
            }
            self.upstream_score.with_label_values(&l).set(up.score);
            self.upstream_scripthashes
                .with_label_values(&l)
                .set(i64::try_from(up.scripthashes_seen).unwrap_or(i64::MAX));
            match up.ewma_ms {
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
                up.reconnects,
            );
            for o in ["ok", "failed"] {
                self.upstream_requests.with_label_values(&[n, o]);
            }
            self.upstream_duration.with_label_values(&l);
            current.insert(n.to_string());
        }
        for gone in exported.difference(&current) {
            self.forget_upstream(gone);
        }
        *exported = current;
        self.upstreams_healthy.set(snap.healthy() as i64);
        self.sessions.set(snap.sessions as i64);
        let subs = &snap.subscriptions;
        self.sub_scripthashes.set(subs.scripthashes as i64);
        self.sub_sessions.set(subs.sessions as i64);
        self.sub_upstream.set(subs.upstream as i64);
        let c = &snap.counters;
        set_counter(&self.sub_moves, c.subscription_moves);
        set_counter(&self.notifications, c.notifications);
        set_counter(&self.failovers, c.failovers);
        set_counter(&self.hedges, c.hedges);
        set_counter(&self.retries, c.retries);
        set_counter(&self.disagreements, c.disagreements);
        set_counter(&self.in_step_waits, c.in_step_waits);
        for r in Reason::ALL {
            set_counter(
                &self.verification_failures.with_label_values(&[r.as_str()]),
                c.failures_of(*r),
            );
        }
        for d in Demotion::ALL {
            set_counter(
                &self.demotions.with_label_values(&[d.as_str()]),
                c.demotions.get(d).copied().unwrap_or(0),
            );
        }
    }

    /// Drops the series of a server that no longer holds a slot.
    fn forget_upstream(&self, n: &str) {
        let l = [n];
        for s in UpState::ALL.map(UpState::as_str) {
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
        let _ = self.upstream_scripthashes.remove_label_values(&l);
        let _ = self.upstream_latency_ewma.remove_label_values(&l);
        let _ = self.upstream_reconnects.remove_label_values(&l);
        let _ = self.upstream_duration.remove_label_values(&l);
    }

    /// Refreshes the pulled metrics from `snap` and encodes everything in the Prometheus text
    /// format.
    pub fn render(&self, snap: &Snapshot) -> String {
        let Ok(mut exported) = self.scrape.lock() else {
            return String::new();
        };
        self.refresh(snap, &mut exported);
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Reports one upstream request: its latency when answered, or a transport failure.
    pub fn observe_upstream(&self, upstream: &str, elapsed: Duration, failed: bool) {
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
        let (r, ()) = m.track_request("server.ping", async { (ok, ()) }).await;
        assert!(r.is_ok());
        let err = Err(RpcError::new(
            crate::protocol::error::DAEMON_ERROR,
            "no upstream could answer: no upstream is connected",
        ));
        let _ = m
            .track_request("blockchain.scripthash.get_balance", async { (err, ()) })
            .await;
        let bad = Err(RpcError::bad_request("nope"));
        let _ = m.track_request("other", async { (bad, ()) }).await;
        // A request dropped before it finished: the session's timeout.
        let pending = m.track_request("blockchain.transaction.get", async {
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

    fn snapshot() -> Snapshot {
        Snapshot {
            software: "test".into(),
            network: bitcoin::Network::Regtest,
            best_tip: Some(crate::protocol::Tip {
                height: 100,
                hex: String::new(),
            }),
            sync_target: 200,
            headers_verified: 0,
            upstreams: Vec::new(),
            ranked: Vec::new(),
            candidates: Vec::new(),
            sessions: 0,
            subscriptions: Subscriptions::default(),
            counters: Counters::default(),
        }
    }

    #[test]
    fn every_reason_exists_at_zero_and_counts_follow_the_snapshot() {
        let m = Metrics::new();
        let t = text(&m);
        for r in Reason::ALL {
            let line = format!(
                "electrum_gateway_verification_failures_total{{reason=\"{}\"}} 0",
                r.as_str()
            );
            assert!(t.contains(&line), "missing {line}");
        }
        assert!(t.contains(r#"electrum_gateway_demotions_total{reason="lag"} 0"#));
        assert!(t.contains(
            r#"electrum_gateway_cache_hits_total{method="blockchain.transaction.get"} 0"#
        ));
        assert!(t.contains(
            r#"electrum_gateway_cache_hits_total{method="blockchain.scripthash.get_balance"} 0"#
        ));
        assert!(!t.contains(r#"cache_hits_total{method="blockchain.scripthash.get_mempool"}"#));
        let mut snap = snapshot();
        snap.counters.failures.insert(Reason::BadMerkle, 2);
        snap.counters.demotions.insert(Demotion::Fork, 1);
        m.verification_failed("a:1", Reason::BadMerkle);
        m.cache_hit("blockchain.transaction.get");
        m.cache_miss("no.such.method");
        let t = m.render(&snap);
        assert!(
            t.contains(r#"electrum_gateway_verification_failures_total{reason="bad_merkle"} 2"#)
        );
        assert!(t.contains(r#"electrum_gateway_demotions_total{reason="fork"} 1"#));
        assert!(t.contains(
            r#"electrum_gateway_cache_hits_total{method="blockchain.transaction.get"} 1"#
        ));
        assert!(t.contains(r#"electrum_gateway_cache_misses_total{method="other"} 1"#));
        assert!(t.contains("electrum_gateway_header_sync_height 100"));
        assert!(t.contains("electrum_gateway_header_sync_target_height 200"));
        let ev = m.events();
        assert!(ev
            .iter()
            .any(|e| e.kind == "verification" && e.upstream.as_deref() == Some("a:1")));
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
