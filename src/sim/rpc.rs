//! Answers to Electrum requests, as one endpoint (with its faults) gives them.
//!
//! Every answer is computed from the endpoint's [`View`], so a lagging or forked endpoint is
//! consistent with itself; the lying faults are applied here, on the way out.

use bitcoin::block::Header;
use bitcoin::consensus::encode::serialize_hex;
use bitcoin::hashes::Hash;
use bitcoin::{BlockHash, Transaction, Txid};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use super::faults::Faults;
use super::view::{
    hash_hex, inner_node_claim, merkle_branch, parse_sh, sh_hex, status, HistEntry, Sh, View,
};
use super::{lock, Inner};
use crate::protocol::methods::{format_version, lookup, negotiate, PROTOCOL_MIN};
use crate::protocol::{Request, RpcError};

/// The most headers `blockchain.block.headers` returns.
pub(crate) const MAX_HEADERS: u64 = 2016;
/// What `lie-balance` adds to confirmed balances.
pub(crate) const BALANCE_LIE: u64 = 123_456;

/// What one connection has negotiated and subscribed to.
#[derive(Debug, Default)]
pub(crate) struct SessionState {
    /// The negotiated protocol version, once `server.version` was called.
    pub version: Option<(u32, u32, u32)>,
    /// When subscribed to headers: the last tip sent (height, hash).
    pub headers: Option<(u32, BlockHash)>,
    /// Subscribed scripthashes and the last status sent.
    pub subs: BTreeMap<Sh, Option<String>>,
    /// Shared with the endpoint so it can count subscriptions.
    pub shared_subs: Arc<Mutex<BTreeSet<Sh>>>,
    /// Set when the connection must close once its answers are sent.
    pub close: bool,
    /// The connection's id at its endpoint.
    pub conn: u64,
}

/// One endpoint answering one request.
pub(crate) struct Call<'a> {
    pub inner: &'a Inner,
    pub endpoint: usize,
    pub faults: &'a Faults,
}

