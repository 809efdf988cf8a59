//! What `/status` and `/health` say, built from a [`Snapshot`] of the gateway.
//!
//! The same upstream view serves the status page, the admin API's `upstreams.list` and the
//! health check, so an operator never sees two versions of the truth.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use crate::metrics::{now_ms, Event, Snapshot, UpstreamView};
use crate::protocol::Tip;

/// The block hash of a tip's header, if its hex decodes to a header.
pub fn tip_hash(tip: &Tip) -> Option<String> {
    tip.block_hash().map(|h| h.to_string())
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
pub fn upstream_json(up: &UpstreamView, best: Option<&Tip>) -> Value {
    json!({
        "index": up.index,
        "name": up.name,
        "url": up.url,
        "state": up.state.as_str(),
        "connections": up.connections,
        "healthy": up.healthy(best),
        "cordoned": up.cordoned,
        "tip": up.tip.as_ref().map(tip_json),
        "lag": up.lag(best),
        "in_step": up.standing.in_step(),
        "demoted": up.standing.demoted.map(|d| d.as_str()),
        "sitting_out": up.standing.sitting_out(),
        "strikes": up.standing.strikes,
        "latency_ms": {
            "ewma": up.ewma_ms.map(round3),
            "p50": ms(up.p50),
            "p90": ms(up.p90),
        },
        "software": up.software,
        "protocol": up.protocol,
        "score": round3(up.score),
        "scripthashes_seen": up.scripthashes_seen,
        "answered": up.answered,
        "failed": up.failed,
        "error_rate": round3(up.error_rate),
        "reconnects": up.reconnects,
        "consecutive_failures": up.consecutive_failures,
        "last_error": up.last_error,
        "last_success_ms": up.last_success
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64),
    })
}

/// Every upstream slot, in slot order.
pub fn upstreams(snap: &Snapshot) -> Vec<Value> {
    let best = snap.best_tip.as_ref();
    snap.upstreams
        .iter()
        .map(|u| upstream_json(u, best))
        .collect()
}

/// Upstreams grouped by the tip they announce, highest first: more than one group at the
/// same height means upstreams disagree about the chain.
pub fn tip_agreement(snap: &Snapshot) -> Vec<Value> {
    let mut groups: BTreeMap<(u32, String), Vec<String>> = BTreeMap::new();
    for up in &snap.upstreams {
        if let Some(t) = &up.tip {
            let hash = tip_hash(t).unwrap_or_default();
            groups
                .entry((t.height, hash))
                .or_default()
                .push(up.name.clone());
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

/// The health verdict: can the gateway serve wallets now? With the reason when not. A
/// draining gateway is not healthy, whatever its upstreams: a balancer must take it out.
pub fn health(snap: &Snapshot, draining: bool) -> (bool, Value) {
    let reason = if draining {
        Some("draining: the gateway is shutting down and takes no new wallets".to_string())
    } else {
        snap.unhealthy_reason()
    };
    let ok = reason.is_none();
    let body = json!({
        "status": if draining { "draining" } else if ok { "ok" } else { "unavailable" },
        "reason": reason,
        "upstreams": snap.upstreams.len(),
        "upstreams_connected": snap.upstreams.iter().filter(|u| u.connections > 0).count(),
        "upstreams_healthy": snap.healthy(),
        "tip": snap.best_tip.as_ref().map(|t| t.height),
    });
    (ok, body)
}

/// The whole `/status` document.
pub fn status(snap: &Snapshot, events: Vec<Event>, draining: bool) -> Value {
    let (healthy, health) = health(snap, draining);
    let subs = &snap.subscriptions;
    let c = &snap.counters;
    json!({
        "software": snap.software,
        "network": snap.network.to_string(),
        "time_ms": now_ms(),
        "healthy": healthy,
        "health": health,
        "best_tip": snap.best_tip.as_ref().map(tip_json),
        "upstreams": upstreams(snap),
        "tip_agreement": tip_agreement(snap),
        "candidates": snap.candidates.len(),
        "sessions": snap.sessions,
        "subscriptions": {
            "scripthashes": subs.scripthashes,
            "sessions": subs.sessions,
            "upstream": subs.upstream,
            "fan_in": (subs.upstream > 0)
                .then(|| round3(subs.sessions as f64 / subs.upstream as f64)),
        },
        "counters": {
            "failovers": c.failovers,
            "hedges": c.hedges,
            "retries": c.retries,
            "quorum_disagreements": c.disagreements,
            "in_step_waits": c.in_step_waits,
            "subscription_moves": c.subscription_moves,
            "notifications": c.notifications,
            "reorgs": c.reorgs,
            "cache_hits": c.cache_hits,
            "cache_misses": c.cache_misses,
            "verification_failures": c.failures.iter().map(|(r, n)| (r.as_str(), *n)).collect::<BTreeMap<_, _>>(),
        },
        "events": events,
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
