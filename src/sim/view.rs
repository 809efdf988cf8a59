//! A view of the chain as one server sees it: blocks up to its tip plus its mempool, indexed
//! the way an Electrum server indexes them (history, unspent outputs and balances by
//! scripthash, transactions by id).
//!
//! Honest endpoints share the view of the main chain; an endpoint that lags or serves a fork
//! gets a view built from a different list of blocks, so every answer it gives (history,
//! balances, headers, proofs) is consistent with its own tip.

use bitcoin::hashes::{sha256, sha256d, Hash};
use bitcoin::{BlockHash, OutPoint, Script, Transaction, Txid};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::block::SimBlock;

/// A scripthash as Electrum shows it: reversed sha256 of the output script.
pub(crate) type Sh = [u8; 32];

/// The Electrum scripthash of an output script.
pub(crate) fn script_sh(script: &Script) -> Sh {
    let mut h = sha256::Hash::hash(script.as_bytes()).to_byte_array();
    h.reverse();
    h
}

/// Parses a 64-hex-digit scripthash.
pub(crate) fn parse_sh(s: &str) -> Option<Sh> {
    use bitcoin::hex::FromHex;
    if s.len() != 64 {
        return None;
    }
    <[u8; 32]>::from_hex(s).ok()
}

/// Hex of a scripthash.
pub(crate) fn sh_hex(sh: &Sh) -> String {
    use bitcoin::hex::DisplayHex;
    sh.to_lower_hex_string()
}

/// A confirmed unspent output.
#[derive(Debug, Clone)]
pub(crate) struct Utxo {
    pub value: u64,
    pub sh: Sh,
    pub height: u32,
    pub coinbase: bool,
}

/// A transaction accepted into the mempool.
#[derive(Debug, Clone)]
pub(crate) struct MempoolTx {
    pub tx: Arc<Transaction>,
    pub txid: Txid,
    pub fee: u64,
    pub vsize: u64,
    /// True when it spends an output of another mempool transaction (history height -1).
    pub unconfirmed_parent: bool,
}

/// Where a transaction is: in a block (height, position) or in the mempool.
#[derive(Debug, Clone)]
pub(crate) struct TxLoc {
    pub tx: Arc<Transaction>,
    pub block: Option<(u32, u32)>,
}

/// One history entry as served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HistEntry {
    /// Block height, 0 for a mempool transaction with confirmed inputs, -1 otherwise.
    pub height: i64,
    pub txid: Txid,
    /// The fee, for mempool entries.
    pub fee: Option<u64>,
}

/// One unspent output as served by `listunspent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unspent {
    pub height: u32,
    pub txid: Txid,
    pub vout: u32,
    pub value: u64,
}

/// The index of one chain view. Cheap enough to rebuild from scratch for a few hundred blocks.
#[derive(Debug, Clone, Default)]
pub(crate) struct View {
    blocks: Vec<Arc<SimBlock>>,
    txs: HashMap<Txid, TxLoc>,
    utxos: BTreeMap<OutPoint, Utxo>,
    sh_utxos: HashMap<Sh, BTreeSet<OutPoint>>,
    history: HashMap<Sh, Vec<(u32, Txid)>>,
    mempool: Vec<MempoolTx>,
    mempool_spent: HashMap<OutPoint, Txid>,
    mempool_outputs: BTreeMap<OutPoint, (u64, Sh)>,
    mempool_sh_outputs: HashMap<Sh, BTreeSet<OutPoint>>,
    /// Values of outputs of a scripthash spent by mempool transactions.
    mempool_sh_spent: HashMap<Sh, u64>,
    mempool_history: HashMap<Sh, Vec<usize>>,
}

impl View {
    /// Indexes `blocks` (heights 0, 1, ...) with an empty mempool.
    pub fn build(blocks: &[Arc<SimBlock>]) -> View {
        let mut v = View::default();
        for b in blocks {
            v.apply_block(b.clone());
        }
        v
    }