impl Call<'_> {
    /// Records that the endpoint was asked about `sh` (what a server learns), and returns it.
    fn asked(&self, conn: u64, sh: Sh) -> Sh {
        self.inner.endpoints[self.endpoint].record_asked(conn, sh);
        sh
    }

    fn view(&self) -> Arc<View> {
        self.inner.view_for(self.endpoint)
    }

    /// The protocol version answers are formatted for: the negotiated one, else 1.4.
    fn proto(&self, state: &SessionState) -> (u32, u32) {
        let v = state.version.unwrap_or(PROTOCOL_MIN);
        (v.0, v.1)
    }

    /// True when a 1.6 feature may be used: negotiated 1.6, or not negotiated on an endpoint
    /// that speaks 1.6 (the sim is lenient about clients that skip `server.version`).
    fn allows_1_6(&self, state: &SessionState) -> bool {
        match state.version {
            Some(v) => (v.0, v.1) >= (1, 6),
            None => {
                let m = self.faults.protocol_max();
                (m.0, m.1) >= (1, 6)
            }
        }
    }

    /// A fee figure as this endpoint answers it: honest, multiplied under `fee-factor`, a
    /// string under `fee-garbage`.
    fn fee(&self, honest: f64) -> Value {
        let v = honest * self.faults.fee_factor.unwrap_or(1) as f64;
        if self.faults.fee_garbage {
            json!(v.to_string())
        } else {
            json!(v)
        }
    }

    fn check_available(&self, state: &SessionState, method: &str) -> Result<(), RpcError> {
        if method.starts_with("sim.") {
            return Ok(());
        }
        let not_found = || Err(RpcError::method_not_found(method));
        let Some(info) = lookup(method) else {
            return not_found();
        };
        let max = self.faults.protocol_max();
        let max = (max.0, max.1);
        if info.takes_address() || info.since > max {
            return not_found();
        }
        if method == "blockchain.scripthash.get_mempool" && max <= (1, 4) {
            // electrs speaks 1.4 and has no get_mempool.
            return not_found();
        }
        if let Some(v) = state.version {
            let v = (v.0, v.1);
            if v < info.since || info.until.is_some_and(|u| v > u) {
                return not_found();
            }
        }
        Ok(())
    }

    /// Answers one request.
    pub fn answer(&self, state: &mut SessionState, req: &Request) -> Result<Value, RpcError> {
        self.check_available(state, &req.method)?;
        let m = req.method.as_str();
        self.inner.endpoints[self.endpoint].count_method(m);
        match m {
            "server.version" => self.server_version(state, req),
            "server.features" => {
                params(req, &[], 0)?;
                Ok(self.features())
            }
            "server.banner" => {
                params(req, &[], 0)?;
                Ok(json!(format!(
                    "Simulated Electrum server (electrum-gateway {}), regtest, seed {}",
                    env!("CARGO_PKG_VERSION"),
                    self.inner.seed
                )))
            }
            "server.donation_address" => {
                params(req, &[], 0)?;
                Ok(json!(super::ADDRESSES[0].address))
            }
            "server.ping" => {
                params(req, &[], 0)?;
                Ok(Value::Null)
            }
            "server.peers.subscribe" => {
                params(req, &[], 0)?;
                Ok(self.inner.peers.clone())
            }
            "server.add_peer" => {
                params(req, &["features"], 1)?;
                Ok(json!(false))
            }
            "blockchain.headers.subscribe" => {
                params(req, &[], 0)?;
                let (height, header) = announced_tip(self.faults, &self.view());
                state.headers = Some((height, header.block_hash()));
                Ok(header_notification_value(self.faults, &header, height))
            }
            "blockchain.block.header" => self.block_header(req),
            "blockchain.block.headers" => self.block_headers(state, req),
            "blockchain.estimatefee" => {
                let p = params(req, &["number", "mode"], 1)?;
                let n = non_negative(p[0], "number")?;
                if let Some(mode) = p[1].filter(|v| !v.is_null()) {
                    if !self.allows_1_6(state) {
                        return Err(RpcError::invalid_params(
                            "estimatefee takes 1 argument before protocol 1.6",
                        ));
                    }
                    if !mode.is_string() {
                        return Err(RpcError::bad_request("mode must be a string"));
                    }
                }
                Ok(self.fee(estimate_fee(n)))
            }
            "blockchain.relayfee" => {
                params(req, &[], 0)?;
                Ok(self.fee(0.00001))
            }
            "mempool.get_info" => {
                params(req, &[], 0)?;
                Ok(json!({
                    "mempoolminfee": self.fee(0.00001),
                    "minrelaytxfee": self.fee(0.00001),
                    "incrementalrelayfee": self.fee(0.00001),
                }))
            }
            "mempool.get_fee_histogram" => {
                params(req, &[], 0)?;
                Ok(fee_histogram(&self.view()))
            }
            "blockchain.scripthash.get_balance" => {
                let sh = self.asked(state.conn, scripthash(params(req, &["scripthash"], 1)?[0])?);
                let (c, u) = self.view().balance(&sh);
                let c = if self.faults.lie_balance {
                    c + BALANCE_LIE
                } else {
                    c
                };
                let u = if self.faults.fake_mempool {
                    u + FAKE_PAYMENT_SATS as i64
                } else if self.faults.hide_mempool {
                    0
                } else {
                    u
                };
                Ok(json!({"confirmed": c, "unconfirmed": u}))
            }
            "blockchain.scripthash.get_history" => {
                let sh = self.asked(state.conn, scripthash(params(req, &["scripthash"], 1)?[0])?);
                Ok(history_json_as(
                    &served_history(&self.view(), self.faults, &sh),
                    self.faults,
                ))
            }
            "blockchain.scripthash.get_mempool" => {
                let sh = self.asked(state.conn, scripthash(params(req, &["scripthash"], 1)?[0])?);
                let h = served_history(&self.view(), self.faults, &sh);
                let mem: Vec<HistEntry> = h.into_iter().filter(|e| e.height <= 0).collect();
                Ok(history_json_as(&mem, self.faults))
            }
            "blockchain.scripthash.listunspent" => {
                let sh = self.asked(state.conn, scripthash(params(req, &["scripthash"], 1)?[0])?);
                let mut list = listunspent_json(&self.view(), &sh);
                if let (true, Value::Array(items)) = (self.faults.hide_mempool, &mut list) {
                    items.retain(|u| u["height"].as_i64().unwrap_or(0) > 0);
                }
                if let (true, Value::Array(items)) = (self.faults.fake_mempool, &mut list) {
                    items.push(json!({
                        "tx_hash": FAKE_TXID,
                        "tx_pos": 0,
                        "height": 0,
                        "value": FAKE_PAYMENT_SATS,
                    }));
                }
                Ok(list)
            }
            "blockchain.scripthash.subscribe" => {
                let sh = self.asked(state.conn, scripthash(params(req, &["scripthash"], 1)?[0])?);
                let st = status(&served_history(&self.view(), self.faults, &sh));
                state.subs.insert(sh, st.clone());
                lock(&state.shared_subs).insert(sh);
                Ok(json!(st))
            }
            "blockchain.scripthash.unsubscribe" => {
                let sh = self.asked(state.conn, scripthash(params(req, &["scripthash"], 1)?[0])?);
                let was = state.subs.remove(&sh).is_some();
                lock(&state.shared_subs).remove(&sh);
                Ok(json!(was))
            }
            "blockchain.transaction.get" => self.transaction_get(req),
            "blockchain.transaction.get_merkle" => self.get_merkle(req),
            "blockchain.transaction.id_from_pos" => self.id_from_pos(req),
            "blockchain.transaction.broadcast" => {
                let p = params(req, &["raw_tx"], 1)?;
                let raw = string(p[0], "raw_tx")?;
                let tx = decode_tx(raw)?;
                if self.faults.accept_all {
                    return Ok(json!(tx.compute_txid().to_string()));
                }
                match self.inner.broadcast(tx) {
                    Ok(txid) => Ok(json!(txid.to_string())),
                    Err(e) => Err(rejected(&e, raw)),
                }
            }
            "blockchain.transaction.broadcast_package" => {
                let p = params(req, &["raw_txs", "verbose"], 1)?;
                let raws = p[0]
                    .and_then(Value::as_array)
                    .ok_or_else(|| RpcError::bad_request("raw_txs must be a list"))?;
                if let Some(v) = p[1] {
                    boolean(v, "verbose")?;
                }
                let mut txs = Vec::with_capacity(raws.len());
                for r in raws {
                    let raw = r
                        .as_str()
                        .ok_or_else(|| RpcError::bad_request("raw_txs must hold strings"))?;
                    txs.push(decode_tx(raw)?);
                }
                match self.inner.broadcast_package(txs) {
                    Ok(_) => Ok(json!({"success": true})),
                    Err((txid, e)) => Ok(json!({
                        "success": false,
                        "errors": [{"txid": txid.to_string(), "error": e}],
                    })),
                }
            }
            "sim.mine" => {
                let p = params(req, &["count"], 0)?;
                let n = match p[0] {
                    Some(v) if !v.is_null() => non_negative(Some(v), "count")?,
                    _ => 1,
                };
                if n > 10_000 {
                    return Err(RpcError::bad_request("mine at most 10000 blocks at a time"));
                }
                Ok(json!(self.inner.mine(n as u32)))
            }
            "sim.pay" => {
                let p = params(req, &["address", "satoshis"], 2)?;
                let target = string(p[0], "address")?;
                let sats = non_negative(p[1], "satoshis")?;
                self.inner
                    .pay(target, sats)
                    .map(|t| json!(t.to_string()))
                    .map_err(|e| RpcError::bad_request(e.to_string()))
            }
            "sim.reorg" => {
                let p = params(req, &["depth"], 0)?;
                let depth = match p[0] {
                    Some(v) if !v.is_null() => non_negative(Some(v), "depth")?,
                    _ => 1,
                };
                let depth =
                    u32::try_from(depth).map_err(|_| RpcError::bad_request("depth too large"))?;
                self.inner
                    .reorg(depth)
                    .map(|tip| json!(tip))
                    .map_err(|e| RpcError::bad_request(e.to_string()))
            }
            _ => Err(RpcError::method_not_found(m)),
        }
    }

    fn server_version(&self, state: &mut SessionState, req: &Request) -> Result<Value, RpcError> {
        let p = params(req, &["client_name", "protocol_version"], 0)?;
        if state.version.is_some() {
            return Err(RpcError::bad_request("server.version already sent"));
        }
        if let Some(name) = p[0] {
            if !name.is_string() && !name.is_null() {
                return Err(RpcError::bad_request("client_name must be a string"));
            }
        }
        let client = p[1].cloned().unwrap_or(Value::Null);
        match negotiate(&client, (PROTOCOL_MIN, self.faults.protocol_max())) {
            Ok(v) => {
                state.version = Some(v);
                Ok(json!([self.software(), format_version(v)]))
            }
            Err(e) => {
                // ElectrumX answers and then disconnects.
                state.close = true;
                Err(RpcError::bad_request(e))
            }
        }
    }

    fn software(&self) -> String {
        self.faults
            .software
            .clone()
            .unwrap_or_else(|| format!("electrum-gateway-sim {}", env!("CARGO_PKG_VERSION")))
    }

    fn features(&self) -> Value {
        let mut hosts = serde_json::Map::new();
        for url in self.inner.urls() {
            let key = match url.scheme {
                crate::transport::Scheme::Tcp => "tcp_port",
                crate::transport::Scheme::Ssl => "ssl_port",
                _ => continue,
            };
            let entry = hosts
                .entry(url.host.clone())
                .or_insert_with(|| json!({"tcp_port": null, "ssl_port": null}));
            if entry[key].is_null() {
                entry[key] = json!(url.port);
            }
        }
        let max = format_version(self.faults.protocol_max());
        json!({
            "genesis_hash": self.inner.genesis_hash,
            "hosts": hosts,
            "protocol_max": max,
            "protocol_min": format_version(PROTOCOL_MIN),
            "pruning": null,
            "server_version": self.software(),
            "hash_function": "sha256",
        })
    }

    fn header_hex(&self, header: &Header) -> String {
        served_header_hex(self.faults, header)
    }

    fn block_header(&self, req: &Request) -> Result<Value, RpcError> {
        let p = params(req, &["height", "cp_height"], 1)?;
        let height = height_param(p[0], "height")?;
        let cp = opt_height(p[1], "cp_height")?;
        let view = self.view();
        let block = view
            .block(height)
            .ok_or_else(|| RpcError::bad_request(format!("height {height} out of range")))?;
        let hex = self.header_hex(&block.header);
        if cp == 0 {
            return Ok(json!(hex));
        }
        let proof = header_proof(&view, height, cp)?;
        Ok(json!({"header": hex, "branch": proof.0, "root": proof.1}))
    }

    fn block_headers(&self, state: &SessionState, req: &Request) -> Result<Value, RpcError> {
        let p = params(req, &["start_height", "count", "cp_height"], 2)?;
        let start = height_param(p[0], "start_height")?;
        let count = non_negative(p[1], "count")?;
        let cp = opt_height(p[2], "cp_height")?;
        let view = self.view();
        let tip = view.tip_height();
        let count = if start > tip {
            0
        } else {
            count.min(MAX_HEADERS).min(u64::from(tip - start) + 1) as u32
        };
        let headers: Vec<String> = (start..start.saturating_add(count))
            .filter_map(|h| view.block(h))
            .map(|b| self.header_hex(&b.header))
            .collect();
        let mut out = if self.proto(state) >= (1, 6) {
            json!({"count": count, "headers": headers, "max": MAX_HEADERS})
        } else {
            json!({"count": count, "hex": headers.concat(), "max": MAX_HEADERS})
        };
        if count > 0 && cp > 0 {
            let (branch, root) = header_proof(&view, start + count - 1, cp)?;
            out["branch"] = json!(branch);
            out["root"] = json!(root);
        }
        Ok(out)
    }

    fn transaction_get(&self, req: &Request) -> Result<Value, RpcError> {
        let p = params(req, &["tx_hash", "verbose"], 1)?;
        let txid = txid_param(p[0])?;
        let verbose = match p[1] {
            Some(v) if !v.is_null() => boolean(v, "verbose")?,
            _ => false,
        };
        let view = self.view();
        let loc = view.tx(&txid).ok_or_else(|| {
            RpcError::new(
                crate::protocol::error::DAEMON_ERROR,
                "No such mempool or blockchain transaction. Use gettransaction for wallet transactions.",
            )
        })?;
        let (tx, block) = if self.faults.wrong_tx {
            let other = substitute_tx(&view, &txid);
            let block = view.tx(&other.compute_txid()).and_then(|l| l.block);
            (other, block)
        } else {
            (loc.tx.clone(), loc.block)
        };
        let tx = served_tx(self.faults, &tx);
        if !verbose {
            return Ok(json!(serialize_hex(&tx)));
        }
        Ok(verbose_tx(&view, &tx, block))
    }

    fn get_merkle(&self, req: &Request) -> Result<Value, RpcError> {
        let p = params(req, &["tx_hash", "height"], 1)?;
        let txid = txid_param(p[0])?;
        let want = match p[1] {
            Some(v) if !v.is_null() => Some(height_param(Some(v), "height")?),
            _ => None,
        };
        if self.faults.no_merkle {
            return Err(RpcError::bad_request(format!(
                "tx {txid} is not in a block"
            )));
        }
        let view = self.view();
        if self.faults.fake_confirmed && txid.to_string() == FAKE_CONFIRMED_TXID {
            // A branch of the right length for the block, made up: it folds to another root.
            let len = view.block(FAKE_CONFIRMED_HEIGHT).map_or(1, |b| {
                crate::chain::merkle::branch_length(b.txids.len()).max(1)
            });
            let merkle: Vec<String> = (0..len)
                .map(|i| format!("{:02x}", 0x5a + i).repeat(32))
                .collect();
            return Ok(json!({"block_height": FAKE_CONFIRMED_HEIGHT, "merkle": merkle, "pos": 1}));
        }
        let (height, pos) = view
            .tx(&txid)
            .and_then(|l| l.block)
            .ok_or_else(|| RpcError::bad_request(format!("tx {txid} is not in a block")))?;
        if let Some(w) = want.filter(|w| *w != height) {
            return Err(RpcError::bad_request(format!(
                "tx {txid} not in block at height {w}"
            )));
        }
        let merkle = self.tx_branch(&view, height, pos);
        Ok(json!({"block_height": height, "merkle": merkle, "pos": pos}))
    }

    fn tx_branch(&self, view: &View, height: u32, pos: u32) -> Vec<String> {
        let leaves: Vec<[u8; 32]> = view
            .block(height)
            .map(|b| b.txids.iter().map(|t| t.to_byte_array()).collect())
            .unwrap_or_default();
        let (branch, _) = merkle_branch(&leaves, pos as usize);
        let mut branch: Vec<String> = branch.iter().map(hash_hex).collect();
        if self.faults.bad_merkle {
            corrupt_branch(&mut branch);
        }
        branch
    }

    fn id_from_pos(&self, req: &Request) -> Result<Value, RpcError> {
        let p = params(req, &["height", "tx_pos", "merkle"], 2)?;
        let height = height_param(p[0], "height")?;
        let pos = non_negative(p[1], "tx_pos")?;
        let merkle = match p[2] {
            Some(v) if !v.is_null() => boolean(v, "merkle")?,
            _ => false,
        };
        let view = self.view();
        let block = view
            .block(height)
            .ok_or_else(|| RpcError::bad_request(format!("block {height} not on chain")))?;
        let txid = usize::try_from(pos)
            .ok()
            .and_then(|p| block.txids.get(p))
            .ok_or_else(|| {
                RpcError::bad_request(format!(
                    "no tx at position {pos} in block at height {height}"
                ))
            })?;
        if self.faults.inner_node {
            let leaves: Vec<[u8; 32]> = block.txids.iter().map(|t| t.to_byte_array()).collect();
            if let Some((node, branch)) = inner_node_claim(&leaves, pos as usize) {
                if !merkle {
                    return Ok(json!(hash_hex(&node)));
                }
                let branch: Vec<String> = branch.iter().map(hash_hex).collect();
                return Ok(json!({"tx_hash": hash_hex(&node), "merkle": branch}));
            }
        }
        if !merkle {
            return Ok(json!(txid.to_string()));
        }
        let branch = self.tx_branch(&view, height, pos as u32);
        Ok(json!({"tx_hash": txid.to_string(), "merkle": branch}))
    }
}

