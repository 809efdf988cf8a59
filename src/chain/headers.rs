//! The verified header chain: the one thing in the gateway no upstream can lie about.
//!
//! Every header that enters is checked here, in the order Bitcoin Core checks it: it links to
//! its parent, carries exactly the bits the difficulty rules require, its hash meets that
//! target, it matches any checkpoint at its height, its timestamp is above the median of the
//! previous eleven (and, on testnet4, not more than 600 s before its parent at a period
//! boundary), and its version is not below what BIP34/66/65 demand at its height.
//!
//! Headers arrive in chunks (`blockchain.block.headers` gives up to 2016 at a time). A chunk is
//! all or nothing: it is checked completely against its parent before anything changes. The
//! best chain is the one with the most cumulative work; a competing branch that forks off
//! within the reorg window is kept aside (bounded) and becomes the best chain only once it has
//! strictly more work. Checking is hashing-only: one double-SHA256 per header, the state the
//! difficulty rules need is carried forward, and a chunk costs one allocation, not one per
//! header.
//!
//! Memory: headers are kept in memory (80 bytes each, about 70 MB for mainnet). Block hashes are
//! not stored: the hash of block `h` is the `prev_blockhash` of block `h + 1`, so only the tip's
//! hash is kept, and the hash index maps a 64-bit prefix to a height. The cumulative work is kept
//! at every 2016th height (`work.rs`, about 14 KB for mainnet).
//!
//! A chunk is refused cheaply first: its first header must meet its own bits (one hash), those
//! bits must not be above the network's proof-of-work limit, and its parent must be within the
//! reorg window. Only then is its place found and work computed, so a header that costs an
//! upstream nothing to make costs the gateway next to nothing to refuse.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use bitcoin::block::Header;
use bitcoin::consensus::encode::{deserialize, serialize_hex};
use bitcoin::hashes::{sha256d, Hash};
use bitcoin::hex::FromHex;
use bitcoin::pow::{CompactTarget, Target, Work};
use bitcoin::{BlockHash, Network};

use super::difficulty::{required_bits, DifficultyContext};
use super::merkle;
use super::params::ChainParams;
use super::store::{HeaderStore, StoreError};
use super::work::{work_of, zero_work, WorkMarks};

/// How far below the tip a competing branch may fork off by default (one difficulty period).
pub const DEFAULT_REORG_WINDOW: u32 = 2016;

/// At most this many headers of competing branches are kept aside.
const MAX_SIDE_HEADERS: usize = 4 * 2016;

/// Header proofs cache the roots of complete sub-trees of `2^PROOF_DEPTH` block hashes.
const PROOF_DEPTH: u32 = 11;

/// Testnet4 (BIP-94): a period's first block may be at most this much older than its parent.
const MAX_TIMEWARP: i64 = 600;

/// Why a chunk of headers was refused. The header at fault is [`Rejected::height`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// A header at height 0 that is not this network's genesis.
    BadGenesis,
    /// `prev_blockhash` does not match the previous header of the chunk.
    BadLink,
    /// `bits` differ from what the difficulty rules require.
    BadTarget,
    /// The hash does not meet the required target.
    BadPow,
    /// The hash differs from the checkpoint at this height.
    Checkpoint,
    /// Timestamp not above the median of the previous eleven blocks, or a testnet4 time warp.
    BadTime,
    /// Version below what BIP34/66/65 require at this height.
    BadVersion,
    /// The branch forks off further below the tip than the reorg window allows.
    TooOld,
    /// The first header's parent is unknown (neither on the best chain at the height before it
    /// nor on a kept competing branch).
    Unconnected,
    /// The data is not a whole number of 80-byte headers in hex.
    BadEncoding,
}

impl RejectReason {
    /// A stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::BadGenesis => "bad_genesis",
            RejectReason::BadLink => "bad_link",
            RejectReason::BadTarget => "bad_target",
            RejectReason::BadPow => "bad_pow",
            RejectReason::Checkpoint => "checkpoint",
            RejectReason::BadTime => "bad_time",
            RejectReason::BadVersion => "bad_version",
            RejectReason::TooOld => "too_old",
            RejectReason::Unconnected => "unconnected",
            RejectReason::BadEncoding => "bad_encoding",
        }
    }
}

/// A chunk of headers was refused; nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("header at height {height} rejected: {}", reason.as_str())]
pub struct Rejected {
    /// Height of the offending header (of the first header for `Unconnected`/`TooOld`).
    pub height: u32,
    /// What was wrong with it.
    pub reason: RejectReason,
}

