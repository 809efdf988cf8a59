//! The simulated Electrum server over real loopback sockets.

use bitcoin::block::Header;
use bitcoin::hashes::{sha256, sha256d, Hash};
use bitcoin::hex::{DisplayHex, FromHex};
use bitcoin::Transaction;
use electrum_gateway::sim::{Faults, Sim, SimConfig, ADDRESSES};
use electrum_gateway::transport::{frame_lines, frame_ws, Framed, ServerUrl};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

/// Long enough for any answer on a loaded machine; only reached when something is broken.
const WAIT: Duration = Duration::from_secs(20);

/// A minimal Electrum client over any framed transport.
struct Conn {
    framed: Framed,
    next_id: i64,
    notes: VecDeque<Value>,
    answers: VecDeque<Value>,
}

impl Conn {
    fn new(framed: Framed) -> Conn {
        Conn {
            framed,
            next_id: 0,
            notes: VecDeque::new(),
            answers: VecDeque::new(),
        }
    }

    async fn tcp(url: &ServerUrl) -> Conn {
        let s = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .unwrap();
        Conn::new(frame_lines(s, 10_000_000))
    }

    async fn send_raw(&mut self, line: &str) {
        self.framed.sink.send(line.to_string()).await.unwrap();
    }

    /// The next message, or `None` when the server closed the connection.
    async fn recv_within(&mut self, limit: Duration) -> Result<Option<Value>, ()> {
        match timeout(limit, self.framed.stream.next()).await {
            Err(_) => Err(()),
            Ok(None) | Ok(Some(Err(_))) => Ok(None),
            Ok(Some(Ok(line))) => Ok(Some(serde_json::from_str(&line).unwrap())),
        }
    }

    async fn recv(&mut self) -> Option<Value> {
        self.recv_within(WAIT).await.expect("no message in time")
    }

    /// Sends a request and returns the whole response object; notifications met on the way
    /// are kept for [`Conn::notification`].
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send_raw(&line.to_string()).await;
        self.response(id).await
    }

    async fn response(&mut self, id: i64) -> Value {
        if let Some(i) = self.answers.iter().position(|a| a["id"] == id) {
            return self.answers.remove(i).unwrap();
        }
        loop {
            let msg = self.recv().await.expect("connection closed while waiting");
            if msg.get("method").is_some() {
                self.notes.push_back(msg);
            } else if msg["id"] == id {
                return msg;
            } else {
                self.answers.push_back(msg);
            }
        }
    }

    async fn result(&mut self, method: &str, params: Value) -> Value {
        let r = self.call(method, params).await;
        assert!(r.get("error").is_none(), "{method} failed: {r}");
        r["result"].clone()
    }

    async fn error_code(&mut self, method: &str, params: Value) -> i64 {
        let r = self.call(method, params).await;
        r["error"]["code"]
            .as_i64()
            .unwrap_or_else(|| panic!("{method} should fail: {r}"))
    }

    async fn notification(&mut self) -> Value {
        if let Some(n) = self.notes.pop_front() {
            return n;
        }
        loop {
            let msg = self.recv().await.expect("connection closed while waiting");
            if msg.get("method").is_some() {
                return msg;
            }
            self.answers.push_back(msg);
        }
    }

    /// True when the server closes the connection (within [`WAIT`]).
    async fn closed(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match self.recv_within(WAIT).await {
                Ok(None) => return true,
                Ok(Some(_)) => continue,
                Err(()) => return false,
            }
        }
        false
    }
}

async fn sim(endpoints: &[&str]) -> Sim {
    Sim::start(SimConfig::with_endpoints(endpoints).unwrap())
        .await
        .unwrap()
}

fn header(hex: &str) -> Header {
    bitcoin::consensus::deserialize(&Vec::<u8>::from_hex(hex).unwrap()).unwrap()
}

fn status_of(history: &Value) -> Option<String> {
    let h = history.as_array().unwrap();
    if h.is_empty() {
        return None;
    }
    let mut s = String::new();
    for e in h {
        s.push_str(&format!(
            "{}:{}:",
            e["tx_hash"].as_str().unwrap(),
            e["height"].as_i64().unwrap()
        ));
    }
    Some(
        sha256::Hash::hash(s.as_bytes())
            .to_byte_array()
            .to_lower_hex_string(),
    )
}

fn unhex32(s: &str) -> [u8; 32] {
    let mut b = <[u8; 32]>::from_hex(s).unwrap();
    b.reverse();
    b
}

/// Folds an Electrum merkle branch (display-order hex) from a leaf to a root (display hex).
fn fold(leaf_hex: &str, branch: &Value, mut pos: u64) -> String {
    let mut h = unhex32(leaf_hex);
    for node in branch.as_array().unwrap() {
        let sib = unhex32(node.as_str().unwrap());
        let mut buf = [0u8; 64];
        if pos % 2 == 1 {
            buf[..32].copy_from_slice(&sib);
            buf[32..].copy_from_slice(&h);
        } else {
            buf[..32].copy_from_slice(&h);
            buf[32..].copy_from_slice(&sib);
        }
        h = sha256d::Hash::hash(&buf).to_byte_array();
        pos /= 2;
    }
    h.reverse();
    h.to_lower_hex_string()
}

fn pow_ok(h: &Header) -> bool {
    h.validate_pow(h.target()).is_ok()
}

