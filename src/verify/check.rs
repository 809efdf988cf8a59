//! The one entry point for checking an upstream's answer to a call: [`check`].
//!
//! What the catalogue row's [`Check`] asks for is proven against the verified chain: a raw
//! transaction hashes to the txid asked for, a merkle branch folds to the root in the verified
//! header at that height (for `id_from_pos`, with the branch fetched alongside the txid), a
//! broadcast's returned txid is the transaction's. Answers that nothing can prove pass here and
//! are voted on by the router.

use serde_json::value::RawValue;
use serde_json::Value;
use std::str::FromStr;

use super::tracker::ChainTracker;
use crate::chain::{check_broadcast, check_merkle, check_status, check_transaction, VerifyError};
use crate::chain::{parse_history, MerkleAnswer};
use crate::protocol::methods::Check;
use crate::protocol::{Args, Call};

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

impl Verdict {
    fn of(res: Result<(), VerifyError>) -> Verdict {
        match res {
            Ok(()) => Verdict::Proven,
            Err(e) => Verdict::False(e),
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
    Verdict::of(match (call.info.check, &call.args) {
        (Check::None, _) => Ok(()),
        (Check::Transaction, Args::Transaction { txid, verbose }) => {
            transaction(txid, *verbose, raw)
        }
        (Check::Merkle, Args::Merkle { txid, height }) => merkle(chain, txid, *height, raw),
        (Check::TxAtPosition, Args::IdFromPos { height, pos, .. }) => {
            tx_at_position(chain, *height, *pos, raw)
        }
        (Check::Broadcast, Args::RawTransaction(tx)) => broadcast(tx, raw),
        // A row whose check does not fit its parameter shape: nothing is proven, so nothing
        // passes.
        (check, _) => Err(VerifyError::BadEncoding(format!(
            "no {check:?} check for these parameters"
        ))),
    })
}

/// Checks a `get_history` answer against the status the same upstream announced: the status
/// must be the hash of that history.
pub fn check_history_status(raw: &RawValue, status: Option<&str>) -> Verdict {
    Verdict::of(check_status(raw.get(), status))
}

/// Checks that a `get_history` answer is a well-formed history.
pub fn check_history(raw: &RawValue) -> Verdict {
    Verdict::of(parse_history(raw.get()).map(|_| ()))
}

fn transaction(txid: &str, verbose: bool, raw: &RawValue) -> Result<(), VerifyError> {
    let v: Value =
        serde_json::from_str(raw.get()).map_err(|e| VerifyError::BadEncoding(e.to_string()))?;
    let hex = if verbose { v.get("hex") } else { Some(&v) };
    let hex = hex
        .and_then(Value::as_str)
        .ok_or_else(|| VerifyError::BadEncoding("no transaction hex".into()))?;
    check_transaction(txid, hex)
}

fn verified_root(chain: &ChainTracker, height: u32) -> Result<bitcoin::TxMerkleNode, VerifyError> {
    chain
        .with_chain(|c| c.header(height).map(|h| h.merkle_root))
        .ok_or_else(|| VerifyError::BadMerkle("block not in the verified chain".into()))
}

fn merkle(
    chain: &ChainTracker,
    txid: &str,
    height: u32,
    raw: &RawValue,
) -> Result<(), VerifyError> {
    let txid =
        bitcoin::Txid::from_str(txid).map_err(|_| VerifyError::BadEncoding("txid".into()))?;
    let answer = MerkleAnswer::parse(raw.get())?;
    if answer.block_height != height {
        return Err(VerifyError::BadMerkle("answer for another height".into()));
    }
    check_merkle(
        &txid,
        answer.pos,
        &answer.merkle,
        &verified_root(chain, height)?,
    )
}

fn tx_at_position(
    chain: &ChainTracker,
    height: u32,
    pos: u32,
    raw: &RawValue,
) -> Result<(), VerifyError> {
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
    let branch: Vec<&str> = o
        .get("merkle")
        .and_then(Value::as_array)
        .map(|m| m.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    check_merkle(
        &txid,
        u64::from(pos),
        &branch,
        &verified_root(chain, height)?,
    )
}

fn broadcast(tx: &str, raw: &RawValue) -> Result<(), VerifyError> {
    let got: String =
        serde_json::from_str(raw.get()).map_err(|e| VerifyError::BadEncoding(e.to_string()))?;
    check_broadcast(tx, &got)
}
