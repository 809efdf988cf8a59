//! Subscription multiplexing: one upstream subscription per scripthash and watcher, fanned out
//! to every wallet session that subscribed to it.
//!
//! Each scripthash with at least one subscribed session has an entry: plain state in one
//! table, with no task of its own while nothing happens to it. The upstream subscriptions are
//! made with plain requests; every upstream connection's notifications come through one sink
//! ([`crate::client::StatusSink`]) that routes them by scripthash to the entry's inbox. An
//! entry with something in its inbox (a status, a lost connection, a watcher out of step, a
//! disagreement that lasted) gets a driver task, which handles it in order with the entry's
//! watchers in hand and ends when the inbox is empty (the watching itself is in [`watch`]).
//! One sweeper task per hub looks at the pool's events and every [`REFILL_EVERY`]: watchers
//! whose upstream fell out of step, and entries that still want a watcher.
//!
//! Because the last known status is kept, a change that happened while a subscription moved
//! to another upstream is noticed by comparing the new upstream's status with it, and every
//! session is notified: no notification is lost across a failover. When the last session
//! leaves, the entry goes and its upstream subscriptions are ended.

mod watch;

use serde_json::Value;
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::isolation::Links;
use super::pool::Pool;
use super::privacy::Set;
use super::router::{unavailable, Refusal};
use super::upstream::Upstream;
use crate::client::{Client, StatusSink};
use crate::protocol::error::SERVER_BUSY;
use crate::protocol::RpcError;
pub use watch::ARBITRATE_AFTER;
use watch::{Vet, Watcher, MISMATCH_STRIKES, REFILL_EVERY};

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

/// What happened to an entry that its driver has not handled yet.
enum Event {
    /// The connection with this id announced a status. Only the latest of a connection is
    /// kept (a status is the whole state), with how many it replaced: more than
    /// [`FLOOD_LIMIT`] is a flood.
    Status(u64, Value, u32),
    /// The connection with this id was lost: its subscriptions are gone.
    Lost(u64),
    /// Watchers may have fallen out of step, or an upstream may have come in step.
    Check,
    /// A disagreement may have lasted [`ARBITRATE_AFTER`].
    Due,
}

/// The watching state of an entry; its driver holds it while it runs.
#[derive(Default)]
struct Watch {
    /// The upstreams watching the scripthash.
    watchers: Vec<Watcher>,
    /// Upstreams that failed this scripthash lately, with when they may be tried again.
    shunned: HashMap<usize, Instant>,
    /// When the watchers began to disagree.
    disagree_since: Option<Instant>,
    /// A watcher was ever added (a later one is a move).
    ever: bool,
}

struct EntryState {
    /// The subscribed sessions (usually one: a list is smaller than a map).
    sessions: Vec<SessionHandle>,
    /// Last status the watchers agreed on; `None` until the first.
    status: Option<Value>,
    /// What the driver has yet to handle, in arrival order.
    inbox: Vec<Event>,
    /// A driver task is handling the entry (and holds `watch`).
    running: bool,
    /// The watching state while no driver runs.
    watch: Watch,
}

struct Entry {
    scripthash: Arc<str>,
    /// The upstreams that may learn of this scripthash under `[privacy] mode = "spread"`
    /// (empty otherwise), fixed when the entry is made.
    set: Set,
    state: Mutex<EntryState>,
    /// Woken when the first status is known.
    known: Notify,
}

