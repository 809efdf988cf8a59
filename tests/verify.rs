//! No single upstream can lie to a wallet: simulated upstreams carrying each fault, a wallet
//! that must only ever see what the honest chain says, and faulty upstreams demoted or sat out
//! and taken back when the fault stops.

mod common;

use common::{Net, Wallet};
use electrum_gateway::chain::{check_header_proof, check_merkle};
use electrum_gateway::config::Config;
use electrum_gateway::gateway::Gateway;
use electrum_gateway::sim::{Faults, ADDRESSES};
use electrum_gateway::verify::{Demotion, Reason, Standing};
use serde_json::{json, Value};
use std::str::FromStr;

/// What these tests ask of the gateway besides what `Net` offers.
trait Inspect {
    fn standing(&self, i: usize) -> Standing;
    fn failures(&self, reason: Reason) -> u64;
    fn header_failures(&self) -> u64;
    fn clear_faults(&self, i: usize);
}

impl Inspect for Net {
    fn standing(&self, i: usize) -> Standing {
        self.gw.snapshot().upstreams[i].standing.clone()
    }

    fn failures(&self, reason: Reason) -> u64 {
        self.gw.snapshot().counters.failures_of(reason)
    }

    /// Upstream headers refused, whatever rule they broke.
    fn header_failures(&self) -> u64 {
        use Reason::*;
        let c = self.gw.snapshot().counters;
        [
            BadHeader,
            BadEncoding,
            BadGenesis,
            BadLink,
            BadTarget,
            BadPow,
            Checkpoint,
            BadTime,
            BadVersion,
            Unconnected,
        ]
        .into_iter()
        .map(|r| c.failures_of(r))
        .sum()
    }

    fn clear_faults(&self, i: usize) {
        self.sim.set_faults(i, Faults::default());
    }
}

fn header(hex: &str) -> bitcoin::block::Header {
    electrum_gateway::protocol::tip::header_from_hex(hex).expect("an 80-byte header")
}

/// Every header answer equals the honest chain's.
async fn headers_are_honest(net: &Net, w: &mut Wallet) {
    let tip = w.call("blockchain.headers.subscribe", json!([])).await;
    assert_eq!(tip["hex"], json!(net.sim.tip_header_hex()));
    for h in [0, 1, 17, net.sim.tip_height()] {
        let got = w.call("blockchain.block.header", json!([h])).await;
        assert_eq!(got, json!(net.sim.header_hex(h).unwrap()));
    }
    let chunk = w.call("blockchain.block.headers", json!([10, 5])).await;
    let want: Vec<Value> = (10..15)
        .map(|h| json!(net.sim.header_hex(h).unwrap()))
        .collect();
    assert_eq!(chunk["headers"], Value::Array(want));
    // A header proof computed locally checks out against the honest header.
    let cp = net.sim.tip_height();
    let p = w.call("blockchain.block.header", json!([20, cp])).await;
    let branch: Vec<String> = serde_json::from_value(p["branch"].clone()).unwrap();
    check_header_proof(
        &header(p["header"].as_str().unwrap()),
        20,
        &branch,
        p["root"].as_str().unwrap(),
        cp,
    )
    .expect("the proof verifies");
}

#[tokio::test]
async fn bad_headers_never_reach_a_wallet() {
    // Two of three upstreams corrupt every header they serve.
    let net = Net::start(&[
        "127.0.0.1:0,bad-header",
        "127.0.0.1:0",
        "127.0.0.1:0,bad-header",
    ])
    .await;
    net.until("liars demoted", || {
        net.standing(0).demoted == Some(Demotion::BadHeader)
            && net.standing(2).demoted == Some(Demotion::BadHeader)
    })
    .await;
    let mut w = net.wallet().await;
    headers_are_honest(&net, &mut w).await;
    // A new block reaches the wallet with a valid header, once.
    let height = net.sim.mine(1);
    let n = w
        .notification_until("blockchain.headers.subscribe", |_| true)
        .await;
    assert_eq!(n["params"][0]["height"], height);
    let h = header(n["params"][0]["hex"].as_str().unwrap());
    h.validate_pow(h.target()).expect("valid proof of work");
    assert_eq!(n["params"][0]["hex"], json!(net.sim.tip_header_hex()));
    assert!(net.header_failures() >= 2);
    // The fault stops: at its next announcement (a new block) the upstream is back in step.
    net.clear_faults(0);
    net.sim.mine(1);
    net.until("upstream 0 back in step", || net.standing(0).in_step())
        .await;
}