/// What a successfully checked chunk changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Every header was already on the best chain.
    Known,
    /// Heights `from..=tip` were appended to the best chain.
    Extended {
        /// First new height.
        from: u32,
        /// New tip height.
        tip: u32,
    },
    /// The best chain switched to a branch with more work.
    Reorganized {
        /// Height of the last block both chains share.
        fork: u32,
        /// How many blocks of the old best chain were disconnected.
        disconnected: u32,
        /// New tip height.
        tip: u32,
    },
    /// A valid competing branch without more work than the best chain; kept aside.
    SideBranch {
        /// Height of the last block it shares with the best chain.
        fork: u32,
        /// Height of the branch's newest header.
        tip: u32,
    },
}

/// The newest header of the best chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tip {
    /// Its height.
    pub height: u32,
    /// Its hash.
    pub hash: BlockHash,
    /// The header itself.
    pub header: Header,
}

/// A header's merkle proof to the root of all block hashes up to `cp_height`, in the shape of
/// `blockchain.block.header(height, cp_height)`: hashes as display-order hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderProof {
    /// Sibling hashes from the leaf up.
    pub branch: Vec<String>,
    /// Merkle root of the block hashes of heights `0..=cp_height`.
    pub root: String,
}

/// A header proof that cannot be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// Not `height <= cp_height <= tip`.
    #[error("need height {height} <= cp_height {cp_height} <= tip {tip}")]
    OutOfRange {
        /// Requested height.
        height: u32,
        /// Requested checkpoint height.
        cp_height: u32,
        /// Current tip height.
        tip: u32,
    },
}

/// A header of a competing branch, kept aside.
#[derive(Debug, Clone)]
struct SideHeader {
    header: Header,
    height: u32,
    /// Cumulative work of the branch up to and including this header.
    work: Work,
}

/// Where a chunk attaches: a block of the best chain, or a kept branch and the path to it.
struct Base {
    /// Last block shared with the best chain.
    fork: u32,
    /// Height of the chunk's parent.
    parent: u32,
    /// Side-branch headers at heights `fork + 1..=parent` (empty on the best chain).
    path: Vec<Header>,
    /// Cumulative work up to and including the parent.
    work: Work,
}

/// The validation state at the last checked header, carried forward header by header.
#[derive(Clone)]
struct Cursor {
    diff: DifficultyContext,
    hash: BlockHash,
    /// The last (up to) eleven timestamps, as a ring.
    times: [u32; 11],
    n_times: usize,
    next_slot: usize,
    work: Work,
}

impl Cursor {
    fn push_time(&mut self, time: u32) {
        self.times[self.next_slot] = time;
        self.next_slot = (self.next_slot + 1) % self.times.len();
        self.n_times = (self.n_times + 1).min(self.times.len());
    }

    /// Bitcoin Core's `GetMedianTimePast`: the middle of the sorted last eleven timestamps.
    fn median_time_past(&self) -> u32 {
        let mut sorted = self.times;
        let sorted = &mut sorted[..self.n_times];
        sorted.sort_unstable();
        sorted[sorted.len() / 2]
    }
}

/// The hash of block `height` of a chain whose tip hash is `tip_hash`.
fn hash_at(headers: &[Header], tip_hash: &BlockHash, height: u32) -> BlockHash {
    let h = height as usize;
    if h + 1 == headers.len() {
        *tip_hash
    } else {
        headers[h + 1].prev_blockhash
    }
}

/// Block hash → height for the best chain, keyed by a 64-bit prefix of the hash (the part
/// proof of work leaves random); the rare prefix collision goes to `overflow`.
#[derive(Default)]
struct HashIndex {
    by_prefix: HashMap<u64, u32>,
    overflow: HashMap<BlockHash, u32>,
}

fn prefix(hash: &BlockHash) -> u64 {
    let mut key = [0u8; 8];
    key.copy_from_slice(&hash.as_byte_array()[..8]);
    u64::from_le_bytes(key)
}

impl HashIndex {
    fn insert(&mut self, hash: BlockHash, height: u32, headers: &[Header], tip: &BlockHash) {
        let key = prefix(&hash);
        match self.by_prefix.get(&key) {
            Some(&other) if hash_at(headers, tip, other) != hash => {
                self.overflow.insert(hash, height);
            }
            _ => {
                self.by_prefix.insert(key, height);
            }
        }
    }

