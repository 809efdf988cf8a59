//! PROXY protocol on the wallet listener: a balancer's header names the client, only from the
//! configured source networks.
//!
//! The gateway program runs with debug-level JSON logs, where each session logs its client's
//! address: that is what the tests read to see which address the gateway took.

mod common;

use common::process::{config_toml, GatewayProcess};
use common::Wallet;
use electrum_gateway::sim::{Sim, SimConfig};
use serde_json::json;
use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

fn v2_header(client: &str, to: SocketAddr) -> Vec<u8> {
    let client: SocketAddr = client.parse().unwrap();
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (client, to),
    )
    .build()
    .unwrap()
}

async fn version(w: &mut Wallet) {
    let v = w.call("server.version", json!(["pp-test", "1.4"])).await;
    assert_eq!(v[1], "1.4");
}

#[tokio::test]
async fn headers_name_the_client_only_from_listed_sources() {
    common::init_logs();
    let sim = Sim::start(SimConfig::with_endpoints(&["127.0.0.1:0"]).unwrap())
        .await
        .unwrap();
    let urls: Vec<String> = sim.urls().iter().map(|u| u.to_string()).collect();
    let dir = tempfile::tempdir().unwrap();
    let config = config_toml(
        &urls,
        "127.0.0.1:0",
        "127.0.0.1:0",
        "proxy_protocol_from = [\"127.0.0.1/32\"]",
    );
    let gw = GatewayProcess::start(&config, dir.path()).await;
    let logged = |peer: SocketAddr| {
        move |v: &serde_json::Value| {
            v["fields"]["message"] == "wallet connected"
                && v["fields"]["peer"] == json!(peer.to_string())
        }
    };

    // From the balancer's network, a v2 header names the client.
    let mut s = connect_from("127.0.0.1", gw.tcp).await;
    s.write_all(&v2_header("203.0.113.7:4242", gw.tcp))
        .await
        .unwrap();
    let mut w = Wallet::from_stream(s);
    version(&mut w).await;
    gw.wait_log("v2 client", logged("203.0.113.7:4242".parse().unwrap()))
        .await;

    // A v1 header too, with the wallet's first request in the same write: nothing of it is
    // lost to the header.
    let mut s = connect_from("127.0.0.1", gw.tcp).await;
    s.write_all(
        b"PROXY TCP6 2001:db8::5 ::1 5555 50001\r\n{\"id\":7,\"method\":\"server.ping\",\"params\":[]}\n",
    )
    .await
    .unwrap();
    let mut w = Wallet::from_stream(s);
    let r = w.response(7).await;
    assert!(r.get("result").is_some(), "{r}");
    gw.wait_log("v1 client", logged("[2001:db8::5]:5555".parse().unwrap()))
        .await;

    // From the balancer's network without a header: bad input, closed without an answer.
    // (One write: the gateway may close before a second one, with a reset.)
    let mut s = connect_from("127.0.0.1", gw.tcp).await;
    s.write_all(b"{\"id\":1,\"method\":\"server.ping\",\"params\":[]}\n")
        .await
        .unwrap();
    let mut w = Wallet::from_stream(s);
    assert!(w.read_message().await.is_none());

    // From anywhere else, a direct client: its own address, no header read.
    let s = connect_from("127.0.0.2", gw.tcp).await;
    let direct = s.local_addr().unwrap();
    let mut w = Wallet::from_stream(s);
    version(&mut w).await;
    gw.wait_log("direct client", logged(direct)).await;
    // A header from there is only a line that is not JSON.
    w.send_line("PROXY TCP4 198.51.100.1 127.0.0.1 1 2").await;
    let r = w.read_message().await.expect("an answer");
    assert!(r["error"]["code"].is_number(), "{r}");
    version_after_error(&mut w).await;

    let peers = gw.wallet_peers();
    assert!(
        !peers
            .iter()
            .any(|p| p.ip() == std::net::Ipv4Addr::LOCALHOST),
        "the balancer's own address was taken for a client: {peers:?}"
    );
}

/// The connection stays usable after a bad line.
async fn version_after_error(w: &mut Wallet) {
    let r = w.call("server.ping", json!([])).await;
    assert!(r.is_null(), "{r}");
}
