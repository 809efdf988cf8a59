//! A simulated bitcoind: the part of Bitcoin Core's JSON-RPC over HTTP that ElectrumX uses,
//! serving the deterministic regtest chain of an in-process [`Sim`].
//!
//! ElectrumX indexes a chain by asking a node for block hashes, raw blocks, the mempool and raw
//! transactions, and relays broadcasts to it. A real node cannot run here (no binaries can be
//! fetched, and mining on demand would be slow and nondeterministic), so this test double
//! answers those calls from the simulator's chain: real regtest headers with proof of work,
//! merkle roots and transactions, so everything ElectrumX derives can be checked against the
//! same data.
//!
//! What it mimics from Bitcoin Core 31 because ElectrumX depends on it:
//! - HTTP/1.1 with keep-alive (aiohttp reuses connections), `Content-Length` or chunked
//!   request bodies, basic authentication;
//! - responses with `Content-Type: application/json` exactly (ElectrumX refuses anything else
//!   as "service refused"), every result object carrying both `result` and `error`;
//! - batches (JSON arrays, answered in request order): ElectrumX asks for block hashes, raw
//!   blocks and mempool transactions that way;
//! - single requests that fail get HTTP 500 (404 for an unknown method) with the JSON error;
//! - `getnetworkinfo` at version 310000 (ElectrumX 2.0 refuses older nodes), `getindexinfo`
//!   with `txindex` and `txospenderindex`;
//! - `sendrawtransaction` answers a transaction already in the mempool with its txid, and one
//!   already confirmed with -27 "Transaction outputs already in utxo set".
//!
//! Every block ever on the main chain stays servable by hash after a reorg: ElectrumX may ask
//! for the blocks it is about to undo.

use bitcoin::consensus::{deserialize, serialize};
use bitcoin::hex::{DisplayHex, FromHex};
use bitcoin::{Block, BlockHash, Transaction, Txid};
use electrum_gateway::sim::{Sim, SimConfig};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The RPC credentials in the daemon URL ElectrumX is given.
const USER: &str = "user";
const PASSWORD: &str = "pass";
/// `base64("user:pass")`, what an HTTP client sends for those credentials.
const BASIC_AUTH: &str = "Basic dXNlcjpwYXNz";
/// Largest request head or body accepted (a batch of 1000 `getblock` calls is ~100 KB).
const MAX_REQUEST: usize = 8_000_000;

/// `estimatesmartfee` answers, BTC/kvB, by confirmation target (at most this many blocks).
const FEE_RATES: [(u64, f64); 3] = [(2, 0.0002), (6, 0.0001), (u64::MAX, 0.00005)];
/// `minrelaytxfee`, `mempoolminfee`, `incrementalrelayfee` and `relayfee`, BTC/kvB.
pub const MIN_FEE: f64 = 0.00001;

/// The `estimatesmartfee` feerate for a confirmation target.
pub fn fee_rate(target: u64) -> f64 {
    FEE_RATES
        .iter()
        .find(|(max, _)| target.max(1) <= *max)
        .map(|(_, r)| *r)
        .unwrap_or(MIN_FEE)
}

/// A consistent picture of the chain as the node serves it at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Main-chain block hashes by height.
    pub main: Vec<BlockHash>,
    /// Every block that was ever on the main chain, by hash.
    pub blocks: HashMap<BlockHash, Arc<Block>>,
    /// Raw hex of those blocks, as `getblock` serves it.
    raw_blocks: HashMap<BlockHash, Arc<str>>,
    /// Mempool transactions in acceptance order.
    pub mempool: Vec<Arc<Transaction>>,
    /// Transactions of the main chain and the mempool (what `txindex` finds), with the block
    /// that confirms them.
    pub txs: HashMap<Txid, (Arc<Transaction>, Option<BlockHash>)>,
}

impl Snapshot {
    /// The tip height.
    pub fn tip_height(&self) -> u32 {
        (self.main.len() - 1) as u32
    }

