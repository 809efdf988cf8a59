//! Per-endpoint faults: the ways a real Electrum server misbehaves, switchable at runtime.
//!
//! An endpoint is written `ADDR[,FAULT...]`, e.g. `127.0.0.1:0,latency=200,lie-balance`.
//! The same comma list parses into [`Faults`] on its own, so tests can change an endpoint's
//! faults while it runs.

use std::fmt;
use std::str::FromStr;

use crate::protocol::methods::{parse_version, PROTOCOL_MAX, PROTOCOL_MIN};
use crate::transport::ServerUrl;

/// How an endpoint misbehaves. `Faults::default()` is an honest server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// `latency=MS`: every answer and notification is delayed this long.
    pub latency_ms: u64,
    /// `drop-after=N`: the connection is closed after answering N requests.
    pub drop_after: Option<u64>,
    /// `stall`: requests are read but never answered.
    pub stall: bool,
    /// `lag=N`: the endpoint's tip stays N blocks behind.
    pub lag: u32,
    /// `fork=DEPTH`: the last DEPTH blocks are replaced by a competing branch.
    pub fork: u32,
    /// `lie-balance`: `get_balance` numbers are wrong.
    pub lie_balance: bool,
    /// `lie-history`: the newest confirmed history entry of every scripthash is dropped, and
    /// statuses are computed from that history.
    pub lie_history: bool,
    /// `bad-merkle`: merkle branches are corrupted.
    pub bad_merkle: bool,
    /// `bad-header`: headers carry a corrupted byte (linkage and proof of work fail).
    pub bad_header: bool,
    /// `deep-fork=DEPTH`: the announced tip (`headers.subscribe` answers and notifications) is
    /// a block with valid proof of work mined on the block DEPTH below the real tip (on
    /// genesis while the chain is shorter), so every announcement is a fork that deep; the
    /// endpoint serves the real chain otherwise.
    pub deep_fork: Option<u32>,
    /// `wrong-tx`: `transaction.get` returns another transaction.
    pub wrong_tx: bool,
    /// `fake-mempool`: every scripthash's history, mempool, unspent list and balance carry an
    /// unconfirmed payment that does not exist, and statuses are computed with it.
    pub fake_mempool: bool,
    /// `fake-confirmed`: every scripthash's history carries a confirmed entry at height 1 with
    /// a transaction that does not exist (statuses are computed with it, so they pass vetting),
    /// and `get_merkle` for that transaction answers a made-up branch.
    pub fake_confirmed: bool,
    /// `no-merkle`: `get_merkle` refuses every transaction as not in a block (code 1), as a
    /// server that will not prove what it lists.
    pub no_merkle: bool,
    /// `string-heights`: history heights are written as strings.
    pub string_heights: bool,
    /// `accept-all`: every broadcast that decodes as a transaction is "accepted" with its txid,
    /// valid or not.
    pub accept_all: bool,
    /// `fee-factor=N`: fee estimates, the relay fee and mempool fee figures are N times the
    /// honest ones.
    pub fee_factor: Option<u64>,
    /// `fee-garbage`: fee figures are answered as strings.
    pub fee_garbage: bool,
    /// `hide-mempool`: unconfirmed transactions are left out of histories, unspent lists,
    /// balances and statuses (a pending payment hidden, consistently).
    pub hide_mempool: bool,
    /// `silent`: scripthash status changes are never notified (subscribe answers are honest).
    pub silent: bool,
    /// `stall-subscribe`: `blockchain.scripthash.subscribe` requests are never answered;
    /// everything else is.
    pub stall_subscribe: bool,
    /// `hold-back`: like ElectrumX 1.18+ over TCP and TLS, after the first 1,024 bytes of a
    /// connection output goes out only once 1,024 bytes are waiting or a second has passed
    /// since the last send (one small answer at a time waits up to a second).
    pub hold_back: bool,
    /// `flood=N`: every scripthash subscription is followed by N notifications of statuses
    /// that alternate (and match nothing).
    pub flood: Option<u64>,
    /// `inner-node`: `id_from_pos` names an inner node of the block's merkle tree as the
    /// transaction at the position, with the shorter branch that folds from that node to the
    /// block's merkle root (at position 0 of a block of two or more transactions: the merkle
    /// root itself, with an empty branch). The branch length is not bound to the tree's depth,
    /// so the fold alone passes; no transaction hashes to the node. Positions no inner node
    /// can stand for (the right half of the tree, a one-transaction block) are answered
    /// honestly.
    pub inner_node: bool,
    /// `strip-witness`: `transaction.get` (raw and verbose) serves segwit transactions without
    /// their witness. The txid does not change; the wtxid, size and weight do, and the
    /// signatures are gone.
    pub strip_witness: bool,
    /// `alter-witness`: `transaction.get` (raw and verbose) serves segwit transactions with a
    /// witness byte flipped (the last byte of the first witness element). The txid does not
    /// change; the wtxid does. Transactions without a witness are served honestly.
    pub alter_witness: bool,
    /// `flap=SECONDS`: the endpoint alternates SECONDS down and SECONDS up.
    pub flap_secs: Option<u64>,
    /// `version=V`: the highest protocol version the endpoint speaks (e.g. `1.4` like electrs).
    pub max_version: Option<String>,
    /// `software=NAME`: the server software string.
    pub software: Option<String>,
}

