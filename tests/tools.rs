//! The `call`, `subscribe` and `spider` commands, run as the real binary against simulated
//! servers on loopback.
//!
//! Every child gets its own `HOME` (so default pin files land in a temporary directory) and
//! `RUST_LOG=warn` (so stderr holds only what the tools themselves print).

use electrum_gateway::client::tls::fingerprint;
use electrum_gateway::config::Config;
use electrum_gateway::gateway::Gateway;
use electrum_gateway::servers::ServerList;
use electrum_gateway::sim::{Sim, SimConfig, ADDRESSES};
use electrum_gateway::tools::spider::{crawl, SpiderOptions, Verdict};
use electrum_gateway::transport::ServerUrl;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::timeout;

/// Long enough for anything on a loaded machine; only reached when something is broken.
const WAIT: Duration = Duration::from_secs(60);

const REGTEST_GENESIS: &str = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206";

fn tool(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_electrum-gateway"));
    c.env("HOME", home)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// Runs the tool to completion.
async fn run(home: &Path, args: &[&str]) -> Output {
    timeout(WAIT, tool(home).args(args).output())
        .await
        .expect("the tool did not finish in time")
        .expect("the tool runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the exit code, showing the output when it differs.
fn assert_code(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}

fn json_out(o: &Output) -> Value {
    serde_json::from_str(&stdout(o))
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", stdout(o)))
}

async fn sim(endpoints: &[&str]) -> Sim {
    Sim::start(SimConfig::with_endpoints(endpoints).unwrap())
        .await
        .unwrap()
}

/// `n` distinct ports on `ip` where nothing listens (until someone binds them).
fn free_ports(ip: &str, n: usize) -> Vec<u16> {
    let held: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind((ip, 0)).unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A port on `ip` where nothing listens.
fn closed_port(ip: &str) -> u16 {
    free_ports(ip, 1)[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_prints_results_as_json() {
    let home = tempfile::tempdir().unwrap();
    let sim = sim(&["127.0.0.1:0"]).await;
    let server = sim.url(0).to_string();

    let o = run(
        home.path(),
        &["call", "--server", &server, "blockchain.block.header", "5"],
    )
    .await;
    assert_code(&o, 0);
    assert_eq!(json_out(&o), json!(sim.header_hex(5).unwrap()));

    let o = run(
        home.path(),
        &["call", "--server", &server, "blockchain.headers.subscribe"],
    )
    .await;
    assert_code(&o, 0);
    let tip = json_out(&o);
    assert_eq!(tip["height"], json!(sim.tip_height()));
    assert_eq!(tip["hex"], json!(sim.tip_header_hex()));
    // Pretty-printed: one key per line.
    assert!(stdout(&o).lines().count() >= 4, "{}", stdout(&o));

    // `false` goes out as a boolean (the server refuses a string for `verbose`).
    let txid = sim.block_txids(1).unwrap()[0].to_string();
    let o = run(
        home.path(),
        &[
            "call",
            "--server",
            &server,
            "blockchain.transaction.get",
            &txid,
            "false",
        ],
    )
    .await;
    assert_code(&o, 0);
    assert_eq!(
        json_out(&o),
        json!(sim.tx_hex(&sim.block_txids(1).unwrap()[0]).unwrap())
    );

    // --raw sends "false" as a string, which the server refuses for `verbose`.
    let o = run(
        home.path(),
        &[
            "call",
            "--raw",
            "--server",
            &server,
            "blockchain.transaction.get",
            &txid,
            "false",
        ],
    )
    .await;
    assert_code(&o, 1);
    assert!(stderr(&o).contains("boolean"), "{}", stderr(&o));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_converts_addresses_on_the_servers_network() {
    let home = tempfile::tempdir().unwrap();
    let sim = sim(&["127.0.0.1:0"]).await;
    let server = sim.url(0).to_string();
    let a = &ADDRESSES[0];
    let (confirmed, unconfirmed) = sim.balance(a.scripthash).unwrap();
    let want = json!({"confirmed": confirmed, "unconfirmed": unconfirmed});

    // The network comes from the server's genesis hash, or from --network.
    for extra in [&[][..], &["--network", "regtest"][..]] {
        let mut args = vec!["call", "--server", &server];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["blockchain.address.get_balance", a.address]);
        let o = run(home.path(), &args).await;
        assert_code(&o, 0);
        assert_eq!(json_out(&o), want);
    }
    let o = run(
        home.path(),
        &[
            "call",
            "--server",
            &server,
            "blockchain.address.get_history",
            a.address,
        ],
    )
    .await;
    assert_code(&o, 0);
    assert_eq!(json_out(&o), sim.history_json(a.scripthash).unwrap());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_exit_codes_tell_errors_apart() {
    let home = tempfile::tempdir().unwrap();
    let sim = sim(&["127.0.0.1:0"]).await;
    let server = sim.url(0).to_string();
    let dead = format!("tcp://127.0.0.1:{}", closed_port("127.0.0.1"));

    // Bad server: nothing listens.
    let o = run(home.path(), &["call", "--server", &dead, "server.ping"]).await;
    assert_code(&o, 3);
    assert!(
        stderr(&o).starts_with("error: cannot connect"),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).is_empty());

    // Bad method: the server's error, with its code.
    let o = run(
        home.path(),
        &["call", "--server", &server, "no.such.method"],
    )
    .await;
    assert_code(&o, 1);
    assert!(stderr(&o).contains("-32601"), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());

    // Other RPC errors: an unknown transaction.
    let o = run(
        home.path(),
        &[
            "call",
            "--server",
            &server,
            "blockchain.transaction.get",
            &"00".repeat(32),
        ],
    )
    .await;
    assert_code(&o, 1);
    assert!(
        stderr(&o).starts_with("error: server error"),
        "{}",
        stderr(&o)
    );

    // Bad address: refused before connecting (the dead server is never reached).
    let o = run(
        home.path(),
        &[
            "call",
            "--server",
            &dead,
            "blockchain.address.get_balance",
            "notanaddress",
        ],
    )
    .await;
    assert_code(&o, 2);
    assert!(stderr(&o).contains("invalid address"), "{}", stderr(&o));

    // Wrong network: a mainnet address on the regtest server ...
    let o = run(
        home.path(),
        &[
            "call",
            "--server",
            &server,
            "blockchain.address.get_balance",
            "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa",
        ],
    )
    .await;
    assert_code(&o, 2);
    assert!(
        stderr(&o).contains("not valid on regtest"),
        "{}",
        stderr(&o)
    );
    // ... or a server that is not on the network asked for.
    let o = run(
        home.path(),
        &[
            "call",
            "--server",
            &server,
            "--network",
            "bitcoin",
            "blockchain.address.get_balance",
            "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa",
        ],
    )
    .await;
    assert_code(&o, 2);
    assert!(stderr(&o).contains("wrong network"), "{}", stderr(&o));
    assert!(stderr(&o).contains("is on regtest"), "{}", stderr(&o));

    // Usage: a bad URL, a bad network name, a missing method.
    for args in [
        &["call", "--server", "ftp://x:1", "server.ping"][..],
        &[
            "call",
            "--server",
            &server,
            "--network",
            "dogecoin",
            "server.ping",
        ][..],
        &["call", "--server", &server][..],
    ] {
        let o = run(home.path(), args).await;
        assert_code(&o, 2);
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_over_tls_pins_or_verifies() {
    let home = tempfile::tempdir().unwrap();
    let sim = sim(&["ssl://127.0.0.1:0"]).await;
    let server = sim.url(0).to_string();
    let cert = fingerprint(&sim.cert_der().unwrap());

    // Default: pinned on first use in ~/.electrum-gateway/pins.json.
    let o = run(home.path(), &["call", "--server", &server, "server.ping"]).await;
    assert_code(&o, 0);
    assert_eq!(json_out(&o), Value::Null);
    let pins: Value = serde_json::from_str(
        &std::fs::read_to_string(home.path().join(".electrum-gateway/pins.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(pins[sim.url(0).authority()], json!(cert));

    // A different pin is refused.
    let pin_file = home.path().join("other-pins.json");
    std::fs::write(
        &pin_file,
        json!({ sim.url(0).authority(): "00".repeat(32) }).to_string(),
    )
    .unwrap();
    let o = run(
        home.path(),
        &[
            "call",
            "--server",
            &server,
            "--pin-file",
            pin_file.to_str().unwrap(),
            "server.ping",
        ],
    )
    .await;
    assert_code(&o, 3);
    assert!(stderr(&o).contains("certificate"), "{}", stderr(&o));

    // A self-signed certificate fails CA verification, and passes with checks off.
    let o = run(
        home.path(),
        &[
            "call",
            "--server",
            &server,
            "--tls-verify",
            "ca",
            "server.ping",
        ],
    )
    .await;
    assert_code(&o, 3);
    let o = run(
        home.path(),
        &[
            "call",
            "--server",
            &server,
            "--tls-verify",
            "insecure",
            "server.ping",
        ],
    )
    .await;
    assert_code(&o, 0);
    sim.shutdown().await;
}

/// A running `subscribe` whose stdout is read line by line.
struct Watcher {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Watcher {
    fn spawn(home: &Path, args: &[&str]) -> Watcher {
        let mut child = tool(home)
            .arg("subscribe")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Watcher { child, lines }
    }

    async fn line(&mut self) -> String {
        timeout(WAIT, self.lines.next_line())
            .await
            .expect("no line in time")
            .unwrap()
            .expect("stdout closed")
    }

    /// Reads lines until one satisfies `want` (other changes may come first).
    async fn line_where(&mut self, want: impl Fn(&str) -> bool) -> String {
        loop {
            let line = self.line().await;
            if want(&line) {
                return line;
            }
        }
    }

    /// Sends SIGINT, as ctrl-c does, and returns the exit code.
    async fn interrupt(mut self) -> Option<i32> {
        let pid = self.child.id().unwrap().to_string();
        let status = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        timeout(WAIT, self.child.wait())
            .await
            .expect("did not exit after SIGINT")
            .unwrap()
            .code()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_json_prints_initial_state_then_notifications() {
    let home = tempfile::tempdir().unwrap();
    let sim = sim(&["127.0.0.1:0"]).await;
    let server = sim.url(0).to_string();
    let a = ADDRESSES[2];
    let mut w = Watcher::spawn(
        home.path(),
        &["--server", &server, "--json", "--headers", a.address],
    );

    let first: Value = serde_json::from_str(&w.line().await).unwrap();
    let height = sim.tip_height();
    assert_eq!(first["method"], "blockchain.headers.subscribe");
    assert_eq!(first["initial"], json!(true));
    assert_eq!(first["params"][0]["height"], json!(height));
    assert_eq!(first["params"][0]["hex"], json!(sim.tip_header_hex()));
    assert_eq!(
        first["hash"],
        json!(sim.block_hash(height).unwrap().to_string())
    );
    let second: Value = serde_json::from_str(&w.line().await).unwrap();
    assert_eq!(
        second,
        json!({
            "method": "blockchain.scripthash.subscribe",
            "params": [a.scripthash, sim.status(a.scripthash).unwrap()],
            "initial": true,
            "address": a.address,
        })
    );

    let new_height = sim.mine(1);
    let line = w
        .line_where(|l| l.contains("blockchain.headers.subscribe"))
        .await;
    let note: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(note["initial"], json!(false));
    assert_eq!(note["params"][0]["height"], json!(new_height));
    assert_eq!(
        note["hash"],
        json!(sim.block_hash(new_height).unwrap().to_string())
    );

    sim.pay(a.address, 50_000).unwrap();
    let want_status = sim.status(a.scripthash).unwrap().unwrap();
    let line = w.line_where(|l| l.contains(&want_status)).await;
    let note: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        note,
        json!({
            "method": "blockchain.scripthash.subscribe",
            "params": [a.scripthash, want_status],
            "initial": false,
            "address": a.address,
        })
    );

    assert_eq!(w.interrupt().await, Some(0));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_human_output_is_readable() {
    let home = tempfile::tempdir().unwrap();
    let sim = sim(&["127.0.0.1:0"]).await;
    let server = sim.url(0).to_string();
    let sh = ADDRESSES[1].scripthash;
    let mut w = Watcher::spawn(home.path(), &["--server", &server, "--headers", sh]);
    let height = sim.tip_height();
    assert_eq!(
        w.line().await,
        format!(
            "headers: height {height} hash {}",
            sim.block_hash(height).unwrap()
        )
    );
    let status = match sim.status(sh).unwrap() {
        Some(s) => format!("status {s}"),
        None => "no history".into(),
    };
    assert_eq!(w.line().await, format!("{sh}: {status}"));
    let new_height = sim.mine(2);
    let want = format!(
        "headers: height {new_height} hash {}",
        sim.block_hash(new_height).unwrap()
    );
    w.line_where(|l| l == want).await;
    assert_eq!(w.interrupt().await, Some(0));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_survives_a_server_restart() {
    let home = tempfile::tempdir().unwrap();
    let sim = sim(&["127.0.0.1:0"]).await;
    let server = sim.url(0).to_string();
    let mut w = Watcher::spawn(home.path(), &["--server", &server, "--headers"]);
    let height = sim.tip_height();
    assert!(w
        .line()
        .await
        .starts_with(&format!("headers: height {height} ")));

    // A block mined while the server is down is reported once it is back.
    sim.stop_endpoint(0).await;
    let new_height = sim.mine(1);
    sim.start_endpoint(0).await.unwrap();
    let want = format!("headers: height {new_height} ");
    w.line_where(|l| l.starts_with(&want)).await;
    assert_eq!(w.interrupt().await, Some(0));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_errors_exit_before_any_output() {
    let home = tempfile::tempdir().unwrap();
    let sim = sim(&["127.0.0.1:0"]).await;
    let server = sim.url(0).to_string();
    let dead = format!("tcp://127.0.0.1:{}", closed_port("127.0.0.1"));
    let cases: [(&[&str], i32, &str); 5] = [
        (&["--server", &dead, "--headers"], 3, "cannot connect"),
        (&["--server", &server, "notanaddress"], 2, "invalid address"),
        (
            &["--server", &server, "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"],
            2,
            "not valid on regtest",
        ),
        (
            &[
                "--server",
                &server,
                "--network",
                "bitcoin",
                ADDRESSES[0].address,
            ],
            2,
            "wrong network",
        ),
        // Nothing to watch.
        (&["--server", &server], 2, ""),
    ];
    for (args, code, text) in cases {
        let mut all = vec!["subscribe"];
        all.extend_from_slice(args);
        let o = run(home.path(), &all).await;
        assert_code(&o, code);
        assert!(stderr(&o).contains(text), "{args:?}: {}", stderr(&o));
        assert!(stdout(&o).is_empty(), "{args:?}: {}", stdout(&o));
    }
    sim.shutdown().await;
}

/// Two simulators on different loopback addresses (each address is one server, as in
/// server lists), listing each other's endpoints as peers:
/// - 127.0.0.1: TCP and TLS, the simulator's own software string; lists 127.0.0.2 and .3;
/// - 127.0.0.2: TCP and TLS, calling itself ElectrumX; 127.0.0.3: TCP only, electrs-like
///   (protocol 1.4); 127.0.0.5: TCP, never answers; these list 127.0.0.1, each other, and
///   127.0.0.4 where nothing listens.
///
/// Seeded with 127.0.0.1's TCP port only, its TLS port and the dead and stalled peers are
/// learned two hops away.
struct SimNet {
    a: Sim,
    b: Sim,
}

impl SimNet {
    async fn start() -> SimNet {
        let pa = free_ports("127.0.0.1", 2);
        let pb = free_ports("127.0.0.2", 2);
        let pc = closed_port("127.0.0.3");
        let pd = closed_port("127.0.0.4");
        let pe = closed_port("127.0.0.5");
        let a_peers = vec![
            format!("127.0.0.1:{}:t", pa[0]),
            format!("127.0.0.1:{}:s", pa[1]),
        ];
        let b_peers = vec![
            format!("127.0.0.2:{}:t", pb[0]),
            format!("127.0.0.2:{}:s", pb[1]),
            format!("127.0.0.3:{pc}:t"),
        ];
        let mut a = SimConfig::with_endpoints(&[
            &format!("tcp://127.0.0.1:{}", pa[0]),
            &format!("ssl://127.0.0.1:{}", pa[1]),
        ])
        .unwrap();
        a.peers = b_peers.clone();
        let sw = "software=ElectrumX 1.16.0";
        let mut b = SimConfig::with_endpoints(&[
            &format!("tcp://127.0.0.2:{},{sw}", pb[0]),
            &format!("ssl://127.0.0.2:{},{sw}", pb[1]),
            &format!("tcp://127.0.0.3:{pc},software=electrs/0.10.5,version=1.4"),
            &format!("tcp://127.0.0.5:{pe},stall"),
        ])
        .unwrap();
        b.peers = a_peers;
        b.peers.extend(b_peers);
        b.peers.push(format!("127.0.0.4:{pd}:t"));
        b.peers.push(format!("127.0.0.5:{pe}:t"));
        SimNet {
            a: Sim::start(a).await.unwrap(),
            b: Sim::start(b).await.unwrap(),
        }
    }

    fn seed(&self) -> ServerUrl {
        self.a.url(0)
    }

    async fn shutdown(self) {
        self.a.shutdown().await;
        self.b.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spider_finds_every_server_and_writes_a_server_list() {
    let home = tempfile::tempdir().unwrap();
    let net = SimNet::start().await;
    let out = home.path().join("servers.json");
    let o = run(
        home.path(),
        &[
            "spider",
            "--seed",
            &net.seed().to_string(),
            "--out",
            out.to_str().unwrap(),
            "--timeout",
            "3",
        ],
    )
    .await;
    assert_code(&o, 0);
    let table = stdout(&o);

    let list = ServerList::load(&out).unwrap();
    let hosts: Vec<&str> = list.iter().map(|s| s.hostname.as_str()).collect();
    assert_eq!(hosts, ["127.0.0.1", "127.0.0.2", "127.0.0.3"], "{table}");
    let (a, b) = (&net.a, &net.b);
    let tip = a.tip_height();

    let e = list.get("127.0.0.1").unwrap();
    assert_eq!(e.port('t'), Some(a.url(0).port));
    assert_eq!(e.port('s'), Some(a.url(1).port));
    assert_eq!(e.version.as_deref(), Some("1.6"));
    assert_eq!(e.extra["software"], json!("electrum-gateway-sim"));
    assert_eq!(e.extra["cert"], json!("self-signed"));
    assert_eq!(
        e.extra["cert_sha256"],
        json!(fingerprint(&a.cert_der().unwrap()))
    );

    let e = list.get("127.0.0.2").unwrap();
    assert_eq!(e.port('t'), Some(b.url(0).port));
    assert_eq!(e.port('s'), Some(b.url(1).port));
    assert_eq!(e.extra["software"], json!("ElectrumX"));
    assert_eq!(e.extra["server_version"], json!("ElectrumX 1.16.0"));
    assert_eq!(e.extra["cert"], json!("self-signed"));
    assert_eq!(
        e.extra["cert_sha256"],
        json!(fingerprint(&b.cert_der().unwrap()))
    );

    let e = list.get("127.0.0.3").unwrap();
    assert_eq!(e.ports, [format!("t{}", b.url(2).port)]);
    assert_eq!(e.version.as_deref(), Some("1.4"));
    assert_eq!(e.extra["software"], json!("electrs"));
    assert!(e.extra.get("cert").is_none());

    for e in list.iter() {
        assert_eq!(e.extra["genesis_hash"], json!(REGTEST_GENESIS));
        assert_eq!(e.extra["tip"], json!(tip));
        assert!(e.extra["latency_ms"].is_u64());
        assert!(e.extra["seen_at"].as_f64().unwrap() > 1.5e9);
        assert_eq!(e.pruning_limit, 0);
    }

    // The table names every server, the failed ones with why.
    let row = |host: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{host} ")))
            .unwrap_or_else(|| panic!("no row for {host} in\n{table}"))
            .to_string()
    };
    assert!(row("127.0.0.2").contains("ElectrumX 1.16.0"), "{table}");
    assert!(row("127.0.0.4").contains("unreachable"), "{table}");
    assert!(row("127.0.0.4").contains("cannot connect"), "{table}");
    assert!(row("127.0.0.5").contains("timed out"), "{table}");
    assert!(table.contains("3 usable of 5 servers (regtest)"), "{table}");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spider_library_reports_filters_and_networks() {
    let net = SimNet::start().await;
    let base = SpiderOptions {
        seeds: vec![net.seed()],
        timeout: Duration::from_secs(3),
        ..SpiderOptions::default()
    };

    let report = crawl(base.clone()).await;
    assert_eq!(report.genesis_hash.as_deref(), Some(REGTEST_GENESIS));
    let verdict = |r: &electrum_gateway::tools::spider::SpiderReport, host: &str| {
        r.servers
            .iter()
            .find(|h| h.hostname == host)
            .map(|h| h.verdict.clone())
    };
    assert_eq!(verdict(&report, "127.0.0.1"), Some(Verdict::Usable));
    assert!(matches!(
        verdict(&report, "127.0.0.4"),
        Some(Verdict::Unreachable(_))
    ));
    assert_eq!(report.server_list().len(), 3);

    // TLS only: the TCP-only server is not followed, the others keep their TLS port only.
    let tls = crawl(SpiderOptions {
        protocol: Some('s'),
        ..base.clone()
    })
    .await;
    let list = tls.server_list();
    let hosts: Vec<&str> = list.iter().map(|s| s.hostname.as_str()).collect();
    assert_eq!(hosts, ["127.0.0.1", "127.0.0.2"]);
    // The seed was given as TCP and is visited, but only its TLS port is written.
    assert!(list
        .iter()
        .all(|s| s.ports.len() == 1 && s.port('s').is_some()));

    // Another network: nothing is usable and peers are not followed.
    let other = crawl(SpiderOptions {
        network: Some(bitcoin::Network::Bitcoin),
        ..base.clone()
    })
    .await;
    assert_eq!(other.servers.len(), 1);
    assert_eq!(
        other.servers[0].verdict,
        Verdict::OtherNetwork(Some(REGTEST_GENESIS.into()))
    );
    assert!(other.server_list().is_empty());

    // A bound on hosts.
    let small = crawl(SpiderOptions {
        max_servers: 2,
        ..base
    })
    .await;
    assert_eq!(small.servers.len(), 2);
    // 127.0.0.3, .4 and .5, one TCP endpoint each (127.0.0.3 is listed twice).
    assert_eq!(small.skipped, 3);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spider_exit_codes() {
    let home = tempfile::tempdir().unwrap();
    let net = SimNet::start().await;
    let seed = net.seed().to_string();
    let out = home.path().join("servers.json");
    std::fs::write(&out, "[]\n").unwrap();

    // Wrong network: nothing usable, exit 1, the file is left alone.
    let o = run(
        home.path(),
        &[
            "spider",
            "--seed",
            &seed,
            "--network",
            "bitcoin",
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .await;
    assert_code(&o, 1);
    assert!(stdout(&o).contains("other-network"), "{}", stdout(&o));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "[]\n");

    // Bad server: the only seed is dead.
    let dead = format!("tcp://127.0.0.1:{}", closed_port("127.0.0.1"));
    let o = run(home.path(), &["spider", "--seed", &dead]).await;
    assert_code(&o, 1);
    assert!(stdout(&o).contains("unreachable"), "{}", stdout(&o));

    // A server list file as the seed.
    let seeds = home.path().join("seeds.json");
    let mut list = ServerList::new();
    list.insert(electrum_gateway::servers::ServerInfo::from_url(&net.seed()).unwrap());
    list.save(&seeds).unwrap();
    let o = run(
        home.path(),
        &[
            "spider",
            "--seed",
            seeds.to_str().unwrap(),
            "--timeout",
            "3",
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .await;
    assert_code(&o, 0);
    assert_eq!(ServerList::load(&out).unwrap().len(), 3);

    // Usage: a seed that is neither a URL nor a file, bad numbers, an unwritable output.
    for args in [
        &["spider", "--seed", "/nonexistent/seeds.json"][..],
        &["spider", "--seed", &seed, "--concurrency", "0"][..],
        &["spider", "--seed", &seed, "--timeout", "0"][..],
        &["spider", "--seed", "ws://127.0.0.1:1"][..],
        &["spider", "--network", "regtest"][..],
    ] {
        let o = run(home.path(), args).await;
        assert_code(&o, 2);
    }
    let o = run(
        home.path(),
        &[
            "spider",
            "--seed",
            &seed,
            "--timeout",
            "3",
            "--out",
            "/nonexistent/dir/servers.json",
        ],
    )
    .await;
    assert_code(&o, 2);
    net.shutdown().await;
}

/// A gateway for wallets on loopback in front of `servers` (or, when empty, of the candidates
/// in `server_list`), ready once its tip reaches `height`.
async fn gateway(data_dir: &Path, servers: Vec<String>, server_list: &str, height: u32) -> Gateway {
    let mut cfg = Config {
        network: "regtest".into(),
        data_dir: data_dir.to_path_buf(),
        ..Config::default()
    };
    cfg.upstreams.servers = servers;
    cfg.upstreams.server_list = server_list.into();
    cfg.upstreams.use_server_list = !server_list.is_empty();
    cfg.upstreams.reconnect_initial_secs = 0.05;
    cfg.upstreams.reconnect_max_secs = 0.5;
    cfg.listen.tcp = "127.0.0.1:0".into();
    cfg.listen.tls = String::new();
    cfg.listen.http = String::new();
    let gw = Gateway::start(cfg).await.unwrap();
    let mut tip = gw.tip_watch();
    timeout(
        WAIT,
        tip.wait_for(|t| t.as_ref().is_some_and(|t| t.height >= height)),
    )
    .await
    .expect("the gateway never reached the tip")
    .unwrap();
    gw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_and_subscribe_through_the_gateway() {
    let home = tempfile::tempdir().unwrap();
    // Two upstreams: a balance is voted, and one upstream's word is not enough.
    let sim = sim(&["127.0.0.1:0", "127.0.0.1:0"]).await;
    let gw = gateway(
        &home.path().join("gw"),
        vec![sim.url(0).to_string(), sim.url(1).to_string()],
        "",
        sim.tip_height(),
    )
    .await;
    let server = format!("tcp://{}", gw.tcp_addr().unwrap());
    let a = ADDRESSES[4];

    // The network of the address comes from the gateway's server.features.
    let o = run(
        home.path(),
        &[
            "call",
            "--server",
            &server,
            "blockchain.address.get_balance",
            a.address,
        ],
    )
    .await;
    assert_code(&o, 0);
    let (confirmed, unconfirmed) = sim.balance(a.scripthash).unwrap();
    assert_eq!(
        json_out(&o),
        json!({"confirmed": confirmed, "unconfirmed": unconfirmed})
    );

    let mut w = Watcher::spawn(home.path(), &["--server", &server, "--json", a.address]);
    let first: Value = serde_json::from_str(&w.line().await).unwrap();
    assert_eq!(first["params"][1], json!(sim.status(a.scripthash).unwrap()));
    sim.pay(a.address, 12_345).unwrap();
    let status = sim.status(a.scripthash).unwrap().unwrap();
    w.line_where(|l| l.contains(&status)).await;
    assert_eq!(w.interrupt().await, Some(0));
    gw.shutdown();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_runs_on_the_list_the_spider_wrote() {
    let home = tempfile::tempdir().unwrap();
    let net = SimNet::start().await;
    let out = home.path().join("servers.json");
    let o = run(
        home.path(),
        &[
            "spider",
            "--seed",
            &net.seed().to_string(),
            "--timeout",
            "3",
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .await;
    assert_code(&o, 0);

    let tip = net.a.tip_height();
    let gw = gateway(&home.path().join("gw"), vec![], out.to_str().unwrap(), tip).await;
    let server = format!("tcp://{}", gw.tcp_addr().unwrap());
    let o = run(
        home.path(),
        &["call", "--server", &server, "blockchain.block.header", "7"],
    )
    .await;
    assert_code(&o, 0);
    assert_eq!(json_out(&o), json!(net.a.header_hex(7).unwrap()));
    // Every upstream the gateway chose came from the list.
    let listed: Vec<String> = ServerList::load(&out)
        .unwrap()
        .iter()
        .flat_map(|s| s.urls())
        .map(|u| u.to_string())
        .collect();
    let ups = gw.snapshot().upstreams;
    assert!(!ups.is_empty());
    for u in ups {
        assert!(listed.contains(&u.url), "{} not in {listed:?}", u.url);
    }
    gw.shutdown();
    net.shutdown().await;
}
