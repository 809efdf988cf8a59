//! The chain tracker: the gateway's own verified header chain, and where each upstream's
//! announced tip stands on it.
//!
//! The gateway keeps its own verified header chain ([`crate::chain::HeaderChain`], stored in the
//! data directory). Every upstream's announced tip is verified and linked into it: a tip that
//! does not connect makes the gateway fetch the missing headers from that upstream (forward in
//! 2016-header chunks for a first sync, backwards in growing steps to find a fork point), and
//! every header is checked before anything changes. The best chain is the one with the most
//! work; the tip served to wallets is its tip, so it only moves back for a verified heavier fork.
//!
//! An upstream is *in step* when its announced tip is on the best chain and at most `max_lag`
//! blocks behind; only upstreams in step serve reads that depend on the tip (see
//! [`super::Standing`]).

use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

use super::Reason;
use crate::chain::{parse_headers_hex, Accepted, ChainParams, HeaderChain, RejectReason};
use crate::protocol::tip::header_from_hex;
use crate::protocol::{Tip, TipNotice};

/// The verified chain and where upstreams' tips stand on it.
pub struct ChainTracker {
    chain: Mutex<HeaderChain>,
    /// The chain's rules, readable without the lock.
    params: ChainParams,
    tip: watch::Sender<Option<Tip>>,
    /// The verified best tip with its notification line; changes before `tip` does.
    notice: watch::Sender<Option<Arc<TipNotice>>>,
    /// Highest tip height any upstream announced (the sync target).
    target: watch::Sender<u32>,
    max_lag: u32,
    reorgs: std::sync::atomic::AtomicU64,
}

fn tip_of(chain: &HeaderChain) -> Tip {
    let t = chain.tip();
    Tip {
        height: t.height,
        hex: bitcoin::consensus::encode::serialize_hex(&t.header),
    }
}

impl ChainTracker {
    /// Opens (or creates) the verified chain of `network` in `dir`.
    pub fn open(
        network: bitcoin::Network,
        dir: &Path,
        max_lag: u32,
    ) -> anyhow::Result<Arc<ChainTracker>> {
        std::fs::create_dir_all(dir)?;
        let chain = HeaderChain::open(ChainParams::new(network), dir)
            .map_err(|e| anyhow::anyhow!("header store in {}: {e}", dir.display()))?;
        let tip = tip_of(&chain);
        tracing::info!(height = tip.height, "verified header chain loaded");
        Ok(Arc::new(ChainTracker {
            params: chain.params().clone(),
            chain: Mutex::new(chain),
            notice: watch::channel(Some(Arc::new(TipNotice::new(tip.clone())))).0,
            tip: watch::channel(Some(tip)).0,
            target: watch::channel(0).0,
            max_lag,
            reorgs: Default::default(),
        }))
    }

    /// The verified best tip, as a watch.
    pub fn tip_watch(&self) -> watch::Receiver<Option<Tip>> {
        self.tip.subscribe()
    }

    /// The verified best tip with its header notification, serialized once for every
    /// session, as a watch. It changes before [`ChainTracker::tip_watch`] does, and
    /// [`ChainTracker::tip`] reads it: a session comparing a reply's tip with it sees one tip.
    pub fn notice_watch(&self) -> watch::Receiver<Option<Arc<TipNotice>>> {
        self.notice.subscribe()
    }

