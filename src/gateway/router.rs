//! Per-method routing: which upstreams a wallet's request goes to, and which answer wins.
//!
//! - `fastest`: the best-scored upstream, hedged to the next one when it is slower than its
//!   own recent p90 latency; idempotent reads that fail or time out are retried elsewhere.
//! - `quorum`: ask k upstreams at once and answer what a majority says; disagreements counted.
//! - `median`: ask every active upstream and answer the median (fee estimates).
//! - `broadcast`: send a transaction to every active upstream; success if any accepts it
//!   ("already known" counts as success).
//!
//! Every request goes through the pool's one checked call ([`Pool::ask`]) with the call's
//! answer check ([`crate::verify::check`]); what "agree" means in a vote is
//! [`super::vote::vote_key`].
//!
//! Two things can stand between a checked answer and the wallet. A [`Confirm`] step the caller
//! supplies, run on each answer (`Core::read` fetches the transaction an `id_from_pos` answer
//! names); an answer it refuses counts as that upstream's failure and the next one is asked.
//! And corroboration ([`crate::verify::corroboration`]): a transaction whose witness matters
//! is answered once a second upstream returned the same bytes; on a mismatch more upstreams
//! are asked and a strict majority of at least two decides, the others penalised
//! (`Reason::BadWitness`). When only one upstream could answer, its answer is served but
//! marked [`Routed::uncorroborated`], so it is never cached.

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::value::RawValue;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::broadcast::{broadcast_verdict, is_already_known, most_common, txid_of_hex};
use super::isolation::Links;
use super::pool::Pool;
use super::privacy::Set;
use super::upstream::Upstream;
use super::vote::{confirmed_key, median_value, settle, tally, vote_key, Ballot};
use crate::client::{Client, ClientError};
use crate::metrics::Metrics;
use crate::protocol::error::{DAEMON_ERROR, EXCESSIVE_RESOURCE_USAGE, SERVER_BUSY};
use crate::protocol::{Args, Call, Policy, RpcError};
use crate::verify::{corroboration, ProvenBlock, Reason};

/// Counters the router keeps (exported as metrics).
#[derive(Debug, Default)]
pub struct RouterStats {
    /// Hedged requests sent.
    pub hedges: AtomicU64,
    /// Retries after an upstream error or timeout.
    pub retries: AtomicU64,
    /// Quorum reads whose answers disagreed.
    pub disagreements: AtomicU64,
    /// Reads that found no upstream able to answer and waited for one to come into step.
    pub in_step_waits: AtomicU64,
}

/// Routes requests to upstreams.
pub struct Router {
    pool: Arc<Pool>,
    metrics: Arc<Metrics>,
    hedge_min: Duration,
    hedge_max: Duration,
    quorum: usize,
    /// Counters.
    pub stats: RouterStats,
}

/// The error a wallet sees when no upstream could answer.
pub fn unavailable(reason: &str) -> RpcError {
    RpcError::new(DAEMON_ERROR, format!("{UNAVAILABLE}{reason}"))
}

/// True for the error [`unavailable`] makes: no upstream gave an answer of its own (they
/// failed to answer, or their answers failed verification).
pub fn is_unavailable(e: &RpcError) -> bool {
    e.code == DAEMON_ERROR && e.message.starts_with(UNAVAILABLE)
}

/// How [`unavailable`] errors begin.
const UNAVAILABLE: &str = "no upstream could answer: ";

fn client_error_to_rpc(e: ClientError) -> RpcError {
    match e {
        ClientError::Rpc(e) => e,
        other => unavailable(&other.to_string()),
    }
}

/// True when an upstream's error says nothing about the request itself, so another upstream
/// may answer it: transport failures, timeouts, throttling and internal errors.
fn worth_retrying(e: &ClientError) -> bool {
    match e {
        ClientError::Rpc(r) => {
            matches!(
                r.code,
                SERVER_BUSY | EXCESSIVE_RESOURCE_USAGE | -32603 | DAEMON_ERROR
            ) || r.message.contains("not found")
                || r.message.contains("No such")
        }
        _ => true,
    }
}

/// Where a wallet's read may go: the scripthash's upstream set under `[privacy] mode =
/// "spread"` (its subscription's; `None`: its default set), and the wallet connection's own
/// upstream connections under `isolated` (`None`: the pool's).
///
/// A call that names no scripthash (a merkle proof of one of its history's entries) may be tied
/// to one (`scripthash`), and kept to its set and the one upstream that steps in (`strict`).
#[derive(Clone, Copy, Default)]
pub struct Scope<'a> {
    /// The scripthash's set.
    pub set: Option<Set>,
    /// The wallet connection's own upstream connections.
    pub links: Option<&'a Arc<Links>>,
    /// The scripthash whose keyed order and set the call goes by; a scripthash call's own when
    /// `None`.
    pub scripthash: Option<&'a str>,
    /// Only the set and the one upstream that steps in, never further (under `spread`), and
    /// each of them is asked before the call fails: one member's refusal is not the answer.
    pub strict: bool,
}

