//! The client library against the simulated server over every transport: TCP, TLS (pinned on
//! first use, a changed certificate refused), WebSocket and WebSocket over TLS; reconnect with
//! re-subscription across a killed server; calls in flight failing at once on disconnect.

use electrum_gateway::client::{
    Backoff, Client, ClientConfig, ClientError, ClientEvent, StatusSink, TlsMode,
};
use electrum_gateway::sim::{Faults, Sim, SimConfig, ADDRESSES};
use electrum_gateway::transport::ServerUrl;
use futures::StreamExt;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn config(url: ServerUrl, pins: &Path) -> ClientConfig {
    let mut c = ClientConfig::new(url);
    c.network = bitcoin::Network::Regtest;
    c.tls = TlsMode::Pinned {
        pin_file: pins.join("pins.json"),
    };
    c.reconnect = Some(Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        factor: 2.0,
        jitter: 0.2,
    });
    c
}

async fn exercise(client: &Client, sim: &Sim) {
    let tip: Value = client
        .call("blockchain.headers.subscribe", vec![])
        .await
        .unwrap();
    assert_eq!(tip["hex"], json!(sim.tip_header_hex()));
    let a = &ADDRESSES[3];
    let hist: Value = client
        .call("blockchain.address.get_history", vec![json!(a.address)])
        .await
        .unwrap();
    assert_eq!(hist, sim.history_json(a.scripthash).unwrap());
    let answers = client
        .batch(vec![
            ("blockchain.block.header".into(), vec![json!(1)]),
            (
                "blockchain.scripthash.get_balance".into(),
                vec![json!(a.scripthash)],
            ),
            ("no.such.method".into(), vec![]),
        ])
        .await
        .unwrap();
    assert_eq!(
        answers[0].as_ref().unwrap().get(),
        format!("\"{}\"", sim.header_hex(1).unwrap())
    );
    assert!(answers[1].is_ok());
    assert_eq!(answers[2].as_ref().unwrap_err().code, -32601);
}

#[tokio::test]
async fn every_transport_against_the_sim() {
    let sim = Sim::start(
        SimConfig::with_endpoints(&[
            "127.0.0.1:0",
            "ssl://127.0.0.1:0",
            "ws://127.0.0.1:0",
            "wss://127.0.0.1:0",
        ])
        .unwrap(),
    )
    .await
    .unwrap();
    let pins = tempfile::tempdir().unwrap();
    for i in 0..4 {
        let client = Client::connect(config(sim.url(i), pins.path()))
            .await
            .unwrap();
        assert!(client.server_info().unwrap().software.contains("sim"));
        exercise(&client, &sim).await;
        client.close().await;
    }
    // Both TLS endpoints were pinned on first use.
    let pinned: Value =
        serde_json::from_slice(&std::fs::read(pins.path().join("pins.json")).unwrap()).unwrap();
    assert_eq!(pinned.as_object().unwrap().len(), 2, "{pinned}");
}

#[tokio::test]
async fn a_changed_certificate_is_refused() {
    let pins = tempfile::tempdir().unwrap();
    let first = Sim::start(SimConfig::with_endpoints(&["ssl://127.0.0.1:0"]).unwrap())
        .await
        .unwrap();
    let url = first.url(0);
    let c = Client::connect(config(url.clone(), pins.path()))
        .await
        .unwrap();
    c.close().await;
    first.shutdown().await;
    // Another server (a new self-signed certificate) on the same host and port.
    let second = Sim::start(SimConfig::with_endpoints(&[&url.to_string()]).unwrap())
        .await
        .unwrap();
    match Client::connect(config(url.clone(), pins.path())).await {
        Err(ClientError::PinMismatch { expected, got, .. }) => assert_ne!(expected, got),
        other => panic!("expected a pin mismatch, got {:?}", other.map(|_| ())),
    }
    // Verification against public CAs refuses a self-signed certificate outright.
    let mut ca = config(url, pins.path());
    ca.tls = TlsMode::Verified;
    assert!(Client::connect(ca).await.is_err());
    second.shutdown().await;
}

