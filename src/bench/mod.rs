//! `electrum-gateway bench`: a load generator for Electrum servers, proxies and the gateway.
//!
//! The question it answers is what a hop costs: the same load is sent straight to a server,
//! through a TCP proxy and through the gateway, and requests per second, latency percentiles
//! and errors are compared. To keep its own cost low and equal for every target it speaks the
//! raw line protocol over [`crate::transport`] framing: one `server.version` per connection,
//! then `--pipeline` requests kept in flight per connection, each reply matched by id.
//!
//! Besides plain load it has wallet-scale scenarios: many wallets holding many subscriptions
//! (`subscriptions`: time to subscribe, memory per connection and per subscription of the
//! process under test), block notification fan-out (`fanout`: from `sim.mine` to every wallet
//! seeing the new header) and failover (`failover`: load while an upstream is killed, and how
//! long answers stop). The workloads use the simulated chain's documented scripthashes and
//! transactions, so the answers are the same wherever they come from.

mod load;
mod wallets;

use anyhow::Context as _;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use crate::transport::{frame_lines, frame_ws, Framed, ServerUrl};

/// Methods `--method` accepts; `mix` is the default realistic mix.
pub const METHODS: [&str; 10] = [
    "mix",
    "blockchain.scripthash.get_balance",
    "blockchain.scripthash.get_history",
    "blockchain.scripthash.listunspent",
    "blockchain.block.header",
    "blockchain.transaction.get",
    "blockchain.transaction.get_merkle",
    "blockchain.estimatefee",
    "blockchain.headers.subscribe",
    "server.ping",
];

/// The default mix, by weight: a wallet syncing and verifying its history.
const MIX: [(&str, u32); 7] = [
    ("blockchain.scripthash.get_history", 20),
    ("blockchain.scripthash.get_balance", 15),
    ("blockchain.scripthash.listunspent", 15),
    ("blockchain.transaction.get", 25),
    ("blockchain.transaction.get_merkle", 10),
    ("blockchain.block.header", 10),
    ("server.ping", 5),
];

/// What the bench measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Requests as fast as answers come: throughput and latency.
    Load,
    /// Wallets subscribing to many scripthashes: subscribe time and memory.
    Subscriptions,
    /// Wallets subscribed to headers while blocks are mined: notification latency.
    Fanout,
    /// Load while `--kill-pid` is killed: how long answers stop.
    Failover,
}

