//! Subscription multiplexing: one upstream subscription per scripthash, fanned out to every
//! wallet session that subscribed to it.
//!
//! Each scripthash with at least one subscribed session has an entry and a task. The task
//! subscribes on one upstream (spread over upstreams by scripthash), applies the initial
//! status and every notification, and when the upstream's stream ends (connection lost or
//! replaced) subscribes again on another upstream. Because the last known status is kept, a
//! change that happened while moving is noticed by comparing the new upstream's status with
//! it, and every session is notified: no notification is lost across a failover. When the last
//! session leaves, the entry goes and the upstream subscription is dropped.

use futures::StreamExt;
use serde_json::Value;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::isolation::Links;
use super::pool::Pool;
use super::privacy::Set;
use super::router::{unavailable, Refusal};
use super::upstream::Upstream;
use crate::chain::{parse_history, status_hash};
use crate::client::{Client, ClientError, Subscription};
use crate::protocol::error::SERVER_BUSY;
use crate::protocol::RpcError;
use crate::verify::{check_history_status, Reason, Verdict};

/// Identifies a wallet session.
pub type SessionId = u64;

/// What the hub sends a session. One pointer wide: a session's mailbox allocates its slots
/// in blocks of 32, the first one up front, for every wallet connection.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// A scripthash's status changed.
    Status(Box<StatusChange>),
}

/// A scripthash's new status.
#[derive(Debug, Clone)]
pub struct StatusChange {
    /// The scripthash.
    pub scripthash: Arc<str>,
    /// The new status (hex string or null).
    pub status: Value,
}

/// A session's mailbox as the hub sees it. A session that cannot keep up (full mailbox) is
/// told to close through `kill` rather than losing a notification silently.
#[derive(Clone)]
pub struct SessionHandle {
    /// The session id.
    pub id: SessionId,
    /// Where events go.
    pub tx: mpsc::Sender<SessionEvent>,
    /// Set when the session must be closed.
    pub kill: tokio_util::sync::CancellationToken,
    /// The session's own upstream connections (`[privacy] mode = "isolated"`).
    pub links: Option<Arc<Links>>,
}

struct EntryState {
    /// The subscribed sessions (usually one: a list is smaller than a map).
    sessions: Vec<SessionHandle>,
    /// Last status seen from an upstream; `None` until the first answer.
    status: Option<Value>,
}

struct Entry {
    scripthash: Arc<str>,
    /// The upstreams that may learn of this scripthash under `[privacy] mode = "spread"`
    /// (empty otherwise), fixed when the entry is made.
    set: Set,
    state: Mutex<EntryState>,
    /// Woken when the first status is known.
    known: Notify,
    closed: Notify,
}

/// Proves the confirmed entries of a history (the gateway's services, under `[verify]
/// prove_history`): the history an arbitration between watchers would apply must pass it.
pub trait HistoryProver: Send + Sync {
    /// Proves every confirmed entry of `raw`, a history of `scripthash`, asking only its `set`
    /// (and the upstream that steps in for it), over `links` when the entry has them.
    fn prove_history<'a>(
        &'a self,
        scripthash: &'a str,
        set: Set,
        links: Option<&'a Arc<Links>>,
        raw: &'a serde_json::value::RawValue,
    ) -> futures::future::BoxFuture<'a, Result<(), Refusal>>;
}

/// The subscription hub.
pub struct Hub {
    pool: Arc<Pool>,
    entries: Mutex<HashMap<Arc<str>, Arc<Entry>>>,
    upstream_subs: AtomicUsize,
    /// Times a subscription moved to another upstream.
    pub moves: AtomicU64,
    /// Notifications sent to sessions.
    pub notifications: AtomicU64,
    subscribe_timeout: Duration,
    verify_statuses: bool,
    /// Most distinct scripthashes subscribed at once (`[limits] max_subscriptions`).
    max_scripthashes: usize,
    /// Set once the services exist, when histories are proven.
    prover: OnceLock<Weak<dyn HistoryProver>>,
}

fn key_of(sh: &str) -> u64 {
    let mut h = DefaultHasher::new();
    sh.hash(&mut h);
    h.finish()
}

/// The upstream connections of the first wallet subscribed to an entry, under `[privacy] mode
/// = "isolated"`: the entry's upstream traffic goes over them.
fn entry_links(entry: &Entry) -> Option<Arc<Links>> {
    let st = entry.state.lock().ok()?;
    st.sessions.first()?.links.clone()
}

/// An upstream's answer to a history request.
type Asked = (
    Arc<Upstream>,
    Result<Box<serde_json::value::RawValue>, ClientError>,
);

/// Histories by the status they hash to (with the upstreams that gave each), and each
/// upstream's confirmed part with its tip height, to tell a lie from a mempool behind.
type Tally = (
    Vec<(Value, Vec<usize>)>,
    HashMap<usize, (Vec<crate::chain::HistoryEntry>, u32)>,
);

