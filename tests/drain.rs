//! Graceful stop: `Gateway::drain` in-process, and SIGTERM / SIGINT to the program.
//!
//! A drain closes the wallet listeners, answers 503 "draining" on `/health` while the HTTP
//! listener keeps serving, answers the requests in flight before closing each session, saves
//! the state once at the end, and gives up on sessions still busy after the grace period.

mod common;

use common::process::{config_toml, GatewayProcess};
use common::{until, Net, Wallet};
use electrum_gateway::sim::{Faults, Sim, SimConfig, ADDRESSES};
use serde_json::json;
use std::time::Duration;
use tokio::net::TcpStream;

/// Sends a read that goes to the upstreams, then a ping the gateway answers itself: once the
/// ping's answer is back, the read has been read and is in flight. Returns the read's id.
async fn read_in_flight(w: &mut Wallet) -> i64 {
    let id = w
        .send(
            "blockchain.scripthash.get_balance",
            json!([ADDRESSES[1].scripthash]),
        )
        .await;
    let ping = w.send("server.ping", json!([])).await;
    let pong = w.response(ping).await;
    assert!(pong.get("result").is_some(), "{pong}");
    id
}

/// Waits until the periodic save wrote `upstreams.json`, then removes it: only a later save
/// can bring it back.
async fn remove_first_save(data_dir: &std::path::Path) -> std::path::PathBuf {
    let state = data_dir.join("upstreams.json");
    until("the first state save", || async {
        state.exists().then_some(())
    })
    .await;
    std::fs::remove_file(&state).unwrap();
    state
}

#[tokio::test]
async fn drain_answers_requests_in_flight_then_closes_and_saves_once() {
    let net = Net::start_http(&["127.0.0.1:0", "127.0.0.1:0"]).await;
    let mut idle = net.wallet().await;
    let mut subscribed = net.wallet().await;
    subscribed
        .call("blockchain.headers.subscribe", json!([]))
        .await;
    let mut busy = net.wallet().await;
    let state = remove_first_save(&net.gw.config().data_dir).await;
    assert_eq!(net.get("/health").await.status, 200);
    set_latency(&net.sim, 700);
    let id = read_in_flight(&mut busy).await;
    let addr = net.addr();

    let (drained, ()) = tokio::join!(net.gw.drain(Duration::from_secs(20)), async {
        // The balancer's view: draining, while the HTTP listener still serves.
        let health = until("/health draining", || async {
            let r = net.get("/health").await;
            (r.status == 503).then_some(r.json())
        })
        .await;
        assert_eq!(health["status"], "draining", "{health}");
        assert!(net.gw.is_draining());
        // No new wallet is taken.
        until("the wallet listener closed", || async {
            TcpStream::connect(addr).await.is_err().then_some(())
        })
        .await;
        // Sessions with nothing in flight are closed at once.
        assert!(idle.read_message().await.is_none());
        assert!(subscribed.read_message().await.is_none());
        // The state is saved once the sessions have ended, not while one is busy.
        assert!(!state.exists());
        // The request in flight is answered, then the session closes.
        let r = busy.response(id).await;
        assert!(r["result"]["confirmed"].is_number(), "{r}");
        assert!(busy.read_message().await.is_none());
    });
    assert_eq!(drained.sessions_cut, 0);
    assert!(drained.elapsed < Duration::from_secs(20));
    assert_eq!(net.gw.sessions(), 0);
    assert!(
        state.exists(),
        "upstreams.json written at the end of the drain"
    );
}

#[tokio::test]
async fn drain_closes_sessions_still_busy_after_the_grace_period() {
    let net = Net::start_http(&["127.0.0.1:0", "127.0.0.1:0"]).await;
    let mut busy = net.wallet().await;
    let state = remove_first_save(&net.gw.config().data_dir).await;
    set_latency(&net.sim, 10_000);
    read_in_flight(&mut busy).await;
    let grace = Duration::from_millis(300);
    let drained = net.gw.drain(grace).await;
    assert_eq!(drained.sessions_cut, 1);
    assert!(drained.elapsed >= grace && drained.elapsed < Duration::from_secs(5));
    // Closed without the answer.
    assert!(busy.read_message().await.is_none());
    assert!(state.exists());
}

/// A simulator with two endpoints, and a gateway program in front of it.
async fn sim_and_gateway(dir: &std::path::Path, drain_secs: f64) -> (Sim, GatewayProcess) {
    common::init_logs();
    let sim = Sim::start(SimConfig::with_endpoints(&["127.0.0.1:0", "127.0.0.1:0"]).unwrap())
        .await
        .unwrap();
    let urls: Vec<String> = sim.urls().iter().map(|u| u.to_string()).collect();
    let config = config_toml(
        &urls,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &format!("drain_secs = {drain_secs:?}"),
    );
    let gw = GatewayProcess::start(&config, dir).await;
    gw.wait_healthy().await;
    (sim, gw)
}

async fn wallet(addr: std::net::SocketAddr) -> Wallet {
    let mut w = Wallet::connect(addr).await;
    w.call("server.version", json!(["drain-test", "1.4"])).await;
    w
}

fn set_latency(sim: &Sim, ms: u64) {
    for i in 0..2 {
        sim.set_faults(
            i,
            Faults {
                latency_ms: ms,
                ..Faults::default()
            },
        );
    }
}

#[tokio::test]
async fn sigterm_drains_answers_in_flight_saves_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, mut gw) = sim_and_gateway(dir.path(), 20.0).await;
    let mut idle = wallet(gw.tcp).await;
    let mut busy = wallet(gw.tcp).await;
    let state = remove_first_save(&gw.data_dir).await;
    set_latency(&sim, 700);
    let id = read_in_flight(&mut busy).await;

    gw.signal(libc::SIGTERM);
    let health = until("/health draining", || async {
        let (code, body) = gw.health().await;
        (code == 503).then_some(body)
    })
    .await;
    assert_eq!(health["status"], "draining", "{health}");
    assert!(idle.read_message().await.is_none());
    let r = busy.response(id).await;
    assert!(r["result"]["confirmed"].is_number(), "{r}");
    assert!(busy.read_message().await.is_none());
    let status = gw.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(state.exists(), "upstreams.json saved before the exit");
}

#[tokio::test]
async fn sigint_drains_too_and_a_second_signal_stops_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, mut gw) = sim_and_gateway(dir.path(), 60.0).await;
    let mut busy = wallet(gw.tcp).await;
    let state = remove_first_save(&gw.data_dir).await;
    set_latency(&sim, 30_000);
    read_in_flight(&mut busy).await;

    gw.signal(libc::SIGINT);
    until("/health draining", || async {
        (gw.health().await.0 == 503).then_some(())
    })
    .await;
    // The drain would wait up to a minute for the slow answer; a second signal ends it now.
    let started = std::time::Instant::now();
    gw.signal(libc::SIGTERM);
    let status = gw.wait_exit().await;
    assert_eq!(status.code(), Some(1), "{status}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(busy.read_message().await.is_none());
    assert!(
        state.exists(),
        "upstreams.json saved even when stopped at once"
    );
}
