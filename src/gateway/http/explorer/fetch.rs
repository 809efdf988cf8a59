//! Asking the upstreams, through the verified paths: every request is a typed call answered by
//! [`Core::read`] exactly as a wallet's would be (the method's routing policy, the answer
//! checks, the votes and the cache), so nothing here checks or caches on its own.

use bitcoin::consensus::encode::deserialize;
use bitcoin::hex::FromHex;
use bitcoin::{Transaction, Txid};
use serde_json::{json, Value};
use std::str::FromStr;

use crate::gateway::services::Core;
use crate::protocol::RpcError;

/// One request as a wallet's would go.
pub(super) async fn call(ctx: &Core, method: &str, params: Vec<Value>) -> Result<Value, RpcError> {
    let call = ctx.internal_call(method, params)?;
    let raw = ctx.read(&call).await?;
    serde_json::from_str(raw.get())
        .map_err(|e| RpcError::internal(format!("unreadable answer: {e}")))
}

/// True when an upstream's error says the thing asked for does not exist.
pub(super) fn is_not_found(e: &RpcError) -> bool {
    let m = e.message.to_ascii_lowercase();
    m.contains("no such") || m.contains("not found") || m.contains("unknown transaction")
}

pub(super) fn decode_tx(hex: &str) -> Option<Transaction> {
    let bytes = Vec::<u8>::from_hex(hex.trim()).ok()?;
    deserialize(&bytes).ok()
}

/// A transaction by txid; the checked call has proven that it hashes to `txid`.
pub(super) async fn fetch_tx(ctx: &Core, txid: &Txid) -> Result<Transaction, RpcError> {
    let v = call(
        ctx,
        "blockchain.transaction.get",
        vec![json!(txid.to_string())],
    )
    .await?;
    v.as_str()
        .and_then(decode_tx)
        .ok_or_else(|| RpcError::internal("the answer is not a transaction"))
}

/// The transaction at `pos` of block `height`, with the length of its merkle branch; the
/// checked call has proven it against the verified header.
pub(super) async fn tx_at(ctx: &Core, height: u32, pos: u32) -> Result<(Txid, usize), RpcError> {
    let v = call(
        ctx,
        "blockchain.transaction.id_from_pos",
        vec![json!(height), json!(pos), json!(true)],
    )
    .await?;
    let txid = v
        .get("tx_hash")
        .and_then(Value::as_str)
        .and_then(|t| Txid::from_str(t).ok())
        .ok_or_else(|| RpcError::internal("the answer has no tx_hash"))?;
    let branch = v
        .get("merkle")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    Ok((txid, branch))
}

/// A merkle proof of `txid` in block `height`, proven against the verified header by the
/// checked call; returns the transaction's position and the branch length.
pub(super) async fn prove(ctx: &Core, txid: &Txid, height: u32) -> Result<(u64, usize), String> {
    let v = call(
        ctx,
        "blockchain.transaction.get_merkle",
        vec![json!(txid.to_string()), json!(height)],
    )
    .await
    .map_err(|e| e.message)?;
    let answer = crate::chain::MerkleAnswer::parse(&v.to_string()).map_err(|e| e.to_string())?;
    Ok((answer.pos, answer.merkle.len()))
}