    fn remove(&mut self, hash: &BlockHash, height: u32) {
        let key = prefix(hash);
        if self.by_prefix.get(&key) == Some(&height) {
            self.by_prefix.remove(&key);
        } else {
            self.overflow.remove(hash);
        }
    }

    fn get(&self, hash: &BlockHash, headers: &[Header], tip: &BlockHash) -> Option<u32> {
        if let Some(&height) = self.by_prefix.get(&prefix(hash)) {
            if (height as usize) < headers.len() && hash_at(headers, tip, height) == *hash {
                return Some(height);
            }
        }
        self.overflow.get(hash).copied()
    }
}

/// Roots of complete `2^depth`-leaf sub-trees of the block-hash tree, filled on demand.
struct ProofCache {
    depth: u32,
    roots: Vec<sha256d::Hash>,
}

/// Decode the concatenated hex of whole 80-byte headers (`blockchain.block.headers` "hex").
pub fn parse_headers_hex(hex: &str) -> Option<Vec<Header>> {
    let bytes = Vec::<u8>::from_hex(hex.trim()).ok()?;
    if bytes.len() % 80 != 0 {
        return None;
    }
    bytes
        .chunks(80)
        .map(|c| deserialize::<Header>(c).ok())
        .collect()
}

/// The best chain of headers from genesis, verified, with competing branches kept aside.
pub struct HeaderChain {
    params: ChainParams,
    headers: Vec<Header>,
    tip_hash: BlockHash,
    index: HashIndex,
    total_work: Work,
    /// Cumulative work at every 2016th height of the best chain.
    work_marks: WorkMarks,
    side: HashMap<BlockHash, SideHeader>,
    reorg_window: u32,
    works: HashMap<CompactTarget, Work>,
    verified: u64,
    proofs: Mutex<ProofCache>,
    store: Option<HeaderStore>,
    persist_error: Option<String>,
}

impl std::fmt::Debug for HeaderChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderChain")
            .field("network", &self.params.network())
            .field("height", &self.height())
            .field("tip", &self.tip_hash)
            .field("side_headers", &self.side.len())
            .finish()
    }
}

impl HeaderChain {
    /// An in-memory chain of `network` holding only its genesis block.
    pub fn new(network: Network) -> HeaderChain {
        HeaderChain::with_params(ChainParams::new(network))
    }

    /// An in-memory chain with custom rules, holding only `params.genesis`.
    pub fn with_params(params: ChainParams) -> HeaderChain {
        let genesis = params.genesis;
        let tip_hash = genesis.block_hash();
        let mut works = HashMap::new();
        let total_work = work_of(&mut works, genesis.bits);
        let mut chain = HeaderChain {
            params,
            headers: vec![genesis],
            tip_hash,
            index: HashIndex::default(),
            total_work,
            work_marks: WorkMarks::default(),
            side: HashMap::new(),
            reorg_window: DEFAULT_REORG_WINDOW,
            works,
            verified: 0,
            proofs: Mutex::new(ProofCache {
                depth: PROOF_DEPTH,
                roots: Vec::new(),
            }),
            store: None,
            persist_error: None,
        };
        chain
            .index
            .insert(tip_hash, 0, &chain.headers, &chain.tip_hash);
        chain
    }

    /// A chain persisted in `dir`. Headers the store vouches for (up to the height recorded in
    /// its sidecar, whose hash must match) are loaded without re-verification; anything after
    /// that is verified again as if it had just arrived. A header that disagrees with a
    /// checkpoint is cut off with everything after it.
    pub fn open(params: ChainParams, dir: &Path) -> Result<HeaderChain, StoreError> {
        let (mut store, loaded) = HeaderStore::open(dir, &params)?;
        let mut chain = HeaderChain::with_params(params);
        let trusted = chain.adopt_trusted(&loaded.headers[..loaded.trusted as usize]);
        store.truncate(trusted, chain.tip_hash)?;
        chain.store = Some(store);
        let rest = &loaded.headers[trusted as usize..];
        if !rest.is_empty() {
            tracing::info!(
                count = rest.len(),
                "re-verifying stored headers past the sidecar"
            );
        }
        let mut start = trusted;
        for chunk in rest.chunks(2016) {
            if let Err(rejected) = chain.accept(start, chunk) {
                tracing::warn!(%rejected, "dropping stored headers that fail verification");
                break;
            }
            start += chunk.len() as u32;
        }
        Ok(chain)
    }

