//! One upstream never decides what is voted: balances, histories, unspent lists, broadcasts
//! and fees. Each test puts an attacking simulated upstream where it does the most harm (the
//! fastest, so it is asked first; alone at the newest block; the only upstream in step) and
//! checks that the wallet only ever gets what honest upstreams say.

mod common;

use common::{Net, Wallet};
use electrum_gateway::sim::ADDRESSES;
use electrum_gateway::verify::Reason;
use serde_json::{json, Value};

/// A wallet connected straight to one simulated endpoint: what that upstream itself says.
async fn direct(net: &Net, endpoint: usize) -> Wallet {
    let url = net.sim.url(endpoint);
    let addr = url.authority().parse().expect("a loopback address");
    Wallet::connect(addr).await
}

fn failures(net: &Net, reason: Reason) -> u64 {
    net.gw.snapshot().counters.failures_of(reason)
}

const SCRIPTHASH_READS: [&str; 3] = [
    "blockchain.scripthash.get_balance",
    "blockchain.scripthash.get_history",
    "blockchain.scripthash.listunspent",
];

#[tokio::test]
async fn the_first_to_announce_a_block_does_not_win_a_vote_of_one() {
    // The attacker is the fastest and alone at the newest block; the honest upstreams are a
    // block behind (still indexing it) and within `max_lag`, so all three are in step.
    let net = Net::start(&[
        "127.0.0.1:0,lie-balance",
        "127.0.0.1:0,lag=1,latency=30",
        "127.0.0.1:0,lag=1,latency=30",
    ])
    .await;
    let mut w = net.wallet().await;
    let mut honest = direct(&net, 1).await;
    for a in ADDRESSES.iter() {
        let got = w
            .call("blockchain.scripthash.get_balance", json!([a.scripthash]))
            .await;
        let truth = honest
            .call("blockchain.scripthash.get_balance", json!([a.scripthash]))
            .await;
        assert_eq!(
            got, truth,
            "the two honest upstreams' word, not the fastest one's"
        );
    }
}

#[tokio::test]
async fn a_lone_upstream_in_step_gets_an_error_not_its_word() {
    // The honest upstreams are too far behind to be in step: only the attacker is.
    let net = Net::start(&[
        "127.0.0.1:0,lie-balance",
        "127.0.0.1:0,lag=5",
        "127.0.0.1:0,lag=5",
    ])
    .await;
    let mut w = net.wallet().await;
    let a = &ADDRESSES[0];
    let e = w
        .call_err("blockchain.scripthash.get_balance", json!([a.scripthash]))
        .await;
    assert_eq!(e["code"], 2, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or("")
            .contains("two upstreams"),
        "{e}"
    );
}

#[tokio::test]
async fn invented_mempool_payments_never_reach_a_wallet() {
    let net = Net::with_attacker("fake-mempool").await;
    let mut w = net.wallet().await;
    let mut honest = direct(&net, 1).await;
    for a in ADDRESSES.iter().take(4) {
        for method in SCRIPTHASH_READS {
            let got = w.call(method, json!([a.scripthash])).await;
            let truth = honest.call(method, json!([a.scripthash])).await;
            assert_eq!(got, truth, "{method} of {}", a.address);
        }
    }
    // Outvoted on unconfirmed entries alone it is not penalised: an honest server that saw a
    // transaction first is in the same minority for a moment. Its entries never reach a wallet.
    assert_eq!(failures(&net, Reason::VoteMinority), 0);
}

#[tokio::test]
async fn heights_written_as_strings_are_malformed() {
    let net = Net::with_attacker("string-heights").await;
    let mut w = net.wallet().await;
    let mut honest = direct(&net, 1).await;
    // The wallet's addresses, subscribed first as a wallet does: under `[privacy] mode =
    // "spread"` they are balanced over the upstreams' sets, so the attacker is in most of
    // them whatever the privacy key.
    for a in ADDRESSES.iter() {
        w.call("blockchain.scripthash.subscribe", json!([a.scripthash]))
            .await;
    }
    for a in ADDRESSES.iter() {
        let got = w
            .call("blockchain.scripthash.get_history", json!([a.scripthash]))
            .await;
        let truth = honest
            .call("blockchain.scripthash.get_history", json!([a.scripthash]))
            .await;
        assert_eq!(got, truth);
        assert!(got.as_array().unwrap().iter().all(|e| e["height"].is_i64()));
    }
    assert!(
        failures(&net, Reason::BadEncoding) >= 1,
        "penalised as malformed"
    );
}

