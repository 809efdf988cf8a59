//! Interop: the gateway in front of three real ElectrumX servers, fed by a simulated bitcoind,
//! with a wallet-like flow through the gateway.
//!
//! ElectrumX (`e-x` from PyPI) is installed into `.venv` by `.ci/run`; see `docs/interop.md`.
//! Every expected answer is computed in the test from the blocks and mempool the simulated
//! bitcoind serves (`interop/expect.rs`), not taken from ElectrumX or the simulator.
//!
//! The flow: subscribe to headers and the documented addresses, read history, balances,
//! unspent outputs, transactions and merkle proofs (checked against the headers, whose proof
//! of work is checked too); a mempool payment, a broadcast, a new block and a reorg, each
//! followed by the notifications a wallet must get; then one ElectrumX is killed and restarted
//! while wallets keep reading and the chain keeps changing, and nothing may fail or go missing.

#[path = "interop/bitcoind.rs"]
mod bitcoind;
mod common;
#[path = "interop/electrumx.rs"]
mod electrumx;
#[path = "interop/expect.rs"]
mod expect;
#[path = "interop/net.rs"]
mod net;

use bitcoin::block::Header;
use bitcoin::consensus::{deserialize, serialize};
use bitcoin::hashes::Hash as _;
use bitcoin::hex::{DisplayHex, FromHex};
use bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness};
use bitcoind::Bitcoind;
use common::Wallet;
use electrum_gateway::sim::ADDRESSES;
use expect::{merkle_root, Expected};
use net::Interop;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Regtest proof-of-work bits (no retargeting on regtest).
const REGTEST_BITS: u32 = 0x207f_ffff;

fn hex_bytes(v: &Value) -> Vec<u8> {
    Vec::from_hex(
        v.as_str()
            .unwrap_or_else(|| panic!("not a hex string: {v}")),
    )
    .unwrap_or_else(|e| panic!("bad hex {v}: {e}"))
}

fn result(r: Value, what: &str) -> Value {
    match r.get("error") {
        Some(e) if !e.is_null() => panic!("{what} failed: {e}"),
        _ => r["result"].clone(),
    }
}

/// Reads every scripthash's history, balance and unspent outputs through the gateway,
/// pipelined, and compares them with the expected answers.
async fn check_reads(w: &mut Wallet, e: &Expected, what: &str) {
    let mut ids = Vec::new();
    for sh in e.by_sh.keys() {
        let h = w
            .send("blockchain.scripthash.get_history", json!([sh]))
            .await;
        let b = w
            .send("blockchain.scripthash.get_balance", json!([sh]))
            .await;
        let u = w
            .send("blockchain.scripthash.listunspent", json!([sh]))
            .await;
        let m = w
            .send("blockchain.scripthash.get_mempool", json!([sh]))
            .await;
        ids.push((sh, h, b, u, m));
    }
    for (sh, h, b, u, m) in ids {
        let exp = &e.by_sh[sh];
        let history = result(w.response(h).await, "get_history");
        assert_eq!(history, json!(exp.history), "{what}: history of {sh}");
        let balance = result(w.response(b).await, "get_balance");
        assert_eq!(balance, exp.balance, "{what}: balance of {sh}");
        let unspent = result(w.response(u).await, "listunspent");
        exp.check_listunspent(&unspent, &format!("{what}: listunspent of {sh}"));
        let mempool = result(w.response(m).await, "get_mempool");
        let want: Vec<&Value> = exp
            .history
            .iter()
            .filter(|h| h["height"].as_i64().unwrap() <= 0)
            .collect();
        assert_eq!(mempool, json!(want), "{what}: mempool of {sh}");
    }
}