    /// Take `headers` (starting at genesis) as the best chain without verifying them. Returns
    /// how many were kept (fewer if one disagrees with a checkpoint).
    fn adopt_trusted(&mut self, headers: &[Header]) -> u32 {
        let mut keep = headers.len();
        for cp in &self.params.checkpoints {
            let h = cp.height as usize;
            if h >= keep {
                break;
            }
            let hash = if h + 1 < keep {
                headers[h + 1].prev_blockhash
            } else {
                headers[h].block_hash()
            };
            if hash != cp.hash {
                tracing::warn!(
                    height = cp.height,
                    "stored header disagrees with a checkpoint"
                );
                keep = h;
                break;
            }
        }
        let keep = keep.max(1);
        self.headers.clear();
        self.headers.extend_from_slice(&headers[..keep]);
        self.tip_hash = self.headers[keep - 1].block_hash();
        self.index = HashIndex::default();
        self.index.by_prefix.reserve(keep);
        let mut total = zero_work();
        for (height, header) in self.headers.iter().enumerate() {
            total = total + work_of(&mut self.works, header.bits);
            let hash = hash_at(&self.headers, &self.tip_hash, height as u32);
            self.index
                .insert(hash, height as u32, &self.headers, &self.tip_hash);
        }
        self.total_work = total;
        self.work_marks.sync(&self.headers, 0, &mut self.works);
        keep as u32
    }

    /// The rules this chain enforces.
    pub fn params(&self) -> &ChainParams {
        &self.params
    }

    /// The network of this chain.
    pub fn network(&self) -> Network {
        self.params.network()
    }

    /// How far below the tip a competing branch may fork off.
    pub fn reorg_window(&self) -> u32 {
        self.reorg_window
    }

    /// Change how far below the tip a competing branch may fork off.
    pub fn set_reorg_window(&mut self, blocks: u32) {
        self.reorg_window = blocks;
    }

    /// Height of the best chain's tip.
    pub fn height(&self) -> u32 {
        (self.headers.len() - 1) as u32
    }

    /// The best chain's tip.
    pub fn tip(&self) -> Tip {
        Tip {
            height: self.height(),
            hash: self.tip_hash,
            header: self.headers[self.headers.len() - 1],
        }
    }

    /// The best chain's header at `height`.
    pub fn header(&self, height: u32) -> Option<&Header> {
        self.headers.get(height as usize)
    }

    /// The best chain's header at `height` as 160 hex characters.
    pub fn header_hex(&self, height: u32) -> Option<String> {
        self.header(height).map(serialize_hex)
    }

    /// The hash of the best chain's block at `height`.
    pub fn hash(&self, height: u32) -> Option<BlockHash> {
        ((height as usize) < self.headers.len())
            .then(|| hash_at(&self.headers, &self.tip_hash, height))
    }

    /// Up to `count` best-chain headers from `start` (fewer near the tip, none past it).
    pub fn headers(&self, start: u32, count: u32) -> &[Header] {
        let start = (start as usize).min(self.headers.len());
        let end = start.saturating_add(count as usize).min(self.headers.len());
        &self.headers[start..end]
    }

    /// [`headers`](HeaderChain::headers) as one hex string, the `blockchain.block.headers`
    /// "hex" form.
    pub fn headers_hex(&self, start: u32, count: u32) -> String {
        self.headers(start, count)
            .iter()
            .map(serialize_hex)
            .collect()
    }

    /// Total work of the best chain, genesis included.
    pub fn cumulative_work(&self) -> Work {
        self.total_work
    }

    /// Whether `hash` is a block of the best chain.
    pub fn contains(&self, hash: &BlockHash) -> bool {
        self.height_of(hash).is_some()
    }

    /// The height of `hash` on the best chain.
    pub fn height_of(&self, hash: &BlockHash) -> Option<u32> {
        self.index.get(hash, &self.headers, &self.tip_hash)
    }

    /// How many headers this instance has verified and accepted (on the best chain or a kept
    /// branch). Headers loaded from the store on trust are not counted, nor refused chunks.
    pub fn verified_count(&self) -> u64 {
        self.verified
    }

    /// How many headers of competing branches are kept aside.
    pub fn side_headers(&self) -> usize {
        self.side.len()
    }

    /// The last error writing the store, if the latest write failed. The chain itself is
    /// unaffected (it lives in memory); the next change, or [`HeaderChain::flush`], retries.
    pub fn persist_error(&self) -> Option<&str> {
        self.persist_error.as_deref()
    }

    /// Write any part of the best chain not yet on disk.
    pub fn flush(&mut self) -> io::Result<()> {
        let len = self.headers.len() as u32;
        self.persist(len);
        match &self.persist_error {
            None => Ok(()),
            Some(e) => Err(io::Error::other(e.clone())),
        }
    }