    /// The main-chain block at `height`.
    pub fn block(&self, height: u32) -> &Block {
        &self.blocks[&self.main[height as usize]]
    }

    /// The main-chain blocks, genesis first.
    pub fn main_blocks(&self) -> impl Iterator<Item = &Block> {
        self.main.iter().map(|h| &*self.blocks[h])
    }
}

/// Reads the simulator's main chain and mempool into a new snapshot, reusing blocks `prev`
/// already holds.
fn take_snapshot(sim: &Sim, prev: &Snapshot) -> Snapshot {
    let tip = sim.tip_height();
    let mut snap = Snapshot {
        main: Vec::with_capacity(tip as usize + 1),
        blocks: prev.blocks.clone(),
        raw_blocks: prev.raw_blocks.clone(),
        ..Snapshot::default()
    };
    for height in 0..=tip {
        let hash = sim.block_hash(height).expect("a main-chain height");
        if !snap.blocks.contains_key(&hash) {
            let block = if height == 0 {
                bitcoin::blockdata::constants::genesis_block(bitcoin::Network::Regtest)
            } else {
                let header = deserialize(
                    &Vec::from_hex(&sim.header_hex(height).expect("header")).expect("hex"),
                )
                .expect("an 80-byte header");
                let txdata = sim
                    .block_txids(height)
                    .expect("txids")
                    .iter()
                    .map(|txid| {
                        let hex = sim.tx_hex(txid).expect("a main-chain transaction");
                        deserialize(&Vec::from_hex(&hex).expect("hex")).expect("a transaction")
                    })
                    .collect();
                Block { header, txdata }
            };
            assert_eq!(
                block.block_hash(),
                hash,
                "block {height} rebuilt from the sim"
            );
            assert!(block.check_merkle_root(), "merkle root of block {height}");
            let raw: Arc<str> = serialize(&block).to_lower_hex_string().into();
            snap.raw_blocks.insert(hash, raw);
            snap.blocks.insert(hash, Arc::new(block));
        }
        snap.main.push(hash);
    }
    for hash in &snap.main {
        for tx in &snap.blocks[hash].txdata {
            snap.txs
                .insert(tx.compute_txid(), (Arc::new(tx.clone()), Some(*hash)));
        }
    }
    for txid in sim.mempool_txids() {
        let hex = sim.tx_hex(&txid).expect("a mempool transaction");
        let tx: Arc<Transaction> =
            Arc::new(deserialize(&Vec::from_hex(&hex).expect("hex")).expect("a transaction"));
        snap.txs.insert(txid, (tx.clone(), None));
        snap.mempool.push(tx);
    }
    snap
}

/// What the node has been asked, for the test to check that the double was exercised the
/// way a real node is.
#[derive(Debug, Default)]
struct Counters {
    calls: BTreeMap<String, u64>,
    batches: u64,
    connections: u64,
}

struct Inner {
    sim: Sim,
    /// The snapshot being served. Changes (mining, payments, reorgs, broadcasts) happen under
    /// this lock, so a request never sees a half-applied change.
    snap: Mutex<Arc<Snapshot>>,
    counters: Mutex<Counters>,
}

impl Inner {
    /// Applies a change to the chain and serves the result. `f` sees the snapshot served
    /// until now.
    fn change<T>(&self, f: impl FnOnce(&Sim, &Snapshot) -> T) -> T {
        let mut snap = self.snap.lock().unwrap();
        let out = f(&self.sim, &snap);
        *snap = Arc::new(take_snapshot(&self.sim, &snap));
        out
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snap.lock().unwrap().clone()
    }
}

