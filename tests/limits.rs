//! Limits over real sockets: each test has a client exceed one limit and checks what it
//! sees (a JSON-RPC error, then a disconnect) and that a well-behaved client from another
//! address (127.0.0.2) is served all along.

mod common;

use common::{until, Net, Wallet, WAIT};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Two upstreams: a subscription is watched by two.
const TWO: [&str; 2] = ["127.0.0.1:0", "127.0.0.1:0"];

const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

fn sh(i: u32) -> String {
    format!("{i:064x}")
}

/// A wallet from 127.0.0.2 that negotiated a version: another client.
async fn other_wallet(net: &Net) -> Wallet {
    let mut w = Wallet::connect_from(net.addr(), OTHER).await;
    w.call("server.version", json!(["other", "1.4"])).await;
    w
}

/// The value of `electrum_gateway_limit_rejections_total{limit="..."}`.
fn rejections(net: &Net, limit: &str) -> u64 {
    let text = net.gw.metrics_text();
    let prefix = format!("electrum_gateway_limit_rejections_total{{limit=\"{limit}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in the metrics"))
}

fn abuse_disconnects(net: &Net) -> u64 {
    net.gw
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix("electrum_gateway_abuse_disconnects_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("abuse_disconnects_total in the metrics")
}

fn error_code(m: &Value) -> i64 {
    m["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("not an error: {m}"))
}

#[tokio::test]
async fn connections_per_client_are_limited_and_released() {
    let net = Net::start_with(&["127.0.0.1:0"], |c| c.limits.max_sessions_per_client = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(net.wallet().await);
    }
    // The fourth connection from 127.0.0.1 is told why, then closed.
    let mut fourth = Wallet::connect(net.addr()).await;
    let said = fourth.read_until_closed().await;
    assert_eq!(said.len(), 1, "one error, then the close: {said:?}");
    assert_eq!(error_code(&said[0]), -101);
    assert!(said[0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("too many connections"));
    assert!(rejections(&net, "connections") >= 1);
    // Another client is not affected.
    let mut other = other_wallet(&net).await;
    other.call("server.ping", json!([])).await;
    // A closed connection gives its place back.
    drop(held.pop());
    until("a connection slot to come back", || async {
        let mut w = Wallet::connect(net.addr()).await;
        let id = w.send("server.ping", json!([])).await;
        let r = w.read_message().await?;
        (r["id"] == json!(id) && r.get("error").is_none()).then_some(())
    })
    .await;
    held[0].call("server.ping", json!([])).await;
}

#[tokio::test]
async fn one_client_cannot_hold_every_handshake_place() {
    let net = Net::start_with(&["127.0.0.1:0"], |c| {
        c.limits.max_sessions = 50;
        c.limits.max_sessions_per_client = 3;
        c.listen.ws = "127.0.0.1:0".into();
    })
    .await;
    let ws = net.gw.ws_addr().unwrap();
    // Three WebSocket handshakes that never finish, from 127.0.0.2: its share.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(common::tcp_from(ws, [127, 0, 0, 2].into()).await);
    }
    // A fourth from it is closed at once, long before the handshake timeout.
    until("the fourth handshake refused", || async {
        let mut extra = common::tcp_from(ws, [127, 0, 0, 2].into()).await;
        let mut buf = [0u8; 1];
        match tokio::time::timeout(WAIT / 4, extra.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => Some(()),
            _ => None,
        }
    })
    .await;
    assert!(rejections(&net, "handshakes_per_client") >= 1);
    // Another client completes its handshake and is served meanwhile.
    let other = common::tcp_from(ws, [127, 0, 0, 3].into()).await;
    let (mut socket, _) = tokio_tungstenite::client_async(format!("ws://{ws}/"), other)
        .await
        .expect("another client's handshake");
    socket
        .send(tokio_tungstenite::tungstenite::Message::Text(
            "{\"id\":1,\"method\":\"server.ping\",\"params\":[]}".into(),
        ))
        .await
        .unwrap();
    let answer = socket.next().await.expect("an answer").expect("a message");
    assert!(answer.to_string().contains("\"result\""), "{answer}");
    drop(stalled);
}

#[tokio::test]
async fn handshakes_count_toward_max_sessions() {
    let net = Net::start_with(&["127.0.0.1:0"], |c| {
        c.limits.max_sessions = 2;
        c.listen.ws = "127.0.0.1:0".into();
    })
    .await;
    let ws = net.gw.ws_addr().unwrap();
    // Two connections that never finish their WebSocket handshake hold both places.
    let mut stalled = vec![
        TcpStream::connect(ws).await.unwrap(),
        TcpStream::connect(ws).await.unwrap(),
    ];
    until("both handshakes counted", || async {
        // A wallet is refused (closed without a word) while both handshakes are pending.
        let mut w = TcpStream::connect(net.addr()).await.ok()?;
        let mut buf = [0u8; 1];
        let _ = w
            .write_all(b"{\"id\":1,\"method\":\"server.ping\"}\n")
            .await;
        match tokio::time::timeout(WAIT, w.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => Some(()),
            _ => None,
        }
    })
    .await;
    assert!(rejections(&net, "sessions") >= 1);
    // One handshake given up: a wallet gets its place.
    drop(stalled.pop());
    until("a session place to come back", || async {
        let mut w = Wallet::connect(net.addr()).await;
        let id = w.send("server.ping", json!([])).await;
        let r = w.read_message().await?;
        (r["id"] == json!(id)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn rate_limit_errors_then_disconnects_for_abuse() {
    let net = Net::start_with(&["127.0.0.1:0"], |c| {
        c.limits.client_rate = 0.001;
        c.limits.client_burst = 20.0;
        c.limits.abuse_strikes = 5;
    })
    .await;
    let mut w = Wallet::connect(net.addr()).await;
    for _ in 0..20 {
        w.call("server.ping", json!([])).await;
    }
    // Over the bucket: error -101, the connection stays open for a while...
    let e = w.call_err("server.ping", json!([])).await;
    assert_eq!(e["code"], -101);
    assert!(e["message"].as_str().unwrap().contains("rate limit"));
    // ...while another client is served.
    let mut other = other_wallet(&net).await;
    for _ in 0..5 {
        other.call("server.ping", json!([])).await;
    }
    // Strikes in a row close the connection, with a last word.
    for _ in 0..10 {
        if !w
            .try_send_line(r#"{"jsonrpc":"2.0","id":99,"method":"server.ping"}"#)
            .await
        {
            break;
        }
    }
    let said = w.read_until_closed().await;
    let last = said.last().expect("a last error before the close");
    assert!(last["error"]["message"]
        .as_str()
        .unwrap()
        .contains("repeatedly exceeding limits"));
    assert!(rejections(&net, "rate") >= 5);
    assert_eq!(abuse_disconnects(&net), 1);
    other.call("server.ping", json!([])).await;
}

#[tokio::test]
async fn a_long_answer_costs_by_its_size() {
    // 300 headers are 48,000 bytes of hex: 1 + 9 units each time.
    let net = Net::start_with(&["127.0.0.1:0"], |c| {
        c.limits.client_rate = 0.0001;
        c.limits.client_burst = 100.0;
    })
    .await;
    let mut w = Wallet::connect(net.addr()).await;
    w.call("server.version", json!(["t", "1.4"])).await;
    for _ in 0..5 {
        let r = w.call("blockchain.block.headers", json!([0, 300])).await;
        assert_eq!(r["count"], 300);
    }
    let mut pings = 0;
    loop {
        let id = w.send("server.ping", json!([])).await;
        if w.response(id).await.get("error").is_some() {
            break;
        }
        pings += 1;
    }
    // 100 - 1 (version) - 5 x 10 = 49 left; a count of requests alone would leave 94.
    assert_eq!(pings, 49, "the bucket was charged by answer size");
}

#[tokio::test]
async fn subscriptions_per_client_are_counted_over_its_connections() {
    let net = Net::start_with(&TWO, |c| {
        c.limits.max_subscriptions_per_client = 3;
    })
    .await;
    let mut a = net.wallet().await;
    let mut b = net.wallet().await;
    a.call("blockchain.scripthash.subscribe", json!([sh(1)]))
        .await;
    a.call("blockchain.scripthash.subscribe", json!([sh(2)]))
        .await;
    b.call("blockchain.scripthash.subscribe", json!([sh(3)]))
        .await;
    let e = b
        .call_err("blockchain.scripthash.subscribe", json!([sh(4)]))
        .await;
    assert_eq!(e["code"], -101);
    assert!(e["message"].as_str().unwrap().contains("from your address"));
    // The same scripthash again is no new subscription.
    a.call("blockchain.scripthash.subscribe", json!([sh(1)]))
        .await;
    assert!(rejections(&net, "subscriptions") >= 1);
    // Another client subscribes freely.
    let mut other = other_wallet(&net).await;
    other
        .call("blockchain.scripthash.subscribe", json!([sh(4)]))
        .await;
    // Unsubscribing, or closing a connection, gives places back.
    assert_eq!(
        a.call("blockchain.scripthash.unsubscribe", json!([sh(1)]))
            .await,
        json!(true)
    );
    b.call("blockchain.scripthash.subscribe", json!([sh(5)]))
        .await;
    drop(a);
    until(
        "the closed connection's subscriptions to be given back",
        || async {
            let mut w = net.wallet().await;
            let id = w
                .send("blockchain.scripthash.subscribe", json!([sh(6)]))
                .await;
            w.response(id).await.get("error").is_none().then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn global_subscription_cap_refuses_new_scripthashes_only() {
    let net = Net::start_with(&TWO, |c| c.limits.max_subscriptions = 2).await;
    let mut a = net.wallet().await;
    a.call("blockchain.scripthash.subscribe", json!([sh(1)]))
        .await;
    a.call("blockchain.scripthash.subscribe", json!([sh(2)]))
        .await;
    let mut other = other_wallet(&net).await;
    let e = other
        .call_err("blockchain.scripthash.subscribe", json!([sh(3)]))
        .await;
    assert_eq!(e["code"], -102, "server busy, not the wallet's fault: {e}");
    // A scripthash already watched costs the upstreams nothing more.
    other
        .call("blockchain.scripthash.subscribe", json!([sh(1)]))
        .await;
    assert!(rejections(&net, "subscriptions_global") >= 1);
    // Not a strike: the wallet is still served after many refusals.
    for i in 10..30 {
        let e = other
            .call_err("blockchain.scripthash.subscribe", json!([sh(i)]))
            .await;
        assert_eq!(e["code"], -102);
    }
    other.call("server.ping", json!([])).await;
    assert_eq!(net.gw.snapshot().subscriptions.scripthashes, 2);
}

#[tokio::test]
async fn a_batch_over_max_batch_gets_one_error() {
    let net = Net::start_with(&["127.0.0.1:0"], |c| c.limits.max_batch = 5).await;
    let mut w = net.wallet().await;
    let batch = |n: usize| {
        let items: Vec<Value> = (0..n)
            .map(|i| json!({"jsonrpc": "2.0", "id": 100 + i, "method": "server.ping"}))
            .collect();
        Value::Array(items).to_string()
    };
    w.send_line(&batch(5)).await;
    let ok = w.read_message().await.unwrap();
    assert_eq!(ok.as_array().map(Vec::len), Some(5), "{ok}");
    w.send_line(&batch(6)).await;
    let refused = w.read_message().await.unwrap();
    assert!(
        refused.is_object(),
        "one error, not one per item: {refused}"
    );
    assert_eq!(error_code(&refused), -101);
    assert!(refused["error"]["message"]
        .as_str()
        .unwrap()
        .contains("at most 5"));
    assert_eq!(rejections(&net, "batch"), 1);
    w.call("server.ping", json!([])).await;
}

#[tokio::test]
async fn a_batch_answer_is_bounded_in_bytes() {
    // Each answer is about 48 kB: two fit in 100,000 bytes.
    let net = Net::start_with(&["127.0.0.1:0"], |c| {
        c.limits.max_batch_answer_bytes = 100_000
    })
    .await;
    let mut w = net.wallet().await;
    let mut items: Vec<Value> = (0..5)
        .map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "blockchain.block.headers", "params": [0, 300]}))
        .collect();
    items.push(json!({"jsonrpc": "2.0", "id": 99, "method": "server.ping"}));
    w.send_line(&Value::Array(items).to_string()).await;
    let answers = w.read_message().await.unwrap();
    let answers = answers.as_array().expect("a batch answer");
    assert_eq!(answers.len(), 6, "every item answered");
    let served = answers
        .iter()
        .filter(|a| a["result"]["count"] == 300)
        .count();
    let refused: Vec<&Value> = answers
        .iter()
        .filter(|a| a.get("error").is_some())
        .collect();
    assert_eq!(served, 2, "answers served within the bound");
    assert_eq!(refused.len(), 3);
    for r in refused {
        assert_eq!(r["error"]["code"], -101);
        assert!(r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("batch answer too large"));
    }
    assert!(answers
        .iter()
        .any(|a| a["id"] == 99 && a["result"].is_null()));
    assert_eq!(rejections(&net, "batch_answer"), 1);
    w.call("server.ping", json!([])).await;
}

#[tokio::test]
async fn idle_timeout_counts_only_what_the_wallet_sends() {
    let net = Net::start_with(&["127.0.0.1:0"], |c| c.limits.idle_timeout_secs = 1.0).await;
    let mut idle = net.wallet().await;
    idle.call("blockchain.headers.subscribe", json!([])).await;
    let mut busy = net.wallet().await;
    // New blocks keep coming; the idle wallet's notifications must not keep it open.
    let closed = tokio::spawn(async move { idle.read_until_closed().await });
    let deadline = tokio::time::Instant::now() + WAIT;
    while !closed.is_finished() && tokio::time::Instant::now() < deadline {
        net.sim.mine(1);
        busy.call("server.ping", json!([])).await;
        // A block every 200 ms: a notification to the idle wallet far more often than its
        // one-second idle timeout.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let said = closed
        .await
        .expect("a wallet that sends nothing is closed despite notifications");
    assert!(!said.is_empty(), "it was notified meanwhile");
    assert!(said
        .iter()
        .all(|m| m["method"] == "blockchain.headers.subscribe"));
    // The wallet that kept talking is still served.
    busy.call("server.ping", json!([])).await;
}

#[tokio::test]
async fn websocket_origin_is_checked_against_the_allow_list() {
    let net = Net::start_with(&["127.0.0.1:0"], |c| {
        c.listen.ws = "127.0.0.1:0".into();
        c.listen.ws_origins = vec!["https://wallet.example".into()];
    })
    .await;
    let ws = net.gw.ws_addr().unwrap();
    let open = |origin: Option<&'static str>| async move {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{ws}/").into_client_request().unwrap();
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        let tcp = TcpStream::connect(ws).await.unwrap();
        tokio_tungstenite::client_async(req, tcp).await
    };
    // A page from another origin is refused with 403.
    match open(Some("https://evil.example")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 403)
        }
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    assert_eq!(rejections(&net, "origin"), 1);
    // The allowed origin, and a program that sends no Origin, are served.
    for origin in [Some("https://wallet.example"), None] {
        let (mut s, _) = open(origin).await.unwrap();
        s.send(r#"{"jsonrpc":"2.0","id":1,"method":"server.ping"}"#.into())
            .await
            .unwrap();
        let m = s.next().await.unwrap().unwrap();
        let v: Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
        assert_eq!(v["id"], 1);
    }
}

#[tokio::test]
async fn websocket_refuses_every_browser_origin_by_default() {
    let net = Net::start_with(&["127.0.0.1:0"], |c| c.listen.ws = "127.0.0.1:0".into()).await;
    let ws = net.gw.ws_addr().unwrap();
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{ws}/").into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "http://localhost:8080".parse().unwrap());
    let tcp = TcpStream::connect(ws).await.unwrap();
    match tokio_tungstenite::client_async(req, tcp).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn idle_http_sockets_do_not_lock_out_health() {
    let net = Net::start_http(&["127.0.0.1:0"]).await;
    let addr = net.http_addr();
    // Every HTTP place taken by a socket that sends nothing, and one trickling its headers.
    let mut idle = Vec::new();
    for _ in 0..256 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    idle[0]
        .write_all(b"GET /health HTTP/1.1\r\n")
        .await
        .unwrap();
    // /health answers again once the idle sockets are timed out.
    let reply = until("/health to answer past idle sockets", || async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(2), s.read_to_end(&mut out))
            .await
            .ok()?
            .ok()?;
        let text = String::from_utf8_lossy(&out).to_string();
        text.starts_with("HTTP/1.1 200").then_some(text)
    })
    .await;
    assert!(reply.contains("\r\n\r\n"));
    // The idle sockets were closed by the gateway.
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, idle[1].read(&mut buf))
        .await
        .expect("the gateway closes an idle HTTP socket");
    assert!(matches!(n, Ok(0) | Err(_)), "closed: {n:?}");
}