impl Entry {
    /// A new entry, not yet watched.
    fn new(scripthash: Arc<str>, set: Set) -> Entry {
        Entry {
            scripthash,
            set,
            state: Mutex::new(EntryState {
                // Most scripthashes have one session.
                sessions: Vec::with_capacity(1),
                status: None,
                inbox: Vec::new(),
                running: false,
                watch: Watch::default(),
            }),
            known: Notify::new(),
        }
    }
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
    me: Weak<Hub>,
    pool: Arc<Pool>,
    entries: Mutex<HashMap<Arc<str>, Arc<Entry>>>,
    upstream_subs: AtomicUsize,
    /// Watchers per upstream connection id and per upstream id: which lost connections and
    /// which upstreams out of step are worth a look through the table.
    counts: Mutex<Counts>,
    /// Entries with fewer watchers than wanted, looked at again by the sweeper.
    wanting: Mutex<HashSet<Arc<str>>>,
    /// The sweeper runs.
    sweeping: AtomicBool,
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

#[derive(Default)]
struct Counts {
    conns: HashMap<u64, usize>,
    upstreams: HashMap<u64, usize>,
}

/// Routes one upstream connection's scripthash notifications to the hub's entries.
struct Tap {
    hub: Weak<Hub>,
    conn: u64,
}

/// Statuses of one connection for one scripthash that may arrive while its driver handles
/// another: a server that sends more is flooding (and is disconnected and penalised).
const FLOOD_LIMIT: u32 = 1024;

impl StatusSink for Tap {
    fn status(&self, scripthash: &str, status: &Value) -> bool {
        let Some(hub) = self.hub.upgrade() else {
            return true;
        };
        let entry = hub
            .entries
            .lock()
            .ok()
            .and_then(|e| e.get(scripthash).cloned());
        match entry {
            Some(entry) => hub.post(&entry, Event::Status(self.conn, status.clone(), 0)),
            None => {
                tracing::debug!("status of a scripthash no session holds; ignored");
                true
            }
        }
    }