    /// The verified best tip.
    pub fn tip(&self) -> Tip {
        self.notice
            .borrow()
            .as_ref()
            .map(|n| n.tip.clone())
            .unwrap_or(Tip {
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

    /// Writes the part of the verified chain the header store lacks after a failed write
    /// (each change is written as it happens; a failed write is otherwise retried only with
    /// the next change). Nothing to do when the last write succeeded.
    pub fn flush_store(&self) -> std::io::Result<()> {
        let mut chain = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        if chain.persist_error().is_none() {
            return Ok(());
        }
        chain.flush()
    }

    /// Reorganisations of the best chain so far.
    pub fn reorgs(&self) -> u64 {
        self.reorgs.load(Ordering::Relaxed)
    }

    /// Feeds the chain with an upstream's announced tip. Returns what the caller must do next:
    /// nothing (the tip was placed), or link it (fetch headers from that upstream).
    ///
    /// The cheap refusals come first, so that a header which costs its sender nothing costs the
    /// gateway next to nothing: a header that does not meet its own bits (or whose bits are
    /// above the network's limit) is refused before the chain is locked, and one that is not
    /// on the best chain but would fork off below the reorg window is refused as too old with
    /// one hash lookup under the lock, before any work is computed or any header fetched.
    pub fn place_tip(&self, tip: &Tip) -> Placement {
        let Some(header) = header_from_hex(&tip.hex) else {
            return Placement::Bad(Reason::BadHeader);
        };
        if let Err(reason) = crate::chain::check_own_work(&self.params, &header) {
            return Placement::Bad(Reason::from(reason));
        }
        self.target.send_if_modified(|t| {
            if tip.height > *t {
                *t = tip.height;
                true
            } else {
                false
            }
        });
        let hash = header.block_hash();
        let mut chain = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        if chain.height_of(&hash) == Some(tip.height) {
            return Placement::OnBest;
        }
        if tip
            .height
            .saturating_sub(1)
            .saturating_add(chain.reorg_window())
            < chain.height()
        {
            // Not on the best chain, and wherever it attaches it forks off at or below its
            // parent: deeper than any reorganisation the gateway follows.
            return Placement::Bad(Reason::TooOld);
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
                // A branch forking off below the reorg window can never be followed, however
                // much work it shows: no honest server announces one for this chain.
                other => Placement::Bad(Reason::from(other)),
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
        let moved = self.notice.send_if_modified(|n| {
            if n.as_ref().map(|n| &n.tip) == Some(&tip) {
                false
            } else {
                *n = Some(Arc::new(TipNotice::new(tip.clone())));
                true
            }
        });
        if moved {
            self.tip.send_replace(Some(tip));
        }
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

    /// Fetches headers from the upstream that announced `tip` until it is linked into the
    /// chain (or refused). Forward in chunks of up to 2016 headers when far behind; backwards
    /// in doubling steps when the tip forks off below the best tip. `fetch(start, count)` asks
    /// that upstream for `blockchain.block.headers` (through the pool's checked call) and gives
    /// the answer, or None when it could not be had.
    pub async fn link<F, Fut>(&self, tip: &Tip, mut fetch: F) -> Placement
    where
        F: FnMut(u32, u32) -> Fut,
        Fut: Future<Output = Option<Box<RawValue>>>,
    {
        let mut back: u32 = 0;
        loop {
            let (ours, window) = self.with_chain(|c| (c.height(), c.reorg_window()));
            if let Some(_lag) = self.standing_of(tip) {
                return Placement::OnBest;
            }
            let base = ours.min(tip.height.saturating_sub(1)) + 1;
            let start = base.saturating_sub(back).max(1);
            let count = (tip.height + 1).saturating_sub(start).clamp(1, 2016);
            let Some(raw) = fetch(start, count).await else {
                return Placement::Failed;
            };
            let Some(hex) = headers_hex(&raw) else {
                return Placement::Bad(Reason::BadEncoding);
            };
            if hex.is_empty() {
                return Placement::Failed;
            }
            // Decoded before the chain is locked: only the checks run under the lock.
            let Some(headers) = parse_headers_hex(&hex) else {
                return Placement::Bad(Reason::BadEncoding);
            };
            let res = {
                let mut chain = self.chain.lock().unwrap_or_else(|p| p.into_inner());
                chain.accept(start, &headers)
            };
            match self.after_accept(res) {
                Placement::Unlinked => {
                    // Nothing it sends connects, back to genesis or past the reorg window:
                    // these are not headers of this chain.
                    if back > window.max(1) || start == 1 {
                        return Placement::Bad(Reason::Unconnected);
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
    Bad(Reason),
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
