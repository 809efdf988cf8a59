//! A snapshot of the gateway's state: what the metrics, the status page, the health check, the
//! admin API and tests read, instead of reaching into the gateway's internals.
//!
//! The gateway builds one on demand (`Gateway::snapshot`); it is plain data, so a reader can
//! never change or lock what it describes.

use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::protocol::Tip;
use crate::verify::{Demotion, Reason, Standing};

/// An upstream's connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpState {
    /// Dialing.
    Connecting,
    /// Connected and negotiated.
    Up,
    /// Not connected; waiting to redial.
    Down,
}

impl UpState {
    /// Every state, in label order.
    pub const ALL: [UpState; 3] = [UpState::Up, UpState::Connecting, UpState::Down];

    /// The label of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            UpState::Up => "up",
            UpState::Connecting => "connecting",
            UpState::Down => "down",
        }
    }
}

/// The whole gateway at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// `server.version`'s software string.
    pub software: String,
    /// The network served.
    pub network: bitcoin::Network,
    /// The verified best tip.
    pub best_tip: Option<Tip>,
    /// Height the header sync is heading for (the highest an upstream announced).
    pub sync_target: u32,
    /// Headers verified since the gateway started (stored ones are not verified again).
    pub headers_verified: u64,
    /// Every upstream slot, in slot order.
    pub upstreams: Vec<UpstreamView>,
    /// Slot indices of the upstreams that may serve a tip-dependent read now, best first.
    pub ranked: Vec<usize>,
    /// Servers waiting to replace a failing upstream (URLs), first in line first.
    pub candidates: Vec<String>,
    /// Wallet sessions open now.
    pub sessions: usize,
    /// Subscription counts.
    pub subscriptions: Subscriptions,
    /// Counters since start.
    pub counters: Counters,
}

/// One upstream slot.
#[derive(Debug, Clone)]
pub struct UpstreamView {
    /// Slot index.
    pub index: usize,
    /// `host:port`, the metrics label.
    pub name: String,
    /// The server's URL.
    pub url: String,
    /// Connection state.
    pub state: UpState,
    /// Connected connections.
    pub connections: usize,
    /// An operator took it out of rotation.
    pub cordoned: bool,
    /// The tip it announced last.
    pub tip: Option<Tip>,
    /// Where it stands relative to the verified chain.
    pub standing: Standing,
    /// Moving average of request latency, milliseconds.
    pub ewma_ms: Option<f64>,
    /// Median latency of recent requests.
    pub p50: Option<Duration>,
    /// 90th percentile latency of recent requests.
    pub p90: Option<Duration>,
    /// Routing score (lower is better).
    pub score: f64,
    /// Server software.
    pub software: String,
    /// Negotiated protocol version.
    pub protocol: String,
    /// Requests answered.
    pub answered: u64,
    /// Requests failed in transport.
    pub failed: u64,
    /// Recent failure rate.
    pub error_rate: f64,
    /// Successful reconnections since it took the slot.
    pub reconnects: u64,
    /// Failed connection attempts in a row.
    pub consecutive_failures: u32,
    /// Last connection error.
    pub last_error: String,
    /// Last successful connection.
    pub last_success: Option<SystemTime>,
}

impl UpstreamView {
    /// Blocks behind the best tip, when it announced a tip.
    pub fn lag(&self, best: Option<&Tip>) -> Option<u32> {
        match (&self.tip, best) {
            (Some(t), Some(b)) => Some(b.height.saturating_sub(t.height)),
            _ => None,
        }
    }

    /// Able to serve now: connected, not cordoned, and at the best tip.
    pub fn healthy(&self, best: Option<&Tip>) -> bool {
        self.connections > 0
            && !self.cordoned
            && matches!((&self.tip, best), (Some(t), Some(b)) if t.height >= b.height)
    }
}

/// Subscription counts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Subscriptions {
    /// Distinct scripthashes at least one wallet subscribed to.
    pub scripthashes: usize,
    /// Subscriptions held by wallets, summed over sessions.
    pub sessions: usize,
    /// Subscriptions held on upstreams.
    pub upstream: usize,
}

/// Counters since start.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Upstream connections lost after having been up.
    pub failovers: u64,
    /// Reads also sent to a second upstream because the first was slow.
    pub hedges: u64,
    /// Reads retried on another upstream.
    pub retries: u64,
    /// Voted reads whose answers disagreed.
    pub disagreements: u64,
    /// Reads that found no upstream able to answer and waited for one to come into step.
    pub in_step_waits: u64,
    /// Scripthash subscriptions moved to another upstream.
    pub subscription_moves: u64,
    /// Scripthash notifications sent to wallets.
    pub notifications: u64,
    /// Reorganisations of the verified chain.
    pub reorgs: u64,
    /// Answers served from the cache.
    pub cache_hits: u64,
    /// Cacheable requests that went to an upstream.
    pub cache_misses: u64,
    /// Upstream answers that failed verification or a vote, by reason.
    pub failures: BTreeMap<Reason, u64>,
    /// Upstream demotions, by reason.
    pub demotions: BTreeMap<Demotion, u64>,
}

impl Counters {
    /// Failures counted for a reason.
    pub fn failures_of(&self, reason: Reason) -> u64 {
        self.failures.get(&reason).copied().unwrap_or(0)
    }
}

impl Snapshot {
    /// Upstreams able to serve now.
    pub fn healthy(&self) -> usize {
        self.upstreams
            .iter()
            .filter(|u| u.healthy(self.best_tip.as_ref()))
            .count()
    }

    /// The health verdict: can the gateway serve wallets now? `None` when it can, else why not.
    pub fn unhealthy_reason(&self) -> Option<String> {
        let connected: Vec<_> = self
            .upstreams
            .iter()
            .filter(|u| u.connections > 0)
            .collect();
        if connected.is_empty() {
            Some("no upstream is connected".to_string())
        } else if self.best_tip.is_none() {
            Some("no upstream has announced a tip yet".to_string())
        } else if connected.iter().all(|u| u.cordoned) {
            Some("every connected upstream is cordoned".to_string())
        } else if self.healthy() == 0 {
            Some(format!(
                "no usable upstream is at the best tip (height {})",
                self.best_tip.as_ref().map(|t| t.height).unwrap_or(0)
            ))
        } else {
            None
        }
    }
}