/// Why a fault list could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fault {fault:?}: {reason}")]
pub struct FaultError {
    fault: String,
    reason: String,
}

impl Faults {
    /// Applies one `name[=value]` item.
    pub fn apply(&mut self, item: &str) -> Result<(), FaultError> {
        let item = item.trim();
        let err = |reason: &str| FaultError {
            fault: item.to_string(),
            reason: reason.to_string(),
        };
        let (name, value) = match item.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (item, None),
        };
        let num = |v: Option<&str>| -> Result<u64, FaultError> {
            v.ok_or_else(|| err("needs a value"))?
                .parse::<u64>()
                .map_err(|_| err("value must be a non-negative integer"))
        };
        let flag = |v: Option<&str>| -> Result<bool, FaultError> {
            match v {
                None | Some("1") | Some("true") | Some("on") => Ok(true),
                Some("0") | Some("false") | Some("off") => Ok(false),
                Some(_) => Err(err("takes no value")),
            }
        };
        match name {
            "latency" => self.latency_ms = num(value)?,
            "drop-after" => self.drop_after = Some(num(value)?),
            "stall" => self.stall = flag(value)?,
            "lag" => {
                self.lag = u32::try_from(num(value)?).map_err(|_| err("too large"))?;
            }
            "fork" => {
                self.fork = u32::try_from(num(value)?).map_err(|_| err("too large"))?;
            }
            "lie-balance" => self.lie_balance = flag(value)?,
            "lie-history" => self.lie_history = flag(value)?,
            "bad-merkle" => self.bad_merkle = flag(value)?,
            "bad-header" => self.bad_header = flag(value)?,
            "deep-fork" => {
                let depth = u32::try_from(num(value)?).map_err(|_| err("too large"))?;
                if depth == 0 {
                    return Err(err("must be at least 1 block"));
                }
                self.deep_fork = Some(depth);
            }
            "wrong-tx" => self.wrong_tx = flag(value)?,
            "fake-mempool" => self.fake_mempool = flag(value)?,
            "fake-confirmed" => self.fake_confirmed = flag(value)?,
            "no-merkle" => self.no_merkle = flag(value)?,
            "string-heights" => self.string_heights = flag(value)?,
            "accept-all" => self.accept_all = flag(value)?,
            "fee-garbage" => self.fee_garbage = flag(value)?,
            "hide-mempool" => self.hide_mempool = flag(value)?,
            "silent" => self.silent = flag(value)?,
            "stall-subscribe" => self.stall_subscribe = flag(value)?,
            "hold-back" => self.hold_back = flag(value)?,
            "flood" => self.flood = Some(num(value)?),
            "fee-factor" => self.fee_factor = Some(num(value)?),
            "inner-node" => self.inner_node = flag(value)?,
            "strip-witness" => self.strip_witness = flag(value)?,
            "alter-witness" => self.alter_witness = flag(value)?,
            "flap" => {
                let secs = num(value)?;
                if secs == 0 {
                    return Err(err("must be at least 1 second"));
                }
                self.flap_secs = Some(secs);
            }
            "version" => {
                let v = value.ok_or_else(|| err("needs a value"))?;
                let parsed = parse_version(v).ok_or_else(|| err("not a protocol version"))?;
                if parsed < PROTOCOL_MIN || parsed > PROTOCOL_MAX {
                    return Err(err("must be between 1.4 and 1.6"));
                }
                self.max_version = Some(v.to_string());
            }
            "software" => {
                let v = value.ok_or_else(|| err("needs a value"))?;
                self.software = Some(v.to_string());
            }
            _ => return Err(err("unknown fault")),
        }
        Ok(())
    }

    /// The highest protocol version this endpoint speaks.
    pub fn protocol_max(&self) -> (u32, u32, u32) {
        self.max_version
            .as_deref()
            .and_then(parse_version)
            .unwrap_or(PROTOCOL_MAX)
    }

    /// True when no fault is set.
    pub fn is_honest(&self) -> bool {
        *self == Faults::default()
    }
}