    fn lost(&self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.lost(self.conn);
        }
    }
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

impl Hub {
    /// A hub over a pool. `subscribe_timeout` bounds how long a first subscriber waits for
    /// the initial status.
    pub fn new(
        pool: Arc<Pool>,
        subscribe_timeout: Duration,
        verify_statuses: bool,
        max_scripthashes: usize,
    ) -> Arc<Hub> {
        Arc::new_cyclic(|me| Hub {
            me: me.clone(),
            pool,
            entries: Mutex::new(HashMap::new()),
            upstream_subs: AtomicUsize::new(0),
            counts: Mutex::new(Counts::default()),
            wanting: Mutex::new(HashSet::new()),
            sweeping: AtomicBool::new(false),
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

    /// Distinct scripthashes subscribed by at least one session (and those whose upstream
    /// subscriptions are being ended).
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

    /// Adds a session to a scripthash's entry, creating the entry (and starting its watching)
    /// for the first session. Returns the entry and its status, if one is known yet.
    fn join(
        self: &Arc<Self>,
        scripthash: &str,
        session: SessionHandle,
        load: &Mutex<HashMap<usize, u32>>,
    ) -> Result<(Arc<Entry>, Option<Value>), RpcError> {
        self.start_sweeper();
        let Ok(mut entries) = self.entries.lock() else {
            return Err(RpcError::internal("hub poisoned"));
        };
        let Ok(mut load) = load.lock() else {
            return Err(RpcError::internal("session poisoned"));
        };
        let (entry, new) = match entries.get(scripthash) {
            Some(e) => (e.clone(), false),
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
                let e = Arc::new(Entry::new(sh.clone(), set));
                entries.insert(sh, e.clone());
                (e, true)
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
                if new {
                    // The first look fills the watchers.
                    self.kick(&entry, &mut st);
                }
                st.status.clone()
            }
            Err(_) => return Err(RpcError::internal("hub poisoned")),
        };
        Ok((entry, status))
    }

    /// Removes a session's subscription; true if it had one. The upstream subscriptions go
    /// with the last session: at once when no driver holds the entry's watchers, else by the
    /// driver when it next looks (the entry stays in the table until then, so that a new
    /// subscriber of the scripthash joins it rather than racing its ending).
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
        if st.sessions.is_empty() && !st.running {
            entries.remove(scripthash);
            let watch = std::mem::take(&mut st.watch);
            drop(st);
            self.close(&entry, watch);
        }
        had
    }

    /// Removes every subscription of a session (on disconnect).
    pub fn drop_session(&self, scripthashes: impl IntoIterator<Item = String>, sid: SessionId) {
        for sh in scripthashes {
            self.unsubscribe(&sh, sid);
        }
    }

    /// Ends an entry that left the table: its upstream subscriptions are ended. Called with
    /// the table locked, so that the unsubscribes are queued before any new entry's
    /// subscribe for the same scripthash.
    fn close(&self, entry: &Entry, mut watch: Watch) {
        for w in watch.watchers.drain(..) {
            self.release(entry, &w);
        }
        if let Ok(mut wanting) = self.wanting.lock() {
            wanting.remove(&*entry.scripthash);
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

    // ---- events -------------------------------------------------------------------------

    /// Has the hub's sink take a connection's scripthash notifications.
    fn tap(&self, client: &Client) {
        if !client.has_status_sink() {
            client.set_status_sink(Arc::new(Tap {
                hub: self.me.clone(),
                conn: client.id(),
            }));
        }
    }

    /// Counts a watcher in or out, by connection and by upstream.
    fn count_watcher(&self, up: &Upstream, client: &Client, added: bool) {
        if added {
            self.upstream_subs.fetch_add(1, Ordering::Relaxed);
        } else {
            self.upstream_subs.fetch_sub(1, Ordering::Relaxed);
        }
        let Ok(mut counts) = self.counts.lock() else {
            return;
        };
        let Counts { conns, upstreams } = &mut *counts;
        for (map, key) in [(conns, client.id()), (upstreams, up.id as u64)] {
            bump(map, key, added);
        }
    }

    /// Puts an event in an entry's inbox and has a driver handle it. False when a connection's
    /// statuses for the scripthash come faster than [`FLOOD_LIMIT`] allows.
    fn post(self: &Arc<Self>, entry: &Arc<Entry>, mut event: Event) -> bool {
        let Ok(mut st) = entry.state.lock() else {
            return true;
        };
        let inbox = &mut st.inbox;
        let same = inbox.iter_mut().find(|e| match (&**e, &event) {
            (Event::Status(a, ..), Event::Status(b, ..)) => a == b,
            (Event::Check, Event::Check) | (Event::Due, Event::Due) => true,
            _ => false,
        });
        let mut flood = false;
        match same {
            Some(slot) => {
                if let (Event::Status(.., replaced), Event::Status(.., n)) = (&*slot, &mut event) {
                    *n = replaced + 1;
                    flood = *n > FLOOD_LIMIT;
                }
                *slot = event;
            }
            None => inbox.push(event),
        }
        self.kick(entry, &mut st);
        !flood
    }

    /// Starts the entry's driver unless one runs.
    fn kick(self: &Arc<Self>, entry: &Arc<Entry>, st: &mut EntryState) {
        if st.running {
            return;
        }
        st.running = true;
        let hub = self.clone();
        let entry = entry.clone();
        tokio::spawn(async move { hub.drive(entry).await });
    }

    /// Every entry whose watchers (or whose running driver) may use the connection `conn`
    /// hears that it was lost.
    fn lost(self: &Arc<Self>, conn: u64) {
        let used = self
            .counts
            .lock()
            .map(|c| c.conns.get(&conn).copied().unwrap_or(0) > 0)
            .unwrap_or(false);
        if used {
            self.each_entry(
                |st| st.running || st.watch.watchers.iter().any(|w| w.client.id() == conn),
                || Event::Lost(conn),
            );
        }
    }

    /// Posts an event to every entry whose state passes `which`.
    fn each_entry(
        self: &Arc<Self>,
        which: impl Fn(&EntryState) -> bool,
        event: impl Fn() -> Event,
    ) {
        let all: Vec<Arc<Entry>> = match self.entries.lock() {
            Ok(entries) => entries.values().cloned().collect(),
            Err(_) => return,
        };
        for entry in all {
            let hit = entry.state.lock().map(|st| which(&st)).unwrap_or(false);
            if hit {
                let _ = self.post(&entry, event());
            }
        }
    }

    fn start_sweeper(&self) {
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let hub = self.me.clone();
        let events = self.pool.events();
        tokio::spawn(sweep(hub, events));
    }

    /// One look of the sweeper: watchers on upstreams out of step are moved, and entries
    /// that want a watcher try again when an upstream is in step.
    fn sweep_once(self: &Arc<Self>, wanting_too: bool) {
        let out: Vec<usize> = match self.counts.lock() {
            Ok(c) => c
                .upstreams
                .iter()
                .filter(|(_, n)| **n > 0)
                .filter_map(|(id, _)| {
                    let id = *id as usize;
                    let up = self.pool.upstreams().iter().find(|u| u.id == id);
                    (!up.is_some_and(|u| u.in_step())).then_some(id)
                })
                .collect(),
            Err(_) => return,
        };
        if !out.is_empty() {
            self.each_entry(
                |st| !st.running && st.watch.watchers.iter().any(|w| out.contains(&w.up.id)),
                || Event::Check,
            );
        }
        if wanting_too && self.pool.upstreams().iter().any(|u| u.in_step()) {
            let wanting: Vec<Arc<str>> = match self.wanting.lock() {
                Ok(mut w) => w.drain().collect(),
                Err(_) => return,
            };
            for sh in wanting {
                let entry = self.entries.lock().ok().and_then(|e| e.get(&sh).cloned());
                if let Some(entry) = entry {
                    let _ = self.post(&entry, Event::Check);
                }
            }
        }
    }

    // ---- the driver ---------------------------------------------------------------------

    /// Handles an entry's inbox with its watchers in hand, then lets go of them: keeps the
    /// scripthash watched by [`Hub::watchers_wanted`] upstreams in step. Every status a watcher
    /// announces is vetted against its own history ([`Hub::vet`]); a status reaches the wallets
    /// only when every watcher announces it ([`Hub::reconcile`]). When watchers disagree for
    /// longer than [`ARBITRATE_AFTER`] (one stays silent, or lies), the upstreams are asked for
    /// the history and the status two of them agree on wins ([`Hub::arbitrate`]); a watcher
    /// that was wrong or silent is penalised and replaced. A watcher whose subscription fails,
    /// stalls past [`watch::SUBSCRIBE_PATIENCE`] or ends (its connection lost) is replaced by another
    /// upstream; the last known status is kept, so a change that happened meanwhile is still
    /// notified.
    async fn drive(self: Arc<Self>, entry: Arc<Entry>) {
        let key = key_of(&entry.scripthash);
        let Ok(mut watch) = entry
            .state
            .lock()
            .map(|mut st| std::mem::take(&mut st.watch))
        else {
            return;
        };
        loop {
            if self.closed(&entry, &mut watch) {
                return;
            }
            if watch.watchers.len() < self.watchers_wanted() && !self.pool.is_shutting_down() {
                // Boxed: only a filling driver holds what filling needs.
                let filled = Box::pin(self.fill(&entry, key, &mut watch)).await;
                watch.ever |= filled;
                if watch.watchers.len() < self.watchers_wanted() {
                    if let Ok(mut wanting) = self.wanting.lock() {
                        wanting.insert(entry.scripthash.clone());
                    }
                }
            }
            self.reconcile(&entry, &mut watch);
            let event = {
                let Ok(mut st) = entry.state.lock() else {
                    return;
                };
                if st.inbox.is_empty() {
                    if st.sessions.is_empty() {
                        // The last session left while this driver ran.
                        drop(st);
                        continue;
                    }
                    st.watch = watch;
                    st.running = false;
                    return;
                }
                st.inbox.remove(0)
            };
            match event {
                Event::Status(conn, status, _) => {
                    let Some(i) = watch.watchers.iter().position(|w| w.client.id() == conn) else {
                        continue;
                    };
                    let w = &mut watch.watchers[i];
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
                            self.pool.penalize(&w.up, crate::verify::Reason::BadStatus);
                            self.drop_watcher(&entry, &mut watch.watchers, i, &mut watch.shunned);
                        }
                        Vet::False => {
                            self.drop_watcher(&entry, &mut watch.watchers, i, &mut watch.shunned)
                        }
                    }
                }
                // The subscription ended with its connection: move it.
                Event::Lost(conn) => {
                    while let Some(i) = watch.watchers.iter().position(|w| w.client.id() == conn) {
                        self.drop_watcher(&entry, &mut watch.watchers, i, &mut watch.shunned);
                    }
                }
                // A watcher fell out of step (demoted, sitting out): move it.
                Event::Check => {
                    while let Some(i) = watch.watchers.iter().position(|w| !w.up.in_step()) {
                        self.drop_watcher(&entry, &mut watch.watchers, i, &mut watch.shunned);
                    }
                }
                Event::Due => {
                    let due = watch
                        .disagree_since
                        .is_some_and(|t| t.elapsed() >= ARBITRATE_AFTER);
                    if due {
                        watch.disagree_since = None;
                        Box::pin(self.arbitrate(&entry, &mut watch)).await;
                    }
                }
            }
        }
    }

    /// Ends the entry when no session holds it any more (or the gateway shuts down): it leaves
    /// the table and its upstream subscriptions are ended. True when it ended.
    fn closed(&self, entry: &Arc<Entry>, watch: &mut Watch) -> bool {
        let shutting = self.pool.is_shutting_down();
        let Ok(mut entries) = self.entries.lock() else {
            return true;
        };
        let Ok(mut st) = entry.state.lock() else {
            return true;
        };
        if !st.sessions.is_empty() && !shutting {
            return false;
        }
        if st.sessions.is_empty()
            && entries
                .get(&*entry.scripthash)
                .is_some_and(|e| Arc::ptr_eq(e, entry))
        {
            entries.remove(&*entry.scripthash);
        }
        st.inbox.clear();
        st.running = false;
        drop(st);
        self.close(entry, std::mem::take(watch));
        true
    }
}

/// Counts one in or out under `key`; a count that reaches zero goes.
fn bump(map: &mut HashMap<u64, usize>, key: u64, added: bool) {
    if added {
        *map.entry(key).or_insert(0) += 1;
    } else if let Some(n) = map.get_mut(&key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(&key);
        }
    }
}

/// The hub's sweeper: on every pool event and every [`REFILL_EVERY`], moves watchers off
/// upstreams out of step and looks again at entries that want a watcher. Ends with the hub.
async fn sweep(
    hub: Weak<Hub>,
    mut events: tokio::sync::broadcast::Receiver<super::pool::PoolEvent>,
) {
    let mut tick = tokio::time::interval(REFILL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let ticked = tokio::select! {
            ev = events.recv() => {
                if matches!(ev, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    return;
                }
                false
            }
            _ = tick.tick() => true,
        };
        let Some(hub) = hub.upgrade() else { return };
        if hub.pool.is_shutting_down() {
            return;
        }
        hub.sweep_once(ticked);
    }
}
#[cfg(test)]
mod tests {
    use super::watch::valid_status;
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    /// Waits until no driver holds an entry's watchers (each runs once the test yields).
    pub(super) async fn settled(hub: &Hub) {
        loop {
            let busy = hub
                .entries
                .lock()
                .unwrap()
                .values()
                .any(|e| e.state.lock().unwrap().running);
            if !busy {
                return;
            }
            tokio::task::yield_now().await;
        }
    }

