//! One upstream slot: a server, its connections, its latency measurements and its standing.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::client::{Client, ClientError};
use crate::metrics::{UpState, UpstreamView};
use crate::protocol::Tip;
use crate::transport::ServerUrl;
use crate::verify::{LinkGuard, Standing};

const LATENCY_SAMPLES: usize = 256;
/// The cached p90 is recomputed every this many answers (every answer while samples are few).
const P90_EVERY: u64 = 16;
/// `Upstream::p90_us` when there are too few samples for a p90.
pub(crate) const NO_P90: u64 = u64::MAX;

/// Measurements of one upstream.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Exponentially weighted moving average of request latency, milliseconds.
    pub ewma_ms: Option<f64>,
    /// The most recent latencies, milliseconds.
    pub samples: VecDeque<f64>,
    /// Requests answered (results and RPC errors).
    pub answered: u64,
    /// Requests that failed in transport (timeouts, disconnects).
    pub failed: u64,
    /// Recent failure rate (EWMA of 0/1).
    pub error_rate: f64,
    /// Server software from `server.version`.
    pub software: String,
    /// Negotiated protocol version.
    pub protocol: String,
    /// Successful connections after the first.
    pub reconnects: u64,
    /// Failed connection attempts in a row.
    pub consecutive_failures: u32,
    /// Last time a connection succeeded.
    pub last_success: Option<SystemTime>,
    /// Last connection error.
    pub last_error: String,
}

/// One upstream slot: a server, its connections and its measurements.
pub struct Upstream {
    /// Slot index.
    pub id: usize,
    url: RwLock<ServerUrl>,
    /// The server's URL as text and its `host:port`, made once per server (every request
    /// names its upstream in metrics, and privacy ranks upstreams by URL).
    texts: RwLock<(Arc<str>, Arc<str>)>,
    pub(crate) conns: Vec<RwLock<Option<Client>>>,
    next_conn: AtomicUsize,
    pub(crate) stats: Mutex<Stats>,
    /// The p90 of the latency samples in microseconds, kept up to date by `record` so that
    /// routing reads it without sorting ([`NO_P90`] while there are too few samples).
    pub(crate) p90_us: AtomicU64,
    pub(crate) tip: RwLock<Option<Tip>>,
    pub(crate) standing: Mutex<Standing>,
    pub(crate) link: LinkGuard,
    /// An operator took this upstream out of rotation.
    pub cordoned: AtomicBool,
    /// Scripthash subscriptions it failed or stalled in a row.
    pub(crate) subscribe_failures: std::sync::atomic::AtomicU32,
    /// What this server has learnt of the wallets: the distinct scripthashes it was asked
    /// about (subscribed to or read), as fingerprints under a key of this process, so that
    /// the set names no scripthash.
    seen: Mutex<HashSet<u64>>,
    seen_key: RandomState,
}

impl Upstream {
    pub(crate) fn new(id: usize, url: ServerUrl, conns: usize) -> Self {
        Upstream {
            id,
            texts: RwLock::new(texts_of(&url)),
            url: RwLock::new(url),
            conns: (0..conns).map(|_| RwLock::new(None)).collect(),
            next_conn: AtomicUsize::new(0),
            stats: Mutex::new(Stats::default()),
            p90_us: AtomicU64::new(NO_P90),
            tip: RwLock::new(None),
            standing: Mutex::new(Standing::default()),
            link: LinkGuard::default(),
            cordoned: AtomicBool::new(false),
            subscribe_failures: Default::default(),
            seen: Mutex::new(HashSet::new()),
            seen_key: RandomState::new(),
        }
    }

