//! A bounded cache of verified answers, keyed by the typed call's canonical form.
//!
//! What may be cached, and for how long, is the call's catalogue row ([`Cache`]):
//! - `Immutable`: raw transactions (they hash to their txid) forever, and merkle proofs once
//!   their block is `depth` deep. A proof is filed under the block its check proved it
//!   against ([`ProvenBlock`]), not the block at that height when it is put (a reorganisation
//!   may come in between), and is dropped once the verified chain no longer has that block at
//!   that height, so a stale proof is never served.
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
use crate::verify::{ChainTracker, ProvenBlock};

/// The longest a short-lived answer (fees) is kept.
pub const SHORT_TTL: Duration = Duration::from_secs(10);

/// What an entry's validity depends on.
#[derive(Debug, Clone)]
enum Validity {
    /// Valid forever.
    Always,
    /// Valid while the verified chain has this block at this height.
    Block(u32, BlockHash),
    /// Valid while the verified tip is this block, until the instant.
    Tip(BlockHash, Instant),
    /// Valid while the scripthash's agreed status is this one.
    Status(serde_json::Value),
}

struct Entry {
    raw: Box<RawValue>,
    validity: Validity,
}

/// Bytes an entry costs beyond its key and answer (the entry, the map's slot and list links,
/// the allocations' headers), counted toward the byte bound.
const ENTRY_OVERHEAD: usize = 96;

/// The entries, least recently used first out, and the bytes they hold.
struct Entries {
    lru: LruCache<String, Entry>,
    bytes: usize,
    max_bytes: usize,
}

impl Entries {
    fn size(key: &str, e: &Entry) -> usize {
        key.len() + e.raw.get().len() + ENTRY_OVERHEAD
    }

    /// Keeps `entry`, then drops the least recently used ones until the bytes fit.
    fn put(&mut self, key: String, entry: Entry) {
        let size = Self::size(&key, &entry);
        if size > self.max_bytes {
            self.pop(&key);
            return;
        }
        self.bytes += size;
        // The entry it replaced, or the one the entry count pushed out.
        if let Some((k, old)) = self.lru.push(key, entry) {
            self.bytes = self.bytes.saturating_sub(Self::size(&k, &old));
        }
        while self.bytes > self.max_bytes {
            let Some((k, old)) = self.lru.pop_lru() else {
                break;
            };
            self.bytes = self.bytes.saturating_sub(Self::size(&k, &old));
        }
    }

    fn pop(&mut self, key: &str) {
        if let Some(old) = self.lru.pop(key) {
            self.bytes = self.bytes.saturating_sub(Self::size(key, &old));
        }
    }
}

