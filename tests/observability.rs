//! The HTTP side end to end: a gateway in front of three simulated upstreams, read over real
//! loopback HTTP; a real Prometheus scraping it and answering every query of the shipped
//! dashboard and alert rules; promtool checking the exposition and the rules; the status page
//! rendered by headless Chromium; and the binary's log formats.
//!
//! Prometheus, promtool and Chromium are Debian packages that `.ci/run` installs. The tests
//! that drive them are ignored unless run with `cargo test -- --include-ignored`; then a
//! missing program fails its test.

mod common;

use common::http::http;
use common::programs::program;
use common::{until, Net, Wallet, WAIT};
use electrum_gateway::config::Config;
use electrum_gateway::gateway::Gateway;
use electrum_gateway::protocol::methods::METHODS;
use electrum_gateway::sim::{Sim, SimConfig, ADDRESSES};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

const THREE: [&str; 3] = ["127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"];

fn manifest(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The Prometheus text format, read back.

struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().expect("sample value"),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let inner = rest.strip_suffix('}').expect("closing brace");
                let labels = inner
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once("=\"").expect("label");
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (n.to_string(), labels)
            }
            None => (series.to_string(), HashMap::new()),
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The value of the one series of `name` whose labels include `labels`.
fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} matches several series");
    found.first().map(|s| s.value)
}

// ---------------------------------------------------------------------------------------------
// The gateway's HTTP listener, read through the shared harness.

/// What these tests read through the shared harness's HTTP listener.
trait Observe {
    /// The parsed `/metrics` exposition.
    async fn samples(&self) -> Vec<Sample>;
    /// The `/status` document.
    async fn status(&self) -> Value;
    /// One admin call; the whole JSON-RPC response.
    async fn admin(&self, method: &str, params: Value) -> Value;
    /// One admin call that must succeed; its result.
    async fn admin_ok(&self, method: &str, params: Value) -> Value;
}

impl Observe for Net {
    async fn samples(&self) -> Vec<Sample> {
        let r = self.get("/metrics").await;
        assert_eq!(r.status, 200);
        parse_exposition(&r.body)
    }

    async fn status(&self) -> Value {
        let r = self.get("/status").await;
        assert_eq!(r.status, 200);
        r.json()
    }