#[tokio::test]
async fn version_negotiation_and_refusals() {
    let s = sim(&[
        "127.0.0.1:0",
        "127.0.0.1:0,version=1.4,software=electrs/0.11",
    ])
    .await;
    let mut c = Conn::tcp(&s.url(0)).await;
    // Lenient: requests before server.version are answered.
    assert_eq!(c.result("server.ping", json!([])).await, Value::Null);
    let v = c
        .result("server.version", json!(["test", ["1.4", "1.6"]]))
        .await;
    assert_eq!(v[1], "1.6");
    assert_eq!(
        c.error_code("server.version", json!(["test", "1.4"])).await,
        1
    );

    let mut old = Conn::tcp(&s.url(0)).await;
    assert_eq!(
        old.error_code("server.version", json!(["old", "1.2"]))
            .await,
        1
    );
    assert!(old.closed().await, "refused version ends the connection");

    let mut e = Conn::tcp(&s.url(1)).await;
    let v = e
        .result("server.version", json!(["w", ["1.4", "1.6"]]))
        .await;
    assert_eq!(v, json!(["electrs/0.11", "1.4"]));
    let sh = ADDRESSES[0].scripthash;
    assert_eq!(
        e.error_code("blockchain.scripthash.get_mempool", json!([sh]))
            .await,
        -32601
    );
    assert_eq!(e.error_code("mempool.get_info", json!([])).await, -32601);
    let f = e.result("server.features", json!([])).await;
    assert_eq!(f["protocol_max"], "1.4");
    assert_eq!(f["server_version"], "electrs/0.11");
}

#[tokio::test]
async fn features_and_local_methods() {
    let s = Sim::start(SimConfig {
        peers: vec!["peer.example:50002:s".into(), "10.0.0.1:50001".into()],
        ..SimConfig::with_endpoints(&["127.0.0.1:0"]).unwrap()
    })
    .await
    .unwrap();
    let mut c = Conn::tcp(&s.url(0)).await;
    c.result("server.version", json!(["t", "1.6"])).await;
    let f = c.result("server.features", json!([])).await;
    assert_eq!(
        f["genesis_hash"],
        "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
    );
    assert_eq!(f["hash_function"], "sha256");
    assert_eq!(f["protocol_min"], "1.4");
    assert_eq!(f["protocol_max"], "1.6");
    assert!(f["pruning"].is_null());
    assert_eq!(f["hosts"]["127.0.0.1"]["tcp_port"], s.url(0).port);
    let peers = c.result("server.peers.subscribe", json!([])).await;
    assert_eq!(
        peers,
        json!([
            ["peer.example", "peer.example", ["v1.6", "p10000", "s50002"]],
            ["10.0.0.1", "10.0.0.1", ["v1.6", "p10000", "t50001"]]
        ])
    );
    assert!(c.result("server.banner", json!([])).await.is_string());
    assert!(c
        .result("server.donation_address", json!([]))
        .await
        .is_string());
    // 1.6: relayfee is gone, mempool.get_info and estimatefee's mode are there.
    assert_eq!(c.error_code("blockchain.relayfee", json!([])).await, -32601);
    assert!(c.result("mempool.get_info", json!([])).await["minrelaytxfee"].is_number());
    let fee = c
        .result("blockchain.estimatefee", json!([2, "ECONOMICAL"]))
        .await;
    assert!(fee.as_f64().unwrap() > 0.0);
    let hist = c.result("mempool.get_fee_histogram", json!([])).await;
    let rates: Vec<f64> = hist
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[0].as_f64().unwrap())
        .collect();
    assert!(!rates.is_empty());
    assert!(
        rates.windows(2).all(|w| w[0] > w[1]),
        "strictly decreasing: {rates:?}"
    );
    // 1.4: relayfee is there and estimatefee takes no mode.
    let mut old = Conn::tcp(&s.url(0)).await;
    old.result("server.version", json!(["t", "1.4"])).await;
    assert!(old
        .result("blockchain.relayfee", json!([]))
        .await
        .is_number());
    assert_eq!(
        old.error_code("blockchain.estimatefee", json!([2, "ECONOMICAL"]))
            .await,
        -32602
    );
}

#[tokio::test]
async fn errors_batches_and_oversized_lines() {
    let s = sim(&["127.0.0.1:0"]).await;
    let mut c = Conn::tcp(&s.url(0)).await;
    c.send_raw("{this is not json").await;
    let r = c.recv().await.unwrap();
    assert_eq!(r["error"]["code"], -32700);
    assert!(r["id"].is_null());
    assert_eq!(c.error_code("no.such.method", json!([])).await, -32601);
    assert_eq!(
        c.error_code("blockchain.block.header", json!([])).await,
        -32602
    );
    assert_eq!(
        c.error_code("blockchain.block.header", json!(["x"])).await,
        1
    );
    assert_eq!(
        c.error_code("blockchain.block.header", json!([100_000]))
            .await,
        1
    );
    assert_eq!(
        c.error_code("blockchain.scripthash.get_balance", json!(["zz"]))
            .await,
        1
    );
    assert_eq!(
        c.error_code("blockchain.transaction.get", json!(["00".repeat(32)]))
            .await,
        2
    );
    // Named params work too.
    let r = c
        .call("blockchain.block.header", json!({"height": 1}))
        .await;
    assert_eq!(r["result"].as_str().unwrap().len(), 160);

    c.send_raw(
        r#"[{"jsonrpc":"2.0","id":"a","method":"server.ping"},{"id":7,"method":"blockchain.block.header","params":[0]},{"jsonrpc":"2.0","id":8,"method":"nope"},{"jsonrpc":"2.0","method":"server.ping"}]"#,
    )
    .await;
    let batch = c.recv().await.unwrap();
    let items = batch.as_array().expect("a batch answer");
    assert_eq!(
        items.len(),
        3,
        "the id-less request gets no answer: {batch}"
    );
    let by_id = |id: Value| items.iter().find(|i| i["id"] == id).unwrap().clone();
    assert!(by_id(json!("a"))["result"].is_null());
    assert_eq!(
        header(by_id(json!(7))["result"].as_str().unwrap()).block_hash(),
        s.block_hash(0).unwrap()
    );
    assert_eq!(by_id(json!(8))["error"]["code"], -32601);

    let before = s.requests(0);
    assert!(before >= 11, "requests counted: {before}");
    let huge = format!(
        r#"{{"id":1,"method":"server.ping","params":["{}"]}}"#,
        "x".repeat(electrum_gateway::sim::MAX_REQUEST_SIZE)
    );
    // The server may close while we are still writing; either way the connection ends.
    let _ = c.framed.sink.send(huge).await;
    assert!(c.closed().await);
}