/// A transaction that decodes but that no honest node accepts: a confirmed transaction with
/// one output changed (its inputs are spent).
fn invalid_transaction(net: &Net) -> String {
    use bitcoin::consensus::encode::{deserialize, serialize_hex};
    use bitcoin::hex::FromHex;
    let txid = net.sim.block_txids(3).unwrap()[1];
    let bytes = Vec::<u8>::from_hex(&net.sim.tx_hex(&txid).unwrap()).unwrap();
    let mut tx: bitcoin::Transaction = deserialize(&bytes).unwrap();
    tx.output[0].value = bitcoin::Amount::from_sat(tx.output[0].value.to_sat() - 1);
    serialize_hex(&tx)
}

#[tokio::test]
async fn one_upstream_accepting_a_broadcast_is_not_success() {
    let net = Net::with_attacker("accept-all").await;
    let mut w = net.wallet().await;
    let bad = invalid_transaction(&net);
    let mut honest = direct(&net, 1).await;
    let rejection = honest
        .call_err("blockchain.transaction.broadcast", json!([bad]))
        .await;
    let e = w
        .call_err("blockchain.transaction.broadcast", json!([bad]))
        .await;
    assert_eq!(e["message"], rejection["message"], "the honest rejection");
    // A transaction the honest upstreams do accept (one they already have) succeeds.
    let txid = net.sim.mempool_txids()[0];
    let raw = net.sim.tx_hex(&txid).unwrap();
    let ok = w
        .call("blockchain.transaction.broadcast", json!([raw]))
        .await;
    assert_eq!(ok, json!(txid.to_string()));
}

#[tokio::test]
async fn a_fee_liar_among_three_does_not_move_the_estimate() {
    let net = Net::with_attacker("fee-factor=100").await;
    let mut w = net.wallet().await;
    let mut honest = direct(&net, 1).await;
    for target in [1, 2, 6, 25] {
        let got = w.call("blockchain.estimatefee", json!([target])).await;
        let truth = honest.call("blockchain.estimatefee", json!([target])).await;
        assert_eq!(got, truth, "target {target}");
    }
}

#[tokio::test]
async fn a_fee_liar_among_two_gives_no_estimate_rather_than_its_own() {
    let net = Net::start(&["127.0.0.1:0,fee-factor=100", "127.0.0.1:0,latency=30"]).await;
    net.wait_in_step(2).await;
    let mut w = net.wallet().await;
    let mut honest = direct(&net, 1).await;
    let truth = honest
        .call("blockchain.estimatefee", json!([2]))
        .await
        .as_f64()
        .unwrap();
    let got = w.call("blockchain.estimatefee", json!([2])).await;
    let got = got.as_f64().unwrap();
    assert!(
        got == -1.0 || (truth / 2.0..=truth * 2.0).contains(&got),
        "{got} against an honest {truth}"
    );
}

#[tokio::test]
async fn fee_answers_that_are_not_numbers_are_dropped_and_penalised() {
    let net = Net::with_attacker("fee-garbage").await;
    let mut w = net.wallet().await;
    let mut honest = direct(&net, 1).await;
    let got: Value = w.call("blockchain.estimatefee", json!([2])).await;
    let truth = honest.call("blockchain.estimatefee", json!([2])).await;
    assert_eq!(got, truth);
    let info = w.call("mempool.get_info", json!([])).await;
    assert!(info["minrelaytxfee"].is_number(), "{info}");
    assert!(
        failures(&net, Reason::BadEncoding) >= 1,
        "penalised as malformed"
    );
}
