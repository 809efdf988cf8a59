//! The gateway's shared services: what every wallet session, the explorer and the admin API
//! use, built once at start ([`super::Gateway::start`]) and passed around as `Arc<Core>`.
//!
//! [`Core::read`] is the one way to answer a routed read: from the cache when the call's row
//! allows and a valid answer is there, else through the router (which asks upstreams through
//! the pool's checked call), with the protocol fallbacks the row names; what passed goes into
//! the cache, a proof filed under the block it was checked against, a transaction whose
//! witness no second upstream corroborated never.
//!
//! An `id_from_pos` answer (the row's `Check::TxAtPosition`) is not proven by its branch
//! alone ([`crate::verify::check_position_tx`]): each upstream's answer must also name a real
//! transaction, which `Core::read` fetches through itself (checked, voted on and cached like a
//! wallet's `transaction.get`) before the answer counts; an answer that fails is that
//! upstream's failure and the router asks the next one.

use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

use super::cache::AnswerCache;
use super::hub::Hub;
use super::isolation::Links;
use super::limits::{ClientLimits, Clients, Connections};
use super::pool::Pool;
use super::privacy::Set;
use super::router::{
    is_unavailable, Confirm, NoConfirm, Refusal, Routed, Router, Scope, IN_STEP_PATIENCE,
};
use super::upstream::Upstream;
use crate::client::{Client, ClientError};
use crate::config::Config;
use crate::metrics::{Counters, Metrics, Snapshot, Subscriptions};
use crate::protocol::error::{BAD_REQUEST, DAEMON_ERROR, METHOD_NOT_FOUND};
use crate::protocol::methods::{Cache, Check, Fallback, Kind};
use crate::protocol::{from_raw, Args, Call, Policy, RpcError};
use crate::verify::{check_position_tx, position_txid, Reason, Verdict};

/// Merkle proofs of one history asked at once ([`HistoryProof`]).
const PROOF_CONCURRENCY: usize = 16;
/// Merkle proofs of histories in flight at once, over all wallets, so that many histories
/// proven together do not flood the upstreams.
const PROOFS_IN_FLIGHT: usize = 64;
/// History entries remembered as proven ([`Core::not_yet_proven`]); past this the memory is
/// started afresh (the proofs themselves stay in the answer cache).
const PROVEN_ENTRIES: usize = 200_000;

/// History entries proven, with the block each was proven in.
type ProvenEntries = HashMap<(bitcoin::Txid, u32), bitcoin::BlockHash>;

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
    /// Cancelled when a drain starts ([`super::Gateway::drain`]): listeners stop accepting,
    /// sessions close once their requests are answered, `/health` says draining.
    pub drain: CancellationToken,
    /// Woken whenever a session ends.
    session_ended: tokio::sync::Notify,
    /// Wallet connections open or in their handshake (at most `max_sessions`).
    pub connections: Arc<Connections>,
    /// Per-client connections, token buckets and subscription counts.
    pub clients: Arc<Clients>,
    next_session: AtomicU64,
    sessions: AtomicI64,
    /// Reads in flight by key, with the identical reads waiting for them.
    inflight: Mutex<HashMap<String, Vec<Follower>>>,
    /// Bounds the history proofs in flight ([`PROOFS_IN_FLIGHT`]).
    proof_permits: tokio::sync::Semaphore,
    /// History entries proven, so that reading a history again costs a lookup per entry
    /// rather than a proof read ([`Core::not_yet_proven`]).
    proven: Mutex<ProvenEntries>,
}

fn raw<T: serde::Serialize>(v: &T) -> Result<Box<RawValue>, RpcError> {
    serde_json::value::to_raw_value(v).map_err(|e| RpcError::internal(e.to_string()))
}

/// An answer the gateway composed from other answers (a fallback): no proof, no witness.
fn composed(raw: Box<RawValue>) -> Routed {
    Routed {
        raw,
        block: None,
        uncorroborated: false,
    }
}

/// The first of identical reads in flight ([`Core::fetch_shared`]). Its followers are told the
/// answer by [`Leader::finish`]; if it is dropped first (its wallet left), they ask for
/// themselves.
struct Leader<'a> {
    core: &'a Core,
    key: String,
    /// Set by [`Leader::finish`]: the entry is already gone.
    finished: bool,
}