#[tokio::test]
async fn wrong_transactions_are_refused_and_the_liar_sits_out() {
    // The honest upstream is the slowest, so the liars are the fastest and asked first.
    let net = Net::start(&[
        "127.0.0.1:0,wrong-tx",
        "127.0.0.1:0,wrong-tx",
        "127.0.0.1:0,latency=30",
    ])
    .await;
    let mut w = net.wallet().await;
    for h in [3, 50, 120, 200] {
        for txid in net.sim.block_txids(h).unwrap() {
            let got = w
                .call("blockchain.transaction.get", json!([txid.to_string()]))
                .await;
            assert_eq!(got, json!(net.sim.tx_hex(&txid).unwrap()));
        }
    }
    assert!(net.failures(Reason::BadTxid) >= 1, "a liar was caught");
    // Verified raw transactions are served from the cache afterwards.
    let hits = net.gw.snapshot().counters.cache_hits;
    let txid = net.sim.block_txids(3).unwrap()[0];
    w.call("blockchain.transaction.get", json!([txid.to_string()]))
        .await;
    assert!(net.gw.snapshot().counters.cache_hits > hits);
    // After the fault stops and the sit-out ends, the upstream serves again.
    net.clear_faults(0);
    net.clear_faults(1);
    net.until("sit-outs over", || {
        !net.standing(0).sitting_out() && !net.standing(1).sitting_out()
    })
    .await;
    // The honest upstream stalls now: the reads can only be answered by the recovered ones.
    let mut stalled = net.sim.faults(2);
    stalled.stall = true;
    net.sim.set_faults(2, stalled);
    let before = net.sim.requests(0) + net.sim.requests(1);
    for h in 201..230 {
        let txid = net.sim.block_txids(h).unwrap()[0];
        let got = w
            .call("blockchain.transaction.get", json!([txid.to_string()]))
            .await;
        assert_eq!(got, json!(net.sim.tx_hex(&txid).unwrap()));
    }
    assert!(
        net.sim.requests(0) + net.sim.requests(1) > before,
        "recovered upstreams are used again"
    );
}

#[tokio::test]
async fn bad_merkle_proofs_are_refused() {
    // The honest upstream is the slowest, so the liars are the fastest and asked first.
    let net = Net::start(&[
        "127.0.0.1:0,bad-merkle",
        "127.0.0.1:0,latency=30",
        "127.0.0.1:0,bad-merkle",
    ])
    .await;
    let mut w = net.wallet().await;
    for h in [5, 77, 150, 260] {
        let txids = net.sim.block_txids(h).unwrap();
        let root = header(&net.sim.header_hex(h).unwrap()).merkle_root;
        for (pos, txid) in txids.iter().enumerate() {
            let m = w
                .call(
                    "blockchain.transaction.get_merkle",
                    json!([txid.to_string(), h]),
                )
                .await;
            assert_eq!(m["pos"], pos);
            let branch: Vec<String> = serde_json::from_value(m["merkle"].clone()).unwrap();
            check_merkle(txid, pos as u64, &branch, &root).expect("a valid proof");
            let id = w
                .call("blockchain.transaction.id_from_pos", json!([h, pos]))
                .await;
            assert_eq!(id, json!(txid.to_string()));
            let idm = w
                .call("blockchain.transaction.id_from_pos", json!([h, pos, true]))
                .await;
            let branch: Vec<String> = serde_json::from_value(idm["merkle"].clone()).unwrap();
            let t = bitcoin::Txid::from_str(idm["tx_hash"].as_str().unwrap()).unwrap();
            check_merkle(&t, pos as u64, &branch, &root).expect("a valid proof");
        }
    }
    assert!(net.failures(Reason::BadMerkle) >= 1);
}

#[tokio::test]
async fn balance_and_history_lies_are_outvoted() {
    let net = Net::start(&[
        "127.0.0.1:0,lie-balance,lie-history",
        "127.0.0.1:0",
        "127.0.0.1:0",
    ])
    .await;
    let mut w = net.wallet().await;
    for round in 0..3 {
        for a in ADDRESSES.iter() {
            let (confirmed, unconfirmed) = net.sim.balance(a.scripthash).unwrap();
            let bal = w
                .call("blockchain.scripthash.get_balance", json!([a.scripthash]))
                .await;
            assert_eq!(
                bal,
                json!({"confirmed": confirmed, "unconfirmed": unconfirmed}),
                "round {round}"
            );
            let hist = w
                .call("blockchain.scripthash.get_history", json!([a.scripthash]))
                .await;
            assert_eq!(hist, net.sim.history_json(a.scripthash).unwrap());
            let status = w
                .call("blockchain.scripthash.subscribe", json!([a.scripthash]))
                .await;
            assert_eq!(status, json!(net.sim.status(a.scripthash).unwrap()));
        }
    }
    assert!(net.failures(Reason::VoteMinority) + net.failures(Reason::HistoryMismatch) >= 1);
    // Later status changes are the honest ones too.
    net.sim.pay(ADDRESSES[1].address, 4_321).unwrap();
    let want = json!(net.sim.status(ADDRESSES[1].scripthash).unwrap());
    w.notification_until("blockchain.scripthash.subscribe", |n| {
        n["params"][0] == json!(ADDRESSES[1].scripthash) && n["params"][1] == want
    })
    .await;
    w.call("server.ping", json!([])).await;
    for n in w.notifications.drain(..) {
        let sh = n["params"][0].as_str().unwrap_or_default().to_string();
        if n["method"] == "blockchain.scripthash.subscribe" {
            // Nothing but honest statuses, ever.
            let honest = json!(net.sim.status(&sh).unwrap());
            assert!(
                n["params"][1] == honest || sh == ADDRESSES[1].scripthash,
                "a lie reached the wallet: {n}"
            );
        }
    }
}

