//! The gateway in front of three real ElectrumX, against one ElectrumX straight: what
//! `bench/run.sh` (phase `electrumx`) reports.
//!
//! It starts the interop test's setup (tests/interop.rs): a simulated bitcoind, three ElectrumX
//! 2.0.0 from `.venv` (or `ELECTRUMX_BIN`) indexing it, and the gateway with its default
//! configuration in front of them. Then, through the gateway and straight to the first
//! ElectrumX:
//!
//! - `--wallets` wallets connect, then each subscribes to 5 distinct scripthashes at once (the
//!   simulated chain's funded addresses among fresh ones): time until every subscribe is
//!   answered;
//! - `--connections` x `--pipeline` wallets read known confirmed transactions and their merkle
//!   proofs (`blockchain.transaction.get` and `.get_merkle`, taking turns) for `--duration`
//!   seconds, after one read of each through the gateway so that its answers are cache hits.
//!
//! Every answer is checked against the chain the bitcoind serves; a wrong or missing answer
//! fails the run. Timings are only reported: one JSON line on stdout. Logs go to stderr
//! (`RUST_LOG`, e.g. `electrum_gateway=debug`).
//!
//! `--trace-upstreams FILE` puts a relay between the gateway and each ElectrumX and writes one
//! line per JSON-RPC message it carries: milliseconds since the start, connection, `>` (to
//! ElectrumX) or `<`, id, method (requests) and phase; to see what the gateway asks and when
//! answers come (the relay costs some latency; timings of such a run are not the figures).
//!
//! This is an example rather than a test so that `cargo test -- --include-ignored` builds it
//! (it keeps compiling with the interop helpers it shares) without running a benchmark.
//!
//!   cargo run --release --example electrumx_bench -- --wallets 200 --duration 4

#[allow(dead_code)]
#[path = "../tests/interop/bitcoind.rs"]
mod bitcoind;
#[path = "../tests/common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "../tests/interop/electrumx.rs"]
mod electrumx;
#[allow(dead_code)]
#[path = "../tests/interop/expect.rs"]
mod expect;

