//! The binary itself: `demo` brings up a working offline network, `sim` serves a chain, and
//! bad configuration fails clearly.

mod common;

use common::{Running, Wallet, WAIT};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_electrum-gateway");

/// Starts the binary and returns it with the first stdout line that contains `marker`.
fn start(args: &[&str], marker: &'static str) -> (Running, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(marker) {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(WAIT)
        .expect("the binary printed its address");
    (running, line)
}

fn addr_after(line: &str, prefix: &str) -> std::net::SocketAddr {
    let at = line.find(prefix).expect("prefix") + prefix.len();
    line[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn demo_serves_a_wallet_offline() {
    let (_demo, line) = start(
        &[
            "demo",
            "--listen-tcp",
            "127.0.0.1:0",
            "--listen-tls",
            "",
            "--http",
            "",
        ],
        "Gateway for wallets:",
    );
    let addr = addr_after(&line, "tcp://");
    let mut w = Wallet::connect(addr).await;
    let v = w
        .call("server.version", json!(["demo-test", ["1.4", "1.6"]]))
        .await;
    assert_eq!(v[1], "1.6");
    // The gateway answers headers once it has its upstreams' tip.
    let deadline = tokio::time::Instant::now() + WAIT;
    let tip = loop {
        let id = w.send("blockchain.headers.subscribe", json!([])).await;
        let r = w.response(id).await;
        if let Some(t) = r.get("result") {
            break t.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no tip: {r}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(tip["height"].as_u64().unwrap() >= 100);
    let f = w.call("server.features", json!([])).await;
    assert_eq!(
        f["genesis_hash"],
        "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
    );
}

#[tokio::test]
async fn sim_command_answers_and_mines() {
    let (_sim, line) = start(&["sim", "--listen", "127.0.0.1:0"], "tcp://");
    let addr = addr_after(&line, "tcp://");
    let mut w = Wallet::connect(addr).await;
    let tip = w.call("blockchain.headers.subscribe", json!([])).await;
    let height = tip["height"].as_u64().unwrap();
    let new = w.call("sim.mine", json!([1])).await;
    assert_eq!(new, json!(height + 1));
    let n = w
        .notification_until("blockchain.headers.subscribe", |_| true)
        .await;
    assert_eq!(n["params"][0]["height"], json!(height + 1));
    let hex = n["params"][0]["hex"].as_str().unwrap();
    let bytes: Vec<u8> = (0..80)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let header: bitcoin::block::Header = bitcoin::consensus::deserialize(&bytes).unwrap();
    header
        .validate_pow(header.target())
        .expect("valid proof of work");
    assert_eq!(header.prev_blockhash.to_string().len(), 64);
}

#[test]
fn bad_configuration_fails_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "network = \"moon\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("moon"), "{err}");
    let out = Command::new(BIN)
        .args(["--upstream", "ftp://x:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ftp://x:1"));
}