    async fn admin(&self, method: &str, params: Value) -> Value {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let r = http(
            self.http_addr(),
            "POST",
            "/admin",
            &[],
            Some(&body.to_string()),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    async fn admin_ok(&self, method: &str, params: Value) -> Value {
        let r = self.admin(method, params.clone()).await;
        assert!(r.get("error").is_none(), "{method} {params}: {r}");
        r["result"].clone()
    }
}

/// A wallet that keeps making a mix of requests until stopped: the traffic behind the rates.
fn load(net: &Net) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let addr = net.gw.tcp_addr().unwrap();
    let txid = net.sim.block_txids(1).unwrap()[0].to_string();
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let mut w = Wallet::connect(addr).await;
        w.call("server.version", json!(["load", ["1.4", "1.6"]]))
            .await;
        w.call("blockchain.headers.subscribe", json!([])).await;
        for a in &ADDRESSES[..3] {
            w.call("blockchain.scripthash.subscribe", json!([a.scripthash]))
                .await;
        }
        let mut rounds = 0u64;
        while !flag.load(Ordering::Relaxed) {
            let sh = ADDRESSES[rounds as usize % ADDRESSES.len()].scripthash;
            w.call("blockchain.scripthash.get_balance", json!([sh]))
                .await;
            w.call("blockchain.scripthash.get_history", json!([sh]))
                .await;
            w.call("blockchain.scripthash.listunspent", json!([sh]))
                .await;
            w.call("blockchain.transaction.get", json!([txid])).await;
            w.call("blockchain.block.header", json!([1])).await;
            w.call("blockchain.estimatefee", json!([2])).await;
            w.call_err("no.such.method", json!([])).await;
            rounds += 1;
            // Pacing, not synchronisation: a steady trickle of requests.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        rounds
    });
    (stop, task)
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_status_and_admin_over_http() {
    let net = Net::start_http(&THREE).await;
    let names = net.names();
    let tip = net.sim.tip_height();
    let mut w = net.wallet().await;
    let sh = ADDRESSES[0].scripthash;
    w.call("blockchain.scripthash.get_balance", json!([sh]))
        .await;
    w.call("blockchain.scripthash.subscribe", json!([sh])).await;
    w.call_err("no.such.method", json!([])).await;
    w.call_err("blockchain.scripthash.get_balance", json!(["zz"]))
        .await;

    // Metrics.
    let r = net.get("/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"].starts_with("text/plain; version=0.0.4"));
    assert!(!r.body.contains(sh), "a scripthash leaked into the metrics");
    assert!(!r.body.contains(ADDRESSES[0].address));
    let m = parse_exposition(&r.body);
    let ok = [
        ("method", "blockchain.scripthash.get_balance"),
        ("outcome", "ok"),
    ];
    assert_eq!(
        metric(&m, "electrum_gateway_requests_total", &ok),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "electrum_gateway_requests_total",
            &[
                ("method", "blockchain.scripthash.get_balance"),
                ("outcome", "error")
            ]
        ),
        Some(1.0),
        "an invalid scripthash is the wallet's error"
    );
    assert_eq!(
        metric(
            &m,
            "electrum_gateway_requests_total",
            &[("method", "other"), ("outcome", "error")]
        ),
        Some(1.0),
        "unknown methods count as other"
    );
    assert_eq!(
        metric(
            &m,
            "electrum_gateway_request_duration_seconds_count",
            &[("method", "blockchain.scripthash.subscribe")]
        ),
        Some(1.0)
    );
    for n in &names {
        let up = [("upstream", n.as_str())];
        assert_eq!(
            metric(
                &m,
                "electrum_gateway_upstream_state",
                &[("upstream", n), ("state", "up")]
            ),
            Some(1.0)
        );
        assert_eq!(
            metric(
                &m,
                "electrum_gateway_upstream_state",
                &[("upstream", n), ("state", "down")]
            ),
            Some(0.0)
        );
        assert_eq!(
            metric(&m, "electrum_gateway_upstream_tip_height", &up),
            Some(f64::from(tip))
        );
        assert_eq!(
            metric(&m, "electrum_gateway_upstream_lag_blocks", &up),
            Some(0.0)
        );
        assert_eq!(
            metric(&m, "electrum_gateway_upstream_cordoned", &up),
            Some(0.0)
        );
    }
    let answered: f64 = m
        .iter()
        .filter(|s| s.name == "electrum_gateway_upstream_request_duration_seconds_count")
        .map(|s| s.value)
        .sum();
    assert!(answered >= 1.0, "upstream latencies are observed");
    assert_eq!(
        metric(&m, "electrum_gateway_tip_height", &[]),
        Some(f64::from(tip))
    );
    assert_eq!(
        metric(&m, "electrum_gateway_upstreams_healthy", &[]),
        Some(3.0)
    );
    assert_eq!(metric(&m, "electrum_gateway_sessions", &[]), Some(1.0));
    assert_eq!(
        metric(&m, "electrum_gateway_subscribed_scripthashes", &[]),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "electrum_gateway_session_subscriptions", &[]),
        Some(1.0)
    );
    // Two upstreams watch each scripthash.
    assert_eq!(
        metric(&m, "electrum_gateway_upstream_subscriptions", &[]),
        Some(2.0)
    );
    assert!(metric(&m, "process_resident_memory_bytes", &[]).is_some_and(|v| v > 0.0));

    // Health and status.
    let h = net.get("/health").await;
    assert_eq!(h.status, 200, "{}", h.body);
    assert_eq!(h.json()["status"], "ok");
    assert_eq!(h.json()["upstreams_healthy"], 3);
    let s = net.status().await;
    let shown: Vec<&str> = s["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(shown, names);
    let hash = net.sim.block_hash(tip).unwrap().to_string();
    assert_eq!(s["best_tip"], json!({"height": tip, "hash": hash}));
    for u in s["upstreams"].as_array().unwrap() {
        assert_eq!(u["state"], "up");
        assert_eq!(u["tip"]["height"], tip);
        assert_eq!(u["tip"]["hash"], hash);
        assert_eq!(u["lag"], 0);
        assert_eq!(u["cordoned"], false);
        assert!(u["url"].as_str().unwrap().starts_with("tcp://"));
        assert!(!u["software"].as_str().unwrap().is_empty());
        assert!(u["latency_ms"].get("p90").is_some());
    }
    assert_eq!(s["tip_agreement"].as_array().unwrap().len(), 1);
    assert_eq!(
        s["tip_agreement"][0]["upstreams"].as_array().unwrap().len(),
        3
    );
    assert_eq!(s["tip_agreement"][0]["conflict"], false);
    assert_eq!(s["sessions"], 1);
    assert_eq!(s["subscriptions"]["scripthashes"], 1);
    assert_eq!(s["subscriptions"]["upstream"], 2);

    // Admin: list, cordon (by index, name, URL), and the router honouring it.
    let list = net.admin_ok("upstreams.list", json!([])).await;
    assert_eq!(list.as_array().unwrap().len(), 3);
    let c = net.admin_ok("upstreams.cordon", json!([0])).await;
    assert_eq!(c["cordoned"], true);
    assert_eq!(c["name"], names[0]);
    assert_eq!(net.status().await["upstreams"][0]["cordoned"], true);
    assert_eq!(
        metric(
            &net.samples().await,
            "electrum_gateway_upstream_cordoned",
            &[("upstream", &names[0])]
        ),
        Some(1.0)
    );
    let before = net.sim.requests(0);
    for a in &ADDRESSES {
        w.call("blockchain.scripthash.get_history", json!([a.scripthash]))
            .await;
    }
    assert_eq!(net.sim.requests(0), before, "a cordoned upstream got reads");
    net.admin_ok("upstreams.cordon", json!({"upstream": names[1]}))
        .await;
    net.admin_ok("upstreams.cordon", json!([net.sim.url(2).to_string()]))
        .await;
    let h = net.get("/health").await;
    assert_eq!(h.status, 503);
    assert_eq!(h.json()["reason"], "every connected upstream is cordoned");
    for name in &names {
        let u = net.admin_ok("upstreams.uncordon", json!([name])).await;
        assert_eq!(u["cordoned"], false);
    }
    assert_eq!(net.get("/health").await.status, 200);
    let events = net.status().await["events"].clone();
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "cordon" && e["upstream"] == json!(names[0])),
        "{events}"
    );

    // Admin: errors, candidates, policy, batches, and POST / as an alias.
    let e = net.admin("upstreams.cordon", json!(["nope:1"])).await;
    assert_eq!(e["error"]["code"], -32602);
    let e = net.admin("upstreams.cordon", json!([7])).await;
    assert_eq!(e["error"]["code"], -32602);
    let e = net.admin("upstreams.add", json!(["ftp://x:1"])).await;
    assert_eq!(e["error"]["code"], -32602);
    let e = net.admin("no.such", json!([])).await;
    assert_eq!(e["error"]["code"], -32601);
    let a = net
        .admin_ok("upstreams.add", json!(["tcp://127.0.0.1:9"]))
        .await;
    assert_eq!(a["added"], true);
    assert_eq!(a["candidates"], json!(["tcp://127.0.0.1:9"]));
    let a = net
        .admin_ok("upstreams.add", json!(["tcp://127.0.0.1:9"]))
        .await;
    assert_eq!(a["added"], false);
    let a = net
        .admin_ok("upstreams.add", json!([net.sim.url(1).to_string()]))
        .await;
    assert_eq!(a["added"], false, "an active upstream is not a candidate");
    assert_eq!(net.status().await["candidates"], 1);
    let p = net.admin_ok("policy.show", json!([])).await;
    assert_eq!(p.as_object().unwrap().len(), METHODS.len());
    assert_eq!(p["blockchain.estimatefee"]["policy"], "median");
    assert_eq!(p["server.ping"]["policy"], "local");
    assert_eq!(p["blockchain.transaction.broadcast"]["policy"], "broadcast");
    assert_eq!(p["blockchain.transaction.get"]["cache"], "immutable");
    assert_eq!(p["blockchain.transaction.get"]["configured"], false);
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "upstreams.list"},
        {"jsonrpc": "2.0", "id": 2, "method": "policy.show"},
    ]);
    let r = http(net.http_addr(), "POST", "/", &[], Some(&batch.to_string())).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json().as_array().unwrap().len(), 2);
    assert_eq!(net.get("/admin").await.status, 405);
    assert_eq!(net.get("/nope").await.status, 404);
    let r = http(net.http_addr(), "DELETE", "/metrics", &[], None).await;
    assert_eq!(r.status, 405);

    // A new block reaches the status and the metrics.
    net.sim.mine(1);
    net.wait_all_at(tip + 1).await;
    let s = net.status().await;
    assert_eq!(s["best_tip"]["height"], tip + 1);
    assert_eq!(
        metric(&net.samples().await, "electrum_gateway_tip_height", &[]),
        Some(f64::from(tip + 1))
    );

    // Failover: an upstream lost is an event and a counter; losing all turns health red.
    net.sim.stop_endpoint(0).await;
    let s = until(
        "the upstream's loss among the events of /status",
        || async {
            let s = net.status().await;
            s["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "failover" && e["upstream"] == json!(names[0]))
                .then_some(s)
        },
    )
    .await;
    assert_ne!(s["upstreams"][0]["state"], "up");
    assert_eq!(s["upstreams"][0]["healthy"], false);
    assert!(s["counters"]["failovers"].as_u64().unwrap() >= 1);
    let m = net.samples().await;
    assert!(metric(&m, "electrum_gateway_failovers_total", &[]).unwrap() >= 1.0);
    assert_eq!(
        metric(
            &m,
            "electrum_gateway_upstream_state",
            &[("upstream", &names[0]), ("state", "up")]
        ),
        Some(0.0)
    );
    assert_eq!(net.get("/health").await.status, 200);
    net.sim.stop_endpoint(1).await;
    net.sim.stop_endpoint(2).await;
    let h = until("health to turn unavailable", || async {
        let h = net.get("/health").await;
        (h.status == 503).then_some(h)
    })
    .await;
    assert_eq!(
        h.json(),
        json!({
            "status": "unavailable",
            "reason": "no upstream is connected",
            "upstreams": 3,
            "upstreams_connected": 0,
            "upstreams_healthy": 0,
            "tip": tip + 1,
        })
    );
    assert_eq!(
        metric(
            &net.samples().await,
            "electrum_gateway_upstreams_healthy",
            &[]
        ),
        Some(0.0)
    );
    net.gw.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_a_token_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let config = |http: &str, token: &str| {
        let mut cfg = Config {
            network: "regtest".into(),
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        // Nothing listens there: the gateway runs without a usable upstream.
        cfg.upstreams.servers = vec!["tcp://127.0.0.1:9".into()];
        cfg.upstreams.use_server_list = false;
        cfg.listen.tcp = "127.0.0.1:0".into();
        cfg.listen.tls = String::new();
        cfg.listen.http = http.into();
        cfg.listen.admin_token = token.into();
        cfg
    };
    let err = Gateway::start(config("0.0.0.0:0", ""))
        .await
        .err()
        .expect("a non-loopback HTTP listener without a token is refused");
    assert!(err.to_string().contains("admin_token"), "{err}");

    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "upstreams.list"}).to_string();
    let gw = Gateway::start(config("0.0.0.0:0", "correct horse"))
        .await
        .unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], gw.http_addr().unwrap().port()).into();
    let r = http(addr, "POST", "/admin", &[], Some(&list)).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    let wrong = [("Authorization", "Bearer correct horsE")];
    assert_eq!(
        http(addr, "POST", "/admin", &wrong, Some(&list))
            .await
            .status,
        401
    );
    let right = [("Authorization", "Bearer correct horse")];
    let r = http(addr, "POST", "/admin", &right, Some(&list)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["result"][0]["url"], "tcp://127.0.0.1:9");
    // Read-only routes need no token.
    assert_eq!(http(addr, "GET", "/metrics", &[], None).await.status, 200);
    let h = http(addr, "GET", "/health", &[], None).await;
    assert_eq!(h.status, 503);
    assert_eq!(h.json()["reason"], "no upstream is connected");
    gw.shutdown();

    // On loopback without a token, admin calls must be addressed to a loopback host.
    let gw = Gateway::start(config("127.0.0.1:0", "")).await.unwrap();
    let addr = gw.http_addr().unwrap();
    let rebound = [("Host", "evil.example:9190")];
    assert_eq!(
        http(addr, "POST", "/admin", &rebound, Some(&list))
            .await
            .status,
        403
    );
    let local = [("Host", "localhost:9190")];
    assert_eq!(
        http(addr, "POST", "/admin", &local, Some(&list))
            .await
            .status,
        200
    );
    assert_eq!(
        http(addr, "GET", "/status", &rebound, None).await.status,
        200
    );
    gw.shutdown();
}