#[tokio::test]
async fn headers_and_proofs() {
    let s = sim(&["127.0.0.1:0"]).await;
    let mut c = Conn::tcp(&s.url(0)).await;
    c.result("server.version", json!(["t", ["1.4", "1.6"]]))
        .await;
    let tip = c.result("blockchain.headers.subscribe", json!([])).await;
    assert_eq!(tip.as_object().unwrap().len(), 2);
    assert_eq!(tip["height"], 300);
    assert_eq!(tip["hex"], s.tip_header_hex());

    // cp_height proof of a header against the header-chain root.
    let r = c.result("blockchain.block.header", json!([77, 200])).await;
    let h = header(r["header"].as_str().unwrap());
    assert_eq!(
        fold(&h.block_hash().to_string(), &r["branch"], 77),
        r["root"].as_str().unwrap()
    );
    let r2 = c.result("blockchain.block.header", json!([12, 200])).await;
    assert_eq!(r2["root"], r["root"]);
    assert_eq!(
        c.error_code("blockchain.block.header", json!([201, 200]))
            .await,
        1
    );

    // 1.6 returns a list; headers link and carry valid proof of work.
    let r = c
        .result("blockchain.block.headers", json!([250, 100, 300]))
        .await;
    assert_eq!(r["count"], 51);
    assert_eq!(r["max"], 2016);
    let hs: Vec<Header> = r["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| header(v.as_str().unwrap()))
        .collect();
    assert_eq!(hs.len(), 51);
    for w in hs.windows(2) {
        assert_eq!(w[1].prev_blockhash, w[0].block_hash());
        assert!(pow_ok(&w[1]));
    }
    let last = hs.last().unwrap();
    assert_eq!(
        fold(&last.block_hash().to_string(), &r["branch"], 300),
        r["root"].as_str().unwrap()
    );

    // 1.4 concatenates hex.
    let mut old = Conn::tcp(&s.url(0)).await;
    old.result("server.version", json!(["t", "1.4"])).await;
    let r = old
        .result("blockchain.block.headers", json!([0, 3000]))
        .await;
    assert_eq!(r["count"], 301);
    assert_eq!(r["hex"].as_str().unwrap().len(), 301 * 160);
    let r = old
        .result("blockchain.block.headers", json!([400, 10]))
        .await;
    assert_eq!(r["count"], 0);
}

#[tokio::test]
async fn transactions_and_merkle_proofs() {
    let s = sim(&["127.0.0.1:0"]).await;
    let mut c = Conn::tcp(&s.url(0)).await;
    let sh = ADDRESSES[2].scripthash;
    let history = c
        .result("blockchain.scripthash.get_history", json!([sh]))
        .await;
    let entry = history
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["height"].as_i64().unwrap() > 0)
        .unwrap()
        .clone();
    let txid = entry["tx_hash"].as_str().unwrap();
    let height = entry["height"].as_u64().unwrap();
    let raw = c.result("blockchain.transaction.get", json!([txid])).await;
    let tx: Transaction =
        bitcoin::consensus::deserialize(&Vec::<u8>::from_hex(raw.as_str().unwrap()).unwrap())
            .unwrap();
    assert_eq!(tx.compute_txid().to_string(), txid);
    let verbose = c
        .result("blockchain.transaction.get", json!([txid, true]))
        .await;
    assert_eq!(verbose["txid"], txid);
    assert_eq!(verbose["hex"], raw);
    assert_eq!(
        verbose["blockhash"],
        s.block_hash(height as u32).unwrap().to_string()
    );
    assert_eq!(verbose["confirmations"], 300 - height + 1);

    let m = c
        .result("blockchain.transaction.get_merkle", json!([txid, height]))
        .await;
    assert_eq!(m["block_height"], height);
    let hdr = header(&s.header_hex(height as u32).unwrap());
    assert_eq!(
        fold(txid, &m["merkle"], m["pos"].as_u64().unwrap()),
        hdr.merkle_root.to_string()
    );
    assert_eq!(
        c.error_code(
            "blockchain.transaction.get_merkle",
            json!([txid, height - 1])
        )
        .await,
        1
    );
    let pos = m["pos"].clone();
    assert_eq!(
        c.result("blockchain.transaction.id_from_pos", json!([height, pos]))
            .await,
        txid
    );
    let r = c
        .result(
            "blockchain.transaction.id_from_pos",
            json!([height, pos, true]),
        )
        .await;
    assert_eq!(r["tx_hash"], txid);
    assert_eq!(r["merkle"], m["merkle"]);
    assert_eq!(
        c.error_code("blockchain.transaction.id_from_pos", json!([height, 999]))
            .await,
        1
    );

    // Balance, unspent and history agree, and mempool entries carry fees.
    let mut any_mempool = false;
    for a in ADDRESSES {
        let bal = c
            .result("blockchain.scripthash.get_balance", json!([a.scripthash]))
            .await;
        let utxos = c
            .result("blockchain.scripthash.listunspent", json!([a.scripthash]))
            .await;
        let total: i64 = utxos
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["value"].as_i64().unwrap())
            .sum();
        assert_eq!(
            bal["confirmed"].as_i64().unwrap() + bal["unconfirmed"].as_i64().unwrap(),
            total
        );
        let h = c
            .result("blockchain.scripthash.get_history", json!([a.scripthash]))
            .await;
        let mem = c
            .result("blockchain.scripthash.get_mempool", json!([a.scripthash]))
            .await;
        let mem_part: Vec<&Value> = h
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["height"].as_i64().unwrap() <= 0)
            .collect();
        assert_eq!(mem.as_array().unwrap().iter().collect::<Vec<_>>(), mem_part);
        for e in &mem_part {
            assert!(e["fee"].as_u64().unwrap() > 0);
            any_mempool = true;
        }
        assert_eq!(status_of(&h), s.status(a.scripthash).unwrap());
    }
    assert!(any_mempool);
}

