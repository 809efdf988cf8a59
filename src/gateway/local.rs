//! What the gateway answers itself: server identity, version negotiation, and headers from its
//! own verified chain (with header proofs computed locally), so no upstream is asked.

use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::services::Core;
use crate::protocol::methods::{format_version, negotiate, PROTOCOL_MAX, PROTOCOL_MIN};
use crate::protocol::{Args, Call, RpcError, Tip};

fn raw<T: serde::Serialize>(v: &T) -> Result<Box<RawValue>, RpcError> {
    serde_json::value::to_raw_value(v).map_err(|e| RpcError::internal(e.to_string()))
}

/// Negotiates `server.version` for a wallet: the version to use and the answer.
pub fn version(core: &Core, call: &Call) -> Result<((u32, u32, u32), Value), RpcError> {
    let Args::Version(offered) = &call.args else {
        return Err(RpcError::internal("server.version without its arguments"));
    };
    let v = negotiate(offered, (PROTOCOL_MIN, PROTOCOL_MAX)).map_err(RpcError::bad_request)?;
    Ok((v, json!([core.software(), format_version(v)])))
}

/// `server.banner`.
pub fn banner(core: &Core) -> String {
    let ups = core.pool.upstreams();
    let connected = ups.iter().filter(|u| u.connected() > 0).count();
    format!(
        "{} — a verifying gateway in front of {} upstream Electrum servers ({} connected).",
        core.software(),
        ups.len(),
        connected
    )
}

/// `server.features`: the gateway's own, with the genesis hash of its network.
pub fn features(core: &Core) -> Value {
    let genesis = bitcoin::blockdata::constants::genesis_block(core.network)
        .block_hash()
        .to_string();
    json!({
        "hosts": {},
        "genesis_hash": genesis,
        "hash_function": "sha256",
        "server_version": core.software(),
        "protocol_min": format_version(PROTOCOL_MIN),
        "protocol_max": format_version(PROTOCOL_MAX),
        "pruning": null,
    })
}

/// The verified tip, as `blockchain.headers.subscribe` answers it.
pub fn tip(core: &Core) -> Result<Tip, RpcError> {
    core.pool
        .best_tip()
        .ok_or_else(|| super::router::unavailable("no upstream has announced a tip yet"))
}

/// Answers a local call (any but `server.version` and the subscriptions). `wallet` is the
/// protocol the wallet negotiated, which decides the form of `block.headers`.
pub fn answer(
    core: &Core,
    call: &Call,
    wallet: (u32, u32, u32),
) -> Result<Box<RawValue>, RpcError> {
    match (&call.args, call.method()) {
        (Args::Header { height, cp_height }, _) => block_header(core, *height, *cp_height),
        (
            Args::Headers {
                start,
                count,
                cp_height,
            },
            _,
        ) => block_headers(core, *start, *count, *cp_height, wallet),
        (_, "server.features") => raw(&features(core)),
        (_, "server.banner") => raw(&banner(core)),
        (_, "server.donation_address") => raw(&""),
        (_, "server.ping") => raw(&Value::Null),
        (_, "server.peers.subscribe") => raw(&Vec::<Value>::new()),
        (_, "server.add_peer") => raw(&false),
        (_, method) => Err(RpcError::method_not_found(method)),
    }
}

/// `blockchain.block.header(height, cp_height=0)` from the verified chain, with a header
/// proof computed locally when `cp_height` is given.
fn block_header(core: &Core, height: u32, cp_height: u32) -> Result<Box<RawValue>, RpcError> {
    core.pool.tracker().with_chain(|c| {
        let hex = c
            .header_hex(height)
            .ok_or_else(|| RpcError::bad_request(format!("height {height} out of range")))?;
        if cp_height == 0 {
            return raw(&hex);
        }
        let proof = c
            .header_proof(height, cp_height)
            .map_err(|e| RpcError::bad_request(e.to_string()))?;
        raw(&json!({"header": hex, "branch": proof.branch, "root": proof.root}))
    })
}

/// `blockchain.block.headers(start, count, cp_height=0)` from the verified chain: at most
/// 2016 headers, as `hex` up to protocol 1.5 and as a `headers` list from 1.6.
fn block_headers(
    core: &Core,
    start: u32,
    count: u32,
    cp_height: u32,
    wallet: (u32, u32, u32),
) -> Result<Box<RawValue>, RpcError> {
    const MAX: u32 = 2016;
    let count = count.min(MAX);
    core.pool.tracker().with_chain(|c| {
        let tip = c.height();
        let count = if start > tip {
            0
        } else {
            count.min(tip - start + 1)
        };
        let mut out = serde_json::Map::new();
        out.insert("count".into(), json!(count));
        out.insert("max".into(), json!(MAX));
        let hex = c.headers_hex(start, count);
        if (wallet.0, wallet.1) >= (1, 6) {
            let list: Vec<Value> = (0..count as usize)
                .map(|i| Value::String(hex[i * 160..(i + 1) * 160].to_string()))
                .collect();
            out.insert("headers".into(), Value::Array(list));
        } else {
            out.insert("hex".into(), Value::String(hex));
        }
        if count > 0 && cp_height > 0 {
            let proof = c
                .header_proof(start + count - 1, cp_height)
                .map_err(|e| RpcError::bad_request(e.to_string()))?;
            out.insert("branch".into(), json!(proof.branch));
            out.insert("root".into(), json!(proof.root));
        }
        raw(&out)
    })
}