/// Upstreams to ask, in order, and how many of them are within reach without need.
type Candidates = (Vec<(Arc<Upstream>, Client)>, usize);

/// A vote that ended without a majority (the error the wallet gets if it stays so).
struct NoMajority(RpcError);

/// How long a vote without a winner is taken again, as upstreams reach the same state, before
/// the wallet gets an error.
pub const VOTE_PATIENCE: Duration = Duration::from_secs(5);

/// How long a read waits for an upstream to come into step when none is (right after a kill,
/// or a block or reorg that no upstream has followed yet) before the wallet gets an error.
pub const IN_STEP_PATIENCE: Duration = VOTE_PATIENCE;

/// True for a ballot at the chain state a vote was decided at (any, when it was decided
/// across states).
fn decided_at(state: Option<u32>, height: u32) -> bool {
    match state {
        None => true,
        Some(h) => h == height,
    }
}

/// A checked answer and the block it was proven against, if a proof.
type Answer = (Box<RawValue>, Option<ProvenBlock>);

/// A routed answer and what stands behind it.
#[derive(Debug)]
pub struct Routed {
    /// The answer, in the wording of the upstream that gave it.
    pub raw: Box<RawValue>,
    /// For a proof, the block of the verified chain it was checked against.
    pub block: Option<ProvenBlock>,
    /// The answer needed a second upstream's identical answer
    /// ([`crate::verify::corroboration`]) and only one upstream could give it: it may be
    /// served, never cached.
    pub uncorroborated: bool,
}

impl Routed {
    fn new(call: &Call, (raw, block): Answer, backers: usize) -> Routed {
        let uncorroborated = backers < 2 && corroboration(call, &raw).is_some();
        Routed {
            raw,
            block,
            uncorroborated,
        }
    }
}

/// A step an answer must pass after its check before it counts, supplied by whoever routes
/// the call: given the upstream that answered, its connection and the answer. An error counts
/// as that upstream's failure (the router asks the next one); a step that proves the answer
/// false penalises the upstream itself.
pub trait Confirm: Sync {
    /// Confirms `raw`, the checked answer of `up`.
    fn confirm<'a>(
        &'a self,
        up: &'a Arc<Upstream>,
        client: &'a Client,
        raw: &'a RawValue,
    ) -> BoxFuture<'a, Result<(), ClientError>>;

    /// Proves an answer a vote decided before it is served (the default: nothing to prove).
    /// A refusal fails the vote: its backers are penalised when it says so, and the vote is
    /// taken again.
    fn prove<'a>(&'a self, _raw: &'a RawValue) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async { Ok(()) })
    }
}

/// Why [`Confirm::prove`] refused a decided answer.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// What the wallet gets if no other answer passes.
    pub error: RpcError,
    /// When the answer is shown false: the reason its backers are penalised for.
    pub blame: Option<Reason>,
}

/// A voted answer that won, before [`Confirm::prove`]: who gave it, and who lost to it (to be
/// penalised only once it is proven).
struct Decided {
    routed: Routed,
    backers: Vec<Arc<Upstream>>,
    outvoted: Vec<Arc<Upstream>>,
}

/// No step beyond the check.
pub struct NoConfirm;

impl Confirm for NoConfirm {
    fn confirm<'a>(
        &'a self,
        _: &'a Arc<Upstream>,
        _: &'a Client,
        _: &'a RawValue,
    ) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(async { Ok(()) })
    }
}

/// What the answers gathered so far for a corroborated read decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Corroborated {
    /// At least two upstreams and a strict majority gave this answer (its index among the
    /// keys given).
    Agreed(usize),
    /// Not decided yet: ask another upstream (with none left and no answer: the read
    /// failed).
    AskMore,
    /// Nobody else could answer: the one answer there is (served, not cached).
    Alone,
    /// Answers differ and no majority can form.
    Split,
}

/// Decides a corroborated read from the keys of the answers so far (in arrival order);
/// `done` when no other upstream can be asked.
pub fn corroborated(keys: &[&str], done: bool) -> Corroborated {
    let count = |k: &str| keys.iter().filter(|x| **x == k).count();
    if let Some(i) = keys
        .iter()
        .position(|k| count(k) >= 2 && count(k) * 2 > keys.len())
    {
        return Corroborated::Agreed(i);
    }
    match (done, keys.len()) {
        (false, _) | (_, 0) => Corroborated::AskMore,
        (true, 1) => Corroborated::Alone,
        (true, _) => Corroborated::Split,
    }
}