    /// Decode concatenated header hex and [`accept`](HeaderChain::accept) it.
    pub fn accept_hex(&mut self, start: u32, hex: &str) -> Result<Accepted, Rejected> {
        let headers = parse_headers_hex(hex).ok_or(Rejected {
            height: start,
            reason: RejectReason::BadEncoding,
        })?;
        self.accept(start, &headers)
    }

    /// Check a chunk of consecutive headers claimed to start at height `start` and add it.
    ///
    /// Headers already on the best chain are skipped. The rest must attach to the best chain
    /// (extending it, or forking off within the reorg window) or to a kept competing branch.
    /// The chunk is checked in full before anything changes; a refused chunk changes nothing.
    pub fn accept(&mut self, start: u32, headers: &[Header]) -> Result<Accepted, Rejected> {
        let tip = self.height();
        let mut skip = 0usize;
        while skip < headers.len() {
            let h = start as usize + skip;
            if h > tip as usize || self.headers[h] != headers[skip] {
                break;
            }
            skip += 1;
        }
        if skip == headers.len() {
            return Ok(Accepted::Known);
        }
        let new = &headers[skip..];
        let first = u32::try_from(start as usize + skip)
            .ok()
            .filter(|f| f.checked_add(new.len() as u32).is_some())
            .ok_or(Rejected {
                height: start,
                reason: RejectReason::Unconnected,
            })?;
        if first == 0 {
            return Err(Rejected {
                height: 0,
                reason: RejectReason::BadGenesis,
            });
        }
        // Cheap refusals first: one hash, and no walk over the chain.
        check_own_work(&self.params, &new[0]).map_err(|reason| Rejected {
            height: first,
            reason,
        })?;
        if (first - 1).saturating_add(self.reorg_window) < tip {
            // Wherever it attaches, it forks off at or below its parent.
            return Err(Rejected {
                height: first,
                reason: RejectReason::TooOld,
            });
        }
        let base = self
            .locate_parent(first - 1, &new[0].prev_blockhash)
            .ok_or(Rejected {
                height: first,
                reason: RejectReason::Unconnected,
            })?;
        if base.fork.saturating_add(self.reorg_window) < tip {
            return Err(Rejected {
                height: first,
                reason: RejectReason::TooOld,
            });
        }
        let cursor = self.cursor_at(&base, new[0].prev_blockhash);
        let checked = validate(&self.params, &mut self.works, cursor, first, new)?;
        self.verified += new.len() as u64;
        Ok(self.commit(base, first, new, &checked, false))
    }

    /// Switches the best chain to the kept competing branch whose tip is `tip_hash`, when that
    /// branch has exactly as much work as the best chain: a tie that the consensus rules leave
    /// open and the caller breaks (by a majority of upstreams). Returns `None` when `tip_hash`
    /// is not the tip of such a branch.
    pub fn prefer(&mut self, tip_hash: &BlockHash) -> Option<Accepted> {
        let side = self.side.get(tip_hash)?;
        let (header, height, work) = (side.header, side.height, side.work);
        if work != self.total_work || height == 0 {
            return None;
        }
        let base = self.locate_parent(height - 1, &header.prev_blockhash)?;
        Some(self.commit(base, height, &[header], &[(*tip_hash, work)], true))
    }

    /// Find the block `hash` at `height`, on the best chain or on a kept branch.
    fn locate_parent(&self, height: u32, hash: &BlockHash) -> Option<Base> {
        let tip = self.height();
        if height <= tip && hash_at(&self.headers, &self.tip_hash, height) == *hash {
            return Some(Base {
                fork: height,
                parent: height,
                path: Vec::new(),
                work: self.work_at(height),
            });
        }
        let top = self.side.get(hash).filter(|s| s.height == height)?;
        let mut path = Vec::new();
        let mut cur = top;
        loop {
            path.push(cur.header);
            let below = cur.height.checked_sub(1)?;
            let prev = cur.header.prev_blockhash;
            if below <= tip && hash_at(&self.headers, &self.tip_hash, below) == prev {
                path.reverse();
                return Some(Base {
                    fork: below,
                    parent: height,
                    path,
                    work: top.work,
                });
            }
            cur = self.side.get(&prev).filter(|s| s.height == below)?;
        }
    }