/// A running simulated bitcoind.
pub struct Bitcoind {
    inner: Arc<Inner>,
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Bitcoind {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Bitcoind {
    /// Generates the chain and listens on a free loopback port.
    pub async fn start(config: SimConfig) -> Bitcoind {
        let sim = Sim::start(SimConfig {
            endpoints: Vec::new(),
            ..config
        })
        .await
        .expect("simulated chain");
        let snap = take_snapshot(&sim, &Snapshot::default());
        let inner = Arc::new(Inner {
            sim,
            snap: Mutex::new(Arc::new(snap)),
            counters: Mutex::new(Counters::default()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let stop = CancellationToken::new();
        let (i, s) = (inner.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    a = listener.accept() => match a {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                    _ = s.cancelled() => return,
                };
                i.counters.lock().unwrap().connections += 1;
                let (i, s) = (i.clone(), s.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve_connection(&i, stream) => {}
                        _ = s.cancelled() => {}
                    }
                });
            }
        });
        Bitcoind { inner, addr, stop }
    }

    /// The `DAEMON_URL` for ElectrumX.
    pub fn url(&self) -> String {
        format!("http://{USER}:{PASSWORD}@{}/", self.addr)
    }

    /// What is served now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.snapshot()
    }

    /// Mines `n` blocks (the first confirms the mempool); returns the new tip height.
    pub fn mine(&self, n: u32) -> u32 {
        self.inner.change(|sim, _| sim.mine(n))
    }

    /// Pays a documented address from the simulator's wallet in a new mempool transaction.
    pub fn pay(&self, address: &str, sats: u64) -> Txid {
        self.inner
            .change(|sim, _| sim.pay(address, sats))
            .expect("the simulated wallet can pay")
    }

    /// Replaces the last `depth` blocks by `depth + 1` others; their transactions go back to
    /// the mempool.
    pub fn reorg(&self, depth: u32) {
        self.inner
            .change(|sim, _| sim.reorg(depth))
            .expect("a reorg within the chain");
    }

    /// How many times `method` was called (each call of a batch counts).
    pub fn calls(&self, method: &str) -> u64 {
        let c = self.inner.counters.lock().unwrap();
        c.calls.get(method).copied().unwrap_or(0)
    }

    /// Batches (JSON arrays) received.
    pub fn batches(&self) -> u64 {
        self.inner.counters.lock().unwrap().batches
    }

    /// A summary of the calls received, for the test log.
    pub fn call_summary(&self) -> String {
        let c = self.inner.counters.lock().unwrap();
        format!(
            "{} connections, {} batches, calls {:?}",
            c.connections, c.batches, c.calls
        )
    }
}

/// One HTTP request: the head's fields that matter and the body.
struct Request {
    close: bool,
    authorized: bool,
    body: Vec<u8>,
}

/// Reads one request; `Ok(None)` when the client closed the connection between requests.
async fn read_request(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> anyhow::Result<Option<Request>> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (method, _path, version) = (parts.next(), parts.next(), parts.next());
    anyhow::ensure!(method == Some("POST"), "not a POST: {line:?}");
    let mut close = version == Some("HTTP/1.0");
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut authorized = false;
    let mut head = line.len();
    loop {
        line.clear();
        anyhow::ensure!(
            r.read_line(&mut line).await? > 0,
            "connection closed in a head"
        );
        head += line.len();
        anyhow::ensure!(head <= MAX_REQUEST, "request head too large");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let Some((name, value)) = l.split_once(':') else {
            anyhow::bail!("malformed header {l:?}");
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = Some(value.parse()?),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            "authorization" => authorized = value == BASIC_AUTH,
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)?;
            anyhow::ensure!(body.len() + size <= MAX_REQUEST, "request body too large");
            if size == 0 {
                // Trailers (none expected) end with an empty line.
                loop {
                    line.clear();
                    if r.read_line(&mut line).await? == 0 || line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..]).await?;
            line.clear();
            r.read_line(&mut line).await?;
        }
    } else {
        let n = length.unwrap_or(0);
        anyhow::ensure!(n <= MAX_REQUEST, "request body too large");
        body.resize(n, 0);
        r.read_exact(&mut body).await?;
    }
    Ok(Some(Request {
        close,
        authorized,
        body,
    }))
}

