//! The upstream holding a scripthash subscription does not decide what wallets hear: two
//! upstreams watch every scripthash, a status reaches wallets only when both announce it (or
//! when the upstreams' histories settle a disagreement), and an upstream that stalls
//! subscriptions is moved away from. Each attacker watches most of the eight scripthashes the
//! tests subscribe to, so it holds subscriptions in every position.

mod common;

use common::Net;
use electrum_gateway::sim::ADDRESSES;
use electrum_gateway::verify::Reason;
use serde_json::{json, Value};
use std::collections::HashSet;

fn failures(net: &Net, reason: Reason) -> u64 {
    net.gw.snapshot().counters.failures_of(reason)
}

/// The status an honest server gives for a scripthash now.
fn truth(net: &Net, scripthash: &str) -> Value {
    json!(net.sim.status(scripthash).unwrap())
}

/// Subscribes a wallet to every documented address; each reply must be the honest status.
async fn subscribe_all(net: &Net) -> common::Wallet {
    let mut w = net.wallet().await;
    for a in ADDRESSES.iter() {
        let status = w
            .call("blockchain.scripthash.subscribe", json!([a.scripthash]))
            .await;
        assert_eq!(status, truth(net, a.scripthash), "reply for {}", a.address);
    }
    w
}

/// Pays every documented address (a mempool payment each) and waits until the wallet was
/// told each one's new honest status.
async fn every_payment_is_notified(net: &Net, w: &mut common::Wallet) {
    for a in ADDRESSES.iter() {
        net.sim.pay(a.address, 40_000).unwrap();
    }
    let mut pending: HashSet<&str> = ADDRESSES.iter().map(|a| a.scripthash).collect();
    while !pending.is_empty() {
        let n = w
            .notification_until("blockchain.scripthash.subscribe", |_| true)
            .await;
        let sh = n["params"][0].as_str().unwrap().to_string();
        let expected = truth(net, &sh);
        if n["params"][1] == expected {
            pending.remove(sh.as_str());
        }
    }
}

#[tokio::test]
async fn a_hidden_pending_payment_reaches_the_wallet() {
    // The attacker hides unconfirmed transactions from its histories and statuses,
    // consistently, so its own history always matches its status.
    let net = Net::with_attacker("hide-mempool").await;
    // Every address starts with a pending payment the attacker hides.
    for a in ADDRESSES.iter() {
        net.sim.pay(a.address, 30_000).unwrap();
    }
    let mut w = subscribe_all(&net).await;
    every_payment_is_notified(&net, &mut w).await;
    assert!(
        failures(&net, Reason::HistoryMismatch) >= 1,
        "the hiding watcher was caught"
    );
}

#[tokio::test]
async fn a_silent_watcher_cannot_hide_a_change() {
    let net = Net::with_attacker("silent").await;
    let mut w = subscribe_all(&net).await;
    every_payment_is_notified(&net, &mut w).await;
    assert!(
        failures(&net, Reason::Silent) >= 1,
        "the silent watcher was caught"
    );
    // The silent upstream was replaced: later changes come without waiting on it.
    every_payment_is_notified(&net, &mut w).await;
}

#[tokio::test]
async fn a_stalled_subscribe_moves_to_another_upstream() {
    let net = Net::with_attacker("stall-subscribe").await;
    // Another wallet reads meanwhile, so the attacker visibly answers everything but
    // subscriptions: a selective stall, not a slow server. It reads scripthashes nobody
    // subscribes to, whose answers the gateway cannot keep, so every read reaches upstreams;
    // many of them, so that under `[privacy] mode = "spread"` some have the attacker in their
    // set whatever the privacy key.
    let stop = tokio_util::sync::CancellationToken::new();
    let reader = {
        let (stop, addr) = (stop.clone(), net.addr());
        tokio::spawn(async move {
            let mut r = common::Wallet::connect(addr).await;
            let mut i = 0u32;
            while !stop.is_cancelled() {
                let unwatched = format!("{i:064x}");
                i = (i + 1) % 64;
                r.call("blockchain.scripthash.get_balance", json!([unwatched]))
                    .await;
            }
        })
    };
    let mut w = subscribe_all(&net).await;
    stop.cancel();
    reader.await.unwrap();
    every_payment_is_notified(&net, &mut w).await;
    assert!(
        failures(&net, Reason::Stalled) >= 1,
        "an upstream stalling subscriptions again and again is penalised"
    );
}

#[tokio::test]
async fn a_flooding_upstream_is_disconnected_and_penalised() {
    // The attacker follows every subscription with 5,000 made-up statuses, faster than they
    // can be vetted: the gateway queues at most a bounded number, then drops the connection.
    let net = Net::with_attacker("flood=5000").await;
    let mut w = subscribe_all(&net).await;
    assert!(failures(&net, Reason::Flood) >= 1, "the flood was noticed");
    every_payment_is_notified(&net, &mut w).await;
}