    /// Cumulative work of the best chain up to and including `height`: at most 2016 headers
    /// are summed, never a walk from the tip.
    fn work_at(&self, height: u32) -> Work {
        self.work_marks.at(&self.headers, self.total_work, height)
    }

    /// Cumulative work of the best chain up to and including `height`.
    #[cfg(test)]
    pub(crate) fn work_up_to(&self, height: u32) -> Work {
        self.work_at(height)
    }

    /// Bytes held by the index of cumulative work (for measurements).
    pub fn work_index_bytes(&self) -> usize {
        self.work_marks.bytes()
    }

    /// The validation state just after the chunk's parent.
    fn cursor_at(&self, base: &Base, parent_hash: BlockHash) -> Cursor {
        let ancestor = |h: u32| -> &Header {
            if h <= base.fork {
                &self.headers[h as usize]
            } else {
                &base.path[(h - base.fork - 1) as usize]
            }
        };
        let p = base.parent;
        let parent = ancestor(p);
        let interval = self.params.interval();
        let first = ancestor(p - p % interval);
        let mut last_real = parent.bits;
        if self.params.consensus.allow_min_difficulty_blocks {
            let limit = self.params.pow_limit_bits();
            let mut k = p;
            while k % interval != 0 && ancestor(k).bits == limit {
                k -= 1;
            }
            last_real = ancestor(k).bits;
        }
        let mut cursor = Cursor {
            diff: DifficultyContext {
                prev_height: p,
                prev_time: parent.time,
                prev_bits: parent.bits,
                period_first_time: first.time,
                period_first_bits: first.bits,
                last_real_bits: last_real,
            },
            hash: parent_hash,
            times: [0; 11],
            n_times: 0,
            next_slot: 0,
            work: base.work,
        };
        for h in p.saturating_sub(10)..=p {
            cursor.push_time(ancestor(h).time);
        }
        cursor
    }

    /// Apply a checked chunk: extend, reorganise or keep it aside.
    fn commit(
        &mut self,
        base: Base,
        first: u32,
        new: &[Header],
        checked: &[(BlockHash, Work)],
        take_tie: bool,
    ) -> Accepted {
        let tip = self.height();
        let (last_hash, new_work) = checked[checked.len() - 1];
        let new_tip = first + new.len() as u32 - 1;
        if base.path.is_empty() && base.parent == tip {
            self.headers.extend_from_slice(new);
            self.tip_hash = last_hash;
            for (k, (hash, _)) in checked.iter().enumerate() {
                self.index
                    .insert(*hash, first + k as u32, &self.headers, &self.tip_hash);
            }
            self.total_work = new_work;
            self.work_marks.sync(&self.headers, first, &mut self.works);
            self.prune_side();
            self.persist(first);
            return Accepted::Extended {
                from: first,
                tip: new_tip,
            };
        }
        if new_work < self.total_work || (new_work == self.total_work && !take_tie) {
            for (k, (header, (hash, work))) in new.iter().zip(checked).enumerate() {
                let height = first + k as u32;
                self.side.insert(
                    *hash,
                    SideHeader {
                        header: *header,
                        height,
                        work: *work,
                    },
                );
            }
            self.prune_side();
            return Accepted::SideBranch {
                fork: base.fork,
                tip: new_tip,
            };
        }
        // Reorganise: the old best chain above the fork goes aside, the branch comes in.
        let fork = base.fork;
        let old_hashes: Vec<BlockHash> = (fork + 1..=tip)
            .map(|h| hash_at(&self.headers, &self.tip_hash, h))
            .collect();
        let old = self.headers.split_off(fork as usize + 1);
        let mut work = self.work_at_before_split(&old);
        for (k, (header, hash)) in old.iter().zip(&old_hashes).enumerate() {
            let height = fork + 1 + k as u32;
            self.index.remove(hash, height);
            work = work + work_of(&mut self.works, header.bits);
            self.side.insert(
                *hash,
                SideHeader {
                    header: *header,
                    height,
                    work,
                },
            );
        }
        let mut incoming: Vec<BlockHash> = Vec::with_capacity(base.path.len() + checked.len());
        for w in base.path.windows(2) {
            incoming.push(w[1].prev_blockhash);
        }
        if !base.path.is_empty() {
            incoming.push(new[0].prev_blockhash);
        }
        incoming.extend(checked.iter().map(|(hash, _)| *hash));
        self.headers.extend_from_slice(&base.path);
        self.headers.extend_from_slice(new);
        self.tip_hash = last_hash;
        for (k, hash) in incoming.iter().enumerate() {
            self.side.remove(hash);
            self.index
                .insert(*hash, fork + 1 + k as u32, &self.headers, &self.tip_hash);
        }
        self.total_work = new_work;
        self.work_marks
            .sync(&self.headers, fork + 1, &mut self.works);
        {
            let mut proofs = self.proofs.lock().unwrap_or_else(PoisonError::into_inner);
            let keep = ((fork as usize + 1) >> proofs.depth).min(proofs.roots.len());
            proofs.roots.truncate(keep);
        }
        self.prune_side();
        self.persist(fork + 1);
        tracing::info!(
            fork,
            disconnected = old.len(),
            tip = new_tip,
            "header chain reorganised"
        );
        Accepted::Reorganized {
            fork,
            disconnected: old.len() as u32,
            tip: new_tip,
        }
    }

