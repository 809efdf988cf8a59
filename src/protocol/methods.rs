//! The method catalogue for protocol 1.4 to 1.6: one row per method says everything the
//! gateway decides about it.
//!
//! A row names the method's kind (answered locally, read, subscription, broadcast), the shape of
//! its parameters (which the gateway parses and puts in canonical form before anything is
//! sent upstream), its default routing policy, whether its answer depends on the chain tip,
//! how long the answer may be cached, the check the answer must pass, and what must be equal
//! for two upstreams' answers to agree in a vote. The gateway's typed call
//! (`gateway::call::Call`) is built from the row; router, cache, checks and votes read the
//! call, never method-name strings. Adding a method, or changing how one is routed, checked or
//! cached, is an edit of its row here.

use serde::{Deserialize, Serialize};

/// What a method does, which decides how the gateway handles it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Answered by the gateway itself (version, features, banner, ping, peers, headers).
    Local,
    /// A read answered by an upstream.
    Read,
    /// A scripthash subscription (initial value plus notifications).
    Subscription,
    /// The header subscription, answered from the verified chain.
    Headers,
    /// Ends a subscription.
    Unsubscribe,
    /// Sends a transaction to the network.
    Broadcast,
}

/// How a routed method is sent to upstreams and which answer wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Best-scored upstream, hedged and retried.
    Fastest,
    /// Majority of k upstreams.
    Quorum,
    /// Median of every active upstream's numeric answer.
    Median,
    /// Sent to every active upstream.
    Broadcast,
    /// Answered by the gateway.
    Local,
}

impl Policy {
    /// The policy's name as used in `config.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Fastest => "fastest",
            Policy::Quorum => "quorum",
            Policy::Median => "median",
            Policy::Broadcast => "broadcast",
            Policy::Local => "local",
        }
    }
}

/// How long an answer may be cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cache {
    /// Never cached (mempool, subscriptions, broadcasts).
    Never,
    /// Kept while the scripthash's status stays the one the gateway's watchers agreed on when
    /// the answer was voted (history, balance and unspent outputs of a subscribed scripthash):
    /// the status hash identifies the history, and every change of it comes with a new one.
    Status,
    /// Kept until the verified tip moves, and at most a few seconds (fees).
    Short,
    /// Immutable once verified (raw transactions) or buried below the reorg window (proofs).
    Immutable,
}

/// The shape of a method's parameters, which decides how they are parsed and put in
/// canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Params {
    /// Whatever the wallet sent, passed on unchanged.
    Any,
    /// `(client_name, protocol_version)`.
    Version,
    /// `(scripthash)`, or `(address)` for the old address methods.
    ScriptHash,
    /// `(tx_hash, verbose=false)`.
    Transaction,
    /// `(tx_hash, height)`.
    Merkle,
    /// `(height, tx_pos, merkle=false)`.
    IdFromPos,
    /// `(height, cp_height=0)`.
    Header,
    /// `(start_height, count, cp_height=0)`.
    Headers,
    /// `(number, mode=null)`.
    Fee,
    /// `(raw_tx)`.
    RawTransaction,
}

/// The check an upstream's answer must pass before it reaches a wallet or the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Check {
    /// Nothing can be checked locally; the answer is voted on or trusted.
    None,
    /// A raw transaction: it hashes to the txid asked for.
    Transaction,
    /// A merkle branch folds to the verified header's merkle root.
    Merkle,
    /// A txid at a block position, with the branch that proves it.
    TxAtPosition,
    /// A broadcast: the returned txid is the transaction's.
    Broadcast,
    /// A balance: `confirmed` and `unconfirmed` are integers (satoshis).
    Balance,
    /// A history or mempool list: txids are hashes, heights integers from -1 up.
    History,
    /// Unspent outputs: txids are hashes, positions, values and heights non-negative integers.
    Unspent,
    /// A fee rate: a number, non-negative or `-1` ("no estimate").
    FeeRate,
    /// `mempool.get_info`: an object of non-negative numbers.
    FeeInfo,
    /// A fee histogram: `[fee rate, vsize]` pairs of non-negative numbers, fee rate not rising.
    FeeHistogram,
}

