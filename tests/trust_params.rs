//! An honest upstream is never penalised for the form a wallet chose for its parameters: the
//! gateway puts them in canonical form before any upstream sees them, and refuses what an
//! honest server would refuse.

mod common;

use common::Net;
use serde_json::json;

#[tokio::test]
async fn wallet_parameter_forms_never_get_an_honest_upstream_penalised() {
    let net = Net::start(&["127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"]).await;
    let mut w = net.wallet().await;
    let txid = net.sim.block_txids(3).unwrap()[1].to_string();
    // ElectrumX takes 1 for true: the verbose answer is checked as verbose.
    let v = w
        .call(
            "blockchain.transaction.get",
            json!([txid.to_uppercase(), 1]),
        )
        .await;
    assert_eq!(
        v["hex"],
        json!(net.sim.tx_hex(&txid.parse().unwrap()).unwrap())
    );
    // Heights as decimal strings, as ElectrumX's int() takes them.
    let m = w
        .call("blockchain.transaction.get_merkle", json!([txid, "3"]))
        .await;
    assert_eq!(m["block_height"], 3);
    let id = w
        .call("blockchain.transaction.id_from_pos", json!(["3", "1"]))
        .await;
    assert_eq!(id, json!(txid));
    let h = w.call("blockchain.block.header", json!(["3"])).await;
    assert_eq!(h, json!(net.sim.header_hex(3).unwrap()));
    // What an honest server refuses is refused here, before any upstream is asked.
    for (method, params, code) in [
        ("blockchain.transaction.get", json!([txid, "yes"]), 1),
        ("blockchain.transaction.get", json!(["xyz"]), 1),
        (
            "blockchain.transaction.get_merkle",
            json!([txid, "three"]),
            1,
        ),
        ("blockchain.transaction.id_from_pos", json!([3.5, 0]), 1),
        ("blockchain.transaction.get", json!([]), -32602),
    ] {
        let e = w.call_err(method, params.clone()).await;
        assert_eq!(e["code"], code, "{method} {params}: {e}");
    }
    let failures: u64 = net.gw.snapshot().counters.failures.values().sum();
    assert_eq!(failures, 0, "no honest upstream was blamed");
}