    /// Cumulative work at the fork, given the headers just split off above it.
    fn work_at_before_split(&mut self, old: &[Header]) -> Work {
        let mut work = self.total_work;
        for header in old {
            work = work - work_of(&mut self.works, header.bits);
        }
        work
    }

    /// Drop kept branches that can no longer win (forked off below the window) and keep the
    /// set bounded, newest first.
    fn prune_side(&mut self) {
        let floor = self.height().saturating_sub(self.reorg_window);
        self.side.retain(|_, s| s.height > floor);
        if self.side.len() > MAX_SIDE_HEADERS {
            let mut heights: Vec<u32> = self.side.values().map(|s| s.height).collect();
            heights.sort_unstable();
            let cut = heights[self.side.len() - MAX_SIDE_HEADERS];
            self.side.retain(|_, s| s.height >= cut);
        }
    }

    /// Write the best chain from `changed_from` on to the store, if there is one.
    fn persist(&mut self, changed_from: u32) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        match store.persist(&self.headers, changed_from, self.tip_hash) {
            Ok(()) => self.persist_error = None,
            Err(e) => {
                tracing::error!(error = %e, "writing the header store failed");
                self.persist_error = Some(e.to_string());
            }
        }
    }

    /// The merkle proof of the block hash at `height` against the root of all block hashes of
    /// heights `0..=cp_height`, as ElectrumX computes it for `blockchain.block.header`.
    ///
    /// Cost: the roots of complete 2048-hash sub-trees are computed once and cached (about one
    /// hash per block, once, for the first proof at a given height range); each proof then
    /// hashes at most two sub-trees plus the cached level: about 4,500 double-SHA256 of 64
    /// bytes for a mainnet-sized chain.
    pub fn header_proof(&self, height: u32, cp_height: u32) -> Result<HeaderProof, ProofError> {
        let tip = self.height();
        if height > cp_height || cp_height > tip {
            return Err(ProofError::OutOfRange {
                height,
                cp_height,
                tip,
            });
        }
        let out_of_range = ProofError::OutOfRange {
            height,
            cp_height,
            tip,
        };
        let leaf = |h: usize| hash_at(&self.headers, &self.tip_hash, h as u32).to_raw_hash();
        let leaves = |range: std::ops::Range<usize>| range.map(leaf).collect::<Vec<_>>();
        let n = cp_height as usize + 1;
        let index = height as usize;
        let mut cache = self.proofs.lock().unwrap_or_else(PoisonError::into_inner);
        let depth = cache.depth as usize;
        let seg = 1usize << depth;
        let (branch, root) = if n <= seg {
            merkle::branch_and_root(&leaves(0..n), index, None).ok_or(out_of_range)?
        } else {
            let complete = n >> depth;
            while cache.roots.len() < complete {
                let j = cache.roots.len();
                let root = merkle::root(&leaves(j * seg..(j + 1) * seg), Some(depth))
                    .ok_or(out_of_range)?;
                cache.roots.push(root);
            }
            let mut level = cache.roots[..complete].to_vec();
            drop(cache);
            if n % seg != 0 {
                level.push(
                    merkle::root(&leaves(complete * seg..n), Some(depth)).ok_or(out_of_range)?,
                );
            }
            let start = (index >> depth) << depth;
            let end = (start + seg).min(n);
            let (mut branch, _) =
                merkle::branch_and_root(&leaves(start..end), index - start, Some(depth))
                    .ok_or(out_of_range)?;
            let (upper, root) =
                merkle::branch_and_root(&level, index >> depth, None).ok_or(out_of_range)?;
            branch.extend(upper);
            (branch, root)
        };
        Ok(HeaderProof {
            branch: branch.iter().map(|h| h.to_string()).collect(),
            root: root.to_string(),
        })
    }

    /// Use sub-trees of `2^depth` hashes for header proofs (tests exercise small ones).
    #[cfg(test)]
    pub(crate) fn set_proof_depth(&mut self, depth: u32) {
        let proofs = self
            .proofs
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        proofs.depth = depth;
        proofs.roots.clear();
    }
}

