//! What an honest Electrum server must answer for a chain, computed from the raw blocks and
//! mempool the simulated bitcoind serves.
//!
//! The computation is deliberately independent of both ElectrumX and the simulator's own
//! index: it walks the blocks and transactions as parsed bytes, so an answer that matches it
//! was derived correctly from what the node served, not copied from the same code.
//!
//! It follows the protocol's definitions: history is confirmed entries in chain order, then
//! mempool entries (height 0, or -1 when an input is unconfirmed, ordered 0 before -1 and then
//! by txid, with the fee); the status is the SHA-256 of `"txid:height:"` over the history;
//! the confirmed balance is the confirmed unspent outputs, the unconfirmed balance is what the
//! mempool adds and takes away; `listunspent` leaves out outputs a mempool transaction spends.

use super::bitcoind::Snapshot;
use bitcoin::consensus::serialize;
use bitcoin::hashes::{sha256, sha256d, Hash};
use bitcoin::hex::{DisplayHex, FromHex};
use bitcoin::{OutPoint, Script, Txid};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The Electrum scripthash of an output script: its SHA-256, byte-reversed, in hex.
pub fn scripthash(script: &Script) -> String {
    let mut h = sha256::Hash::hash(script.as_bytes()).to_byte_array();
    h.reverse();
    h.to_lower_hex_string()
}

/// The status of a history (`None`: empty history).
pub fn status_of(history: &[Value]) -> Option<String> {
    if history.is_empty() {
        return None;
    }
    let text: String = history
        .iter()
        .map(|e| {
            format!(
                "{}:{}:",
                e["tx_hash"].as_str().expect("tx_hash"),
                e["height"].as_i64().expect("height")
            )
        })
        .collect();
    Some(sha256::Hash::hash(text.as_bytes()).to_string())
}

/// Folds a merkle branch (hex hashes as Electrum sends them) from a txid at `pos` up to the
/// root, returned in the header's byte order.
pub fn merkle_root(txid: &Txid, branch: &[Value], mut pos: u64) -> [u8; 32] {
    let mut h = txid.to_byte_array();
    for node in branch {
        let mut sibling: [u8; 32] =
            <[u8; 32]>::from_hex(node.as_str().expect("a hex hash")).expect("a 32-byte hash");
        sibling.reverse();
        // A node may equal its sibling: the last transaction of a level with an odd count is
        // paired with itself, and ElectrumX sends that copy in the branch.
        let mut buf = [0u8; 64];
        if pos & 1 == 1 {
            buf[..32].copy_from_slice(&sibling);
            buf[32..].copy_from_slice(&h);
        } else {
            buf[..32].copy_from_slice(&h);
            buf[32..].copy_from_slice(&sibling);
        }
        h = sha256d::Hash::hash(&buf).to_byte_array();
        pos >>= 1;
    }
    h
}

/// Expected answers for one scripthash.
#[derive(Debug, Clone, PartialEq)]
pub struct ForScripthash {
    /// The `get_history` answer.
    pub history: Vec<Value>,
    /// The `get_balance` answer.
    pub balance: Value,
    /// The confirmed part of `listunspent`, in chain order.
    pub unspent_confirmed: Vec<Value>,
    /// The mempool part of `listunspent` (servers order it as they like).
    pub unspent_mempool: Vec<Value>,
    /// The subscription status.
    pub status: Option<String>,
}

impl ForScripthash {
    /// Checks a `listunspent` answer: the confirmed part in order, the mempool part as a set.
    pub fn check_listunspent(&self, got: &Value, what: &str) {
        let got = got
            .as_array()
            .unwrap_or_else(|| panic!("{what}: not a list: {got}"));
        let (conf, mem): (Vec<&Value>, Vec<&Value>) =
            got.iter().partition(|u| u["height"].as_i64() != Some(0));
        let want: Vec<&Value> = self.unspent_confirmed.iter().collect();
        assert_eq!(conf, want, "{what}: confirmed unspent outputs");
        let key = |v: &&Value| v.to_string();
        let mut mem: Vec<String> = mem.iter().map(key).collect();
        let mut want: Vec<String> = self.unspent_mempool.iter().map(|v| v.to_string()).collect();
        mem.sort();
        want.sort();
        assert_eq!(mem, want, "{what}: mempool unspent outputs");
    }
}

/// Expected answers for the whole chain, for a set of scripthashes.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    /// The tip height.
    pub tip_height: u32,
    /// The tip header, hex.
    pub tip_hex: String,
    /// Per scripthash.
    pub by_sh: BTreeMap<String, ForScripthash>,
}

#[derive(Debug, Clone)]
struct Output {
    sh: String,
    value: u64,
    height: u32,
    /// Chain order: (transaction number, output index).
    order: (u64, u32),
}