impl Leader<'_> {
    fn finish(mut self) -> Vec<Follower> {
        self.finished = true;
        match self.core.inflight.lock() {
            Ok(mut inflight) => inflight.remove(&self.key).unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Ok(mut inflight) = self.core.inflight.lock() {
            inflight.remove(&self.key);
        }
    }
}

/// Where a read waiting for an identical one in flight gets its answer.
type Follower = tokio::sync::oneshot::Sender<Result<Box<RawValue>, RpcError>>;

/// True when a history answer hashes to `status`.
fn history_fits(raw: &RawValue, status: &Value) -> bool {
    crate::chain::parse_history(raw.get())
        .is_ok_and(|h| crate::chain::status_hash(&h).map_or(Value::Null, Value::String) == *status)
}

/// The step an `id_from_pos` answer passes after its branch is checked: the transaction it
/// names must be real and fit the position ([`Core::confirm_position`]).
struct PositionConfirm<'a> {
    core: &'a Core,
    pos: u32,
}

impl Confirm for PositionConfirm<'_> {
    fn confirm<'a>(
        &'a self,
        up: &'a Arc<Upstream>,
        client: &'a Client,
        raw: &'a RawValue,
    ) -> futures::future::BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(self.core.confirm_position(up, client, self.pos, raw))
    }
}

/// Proves every confirmed entry of a history before it counts (`[verify] prove_history`): its
/// merkle proof ([`Core::read_in`], so cached proofs are used and new ones kept) must fold to
/// the verified header at its height. Proofs are asked of the scripthash's set and the one
/// upstream that steps in for it, no further ([`Scope::strict`]), so no other upstream learns
/// of the history. For a vote the decided answer is proven ([`Confirm::prove`]); for a read
/// not voted on (`fastest`), each answer ([`Confirm::confirm`]). An entry no upstream could
/// prove is remembered for the rest of the read, and any answer naming it is refused at once.
struct HistoryProof<'a> {
    core: &'a Core,
    /// Where the proofs are asked.
    scope: Scope<'a>,
    /// Prove each answer as it arrives rather than the decided one.
    each: bool,
    /// Entries (txid, height) shown unprovable during this read.
    unproven: Mutex<HashSet<(bitcoin::Txid, u32)>>,
    /// Reorganisations of the verified chain when the read began: an entry that fails to
    /// prove across one may have moved to another block, and blames nobody.
    reorgs: u64,
}

impl<'a> HistoryProof<'a> {
    fn new(
        core: &'a Core,
        scripthash: &'a str,
        set: Option<Set>,
        links: Option<&'a Arc<Links>>,
        each: bool,
    ) -> Self {
        HistoryProof {
            core,
            scope: Scope {
                set,
                links,
                scripthash: Some(scripthash),
                strict: true,
            },
            each,
            unproven: Mutex::new(HashSet::new()),
            reorgs: core.pool.tracker().reorgs(),
        }
    }

    /// True when the history names an entry already shown unprovable.
    fn names_unproven(&self, raw: &RawValue) -> bool {
        let Ok(unproven) = self.unproven.lock() else {
            return false;
        };
        !unproven.is_empty()
            && confirmed_entries(raw).is_ok_and(|e| e.iter().any(|x| unproven.contains(x)))
    }

    fn remember(&self, entries: impl IntoIterator<Item = (bitcoin::Txid, u32)>) {
        if let Ok(mut unproven) = self.unproven.lock() {
            unproven.extend(entries);
        }
    }