/// Checks what a header proves on its own, before anything about its place is known: its bits
/// are not above `params`' proof-of-work limit (`BadTarget`) and its hash meets them
/// (`BadPow`). One double-SHA256.
pub fn check_own_work(params: &ChainParams, header: &Header) -> Result<(), RejectReason> {
    let target = Target::from_compact(header.bits);
    if target > Target::from_compact(params.pow_limit_bits()) {
        return Err(RejectReason::BadTarget);
    }
    header
        .validate_pow(target)
        .map(|_| ())
        .map_err(|_| RejectReason::BadPow)
}

/// Check `new` (the first at height `first`) against the state after its parent. Returns each
/// header's hash with the cumulative work up to it.
fn validate(
    params: &ChainParams,
    works: &mut HashMap<CompactTarget, Work>,
    mut cur: Cursor,
    first: u32,
    new: &[Header],
) -> Result<Vec<(BlockHash, Work)>, Rejected> {
    let interval = params.interval();
    let consensus = &params.consensus;
    let mut out = Vec::with_capacity(new.len());
    for (k, header) in new.iter().enumerate() {
        let height = first + k as u32;
        let reject = |reason| Rejected { height, reason };
        if header.prev_blockhash != cur.hash {
            return Err(reject(RejectReason::BadLink));
        }
        let required = required_bits(params, &cur.diff, header.time);
        if header.bits != required {
            return Err(reject(RejectReason::BadTarget));
        }
        let hash = header
            .validate_pow(Target::from_compact(required))
            .map_err(|_| reject(RejectReason::BadPow))?;
        if params
            .checkpoint_at(height)
            .is_some_and(|cp| cp.hash != hash)
        {
            return Err(reject(RejectReason::Checkpoint));
        }
        if header.time <= cur.median_time_past() {
            return Err(reject(RejectReason::BadTime));
        }
        if params.bip94
            && height % interval == 0
            && i64::from(header.time) < i64::from(cur.diff.prev_time) - MAX_TIMEWARP
        {
            return Err(reject(RejectReason::BadTime));
        }
        let version = header.version.to_consensus();
        if (version < 2 && height >= consensus.bip34_height)
            || (version < 3 && height >= consensus.bip66_height)
            || (version < 4 && height >= consensus.bip65_height)
        {
            return Err(reject(RejectReason::BadVersion));
        }
        cur.diff = cur.diff.advance(params, header);
        cur.hash = hash;
        cur.push_time(header.time);
        cur.work = cur.work + work_of(works, header.bits);
        out.push((hash, cur.work));
    }
    Ok(out)
}

#[cfg(test)]
mod index_tests {
    use super::*;

    /// Hashes sharing their first eight bytes still resolve to their own heights.
    #[test]
    fn prefix_collisions_fall_back_to_full_hashes() {
        let hash = |tail: u8| {
            let mut b = [0x11u8; 32];
            b[31] = tail;
            BlockHash::from_byte_array(b)
        };
        let (h0, h1, h2, h3) = (hash(0), hash(1), hash(2), hash(3));
        let genesis = ChainParams::new(Network::Regtest).genesis;
        let mut headers = vec![genesis; 4];
        headers[1].prev_blockhash = h0;
        headers[2].prev_blockhash = h1;
        headers[3].prev_blockhash = h2;
        let tip = h3;
        let mut index = HashIndex::default();
        for (height, h) in [h0, h1, h2, h3].into_iter().enumerate() {
            index.insert(h, height as u32, &headers, &tip);
        }
        assert_eq!(index.overflow.len(), 3);
        for (height, h) in [h0, h1, h2, h3].into_iter().enumerate() {
            assert_eq!(index.get(&h, &headers, &tip), Some(height as u32));
        }
        index.remove(&h0, 0);
        index.remove(&h2, 2);
        assert_eq!(index.get(&h0, &headers, &tip), None);
        assert_eq!(index.get(&h2, &headers, &tip), None);
        assert_eq!(index.get(&h1, &headers, &tip), Some(1));
        assert_eq!(index.get(&h3, &headers, &tip), Some(3));
        assert_eq!(index.get(&hash(9), &headers, &tip), None);
    }
}