impl Check {
    /// True for checks that prove an answer against the verified chain (not just its form).
    pub fn proves(self) -> bool {
        matches!(
            self,
            Check::Transaction | Check::Merkle | Check::TxAtPosition | Check::Broadcast
        )
    }
}

/// What must be equal for two upstreams' answers to agree in a vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vote {
    /// The whole answer, as canonical JSON.
    Whole,
    /// A balance: its confirmed part.
    Balance,
    /// A history: its confirmed entries.
    History,
    /// Unspent outputs: the confirmed ones, as a set.
    Unspent,
}

/// What to ask instead when every upstream says it does not know a method (an older or
/// newer server, or one that never had it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fallback {
    /// `blockchain.relayfee` (gone in 1.6): `mempool.get_info`'s `minrelaytxfee`.
    RelayFeeFromMempoolInfo,
    /// `mempool.get_info` (new in 1.6): every field from `blockchain.relayfee`.
    MempoolInfoFromRelayFee,
    /// `scripthash.get_mempool` (electrs has none): the mempool part of `get_history`.
    MempoolFromHistory,
    /// `estimatefee` with a 1.6 mode: asked again without it (servers before 1.6 refuse it).
    FeeWithoutMode,
}

/// One catalogue row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodInfo {
    /// The wire name.
    pub name: &'static str,
    /// What it does.
    pub kind: Kind,
    /// The shape of its parameters.
    pub params: Params,
    /// How it is routed unless the configuration says otherwise.
    pub policy: Policy,
    /// Its answer depends on the chain tip, so only upstreams in step with the verified tip
    /// may give it.
    pub tip: bool,
    /// Caching rule.
    pub cache: Cache,
    /// The check its answer must pass.
    pub check: Check,
    /// What two answers must share to agree in a vote.
    pub vote: Vote,
    /// First protocol version with the method, as (major, minor).
    pub since: (u32, u32),
    /// Last protocol version with the method, if it was removed.
    pub until: Option<(u32, u32)>,
    /// For an old `blockchain.address.*` method, the `blockchain.scripthash.*` method it is
    /// converted to.
    pub twin: Option<&'static str>,
    /// What to ask instead when upstreams do not know the method.
    pub fallback: Option<Fallback>,
}

impl MethodInfo {
    /// True for the old methods that take an address.
    pub fn takes_address(&self) -> bool {
        self.twin.is_some()
    }

    /// True when a wallet that negotiated `protocol` may call the method (the old address
    /// methods always: the gateway converts them).
    pub fn available_at(&self, protocol: (u32, u32, u32)) -> bool {
        let v = (protocol.0, protocol.1);
        self.takes_address() || (self.since <= v && !self.until.is_some_and(|u| v > u))
    }
}

const fn local(name: &'static str) -> MethodInfo {
    MethodInfo {
        name,
        kind: Kind::Local,
        params: Params::Any,
        policy: Policy::Local,
        tip: false,
        cache: Cache::Never,
        check: Check::None,
        vote: Vote::Whole,
        since: (1, 4),
        until: None,
        twin: None,
        fallback: None,
    }
}

const fn read(name: &'static str, params: Params) -> MethodInfo {
    MethodInfo {
        kind: Kind::Read,
        params,
        policy: Policy::Fastest,
        tip: true,
        ..local(name)
    }
}

const fn address(name: &'static str, kind: Kind, twin: &'static str) -> MethodInfo {
    MethodInfo {
        kind,
        params: Params::ScriptHash,
        since: (1, 0),
        until: Some((1, 2)),
        twin: Some(twin),
        ..local(name)
    }
}

