//! `electrum-gateway bench` against the binary's own simulated server: short runs, checking
//! what the JSON report says and that a bad server fails the command.

mod common;

use common::Running;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_electrum-gateway");

/// Starts `electrum-gateway sim` with the given endpoints and returns it with their URLs.
fn sim(endpoints: &[&str]) -> (Running, Vec<String>) {
    let mut cmd = Command::new(BIN);
    cmd.arg("sim").args(["--blocks", "120"]);
    for e in endpoints {
        cmd.args(["--listen", e]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let urls = endpoints
        .iter()
        .map(|_| {
            rx.recv_timeout(Duration::from_secs(60))
                .expect("the simulator printed its URL")
        })
        .collect();
    (running, urls)
}

fn bench(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("bench")
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("the binary runs")
}

/// Runs `bench --json` and returns its report, failing the test if the command failed.
fn report(args: &[&str]) -> Value {
    let out = bench(&[args, &["--json"]].concat());
    assert!(
        out.status.success(),
        "bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

fn check_latency(v: &Value) {
    let l = &v["latency_us"];
    let q = |k: &str| {
        l[k].as_u64()
            .unwrap_or_else(|| panic!("latency {k} in {v}"))
    };
    assert!(q("p50") > 0, "{v}");
    assert!(
        q("p50") <= q("p90") && q("p90") <= q("p99") && q("p99") <= q("max"),
        "{v}"
    );
}

#[test]
fn load_reports_throughput_latency_and_cpu() {
    let (sim, urls) = sim(&["127.0.0.1:0"]);
    let pid = sim.0.id().to_string();
    let v = report(&[
        "--server",
        &urls[0],
        "--connections",
        "2",
        "--pipeline",
        "4",
        "--duration",
        "1",
        "--pid",
        &pid,
    ]);
    assert_eq!(v["scenario"], "load");
    assert_eq!(v["method"], "mix");
    assert_eq!(v["server"], urls[0].as_str());
    assert_eq!((num(&v, "connections"), num(&v, "pipeline")), (2.0, 4.0));
    assert!(num(&v, "requests") > 0.0, "{v}");
    assert_eq!(num(&v, "errors"), 0.0, "{v}");
    assert!((num(&v, "rps") - num(&v, "requests") / num(&v, "duration_s")).abs() < 1e-6);
    check_latency(&v);
    // The simulator did the work, so it used CPU time for it.
    assert!(num(&v, "cpu_us_per_request") > 0.0, "{v}");
}

#[test]
fn one_method_over_tls_and_websocket() {
    let (_sim, urls) = sim(&["ssl://127.0.0.1:0", "ws://127.0.0.1:0"]);
    for url in &urls {
        let v = report(&[
            "--server",
            url,
            "--connections",
            "1",
            "--duration",
            "1",
            "--method",
            "blockchain.transaction.get",
        ]);
        assert_eq!(v["method"], "blockchain.transaction.get");
        assert!(num(&v, "requests") > 0.0, "{url}: {v}");
        assert_eq!(num(&v, "errors"), 0.0, "{url}: {v}");
        check_latency(&v);
    }
}

#[test]
fn bad_server_or_arguments_fail() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = bench(&[
        "--server",
        &format!("tcp://127.0.0.1:{port}"),
        "--duration",
        "1",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect"), "{err}");
    assert!(out.stdout.is_empty());

    let out = bench(&[
        "--server",
        "tcp://127.0.0.1:1",
        "--method",
        "no.such.method",
    ]);
    assert!(!out.status.success());
    let out = bench(&["--server", "tcp://127.0.0.1:1", "--connections", "0"]);
    assert!(!out.status.success());
    // A kill planned after the run would hit the process once nothing measures it.
    let out = bench(&[
        "--server",
        "tcp://127.0.0.1:1",
        "--scenario",
        "failover",
        "--kill-pid",
        "4294967295",
        "--duration",
        "1",
        "--kill-after",
        "2",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--kill-after"), "{err}");
}

#[test]
fn fanout_notifies_every_wallet_of_every_block() {
    let (sim, urls) = sim(&["127.0.0.1:0"]);
    let pid = sim.0.id().to_string();
    let v = report(&[
        "--scenario",
        "fanout",
        "--server",
        &urls[0],
        "--connections",
        "3",
        "--subscriptions",
        "7",
        "--pipeline",
        "2",
        "--rounds",
        "2",
        "--pid",
        &pid,
    ]);
    assert_eq!(v["scenario"], "fanout");
    // Three wallets, two blocks: six header notifications, none missed.
    assert_eq!(num(&v, "requests"), 6.0, "{v}");
    assert_eq!(num(&v, "errors"), 0.0, "{v}");
    assert_eq!(num(&v, "rounds"), 2.0);
    check_latency(&v);
    assert!(
        v["last_wallet_us"]["max"].as_u64().unwrap() >= v["latency_us"]["p50"].as_u64().unwrap()
    );
    assert!(num(&v, "subscribe_s") > 0.0);
    let m = &v["memory"];
    assert!(m["start_kb"].as_u64().unwrap() > 0, "{v}");
    assert!(m["per_subscription_bytes"].is_number(), "{v}");
}

#[test]
fn subscriptions_scenario_counts_each_answer() {
    let (_sim, urls) = sim(&["127.0.0.1:0"]);
    let v = report(&[
        "--scenario",
        "subscriptions",
        "--server",
        &urls[0],
        "--connections",
        "4",
        "--subscriptions",
        "50",
        "--pipeline",
        "5",
    ]);
    assert_eq!(num(&v, "requests"), 50.0, "{v}");
    assert_eq!(num(&v, "errors"), 0.0, "{v}");
    check_latency(&v);
    assert!(v.get("memory").is_none(), "no --pid, no memory: {v}");
}

#[test]
fn subscriptions_memory_is_read_again_once_settled() {
    let (sim, urls) = sim(&["127.0.0.1:0"]);
    let pid = sim.0.id().to_string();
    let base = [
        "--scenario",
        "subscriptions",
        "--server",
        &urls[0],
        "--connections",
        "2",
        "--subscriptions",
        "20",
        "--pid",
        &pid,
    ];
    let settled = report(&[&base[..], &["--settle", "0.2"]].concat());
    let m = &settled["memory"];
    assert!(m["settled_kb"].as_u64().unwrap() > 0, "{settled}");
    assert!(m["per_subscription_settled_bytes"].is_number(), "{settled}");
    // Without --settle, only the memory at the last answer.
    let once = report(&base);
    assert!(once["memory"]["settled_kb"].is_null(), "{once}");
    let bad = bench(&[&base[..], &["--settle=-1"]].concat());
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--settle must be"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[test]
fn failover_kills_the_given_process_and_reports_the_outage() {
    let (_sim, urls) = sim(&["127.0.0.1:0"]);
    let victim = Command::new("sleep").arg("60").spawn().expect("sleep runs");
    let mut victim = Running(victim);
    let pid = victim.0.id().to_string();
    let v = report(&[
        "--scenario",
        "failover",
        "--server",
        &urls[0],
        "--connections",
        "2",
        "--duration",
        "1",
        "--kill-after",
        "0.3",
        "--kill-pid",
        &pid,
        "--method",
        "server.ping",
    ]);
    let status = victim.0.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "killed with SIGKILL");
    let at = num(&v, "killed_at_s");
    assert!((0.3..1.0).contains(&at), "{v}");
    // The server itself was not touched: answers went on after the kill.
    assert!(v["first_answer_after_kill_ms"].is_number(), "{v}");
    assert!(v["longest_stall_ms"].is_number(), "{v}");
    assert_eq!(num(&v, "errors_after_kill"), 0.0, "{v}");
    assert!(num(&v, "requests") > 0.0);
}
