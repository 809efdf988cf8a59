//! The one entry point for checking an upstream's answer to a call: [`check`].
//!
//! What the catalogue row's [`Check`] asks for is proven against the verified chain: a raw
//! transaction hashes to the txid asked for, a merkle branch folds to the root in the verified
//! header at that height (for `id_from_pos`, with the branch fetched alongside the txid), a
//! broadcast's returned txid is the transaction's. Answers that nothing can prove must at least
//! be well formed (integers where the protocol has integers, hashes where it has hashes, numbers
//! for fees): a malformed answer is as false as a wrong one, and cannot slip past a vote by
//! being read differently. Their content is voted on by the router.

use serde_json::value::RawValue;
use serde_json::Value;
use std::str::FromStr;

use super::tracker::ChainTracker;
use crate::chain::MerkleAnswer;
use crate::chain::{check_broadcast, check_merkle, check_status, check_transaction, VerifyError};
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
        (Check::Balance, _) => shape::balance(raw),
        (Check::History, _) => shape::history(raw),
        (Check::Unspent, _) => shape::unspent(raw),
        (Check::FeeRate, _) => shape::fee_rate(raw),
        (Check::FeeInfo, _) => shape::fee_info(raw),
        (Check::FeeHistogram, _) => shape::fee_histogram(raw),
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
    Verdict::of(shape::history(raw))
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