    /// The server this slot talks to now.
    pub fn url(&self) -> ServerUrl {
        self.url
            .read()
            .map(|u| u.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// A name for logs and metric labels: `host:port`.
    pub fn name(&self) -> String {
        self.label().to_string()
    }

    /// [`Upstream::name`], shared.
    pub fn label(&self) -> Arc<str> {
        self.texts
            .read()
            .map(|t| t.1.clone())
            .unwrap_or_else(|p| p.into_inner().1.clone())
    }

    /// The server's URL as text, shared.
    pub fn url_text(&self) -> Arc<str> {
        self.texts
            .read()
            .map(|t| t.0.clone())
            .unwrap_or_else(|p| p.into_inner().0.clone())
    }

    /// Has this slot talk to another server.
    pub(crate) fn set_url(&self, url: ServerUrl) {
        if let Ok(mut t) = self.texts.write() {
            *t = texts_of(&url);
        }
        if let Ok(mut u) = self.url.write() {
            *u = url;
        }
    }

    /// Scripthash requests answered so far (without copying the measurements).
    pub fn answered(&self) -> u64 {
        self.stats.lock().map(|s| s.answered).unwrap_or(0)
    }

    /// A connected client, round robin over this upstream's connections.
    pub fn client(&self) -> Option<Client> {
        let n = self.conns.len();
        let start = self.next_conn.fetch_add(1, Ordering::Relaxed);
        (0..n).find_map(|i| self.conn(start.wrapping_add(i) % n))
    }

    /// The client of connection `i`, if it is up.
    pub fn conn(&self, i: usize) -> Option<Client> {
        self.conns.get(i)?.read().ok()?.clone()
    }

    /// The client chosen for a key (e.g. a scripthash), stable while connections stay up.
    pub fn client_for(&self, key: u64) -> Option<Client> {
        let n = self.conns.len();
        (0..n).find_map(|i| self.conn((key as usize).wrapping_add(i) % n))
    }

    /// Connected connections.
    pub fn connected(&self) -> usize {
        (0..self.conns.len())
            .filter(|i| self.conn(*i).is_some())
            .count()
    }

    /// State for display.
    pub fn state(&self) -> UpState {
        if self.connected() > 0 {
            UpState::Up
        } else if self.stats().consecutive_failures == 0 {
            UpState::Connecting
        } else {
            UpState::Down
        }
    }

    /// Where this upstream stands relative to the verified best chain (strikes forgiven by now
    /// are not counted).
    pub fn standing(&self) -> Standing {
        self.standing
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
            .as_of(Instant::now())
    }

    /// Forgets everything known about the server this slot had: its measurements, standing,
    /// tip and an operator's cordon. For a slot that takes a new server.
    pub(crate) fn reset_for_new_server(&self) {
        if let Ok(mut s) = self.stats.lock() {
            *s = Stats::default();
        }
        self.p90_us.store(NO_P90, Ordering::Relaxed);
        if let Ok(mut st) = self.standing.lock() {
            *st = Standing::default();
        }
        if let Ok(mut tip) = self.tip.write() {
            *tip = None;
        }
        self.cordoned.store(false, Ordering::Relaxed);
        if let Ok(mut seen) = self.seen.lock() {
            *seen = HashSet::new();
        }
    }

    /// Notes that this server was asked about `scripthash`.
    pub(crate) fn note_scripthash(&self, scripthash: &str) {
        let fingerprint = self.seen_key.hash_one(scripthash);
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert(fingerprint);
        }
    }

    /// How many distinct scripthashes this server was asked about since it took this slot.
    pub fn scripthashes_seen(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// True when it may serve reads that depend on the tip.
    pub fn in_step(&self) -> bool {
        self.standing().in_step()
    }

    /// The tip this upstream announced last.
    pub fn tip(&self) -> Option<Tip> {
        self.tip.read().ok()?.clone()
    }

    /// A copy of the measurements.
    pub fn stats(&self) -> Stats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Records one request's outcome: latency for answers, failure for transport errors.
    pub fn record<T>(&self, res: &Result<T, ClientError>, elapsed: Duration) {
        let Ok(mut s) = self.stats.lock() else { return };
        let failed = match res {
            Ok(_) | Err(ClientError::Rpc(_)) => false,
            Err(_) => true,
        };
        s.error_rate = s.error_rate * 0.9 + if failed { 0.1 } else { 0.0 };
        if failed {
            s.failed += 1;
            return;
        }
        s.answered += 1;
        let ms = elapsed.as_secs_f64() * 1000.0;
        s.ewma_ms = Some(match s.ewma_ms {
            Some(e) => e * 0.8 + ms * 0.2,
            None => ms,
        });
        if s.samples.len() == LATENCY_SAMPLES {
            s.samples.pop_front();
        }
        s.samples.push_back(ms);
        if s.samples.len() >= 8 && (s.samples.len() < 32 || s.answered % P90_EVERY == 0) {
            let mut v = [0f64; LATENCY_SAMPLES];
            let n = s.samples.len();
            for (slot, x) in v.iter_mut().zip(s.samples.iter()) {
                *slot = *x;
            }
            let idx = ((n - 1) as f64 * 0.9).round() as usize;
            let (_, p90, _) = v[..n].select_nth_unstable_by(idx, |a, b| a.total_cmp(b));
            self.p90_us
                .store((*p90 * 1000.0).max(0.0) as u64, Ordering::Relaxed);
        }
    }

    /// A latency percentile over recent samples (`q` in 0..=1).
    pub fn percentile(&self, q: f64) -> Option<Duration> {
        let s = self.stats.lock().ok()?;
        if s.samples.len() < 8 {
            return None;
        }
        let mut v: Vec<f64> = s.samples.iter().copied().collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let idx = ((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        Some(Duration::from_secs_f64(v[idx] / 1000.0))
    }

    /// The recent p90 latency (recomputed every few answers; read on every routed request).
    pub fn p90(&self) -> Option<Duration> {
        match self.p90_us.load(Ordering::Relaxed) {
            NO_P90 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// What the snapshot shows of this upstream.
    pub fn view(&self) -> UpstreamView {
        let stats = self.stats();
        let url = self.url();
        UpstreamView {
            index: self.id,
            name: url.authority(),
            url: url.to_string(),
            state: self.state(),
            connections: self.connected(),
            cordoned: self.cordoned.load(Ordering::Relaxed),
            tip: self.tip(),
            standing: self.standing(),
            ewma_ms: stats.ewma_ms,
            p50: self.percentile(0.5),
            p90: self.p90(),
            score: self.score(),
            software: stats.software,
            protocol: stats.protocol,
            answered: stats.answered,
            failed: stats.failed,
            error_rate: stats.error_rate,
            reconnects: stats.reconnects,
            consecutive_failures: stats.consecutive_failures,
            last_error: stats.last_error,
            last_success: stats.last_success,
            scripthashes_seen: self.scripthashes_seen(),
        }
    }

    /// Lower is better: latency inflated by the recent failure rate.
    pub fn score(&self) -> f64 {
        let (ewma_ms, error_rate) = match self.stats.lock() {
            Ok(s) => (s.ewma_ms, s.error_rate),
            Err(_) => (None, 0.0),
        };
        ewma_ms.unwrap_or(100.0) * (1.0 + 20.0 * error_rate)
    }
}

/// A URL's text and `host:port`.
fn texts_of(url: &ServerUrl) -> (Arc<str>, Arc<str>) {
    (Arc::from(url.to_string()), Arc::from(url.authority()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_p90_follows_the_samples() {
        let up = Upstream::new(0, "tcp://127.0.0.1:1".parse().unwrap(), 1);
        let ok: Result<(), ClientError> = Ok(());
        for ms in 1..=7 {
            up.record(&ok, Duration::from_millis(ms));
        }
        assert_eq!(up.p90(), None, "too few samples");
        // Latencies grow by 1 ms per answer, so a cache refreshed every P90_EVERY answers
        // trails the exact p90 by at most P90_EVERY ms, and never leads it.
        for ms in 8..=300u64 {
            up.record(&ok, Duration::from_millis(ms));
            let cached = up.p90().unwrap();
            let exact = up.percentile(0.9).unwrap();
            assert!(
                cached <= exact && exact - cached <= Duration::from_millis(P90_EVERY),
                "after {ms}: cached {cached:?}, exact {exact:?}"
            );
        }
        // A transport failure is not a latency sample.
        let failed: Result<(), ClientError> = Err(ClientError::Timeout);
        let before = up.p90();
        up.record(&failed, Duration::from_secs(100));
        assert_eq!(up.p90(), before);
    }
}
