//! One malicious upstream out of three must not decide what a wallet sees, stall the gateway or
//! sideline honest servers: cheap deep-fork announcements, strikes that outlive the server they
//! were given to, and a peer list flooded with one upstream's own servers.
//!
//! The attacker is the fastest upstream (the honest ones answer 30 ms later), so it is asked
//! first and announces every block first.

mod common;

use common::{test_config, until, Net, Wallet, WAIT};
use electrum_gateway::config::Config;
use electrum_gateway::gateway::Gateway;
use electrum_gateway::sim::{Faults, Sim, SimConfig, ADDRESSES};
use electrum_gateway::verify::{Demotion, Reason, Standing};
use serde_json::{json, Value};
use std::path::Path;

/// How far below the tip the attacker's announced blocks fork off: past the reorg window
/// (2016 blocks), where no branch can win however much work it shows.
const DEEP: u32 = 2100;

trait Inspect {
    fn standing(&self, i: usize) -> Standing;
    fn failures(&self, reason: Reason) -> u64;
}

impl Inspect for Net {
    fn standing(&self, i: usize) -> Standing {
        self.gw.snapshot().upstreams[i].standing.clone()
    }

    fn failures(&self, reason: Reason) -> u64 {
        self.gw.snapshot().counters.failures_of(reason)
    }
}

/// Three upstreams, the one at `attacker` without latency, the others 30 ms slow.
fn endpoints(attacker: usize) -> Vec<&'static str> {
    (0..3)
        .map(|i| {
            if i == attacker {
                "127.0.0.1:0"
            } else {
                "127.0.0.1:0,latency=30"
            }
        })
        .collect()
}

/// Headers, a header proof and a balance, as the honest chain has them.
async fn reads_are_honest(net: &Net, w: &mut Wallet) {
    let tip = net.sim.tip_height();
    for h in [1, tip - DEEP, tip - DEEP + 1, tip] {
        let got = w.call("blockchain.block.header", json!([h])).await;
        assert_eq!(got, json!(net.sim.header_hex(h).unwrap()), "header {h}");
    }
    let a = &ADDRESSES[3];
    let (confirmed, unconfirmed) = net.sim.balance(a.scripthash).unwrap();
    let bal = w
        .call("blockchain.scripthash.get_balance", json!([a.scripthash]))
        .await;
    assert_eq!(
        bal,
        json!({"confirmed": confirmed, "unconfirmed": unconfirmed})
    );
}

async fn deep_forks_are_refused_and_penalised(attacker: usize) {
    let net = Net::start(&endpoints(attacker)).await;
    // A chain longer than the reorg window.
    let height = net.sim.mine(DEEP + 200);
    net.wait_tip(height).await;
    net.wait_all_at(height).await;
    let mut w = net.wallet().await;
    w.call("blockchain.headers.subscribe", json!([])).await;

    // From now on every tip the attacker announces is a valid block on one 2100 blocks deep.
    net.sim
        .set_faults(attacker, "deep-fork=2100".parse::<Faults>().unwrap());
    for _ in 0..3 {
        let height = net.sim.mine(1);
        let n = w
            .notification_until("blockchain.headers.subscribe", |n| {
                n["params"][0]["height"] == height
            })
            .await;
        assert_eq!(n["params"][0]["hex"], json!(net.sim.tip_header_hex()));
        reads_are_honest(&net, &mut w).await;
    }
    // Each announcement was refused as too old and penalised: the attacker is demoted and
    // sits out, with a strike for every attempt.
    net.until("every attempt penalised", || {
        net.failures(Reason::TooOld) >= 3
    })
    .await;
    let st = net.standing(attacker);
    assert_eq!(st.demoted, Some(Demotion::BadHeader), "{st:?}");
    assert!(st.strikes >= 3 && st.sitting_out(), "{st:?}");
    assert!(!net.gw.snapshot().ranked.contains(&attacker));
    assert_eq!(
        net.gw.snapshot().best_tip.unwrap().height,
        net.sim.tip_height()
    );
    for i in (0..3).filter(|i| *i != attacker) {
        assert!(net.standing(i).in_step(), "honest upstream {i} sidelined");
    }
    // Nothing was kept of the attacker's branches.
    assert_eq!(net.gw.chain().with_chain(|c| c.side_headers()), 0);

    // The attack stops: at its next announcement the upstream is back on the chain.
    net.sim.set_faults(attacker, Faults::default());
    net.sim.mine(1);
    net.until("the former attacker back on the chain", || {
        net.standing(attacker).on_chain()
    })
    .await;
}

#[tokio::test]
async fn deep_fork_announcements_from_the_first_upstream_are_refused_and_penalised() {
    deep_forks_are_refused_and_penalised(0).await;
}

