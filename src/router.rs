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
use crate::pool::{Pool, Upstream};
use crate::protocol::error::{DAEMON_ERROR, EXCESSIVE_RESOURCE_USAGE, SERVER_BUSY};
use crate::protocol::methods::{lookup, Kind};
use crate::protocol::RpcError;

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

/// Counts a quorum's answers: the most common one and how many distinct answers there
/// were. Byte-identical answers (the usual case) agree without being read again; otherwise
/// they are compared in canonical form, so key order and spacing do not count.
fn tally(answers: Vec<Box<RawValue>>) -> (Option<Box<RawValue>>, usize) {
    let same = answers.windows(2).all(|w| w[0].get() == w[1].get());
    let mut votes: HashMap<String, (usize, Box<RawValue>)> = HashMap::new();
    for raw in answers {
        let key = if same { String::new() } else { canonical(&raw) };
        votes.entry(key).or_insert((0, raw)).0 += 1;
    }
    let distinct = votes.len();
    let best = votes.into_values().max_by_key(|(count, _)| *count);
    (best.map(|(_, raw)| raw), distinct)
}

/// The answer to compare for a quorum: canonical JSON (object keys sorted).
fn canonical(raw: &RawValue) -> String {
    match serde_json::from_str::<Value>(raw.get()) {
        Ok(v) => v.to_string(),
        Err(_) => raw.get().to_string(),
    }
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

    async fn timed(
        up: Arc<Upstream>,
        client: Client,
        method: String,
        params: Vec<Value>,
    ) -> (Arc<Upstream>, Result<Box<RawValue>, ClientError>) {
        let start = Instant::now();
        let res = client.request(&method, params).await;
        up.record(&res, start.elapsed());
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
        let ranked = self.pool.ranked();
        if ranked.is_empty() {
            return Err(unavailable("no upstream is connected"));
        }
        let mut next = 0usize;
        let mut inflight = FuturesUnordered::new();
        let launch = |next: &mut usize, inflight: &mut FuturesUnordered<_>| {
            let (up, client) = ranked[*next].clone();
            *next += 1;
            inflight.push(Self::timed(up, client, method.to_string(), params.clone()));
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

    /// Asks `n` upstreams at once and collects every answer.
    async fn ask_many(
        &self,
        n: usize,
        method: &str,
        params: &[Value],
    ) -> Vec<(Arc<Upstream>, Result<Box<RawValue>, ClientError>)> {
        let ranked = self.pool.ranked();
        let futs: FuturesUnordered<_> = ranked
            .into_iter()
            .take(n)
            .map(|(up, client)| Self::timed(up, client, method.to_string(), params.to_vec()))
            .collect();
        futs.collect().await
    }

    /// `quorum`: asks k upstreams and answers what a strict majority of the answers says;
    /// without a majority, the most common answer of the best-ranked upstreams, and the
    /// disagreement is counted.
    pub async fn quorum(
        &self,
        method: &str,
        params: Vec<Value>,
    ) -> Result<Box<RawValue>, RpcError> {
        let answers = self.ask_many(self.quorum, method, &params).await;
        let mut first_error = None;
        let mut oks = Vec::with_capacity(answers.len());
        for (_, res) in answers {
            match res {
                Ok(raw) => oks.push(raw),
                Err(e) => keep_telling(&mut first_error, e),
            }
        }
        let ok = oks.len();
        let (best, distinct) = tally(oks);
        if distinct > 1 {
            self.stats
                .disagreements
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(method, answers = ok, distinct, "quorum disagreement");
        }
        match best {
            Some(raw) => Ok(raw),
            None => Err(first_error
                .map(client_error_to_rpc)
                .unwrap_or_else(|| unavailable("no upstream is connected"))),
        }
    }

    /// `median`: asks every active upstream; numbers are answered by their median (ignoring
    /// `-1`, "no estimate", unless every upstream says so), objects field by field; other
    /// answers fall back to the best-ranked upstream's.
    pub async fn median(
        &self,
        method: &str,
        params: Vec<Value>,
    ) -> Result<Box<RawValue>, RpcError> {
        let answers = self.ask_many(usize::MAX, method, &params).await;
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
        let ranked = self.pool.ranked();
        if ranked.is_empty() {
            return Err(unavailable("no upstream is connected"));
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(ranked.len());
        for (up, client) in ranked.iter().cloned() {
            let tx = tx.clone();
            let method = method.to_string();
            let params = params.clone();
            tokio::spawn(async move {
                let res = Self::timed(up, client, method, params).await;
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

/// True for a node's "I have this transaction already" rejection.
pub fn is_already_known(e: &RpcError) -> bool {
    let m = e.message.to_ascii_lowercase();
    m.contains("already known")
        || m.contains("already-known")
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

fn median_f64(mut xs: Vec<f64>) -> Option<f64> {
    xs.retain(|x| x.is_finite());
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        // Fee rates are BTC amounts: keep the mean of the middle pair to whole satoshis.
        ((xs[n / 2 - 1] + xs[n / 2]) / 2.0 * 1e8).round() / 1e8
    })
}

/// The median of a set of JSON answers: numbers by value (`-1`, "no estimate", only when
/// every answer says so), objects field by field, anything else the first answer.
pub fn median_value(values: &[Value]) -> Value {
    if values.iter().all(Value::is_number) {
        let nums: Vec<f64> = values.iter().filter_map(Value::as_f64).collect();
        let known: Vec<f64> = nums.iter().copied().filter(|x| *x >= 0.0).collect();
        let m = if known.is_empty() {
            median_f64(nums)
        } else {
            median_f64(known)
        };
        return m
            .and_then(|x| serde_json::Number::from_f64(x).map(Value::Number))
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
    fn quorum_tally_counts_equal_answers_as_one() {
        let raw = |s: &str| RawValue::from_string(s.to_string()).unwrap();
        let (best, distinct) = tally(vec![raw(r#"{"a":1,"b":2}"#), raw(r#"{"a":1,"b":2}"#)]);
        assert_eq!((best.unwrap().get(), distinct), (r#"{"a":1,"b":2}"#, 1));
        // Same content, other key order and spacing: one answer; the odd one out loses.
        let (best, distinct) = tally(vec![
            raw(r#"{"a":1,"b":2}"#),
            raw(r#"{"confirmed":5}"#),
            raw(r#"{ "b": 2, "a": 1 }"#),
        ]);
        assert_eq!(distinct, 2);
        let best: Value = serde_json::from_str(best.unwrap().get()).unwrap();
        assert_eq!(best, json!({"a": 1, "b": 2}));
        assert_eq!(tally(Vec::new()).1, 0);
        assert!(tally(Vec::new()).0.is_none());
    }

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
        assert_eq!(median_value(&[json!(1), json!(9), json!(2)]), json!(2.0));
        assert_eq!(median_value(&[json!(-1), json!(-1)]), json!(-1.0));
    }

    #[test]
    fn median_of_objects_by_field() {
        let v = median_value(&[
            json!({"mempoolminfee": 0.00001, "minrelaytxfee": 0.00001}),
            json!({"mempoolminfee": 0.00003, "minrelaytxfee": 0.00001}),
            json!({"mempoolminfee": 0.5, "minrelaytxfee": 0.00001}),
        ]);
        assert_eq!(v["mempoolminfee"], json!(0.00003));
        assert_eq!(v["minrelaytxfee"], json!(0.00001));
    }

    #[test]
    fn already_known_rejections() {
        assert!(is_already_known(&RpcError::new(2, "txn-already-known")));
        assert!(is_already_known(&RpcError::new(
            2,
            "Transaction already in block chain"
        )));
        assert!(!is_already_known(&RpcError::new(
            2,
            "bad-txns-inputs-missingorspent"
        )));
    }
}