use anyhow::{bail, Context as _};
use bitcoin::hashes::Hash as _;
use bitcoin::Txid;
use electrum_gateway::config::Config;
use electrum_gateway::gateway::Gateway;
use electrum_gateway::sim::{SimConfig, ADDRESSES};
use rand::{Rng, SeedableRng};
use serde_json::{json, value::RawValue, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Scripthashes each wallet subscribes to.
const PER_WALLET: usize = 5;
/// Longest wait for any one answer; a slower answer counts as missing.
const ANSWER_WAIT: Duration = Duration::from_secs(120);

struct Args {
    trace: Option<std::path::PathBuf>,
    wallets: usize,
    connections: usize,
    pipeline: usize,
    duration: f64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        trace: None,
        wallets: 200,
        connections: 50,
        pipeline: 8,
        duration: 4.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--wallets" => args.wallets = value.parse().context("--wallets")?,
            "--connections" => args.connections = value.parse().context("--connections")?,
            "--pipeline" => args.pipeline = value.parse().context("--pipeline")?,
            "--duration" => args.duration = value.parse().context("--duration")?,
            "--trace-upstreams" => args.trace = Some(value.into()),
            _ => bail!(
                "unknown option {flag}; options: --wallets --connections --pipeline --duration \
                 --trace-upstreams FILE"
            ),
        }
    }
    if args.wallets == 0 || args.connections == 0 || args.pipeline == 0 {
        bail!("--wallets, --connections and --pipeline must be at least 1");
    }
    if !(args.duration.is_finite() && args.duration > 0.0) {
        bail!("--duration must be positive");
    }
    Ok(args)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
    // The gateway gets its own runtime, so that the wallets' work and its own do not share
    // a scheduler (as when it runs as its own process).
    let gw_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("gateway")
        .enable_all()
        .build()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let (btc, servers) = rt.block_on(start_electrumx(dir.path()));
    let mut cfg = Config {
        network: "regtest".into(),
        data_dir: dir.path().join("gateway"),
        ..Config::default()
    };
    let trace = match &args.trace {
        Some(path) => Some(Trace::new(path)?),
        None => None,
    };
    cfg.upstreams.servers = match &trace {
        None => servers.iter().map(|s| s.url()).collect(),
        Some(t) => servers
            .iter()
            .map(|s| {
                let port = rt.block_on(relay(s.port, t.clone()))?;
                anyhow::Ok(format!("tcp://127.0.0.1:{port}"))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    cfg.upstreams.use_server_list = false;
    cfg.listen.tcp = "127.0.0.1:0".into();
    cfg.listen.tls = String::new();
    cfg.listen.http = String::new();
    let tip = btc.snapshot().tip_height();
    let gw = gw_rt.block_on(async {
        let gw = Gateway::start(cfg).await?;
        if !gw.wait_connected(3, electrumx::SYNC_WAIT).await {
            bail!("the gateway did not connect to the three ElectrumX");
        }
        let mut rx = gw.tip_watch();
        tokio::time::timeout(
            electrumx::SYNC_WAIT,
            rx.wait_for(|t| t.as_ref().is_some_and(|t| t.height >= tip)),
        )
        .await
        .context("the gateway's tip did not reach the chain's")??;
        anyhow::Ok(gw)
    })?;
    let gw_addr = gw.tcp_addr().context("the gateway has no TCP listener")?;
    let ex_addr: SocketAddr = ([127, 0, 0, 1], servers[0].port).into();
    let report = rt.block_on(measure(&args, &btc, gw_addr, ex_addr, trace.as_ref()))?;
    println!("{report}");
    drop(gw);
    drop(gw_rt);
    drop(servers);
    Ok(())
}

async fn start_electrumx(dir: &std::path::Path) -> (bitcoind::Bitcoind, Vec<electrumx::ElectrumX>) {
    let bin = electrumx::binary();
    let btc = bitcoind::Bitcoind::start(SimConfig {
        seed: 21,
        ..SimConfig::default()
    })
    .await;
    let mut servers: Vec<electrumx::ElectrumX> = (0..3)
        .map(|i| electrumx::ElectrumX::start(&bin, i, dir, &btc.url()))
        .collect();
    let tip = btc.snapshot().tip_height();
    // Ready: listening and at the chain's tip (the monitors are dropped at once).
    futures::future::join_all(servers.iter_mut().map(|s| s.ready(tip, &[]))).await;
    (btc, servers)
}

async fn measure(
    args: &Args,
    btc: &bitcoind::Bitcoind,
    gw: SocketAddr,
    ex: SocketAddr,
    trace: Option<&Arc<Trace>>,
) -> anyhow::Result<Value> {
    let phase = |name: &'static str| {
        if let Some(t) = trace {
            t.phase(name);
        }
    };
    let snap = btc.snapshot();
    let documented: Vec<String> = ADDRESSES.iter().map(|a| a.scripthash.to_string()).collect();
    let expected = expect::Expected::compute(&snap, &documented);
    let statuses = expected.statuses();
    let n = args.wallets * PER_WALLET;
    let shares = |seed: u64| -> Vec<String> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let fresh = (documented.len()..n.max(documented.len()))
            .map(|_| bitcoin::hex::DisplayHex::to_lower_hex_string(&rng.gen::<[u8; 32]>()[..]));
        documented.iter().cloned().chain(fresh).take(n).collect()
    };
    // Fresh scripthashes for each target, so that neither meets the other's work.
    phase("subscribe-direct");
    let direct_subs = subscribe_at_once(ex, args.wallets, &shares(1), &statuses)
        .await
        .context("subscribing straight to ElectrumX")?;
    phase("subscribe-gateway");
    let gateway_subs = subscribe_at_once(gw, args.wallets, &shares(2), &statuses)
        .await
        .context("subscribing through the gateway")?;

    // Known confirmed transactions, with their block's merkle root for checking proofs.
    let mut txs: Vec<Known> = Vec::new();
    for (height, block) in snap.main_blocks().enumerate().skip(1) {
        for (pos, tx) in block.txdata.iter().enumerate() {
            txs.push(Known {
                txid: tx.compute_txid(),
                hex: format!("\"{}\"", bitcoin::consensus::encode::serialize_hex(tx)),
                height: height as u32,
                pos: pos as u64,
                root: block.header.merkle_root.to_byte_array(),
            });
        }
    }
    txs.truncate(256);
    if txs.is_empty() {
        bail!("the chain has no confirmed transaction");
    }
    let txs = Arc::new(txs);
    // One read of each through the gateway: what follows is answered from its cache. Many in
    // flight, as ElectrumX holds back small answers to one request at a time.
    phase("warm-reads");
    read_for(gw, 1, 64, &txs, None)
        .await
        .context("warming the gateway's cache")?;
    let direct_reads = read_for(
        ex,
        args.connections,
        args.pipeline,
        &txs,
        Some(args.duration),
    )
    .await
    .context("reading straight from ElectrumX")?;
    phase("reads-gateway");
    let gateway_reads = read_for(
        gw,
        args.connections,
        args.pipeline,
        &txs,
        Some(args.duration),
    )
    .await
    .context("reading through the gateway")?;

    phase("done");
    Ok(json!({
        "wallets": args.wallets,
        "subscriptions": n,
        "subscribe_direct_s": direct_subs,
        "subscribe_gateway_s": gateway_subs,
        "reads_connections": args.connections,
        "reads_pipeline": args.pipeline,
        "reads_direct_rps": direct_reads,
        "reads_gateway_rps": gateway_reads,
    }))
}