/// Waits for the notifications a wallet subscribed to everything must get between `before`
/// and `after`: the header at the new tip (if it moved) and the final status of every
/// scripthash whose status changed.
async fn expect_notifications(w: &mut Wallet, before: &Expected, after: &Expected, what: &str) {
    if after.tip_hex != before.tip_hex {
        let h = w
            .notification_until("blockchain.headers.subscribe", |n| {
                n["params"][0]["height"] == json!(after.tip_height)
            })
            .await;
        assert_eq!(
            h["params"][0],
            json!({"hex": after.tip_hex, "height": after.tip_height}),
            "{what}: the header notification carries exactly hex and height of the new tip"
        );
    }
    let changed = after.changed_since(before);
    assert!(!changed.is_empty(), "{what}: the change touches the wallet");
    for sh in &changed {
        let want = json!(after.by_sh[sh].status);
        let n = w
            .notification_until("blockchain.scripthash.subscribe", |n| {
                n["params"][0] == json!(sh) && n["params"][1] == want
            })
            .await;
        assert_eq!(n["params"].as_array().unwrap().len(), 2, "{what}: {n}");
    }
    // A round trip later, whatever else was queued is legitimate: no notification for an
    // address whose status did not change, and no repeat of a final status.
    w.call("server.ping", json!([])).await;
    let changed: BTreeSet<&String> = changed.iter().collect();
    for n in w.notifications.drain(..) {
        match n["method"].as_str() {
            Some("blockchain.scripthash.subscribe") => {
                let sh = n["params"][0].as_str().unwrap().to_string();
                assert!(
                    changed.contains(&sh),
                    "{what}: notified without a change: {n}"
                );
                assert_ne!(
                    n["params"][1],
                    json!(after.by_sh[&sh].status),
                    "{what}: final status notified twice: {n}"
                );
            }
            Some("blockchain.headers.subscribe") => {
                let height = n["params"][0]["height"].as_u64().unwrap();
                assert!(
                    height < u64::from(after.tip_height),
                    "{what}: a header notification past the tip: {n}"
                );
            }
            _ => panic!("{what}: unexpected notification {n}"),
        }
    }
}

/// Checks a header's proof of work at regtest difficulty; returns it.
fn checked_header(hex: &Value, what: &str) -> Header {
    let header: Header = deserialize(&hex_bytes(hex)).expect("an 80-byte header");
    assert_eq!(header.bits.to_consensus(), REGTEST_BITS, "{what}: bits");
    header
        .validate_pow(header.target())
        .unwrap_or_else(|e| panic!("{what}: proof of work: {e}"));
    header
}

/// The whole header chain through the gateway: proof of work, links, genesis, and the
/// blocks the node serves.
async fn check_headers(w: &mut Wallet, e: &Expected, btc: &Bitcoind) {
    let snap = btc.snapshot();
    let got = w.call("blockchain.block.headers", json!([0, 2016])).await;
    let count = e.tip_height as usize + 1;
    assert_eq!(got["count"], json!(count));
    assert_eq!(got["max"], json!(2016));
    let headers = got["headers"].as_array().expect("protocol 1.6 form");
    assert_eq!(headers.len(), count);
    let mut prev: Option<Header> = None;
    for (height, hex) in headers.iter().enumerate() {
        let header = checked_header(hex, &format!("header {height}"));
        match prev {
            None => assert_eq!(
                header.block_hash(),
                bitcoin::blockdata::constants::genesis_block(bitcoin::Network::Regtest)
                    .block_hash()
            ),
            Some(p) => assert_eq!(header.prev_blockhash, p.block_hash(), "link at {height}"),
        }
        assert_eq!(header.block_hash(), snap.main[height], "block {height}");
        prev = Some(header);
    }
    assert_eq!(headers[count - 1], json!(e.tip_hex));
}

/// Transactions and merkle proofs through the gateway for a few confirmed transactions of
/// every address: raw bytes as the node serves them, txids that hash right, proofs that fold
/// to the merkle root of a proof-of-work-checked header.
async fn check_transactions(w: &mut Wallet, e: &Expected, btc: &Bitcoind, per_address: usize) {
    let snap = btc.snapshot();
    let mut picked: Vec<(Txid, u32)> = Vec::new();
    for exp in e.by_sh.values() {
        let confirmed: Vec<&Value> = exp
            .history
            .iter()
            .filter(|h| h["height"].as_i64().unwrap() > 0)
            .collect();
        // The first and the last confirmed ones: old blocks and recent ones.
        for h in confirmed
            .iter()
            .take(per_address / 2)
            .chain(confirmed.iter().rev().take(per_address - per_address / 2))
        {
            let txid: Txid = h["tx_hash"].as_str().unwrap().parse().unwrap();
            let height = h["height"].as_u64().unwrap() as u32;
            if !picked.contains(&(txid, height)) {
                picked.push((txid, height));
            }
        }
    }
    assert!(picked.len() >= 8);
    let mut ids = Vec::new();
    for (txid, height) in &picked {
        let t = w
            .send("blockchain.transaction.get", json!([txid.to_string()]))
            .await;
        let m = w
            .send(
                "blockchain.transaction.get_merkle",
                json!([txid.to_string(), height]),
            )
            .await;
        let h = w.send("blockchain.block.header", json!([height])).await;
        ids.push((txid, *height, t, m, h));
    }
    for (txid, height, t, m, h) in ids {
        let raw = result(w.response(t).await, "transaction.get");
        let tx: Transaction = deserialize(&hex_bytes(&raw)).expect("a transaction");
        assert_eq!(
            tx.compute_txid(),
            *txid,
            "the transaction hashes to its txid"
        );
        assert_eq!(
            serialize(&tx),
            serialize(&*snap.txs[txid].0),
            "the node's bytes"
        );
        let proof = result(w.response(m).await, "get_merkle");
        assert_eq!(proof["block_height"], json!(height));
        let pos = proof["pos"].as_u64().expect("pos");
        let block = snap.block(height);
        assert_eq!(
            block.txdata[pos as usize].compute_txid(),
            *txid,
            "position in the block"
        );
        let header = checked_header(
            &result(w.response(h).await, "block.header"),
            &format!("header {height}"),
        );
        let root = merkle_root(txid, proof["merkle"].as_array().expect("branch"), pos);
        assert_eq!(
            root,
            header.merkle_root.to_byte_array(),
            "the proof of {txid} folds to the merkle root of block {height}"
        );
    }
}

