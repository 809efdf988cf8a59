//! The one entry point for checking an upstream's answer to a call: [`check`].
//!
//! What the catalogue row's [`Check`] asks for is proven against the verified chain: a raw
//! transaction hashes to the txid asked for, a merkle branch folds to the root in the verified
//! header at that height (for `id_from_pos`, with the branch fetched alongside the txid), a
//! broadcast's returned txid is the transaction's. Answers that nothing can prove must at least
//! be well formed (integers where the protocol has integers, hashes where it has hashes, numbers
//! for fees): a malformed answer is as false as a wrong one, and cannot slip past a vote by
//! being read differently. Their content is voted on by the router.
//!
//! [`check`] looks at one answer. Two kinds of answer are not proven by themselves, and this
//! module says what else they need; the callers only fetch it:
//! - an `id_from_pos` answer ([`Check::TxAtPosition`]) proves with its branch that a hash sits
//!   at that position of the verified block's tree, but not that the hash is a transaction's:
//!   the branch's length is not tied to the tree's depth, so an inner node passes as a leaf.
//!   The transaction it names is fetched through the gateway's checked read (`Core::read`, so
//!   it hashes to that txid) and [`check_position_tx`] decides;
//! - a transaction whose witness matters ([`corroboration`]) is proven by its txid except for
//!   its witness, which the txid does not cover: a second upstream's byte-identical answer
//!   corroborates it (the router's vote).
//!
//! A proof against a block is [`Verdict::ProvenIn`] that block, so that whoever keeps the
//! answer (the cache) files it under the block that was checked, not under whatever block is
//! at that height later.

use bitcoin::BlockHash;
use serde_json::value::RawValue;
use serde_json::Value;
use std::str::FromStr;

use super::tracker::ChainTracker;
use crate::chain::{check_broadcast, check_merkle, check_status, check_transaction, VerifyError};
use crate::chain::{decode_transaction, witness_matters, MerkleAnswer};
use crate::protocol::methods::Check;
use crate::protocol::{Args, Call};

/// What a check made of an answer.
#[derive(Debug)]
pub enum Verdict {
    /// Proven right, or nothing to prove.
    Proven,
    /// A proof against a block of the verified chain, proven against that block: it stands
    /// while the verified chain has it.
    ProvenIn(ProvenBlock),
    /// Cannot be checked now (not held against the upstream).
    Unverifiable(String),
    /// Proven false.
    False(VerifyError),
}

/// The block of the verified chain a proof was checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProvenBlock {
    /// Its height.
    pub height: u32,
    /// Its hash.
    pub hash: BlockHash,
}

impl Verdict {
    fn of(res: Result<(), VerifyError>) -> Verdict {
        match res {
            Ok(()) => Verdict::Proven,
            Err(e) => Verdict::False(e),
        }
    }

    /// Proven, against a block or by itself.
    pub fn is_proven(&self) -> bool {
        matches!(self, Verdict::Proven | Verdict::ProvenIn(_))
    }

    /// The block a proof was checked against, if it is one.
    pub fn block(&self) -> Option<ProvenBlock> {
        match self {
            Verdict::ProvenIn(b) => Some(*b),
            _ => None,
        }
    }
}

