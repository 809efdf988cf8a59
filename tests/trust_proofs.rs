//! Holes in the trust model, each attacked by a simulated upstream from every position: the
//! fastest upstream (the honest ones answer 30 ms late, so the attacker ranks first), the only
//! upstream left to answer a read that would be cached, and an upstream out of step. The
//! wallet must only ever see what the honest chain says, no forged answer may be cached, and
//! the attacker must be penalised.

mod common;

use bitcoin::consensus::encode::deserialize;
use bitcoin::hex::FromHex;
use bitcoin::{Transaction, Txid};
use common::{Net, Wallet};
use electrum_gateway::chain::{check_merkle, merkle};
use electrum_gateway::sim::Faults;
use electrum_gateway::verify::{Demotion, Reason, Standing};
use serde_json::json;

/// What these tests ask of the gateway besides what `Net` offers.
trait Inspect {
    fn standing(&self, i: usize) -> Standing;
    fn failures(&self, reason: Reason) -> u64;
    fn cache_hits(&self) -> u64;
    fn set(&self, i: usize, faults: &str);
    async fn stop(&self, i: usize);
    async fn restart(&self, i: usize);
}

impl Inspect for Net {
    fn standing(&self, i: usize) -> Standing {
        self.gw.snapshot().upstreams[i].standing.clone()
    }

    fn failures(&self, reason: Reason) -> u64 {
        self.gw.snapshot().counters.failures_of(reason)
    }

    fn cache_hits(&self) -> u64 {
        self.gw.snapshot().counters.cache_hits
    }

    fn set(&self, i: usize, faults: &str) {
        self.sim.set_faults(i, faults.parse::<Faults>().unwrap());
    }

    /// Kills upstream `i` and waits until the gateway has noticed.
    async fn stop(&self, i: usize) {
        self.sim.stop_endpoint(i).await;
        self.until("the upstream is gone", || {
            self.gw.snapshot().upstreams[i].connections == 0
        })
        .await;
    }

    /// Starts upstream `i` again and waits until the gateway is connected and knows its tip.
    async fn restart(&self, i: usize) {
        self.sim.start_endpoint(i).await.unwrap();
        self.until("the upstream is back", || {
            let u = &self.gw.snapshot().upstreams[i];
            u.connections > 0 && u.tip.is_some() && u.standing.in_step()
        })
        .await;
    }
}

fn tx_of(net: &Net, txid: &Txid) -> Transaction {
    let bytes = Vec::<u8>::from_hex(&net.sim.tx_hex(txid).unwrap()).unwrap();
    deserialize(&bytes).unwrap()
}

fn has_witness(tx: &Transaction) -> bool {
    tx.input.iter().any(|i| !i.witness.is_empty())
}

/// Heights at least `depth` deep (so their proofs are cached) whose block has `want(n)`
/// transactions.
fn blocks(net: &Net, depth: u32, want: impl Fn(usize) -> bool) -> Vec<u32> {
    let tip = net.sim.tip_height();
    (1..=tip + 1 - depth)
        .filter(|h| want(net.sim.block_txids(*h).unwrap().len()))
        .collect()
}

/// Confirmed segwit transactions (non-coinbase, with a witness), oldest first.
fn segwit_txids(net: &Net) -> Vec<Txid> {
    (1..=net.sim.tip_height())
        .flat_map(|h| net.sim.block_txids(h).unwrap().into_iter().skip(1))
        .filter(|t| has_witness(&tx_of(net, t)))
        .collect()
}

/// A confirmed transaction that spends legacy outputs only (a script_sig on every input, no
/// witness).
fn legacy_txid(net: &Net) -> Txid {
    (1..=net.sim.tip_height())
        .flat_map(|h| net.sim.block_txids(h).unwrap().into_iter().skip(1))
        .find(|t| {
            let tx = tx_of(net, t);
            !has_witness(&tx) && tx.input.iter().all(|i| !i.script_sig.is_empty())
        })
        .expect("the chain has legacy spends")
}

fn merkle_root(net: &Net, height: u32) -> String {
    let hex = net.sim.header_hex(height).unwrap();
    let header: bitcoin::block::Header = deserialize(&Vec::<u8>::from_hex(&hex).unwrap()).unwrap();
    header.merkle_root.to_string()
}

/// `id_from_pos` with and without its branch gives the honest txid, with a branch as long as
/// the block's tree is deep that proves it.
async fn id_from_pos_is_honest(net: &Net, w: &mut Wallet, height: u32, pos: usize) {
    let txids = net.sim.block_txids(height).unwrap();
    let want = txids[pos].to_string();
    let id = w
        .call("blockchain.transaction.id_from_pos", json!([height, pos]))
        .await;
    assert_eq!(id, json!(want), "block {height} position {pos}");
    let proof = w
        .call(
            "blockchain.transaction.id_from_pos",
            json!([height, pos, true]),
        )
        .await;
    assert_eq!(
        proof["tx_hash"],
        json!(want),
        "block {height} position {pos}"
    );
    let branch: Vec<String> = serde_json::from_value(proof["merkle"].clone()).unwrap();
    assert_eq!(branch.len(), merkle::branch_length(txids.len()));
    let header: bitcoin::block::Header =
        deserialize(&Vec::<u8>::from_hex(&net.sim.header_hex(height).unwrap()).unwrap()).unwrap();
    check_merkle(&txids[pos], pos as u64, &branch, &header.merkle_root).expect("a valid proof");
}