// ---------------------------------------------------------------------------------------------
// Prometheus, promtool and the shipped dashboard and alert rules.

struct Prometheus {
    addr: SocketAddr,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second, with the shipped alert rules.
    async fn start(bin: &Path, target: SocketAddr) -> Prometheus {
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let config = format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: electrum-gateway\n    static_configs:\n      - targets: ['{target}']\n",
                rules = manifest("dashboards/alerts.yml").display(),
            );
            std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
            // Prometheus wants a fixed port: take a free one (and retry if it is taken).
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
            let mut child = Command::new(bin)
                .arg(format!(
                    "--config.file={}",
                    dir.path().join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .kill_on_drop(true)
                .spawn()
                .expect("start prometheus");
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if TcpStream::connect(addr).await.is_ok()
                    && http(addr, "GET", "/-/ready", &[], None).await.status == 200
                {
                    return Prometheus {
                        addr,
                        child,
                        _dir: dir,
                    };
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "prometheus never became ready"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            last_log =
                std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
        }
        panic!("prometheus failed to start three times:\n{last_log}");
    }

    /// An instant query: (status, result list).
    async fn query(&self, expr: &str) -> (String, Value) {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let r = http(self.addr, "GET", &path, &[], None).await;
        let v = r.json();
        let status = v["status"].as_str().unwrap_or("").to_string();
        let data = match v["data"]["resultType"].as_str() {
            Some("scalar") | Some("string") => json!([v["data"]["result"].clone()]),
            _ => v["data"]["result"].clone(),
        };
        if status != "success" {
            return (format!("{status}: {}", v["error"]), data);
        }
        (status, data)
    }
}

/// Every PromQL expression of the dashboard's panels, and the metric selectors of its
/// `label_values(...)` variables.
fn dashboard_queries(dash: &Value) -> (Vec<String>, Vec<String>) {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(targets) = o.get("targets").and_then(Value::as_array) {
                    for t in targets {
                        out.push(t["expr"].as_str().expect("target expr").to_string());
                    }
                }
                if let Some(panels) = o.get("panels") {
                    walk(panels, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut exprs = Vec::new();
    walk(&dash["panels"], &mut exprs);
    let selectors = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["definition"].as_str())
        .map(|d| {
            let inner = d
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .expect("label_values(metric, label)");
            let (sel, _label) = inner.rsplit_once(',').expect("metric, label");
            sel.trim().to_string()
        })
        .collect();
    (exprs, selectors)
}

/// Grafana variables replaced by what they resolve to with "All" selected.
fn resolve_variables(expr: &str) -> String {
    let e = expr
        .replace("$__rate_interval", "10s")
        .replace("$instance", ".*")
        .replace("$upstream", ".*");
    assert!(!e.contains('$'), "unresolved Grafana variable in {expr}");
    e
}

#[test]
fn the_dashboard_is_importable_as_is() {
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(manifest("dashboards/electrum-gateway.json")).unwrap(),
    )
    .unwrap();
    let vars = dash["templating"]["list"].as_array().unwrap();
    assert!(vars.iter().any(|v| v["name"] == "DS_PROMETHEUS"
        && v["type"] == "datasource"
        && v["query"] == "prometheus"));
    let panels = dash["panels"].as_array().unwrap();
    let rows: Vec<&str> = panels
        .iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for want in [
        "Wallets",
        "Upstreams",
        "Consensus and verification",
        "Subscriptions",
        "Cache",
    ] {
        assert!(rows.contains(&want), "row {want} missing from {rows:?}");
    }
    let mut ids = std::collections::HashSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        assert!(p["gridPos"]["w"].as_u64().unwrap() <= 24);
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
            for t in p["targets"].as_array().unwrap() {
                assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}");
                assert!(t["expr"]
                    .as_str()
                    .unwrap()
                    .contains("instance=~\"$instance\""));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs prometheus and promtool (apt-get install prometheus); run with: cargo test -- --include-ignored"]
async fn prometheus_scrapes_the_gateway_and_answers_every_dashboard_and_alert_query() {
    let prometheus = program("prometheus", "apt-get install prometheus");
    let promtool = program("promtool", "apt-get install prometheus");
    let net = Net::start_http(&THREE).await;
    let (stop_load, load_task) = load(&net);
    let rules = manifest("dashboards/alerts.yml");

    // promtool: the rules file, and the exposition under load.
    let out = std::process::Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    until("load to reach every method", || async {
        let m = net.samples().await;
        metric(
            &m,
            "electrum_gateway_requests_total",
            &[("method", "blockchain.estimatefee"), ("outcome", "ok")],
        )
        .filter(|v| *v >= 2.0)
    })
    .await;
    let exposition = net.get("/metrics").await.body;
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = check.stdin.take().unwrap();
    stdin.write_all(exposition.as_bytes()).await.unwrap();
    drop(stdin);
    let out = check.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus scrapes the gateway.
    let prom = Prometheus::start(&prometheus, net.http_addr()).await;
    until("the gateway target to be up", || async {
        let (_, r) = prom.query("up{job=\"electrum-gateway\"} == 1").await;
        (!r.as_array().unwrap().is_empty()).then_some(())
    })
    .await;

    // Every dashboard query returns data.
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(manifest("dashboards/electrum-gateway.json")).unwrap(),
    )
    .unwrap();
    let (exprs, selectors) = dashboard_queries(&dash);
    assert!(exprs.len() >= 30, "only {} queries found", exprs.len());
    let mut pending: Vec<String> = exprs
        .iter()
        .chain(&selectors)
        .map(|e| resolve_variables(e))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut left = Vec::new();
        for e in pending {
            let (status, r) = prom.query(&e).await;
            assert_eq!(status, "success", "query failed: {e}");
            if r.as_array().unwrap().is_empty() {
                left.push(e);
            }
        }
        pending = left;
        if pending.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dashboard queries without data:\n{}",
            pending.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every alert rule is loaded, evaluates cleanly, and its expression is valid PromQL.
    let alert_count = std::fs::read_to_string(&rules)
        .unwrap()
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    let loaded = until("the alert rules to be evaluated", || async {
        let v = http(prom.addr, "GET", "/api/v1/rules?type=alert", &[], None)
            .await
            .json();
        let rules: Vec<Value> = v["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let evaluated = rules.len() == alert_count
            && rules.iter().all(|r| {
                !r["lastEvaluation"]
                    .as_str()
                    .unwrap_or("0001")
                    .starts_with("0001")
            });
        evaluated.then_some(rules)
    })
    .await;
    for r in &loaded {
        assert_eq!(
            r["health"], "ok",
            "alert rule {}: {}",
            r["name"], r["lastError"]
        );
        let (status, _) = prom.query(r["query"].as_str().unwrap()).await;
        assert_eq!(status, "success", "alert {} does not evaluate", r["name"]);
    }
    let (_, r) = prom.query("electrum_gateway_upstreams_healthy == 0").await;
    assert!(
        r.as_array().unwrap().is_empty(),
        "healthy gateway looks unhealthy"
    );

    // With every upstream gone, the no-healthy-upstream alert goes off.
    stop_load.store(true, Ordering::Relaxed);
    assert!(load_task.await.unwrap() > 0);
    for i in 0..3 {
        net.sim.stop_endpoint(i).await;
    }
    until("ElectrumGatewayNoUpstreamHealthy to go off", || async {
        let v = http(prom.addr, "GET", "/api/v1/alerts", &[], None)
            .await
            .json();
        v["data"]["alerts"]
            .as_array()?
            .iter()
            .any(|a| {
                a["labels"]["alertname"] == "ElectrumGatewayNoUpstreamHealthy"
                    && (a["state"] == "pending" || a["state"] == "firing")
            })
            .then_some(())
    })
    .await;
    drop(prom.child);
    net.gw.shutdown();
}

// ---------------------------------------------------------------------------------------------
// The status page in a real browser.

async fn chromium_dump(bin: &Path, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let run = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--virtual-time-budget=5000")
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("chromium took too long")
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The HTML of the table row of an upstream.
fn row_of<'a>(dom: &'a str, name: &str) -> &'a str {
    let start = dom
        .find(&format!("<tr data-upstream=\"{name}\">"))
        .unwrap_or_else(|| panic!("no row for {name} in:\n{dom}"));
    let len = dom[start..].find("</tr>").expect("row end");
    &dom[start..start + len]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium (apt-get install chromium); run with: cargo test -- --include-ignored"]
async fn the_status_page_shows_upstreams_and_tips_in_chromium() {
    let chromium = program("chromium", "apt-get install chromium");
    let net = Net::start_http(&["127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0,lag=2"]).await;
    let tip = net.sim.tip_height();
    let names = net.names();
    net.admin_ok("upstreams.cordon", json!([1])).await;
    let page = net.get("/").await;
    assert_eq!(page.status, 200);
    assert!(page.headers["content-type"].starts_with("text/html"));
    assert!(
        !page.body.contains("http://") && !page.body.contains("https://"),
        "external asset"
    );

    let dom = chromium_dump(&chromium, &format!("http://{}/", net.http_addr())).await;
    for (i, name) in names.iter().enumerate() {
        let row = row_of(&dom, name);
        let want = if i == 2 { tip - 2 } else { tip };
        assert!(
            row.contains(&format!("<td class=\"num tip\">{want}</td>")),
            "upstream {name} should show tip {want}: {row}"
        );
        assert!(row.contains(">up</td>"), "{row}");
        assert_eq!(row.contains("cordoned"), i == 1, "{row}");
    }
    assert!(row_of(&dom, &names[2]).contains("<td class=\"num lag warn\">2</td>"));
    // Two tips at two heights: the agreement view lists both, without a conflict.
    assert!(dom.contains(&format!("<tr data-height=\"{tip}\">")));
    assert!(dom.contains(&format!("<tr data-height=\"{}\">", tip - 2)));
    // (The DOM includes the page's script: look for rendered markup, not bare words.)
    assert!(!dom.contains(">conflict at this height</span>"));
    assert!(dom.contains("<span id=\"health\" class=\"badge ok\">healthy</span>"));
    assert!(dom.contains(&format!("<strong id=\"best-tip\">{tip} (")));
    assert!(
        dom.contains(&format!(
            "<span class=\"kind warn\">cordon</span><strong>{} </strong>cordoned by an operator",
            names[1]
        )),
        "recent events"
    );
    assert!(!dom.contains(">cannot reach the gateway"));
    net.gw.shutdown();
}

// ---------------------------------------------------------------------------------------------
// Logs of the binary: one line per upstream state change, human or JSON.

async fn next_line_with(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    needle: &str,
) -> String {
    loop {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no log line with {needle:?}"))
            .unwrap()
            .unwrap_or_else(|| panic!("the gateway exited before logging {needle:?}"));
        if line.contains(needle) {
            return line;
        }
    }
}

/// Runs the gateway binary against one simulated upstream until it logs that the upstream was
/// connected and then lost; returns those two stderr lines.
async fn log_lines(sim: &Sim, endpoint: usize, extra: &[&str]) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_electrum-gateway"))
        .args(extra)
        .args([
            "--network",
            "regtest",
            "--listen-tcp",
            "127.0.0.1:0",
            "--listen-tls",
            "",
        ])
        .args(["--http", "127.0.0.1:0", "--upstream"])
        .arg(sim.url(endpoint).to_string())
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the gateway binary");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let up = next_line_with(&mut lines, "upstream connected").await;
    sim.stop_endpoint(endpoint).await;
    let lost = next_line_with(&mut lines, "upstream lost").await;
    child.kill().await.unwrap();
    (up, lost)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_logs_upstream_state_changes_as_text_or_json() {
    let sim = Sim::start(SimConfig::with_endpoints(&["127.0.0.1:0", "127.0.0.1:0"]).unwrap())
        .await
        .unwrap();
    let name = sim.url(0).authority();
    let (up, lost) = log_lines(&sim, 0, &["--log-format", "json"]).await;
    let up: Value = serde_json::from_str(&up).expect("a JSON log line");
    assert_eq!(up["level"], "INFO");
    assert_eq!(up["fields"]["message"], "upstream connected");
    assert_eq!(up["fields"]["upstream"], json!(name));
    let lost: Value = serde_json::from_str(&lost).expect("a JSON log line");
    assert_eq!(lost["level"], "WARN");
    assert_eq!(lost["fields"]["upstream"], json!(name));
    assert!(
        !lost["fields"]["reason"].as_str().unwrap().is_empty(),
        "{lost}"
    );

    let name = sim.url(1).authority();
    let (up, lost) = log_lines(&sim, 1, &[]).await;
    assert!(!up.starts_with('{') && up.contains("INFO"), "{up}");
    assert!(up.contains(&format!("upstream={name}")), "{up}");
    assert!(lost.contains("WARN") && lost.contains("reason="), "{lost}");
}