    /// Connects a block on top of the view. The mempool must be empty.
    pub fn apply_block(&mut self, block: Arc<SimBlock>) {
        debug_assert!(self.mempool.is_empty(), "apply_block with a mempool");
        let height = self.blocks.len() as u32;
        for (pos, (tx, txid)) in block.txs.iter().zip(&block.txids).enumerate() {
            let coinbase = pos == 0;
            if !coinbase {
                for input in &tx.input {
                    if let Some(u) = self.utxos.remove(&input.previous_output) {
                        if let Some(set) = self.sh_utxos.get_mut(&u.sh) {
                            set.remove(&input.previous_output);
                        }
                        push_history(&mut self.history, u.sh, height, *txid);
                    }
                }
            }
            for (vout, out) in tx.output.iter().enumerate() {
                let sh = script_sh(&out.script_pubkey);
                let op = OutPoint::new(*txid, vout as u32);
                self.utxos.insert(
                    op,
                    Utxo {
                        value: out.value.to_sat(),
                        sh,
                        height,
                        coinbase,
                    },
                );
                self.sh_utxos.entry(sh).or_default().insert(op);
                push_history(&mut self.history, sh, height, *txid);
            }
            self.txs.insert(
                *txid,
                TxLoc {
                    tx: tx.clone(),
                    block: Some((height, pos as u32)),
                },
            );
        }
        self.blocks.push(block);
    }

    /// Accepts a transaction into the mempool, as bitcoind would minus script checks:
    /// inputs must exist and be unspent, outputs must not exceed inputs. Returns the fee.
    pub fn add_mempool(&mut self, tx: Arc<Transaction>) -> Result<u64, String> {
        let txid = tx.compute_txid();
        if let Some(loc) = self.txs.get(&txid) {
            return Err(if loc.block.is_some() {
                "transaction already in block chain".into()
            } else {
                "txn-already-in-mempool".into()
            });
        }
        if tx.input.is_empty() {
            return Err("bad-txns-vin-empty".into());
        }
        if tx.output.is_empty() {
            return Err("bad-txns-vout-empty".into());
        }
        if tx.is_coinbase() {
            return Err("coinbase".into());
        }
        let mut seen = HashSet::new();
        let mut total_in: u64 = 0;
        let mut unconfirmed_parent = false;
        let mut spent: Vec<(OutPoint, u64, Sh)> = Vec::with_capacity(tx.input.len());
        for input in &tx.input {
            let op = input.previous_output;
            if !seen.insert(op) {
                return Err("bad-txns-inputs-duplicate".into());
            }
            if self.mempool_spent.contains_key(&op) {
                return Err("txn-mempool-conflict".into());
            }
            let (value, sh) = if let Some(u) = self.utxos.get(&op) {
                (u.value, u.sh)
            } else if let Some((value, sh)) = self.mempool_outputs.get(&op) {
                unconfirmed_parent = true;
                (*value, *sh)
            } else {
                return Err("bad-txns-inputs-missingorspent".into());
            };
            total_in = total_in.saturating_add(value);
            spent.push((op, value, sh));
        }
        let mut total_out: u64 = 0;
        for out in &tx.output {
            let v = out.value.to_sat();
            if v > bitcoin::Amount::MAX_MONEY.to_sat() {
                return Err("bad-txns-vout-toolarge".into());
            }
            total_out = total_out.saturating_add(v);
        }
        if total_out > total_in {
            return Err("bad-txns-in-belowout".into());
        }
        let fee = total_in - total_out;
        let index = self.mempool.len();
        let mut touched: Vec<Sh> = Vec::new();
        for (op, value, sh) in spent {
            self.mempool_spent.insert(op, txid);
            *self.mempool_sh_spent.entry(sh).or_default() += value;
            touched.push(sh);
        }
        for (vout, out) in tx.output.iter().enumerate() {
            let sh = script_sh(&out.script_pubkey);
            let op = OutPoint::new(txid, vout as u32);
            self.mempool_outputs.insert(op, (out.value.to_sat(), sh));
            self.mempool_sh_outputs.entry(sh).or_default().insert(op);
            touched.push(sh);
        }
        for sh in touched {
            let entries = self.mempool_history.entry(sh).or_default();
            if entries.last() != Some(&index) {
                entries.push(index);
            }
        }
        self.txs.insert(
            txid,
            TxLoc {
                tx: tx.clone(),
                block: None,
            },
        );
        self.mempool.push(MempoolTx {
            vsize: tx.vsize() as u64,
            tx,
            txid,
            fee,
            unconfirmed_parent,
        });
        Ok(fee)
    }

