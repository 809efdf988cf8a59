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