/// Keeps the most telling error: an upstream's own answer beats a transport failure.
fn keep_telling(slot: &mut Option<ClientError>, e: ClientError) {
    match (&*slot, &e) {
        (None, _) => *slot = Some(e),
        (Some(prev), ClientError::Rpc(_)) if !matches!(prev, ClientError::Rpc(_)) => {
            *slot = Some(e)
        }
        _ => {}
    }
}

impl Router {
    /// A router over a pool.
    pub fn new(
        pool: Arc<Pool>,
        metrics: Arc<Metrics>,
        hedge_min: Duration,
        hedge_max: Duration,
        quorum: usize,
    ) -> Self {
        Router {
            pool,
            metrics,
            hedge_min,
            hedge_max,
            quorum: quorum.max(1),
            stats: RouterStats::default(),
        }
    }

    /// Routes one read or broadcast according to the call's policy; the answer alone.
    pub async fn route(&self, call: &Call) -> Result<Box<RawValue>, RpcError> {
        Ok(self
            .route_with(call, &NoConfirm, Scope::default())
            .await?
            .raw)
    }

    /// Routes one read or broadcast according to the call's policy, every read answer passing
    /// `confirm` after its check, within `scope` (see [`Scope`]).
    pub async fn route_with(
        &self,
        call: &Call,
        confirm: &dyn Confirm,
        scope: Scope<'_>,
    ) -> Result<Routed, RpcError> {
        match call.policy {
            Policy::Fastest | Policy::Local => self.fastest(call, confirm, scope).await,
            Policy::Quorum => self.quorum(call, confirm, scope).await,
            Policy::Median => self.median(call, confirm, scope).await,
            Policy::Broadcast => {
                let raw = self.broadcast(call, scope).await?;
                Ok(Routed {
                    raw,
                    block: None,
                    uncorroborated: false,
                })
            }
        }
    }