#[tokio::test]
async fn deep_fork_announcements_from_the_last_upstream_are_refused_and_penalised() {
    deep_forks_are_refused_and_penalised(2).await;
}

/// Most servers one upstream's peer announcements may add to the candidates.
const PER_ANNOUNCER: usize = 4;

/// Candidates in the gateway's order (the first ten), and the number of them the attacker
/// announced.
fn candidates(gw: &Gateway) -> (Vec<String>, usize) {
    let mut c = gw.snapshot().candidates;
    let sybils = c.iter().filter(|u| u.contains("//10.")).count();
    c.truncate(10);
    (c, sybils)
}

/// A gateway on `dir` in front of `servers`, with `list` as its server list and peers learned.
async fn gateway(dir: &Path, servers: &[String], list: &Path) -> Gateway {
    let mut cfg: Config = test_config(servers.to_vec(), dir);
    cfg.upstreams.use_server_list = true;
    cfg.upstreams.server_list = list.to_string_lossy().into_owned();
    cfg.upstreams.replace_after_failures = 2;
    cfg.upstreams.reconnect_max_secs = 0.1;
    Gateway::start(cfg).await.unwrap()
}

#[tokio::test]
async fn a_thousand_announced_peers_never_get_ahead_of_configured_and_listed_servers() {
    // The attacker (the fastest upstream, first in the configuration) announces 1,000 servers
    // of its own; the honest upstreams announce none.
    let sybils: Vec<String> = (0..1000u32)
        .map(|i| format!("10.{}.{}.7:50001", i / 256, i % 256))
        .collect();
    let attacker = Sim::start(SimConfig {
        peers: sybils,
        ..SimConfig::with_endpoints(&["127.0.0.1:0"]).unwrap()
    })
    .await
    .unwrap();
    let honest = Sim::start(
        SimConfig::with_endpoints(&[
            "127.0.0.1:0,latency=30",
            "127.0.0.1:0,latency=30",
            "127.0.0.1:0,latency=30",
        ])
        .unwrap(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Honest endpoint 2 is on the server list, not configured.
    let listed = honest.url(2).to_string();
    let list = dir.path().join("servers.json");
    std::fs::write(
        &list,
        json!([{"hostname": "127.0.0.1", "ports": [format!("t{}", honest.url(2).port)]}])
            .to_string(),
    )
    .unwrap();
    let configured = vec![
        attacker.url(0).to_string(),
        honest.url(0).to_string(),
        honest.url(1).to_string(),
    ];
    let data = dir.path().join("gw");
    let gw = gateway(&data, &configured, &list).await;
    assert!(gw.wait_connected(3, WAIT).await);
    until("the attacker's peers learned", || async {
        (candidates(&gw).1 > 0).then_some(())
    })
    .await;
    let (c, n) = candidates(&gw);
    assert_eq!(c[0], listed, "the listed server comes first: {c:?}");
    assert!(n <= PER_ANNOUNCER, "{n} of the attacker's servers: {c:?}");

    // An honest configured upstream dies: its slot takes the listed server, not a sybil, and
    // the configured server waits ahead of every announced one.
    honest.stop_endpoint(1).await;
    let (gw_ref, listed_ref) = (&gw, &listed);
    until("the dead upstream replaced", || async move {
        gw_ref
            .snapshot()
            .upstreams
            .iter()
            .any(|u| u.url == *listed_ref)
            .then_some(())
    })
    .await;
    let (c, n) = candidates(&gw);
    assert_eq!(c[0], configured[2], "the configured server first: {c:?}");
    assert!(n <= PER_ANNOUNCER && c[1..=n].iter().all(|u| u.contains("//10.")));
    assert!(gw
        .snapshot()
        .upstreams
        .iter()
        .all(|u| !u.url.contains("//10.")));
    gw.save_state();
    gw.shutdown();

    // What was saved is bounded, and a restart puts configured and listed servers first.
    let saved: Value =
        serde_json::from_slice(&std::fs::read(data.join("upstreams.json")).unwrap()).unwrap();
    let saved = saved.as_object().unwrap();
    let saved_sybils = saved.keys().filter(|k| k.contains("//10.")).count();
    assert!(saved_sybils <= PER_ANNOUNCER, "{} saved", saved.len());
    let again = gateway(&data, &configured, &list).await;
    let (c, n) = candidates(&again);
    // The dead configured server has its slot back, so the listed server leads (or, should
    // the dead one already have been replaced again, that configured server does).
    assert!(
        c[0] == listed || c[0] == configured[2],
        "after a restart: {c:?}"
    );
    assert!((1..=PER_ANNOUNCER).contains(&n), "after a restart: {c:?}");
    assert!(c[1..].iter().all(|u| u.contains("//10.")), "{c:?}");
    again.shutdown();
    attacker.shutdown().await;
    honest.shutdown().await;
}