/// Every method known to the gateway.
pub static METHODS: &[MethodInfo] = &[
    MethodInfo {
        params: Params::Version,
        ..local("server.version")
    },
    local("server.features"),
    local("server.banner"),
    local("server.donation_address"),
    local("server.ping"),
    local("server.peers.subscribe"),
    local("server.add_peer"),
    MethodInfo {
        kind: Kind::Headers,
        ..local("blockchain.headers.subscribe")
    },
    // Headers come from the verified chain, with header proofs computed locally.
    MethodInfo {
        params: Params::Header,
        ..local("blockchain.block.header")
    },
    MethodInfo {
        params: Params::Headers,
        ..local("blockchain.block.headers")
    },
    MethodInfo {
        policy: Policy::Median,
        cache: Cache::Short,
        check: Check::FeeRate,
        fallback: Some(Fallback::FeeWithoutMode),
        ..read("blockchain.estimatefee", Params::Fee)
    },
    MethodInfo {
        policy: Policy::Median,
        cache: Cache::Short,
        check: Check::FeeRate,
        until: Some((1, 5)),
        fallback: Some(Fallback::RelayFeeFromMempoolInfo),
        ..read("blockchain.relayfee", Params::Any)
    },
    MethodInfo {
        policy: Policy::Median,
        cache: Cache::Short,
        check: Check::FeeInfo,
        since: (1, 6),
        fallback: Some(Fallback::MempoolInfoFromRelayFee),
        ..read("mempool.get_info", Params::Any)
    },
    MethodInfo {
        cache: Cache::Short,
        check: Check::FeeHistogram,
        ..read("mempool.get_fee_histogram", Params::Any)
    },
    MethodInfo {
        policy: Policy::Quorum,
        check: Check::Balance,
        vote: Vote::Balance,
        cache: Cache::Status,
        ..read("blockchain.scripthash.get_balance", Params::ScriptHash)
    },
    MethodInfo {
        policy: Policy::Quorum,
        check: Check::History,
        vote: Vote::History,
        cache: Cache::Status,
        ..read("blockchain.scripthash.get_history", Params::ScriptHash)
    },
    MethodInfo {
        check: Check::History,
        fallback: Some(Fallback::MempoolFromHistory),
        ..read("blockchain.scripthash.get_mempool", Params::ScriptHash)
    },
    MethodInfo {
        policy: Policy::Quorum,
        check: Check::Unspent,
        vote: Vote::Unspent,
        cache: Cache::Status,
        ..read("blockchain.scripthash.listunspent", Params::ScriptHash)
    },
    MethodInfo {
        kind: Kind::Subscription,
        ..read("blockchain.scripthash.subscribe", Params::ScriptHash)
    },
    MethodInfo {
        kind: Kind::Unsubscribe,
        policy: Policy::Local,
        ..read("blockchain.scripthash.unsubscribe", Params::ScriptHash)
    },
    // Transactions and proofs are checked against the verified chain, whatever the
    // upstream's tip.
    MethodInfo {
        tip: false,
        cache: Cache::Immutable,
        check: Check::Transaction,
        ..read("blockchain.transaction.get", Params::Transaction)
    },
    MethodInfo {
        tip: false,
        cache: Cache::Immutable,
        check: Check::Merkle,
        ..read("blockchain.transaction.get_merkle", Params::Merkle)
    },
    MethodInfo {
        tip: false,
        cache: Cache::Immutable,
        check: Check::TxAtPosition,
        ..read("blockchain.transaction.id_from_pos", Params::IdFromPos)
    },
    MethodInfo {
        kind: Kind::Broadcast,
        policy: Policy::Broadcast,
        tip: false,
        check: Check::Broadcast,
        ..read("blockchain.transaction.broadcast", Params::RawTransaction)
    },
    MethodInfo {
        kind: Kind::Broadcast,
        policy: Policy::Broadcast,
        tip: false,
        since: (1, 6),
        ..read("blockchain.transaction.broadcast_package", Params::Any)
    },
    address(
        "blockchain.address.get_balance",
        Kind::Read,
        "blockchain.scripthash.get_balance",
    ),
    address(
        "blockchain.address.get_history",
        Kind::Read,
        "blockchain.scripthash.get_history",
    ),
    address(
        "blockchain.address.get_mempool",
        Kind::Read,
        "blockchain.scripthash.get_mempool",
    ),
    address(
        "blockchain.address.listunspent",
        Kind::Read,
        "blockchain.scripthash.listunspent",
    ),
    address(
        "blockchain.address.subscribe",
        Kind::Subscription,
        "blockchain.scripthash.subscribe",
    ),
    address(
        "blockchain.address.unsubscribe",
        Kind::Unsubscribe,
        "blockchain.scripthash.unsubscribe",
    ),
];