impl Expected {
    /// Computes the expected answers for `scripthashes` from what `snap` serves.
    pub fn compute(snap: &Snapshot, scripthashes: &[String]) -> Expected {
        let wanted: HashSet<&str> = scripthashes.iter().map(String::as_str).collect();
        let mut utxos: HashMap<OutPoint, Output> = HashMap::new();
        let mut confirmed: HashMap<String, Vec<(u32, Txid)>> = HashMap::new();
        let mut tx_num = 0u64;
        // The genesis block's coinbase is not spendable and servers do not index it.
        for (height, block) in snap.main_blocks().enumerate().skip(1) {
            let height = height as u32;
            for tx in &block.txdata {
                let txid = tx.compute_txid();
                let mut touched: Vec<String> = Vec::new();
                if !tx.is_coinbase() {
                    for input in &tx.input {
                        let spent = utxos
                            .remove(&input.previous_output)
                            .unwrap_or_else(|| panic!("block {height} spends a missing output"));
                        touched.push(spent.sh);
                    }
                }
                for (vout, out) in tx.output.iter().enumerate() {
                    if out.script_pubkey.is_op_return() {
                        continue;
                    }
                    let sh = scripthash(&out.script_pubkey);
                    touched.push(sh.clone());
                    utxos.insert(
                        OutPoint::new(txid, vout as u32),
                        Output {
                            sh,
                            value: out.value.to_sat(),
                            height,
                            order: (tx_num, vout as u32),
                        },
                    );
                }
                let mut seen = HashSet::new();
                for sh in touched {
                    if wanted.contains(sh.as_str()) && seen.insert(sh.clone()) {
                        confirmed.entry(sh).or_default().push((height, txid));
                    }
                }
                tx_num += 1;
            }
        }

        // The mempool: outputs first (a child may refer to any parent), then each transaction.
        let mempool_ids: HashSet<Txid> = snap.mempool.iter().map(|t| t.compute_txid()).collect();
        let mut mem_outputs: HashMap<OutPoint, (String, u64)> = HashMap::new();
        for tx in &snap.mempool {
            let txid = tx.compute_txid();
            for (vout, out) in tx.output.iter().enumerate() {
                mem_outputs.insert(
                    OutPoint::new(txid, vout as u32),
                    (scripthash(&out.script_pubkey), out.value.to_sat()),
                );
            }
        }
        let mem_spent: HashSet<OutPoint> = snap
            .mempool
            .iter()
            .flat_map(|t| t.input.iter().map(|i| i.previous_output))
            .collect();
        // (has unconfirmed inputs, txid, fee) per scripthash, and the balance change.
        let mut mem_entries: HashMap<String, Vec<(bool, Txid, u64)>> = HashMap::new();
        let mut delta: HashMap<String, i64> = HashMap::new();
        for tx in &snap.mempool {
            let txid = tx.compute_txid();
            let mut touched: Vec<String> = Vec::new();
            let mut value_in = 0u64;
            for input in &tx.input {
                let op = input.previous_output;
                let (sh, value) = match (utxos.get(&op), mem_outputs.get(&op)) {
                    (Some(u), _) => (u.sh.clone(), u.value),
                    (None, Some((sh, v))) => (sh.clone(), *v),
                    (None, None) => panic!("mempool transaction {txid} spends a missing output"),
                };
                value_in += value;
                *delta.entry(sh.clone()).or_default() -= value as i64;
                touched.push(sh);
            }
            let value_out: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
            for out in &tx.output {
                let sh = scripthash(&out.script_pubkey);
                *delta.entry(sh.clone()).or_default() += out.value.to_sat() as i64;
                touched.push(sh);
            }
            let has_ui = tx
                .input
                .iter()
                .any(|i| mempool_ids.contains(&i.previous_output.txid));
            let fee = value_in - value_out;
            let mut seen = HashSet::new();
            for sh in touched {
                if seen.insert(sh.clone()) {
                    mem_entries.entry(sh).or_default().push((has_ui, txid, fee));
                }
            }
        }

        let mut by_sh = BTreeMap::new();
        for sh in scripthashes {
            let mut history: Vec<Value> = confirmed
                .get(sh)
                .map(|v| {
                    v.iter()
                        .map(|(h, txid)| json!({"tx_hash": txid.to_string(), "height": h}))
                        .collect()
                })
                .unwrap_or_default();
            let mut mem = mem_entries.get(sh).cloned().unwrap_or_default();
            mem.sort_by_key(|a| (a.0, a.1.to_string()));
            history.extend(mem.iter().map(|(ui, txid, fee)| {
                json!({"tx_hash": txid.to_string(), "height": if *ui { -1 } else { 0 }, "fee": fee})
            }));
            let mut mine: Vec<(&OutPoint, &Output)> =
                utxos.iter().filter(|(_, u)| u.sh == *sh).collect();
            mine.sort_by_key(|(_, u)| u.order);
            let confirmed_balance: u64 = mine.iter().map(|(_, u)| u.value).sum();
            let unspent_confirmed = mine
                .iter()
                .filter(|(op, _)| !mem_spent.contains(op))
                .map(|(op, u)| {
                    json!({"tx_hash": op.txid.to_string(), "tx_pos": op.vout, "height": u.height, "value": u.value})
                })
                .collect();
            let unspent_mempool = mem_outputs
                .iter()
                .filter(|(op, (s, _))| s == sh && !mem_spent.contains(op))
                .map(|(op, (_, v))| {
                    json!({"tx_hash": op.txid.to_string(), "tx_pos": op.vout, "height": 0, "value": v})
                })
                .collect();
            let status = status_of(&history);
            by_sh.insert(
                sh.clone(),
                ForScripthash {
                    balance: json!({
                        "confirmed": confirmed_balance,
                        "unconfirmed": delta.get(sh).copied().unwrap_or(0),
                    }),
                    history,
                    unspent_confirmed,
                    unspent_mempool,
                    status,
                },
            );
        }
        let tip = snap.block(snap.tip_height());
        Expected {
            tip_height: snap.tip_height(),
            tip_hex: serialize(&tip.header).to_lower_hex_string(),
            by_sh,
        }
    }

    /// The statuses, by scripthash.
    pub fn statuses(&self) -> BTreeMap<String, Option<String>> {
        self.by_sh
            .iter()
            .map(|(sh, e)| (sh.clone(), e.status.clone()))
            .collect()
    }

    /// The scripthashes whose status differs from `before`.
    pub fn changed_since(&self, before: &Expected) -> Vec<String> {
        self.by_sh
            .iter()
            .filter(|(sh, e)| before.by_sh.get(*sh).map(|b| &b.status) != Some(&e.status))
            .map(|(sh, _)| sh.clone())
            .collect()
    }
}