/// Command-line arguments of `electrum-gateway bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The server to load: `tcp://`, `ssl://` (certificate not checked), `ws://` or `wss://`
    /// URL, or Electrum's `host:port:t|s`.
    #[arg(long, value_name = "URL")]
    pub server: ServerUrl,
    /// Connections (wallets) to open.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub connections: usize,
    /// Seconds of measured load (`load` and `failover`).
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    pub duration: f64,
    /// One method instead of the default mix: scripthash methods cycle over the simulated
    /// chain's documented scripthashes, `blockchain.block.header` asks random heights,
    /// `blockchain.transaction.get` known transactions.
    #[arg(long, value_name = "M", default_value = "mix", value_parser = METHODS)]
    pub method: String,
    /// Scripthash methods use only the first N of the documented scripthashes (1: every
    /// wallet asks about the same one); 0: all of them.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub scripthashes: usize,
    /// Requests kept in flight per connection.
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub pipeline: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Seconds of load before measuring starts.
    #[arg(long, value_name = "S", default_value_t = 0.0)]
    pub warmup: f64,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Scenario::Load)]
    pub scenario: Scenario,
    /// Scripthash subscriptions in all (`subscriptions`, `fanout`): fresh random
    /// scripthashes spread evenly over the connections.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub subscriptions: usize,
    /// Where `sim.mine` is sent (`fanout`): a simulated server's endpoint; default `--server`.
    #[arg(long, value_name = "URL")]
    pub control: Option<ServerUrl>,
    /// Blocks mined one after another (`fanout`).
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub rounds: usize,
    /// A process whose resident memory is measured before and after (`subscriptions`,
    /// `fanout`): the server, proxy or gateway under test.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Stop subscribing after this many seconds (`subscriptions`, `fanout`) and report what
    /// was reached instead of failing; 0: no limit.
    #[arg(long, value_name = "S", default_value_t = 0.0)]
    pub subscribe_limit: f64,
    /// Stop subscribing once the resident memory of `--pid` has grown by this many MiB since
    /// the start (`subscriptions`, `fanout`), and report what was reached; 0: no limit.
    #[arg(long, value_name = "MIB", default_value_t = 0)]
    pub max_rss_growth_mib: u64,
    /// Seconds to wait after the last subscription is answered before `--pid`'s memory is read
    /// again (`subscriptions`), the wallets still connected: the memory held once the burst of
    /// subscribing is over, besides the memory at its end; 0: not measured.
    #[arg(long, value_name = "S", default_value_t = 0.0)]
    pub settle: f64,
    /// A process to kill with SIGKILL during the run (`failover`): an upstream server.
    #[arg(long, value_name = "PID")]
    pub kill_pid: Option<u32>,
    /// Seconds into the measured load at which `--kill-pid` is killed.
    #[arg(long, value_name = "S", default_value_t = 2.0)]
    pub kill_after: f64,
    /// A label copied into the output (for scripts that collect results).
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub label: String,
}

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// Resident memory of the process under test, kB, at the points a scenario measures.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Memory {
    /// Before the wallets connect.
    pub start_kb: u64,
    /// After every wallet connected and negotiated.
    pub connected_kb: u64,
    /// After every subscription was answered.
    pub subscribed_kb: u64,
    /// (connected - start) / connections, bytes.
    pub per_connection_bytes: f64,
    /// (subscribed - connected) / subscriptions answered, bytes.
    pub per_subscription_bytes: Option<f64>,
    /// `--settle` seconds after the last answer, with every wallet still connected and
    /// subscribed: what holding the subscriptions costs once the burst's state is gone.
    pub settled_kb: Option<u64>,
    /// (settled - connected) / subscriptions answered, bytes.
    pub per_subscription_settled_bytes: Option<f64>,
    /// subscribed - start, bytes: what the connections and subscriptions cost together.
    pub growth_bytes: u64,
}

/// What a run measured; printed as text or as one JSON object (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario.
    pub scenario: Scenario,
    /// `--label`.
    pub label: String,
    /// The server loaded.
    pub server: String,
    /// The method or `mix`.
    pub method: String,
    /// Connections opened.
    pub connections: usize,
    /// Requests in flight per connection.
    pub pipeline: usize,
    /// Seconds measured.
    pub duration_s: f64,
    /// Successful answers in the measured window (subscriptions / notifications for the
    /// wallet scenarios).
    pub requests: u64,
    /// Error answers, lost requests and missed notifications.
    pub errors: u64,
    /// Successful answers per second.
    pub rps: f64,
    /// Latency of the answers (of subscribe answers, or of notification delivery).
    pub latency_us: Latency,
    /// Connections re-established after a loss.
    pub reconnects: u64,
    /// Seconds to subscribe everything (`subscriptions`, `fanout`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe_s: Option<f64>,
    /// Subscriptions answered (`subscriptions`, `fanout`); fewer than asked when a limit
    /// stopped the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscriptions_answered: Option<u64>,
    /// Why subscribing stopped before every subscription was sent: `time limit` or
    /// `memory limit` (`subscriptions`, `fanout`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<String>,
    /// Memory of `--pid` (`subscriptions`, `fanout`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// Blocks mined (`fanout`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rounds: Option<usize>,
    /// Per block, time from `sim.mine` to the last wallet's notification (`fanout`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_wallet_us: Option<Latency>,
    /// Seconds into the measured load at which the upstream was killed (`failover`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub killed_at_s: Option<f64>,
    /// Milliseconds from the kill to the first answer to a request sent after it
    /// (`failover`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_answer_after_kill_ms: Option<f64>,
    /// Longest time without any answer from the kill on, milliseconds (`failover`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub longest_stall_ms: Option<f64>,
    /// Errors from the kill on (`failover`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors_after_kill: Option<u64>,
    /// CPU seconds `--pid` used during the measured window (`load`, `failover`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_s: Option<f64>,
    /// `cpu_s` per successful answer, microseconds: what one request costs the process
    /// under test, whatever else runs on the machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_request: Option<f64>,
    /// CPU seconds the bench itself used during the measured window.
    pub bench_cpu_s: f64,
}