// ---------------------------------------------------------------------------------------------
// 1. id_from_pos: an inner node passed off as a txid.

#[tokio::test]
async fn an_inner_node_never_passes_as_the_transaction_at_a_position() {
    let net = Net::with_attacker("inner-node").await;
    net.wait_ready().await;
    let mut w = net.wallet().await;
    let many = blocks(&net, 6, |n| n >= 3);
    let one = blocks(&net, 6, |n| n == 1);
    assert!(
        many.len() >= 4 && !one.is_empty(),
        "the chain has both kinds"
    );
    // Twice: the second round comes from the cache, which must hold only honest answers.
    for round in 0..2 {
        for &h in many.iter().take(4) {
            for pos in 0..net.sim.block_txids(h).unwrap().len() {
                id_from_pos_is_honest(&net, &mut w, h, pos).await;
            }
        }
        // A one-transaction block: its coinbase txid is the merkle root, with an empty
        // branch. That is the honest answer and it passes.
        id_from_pos_is_honest(&net, &mut w, one[0], 0).await;
        assert!(net.failures(Reason::BadMerkle) >= 1, "round {round}");
    }
}

#[tokio::test]
async fn an_inner_node_is_not_cached_when_the_forger_answers_alone() {
    let net = Net::start(&["127.0.0.1:0,inner-node", "127.0.0.1:0,latency=30"]).await;
    let mut w = net.wallet().await;
    let h = blocks(&net, 10, |n| n >= 2)[0];
    let root = merkle_root(&net, h);
    // The honest upstream is gone: the forger is the only one left to answer a read whose
    // answer would be cached (the block is ten deep).
    net.stop(1).await;
    for merkle in [false, true] {
        let id = w
            .send("blockchain.transaction.id_from_pos", json!([h, 0, merkle]))
            .await;
        let r = w.response(id).await;
        let claimed = if merkle {
            &r["result"]["tx_hash"]
        } else {
            &r["result"]
        };
        assert_ne!(claimed, &json!(root), "the forgery reached the wallet: {r}");
        assert!(r.get("error").is_some(), "{r}");
    }
    assert!(
        net.failures(Reason::BadMerkle) >= 1,
        "the forger was caught"
    );
    // The honest upstream is back: the wallet gets the real transaction, not a cached
    // forgery.
    net.restart(1).await;
    id_from_pos_is_honest(&net, &mut w, h, 0).await;
}

#[tokio::test]
async fn the_explorer_lists_only_real_transactions() {
    let net = Net::start_http(&[
        "127.0.0.1:0,inner-node",
        "127.0.0.1:0,latency=30",
        "127.0.0.1:0,latency=30",
    ])
    .await;
    for &h in blocks(&net, 6, |n| n >= 2).iter().take(3) {
        let root = merkle_root(&net, h);
        // Twice: the second page is built from cached answers.
        for _ in 0..2 {
            let r = net.get(&format!("/explorer/block/{h}")).await;
            assert_eq!(r.status, 200);
            for txid in net.sim.block_txids(h).unwrap() {
                assert!(r.body.contains(&format!("{txid}</a>")), "{txid} missing");
            }
            assert!(
                !r.body.contains(&format!("{root}</a>")),
                "the merkle root is listed as a transaction of block {h}"
            );
        }
    }
    net.gw.shutdown();
}

// ---------------------------------------------------------------------------------------------
// 2. Witnesses: the txid does not cover them.

/// The wallet gets the honest bytes of each transaction, raw and verbose.
async fn transactions_are_honest(net: &Net, w: &mut Wallet, txids: &[Txid]) {
    for txid in txids {
        let honest = json!(net.sim.tx_hex(txid).unwrap());
        let raw = w
            .call("blockchain.transaction.get", json!([txid.to_string()]))
            .await;
        assert_eq!(raw, honest, "{txid}");
        let verbose = w
            .call(
                "blockchain.transaction.get",
                json!([txid.to_string(), true]),
            )
            .await;
        assert_eq!(verbose["hex"], honest, "{txid}");
        let tx = tx_of(net, txid);
        if let Some(hash) = verbose.get("hash") {
            assert_eq!(hash, &json!(tx.compute_wtxid().to_string()), "{txid}");
        }
    }
}