/// A raw line-protocol wallet.
struct Wallet {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    line: String,
}

impl Wallet {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Wallet> {
        let s = TcpStream::connect(addr).await?;
        let _ = s.set_nodelay(true);
        let (r, w) = s.into_split();
        let mut w = Wallet {
            reader: BufReader::new(r),
            writer: w,
            line: String::new(),
        };
        w.send(&[request(0, "server.version", json!(["bench", "1.4"]))])
            .await?;
        let (id, _) = w.answer().await?;
        if id != 0 {
            bail!("server.version answered with id {id}");
        }
        Ok(w)
    }

    async fn send(&mut self, lines: &[String]) -> anyhow::Result<()> {
        let mut buf = String::new();
        for l in lines {
            buf.push_str(l);
            buf.push('\n');
        }
        self.writer.write_all(buf.as_bytes()).await?;
        Ok(())
    }

    /// The next answer (notifications are skipped): its id and result, failing on an error.
    async fn answer(&mut self) -> anyhow::Result<(u64, Box<RawValue>)> {
        #[derive(serde::Deserialize)]
        struct Answer {
            id: Option<u64>,
            method: Option<String>,
            result: Option<Box<RawValue>>,
            error: Option<Value>,
        }
        loop {
            self.line.clear();
            let n = tokio::time::timeout(ANSWER_WAIT, self.reader.read_line(&mut self.line))
                .await
                .context("an answer did not come in time")??;
            if n == 0 {
                bail!("the server closed the connection");
            }
            let a: Answer = serde_json::from_str(&self.line)
                .with_context(|| format!("bad JSON {:?}", self.line))?;
            if a.method.is_some() {
                continue;
            }
            if let Some(e) = a.error {
                bail!("error answer: {e}");
            }
            let Some(id) = a.id else {
                bail!("an answer without id: {}", self.line);
            };
            // serde reads a null result as None.
            let result = match a.result {
                Some(r) => r,
                None => RawValue::from_string("null".into())?,
            };
            return Ok((id, result));
        }
    }
}

fn request(id: u64, method: &str, params: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
}