impl FromStr for Faults {
    type Err = FaultError;

    /// Parses a comma-separated list such as `latency=200,lie-balance` (empty: honest).
    fn from_str(s: &str) -> Result<Self, FaultError> {
        let mut f = Faults::default();
        for item in s.split(',').filter(|i| !i.trim().is_empty()) {
            f.apply(item)?;
        }
        Ok(f)
    }
}

impl fmt::Display for Faults {
    /// The comma list that parses back into these faults.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items: Vec<String> = Vec::new();
        if self.latency_ms > 0 {
            items.push(format!("latency={}", self.latency_ms));
        }
        if let Some(n) = self.drop_after {
            items.push(format!("drop-after={n}"));
        }
        if self.stall {
            items.push("stall".into());
        }
        if self.lag > 0 {
            items.push(format!("lag={}", self.lag));
        }
        if self.fork > 0 {
            items.push(format!("fork={}", self.fork));
        }
        if let Some(d) = self.deep_fork {
            items.push(format!("deep-fork={d}"));
        }
        for (on, name) in [
            (self.lie_balance, "lie-balance"),
            (self.lie_history, "lie-history"),
            (self.bad_merkle, "bad-merkle"),
            (self.bad_header, "bad-header"),
            (self.wrong_tx, "wrong-tx"),
            (self.fake_mempool, "fake-mempool"),
            (self.fake_confirmed, "fake-confirmed"),
            (self.no_merkle, "no-merkle"),
            (self.string_heights, "string-heights"),
            (self.accept_all, "accept-all"),
            (self.fee_garbage, "fee-garbage"),
            (self.hide_mempool, "hide-mempool"),
            (self.silent, "silent"),
            (self.stall_subscribe, "stall-subscribe"),
            (self.hold_back, "hold-back"),
            (self.inner_node, "inner-node"),
            (self.strip_witness, "strip-witness"),
            (self.alter_witness, "alter-witness"),
        ] {
            if on {
                items.push(name.into());
            }
        }
        if let Some(s) = self.flap_secs {
            items.push(format!("flap={s}"));
        }
        if let Some(n) = self.fee_factor {
            items.push(format!("fee-factor={n}"));
        }
        if let Some(n) = self.flood {
            items.push(format!("flood={n}"));
        }
        if let Some(v) = &self.max_version {
            items.push(format!("version={v}"));
        }
        if let Some(s) = &self.software {
            items.push(format!("software={s}"));
        }
        f.write_str(&items.join(","))
    }
}

