//! How upstreams' answers are compared, how a vote is counted, and how several numeric answers
//! become one.
//!
//! The vote rule of a call comes from its catalogue row ([`Vote`]). Balances, histories and
//! unspent lists are compared whole, confirmed and unconfirmed parts alike ([`vote_key`]); as a
//! last resort, when honest mempools still differ after the vote was taken again, they are
//! compared on their confirmed part only ([`confirmed_key`]) and the answer keeps only the
//! unconfirmed entries a majority of the voters report ([`settle`]). History agreement is
//! [`crate::chain::confirmed_part`] here and [`crate::chain::histories_agree`] in the hub.
//!
//! A vote never rests on one upstream's word: an answer wins only when at least two distinct
//! upstreams give it, compared on the same chain state ([`tally`]).

use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::HashMap;

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

fn is_confirmed(e: &Value) -> bool {
    e.get("height").and_then(Value::as_i64).unwrap_or(0) > 0
}

/// An unspent output as compared: `[tx_hash, tx_pos, value, height]`.
fn utxo_key(e: &Value) -> String {
    json!([
        e.get("tx_hash")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase),
        e.get("tx_pos"),
        e.get("value"),
        e.get("height")
    ])
    .to_string()
}

/// A history entry as compared: `txid:height`.
fn entry_key(e: &Value) -> String {
    format!(
        "{}:{}",
        e.get("tx_hash")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_ascii_lowercase(),
        e.get("height").map(Value::to_string).unwrap_or_default()
    )
}

fn key_of(call: &Call, raw: &RawValue, confirmed_only: bool) -> String {
    match call.info.vote {
        Vote::Whole => canonical(raw),
        Vote::History => match parse_history(raw.get()) {
            Ok(h) => {
                let confirmed: Vec<String> = confirmed_part(&h, u32::MAX)
                    .iter()
                    .map(|e| format!("{}:{}", e.txid, e.height))
                    .collect();
                let mut mempool: Vec<String> = if confirmed_only {
                    Vec::new()
                } else {
                    h.iter()
                        .filter(|e| !e.confirmed())
                        .map(|e| format!("{}:{}", e.txid, e.height))
                        .collect()
                };
                // Mempool order differs between servers before protocol 1.6: a set.
                mempool.sort();
                format!("{}|{}", confirmed.join(","), mempool.join(","))
            }
            Err(_) => raw.get().to_string(),
        },
        Vote::Balance => match serde_json::from_str::<Value>(raw.get()) {
            Ok(v) if confirmed_only => v.get("confirmed").cloned().unwrap_or_default().to_string(),
            Ok(v) => json!([v.get("confirmed"), v.get("unconfirmed")]).to_string(),
            Err(_) => raw.get().to_string(),
        },
        Vote::Unspent => match serde_json::from_str::<Value>(raw.get()) {
            Ok(Value::Array(list)) => {
                let mut items: Vec<String> = list
                    .iter()
                    .filter(|e| !confirmed_only || is_confirmed(e))
                    .map(utxo_key)
                    .collect();
                items.sort();
                items.join(",")
            }
            Ok(v) => v.to_string(),
            Err(_) => raw.get().to_string(),
        },
    }
}

/// What must be equal for two answers to `call` to agree in a vote: the whole answer
/// (unconfirmed entries as a set).
pub fn vote_key(call: &Call, raw: &RawValue) -> String {
    key_of(call, raw, false)
}

/// The confirmed part of an answer, for the last-resort comparison when honest mempools
/// differ; the whole answer for methods without one.
pub fn confirmed_key(call: &Call, raw: &RawValue) -> String {
    key_of(call, raw, true)
}