#[tokio::test]
async fn mining_notifies_headers_and_statuses() {
    let s = sim(&["127.0.0.1:0"]).await;
    let mut c = Conn::tcp(&s.url(0)).await;
    c.result("server.version", json!(["t", "1.6"])).await;
    let tip = c.result("blockchain.headers.subscribe", json!([])).await;
    let old_tip = header(tip["hex"].as_str().unwrap());
    // A watcher subscribed to nothing must get no notification.
    let mut quiet = Conn::tcp(&s.url(0)).await;
    quiet.result("server.ping", json!([])).await;

    let new_height = c.result("sim.mine", json!([])).await;
    assert_eq!(new_height, 301);
    let n = c.notification().await;
    assert_eq!(n["method"], "blockchain.headers.subscribe");
    assert!(n.get("id").is_none());
    let p = &n["params"][0];
    assert_eq!(p.as_object().unwrap().len(), 2);
    assert_eq!(p["height"], 301);
    let h = header(p["hex"].as_str().unwrap());
    assert!(pow_ok(&h));
    assert_eq!(h.prev_blockhash, old_tip.block_hash());

    // Subscribe to an address, pay it, get its new status.
    let sh = ADDRESSES[4].scripthash;
    let st = c
        .result("blockchain.scripthash.subscribe", json!([sh]))
        .await;
    assert_eq!(st.as_str().map(String::from), s.status(sh).unwrap());
    assert_eq!(s.subscriptions(0), 1);
    let txid = c
        .result("sim.pay", json!([ADDRESSES[4].address, 50_000]))
        .await;
    let n = c.notification().await;
    assert_eq!(n["method"], "blockchain.scripthash.subscribe");
    assert_eq!(n["params"][0], sh);
    let history = c
        .result("blockchain.scripthash.get_history", json!([sh]))
        .await;
    assert_eq!(
        n["params"][1].as_str().map(String::from),
        status_of(&history)
    );
    assert!(history
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["tx_hash"] == txid && e["height"] == 0));
    // Mining confirms it: one header and one status notification.
    c.result("sim.mine", json!([2])).await;
    let mut got_header = false;
    let mut got_status = false;
    for _ in 0..2 {
        let n = c.notification().await;
        match n["method"].as_str().unwrap() {
            "blockchain.headers.subscribe" => {
                assert_eq!(n["params"][0]["height"], 303);
                got_header = true;
            }
            "blockchain.scripthash.subscribe" => got_status = true,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(got_header && got_status);
    let history = c
        .result("blockchain.scripthash.get_history", json!([sh]))
        .await;
    assert!(history
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["tx_hash"] == txid && e["height"] == 302));
    assert!(c
        .result("blockchain.scripthash.unsubscribe", json!([sh]))
        .await
        .as_bool()
        .unwrap());
    assert!(!c
        .result("blockchain.scripthash.unsubscribe", json!([sh]))
        .await
        .as_bool()
        .unwrap());
    assert_eq!(s.subscriptions(0), 0);
    // The silent connection got nothing: its next message is the answer to its own request.
    let r = quiet.call("server.ping", json!([])).await;
    assert!(r["result"].is_null());
    assert!(quiet.notes.is_empty());
    assert_eq!(s.connections(0), 2);
}