    /// Proves every confirmed entry of `raw`, at most [`PROOF_CONCURRENCY`] at a time.
    async fn prove_all(&self, raw: &RawValue) -> Result<(), Refusal> {
        use futures::stream::StreamExt;
        let refuse = |why: String, blame: bool| Refusal {
            error: RpcError::new(DAEMON_ERROR, format!("history refused: {why}")),
            blame: blame.then_some(Reason::UnprovenHistory),
        };
        let entries = confirmed_entries(raw).map_err(|e| refuse(e, true))?;
        let Some(highest) = entries.iter().map(|(_, h)| *h).max() else {
            return Ok(());
        };
        if !self.core.verified_up_to(highest).await {
            let tip = self.core.pool.tracker().tip().height;
            self.remember(entries.iter().filter(|(_, h)| *h > tip).copied());
            return Err(refuse(
                format!("it names block {highest}, above the verified tip {tip}"),
                true,
            ));
        }
        // Entries proven before, in the block still at their height, need nothing more.
        let entries = self.core.not_yet_proven(entries);
        let mut proofs = futures::stream::iter(entries)
            .map(|(txid, height)| async move {
                let res = self.core.prove_entry(txid, height, self.scope).await;
                (txid, height, res)
            })
            .buffer_unordered(PROOF_CONCURRENCY);
        while let Some((txid, height, res)) = proofs.next().await {
            if let Err(e) = res {
                // Every upstream asked gave no proof, and at least one said so (rather than
                // failing to answer), on the chain the history was given on: the entry is
                // false.
                let blame = !is_unavailable(&e) && self.core.pool.tracker().reorgs() == self.reorgs;
                if blame {
                    self.remember([(txid, height)]);
                }
                tracing::debug!(%txid, height, "history entry not proven: {}", e.message);
                let why = if blame {
                    "no upstream of its address could prove it"
                } else {
                    "no upstream of its address answered"
                };
                return Err(refuse(
                    format!("a confirmed entry at height {height} was not proven: {why}"),
                    blame,
                ));
            }
        }
        Ok(())
    }
}

/// The confirmed entries of a history answer (height above 0), each once. A height no block
/// can have is an error, never taken for unconfirmed.
fn confirmed_entries(raw: &RawValue) -> Result<Vec<(bitcoin::Txid, u32)>, String> {
    let history = crate::chain::parse_history(raw.get()).map_err(|e| e.to_string())?;
    let mut entries = Vec::new();
    for e in history.iter().filter(|e| e.height > 0) {
        let height = u32::try_from(e.height)
            .map_err(|_| format!("a confirmed entry at height {} names no block", e.height))?;
        entries.push((e.txid, height));
    }
    entries.sort_unstable();
    entries.dedup();
    Ok(entries)
}

impl Confirm for HistoryProof<'_> {
    fn confirm<'a>(
        &'a self,
        up: &'a Arc<Upstream>,
        _client: &'a Client,
        raw: &'a RawValue,
    ) -> futures::future::BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(async move {
            if self.names_unproven(raw) {
                self.core.pool.penalize(up, Reason::UnprovenHistory);
                return Err(ClientError::Protocol(
                    "history refused: it names a transaction shown unprovable".into(),
                ));
            }
            if !self.each {
                return Ok(());
            }
            self.prove_all(raw).await.map_err(|refusal| {
                if let Some(reason) = refusal.blame {
                    self.core.pool.penalize(up, reason);
                }
                ClientError::Protocol(refusal.error.message)
            })
        })
    }

    fn prove<'a>(
        &'a self,
        raw: &'a RawValue,
    ) -> futures::future::BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(self.prove_all(raw))
    }
}