impl Report {
    fn new(args: &BenchArgs) -> Report {
        Report {
            scenario: args.scenario,
            label: args.label.clone(),
            server: args.server.to_string(),
            method: args.method.clone(),
            connections: args.connections,
            pipeline: args.pipeline,
            duration_s: 0.0,
            requests: 0,
            errors: 0,
            rps: 0.0,
            latency_us: Latency::default(),
            reconnects: 0,
            subscribe_s: None,
            subscriptions_answered: None,
            stopped_by: None,
            memory: None,
            rounds: None,
            last_wallet_us: None,
            killed_at_s: None,
            first_answer_after_kill_ms: None,
            longest_stall_ms: None,
            errors_after_kill: None,
            cpu_s: None,
            cpu_us_per_request: None,
            bench_cpu_s: 0.0,
        }
    }

    /// The human-readable form.
    pub fn to_text(&self) -> String {
        let l = &self.latency_us;
        let ms = |us: u64| us as f64 / 1000.0;
        let mut s = format!(
            "{} {} on {} ({} connections x {} in flight, {:.1} s)\n",
            self.scenario_name(),
            self.method,
            self.server,
            self.connections,
            self.pipeline,
            self.duration_s
        );
        s.push_str(&format!(
            "  answered {}  errors {}  {:.0} req/s  reconnects {}\n",
            self.requests, self.errors, self.rps, self.reconnects
        ));
        s.push_str(&format!(
            "  latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}  mean {:.3}\n",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.max),
            l.mean / 1000.0
        ));
        if let Some(t) = self.subscribe_s {
            match &self.stopped_by {
                None => s.push_str(&format!("  subscribed everything in {t:.2} s\n")),
                Some(why) => s.push_str(&format!(
                    "  stopped by the {why} after {t:.2} s: {} subscriptions answered\n",
                    self.subscriptions_answered.unwrap_or(0)
                )),
            }
        }
        if let Some(m) = &self.memory {
            s.push_str(&format!(
                "  memory kB: start {}  connected {}  subscribed {}; {:.0} B per connection",
                m.start_kb, m.connected_kb, m.subscribed_kb, m.per_connection_bytes
            ));
            if let Some(p) = m.per_subscription_bytes {
                s.push_str(&format!(", {p:.0} B per subscription"));
            }
            if let (Some(k), Some(p)) = (m.settled_kb, m.per_subscription_settled_bytes) {
                s.push_str(&format!("; settled {k}, {p:.0} B per subscription"));
            }
            s.push('\n');
        }
        if let (Some(r), Some(last)) = (self.rounds, &self.last_wallet_us) {
            s.push_str(&format!(
                "  {r} blocks; last wallet notified after ms: p50 {:.3}  max {:.3}\n",
                ms(last.p50),
                ms(last.max)
            ));
        }
        if let (Some(cpu), Some(per)) = (self.cpu_s, self.cpu_us_per_request) {
            s.push_str(&format!(
                "  process under test: {cpu:.2} CPU s, {per:.1} CPU us per answer; bench: {:.2} CPU s\n",
                self.bench_cpu_s
            ));
        }
        if let Some(at) = self.killed_at_s {
            s.push_str(&format!(
                "  killed pid at {at:.2} s; first answer to a later request after {:.1} ms; longest stall {:.1} ms; {} errors after\n",
                self.first_answer_after_kill_ms.unwrap_or(f64::NAN),
                self.longest_stall_ms.unwrap_or(f64::NAN),
                self.errors_after_kill.unwrap_or(0)
            ));
        }
        s
    }

    fn scenario_name(&self) -> &'static str {
        match self.scenario {
            Scenario::Load => "load",
            Scenario::Subscriptions => "subscriptions",
            Scenario::Fanout => "fanout",
            Scenario::Failover => "failover",
        }
    }
}

/// Runs `electrum-gateway bench` and prints its report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let report = measure(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}

