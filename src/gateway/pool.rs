//! The active upstream set: connect, score, reconnect with backoff, replace, track tips.
//!
//! The pool keeps `active` upstream slots. Each slot has one server at a time and one or more
//! connections to it (`connections_per_upstream`, to stay under per-IP server limits). A
//! supervisor task per connection dials, waits for the connection to die, and dials again
//! with exponential backoff and jitter; after `replace_after_failures` failed attempts in a
//! row the slot takes the next candidate from the server list. The pool, not the client,
//! owns reconnection here, so that a dead connection is noticed at once by the subscription
//! hub, which moves its subscriptions to another upstream.

use futures::StreamExt;
use rand::Rng;
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::candidates::{self, ip_of, Candidates, Learned, Origin, Refused, Source, Subnet};
use super::privacy::{Privacy, Set, MAX_SLOTS};
use super::upstream::Upstream;
use crate::client::{
    Client, ClientConfig, ClientError, ClientEvent, ConnectionState, ProxyConfig, TlsMode,
};
use crate::config::{secs, Config};
use crate::metrics::Metrics;
use crate::protocol::{Tip, TipNotice};
use crate::servers::ServerInfo;
use crate::transport::{Scheme, ServerUrl};
use crate::verify::{ChainTracker, Demotion, Placement, Reason, Verdict};

/// What the pool tells the rest of the gateway.
#[derive(Debug, Clone)]
pub enum PoolEvent {
    /// A connection of an upstream came up.
    Up,
    /// A connection of an upstream went down.
    Down,
    /// The best tip changed.
    Tip,
    /// An upstream's standing changed (demoted, back in step, sitting out).
    Standing,
}

/// An upstream candidate for a read: upstream, connection, (out of step, lag), score.
type Ranked = (Arc<Upstream>, Client, (bool, u32), f64);

/// The upstream pool.
pub struct Pool {
    cfg: Arc<Config>,
    network: bitcoin::Network,
    upstreams: Vec<Arc<Upstream>>,
    candidates: Mutex<Candidates>,
    tracker: Arc<ChainTracker>,
    metrics: Arc<Metrics>,
    events: broadcast::Sender<PoolEvent>,
    learned: Mutex<HashMap<String, Learned>>,
    state_file: Option<PathBuf>,
    penalty_base: Duration,
    /// Upstream connections that failed or were lost (after having been up).
    pub failovers: AtomicU64,
    failures: Mutex<BTreeMap<Reason, u64>>,
    demotions: Mutex<BTreeMap<Demotion, u64>>,
    shutdown: CancellationToken,
    privacy: Privacy,
}

/// Whether a candidate may take a slot: an operator's always (and any when
/// `allow_same_subnet`), another only if no other upstream is in its network.
fn diverse(allow_same: bool, taken: &[Subnet], src: &Source, net: Option<Subnet>) -> bool {
    allow_same || src.origin == Origin::Configured || net.map_or(true, |n| !taken.contains(&n))
}

/// Whether a peer may become a candidate: outside regtest, not an address of this machine or
/// its private network (by its IP literal or the address its peer entry gave).
fn peer_allowed(network: bitcoin::Network, url: &ServerUrl, ip: Option<IpAddr>) -> bool {
    network == bitcoin::Network::Regtest
        || (!url.host.eq_ignore_ascii_case("localhost") && ip.map_or(true, candidates::is_public))
}