#[tokio::test]
async fn stripped_and_altered_witnesses_are_outvoted() {
    let net = Net::with_attacker("strip-witness").await;
    net.wait_ready().await;
    let mut w = net.wallet().await;
    let segwit = segwit_txids(&net);
    assert!(segwit.len() >= 20, "the chain has segwit spends");
    let mempool: Vec<Txid> = net
        .sim
        .mempool_txids()
        .into_iter()
        .filter(|t| has_witness(&tx_of(&net, t)))
        .collect();
    assert!(!mempool.is_empty(), "the mempool has segwit transactions");
    transactions_are_honest(&net, &mut w, &segwit[..4]).await;
    transactions_are_honest(&net, &mut w, &mempool).await;
    let stripped = net.failures(Reason::BadWitness);
    assert!(stripped >= 1, "the stripper was penalised");
    // A voted answer is cached.
    let hits = net.cache_hits();
    transactions_are_honest(&net, &mut w, &segwit[..1]).await;
    assert!(
        net.cache_hits() > hits,
        "a voted transaction is served from the cache"
    );

    // Now it alters witnesses instead; once its sit-out is over it is the fastest again.
    net.set(0, "alter-witness");
    net.until("the liar is back", || !net.standing(0).sitting_out())
        .await;
    transactions_are_honest(&net, &mut w, &segwit[4..8]).await;
    assert!(
        net.failures(Reason::BadWitness) > stripped,
        "the alterer was penalised"
    );
}

#[tokio::test]
async fn a_witness_from_a_single_upstream_is_never_cached() {
    let net = Net::with_attacker("strip-witness").await;
    let mut w = net.wallet().await;
    let segwit = segwit_txids(&net);
    let txid = segwit[0].to_string();
    // The honest upstreams are gone: the stripper alone answers. Nothing can show its
    // answer false, so it is served; it must not be cached.
    net.stop(1).await;
    net.stop(2).await;
    let hits = net.cache_hits();
    w.call("blockchain.transaction.get", json!([txid])).await;
    w.call("blockchain.transaction.get", json!([txid])).await;
    assert_eq!(net.cache_hits(), hits, "an unvoted witness was cached");
    // Honest upstreams back: the honest bytes, not a cached stripped transaction.
    net.restart(1).await;
    net.restart(2).await;
    transactions_are_honest(&net, &mut w, &segwit[..1]).await;
    assert!(net.failures(Reason::BadWitness) >= 1);

    // A legacy transaction is proven by its txid alone: one upstream is enough, and it is
    // cached.
    let legacy = legacy_txid(&net).to_string();
    let hits = net.cache_hits();
    w.call("blockchain.transaction.get", json!([legacy])).await;
    w.call("blockchain.transaction.get", json!([legacy])).await;
    assert_eq!(net.cache_hits(), hits + 1);
}

#[tokio::test]
async fn one_honest_upstream_serves_segwit_transactions_uncached() {
    let net = Net::start(&["127.0.0.1:0"]).await;
    let mut w = net.wallet().await;
    let segwit = segwit_txids(&net);
    let before = net.sim.requests(0);
    let hits = net.cache_hits();
    for _ in 0..2 {
        transactions_are_honest(&net, &mut w, &segwit[..2]).await;
    }
    assert_eq!(net.cache_hits(), hits, "nothing voted, nothing cached");
    assert!(
        net.sim.requests(0) >= before + 8,
        "every read went upstream"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Upstreams out of step: a lie that holds on no branch is still a lie.

#[tokio::test]
async fn lies_that_hold_on_no_branch_are_penalised_even_out_of_step() {
    // Upstream 0 serves a competing branch (its last blocks differ) one block behind: it is
    // out of step for good. Long sit-outs, so a penalised upstream is still sitting out when
    // asked again.
    let net = Net::start_with(
        &["127.0.0.1:0,fork=3,lag=1", "127.0.0.1:0", "127.0.0.1:0"],
        |cfg| cfg.verify.penalty_secs = 60.0,
    )
    .await;
    net.until("the fork demoted", || {
        net.standing(0).demoted == Some(Demotion::Fork)
    })
    .await;
    net.stop(1).await;
    net.stop(2).await;
    let mut w = net.wallet().await;
    let tip = net.sim.tip_height();

    // Its own branch's block at a height where it differs: its proof is of its block, which is
    // not ours. Refused, and not held against it.
    let e = w
        .call_err("blockchain.transaction.id_from_pos", json!([tip - 2, 0]))
        .await;
    assert!(e["message"].is_string(), "{e}");
    assert_eq!(net.failures(Reason::BadMerkle), 0);
    assert_eq!(net.standing(0).strikes, 0, "a proof of its own branch");

    // A transaction that does not hash to its txid is false on every branch.
    net.set(0, "fork=3,lag=1,wrong-tx");
    let txid = net.sim.block_txids(5).unwrap()[0].to_string();
    w.call_err("blockchain.transaction.get", json!([txid]))
        .await;
    assert_eq!(net.failures(Reason::BadTxid), 1);
    assert!(net.standing(0).sitting_out());
    // Sitting out, it is still the only upstream, so it is asked, and penalised again.
    w.call_err("blockchain.transaction.get", json!([txid]))
        .await;
    assert_eq!(net.failures(Reason::BadTxid), 2);
    assert_eq!(net.standing(0).strikes, 2);
}
