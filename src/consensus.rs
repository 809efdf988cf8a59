//! Tip consensus and answer checks: what stands between an upstream and a wallet.
//!
//! The gateway keeps its own verified header chain ([`crate::chain::HeaderChain`], stored in the
//! data directory). Every upstream's announced tip is verified and linked into it: a tip that
//! does not connect makes the gateway fetch the missing headers from that upstream (forward in
//! 2016-header chunks for a first sync, backwards in growing steps to find a fork point), and
//! every header is checked before anything changes. The best chain is the one with the most
//! work; the tip served to wallets is its tip, so it only moves back for a verified heavier fork.
//!
//! An upstream is *in step* when its announced tip is on the best chain and at most `max_lag`
//! blocks behind; only upstreams in step serve reads that depend on the tip. An upstream on a
//! competing branch, too far behind, or whose headers fail verification is demoted until that
//! changes. An upstream caught giving a false answer (a transaction that does not hash to its
//! txid, a merkle branch that does not fold to the verified header's root, a status that is not
//! the hash of its own history, ...) sits out for a period that doubles with every offence.

use bitcoin::consensus::deserialize;
use bitcoin::hex::FromHex;
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

use crate::chain::{
    check_broadcast, check_merkle, check_transaction, Accepted, ChainParams, HeaderChain,
    MerkleAnswer, RejectReason, VerifyError,
};
use crate::client::Client;
use crate::pool::Tip;

/// Where an upstream stands relative to the best chain.
#[derive(Debug, Clone, Default)]
pub struct Standing {
    /// Its announced tip is on the best chain.
    pub on_best: bool,
    /// How many blocks its tip is behind the best tip (when on the best chain).
    pub lag: u32,
    /// Why it is demoted, if it is.
    pub demoted: Option<&'static str>,
    /// It sits out until then after a false answer.
    pub sit_out_until: Option<Instant>,
    /// False answers so far (the sit-out period doubles with each).
    pub strikes: u32,
    /// Its tip is being linked (headers being fetched from it).
    pub linking: bool,
}

impl Standing {
    /// True while a sit-out period runs.
    pub fn sitting_out(&self) -> bool {
        self.sit_out_until.is_some_and(|t| t > Instant::now())
    }

    /// Usable for reads that depend on the tip.
    pub fn in_step(&self) -> bool {
        self.on_best && self.demoted.is_none() && !self.sitting_out()
    }
}

/// A change the consensus layer reports (for logs, metrics and the status page).
#[derive(Debug, Clone)]
pub enum ChainEvent {
    /// The best tip moved.
    Tip(Tip),
    /// The best chain switched to a heavier branch.
    Reorg {
        /// Last common height.
        fork: u32,
        /// Blocks disconnected.
        disconnected: u32,
    },
}

/// Verified chain plus counters.
pub struct Consensus {
    chain: Mutex<HeaderChain>,
    tip: watch::Sender<Option<Tip>>,
    /// Highest tip height any upstream announced (the sync target).
    target: watch::Sender<u32>,
    max_lag: u32,
    penalty_base: Duration,
    failures: Mutex<BTreeMap<&'static str, u64>>,
    demotions: Mutex<BTreeMap<&'static str, u64>>,
    reorgs: std::sync::atomic::AtomicU64,
    metrics: std::sync::OnceLock<Arc<crate::metrics::Metrics>>,
}

fn tip_of(chain: &HeaderChain) -> Tip {
    let t = chain.tip();
    Tip {
        height: t.height,
        hex: bitcoin::consensus::encode::serialize_hex(&t.header),
    }
}

/// Decodes one 80-byte header from hex.
pub fn header_from_hex(hex: &str) -> Option<bitcoin::block::Header> {
    let bytes = Vec::<u8>::from_hex(hex).ok()?;
    if bytes.len() != 80 {
        return None;
    }
    deserialize(&bytes).ok()
}