fn tally_histories(asked: &[Asked]) -> Tally {
    let mut by_status: Vec<(Value, Vec<usize>)> = Vec::new();
    let mut confirmed = HashMap::new();
    for (up, res) in asked {
        let Some(history) = res
            .as_ref()
            .ok()
            .and_then(|raw| parse_history(raw.get()).ok())
        else {
            continue;
        };
        let tip = up.tip().map_or(0, |t| t.height);
        confirmed.insert(
            up.id,
            (crate::chain::confirmed_part(&history, u32::MAX), tip),
        );
        let status = status_hash(&history).map_or(Value::Null, Value::String);
        match by_status.iter_mut().find(|(s, _)| *s == status) {
            Some((_, ids)) => ids.push(up.id),
            None => by_status.push((status, vec![up.id])),
        }
    }
    (by_status, confirmed)
}

/// True for a status an honest server could send: null or 64 hex characters.
fn valid_status(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()),
        _ => false,
    }
}

impl Hub {
    /// A hub over a pool. `subscribe_timeout` bounds how long a first subscriber waits for
    /// the initial status.
    pub fn new(
        pool: Arc<Pool>,
        subscribe_timeout: Duration,
        verify_statuses: bool,
        max_scripthashes: usize,
    ) -> Arc<Hub> {
        Arc::new(Hub {
            pool,
            entries: Mutex::new(HashMap::new()),
            upstream_subs: AtomicUsize::new(0),
            moves: AtomicU64::new(0),
            notifications: AtomicU64::new(0),
            subscribe_timeout,
            verify_statuses,
            max_scripthashes,
            prover: OnceLock::new(),
        })
    }

    /// Has arbitrations prove the history they would apply ([`HistoryProver`]).
    pub fn set_prover(&self, prover: Weak<dyn HistoryProver>) {
        let _ = self.prover.set(prover);
    }

