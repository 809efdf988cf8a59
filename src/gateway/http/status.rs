//! What `/status` and `/health` say, built from the live pool, hub and router state.
//!
//! The same upstream view serves the status page, the admin API's `upstreams.list` and the
//! health check, so an operator never sees two versions of the truth.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use crate::gateway::Ctx;
use crate::metrics::{is_healthy, now_ms, state_name};
use crate::pool::{Tip, Upstream};

/// The block hash of a tip's header, if its hex decodes to a header.
pub fn tip_hash(tip: &Tip) -> Option<String> {
    use bitcoin::hex::FromHex;
    let bytes = Vec::<u8>::from_hex(&tip.hex).ok()?;
    let header: bitcoin::block::Header = bitcoin::consensus::deserialize(&bytes).ok()?;
    Some(header.block_hash().to_string())
}

fn tip_json(tip: &Tip) -> Value {
    json!({"height": tip.height, "hash": tip_hash(tip)})
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3)
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

/// One upstream as the status page and the admin API show it.
pub fn upstream_json(up: &Upstream, best: Option<&Tip>) -> Value {
    let stats = up.stats();
    let tip = up.tip();
    let lag = match (&tip, best) {
        (Some(t), Some(b)) => Some(b.height.saturating_sub(t.height)),
        _ => None,
    };
    json!({
        "index": up.id,
        "name": up.name(),
        "url": up.url().to_string(),
        "state": state_name(up.state()),
        "connections": up.connected(),
        "healthy": is_healthy(up, best),
        "cordoned": up.cordoned.load(Ordering::Relaxed),
        "tip": tip.as_ref().map(tip_json),
        "lag": lag,
        "latency_ms": {
            "ewma": stats.ewma_ms.map(round3),
            "p50": ms(up.percentile(0.5)),
            "p90": ms(up.p90()),
        },
        "software": stats.software,
        "protocol": stats.protocol,
        "score": round3(up.score()),
        "answered": stats.answered,
        "failed": stats.failed,
        "error_rate": round3(stats.error_rate),
        "reconnects": stats.reconnects,
        "consecutive_failures": stats.consecutive_failures,
        "last_error": stats.last_error,
        "last_success_ms": stats.last_success
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64),
    })
}

/// Every upstream slot, in slot order.
pub fn upstreams(ctx: &Ctx) -> Vec<Value> {
    let best = ctx.pool.best_tip();
    ctx.pool
        .upstreams()
        .iter()
        .map(|u| upstream_json(u, best.as_ref()))
        .collect()
}

/// Upstreams grouped by the tip they announce, highest first: more than one group at the
/// same height means upstreams disagree about the chain.
pub fn tip_agreement(ctx: &Ctx) -> Vec<Value> {
    let mut groups: BTreeMap<(u32, String), Vec<String>> = BTreeMap::new();
    for up in ctx.pool.upstreams() {
        if let Some(t) = up.tip() {
            let hash = tip_hash(&t).unwrap_or_default();
            groups.entry((t.height, hash)).or_default().push(up.name());
        }
    }
    let mut per_height: BTreeMap<u32, usize> = BTreeMap::new();
    for (h, _) in groups.keys() {
        *per_height.entry(*h).or_default() += 1;
    }
    groups
        .into_iter()
        .rev()
        .map(|((height, hash), ups)| {
            json!({
                "height": height,
                "hash": hash,
                "upstreams": ups,
                "conflict": per_height.get(&height).copied().unwrap_or(0) > 1,
            })
        })
        .collect()
}

/// The health verdict: can the gateway serve wallets now? With the reason when not.
pub fn health(ctx: &Ctx) -> (bool, Value) {
    let best = ctx.pool.best_tip();
    let ups = ctx.pool.upstreams();
    let connected: Vec<_> = ups.iter().filter(|u| u.connected() > 0).collect();
    let healthy = ups.iter().filter(|u| is_healthy(u, best.as_ref())).count();
    let reason = if connected.is_empty() {
        Some("no upstream is connected".to_string())
    } else if best.is_none() {
        Some("no upstream has announced a tip yet".to_string())
    } else if connected.iter().all(|u| u.cordoned.load(Ordering::Relaxed)) {
        Some("every connected upstream is cordoned".to_string())
    } else if healthy == 0 {
        Some(format!(
            "no usable upstream is at the best tip (height {})",
            best.as_ref().map(|t| t.height).unwrap_or(0)
        ))
    } else {
        None
    };
    let ok = reason.is_none();
    let body = json!({
        "status": if ok { "ok" } else { "unavailable" },
        "reason": reason,
        "upstreams": ups.len(),
        "upstreams_connected": connected.len(),
        "upstreams_healthy": healthy,
        "tip": best.as_ref().map(|t| t.height),
    });
    (ok, body)
}

/// The whole `/status` document.
pub fn status(ctx: &Ctx) -> Value {
    let best = ctx.pool.best_tip();
    let (healthy, health) = health(ctx);
    let hub = &ctx.hub;
    let session_subs = hub.session_subscriptions();
    let upstream_subs = hub.upstream_subscriptions();
    let rs = &ctx.router.stats;
    json!({
        "software": ctx.software(),
        "network": ctx.network.to_string(),
        "time_ms": now_ms(),
        "healthy": healthy,
        "health": health,
        "best_tip": best.as_ref().map(tip_json),
        "upstreams": upstreams(ctx),
        "tip_agreement": tip_agreement(ctx),
        "candidates": ctx.pool.candidates().len(),
        "sessions": ctx.sessions(),
        "subscriptions": {
            "scripthashes": hub.scripthashes(),
            "sessions": session_subs,
            "upstream": upstream_subs,
            "fan_in": (upstream_subs > 0)
                .then(|| round3(session_subs as f64 / upstream_subs as f64)),
        },
        "counters": {
            "failovers": ctx.pool.failovers.load(Ordering::Relaxed),
            "hedges": rs.hedges.load(Ordering::Relaxed),
            "retries": rs.retries.load(Ordering::Relaxed),
            "quorum_disagreements": rs.disagreements.load(Ordering::Relaxed),
            "subscription_moves": hub.moves.load(Ordering::Relaxed),
            "notifications": hub.notifications.load(Ordering::Relaxed),
        },
        "events": ctx.metrics.events(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tip_hash_of_the_regtest_genesis_header() {
        let genesis = bitcoin::blockdata::constants::genesis_block(bitcoin::Network::Regtest);
        let hex = bitcoin::consensus::encode::serialize_hex(&genesis.header);
        let tip = Tip { height: 0, hex };
        assert_eq!(
            tip_hash(&tip).as_deref(),
            Some("0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206")
        );
        let bad = Tip {
            height: 1,
            hex: "zz".repeat(80),
        };
        assert_eq!(tip_hash(&bad), None);
    }
}
