//! The admin API: JSON-RPC 2.0 over HTTP (`POST /admin`), served by jsonrpsee.
//!
//! A standard JSON-RPC dialect (unlike the Electrum wire) so any HTTP client or `curl` can
//! drive it. Methods:
//! - `upstreams.list`: every upstream slot, as in `/status`.
//! - `upstreams.cordon(name_or_index)` / `upstreams.uncordon(name_or_index)`: take an upstream
//!   out of rotation (no new requests or subscriptions go to it) or put it back.
//! - `upstreams.add(url)`: add a candidate server. It takes the slot of the next upstream
//!   that keeps failing (after `replace_after_failures` failed attempts), as candidates
//!   from the server list do; it does not displace a working upstream.
//! - `policy.show`: the routing policy of every method in the catalogue.

use jsonrpsee::types::{ErrorObjectOwned, Params};
use jsonrpsee::RpcModule;
use serde_json::{json, Map, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::gateway::services::Core;
use crate::gateway::upstream::Upstream;
use crate::protocol::methods::METHODS;
use crate::transport::ServerUrl;

/// JSON-RPC "invalid params".
const INVALID_PARAMS: i32 = -32602;

fn invalid(msg: impl Into<String>) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(INVALID_PARAMS, msg.into(), None::<()>)
}

/// The admin methods over a gateway context.
pub fn module(ctx: Arc<Core>) -> anyhow::Result<RpcModule<Core>> {
    let mut m = RpcModule::from_arc(ctx);
    m.register_method("upstreams.list", |_, ctx, _| {
        Ok::<_, ErrorObjectOwned>(super::status::upstreams(&ctx.snapshot()))
    })?;
    m.register_method("upstreams.cordon", |p, ctx, _| cordon(ctx, &p, true))?;
    m.register_method("upstreams.uncordon", |p, ctx, _| cordon(ctx, &p, false))?;
    m.register_method("upstreams.add", |p, ctx, _| add(ctx, &p))?;
    m.register_method("policy.show", |_, ctx, _| {
        Ok::<_, ErrorObjectOwned>(policy(ctx))
    })?;
    Ok(m)
}

/// The single argument of a method: `[x]` or `{"<key>": x}`.
fn argument(p: &Params, key: &str) -> Result<Value, ErrorObjectOwned> {
    let arg = match p.parse::<Value>()? {
        Value::Array(mut a) if a.len() == 1 => a.pop(),
        Value::Object(mut o) => o.remove(key),
        _ => None,
    };
    arg.ok_or_else(|| invalid(format!("expected one parameter: {key}")))
}

/// Finds an upstream by slot index, `host:port` name or full URL.
fn find<'a>(ctx: &'a Core, which: &Value) -> Result<&'a Arc<Upstream>, ErrorObjectOwned> {
    let ups = ctx.pool.upstreams();
    let index = match which {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse::<u64>().ok(),
        _ => None,
    };
    let found = match (index, which.as_str()) {
        (Some(i), _) => usize::try_from(i).ok().and_then(|i| ups.get(i)),
        (None, Some(s)) => ups
            .iter()
            .find(|u| u.name() == s || u.url().to_string() == s),
        _ => None,
    };
    found.ok_or_else(|| {
        invalid(format!(
            "no upstream {which}; give a slot index, host:port or URL from upstreams.list"
        ))
    })
}

fn cordon(ctx: &Core, p: &Params, on: bool) -> Result<Value, ErrorObjectOwned> {
    let up = find(ctx, &argument(p, "upstream")?)?;
    let was = up.cordoned.swap(on, Ordering::Relaxed);
    let name = up.name();
    if was != on {
        let (kind, what) = if on {
            (
                "cordon",
                "cordoned by an operator: no new requests or subscriptions",
            )
        } else {
            ("uncordon", "back in rotation (uncordoned by an operator)")
        };
        tracing::info!(upstream = %name, cordoned = on, "upstream {kind}ed by an operator");
        ctx.metrics.event(kind, Some(&name), what.to_string());
    }
    Ok(super::status::upstream_json(
        &up.view(),
        ctx.pool.best_tip().as_ref(),
    ))
}

fn add(ctx: &Core, p: &Params) -> Result<Value, ErrorObjectOwned> {
    let arg = argument(p, "url")?;
    let text = arg
        .as_str()
        .ok_or_else(|| invalid("url must be a string such as ssl://host:50002"))?;
    let url: ServerUrl = text
        .parse()
        .map_err(|e| invalid(format!("bad server URL {text:?}: {e}")))?;
    let added = ctx.pool.add_candidate(url.clone());
    if added {
        tracing::info!(%url, "candidate upstream added by an operator");
        ctx.metrics.event(
            "candidate",
            Some(&url.authority()),
            "added as a candidate by an operator; replaces the next upstream that keeps failing"
                .to_string(),
        );
    }
    let candidates: Vec<String> = ctx
        .pool
        .candidates()
        .iter()
        .map(ToString::to_string)
        .collect();
    Ok(json!({
        "url": url.to_string(),
        "added": added,
        "note": if added {
            "queued as a candidate: it takes the slot of the next upstream that keeps failing"
        } else {
            "already an upstream or a candidate"
        },
        "candidates": candidates,
    }))
}

fn lower<T: std::fmt::Debug>(v: T) -> String {
    format!("{v:?}").to_ascii_lowercase()
}

/// The routing policy of every catalogue method, with what the catalogue says about it.
pub fn policy(ctx: &Core) -> Value {
    let mut out = Map::new();
    for m in METHODS {
        out.insert(
            m.name.to_string(),
            json!({
                "policy": ctx.cfg.policy(m.name).as_str(),
                "configured": ctx.cfg.routing.policy.contains_key(m.name),
                "kind": lower(m.kind),
                "tip": m.tip,
                "cache": lower(m.cache),
                "check": lower(m.check),
                "vote": lower(m.vote),
            }),
        );
    }
    Value::Object(out)
}
