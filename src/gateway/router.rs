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

use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::pool::Pool;
use super::upstream::Upstream;
use super::vote::{median_value, tally, vote_key, Ballot};
use crate::client::{Client, ClientError};
use crate::metrics::Metrics;
use crate::protocol::error::{DAEMON_ERROR, EXCESSIVE_RESOURCE_USAGE, SERVER_BUSY};
use crate::protocol::{Call, Policy, RpcError};
use crate::verify::Reason;

/// Counters the router keeps (exported as metrics).
#[derive(Debug, Default)]
pub struct RouterStats {
    /// Hedged requests sent.
    pub hedges: AtomicU64,
    /// Retries after an upstream error or timeout.
    pub retries: AtomicU64,
    /// Quorum reads whose answers disagreed.
    pub disagreements: AtomicU64,
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
    RpcError::new(DAEMON_ERROR, format!("no upstream could answer: {reason}"))
}

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

/// A vote that ended without a majority (the error the wallet gets if it stays so).
struct NoMajority(RpcError);

/// The upstreams that gave one answer, with their wording of it.
type Voters = Vec<(Arc<Upstream>, Box<RawValue>)>;

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

    /// Routes one read or broadcast according to the call's policy.
    pub async fn route(&self, call: &Call) -> Result<Box<RawValue>, RpcError> {
        match call.policy {
            Policy::Fastest | Policy::Local => self.fastest(call).await,
            Policy::Quorum => self.quorum(call).await,
            Policy::Median => self.median(call).await,
            Policy::Broadcast => self.broadcast(call).await,
        }
    }

    /// One request to one ranked upstream through the pool's checked call, with the call's
    /// answer check.
    async fn ask(
        &self,
        (up, client): (Arc<Upstream>, Client),
        call: &Call,
    ) -> (Arc<Upstream>, Result<Box<RawValue>, ClientError>) {
        let tracker = self.pool.tracker();
        let res = self
            .pool
            .ask(&up, &client, call.method(), call.params(), |raw| {
                crate::verify::check(tracker, call, raw)
            })
            .await;
        (up, res)
    }

    fn hedge_delay(&self, up: &Upstream) -> Duration {
        up.p90()
            .unwrap_or(self.hedge_max / 2)
            .mul_f64(1.5)
            .clamp(self.hedge_min, self.hedge_max)
    }

    /// `fastest`: best upstream first; the next one joins when the first is slow (hedge) or
    /// fails (retry). The first good answer wins; losers are cancelled.
    pub async fn fastest(&self, call: &Call) -> Result<Box<RawValue>, RpcError> {
        let ranked = self.pool.ranked_for(call.info.tip);
        if ranked.is_empty() {
            return Err(unavailable("no upstream is connected and in step"));
        }
        let mut next = 0usize;
        let mut inflight = FuturesUnordered::new();
        let launch = |next: &mut usize, inflight: &mut FuturesUnordered<_>| {
            inflight.push(self.ask(ranked[*next].clone(), call));
            *next += 1;
        };
        launch(&mut next, &mut inflight);
        let hedge = tokio::time::sleep(self.hedge_delay(&ranked[0].0));
        tokio::pin!(hedge);
        let mut hedged = false;
        let mut first_error: Option<ClientError> = None;
        loop {
            tokio::select! {
                done = inflight.next() => {
                    let Some((_up, res)) = done else {
                        break;
                    };
                    match res {
                        Ok(v) => return Ok(v),
                        Err(e) => {
                            let retry = worth_retrying(&e);
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
                _ = &mut hedge, if !hedged && next < ranked.len() => {
                    hedged = true;
                    self.stats.hedges.fetch_add(1, Ordering::Relaxed);
                    launch(&mut next, &mut inflight);
                }
            }
        }
        Err(first_error
            .map(client_error_to_rpc)
            .unwrap_or_else(|| unavailable("every upstream failed")))
    }

    /// `quorum`: asks `quorum` upstreams (default 2) at once and answers as soon as that many
    /// agree. An upstream that is slow is hedged (the next one is asked too, as for
    /// `fastest`); one that fails is replaced by the next. As soon as two answers disagree,
    /// every upstream in step is asked and the answer is what a strict majority says; the
    /// upstreams in the minority are penalised. Without a majority the wallet gets an error
    /// rather than an answer that may be false. What "agree" means depends on the method:
    /// balances by their confirmed part, histories and unspent lists by their confirmed
    /// entries (mempools legitimately differ between servers), anything else byte for byte
    /// after canonical JSON.
    ///
    /// A disagreement without a majority is usually a block that reached some upstreams
    /// before others: the vote is taken again, up to three times a quarter second apart,
    /// before the wallet gets the error.
    pub async fn quorum(&self, call: &Call) -> Result<Box<RawValue>, RpcError> {
        let mut round = 0;
        loop {
            round += 1;
            match self.quorum_once(call).await {
                Err(NoMajority(e)) if round < 3 => {
                    tracing::debug!(method = call.method(), round, "no majority yet: {e}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(NoMajority(e)) => return Err(e),
                Ok(answer) => return answer,
            }
        }
    }

    async fn quorum_once(
        &self,
        call: &Call,
    ) -> Result<Result<Box<RawValue>, RpcError>, NoMajority> {
        let ranked = self.pool.ranked_for(call.info.tip);
        if ranked.is_empty() {
            return Ok(Err(unavailable("no upstream is connected and in step")));
        }
        let need = self.quorum.min(ranked.len()).max(1);
        let order: Vec<usize> = ranked.iter().map(|(u, _)| u.id).collect();
        let mut next = 0usize;
        let mut inflight = FuturesUnordered::new();
        let launch = |next: &mut usize, inflight: &mut FuturesUnordered<_>| {
            inflight.push(self.ask(ranked[*next].clone(), call));
            *next += 1;
        };
        while next < need {
            launch(&mut next, &mut inflight);
        }
        let hedge = tokio::time::sleep(self.hedge_delay(&ranked[0].0));
        tokio::pin!(hedge);
        let mut first_error = None;
        let mut votes: HashMap<String, Voters> = HashMap::new();
        let mut ok = 0usize;
        loop {
            tokio::select! {
                done = inflight.next() => {
                    let Some((up, res)) = done else { break };
                    match res {
                        Ok(raw) => {
                            ok += 1;
                            votes.entry(vote_key(call, &raw)).or_default().push((up, raw));
                            if votes.len() == 1 && ok >= need {
                                break;
                            }
                            if votes.len() > 1 {
                                // A disagreement: everyone votes.
                                while next < ranked.len() {
                                    launch(&mut next, &mut inflight);
                                }
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
                _ = &mut hedge, if next < ranked.len() => {
                    self.stats.hedges.fetch_add(1, Ordering::Relaxed);
                    launch(&mut next, &mut inflight);
                    hedge.as_mut().reset(tokio::time::Instant::now() + self.hedge_delay(&ranked[0].0));
                }
            }
        }
        if votes.is_empty() {
            return Ok(Err(first_error
                .map(client_error_to_rpc)
                .unwrap_or_else(|| unavailable("every upstream failed"))));
        }
        let ballots: Vec<Ballot> = votes
            .iter()
            .flat_map(|(key, voters)| {
                voters.iter().map(|(u, _)| Ballot {
                    upstream: u.id,
                    lag: u.standing().lag,
                    key: key.clone(),
                })
            })
            .collect();
        let outcome = tally(&ballots);
        if votes.len() > 1 {
            self.stats.disagreements.fetch_add(1, Ordering::Relaxed);
            self.metrics.event(
                "disagreement",
                None,
                format!(
                    "upstreams gave {} different answers to one read",
                    votes.len()
                ),
            );
            tracing::warn!(
                method = call.method(),
                answers = ok,
                distinct = votes.len(),
                "upstreams disagree"
            );
        }
        let Some(winner) = outcome.winner else {
            return Err(NoMajority(RpcError::new(
                DAEMON_ERROR,
                "upstreams disagree and no majority can be formed; try again",
            )));
        };
        for (up, _) in votes.values().flatten() {
            if outcome.outvoted.contains(&up.id) {
                self.pool.penalize(up, Reason::VoteMinority);
            }
        }
        let mut chosen = votes.remove(&winner).unwrap_or_default();
        // The best-ranked upstream's wording of the winning answer.
        chosen.sort_by_key(|(u, _)| order.iter().position(|id| *id == u.id));
        Ok(chosen
            .into_iter()
            .next()
            .map(|(_, raw)| raw)
            .ok_or_else(|| unavailable("every upstream failed")))
    }

    /// `median`: asks every active upstream; numbers are answered by their median (ignoring
    /// `-1`, "no estimate", unless every upstream says so), objects field by field; other
    /// answers fall back to the best-ranked upstream's.
    pub async fn median(&self, call: &Call) -> Result<Box<RawValue>, RpcError> {
        let answers: Vec<_> = self
            .pool
            .ranked_for(true)
            .into_iter()
            .map(|target| self.ask(target, call))
            .collect::<FuturesUnordered<_>>()
            .collect()
            .await;
        let mut values = Vec::new();
        let mut first_error = None;
        for (_, res) in answers {
            match res {
                Ok(raw) => match serde_json::from_str::<Value>(raw.get()) {
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
        let answer = median_value(&values);
        serde_json::value::to_raw_value(&answer).map_err(|e| RpcError::internal(e.to_string()))
    }

    /// `broadcast`: sends to every active upstream. The first acceptance answers the wallet;
    /// the other sends go on in the background so the transaction reaches every upstream.
    pub async fn broadcast(&self, call: &Call) -> Result<Box<RawValue>, RpcError> {
        let ranked = self.pool.ranked_for(false);
        if ranked.is_empty() {
            return Err(unavailable("no upstream is connected"));
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(ranked.len());
        for (up, client) in ranked.iter().cloned() {
            let tx = tx.clone();
            let call = call.clone();
            let pool = self.pool.clone();
            tokio::spawn(async move {
                let res = pool
                    .ask(&up, &client, call.method(), call.params(), |raw| {
                        crate::verify::check(pool.tracker(), &call, raw)
                    })
                    .await;
                let _ = tx.send((up, res)).await;
            });
        }
        drop(tx);
        let mut first_error = None;
        while let Some((_up, res)) = rx.recv().await {
            match res {
                Ok(raw) => return Ok(raw),
                Err(ClientError::Rpc(e)) if is_already_known(&e) => {
                    let raw_tx = call.params();
                    if let Some(txid) = raw_tx.first().and_then(Value::as_str).and_then(txid_of_hex)
                    {
                        return serde_json::value::to_raw_value(&txid)
                            .map_err(|e| RpcError::internal(e.to_string()));
                    }
                    keep_telling(&mut first_error, ClientError::Rpc(e));
                }
                Err(e) => keep_telling(&mut first_error, e),
            }
        }
        Err(first_error
            .map(client_error_to_rpc)
            .unwrap_or_else(|| unavailable("every upstream failed")))
    }
}

/// True for a node's "I have this transaction already" rejection. Bitcoin Core 28 and
/// later say "Transaction outputs already in utxo set" for a confirmed transaction.
pub fn is_already_known(e: &RpcError) -> bool {
    let m = e.message.to_ascii_lowercase();
    m.contains("already known")
        || m.contains("already-known")
        || m.contains("already in utxo set")
        || m.contains("already in block chain")
        || m.contains("already in the block chain")
        || m.contains("txn-already-in-mempool")
        || m.contains("already in mempool")
}

/// The txid of a raw transaction in hex, if it parses.
pub fn txid_of_hex(raw: &str) -> Option<String> {
    use bitcoin::consensus::Decodable;
    use bitcoin::hex::FromHex;
    let bytes = Vec::<u8>::from_hex(raw).ok()?;
    let tx = bitcoin::Transaction::consensus_decode(&mut bytes.as_slice()).ok()?;
    Some(tx.compute_txid().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn already_known_rejections() {
        assert!(is_already_known(&RpcError::new(2, "txn-already-known")));
        assert!(is_already_known(&RpcError::new(
            2,
            "Transaction already in block chain"
        )));
        assert!(is_already_known(&RpcError::new(
            1,
            "the transaction was rejected by network rules.\n\nTransaction outputs already in utxo set\n[02...]"
        )));
        assert!(!is_already_known(&RpcError::new(
            2,
            "bad-txns-inputs-missingorspent"
        )));
    }
}
