//! The method catalogue for protocol 1.4 to 1.6: what each method is, whether its answer may
//! be cached, and how the gateway can check it.

/// What a method does, which decides how the gateway routes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Answered by the gateway itself (version, features, banner, ping, peers).
    Local,
    /// A read answered by an upstream.
    Read,
    /// A subscription (initial value plus notifications).
    Subscription,
    /// Ends a subscription.
    Unsubscribe,
    /// Sends a transaction to the network.
    Broadcast,
}

/// How long an answer may be cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cache {
    /// Never cached (balances, history, mempool, subscriptions).
    Never,
    /// Cached for a short time (fees).
    Short,
    /// Immutable once buried below the reorg window (raw transactions, proofs, headers).
    Immutable,
}

/// How an answer can be checked before it reaches a wallet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verify {
    /// Nothing to check locally; voted on or trusted.
    None,
    /// Headers: proof of work, linkage, retarget rules.
    Header,
    /// A raw transaction: txid recomputed.
    Transaction,
    /// A merkle branch folded to a verified header's merkle root.
    Merkle,
    /// A scripthash status recomputed from history.
    Status,
    /// History: status recomputed, confirmed parts compared.
    History,
    /// A broadcast: returned txid equals the computed one.
    Broadcast,
    /// A fee estimate: median with outlier rejection.
    Fee,
}

/// One catalogue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodInfo {
    /// The wire name.
    pub name: &'static str,
    /// Routing kind.
    pub kind: Kind,
    /// Caching rule.
    pub cache: Cache,
    /// Verification rule.
    pub verify: Verify,
    /// First protocol version with the method, as (major, minor).
    pub since: (u32, u32),
    /// Last protocol version with the method, if it was removed.
    pub until: Option<(u32, u32)>,
    /// True for methods that take an address and are converted to their scripthash twin.
    pub address: bool,
}

const fn m(name: &'static str, kind: Kind, cache: Cache, verify: Verify) -> MethodInfo {
    MethodInfo {
        name,
        kind,
        cache,
        verify,
        since: (1, 4),
        until: None,
        address: false,
    }
}

const fn addr(name: &'static str, kind: Kind) -> MethodInfo {
    MethodInfo {
        name,
        kind,
        cache: Cache::Never,
        verify: Verify::None,
        since: (1, 0),
        until: Some((1, 2)),
        address: true,
    }
}

use Cache::*;
use Kind::*;

/// Every method known to the gateway.
pub static METHODS: &[MethodInfo] = &[
    m("server.version", Local, Never, Verify::None),
    m("server.features", Local, Never, Verify::None),
    m("server.banner", Local, Never, Verify::None),
    m("server.donation_address", Local, Never, Verify::None),
    m("server.ping", Local, Never, Verify::None),
    m("server.peers.subscribe", Local, Never, Verify::None),
    m("server.add_peer", Local, Never, Verify::None),
    m(
        "blockchain.headers.subscribe",
        Subscription,
        Never,
        Verify::Header,
    ),
    m("blockchain.block.header", Read, Immutable, Verify::Header),
    m("blockchain.block.headers", Read, Immutable, Verify::Header),
    m("blockchain.estimatefee", Read, Short, Verify::Fee),
    MethodInfo {
        until: Some((1, 5)),
        ..m("blockchain.relayfee", Read, Short, Verify::Fee)
    },
    MethodInfo {
        since: (1, 6),
        ..m("mempool.get_info", Read, Short, Verify::Fee)
    },
    m("mempool.get_fee_histogram", Read, Short, Verify::None),
    m(
        "blockchain.scripthash.get_balance",
        Read,
        Never,
        Verify::None,
    ),
    m(
        "blockchain.scripthash.get_history",
        Read,
        Never,
        Verify::History,
    ),
    m(
        "blockchain.scripthash.get_mempool",
        Read,
        Never,
        Verify::None,
    ),
    m(
        "blockchain.scripthash.listunspent",
        Read,
        Never,
        Verify::None,
    ),
    m(
        "blockchain.scripthash.subscribe",
        Subscription,
        Never,
        Verify::Status,
    ),
    MethodInfo {
        since: (1, 4),
        ..m(
            "blockchain.scripthash.unsubscribe",
            Unsubscribe,
            Never,
            Verify::None,
        )
    },
    m(
        "blockchain.transaction.get",
        Read,
        Immutable,
        Verify::Transaction,
    ),
    m(
        "blockchain.transaction.get_merkle",
        Read,
        Immutable,
        Verify::Merkle,
    ),
    m(
        "blockchain.transaction.id_from_pos",
        Read,
        Immutable,
        Verify::Merkle,
    ),
    m(
        "blockchain.transaction.broadcast",
        Broadcast,
        Never,
        Verify::Broadcast,
    ),
    MethodInfo {
        since: (1, 6),
        ..m(
            "blockchain.transaction.broadcast_package",
            Broadcast,
            Never,
            Verify::None,
        )
    },
    addr("blockchain.address.get_balance", Read),
    addr("blockchain.address.get_history", Read),
    addr("blockchain.address.get_mempool", Read),
    addr("blockchain.address.listunspent", Read),
    addr("blockchain.address.subscribe", Subscription),
    addr("blockchain.address.unsubscribe", Unsubscribe),
];