/// The tip an endpoint announces (height, header): its view's tip, or under `deep-fork` a block
/// mined on the block that many below it.
pub(crate) fn announced_tip(faults: &Faults, view: &View) -> (u32, Header) {
    let tip = view.tip();
    let Some(depth) = faults.deep_fork else {
        return (view.tip_height(), tip.header);
    };
    let parent_height = view.tip_height().saturating_sub(depth);
    match view.block(parent_height) {
        Some(parent) => (
            parent_height + 1,
            super::chain::stray_block(parent, parent_height + 1).header,
        ),
        None => (view.tip_height(), tip.header),
    }
}

/// Serializes the headers notification value `{"hex", "height"}` (exactly these keys).
pub(crate) fn header_notification_value(faults: &Faults, header: &Header, height: u32) -> Value {
    json!({"hex": served_header_hex(faults, header), "height": height})
}

/// A header's hex as served: corrupted under `bad-header`.
pub(crate) fn served_header_hex(faults: &Faults, header: &Header) -> String {
    if faults.bad_header {
        serialize_hex(&corrupt_header(header))
    } else {
        serialize_hex(header)
    }
}

/// Flips a byte of the previous-block hash (linkage fails), then moves the nonce until the
/// proof of work fails too.
pub(crate) fn corrupt_header(header: &Header) -> Header {
    let mut bad = *header;
    let mut prev = bad.prev_blockhash.to_byte_array();
    prev[0] ^= 0x01;
    bad.prev_blockhash = BlockHash::from_byte_array(prev);
    while bad.validate_pow(bad.target()).is_ok() {
        bad.nonce = bad.nonce.wrapping_add(1);
    }
    bad
}