    /// Adds transactions to the mempool in order, dropping those that no longer fit (spent or
    /// missing inputs, e.g. after a reorg). Returns how many were accepted.
    pub fn add_mempool_lenient<'a>(
        &mut self,
        txs: impl IntoIterator<Item = &'a Arc<Transaction>>,
    ) -> usize {
        txs.into_iter()
            .filter(|tx| self.add_mempool((*tx).clone()).is_ok())
            .count()
    }

    /// The tip height.
    pub fn tip_height(&self) -> u32 {
        self.blocks.len().saturating_sub(1) as u32
    }

    /// The block at `height`.
    pub fn block(&self, height: u32) -> Option<&Arc<SimBlock>> {
        self.blocks.get(height as usize)
    }

    /// All blocks, genesis first.
    pub fn blocks(&self) -> &[Arc<SimBlock>] {
        &self.blocks
    }

    /// The tip block.
    pub fn tip(&self) -> &Arc<SimBlock> {
        // A view always holds at least the genesis block once built.
        &self.blocks[self.blocks.len() - 1]
    }

    /// The mempool, in acceptance (topological) order.
    pub fn mempool(&self) -> &[MempoolTx] {
        &self.mempool
    }

    /// A transaction by id, confirmed or in the mempool.
    pub fn tx(&self, txid: &Txid) -> Option<&TxLoc> {
        self.txs.get(txid)
    }

    /// The history of a scripthash: confirmed in block order, then mempool entries (height 0
    /// before -1, then by txid).
    pub fn history(&self, sh: &Sh) -> Vec<HistEntry> {
        let mut out: Vec<HistEntry> = self
            .history
            .get(sh)
            .map(|v| {
                v.iter()
                    .map(|(h, txid)| HistEntry {
                        height: i64::from(*h),
                        txid: *txid,
                        fee: None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Some(idx) = self.mempool_history.get(sh) {
            let mut mem: Vec<(bool, String, &MempoolTx)> = idx
                .iter()
                .map(|i| &self.mempool[*i])
                .map(|m| (m.unconfirmed_parent, m.txid.to_string(), m))
                .collect();
            mem.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            out.extend(mem.into_iter().map(|(_, _, m)| HistEntry {
                height: if m.unconfirmed_parent { -1 } else { 0 },
                txid: m.txid,
                fee: Some(m.fee),
            }));
        }
        out
    }

    /// Confirmed balance and unconfirmed change of a scripthash, as ElectrumX reports them:
    /// their sum equals the total of `listunspent`.
    pub fn balance(&self, sh: &Sh) -> (u64, i64) {
        let confirmed: u64 = self
            .sh_utxos
            .get(sh)
            .map(|s| {
                s.iter()
                    .filter_map(|op| self.utxos.get(op))
                    .map(|u| u.value)
                    .sum()
            })
            .unwrap_or(0);
        let received: u64 = self
            .mempool_sh_outputs
            .get(sh)
            .map(|s| {
                s.iter()
                    .filter_map(|op| self.mempool_outputs.get(op))
                    .map(|(v, _)| *v)
                    .sum()
            })
            .unwrap_or(0);
        let spent = self.mempool_sh_spent.get(sh).copied().unwrap_or(0);
        (confirmed, received as i64 - spent as i64)
    }

    /// Unspent outputs of a scripthash: confirmed ones not spent in the mempool (in outpoint
    /// order within block order), then unspent mempool outputs with height 0.
    pub fn listunspent(&self, sh: &Sh) -> Vec<Unspent> {
        let mut out: Vec<Unspent> = Vec::new();
        if let Some(set) = self.sh_utxos.get(sh) {
            for op in set {
                if self.mempool_spent.contains_key(op) {
                    continue;
                }
                if let Some(u) = self.utxos.get(op) {
                    out.push(Unspent {
                        height: u.height,
                        txid: op.txid,
                        vout: op.vout,
                        value: u.value,
                    });
                }
            }
        }
        out.sort_by_key(|u| u.height);
        if let Some(set) = self.mempool_sh_outputs.get(sh) {
            for op in set {
                if self.mempool_spent.contains_key(op) {
                    continue;
                }
                if let Some((value, _)) = self.mempool_outputs.get(op) {
                    out.push(Unspent {
                        height: 0,
                        txid: op.txid,
                        vout: op.vout,
                        value: *value,
                    });
                }
            }
        }
        out
    }

    /// Outputs the sim's wallet may spend: confirmed outputs not spent in the mempool, as
    /// (outpoint, value, scripthash, confirmation height, coinbase).
    pub fn confirmed_spendable(&self) -> impl Iterator<Item = (&OutPoint, &Utxo)> {
        self.utxos
            .iter()
            .filter(|(op, _)| !self.mempool_spent.contains_key(op))
    }

    /// Unspent mempool outputs, as (outpoint, value, scripthash).
    pub fn mempool_spendable(&self) -> impl Iterator<Item = (&OutPoint, u64, &Sh)> {
        self.mempool_outputs
            .iter()
            .filter(|(op, _)| !self.mempool_spent.contains_key(op))
            .map(|(op, (v, sh))| (op, *v, sh))
    }

    /// The scripthash of an unspent output, confirmed or in the mempool.
    pub fn output_sh(&self, op: &OutPoint) -> Option<Sh> {
        self.utxos
            .get(op)
            .map(|u| u.sh)
            .or_else(|| self.mempool_outputs.get(op).map(|(_, sh)| *sh))
    }

    /// Block hashes of heights `0..=upto` in internal byte order.
    pub fn block_hashes(&self, upto: u32) -> Vec<[u8; 32]> {
        self.blocks[..=(upto as usize).min(self.blocks.len() - 1)]
            .iter()
            .map(|b| b.hash.to_byte_array())
            .collect()
    }

    /// The hash of the block at `height`.
    pub fn block_hash(&self, height: u32) -> Option<BlockHash> {
        self.block(height).map(|b| b.hash)
    }
}

fn push_history(history: &mut HashMap<Sh, Vec<(u32, Txid)>>, sh: Sh, height: u32, txid: Txid) {
    let entries = history.entry(sh).or_default();
    if entries.last() != Some(&(height, txid)) {
        entries.push((height, txid));
    }
}

/// The Electrum status of a history: sha256 of `"txid:height:"` concatenated, hex; `None`
/// for an empty history.
pub(crate) fn status(history: &[HistEntry]) -> Option<String> {
    use bitcoin::hex::DisplayHex;
    if history.is_empty() {
        return None;
    }
    let mut s = String::with_capacity(history.len() * 70);
    for h in history {
        s.push_str(&h.txid.to_string());
        s.push(':');
        s.push_str(&h.height.to_string());
        s.push(':');
    }
    Some(
        sha256::Hash::hash(s.as_bytes())
            .to_byte_array()
            .to_lower_hex_string(),
    )
}

/// A merkle branch for `leaves[index]` (internal byte order) and the root, folding pairs with
/// double sha256 and duplicating the last node of an odd level, as Bitcoin does.
pub(crate) fn merkle_branch(leaves: &[[u8; 32]], mut index: usize) -> (Vec<[u8; 32]>, [u8; 32]) {
    let mut level: Vec<[u8; 32]> = leaves.to_vec();
    let mut branch = Vec::new();
    if level.is_empty() {
        return (branch, [0; 32]);
    }
    while level.len() > 1 {
        if level.len() % 2 == 1 {
            let last = level[level.len() - 1];
            level.push(last);
        }
        branch.push(level[index ^ 1]);
        level = level
            .chunks(2)
            .map(|pair| {
                let mut buf = [0u8; 64];
                buf[..32].copy_from_slice(&pair[0]);
                buf[32..].copy_from_slice(&pair[1]);
                sha256d::Hash::hash(&buf).to_byte_array()
            })
            .collect();
        index /= 2;
    }
    (branch, level[0])
}

/// The levels of a block's merkle tree, leaves first, root last; each level as it is before
/// its odd last node is duplicated.
fn merkle_levels(leaves: &[[u8; 32]]) -> Vec<Vec<[u8; 32]>> {
    let mut levels = vec![leaves.to_vec()];
    while let Some(level) = levels.last().filter(|l| l.len() > 1) {
        let mut padded = level.clone();
        if padded.len() % 2 == 1 {
            padded.push(padded[padded.len() - 1]);
        }
        let next = padded
            .chunks(2)
            .map(|pair| {
                let mut buf = [0u8; 64];
                buf[..32].copy_from_slice(&pair[0]);
                buf[32..].copy_from_slice(&pair[1]);
                sha256d::Hash::hash(&buf).to_byte_array()
            })
            .collect();
        levels.push(next);
    }
    levels
}

/// A forged claim for position `index`: the highest inner node of the tree that stands at
/// `index` of its level, and the branch from it to the root. It folds to the root at `index`
/// like a leaf would, with a branch shorter than the tree's depth. `None` when no inner node
/// stands at `index` (a one-leaf tree, or an index in the right part of the leaves).
pub(crate) fn inner_node_claim(
    leaves: &[[u8; 32]],
    index: usize,
) -> Option<([u8; 32], Vec<[u8; 32]>)> {
    let levels = merkle_levels(leaves);
    let k = (1..levels.len()).rev().find(|k| index < levels[*k].len())?;
    let mut branch = Vec::new();
    let mut i = index;
    for level in &levels[k..levels.len() - 1] {
        let sibling = level.get(i ^ 1).or_else(|| level.last())?;
        branch.push(*sibling);
        i /= 2;
    }
    Some((levels[k][index], branch))
}

/// Folds a branch from a leaf at `index` to the root (the check a client performs).
#[cfg(test)]
pub(crate) fn merkle_fold(leaf: [u8; 32], branch: &[[u8; 32]], mut index: usize) -> [u8; 32] {
    let mut h = leaf;
    for sibling in branch {
        let mut buf = [0u8; 64];
        if index % 2 == 1 {
            buf[..32].copy_from_slice(sibling);
            buf[32..].copy_from_slice(&h);
        } else {
            buf[..32].copy_from_slice(&h);
            buf[32..].copy_from_slice(sibling);
        }
        h = sha256d::Hash::hash(&buf).to_byte_array();
        index /= 2;
    }
    h
}

/// Hex of a hash given in internal byte order, reversed for display as Electrum does.
pub(crate) fn hash_hex(h: &[u8; 32]) -> String {
    use bitcoin::hex::DisplayHex;
    let mut r = *h;
    r.reverse();
    r.to_lower_hex_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merkle_branch_folds_to_root() {
        for n in 1..12usize {
            let leaves: Vec<[u8; 32]> = (0..n)
                .map(|i| sha256d::Hash::hash(&[i as u8]).to_byte_array())
                .collect();
            let root = bitcoin::merkle_tree::calculate_root(
                leaves.iter().map(|l| sha256d::Hash::from_byte_array(*l)),
            )
            .unwrap()
            .to_byte_array();
            for i in 0..n {
                let (branch, r) = merkle_branch(&leaves, i);
                assert_eq!(r, root, "n={n} i={i}");
                assert_eq!(merkle_fold(leaves[i], &branch, i), root, "n={n} i={i}");
            }
        }
    }

    #[test]
    fn inner_node_claims_fold_to_the_root_with_a_short_branch() {
        for n in 1..12usize {
            let leaves: Vec<[u8; 32]> = (0..n)
                .map(|i| sha256d::Hash::hash(&[i as u8]).to_byte_array())
                .collect();
            let (full, root) = merkle_branch(&leaves, 0);
            assert_eq!(inner_node_claim(&leaves, 0).is_some(), n > 1, "n={n}");
            if n > 1 {
                assert_eq!(inner_node_claim(&leaves, 0), Some((root, Vec::new())));
            }
            for i in 0..n {
                if let Some((node, branch)) = inner_node_claim(&leaves, i) {
                    assert!(branch.len() < full.len(), "n={n} i={i}");
                    assert!(!leaves.contains(&node), "n={n} i={i}");
                    assert_eq!(merkle_fold(node, &branch, i), root, "n={n} i={i}");
                }
            }
        }
    }

    #[test]
    fn status_matches_protocol_definition() {
        assert_eq!(status(&[]), None);
        let txid: Txid = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"
            .parse()
            .unwrap();
        let h = [
            HistEntry {
                height: 5,
                txid,
                fee: None,
            },
            HistEntry {
                height: -1,
                txid,
                fee: Some(3),
            },
        ];
        let text = format!("{txid}:5:{txid}:-1:");
        let expected = {
            use bitcoin::hex::DisplayHex;
            sha256::Hash::hash(text.as_bytes())
                .to_byte_array()
                .to_lower_hex_string()
        };
        assert_eq!(status(&h).unwrap(), expected);
    }
}