/// The answer when upstreams agree on the confirmed part but not on the unconfirmed one:
/// `agreed` (best first) gave the winning confirmed part, `all` are every voter's answers at
/// that chain state. A history or unspent list keeps the first agreeing answer's confirmed
/// entries and only those unconfirmed entries that a strict majority of `all` report; a
/// balance keeps the confirmed amount and the unconfirmed amount a strict majority reports,
/// else the smallest one the agreeing upstreams report (no unproven pending funds). `None` for
/// methods whose answers have no unconfirmed part.
pub fn settle(call: &Call, agreed: &[&RawValue], all: &[&RawValue]) -> Option<Box<RawValue>> {
    let first: Value = serde_json::from_str(agreed.first()?.get()).ok()?;
    let parsed: Vec<Value> = all
        .iter()
        .filter_map(|r| serde_json::from_str(r.get()).ok())
        .collect();
    let majority = |n: usize| n * 2 > all.len();
    let out = match call.info.vote {
        Vote::Whole => return None,
        Vote::History | Vote::Unspent => {
            let key = if call.info.vote == Vote::History {
                entry_key
            } else {
                utxo_key
            };
            let mut reports: HashMap<String, usize> = HashMap::new();
            for list in parsed.iter().filter_map(Value::as_array) {
                let mut seen: Vec<String> =
                    list.iter().filter(|e| !is_confirmed(e)).map(key).collect();
                seen.sort();
                seen.dedup();
                for k in seen {
                    *reports.entry(k).or_default() += 1;
                }
            }
            let kept: Vec<Value> = first
                .as_array()?
                .iter()
                .filter(|e| is_confirmed(e) || majority(reports.get(&key(e)).copied().unwrap_or(0)))
                .cloned()
                .collect();
            Value::Array(kept)
        }
        Vote::Balance => {
            let mut counts: HashMap<String, (usize, Value)> = HashMap::new();
            for v in &parsed {
                let u = v.get("unconfirmed").cloned().unwrap_or(Value::Null);
                counts.entry(u.to_string()).or_insert((0, u)).0 += 1;
            }
            let unconfirmed = counts
                .into_values()
                .find(|(n, _)| majority(*n))
                .map(|(_, v)| v)
                .or_else(|| {
                    agreed
                        .iter()
                        .filter_map(|r| serde_json::from_str::<Value>(r.get()).ok())
                        .filter_map(|v| v.get("unconfirmed").and_then(Value::as_i64))
                        .min_by_key(|u| u.unsigned_abs())
                        .map(Value::from)
                })
                .unwrap_or(Value::from(0));
            json!({"confirmed": first.get("confirmed"), "unconfirmed": unconfirmed})
        }
    };
    serde_json::value::to_raw_value(&out).ok()
}

/// One upstream's answer in a vote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ballot {
    /// The upstream's slot.
    pub upstream: usize,
    /// The height of the tip it announced when it answered: its chain state.
    pub height: u32,
    /// What its answer must share with others to agree ([`vote_key`]).
    pub key: String,
}

/// What a vote decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    /// The key of the answer that won, if two or more upstreams agreed on the same state.
    pub winner: Option<String>,
    /// The chain state (tip height) the winner was decided at; `None` when every ballot agreed
    /// whatever its height.
    pub height: Option<u32>,
    /// Upstreams whose answer lost on that same chain state (to be penalised).
    pub outvoted: Vec<usize>,
}