impl Consensus {
    /// Opens (or creates) the verified chain of `network` in `dir`.
    pub fn open(
        network: bitcoin::Network,
        dir: &Path,
        max_lag: u32,
        penalty_base: Duration,
    ) -> anyhow::Result<Arc<Consensus>> {
        std::fs::create_dir_all(dir)?;
        let chain = HeaderChain::open(ChainParams::new(network), dir)
            .map_err(|e| anyhow::anyhow!("header store in {}: {e}", dir.display()))?;
        let tip = tip_of(&chain);
        tracing::info!(height = tip.height, "verified header chain loaded");
        Ok(Arc::new(Consensus {
            chain: Mutex::new(chain),
            tip: watch::channel(Some(tip)).0,
            target: watch::channel(0).0,
            max_lag,
            penalty_base,
            failures: Mutex::new(BTreeMap::new()),
            demotions: Mutex::new(BTreeMap::new()),
            reorgs: Default::default(),
            metrics: std::sync::OnceLock::new(),
        }))
    }

    /// The verified best tip, as a watch.
    pub fn tip_watch(&self) -> watch::Receiver<Option<Tip>> {
        self.tip.subscribe()
    }

    /// The verified best tip.
    pub fn tip(&self) -> Tip {
        self.tip.borrow().clone().unwrap_or(Tip {
            height: 0,
            hex: String::new(),
        })
    }

    /// The sync target as a watch (highest tip height an upstream announced).
    pub fn target_watch(&self) -> watch::Receiver<u32> {
        self.target.subscribe()
    }

    /// Highest tip height announced by an upstream (what the header sync aims for).
    pub fn target(&self) -> u32 {
        *self.target.borrow()
    }

    /// Header sync progress as (verified height, target height).
    pub fn progress(&self) -> (u32, u32) {
        let h = self.tip().height;
        (h, self.target().max(h))
    }

    /// Most blocks an upstream may be behind and still serve tip-dependent reads.
    pub fn max_lag(&self) -> u32 {
        self.max_lag
    }

    /// Runs `f` with the verified chain locked.
    pub fn with_chain<T>(&self, f: impl FnOnce(&HeaderChain) -> T) -> T {
        let chain = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        f(&chain)
    }

