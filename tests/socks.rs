//! The client through a real SOCKS5 proxy (microsocks, the Debian package), with the target
//! host name resolved by the proxy, as Tor resolves `.onion` names.

mod common;

use common::programs::program;
use common::{until, Running, WAIT};
use electrum_gateway::client::{Client, ClientConfig, ProxyConfig};
use electrum_gateway::sim::{Sim, SimConfig, ADDRESSES};
use electrum_gateway::transport::{Scheme, ServerUrl};
use futures::StreamExt;
use serde_json::{json, Value};
use std::process::{Command, Stdio};

/// A running microsocks and its port.
struct Proxy {
    _process: Running,
    port: u16,
}

/// Starts microsocks on a free loopback port, failing the test when it is not installed.
async fn microsocks() -> Proxy {
    let bin = program("microsocks", "apt-get install microsocks");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start microsocks");
    let proxy = Proxy {
        _process: Running(child),
        port,
    };
    until("microsocks to accept connections", || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(drop)
    })
    .await;
    proxy
}

#[tokio::test]
#[ignore = "needs microsocks (apt-get install microsocks); run with: cargo test -- --include-ignored"]
async fn client_through_microsocks_with_remote_dns() {
    let proxy = microsocks().await;
    let sim = Sim::start(SimConfig::with_endpoints(&["127.0.0.1:0"]).unwrap())
        .await
        .unwrap();
    // "localhost" is sent to the proxy as a name and resolved there.
    let url = ServerUrl::new(Scheme::Tcp, "localhost", sim.url(0).port);
    let mut cfg = ClientConfig::new(url);
    cfg.proxy = Some(
        format!("socks5://127.0.0.1:{}", proxy.port)
            .parse::<ProxyConfig>()
            .unwrap(),
    );
    cfg.network = bitcoin::Network::Regtest;
    let client = tokio::time::timeout(WAIT, Client::connect(cfg))
        .await
        .unwrap()
        .unwrap();
    let tip: Value = client
        .call("blockchain.headers.subscribe", vec![])
        .await
        .unwrap();
    assert_eq!(tip["height"], sim.tip_height());
    let a = &ADDRESSES[1];
    let bal: Value = client
        .call("blockchain.address.get_balance", vec![json!(a.address)])
        .await
        .unwrap();
    let (confirmed, _) = sim.balance(a.scripthash).unwrap();
    assert_eq!(bal["confirmed"], confirmed);
    let (initial, mut stream) = client
        .subscribe("blockchain.scripthash.subscribe", vec![json!(a.scripthash)])
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(initial.get()).unwrap(),
        json!(sim.status(a.scripthash).unwrap())
    );
    sim.pay(a.address, 1_000).unwrap();
    let next = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next, json!(sim.status(a.scripthash).unwrap()));
    client.close().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_dead_proxy_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = ClientConfig::new(ServerUrl::new(Scheme::Tcp, "example.onion", 50001));
    cfg.proxy = Some(format!("socks5://127.0.0.1:{port}").parse().unwrap());
    let err = tokio::time::timeout(WAIT, Client::connect(cfg))
        .await
        .unwrap()
        .unwrap_err();
    let msg = err.to_string().to_lowercase();
    assert!(msg.contains("proxy") || msg.contains("connect"), "{msg}");
}