/// Checks an upstream's answer to `call` against what can be proven.
pub fn check(chain: &ChainTracker, call: &Call, raw: &RawValue) -> Verdict {
    // A proof against a block the verified chain does not have yet cannot be checked; it is
    // not held against the upstream (it may simply be ahead).
    if let Some(h) = call.proof_height() {
        if h > chain.tip().height {
            return Verdict::Unverifiable(format!("block {h} is not verified yet"));
        }
    }
    match (call.info.check, &call.args) {
        (Check::None, _) => Verdict::Proven,
        (Check::Transaction, Args::Transaction { txid, verbose }) => {
            Verdict::of(transaction(txid, *verbose, raw))
        }
        (Check::Merkle, Args::Merkle { txid, height }) => merkle(chain, txid, *height, raw),
        (Check::TxAtPosition, Args::IdFromPos { height, pos, .. }) => {
            tx_at_position(chain, *height, *pos, raw)
        }
        (Check::Broadcast, Args::RawTransaction(tx)) => Verdict::of(broadcast(tx, raw)),
        (Check::Balance, _) => Verdict::of(shape::balance(raw)),
        (Check::History, _) => Verdict::of(shape::history(raw)),
        (Check::Unspent, _) => Verdict::of(shape::unspent(raw)),
        (Check::FeeRate, _) => Verdict::of(shape::fee_rate(raw)),
        (Check::FeeInfo, _) => Verdict::of(shape::fee_info(raw)),
        (Check::FeeHistogram, _) => Verdict::of(shape::fee_histogram(raw)),
        // A row whose check does not fit its parameter shape: nothing is proven, so nothing
        // passes.
        (check, _) => Verdict::False(VerifyError::BadEncoding(format!(
            "no {check:?} check for these parameters"
        ))),
    }
}

/// What an answer that [`check`] proved still needs from a second upstream: for a transaction
/// whose witness matters ([`witness_matters`]: it has one, or an input could), its bytes, which
/// the txid does not cover. Returns what a second upstream's answer must equal (the raw
/// transaction's hex, lowercase; of a verbose answer, its `hex`), or `None` when the answer is
/// proven by itself.
pub fn corroboration(call: &Call, raw: &RawValue) -> Option<String> {
    let (Check::Transaction, Args::Transaction { verbose, .. }) = (call.info.check, &call.args)
    else {
        return None;
    };
    let hex = transaction_hex(*verbose, raw).ok()?;
    let tx = decode_transaction(&hex).ok()?;
    witness_matters(&tx).then(|| hex.trim().to_ascii_lowercase())
}

/// The second half of an `id_from_pos` answer's proof: `raw` is the raw transaction it names
/// for position `pos`, fetched through the checked read (so it hashes to that txid). The
/// branch proved that the txid sits at `pos` of the verified block's tree; a real transaction
/// hashing to it shows it is a leaf and not an inner node passed off as one (finding a
/// transaction whose hash is a given inner node takes a SHA-256d preimage), provided that the
/// transaction is not 64 bytes long without its witness (an inner node's preimage is 64 bytes:
/// CVE-2017-12842). And it must be a coinbase exactly at position 0.
///
/// A 64-byte transaction is refused without blame (a block may hold one); a coinbase elsewhere
/// than at position 0, or another transaction there, is proven false.
pub fn check_position_tx(pos: u32, raw: &RawValue) -> Verdict {
    let tx = match transaction_hex(false, raw).and_then(|hex| decode_transaction(&hex)) {
        Ok(tx) => tx,
        Err(e) => return Verdict::False(e),
    };
    if tx.base_size() == 64 {
        return Verdict::Unverifiable(
            "a 64-byte transaction cannot be told from an inner node of the merkle tree".into(),
        );
    }
    if tx.is_coinbase() != (pos == 0) {
        return Verdict::False(VerifyError::BadMerkle(if pos == 0 {
            "the transaction at position 0 is not a coinbase".into()
        } else {
            "a coinbase named at a position other than 0".into()
        }));
    }
    Verdict::Proven
}

/// Checks a `get_history` answer against the status the same upstream announced: the status
/// must be the hash of that history.
pub fn check_history_status(raw: &RawValue, status: Option<&str>) -> Verdict {
    Verdict::of(check_status(raw.get(), status))
}

/// Checks that a `get_history` answer is a well-formed history.
pub fn check_history(raw: &RawValue) -> Verdict {
    Verdict::of(shape::history(raw))
}

/// The raw transaction's hex in a `transaction.get` answer (of a verbose one, its `hex`).
fn transaction_hex(verbose: bool, raw: &RawValue) -> Result<String, VerifyError> {
    let v: Value =
        serde_json::from_str(raw.get()).map_err(|e| VerifyError::BadEncoding(e.to_string()))?;
    let hex = if verbose { v.get("hex") } else { Some(&v) };
    hex.and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| VerifyError::BadEncoding("no transaction hex".into()))
}