/// What earlier runs learned about servers (`upstreams.json`). A file that cannot be read as
/// that is logged and set aside (kept beside it as `upstreams.json.corrupt-SECONDS`), and the
/// pool starts without it.
fn load_learned(path: &std::path::Path) -> HashMap<String, Learned> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return HashMap::new(),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read the upstream state");
            return HashMap::new();
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(learned) => learned,
        Err(e) => {
            match crate::files::set_aside(path) {
                Ok(aside) => tracing::warn!(
                    file = %path.display(),
                    kept_as = %aside.display(),
                    error = %e,
                    "the upstream state is corrupt; set aside, starting without it"
                ),
                Err(io) => tracing::warn!(
                    file = %path.display(),
                    error = %e,
                    set_aside_error = %io,
                    "the upstream state is corrupt; starting without it"
                ),
            }
            HashMap::new()
        }
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Pool {
    /// Builds the pool from configured servers first, then candidates: those of the server
    /// list (`list`), then peer-learned ones remembered from earlier runs (see
    /// [`super::candidates`]); nothing is dialed until [`Pool::start`].
    pub fn new(
        cfg: Arc<Config>,
        mut servers: Vec<ServerUrl>,
        list: Vec<ServerUrl>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Pool>> {
        let network = cfg.network()?;
        let tracker =
            ChainTracker::open(network, &cfg.data_dir.join("headers"), cfg.verify.max_lag)?;
        // Two watchers and two agreeing answers, or the quorum if larger.
        let set_size = cfg.routing.quorum.max(2);
        let privacy = Privacy::load(cfg.privacy.mode, set_size, &cfg.data_dir)?;
        if privacy.spread() && cfg.upstreams.active > MAX_SLOTS {
            anyhow::bail!(
                "privacy.mode = \"spread\" addresses at most {MAX_SLOTS} upstreams; \
                 upstreams.active is {}",
                cfg.upstreams.active
            );
        }
        let state_file = Some(cfg.data_dir.join("upstreams.json"));
        let learned = state_file.as_deref().map(load_learned).unwrap_or_default();
        // Within a tier, servers that worked before go first, best score first.
        let score = |u: &str| {
            learned
                .get(u)
                .and_then(|l| l.last_success.map(|_| l.score.unwrap_or(1e6)))
                .unwrap_or(f64::INFINITY)
        };
        let mut candidates = Candidates::default();
        let mut list: Vec<ServerUrl> = list.into_iter().filter(|c| !servers.contains(c)).collect();
        list.sort_by(|a, b| score(&a.to_string()).total_cmp(&score(&b.to_string())));
        for url in list {
            candidates.enqueue(url, Source::listed());
        }
        if cfg.upstreams.use_server_list {
            let now = unix(SystemTime::now());
            let mut peers: Vec<(&String, &Learned)> =
                learned.iter().filter(|(_, l)| l.recent_peer(now)).collect();
            peers.sort_by(|a, b| {
                score(a.0)
                    .total_cmp(&score(b.0))
                    .then(b.1.last_heard().cmp(&a.1.last_heard()))
            });
            for (url, l) in peers {
                let Ok(url) = url.parse::<ServerUrl>() else {
                    continue;
                };
                let ip = l.ip.as_deref().and_then(|ip| ip.parse().ok());
                if servers.contains(&url) || !peer_allowed(network, &url, ip) {
                    continue;
                }
                let announcer = l.announced_by.as_deref().unwrap_or("");
                let _ = candidates.add_peer(url, announcer, ip, l.last_heard());
            }
        }
        for url in &servers {
            candidates.know(url.clone(), Source::configured());
        }
        // Fill the active set from the candidates, one per network besides configured ones.
        let allow_same = cfg.upstreams.allow_same_subnet;
        while servers.len() < cfg.upstreams.active {
            let taken: Vec<Subnet> = servers
                .iter()
                .filter_map(|u| candidates.subnet_of(u))
                .collect();
            match candidates.take(|src, net| diverse(allow_same, &taken, src, net)) {
                Some(c) => servers.push(c),
                None => break,
            }
        }
        if servers.is_empty() {
            anyhow::bail!("no upstream servers configured and no server list to pick from");
        }
        // Servers beyond the active count wait as the first candidates.
        for extra in servers.split_off(cfg.upstreams.active.min(servers.len())) {
            candidates.enqueue(extra, Source::configured());
        }
        let conns = cfg.upstreams.connections_per_upstream;
        let upstreams = servers
            .into_iter()
            .enumerate()
            .map(|(i, u)| Arc::new(Upstream::new(i, u, conns)))
            .collect();
        Ok(Arc::new(Pool {
            privacy,
            penalty_base: secs(cfg.verify.penalty_secs),
            cfg,
            network,
            upstreams,
            candidates: Mutex::new(candidates),
            tracker,
            metrics,
            events: broadcast::channel(1024).0,
            learned: Mutex::new(learned),
            state_file,
            failovers: AtomicU64::new(0),
            failures: Mutex::new(BTreeMap::new()),
            demotions: Mutex::new(BTreeMap::new()),
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
                    // The last save is the gateway's, once its sessions are gone
                    // (`Gateway::shutdown`), not a second one racing it from here.
                    _ = pool.shutdown.cancelled() => break,
                }
            }
        });
    }

    /// True once the gateway is shutting down.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
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
        self.tracker.tip_watch()
    }

    /// The gateway's verified best tip with its header notification, as a watch.
    pub fn tip_notice_watch(&self) -> watch::Receiver<Option<Arc<TipNotice>>> {
        self.tracker.notice_watch()
    }

    /// The gateway's verified best tip now.
    pub fn best_tip(&self) -> Option<Tip> {
        Some(self.tracker.tip())
    }

    /// The verified chain.
    pub fn tracker(&self) -> &Arc<ChainTracker> {
        &self.tracker
    }

    /// Verification failures so far, by reason.
    pub fn failures(&self) -> BTreeMap<Reason, u64> {
        self.failures.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Demotions so far, by reason.
    pub fn demotions(&self) -> BTreeMap<Demotion, u64> {
        self.demotions.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// The one checked upstream call: sends `method(params)` to `up` over `client`, records
    /// the latency (or the transport failure) in the upstream's measurements and the metrics,
    /// and runs `check` on the answer. An answer proven false becomes an error, so the caller
    /// asks elsewhere, and the upstream is penalised, in step or not: a transaction that does
    /// not hash to its txid, a malformed answer, a broadcast returning another txid, a witness
    /// mismatch are false on every branch. Only an answer that may be true on the upstream's
    /// own branch ([`crate::chain::VerifyError::holds_on_every_branch`]: a proof of its own
    /// block at that height) is dropped without a penalty from an upstream out of step (on
    /// another branch during a reorganisation, far behind, or sitting out a penalty: the tip it
    /// last announced may no longer be where it stands).
    pub async fn ask(
        &self,
        up: &Upstream,
        client: &Client,
        method: &str,
        params: Vec<Value>,
        check: impl FnOnce(&RawValue) -> Verdict,
    ) -> Result<Box<RawValue>, ClientError> {
        if method.starts_with("blockchain.scripthash.") {
            if let Some(Value::String(sh)) = params.first() {
                up.note_scripthash(sh);
            }
        }
        let start = Instant::now();
        let res = client.request(method, params).await;
        let elapsed = start.elapsed();
        up.record(&res, elapsed);
        let failed = matches!(&res, Err(e) if !matches!(e, ClientError::Rpc(_)));
        self.metrics.observe_upstream(&up.label(), elapsed, failed);
        let raw = res?;
        match check(&raw) {
            Verdict::Proven | Verdict::ProvenIn(_) => Ok(raw),
            Verdict::Unverifiable(why) => Err(ClientError::Protocol(why)),
            Verdict::False(e) if !e.holds_on_every_branch() && !up.in_step() => {
                Err(ClientError::Protocol(format!(
                    "answer from an upstream out of step failed verification ({})",
                    e.reason()
                )))
            }
            Verdict::False(e) => {
                self.penalize(up, Reason::from(&e));
                Err(ClientError::Protocol(format!(
                    "answer failed verification ({})",
                    e.reason()
                )))
            }
        }
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

    /// The privacy policy in force.
    pub fn privacy(&self) -> &Privacy {
        &self.privacy
    }

    /// Every slot in `scripthash`'s keyed order ([`Privacy::order`]).
    pub fn private_order(&self, scripthash: &str) -> Vec<usize> {
        let urls: Vec<(usize, Arc<str>)> = self
            .upstreams
            .iter()
            .map(|u| (u.id, u.url_text()))
            .collect();
        self.privacy
            .order(scripthash, urls.iter().map(|(id, u)| (*id, &**u)))
    }

    /// The upstreams that may be asked about `scripthash`, in the order to ask them, and how
    /// many of them are its set. Under `spread`: the members of `set` (its default set when
    /// `None`) that [`Pool::ranked_for`] gives, best ranked first, then the other usable
    /// upstreams in the scripthash's keyed order, which step in only when the set cannot
    /// answer or disagrees (the first of them is the same upstream every time). Under `off`:
    /// every usable upstream, all within reach.
    pub fn ranked_for_scripthash(
        &self,
        tip_dependent: bool,
        scripthash: &str,
        set: Option<Set>,
    ) -> (Vec<(Arc<Upstream>, Client)>, usize) {
        let ranked = self.ranked_for(tip_dependent);
        if !self.privacy.spread() {
            let n = ranked.len();
            return (ranked, n);
        }
        let order = self.private_order(scripthash);
        let set = set.unwrap_or_else(|| self.privacy.first_set(&order));
        let mut out: Vec<(Arc<Upstream>, Client)> = ranked
            .iter()
            .filter(|(u, _)| set.contains(u.id))
            .cloned()
            .collect();
        for id in order.iter().filter(|id| !set.contains(**id)) {
            if let Some(r) = ranked.iter().find(|(u, _)| u.id == *id) {
                out.push(r.clone());
            }
        }
        (out, set.len())
    }

    /// The upstream and connection that should carry a subscription for `key`: spread by key
    /// over the upstreams in step but those in `exclude` (the key's other watchers, upstreams
    /// that failed it lately), stable while they stay so.
    pub fn pick_for(&self, key: u64, exclude: &[usize]) -> Option<(Arc<Upstream>, Client)> {
        let mut set = self.ranked_for(true);
        set.retain(|(u, _)| !exclude.contains(&u.id));
        if set.is_empty() {
            return None;
        }
        set.sort_by_key(|(u, _)| u.id);
        let (up, _) = &set[(key as usize) % set.len()];
        let client = up.client_for(key / set.len() as u64)?;
        Some((up.clone(), client))
    }

    /// Records a false answer from `up`: counted by reason, and it sits out for a period that
    /// doubles with every offence not yet forgiven (see [`crate::verify::standing`]); the hub
    /// moves its subscriptions.
    pub fn penalize(&self, up: &Upstream, reason: Reason) {
        if let Ok(mut m) = self.failures.lock() {
            *m.entry(reason).or_default() += 1;
        }
        let name = up.name();
        self.metrics.verification_failed(&name, reason);
        if let Ok(mut st) = up.standing.lock() {
            let period = st.strike(self.penalty_base);
            tracing::info!(upstream = %name, sit_out_secs = period.as_secs_f64(), "upstream sits out");
        }
        let _ = self.events.send(PoolEvent::Standing);
    }

    /// Adds a server an operator named as a candidate: it waits with the configured ones,
    /// ahead of listed and peer-learned servers. False if it is an upstream or waits already.
    pub fn add_candidate(&self, url: ServerUrl) -> bool {
        if self.upstreams.iter().any(|u| u.url() == url) {
            return false;
        }
        let Ok(mut c) = self.candidates.lock() else {
            return false;
        };
        c.enqueue(url, Source::configured())
    }

    /// Candidates waiting to replace a failing upstream, in the order they would.
    pub fn candidates(&self) -> Vec<ServerUrl> {
        self.candidates.lock().map(|c| c.urls()).unwrap_or_default()
    }

    /// How the pool connects to `url` (for a wallet connection's own connections under
    /// `[privacy] mode = "isolated"`).
    pub(crate) fn client_config_for(&self, url: ServerUrl) -> ClientConfig {
        self.client_config(url)
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
        // An honest server notifies a scripthash a few times a block; the hub takes each
        // status as it vets it. More queued than this is a flood.
        c.max_queued_notifications = 256;
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
                    self.metrics
                        .event("up", Some(&up.name()), "connection up".into());
                    if let Ok(mut slot) = up.conns[conn].write() {
                        *slot = Some(client.clone());
                    }
                    let _ = self.events.send(PoolEvent::Up);
                    let tip_task = (conn == 0).then(|| {
                        let pool = self.clone();
                        let up = up.clone();
                        let client = client.clone();
                        tokio::spawn(async move { pool.track_tip(up, client).await })
                    });
                    if conn == 0 && self.cfg.upstreams.use_server_list {
                        let pool = self.clone();
                        let client = client.clone();
                        let up = up.clone();
                        tokio::spawn(async move { pool.learn_peers(up, client).await });
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
                    if reason.starts_with(crate::client::NOTIFICATION_FLOOD) {
                        self.penalize(&up, Reason::Flood);
                    }
                    self.failovers.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(upstream = %up.name(), conn, %reason, "upstream lost");
                    self.metrics.event(
                        "failover",
                        Some(&up.name()),
                        "connection lost; requests and subscriptions move to other upstreams"
                            .into(),
                    );
                    let _ = self.events.send(PoolEvent::Down);
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
    /// the back of the candidate list. The slot starts over: strikes, demotions and
    /// measurements stay with the server that earned them.
    fn replace(&self, up: &Upstream) -> bool {
        let Ok(mut c) = self.candidates.lock() else {
            return false;
        };
        // No two upstreams in one network, unless the operator named them.
        let taken: Vec<Subnet> = self
            .upstreams
            .iter()
            .filter(|u| u.id != up.id)
            .filter_map(|u| c.subnet_of(&u.url()))
            .collect();
        let allow_same = self.cfg.upstreams.allow_same_subnet;
        let Some(next) = c.take(|src, net| diverse(allow_same, &taken, src, net)) else {
            return false;
        };
        let old = up.url();
        tracing::warn!(slot = up.id, "replacing an upstream that keeps failing");
        tracing::debug!(from = %old, to = %next, "replacing upstream");
        self.metrics.event(
            "replaced",
            Some(&next.authority()),
            format!("replaced {}, which kept failing", old.authority()),
        );
        up.set_url(next);
        // Strikes, demotions and measurements belong to the server that earned them.
        up.reset_for_new_server();
        c.requeue(old);
        let _ = self.events.send(PoolEvent::Standing);
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
            self.set_demoted(up, Some(Demotion::BadHeader));
            return;
        };
        if let Ok(mut t) = up.tip.write() {
            *t = Some(tip.clone());
        }
        let before = self.tracker.tip();
        let placement = self.tracker.place_tip(&tip);
        self.apply_placement(up, placement, &tip);
        self.tip_moved(before);
        self.refresh_standings();
    }

    fn apply_placement(self: &Arc<Self>, up: &Arc<Upstream>, placement: Placement, tip: &Tip) {
        match placement {
            Placement::OnBest | Placement::Failed => {}
            Placement::Side => self.set_demoted(up, Some(Demotion::Fork)),
            Placement::Bad(reason) => {
                self.penalize(up, reason);
                self.set_demoted(up, Some(Demotion::BadHeader));
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
                    let before = pool.tracker.tip();
                    // Headers are checked by the chain itself: the answer only has to arrive.
                    let fetch = |start: u32, count: u32| {
                        let ask = pool.ask(
                            &up,
                            &client,
                            "blockchain.block.headers",
                            vec![Value::from(start), Value::from(count)],
                            |_| Verdict::Proven,
                        );
                        async move { tokio::time::timeout(timeout, ask).await.ok()?.ok() }
                    };
                    let placement = pool.tracker.link(&tip, fetch).await;
                    if let Ok(mut st) = up.standing.lock() {
                        st.linking = false;
                    }
                    up.link.release();
                    // The upstream may have announced a newer tip meanwhile: the verdict on the
                    // old one is stale, place the new one instead.
                    match up.tip() {
                        Some(latest) if latest != tip => {
                            let p = pool.tracker.place_tip(&latest);
                            pool.apply_placement(&up, p, &latest);
                        }
                        _ => pool.apply_placement(&up, placement, &tip),
                    }
                    pool.tip_moved(before);
                    pool.refresh_standings();
                });
            }
        }
    }

    /// Tells the metrics and the rest of the gateway when the verified tip moved.
    fn tip_moved(&self, before: Tip) {
        let after = self.tracker.tip();
        if after != before {
            self.metrics.tip_changed();
            let _ = self.events.send(PoolEvent::Tip);
        }
    }

    /// Sets or clears a demotion, logging and counting changes.
    fn set_demoted(&self, up: &Upstream, reason: Option<Demotion>) {
        let changed = match up.standing.lock() {
            Ok(mut st) if st.demoted != reason => {
                st.demoted = reason;
                true
            }
            _ => false,
        };
        if !changed {
            return;
        }
        match reason {
            Some(r) => {
                if let Ok(mut m) = self.demotions.lock() {
                    *m.entry(r).or_default() += 1;
                }
                self.metrics.demoted(&up.name(), r);
            }
            None => tracing::info!(upstream = %up.name(), "upstream back in step"),
        }
        let _ = self.events.send(PoolEvent::Standing);
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
        self.tracker.break_tie(&announced);
        let max_lag = self.tracker.max_lag();
        let best = self.tracker.tip().height;
        for up in &self.upstreams {
            let Some(tip) = up.tip() else { continue };
            let lag = self.tracker.standing_of(&tip);
            let (changed_best, demote) = match up.standing.lock() {
                Ok(mut st) => {
                    let was = st.on_best;
                    st.on_best = lag.is_some();
                    st.lag = lag.unwrap_or(0);
                    let demote = match lag {
                        Some(l) if l > max_lag => Some(Some(Demotion::Lag)),
                        Some(_) => Some(None),
                        // Not on the best chain and not ahead of it: on another branch (the
                        // best chain may just have switched away from it). Ahead: being
                        // linked, the placement decides.
                        // A demotion with a reason of its own (bad headers) stays.
                        None if tip.height <= best
                            && !st.linking
                            && matches!(st.demoted, None | Some(Demotion::Lag)) =>
                        {
                            Some(Some(Demotion::Fork))
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
                let _ = self.events.send(PoolEvent::Standing);
            }
        }
    }

    async fn learn_peers(self: Arc<Self>, up: Arc<Upstream>, client: Client) {
        let asked = self.ask(&up, &client, "server.peers.subscribe", vec![], |_| {
            Verdict::Proven
        });
        let Ok(raw) = asked.await else {
            return;
        };
        let Ok(v) = serde_json::from_str::<Value>(raw.get()) else {
            return;
        };
        let Ok(peers) = crate::servers::parse_peers(&v) else {
            return;
        };
        let (added, refused) = self.add_peers(&up.name(), peers);
        if added > 0 || refused > 0 {
            tracing::info!(added, refused, "learned candidate servers from peers");
        }
    }

    /// Adds the servers an upstream (`announcer`) named as peers to the candidates, behind the
    /// configured and listed ones and within the caps of [`super::candidates`]. Outside
    /// regtest, addresses of this machine or a private network are refused. Returns how many
    /// were added and how many refused (those left over once a cap is reached included).
    fn add_peers(&self, announcer: &str, peers: Vec<ServerInfo>) -> (usize, usize) {
        let now = unix(SystemTime::now());
        let active: Vec<ServerUrl> = self.upstreams.iter().map(|u| u.url()).collect();
        let (mut added, mut refused) = (0usize, 0usize);
        let Ok(mut c) = self.candidates.lock() else {
            return (0, 0);
        };
        let total = peers.len();
        for (i, p) in peers.into_iter().enumerate() {
            if p.is_onion() && self.cfg.upstreams.proxy.is_empty() {
                continue;
            }
            let Some(url) = p.url(Scheme::Ssl).or_else(|| p.url(Scheme::Tcp)) else {
                continue;
            };
            let ip = ip_of(&url).or_else(|| p.ip_addr.as_deref().and_then(|ip| ip.parse().ok()));
            if active.contains(&url) || !peer_allowed(self.network, &url, ip) {
                refused += 1;
                continue;
            }
            match c.add_peer(url, announcer, ip, now) {
                Ok(()) => added += 1,
                Err(Refused::Full | Refused::AnnouncerFull) => {
                    refused += total - i;
                    break;
                }
                Err(Refused::SameSubnet) => refused += 1,
                Err(Refused::Known) => {}
            }
        }
        (added, refused)
    }

    /// Writes what the pool learned to `upstreams.json` in the data directory.
    pub fn save(&self) {
        let Some(path) = &self.state_file else { return };
        let Ok(mut learned) = self.learned.lock() else {
            return;
        };
        let now = unix(SystemTime::now());
        let mut current: HashMap<String, Origin> = HashMap::new();
        if let Ok(c) = self.candidates.lock() {
            for (url, src) in c.known() {
                let key = url.to_string();
                current.insert(key.clone(), src.origin);
                let e = learned.entry(key).or_default();
                e.origin = Some(src.origin);
                if src.origin == Origin::Peer {
                    e.last_seen = Some(src.seen.max(e.last_seen.unwrap_or(0)));
                    e.announced_by.clone_from(&src.announcer);
                    e.ip = src.ip.map(|ip| ip.to_string());
                }
            }
        }
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
        candidates::prune(&mut learned, &current, now);
        let Ok(json) = serde_json::to_vec_pretty(&*learned) else {
            return;
        };
        let written = std::fs::create_dir_all(self.cfg.data_dir.as_path())
            .and_then(|_| crate::files::write_atomic(path, &json));
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
mod tests;
