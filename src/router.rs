//! Per-method routing: which upstreams a wallet's request goes to, and which answer wins.
//!
//! - `fastest`: the best-scored upstream, hedged to the next one when it is slower than its
//!   own recent p90 latency; idempotent reads that fail or time out are retried elsewhere.
//! - `quorum`: ask k upstreams at once and answer what a majority says; disagreements counted.
//! - `median`: ask every active upstream and answer the median (fee estimates).
//! - `broadcast`: send a transaction to every active upstream; success if any accepts it
//!   ("already known" counts as success).
//! - `local`: answered by the gateway itself.

use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{Client, ClientError};
use crate::consensus::Verdict;
use crate::pool::{Pool, Upstream};
use crate::protocol::error::{DAEMON_ERROR, EXCESSIVE_RESOURCE_USAGE, SERVER_BUSY};
use crate::protocol::methods::{lookup, Kind};
use crate::protocol::RpcError;
use serde_json::json;

/// How a method is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Best-scored upstream, hedged and retried.
    Fastest,
    /// Majority of k upstreams.
    Quorum,
    /// Median of every active upstream's numeric answer.
    Median,
    /// Sent to every active upstream.
    Broadcast,
    /// Answered by the gateway.
    Local,
}

impl Policy {
    /// The default policy of a method: local methods local, fees by median, transactions
    /// broadcast to all, everything else fastest.
    pub fn default_for(method: &str) -> Policy {
        match method {
            "blockchain.estimatefee" | "blockchain.relayfee" | "mempool.get_info" => Policy::Median,
            "blockchain.scripthash.get_balance"
            | "blockchain.scripthash.get_history"
            | "blockchain.scripthash.listunspent" => Policy::Quorum,
            _ => match lookup(method).map(|m| m.kind) {
                Some(Kind::Local) => Policy::Local,
                Some(Kind::Broadcast) => Policy::Broadcast,
                _ => Policy::Fastest,
            },
        }
    }

    /// The policy's name as used in `config.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Fastest => "fastest",
            Policy::Quorum => "quorum",
            Policy::Median => "median",
            Policy::Broadcast => "broadcast",
            Policy::Local => "local",
        }
    }
}

/// Counters the router keeps (exported as metrics).
#[derive(Debug, Default)]
pub struct RouterStats {
    /// Hedged requests sent.
    pub hedges: std::sync::atomic::AtomicU64,
    /// Retries after an upstream error or timeout.
    pub retries: std::sync::atomic::AtomicU64,
    /// Quorum reads whose answers disagreed.
    pub disagreements: std::sync::atomic::AtomicU64,
}

/// Routes requests to upstreams.
pub struct Router {
    pool: Arc<Pool>,
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

/// The answer to compare for a quorum: canonical JSON (object keys sorted).
fn canonical(raw: &RawValue) -> String {
    match serde_json::from_str::<Value>(raw.get()) {
        Ok(v) => v.to_string(),
        Err(_) => raw.get().to_string(),
    }
}

/// What must be equal for two answers to agree in a vote: the confirmed part of balances,
/// histories and unspent lists (mempools differ between honest servers), otherwise the whole
/// answer.
fn vote_key(method: &str, raw: &RawValue) -> String {
    let Ok(v) = serde_json::from_str::<Value>(raw.get()) else {
        return raw.get().to_string();
    };
    let confirmed = |e: &&Value| e.get("height").and_then(Value::as_i64).unwrap_or(0) > 0;
    match method {
        "blockchain.scripthash.get_balance" => {
            v.get("confirmed").cloned().unwrap_or_default().to_string()
        }
        "blockchain.scripthash.get_history" => match v.as_array() {
            Some(list) => Value::Array(
                list.iter()
                    .filter(confirmed)
                    .map(|e| json!([e.get("tx_hash"), e.get("height")]))
                    .collect(),
            )
            .to_string(),
            None => v.to_string(),
        },
        "blockchain.scripthash.listunspent" => match v.as_array() {
            Some(list) => {
                let mut items: Vec<String> = list
                    .iter()
                    .filter(confirmed)
                    .map(|e| {
                        json!([
                            e.get("tx_hash"),
                            e.get("tx_pos"),
                            e.get("value"),
                            e.get("height")
                        ])
                        .to_string()
                    })
                    .collect();
                items.sort();
                items.join(",")
            }
            None => v.to_string(),
        },
        _ => canonical(raw),
    }
}

/// Reads whose answer depends on the tip (served only by upstreams in step with it). Raw
/// transactions and merkle proofs are checked against the verified chain instead.
pub fn depends_on_tip(method: &str) -> bool {
    !matches!(
        method,
        "blockchain.transaction.get"
            | "blockchain.transaction.get_merkle"
            | "blockchain.transaction.id_from_pos"
            | "blockchain.transaction.broadcast"
            | "blockchain.transaction.broadcast_package"
    )
}

impl Router {
    /// A router over a pool.
    pub fn new(pool: Arc<Pool>, hedge_min: Duration, hedge_max: Duration, quorum: usize) -> Self {
        Router {
            pool,
            hedge_min,
            hedge_max,
            quorum: quorum.max(1),
            stats: RouterStats::default(),
        }
    }