/// The answer cache, bounded in entries and in bytes.
pub struct AnswerCache {
    entries: Mutex<Entries>,
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
    /// A cache of at most `capacity` answers holding at most `max_bytes` (answers, keys and
    /// bookkeeping; 0 keeps nothing); merkle proofs are kept once their block is `depth` deep.
    pub fn new(capacity: usize, max_bytes: usize, depth: u32) -> AnswerCache {
        AnswerCache {
            entries: Mutex::new(Entries {
                lru: LruCache::new(NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN)),
                bytes: 0,
                max_bytes,
            }),
            depth,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The valid cached answer under a call's key ([`Call::cache_key`]), if there is one.
    /// Counts a hit or a miss.
    pub fn get(&self, tracker: &ChainTracker, key: &str) -> Option<Box<RawValue>> {
        self.get_if(key, |validity| match validity {
            Validity::Always => true,
            Validity::Block(h, hash) => tracker.with_chain(|c| c.hash(*h)) == Some(*hash),
            Validity::Tip(hash, until) => {
                Instant::now() < *until && tip_hash(tracker) == Some(*hash)
            }
            Validity::Status(_) => false,
        })
    }

    /// The answer cached under `key` for a scripthash whose agreed status is `status` now
    /// ([`AnswerCache::put_at_status`]). Counts a hit or a miss.
    pub fn get_at_status(&self, key: &str, status: &serde_json::Value) -> Option<Box<RawValue>> {
        self.get_if(
            key,
            |validity| matches!(validity, Validity::Status(s) if s == status),
        )
    }

    /// Keeps a voted answer about a scripthash for as long as its agreed status is `status`.
    pub fn put_at_status(&self, key: String, raw: &RawValue, status: serde_json::Value) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.put(
                key,
                Entry {
                    raw: raw.to_owned(),
                    validity: Validity::Status(status),
                },
            );
        }
    }

    fn get_if(&self, key: &str, valid: impl Fn(&Validity) -> bool) -> Option<Box<RawValue>> {
        let mut entries = self.entries.lock().ok()?;
        let found = entries
            .lru
            .get(key)
            .map(|e| valid(&e.validity).then(|| e.raw.clone()));
        match found {
            Some(Some(raw)) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(raw)
            }
            Some(None) => {
                entries.pop(key);
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Keeps a checked answer to `call`, under its key, for as long as its row allows. A proof
    /// needs `proven`, the block its check proved it against; without it, or once that block
    /// has left the verified chain, it is not kept; nor before it is `cache_depth` deep.
    pub fn put(
        &self,
        tracker: &ChainTracker,
        call: &Call,
        key: String,
        raw: &RawValue,
        proven: Option<ProvenBlock>,
    ) {
        self.put_from_depth(tracker, call, key, raw, proven, self.depth);
    }

    /// [`AnswerCache::put`], keeping a proof from any depth: the proofs of a history's newest
    /// entries, which every read of that history needs again. Still filed under the block it
    /// was proven against, so it is dropped once that block leaves the verified chain.
    pub fn put_proof_any_depth(
        &self,
        tracker: &ChainTracker,
        call: &Call,
        key: String,
        raw: &RawValue,
        proven: Option<ProvenBlock>,
    ) {
        self.put_from_depth(tracker, call, key, raw, proven, 1);
    }

    fn put_from_depth(
        &self,
        tracker: &ChainTracker,
        call: &Call,
        key: String,
        raw: &RawValue,
        proven: Option<ProvenBlock>,
        depth: u32,
    ) {
        let validity = match (call.info.cache, call.proof_height()) {
            // Kept by status (`put_at_status`) or not at all.
            (Cache::Never | Cache::Status, _) => return,
            (Cache::Short, _) => match tip_hash(tracker) {
                Some(hash) => Validity::Tip(hash, Instant::now() + SHORT_TTL),
                None => return,
            },
            (Cache::Immutable, None) => Validity::Always,
            (Cache::Immutable, Some(h)) => {
                let Some(block) = proven.filter(|b| b.height == h) else {
                    return;
                };
                let (tip, hash) = tracker.with_chain(|c| (c.height(), c.hash(h)));
                if hash != Some(block.hash) || tip.saturating_sub(h) + 1 < depth {
                    return;
                }
                Validity::Block(h, block.hash)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Tip;
    use bitcoin::block::{Header, Version};
    use bitcoin::hashes::Hash;
    use serde_json::json;
    use std::collections::BTreeMap;

    /// A regtest header on top of `prev` (regtest's target is met within a few tries).
    fn child(prev: &Header, salt: u32) -> Header {
        let mut h = Header {
            version: Version::from_consensus(0x2000_0000),
            prev_blockhash: prev.block_hash(),
            merkle_root: bitcoin::TxMerkleNode::from_byte_array([salt as u8; 32]),
            time: prev.time + 600,
            bits: prev.bits,
            nonce: 0,
        };
        while h.validate_pow(h.target()).is_err() {
            h.nonce += 1;
        }
        h
    }

    fn extend(tracker: &ChainTracker, prev: &Header, height: u32) -> Header {
        let h = child(prev, height);
        let tip = Tip {
            height,
            hex: bitcoin::consensus::encode::serialize_hex(&h),
        };
        assert_eq!(
            tracker.place_tip(&tip),
            crate::verify::Placement::OnBest,
            "a valid child extends the chain"
        );
        h
    }

    fn call(method: &str, params: serde_json::Value) -> Call {
        let params = params.as_array().cloned().unwrap_or_default();
        Call::internal(method, params, bitcoin::Network::Regtest, &BTreeMap::new()).unwrap()
    }

    /// Looks `call` up as the gateway does: by its key, if it has one.
    fn get(cache: &AnswerCache, tracker: &ChainTracker, call: &Call) -> Option<Box<RawValue>> {
        cache.get(tracker, &call.cache_key()?)
    }

    fn put(
        cache: &AnswerCache,
        tracker: &ChainTracker,
        call: &Call,
        raw: &RawValue,
        proven: Option<ProvenBlock>,
    ) {
        if let Some(key) = call.cache_key() {
            cache.put(tracker, call, key, raw, proven);
        }
    }

    /// A verified chain of regtest's genesis alone, in a fresh directory (kept alive with it).
    fn tracker() -> (tempfile::TempDir, std::sync::Arc<ChainTracker>) {
        let dir = tempfile::tempdir().unwrap();
        let tracker = ChainTracker::open(bitcoin::Network::Regtest, dir.path(), 1).unwrap();
        (dir, tracker)
    }

    fn raw(v: serde_json::Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(&v).unwrap()
    }

    const TXID: &str = "a6c9c361bd0bc536d6a22648efbf8f9b200e425ef6c3a7a9669dc444c532a347";

    #[test]
    fn what_may_be_cached_and_for_how_long() {
        let (_dir, tracker) = tracker();
        let genesis =
            bitcoin::blockdata::constants::genesis_block(bitcoin::Network::Regtest).header;
        let cache = AnswerCache::new(100, 1 << 20, 2);

        // A raw transaction is kept for good; a verbose one (composed by the upstream) never.
        let tx = call("blockchain.transaction.get", json!([TXID]));
        assert!(get(&cache, &tracker, &tx).is_none());
        put(&cache, &tracker, &tx, &raw(json!("00")), None);
        assert_eq!(get(&cache, &tracker, &tx).unwrap().get(), "\"00\"");
        let verbose = call("blockchain.transaction.get", json!([TXID, true]));
        put(&cache, &tracker, &verbose, &raw(json!({"hex": "00"})), None);
        assert!(get(&cache, &tracker, &verbose).is_none());
        // Balances are kept by status only (`put_at_status`), never by a plain put.
        let bal = call("blockchain.scripthash.get_balance", json!([TXID]));
        put(&cache, &tracker, &bal, &raw(json!({"confirmed": 1})), None);
        assert!(get(&cache, &tracker, &bal).is_none());

        // A proof of block 0 is kept only once the block is two deep.
        let proof = call("blockchain.transaction.get_merkle", json!([TXID, 0]));
        let block0 = Some(ProvenBlock {
            height: 0,
            hash: genesis.block_hash(),
        });
        put(
            &cache,
            &tracker,
            &proof,
            &raw(json!({"block_height": 0})),
            block0,
        );
        assert!(
            get(&cache, &tracker, &proof).is_none(),
            "not deep enough yet"
        );
        // Fees are kept while the tip stays.
        let fee = call("blockchain.estimatefee", json!([2]));
        put(&cache, &tracker, &fee, &raw(json!(0.0001)), None);
        assert!(get(&cache, &tracker, &fee).is_some());

        let one = extend(&tracker, &genesis, 1);
        assert!(
            get(&cache, &tracker, &fee).is_none(),
            "a new tip drops fee figures"
        );
        put(
            &cache,
            &tracker,
            &proof,
            &raw(json!({"block_height": 0})),
            block0,
        );
        assert!(get(&cache, &tracker, &proof).is_some(), "two deep: kept");
        extend(&tracker, &one, 2);
        assert!(
            get(&cache, &tracker, &proof).is_some(),
            "still on the verified chain"
        );
        // Hits and misses are counted for cacheable calls only: the transaction, the fee and
        // the proof twice hit; the first transaction, the balance, the shallow proof and the
        // stale fee missed.
        assert_eq!(cache.hits.load(Ordering::Relaxed), 4);
        assert_eq!(cache.misses.load(Ordering::Relaxed), 4);
    }
    #[test]
    fn a_proof_is_filed_under_the_block_it_was_checked_against() {
        let (_dir, tracker) = tracker();
        let genesis =
            bitcoin::blockdata::constants::genesis_block(bitcoin::Network::Regtest).header;
        let cache = AnswerCache::new(100, 1 << 20, 1);
        let one = extend(&tracker, &genesis, 1);
        // A one-transaction block: its coinbase's txid is the merkle root, proven by an empty
        // branch.
        let txid = one.merkle_root.to_string();
        let proof = call("blockchain.transaction.get_merkle", json!([txid, 1]));
        let answer = raw(json!({"block_height": 1, "merkle": [], "pos": 0}));
        let verdict = crate::verify::check(&tracker, &proof, &answer);
        assert_eq!(
            verdict.block(),
            Some(ProvenBlock {
                height: 1,
                hash: one.block_hash()
            })
        );
        // Before the answer reaches the cache, the chain reorganises to another block 1 (equal
        // work; the upstreams' majority announces it), whose merkle root is another.
        let other = child(&genesis, 2);
        let other_tip = Tip {
            height: 1,
            hex: bitcoin::consensus::encode::serialize_hex(&other),
        };
        assert_eq!(
            tracker.place_tip(&other_tip),
            crate::verify::Placement::Side
        );
        tracker.break_tie(&[other_tip.clone(), other_tip]);
        assert_eq!(tracker.with_chain(|c| c.hash(1)), Some(other.block_hash()));
        assert!(!crate::verify::check(&tracker, &proof, &answer).is_proven());
        // The proof was checked against the old block: it is not served for the new one.
        put(&cache, &tracker, &proof, &answer, verdict.block());
        assert!(
            get(&cache, &tracker, &proof).is_none(),
            "a proof of the old block filed under the new one"
        );
        // A proof put without the block it was checked against is not kept either.
        let proof_other = call(
            "blockchain.transaction.get_merkle",
            json!([other.merkle_root.to_string(), 1]),
        );
        put(&cache, &tracker, &proof_other, &answer, None);
        assert!(get(&cache, &tracker, &proof_other).is_none());
        // Checked against the block the chain has: kept.
        let verdict = crate::verify::check(&tracker, &proof_other, &answer);
        put(&cache, &tracker, &proof_other, &answer, verdict.block());
        assert!(get(&cache, &tracker, &proof_other).is_some());
    }

    #[test]
    fn an_answer_kept_by_status_is_served_only_at_that_status() {
        let (_dir, tracker) = tracker();
        let cache = AnswerCache::new(100, 1 << 20, 1);
        let answer = RawValue::from_string("{\"confirmed\":5,\"unconfirmed\":0}".into()).unwrap();
        let s1 = serde_json::json!("aa".repeat(32));
        let s2 = serde_json::json!("bb".repeat(32));
        cache.put_at_status("k".into(), &answer, s1.clone());
        assert_eq!(
            cache.get_at_status("k", &s1).map(|r| r.get().to_string()),
            Some(answer.get().to_string())
        );
        assert!(cache.get_at_status("k", &s2).is_none(), "another status");
        assert!(cache.get_at_status("k", &serde_json::Value::Null).is_none());
        // Not an answer for a plain lookup, which knows no status.
        assert!(cache.get(&tracker, "k").is_none());
        // A newer answer at the new status replaces it; a lookup at another status drops it
        // (the status moved on).
        cache.put_at_status("k".into(), &answer, s2.clone());
        assert!(cache.get_at_status("k", &s2).is_some());
        assert!(cache.get_at_status("k", &s1).is_none());
        assert!(cache.get_at_status("k", &s2).is_none());
    }

    #[test]
    fn the_cache_is_bounded_in_bytes_least_recently_used_first_out() {
        let (_dir, tracker) = tracker();
        // Room for three 1 kB answers (key "blockchain.transaction.get|" and 64 hex digits),
        // not four.
        let one = 1024 + 2 + ENTRY_OVERHEAD + 91;
        let cache = AnswerCache::new(1000, 3 * one + one / 2, 1);
        let tx = |i: usize| call("blockchain.transaction.get", json!([format!("{i:064x}")]));
        let big = raw(json!("ab".repeat(512)));
        for i in 0..3 {
            put(&cache, &tracker, &tx(i), &big, None);
        }
        assert!(get(&cache, &tracker, &tx(0)).is_some(), "three fit");
        // A fourth pushes out the least recently used (1, since 0 was just read).
        put(&cache, &tracker, &tx(3), &big, None);
        assert!(get(&cache, &tracker, &tx(1)).is_none());
        for i in [0, 2, 3] {
            assert!(get(&cache, &tracker, &tx(i)).is_some(), "{i}");
        }
        let held = cache.entries.lock().unwrap().bytes;
        assert_eq!(held, 3 * one);
        // An answer larger than the whole bound is not kept, and pushes nothing out.
        let huge = raw(json!("ab".repeat(4096)));
        put(&cache, &tracker, &tx(9), &huge, None);
        assert!(get(&cache, &tracker, &tx(9)).is_none());
        assert!(get(&cache, &tracker, &tx(3)).is_some());
        // Replacing an entry does not count it twice.
        put(&cache, &tracker, &tx(3), &big, None);
        assert_eq!(cache.entries.lock().unwrap().bytes, held);
        // No bound at all keeps nothing.
        let none = AnswerCache::new(1000, 0, 1);
        put(&none, &tracker, &tx(0), &big, None);
        assert!(get(&none, &tracker, &tx(0)).is_none());
    }
}
