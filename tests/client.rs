//! The Electrum client against scripted servers on loopback sockets: each test plays the
//! server's side message by message, so exact wire behaviour (ordering, batching, padding,
//! disconnects mid-flight, notifications) is checked, not assumed.

use bitcoin::hashes::{sha256, Hash};
use bitcoin::hex::DisplayHex;
use electrum_gateway::client::{
    Backoff, Client, ClientConfig, ClientError, ClientEvent, ConnectionState, ProxyConfig, TlsMode,
};
use electrum_gateway::transport::{frame_lines, frame_ws, Framed, Scheme, ServerUrl};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};

/// Generous: the machine running the tests may be loaded.
const LIMIT: Duration = Duration::from_secs(10);

const SH1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const SH2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const SH3: &str = "3333333333333333333333333333333333333333333333333333333333333333";

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test step timed out")
}

// ---- scripted servers -------------------------------------------------------------------

/// A listening test server handing each accepted, framed connection to the test.
struct Server {
    addr: SocketAddr,
    conns: mpsc::UnboundedReceiver<Peer>,
}

#[derive(Clone, Copy)]
enum Kind {
    Lines,
    Ws,
}

impl Server {
    async fn start(kind: Kind) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, conns) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let framed = match kind {
                        Kind::Lines => frame_lines(stream, 1 << 20),
                        Kind::Ws => match tokio_tungstenite::accept_async(stream).await {
                            Ok(ws) => frame_ws(ws, 1 << 20),
                            Err(_) => return,
                        },
                    };
                    let _ = tx.send(Peer { framed });
                });
            }
        });
        Server { addr, conns }
    }

    async fn tcp() -> Server {
        Server::start(Kind::Lines).await
    }

    /// A TLS server presenting whatever certificate `current` holds when a client connects.
    async fn tls(current: Arc<Mutex<tokio_rustls::TlsAcceptor>>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, conns) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = current.lock().unwrap().clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    // A client refusing the certificate ends the handshake here.
                    if let Ok(tls) = acceptor.accept(stream).await {
                        let _ = tx.send(Peer {
                            framed: frame_lines(tls, 1 << 20),
                        });
                    }
                });
            }
        });
        Server { addr, conns }
    }

    fn url(&self, scheme: Scheme) -> ServerUrl {
        ServerUrl::new(scheme, "127.0.0.1", self.addr.port())
    }

    async fn accept(&mut self) -> Peer {
        within(self.conns.recv()).await.expect("server stopped")
    }
}

/// The server's side of one connection.
struct Peer {
    framed: Framed,
}

impl Peer {
    /// The next message as JSON (a request object or a batch array).
    async fn recv(&mut self) -> Value {
        let line = within(self.framed.stream.next())
            .await
            .expect("client closed the connection")
            .expect("read error");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("client sent bad JSON {line}: {e}"))
    }

    /// The next request: (id, method, params).
    async fn request(&mut self) -> (Value, String, Vec<Value>) {
        let v = self.recv().await;
        split_request(&v)
    }

    async fn send(&mut self, text: impl Into<String>) {
        within(self.framed.sink.send(text.into())).await.unwrap();
    }

    async fn reply(&mut self, id: &Value, result: Value) {
        self.send(json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string())
            .await;
    }

    async fn notify(&mut self, method: &str, params: Value) {
        self.send(json!({"jsonrpc": "2.0", "method": method, "params": params}).to_string())
            .await;
    }

    /// Answers `server.version`; returns its params.
    async fn handshake(&mut self) -> Vec<Value> {
        let (id, method, params) = self.request().await;
        assert_eq!(method, "server.version", "the first message must negotiate");
        self.reply(&id, json!(["TestServer 1.0", "1.4"])).await;
        params
    }

    /// Waits until the client closes the connection.
    async fn closed(&mut self) {
        loop {
            match within(self.framed.stream.next()).await {
                None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    }
}

fn split_request(v: &Value) -> (Value, String, Vec<Value>) {
    let method = v["method"]
        .as_str()
        .expect("a request has a method")
        .to_string();
    let params = v["params"].as_array().cloned().unwrap_or_default();
    (v["id"].clone(), method, params)
}

fn config(url: ServerUrl) -> ClientConfig {
    let mut c = ClientConfig::new(url);
    c.reconnect = None;
    c.ping_interval = None;
    c.request_timeout = LIMIT;
    c.connect_timeout = LIMIT;
    c
}

fn fast_reconnect() -> Option<Backoff> {
    Some(Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        factor: 2.0,
        jitter: 0.2,
    })
}