/// Runs the scenario and returns what it measured.
pub async fn measure(args: &BenchArgs) -> anyhow::Result<Report> {
    if args.connections == 0 || args.pipeline == 0 {
        anyhow::bail!("--connections and --pipeline must be at least 1");
    }
    let positive = args.duration.is_finite() && args.duration > 0.0;
    let not_negative = args.warmup.is_finite() && args.warmup >= 0.0;
    if !(positive && not_negative) {
        anyhow::bail!("--duration must be positive and --warmup not negative");
    }
    let kill_in_window =
        args.kill_after.is_finite() && args.kill_after >= 0.0 && args.kill_after < args.duration;
    if !(args.settle.is_finite() && args.settle >= 0.0) {
        anyhow::bail!("--settle must be a number of seconds, 0 or more");
    }
    if !(args.subscribe_limit.is_finite() && args.subscribe_limit >= 0.0) {
        anyhow::bail!("--subscribe-limit must not be negative");
    }
    if args.scenario == Scenario::Failover && !kill_in_window {
        anyhow::bail!("--kill-after must fall within --duration");
    }
    match args.scenario {
        Scenario::Load | Scenario::Failover => load::run(args).await,
        Scenario::Subscriptions | Scenario::Fanout => wallets::run(args).await,
    }
}

/// How long dialing (with the handshakes and `server.version`) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest message accepted from the server.
const MAX_MESSAGE: usize = crate::protocol::DEFAULT_MAX_LINE;

/// Opens a framed connection: TCP, TLS (any certificate) or WebSocket.
async fn dial(url: &ServerUrl) -> anyhow::Result<Framed> {
    tokio::time::timeout(CONNECT_TIMEOUT, dial_inner(url))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {url} timed out"))?
}

async fn dial_inner(url: &ServerUrl) -> anyhow::Result<Framed> {
    use tokio::io::{AsyncRead, AsyncWrite};
    trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
    impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}
    let tcp = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    let _ = tcp.set_nodelay(true);
    let mut io: Box<dyn Io> = Box::new(tcp);
    if url.scheme.is_tls() {
        let (config, _) =
            crate::client::tls::client_config(&crate::client::TlsMode::Insecure, &url.authority())?;
        let name = crate::client::tls::server_name(&url.host)?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, io)
            .await
            .with_context(|| format!("TLS handshake with {url} failed"))?;
        io = Box::new(tls);
    }
    if url.scheme.is_ws() {
        let target = format!("{}://{}{}", url.scheme.as_str(), url.authority(), url.path);
        let (ws, _) = tokio_tungstenite::client_async(target, io)
            .await
            .with_context(|| format!("WebSocket handshake with {url} failed"))?;
        return Ok(frame_ws(ws, MAX_MESSAGE));
    }
    Ok(frame_lines(io, MAX_MESSAGE))
}

/// One reply as the bench reads it: only what it needs to match and classify it.
#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    method: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

/// What a line from the server is.
enum Line {
    /// An answer to request `id`, successful or not.
    Answer { id: u64, ok: bool },
    /// A notification.
    Notification,
    /// Anything else (an answer without a usable id, or not JSON-RPC).
    Other,
}

fn classify(line: &str) -> Line {
    match serde_json::from_str::<Reply>(line) {
        Ok(Reply {
            method: Some(_), ..
        }) => Line::Notification,
        Ok(Reply {
            id: Some(id),
            error,
            ..
        }) => Line::Answer {
            id,
            ok: error.is_none(),
        },
        _ => Line::Other,
    }
}