/// One `--listen` endpoint: where to listen and how to misbehave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// The address; port 0 picks a free port.
    pub url: ServerUrl,
    /// The faults of this endpoint.
    pub faults: Faults,
}

impl EndpointSpec {
    /// An honest endpoint at `url`.
    pub fn honest(url: ServerUrl) -> Self {
        EndpointSpec {
            url,
            faults: Faults::default(),
        }
    }
}

/// Why an endpoint could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// The address part.
    #[error(transparent)]
    Url(#[from] crate::transport::UrlError),
    /// The fault list.
    #[error(transparent)]
    Fault(#[from] FaultError),
}

impl FromStr for EndpointSpec {
    type Err = EndpointError;

    /// Parses `ADDR[,FAULT...]` where ADDR is `HOST:PORT` (TCP) or a `tcp://`, `ssl://`,
    /// `ws://` or `wss://` URL.
    fn from_str(s: &str) -> Result<Self, EndpointError> {
        let (addr, faults) = match s.split_once(',') {
            Some((a, f)) => (a.trim(), f),
            None => (s.trim(), ""),
        };
        let url: ServerUrl = if addr.contains("://") {
            addr.parse()?
        } else {
            format!("tcp://{addr}").parse()?
        };
        Ok(EndpointSpec {
            url,
            faults: faults.parse()?,
        })
    }
}

impl fmt::Display for EndpointSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.url)?;
        let faults = self.faults.to_string();
        if !faults.is_empty() {
            write!(f, ",{faults}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Scheme;

    #[test]
    fn parses_endpoints_with_faults() {
        let e: EndpointSpec = "127.0.0.1:0,latency=200,lie-balance".parse().unwrap();
        assert_eq!(e.url.scheme, Scheme::Tcp);
        assert_eq!((e.url.host.as_str(), e.url.port), ("127.0.0.1", 0));
        assert_eq!(e.faults.latency_ms, 200);
        assert!(e.faults.lie_balance);
        assert!(!e.faults.lie_history);

        let e: EndpointSpec =
            "ssl://localhost:0,drop-after=3,stall,lag=2,fork=4,deep-fork=3000,lie-history,bad-merkle,bad-header,wrong-tx,fake-confirmed,no-merkle,inner-node,strip-witness,alter-witness,flap=5,version=1.4,software=electrs/0.11"
                .parse()
                .unwrap();
        assert_eq!(e.url.scheme, Scheme::Ssl);
        let f = &e.faults;
        assert_eq!(f.drop_after, Some(3));
        assert!(f.stall && f.lie_history && f.bad_merkle && f.bad_header && f.wrong_tx);
        assert!(
            f.inner_node && f.strip_witness && f.alter_witness && f.fake_confirmed && f.no_merkle
        );
        assert_eq!((f.lag, f.fork, f.flap_secs), (2, 4, Some(5)));
        assert_eq!(f.deep_fork, Some(3000));
        assert_eq!(f.protocol_max(), (1, 4, 0));
        assert_eq!(f.software.as_deref(), Some("electrs/0.11"));
        // Display round-trips.
        let again: EndpointSpec = e.to_string().parse().unwrap();
        assert_eq!(again, e);

        let e: EndpointSpec = "ws://[::1]:0".parse().unwrap();
        assert_eq!((e.url.scheme, e.url.host.as_str()), (Scheme::Ws, "::1"));
        assert!(e.faults.is_honest());
        assert_eq!(Faults::default().protocol_max(), (1, 6, 0));
    }

    #[test]
    fn rejects_bad_faults() {
        for bad in [
            "127.0.0.1:0,latency",
            "127.0.0.1:0,latency=x",
            "127.0.0.1:0,nonsense",
            "127.0.0.1:0,stall=maybe",
            "127.0.0.1:0,version=2.0",
            "127.0.0.1:0,version=abc",
            "127.0.0.1:0,flap=0",
            "127.0.0.1:0,deep-fork=0",
            "ftp://h:1",
        ] {
            assert!(bad.parse::<EndpointSpec>().is_err(), "{bad} should fail");
        }
    }
}