    /// Routes one read or broadcast according to `policy`.
    pub async fn route(
        &self,
        policy: Policy,
        method: &str,
        params: Vec<Value>,
    ) -> Result<Box<RawValue>, RpcError> {
        match policy {
            Policy::Fastest | Policy::Local => self.fastest(method, params).await,
            Policy::Quorum => self.quorum(method, params).await,
            Policy::Median => self.median(method, params).await,
            Policy::Broadcast => self.broadcast(method, params).await,
        }
    }

    /// [`Router::timed`] for one ranked upstream, owning what it needs.
    fn ask(
        &self,
        (up, client): (Arc<Upstream>, Client),
        method: &str,
        params: &[Value],
    ) -> impl std::future::Future<Output = (Arc<Upstream>, Result<Box<RawValue>, ClientError>)>
    {
        Self::timed(
            self.pool.clone(),
            up,
            client,
            method.to_string(),
            params.to_vec(),
        )
    }

    /// One request to one upstream, timed and checked: an answer proven false is turned into
    /// an error (so it is retried elsewhere) and the upstream is penalised.
    async fn timed(
        pool: Arc<Pool>,
        up: Arc<Upstream>,
        client: Client,
        method: String,
        params: Vec<Value>,
    ) -> (Arc<Upstream>, Result<Box<RawValue>, ClientError>) {
        let start = Instant::now();
        let res = client.request(&method, params.clone()).await;
        up.record(&res, start.elapsed());
        let res = match res {
            Ok(raw) => match pool.consensus().check(&method, &params, &raw) {
                Verdict::Proven => Ok(raw),
                Verdict::Unverifiable(why) => Err(ClientError::Protocol(why)),
                // An upstream not in step (on another branch during a reorganisation, or far
                // behind) may prove its own chain correctly: its answer is dropped, not held
                // against it.
                Verdict::False(e) if !up.in_step() => Err(ClientError::Protocol(format!(
                    "answer from an upstream out of step failed verification ({})",
                    e.reason()
                ))),
                Verdict::False(e) => {
                    pool.penalize(&up, e.reason());
                    Err(ClientError::Protocol(format!(
                        "answer failed verification ({})",
                        e.reason()
                    )))
                }
            },
            other => other,
        };
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
    pub async fn fastest(
        &self,
        method: &str,
        params: Vec<Value>,
    ) -> Result<Box<RawValue>, RpcError> {
        let ranked = self.pool.ranked_for(depends_on_tip(method));
        if ranked.is_empty() {
            return Err(unavailable("no upstream is connected and in step"));
        }
        let mut next = 0usize;
        let mut inflight = FuturesUnordered::new();
        let launch = |next: &mut usize, inflight: &mut FuturesUnordered<_>| {
            inflight.push(self.ask(ranked[*next].clone(), method, &params));
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
                                self.stats.retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                launch(&mut next, &mut inflight);
                            } else if inflight.is_empty() {
                                break;
                            }
                        }
                    }
                }
                _ = &mut hedge, if !hedged && next < ranked.len() => {
                    hedged = true;
                    self.stats.hedges.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    launch(&mut next, &mut inflight);
                }
            }
        }
        Err(first_error
            .map(client_error_to_rpc)
            .unwrap_or_else(|| unavailable("every upstream failed")))
    }

    /// Asks the given upstreams at once and collects every answer.
    async fn ask_all(
        &self,
        targets: Vec<(Arc<Upstream>, Client)>,
        method: &str,
        params: &[Value],
    ) -> Vec<(Arc<Upstream>, Result<Box<RawValue>, ClientError>)> {
        let futs: FuturesUnordered<_> = targets
            .into_iter()
            .map(|target| self.ask(target, method, params))
            .collect();
        futs.collect().await
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
    pub async fn quorum(
        &self,
        method: &str,
        params: Vec<Value>,
    ) -> Result<Box<RawValue>, RpcError> {
        let mut round = 0;
        loop {
            round += 1;
            match self.quorum_once(method, &params).await {
                Err(NoMajority(e)) if round < 3 => {
                    tracing::debug!(method, round, "no majority yet: {e}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(NoMajority(e)) => return Err(e),
                Ok(answer) => return answer,
            }
        }
    }

    async fn quorum_once(
        &self,
        method: &str,
        params: &[Value],
    ) -> Result<Result<Box<RawValue>, RpcError>, NoMajority> {
        let params = params.to_vec();
        let ranked = self.pool.ranked_for(depends_on_tip(method));
        if ranked.is_empty() {
            return Ok(Err(unavailable("no upstream is connected and in step")));
        }
        let need = self.quorum.min(ranked.len()).max(1);
        let order: Vec<usize> = ranked.iter().map(|(u, _)| u.id).collect();
        let mut next = 0usize;
        let mut inflight = FuturesUnordered::new();
        let launch = |next: &mut usize, inflight: &mut FuturesUnordered<_>| {
            inflight.push(self.ask(ranked[*next].clone(), method, &params));
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
                            votes.entry(vote_key(method, &raw)).or_default().push((up, raw));
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
                                self.stats.retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                launch(&mut next, &mut inflight);
                            }
                        }
                    }
                }
                _ = &mut hedge, if next < ranked.len() => {
                    self.stats.hedges.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        // A block may reach one upstream before another: when answers differ, only the
        // upstreams least behind the verified tip vote (and only they can be outvoted); the
        // others' answers may simply be a block old.
        let lag_of = |u: &Upstream| u.standing().lag;
        let freshest = votes
            .values()
            .flatten()
            .map(|(u, _)| lag_of(u))
            .min()
            .unwrap_or(0);
        let fresh = |v: &Voters| v.iter().filter(|(u, _)| lag_of(u) == freshest).count();
        let fresh_total: usize = votes.values().map(fresh).sum();
        let winner = votes
            .iter()
            .find(|(_, v)| fresh(v) * 2 > fresh_total)
            .or_else(|| votes.iter().find(|(_, v)| v.len() * 2 > ok))
            .map(|(k, _)| k.clone());
        if votes.len() > 1 {
            self.stats
                .disagreements
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                method,
                answers = ok,
                distinct = votes.len(),
                "upstreams disagree"
            );
        }
        let Some(winner) = winner else {
            return Err(NoMajority(RpcError::new(
                DAEMON_ERROR,
                "upstreams disagree and no majority can be formed; try again",
            )));
        };
        for (key, voters) in &votes {
            if *key != winner {
                for (up, _) in voters.iter().filter(|(u, _)| lag_of(u) == freshest) {
                    self.pool.penalize(up, "vote_minority");
                }
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
    pub async fn median(
        &self,
        method: &str,
        params: Vec<Value>,
    ) -> Result<Box<RawValue>, RpcError> {
        let answers = self
            .ask_all(self.pool.ranked_for(true), method, &params)
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
    pub async fn broadcast(
        &self,
        method: &str,
        params: Vec<Value>,
    ) -> Result<Box<RawValue>, RpcError> {
        let ranked = self.pool.ranked_for(false);
        if ranked.is_empty() {
            return Err(unavailable("no upstream is connected"));
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(ranked.len());
        for (up, client) in ranked.iter().cloned() {
            let tx = tx.clone();
            let method = method.to_string();
            let params = params.clone();
            let pool = self.pool.clone();
            tokio::spawn(async move {
                let res = Self::timed(pool, up, client, method, params).await;
                let _ = tx.send(res).await;
            });
        }
        drop(tx);
        let mut first_error = None;
        while let Some((_up, res)) = rx.recv().await {
            match res {
                Ok(raw) => return Ok(raw),
                Err(ClientError::Rpc(e)) if is_already_known(&e) => {
                    if let Some(txid) = params.first().and_then(Value::as_str).and_then(txid_of_hex)
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

/// The median of a set of JSON answers: numbers by value (`-1`, "no estimate", only when
/// every answer says so), objects field by field, anything else the first answer.
pub fn median_value(values: &[Value]) -> Value {
    if values.iter().all(Value::is_number) {
        let nums: Vec<f64> = values.iter().filter_map(Value::as_f64).collect();
        // Median after dropping outliers (more than 4x off the median) and "no estimate" (-1),
        // which wins only when most upstreams say so.
        let m = crate::chain::fee_consensus(&nums)
            .map(|x| (x * 1e8).round() / 1e8)
            .unwrap_or(-1.0);
        return serde_json::Number::from_f64(m)
            .map(Value::Number)
            .unwrap_or_else(|| values[0].clone());
    }
    if let Some(first) = values[0].as_object() {
        if values.iter().all(Value::is_object) {
            let mut out = serde_json::Map::new();
            for key in first.keys() {
                let field: Vec<Value> = values.iter().filter_map(|v| v.get(key).cloned()).collect();
                out.insert(key.clone(), median_value(&field));
            }
            return Value::Object(out);
        }
    }
    values[0].clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn default_policies_fit_a_wallet() {
        assert_eq!(
            Policy::default_for("blockchain.estimatefee"),
            Policy::Median
        );
        assert_eq!(Policy::default_for("mempool.get_info"), Policy::Median);
        assert_eq!(
            Policy::default_for("blockchain.transaction.broadcast"),
            Policy::Broadcast
        );
        assert_eq!(
            Policy::default_for("blockchain.scripthash.get_history"),
            Policy::Quorum
        );
        assert_eq!(
            Policy::default_for("blockchain.scripthash.get_mempool"),
            Policy::Fastest
        );
        assert_eq!(
            Policy::default_for("blockchain.transaction.get"),
            Policy::Fastest
        );
        assert_eq!(Policy::default_for("server.banner"), Policy::Local);
    }

    #[test]
    fn median_of_numbers_ignores_no_estimate() {
        assert_eq!(
            median_value(&[json!(0.0002), json!(-1), json!(0.0004)]),
            json!(0.0003)
        );
        assert_eq!(median_value(&[json!(1), json!(2), json!(2)]), json!(2.0));
        assert_eq!(
            median_value(&[json!(-1), json!(-1), json!(0.0001)]),
            json!(-1.0)
        );
        // A wild outlier does not move the answer.
        assert_eq!(
            median_value(&[json!(0.0001), json!(0.00011), json!(0.00012), json!(5.0)]),
            json!(0.00011)
        );
    }

    #[test]
    fn median_of_objects_by_field() {
        let v = median_value(&[
            json!({"mempoolminfee": 0.00001, "minrelaytxfee": 0.00001}),
            json!({"mempoolminfee": 0.00003, "minrelaytxfee": 0.00001}),
            json!({"mempoolminfee": 0.5, "minrelaytxfee": 0.00001}),
        ]);
        // 0.5 is more than four times the median: an outlier, dropped before the median.
        assert_eq!(v["mempoolminfee"], json!(0.00002));
        assert_eq!(v["minrelaytxfee"], json!(0.00001));
    }

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
