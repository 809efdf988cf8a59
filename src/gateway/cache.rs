//! A bounded cache of verified answers, keyed by the typed call's canonical form.
//!
//! What may be cached, and for how long, is the call's catalogue row ([`Cache`]):
//! - `Immutable`: raw transactions (they hash to their txid) forever, and merkle proofs once
//!   their block is `depth` deep. A proof remembers the hash of its block and is dropped if the
//!   verified chain no longer has that block at that height (after a reorganisation), so a
//!   stale proof is never served.
//! - `Short`: fee figures, until the verified tip moves and at most [`SHORT_TTL`].
//!
//! Only answers that passed their checks and votes go in.

use bitcoin::BlockHash;
use lru::LruCache;
use serde_json::value::RawValue;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::protocol::methods::Cache;
use crate::protocol::Call;
use crate::verify::ChainTracker;

/// The longest a short-lived answer (fees) is kept.
pub const SHORT_TTL: Duration = Duration::from_secs(10);

/// What an entry's validity depends on.
#[derive(Debug, Clone, Copy)]
enum Validity {
    /// Valid forever.
    Always,
    /// Valid while the verified chain has this block at this height.
    Block(u32, BlockHash),
    /// Valid while the verified tip is this block, until the instant.
    Tip(BlockHash, Instant),
}

struct Entry {
    raw: Box<RawValue>,
    validity: Validity,
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

fn tip_hash(tracker: &ChainTracker) -> Option<BlockHash> {
    tracker.with_chain(|c| c.hash(c.height()))
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

    /// A cached answer to `call`, if there is a valid one. Counts a hit or a miss for
    /// cacheable calls.
    pub fn get(&self, tracker: &ChainTracker, call: &Call) -> Option<Box<RawValue>> {
        let key = call.cache_key()?;
        let mut entries = self.entries.lock().ok()?;
        let found = entries.get(&key).map(|e| {
            let valid = match e.validity {
                Validity::Always => true,
                Validity::Block(h, hash) => tracker.with_chain(|c| c.hash(h)) == Some(hash),
                Validity::Tip(hash, until) => {
                    Instant::now() < until && tip_hash(tracker) == Some(hash)
                }
            };
            valid.then(|| e.raw.clone())
        });
        match found {
            Some(Some(raw)) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(raw)
            }
            Some(None) => {
                entries.pop(&key);
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Keeps a checked answer to `call` for as long as its row allows.
    pub fn put(&self, tracker: &ChainTracker, call: &Call, raw: &RawValue) {
        let Some(key) = call.cache_key() else {
            return;
        };
        let validity = match (call.info.cache, call.proof_height()) {
            (Cache::Never, _) => return,
            (Cache::Short, _) => match tip_hash(tracker) {
                Some(hash) => Validity::Tip(hash, Instant::now() + SHORT_TTL),
                None => return,
            },
            (Cache::Immutable, None) => Validity::Always,
            (Cache::Immutable, Some(h)) => {
                let (tip, hash) = tracker.with_chain(|c| (c.height(), c.hash(h)));
                match hash {
                    Some(hash) if tip.saturating_sub(h) + 1 >= self.depth => {
                        Validity::Block(h, hash)
                    }
                    _ => return,
                }
            }
        };
        if let Ok(mut entries) = self.entries.lock() {
            entries.put(
                key,
                Entry {
                    raw: raw.to_owned(),
                    validity,
                },
            );
        }
    }
}
