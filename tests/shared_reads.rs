//! Voted scripthash reads without repeated upstream work: answers voted at a watched
//! scripthash's status are served again until the status changes, and identical reads in
//! flight share one upstream request and vote. Neither may ever serve a stale answer.

mod common;

use common::Net;
use electrum_gateway::sim::ADDRESSES;
use serde_json::{json, Value};

/// The value of a counter in the gateway's metrics text (0 when absent).
fn counter(net: &Net, name: &str, method: &str) -> f64 {
    let prefix = format!("electrum_gateway_{name}{{method=\"{method}\"}} ");
    net.gw
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// What an honest server answers now for the three status-keyed reads.
fn truth(net: &Net, sh: &str) -> [(&'static str, Value); 3] {
    let (confirmed, unconfirmed) = net.sim.balance(sh).unwrap();
    [
        (
            "blockchain.scripthash.get_balance",
            json!({"confirmed": confirmed, "unconfirmed": unconfirmed}),
        ),
        (
            "blockchain.scripthash.get_history",
            net.sim.history_json(sh).unwrap(),
        ),
        (
            "blockchain.scripthash.listunspent",
            net.sim.listunspent_json(sh).unwrap(),
        ),
    ]
}

const BALANCE: &str = "blockchain.scripthash.get_balance";

#[tokio::test]
async fn answers_voted_at_a_status_are_served_again_until_it_changes() {
    let net = Net::start(&["127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"]).await;
    net.wait_in_step(3).await;
    let a = &ADDRESSES[0];
    let sh = a.scripthash;
    let mut w = net.wallet().await;

    // Not subscribed: nothing identifies the answer, so nothing is kept.
    for _ in 0..2 {
        let (_, expected) = &truth(&net, sh)[0];
        assert_eq!(&w.call(BALANCE, json!([sh])).await, expected);
    }
    assert_eq!(counter(&net, "cache_hits_total", BALANCE), 0.0);

    let status = w.call("blockchain.scripthash.subscribe", json!([sh])).await;
    assert_eq!(status, json!(net.sim.status(sh).unwrap()));
    for (method, expected) in truth(&net, sh) {
        assert_eq!(w.call(method, json!([sh])).await, expected, "{method}");
    }
    // The same reads again, at the same status: from the cache, and still the truth.
    let upstream_before: u64 = (0..3).map(|i| net.sim.requests(i)).sum();
    for (method, expected) in truth(&net, sh) {
        let hits = counter(&net, "cache_hits_total", method);
        assert_eq!(w.call(method, json!([sh])).await, expected, "{method}");
        assert_eq!(
            counter(&net, "cache_hits_total", method),
            hits + 1.0,
            "{method}"
        );
    }
    let upstream_after: u64 = (0..3).map(|i| net.sim.requests(i)).sum();
    assert!(
        upstream_after - upstream_before < 3,
        "cached reads went upstream: {upstream_before} -> {upstream_after}"
    );

    // A payment changes the status: the next reads are the new truth, never the kept ones.
    net.sim.pay(a.address, 25_000).unwrap();
    let paid = reads_follow(&net, &mut w, sh, "the payment").await;
    assert_ne!(paid, status);
    // So does a block confirming it.
    net.sim.mine(1);
    let mined = reads_follow(&net, &mut w, sh, "the block").await;
    assert_ne!(mined, paid);
}

/// Waits until the wallet is notified of the scripthash's honest status now, then checks that
/// every status-keyed read is the honest answer; returns the status.
async fn reads_follow(net: &Net, w: &mut common::Wallet, sh: &str, after: &str) -> Value {
    let status = json!(net.sim.status(sh).unwrap());
    w.notification_until("blockchain.scripthash.subscribe", |n| {
        n["params"][1] == status
    })
    .await;
    for (method, expected) in truth(net, sh) {
        assert_eq!(
            w.call(method, json!([sh])).await,
            expected,
            "{method} after {after}"
        );
    }
    status
}

#[tokio::test]
async fn identical_reads_in_flight_share_one_upstream_request() {
    // Slow upstreams, so that the wallets' reads are all in flight at once.
    let net = Net::start(&[
        "127.0.0.1:0,latency=300",
        "127.0.0.1:0,latency=300",
        "127.0.0.1:0,latency=300",
    ])
    .await;
    net.wait_in_step(3).await;
    let sh = ADDRESSES[1].scripthash;
    let expected = truth(&net, sh)[0].1.clone();
    let mut wallets = Vec::new();
    for _ in 0..8 {
        wallets.push(net.wallet().await);
    }
    let upstream_before: u64 = (0..3).map(|i| net.sim.requests(i)).sum();
    let mut ids = Vec::new();
    for w in wallets.iter_mut() {
        ids.push(w.send(BALANCE, json!([sh])).await);
    }
    for (w, id) in wallets.iter_mut().zip(ids) {
        let reply = w.response(id).await;
        assert_eq!(reply["result"], expected, "{reply}");
    }
    let upstream_after: u64 = (0..3).map(|i| net.sim.requests(i)).sum();
    let shared = counter(&net, "shared_reads_total", BALANCE);
    assert!(shared >= 1.0, "no read was shared");
    // Voted: each read alone asks at least two upstreams.
    assert!(
        upstream_after - upstream_before < 16,
        "every read went upstream: {} requests",
        upstream_after - upstream_before
    );
}