#[tokio::test]
async fn reconnect_resubscribes_and_delivers_what_changed_meanwhile() {
    let sim = Sim::start(SimConfig::with_endpoints(&["127.0.0.1:0"]).unwrap())
        .await
        .unwrap();
    let pins = tempfile::tempdir().unwrap();
    let client = Client::connect(config(sim.url(0), pins.path()))
        .await
        .unwrap();
    let mut events = client.events();
    let a = &ADDRESSES[5];
    let (_, mut statuses) = client
        .subscribe("blockchain.scripthash.subscribe", vec![json!(a.scripthash)])
        .await
        .unwrap();
    let (_, mut headers) = client
        .subscribe("blockchain.headers.subscribe", vec![])
        .await
        .unwrap();
    sim.stop_endpoint(0).await;
    // While the server is down the address is paid and a block mined.
    sim.pay(a.address, 77_000).unwrap();
    let height = sim.mine(1);
    sim.start_endpoint(0).await.unwrap();
    let resubscribed = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(ClientEvent::Resubscribed { count }) = events.recv().await {
                return count;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(resubscribed, 2);
    let status = tokio::time::timeout(WAIT, statuses.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, json!(sim.status(a.scripthash).unwrap()));
    let header = tokio::time::timeout(WAIT, headers.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(header["height"], height);
    client.close().await;
}

/// A client with a request timeout far beyond any test (reconnecting or not) on a server that
/// has just stopped answering.
async fn stalled(reconnect: bool) -> (Sim, tempfile::TempDir, Client) {
    let sim = Sim::start(SimConfig::with_endpoints(&["127.0.0.1:0"]).unwrap())
        .await
        .unwrap();
    let pins = tempfile::tempdir().unwrap();
    let mut cfg = config(sim.url(0), pins.path());
    if !reconnect {
        cfg.reconnect = None;
    }
    cfg.request_timeout = Duration::from_secs(600);
    let client = Client::connect(cfg).await.unwrap();
    sim.set_faults(
        0,
        Faults {
            stall: true,
            ..Faults::default()
        },
    );
    (sim, pins, client)
}

#[tokio::test]
async fn calls_in_flight_fail_at_once_when_the_server_dies() {
    let (sim, _pins, client) = stalled(false).await;
    let pending = {
        let client = client.clone();
        tokio::spawn(async move { client.request("server.ping", vec![]).await })
    };
    // The request is on the wire and unanswered; now the server dies.
    let deadline = tokio::time::Instant::now() + WAIT;
    while sim.requests(0) == 0 && tokio::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
    sim.stop_endpoint(0).await;
    let res = tokio::time::timeout(WAIT, pending)
        .await
        .expect("no hang")
        .unwrap();
    assert!(matches!(res, Err(ClientError::Disconnected(_))), "{res:?}");
}

/// A server that holds small answers back (ElectrumX 1.18+: after the first kilobyte, output
/// waits for a kilobyte or a second) answers a lone request within a second only when the
/// client nudges it; the nudge is on by default for ElectrumX.
#[tokio::test]
async fn answers_held_back_by_the_server_are_nudged_out() {
    let sim = Sim::start(
        SimConfig::with_endpoints(&["127.0.0.1:0,hold-back,software=ElectrumX 1.18.0"]).unwrap(),
    )
    .await
    .unwrap();
    let pins = tempfile::tempdir().unwrap();
    let a = &ADDRESSES[2];
    let (confirmed, unconfirmed) = sim.balance(a.scripthash).unwrap();
    let expected = json!({"confirmed": confirmed, "unconfirmed": unconfirmed});
    for nudge in [true, false] {
        let mut c = config(sim.url(0), pins.path());
        // Well below the server's second of holding back.
        c.request_timeout = Duration::from_millis(600);
        if !nudge {
            c.hold_back_nudge = None;
        }
        let client = Client::connect(c).await.unwrap();
        // Past the first kilobyte, which goes out at once.
        let warm: Value = client
            .call("blockchain.block.headers", vec![json!(0), json!(20)])
            .await
            .unwrap();
        assert_eq!(warm["count"], json!(20));
        for _ in 0..5 {
            let answer: Result<Value, _> = client
                .call(
                    "blockchain.scripthash.get_balance",
                    vec![json!(a.scripthash)],
                )
                .await;
            if nudge {
                assert_eq!(answer.unwrap(), expected);
            } else {
                assert!(
                    matches!(answer, Err(ClientError::Timeout)),
                    "without a nudge the answer is held: {answer:?}"
                );
                break;
            }
        }
    }
}

/// Records what a [`StatusSink`] is told.
#[derive(Default)]
struct Recorder {
    statuses: std::sync::Mutex<Vec<(String, Value)>>,
    lost: std::sync::atomic::AtomicUsize,
    changed: tokio::sync::Notify,
}

impl StatusSink for Recorder {
    fn status(&self, scripthash: &str, status: &Value) -> bool {
        self.statuses
            .lock()
            .unwrap()
            .push((scripthash.to_string(), status.clone()));
        self.changed.notify_waiters();
        true
    }

    fn lost(&self) {
        self.lost.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

impl Recorder {
    /// Waits until `done` holds of what was recorded.
    async fn until(&self, done: impl Fn(&Recorder) -> bool) {
        tokio::time::timeout(WAIT, async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if done(self) {
                    return;
                }
                changed.await;
            }
        })
        .await
        .expect("the sink was told in time");
    }
}

#[tokio::test]
async fn plain_subscriptions_reach_the_status_sink_until_the_connection_is_lost() {
    let sim = Sim::start(SimConfig::with_endpoints(&["127.0.0.1:0"]).unwrap())
        .await
        .unwrap();
    let pins = tempfile::tempdir().unwrap();
    let client = Client::connect(config(sim.url(0), pins.path()))
        .await
        .unwrap();
    let sink = std::sync::Arc::new(Recorder::default());
    assert!(client.set_status_sink(sink.clone()));
    assert!(!client.set_status_sink(sink.clone()), "one sink per client");
    let (a, b) = (&ADDRESSES[1], &ADDRESSES[2]);
    for sh in [a.scripthash, b.scripthash] {
        let initial = client
            .request_within(
                "blockchain.scripthash.subscribe",
                vec![json!(sh)],
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        let initial: Value = serde_json::from_str(initial.get()).unwrap();
        assert_eq!(initial, json!(sim.status(sh).unwrap()));
    }
    // A change of each reaches the sink with its scripthash.
    sim.pay(a.address, 10_000).unwrap();
    sim.pay(b.address, 20_000).unwrap();
    let mut want = vec![
        (
            a.scripthash.to_string(),
            json!(sim.status(a.scripthash).unwrap()),
        ),
        (
            b.scripthash.to_string(),
            json!(sim.status(b.scripthash).unwrap()),
        ),
    ];
    sink.until(|s| s.statuses.lock().unwrap().len() >= 2).await;
    let mut got = sink.statuses.lock().unwrap().clone();
    got.sort_by(|x, y| x.0.cmp(&y.0));
    want.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(got, want);
    // Unsubscribed without waiting: a later change of `a` is not sent, `b`'s still is.
    assert!(client.cast(
        "blockchain.scripthash.unsubscribe",
        vec![json!(a.scripthash)]
    ));
    let before = sim.requests(0);
    while sim.requests(0) == before {
        tokio::task::yield_now().await;
    }
    sim.pay(a.address, 30_000).unwrap();
    sim.pay(b.address, 40_000).unwrap();
    let last_b = json!(sim.status(b.scripthash).unwrap());
    sink.until(|s| s.statuses.lock().unwrap().len() >= 3).await;
    let got = sink.statuses.lock().unwrap().clone();
    assert_eq!(got[2..], [(b.scripthash.to_string(), last_b)]);
    // The server goes away: the sink hears that its subscriptions are gone.
    sim.stop_endpoint(0).await;
    sink.until(|s| s.lost.load(std::sync::atomic::Ordering::SeqCst) >= 1)
        .await;
    client.close().await;
}

#[tokio::test]
async fn a_request_within_a_limit_times_out_at_the_limit() {
    let (_sim, _pins, client) = stalled(true).await;
    let res = tokio::time::timeout(
        WAIT,
        client.request_within("server.ping", vec![], Duration::from_millis(50)),
    )
    .await
    .expect("the limit, not the client's request timeout, applies");
    assert!(matches!(res, Err(ClientError::Timeout)), "{res:?}");
}
