//! One malicious upstream out of three must not decide what a wallet sees, stall the gateway or
//! sideline honest servers: cheap deep-fork announcements, strikes that outlive the server they
//! were given to, and a peer list flooded with one upstream's own servers.
//!
//! The attacker is the fastest upstream (the honest ones answer 30 ms later), so it is asked
//! first and announces every block first.

mod common;

use common::{Net, Wallet};
use electrum_gateway::sim::{Faults, ADDRESSES};
use electrum_gateway::verify::{Demotion, Reason, Standing};
use serde_json::json;

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