/// `wallets` wallets connect; then each sends its share of `scripthashes` as subscriptions
/// at once. Returns the seconds from the first subscribe sent to the last answered, after
/// checking every status.
async fn subscribe_at_once(
    addr: SocketAddr,
    wallets: usize,
    scripthashes: &[String],
    statuses: &std::collections::BTreeMap<String, Option<String>>,
) -> anyhow::Result<f64> {
    let mut conns = Vec::with_capacity(wallets);
    for _ in 0..wallets {
        conns.push(Wallet::connect(addr).await?);
    }
    let began = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut w)| {
            let mine: Vec<String> = scripthashes
                .iter()
                .skip(i)
                .step_by(wallets)
                .cloned()
                .collect();
            let want: Vec<Option<String>> = mine
                .iter()
                .map(|sh| statuses.get(sh).cloned().flatten())
                .collect();
            tokio::spawn(async move {
                let lines: Vec<String> = mine
                    .iter()
                    .enumerate()
                    .map(|(k, sh)| {
                        request(k as u64 + 1, "blockchain.scripthash.subscribe", json!([sh]))
                    })
                    .collect();
                w.send(&lines).await?;
                for _ in 0..lines.len() {
                    let (id, result) = w.answer().await?;
                    let k = usize::try_from(id)
                        .ok()
                        .and_then(|id| id.checked_sub(1))
                        .filter(|k| *k < mine.len())
                        .with_context(|| format!("an answer to unknown id {id}"))?;
                    let got: Option<String> = serde_json::from_str(result.get())?;
                    if got != want[k] {
                        bail!("status of {}: got {got:?}, expected {:?}", mine[k], want[k]);
                    }
                }
                anyhow::Ok(w)
            })
        })
        .collect();
    let mut kept = Vec::with_capacity(wallets);
    for t in tasks {
        kept.push(t.await??);
    }
    let took = began.elapsed().as_secs_f64();
    drop(kept);
    Ok(took)
}

/// A confirmed transaction and what its answers must be.
struct Known {
    txid: Txid,
    /// The `transaction.get` result, JSON string.
    hex: String,
    height: u32,
    pos: u64,
    root: [u8; 32],
}

/// `connections` wallets keep `k` reads in flight each, taking turns between
/// `transaction.get` and `get_merkle` over `txs`: for `duration` seconds, or (None) until each
/// read has been made once. Checks every answer; returns answers per second.
async fn read_for(
    addr: SocketAddr,
    connections: usize,
    k: usize,
    txs: &Arc<Vec<Known>>,
    duration: Option<f64>,
) -> anyhow::Result<f64> {
    let began = Instant::now();
    let until = duration.map(|d| began + Duration::from_secs_f64(d));
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let txs = txs.clone();
            tokio::spawn(async move {
                let mut w = Wallet::connect(addr).await?;
                let reads = 2 * txs.len();
                let mut next = c * 7;
                let mut sent: HashMap<u64, usize> = HashMap::new();
                let mut id = 1u64;
                let mut answered = 0u64;
                let mut issued = 0usize;
                loop {
                    let more = match until {
                        Some(t) => Instant::now() < t,
                        None => issued < reads,
                    };
                    let mut lines = Vec::new();
                    while more && sent.len() < k && (until.is_some() || issued < reads) {
                        let r = next % reads;
                        let t = &txs[r / 2];
                        lines.push(match r % 2 {
                            0 => request(
                                id,
                                "blockchain.transaction.get",
                                json!([t.txid.to_string()]),
                            ),
                            _ => request(
                                id,
                                "blockchain.transaction.get_merkle",
                                json!([t.txid.to_string(), t.height]),
                            ),
                        });
                        sent.insert(id, r);
                        id += 1;
                        next += 1;
                        issued += 1;
                    }
                    if !lines.is_empty() {
                        w.send(&lines).await?;
                    }
                    if sent.is_empty() {
                        break;
                    }
                    let (got, result) = w.answer().await?;
                    let r = sent
                        .remove(&got)
                        .with_context(|| format!("an answer to unknown id {got}"))?;
                    check_read(&txs[r / 2], r % 2 == 1, &result)?;
                    answered += 1;
                }
                anyhow::Ok(answered)
            })
        })
        .collect();
    let mut answered = 0u64;
    for t in tasks {
        answered += t.await??;
    }
    Ok(answered as f64 / began.elapsed().as_secs_f64().max(1e-9))
}