#[tokio::test]
async fn reorg_and_broadcast_over_the_wire() {
    let s = sim(&["127.0.0.1:0"]).await;
    let mut c = Conn::tcp(&s.url(0)).await;
    c.result("sim.mine", json!([1])).await;
    let confirmed = s.block_txids(301).unwrap();
    let txid = confirmed[1].to_string();
    let verbose = c
        .result("blockchain.transaction.get", json!([txid, true]))
        .await;
    let spk = verbose["vout"][0]["scriptPubKey"]["hex"]
        .as_str()
        .unwrap()
        .to_string();
    let script = bitcoin::ScriptBuf::from_hex(&spk).unwrap();
    let mut shb = sha256::Hash::hash(script.as_bytes()).to_byte_array();
    shb.reverse();
    let sh = shb.to_lower_hex_string();
    c.result("blockchain.headers.subscribe", json!([])).await;
    c.result("blockchain.scripthash.subscribe", json!([sh]))
        .await;
    let old_301 = s.block_hash(301).unwrap();
    let tip = c.result("sim.reorg", json!([1])).await;
    assert_eq!(tip, 302);
    assert_ne!(s.block_hash(301).unwrap(), old_301);
    let mut methods = Vec::new();
    for _ in 0..2 {
        methods.push(
            c.notification().await["method"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    methods.sort();
    assert_eq!(
        methods,
        [
            "blockchain.headers.subscribe",
            "blockchain.scripthash.subscribe"
        ]
    );
    let history = c
        .result("blockchain.scripthash.get_history", json!([sh]))
        .await;
    let e = history
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["tx_hash"] == txid.as_str())
        .unwrap();
    assert!(
        e["height"].as_i64().unwrap() <= 0,
        "back in the mempool: {e}"
    );

    // Broadcast a transaction spending one of the documented addresses' outputs.
    let utxo = c
        .result(
            "blockchain.scripthash.listunspent",
            json!([ADDRESSES[0].scripthash]),
        )
        .await[0]
        .clone();
    let value = utxo["value"].as_u64().unwrap();
    let tx = Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![bitcoin::TxIn {
            previous_output: bitcoin::OutPoint::new(
                utxo["tx_hash"].as_str().unwrap().parse().unwrap(),
                utxo["tx_pos"].as_u64().unwrap() as u32,
            ),
            ..Default::default()
        }],
        output: vec![bitcoin::TxOut {
            value: bitcoin::Amount::from_sat(value - 1_000),
            script_pubkey: script.clone(),
        }],
    };
    let raw = bitcoin::consensus::encode::serialize_hex(&tx);
    let got = c
        .result("blockchain.transaction.broadcast", json!([raw]))
        .await;
    assert_eq!(got, tx.compute_txid().to_string());
    assert!(s.mempool_txids().contains(&tx.compute_txid()));
    // Double spend, garbage and missing inputs are refused with code 1.
    let mut double = tx.clone();
    double.output[0].value = bitcoin::Amount::from_sat(value - 2_000);
    let raw2 = bitcoin::consensus::encode::serialize_hex(&double);
    assert_eq!(
        c.error_code("blockchain.transaction.broadcast", json!([raw2]))
            .await,
        1
    );
    assert_eq!(
        c.error_code("blockchain.transaction.broadcast", json!(["zz"]))
            .await,
        1
    );
    assert_eq!(
        c.error_code("blockchain.transaction.broadcast", json!(["0200"]))
            .await,
        1
    );
    // A package: a child spending the broadcast transaction.
    let child = Transaction {
        input: vec![bitcoin::TxIn {
            previous_output: bitcoin::OutPoint::new(tx.compute_txid(), 0),
            ..Default::default()
        }],
        output: vec![bitcoin::TxOut {
            value: bitcoin::Amount::from_sat(value - 5_000),
            script_pubkey: script,
        }],
        ..tx.clone()
    };
    let r = c
        .result(
            "blockchain.transaction.broadcast_package",
            json!([[
                raw.clone(),
                bitcoin::consensus::encode::serialize_hex(&child)
            ]]),
        )
        .await;
    assert_eq!(r["success"], true);
    assert!(s.mempool_txids().contains(&child.compute_txid()));
    let r = c
        .result("blockchain.transaction.broadcast_package", json!([[raw2]]))
        .await;
    assert_eq!(r["success"], false);
}

#[tokio::test]
async fn latency_delays_but_keeps_every_answer() {
    let s = sim(&["127.0.0.1:0,latency=300"]).await;
    let mut c = Conn::tcp(&s.url(0)).await;
    let start = Instant::now();
    for i in 0..5 {
        c.send_raw(
            &json!({"id": i, "method": "blockchain.block.header", "params": [i]}).to_string(),
        )
        .await;
    }
    for i in 0..5 {
        let r = c.recv().await.unwrap();
        assert_eq!(r["id"], i);
        assert_eq!(
            header(r["result"].as_str().unwrap()).block_hash(),
            s.block_hash(i as u32).unwrap()
        );
    }
    assert!(start.elapsed() >= Duration::from_millis(300));
    // Removing the fault at runtime takes effect for the next request.
    s.set_faults(0, Faults::default());
    assert!(c.result("server.ping", json!([])).await.is_null());
}

#[tokio::test]
async fn drop_after_and_stall() {
    let s = sim(&["127.0.0.1:0,drop-after=2", "127.0.0.1:0,stall"]).await;
    let mut c = Conn::tcp(&s.url(0)).await;
    c.result("server.ping", json!([])).await;
    c.result("server.ping", json!([])).await;
    assert!(c.closed().await);

    let mut st = Conn::tcp(&s.url(1)).await;
    st.send_raw(r#"{"id":1,"method":"server.ping"}"#).await;
    assert!(
        st.recv_within(Duration::from_millis(500)).await.is_err(),
        "stalled endpoint answered"
    );
    assert_eq!(s.connections(1), 1, "the stalled connection stays open");
    s.set_faults(1, Faults::default());
    st.send_raw(r#"{"id":2,"method":"server.ping"}"#).await;
    let r = st.recv().await.unwrap();
    assert_eq!(
        r["id"], 2,
        "the stalled request stays unanswered, the next one is answered"
    );
}

#[tokio::test]
async fn lag_and_fork_serve_consistent_other_chains() {
    let s = sim(&["127.0.0.1:0", "127.0.0.1:0,lag=3", "127.0.0.1:0,fork=2"]).await;
    let mut lag = Conn::tcp(&s.url(1)).await;
    let tip = lag.result("blockchain.headers.subscribe", json!([])).await;
    assert_eq!(tip["height"], 297);
    assert_eq!(tip["hex"], s.header_hex(297).unwrap());
    assert_eq!(
        lag.error_code("blockchain.block.header", json!([298]))
            .await,
        1
    );
    // History and balances are as of its tip: the lagging status differs for an address
    // paid in the last blocks, and matches its own history.
    for a in ADDRESSES {
        let h = lag
            .result("blockchain.scripthash.get_history", json!([a.scripthash]))
            .await;
        assert!(h
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["height"].as_i64().unwrap() <= 297));
        let st = lag
            .result("blockchain.scripthash.subscribe", json!([a.scripthash]))
            .await;
        assert_eq!(st.as_str().map(String::from), status_of(&h));
    }
    s.mine(1);
    let n = lag.notification().await;
    // Mining moves every address's history or the tip; the header notification is there.
    let mut seen_header =
        n["method"] == "blockchain.headers.subscribe" && n["params"][0]["height"] == 298;
    while !seen_header {
        let n = lag.notification().await;
        seen_header =
            n["method"] == "blockchain.headers.subscribe" && n["params"][0]["height"] == 298;
    }
    // Lifting the fault catches it up, with a notification.
    s.set_faults(1, Faults::default());
    loop {
        let n = lag.notification().await;
        if n["method"] == "blockchain.headers.subscribe" {
            assert_eq!(n["params"][0]["height"], 301);
            break;
        }
    }

    let mut fork = Conn::tcp(&s.url(2)).await;
    let tip = fork.result("blockchain.headers.subscribe", json!([])).await;
    assert_eq!(tip["height"], 301);
    let fork_tip = header(tip["hex"].as_str().unwrap());
    assert_ne!(fork_tip.block_hash(), s.block_hash(301).unwrap());
    assert!(pow_ok(&fork_tip));
    let r = fork
        .result("blockchain.block.headers", json!([298, 4]))
        .await;
    let hex = r["hex"].as_str().unwrap();
    let hs: Vec<Header> = (0..4)
        .map(|i| header(&hex[i * 160..(i + 1) * 160]))
        .collect();
    assert_eq!(
        hs[1].block_hash(),
        s.block_hash(299).unwrap(),
        "shared below the fork"
    );
    assert_ne!(hs[2].block_hash(), s.block_hash(300).unwrap());
    assert_eq!(hs[2].prev_blockhash, hs[1].block_hash());
    assert_eq!(hs[3].prev_blockhash, hs[2].block_hash());
    assert!(hs.iter().all(pow_ok));
    // Deterministic: a second connection sees the same branch.
    let mut fork2 = Conn::tcp(&s.url(2)).await;
    assert_eq!(
        fork2
            .result("blockchain.headers.subscribe", json!([]))
            .await,
        tip
    );
}

#[tokio::test]
async fn lying_and_corrupting_faults() {
    let s = sim(&[
        "127.0.0.1:0",
        "127.0.0.1:0,lie-balance,lie-history",
        "127.0.0.1:0,bad-merkle,bad-header,wrong-tx",
    ])
    .await;
    let mut honest = Conn::tcp(&s.url(0)).await;
    let mut liar = Conn::tcp(&s.url(1)).await;
    let mut bad = Conn::tcp(&s.url(2)).await;
    let sh = ADDRESSES[1].scripthash;

    let b1 = honest
        .result("blockchain.scripthash.get_balance", json!([sh]))
        .await;
    let b2 = liar
        .result("blockchain.scripthash.get_balance", json!([sh]))
        .await;
    assert_ne!(b1, b2);
    let h1 = honest
        .result("blockchain.scripthash.get_history", json!([sh]))
        .await;
    let h2 = liar
        .result("blockchain.scripthash.get_history", json!([sh]))
        .await;
    assert_eq!(
        h2.as_array().unwrap().len() + 1,
        h1.as_array().unwrap().len()
    );
    let newest_confirmed = h1
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["height"].as_i64().unwrap() > 0)
        .unwrap();
    assert!(!h2.as_array().unwrap().contains(newest_confirmed));
    // A consistent liar: its status matches its history, not the truth.
    let st = liar
        .result("blockchain.scripthash.subscribe", json!([sh]))
        .await;
    assert_eq!(st.as_str().map(String::from), status_of(&h2));
    assert_ne!(st.as_str().map(String::from), status_of(&h1));
    assert_eq!(s.served_status(1, sh).unwrap(), status_of(&h2));

    // bad-merkle: the branch does not fold to the header's merkle root.
    let txid = newest_confirmed["tx_hash"].as_str().unwrap();
    let height = newest_confirmed["height"].as_u64().unwrap();
    let root = header(&s.header_hex(height as u32).unwrap())
        .merkle_root
        .to_string();
    let good = honest
        .result("blockchain.transaction.get_merkle", json!([txid, height]))
        .await;
    let m = bad
        .result("blockchain.transaction.get_merkle", json!([txid, height]))
        .await;
    assert_eq!(
        fold(txid, &good["merkle"], good["pos"].as_u64().unwrap()),
        root
    );
    assert_ne!(fold(txid, &m["merkle"], m["pos"].as_u64().unwrap()), root);
    // Even for a coinbase-only block (empty honest branch).
    let cb = s.block_txids(1).unwrap();
    if cb.len() == 1 {
        let m = bad
            .result(
                "blockchain.transaction.get_merkle",
                json!([cb[0].to_string(), 1]),
            )
            .await;
        assert_ne!(
            fold(&cb[0].to_string(), &m["merkle"], 0),
            header(&s.header_hex(1).unwrap()).merkle_root.to_string()
        );
    }

    // bad-header: every header served fails linkage and proof of work.
    let h = header(
        bad.result("blockchain.block.header", json!([100]))
            .await
            .as_str()
            .unwrap(),
    );
    assert_ne!(h.prev_blockhash, s.block_hash(99).unwrap());
    assert!(!pow_ok(&h));
    let t = bad.result("blockchain.headers.subscribe", json!([])).await;
    assert!(!pow_ok(&header(t["hex"].as_str().unwrap())));
    let r = bad.result("blockchain.block.headers", json!([10, 2])).await;
    assert!(!pow_ok(&header(&r["hex"].as_str().unwrap()[..160])));

    // wrong-tx: a valid transaction, but not the one asked for.
    let raw = bad
        .result("blockchain.transaction.get", json!([txid]))
        .await;
    let tx: Transaction =
        bitcoin::consensus::deserialize(&Vec::<u8>::from_hex(raw.as_str().unwrap()).unwrap())
            .unwrap();
    assert_ne!(tx.compute_txid().to_string(), txid);

    // Faults stop at runtime.
    s.set_faults(2, Faults::default());
    let h = header(
        bad.result("blockchain.block.header", json!([100]))
            .await
            .as_str()
            .unwrap(),
    );
    assert!(pow_ok(&h));
}

/// Connects and pings until a connection is answered (the endpoint may be down for a while).
async fn answered_connection(url: &ServerUrl) -> Conn {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "{url} never answered");
        if let Ok(s) = TcpStream::connect((url.host.as_str(), url.port)).await {
            let mut c = Conn::new(frame_lines(s, 1_000_000));
            let ping = r#"{"id":1,"method":"server.ping"}"#.to_string();
            if c.framed.sink.send(ping).await.is_ok() {
                if let Ok(Some(r)) = c.recv_within(WAIT).await {
                    assert_eq!(r["id"], 1);
                    return c;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn stop_start_and_flap() {
    let s = sim(&["127.0.0.1:0", "127.0.0.1:0,flap=1"]).await;
    let url = s.url(0);
    let mut c = Conn::tcp(&url).await;
    c.result("server.ping", json!([])).await;
    assert_eq!(s.connections(0), 1);
    s.stop_endpoint(0).await;
    assert!(c.closed().await);
    assert_eq!(s.connections(0), 0);
    assert!(TcpStream::connect((url.host.as_str(), url.port))
        .await
        .is_err());
    s.start_endpoint(0).await.unwrap();
    assert_eq!(s.url(0), url, "same address after restart");
    let mut c = Conn::tcp(&url).await;
    c.result("server.ping", json!([])).await;

    // flap: the endpoint goes down (connections dropped), then comes back.
    let f = s.url(1);
    let mut fc = answered_connection(&f).await;
    assert!(fc.closed().await, "flap drops connections");
    answered_connection(&f).await;
    // Turning flap off leaves it up.
    s.set_faults(1, Faults::default());
    let deadline = Instant::now() + WAIT;
    while !s.is_listening(1).await {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.shutdown().await;
    assert!(TcpStream::connect((url.host.as_str(), url.port))
        .await
        .is_err());
}

fn tls_client(cert_der: Vec<u8>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(cert_der))
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

#[tokio::test]
async fn ssl_ws_and_wss_endpoints() {
    let s = sim(&["ssl://127.0.0.1:0", "ws://127.0.0.1:0", "wss://localhost:0"]).await;
    let der = s.cert_der().expect("a certificate for TLS endpoints");
    let connector = tls_client(der);

    let u = s.url(0);
    let tcp = TcpStream::connect((u.host.as_str(), u.port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let mut c = Conn::new(frame_lines(tls, 10_000_000));
    let tip = c.result("blockchain.headers.subscribe", json!([])).await;
    assert_eq!(tip["height"], 300);
    s.mine(1);
    assert_eq!(c.notification().await["params"][0]["height"], 301);

    let u = s.url(1);
    let tcp = TcpStream::connect((u.host.as_str(), u.port)).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(u.to_string(), tcp)
        .await
        .unwrap();
    let mut w = Conn::new(frame_ws(ws, 10_000_000));
    let v = w.result("server.version", json!(["ws", "1.4"])).await;
    assert_eq!(v[1], "1.4");
    let r = w.result("blockchain.block.header", json!([301])).await;
    assert_eq!(r, s.header_hex(301).unwrap());

    let u = s.url(2);
    assert_eq!(u.host, "localhost");
    let tcp = TcpStream::connect(("localhost", u.port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(u.to_string(), tls)
        .await
        .unwrap();
    let mut w = Conn::new(frame_ws(ws, 10_000_000));
    assert!(w.result("server.ping", json!([])).await.is_null());
}

#[tokio::test]
async fn same_seed_same_chain_and_control_methods() {
    let a = sim(&["127.0.0.1:0"]).await;
    let b = sim(&["127.0.0.1:0"]).await;
    assert_eq!(a.tip_header_hex(), b.tip_header_hex());
    assert_eq!(a.mempool_txids(), b.mempool_txids());
    let c = Sim::start(SimConfig {
        seed: 2,
        blocks: 20,
        ..SimConfig::with_endpoints(&["127.0.0.1:0"]).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(c.tip_height(), 20);
    assert_ne!(c.block_hash(20), a.block_hash(20));

    let mut conn = Conn::tcp(&a.url(0)).await;
    // sim.pay by scripthash of a documented address, by any regtest address; bad targets fail.
    let t1 = conn
        .result("sim.pay", json!([ADDRESSES[5].scripthash, 10_000]))
        .await;
    assert!(a.mempool_txids().iter().any(|t| t.to_string() == t1));
    let other = electrum_gateway::sim::addresses::derive("p2wpkh", 9)
        .unwrap()
        .to_string();
    let t2 = conn.result("sim.pay", json!([other, 20_000])).await;
    assert!(a.tx_hex(&t2.as_str().unwrap().parse().unwrap()).is_some());
    assert_eq!(
        conn.error_code("sim.pay", json!(["ab".repeat(32), 1000]))
            .await,
        1
    );
    assert_eq!(
        conn.error_code(
            "sim.pay",
            json!(["bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq", 1000])
        )
        .await,
        1
    );
    assert_eq!(conn.error_code("sim.reorg", json!([100_000])).await, 1);
    assert_eq!(conn.result("sim.mine", json!([3])).await, 303);
    assert!(a.mempool_txids().is_empty());
    let (confirmed, unconfirmed) = a.balance(ADDRESSES[5].scripthash).unwrap();
    assert!(confirmed > 0);
    assert_eq!(unconfirmed, 0);
    assert!(a.requests(0) >= 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_electrum_client_works() {
    use electrum_client::ElectrumApi;
    let s = sim(&["127.0.0.1:0"]).await;
    let url = s.url(0).authority();
    let sim = s.clone();
    tokio::task::spawn_blocking(move || {
        let client = electrum_client::raw_client::RawClient::new(url.as_str(), Some(WAIT)).unwrap();
        let tip = client.block_headers_subscribe().unwrap();
        assert_eq!(tip.height, 300);
        let features = client.server_features().unwrap();
        // electrum-client keeps the hex's byte order.
        assert_eq!(
            features.genesis_hash.to_lower_hex_string(),
            sim.block_hash(0).unwrap().to_string()
        );
        let headers = client.block_headers(0, 10).unwrap();
        assert_eq!(headers.headers.len(), 10);
        let script = electrum_gateway::sim::addresses::parse_regtest_address(ADDRESSES[0].address)
            .unwrap()
            .script_pubkey();
        let history = client.script_get_history(&script).unwrap();
        assert!(!history.is_empty());
        let balance = client.script_get_balance(&script).unwrap();
        let unspent = client.script_list_unspent(&script).unwrap();
        let total: u64 = unspent.iter().map(|u| u.value).sum();
        assert_eq!(balance.confirmed as i64 + balance.unconfirmed, total as i64);
        let confirmed = history.iter().find(|h| h.height > 0).unwrap();
        let tx = client.transaction_get(&confirmed.tx_hash).unwrap();
        assert_eq!(tx.compute_txid(), confirmed.tx_hash);
        let merkle = client
            .transaction_get_merkle(&confirmed.tx_hash, confirmed.height as usize)
            .unwrap();
        assert_eq!(merkle.block_height, confirmed.height as usize);
        assert!(client.estimate_fee(2).unwrap() > 0.0);
        client.ping().unwrap();
        let status = client.script_subscribe(&script).unwrap();
        assert!(status.is_some());
        sim.pay(ADDRESSES[0].address, 30_000).unwrap();
        // Wait for the status notification.
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            client.ping().unwrap();
            if client.script_pop(&script).unwrap().is_some() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no status notification"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn liars_notify_their_lies_and_subscriptions_are_counted() {
    let s = sim(&["127.0.0.1:0,lie-history,bad-header"]).await;
    let mut a = Conn::tcp(&s.url(0)).await;
    let mut b = Conn::tcp(&s.url(0)).await;
    let sh = ADDRESSES[6].scripthash;
    a.result("blockchain.headers.subscribe", json!([])).await;
    a.result("blockchain.scripthash.subscribe", json!([sh]))
        .await;
    a.result("blockchain.scripthash.subscribe", json!([sh]))
        .await;
    a.result(
        "blockchain.scripthash.subscribe",
        json!([ADDRESSES[7].scripthash]),
    )
    .await;
    b.result("blockchain.scripthash.subscribe", json!([sh]))
        .await;
    assert_eq!(
        s.subscriptions(0),
        3,
        "two on the first connection, one on the second"
    );
    let mut expected = vec![ADDRESSES[6].scripthash, ADDRESSES[7].scripthash];
    expected.sort();
    assert_eq!(s.subscribed_scripthashes(0), expected);

    // Confirm a payment: the lying endpoint drops the newest confirmed entry (the new one),
    // and its notification carries the status of that lied history.
    s.pay(ADDRESSES[6].address, 40_000).unwrap();
    let n = b.notification().await;
    let lied = b
        .result("blockchain.scripthash.get_history", json!([sh]))
        .await;
    assert_eq!(n["params"][1].as_str().map(String::from), status_of(&lied));
    // The first connection got the same notification; take it before mining.
    loop {
        let n = a.notification().await;
        if n["params"][0] == sh {
            break;
        }
    }
    s.mine(1);
    let mut header_seen = false;
    let mut status_seen = false;
    while !(header_seen && status_seen) {
        let n = a.notification().await;
        match n["method"].as_str().unwrap() {
            "blockchain.headers.subscribe" => {
                let h = header(n["params"][0]["hex"].as_str().unwrap());
                assert!(!pow_ok(&h), "bad-header corrupts notifications too");
                header_seen = true;
            }
            _ if n["params"][0] == sh => {
                let lied = a
                    .result("blockchain.scripthash.get_history", json!([sh]))
                    .await;
                assert_eq!(n["params"][1].as_str().map(String::from), status_of(&lied));
                assert_ne!(
                    n["params"][1].as_str().map(String::from),
                    s.status(sh).unwrap()
                );
                status_seen = true;
            }
            _ => {}
        }
    }
    drop(a);
    let deadline = Instant::now() + WAIT;
    while s.connections(0) != 1 {
        assert!(Instant::now() < deadline, "closed connection still counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.subscriptions(0), 1);
}

#[tokio::test]
async fn certificate_loaded_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let id = electrum_gateway::listen::TlsIdentity::generate_localhost().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    id.save(&cert, &key).unwrap();
    let s = Sim::start(SimConfig {
        cert: Some((cert, key)),
        blocks: 10,
        ..SimConfig::with_endpoints(&["ssl://127.0.0.1:0"]).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(s.cert_der().unwrap(), id.cert_der());
    let u = s.url(0);
    let tcp = TcpStream::connect((u.host.as_str(), u.port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tls_client(id.cert_der().to_vec())
        .connect(name, tcp)
        .await
        .unwrap();
    let mut c = Conn::new(frame_lines(tls, 10_000_000));
    assert_eq!(
        c.result("blockchain.headers.subscribe", json!([])).await["height"],
        10
    );
}
