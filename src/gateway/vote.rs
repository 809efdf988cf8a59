//! What two upstreams' answers must share to agree, and how several numeric answers become one.
//!
//! The vote rule of a call comes from its catalogue row ([`Vote`]): balances agree on their
//! confirmed part, histories on their confirmed entries, unspent lists on their confirmed
//! outputs as a set (mempools legitimately differ between servers), anything else on the whole
//! answer as canonical JSON. History agreement is decided by one function,
//! [`crate::chain::histories_agree`] (here through [`crate::chain::confirmed_part`]), which the
//! hub's status vetting uses too.

use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::chain::{confirmed_part, parse_history};
use crate::protocol::methods::Vote;
use crate::protocol::Call;

/// The answer as canonical JSON (object keys sorted), or as sent when it is not JSON.
fn canonical(raw: &RawValue) -> String {
    match serde_json::from_str::<Value>(raw.get()) {
        Ok(v) => v.to_string(),
        Err(_) => raw.get().to_string(),
    }
}

/// What must be equal for two answers to `call` to agree in a vote.
pub fn vote_key(call: &Call, raw: &RawValue) -> String {
    match call.info.vote {
        Vote::Whole => canonical(raw),
        Vote::History => match parse_history(raw.get()) {
            Ok(h) => confirmed_part(&h, u32::MAX)
                .iter()
                .map(|e| format!("{}:{}", e.txid, e.height))
                .collect::<Vec<_>>()
                .join(","),
            Err(_) => raw.get().to_string(),
        },
        Vote::Balance => match serde_json::from_str::<Value>(raw.get()) {
            Ok(v) => v.get("confirmed").cloned().unwrap_or_default().to_string(),
            Err(_) => raw.get().to_string(),
        },
        Vote::Unspent => match serde_json::from_str::<Value>(raw.get()) {
            Ok(Value::Array(list)) => {
                let mut items: Vec<String> = list
                    .iter()
                    .filter(|e| e.get("height").and_then(Value::as_i64).unwrap_or(0) > 0)
                    .map(|e| {
                        json!([
                            e.get("tx_hash"),
                            e.get("tx_pos"),
                            e.get("value"),
                            e.get("height")
                        ])
                        .to_string()
                    })
                    .collect();
                items.sort();
                items.join(",")
            }
            Ok(v) => v.to_string(),
            Err(_) => raw.get().to_string(),
        },
    }
}

/// One upstream's answer in a vote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ballot {
    /// The upstream's slot.
    pub upstream: usize,
    /// How many blocks it is behind the verified tip.
    pub lag: u32,
    /// What its answer must share with others to agree ([`vote_key`]).
    pub key: String,
}

/// What a vote decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    /// The key of the answer that won, if a majority formed.
    pub winner: Option<String>,
    /// Upstreams whose answer lost among the freshest voters (to be penalised).
    pub outvoted: Vec<usize>,
}