    /// Reports verification failures, demotions and sync progress to `metrics` from now on.
    pub fn set_metrics(&self, metrics: Arc<crate::metrics::Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// Verification failures so far, by reason.
    pub fn failures(&self) -> BTreeMap<&'static str, u64> {
        self.failures.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Demotions so far, by reason.
    pub fn demotions(&self) -> BTreeMap<&'static str, u64> {
        self.demotions.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Reorganisations of the best chain so far.
    pub fn reorgs(&self) -> u64 {
        self.reorgs.load(Ordering::Relaxed)
    }

    fn count(map: &Mutex<BTreeMap<&'static str, u64>>, reason: &'static str) {
        if let Ok(mut m) = map.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    /// Records a false answer from `name`: counted by reason and punished with a sit-out that
    /// doubles with every offence (capped at an hour).
    pub fn penalize(&self, name: &str, standing: &mut Standing, reason: &'static str) {
        Self::count(&self.failures, reason);
        standing.strikes = standing.strikes.saturating_add(1);
        let factor = 2u32.saturating_pow(standing.strikes.saturating_sub(1).min(16));
        let period = self
            .penalty_base
            .saturating_mul(factor)
            .min(Duration::from_secs(3600));
        standing.sit_out_until = Some(Instant::now() + period);
        match self.metrics.get() {
            Some(m) => m.verification_failed_at(Some(name), reason),
            None => tracing::warn!(upstream = %name, reason, "verification failed"),
        }
        tracing::info!(upstream = %name, sit_out_secs = period.as_secs_f64(), "upstream sits out");
    }

    /// Sets or clears a demotion, logging and counting changes.
    pub fn demote(&self, name: &str, standing: &mut Standing, reason: Option<&'static str>) {
        if standing.demoted == reason {
            return;
        }
        match reason {
            Some(r) => {
                Self::count(&self.demotions, r);
                match self.metrics.get() {
                    Some(m) => m.demoted_upstream(Some(name), r),
                    None => tracing::warn!(upstream = %name, reason = r, "upstream demoted"),
                }
            }
            None => tracing::info!(upstream = %name, "upstream back in step"),
        }
        standing.demoted = reason;
    }

    /// Feeds the chain with an upstream's announced tip. Returns what the caller must do next:
    /// nothing (the tip was placed), or link it (fetch headers from that upstream).
    pub fn place_tip(&self, tip: &Tip) -> Placement {
        self.target.send_if_modified(|t| {
            if tip.height > *t {
                *t = tip.height;
                true
            } else {
                false
            }
        });
        let Some(header) = header_from_hex(&tip.hex) else {
            return Placement::Bad("bad_header");
        };
        let hash = header.block_hash();
        let mut chain = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        if chain.height_of(&hash) == Some(tip.height) {
            return Placement::OnBest;
        }
        let prev_known = tip.height > 0
            && chain
                .hash(tip.height - 1)
                .is_some_and(|h| h == header.prev_blockhash);
        if !prev_known {
            return Placement::Unlinked;
        }
        let res = chain.accept(tip.height, &[header]);
        drop(chain);
        self.after_accept(res)
    }

    fn after_accept(&self, res: Result<Accepted, crate::chain::Rejected>) -> Placement {
        match res {
            Ok(Accepted::Known) => Placement::OnBest,
            Ok(Accepted::Extended { .. }) => {
                self.publish(None);
                Placement::OnBest
            }
            Ok(Accepted::Reorganized {
                fork, disconnected, ..
            }) => {
                self.publish(Some((fork, disconnected)));
                Placement::OnBest
            }
            Ok(Accepted::SideBranch { .. }) => Placement::Side,
            Err(r) => match r.reason {
                RejectReason::Unconnected => Placement::Unlinked,
                RejectReason::TooOld => Placement::Side,
                _ => Placement::Bad("bad_header"),
            },
        }
    }

    fn publish(&self, reorg: Option<(u32, u32)>) {
        let tip = self.with_chain(tip_of);
        if let Some((fork, disconnected)) = reorg {
            self.reorgs.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                fork,
                disconnected,
                new_height = tip.height,
                "chain reorganised to a heavier branch"
            );
        }
        self.tip.send_if_modified(|t| {
            if t.as_ref() == Some(&tip) {
                false
            } else {
                *t = Some(tip);
                true
            }
        });
    }

    /// Breaks a tie between branches of equal work by the upstreams' majority: when more of
    /// the announced tips are the tip of a kept competing branch with as much work as the best
    /// chain than are the best tip itself, the best chain switches to that branch.
    pub fn break_tie(&self, announced: &[Tip]) {
        let hashes: Vec<bitcoin::BlockHash> = announced
            .iter()
            .filter_map(|t| header_from_hex(&t.hex).map(|h| h.block_hash()))
            .collect();
        let mut chain = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        let best = chain.tip().hash;
        let on_best = hashes.iter().filter(|h| **h == best).count();
        let mut counts: BTreeMap<bitcoin::BlockHash, usize> = BTreeMap::new();
        for h in hashes.iter().filter(|h| **h != best) {
            *counts.entry(*h).or_default() += 1;
        }
        let Some((candidate, n)) = counts.into_iter().max_by_key(|(_, n)| *n) else {
            return;
        };
        if n <= on_best {
            return;
        }
        let switched = chain.prefer(&candidate);
        drop(chain);
        if let Some(Accepted::Reorganized {
            fork, disconnected, ..
        }) = switched
        {
            tracing::warn!(
                fork,
                "equal-work branches: following the upstreams' majority"
            );
            self.publish(Some((fork, disconnected)));
        }
    }

    /// Where an announced tip stands now: on the best chain (with its lag) or not.
    pub fn standing_of(&self, tip: &Tip) -> Option<u32> {
        let header = header_from_hex(&tip.hex)?;
        let hash = header.block_hash();
        self.with_chain(|c| {
            (c.height_of(&hash) == Some(tip.height)).then(|| c.height().saturating_sub(tip.height))
        })
    }

    /// Fetches headers from `client` until `tip` is linked into the chain (or refused).
    /// Forward in chunks of up to 2016 headers when far behind; backwards in doubling steps
    /// when the tip forks off below the best tip.
    pub async fn link(&self, client: &Client, tip: &Tip, timeout: Duration) -> Placement {
        let mut back: u32 = 0;
        loop {
            let (ours, window) = self.with_chain(|c| (c.height(), c.reorg_window()));
            if let Some(_lag) = self.standing_of(tip) {
                return Placement::OnBest;
            }
            let base = ours.min(tip.height.saturating_sub(1)) + 1;
            let start = base.saturating_sub(back).max(1);
            let count = (tip.height + 1).saturating_sub(start).clamp(1, 2016);
            let fetched = tokio::time::timeout(
                timeout,
                client.request(
                    "blockchain.block.headers",
                    vec![Value::from(start), Value::from(count)],
                ),
            )
            .await;
            let raw = match fetched {
                Ok(Ok(raw)) => raw,
                _ => return Placement::Failed,
            };
            let Some(hex) = headers_hex(&raw) else {
                return Placement::Bad("bad_header");
            };
            if hex.is_empty() {
                return Placement::Failed;
            }
            let res = {
                let mut chain = self.chain.lock().unwrap_or_else(|p| p.into_inner());
                chain.accept_hex(start, &hex)
            };
            match self.after_accept(res) {
                Placement::Unlinked => {
                    // Nothing it sends connects, back to genesis or past the reorg window:
                    // these are not headers of this chain.
                    if back > window.max(1) || start == 1 {
                        return Placement::Bad("bad_header");
                    }
                    back = (back.max(1)) * 2;
                }
                Placement::OnBest => {
                    // Made progress; loop until the announced tip itself is placed.
                    back = 0;
                    let now = self.with_chain(|c| c.height());
                    if tip.height.saturating_sub(ours) > 2016 && now / 2016 % 10 == 0 {
                        tracing::info!(
                            height = now,
                            target = tip.height,
                            percent = format!(
                                "{:.1}",
                                f64::from(now) * 100.0 / f64::from(tip.height.max(1))
                            ),
                            "header sync"
                        );
                    }
                    if now == ours && self.standing_of(tip).is_none() {
                        // Nothing new (the chunk was known): the tip is on another branch.
                        return Placement::Side;
                    }
                }
                other => return other,
            }
        }
    }

    /// Checks an upstream's answer to `method` with `params` against what can be proven.
    pub fn check(&self, method: &str, params: &[Value], raw: &RawValue) -> Verdict {
        // A proof against a block the verified chain does not have yet cannot be checked; it
        // is not held against the upstream (it may simply be ahead).
        let height = match method {
            "blockchain.transaction.get_merkle" => params.get(1).and_then(Value::as_u64),
            "blockchain.transaction.id_from_pos" => params.first().and_then(Value::as_u64),
            _ => None,
        };
        if let Some(h) = height {
            if h > u64::from(self.tip().height) {
                return Verdict::Unverifiable(format!("block {h} is not verified yet"));
            }
        }
        match self.check_inner(method, params, raw) {
            Ok(()) => Verdict::Proven,
            Err(e) => Verdict::False(e),
        }
    }

    fn check_inner(
        &self,
        method: &str,
        params: &[Value],
        raw: &RawValue,
    ) -> Result<(), VerifyError> {
        match method {
            "blockchain.transaction.get" => {
                let txid = params.first().and_then(Value::as_str).unwrap_or_default();
                let verbose = params.get(1).and_then(Value::as_bool).unwrap_or(false);
                let v: Value = serde_json::from_str(raw.get())
                    .map_err(|e| VerifyError::BadEncoding(e.to_string()))?;
                let hex = if verbose { v.get("hex") } else { Some(&v) };
                let hex = hex
                    .and_then(Value::as_str)
                    .ok_or_else(|| VerifyError::BadEncoding("no transaction hex".into()))?;
                check_transaction(txid, hex)
            }
            "blockchain.transaction.get_merkle" => {
                let txid = params.first().and_then(Value::as_str).unwrap_or_default();
                let txid = bitcoin::Txid::from_str(txid)
                    .map_err(|_| VerifyError::BadEncoding("txid".into()))?;
                let answer = MerkleAnswer::parse(raw.get())?;
                if let Some(h) = params.get(1).and_then(Value::as_u64) {
                    if u64::from(answer.block_height) != h {
                        return Err(VerifyError::BadMerkle("answer for another height".into()));
                    }
                }
                let root = self
                    .with_chain(|c| c.header(answer.block_height).map(|h| h.merkle_root))
                    .ok_or_else(|| {
                        VerifyError::BadMerkle("block not in the verified chain".into())
                    })?;
                check_merkle(&txid, answer.pos, &answer.merkle, &root)
            }
            "blockchain.transaction.id_from_pos" => {
                let height = params.first().and_then(Value::as_u64).unwrap_or(u64::MAX);
                let pos = params.get(1).and_then(Value::as_u64).unwrap_or(u64::MAX);
                let v: Value = serde_json::from_str(raw.get())
                    .map_err(|e| VerifyError::BadEncoding(e.to_string()))?;
                let (txid, merkle) = match &v {
                    Value::Object(o) => (
                        o.get("tx_hash").and_then(Value::as_str),
                        o.get("merkle").and_then(Value::as_array),
                    ),
                    _ => return Err(VerifyError::BadMerkle("no merkle branch to check".into())),
                };
                let txid = txid
                    .and_then(|t| bitcoin::Txid::from_str(t).ok())
                    .ok_or_else(|| VerifyError::BadEncoding("tx_hash".into()))?;
                let branch: Vec<&str> = merkle
                    .map(|m| m.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let height =
                    u32::try_from(height).map_err(|_| VerifyError::BadEncoding("height".into()))?;
                let root = self
                    .with_chain(|c| c.header(height).map(|h| h.merkle_root))
                    .ok_or_else(|| {
                        VerifyError::BadMerkle("block not in the verified chain".into())
                    })?;
                check_merkle(&txid, pos, &branch, &root)
            }
            "blockchain.transaction.broadcast" => {
                let tx = params.first().and_then(Value::as_str).unwrap_or_default();
                let got: String = serde_json::from_str(raw.get())
                    .map_err(|e| VerifyError::BadEncoding(e.to_string()))?;
                check_broadcast(tx, &got)
            }
            _ => Ok(()),
        }
    }
}

/// Concatenated header hex from a `blockchain.block.headers` answer in either form.
pub fn headers_hex(raw: &RawValue) -> Option<String> {
    let v: Value = serde_json::from_str(raw.get()).ok()?;
    if let Some(h) = v.get("hex").and_then(Value::as_str) {
        return Some(h.to_string());
    }
    let list = v.get("headers")?.as_array()?;
    let mut out = String::with_capacity(list.len() * 160);
    for h in list {
        out.push_str(h.as_str()?);
    }
    Some(out)
}

/// What a check made of an answer.
#[derive(Debug)]
pub enum Verdict {
    /// Proven right, or nothing to prove.
    Proven,
    /// Cannot be checked now (not held against the upstream).
    Unverifiable(String),
    /// Proven false.
    False(VerifyError),
}

/// The outcome of placing an upstream's tip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On the best chain.
    OnBest,
    /// On a competing branch with no more work (or forking below the reorg window).
    Side,
    /// Does not connect yet: headers must be fetched from that upstream.
    Unlinked,
    /// Failed verification (reason).
    Bad(&'static str),
    /// Headers could not be fetched (timeout, disconnect).
    Failed,
}

/// Guards against two link tasks for one upstream.
#[derive(Debug, Default)]
pub struct LinkGuard(AtomicBool);

impl LinkGuard {
    /// Takes the guard; false if a link is already running.
    pub fn try_take(&self) -> bool {
        !self.0.swap(true, Ordering::AcqRel)
    }
    /// Releases the guard.
    pub fn release(&self) {
        self.0.store(false, Ordering::Release);
    }
}