fn check_read(t: &Known, merkle: bool, result: &RawValue) -> anyhow::Result<()> {
    if !merkle {
        if result.get() != t.hex {
            bail!("transaction.get {}: wrong transaction", t.txid);
        }
        return Ok(());
    }
    let v: Value = serde_json::from_str(result.get())?;
    let pos = v["pos"].as_u64().context("get_merkle without pos")?;
    let height = v["block_height"]
        .as_u64()
        .context("get_merkle without block_height")?;
    let branch = v["merkle"]
        .as_array()
        .context("get_merkle without merkle")?;
    if pos != t.pos || height != u64::from(t.height) {
        bail!(
            "get_merkle {}: pos {pos} at {height}, expected {} at {}",
            t.txid,
            t.pos,
            t.height
        );
    }
    if expect::merkle_root(&t.txid, branch, pos) != t.root {
        bail!(
            "get_merkle {}: the branch does not lead to the block's root",
            t.txid
        );
    }
    Ok(())
}

/// The relays' log (`--trace-upstreams`).
struct Trace {
    began: std::time::Instant,
    phase: std::sync::Mutex<&'static str>,
    out: std::sync::Mutex<std::io::BufWriter<std::fs::File>>,
    conns: std::sync::atomic::AtomicUsize,
}

impl Trace {
    fn new(path: &std::path::Path) -> anyhow::Result<Arc<Trace>> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Arc::new(Trace {
            began: std::time::Instant::now(),
            phase: std::sync::Mutex::new("setup"),
            out: std::sync::Mutex::new(std::io::BufWriter::new(file)),
            conns: std::sync::atomic::AtomicUsize::new(0),
        }))
    }

    fn phase(&self, name: &'static str) {
        if let Ok(mut p) = self.phase.lock() {
            *p = name;
        }
        self.write(0, '-', "", name);
    }

    /// Logs each message of a line (a batch has several).
    fn line(&self, conn: usize, dir: char, line: &str) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return self.write(conn, dir, "?", "unparsed");
        };
        let one = |m: &Value| {
            let id = m.get("id").map(|i| i.to_string()).unwrap_or_default();
            let method = m.get("method").and_then(Value::as_str).unwrap_or("");
            self.write(conn, dir, &id, method);
        };
        match v.as_array() {
            Some(batch) => batch.iter().for_each(one),
            None => one(&v),
        }
    }

    fn write(&self, conn: usize, dir: char, id: &str, method: &str) {
        use std::io::Write as _;
        let ms = self.began.elapsed().as_secs_f64() * 1000.0;
        let phase = self.phase.lock().map(|p| *p).unwrap_or("");
        if let Ok(mut out) = self.out.lock() {
            let _ = writeln!(out, "{ms:.3}\t{conn}\t{dir}\t{id}\t{method}\t{phase}");
        }
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        use std::io::Write as _;
        if let Ok(mut out) = self.out.lock() {
            let _ = out.flush();
        }
    }
}

/// Listens on a free port and relays each connection to ElectrumX at `port` line by line,
/// logging every message; returns the port.
async fn relay(port: u16, trace: Arc<Trace>) -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let local = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((down, _)) = listener.accept().await {
            let trace = trace.clone();
            tokio::spawn(async move {
                let Ok(up) = TcpStream::connect(("127.0.0.1", port)).await else {
                    return;
                };
                let _ = up.set_nodelay(true);
                let _ = down.set_nodelay(true);
                let conn = trace
                    .conns
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    + 1;
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                let t2 = trace.clone();
                tokio::spawn(pipe(dr, uw, trace, conn, '>'));
                tokio::spawn(pipe(ur, dw, t2, conn, '<'));
            });
        }
    });
    Ok(local)
}

async fn pipe(
    from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    trace: Arc<Trace>,
    conn: usize,
    dir: char,
) {
    let mut lines = BufReader::new(from).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        trace.line(conn, dir, &line);
        if to.write_all(format!("{line}\n").as_bytes()).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}