/// One request line.
fn request_line(id: u64, fragment: &str) -> String {
    let mut s = String::with_capacity(fragment.len() + 40);
    s.push_str(r#"{"jsonrpc":"2.0","id":"#);
    let _ = write!(s, "{id},");
    s.push_str(fragment);
    s.push('}');
    s
}

/// A connection that has negotiated its protocol version, for calls one at a time.
struct Session {
    framed: Framed,
    next_id: u64,
}

impl Session {
    /// Dials and sends `server.version`.
    async fn open(url: &ServerUrl) -> anyhow::Result<Session> {
        let framed = dial(url).await?;
        let mut s = Session { framed, next_id: 0 };
        s.call(
            "server.version",
            json!(["electrum-gateway-bench", ["1.4", "1.6"]]),
        )
        .await
        .with_context(|| format!("server.version with {url}"))?;
        Ok(s)
    }

    /// Sends one request and waits for its answer; notifications met meanwhile are dropped.
    async fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.framed.sink.send(line.to_string()).await?;
        let wait = async {
            loop {
                let Some(line) = self.framed.stream.next().await else {
                    anyhow::bail!("the server closed the connection");
                };
                let v: Value = serde_json::from_str(&line?).context("the server sent bad JSON")?;
                if v.get("id").and_then(Value::as_u64) != Some(id) {
                    continue;
                }
                if let Some(e) = v.get("error") {
                    anyhow::bail!("{method} failed: {e}");
                }
                return Ok(v.get("result").cloned().unwrap_or(Value::Null));
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, wait)
            .await
            .map_err(|_| anyhow::anyhow!("{method}: no answer within {CONNECT_TIMEOUT:?}"))?
    }
}

/// The requests a run cycles through, as `"method":...,"params":...` fragments.
struct Plan {
    fragments: Vec<String>,
}

impl Plan {
    /// Builds the workload for `method` from what the server says about the chain: its tip
    /// for random heights, the documented scripthashes' histories for known transactions.
    async fn discover(url: &ServerUrl, method: &str, only: usize) -> anyhow::Result<Plan> {
        let mut s = Session::open(url).await?;
        let tip = s.call("blockchain.headers.subscribe", json!([])).await?;
        let tip = tip
            .get("height")
            .and_then(Value::as_u64)
            .context("blockchain.headers.subscribe answered without a height")?;
        let mut scripthashes: Vec<&str> =
            crate::sim::ADDRESSES.iter().map(|a| a.scripthash).collect();
        if only > 0 {
            scripthashes.truncate(only);
        }
        let mut txs = BTreeSet::new();
        if matches!(
            method,
            "mix" | "blockchain.transaction.get" | "blockchain.transaction.get_merkle"
        ) {
            for sh in &scripthashes {
                let h = s
                    .call("blockchain.scripthash.get_history", json!([sh]))
                    .await?;
                for e in h.as_array().into_iter().flatten() {
                    let (Some(txid), Some(height)) = (
                        e.get("tx_hash").and_then(Value::as_str),
                        e.get("height").and_then(Value::as_i64),
                    ) else {
                        continue;
                    };
                    if height > 0 {
                        txs.insert((txid.to_string(), height));
                    }
                }
            }
            if txs.is_empty() {
                anyhow::bail!(
                    "{url} knows no transaction of the simulated chain's documented addresses; \
                     the transaction workloads need `electrum-gateway sim` behind it"
                );
            }
        }
        let txs: Vec<(String, i64)> = txs.into_iter().collect();
        Ok(Plan::build(method, tip, &scripthashes, &txs))
    }

    /// 4096 fragments in a fixed pseudo-random order.
    fn build(method: &str, tip: u64, scripthashes: &[&str], txs: &[(String, i64)]) -> Plan {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let methods: Vec<&str> = if method == "mix" {
            MIX.iter()
                .flat_map(|(m, w)| std::iter::repeat(*m).take(*w as usize))
                .collect()
        } else {
            vec![method]
        };
        let mut fragments: Vec<String> = (0..4096)
            .map(|i| {
                let m = methods[i % methods.len()];
                let params = match m {
                    "blockchain.scripthash.get_balance"
                    | "blockchain.scripthash.get_history"
                    | "blockchain.scripthash.listunspent" => {
                        json!([scripthashes[i % scripthashes.len()]])
                    }
                    "blockchain.block.header" => json!([rng.gen_range(0..=tip)]),
                    "blockchain.transaction.get" => json!([txs[i % txs.len()].0]),
                    "blockchain.transaction.get_merkle" => {
                        let (txid, height) = &txs[i % txs.len()];
                        json!([txid, height])
                    }
                    "blockchain.estimatefee" => json!([6]),
                    _ => json!([]),
                };
                format!(r#""method":"{m}","params":{params}"#)
            })
            .collect();
        fragments.shuffle(&mut rng);
        Plan { fragments }
    }
}

/// Resident memory of a process, kB, from `/proc/PID/status`.
pub fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read the memory of process {pid}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS for process {pid}"))
}

/// CPU time (user + system, all threads) a process has used, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read the CPU time of process {pid}"))?;
    // The command name is in parentheses and may hold spaces: count fields after it.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("unexpected /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("unexpected /proc/{pid}/stat"))
    };
    // Linux reports these in USER_HZ, which is 100 on every architecture it supports.
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