#[tokio::test]
async fn forked_and_lagging_upstreams_are_demoted_until_they_catch_up() {
    // A fork (as much work as the honest chain: the majority breaks the tie) and a laggard.
    let net = Net::start(&[
        "127.0.0.1:0,fork=3",
        "127.0.0.1:0",
        "127.0.0.1:0,lag=3",
        "127.0.0.1:0",
    ])
    .await;
    net.until("fork and lag demoted", || {
        net.standing(0).demoted == Some(Demotion::Fork)
            && net.standing(2).demoted == Some(Demotion::Lag)
    })
    .await;
    let mut w = net.wallet().await;
    headers_are_honest(&net, &mut w).await;
    for a in ADDRESSES.iter() {
        let hist = w
            .call("blockchain.scripthash.get_history", json!([a.scripthash]))
            .await;
        assert_eq!(hist, net.sim.history_json(a.scripthash).unwrap());
        let (confirmed, unconfirmed) = net.sim.balance(a.scripthash).unwrap();
        let bal = w
            .call("blockchain.scripthash.get_balance", json!([a.scripthash]))
            .await;
        assert_eq!(
            bal,
            json!({"confirmed": confirmed, "unconfirmed": unconfirmed})
        );
    }
    // Demoted upstreams serve no tip-dependent read.
    let ranked: Vec<usize> = net.gw.snapshot().ranked;
    assert_eq!(ranked.len(), 2);
    assert!(ranked.contains(&1) && ranked.contains(&3));
    // The faults stop: both catch up and are back in step.
    net.clear_faults(0);
    net.clear_faults(2);
    net.until("both back in step", || {
        net.standing(0).in_step() && net.standing(2).in_step()
    })
    .await;
    assert_eq!(net.gw.snapshot().ranked.len(), 4);
}

#[tokio::test]
async fn a_verified_reorg_reaches_subscribed_wallets_exactly_once() {
    let net = Net::start(&["127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"]).await;
    let mut wallets = Vec::new();
    for _ in 0..5 {
        let mut w = net.wallet().await;
        w.call("blockchain.headers.subscribe", json!([])).await;
        wallets.push(w);
    }
    let old_tip = net.sim.tip_height();
    let old_hash = net.sim.block_hash(old_tip - 1).unwrap();
    net.sim.reorg(2).unwrap();
    let new_tip = net.sim.tip_height();
    assert_eq!(new_tip, old_tip + 1);
    assert_ne!(net.sim.block_hash(old_tip - 1).unwrap(), old_hash);
    for w in wallets.iter_mut() {
        let n = w
            .notification_until("blockchain.headers.subscribe", |_| true)
            .await;
        assert_eq!(n["params"][0]["height"], new_tip);
        assert_eq!(n["params"][0]["hex"], json!(net.sim.tip_header_hex()));
        // Exactly once: nothing else queued after a round trip.
        w.call("server.ping", json!([])).await;
        assert!(
            w.notifications.is_empty(),
            "extra notifications: {:?}",
            w.notifications
        );
        // The replaced blocks are served from the new branch.
        let h = w
            .call("blockchain.block.header", json!([old_tip - 1]))
            .await;
        assert_eq!(h, json!(net.sim.header_hex(old_tip - 1).unwrap()));
    }
    assert_eq!(net.gw.snapshot().counters.reorgs, 1);
}

#[tokio::test]
async fn the_header_chain_persists_and_is_not_verified_again() {
    let net = Net::start(&["127.0.0.1:0"]).await;
    let dir = net.gw.config().data_dir.clone();
    let urls: Vec<String> = net.sim.urls().iter().map(|u| u.to_string()).collect();
    let height = net.sim.tip_height();
    net.gw.shutdown();
    let mut cfg = Config {
        network: "regtest".into(),
        data_dir: dir,
        ..Config::default()
    };
    cfg.upstreams.servers = urls;
    cfg.upstreams.use_server_list = false;
    cfg.listen.tcp = "127.0.0.1:0".into();
    cfg.listen.tls = String::new();
    cfg.listen.http = String::new();
    let again = Gateway::start(cfg).await.unwrap();
    let consensus = again.chain();
    // Loaded from disk, before any upstream was asked.
    assert_eq!(consensus.tip().height, height);
    assert_eq!(consensus.with_chain(|c| c.verified_count()), 0);
    again.shutdown();
}