    /// Distinct scripthashes subscribed by at least one session.
    pub fn scripthashes(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// Subscriptions held on upstreams now.
    pub fn upstream_subscriptions(&self) -> usize {
        self.upstream_subs.load(Ordering::Relaxed)
    }

    /// Session subscriptions (sum over scripthashes of subscribed sessions).
    pub fn session_subscriptions(&self) -> usize {
        let Ok(entries) = self.entries.lock() else {
            return 0;
        };
        entries
            .values()
            .map(|e| e.state.lock().map(|s| s.sessions.len()).unwrap_or(0))
            .sum()
    }

    /// The status of a subscribed scripthash as its watchers agreed on it, if it has one yet.
    pub fn status_of(&self, scripthash: &str) -> Option<Value> {
        let entry = self.entries.lock().ok()?.get(scripthash).cloned()?;
        let st = entry.state.lock().ok()?;
        st.status.clone()
    }

    /// The upstream set of a subscribed scripthash (see [`super::privacy`]).
    pub fn set_of(&self, scripthash: &str) -> Option<Set> {
        let entry = self.entries.lock().ok()?.get(scripthash).cloned()?;
        (!entry.set.is_empty()).then_some(entry.set)
    }

    /// Subscribes a session to a scripthash and returns the current status. Later changes
    /// arrive as [`SessionEvent::Status`] on the session's mailbox. A scripthash no session
    /// holds yet is refused with error -102 when `max_scripthashes` are subscribed. `load`
    /// counts, per upstream slot, the session's scripthashes whose sets hold it: a new entry's
    /// set is balanced by it ([`super::privacy::Privacy::balanced_set`]), and it counts this
    /// one.
    pub async fn subscribe(
        self: &Arc<Self>,
        scripthash: &str,
        session: SessionHandle,
        load: &Mutex<HashMap<usize, u32>>,
    ) -> Result<Value, RpcError> {
        let sid = session.id;
        let (entry, status) = self.join(scripthash, session, load)?;
        if let Some(s) = status {
            return Ok(s);
        }
        let known = entry.known.notified();
        tokio::pin!(known);
        // Registered before the status is looked at again, so a first status applied in
        // between still wakes it.
        known.as_mut().enable();
        let current = || entry.state.lock().ok().and_then(|st| st.status.clone());
        if let Some(s) = current() {
            return Ok(s);
        }
        if tokio::time::timeout(self.subscribe_timeout, known)
            .await
            .is_ok()
        {
            if let Some(s) = current() {
                return Ok(s);
            }
        }
        self.unsubscribe(scripthash, sid);
        Err(unavailable("no upstream answered the subscription"))
    }

    /// Adds a session to a scripthash's entry, creating the entry (and its upstream task)
    /// for the first session. Returns the entry and its status, if one is known yet.
    fn join(
        self: &Arc<Self>,
        scripthash: &str,
        session: SessionHandle,
        load: &Mutex<HashMap<usize, u32>>,
    ) -> Result<(Arc<Entry>, Option<Value>), RpcError> {
        let Ok(mut entries) = self.entries.lock() else {
            return Err(RpcError::internal("hub poisoned"));
        };
        let Ok(mut load) = load.lock() else {
            return Err(RpcError::internal("session poisoned"));
        };
        let entry = match entries.get(scripthash) {
            Some(e) => e.clone(),
            None if entries.len() >= self.max_scripthashes => {
                return Err(RpcError::new(
                    SERVER_BUSY,
                    "the gateway holds as many subscriptions as its upstreams allow; try later",
                ));
            }
            None => {
                let sh: Arc<str> = Arc::from(scripthash);
                let privacy = self.pool.privacy();
                let set = if privacy.spread() {
                    privacy.balanced_set(&self.pool.private_order(scripthash), &load)
                } else {
                    Set::default()
                };
                let e = Arc::new(Entry {
                    scripthash: sh.clone(),
                    set,
                    state: Mutex::new(EntryState {
                        sessions: Vec::new(),
                        status: None,
                    }),
                    known: Notify::new(),
                    closed: Notify::new(),
                });
                entries.insert(sh, e.clone());
                let hub = self.clone();
                let task_entry = e.clone();
                tokio::spawn(async move { hub.run_entry(task_entry).await });
                e
            }
        };
        let status = match entry.state.lock() {
            Ok(mut st) => {
                match st.sessions.iter_mut().find(|s| s.id == session.id) {
                    Some(s) => *s = session,
                    None => {
                        st.sessions.push(session);
                        for id in entry.set.ids() {
                            *load.entry(id).or_insert(0) += 1;
                        }
                    }
                }
                st.status.clone()
            }
            Err(_) => return Err(RpcError::internal("hub poisoned")),
        };
        Ok((entry, status))
    }

    /// Removes a session's subscription; true if it had one. The upstream subscription goes
    /// with the last session.
    pub fn unsubscribe(&self, scripthash: &str, sid: SessionId) -> bool {
        let Ok(mut entries) = self.entries.lock() else {
            return false;
        };
        let Some(entry) = entries.get(scripthash).cloned() else {
            return false;
        };
        let Ok(mut st) = entry.state.lock() else {
            return false;
        };
        let had = match st.sessions.iter().position(|s| s.id == sid) {
            Some(i) => {
                st.sessions.swap_remove(i);
                true
            }
            None => false,
        };
        if st.sessions.is_empty() {
            entries.remove(scripthash);
            entry.closed.notify_one();
        }
        had
    }

    /// Removes every subscription of a session (on disconnect).
    pub fn drop_session(&self, scripthashes: impl IntoIterator<Item = String>, sid: SessionId) {
        for sh in scripthashes {
            self.unsubscribe(&sh, sid);
        }
    }

    /// Applies a status from an upstream; notifies sessions when it changed (not for the
    /// first status, which subscribers read from their reply).
    fn apply(&self, entry: &Entry, status: Value) {
        let targets: Vec<SessionHandle> = {
            let Ok(mut st) = entry.state.lock() else {
                return;
            };
            let first = st.status.is_none();
            if st.status.as_ref() == Some(&status) {
                return;
            }
            st.status = Some(status.clone());
            if first {
                entry.known.notify_waiters();
                return;
            }
            st.sessions.clone()
        };
        for s in targets {
            let ev = SessionEvent::Status(Box::new(StatusChange {
                scripthash: entry.scripthash.clone(),
                status: status.clone(),
            }));
            if s.tx.try_send(ev).is_err() {
                tracing::warn!(
                    session = s.id,
                    "session cannot keep up with notifications; closing it"
                );
                s.kill.cancel();
            } else {
                self.notifications.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// How many upstreams watch a scripthash: two, so that every status a wallet receives is
    /// confirmed by a second upstream and a silent one is noticed; one when statuses are not
    /// verified.
    fn watchers_wanted(&self) -> usize {
        if self.verify_statuses {
            2
        } else {
            1
        }
    }

    /// Keeps a scripthash watched by [`Hub::watchers_wanted`] upstreams in step, each through its
    /// own upstream subscription, until the last session leaves. Every status a watcher
    /// announces is vetted against its own history ([`Hub::vet`]); a status reaches the wallets
    /// only when every watcher announces it ([`Hub::reconcile`]). When watchers disagree for
    /// longer than [`ARBITRATE_AFTER`] (one stays silent, or lies), every upstream in step is
    /// asked for the history and the status two of them agree on wins ([`Hub::arbitrate`]); a
    /// watcher that was wrong or silent is penalised and replaced. A watcher whose subscription
    /// fails, stalls past [`SUBSCRIBE_PATIENCE`] or ends (its connection lost) is replaced by
    /// another upstream; the last known status is kept, so a change that happened meanwhile is
    /// still notified.
    async fn run_entry(self: Arc<Self>, entry: Arc<Entry>) {
        let key = key_of(&entry.scripthash);
        let mut events = self.pool.events();
        // Sized for the watchers wanted: a vector grows to four slots at its first push.
        let mut watchers: Vec<Watcher> = Vec::with_capacity(self.watchers_wanted());
        // Upstreams that failed this scripthash lately, with when they may be tried again.
        let mut shunned: HashMap<usize, Instant> = HashMap::new();
        let mut disagree_since: Option<Instant> = None;
        let mut ever = false;
        loop {
            // Boxed: an idle entry's task keeps only what waiting needs.
            let (filled, closing) =
                Box::pin(self.fill(&entry, key, &mut watchers, &mut shunned, ever)).await;
            if closing || self.pool.is_shutting_down() {
                break;
            }
            ever |= filled;
            self.reconcile(&entry, &mut watchers, &mut disagree_since);
            let arbitrate_at = disagree_since.map(|t| t + ARBITRATE_AFTER);
            // Too few watchers: look again soon even if no pool event says so.
            let refill_at =
                (watchers.len() < self.watchers_wanted()).then(|| Instant::now() + REFILL_EVERY);
            tokio::select! {
                (i, v) = next_status(&mut watchers) => match v {
                    Some(status) => {
                        let w = &mut watchers[i];
                        let vet = Box::pin(self.vet(&w.up, &w.client, &entry.scripthash, &status));
                        match vet.await {
                            Vet::Sound => {
                                w.status = Some(status);
                                w.arbitrated = false;
                                w.mismatches = 0;
                            }
                            // The history moved on between the status and the history, or the
                            // status is false: not taken; the next notification decides. The
                            // same again and again is a lie.
                            Vet::Mismatch if w.mismatches + 1 < MISMATCH_STRIKES => {
                                w.mismatches += 1;
                            }
                            Vet::Mismatch => {
                                self.pool.penalize(&w.up, Reason::BadStatus);
                                self.drop_watcher(&mut watchers, i, &mut shunned);
                            }
                            Vet::False => self.drop_watcher(&mut watchers, i, &mut shunned),
                        }
                    }
                    // The subscription ended (connection lost or replaced): move it.
                    None => self.drop_watcher(&mut watchers, i, &mut shunned),
                },
                ev = events.recv() => {
                    if matches!(ev, Err(tokio::sync::broadcast::error::RecvError::Closed))
                        || self.pool.is_shutting_down()
                    {
                        break;
                    }
                    // A watcher fell out of step (demoted, sitting out): move it. Any change
                    // may also bring an upstream in step for a missing watcher.
                    while let Some(i) = watchers.iter().position(|w| !w.up.in_step()) {
                        self.drop_watcher(&mut watchers, i, &mut shunned);
                    }
                }
                _ = sleep_until(refill_at) => {}
                _ = sleep_until(arbitrate_at) => {
                    disagree_since = None;
                    Box::pin(self.arbitrate(&entry, &mut watchers, &mut shunned)).await;
                }
                _ = entry.closed.notified() => break,
            }
        }
        for _ in watchers.drain(..) {
            self.upstream_subs.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Fills an entry's watcher set from the upstreams in step, the missing watchers
    /// subscribing at once (one round trip, not one per watcher). Returns whether a watcher was
    /// added, and whether the entry closed meanwhile.
    async fn fill(
        &self,
        entry: &Entry,
        key: u64,
        watchers: &mut Vec<Watcher>,
        shunned: &mut HashMap<usize, Instant>,
        ever: bool,
    ) -> (bool, bool) {
        let mut filled = false;
        let mut closing = false;
        // Each upstream is tried at most once per pass, so a failing one is never retried
        // in a tight loop; the next pass comes with a pool event or the refill timer.
        let mut tried: Vec<usize> = Vec::new();
        while watchers.len() < self.watchers_wanted() && !self.pool.is_shutting_down() {
            let now = Instant::now();
            shunned.retain(|_, until| *until > now);
            let mut picks: Vec<(Arc<Upstream>, Client)> = Vec::new();
            while watchers.len() + picks.len() < self.watchers_wanted() {
                let mut watching: Vec<usize> = watchers.iter().map(|w| w.up.id).collect();
                watching.extend(&tried);
                watching.extend(picks.iter().map(|(up, _)| up.id));
                let mut exclude = watching.clone();
                exclude.extend(shunned.keys());
                // Upstreams that failed this scripthash lately come last, not never: with
                // too few others they are asked again.
                let Some(pick) = self
                    .pick(entry, key, &exclude)
                    .or_else(|| self.pick(entry, key, &watching))
                else {
                    break;
                };
                picks.push(pick);
            }
            if picks.is_empty() {
                break;
            }
            tried.extend(picks.iter().map(|(up, _)| up.id));
            let ids: Vec<usize> = picks.iter().map(|(up, _)| up.id).collect();
            let attempts = futures::future::join_all(
                picks
                    .into_iter()
                    .map(|(up, client)| self.watch(entry, up, client)),
            );
            let watched = tokio::select! {
                w = attempts => w,
                _ = entry.closed.notified() => {
                    closing = true;
                    break;
                }
            };
            for (id, w) in ids.into_iter().zip(watched) {
                match w {
                    Some(w) => {
                        if ever {
                            self.moves.fetch_add(1, Ordering::Relaxed);
                        }
                        watchers.push(w);
                        filled = true;
                    }
                    None => {
                        shunned.insert(id, Instant::now() + SHUN_FOR);
                    }
                }
            }
        }
        (filled, closing)
    }

    /// The upstream to watch the entry's scripthash next, but those in `exclude`: under
    /// `spread`, a member of its set, else the upstream that steps in for it; otherwise one
    /// spread by `key` over the upstreams in step.
    fn pick(&self, entry: &Entry, key: u64, exclude: &[usize]) -> Option<(Arc<Upstream>, Client)> {
        if entry.set.is_empty() {
            return self.pool.pick_for(key, exclude);
        }
        let (candidates, _) =
            self.pool
                .ranked_for_scripthash(true, &entry.scripthash, Some(entry.set));
        candidates
            .into_iter()
            .filter(|(up, _)| !exclude.contains(&up.id))
            .find_map(|(up, _)| {
                let client = up.client_for(key)?;
                Some((up, client))
            })
    }

    /// Subscribes to the entry's scripthash on one upstream, within [`SUBSCRIBE_PATIENCE`], and
    /// vets the status it answers. `None` when it fails, stalls or lies; an upstream that fails
    /// [`STALL_STRIKES`] subscriptions in a row is penalised.
    async fn watch(&self, entry: &Entry, up: Arc<Upstream>, client: Client) -> Option<Watcher> {
        let params = vec![Value::String(entry.scripthash.to_string())];
        // Under `isolated`: on a connection of a wallet that subscribed to it.
        let client = match entry_links(entry) {
            Some(links) => match links.client(&up).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(upstream = %up.name(), error = %e, "no isolated connection");
                    return None;
                }
            },
            None => client,
        };
        up.note_scripthash(&entry.scripthash);
        let answered_before = up.stats().answered;
        let sub = tokio::time::timeout(
            SUBSCRIBE_PATIENCE,
            client.subscribe("blockchain.scripthash.subscribe", params),
        )
        .await;
        let (initial, stream) = match sub {
            Ok(Ok(s)) => {
                up.subscribe_failures.store(0, Ordering::Relaxed);
                s
            }
            Ok(Err(e)) if !matches!(e, ClientError::Timeout) => {
                tracing::debug!(upstream = %up.name(), error = %e, "subscribe failed");
                return None;
            }
            // Our patience or the client's request timeout ran out.
            _ => {
                // A stall counts against the upstream only when it answered other requests
                // meanwhile: a selective stall, not a slow or dying server.
                let selective = up.stats().answered > answered_before && up.connected() > 0;
                tracing::debug!(upstream = %up.name(), selective, "subscribe timed out");
                if selective {
                    let strikes = up.subscribe_failures.fetch_add(1, Ordering::Relaxed) + 1;
                    if strikes >= STALL_STRIKES {
                        up.subscribe_failures.store(0, Ordering::Relaxed);
                        self.pool.penalize(&up, Reason::Stalled);
                    }
                }
                return None;
            }
        };
        self.upstream_subs.fetch_add(1, Ordering::Relaxed);
        let initial: Value = serde_json::from_str(initial.get()).unwrap_or(Value::Bool(false));
        if self.vet(&up, &client, &entry.scripthash, &initial).await != Vet::Sound {
            // A false status was penalised; a mismatch may be a race with a new transaction:
            // either way another upstream is asked.
            self.upstream_subs.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Watcher {
            up,
            client,
            stream,
            status: Some(initial),
            mempool_behind: false,
            arbitrated: false,
            mismatches: 0,
        })
    }

    fn drop_watcher(
        &self,
        watchers: &mut Vec<Watcher>,
        i: usize,
        shunned: &mut HashMap<usize, Instant>,
    ) {
        let w = watchers.swap_remove(i);
        shunned.insert(w.up.id, Instant::now() + SHUN_FOR);
        self.upstream_subs.fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(upstream = %w.up.name(), "moving a subscription to another upstream");
    }

    /// Applies the status every watcher announces, if they agree and there are enough of them;
    /// notes when a disagreement began.
    fn reconcile(
        &self,
        entry: &Entry,
        watchers: &mut [Watcher],
        disagree_since: &mut Option<Instant>,
    ) {
        let statuses: Vec<&Value> = watchers.iter().filter_map(|w| w.status.as_ref()).collect();
        let Some(first) = statuses.first() else {
            *disagree_since = None;
            return;
        };
        if statuses.iter().all(|s| s == first) {
            *disagree_since = None;
            if statuses.len() >= self.watchers_wanted() {
                let status = (*first).clone();
                // A watcher that announced the agreed status itself is not behind any more.
                for w in watchers.iter_mut().filter(|w| !w.arbitrated) {
                    w.mempool_behind = false;
                }
                self.apply(entry, status);
            }
        } else if disagree_since.is_none() {
            *disagree_since = Some(Instant::now());
        }
    }

    /// Every voter's history of the entry's scripthash (through the checked call; under
    /// `isolated`, over the connections of a wallet that subscribed to it).
    async fn histories(&self, entry: &Entry, voters: Vec<(Arc<Upstream>, Client)>) -> Vec<Asked> {
        let params = vec![Value::String(entry.scripthash.to_string())];
        let links = entry_links(entry);
        voters
            .into_iter()
            .map(|(up, client)| {
                let params = params.clone();
                let links = links.clone();
                async move {
                    let client = match links {
                        Some(links) => match links.client(&up).await {
                            Ok(c) => c,
                            Err(e) => return (up, Err(e)),
                        },
                        None => client,
                    };
                    let res = self
                        .pool
                        .ask(
                            &up,
                            &client,
                            "blockchain.scripthash.get_history",
                            params,
                            crate::verify::check_history,
                        )
                        .await;
                    (up, res)
                }
            })
            .collect::<futures::stream::FuturesUnordered<_>>()
            .collect::<Vec<_>>()
            .await
    }

    /// Settles a disagreement between watchers: every upstream in step is asked for the
    /// scripthash's history (through the checked call), and the status that two of them agree
    /// on is applied. Watchers on the losing side are penalised (a status that is not what the
    /// majority's history says, or a silence about a change the others report) and replaced.
    async fn arbitrate(
        &self,
        entry: &Entry,
        watchers: &mut Vec<Watcher>,
        shunned: &mut HashMap<usize, Instant>,
    ) {
        // Under `spread`: the set and the one upstream that steps in for it first (enough for
        // a majority against one liar), the others only when those give no majority (a member
        // stalled while another lied); otherwise every upstream in step at once.
        let (mut voters, reach) =
            self.pool
                .ranked_for_scripthash(true, &entry.scripthash, Some(entry.set));
        let mut rest = if entry.set.is_empty() {
            Vec::new()
        } else {
            voters.split_off((reach + 1).min(voters.len()))
        };
        let mut asked = self.histories(entry, voters).await;
        let (winner, agreeing, confirmed) = loop {
            let (by_status, confirmed) = tally_histories(&asked);
            let total: usize = by_status.iter().map(|(_, ids)| ids.len()).sum();
            if let Some((winner, agreeing)) = by_status
                .into_iter()
                .find(|(_, ids)| ids.len() >= 2 && ids.len() * 2 > total)
            {
                break (winner, agreeing, confirmed);
            }
            if rest.is_empty() {
                tracing::warn!("upstreams disagree on a status and no two agree; asking again");
                return;
            }
            asked.extend(self.histories(entry, std::mem::take(&mut rest)).await);
        };
        // Each answering upstream and its history as given (to prove the winner's).
        let given: HashMap<usize, (Arc<Upstream>, Box<serde_json::value::RawValue>)> = asked
            .into_iter()
            .filter_map(|(up, res)| res.ok().map(|raw| (up.id, (up, raw))))
            .collect();
        let links = entry_links(entry);
        // Two upstreams that agree could still be two liars: the history they agree on must be
        // proven before its status reaches wallets or the other side is penalised.
        let prover = self.prover.get().and_then(Weak::upgrade);
        let winning = agreeing.first().and_then(|id| given.get(id));
        if let (Some(prover), Some((_, raw))) = (prover, winning) {
            let proven = prover
                .prove_history(&entry.scripthash, entry.set, links.as_ref(), raw)
                .await;
            if let Err(refusal) = proven {
                if let Some(reason) = refusal.blame {
                    for (up, _) in agreeing.iter().filter_map(|id| given.get(id)) {
                        self.pool.penalize(up, reason);
                    }
                }
                tracing::warn!(
                    "the status most upstreams agree on has a history that was not proven; \
                     asking again"
                );
                return;
            }
        }
        let mut i = 0;
        while i < watchers.len() {
            let w = &watchers[i];
            if w.status.as_ref() == Some(&winner) {
                i += 1;
                continue;
            }
            // No history from it (a stall, a connection going down): it cannot vouch for this
            // scripthash, so another upstream watches it instead. Not answering is no lie:
            // penalising it once per scripthash would sit a briefly stalled server out for an
            // hour; the pool's timeouts deal with a server that stopped answering.
            if !confirmed.contains_key(&w.up.id) {
                self.drop_watcher(watchers, i, shunned);
                continue;
            }
            // Silent (its history is the majority's, but it never announced the change), wrong
            // (its history's confirmed part is not the majority's), or only behind on the
            // mempool (honest servers see a transaction at different moments: not held against
            // it, and it keeps watching).
            let reason = if agreeing.contains(&w.up.id) {
                Some(Reason::Silent)
            } else if differs(confirmed.get(&w.up.id), confirmed.get(&agreeing[0])) {
                Some(Reason::HistoryMismatch)
            } else {
                None
            };
            // Behind on the mempool twice in a row without catching up in between is no
            // longer lag: it hides what it has been shown.
            let reason = match reason {
                None if watchers[i].mempool_behind => Some(Reason::HistoryMismatch),
                other => other,
            };
            match reason {
                Some(reason) => {
                    self.pool.penalize(&watchers[i].up, reason);
                    self.drop_watcher(watchers, i, shunned);
                }
                None => {
                    watchers[i].mempool_behind = true;
                    i += 1;
                }
            }
        }
        for w in watchers.iter_mut() {
            if w.status.as_ref() != Some(&winner) {
                w.status = Some(winner.clone());
                w.arbitrated = true;
            }
        }
        self.apply(entry, winner);
    }

    /// Checks a status a watcher announced against that upstream's own history: it must be the
    /// status of the history it returns (asked twice, as a transaction may land between the
    /// status and the history). A history it cannot give is not held against it: agreement with
    /// the other watcher still decides what reaches wallets.
    async fn vet(&self, up: &Upstream, client: &Client, scripthash: &str, status: &Value) -> Vet {
        if !valid_status(status) {
            self.pool.penalize(up, Reason::BadStatus);
            return Vet::False;
        }
        // No history (most of a wallet's addresses): nothing to check it against that the
        // other watcher's agreement does not already settle, and no history to ask for.
        if !self.verify_statuses || status.is_null() {
            return Vet::Sound;
        }
        let params = vec![Value::String(scripthash.to_string())];
        for _ in 0..2 {
            let asked = self
                .pool
                .ask(
                    up,
                    client,
                    "blockchain.scripthash.get_history",
                    params.clone(),
                    |raw| match check_history_status(raw, status.as_str()) {
                        // A malformed history stays false (and penalised); a well-formed one
                        // that does not hash to the status may just be newer.
                        Verdict::False(crate::chain::VerifyError::BadStatus) => {
                            Verdict::Unverifiable("the status may have moved on".into())
                        }
                        verdict => verdict,
                    },
                )
                .await;
            match asked {
                Ok(_) => return Vet::Sound,
                Err(ClientError::Protocol(_)) => continue,
                Err(_) => return Vet::Sound,
            }
        }
        Vet::Mismatch
    }
}

/// How long one upstream may take to answer a subscription before another is asked.
pub const SUBSCRIBE_PATIENCE: Duration = Duration::from_secs(5);
/// How long an upstream that failed a scripthash's subscription is not asked for it again.
const SHUN_FOR: Duration = Duration::from_secs(30);
/// Subscriptions an upstream may fail (or stall) in a row before it is penalised.
const STALL_STRIKES: u32 = 3;
/// How often a scripthash with too few watchers looks for another upstream.
const REFILL_EVERY: Duration = Duration::from_millis(500);
/// How long watchers may disagree (an honest one a little behind) before the upstreams vote.
pub const ARBITRATE_AFTER: Duration = Duration::from_secs(2);

/// One upstream watching a scripthash.
struct Watcher {
    up: Arc<Upstream>,
    client: Client,
    stream: Subscription,
    /// The last status it announced that passed vetting.
    status: Option<Value>,
    /// It lost the last arbitration on its mempool alone and has not announced the agreed
    /// status since.
    mempool_behind: bool,
    /// `status` was set by an arbitration, not announced by this upstream.
    arbitrated: bool,
    /// Statuses in a row that did not match its own history.
    mismatches: u32,
}

/// What vetting made of a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vet {
    /// The hash of the announcing upstream's history (or not checked).
    Sound,
    /// Not the hash of its history, twice: a race with a new transaction, or a lie.
    Mismatch,
    /// Proven false (not a status at all); the upstream was penalised.
    False,
}

/// Statuses in a row that do not match the announcing upstream's history before it is
/// penalised (honest servers miss once when a transaction lands between status and history).
const MISMATCH_STRIKES: u32 = 3;

/// True when two upstreams' confirmed histories differ on the blocks both have seen (a block
/// one of them has not indexed yet is no difference).
fn differs(
    a: Option<&(Vec<crate::chain::HistoryEntry>, u32)>,
    b: Option<&(Vec<crate::chain::HistoryEntry>, u32)>,
) -> bool {
    match (a, b) {
        (Some((a, ta)), Some((b, tb))) => !crate::chain::histories_agree(a, b, (*ta).min(*tb)),
        _ => false,
    }
}

/// The next status any watcher announces, with the watcher's index (`None`: its subscription
/// ended). Pending forever without watchers.
async fn next_status(watchers: &mut [Watcher]) -> (usize, Option<Value>) {
    if watchers.is_empty() {
        return futures::future::pending().await;
    }
    let nexts = watchers
        .iter_mut()
        .enumerate()
        .map(|(i, w)| Box::pin(async move { (i, w.stream.next().await) }));
    futures::future::select_all(nexts).await.0
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        // Boxed: the timer's state is held only while it is armed.
        Some(at) => Box::pin(tokio::time::sleep_until(at)).await,
        None => futures::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    /// A hub over a pool that is never started: no upstream is dialed, so statuses come only
    /// from the test.
    fn hub(dir: &std::path::Path) -> Arc<Hub> {
        let cfg = Config {
            network: "regtest".into(),
            data_dir: dir.to_path_buf(),
            ..Config::default()
        };
        let servers = vec!["tcp://127.0.0.1:1".parse().unwrap()];
        let pool = Pool::new(
            Arc::new(cfg),
            servers,
            vec![],
            Metrics::new(),
            CancellationToken::new(),
        )
        .unwrap();
        Hub::new(pool, Duration::from_millis(10), true, usize::MAX)
    }

    fn session(id: SessionId, room: usize) -> (SessionHandle, mpsc::Receiver<SessionEvent>) {
        let (tx, rx) = mpsc::channel(room);
        let handle = SessionHandle {
            id,
            tx,
            kill: CancellationToken::new(),
            links: None,
        };
        (handle, rx)
    }

    const SH: &str = "4d3611dab7c887dd7377c18b04295edce510d6f8749d06d89f376e65feee9df0";

    #[tokio::test]
    async fn one_entry_per_scripthash_fanned_out_to_every_session() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path());
        let (a, mut a_rx) = session(1, 8);
        let (b, mut b_rx) = session(2, 8);
        let (entry, status) = hub.join(SH, a, &Mutex::default()).unwrap();
        assert_eq!(status, None);
        let (again, _) = hub.join(SH, b, &Mutex::default()).unwrap();
        assert!(Arc::ptr_eq(&entry, &again), "one entry for the scripthash");
        assert_eq!(hub.scripthashes(), 1);
        assert_eq!(hub.session_subscriptions(), 2);
        // The first status answers subscribers; it is no notification.
        hub.apply(&entry, json!("s1"));
        assert!(a_rx.try_recv().is_err());
        assert_eq!(
            hub.join(SH, session(3, 1).0, &Mutex::default()).unwrap().1,
            Some(json!("s1"))
        );
        hub.unsubscribe(SH, 3);
        // A change reaches every session, once; the same status again is nothing.
        hub.apply(&entry, json!("s2"));
        hub.apply(&entry, json!("s2"));
        for rx in [&mut a_rx, &mut b_rx] {
            let SessionEvent::Status(change) = rx.try_recv().unwrap();
            let StatusChange { scripthash, status } = *change;
            assert_eq!((&*scripthash, status), (SH, json!("s2")));
            assert!(rx.try_recv().is_err());
        }
        assert_eq!(hub.notifications.load(Ordering::Relaxed), 2);
        // The entry goes with its last session.
        assert!(hub.unsubscribe(SH, 1));
        assert!(!hub.unsubscribe(SH, 1));
        assert_eq!(hub.scripthashes(), 1);
        hub.drop_session([SH.to_string()], 2);
        assert_eq!(hub.scripthashes(), 0);
    }

    #[tokio::test]
    async fn a_session_that_cannot_keep_up_is_closed_not_silently_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path());
        let (slow, _slow_rx) = session(1, 1);
        let kill = slow.kill.clone();
        let (entry, _) = hub.join(SH, slow, &Mutex::default()).unwrap();
        hub.apply(&entry, json!("s0"));
        hub.apply(&entry, json!("s1"));
        assert!(!kill.is_cancelled(), "one notification fits");
        hub.apply(&entry, json!("s2"));
        assert!(kill.is_cancelled(), "a full mailbox closes the session");
    }

    #[tokio::test]
    async fn a_subscription_nobody_can_answer_fails_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path());
        let e = hub
            .subscribe(SH, session(1, 1).0, &Mutex::default())
            .await
            .unwrap_err();
        assert!(e.message.contains("no upstream"), "{e:?}");
        assert_eq!(hub.scripthashes(), 0);
        assert_eq!(hub.upstream_subscriptions(), 0);
    }

    #[test]
    fn statuses_must_look_like_statuses() {
        assert!(valid_status(&Value::Null));
        assert!(valid_status(&json!(SH)));
        assert!(!valid_status(&json!("zz")));
        assert!(!valid_status(&json!(5)));
        assert!(!valid_status(&json!(format!("{SH}00"))));
    }
}