/// Connects `config` while `server` performs the handshake.
async fn connect(server: &mut Server, config: ClientConfig) -> (Client, Peer) {
    let connecting = tokio::spawn(Client::connect(config));
    let mut peer = server.accept().await;
    peer.handshake().await;
    let client = within(connecting).await.unwrap().expect("connects");
    (client, peer)
}

/// Waits for the first event matching `pred`.
async fn event(
    rx: &mut broadcast::Receiver<ClientEvent>,
    pred: impl Fn(&ClientEvent) -> bool,
) -> ClientEvent {
    within(async {
        loop {
            let e = rx.recv().await.expect("event stream ended");
            if pred(&e) {
                return e;
            }
        }
    })
    .await
}

// ---- requests ---------------------------------------------------------------------------

#[tokio::test]
async fn negotiates_then_answers_requests() {
    let mut server = Server::tcp().await;
    let connecting = tokio::spawn(Client::connect(config(server.url(Scheme::Tcp))));
    let mut peer = server.accept().await;
    let params = peer.handshake().await;
    assert!(params[0].as_str().unwrap().starts_with("electrum-gateway/"));
    assert_eq!(params[1], json!(["1.4", "1.6"]));
    let client = within(connecting).await.unwrap().unwrap();
    let info = client.server_info().unwrap();
    assert_eq!(
        (info.software.as_str(), info.protocol.as_str()),
        ("TestServer 1.0", "1.4")
    );
    assert_eq!(client.state(), ConnectionState::Connected);

    let c = client.clone();
    let call = tokio::spawn(async move { c.call::<String>("server.banner", vec![]).await });
    let (id, method, params) = peer.request().await;
    assert_eq!((method.as_str(), params.len()), ("server.banner", 0));
    peer.reply(&id, json!("welcome")).await;
    assert_eq!(within(call).await.unwrap().unwrap(), "welcome");

    // A server error comes back as an Rpc error.
    let c = client.clone();
    let call = tokio::spawn(async move {
        c.request("blockchain.transaction.get", vec![json!("00")])
            .await
    });
    let (id, _, _) = peer.request().await;
    peer.send(
        json!({"jsonrpc":"2.0","id":id,"error":{"code":1,"message":"no such tx"}}).to_string(),
    )
    .await;
    match within(call).await.unwrap() {
        Err(ClientError::Rpc(e)) => assert_eq!((e.code, e.message.as_str()), (1, "no such tx")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn concurrent_calls_are_matched_by_id_when_answered_out_of_order() {
    let mut server = Server::tcp().await;
    let (client, mut peer) = {
        let cfg = config(server.url(Scheme::Tcp));
        connect(&mut server, cfg).await
    };
    let calls: Vec<_> = (1..=3)
        .map(|h| {
            let c = client.clone();
            tokio::spawn(async move {
                c.call::<String>("blockchain.block.header", vec![json!(h)])
                    .await
            })
        })
        .collect();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(peer.request().await);
    }
    let ids: std::collections::HashSet<String> =
        seen.iter().map(|(id, _, _)| id.to_string()).collect();
    assert_eq!(ids.len(), 3, "every request has its own id");
    for (id, _, params) in seen.iter().rev() {
        peer.reply(id, json!(format!("header-{}", params[0]))).await;
    }
    for (h, call) in (1..=3).zip(calls) {
        assert_eq!(within(call).await.unwrap().unwrap(), format!("header-{h}"));
    }
}

#[tokio::test]
async fn batch_is_one_line_and_results_come_back_in_call_order() {
    let mut server = Server::tcp().await;
    let (client, mut peer) = {
        let cfg = config(server.url(Scheme::Tcp));
        connect(&mut server, cfg).await
    };
    let c = client.clone();
    let batch = tokio::spawn(async move {
        c.batch(vec![
            ("blockchain.block.header".into(), vec![json!(10)]),
            ("blockchain.transaction.get".into(), vec![json!("ff")]),
            ("blockchain.block.header".into(), vec![json!(12)]),
        ])
        .await
    });
    let line = peer.recv().await;
    let items = line.as_array().expect("a batch travels as one JSON array");
    assert_eq!(items.len(), 3);
    // Answer reversed, padded like ElectrumX, with an error in the middle.
    let answers: Vec<String> = items
        .iter()
        .rev()
        .map(|item| {
            let (id, method, params) = split_request(item);
            if method == "blockchain.transaction.get" {
                format!(r#"{{"jsonrpc": "2.0", "error": {{"code": 2, "message": "missing"}}, "id": {id}   }}"#)
            } else {
                format!(r#"{{"jsonrpc": "2.0", "result": "h{}", "id": {id}}}"#, params[0])
            }
        })
        .collect();
    peer.send(format!("[{}        ]", answers.join(" , ")))
        .await;
    let results = within(batch).await.unwrap().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].as_ref().unwrap().get(), "\"h10\"");
    assert_eq!(results[1].as_ref().unwrap_err().code, 2);
    assert_eq!(results[2].as_ref().unwrap().get(), "\"h12\"");
}

#[tokio::test]
async fn padded_answers_are_parsed() {
    let mut server = Server::tcp().await;
    let (client, mut peer) = {
        let cfg = config(server.url(Scheme::Tcp));
        connect(&mut server, cfg).await
    };
    let c = client.clone();
    let call = tokio::spawn(async move {
        c.call::<Value>("blockchain.headers.subscribe", vec![])
            .await
    });
    let (id, _, _) = peer.request().await;
    let pad = " ".repeat(700);
    peer.send(format!(
        "{{\"jsonrpc\": \"2.0\", \"result\": {{\"hex\": \"00\", \"height\": 5{pad}}}{pad}, \"id\": {id}{pad}}}{pad}"
    ))
    .await;
    let v = within(call).await.unwrap().unwrap();
    assert_eq!(v, json!({"hex": "00", "height": 5}));
}

#[tokio::test]
async fn a_request_times_out_and_its_late_answer_is_ignored() {
    let mut server = Server::tcp().await;
    let mut cfg = config(server.url(Scheme::Tcp));
    cfg.request_timeout = Duration::from_secs(1);
    let (client, mut peer) = connect(&mut server, cfg).await;
    let c = client.clone();
    let slow = tokio::spawn(async move { c.request("server.banner", vec![]).await });
    let (slow_id, _, _) = peer.request().await;
    assert!(matches!(
        within(slow).await.unwrap(),
        Err(ClientError::Timeout)
    ));

    // The connection is still usable, and the late answer does not confuse the next call.
    let c = client.clone();
    let next =
        tokio::spawn(async move { c.call::<String>("server.donation_address", vec![]).await });
    let (id, _, _) = peer.request().await;
    peer.reply(&slow_id, json!("late banner")).await;
    peer.reply(&id, json!("bc1donate")).await;
    assert_eq!(within(next).await.unwrap().unwrap(), "bc1donate");
    assert_eq!(client.state(), ConnectionState::Connected);
}

// ---- disconnects, reconnects, close ------------------------------------------------------

#[tokio::test]
async fn in_flight_calls_fail_at_once_when_the_server_goes_away() {
    let mut server = Server::tcp().await;
    let (client, mut peer) = {
        let cfg = config(server.url(Scheme::Tcp));
        connect(&mut server, cfg).await
    };
    let mut events = client.events();
    let calls: Vec<_> = (0..2)
        .map(|h| {
            let c = client.clone();
            tokio::spawn(async move { c.request("blockchain.block.header", vec![json!(h)]).await })
        })
        .collect();
    peer.request().await;
    peer.request().await;
    drop(peer);
    for call in calls {
        match within(call).await.unwrap() {
            Err(ClientError::Disconnected(reason)) => {
                assert!(reason.contains("closed"), "{reason}")
            }
            other => panic!("expected Disconnected, got {other:?}"),
        }
    }
    // Without a reconnect policy the client is closed for good.
    event(&mut events, |e| *e == ClientEvent::Closed).await;
    assert_eq!(client.state(), ConnectionState::Closed);
    assert!(matches!(
        client.request("server.ping", vec![]).await,
        Err(ClientError::Disconnected(_))
    ));
}

#[tokio::test]
async fn reconnect_renegotiates_resubscribes_and_delivers_changes() {
    let mut server = Server::tcp().await;
    let mut cfg = config(server.url(Scheme::Tcp));
    cfg.reconnect = fast_reconnect();
    let (client, mut peer) = connect(&mut server, cfg).await;
    let mut events = client.events();

    let c = client.clone();
    let subs = tokio::spawn(async move {
        let a = c
            .subscribe("blockchain.scripthash.subscribe", vec![json!(SH1)])
            .await
            .unwrap();
        let b = c
            .subscribe("blockchain.scripthash.subscribe", vec![json!(SH2)])
            .await
            .unwrap();
        (a, b)
    });
    let (id, method, params) = peer.request().await;
    assert_eq!(
        (method.as_str(), params),
        ("blockchain.scripthash.subscribe", vec![json!(SH1)])
    );
    peer.reply(&id, json!("status-1")).await;
    let (id, _, params) = peer.request().await;
    assert_eq!(params, vec![json!(SH2)]);
    peer.reply(&id, Value::Null).await;
    let ((a0, mut a), (b0, mut b)) = within(subs).await.unwrap();
    assert_eq!((a0.get(), b0.get()), ("\"status-1\"", "null"));

    drop(peer);
    event(&mut events, |e| {
        matches!(e, ClientEvent::Disconnected { .. })
    })
    .await;

    let mut peer = server.accept().await;
    peer.handshake().await;
    let mut resubscribed = std::collections::HashMap::new();
    for _ in 0..2 {
        let (id, method, params) = peer.request().await;
        assert_eq!(method, "blockchain.scripthash.subscribe");
        resubscribed.insert(params[0].as_str().unwrap().to_string(), id);
    }
    // SH1 changed while the link was down; SH2 did not.
    peer.reply(&resubscribed[SH1], json!("status-2")).await;
    peer.reply(&resubscribed[SH2], Value::Null).await;
    assert_eq!(
        event(&mut events, |e| matches!(
            e,
            ClientEvent::Resubscribed { .. }
        ))
        .await,
        ClientEvent::Resubscribed { count: 2 }
    );
    assert_eq!(within(a.next()).await, Some(json!("status-2")));
    // Nothing was delivered for the unchanged one: its next value is the next notification.
    peer.notify("blockchain.scripthash.subscribe", json!([SH2, "status-3"]))
        .await;
    assert_eq!(within(b.next()).await, Some(json!("status-3")));
    assert_eq!(client.state(), ConnectionState::Connected);
}

#[tokio::test]
async fn calls_while_disconnected_fail_at_once_and_close_stops_reconnecting() {
    let mut server = Server::tcp().await;
    let mut cfg = config(server.url(Scheme::Tcp));
    // Long enough that the test runs entirely inside the first backoff.
    cfg.reconnect = Some(Backoff {
        initial: Duration::from_secs(3600),
        max: Duration::from_secs(3600),
        factor: 2.0,
        jitter: 0.0,
    });
    let (client, peer) = connect(&mut server, cfg).await;
    let mut events = client.events();
    drop(peer);
    event(&mut events, |e| {
        matches!(e, ClientEvent::Disconnected { .. })
    })
    .await;
    assert_eq!(client.state(), ConnectionState::Disconnected);
    assert!(matches!(
        within(client.request("server.ping", vec![])).await,
        Err(ClientError::Disconnected(_))
    ));
    within(client.close()).await;
    assert_eq!(client.state(), ConnectionState::Closed);
    assert!(matches!(
        client.request("server.ping", vec![]).await,
        Err(ClientError::Closed)
    ));
}

#[tokio::test]
async fn close_fails_in_flight_calls_and_ends_streams() {
    let mut server = Server::tcp().await;
    let (client, mut peer) = {
        let cfg = config(server.url(Scheme::Tcp));
        connect(&mut server, cfg).await
    };
    let c = client.clone();
    let sub =
        tokio::spawn(async move { c.subscribe("blockchain.headers.subscribe", vec![]).await });
    let (id, _, _) = peer.request().await;
    peer.reply(&id, json!({"hex": "00", "height": 1})).await;
    let (_, mut tips) = within(sub).await.unwrap().unwrap();

    let c = client.clone();
    let call = tokio::spawn(async move { c.request("server.banner", vec![]).await });
    peer.request().await;
    within(client.close()).await;
    assert!(matches!(
        within(call).await.unwrap(),
        Err(ClientError::Closed)
    ));
    assert_eq!(within(tips.next()).await, None);
    assert_eq!(client.state(), ConnectionState::Closed);
    peer.closed().await;
}

#[tokio::test]
async fn dropping_the_last_handle_closes_the_connection() {
    let mut server = Server::tcp().await;
    let mut cfg = config(server.url(Scheme::Tcp));
    cfg.reconnect = fast_reconnect();
    let (client, mut peer) = connect(&mut server, cfg).await;
    let c = client.clone();
    let sub =
        tokio::spawn(async move { c.subscribe("blockchain.headers.subscribe", vec![]).await });
    let (id, _, _) = peer.request().await;
    peer.reply(&id, json!({"hex": "00", "height": 1})).await;
    let (_, mut tips) = within(sub).await.unwrap().unwrap();
    let other = client.clone();
    drop(client);
    // One handle left: still connected.
    assert_eq!(other.state(), ConnectionState::Connected);
    drop(other);
    peer.closed().await;
    // The subscription outlives the client, but its stream ends.
    assert_eq!(within(tips.next()).await, None);
}

#[tokio::test]
async fn malformed_line_closes_the_connection_then_reconnects() {
    let mut server = Server::tcp().await;
    let mut cfg = config(server.url(Scheme::Tcp));
    cfg.reconnect = fast_reconnect();
    let (client, mut peer) = connect(&mut server, cfg).await;
    let c = client.clone();
    let call = tokio::spawn(async move { c.request("server.banner", vec![]).await });
    peer.request().await;
    peer.send("this is not json").await;
    match within(call).await.unwrap() {
        Err(ClientError::Disconnected(reason)) => assert!(reason.contains("malformed"), "{reason}"),
        other => panic!("{other:?}"),
    }
    peer.closed().await;
    // A new connection, negotiated again.
    let mut peer = server.accept().await;
    peer.handshake().await;
}

#[tokio::test]
async fn oversized_line_closes_the_connection() {
    let mut server = Server::tcp().await;
    let mut cfg = config(server.url(Scheme::Tcp));
    cfg.max_message = 1000;
    let (client, mut peer) = connect(&mut server, cfg).await;
    let c = client.clone();
    let call = tokio::spawn(async move {
        c.request("blockchain.transaction.get", vec![json!("aa")])
            .await
    });
    let (id, _, _) = peer.request().await;
    peer.reply(&id, json!("ab".repeat(3000))).await;
    match within(call).await.unwrap() {
        Err(ClientError::Disconnected(reason)) => {
            assert!(reason.contains("longer than 1000"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_unanswered_ping_marks_the_connection_dead() {
    let mut server = Server::tcp().await;
    let mut cfg = config(server.url(Scheme::Tcp));
    cfg.ping_interval = Some(Duration::from_millis(50));
    cfg.request_timeout = Duration::from_secs(1);
    let (client, mut peer) = connect(&mut server, cfg).await;
    let mut events = client.events();
    let (id, method, _) = peer.request().await;
    assert_eq!(method, "server.ping");
    peer.reply(&id, Value::Null).await;
    let (_, method, _) = peer.request().await;
    assert_eq!(method, "server.ping");
    // Not answered.
    match event(&mut events, |e| {
        matches!(e, ClientEvent::Disconnected { .. })
    })
    .await
    {
        ClientEvent::Disconnected { reason } => assert!(reason.contains("ping"), "{reason}"),
        _ => unreachable!(),
    }
    peer.closed().await;
}

#[tokio::test]
async fn connect_errors_are_reported() {
    // Nothing listens on a port just released.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let url = ServerUrl::new(Scheme::Tcp, "127.0.0.1", port);
    assert!(matches!(
        within(Client::connect(config(url))).await,
        Err(ClientError::Connect(_))
    ));

    // A server refusing the version.
    let mut server = Server::tcp().await;
    let connecting = tokio::spawn(Client::connect(config(server.url(Scheme::Tcp))));
    let mut peer = server.accept().await;
    let (id, _, _) = peer.request().await;
    peer.send(json!({"jsonrpc":"2.0","id":id,"error":{"code":1,"message":"unsupported protocol version: 1.6"}}).to_string())
        .await;
    match within(connecting).await.unwrap() {
        Err(ClientError::Protocol(m)) => assert!(m.contains("unsupported protocol"), "{m}"),
        other => panic!("{other:?}"),
    }

    // A server choosing a version outside the range offered.
    let connecting = tokio::spawn(Client::connect(config(server.url(Scheme::Tcp))));
    let mut peer = server.accept().await;
    let (id, _, _) = peer.request().await;
    peer.reply(&id, json!(["Old 0.1", "1.2"])).await;
    assert!(matches!(
        within(connecting).await.unwrap(),
        Err(ClientError::Protocol(_))
    ));
}

// ---- subscriptions ----------------------------------------------------------------------

#[tokio::test]
async fn notifications_are_routed_by_params_and_unknown_ones_ignored() {
    let mut server = Server::tcp().await;
    let (client, mut peer) = {
        let cfg = config(server.url(Scheme::Tcp));
        connect(&mut server, cfg).await
    };
    let c = client.clone();
    let subs = tokio::spawn(async move {
        let a = c
            .subscribe("blockchain.scripthash.subscribe", vec![json!(SH1)])
            .await
            .unwrap();
        let b = c
            .subscribe("blockchain.scripthash.subscribe", vec![json!(SH2)])
            .await
            .unwrap();
        (a, b)
    });
    for _ in 0..2 {
        let (id, _, _) = peer.request().await;
        peer.reply(&id, Value::Null).await;
    }
    let ((_, mut a), (_, mut b)) = within(subs).await.unwrap();
    assert_eq!(a.key().params, json!([SH1]).to_string());

    peer.notify("blockchain.scripthash.subscribe", json!([SH2, "b-1"]))
        .await;
    peer.notify("blockchain.scripthash.subscribe", json!([SH3, "never"]))
        .await;
    peer.notify(
        "blockchain.headers.subscribe",
        json!([{"hex": "00", "height": 9}]),
    )
    .await;
    peer.notify("blockchain.scripthash.subscribe", json!([SH1, "a-1"]))
        .await;
    assert_eq!(within(a.next()).await, Some(json!("a-1")));
    assert_eq!(within(b.next()).await, Some(json!("b-1")));

    // The unknown notifications did not close the connection.
    let c = client.clone();
    let ping = tokio::spawn(async move { c.request("server.ping", vec![]).await });
    let (id, _, _) = peer.request().await;
    peer.reply(&id, Value::Null).await;
    assert_eq!(within(ping).await.unwrap().unwrap().get(), "null");
}

#[tokio::test]
async fn subscribers_of_one_key_share_one_server_subscription() {
    let mut server = Server::tcp().await;
    let (client, mut peer) = {
        let cfg = config(server.url(Scheme::Tcp));
        connect(&mut server, cfg).await
    };
    let subscribe = |c: Client| {
        tokio::spawn(async move {
            c.subscribe("blockchain.scripthash.subscribe", vec![json!(SH1)])
                .await
        })
    };
    // Two at once: one waits for the other's request.
    let first = subscribe(client.clone());
    let second = subscribe(client.clone());
    let (id, _, _) = peer.request().await;
    peer.reply(&id, json!("s-0")).await;
    let (v1, mut s1) = within(first).await.unwrap().unwrap();
    let (v2, mut s2) = within(second).await.unwrap().unwrap();
    // A third later gets the current value without asking the server.
    let (v3, s3) = within(subscribe(client.clone())).await.unwrap().unwrap();
    assert_eq!(
        (v1.get(), v2.get(), v3.get()),
        ("\"s-0\"", "\"s-0\"", "\"s-0\"")
    );

    async fn next_is_ping(client: &Client, peer: &mut Peer) {
        let c = client.clone();
        let ping = tokio::spawn(async move { c.request("server.ping", vec![]).await });
        let (id, method, _) = peer.request().await;
        assert_eq!(method, "server.ping");
        peer.reply(&id, Value::Null).await;
        within(ping).await.unwrap().unwrap();
    }
    // Only one subscribe reached the server.
    next_is_ping(&client, &mut peer).await;

    peer.notify("blockchain.scripthash.subscribe", json!([SH1, "s-1"]))
        .await;
    assert_eq!(within(s1.next()).await, Some(json!("s-1")));
    assert_eq!(within(s2.next()).await, Some(json!("s-1")));

    // Dropping some subscribers keeps the server subscription...
    drop(s1);
    drop(s3);
    next_is_ping(&client, &mut peer).await;
    // ...dropping the last one ends it.
    drop(s2);
    let (_, method, params) = peer.request().await;
    assert_eq!(
        (method.as_str(), params),
        ("blockchain.scripthash.unsubscribe", vec![json!(SH1)])
    );
}

// ---- addresses --------------------------------------------------------------------------

#[tokio::test]
async fn address_calls_travel_as_scripthashes_and_foreign_addresses_are_refused() {
    // The genesis coinbase key hash; its scripthash as published with the protocol docs.
    const REGTEST_ADDR: &str = "mpXwg4jMtRhuSpVq4xS3HFHmCmWp9NyGKt";
    const MAINNET_ADDR: &str = "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa";
    const SCRIPTHASH: &str = "8b01df4e368ea28f8dc0423bcf7a4923e3a12d307c875e47a0cfbf90b5c39161";
    let mut server = Server::tcp().await;
    let mut cfg = config(server.url(Scheme::Tcp));
    cfg.network = bitcoin::Network::Regtest;
    let (client, mut peer) = connect(&mut server, cfg).await;

    match client
        .request("blockchain.address.get_balance", vec![json!(MAINNET_ADDR)])
        .await
    {
        Err(ClientError::Address(m)) => assert!(m.contains("regtest"), "{m}"),
        other => panic!("{other:?}"),
    }
    let c = client.clone();
    let call = tokio::spawn(async move {
        c.call::<Value>("blockchain.address.get_balance", vec![json!(REGTEST_ADDR)])
            .await
    });
    // The refused call sent nothing: the first thing on the wire is the converted one.
    let (id, method, params) = peer.request().await;
    assert_eq!(
        (method.as_str(), params),
        ("blockchain.scripthash.get_balance", vec![json!(SCRIPTHASH)])
    );
    peer.reply(&id, json!({"confirmed": 5000000000u64, "unconfirmed": 0}))
        .await;
    assert_eq!(
        within(call).await.unwrap().unwrap()["confirmed"],
        5000000000u64
    );

    let c = client.clone();
    let sub = tokio::spawn(async move {
        c.subscribe("blockchain.address.subscribe", vec![json!(REGTEST_ADDR)])
            .await
    });
    let (id, method, params) = peer.request().await;
    assert_eq!(
        (method.as_str(), params),
        ("blockchain.scripthash.subscribe", vec![json!(SCRIPTHASH)])
    );
    peer.reply(&id, Value::Null).await;
    let (_, mut s) = within(sub).await.unwrap().unwrap();
    assert_eq!(s.key().method, "blockchain.scripthash.subscribe");
    peer.notify(
        "blockchain.scripthash.subscribe",
        json!([SCRIPTHASH, "abc"]),
    )
    .await;
    assert_eq!(within(s.next()).await, Some(json!("abc")));
}

// ---- TLS --------------------------------------------------------------------------------

struct TestCert {
    acceptor: tokio_rustls::TlsAcceptor,
    fingerprint: String,
}

fn test_cert() -> TestCert {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let der = ck.cert.der().clone();
    let fingerprint = sha256::Hash::hash(der.as_ref())
        .to_byte_array()
        .to_lower_hex_string();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![der], key)
    .unwrap();
    TestCert {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        fingerprint,
    }
}

#[tokio::test]
async fn tls_pinned_on_first_use_then_a_changed_certificate_is_refused() {
    let first = test_cert();
    let current = Arc::new(Mutex::new(first.acceptor.clone()));
    let mut server = Server::tls(current.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let pin_file = dir.path().join("pins.json");
    let mut cfg = config(server.url(Scheme::Ssl));
    cfg.tls = TlsMode::Pinned {
        pin_file: pin_file.clone(),
    };

    let (client, _peer) = connect(&mut server, cfg.clone()).await;
    client.close().await;
    let pins: Value = serde_json::from_str(&std::fs::read_to_string(&pin_file).unwrap()).unwrap();
    let server_key = format!("127.0.0.1:{}", server.addr.port());
    assert_eq!(pins[&server_key], json!(first.fingerprint));

    // Same certificate: accepted.
    let (client, _peer) = connect(&mut server, cfg.clone()).await;
    client.close().await;

    // Another certificate on the same host:port: refused.
    let second = test_cert();
    *current.lock().unwrap() = second.acceptor.clone();
    match within(Client::connect(cfg)).await {
        Err(ClientError::PinMismatch {
            server,
            expected,
            got,
        }) => {
            assert_eq!(server, server_key);
            assert_eq!(expected, first.fingerprint);
            assert_eq!(got, second.fingerprint);
        }
        other => panic!("expected PinMismatch, got {other:?}"),
    }
    // The pin was not replaced.
    let pins: Value = serde_json::from_str(&std::fs::read_to_string(&pin_file).unwrap()).unwrap();
    assert_eq!(pins[&server_key], json!(first.fingerprint));
}

#[tokio::test]
async fn tls_verified_refuses_a_self_signed_certificate_and_insecure_accepts_it() {
    let cert = test_cert();
    let mut server = Server::tls(Arc::new(Mutex::new(cert.acceptor))).await;
    let mut cfg = config(ServerUrl::new(Scheme::Ssl, "localhost", server.addr.port()));
    cfg.tls = TlsMode::Verified;
    match within(Client::connect(cfg.clone())).await {
        Err(ClientError::Tls(m)) => assert!(m.to_lowercase().contains("certificate"), "{m}"),
        other => panic!("expected a TLS error, got {other:?}"),
    }

    cfg.tls = TlsMode::Insecure;
    let (client, mut peer) = connect(&mut server, cfg).await;
    let c = client.clone();
    let call = tokio::spawn(async move { c.call::<String>("server.banner", vec![]).await });
    let (id, _, _) = peer.request().await;
    peer.reply(&id, json!("over tls")).await;
    assert_eq!(within(call).await.unwrap().unwrap(), "over tls");
}

// ---- WebSocket --------------------------------------------------------------------------

#[tokio::test]
async fn websocket_transport_carries_calls_and_notifications() {
    let mut server = Server::start(Kind::Ws).await;
    let (client, mut peer) = {
        let cfg = config(server.url(Scheme::Ws));
        connect(&mut server, cfg).await
    };
    let c = client.clone();
    let sub =
        tokio::spawn(async move { c.subscribe("blockchain.headers.subscribe", vec![]).await });
    let (id, method, _) = peer.request().await;
    assert_eq!(method, "blockchain.headers.subscribe");
    peer.reply(&id, json!({"hex": "00", "height": 1})).await;
    let (tip, mut tips) = within(sub).await.unwrap().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(tip.get()).unwrap()["height"],
        1
    );
    peer.notify(
        "blockchain.headers.subscribe",
        json!([{"hex": "01", "height": 2}]),
    )
    .await;
    assert_eq!(within(tips.next()).await.unwrap()["height"], 2);
}

// ---- SOCKS5 -----------------------------------------------------------------------------

/// What a SOCKS5 client asked for.
#[derive(Debug, PartialEq)]
struct SocksRequest {
    atyp: u8,
    host: String,
    port: u16,
    credentials: Option<(String, String)>,
}

/// A minimal SOCKS5 proxy that connects every request to `backend`, recording the request.
async fn socks5_proxy(
    backend: SocketAddr,
    require_password: bool,
) -> (SocketAddr, mpsc::UnboundedReceiver<SocksRequest>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 2];
                s.read_exact(&mut head).await.unwrap();
                assert_eq!(head[0], 5);
                let mut methods = vec![0u8; head[1] as usize];
                s.read_exact(&mut methods).await.unwrap();
                let mut credentials = None;
                if require_password {
                    assert!(methods.contains(&2), "client must offer username/password");
                    s.write_all(&[5, 2]).await.unwrap();
                    let mut b = [0u8; 2];
                    s.read_exact(&mut b).await.unwrap();
                    let mut user = vec![0u8; b[1] as usize];
                    s.read_exact(&mut user).await.unwrap();
                    let mut plen = [0u8; 1];
                    s.read_exact(&mut plen).await.unwrap();
                    let mut pass = vec![0u8; plen[0] as usize];
                    s.read_exact(&mut pass).await.unwrap();
                    s.write_all(&[1, 0]).await.unwrap();
                    credentials = Some((
                        String::from_utf8(user).unwrap(),
                        String::from_utf8(pass).unwrap(),
                    ));
                } else {
                    assert!(methods.contains(&0));
                    s.write_all(&[5, 0]).await.unwrap();
                }
                let mut req = [0u8; 4];
                s.read_exact(&mut req).await.unwrap();
                assert_eq!(&req[..3], &[5, 1, 0], "a CONNECT request");
                let host = match req[3] {
                    1 => {
                        let mut ip = [0u8; 4];
                        s.read_exact(&mut ip).await.unwrap();
                        std::net::Ipv4Addr::from(ip).to_string()
                    }
                    3 => {
                        let mut len = [0u8; 1];
                        s.read_exact(&mut len).await.unwrap();
                        let mut name = vec![0u8; len[0] as usize];
                        s.read_exact(&mut name).await.unwrap();
                        String::from_utf8(name).unwrap()
                    }
                    other => panic!("unexpected address type {other}"),
                };
                let mut port = [0u8; 2];
                s.read_exact(&mut port).await.unwrap();
                let _ = tx.send(SocksRequest {
                    atyp: req[3],
                    host,
                    port: u16::from_be_bytes(port),
                    credentials,
                });
                let mut upstream = TcpStream::connect(backend).await.unwrap();
                s.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 0])
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut s, &mut upstream).await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn socks5_proxy_receives_the_host_name_unresolved() {
    for with_password in [false, true] {
        let mut server = Server::tcp().await;
        let (proxy_addr, mut seen) = socks5_proxy(server.addr, with_password).await;
        // A name that cannot resolve locally: only the proxy may look it up.
        let mut cfg = config(ServerUrl::new(Scheme::Tcp, "electrum.invalid", 50001));
        let proxy = if with_password {
            format!("socks5://alice:secret@{proxy_addr}")
        } else {
            format!("socks5://{proxy_addr}")
        };
        cfg.proxy = Some(proxy.parse::<ProxyConfig>().unwrap());
        let (client, mut peer) = connect(&mut server, cfg).await;
        let req = within(seen.recv()).await.unwrap();
        assert_eq!(
            req,
            SocksRequest {
                atyp: 3,
                host: "electrum.invalid".into(),
                port: 50001,
                credentials: with_password.then(|| ("alice".into(), "secret".into())),
            }
        );
        let c = client.clone();
        let call = tokio::spawn(async move { c.call::<String>("server.banner", vec![]).await });
        let (id, _, _) = peer.request().await;
        peer.reply(&id, json!("via proxy")).await;
        assert_eq!(within(call).await.unwrap().unwrap(), "via proxy");
    }
}