fn corrupt_branch(branch: &mut Vec<String>) {
    match branch.first_mut() {
        Some(first) => {
            // Change the last hex digit: still a well-formed hash, but the wrong one.
            let last = first.pop().unwrap_or('0');
            first.push(if last == '0' { '1' } else { '0' });
        }
        None => branch.push("5a".repeat(32)),
    }
}

/// The txid of the payment `fake-mempool` invents.
const FAKE_TXID: &str = "fa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4e";
/// Its amount.
const FAKE_PAYMENT_SATS: u64 = 21_000_000;

/// The txid of the confirmed payment `fake-confirmed` invents.
const FAKE_CONFIRMED_TXID: &str =
    "c0f1c0f1c0f1c0f1c0f1c0f1c0f1c0f1c0f1c0f1c0f1c0f1c0f1c0f1c0f1c0f1";
/// The block `fake-confirmed` claims it in.
const FAKE_CONFIRMED_HEIGHT: u32 = 1;

/// History as served: under `lie-history` the newest confirmed entry is dropped; under
/// `fake-mempool` an invented unconfirmed payment is added; under `fake-confirmed` an invented
/// confirmed one, first (height 1).
pub(crate) fn served_history(view: &View, faults: &Faults, sh: &Sh) -> Vec<HistEntry> {
    let mut h = view.history(sh);
    if faults.fake_confirmed && view.blocks().len() > FAKE_CONFIRMED_HEIGHT as usize {
        if let Ok(txid) = FAKE_CONFIRMED_TXID.parse() {
            h.insert(
                0,
                HistEntry {
                    height: i64::from(FAKE_CONFIRMED_HEIGHT),
                    txid,
                    fee: None,
                },
            );
        }
    }
    if faults.lie_history {
        if let Some(i) = h.iter().rposition(|e| e.height > 0) {
            h.remove(i);
        }
    }
    if faults.hide_mempool {
        h.retain(|e| e.height > 0);
    }
    if faults.fake_mempool {
        if let Ok(txid) = FAKE_TXID.parse() {
            h.push(HistEntry {
                height: 0,
                txid,
                fee: Some(1000),
            });
        }
    }
    h
}