/// A raw transaction hashes to `txid`; a verbose answer's `txid` and `hash` (wtxid) fields,
/// when present, are its transaction's.
fn transaction(txid: &str, verbose: bool, raw: &RawValue) -> Result<(), VerifyError> {
    let hex = transaction_hex(verbose, raw)?;
    check_transaction(txid, &hex)?;
    if !verbose {
        return Ok(());
    }
    let v: Value =
        serde_json::from_str(raw.get()).map_err(|e| VerifyError::BadEncoding(e.to_string()))?;
    let tx = decode_transaction(&hex)?;
    let field = |name: &str| v.get(name).and_then(Value::as_str).map(str::to_string);
    if let Some(t) = field("txid") {
        if bitcoin::Txid::from_str(&t).ok() != Some(tx.compute_txid()) {
            return Err(VerifyError::BadTxid);
        }
    }
    if let Some(w) = field("hash") {
        if bitcoin::Wtxid::from_str(&w).ok() != Some(tx.compute_wtxid()) {
            return Err(VerifyError::BadWitness(
                "the verbose answer's hash is not its transaction's wtxid".into(),
            ));
        }
    }
    Ok(())
}

/// Proves with `prove` against the merkle root of the verified header at `height`, read
/// together with that header's hash, so that the verdict names the block that was checked.
fn against_block(
    chain: &ChainTracker,
    height: u32,
    prove: impl FnOnce(&bitcoin::TxMerkleNode) -> Result<(), VerifyError>,
) -> Verdict {
    let found = chain.with_chain(|c| {
        let root = c.header(height)?.merkle_root;
        Some((root, c.hash(height)?))
    });
    let Some((root, hash)) = found else {
        return Verdict::Unverifiable(format!("block {height} is not in the verified chain"));
    };
    match prove(&root) {
        Ok(()) => Verdict::ProvenIn(ProvenBlock { height, hash }),
        Err(e) => Verdict::False(e),
    }
}

fn merkle(chain: &ChainTracker, txid: &str, height: u32, raw: &RawValue) -> Verdict {
    let parsed = bitcoin::Txid::from_str(txid)
        .map_err(|_| VerifyError::BadEncoding("txid".into()))
        .and_then(|txid| Ok((txid, MerkleAnswer::parse(raw.get())?)));
    let (txid, answer) = match parsed {
        Ok(p) => p,
        Err(e) => return Verdict::False(e),
    };
    if answer.block_height != height {
        // A server that looks the transaction up by txid answers where it is on its own
        // branch: that is another block, not a lie on every branch.
        return Verdict::False(VerifyError::OtherBlock("answer for another height".into()));
    }
    against_block(chain, height, |root| {
        check_merkle(&txid, answer.pos, &answer.merkle, root)
    })
}