/// Looks a method up by its wire name.
pub fn lookup(name: &str) -> Option<&'static MethodInfo> {
    METHODS.iter().find(|m| m.name == name)
}

/// For a `blockchain.address.*` method, the `blockchain.scripthash.*` method it becomes.
pub fn scripthash_twin(name: &str) -> Option<&'static str> {
    let rest = name.strip_prefix("blockchain.address.")?;
    let twin = format!("blockchain.scripthash.{rest}");
    METHODS.iter().find(|m| m.name == twin).map(|m| m.name)
}

/// Parses a protocol version string such as `"1.4"` or `"1.4.2"` into (major, minor, patch).
pub fn parse_version(s: &str) -> Option<(u32, u32, u32)> {
    let mut it = s.trim().split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next().map_or(Some(0), |p| p.parse().ok())?;
    let patch = it.next().map_or(Some(0), |p| p.parse().ok())?;
    if it.next().is_some() {
        return None;
    }
    Some((major, minor, patch))
}

/// Formats a version as Electrum does: `"1.4"`, or `"1.4.2"` when the patch is not zero.
pub fn format_version(v: (u32, u32, u32)) -> String {
    if v.2 == 0 {
        format!("{}.{}", v.0, v.1)
    } else {
        format!("{}.{}.{}", v.0, v.1, v.2)
    }
}

/// The lowest protocol version the gateway speaks.
pub const PROTOCOL_MIN: (u32, u32, u32) = (1, 4, 0);
/// The highest protocol version the gateway speaks.
pub const PROTOCOL_MAX: (u32, u32, u32) = (1, 6, 0);

/// Negotiates a version as ElectrumX does: the client offers one version or a `[min, max]`
/// range; the answer is `min(client max, our max)`, refused if below `max(client min, our min)`.
pub fn negotiate(
    client: &serde_json::Value,
    ours: ((u32, u32, u32), (u32, u32, u32)),
) -> Result<(u32, u32, u32), String> {
    use serde_json::Value;
    let (cmin, cmax) = match client {
        Value::Null => (PROTOCOL_MIN, PROTOCOL_MIN),
        Value::String(s) => {
            let v = parse_version(s).ok_or_else(|| format!("invalid protocol version {s:?}"))?;
            (v, v)
        }
        Value::Array(a) if a.len() == 2 => {
            let p = |v: &Value| {
                v.as_str()
                    .and_then(parse_version)
                    .ok_or_else(|| format!("invalid protocol version {v}"))
            };
            (p(&a[0])?, p(&a[1])?)
        }
        other => return Err(format!("invalid protocol version {other}")),
    };
    let negotiated = cmax.min(ours.1);
    if negotiated < cmin.max(ours.0) {
        return Err(format!(
            "unsupported protocol version: {}",
            format_version(cmax)
        ));
    }
    Ok(negotiated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn catalogue_lookups() {
        assert_eq!(
            lookup("blockchain.transaction.get").unwrap().cache,
            Immutable
        );
        assert_eq!(
            lookup("blockchain.scripthash.subscribe").unwrap().kind,
            Subscription
        );
        assert_eq!(lookup("server.ping").unwrap().kind, Local);
        assert!(lookup("no.such").is_none());
        assert_eq!(
            scripthash_twin("blockchain.address.listunspent"),
            Some("blockchain.scripthash.listunspent")
        );
        assert_eq!(scripthash_twin("blockchain.scripthash.listunspent"), None);
        // Every name is unique.
        let mut names: Vec<_> = METHODS.iter().map(|m| m.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), METHODS.len());
    }

    #[test]
    fn version_negotiation() {
        let ours = (PROTOCOL_MIN, PROTOCOL_MAX);
        assert_eq!(negotiate(&json!(["1.4", "1.6"]), ours), Ok((1, 6, 0)));
        assert_eq!(negotiate(&json!("1.4"), ours), Ok((1, 4, 0)));
        assert_eq!(negotiate(&json!(["1.2", "1.4.2"]), ours), Ok((1, 4, 2)));
        assert_eq!(negotiate(&json!(["1.4", "2.0"]), ours), Ok((1, 6, 0)));
        assert!(negotiate(&json!("1.2"), ours).is_err());
        assert!(negotiate(&json!("abc"), ours).is_err());
        assert!(negotiate(&json!(["1.7", "1.8"]), ours).is_err());
        assert_eq!(format_version((1, 4, 2)), "1.4.2");
        assert_eq!(format_version((1, 6, 0)), "1.6");
    }
}