/// Counts a vote. A block may reach one upstream before another, so when answers differ only
/// the upstreams least behind the verified tip count (and only they can be outvoted): the
/// others' answers may simply be a block old. The winner is the answer of a strict majority of
/// those freshest voters, else of a strict majority of all; without one there is no winner.
pub fn tally(ballots: &[Ballot]) -> Tally {
    let freshest = ballots.iter().map(|b| b.lag).min().unwrap_or(0);
    let mut keys: Vec<&str> = ballots.iter().map(|b| b.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    let count = |key: &str, fresh_only: bool| {
        ballots
            .iter()
            .filter(|b| b.key == key && (!fresh_only || b.lag == freshest))
            .count()
    };
    let fresh_total = ballots.iter().filter(|b| b.lag == freshest).count();
    let winner = keys
        .iter()
        .find(|k| count(k, true) * 2 > fresh_total)
        .or_else(|| keys.iter().find(|k| count(k, false) * 2 > ballots.len()))
        .map(|k| k.to_string());
    let outvoted = match &winner {
        Some(w) => ballots
            .iter()
            .filter(|b| &b.key != w && b.lag == freshest)
            .map(|b| b.upstream)
            .collect(),
        None => Vec::new(),
    };
    Tally { winner, outvoted }
}

/// The median of a set of JSON answers: numbers by value (`-1`, "no estimate", only when
/// most answers say so; outliers more than 4x off the median dropped first), objects field by
/// field, anything else the first answer.
pub fn median_value(values: &[Value]) -> Value {
    if values.iter().all(Value::is_number) {
        let nums: Vec<f64> = values.iter().filter_map(Value::as_f64).collect();
        let m = crate::chain::fee_consensus(&nums)
            .map(|x| (x * 1e8).round() / 1e8)
            .unwrap_or(-1.0);
        return serde_json::Number::from_f64(m)
            .map(Value::Number)
            .unwrap_or_else(|| values[0].clone());
    }
    if let Some(first) = values[0].as_object() {
        if values.iter().all(Value::is_object) {
            let mut out = serde_json::Map::new();
            for key in first.keys() {
                let field: Vec<Value> = values.iter().filter_map(|v| v.get(key).cloned()).collect();
                out.insert(key.clone(), median_value(&field));
            }
            return Value::Object(out);
        }
    }
    values[0].clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn call(method: &str) -> Call {
        let sh = "4d3611dab7c887dd7377c18b04295edce510d6f8749d06d89f376e65feee9df0";
        Call::internal(
            method,
            vec![json!(sh)],
            bitcoin::Network::Regtest,
            &BTreeMap::new(),
        )
        .unwrap()
    }

    fn raw(v: Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(&v).unwrap()
    }

    const A: &str = "a6c9c361bd0bc536d6a22648efbf8f9b200e425ef6c3a7a9669dc444c532a347";
    const B: &str = "9c42f84b2fcdaff676ba25d9d4941741cc0d1a01cce0c23fdc4c0b2afa38431c";

    #[test]
    fn histories_agree_on_confirmed_entries_only() {
        let c = call("blockchain.scripthash.get_history");
        let honest = raw(json!([{"tx_hash": A, "height": 5}, {"tx_hash": B, "height": 0}]));
        let other_mempool = raw(json!([{"tx_hash": A, "height": 5}]));
        let other_height = raw(json!([{"tx_hash": A, "height": 6}]));
        assert_eq!(vote_key(&c, &honest), vote_key(&c, &other_mempool));
        assert_ne!(vote_key(&c, &honest), vote_key(&c, &other_height));
        // Key order and spacing do not matter, hash case does not either.
        let respelled = raw(json!([{"height": 5, "tx_hash": A.to_uppercase()}]));
        assert_eq!(vote_key(&c, &honest), vote_key(&c, &respelled));
    }

    #[test]
    fn balances_and_unspent_agree_on_their_confirmed_part() {
        let c = call("blockchain.scripthash.get_balance");
        assert_eq!(
            vote_key(&c, &raw(json!({"confirmed": 5, "unconfirmed": 1}))),
            vote_key(&c, &raw(json!({"confirmed": 5, "unconfirmed": 0})))
        );
        assert_ne!(
            vote_key(&c, &raw(json!({"confirmed": 5, "unconfirmed": 0}))),
            vote_key(&c, &raw(json!({"confirmed": 6, "unconfirmed": 0})))
        );
        let u = call("blockchain.scripthash.listunspent");
        let one = json!({"tx_hash": A, "tx_pos": 0, "value": 10, "height": 5});
        let two = json!({"tx_hash": B, "tx_pos": 1, "value": 20, "height": 6});
        let mempool = json!({"tx_hash": B, "tx_pos": 2, "value": 30, "height": 0});
        assert_eq!(
            vote_key(&u, &raw(json!([one, two, mempool]))),
            vote_key(&u, &raw(json!([two, one])))
        );
        assert_ne!(
            vote_key(&u, &raw(json!([one, two]))),
            vote_key(&u, &raw(json!([one])))
        );
    }

    fn ballot(upstream: usize, lag: u32, key: &str) -> Ballot {
        Ballot {
            upstream,
            lag,
            key: key.into(),
        }
    }

    #[test]
    fn a_majority_wins_and_the_minority_is_outvoted() {
        let t = tally(&[ballot(0, 0, "a"), ballot(1, 0, "a"), ballot(2, 0, "b")]);
        assert_eq!(t.winner.as_deref(), Some("a"));
        assert_eq!(t.outvoted, vec![2]);
        // Agreement: nobody is outvoted.
        let t = tally(&[ballot(0, 0, "a"), ballot(1, 0, "a")]);
        assert_eq!(t.winner.as_deref(), Some("a"));
        assert!(t.outvoted.is_empty());
    }

    #[test]
    fn a_tie_has_no_winner_and_penalises_nobody() {
        let t = tally(&[ballot(0, 0, "a"), ballot(1, 0, "b")]);
        assert_eq!(t.winner, None);
        assert!(t.outvoted.is_empty());
        let t = tally(&[ballot(0, 0, "a"), ballot(1, 0, "b"), ballot(2, 0, "c")]);
        assert_eq!(t.winner, None);
    }

    #[test]
    fn only_the_freshest_voters_count_when_answers_differ() {
        // Two upstreams a block behind agree on the old state; the one at the tip has the new
        // block. The fresh answer wins and the stale ones are not penalised.
        let t = tally(&[
            ballot(0, 0, "new"),
            ballot(1, 1, "old"),
            ballot(2, 1, "old"),
        ]);
        assert_eq!(t.winner.as_deref(), Some("new"));
        assert!(t.outvoted.is_empty());
        // Among the freshest, the majority still decides and the minority is outvoted.
        let t = tally(&[
            ballot(0, 0, "new"),
            ballot(1, 0, "new"),
            ballot(2, 0, "lie"),
            ballot(3, 1, "old"),
        ]);
        assert_eq!(t.winner.as_deref(), Some("new"));
        assert_eq!(t.outvoted, vec![2]);
    }

    #[test]
    fn median_of_numbers_ignores_no_estimate() {
        assert_eq!(
            median_value(&[json!(0.0002), json!(-1), json!(0.0004)]),
            json!(0.0003)
        );
        assert_eq!(median_value(&[json!(1), json!(2), json!(2)]), json!(2.0));
        assert_eq!(
            median_value(&[json!(-1), json!(-1), json!(0.0001)]),
            json!(-1.0)
        );
        // A wild outlier does not move the answer.
        assert_eq!(
            median_value(&[json!(0.0001), json!(0.00011), json!(0.00012), json!(5.0)]),
            json!(0.00011)
        );
    }

    #[test]
    fn median_of_objects_by_field() {
        let v = median_value(&[
            json!({"mempoolminfee": 0.00001, "minrelaytxfee": 0.00001}),
            json!({"mempoolminfee": 0.00003, "minrelaytxfee": 0.00001}),
            json!({"mempoolminfee": 0.5, "minrelaytxfee": 0.00001}),
        ]);
        // 0.5 is more than four times the median: an outlier, dropped before the median.
        assert_eq!(v["mempoolminfee"], json!(0.00002));
        assert_eq!(v["minrelaytxfee"], json!(0.00001));
    }
}
