//! The active upstream set: connect, score, reconnect with backoff, replace, track tips.
//!
//! The pool keeps `active` upstream slots. Each slot has one server at a time and one or more
//! connections to it (`connections_per_upstream`, to stay under per-IP server limits). A
//! supervisor task per connection dials, waits for the connection to die, and dials again
//! with exponential backoff and jitter; after `replace_after_failures` failed attempts in a
//! row the slot takes the next candidate from the server list. The pool, not the client,
//! owns reconnection here, so that a dead connection is noticed at once by the subscription
//! hub, which moves its subscriptions to another upstream.

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use futures::StreamExt;

use crate::client::{
    Client, ClientConfig, ClientError, ClientEvent, ConnectionState, ProxyConfig, TlsMode,
};
use crate::config::{secs, Config};
use crate::consensus::{Consensus, LinkGuard, Placement, Standing};
use crate::transport::ServerUrl;

/// A block tip as an upstream announced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tip {
    /// Height.
    pub height: u32,
    /// The 80-byte header, hex.
    pub hex: String,
}

impl Tip {
    /// Reads a `blockchain.headers.subscribe` value (`{"hex","height"}`), checking its shape.
    pub fn from_value(v: &Value) -> Option<Tip> {
        let height = u32::try_from(v.get("height")?.as_u64()?).ok()?;
        let hex = v.get("hex")?.as_str()?;
        if hex.len() != 160 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(Tip {
            height,
            hex: hex.to_ascii_lowercase(),
        })
    }

    /// The notification value `{"hex","height"}` (exactly these two keys).
    pub fn to_value(&self) -> Value {
        serde_json::json!({"hex": self.hex, "height": self.height})
    }
}

/// An upstream's state.
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

/// What the pool tells the rest of the gateway.
#[derive(Debug, Clone)]
pub enum PoolEvent {
    /// A connection of an upstream came up.
    Up(usize),
    /// A connection of an upstream went down.
    Down(usize),
    /// The best tip changed.
    Tip(Tip),
    /// An upstream's standing changed (demoted, back in step, sitting out).
    Standing(usize),
}

const LATENCY_SAMPLES: usize = 256;
/// The cached p90 is recomputed every this many answers (every answer while samples are few).
const P90_EVERY: u64 = 16;
/// `Upstream::p90_us` when there are too few samples for a p90.
const NO_P90: u64 = u64::MAX;

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
    conns: Vec<RwLock<Option<Client>>>,
    next_conn: AtomicUsize,
    stats: Mutex<Stats>,
    /// The p90 of the latency samples in microseconds, kept up to date by `record` so that
    /// routing reads it without sorting ([`NO_P90`] while there are too few samples).
    p90_us: AtomicU64,
    tip: RwLock<Option<Tip>>,
    standing: Mutex<Standing>,
    link: LinkGuard,
    /// An operator took this upstream out of rotation.
    pub cordoned: AtomicBool,
    /// Reports each request's latency to the metrics.
    pub observer: crate::metrics::UpstreamObserver,
}