/// The txid and branch of an `id_from_pos` answer asked with `merkle=true`: an object whose
/// `tx_hash` is a hash and whose `merkle` is a list of strings.
fn position_answer(raw: &RawValue) -> Result<(bitcoin::Txid, Vec<String>), VerifyError> {
    let v: Value =
        serde_json::from_str(raw.get()).map_err(|e| VerifyError::BadEncoding(e.to_string()))?;
    let Value::Object(o) = &v else {
        return Err(VerifyError::BadMerkle("no merkle branch to check".into()));
    };
    let txid = o
        .get("tx_hash")
        .and_then(Value::as_str)
        .and_then(|t| bitcoin::Txid::from_str(t).ok())
        .ok_or_else(|| VerifyError::BadEncoding("tx_hash".into()))?;
    let branch = o
        .get("merkle")
        .and_then(Value::as_array)
        .and_then(|m| {
            m.iter()
                .map(|n| n.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| VerifyError::BadMerkle("merkle is not a list of hashes".into()))?;
    Ok((txid, branch))
}

fn tx_at_position(chain: &ChainTracker, height: u32, pos: u32, raw: &RawValue) -> Verdict {
    let (txid, branch) = match position_answer(raw) {
        Ok(a) => a,
        Err(e) => return Verdict::False(e),
    };
    against_block(chain, height, |root| {
        check_merkle(&txid, u64::from(pos), &branch, root)
    })
}

/// The txid an `id_from_pos` answer names (asked with its branch), once [`check`] passed it.
pub fn position_txid(raw: &RawValue) -> Option<bitcoin::Txid> {
    position_answer(raw).ok().map(|(txid, _)| txid)
}

fn broadcast(tx: &str, raw: &RawValue) -> Result<(), VerifyError> {
    let got: String =
        serde_json::from_str(raw.get()).map_err(|e| VerifyError::BadEncoding(e.to_string()))?;
    check_broadcast(tx, &got)
}

/// The form of answers that are voted on rather than proven.
mod shape {
    use serde_json::value::RawValue;
    use serde_json::Value;

    use crate::chain::{parse_history, VerifyError};

    fn bad(what: &str) -> VerifyError {
        VerifyError::BadEncoding(what.to_string())
    }

    fn value(raw: &RawValue) -> Result<Value, VerifyError> {
        serde_json::from_str(raw.get()).map_err(|e| VerifyError::BadEncoding(e.to_string()))
    }

    fn hash(v: Option<&Value>) -> bool {
        v.and_then(Value::as_str)
            .is_some_and(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
    }

    pub(super) fn balance(raw: &RawValue) -> Result<(), VerifyError> {
        let v = value(raw)?;
        for field in ["confirmed", "unconfirmed"] {
            if v.get(field).and_then(Value::as_i64).is_none() {
                return Err(bad("balance amounts must be integers"));
            }
        }
        Ok(())
    }

    pub(super) fn history(raw: &RawValue) -> Result<(), VerifyError> {
        let h = parse_history(raw.get())?;
        if h.iter().any(|e| e.height < -1) {
            return Err(bad("history height below -1"));
        }
        Ok(())
    }

    pub(super) fn unspent(raw: &RawValue) -> Result<(), VerifyError> {
        let v = value(raw)?;
        let list = v
            .as_array()
            .ok_or_else(|| bad("unspent outputs must be a list"))?;
        for e in list {
            let ints = ["tx_pos", "value", "height"]
                .iter()
                .all(|f| e.get(*f).and_then(Value::as_u64).is_some());
            if !hash(e.get("tx_hash")) || !ints {
                return Err(bad("unspent output fields"));
            }
        }
        Ok(())
    }

    fn rate(v: &Value) -> bool {
        v.as_f64()
            .is_some_and(|x| x.is_finite() && (x >= 0.0 || x == -1.0))
    }

    pub(super) fn fee_rate(raw: &RawValue) -> Result<(), VerifyError> {
        if rate(&value(raw)?) {
            Ok(())
        } else {
            Err(bad("a fee rate must be a number"))
        }
    }

    pub(super) fn fee_info(raw: &RawValue) -> Result<(), VerifyError> {
        let v = value(raw)?;
        let o = v
            .as_object()
            .ok_or_else(|| bad("mempool info must be an object"))?;
        if o.values()
            .all(|x| x.as_f64().is_some_and(|x| x.is_finite() && x >= 0.0))
        {
            Ok(())
        } else {
            Err(bad("mempool info fields must be numbers"))
        }
    }

    pub(super) fn fee_histogram(raw: &RawValue) -> Result<(), VerifyError> {
        let v = value(raw)?;
        let list = v
            .as_array()
            .ok_or_else(|| bad("a fee histogram must be a list"))?;
        let mut last = f64::INFINITY;
        for pair in list {
            let nums: Option<Vec<f64>> = pair
                .as_array()
                .filter(|p| p.len() == 2)
                .map(|p| p.iter().filter_map(Value::as_f64).collect());
            match nums.as_deref() {
                Some([fee, size]) if *fee >= 0.0 && *size >= 0.0 && *fee <= last => last = *fee,
                _ => return Err(bad("fee histogram entries")),
            }
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn raw(s: &str) -> Box<RawValue> {
            RawValue::from_string(s.to_string()).unwrap()
        }

        const H: &str = "a6c9c361bd0bc536d6a22648efbf8f9b200e425ef6c3a7a9669dc444c532a347";

        #[test]
        fn malformed_answers_are_refused() {
            assert!(balance(&raw(r#"{"confirmed":1,"unconfirmed":-2}"#)).is_ok());
            assert!(balance(&raw(r#"{"confirmed":"1","unconfirmed":0}"#)).is_err());
            assert!(balance(&raw(r#"{"confirmed":1.5,"unconfirmed":0}"#)).is_err());
            let ok = format!(r#"[{{"tx_hash":"{H}","height":5}},{{"tx_hash":"{H}","height":-1}}]"#);
            assert!(history(&raw(&ok)).is_ok());
            for bad in [
                format!(r#"[{{"tx_hash":"{H}","height":"5"}}]"#),
                format!(r#"[{{"tx_hash":"{H}","height":5.0}}]"#),
                format!(r#"[{{"tx_hash":"{H}","height":-2}}]"#),
                r#"[{"tx_hash":"xyz","height":5}]"#.to_string(),
            ] {
                assert!(history(&raw(&bad)).is_err(), "{bad}");
            }
            let u = format!(r#"[{{"tx_hash":"{H}","tx_pos":0,"value":5,"height":0}}]"#);
            assert!(unspent(&raw(&u)).is_ok());
            assert!(unspent(&raw(&u.replace("\"height\":0", "\"height\":\"0\""))).is_err());
            assert!(fee_rate(&raw("0.0001")).is_ok());
            assert!(fee_rate(&raw("-1")).is_ok());
            assert!(fee_rate(&raw("\"0.0001\"")).is_err());
            assert!(fee_rate(&raw("-5")).is_err());
            assert!(fee_info(&raw(r#"{"minrelaytxfee":0.00001}"#)).is_ok());
            assert!(fee_info(&raw(r#"{"minrelaytxfee":"x"}"#)).is_err());
            assert!(fee_histogram(&raw("[[10,1000],[5,2000]]")).is_ok());
            assert!(fee_histogram(&raw("[[5,1000],[10,2000]]")).is_err());
            assert!(fee_histogram(&raw("[[5]]")).is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::absolute::LockTime;
    use bitcoin::consensus::encode::serialize_hex;
    use bitcoin::hashes::Hash;
    use bitcoin::{transaction, Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut};

    fn tx(coinbase: bool, script_len: usize) -> Transaction {
        Transaction {
            version: transaction::Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: if coinbase {
                    OutPoint::null()
                } else {
                    OutPoint::new(bitcoin::Txid::from_byte_array([3; 32]), 0)
                },
                script_sig: ScriptBuf::from_bytes(vec![0x51; 2]),
                sequence: Sequence::MAX,
                witness: bitcoin::Witness::new(),
            }],
            output: vec![TxOut {
                value: Amount::from_sat(1),
                script_pubkey: ScriptBuf::from_bytes(vec![0x51; script_len]),
            }],
        }
    }

    fn raw(t: &Transaction) -> Box<RawValue> {
        serde_json::value::to_raw_value(&serialize_hex(t)).unwrap()
    }

    #[test]
    fn the_transaction_at_a_position_is_a_real_one_of_its_kind() {
        assert!(check_position_tx(0, &raw(&tx(true, 25))).is_proven());
        assert!(check_position_tx(4, &raw(&tx(false, 25))).is_proven());
        assert!(matches!(
            check_position_tx(0, &raw(&tx(false, 25))),
            Verdict::False(VerifyError::BadMerkle(_))
        ));
        assert!(matches!(
            check_position_tx(4, &raw(&tx(true, 25))),
            Verdict::False(VerifyError::BadMerkle(_))
        ));
        // 64 bytes without the witness: an inner node's preimage has that size.
        let small = tx(false, 2);
        assert_eq!(small.base_size(), 64);
        assert!(matches!(
            check_position_tx(4, &raw(&small)),
            Verdict::Unverifiable(_)
        ));
        let not_hex = serde_json::value::to_raw_value("zz").unwrap();
        assert!(matches!(
            check_position_tx(4, &not_hex),
            Verdict::False(VerifyError::BadEncoding(_))
        ));
    }
}