async fn serve_connection(inner: &Inner, stream: TcpStream) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    loop {
        let req = match read_request(&mut r).await {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(e) => {
                let body = format!("bad request: {e}");
                let _ = respond(&mut w, 400, "text/plain", body.as_bytes(), true).await;
                return;
            }
        };
        let (status, body) = if req.authorized {
            let (status, v) = handle_body(inner, &req.body);
            (status, v.to_string())
        } else {
            (401, String::new())
        };
        let kind = if status == 401 {
            "text/plain"
        } else {
            "application/json"
        };
        if respond(&mut w, status, kind, body.as_bytes(), req.close)
            .await
            .is_err()
            || req.close
        {
            return;
        }
    }
}

async fn respond(
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    status: u16,
    kind: &str,
    body: &[u8],
    close: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    let connection = if close { "close" } else { "keep-alive" };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
        body.len()
    );
    w.write_all(head.as_bytes()).await?;
    w.write_all(body).await?;
    w.flush().await
}

/// Answers a request body: one call or a batch. Returns the HTTP status and the JSON.
fn handle_body(inner: &Inner, body: &[u8]) -> (u16, Value) {
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            let err = json!({"result": null, "error": {"code": -32700, "message": format!("Parse error: {e}")}, "id": null});
            return (500, err);
        }
    };
    match parsed {
        Value::Array(calls) => {
            inner.counters.lock().unwrap().batches += 1;
            // Bitcoin Core answers every call of a batch in order, with HTTP 200.
            (
                200,
                Value::Array(calls.iter().map(|c| answer(inner, c)).collect()),
            )
        }
        call => {
            let a = answer(inner, &call);
            let status = match a["error"]["code"].as_i64() {
                None => 200,
                Some(-32601) => 404,
                Some(_) => 500,
            };
            (status, a)
        }
    }
}

/// One JSON-RPC call's answer object, with both `result` and `error` as Bitcoin Core sends.
fn answer(inner: &Inner, call: &Value) -> Value {
    let id = call.get("id").cloned().unwrap_or(Value::Null);
    let Some(method) = call.get("method").and_then(Value::as_str) else {
        return json!({"result": null, "error": {"code": -32600, "message": "Missing method"}, "id": id});
    };
    *inner
        .counters
        .lock()
        .unwrap()
        .calls
        .entry(method.to_string())
        .or_default() += 1;
    let params = match call.get("params") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(p)) => p.clone(),
        Some(_) => {
            return json!({"result": null, "error": {"code": -32600, "message": "Params must be an array"}, "id": id})
        }
    };
    match dispatch(inner, method, &params) {
        Ok(result) => json!({"result": result, "error": null, "id": id}),
        Err((code, message)) => {
            json!({"result": null, "error": {"code": code, "message": message}, "id": id})
        }
    }
}

type RpcResult = Result<Value, (i64, String)>;

fn err<T>(code: i64, message: impl Into<String>) -> Result<T, (i64, String)> {
    Err((code, message.into()))
}

fn param_str<'a>(params: &'a [Value], i: usize, what: &str) -> Result<&'a str, (i64, String)> {
    params
        .get(i)
        .and_then(Value::as_str)
        .ok_or((-1, format!("{what} (string) is required")))
}

/// A verbosity or verbose flag: false/0 or true/1 (Core accepts both forms).
fn flag(params: &[Value], i: usize) -> Option<u64> {
    match params.get(i) {
        None | Some(Value::Null) => Some(0),
        Some(Value::Bool(b)) => Some(u64::from(*b)),
        Some(v) => v.as_u64(),
    }
}