/// A transaction spending a confirmed output of address `from` to address `to`, with change.
fn spend(e: &Expected, net: &Interop, from: usize, to: usize, sats: u64) -> Transaction {
    let exp = &e.by_sh[&net.shs[from]];
    let utxo = exp
        .unspent_confirmed
        .iter()
        .find(|u| u["value"].as_u64().unwrap() >= sats + 10_000)
        .expect("a confirmed output large enough");
    let value = utxo["value"].as_u64().unwrap();
    let op = OutPoint::new(
        utxo["tx_hash"].as_str().unwrap().parse().unwrap(),
        utxo["tx_pos"].as_u64().unwrap() as u32,
    );
    Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: op,
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            witness: Witness::new(),
        }],
        output: vec![
            TxOut {
                value: Amount::from_sat(sats),
                script_pubkey: net.scripts[to].clone(),
            },
            TxOut {
                value: Amount::from_sat(value - sats - 5_000),
                script_pubkey: net.scripts[from].clone(),
            },
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ElectrumX 2.0.0 (.ci/run installs it into .venv; or set ELECTRUMX_BIN); run with: cargo test -- --include-ignored"]
async fn a_wallet_through_the_gateway_in_front_of_three_electrumx_servers() {
    let bin = electrumx::binary();
    let mut net = Interop::start(&bin, |_| {}).await;
    let e0 = net.expected();
    net.settle(&e0, "the initial chain").await;

    // --- A wallet connects and subscribes to everything, like the Electrum wallet does.
    let mut w = net.wallet("1.6").await;
    let features = w.call("server.features", json!([])).await;
    assert_eq!(
        features["genesis_hash"],
        json!(
            bitcoin::blockdata::constants::genesis_block(bitcoin::Network::Regtest)
                .block_hash()
                .to_string()
        )
    );
    let tip = w.call("blockchain.headers.subscribe", json!([])).await;
    assert_eq!(tip, json!({"hex": e0.tip_hex, "height": e0.tip_height}));
    let ids: Vec<(String, i64)> = {
        let mut ids = Vec::new();
        for sh in &net.shs {
            ids.push((
                sh.clone(),
                w.send("blockchain.scripthash.subscribe", json!([sh])).await,
            ));
        }
        ids
    };
    for (sh, id) in ids {
        let status = result(w.response(id).await, "scripthash.subscribe");
        assert_eq!(status, json!(e0.by_sh[&sh].status), "status of {sh}");
    }
    check_reads(&mut w, &e0, "initial").await;
    check_headers(&mut w, &e0, &net.btc).await;
    check_transactions(&mut w, &e0, &net.btc, 4).await;

    // Fees come from the node through every ElectrumX; the gateway takes the median.
    for target in [2, 6, 25] {
        let fee = w.call("blockchain.estimatefee", json!([target])).await;
        let rate = bitcoind::fee_rate(target);
        assert_eq!(fee.as_f64(), Some(rate), "estimatefee {target}");
    }
    let info = w.call("mempool.get_info", json!([])).await;
    assert_eq!(
        info,
        json!({"mempoolminfee": bitcoind::MIN_FEE, "minrelaytxfee": bitcoind::MIN_FEE, "incrementalrelayfee": bitcoind::MIN_FEE})
    );
    // A protocol 1.4 wallet gets the 1.4 forms, though ElectrumX speaks 1.6 to the gateway.
    {
        let mut old = net.wallet("1.4").await;
        let relay = old.call("blockchain.relayfee", json!([])).await;
        assert_eq!(relay.as_f64(), Some(bitcoind::MIN_FEE));
        let h = old.call("blockchain.block.headers", json!([10, 3])).await;
        let want: String = (10..13)
            .map(|i| serialize(&net.btc.snapshot().block(i).header).to_lower_hex_string())
            .collect();
        assert_eq!(h["hex"], json!(want));
    }

    // --- A payment enters the mempool: the wallet is notified.
    net.btc.pay(ADDRESSES[3].address, 123_456);
    let e1 = net.expected();
    expect_notifications(&mut w, &e0, &e1, "mempool payment").await;
    net.settle(&e1, "the mempool payment").await;
    check_reads(&mut w, &e1, "after a mempool payment").await;

    // --- The wallet broadcasts a transaction through the gateway.
    let tx = spend(&e1, &net, 5, 6, 250_000);
    let raw = serialize(&tx).to_lower_hex_string();
    let txid = w
        .call("blockchain.transaction.broadcast", json!([raw]))
        .await;
    assert_eq!(txid, json!(tx.compute_txid().to_string()));
    let e2 = net.expected();
    assert!(
        e2.by_sh[&net.shs[6]]
            .history
            .iter()
            .any(|h| h["tx_hash"] == txid),
        "the node has the broadcast transaction"
    );
    expect_notifications(&mut w, &e1, &e2, "broadcast").await;
    net.settle(&e2, "the broadcast").await;
    check_reads(&mut w, &e2, "after a broadcast").await;
    // Broadcasting it again is not an error, and an invalid spend is refused.
    let again = w
        .call("blockchain.transaction.broadcast", json!([raw]))
        .await;
    assert_eq!(again, txid);
    let mut bad = tx.clone();
    bad.input[0].previous_output.vout = 99;
    let err = w
        .call_err(
            "blockchain.transaction.broadcast",
            json!([serialize(&bad).to_lower_hex_string()]),
        )
        .await;
    assert!(
        err["message"]
            .as_str()
            .unwrap_or_default()
            .contains("missingorspent"),
        "the node's reason reaches the wallet: {err}"
    );

    // --- A block confirms the mempool. More wallets watch it: the gateway carries them all
    // over its one connection per ElectrumX.
    let mut watchers = futures::future::join_all((0..10).map(|_| async {
        let mut v = net.wallet("1.6").await;
        v.call("blockchain.headers.subscribe", json!([])).await;
        let mut ids = Vec::new();
        for sh in &net.shs {
            ids.push((
                sh,
                v.send("blockchain.scripthash.subscribe", json!([sh])).await,
            ));
        }
        for (sh, id) in ids {
            let status = result(v.response(id).await, "scripthash.subscribe");
            assert_eq!(status, json!(e2.by_sh[sh].status));
        }
        v
    }))
    .await;
    let reorg_check_height = net.btc.mine(1) - 1;
    let e3 = net.expected();
    expect_notifications(&mut w, &e2, &e3, "new block").await;
    for v in watchers.iter_mut() {
        expect_notifications(v, &e2, &e3, "new block, another wallet").await;
    }
    drop(watchers);
    net.settle(&e3, "the new block").await;
    check_reads(&mut w, &e3, "after a block").await;
    check_transactions(&mut w, &e3, &net.btc, 2).await;
    // The broadcast transaction is now confirmed: re-broadcasting it is still a success.
    let again = w
        .call("blockchain.transaction.broadcast", json!([raw]))
        .await;
    assert_eq!(again, txid, "re-broadcasting a confirmed transaction");

    // --- A reorg replaces the last two blocks with three others.
    let old_headers: Vec<Value> = {
        let mut v = Vec::new();
        for h in reorg_check_height..=e3.tip_height {
            v.push(w.call("blockchain.block.header", json!([h])).await);
        }
        v
    };
    net.btc.reorg(2);
    let e4 = net.expected();
    assert_eq!(e4.tip_height, e3.tip_height + 1);
    expect_notifications(&mut w, &e3, &e4, "reorg").await;
    net.settle(&e4, "the reorg").await;
    check_reads(&mut w, &e4, "after a reorg").await;
    check_headers(&mut w, &e4, &net.btc).await;
    for (i, h) in (reorg_check_height..=e3.tip_height).enumerate() {
        let now = w.call("blockchain.block.header", json!([h])).await;
        assert_ne!(now, old_headers[i], "header {h} was replaced by the reorg");
    }

    // --- One ElectrumX dies mid-flow and comes back; wallets lose nothing.
    let addr = net.gw.tcp_addr().unwrap();
    let stop = CancellationToken::new();
    let reads = Arc::new(AtomicUsize::new(0));
    let fixed_height = 100u32;
    let fixed_header =
        json!(serialize(&net.btc.snapshot().block(fixed_height).header).to_lower_hex_string());
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let (stop, reads, shs) = (stop.clone(), reads.clone(), net.shs.clone());
            let fixed_header = fixed_header.clone();
            tokio::spawn(async move {
                let mut w = Wallet::connect(addr).await;
                w.call("server.version", json!(["reader", "1.4"])).await;
                let mut i = r;
                while !stop.is_cancelled() {
                    // Pipelined: a live read and a fixed one.
                    let sh = &shs[i % shs.len()];
                    let b = w
                        .send("blockchain.scripthash.get_balance", json!([sh]))
                        .await;
                    let h = w
                        .send("blockchain.block.header", json!([fixed_height]))
                        .await;
                    let b = w.response(b).await;
                    assert!(
                        b["result"]["confirmed"].is_u64() && b["result"]["unconfirmed"].is_i64(),
                        "a read failed while an upstream died: {b}"
                    );
                    let h = w.response(h).await;
                    assert_eq!(h["result"], fixed_header, "a read failed: {h}");
                    reads.fetch_add(2, Ordering::SeqCst);
                    i += 1;
                }
            })
        })
        .collect();
    wait_count(&reads, 6, "reads before the kill").await;
    // The victim: the upstream the gateway ranks first, which reads go to.
    let snap = net.gw.snapshot();
    let first = snap.upstreams[snap.ranked[0]].url.clone();
    let victim = net
        .servers
        .iter()
        .position(|s| s.url() == first)
        .expect("the ranked upstream is one of ours");
    net.monitors[victim] = None;
    net.servers[victim].kill().await;
    let reads_at_kill = reads.load(Ordering::SeqCst);

    // While it is down: a payment and a block reach the wallet through the others.
    net.btc.pay(ADDRESSES[0].address, 77_777);
    let e5 = net.expected();
    expect_notifications(&mut w, &e4, &e5, "payment with an upstream down").await;
    net.settle(&e5, "the payment with an upstream down").await;
    net.btc.mine(1);
    let e6 = net.expected();
    expect_notifications(&mut w, &e5, &e6, "block with an upstream down").await;
    net.settle(&e6, "the block with an upstream down").await;
    check_reads(&mut w, &e6, "with an upstream down").await;

    // It comes back on the same port and database, catches up, and the gateway uses it again.
    net.servers[victim].restart();
    let shs = net.shs.clone();
    let monitor = net.servers[victim].ready(e6.tip_height, &shs).await;
    net.monitors[victim] = Some(monitor);
    net.settle(&e6, "the restarted server").await;
    assert!(
        net.gw.wait_connected(3, electrumx::SYNC_WAIT).await,
        "the gateway reconnected to the restarted server"
    );
    net.btc.pay(ADDRESSES[2].address, 55_555);
    let e7 = net.expected();
    expect_notifications(&mut w, &e6, &e7, "payment after the restart").await;
    net.settle(&e7, "the payment after the restart").await;
    wait_count(&reads, reads_at_kill + 6, "reads after the restart").await;
    stop.cancel();
    for r in readers {
        r.await.expect("a reader failed");
    }
    check_reads(&mut w, &e7, "after the restart").await;

    // The node double was used the way ElectrumX uses bitcoind: batches, raw blocks, the
    // mempool, broadcasts.
    eprintln!("simulated bitcoind: {}", net.btc.call_summary());
    assert!(net.btc.batches() > 0, "ElectrumX sent batches");
    for m in [
        "getblockhash",
        "getblock",
        "getrawmempool",
        "getrawtransaction",
        "getnetworkinfo",
        "getindexinfo",
        "estimatesmartfee",
        "sendrawtransaction",
    ] {
        assert!(net.btc.calls(m) > 0, "ElectrumX called {m}");
    }
    eprintln!(
        "gateway: {} subscription moves, {} reads during the failover",
        net.gw.snapshot().counters.subscription_moves,
        reads.load(Ordering::SeqCst) - reads_at_kill
    );
    net.gw.shutdown();
}

/// Waits until `counter` reaches `n` (polled: the readers run on their own).
async fn wait_count(counter: &AtomicUsize, n: usize, what: &str) {
    let deadline = tokio::time::Instant::now() + electrumx::SYNC_WAIT;
    while counter.load(Ordering::SeqCst) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