/// `get_history` JSON as served: under `string-heights` heights are strings.
fn history_json_as(history: &[HistEntry], faults: &Faults) -> Value {
    let mut v = history_json(history);
    if let (true, Value::Array(items)) = (faults.string_heights, &mut v) {
        for e in items {
            if let Some(h) = e.get("height").cloned() {
                e["height"] = json!(h.to_string());
            }
        }
    }
    v
}

/// `get_history` JSON: `{"height","tx_hash"}` plus `"fee"` for mempool entries.
pub(crate) fn history_json(history: &[HistEntry]) -> Value {
    Value::Array(
        history
            .iter()
            .map(|e| match e.fee {
                Some(fee) => json!({"tx_hash": e.txid.to_string(), "height": e.height, "fee": fee}),
                None => json!({"tx_hash": e.txid.to_string(), "height": e.height}),
            })
            .collect(),
    )
}

/// `listunspent` JSON.
pub(crate) fn listunspent_json(view: &View, sh: &Sh) -> Value {
    Value::Array(
        view.listunspent(sh)
            .into_iter()
            .map(|u| {
                json!({"tx_hash": u.txid.to_string(), "tx_pos": u.vout, "height": u.height, "value": u.value})
            })
            .collect(),
    )
}

/// A header-chain merkle proof of `height` against the hashes of blocks `0..=cp`.
fn header_proof(view: &View, height: u32, cp: u32) -> Result<(Vec<String>, String), RpcError> {
    let tip = view.tip_height();
    if height > cp {
        return Err(RpcError::bad_request(format!(
            "header height {height} must be <= cp_height {cp}"
        )));
    }
    if cp > tip {
        return Err(RpcError::bad_request(format!(
            "cp_height {cp} must be <= chain height {tip}"
        )));
    }
    let leaves = view.block_hashes(cp);
    let (branch, root) = merkle_branch(&leaves, height as usize);
    Ok((branch.iter().map(hash_hex).collect(), hash_hex(&root)))
}