fn dispatch(inner: &Inner, method: &str, params: &[Value]) -> RpcResult {
    let snap = inner.snapshot();
    match method {
        "getblockcount" => Ok(json!(snap.tip_height())),
        "getblockhash" => {
            let h = params
                .first()
                .and_then(Value::as_u64)
                .ok_or((-1, "height (numeric) is required".to_string()))?;
            match snap.main.get(h as usize) {
                Some(hash) => Ok(json!(hash.to_string())),
                None => err(-8, "Block height out of range"),
            }
        }
        "getblock" => {
            let hash: BlockHash = param_str(params, 0, "blockhash")?
                .parse()
                .map_err(|_| (-8, "blockhash must be of length 64".to_string()))?;
            if flag(params, 1) != Some(0) {
                return err(-8, "only verbosity 0 (raw hex) is served by this node");
            }
            match snap.raw_blocks.get(&hash) {
                Some(raw) => Ok(json!(&**raw)),
                None => err(-5, "Block not found"),
            }
        }
        "getrawmempool" => Ok(json!(snap
            .mempool
            .iter()
            .map(|t| t.compute_txid().to_string())
            .collect::<Vec<_>>())),
        "getrawtransaction" => {
            let txid: Txid = param_str(params, 0, "txid")?
                .parse()
                .map_err(|_| (-8, "txid must be of length 64".to_string()))?;
            if flag(params, 1) != Some(0) {
                return err(-8, "only non-verbose transactions are served by this node");
            }
            match snap.txs.get(&txid) {
                Some((tx, _)) => Ok(json!(serialize(&**tx).to_lower_hex_string())),
                None => err(
                    -5,
                    "No such mempool or blockchain transaction. Use gettransaction for wallet transactions.",
                ),
            }
        }
        "getnetworkinfo" => Ok(json!({
            "version": 310000,
            "subversion": "/Satoshi:31.0.0/",
            "protocolversion": 70016,
            "localrelay": true,
            "networkactive": true,
            "connections": 0,
            "relayfee": MIN_FEE,
            "incrementalfee": MIN_FEE,
            "warnings": [],
        })),
        "getmempoolinfo" => Ok(json!({
            "loaded": true,
            "size": snap.mempool.len(),
            "bytes": snap.mempool.iter().map(|t| t.vsize()).sum::<usize>(),
            "mempoolminfee": MIN_FEE,
            "minrelaytxfee": MIN_FEE,
            "incrementalrelayfee": MIN_FEE,
        })),
        "getindexinfo" => Ok(json!({
            "txindex": {"synced": true, "best_block_height": snap.tip_height()},
            "txospenderindex": {"synced": true, "best_block_height": snap.tip_height()},
        })),
        "estimatesmartfee" => {
            let Some(target) = params.first().and_then(Value::as_u64) else {
                // What Core says when the argument is missing: ElectrumX sends exactly this
                // call to find out whether the method exists.
                return err(-1, "estimatesmartfee conf_target ( \"estimate_mode\" )");
            };
            Ok(json!({"feerate": fee_rate(target), "blocks": target.max(1)}))
        }
        "sendrawtransaction" => {
            let hex = param_str(params, 0, "hexstring")?;
            let tx: Transaction = Vec::from_hex(hex)
                .ok()
                .and_then(|b| deserialize(&b).ok())
                .ok_or((
                    -22,
                    "TX decode failed. Make sure the tx has at least one input.".to_string(),
                ))?;
            let broadcast = inner.change(|sim, served| {
                let txid = tx.compute_txid();
                if matches!(served.txs.get(&txid), Some((_, Some(_)))) {
                    return Err(None);
                }
                sim.broadcast(tx).map_err(Some)
            });
            match broadcast {
                Ok(txid) => Ok(json!(txid.to_string())),
                Err(None) => err(-27, "Transaction outputs already in utxo set"),
                Err(Some(e)) => {
                    let reason = e.to_string();
                    let code = if reason.contains("missingorspent") {
                        -25
                    } else {
                        -26
                    };
                    err(code, reason)
                }
            }
        }
        _ => err(-32601, "Method not found"),
    }
}