/// A histogram of microseconds from 1 µs to 10 minutes, 3 significant digits.
fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Fresh random scripthashes (64 hex digits; unknown to any chain, so their status is null).
fn random_scripthashes(n: usize, seed: u64) -> Vec<String> {
    use bitcoin::hex::DisplayHex;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| rng.gen::<[u8; 32]>().to_lower_hex_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_lines() {
        assert!(matches!(
            classify(r#"{"jsonrpc":"2.0","result":{"a":[1,2]},"id":7}"#),
            Line::Answer { id: 7, ok: true }
        ));
        assert!(matches!(
            classify(r#"{"jsonrpc":"2.0","error":{"code":2,"message":"x"},"id":8}"#),
            Line::Answer { id: 8, ok: false }
        ));
        assert!(matches!(
            classify(r#"{"jsonrpc":"2.0","method":"blockchain.headers.subscribe","params":[{}]}"#),
            Line::Notification
        ));
        assert!(matches!(
            classify(r#"{"jsonrpc":"2.0","error":{"code":-32700,"message":"x"},"id":null}"#),
            Line::Other
        ));
        assert!(matches!(classify("not json"), Line::Other));
    }

    #[test]
    fn plans_follow_the_method() {
        let txs = vec![("aa".repeat(32), 5), ("bb".repeat(32), 9)];
        let shs = ["11".repeat(32), "22".repeat(32)];
        let shs: Vec<&str> = shs.iter().map(String::as_str).collect();
        let plan = Plan::build("blockchain.block.header", 10, &shs, &txs);
        assert_eq!(plan.fragments.len(), 4096);
        for f in &plan.fragments {
            let v: Value = serde_json::from_str(&format!("{{{f}}}")).unwrap();
            assert_eq!(v["method"], "blockchain.block.header");
            assert!(v["params"][0].as_u64().unwrap() <= 10);
        }
        let plan = Plan::build("mix", 10, &shs, &txs);
        let count = |m: &str| {
            plan.fragments
                .iter()
                .filter(|f| f.contains(&format!(r#""method":"{m}""#)))
                .count()
        };
        // Weights 25 : 5 over 100.
        assert!(count("blockchain.transaction.get") > 900);
        assert!(count("server.ping") > 150 && count("server.ping") < 250);
        let merkle = plan
            .fragments
            .iter()
            .find(|f| f.contains("get_merkle"))
            .unwrap();
        let v: Value = serde_json::from_str(&format!("{{{merkle}}}")).unwrap();
        assert!(txs.iter().any(|(t, h)| v["params"] == json!([t, h])));
    }

    #[test]
    fn request_lines_are_json_rpc() {
        let v: Value =
            serde_json::from_str(&request_line(42, r#""method":"server.ping","params":[]"#))
                .unwrap();
        assert_eq!(
            v,
            json!({"jsonrpc": "2.0", "id": 42, "method": "server.ping", "params": []})
        );
    }

    #[test]
    fn random_scripthashes_are_distinct_hex() {
        let v = random_scripthashes(100, 1);
        assert_eq!(v.iter().collect::<BTreeSet<_>>().len(), 100);
        assert!(v
            .iter()
            .all(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())));
    }

    #[test]
    fn reads_own_memory_and_cpu() {
        assert!(rss_kb(std::process::id()).unwrap() > 0);
        assert!(rss_kb(u32::MAX).is_err());
        // Spin until the process's CPU time shows the work (on a busy machine the wall time
        // this takes is anyone's guess; a reader that never advances fails at the limit).
        let before = cpu_time(std::process::id()).unwrap();
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        let mut used = Duration::ZERO;
        while used < Duration::from_millis(50) && spin.elapsed() < Duration::from_secs(60) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            used = cpu_time(std::process::id()).unwrap() - before;
        }
        assert!(used >= Duration::from_millis(50), "{used:?}");
        assert!(cpu_time(u32::MAX).is_err());
    }
}