/// A transaction as served: without its witness under `strip-witness`, with the last byte of
/// its first witness element flipped under `alter-witness`.
fn served_tx(faults: &Faults, tx: &Transaction) -> Transaction {
    let mut tx = tx.clone();
    if faults.strip_witness {
        tx.input.iter_mut().for_each(|i| i.witness.clear());
    }
    if faults.alter_witness {
        if let Some(input) = tx.input.iter_mut().find(|i| !i.witness.is_empty()) {
            let mut elements = input.witness.to_vec();
            if let Some(byte) = elements.first_mut().and_then(|e| e.last_mut()) {
                *byte ^= 0x01;
            }
            input.witness = bitcoin::Witness::from_slice(&elements);
        }
    }
    tx
}

/// A different transaction than `txid`: the coinbase of the first block that does not hold it.
fn substitute_tx(view: &View, txid: &Txid) -> Arc<Transaction> {
    let blocks = view.blocks();
    blocks
        .iter()
        .skip(1)
        .chain(blocks.iter().take(1))
        .map(|b| &b.txs[0])
        .find(|t| t.compute_txid() != *txid)
        .cloned()
        .unwrap_or_else(|| blocks[0].txs[0].clone())
}

fn verbose_tx(view: &View, tx: &Transaction, block: Option<(u32, u32)>) -> Value {
    let vin: Vec<Value> = tx
        .input
        .iter()
        .map(|i| {
            if i.previous_output.is_null() {
                json!({"coinbase": bitcoin::hex::DisplayHex::to_lower_hex_string(i.script_sig.as_bytes()), "sequence": i.sequence.0})
            } else {
                json!({
                    "txid": i.previous_output.txid.to_string(),
                    "vout": i.previous_output.vout,
                    "scriptSig": {"hex": bitcoin::hex::DisplayHex::to_lower_hex_string(i.script_sig.as_bytes())},
                    "sequence": i.sequence.0,
                })
            }
        })
        .collect();
    let vout: Vec<Value> = tx
        .output
        .iter()
        .enumerate()
        .map(|(n, o)| {
            let mut spk = json!({"hex": bitcoin::hex::DisplayHex::to_lower_hex_string(o.script_pubkey.as_bytes())});
            if let Ok(a) = bitcoin::Address::from_script(&o.script_pubkey, bitcoin::Network::Regtest) {
                spk["address"] = json!(a.to_string());
            }
            json!({"value": o.value.to_btc(), "n": n, "scriptPubKey": spk})
        })
        .collect();
    let mut out = json!({
        "txid": tx.compute_txid().to_string(),
        "hash": tx.compute_wtxid().to_string(),
        "version": tx.version.0,
        "size": tx.total_size(),
        "vsize": tx.vsize(),
        "weight": tx.weight().to_wu(),
        "locktime": tx.lock_time.to_consensus_u32(),
        "vin": vin,
        "vout": vout,
        "hex": serialize_hex(tx),
        "confirmations": 0,
    });
    if let Some((height, _)) = block {
        if let Some(b) = view.block(height) {
            out["blockhash"] = json!(b.hash.to_string());
            out["confirmations"] = json!(view.tip_height() - height + 1);
            out["time"] = json!(b.header.time);
            out["blocktime"] = json!(b.header.time);
        }
    }
    out
}

