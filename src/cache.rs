//! A bounded cache of verified, immutable answers: raw transactions and merkle proofs.
//!
//! Only answers that passed verification go in, and only those that cannot change: a raw
//! transaction for its txid, and merkle proofs of blocks buried at least `depth` deep. A proof
//! remembers the hash of its block and is dropped if the verified chain no longer has that block
//! at that height (after a reorganisation), so a stale proof is never served.

use bitcoin::BlockHash;
use lru::LruCache;
use serde_json::value::RawValue;
use serde_json::Value;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::consensus::Consensus;

struct Entry {
    raw: Box<RawValue>,
    block: Option<(u32, BlockHash)>,
}

/// The answer cache.
pub struct AnswerCache {
    entries: Mutex<LruCache<String, Entry>>,
    depth: u32,
    /// Answers served from the cache.
    pub hits: AtomicU64,
    /// Cacheable requests that went to an upstream.
    pub misses: AtomicU64,
}

/// The height a cacheable request's answer depends on, if any; None if not cacheable.
fn cacheable(method: &str, params: &[Value]) -> Option<Option<u32>> {
    match method {
        "blockchain.transaction.get" => {
            let verbose = params.get(1).and_then(Value::as_bool).unwrap_or(false);
            (!verbose && params.first().is_some_and(Value::is_string)).then_some(None)
        }
        "blockchain.transaction.get_merkle" => {
            let h = params.get(1).and_then(Value::as_u64)?;
            Some(Some(u32::try_from(h).ok()?))
        }
        "blockchain.transaction.id_from_pos" => {
            let h = params.first().and_then(Value::as_u64)?;
            Some(Some(u32::try_from(h).ok()?))
        }
        _ => None,
    }
}

fn key(method: &str, params: &[Value]) -> String {
    format!("{method}{}", Value::Array(params.to_vec()))
}

impl AnswerCache {
    /// A cache of at most `capacity` answers (0 disables it); merkle proofs are kept once their
    /// block is `depth` deep.
    pub fn new(capacity: usize, depth: u32) -> AnswerCache {
        AnswerCache {
            entries: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN),
            )),
            depth,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Whether answers to this request are ever cached.
    pub fn is_cacheable(method: &str, params: &[Value]) -> bool {
        cacheable(method, params).is_some()
    }

    /// A cached answer, if there is a valid one.
    pub fn get(
        &self,
        consensus: &Consensus,
        method: &str,
        params: &[Value],
    ) -> Option<Box<RawValue>> {
        cacheable(method, params)?;
        let k = key(method, params);
        let mut entries = self.entries.lock().ok()?;
        let found = match entries.get(&k) {
            Some(e) => match e.block {
                Some((h, hash)) if consensus.with_chain(|c| c.hash(h)) != Some(hash) => None,
                _ => Some(e.raw.clone()),
            },
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        match found {
            Some(raw) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(raw)
            }
            None => {
                entries.pop(&k);
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Keeps a verified answer if it can never change.
    pub fn put(&self, consensus: &Consensus, method: &str, params: &[Value], raw: &RawValue) {
        let Some(height) = cacheable(method, params) else {
            return;
        };
        let block = match height {
            None => None,
            Some(h) => {
                let (tip, hash) = consensus.with_chain(|c| (c.height(), c.hash(h)));
                match hash {
                    Some(hash) if tip.saturating_sub(h) + 1 >= self.depth => Some((h, hash)),
                    _ => return,
                }
            }
        };
        if let Ok(mut entries) = self.entries.lock() {
            entries.put(
                key(method, params),
                Entry {
                    raw: raw.to_owned(),
                    block,
                },
            );
        }
    }

    /// Answers held now.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