/// Counts a vote so that no single upstream decides it:
/// - when every ballot gives the same answer and there are at least two, it wins;
/// - otherwise answers are compared only between upstreams at the same tip height, from the
///   highest down: at the first height where at least two upstreams voted and a strict majority
///   of them (at least two) agree, their answer wins and the others at that height are
///   outvoted. An upstream alone at a height (the first to announce a block, honest or not)
///   decides nothing and is outvoted by nobody; upstreams at other heights are not blamed for
///   a state they have not reached;
/// - otherwise there is no winner (the caller asks again, or answers an error).
pub fn tally(ballots: &[Ballot]) -> Tally {
    let none = Tally {
        winner: None,
        height: None,
        outvoted: Vec::new(),
    };
    let mut keys: Vec<&str> = ballots.iter().map(|b| b.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    let mut voters: Vec<usize> = ballots.iter().map(|b| b.upstream).collect();
    voters.sort_unstable();
    voters.dedup();
    if keys.len() == 1 && voters.len() >= 2 {
        return Tally {
            winner: Some(keys[0].to_string()),
            ..none
        };
    }
    let mut heights: Vec<u32> = ballots.iter().map(|b| b.height).collect();
    heights.sort_unstable_by(|a, b| b.cmp(a));
    heights.dedup();
    for h in heights {
        let level: Vec<&Ballot> = ballots.iter().filter(|b| b.height == h).collect();
        if level.len() < 2 {
            continue;
        }
        // Votes are counted by distinct upstreams: one upstream answering twice is one vote.
        let upstreams = |key: Option<&str>| {
            let mut ids: Vec<usize> = level
                .iter()
                .filter(|b| key.is_none() || key == Some(b.key.as_str()))
                .map(|b| b.upstream)
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids.len()
        };
        let all = upstreams(None);
        let winner = keys.iter().find(|k| {
            let n = upstreams(Some(k));
            n >= 2 && n * 2 > all
        });
        if let Some(w) = winner {
            return Tally {
                winner: Some(w.to_string()),
                height: Some(h),
                outvoted: level
                    .iter()
                    .filter(|b| b.key != *w)
                    .map(|b| b.upstream)
                    .collect(),
            };
        }
    }
    none
}

/// The consensus of several fee answers ([`crate::chain::fee_consensus`]): numbers by value,
/// objects field by field; `None` when there is none (too many "no estimate" answers, two
/// upstreams too far apart, or answers that are not numbers).
pub fn median_value(values: &[Value]) -> Option<Value> {
    if values.is_empty() {
        return None;
    }
    if values.iter().all(Value::is_number) {
        let nums: Vec<f64> = values.iter().filter_map(Value::as_f64).collect();
        let m = crate::chain::fee_consensus(&nums)?;
        return serde_json::Number::from_f64((m * 1e8).round() / 1e8).map(Value::Number);
    }
    let first = values[0].as_object()?;
    if !values.iter().all(Value::is_object) {
        return None;
    }
    let mut out = serde_json::Map::new();
    for key in first.keys() {
        let field: Vec<Value> = values.iter().filter_map(|v| v.get(key).cloned()).collect();
        out.insert(key.clone(), median_value(&field)?);
    }
    Some(Value::Object(out))
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
    const C: &str = "770f2d4371b3fabb902dd9a103e2dd005fcd3971181078fca4a2a1d6ff127b30";

    #[test]
    fn histories_compare_confirmed_in_order_and_mempool_as_a_set() {
        let c = call("blockchain.scripthash.get_history");
        let honest = raw(json!([
            {"tx_hash": A, "height": 5},
            {"tx_hash": B, "height": 0},
            {"tx_hash": C, "height": -1}
        ]));
        let reordered = raw(json!([
            {"height": 5, "tx_hash": A.to_uppercase()},
            {"tx_hash": C, "height": -1},
            {"tx_hash": B, "height": 0, "fee": 200}
        ]));
        let other_height = raw(json!([{"tx_hash": A, "height": 6}]));
        assert_eq!(vote_key(&c, &honest), vote_key(&c, &reordered));
        assert_ne!(confirmed_key(&c, &honest), confirmed_key(&c, &other_height));
    }

    #[test]
    fn balances_and_unspent_are_compared_whole() {
        let c = call("blockchain.scripthash.get_balance");
        let a = raw(json!({"confirmed": 5, "unconfirmed": 1}));
        let b = raw(json!({"confirmed": 5, "unconfirmed": 0}));
        assert_ne!(vote_key(&c, &a), vote_key(&c, &b));
        assert_eq!(confirmed_key(&c, &a), confirmed_key(&c, &b));
        let u = call("blockchain.scripthash.listunspent");
        let one = json!({"tx_hash": A, "tx_pos": 0, "value": 10, "height": 5});
        let two = json!({"tx_hash": B, "tx_pos": 1, "value": 20, "height": 6});
        let mempool = json!({"tx_hash": B, "tx_pos": 2, "value": 30, "height": 0});
        assert_eq!(
            vote_key(&u, &raw(json!([one, two]))),
            vote_key(&u, &raw(json!([two, one])))
        );
        assert_ne!(
            vote_key(&u, &raw(json!([one, two, mempool]))),
            vote_key(&u, &raw(json!([two, one])))
        );
        assert_eq!(
            confirmed_key(&u, &raw(json!([one, two, mempool]))),
            confirmed_key(&u, &raw(json!([two, one])))
        );
    }

    fn ballot(upstream: usize, height: u32, key: &str) -> Ballot {
        Ballot {
            upstream,
            height,
            key: key.into(),
        }
    }

    #[test]
    fn a_majority_on_one_state_wins_and_the_minority_is_outvoted() {
        let t = tally(&[ballot(0, 9, "a"), ballot(1, 9, "a"), ballot(2, 9, "b")]);
        assert_eq!(t.winner.as_deref(), Some("a"));
        assert_eq!(t.outvoted, vec![2]);
        // Agreement, whatever the heights: nobody is outvoted.
        let t = tally(&[ballot(0, 9, "a"), ballot(1, 8, "a")]);
        assert_eq!(t.winner.as_deref(), Some("a"));
        assert!(t.outvoted.is_empty());
    }

    #[test]
    fn one_upstream_never_decides() {
        // Alone, even in agreement with itself.
        assert_eq!(tally(&[ballot(0, 9, "a")]).winner, None);
        assert_eq!(tally(&[ballot(0, 9, "a"), ballot(0, 9, "a")]).winner, None);
        // A tie has no winner and penalises nobody.
        let t = tally(&[ballot(0, 9, "a"), ballot(1, 9, "b")]);
        assert_eq!(t.winner, None);
        assert!(t.outvoted.is_empty());
        assert_eq!(
            tally(&[ballot(0, 9, "a"), ballot(1, 9, "b"), ballot(2, 9, "c")]).winner,
            None
        );
    }

    #[test]
    fn the_first_to_announce_a_block_is_not_a_vote_of_one() {
        // The attacker announces block 10 first and answers alone at 10; the honest upstreams
        // are still at 9 and agree: their answer wins, and nobody is blamed across states.
        let t = tally(&[
            ballot(0, 10, "lie"),
            ballot(1, 9, "old"),
            ballot(2, 9, "old"),
        ]);
        assert_eq!(t.winner.as_deref(), Some("old"));
        assert_eq!(t.height, Some(9));
        assert!(t.outvoted.is_empty());
        // It answers with the old state at 10 while an honest upstream has the new one: a tie
        // at 10, one voter at 9: no winner, and the honest fresh upstream is not outvoted.
        let t = tally(&[
            ballot(0, 10, "old"),
            ballot(1, 10, "new"),
            ballot(2, 9, "old"),
        ]);
        assert_eq!(t.winner, None);
        assert!(t.outvoted.is_empty());
        // Once the third upstream reaches 10, the truth wins and the liar is outvoted.
        let t = tally(&[
            ballot(0, 10, "old"),
            ballot(1, 10, "new"),
            ballot(2, 10, "new"),
        ]);
        assert_eq!(t.winner.as_deref(), Some("new"));
        assert_eq!(t.outvoted, vec![0]);
    }

    #[test]
    fn unconfirmed_entries_are_voted_and_settled_by_majority() {
        let c = call("blockchain.scripthash.get_history");
        let honest = raw(json!([{"tx_hash": A, "height": 5}, {"tx_hash": B, "height": 0}]));
        let no_mempool = raw(json!([{"tx_hash": A, "height": 5}]));
        let fake = raw(json!([{"tx_hash": A, "height": 5}, {"tx_hash": C, "height": 0}]));
        // The whole answer is voted: an added or dropped mempool entry is a disagreement.
        assert_ne!(vote_key(&c, &honest), vote_key(&c, &no_mempool));
        assert_ne!(vote_key(&c, &honest), vote_key(&c, &fake));
        assert_eq!(confirmed_key(&c, &honest), confirmed_key(&c, &fake));
        // Settling keeps only the unconfirmed entries a majority reports: the fake one from
        // the best-ranked upstream is dropped, the honest one reported by two is kept.
        let all = [&*fake, &*honest, &*honest];
        let s = settle(&c, &[&fake, &honest, &honest], &all).unwrap();
        let v: Value = serde_json::from_str(s.get()).unwrap();
        assert_eq!(v, json!([{"tx_hash": A, "height": 5}]));
        let s = settle(&c, &[&honest, &fake], &[&*honest, &*honest, &*fake]).unwrap();
        let v: Value = serde_json::from_str(s.get()).unwrap();
        assert_eq!(
            v,
            json!([{"tx_hash": A, "height": 5}, {"tx_hash": B, "height": 0}])
        );
        // Balances: the majority's pending amount, else the smallest.
        let b = call("blockchain.scripthash.get_balance");
        let x = raw(json!({"confirmed": 5, "unconfirmed": 7}));
        let y = raw(json!({"confirmed": 5, "unconfirmed": 0}));
        let s = settle(&b, &[&x, &y], &[&*x, &*y]).unwrap();
        assert_eq!(s.get(), r#"{"confirmed":5,"unconfirmed":0}"#);
        let s = settle(&b, &[&x, &y], &[&*x, &*x, &*y]).unwrap();
        assert_eq!(s.get(), r#"{"confirmed":5,"unconfirmed":7}"#);
        assert!(settle(&call("blockchain.scripthash.get_mempool"), &[&x], &[&*x]).is_none());
    }

    #[test]
    fn median_of_numbers_ignores_no_estimate() {
        assert_eq!(
            median_value(&[json!(0.0001), json!(-1), json!(0.0004)]),
            Some(json!(0.0002))
        );
        assert_eq!(
            median_value(&[json!(1), json!(2), json!(2)]),
            Some(json!(2.0))
        );
        assert_eq!(median_value(&[json!(-1), json!(-1), json!(0.0001)]), None);
        // A wild outlier does not move the answer.
        assert_eq!(
            median_value(&[json!(0.0001), json!(0.00011), json!(0.00012), json!(5.0)]),
            Some(json!(0.00011))
        );
        // Two upstreams a hundredfold apart: no answer rather than the liar's.
        assert_eq!(median_value(&[json!(0.0001), json!(0.01)]), None);
        assert_eq!(median_value(&[json!("0.0001"), json!(0.0001)]), None);
    }

    #[test]
    fn median_of_objects_by_field() {
        let v = median_value(&[
            json!({"mempoolminfee": 0.00001, "minrelaytxfee": 0.00001}),
            json!({"mempoolminfee": 0.00004, "minrelaytxfee": 0.00001}),
            json!({"mempoolminfee": 0.5, "minrelaytxfee": 0.00001}),
        ])
        .unwrap();
        // 0.5 is more than four times the median: an outlier, dropped before the median.
        assert_eq!(v["mempoolminfee"], json!(0.00002));
        assert_eq!(v["minrelaytxfee"], json!(0.00001));
    }
}