impl Upstream {
    fn new(id: usize, url: ServerUrl, conns: usize) -> Self {
        Upstream {
            id,
            url: RwLock::new(url),
            conns: (0..conns).map(|_| RwLock::new(None)).collect(),
            next_conn: AtomicUsize::new(0),
            stats: Mutex::new(Stats::default()),
            p90_us: AtomicU64::new(NO_P90),
            tip: RwLock::new(None),
            standing: Mutex::new(Standing::default()),
            link: LinkGuard::default(),
            cordoned: AtomicBool::new(false),
            observer: Default::default(),
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
        self.url().authority()
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

    /// Where this upstream stands relative to the verified best chain.
    pub fn standing(&self) -> Standing {
        self.standing.lock().map(|s| s.clone()).unwrap_or_default()
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
        self.observer.observe(|| self.name(), elapsed, failed);
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

    /// Lower is better: latency inflated by the recent failure rate.
    pub fn score(&self) -> f64 {
        let (ewma_ms, error_rate) = match self.stats.lock() {
            Ok(s) => (s.ewma_ms, s.error_rate),
            Err(_) => (None, 0.0),
        };
        ewma_ms.unwrap_or(100.0) * (1.0 + 20.0 * error_rate)
    }
}

/// An upstream candidate for a read: upstream, connection, (out of step, lag), score.
type Ranked = (Arc<Upstream>, Client, (bool, u32), f64);

/// What the pool learned about a server, saved in the data directory.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Learned {
    /// Last successful connection, seconds since the epoch.
    pub last_success: Option<u64>,
    /// Last score (lower is better).
    pub score: Option<f64>,
    /// Failed connection attempts in a row when last seen.
    pub failures: u32,
    /// Server software.
    pub software: String,
}

/// The upstream pool.
pub struct Pool {
    cfg: Arc<Config>,
    network: bitcoin::Network,
    upstreams: Vec<Arc<Upstream>>,
    candidates: Mutex<VecDeque<ServerUrl>>,
    consensus: Arc<Consensus>,
    events: broadcast::Sender<PoolEvent>,
    learned: Mutex<HashMap<String, Learned>>,
    state_file: Option<PathBuf>,
    /// Upstream connections that failed or were lost (after having been up).
    pub failovers: AtomicU64,
    shutdown: CancellationToken,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Pool {
    /// Builds the pool from configured servers first, then candidates; nothing is dialed
    /// until [`Pool::start`].
    pub fn new(
        cfg: Arc<Config>,
        mut servers: Vec<ServerUrl>,
        candidates: Vec<ServerUrl>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Pool>> {
        let network = cfg.network()?;
        let consensus = Consensus::open(
            network,
            &cfg.data_dir.join("headers"),
            cfg.verify.max_lag,
            secs(cfg.verify.penalty_secs),
        )?;
        let state_file = Some(cfg.data_dir.join("upstreams.json"));
        let learned: HashMap<String, Learned> = state_file
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut candidates: Vec<ServerUrl> = candidates
            .into_iter()
            .filter(|c| !servers.contains(c))
            .collect();
        // Candidates that worked before go first, best score first.
        candidates.sort_by(|a, b| {
            let score = |u: &ServerUrl| {
                learned
                    .get(&u.to_string())
                    .and_then(|l| l.last_success.map(|_| l.score.unwrap_or(1e6)))
                    .unwrap_or(f64::INFINITY)
            };
            score(a).total_cmp(&score(b))
        });
        let mut candidates: VecDeque<ServerUrl> = candidates.into();
        while servers.len() < cfg.upstreams.active {
            match candidates.pop_front() {
                Some(c) => servers.push(c),
                None => break,
            }
        }
        if servers.is_empty() {
            anyhow::bail!("no upstream servers configured and no server list to pick from");
        }
        // Servers beyond the active count wait as the first candidates.
        for extra in servers
            .split_off(cfg.upstreams.active.min(servers.len()))
            .into_iter()
            .rev()
        {
            candidates.push_front(extra);
        }
        let conns = cfg.upstreams.connections_per_upstream;
        let upstreams = servers
            .into_iter()
            .enumerate()
            .map(|(i, u)| Arc::new(Upstream::new(i, u, conns)))
            .collect();
        Ok(Arc::new(Pool {
            cfg,
            network,
            upstreams,
            candidates: Mutex::new(candidates),
            consensus,
            events: broadcast::channel(1024).0,
            learned: Mutex::new(learned),
            state_file,
            failovers: AtomicU64::new(0),
            shutdown,
        }))
    }

    /// Starts a supervisor per connection and the periodic state saver.
    pub fn start(self: &Arc<Self>) {
        for up in &self.upstreams {
            for conn in 0..up.conns.len() {
                let pool = self.clone();
                let up = up.clone();
                tokio::spawn(async move { pool.supervise(up, conn).await });
            }
        }
        let pool = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tokio::select! {
                    _ = tick.tick() => pool.save(),
                    _ = pool.shutdown.cancelled() => { pool.save(); break }
                }
            }
        });
    }

    /// Every slot.
    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    /// Events (upstream up/down, tip changes).
    pub fn events(&self) -> broadcast::Receiver<PoolEvent> {
        self.events.subscribe()
    }

    /// The gateway's verified best tip, as a watch.
    pub fn tip_watch(&self) -> watch::Receiver<Option<Tip>> {
        self.consensus.tip_watch()
    }

    /// The gateway's verified best tip now.
    pub fn best_tip(&self) -> Option<Tip> {
        Some(self.consensus.tip())
    }

    /// The verified chain and answer checks.
    pub fn consensus(&self) -> &Arc<Consensus> {
        &self.consensus
    }

    /// The network the pool serves.
    pub fn network(&self) -> bitcoin::Network {
        self.network
    }

    /// Usable upstreams, best first: connected, not cordoned, not sitting out; in step with the
    /// verified tip before the others, the least behind first; then by score. For reads that depend on the tip
    /// (`tip_dependent`), only upstreams in step.
    pub fn ranked_for(&self, tip_dependent: bool) -> Vec<(Arc<Upstream>, Client)> {
        let candidates = |allow_sitting_out: bool| -> Vec<Ranked> {
            self.upstreams
                .iter()
                .filter(|u| !u.cordoned.load(Ordering::Relaxed))
                .filter_map(|u| {
                    let st = u.standing();
                    let on_chain = st.on_best && st.demoted.is_none();
                    if (st.sitting_out() && !allow_sitting_out) || (tip_dependent && !on_chain) {
                        return None;
                    }
                    let c = u.client()?;
                    Some((u.clone(), c, (!st.in_step(), st.lag), u.score()))
                })
                .collect()
        };
        // Upstreams sitting out a penalty serve only when no other upstream can: their answers
        // still go through every check and vote.
        let mut v = candidates(false);
        if v.is_empty() {
            v = candidates(true);
        }
        v.sort_by(|a, b| a.2.cmp(&b.2).then(a.3.total_cmp(&b.3)));
        v.into_iter().map(|(u, c, _, _)| (u, c)).collect()
    }

    /// [`Pool::ranked_for`] tip-dependent reads.
    pub fn ranked(&self) -> Vec<(Arc<Upstream>, Client)> {
        self.ranked_for(true)
    }

    /// The upstream and connection that should carry the subscription for `key`: spread by key
    /// over the upstreams in step, stable while they stay so.
    pub fn pick_for(&self, key: u64) -> Option<(Arc<Upstream>, Client)> {
        let mut set = self.ranked_for(true);
        if set.is_empty() {
            return None;
        }
        set.sort_by_key(|(u, _)| u.id);
        let (up, _) = &set[(key as usize) % set.len()];
        let client = up.client_for(key / set.len() as u64)?;
        Some((up.clone(), client))
    }

    /// Records a false answer from `up`: it sits out for a growing period, and the hub moves
    /// its subscriptions.
    pub fn penalize(&self, up: &Upstream, reason: &'static str) {
        if let Ok(mut st) = up.standing.lock() {
            self.consensus.penalize(&up.name(), &mut st, reason);
        }
        let _ = self.events.send(PoolEvent::Standing(up.id));
    }

    /// Adds a server as a candidate (from an operator or from peers).
    pub fn add_candidate(&self, url: ServerUrl) -> bool {
        if self.upstreams.iter().any(|u| u.url() == url) {
            return false;
        }
        let Ok(mut c) = self.candidates.lock() else {
            return false;
        };
        if c.contains(&url) {
            return false;
        }
        c.push_back(url);
        true
    }

    /// Candidates waiting to replace a failing upstream.
    pub fn candidates(&self) -> Vec<ServerUrl> {
        self.candidates
            .lock()
            .map(|c| c.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn client_config(&self, url: ServerUrl) -> ClientConfig {
        let u = &self.cfg.upstreams;
        let mut c = ClientConfig::new(url);
        c.client_name = format!("electrum-gateway/{}", env!("CARGO_PKG_VERSION"));
        c.network = self.network;
        c.connect_timeout = secs(u.connect_timeout_secs);
        c.request_timeout = secs(u.request_timeout_secs);
        c.ping_interval = Some(secs(u.ping_interval_secs)).filter(|d| !d.is_zero());
        c.reconnect = None;
        c.proxy = u
            .proxy
            .parse::<ProxyConfig>()
            .ok()
            .filter(|_| !u.proxy.is_empty());
        c.tls = match u.tls_verify.as_str() {
            "ca" => TlsMode::Verified,
            "insecure" => TlsMode::Insecure,
            _ => TlsMode::Pinned {
                pin_file: self.cfg.data_dir.join("pins.json"),
            },
        };
        c
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let u = &self.cfg.upstreams;
        let base = secs(u.reconnect_initial_secs).as_secs_f64();
        let max = secs(u.reconnect_max_secs).as_secs_f64().max(base);
        let d = (base * 2f64.powi(attempt.min(30) as i32)).min(max);
        let jitter = rand::thread_rng().gen_range(0.8..1.2);
        Duration::from_secs_f64(d * jitter)
    }

    async fn supervise(self: Arc<Self>, up: Arc<Upstream>, conn: usize) {
        let mut attempt = 0u32;
        let mut ever_up = false;
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let url = up.url();
            let connected = tokio::select! {
                r = Client::connect(self.client_config(url.clone())) => r,
                _ = self.shutdown.cancelled() => return,
            };
            match connected {
                Ok(client) => {
                    attempt = 0;
                    let mut events = client.events();
                    if let Ok(mut s) = up.stats.lock() {
                        if let Some(info) = client.server_info() {
                            s.software = info.software;
                            s.protocol = info.protocol;
                        }
                        if ever_up {
                            s.reconnects += 1;
                        }
                        s.consecutive_failures = 0;
                        s.last_success = Some(SystemTime::now());
                    }
                    ever_up = true;
                    tracing::info!(upstream = %up.name(), conn, "upstream connected");
                    if let Ok(mut slot) = up.conns[conn].write() {
                        *slot = Some(client.clone());
                    }
                    let _ = self.events.send(PoolEvent::Up(up.id));
                    let tip_task = (conn == 0).then(|| {
                        let pool = self.clone();
                        let up = up.clone();
                        let client = client.clone();
                        tokio::spawn(async move { pool.track_tip(up, client).await })
                    });
                    if conn == 0 && self.cfg.upstreams.use_server_list {
                        let pool = self.clone();
                        let client = client.clone();
                        tokio::spawn(async move { pool.learn_peers(client).await });
                    }
                    // Wait for the connection to die (or for shutdown). The event receiver
                    // was taken before the slot was filled; a connection that died even
                    // earlier shows in its state.
                    let reason = loop {
                        if matches!(
                            client.state(),
                            ConnectionState::Disconnected | ConnectionState::Closed
                        ) {
                            break "connection ended".to_string();
                        }
                        tokio::select! {
                            ev = events.recv() => match ev {
                                Ok(ClientEvent::Disconnected { reason }) => break reason,
                                Ok(ClientEvent::Closed) => break "closed".to_string(),
                                Ok(_) => continue,
                                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                                Err(broadcast::error::RecvError::Closed) => break "closed".to_string(),
                            },
                            _ = self.shutdown.cancelled() => {
                                client.close().await;
                                return;
                            }
                        }
                    };
                    if let Ok(mut slot) = up.conns[conn].write() {
                        *slot = None;
                    }
                    if let Some(t) = tip_task {
                        t.abort();
                    }
                    if conn == 0 {
                        if let Ok(mut tip) = up.tip.write() {
                            *tip = None;
                        }
                        if let Ok(mut st) = up.standing.lock() {
                            st.on_best = false;
                        }
                    }
                    client.close().await;
                    self.failovers.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(upstream = %up.name(), conn, %reason, "upstream lost");
                    let _ = self.events.send(PoolEvent::Down(up.id));
                }
                Err(e) => {
                    attempt += 1;
                    let failures = if let Ok(mut s) = up.stats.lock() {
                        s.consecutive_failures += 1;
                        s.last_error = e.to_string();
                        s.consecutive_failures
                    } else {
                        attempt
                    };
                    tracing::warn!(upstream = %up.name(), conn, error = %e, attempt, "upstream connect failed");
                    if conn == 0
                        && failures >= self.cfg.upstreams.replace_after_failures
                        && self.replace(&up)
                    {
                        attempt = 0;
                        continue;
                    }
                }
            }
            let delay = self.backoff(attempt.saturating_sub(1));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Swaps a persistently failing upstream for the next candidate; the old server goes to
    /// the back of the candidate list.
    fn replace(&self, up: &Upstream) -> bool {
        let Ok(mut c) = self.candidates.lock() else {
            return false;
        };
        let Some(next) = c.pop_front() else {
            return false;
        };
        let old = up.url();
        tracing::warn!(from = %old, to = %next, "replacing upstream");
        if let Ok(mut u) = up.url.write() {
            *u = next;
        }
        if let Ok(mut s) = up.stats.lock() {
            *s = Stats::default();
        }
        up.p90_us.store(NO_P90, Ordering::Relaxed);
        c.push_back(old);
        true
    }

    async fn track_tip(self: Arc<Self>, up: Arc<Upstream>, client: Client) {
        let Ok((initial, mut stream)) = client
            .subscribe("blockchain.headers.subscribe", vec![])
            .await
        else {
            return;
        };
        let initial: Value = serde_json::from_str(initial.get()).unwrap_or(Value::Null);
        self.set_tip(&up, &initial);
        while let Some(v) = stream.next().await {
            self.set_tip(&up, &v);
        }
    }

    fn set_tip(self: &Arc<Self>, up: &Arc<Upstream>, v: &Value) {
        let Some(tip) = Tip::from_value(v) else {
            tracing::warn!(upstream = %up.name(), "malformed header notification");
            self.set_demoted(up, Some("bad_header"));
            return;
        };
        if let Ok(mut t) = up.tip.write() {
            *t = Some(tip.clone());
        }
        let before = self.consensus.tip();
        let placement = self.consensus.place_tip(&tip);
        self.apply_placement(up, placement, &tip);
        let after = self.consensus.tip();
        if after != before {
            let _ = self.events.send(PoolEvent::Tip(after));
        }
        self.refresh_standings();
    }

    fn apply_placement(self: &Arc<Self>, up: &Arc<Upstream>, placement: Placement, tip: &Tip) {
        match placement {
            Placement::OnBest | Placement::Failed => {}
            Placement::Side => self.set_demoted(up, Some("fork")),
            Placement::Bad(reason) => {
                self.penalize(up, reason);
                self.set_demoted(up, Some(reason));
            }
            Placement::Unlinked => {
                if !up.link.try_take() {
                    return;
                }
                if let Ok(mut st) = up.standing.lock() {
                    st.linking = true;
                }
                let Some(client) = up.conn(0) else {
                    up.link.release();
                    return;
                };
                let pool = self.clone();
                let up = up.clone();
                let tip = tip.clone();
                tokio::spawn(async move {
                    let timeout = secs(pool.cfg.upstreams.request_timeout_secs);
                    let before = pool.consensus.tip();
                    let placement = pool.consensus.link(&client, &tip, timeout).await;
                    if let Ok(mut st) = up.standing.lock() {
                        st.linking = false;
                    }
                    up.link.release();
                    // The upstream may have announced a newer tip meanwhile: the verdict on the
                    // old one is stale, place the new one instead.
                    match up.tip() {
                        Some(latest) if latest != tip => {
                            let p = pool.consensus.place_tip(&latest);
                            pool.apply_placement(&up, p, &latest);
                        }
                        _ => pool.apply_placement(&up, placement, &tip),
                    }
                    let after = pool.consensus.tip();
                    if after != before {
                        let _ = pool.events.send(PoolEvent::Tip(after));
                    }
                    pool.refresh_standings();
                });
            }
        }
    }

    fn set_demoted(&self, up: &Upstream, reason: Option<&'static str>) {
        let changed = match up.standing.lock() {
            Ok(mut st) => {
                let was = st.demoted;
                self.consensus.demote(&up.name(), &mut st, reason);
                was != st.demoted
            }
            Err(_) => false,
        };
        if changed {
            let _ = self.events.send(PoolEvent::Standing(up.id));
        }
    }

    /// Recomputes every upstream's place relative to the verified best tip (after breaking
    /// an equal-work tie by the upstreams' majority).
    pub fn refresh_standings(&self) {
        let announced: Vec<Tip> = self
            .upstreams
            .iter()
            .filter(|u| u.connected() > 0)
            .filter_map(|u| u.tip())
            .collect();
        self.consensus.break_tie(&announced);
        let max_lag = self.consensus.max_lag();
        let best = self.consensus.tip().height;
        for up in &self.upstreams {
            let Some(tip) = up.tip() else { continue };
            let lag = self.consensus.standing_of(&tip);
            let (changed_best, demote) = match up.standing.lock() {
                Ok(mut st) => {
                    let was = st.on_best;
                    st.on_best = lag.is_some();
                    st.lag = lag.unwrap_or(0);
                    let demote = match lag {
                        Some(l) if l > max_lag => Some(Some("lag")),
                        Some(_) => Some(None),
                        // Not on the best chain and not ahead of it: on another branch (the
                        // best chain may just have switched away from it). Ahead: being
                        // linked, the placement decides.
                        // A demotion with a reason of its own (bad headers) stays.
                        None if tip.height <= best
                            && !st.linking
                            && matches!(st.demoted, None | Some("lag")) =>
                        {
                            Some(Some("fork"))
                        }
                        None => None,
                    };
                    (was != st.on_best, demote)
                }
                Err(_) => (false, None),
            };
            if let Some(d) = demote {
                self.set_demoted(up, d);
            }
            if changed_best {
                let _ = self.events.send(PoolEvent::Standing(up.id));
            }
        }
    }

    async fn learn_peers(self: Arc<Self>, client: Client) {
        let Ok(raw) = client.request("server.peers.subscribe", vec![]).await else {
            return;
        };
        let Ok(v) = serde_json::from_str::<Value>(raw.get()) else {
            return;
        };
        let Ok(peers) = crate::servers::parse_peers(&v) else {
            return;
        };
        let mut added = 0;
        for p in peers {
            if p.is_onion() && self.cfg.upstreams.proxy.is_empty() {
                continue;
            }
            if let Some(url) = p
                .url(crate::transport::Scheme::Ssl)
                .or_else(|| p.url(crate::transport::Scheme::Tcp))
            {
                if self.add_candidate(url) {
                    added += 1;
                }
            }
        }
        if added > 0 {
            tracing::info!(added, "learned candidate servers from peers");
        }
    }

    /// Writes what the pool learned to `upstreams.json` in the data directory.
    pub fn save(&self) {
        let Some(path) = &self.state_file else { return };
        let Ok(mut learned) = self.learned.lock() else {
            return;
        };
        for up in &self.upstreams {
            let s = up.stats();
            let e = learned.entry(up.url().to_string()).or_default();
            if let Some(t) = s.last_success {
                e.last_success = Some(unix(t));
            }
            e.failures = s.consecutive_failures;
            if s.ewma_ms.is_some() {
                e.score = Some(up.score());
            }
            if !s.software.is_empty() {
                e.software = s.software;
            }
        }
        for c in self.candidates() {
            learned.entry(c.to_string()).or_default();
        }
        let Ok(json) = serde_json::to_vec_pretty(&*learned) else {
            return;
        };
        let tmp = path.with_extension("json.tmp");
        let written = std::fs::create_dir_all(self.cfg.data_dir.as_path())
            .and_then(|_| std::fs::write(&tmp, json))
            .and_then(|_| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::debug!(error = %e, "could not save upstream state");
        }
    }

    /// Waits until at least `n` upstreams are connected, or the timeout passes.
    pub async fn wait_connected(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut events = self.events();
        loop {
            if self.upstreams.iter().filter(|u| u.connected() > 0).count() >= n {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = tokio::time::timeout(left, events.recv()).await;
        }
    }
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