    /// One request to one ranked upstream through the pool's checked call, with the call's
    /// answer check, then `confirm`.
    async fn ask(
        &self,
        (up, client): (Arc<Upstream>, Client),
        call: &Call,
        confirm: &dyn Confirm,
        links: Option<&Arc<Links>>,
    ) -> (Arc<Upstream>, Result<Answer, ClientError>) {
        // Under `isolated`: the wallet connection's own connection to this upstream.
        let client = match links {
            Some(links) => match Box::pin(links.client(&up)).await {
                Ok(c) => c,
                Err(e) => return (up, Err(e)),
            },
            None => client,
        };
        let tracker = self.pool.tracker();
        let mut block = None;
        let res = self
            .pool
            .ask(&up, &client, call.method(), call.params(), |raw| {
                let verdict = crate::verify::check(tracker, call, raw);
                block = verdict.block();
                verdict
            })
            .await;
        let res = match res {
            Ok(raw) => match confirm.confirm(&up, &client, &raw).await {
                Ok(()) => Ok((raw, block)),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        (up, res)
    }

    /// The upstreams that may answer `call`, in the order to ask them, and how many of them
    /// are within reach without need (for a scripthash under `spread`: its set, see
    /// [`Pool::ranked_for_scripthash`]; otherwise all). A [`Scope::strict`] scope keeps to
    /// the set and the one upstream that steps in.
    fn candidates(&self, call: &Call, scope: Scope<'_>) -> Candidates {
        let scripthash = match (scope.scripthash, &call.args) {
            (Some(sh), _) => Some(sh),
            (None, Args::ScriptHash(sh)) => Some(sh.as_str()),
            _ => None,
        };
        match scripthash {
            Some(sh) => {
                let (mut ranked, reach) =
                    self.pool
                        .ranked_for_scripthash(call.info.tip, sh, scope.set);
                if scope.strict && self.pool.privacy().spread() {
                    ranked.truncate(reach.saturating_add(1));
                }
                (ranked, reach)
            }
            None => {
                let ranked = self.pool.ranked_for(call.info.tip);
                let n = ranked.len();
                (ranked, n)
            }
        }
    }

    /// [`Router::candidates`]; while there are none, waits for one for up to
    /// [`IN_STEP_PATIENCE`], woken by pool events (a connection, a tip, a standing change),
    /// and at least every quarter second. Empty when none came.
    async fn candidates_or_wait(&self, call: &Call, scope: Scope<'_>) -> Candidates {
        let deadline = tokio::time::Instant::now() + IN_STEP_PATIENCE;
        let mut events = self.pool.events();
        let mut waited = false;
        loop {
            let ranked = self.candidates(call, scope);
            let now = tokio::time::Instant::now();
            if !ranked.0.is_empty() || now >= deadline {
                return ranked;
            }
            if !waited {
                waited = true;
                self.stats.in_step_waits.fetch_add(1, Ordering::Relaxed);
            }
            let wake = deadline.min(now + Duration::from_millis(250));
            let _ = tokio::time::timeout_at(wake, events.recv()).await;
        }
    }

    fn hedge_delay(&self, up: &Upstream) -> Duration {
        up.p90()
            .unwrap_or(self.hedge_max / 2)
            .mul_f64(1.5)
            .clamp(self.hedge_min, self.hedge_max)
    }

    /// `fastest`: best upstream first; the next one joins when the first is slow (hedge) or
    /// fails (retry). The first good answer wins; losers are cancelled. An answer that needs
    /// corroboration ([`crate::verify::corroboration`]) wins once a second upstream gave the
    /// same (see [`corroborated`]); an answer proven by itself ends the vote at once, and
    /// those that differ from the winner are penalised.
    pub async fn fastest(
        &self,
        call: &Call,
        confirm: &dyn Confirm,
        scope: Scope<'_>,
    ) -> Result<Routed, RpcError> {
        let (ranked, reach) = self.candidates_or_wait(call, scope).await;
        if ranked.is_empty() {
            return Err(unavailable("no upstream is connected and in step"));
        }
        let mut next = 0usize;
        let mut inflight = FuturesUnordered::new();
        let launch = |next: &mut usize, inflight: &mut FuturesUnordered<_>| {
            inflight.push(self.ask(ranked[*next].clone(), call, confirm, scope.links));
            *next += 1;
        };
        launch(&mut next, &mut inflight);
        let hedge = tokio::time::sleep(self.hedge_delay(&ranked[0].0));
        tokio::pin!(hedge);
        let mut hedged = false;
        let mut first_error: Option<ClientError> = None;
        // Answers waiting for corroboration, with what a second answer must equal.
        let mut ballots: Vec<(Arc<Upstream>, String, Answer)> = Vec::new();
        loop {
            tokio::select! {
                done = inflight.next() => {
                    let Some((up, res)) = done else {
                        break;
                    };
                    match res {
                        Ok(answer) => {
                            let Some(key) = corroboration(call, &answer.0) else {
                                // Proven by itself: it is the answer. Answers waiting for
                                // corroboration differ from it (they carry a witness it
                                // cannot have) and lose.
                                ballots.push((up, String::new(), answer));
                                let winner = ballots.len() - 1;
                                return Ok(self.settle_ballots(call, ballots, winner));
                            };
                            ballots.push((up, key, answer));
                            let keys: Vec<&str> = ballots.iter().map(|b| b.1.as_str()).collect();
                            if let Corroborated::Agreed(i) = corroborated(&keys, false) {
                                return Ok(self.settle_ballots(call, ballots, i));
                            }
                            if inflight.is_empty() && next < ranked.len() {
                                launch(&mut next, &mut inflight);
                            }
                        }
                        Err(e) => {
                            // In a strict scope every upstream it allows is asked before the
                            // read fails: one member's refusal is not the answer.
                            let retry = worth_retrying(&e) || !ballots.is_empty() || scope.strict;
                            keep_telling(&mut first_error, e);
                            if retry && next < ranked.len() {
                                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                                launch(&mut next, &mut inflight);
                            } else if inflight.is_empty() {
                                break;
                            }
                        }
                    }
                }
                // A slow upstream is hedged within the set and the one upstream that steps
                // in for it (for a scripthash under `spread`).
                _ = &mut hedge, if !hedged && next < ranked.len().min(reach.saturating_add(1)) => {
                    hedged = true;
                    self.stats.hedges.fetch_add(1, Ordering::Relaxed);
                    launch(&mut next, &mut inflight);
                }
            }
        }
        let keys: Vec<&str> = ballots.iter().map(|b| b.1.as_str()).collect();
        match corroborated(&keys, true) {
            Corroborated::Agreed(i) => Ok(self.settle_ballots(call, ballots, i)),
            Corroborated::Alone => {
                let (_, _, answer) = ballots.remove(0);
                Ok(Routed::new(call, answer, 1))
            }
            Corroborated::Split => {
                tracing::warn!(
                    method = call.method(),
                    answers = ballots.len(),
                    "upstreams disagree about a transaction's witness; no majority"
                );
                Err(RpcError::new(
                    DAEMON_ERROR,
                    "upstreams disagree about the transaction's witness and no majority can \
                     be formed; try again",
                ))
            }
            Corroborated::AskMore => Err(first_error
                .map(client_error_to_rpc)
                .unwrap_or_else(|| unavailable("every upstream failed"))),
        }
    }

    /// The answer of ballot `winner`; the upstreams whose answer differs from it (in its
    /// witness: every ballot passed the txid check) are penalised.
    fn settle_ballots(
        &self,
        call: &Call,
        mut ballots: Vec<(Arc<Upstream>, String, Answer)>,
        winner: usize,
    ) -> Routed {
        let (_, key, answer) = ballots.swap_remove(winner);
        let mut backers = 1;
        for (up, k, _) in ballots {
            if k == key {
                backers += 1;
            } else {
                tracing::warn!(
                    upstream = %up.name(),
                    method = call.method(),
                    "a transaction with another witness than the one that won"
                );
                self.pool.penalize(&up, Reason::BadWitness);
            }
        }
        Routed::new(call, answer, backers)
    }

    /// `quorum`: asks `max(quorum, 2)` upstreams in step at once and answers as soon as they
    /// all give the same answer. An upstream that is slow is hedged (the next one is asked too,
    /// as for `fastest`); one that fails is replaced by the next. As soon as two answers
    /// disagree, every upstream in step is asked and [`tally`] decides: an answer wins only when
    /// at least two upstreams at the same chain state give it, so no single upstream (the
    /// fastest, or the first to announce a block) decides; the upstreams outvoted on that
    /// state are penalised. What "the same answer" means is the call's vote rule
    /// ([`vote_key`]): balances, histories and unspent lists whole, unconfirmed entries
    /// included.
    ///
    /// A vote without a winner is usually a block or a transaction that reached some upstreams
    /// before others, or too few upstreams in step: it is taken again as upstreams move (a pool
    /// event, or a quarter second) for up to [`VOTE_PATIENCE`]. If the upstreams then agree on
    /// the confirmed part but their mempools still differ, the answer keeps the unconfirmed
    /// entries a majority reports ([`super::vote::settle`]); otherwise the wallet gets an error
    /// rather than an answer that may be false.
    ///
    /// A decided answer must still pass [`Confirm::prove`] (a history: every confirmed entry's
    /// merkle proof) before it is served and before the outvoted are penalised: one it refuses
    /// costs its backers a penalty and the vote is taken again (within the same patience), so
    /// upstreams that agree on an unprovable answer never get an honest minority penalised.
    pub async fn quorum(
        &self,
        call: &Call,
        confirm: &dyn Confirm,
        scope: Scope<'_>,
    ) -> Result<Routed, RpcError> {
        let deadline = tokio::time::Instant::now() + VOTE_PATIENCE;
        let mut events = self.pool.events();
        let mut round = 0;
        let mut refused: Option<RpcError> = None;
        loop {
            round += 1;
            let last = tokio::time::Instant::now() >= deadline;
            // A round never outlasts the vote's patience by more than a hedge.
            let bound =
                deadline.saturating_duration_since(tokio::time::Instant::now()) + self.hedge_max;
            let once = tokio::time::timeout(bound, self.quorum_once(call, last, confirm, scope))
                .await
                .unwrap_or_else(|_| {
                    Err(NoMajority(unavailable(
                        "upstreams in step did not answer in time",
                    )))
                });
            match once {
                Ok(Ok(decided)) => match confirm.prove(&decided.routed.raw).await {
                    Ok(()) => {
                        for up in &decided.outvoted {
                            self.pool.penalize(up, Reason::VoteMinority);
                        }
                        return Ok(decided.routed);
                    }
                    Err(refusal) => {
                        tracing::warn!(
                            method = call.method(),
                            backers = decided.backers.len(),
                            blamed = refusal.blame.is_some(),
                            "a voted answer was refused"
                        );
                        tracing::debug!(
                            method = call.method(),
                            "refused: {}",
                            refusal.error.message
                        );
                        if let Some(reason) = refusal.blame {
                            for up in &decided.backers {
                                self.pool.penalize(up, reason);
                            }
                        }
                        if last || tokio::time::Instant::now() >= deadline {
                            return Err(refusal.error);
                        }
                        refused = Some(refusal.error);
                    }
                },
                Ok(Err(e)) => return Err(e),
                Err(NoMajority(e)) if last => return Err(refused.unwrap_or(e)),
                Err(NoMajority(e)) => {
                    tracing::debug!(method = call.method(), round, "no vote yet: {e}");
                    let pause = deadline
                        .saturating_duration_since(tokio::time::Instant::now())
                        .min(Duration::from_millis(250));
                    let _ = tokio::time::timeout(pause, events.recv()).await;
                }
            }
        }
    }

    async fn quorum_once(
        &self,
        call: &Call,
        last: bool,
        confirm: &dyn Confirm,
        scope: Scope<'_>,
    ) -> Result<Result<Decided, RpcError>, NoMajority> {
        let (ranked, reach) = self.candidates(call, scope);
        if ranked.is_empty() {
            return Err(NoMajority(unavailable(
                "no upstream is connected and in step",
            )));
        }
        if ranked.len() < 2 {
            return Err(NoMajority(unavailable(
                "a voted answer needs two upstreams in step, and only one is",
            )));
        }
        let need = self.quorum.max(2).min(ranked.len());
        let order: Vec<usize> = ranked.iter().map(|(u, _)| u.id).collect();
        let mut next = 0usize;
        let mut inflight = FuturesUnordered::new();
        let launch = |next: &mut usize, inflight: &mut FuturesUnordered<_>| {
            inflight.push(self.ask(ranked[*next].clone(), call, confirm, scope.links));
            *next += 1;
        };
        while next < need {
            launch(&mut next, &mut inflight);
        }
        let hedge = tokio::time::sleep(self.hedge_delay(&ranked[0].0));
        tokio::pin!(hedge);
        let mut first_error = None;
        // Every answer: the upstream, its wording (and the block a proof was checked against),
        // its chain state when it answered.
        // Every answer: the upstream, its answer, its chain state, and the answer's vote key.
        let mut answers: Vec<(Arc<Upstream>, Answer, u32, String)> = Vec::new();
        let mut keys: Vec<String> = Vec::new();
        // Once answers disagree, the others get a bounded time to join the vote.
        let mut cutoff: Option<tokio::time::Instant> = None;
        loop {
            let until_cutoff = async {
                match cutoff {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => futures::future::pending().await,
                }
            };
            tokio::select! {
                done = inflight.next() => {
                    let Some((up, res)) = done else { break };
                    match res {
                        Ok(answer) => {
                            let height = up.tip().map(|t| t.height).unwrap_or(0);
                            let key = vote_key(call, &answer.0);
                            if !keys.contains(&key) {
                                keys.push(key.clone());
                            }
                            answers.push((up, answer, height, key));
                            if keys.len() == 1 && answers.len() >= need {
                                break;
                            }
                            if keys.len() > 1 {
                                // A disagreement: everyone votes, within a bounded time (for
                                // a scripthash under `spread`: its set and the one upstream
                                // that steps in for it, enough to outvote one liar).
                                while next < ranked.len().min(reach.saturating_add(1)) {
                                    launch(&mut next, &mut inflight);
                                }
                                cutoff.get_or_insert_with(|| {
                                    tokio::time::Instant::now() + self.hedge_max
                                });
                            }
                        }
                        Err(e) => {
                            keep_telling(&mut first_error, e);
                            if next < ranked.len() {
                                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                                launch(&mut next, &mut inflight);
                            }
                        }
                    }
                }
                _ = &mut hedge, if next < ranked.len().min(reach.saturating_add(1)) => {
                    self.stats.hedges.fetch_add(1, Ordering::Relaxed);
                    launch(&mut next, &mut inflight);
                    hedge.as_mut().reset(tokio::time::Instant::now() + self.hedge_delay(&ranked[0].0));
                }
                _ = until_cutoff => {
                    // No answer has two backers yet (a member stalled while another lied):
                    // the next upstream in line votes too, one at a time, before giving up.
                    let backed = keys.iter().any(|k| {
                        answers.iter().filter(|(_, _, _, key)| key == k).count() >= 2
                    });
                    if backed || next >= ranked.len() {
                        break;
                    }
                    launch(&mut next, &mut inflight);
                    cutoff = Some(tokio::time::Instant::now() + self.hedge_max);
                }
            }
        }
        if answers.is_empty() {
            return Err(NoMajority(
                first_error
                    .map(client_error_to_rpc)
                    .unwrap_or_else(|| unavailable("every upstream failed")),
            ));
        }
        // The best-ranked upstream's wording of an answer comes first.
        answers.sort_by_key(|(u, _, _, _)| order.iter().position(|id| *id == u.id));
        if keys.len() > 1 {
            self.stats.disagreements.fetch_add(1, Ordering::Relaxed);
            self.metrics.event(
                "disagreement",
                None,
                format!(
                    "upstreams gave {} different answers to one read",
                    keys.len()
                ),
            );
            tracing::warn!(
                method = call.method(),
                answers = answers.len(),
                distinct = keys.len(),
                "upstreams disagree"
            );
        }
        let ballots = |key: &dyn Fn(&RawValue, &str) -> String| -> Vec<Ballot> {
            answers
                .iter()
                .map(|(u, (raw, _), height, whole)| Ballot {
                    upstream: u.id,
                    height: *height,
                    key: key(raw, whole),
                })
                .collect()
        };
        let whole = ballots(&|_, whole| whole.to_string());
        let outcome = tally(&whole);
        if let Some(winner) = outcome.winner {
            let won = |b: &Ballot| b.key == winner && decided_at(outcome.height, b.height);
            let backers = whole.iter().filter(|b| won(b)).count();
            let chosen = answers
                .iter()
                .zip(&whole)
                .find(|(_, b)| won(b))
                .map(|((_, answer, _, _), _)| answer.clone());
            // Outvoted upstreams are penalised only when their confirmed part differs: honest
            // mempools differ for a while after a transaction (one server saw it first).
            let winning_confirmed = chosen.as_ref().map(|(raw, _)| confirmed_key(call, raw));
            let outvoted = answers
                .iter()
                .filter(|(up, (raw, _), _, _)| {
                    outcome.outvoted.contains(&up.id)
                        && winning_confirmed.as_deref() != Some(confirmed_key(call, raw).as_str())
                })
                .map(|(up, _, _, _)| up.clone())
                .collect();
            let backed_by = answers
                .iter()
                .zip(&whole)
                .filter(|(_, b)| won(b))
                .map(|((up, _, _, _), _)| up.clone())
                .collect();
            return Ok(chosen
                .map(|answer| Decided {
                    routed: Routed::new(call, answer, backers),
                    backers: backed_by,
                    outvoted,
                })
                .ok_or_else(|| unavailable("every upstream failed")));
        }
        if last {
            // Honest mempools may still differ: settle on the confirmed part.
            let confirmed = ballots(&|raw, _| confirmed_key(call, raw));
            let outcome = tally(&confirmed);
            if let Some(winner) = outcome.winner {
                let at = |b: &Ballot| decided_at(outcome.height, b.height);
                let agreed: Vec<&RawValue> = answers
                    .iter()
                    .zip(&confirmed)
                    .filter(|(_, b)| b.key == winner && at(b))
                    .map(|((_, (raw, _), _, _), _)| &**raw)
                    .collect();
                let backed_by: Vec<Arc<Upstream>> = answers
                    .iter()
                    .zip(&confirmed)
                    .filter(|(_, b)| b.key == winner && at(b))
                    .map(|((up, _, _, _), _)| up.clone())
                    .collect();
                let all: Vec<&RawValue> = answers
                    .iter()
                    .zip(&confirmed)
                    .filter(|(_, b)| at(b))
                    .map(|((_, (raw, _), _, _), _)| &**raw)
                    .collect();
                if let Some(answer) = settle(call, &agreed, &all) {
                    return Ok(Ok(Decided {
                        routed: Routed::new(call, (answer, None), agreed.len()),
                        backers: backed_by,
                        outvoted: Vec::new(),
                    }));
                }
            }
        }
        Err(NoMajority(RpcError::new(
            DAEMON_ERROR,
            "no two upstreams in step agree on this answer; try again",
        )))
    }

    /// `median`: asks every upstream in step; answers that are not fee figures fail the call's
    /// check (and the upstream is penalised); numbers are answered by their consensus
    /// ([`crate::chain::fee_consensus`]: no single upstream moves it more than twofold from
    /// the honest ones; "no estimate" wins only when most upstreams say so), objects field by
    /// field. Without a consensus an estimate is `-1` ("no estimate") and any other fee figure
    /// an error.
    pub async fn median(
        &self,
        call: &Call,
        confirm: &dyn Confirm,
        scope: Scope<'_>,
    ) -> Result<Routed, RpcError> {
        let answers: Vec<_> = self
            .candidates_or_wait(call, scope)
            .await
            .0
            .into_iter()
            .map(|target| self.ask(target, call, confirm, scope.links))
            .collect::<FuturesUnordered<_>>()
            .collect()
            .await;
        let mut values = Vec::new();
        let mut first_error = None;
        for (_, res) in answers {
            match res {
                Ok((raw, _)) => match serde_json::from_str::<Value>(raw.get()) {
                    Ok(v) => values.push(v),
                    Err(_) => continue,
                },
                Err(e) => keep_telling(&mut first_error, e),
            }
        }
        if values.is_empty() {
            return Err(first_error
                .map(client_error_to_rpc)
                .unwrap_or_else(|| unavailable("no upstream is connected")));
        }
        let answer = match median_value(&values) {
            Some(v) => v,
            // A fee estimate without consensus is "no estimate", as a server says it.
            None if matches!(call.args, Args::Fee { .. }) => Value::from(-1),
            None => {
                return Err(RpcError::new(
                    DAEMON_ERROR,
                    "upstreams disagree on this fee figure; try again",
                ))
            }
        };
        let raw = serde_json::value::to_raw_value(&answer)
            .map_err(|e| RpcError::internal(e.to_string()))?;
        // A median stands for no one upstream's bytes: never corroborated.
        Ok(Routed::new(call, (raw, None), 1))
    }

    /// `broadcast`: sends to every connected upstream (so the transaction reaches them all),
    /// and answers by what the upstreams in step say ([`broadcast_verdict`]): success, with the
    /// txid computed here, once at least two of them accepted it (or already had it) and
    /// rejections cannot outnumber acceptances; otherwise the rejection they gave. One
    /// upstream's word is never enough, since anyone can compute a txid.
    pub async fn broadcast(
        &self,
        call: &Call,
        scope: Scope<'_>,
    ) -> Result<Box<RawValue>, RpcError> {
        let ranked = self.candidates_or_wait(call, scope).await.0;
        if ranked.is_empty() {
            return Err(unavailable("no upstream is connected"));
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(ranked.len());
        let mut pending = 0usize;
        for (up, client) in ranked {
            pending += usize::from(up.in_step());
            let tx = tx.clone();
            let call = call.clone();
            let pool = self.pool.clone();
            let links = scope.links.cloned();
            tokio::spawn(async move {
                let in_step = up.in_step();
                let client = match &links {
                    Some(links) => Box::pin(links.client(&up)).await,
                    None => Ok(client),
                };
                let res = match client {
                    Ok(client) => {
                        pool.ask(&up, &client, call.method(), call.params(), |raw| {
                            crate::verify::check(pool.tracker(), &call, raw)
                        })
                        .await
                    }
                    Err(e) => Err(e),
                };
                let _ = tx.send((in_step, res)).await;
            });
        }
        drop(tx);
        let (mut accepted, mut rejected) = (0usize, 0usize);
        let mut rejections: Vec<RpcError> = Vec::new();
        let mut first_error = None;
        while let Some((in_step, res)) = rx.recv().await {
            pending = pending.saturating_sub(usize::from(in_step));
            match res {
                Ok(_) => accepted += usize::from(in_step),
                Err(ClientError::Rpc(e)) if is_already_known(&e) => {
                    accepted += usize::from(in_step)
                }
                Err(ClientError::Rpc(e)) => {
                    if in_step {
                        rejected += 1;
                        rejections.push(e.clone());
                    }
                    keep_telling(&mut first_error, ClientError::Rpc(e));
                }
                Err(e) => keep_telling(&mut first_error, e),
            }
            match broadcast_verdict(accepted, rejected, pending) {
                Some(true) => {
                    let raw_tx = call.params();
                    let txid = raw_tx.first().and_then(Value::as_str).and_then(txid_of_hex);
                    return match txid {
                        Some(txid) => serde_json::value::to_raw_value(&txid)
                            .map_err(|e| RpcError::internal(e.to_string())),
                        None => Err(RpcError::bad_request("not a transaction")),
                    };
                }
                Some(false) => break,
                None => {}
            }
        }
        // The rejection most upstreams in step gave, in their words.
        if let Some(e) = most_common(&rejections) {
            return Err(e);
        }
        if accepted == 1 {
            return Err(RpcError::new(
                DAEMON_ERROR,
                "only one upstream in step accepted the transaction, which does not show that \
                 the network has it; it may still propagate",
            ));
        }
        Err(first_error
            .map(client_error_to_rpc)
            .unwrap_or_else(|| unavailable("no upstream in step answered")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corroborated_answer_needs_two_and_a_majority() {
        use Corroborated::*;
        assert_eq!(corroborated(&[], true), AskMore);
        assert_eq!(corroborated(&["a"], false), AskMore);
        assert_eq!(corroborated(&["a"], true), Alone);
        assert_eq!(corroborated(&["a", "a"], false), Agreed(0));
        // A mismatch: a third decides.
        assert_eq!(corroborated(&["x", "a"], false), AskMore);
        assert_eq!(corroborated(&["x", "a"], true), Split);
        assert_eq!(corroborated(&["x", "a", "a"], false), Agreed(1));
        assert_eq!(corroborated(&["x", "a", "y"], false), AskMore);
        assert_eq!(corroborated(&["x", "a", "y"], true), Split);
        // Two of four is no strict majority.
        assert_eq!(corroborated(&["x", "x", "a", "a"], true), Split);
        assert_eq!(corroborated(&["x", "a", "a", "a", "x"], false), Agreed(1));
    }

    #[test]
    fn unavailable_errors_are_told_from_upstream_answers() {
        assert!(is_unavailable(&unavailable("every upstream failed")));
        assert!(!is_unavailable(&RpcError::new(
            DAEMON_ERROR,
            "No such mempool or blockchain transaction"
        )));
        assert!(!is_unavailable(&RpcError::new(1, "tx is not in a block")));
    }
}