impl super::hub::HistoryProver for Core {
    fn prove_history<'a>(
        &'a self,
        scripthash: &'a str,
        set: Set,
        links: Option<&'a Arc<Links>>,
        raw: &'a RawValue,
    ) -> futures::future::BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async move {
            let set = (!set.is_empty()).then_some(set);
            HistoryProof::new(self, scripthash, set, links, false)
                .prove_all(raw)
                .await
        })
    }
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
            cfg.limits.max_subscriptions,
        );
        let limits = &cfg.limits;
        let clients = Clients::new(ClientLimits {
            max_sessions: limits.max_sessions_per_client,
            rate: limits.client_rate,
            burst: limits.client_burst,
            max_subscriptions: limits.max_subscriptions_per_client,
        });
        let connections = Connections::new(limits.max_sessions);
        Core {
            connections,
            clients,
            network: pool.network(),
            cache: AnswerCache::new(
                cfg.verify.cache_entries,
                usize::try_from(cfg.verify.cache_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX),
                cfg.verify.cache_depth,
            ),
            cfg,
            pool,
            router,
            hub,
            metrics,
            shutdown,
            drain: CancellationToken::new(),
            session_ended: tokio::sync::Notify::new(),
            next_session: AtomicU64::new(1),
            sessions: AtomicI64::new(0),
            inflight: Mutex::new(HashMap::new()),
            proof_permits: tokio::sync::Semaphore::new(PROOFS_IN_FLIGHT),
            proven: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh session id.
    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts sessions opening (+1) and closing (-1).
    pub fn count_session(&self, delta: i64) {
        self.sessions.fetch_add(delta, Ordering::Relaxed);
        if delta < 0 {
            self.session_ended.notify_waiters();
        }
    }

    /// True once a drain has started.
    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled()
    }

    /// Waits until no wallet session is open, or `deadline` passes; true when none is.
    pub async fn sessions_ended(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let ended = self.session_ended.notified();
            tokio::pin!(ended);
            // Registered before the count is read, so an end between the two is not missed.
            ended.as_mut().enable();
            if self.sessions() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return self.sessions() == 0;
            }
        }
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
        self.read_for(call, None).await
    }

    /// [`Core::read`] for a wallet connection: under `[privacy] mode = "isolated"` upstreams
    /// are asked over its own connections (`links`).
    pub async fn read_for(
        &self,
        call: &Call,
        links: Option<&Arc<Links>>,
    ) -> Result<Box<RawValue>, RpcError> {
        let scope = Scope {
            links,
            ..Scope::default()
        };
        self.read_in(call, scope).await
    }

    /// [`Core::read_for`] within `scope`: when it ties the call to a scripthash (the merkle
    /// proofs of its history's entries), only the upstreams it allows are asked.
    async fn read_in(&self, call: &Call, scope: Scope<'_>) -> Result<Box<RawValue>, RpcError> {
        let tracker = self.pool.tracker();
        let Some(key) = call.cache_key() else {
            return Ok(self.fetch_shared(call, None, scope).await?.raw);
        };
        if call.info.cache == Cache::Status {
            return self.read_by_status(call, key, scope.links).await;
        }
        if let Some(hit) = self.cache.get(tracker, &key) {
            self.metrics.cache_hit(call.method());
            return Ok(hit);
        }
        self.metrics.cache_miss(call.method());
        let routed = self.fetch_shared(call, Some(&key), scope).await?;
        if routed.uncorroborated {
            // Served, never kept.
        } else if scope.strict {
            // A history's proof: its newest entries are proven again on every read.
            self.cache
                .put_proof_any_depth(tracker, call, key, &routed.raw, routed.block);
        } else {
            self.cache
                .put(tracker, call, key, &routed.raw, routed.block);
        }
        Ok(routed.raw)
    }

    /// A read about a scripthash (history, balance, unspent outputs): while the gateway
    /// watches it, an answer voted at its current status is served again until the status
    /// changes. A history goes in only when it hashes to that status; a balance or unspent
    /// list only when the status stayed the same while it was voted on.
    async fn read_by_status(
        &self,
        call: &Call,
        key: String,
        links: Option<&Arc<Links>>,
    ) -> Result<Box<RawValue>, RpcError> {
        let scope = Scope {
            links,
            ..Scope::default()
        };
        let status = call.scripthash().and_then(|sh| self.hub.status_of(sh));
        let Some(status) = status else {
            // Not watched (or not yet agreed): nothing identifies the answer.
            return Ok(self.fetch_shared(call, Some(&key), scope).await?.raw);
        };
        if let Some(hit) = self.cache.get_at_status(&key, &status) {
            self.metrics.cache_hit(call.method());
            return Ok(hit);
        }
        self.metrics.cache_miss(call.method());
        let routed = self.fetch_shared(call, Some(&key), scope).await?;
        let fits = match call.info.check {
            Check::History => history_fits(&routed.raw, &status),
            _ => {
                let still = call.scripthash().and_then(|sh| self.hub.status_of(sh));
                still.as_ref() == Some(&status)
            }
        };
        if fits && !routed.uncorroborated {
            self.cache.put_at_status(key, &routed.raw, status);
        }
        Ok(routed.raw)
    }

    /// [`Core::fetch`], shared by identical reads in flight: the first one asks the upstreams
    /// (and votes), the others wait for its answer. `key` is the call's cache key when it has
    /// one. Broadcasts are never shared.
    async fn fetch_shared(
        &self,
        call: &Call,
        key: Option<&str>,
        scope: Scope<'_>,
    ) -> Result<Routed, RpcError> {
        if call.kind() != Kind::Read {
            return self.fetch(call, scope).await;
        }
        let key = match key {
            Some(k) => k.to_string(),
            None => format!("{}|{}", call.info.name, Value::Array(call.params())),
        };
        let waiting = {
            let Ok(mut inflight) = self.inflight.lock() else {
                return self.fetch(call, scope).await;
            };
            match inflight.get_mut(&key) {
                Some(followers) => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    followers.push(tx);
                    Some(rx)
                }
                None => {
                    inflight.insert(key.clone(), Vec::new());
                    None
                }
            }
        };
        if let Some(rx) = waiting {
            self.metrics.shared_read(call.method());
            // The first reader gave up (its wallet left): ask for ourselves.
            return match rx.await {
                Ok(answer) => answer.map(|raw| Routed {
                    raw,
                    block: None,
                    // The first reader files the answer; a follower does not again.
                    uncorroborated: true,
                }),
                Err(_) => self.fetch(call, scope).await,
            };
        }
        let leader = Leader {
            core: self,
            key,
            finished: false,
        };
        let res = self.fetch(call, scope).await;
        for tx in leader.finish() {
            let _ = tx.send(res.as_ref().map(|r| r.raw.clone()).map_err(Clone::clone));
        }
        res
    }

    /// Checks the transaction an `id_from_pos` answer of `up` names for position `pos`
    /// ([`check_position_tx`]), read through [`Core::read`] like a wallet's
    /// `transaction.get`. When no upstream gives it, the upstream that named it is asked
    /// itself: naming a transaction it cannot produce proves its answer false. Transport
    /// failures are not held against it.
    async fn confirm_position(
        &self,
        up: &Arc<Upstream>,
        client: &Client,
        pos: u32,
        answer: &RawValue,
    ) -> Result<(), ClientError> {
        let refused =
            |why: &str| ClientError::Protocol(format!("id_from_pos answer refused: {why}"));
        let Some(txid) = position_txid(answer) else {
            return Err(refused("no txid"));
        };
        let tx_call = self
            .internal_call("blockchain.transaction.get", vec![json!(txid.to_string())])
            .map_err(ClientError::Rpc)?;
        let tx = match self.read(&tx_call).await {
            Ok(tx) => tx,
            Err(_) => {
                let tracker = self.pool.tracker();
                let asked = self
                    .pool
                    .ask(up, client, tx_call.method(), tx_call.params(), |r| {
                        crate::verify::check(tracker, &tx_call, r)
                    })
                    .await;
                match asked {
                    Ok(tx) => tx,
                    Err(ClientError::Rpc(_)) => {
                        self.pool.penalize(up, Reason::BadMerkle);
                        return Err(refused("it names a transaction nobody has"));
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        match check_position_tx(pos, &tx) {
            Verdict::False(e) => {
                self.pool.penalize(up, Reason::from(&e));
                Err(refused(&e.to_string()))
            }
            Verdict::Unverifiable(why) => Err(refused(&why)),
            Verdict::Proven | Verdict::ProvenIn(_) => Ok(()),
        }
    }

    /// Waits (up to [`IN_STEP_PATIENCE`]) for the verified chain to reach `height`; true once
    /// it has. An honest upstream may list a block its tip notification has not brought yet.
    async fn verified_up_to(&self, height: u32) -> bool {
        let tracker = self.pool.tracker();
        if tracker.tip().height >= height {
            return true;
        }
        let mut tips = tracker.tip_watch();
        let reached = tokio::time::timeout(
            IN_STEP_PATIENCE,
            tips.wait_for(|t| t.as_ref().is_some_and(|t| t.height >= height)),
        )
        .await;
        matches!(reached, Ok(Ok(_)))
    }

    /// The entries of `entries` not proven before in the block that is at their height now
    /// (one look at the chain for them all).
    fn not_yet_proven(&self, entries: Vec<(bitcoin::Txid, u32)>) -> Vec<(bitcoin::Txid, u32)> {
        let Ok(proven) = self.proven.lock() else {
            return entries;
        };
        if proven.is_empty() {
            return entries;
        }
        self.pool.tracker().with_chain(|chain| {
            entries
                .into_iter()
                .filter(|e| proven.get(e).map_or(true, |b| chain.hash(e.1) != Some(*b)))
                .collect()
        })
    }

    /// Remembers that `txid` was proven in the block at `height` on the verified chain now,
    /// unless the chain reorganised since `reorgs` (the proof may have been of another block).
    fn note_proven(&self, txid: bitcoin::Txid, height: u32, reorgs: u64) {
        let tracker = self.pool.tracker();
        let Some(block) = tracker.with_chain(|c| c.hash(height)) else {
            return;
        };
        if tracker.reorgs() != reorgs {
            return;
        }
        if let Ok(mut proven) = self.proven.lock() {
            if proven.len() >= PROVEN_ENTRIES {
                proven.clear();
            }
            proven.insert((txid, height), block);
        }
    }

    /// The merkle proof of `txid` in the verified block at `height`, read (and cached) like a
    /// wallet's `get_merkle`, from the upstreams `scope` allows.
    async fn prove_entry(
        &self,
        txid: bitcoin::Txid,
        height: u32,
        scope: Scope<'_>,
    ) -> Result<Box<RawValue>, RpcError> {
        let call = self.internal_call(
            "blockchain.transaction.get_merkle",
            vec![json!(txid.to_string()), json!(height)],
        )?;
        let _permit = self
            .proof_permits
            .acquire()
            .await
            .map_err(|_| RpcError::internal("shutting down"))?;
        let reorgs = self.pool.tracker().reorgs();
        let proof = self.read_in(&call, scope).await?;
        self.note_proven(txid, height, reorgs);
        Ok(proof)
    }

    /// The set of upstreams a scripthash call goes to: its subscription's, when it has one
    /// (otherwise the router takes the scripthash's default set).
    fn set_of(&self, call: &Call) -> Option<Set> {
        call.scripthash().and_then(|sh| self.hub.set_of(sh))
    }

    /// Routes a call (an `id_from_pos` answer confirmed by its transaction, a history's
    /// confirmed entries proven), and its fallback when upstreams do not know the method.
    async fn fetch(&self, call: &Call, scope: Scope<'_>) -> Result<Routed, RpcError> {
        // A scope tied to a scripthash (a history's proofs) keeps its set; otherwise the call's
        // own scripthash's, when it has a subscription.
        let scope = match scope.scripthash {
            Some(_) => scope,
            None => Scope {
                set: self.set_of(call),
                ..scope
            },
        };
        let res = match (call.info.check, &call.args) {
            (Check::TxAtPosition, Args::IdFromPos { pos, .. }) => {
                let confirm = PositionConfirm {
                    core: self,
                    pos: *pos,
                };
                self.router.route_with(call, &confirm, scope).await
            }
            (Check::History, Args::ScriptHash(sh)) if self.cfg.verify.prove_history => {
                // A vote proves the answer it decides; any other policy each answer.
                let each = call.policy != Policy::Quorum;
                let proof = HistoryProof::new(self, sh, scope.set, scope.links, each);
                self.router.route_with(call, &proof, scope).await
            }
            _ => self.router.route_with(call, &NoConfirm, scope).await,
        };
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
        let answer = match fallback {
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
                let history = other("blockchain.scripthash.get_history", args)?;
                let h = self
                    .router
                    .route_with(&history, &NoConfirm, scope)
                    .await?
                    .raw;
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
        };
        answer.map(composed)
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
                in_step_waits: rs.in_step_waits.load(Ordering::Relaxed),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(v: Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(&v).unwrap()
    }

    const A: &str = "aa00000000000000000000000000000000000000000000000000000000000000";
    const B: &str = "bb00000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn the_confirmed_entries_of_a_history_are_proven_once_each() {
        let h = raw(json!([
            {"height": 5, "tx_hash": B},
            {"height": 3, "tx_hash": A},
            {"height": 5, "tx_hash": B},
            {"height": 0, "tx_hash": A, "fee": 100},
            {"height": -1, "tx_hash": B, "fee": 100},
        ]));
        let entries = confirmed_entries(&h).unwrap();
        let got: Vec<(String, u32)> = entries.iter().map(|(t, h)| (t.to_string(), *h)).collect();
        assert_eq!(got, vec![(A.to_string(), 3), (B.to_string(), 5)]);
        assert!(confirmed_entries(&raw(json!([]))).unwrap().is_empty());
    }

    #[test]
    fn a_height_no_block_can_have_is_refused_not_taken_for_unconfirmed() {
        let h = raw(json!([{"height": 1u64 << 40, "tx_hash": A}]));
        assert!(confirmed_entries(&h).is_err());
        assert!(confirmed_entries(&raw(json!({"not": "a history"}))).is_err());
    }
}