/// A fixed fee ladder in BTC/kvB: 20 sat/vB for the next block down to 2 sat/vB.
fn estimate_fee(blocks: u64) -> f64 {
    let sat_per_vb: u64 = match blocks {
        0 | 1 => 20,
        2 => 15,
        3..=6 => 10,
        7..=25 => 5,
        _ => 2,
    };
    sat_per_vb as f64 * 1000.0 / 100_000_000.0
}

/// `[[fee_rate, vsize], ...]` by whole sat/vB, highest rate first.
fn fee_histogram(view: &View) -> Value {
    let mut bins: BTreeMap<u64, u64> = BTreeMap::new();
    for m in view.mempool() {
        let rate = m.fee / m.vsize.max(1);
        *bins.entry(rate).or_default() += m.vsize;
    }
    Value::Array(
        bins.into_iter()
            .rev()
            .map(|(rate, vsize)| json!([rate, vsize]))
            .collect(),
    )
}

fn decode_tx(raw: &str) -> Result<Transaction, RpcError> {
    use bitcoin::hex::FromHex;
    let bytes = Vec::<u8>::from_hex(raw.trim()).map_err(|_| rejected("TX decode failed", raw))?;
    bitcoin::consensus::deserialize::<Transaction>(&bytes)
        .map_err(|_| rejected("TX decode failed", raw))
}