    /// A pool over `servers` (not started).
    pub(super) fn pool(
        dir: &std::path::Path,
        servers: Vec<crate::transport::ServerUrl>,
        shutdown: CancellationToken,
    ) -> Arc<Pool> {
        let cfg = Config {
            network: "regtest".into(),
            data_dir: dir.to_path_buf(),
            ..Config::default()
        };
        Pool::new(Arc::new(cfg), servers, vec![], Metrics::new(), shutdown).unwrap()
    }

    /// A hub over a pool that is never started: no upstream is dialed, so statuses come only
    /// from the test.
    fn hub(dir: &std::path::Path) -> Arc<Hub> {
        let servers = vec!["tcp://127.0.0.1:1".parse().unwrap()];
        let pool = pool(dir, servers, CancellationToken::new());
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
        // No upstream is in step: the first look finds no watcher and the driver ends.
        settled(&hub).await;
        assert_eq!(hub.upstream_subscriptions(), 0);
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
#[cfg(test)]
mod costs {
    use super::tests::{pool, settled};
    use super::*;
    use crate::sim::{Sim, SimConfig};

    /// Thousands of subscribes are in flight at a wallet's start (a million over 10,000
    /// wallets: 100,000 at once), each holding a driver's filling and two watches: their
    /// futures must stay small, with rarely taken branches (an isolated connection to dial, a
    /// status to vet) boxed.
    #[tokio::test]
    async fn a_subscribe_in_flight_holds_little() {
        let sim = Sim::start(SimConfig::with_endpoints(&["127.0.0.1:0"]).unwrap())
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path(), vec![sim.url(0)], Default::default());
        let hub = Hub::new(pool.clone(), Duration::from_millis(10), true, usize::MAX);
        let entry = Arc::new(Entry::new(Arc::from("00"), Set::default()));
        let mut watch = Watch::default();
        let up = pool.upstreams()[0].clone();
        let client = crate::client::Client::connect(crate::client::ClientConfig::new(sim.url(0)))
            .await
            .unwrap();
        let drive = std::mem::size_of_val(&hub.clone().drive(entry.clone()));
        let one = std::mem::size_of_val(&hub.watch(&entry, up.clone(), client.clone()));
        let fill = std::mem::size_of_val(&hub.fill(&entry, 1, &mut watch));
        assert!(drive <= 512, "the driver's future is {drive} bytes");
        assert!(one <= 1024, "a watch's future is {one} bytes");
        assert!(fill <= 2560, "a filling's future is {fill} bytes");
        client.close().await;
    }

    /// A subscribed scripthash that nothing happens to holds no task: after 300 are
    /// subscribed through two upstreams, the tasks alive are what they were before.
    #[tokio::test]
    async fn an_idle_subscription_holds_no_task() {
        let sim = Sim::start(SimConfig::with_endpoints(&["127.0.0.1:0", "127.0.0.1:0"]).unwrap())
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let pool = pool(dir.path(), sim.urls(), shutdown.clone());
        pool.start();
        assert!(pool.wait_connected(2, Duration::from_secs(20)).await);
        let hub = Hub::new(pool.clone(), Duration::from_secs(20), true, usize::MAX);
        let (session, _rx) = {
            let (tx, rx) = mpsc::channel(8);
            let handle = SessionHandle {
                id: 1,
                tx,
                kill: tokio_util::sync::CancellationToken::new(),
                links: None,
            };
            (handle, rx)
        };
        let load = Mutex::default();
        // The first subscription starts the hub's sweeper, which stays.
        hub.subscribe(&format!("{:064x}", 0), session.clone(), &load)
            .await
            .unwrap();
        settled(&hub).await;
        let tasks = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let before = tasks();
        for i in 1..=300u32 {
            hub.subscribe(&format!("{i:064x}"), session.clone(), &load)
                .await
                .unwrap();
        }
        settled(&hub).await;
        assert_eq!(hub.upstream_subscriptions(), 2 * 301, "two watchers each");
        let after = tasks();
        assert!(
            after <= before + 5,
            "{before} tasks before, {after} after 300 more subscriptions"
        );
        shutdown.cancel();
    }
}