/// Looks a method up by its wire name.
pub fn lookup(name: &str) -> Option<&'static MethodInfo> {
    METHODS.iter().find(|m| m.name == name)
}

/// For a `blockchain.address.*` method, the `blockchain.scripthash.*` method it becomes.
pub fn scripthash_twin(name: &str) -> Option<&'static str> {
    lookup(name)?.twin
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
            Cache::Immutable
        );
        assert_eq!(
            lookup("blockchain.scripthash.subscribe").unwrap().kind,
            Kind::Subscription
        );
        assert_eq!(lookup("server.ping").unwrap().kind, Kind::Local);
        assert!(lookup("no.such").is_none());
        assert_eq!(
            scripthash_twin("blockchain.address.listunspent"),
            Some("blockchain.scripthash.listunspent")
        );
        assert_eq!(scripthash_twin("blockchain.scripthash.listunspent"), None);
        // Every name is unique, and every twin is a scripthash method of the same kind.
        let mut names: Vec<_> = METHODS.iter().map(|m| m.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), METHODS.len());
        for m in METHODS.iter().filter(|m| m.takes_address()) {
            let twin = lookup(m.twin.unwrap()).expect("twin in the catalogue");
            assert_eq!(twin.kind, m.kind, "{}", m.name);
            assert!(twin.twin.is_none());
        }
    }

    #[test]
    fn rows_are_consistent() {
        for m in METHODS {
            // Local methods are never routed, so nothing about upstreams applies to them.
            if m.kind == Kind::Local || m.kind == Kind::Headers {
                assert_eq!(m.policy, Policy::Local, "{}", m.name);
                assert_eq!(m.cache, Cache::Never, "{}", m.name);
            }
            // Only reads are cached; only voted reads have a vote rule other than Whole.
            if m.cache != Cache::Never {
                assert_eq!(m.kind, Kind::Read, "{}", m.name);
            }
            // A status identifies one scripthash's history.
            if m.cache == Cache::Status {
                assert_eq!(m.params, Params::ScriptHash, "{}", m.name);
            }
            if m.vote != Vote::Whole {
                assert_eq!(m.policy, Policy::Quorum, "{}", m.name);
            }
            // Answers proven against the verified chain do not depend on an upstream's tip.
            if m.check.proves() && m.kind == Kind::Read {
                assert!(!m.tip, "{}", m.name);
            }
        }
        let p = |n| lookup(n).unwrap().policy;
        assert_eq!(p("blockchain.estimatefee"), Policy::Median);
        assert_eq!(p("mempool.get_info"), Policy::Median);
        assert_eq!(p("blockchain.transaction.broadcast"), Policy::Broadcast);
        assert_eq!(p("blockchain.scripthash.get_history"), Policy::Quorum);
        assert_eq!(p("blockchain.scripthash.get_mempool"), Policy::Fastest);
        assert_eq!(p("blockchain.transaction.get"), Policy::Fastest);
        assert_eq!(p("server.banner"), Policy::Local);
    }

    #[test]
    fn availability_by_protocol() {
        let relayfee = lookup("blockchain.relayfee").unwrap();
        assert!(relayfee.available_at((1, 4, 0)));
        assert!(!relayfee.available_at((1, 6, 0)));
        let info = lookup("mempool.get_info").unwrap();
        assert!(!info.available_at((1, 5, 0)));
        assert!(info.available_at((1, 6, 0)));
        assert!(lookup("blockchain.address.get_balance")
            .unwrap()
            .available_at((1, 6, 0)));
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