fn rejected(reason: &str, raw: &str) -> RpcError {
    let shown: String = raw.chars().take(200).collect();
    RpcError::bad_request(format!(
        "the transaction was rejected by network rules.\n\n{reason}\n[{shown}]"
    ))
}

/// Reads positional or named params: `names` in order, the first `required` mandatory.
fn params<'a>(
    req: &'a Request,
    names: &[&str],
    required: usize,
) -> Result<Vec<Option<&'a Value>>, RpcError> {
    if req.params_object {
        let obj = req.params.first().and_then(Value::as_object);
        let Some(obj) = obj else {
            return Err(RpcError::invalid_params(
                "params must be a list or an object",
            ));
        };
        if let Some(k) = obj.keys().find(|k| !names.contains(&k.as_str())) {
            return Err(RpcError::invalid_params(format!(
                "unexpected argument {k:?}"
            )));
        }
        let out: Vec<Option<&Value>> = names.iter().map(|n| obj.get(*n)).collect();
        if let Some(missing) = names[..required].iter().find(|n| !obj.contains_key(**n)) {
            return Err(RpcError::invalid_params(format!(
                "missing argument {missing:?}"
            )));
        }
        return Ok(out);
    }
    let n = req.params.len();
    if n < required || n > names.len() {
        let expected = if required == names.len() {
            format!("{required}")
        } else {
            format!("{required} to {}", names.len())
        };
        return Err(RpcError::invalid_params(format!(
            "{} takes {expected} arguments, {n} given",
            req.method
        )));
    }
    Ok((0..names.len()).map(|i| req.params.get(i)).collect())
}

fn non_negative(v: Option<&Value>, name: &str) -> Result<u64, RpcError> {
    let bad = || RpcError::bad_request(format!("{name} must be a non-negative integer"));
    match v {
        Some(Value::Number(n)) => n.as_u64().ok_or_else(bad),
        Some(Value::String(s)) => s.trim().parse::<u64>().map_err(|_| bad()),
        _ => Err(bad()),
    }
}

fn height_param(v: Option<&Value>, name: &str) -> Result<u32, RpcError> {
    let h = non_negative(v, name)?;
    u32::try_from(h).map_err(|_| RpcError::bad_request(format!("{name} {h} out of range")))
}

fn opt_height(v: Option<&Value>, name: &str) -> Result<u32, RpcError> {
    match v {
        None | Some(Value::Null) => Ok(0),
        v => height_param(v, name),
    }
}

fn boolean(v: &Value, name: &str) -> Result<bool, RpcError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) if n.as_u64() == Some(0) => Ok(false),
        Value::Number(n) if n.as_u64() == Some(1) => Ok(true),
        _ => Err(RpcError::bad_request(format!("{name} must be a boolean"))),
    }
}

fn string<'a>(v: Option<&'a Value>, name: &str) -> Result<&'a str, RpcError> {
    v.and_then(Value::as_str)
        .ok_or_else(|| RpcError::bad_request(format!("{name} must be a string")))
}

fn scripthash(v: Option<&Value>) -> Result<Sh, RpcError> {
    let s = string(v, "scripthash")?;
    parse_sh(s).ok_or_else(|| RpcError::bad_request(format!("{s} is not a valid script hash")))
}

fn txid_param(v: Option<&Value>) -> Result<Txid, RpcError> {
    let s = string(v, "tx_hash")?;
    if s.len() != 64 {
        return Err(RpcError::bad_request(format!(
            "{s} should be a transaction hash"
        )));
    }
    Txid::from_str(s)
        .map_err(|_| RpcError::bad_request(format!("{s} should be a transaction hash")))
}

/// The scripthash notification value for a connection's subscription.
pub(crate) fn scripthash_notification(
    sh: &Sh,
    status: &Option<String>,
) -> crate::protocol::Notification {
    crate::protocol::Notification {
        method: "blockchain.scripthash.subscribe".into(),
        params: vec![json!(sh_hex(sh)), json!(status)],
    }
}
