//! The gateway end to end: real TCP sockets, three simulated upstreams, wallets speaking the
//! line protocol.

mod common;

use common::{Net, Wallet, WAIT};
use electrum_gateway::config::Config;
use electrum_gateway::gateway::Gateway;
use electrum_gateway::sim::{Faults, Sim, SimConfig, ADDRESSES};
use serde_json::{json, Value};
use std::collections::HashSet;

const THREE: [&str; 3] = ["127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"];

#[tokio::test]
async fn local_methods_and_errors() {
    let net = Net::start(&THREE).await;
    let mut w = Wallet::connect(net.addr()).await;
    let v = w.call("server.version", json!(["w", ["1.4", "1.6"]])).await;
    assert!(v[0].as_str().unwrap().starts_with("electrum-gateway"));
    assert_eq!(v[1], "1.6");
    let e = w.call_err("server.version", json!(["w", "1.4"])).await;
    assert_eq!(e["code"], 1);
    let f = w.call("server.features", json!([])).await;
    let regtest_genesis = bitcoin::blockdata::constants::genesis_block(bitcoin::Network::Regtest)
        .block_hash()
        .to_string();
    assert_eq!(f["genesis_hash"], json!(regtest_genesis));
    assert_eq!(f["protocol_max"], "1.6");
    assert_eq!(w.call("server.ping", json!([])).await, Value::Null);
    assert_eq!(w.call("server.peers.subscribe", json!([])).await, json!([]));
    assert!(w.call("server.banner", json!([])).await.is_string());
    let e = w.call_err("no.such.method", json!([])).await;
    assert_eq!(e["code"], -32601);
    let e = w
        .call_err("blockchain.scripthash.get_balance", json!(["zz"]))
        .await;
    assert_eq!(e["code"], 1);
    let e = w
        .call_err(
            "blockchain.address.get_balance",
            json!(["1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"]),
        )
        .await;
    assert_eq!(e["code"], 1, "a mainnet address on regtest is refused: {e}");
    // Malformed JSON: -32700 with a null id, and the session goes on.
    w.send_line("{this is not json").await;
    let m = w.read_message().await.unwrap();
    assert_eq!(m["error"]["code"], -32700);
    assert_eq!(m["id"], Value::Null);
    w.send_line(r#"{"id":5,"method":7}"#).await;
    let m = w.read_message().await.unwrap();
    assert_eq!(m["error"]["code"], -32600);
    assert_eq!(m["id"], 5);
    assert_eq!(w.call("server.ping", json!([])).await, Value::Null);
    // Connectrum-style requests without "jsonrpc" work.
    w.send_line(r#"{"id":77,"method":"server.ping","params":[]}"#)
        .await;
    let m = w.read_message().await.unwrap();
    assert_eq!(m["id"], 77);
    assert_eq!(m["jsonrpc"], "2.0");
}

#[tokio::test]
async fn reads_match_the_upstreams() {
    let net = Net::start(&THREE).await;
    let mut w = net.wallet().await;
    let tip = w.call("blockchain.headers.subscribe", json!([])).await;
    assert_eq!(
        tip,
        json!({"hex": net.sim.tip_header_hex(), "height": net.sim.tip_height()})
    );
    assert_eq!(
        w.call("blockchain.block.header", json!([5])).await,
        json!(net.sim.header_hex(5).unwrap())
    );
    for a in ADDRESSES.iter() {
        let sh = a.scripthash;
        let (confirmed, unconfirmed) = net.sim.balance(sh).unwrap();
        let bal = w
            .call("blockchain.scripthash.get_balance", json!([sh]))
            .await;
        assert_eq!(
            bal,
            json!({"confirmed": confirmed, "unconfirmed": unconfirmed})
        );
        let bal2 = w
            .call("blockchain.address.get_balance", json!([a.address]))
            .await;
        assert_eq!(bal, bal2, "address conversion for {}", a.kind);
        assert_eq!(
            w.call("blockchain.scripthash.get_history", json!([sh]))
                .await,
            net.sim.history_json(sh).unwrap()
        );
        assert_eq!(
            w.call("blockchain.scripthash.listunspent", json!([sh]))
                .await,
            net.sim.listunspent_json(sh).unwrap()
        );
        let status = w.call("blockchain.scripthash.subscribe", json!([sh])).await;
        assert_eq!(status, json!(net.sim.status(sh).unwrap()));
    }
    let txid = net.sim.block_txids(10).unwrap()[0];
    assert_eq!(
        w.call("blockchain.transaction.get", json!([txid.to_string()]))
            .await,
        json!(net.sim.tx_hex(&txid).unwrap())
    );
    let merkle = w
        .call(
            "blockchain.transaction.get_merkle",
            json!([txid.to_string(), 10]),
        )
        .await;
    assert_eq!(merkle["block_height"], 10);
    assert_eq!(merkle["pos"], 0);
    let fee = w.call("blockchain.estimatefee", json!([2])).await;
    assert!(fee.is_number());
    let info = w.call("mempool.get_info", json!([])).await;
    assert!(info["minrelaytxfee"].is_number());
    // block.headers in the wallet's own protocol form.
    let h16 = w.call("blockchain.block.headers", json!([0, 3])).await;
    assert_eq!(h16["count"], 3);
    assert_eq!(h16["headers"][2], json!(net.sim.header_hex(2).unwrap()));
    let mut old = Wallet::connect(net.addr()).await;
    let v = old.call("server.version", json!(["old", "1.4"])).await;
    assert_eq!(v[1], "1.4");
    let h14 = old.call("blockchain.block.headers", json!([0, 3])).await;
    let concat: String = (0..3).map(|h| net.sim.header_hex(h).unwrap()).collect();
    assert_eq!(h14["hex"], json!(concat));
    // relayfee exists for 1.4 wallets only.
    assert!(old.call("blockchain.relayfee", json!([])).await.is_number());
    assert_eq!(
        w.call_err("blockchain.relayfee", json!([])).await["code"],
        -32601
    );
}

#[tokio::test]
async fn batches_are_answered_whole() {
    let net = Net::start(&THREE).await;
    let mut w = net.wallet().await;
    let sh = ADDRESSES[0].scripthash;
    w.send_line(&format!(
        r#"[{{"jsonrpc":"2.0","id":1,"method":"server.ping","params":[]}},
            {{"jsonrpc":"2.0","id":2,"method":"blockchain.scripthash.get_balance","params":["{sh}"]}},
            {{"jsonrpc":"2.0","id":3,"method":"nope","params":[]}},
            5]"#
    ).replace('\n', " "))
    .await;
    let m = w.read_message().await.unwrap();
    let items = m.as_array().expect("a batch answer");
    assert_eq!(items.len(), 4);
    let by_id = |id: i64| items.iter().find(|i| i["id"] == json!(id)).unwrap().clone();
    assert_eq!(by_id(1)["result"], Value::Null);
    assert!(by_id(2)["result"]["confirmed"].is_number());
    assert_eq!(by_id(3)["error"]["code"], -32601);
    assert!(items.iter().any(|i| i["error"]["code"] == -32600));
}

#[tokio::test]
async fn hundreds_of_wallets_share_upstream_subscriptions() {
    // Two hundred users, all on 127.0.0.1 here.
    let net = Net::start_with(&THREE, |c| c.limits.max_sessions_per_client = 1000).await;
    let n_wallets = 200;
    let addr = net.addr();
    let sim = net.sim.clone();
    let mut wallets: Vec<(usize, Wallet)> = futures::future::join_all((0..n_wallets).map(|i| {
        let sim = sim.clone();
        async move {
            let mut w = Wallet::connect(addr).await;
            w.call("server.version", json!(["w", ["1.4", "1.6"]])).await;
            // Every wallet watches three of the eight addresses.
            for k in 0..3 {
                let a = &ADDRESSES[(i + k) % ADDRESSES.len()];
                let s = w
                    .call("blockchain.scripthash.subscribe", json!([a.scripthash]))
                    .await;
                assert_eq!(s, json!(sim.status(a.scripthash).unwrap()));
            }
            w.call("blockchain.headers.subscribe", json!([])).await;
            (i, w)
        }
    }))
    .await;
    // Two upstream subscriptions per distinct scripthash (two upstreams watch each, so one
    // cannot hide a change), whatever the number of wallets.
    let subs = net.gw.snapshot().subscriptions;
    assert_eq!(subs.scripthashes, ADDRESSES.len());
    assert_eq!(subs.upstream, 2 * ADDRESSES.len());
    net.until("upstream subscriptions", || {
        net.upstream_subs(3) == 2 * ADDRESSES.len()
    })
    .await;

    // A payment and a block notify exactly the wallets watching what changed. (A mined block
    // pays its coinbase to one of the addresses too, so the changed set comes from the sim.)
    let before: Vec<Value> = ADDRESSES
        .iter()
        .map(|a| json!(net.sim.status(a.scripthash).unwrap()))
        .collect();
    net.sim.pay(ADDRESSES[0].address, 12_345).unwrap();
    let tip = net.sim.mine(1);
    let after: Vec<Value> = ADDRESSES
        .iter()
        .map(|a| json!(net.sim.status(a.scripthash).unwrap()))
        .collect();
    let changed: HashSet<usize> = (0..ADDRESSES.len())
        .filter(|k| before[*k] != after[*k])
        .collect();
    assert!(changed.contains(&0));
    for (i, w) in wallets.iter_mut() {
        let watched: Vec<usize> = (0..3).map(|k| (*i + k) % ADDRESSES.len()).collect();
        // The header notification for the new block comes to everyone.
        let h = w
            .notification_until("blockchain.headers.subscribe", |_| true)
            .await;
        assert_eq!(h["params"][0]["height"], tip);
        assert_eq!(
            h["params"][0].as_object().unwrap().len(),
            2,
            "exactly hex and height"
        );
        // Each watched address that changed ends at its final status.
        for k in watched.iter().filter(|k| changed.contains(k)) {
            let sh = json!(ADDRESSES[*k].scripthash);
            let fin = after[*k].clone();
            let n = w
                .notification_until("blockchain.scripthash.subscribe", |n| {
                    n["params"][0] == sh && n["params"][1] == fin
                })
                .await;
            assert_eq!(n["params"].as_array().unwrap().len(), 2);
        }
        // A ping round trip later, nothing else is queued: nothing for unwatched or unchanged
        // addresses, and no repeat of the final statuses.
        w.call("server.ping", json!([])).await;
        for n in w.notifications.drain(..) {
            if n["method"] != "blockchain.scripthash.subscribe" {
                panic!("wallet {i}: unexpected {n}");
            }
            let k = ADDRESSES
                .iter()
                .position(|a| json!(a.scripthash) == n["params"][0])
                .unwrap();
            assert!(
                watched.contains(&k),
                "wallet {i}: notified for an unwatched address: {n}"
            );
            assert!(
                changed.contains(&k),
                "wallet {i}: notified without a change: {n}"
            );
            assert_ne!(
                n["params"][1], after[k],
                "wallet {i}: final status notified twice"
            );
        }
    }
    // When every wallet leaves, the upstream subscriptions go too.
    drop(wallets);
    net.until("upstream subscriptions dropped", || {
        net.gw.snapshot().subscriptions.scripthashes == 0 && net.upstream_subs(3) == 0
    })
    .await;
}

#[tokio::test]
async fn every_wallet_gets_the_same_header_notification_of_the_new_tip() {
    let net = Net::start(&THREE).await;
    let addr = net.addr();
    let mut wallets: Vec<Wallet> = futures::future::join_all((0..40).map(|_| async move {
        let mut w = Wallet::connect(addr).await;
        w.call("server.version", json!(["w", "1.4"])).await;
        w.call("blockchain.headers.subscribe", json!([])).await;
        w
    }))
    .await;
    let mut previous = String::new();
    for _ in 0..2 {
        let height = net.sim.mine(1);
        let mut lines = Vec::new();
        for w in wallets.iter_mut() {
            lines.push(w.read_raw_line().await.expect("a header notification"));
        }
        // One line, byte for byte, for every wallet: the notification of the new tip.
        let line = &lines[0];
        assert!(lines.iter().all(|l| l == line), "lines differ: {lines:?}");
        assert!(
            line.ends_with("}\n") && line.matches('\n').count() == 1,
            "{line:?}"
        );
        assert_ne!(
            *line, previous,
            "the notification of the earlier tip was sent again"
        );
        let n: Value = serde_json::from_str(line).expect("JSON");
        assert_eq!(n["jsonrpc"], "2.0");
        assert_eq!(n["method"], "blockchain.headers.subscribe");
        assert!(n.get("id").is_none());
        assert_eq!(n["params"][0]["height"], height);
        // It carries the tip the gateway serves.
        let tip = wallets[0]
            .call("blockchain.headers.subscribe", json!([]))
            .await;
        assert_eq!(n["params"], json!([tip]));
        previous = line.clone();
    }
}

#[tokio::test]
async fn killed_upstream_costs_no_read_and_no_notification() {
    let net = Net::start(&THREE).await;
    let mut watchers = Vec::new();
    for _ in 0..20 {
        let mut w = net.wallet().await;
        for a in ADDRESSES.iter() {
            w.call("blockchain.scripthash.subscribe", json!([a.scripthash]))
                .await;
        }
        watchers.push(w);
    }
    net.until("subscriptions placed", || {
        net.upstream_subs(3) == 2 * ADDRESSES.len()
    })
    .await;
    // Readers hammer the gateway while an upstream dies.
    let addr = net.addr();
    let readers: Vec<_> = (0..10)
        .map(|r| {
            tokio::spawn(async move {
                let mut w = Wallet::connect(addr).await;
                w.call("server.version", json!(["reader", "1.4"])).await;
                let mut done = 0;
                for i in 0..60 {
                    let a = &ADDRESSES[(r + i) % ADDRESSES.len()];
                    let id = w
                        .send("blockchain.scripthash.get_balance", json!([a.scripthash]))
                        .await;
                    let resp = w.response(id).await;
                    assert!(
                        resp.get("result").is_some(),
                        "read failed during failover: {resp}"
                    );
                    done += 1;
                }
                done
            })
        })
        .collect();
    // Kill the upstream that holds the most subscriptions, and change statuses while the hub
    // moves them.
    let victim = (0..3).max_by_key(|i| net.sim.subscriptions(*i)).unwrap();
    let moved: HashSet<String> = net
        .sim
        .subscribed_scripthashes(victim)
        .into_iter()
        .collect();
    assert!(!moved.is_empty());
    net.sim.stop_endpoint(victim).await;
    let paid: Vec<_> = ADDRESSES
        .iter()
        .filter(|a| moved.contains(a.scripthash))
        .collect();
    for a in &paid {
        net.sim.pay(a.address, 50_000).unwrap();
    }
    for r in readers {
        assert_eq!(r.await.unwrap(), 60);
    }
    // Every watcher learns every new status.
    for w in watchers.iter_mut() {
        let mut pending: HashSet<&str> = paid.iter().map(|a| a.scripthash).collect();
        while !pending.is_empty() {
            let n = w
                .notification_until("blockchain.scripthash.subscribe", |_| true)
                .await;
            let sh = n["params"][0].as_str().unwrap().to_string();
            if n["params"][1] == json!(net.sim.status(&sh).unwrap()) {
                pending.remove(sh.as_str());
            }
        }
    }
    net.until("subscriptions moved", || {
        net.upstream_subs(3) == 2 * ADDRESSES.len()
    })
    .await;
    assert!(net.gw.snapshot().counters.subscription_moves >= moved.len() as u64);
    // The upstream comes back and is used again.
    net.sim.start_endpoint(victim).await.unwrap();
    assert!(net.gw.wait_connected(3, WAIT).await);
}

#[tokio::test]
async fn a_read_while_no_upstream_is_in_step_waits_for_one() {
    let net = Net::start(&["127.0.0.1:0", "127.0.0.1:0,lag=3"]).await;
    let mut w = net.wallet().await;
    // Both upstreams fall behind the verified tip (as right after a block or a reorg that no
    // upstream has followed yet): no tip-dependent read can be answered for now.
    net.sim.set_faults(0, "lag=3".parse().unwrap());
    let gw = &net.gw;
    net.until("no upstream in step", || {
        gw.snapshot()
            .upstreams
            .iter()
            .all(|u| !u.standing.in_step())
    })
    .await;
    let sh = ADDRESSES[0].scripthash;
    let id = w
        .send("blockchain.scripthash.get_mempool", json!([sh]))
        .await;
    net.until("the read waits for an upstream", || {
        gw.snapshot().counters.in_step_waits > 0
    })
    .await;
    // It catches up: the read is answered rather than failed.
    net.sim.set_faults(0, Faults::default());
    let r = w.response(id).await;
    assert!(r["result"].is_array(), "{r}");
}

async fn reads_survive(net: &Net, rounds: usize) {
    let mut w = net.wallet().await;
    for i in 0..rounds {
        let a = &ADDRESSES[i % ADDRESSES.len()];
        let (confirmed, unconfirmed) = net.sim.balance(a.scripthash).unwrap();
        let bal = w
            .call("blockchain.scripthash.get_balance", json!([a.scripthash]))
            .await;
        assert_eq!(
            bal,
            json!({"confirmed": confirmed, "unconfirmed": unconfirmed})
        );
    }
}

#[tokio::test]
async fn a_stalled_upstream_is_hedged_around() {
    let net = Net::start(&["127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"]).await;
    // Stall the best-ranked upstream after the pool has connected to it.
    let first = net.gw.snapshot().ranked[0];
    let mut f = net.sim.faults(first);
    f.stall = true;
    net.sim.set_faults(first, f);
    reads_survive(&net, 30).await;
    let hedges = net.gw.snapshot().counters.hedges;
    assert!(hedges > 0, "the stalled upstream must have been hedged");
}

#[tokio::test]
async fn drop_after_and_flap_cost_no_read() {
    let net = Net::start(&[
        "127.0.0.1:0,drop-after=7",
        "127.0.0.1:0,flap=1",
        "127.0.0.1:0",
    ])
    .await;
    reads_survive(&net, 120).await;
    // Notifications too, while upstreams keep dropping.
    let mut w = net.wallet().await;
    for a in ADDRESSES.iter() {
        w.call("blockchain.scripthash.subscribe", json!([a.scripthash]))
            .await;
    }
    for a in ADDRESSES.iter().take(4) {
        net.sim.pay(a.address, 7_000).unwrap();
        let want = json!(net.sim.status(a.scripthash).unwrap());
        w.notification_until("blockchain.scripthash.subscribe", |n| {
            n["params"][0] == json!(a.scripthash) && n["params"][1] == want
        })
        .await;
    }
}

#[tokio::test]
async fn an_oversized_line_closes_only_that_wallet() {
    let net = Net::start_with(&THREE, |c| c.limits.max_line_bytes = 4096).await;
    let mut good = net.wallet().await;
    let mut bad = net.wallet().await;
    bad.send_line(&format!(
        r#"{{"id":1,"method":"server.ping","params":["{}"]}}"#,
        "x".repeat(10_000)
    ))
    .await;
    let m = bad.read_message().await.expect("an error before closing");
    assert_eq!(m["error"]["code"], -32600);
    assert!(bad.read_message().await.is_none(), "connection closed");
    assert_eq!(good.call("server.ping", json!([])).await, Value::Null);
}

#[tokio::test]
async fn broadcast_reaches_upstreams() {
    let net = Net::start(&THREE).await;
    let mut w = net.wallet().await;
    // Re-broadcasting a transaction the network already has is a success with its txid.
    let txid = net.sim.mempool_txids()[0];
    let raw = net.sim.tx_hex(&txid).unwrap();
    let got = w
        .call("blockchain.transaction.broadcast", json!([raw]))
        .await;
    assert_eq!(got, json!(txid.to_string()));
    // Garbage is refused with the upstream's reason.
    let e = w
        .call_err("blockchain.transaction.broadcast", json!(["00"]))
        .await;
    assert!(e["code"].is_number());
}

#[tokio::test]
async fn the_electrum_client_crate_works_against_the_gateway() {
    let net = Net::start(&THREE).await;
    let addr = net.addr();
    let tip = net.sim.tip_height();
    let sh_script = electrum_gateway::sim::addresses::parse_regtest_address(ADDRESSES[0].address)
        .unwrap()
        .script_pubkey();
    let (confirmed, _) = net.sim.balance(ADDRESSES[0].scripthash).unwrap();
    let txid = net.sim.block_txids(3).unwrap()[0];
    tokio::task::spawn_blocking(move || {
        use electrum_client::ElectrumApi;
        let c = electrum_client::raw_client::RawClient::new(addr, Some(WAIT)).unwrap();
        let h = c.block_headers_subscribe().unwrap();
        assert_eq!(h.height as u32, tip);
        let bal = c.script_get_balance(&sh_script).unwrap();
        assert_eq!(bal.confirmed, confirmed);
        let tx = c.transaction_get(&txid).unwrap();
        assert_eq!(tx.compute_txid(), txid);
        let hist = c.script_get_history(&sh_script).unwrap();
        assert!(!hist.is_empty());
        c.script_subscribe(&sh_script).unwrap();
        let headers = c.block_headers(0, 10).unwrap();
        assert_eq!(headers.headers.len(), 10);
        c.ping().unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn tls_and_websocket_listeners_keep_their_certificate() {
    use electrum_gateway::client::{Client, ClientConfig, TlsMode};
    use electrum_gateway::transport::{Scheme, ServerUrl};
    let net = Net::start_with(&THREE, |c| {
        c.listen.tls = "127.0.0.1:0".into();
        c.listen.ws = "127.0.0.1:0".into();
    })
    .await;
    let pins = tempfile::tempdir().unwrap();
    let pin_file = pins.path().join("pins.json");
    let connect = |scheme: Scheme, port: u16| {
        let mut c = ClientConfig::new(ServerUrl::new(scheme, "127.0.0.1", port));
        c.tls = TlsMode::Pinned {
            pin_file: pin_file.clone(),
        };
        c.network = bitcoin::Network::Regtest;
        Client::connect(c)
    };
    let tls = connect(Scheme::Ssl, net.gw.tls_addr().unwrap().port())
        .await
        .unwrap();
    let tip: Value = tls
        .call("blockchain.headers.subscribe", vec![])
        .await
        .unwrap();
    assert_eq!(tip["height"], net.sim.tip_height());
    let ws = connect(Scheme::Ws, net.gw.ws_addr().unwrap().port())
        .await
        .unwrap();
    let bal: Value = ws
        .call(
            "blockchain.address.get_balance",
            vec![json!(ADDRESSES[2].address)],
        )
        .await
        .unwrap();
    assert_eq!(
        bal["confirmed"],
        net.sim.balance(ADDRESSES[2].scripthash).unwrap().0
    );
    // A restart on the same data directory serves the same certificate: the pin still holds.
    let data_dir = net.gw.config().data_dir.clone();
    let urls: Vec<String> = net.sim.urls().iter().map(|u| u.to_string()).collect();
    net.gw.shutdown();
    let cfg = Config {
        network: "regtest".into(),
        data_dir,
        upstreams: electrum_gateway::config::UpstreamConfig {
            servers: urls,
            use_server_list: false,
            ..Default::default()
        },
        listen: electrum_gateway::config::ListenConfig {
            tcp: String::new(),
            tls: "127.0.0.1:0".into(),
            http: String::new(),
            ..Default::default()
        },
        ..Config::default()
    };
    let again = Gateway::start(cfg).await.unwrap();
    let tls2 = connect(Scheme::Ssl, again.tls_addr().unwrap().port())
        .await
        .unwrap();
    let _: Value = tls2.call("server.features", vec![]).await.unwrap();
    again.shutdown();
}

#[tokio::test]
async fn a_dead_upstream_is_replaced_from_the_server_list_and_learned_state_is_saved() {
    let sim = Sim::start(SimConfig::with_endpoints(&["127.0.0.1:0", "127.0.0.1:0"]).unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let list = dir.path().join("servers.json");
    std::fs::write(
        &list,
        json!([{"hostname": "127.0.0.1", "ports": [format!("t{}", sim.url(1).port)], "version": "1.4", "seen_at": 1.5}])
            .to_string(),
    )
    .unwrap();
    let mut cfg = Config {
        network: "regtest".into(),
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    cfg.upstreams.servers = vec![format!("tcp://{dead}"), sim.url(0).to_string()];
    cfg.upstreams.active = 2;
    cfg.upstreams.server_list = list.to_string_lossy().into_owned();
    cfg.upstreams.replace_after_failures = 2;
    cfg.upstreams.reconnect_initial_secs = 0.02;
    cfg.upstreams.reconnect_max_secs = 0.1;
    cfg.listen.tcp = "127.0.0.1:0".into();
    cfg.listen.tls = String::new();
    cfg.listen.http = String::new();
    let gw = Gateway::start(cfg).await.unwrap();
    // Both slots end up connected, the dead one replaced by the candidate.
    assert!(gw.wait_connected(2, WAIT).await);
    let urls: HashSet<String> = gw.snapshot().upstreams.into_iter().map(|u| u.url).collect();
    assert!(urls.contains(&sim.url(1).to_string()), "{urls:?}");
    assert!(!urls.contains(&format!("tcp://{dead}")));
    assert!(gw.snapshot().candidates.contains(&format!("tcp://{dead}")));
    gw.save_state();
    let saved: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("upstreams.json")).unwrap()).unwrap();
    for i in 0..2 {
        assert!(
            saved[sim.url(i).to_string()]["last_success"].is_u64(),
            "learned state for {}: {saved}",
            sim.url(i)
        );
    }
    assert!(saved[format!("tcp://{dead}")].is_object());
    gw.shutdown();
}

#[tokio::test]
async fn session_limits_apply_without_losing_requests() {
    let net = Net::start_with(&["127.0.0.1:0,latency=20", "127.0.0.1:0,latency=20"], |c| {
        c.limits.max_pending_per_session = 2;
        c.limits.max_subscriptions_per_session = 2;
        c.limits.idle_timeout_secs = 1.0;
    })
    .await;
    let mut w = net.wallet().await;
    // Forty pipelined requests with two allowed in flight: all answered, none refused.
    let mut ids = Vec::new();
    for i in 0..40 {
        let a = &ADDRESSES[i % ADDRESSES.len()];
        ids.push(
            w.send("blockchain.scripthash.get_balance", json!([a.scripthash]))
                .await,
        );
    }
    for id in ids {
        let r = w.response(id).await;
        assert!(r["result"]["confirmed"].is_number(), "{r}");
    }
    w.call(
        "blockchain.scripthash.subscribe",
        json!([ADDRESSES[0].scripthash]),
    )
    .await;
    w.call(
        "blockchain.scripthash.subscribe",
        json!([ADDRESSES[1].scripthash]),
    )
    .await;
    let e = w
        .call_err(
            "blockchain.scripthash.subscribe",
            json!([ADDRESSES[2].scripthash]),
        )
        .await;
    assert_eq!(e["code"], -101);
    // A silent wallet is closed after the idle timeout.
    assert!(w.read_message().await.is_none());
}

#[tokio::test]
async fn metrics_and_events_work_without_the_http_listener() {
    // Net::start runs the gateway without an HTTP listener.
    let net = Net::start(&THREE).await;
    assert!(net.gw.http_addr().is_none());
    let mut w = net.wallet().await;
    w.call("server.ping", json!([])).await;
    let a = &ADDRESSES[0];
    w.call("blockchain.scripthash.get_balance", json!([a.scripthash]))
        .await;
    let text = net.gw.metrics_text();
    assert!(
        text.contains(r#"electrum_gateway_requests_total{method="server.ping",outcome="ok"} 1"#),
        "{text}"
    );
    // Upstream latencies were recorded as the requests went out.
    assert!(text.lines().any(|l| l
        .starts_with("electrum_gateway_upstream_request_duration_seconds_count")
        && !l.ends_with(" 0")));
    assert_eq!(net.gw.snapshot().upstreams.len(), 3);
    // The event log saw the upstreams come up.
    assert!(net.gw.events().iter().filter(|e| e.kind == "up").count() >= 3);
}
