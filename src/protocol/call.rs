//! The typed call: a wallet's request parsed once, against its catalogue row, into everything the
//! gateway decides about it.
//!
//! [`Call::parse`] looks the method up in [`super::methods::METHODS`], checks that the wallet's
//! protocol version has it, converts an old `blockchain.address.*` call to its scripthash twin,
//! and parses the parameters by the row's [`Params`] shape into [`Args`] in canonical form
//! (lowercase hashes, integer heights, boolean flags), refusing what an honest server would
//! refuse. What comes out carries the row (kind, tip dependence, cache rule, check, vote rule)
//! and the routing policy in force; the router, the cache, the answer checks and the votes read
//! it, never a method-name string. Because every upstream gets the canonical parameters, an
//! upstream is never blamed for answering a form the wallet chose.

use serde_json::{json, Value};
use std::collections::BTreeMap;

use super::error::RpcError;
use super::methods::{lookup, Cache, Kind, MethodInfo, Params, Policy};

/// A wallet request parsed against the catalogue.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The row of the method the wallet called (labels, availability).
    pub asked: &'static MethodInfo,
    /// The row of the method served: the scripthash twin of an address method, else `asked`.
    pub info: &'static MethodInfo,
    /// The parameters in canonical form.
    pub args: Args,
    /// The address a wallet gave to an old `blockchain.address.*` method.
    pub address: Option<String>,
    /// The routing policy in force for this call.
    pub policy: Policy,
}

/// A call's parameters in canonical form, by shape.
#[derive(Debug, Clone, PartialEq)]
pub enum Args {
    /// Passed on as the wallet sent them.
    Any(Vec<Value>),
    /// `server.version`: the protocol version (or range) the wallet offered.
    Version(Value),
    /// A scripthash: 64 lowercase hex characters.
    ScriptHash(String),
    /// `transaction.get`.
    Transaction {
        /// Lowercase txid.
        txid: String,
        /// Verbose (JSON) answer wanted.
        verbose: bool,
    },
    /// `transaction.get_merkle`.
    Merkle {
        /// Lowercase txid.
        txid: String,
        /// The block height the proof is for.
        height: u32,
    },
    /// `transaction.id_from_pos`.
    IdFromPos {
        /// Block height.
        height: u32,
        /// Position in the block.
        pos: u32,
        /// The wallet wants the merkle branch too.
        merkle: bool,
    },
    /// `block.header`.
    Header {
        /// Height.
        height: u32,
        /// Checkpoint height for a header proof (0: none).
        cp_height: u32,
    },
    /// `block.headers`.
    Headers {
        /// First height.
        start: u32,
        /// How many.
        count: u32,
        /// Checkpoint height for a header proof (0: none).
        cp_height: u32,
    },
    /// `estimatefee`.
    Fee {
        /// Confirmation target in blocks.
        blocks: u32,
        /// The 1.6 estimation mode, when given.
        mode: Option<Value>,
    },
    /// A raw transaction in hex.
    RawTransaction(String),
}

/// What [`Call::parse`] needs besides the request.
#[derive(Debug, Clone, Copy)]
pub struct ParseContext<'a> {
    /// The network addresses must belong to.
    pub network: bitcoin::Network,
    /// The protocol version the wallet negotiated.
    pub protocol: (u32, u32, u32),
    /// Routing policies configured per method (wire name), overriding the rows' defaults.
    pub policies: &'a BTreeMap<String, Policy>,
}

impl Call {
    /// Parses a request: unknown or unavailable methods are -32601, named parameters and missing
    /// ones -32602, malformed values 1 (bad request), as ElectrumX answers them.
    pub fn parse(
        method: &str,
        params: &[Value],
        params_object: bool,
        cx: &ParseContext<'_>,
    ) -> Result<Call, RpcError> {
        let Some(asked) = lookup(method) else {
            return Err(RpcError::method_not_found(method));
        };
        if !asked.available_at(cx.protocol) {
            return Err(RpcError::method_not_found(method));
        }
        if params_object {
            return Err(RpcError::invalid_params(
                "named parameters are not supported; send a list",
            ));
        }
        let (info, address) = match asked.twin {
            Some(twin) => {
                let info = lookup(twin).ok_or_else(|| RpcError::method_not_found(method))?;
                let addr = string(params.first(), "address")?;
                (info, Some(addr.trim().to_string()))
            }
            None => (asked, None),
        };
        let args = match (info.params, &address) {
            (Params::ScriptHash, Some(addr)) => Args::ScriptHash(
                crate::address::script_hash(addr, cx.network)
                    .map_err(|e| RpcError::bad_request(e.to_string()))?,
            ),
            (shape, _) => parse_args(shape, params)?,
        };
        let policy = cx.policies.get(info.name).copied().unwrap_or(info.policy);
        Ok(Call {
            asked,
            info,
            args,
            address,
            policy,
        })
    }

    /// Builds a call the gateway itself makes (the explorer, vetting): parsed like a wallet's
    /// at the highest protocol version, with the rows' default policies unless `policies` say
    /// otherwise.
    pub fn internal(
        method: &str,
        params: Vec<Value>,
        network: bitcoin::Network,
        policies: &BTreeMap<String, Policy>,
    ) -> Result<Call, RpcError> {
        let cx = ParseContext {
            network,
            protocol: super::methods::PROTOCOL_MAX,
            policies,
        };
        Call::parse(method, &params, false, &cx)
    }

    /// The wire name of the method served.
    pub fn method(&self) -> &'static str {
        self.info.name
    }

    /// What the method does.
    pub fn kind(&self) -> Kind {
        self.info.kind
    }

    /// The scripthash the call is about, if any.
    pub fn scripthash(&self) -> Option<&str> {
        match &self.args {
            Args::ScriptHash(sh) => Some(sh),
            _ => None,
        }
    }

    /// The parameters sent upstream, in canonical form. `id_from_pos` always asks for the
    /// merkle branch: it is what proves the txid.
    pub fn params(&self) -> Vec<Value> {
        match &self.args {
            Args::Any(v) => v.clone(),
            Args::Version(v) => vec![v.clone()],
            Args::ScriptHash(sh) => vec![json!(sh)],
            Args::Transaction { txid, verbose } => {
                if *verbose {
                    vec![json!(txid), json!(true)]
                } else {
                    vec![json!(txid)]
                }
            }
            Args::Merkle { txid, height } => vec![json!(txid), json!(height)],
            Args::IdFromPos { height, pos, .. } => vec![json!(height), json!(pos), json!(true)],
            Args::Header { height, cp_height } => vec![json!(height), json!(cp_height)],
            Args::Headers {
                start,
                count,
                cp_height,
            } => vec![json!(start), json!(count), json!(cp_height)],
            Args::Fee { blocks, mode } => {
                let mut p = vec![json!(blocks)];
                p.extend(mode.clone());
                p
            }
            Args::RawTransaction(raw) => vec![json!(raw)],
        }
    }

    /// The same call with other arguments (a fallback form of it).
    pub fn with_args(&self, args: Args) -> Call {
        Call {
            args,
            ..self.clone()
        }
    }

    /// The same call for another method of the catalogue, with its arguments (a fallback of a
    /// removed or missing method); the policy stays.
    pub fn as_method(&self, method: &str, args: Args) -> Option<Call> {
        let info = lookup(method)?;
        Some(Call {
            asked: self.asked,
            info,
            args,
            address: None,
            policy: self.policy,
        })
    }

    /// The cache key of the answer, when the row lets it be cached (never for verbose
    /// transactions, whose JSON an upstream composes).
    pub fn cache_key(&self) -> Option<String> {
        let name = self.info.name;
        match (self.info.cache, &self.args) {
            (Cache::Never, _) => None,
            (_, Args::Transaction { verbose: true, .. }) => None,
            // The common keys without building JSON first (the cache is on the hot path).
            (_, Args::Transaction { txid, .. }) => Some(format!("{name}|{txid}")),
            (_, Args::Merkle { txid, height }) => Some(format!("{name}|{txid}|{height}")),
            (_, Args::IdFromPos { height, pos, .. }) => Some(format!("{name}|{height}|{pos}")),
            _ => Some(format!("{name}|{}", Value::Array(self.params()))),
        }
    }

    /// The block height a proof answer is about, if the call asks for one.
    pub fn proof_height(&self) -> Option<u32> {
        match self.args {
            Args::Merkle { height, .. } | Args::IdFromPos { height, .. } => Some(height),
            _ => None,
        }
    }
}

fn string<'a>(v: Option<&'a Value>, what: &str) -> Result<&'a str, RpcError> {
    v.and_then(Value::as_str)
        .ok_or_else(|| RpcError::invalid_params(format!("missing or invalid {what}")))
}

/// A non-negative integer that fits 32 bits, also when written as a decimal string (ElectrumX
/// takes `int(value)`).
fn integer(v: &Value) -> Option<u32> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s)
            if !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            s.parse().ok()
        }
        _ => None,
    }
}

fn height(v: Option<&Value>, what: &str, default: Option<u32>) -> Result<u32, RpcError> {
    match v {
        None | Some(Value::Null) => {
            default.ok_or_else(|| RpcError::invalid_params(format!("missing {what}")))
        }
        Some(v) => integer(v)
            .ok_or_else(|| RpcError::bad_request(format!("{what} {v} is not a valid height"))),
    }
}

/// A boolean flag: absent or null is false; 0 and 1 count as false and true (ElectrumX tests
/// `value in (True, False)`, which Python answers yes for 0 and 1).
fn flag(v: Option<&Value>, what: &str) -> Result<bool, RpcError> {
    match v {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) if v.as_u64() == Some(0) => Ok(false),
        Some(v) if v.as_u64() == Some(1) => Ok(true),
        Some(_) => Err(RpcError::bad_request(format!(
            "\"{what}\" must be a boolean"
        ))),
    }
}

fn hash64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn txid(v: Option<&Value>) -> Result<String, RpcError> {
    let s = string(v, "tx_hash")?;
    if hash64(s) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(RpcError::bad_request(format!(
            "{s} should be a transaction hash"
        )))
    }
}

fn parse_args(shape: Params, p: &[Value]) -> Result<Args, RpcError> {
    Ok(match shape {
        Params::Any => Args::Any(p.to_vec()),
        Params::Version => Args::Version(p.get(1).cloned().unwrap_or(Value::Null)),
        Params::ScriptHash => {
            let sh = string(p.first(), "scripthash")?;
            if !hash64(sh) {
                return Err(RpcError::bad_request(format!(
                    "{sh} is not a valid script hash"
                )));
            }
            Args::ScriptHash(sh.to_ascii_lowercase())
        }
        Params::Transaction => Args::Transaction {
            txid: txid(p.first())?,
            verbose: flag(p.get(1), "verbose")?,
        },
        Params::Merkle => Args::Merkle {
            txid: txid(p.first())?,
            height: height(p.get(1), "height", None)?,
        },
        Params::IdFromPos => Args::IdFromPos {
            height: height(p.first(), "height", None)?,
            pos: height(p.get(1), "tx_pos", None)?,
            merkle: flag(p.get(2), "merkle")?,
        },
        Params::Header => Args::Header {
            height: height(p.first(), "height", None)?,
            cp_height: height(p.get(1), "cp_height", Some(0))?,
        },
        Params::Headers => Args::Headers {
            start: height(p.first(), "start_height", None)?,
            count: height(p.get(1), "count", None)?,
            cp_height: height(p.get(2), "cp_height", Some(0))?,
        },
        Params::Fee => Args::Fee {
            blocks: p
                .first()
                .and_then(integer)
                .ok_or_else(|| RpcError::invalid_params("missing or invalid block target"))?,
            mode: p.get(1).filter(|m| !m.is_null()).cloned(),
        },
        Params::RawTransaction => {
            Args::RawTransaction(string(p.first(), "raw transaction")?.trim().to_string())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::error::{BAD_REQUEST, INVALID_PARAMS, METHOD_NOT_FOUND};

    fn parse(method: &str, params: Value) -> Result<Call, RpcError> {
        let policies = BTreeMap::new();
        let cx = ParseContext {
            network: bitcoin::Network::Regtest,
            protocol: (1, 4, 0),
            policies: &policies,
        };
        let params = params.as_array().cloned().unwrap_or_default();
        Call::parse(method, &params, false, &cx)
    }

    const SH: &str = "4D3611DAB7C887DD7377C18B04295EDCE510D6F8749D06D89F376E65FEEE9DF0";

    #[test]
    fn parameters_come_out_canonical() {
        let c = parse("blockchain.scripthash.get_balance", json!([SH])).unwrap();
        assert_eq!(c.scripthash(), Some(SH.to_ascii_lowercase().as_str()));
        assert_eq!(c.policy, Policy::Quorum);
        // Heights written as strings are integers upstream; verbose 1 is true.
        let c = parse("blockchain.transaction.get_merkle", json!([SH, "7"])).unwrap();
        assert_eq!(c.params(), vec![json!(SH.to_ascii_lowercase()), json!(7)]);
        let c = parse("blockchain.transaction.get", json!([SH, 1])).unwrap();
        assert_eq!(c.params()[1], json!(true));
        assert_eq!(c.cache_key(), None, "verbose answers are not cached");
        let c = parse("blockchain.transaction.get", json!([SH, false])).unwrap();
        assert_eq!(c.params().len(), 1);
        assert!(c.cache_key().is_some());
        // id_from_pos always fetches the proof.
        let c = parse("blockchain.transaction.id_from_pos", json!([5, 0])).unwrap();
        assert_eq!(c.params(), vec![json!(5), json!(0), json!(true)]);
        assert_eq!(c.proof_height(), Some(5));
        let c = parse("blockchain.estimatefee", json!([2, null])).unwrap();
        assert_eq!(c.params(), vec![json!(2)]);
    }

    #[test]
    fn address_methods_become_their_twins() {
        let addr =
            bitcoin::Address::p2wsh(bitcoin::Script::new(), bitcoin::KnownHrp::Regtest).to_string();
        let sh = crate::address::script_hash(&addr, bitcoin::Network::Regtest).unwrap();
        let c = parse("blockchain.address.get_history", json!([addr])).unwrap();
        assert_eq!(c.method(), "blockchain.scripthash.get_history");
        assert_eq!(c.asked.name, "blockchain.address.get_history");
        assert_eq!(c.scripthash(), Some(sh.as_str()));
        assert_eq!(c.address.as_deref(), Some(addr.as_str()));
        let e = parse(
            "blockchain.address.get_balance",
            json!(["1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2"]),
        )
        .unwrap_err();
        assert_eq!(e.code, BAD_REQUEST, "a mainnet address on regtest");
    }

    #[test]
    fn refusals_use_electrumx_codes() {
        let code = |m: &str, p: Value| parse(m, p).unwrap_err().code;
        assert_eq!(code("no.such", json!([])), METHOD_NOT_FOUND);
        assert_eq!(
            code("mempool.get_info", json!([])),
            METHOD_NOT_FOUND,
            "1.6 only"
        );
        assert_eq!(
            code("blockchain.scripthash.get_balance", json!(["zz"])),
            BAD_REQUEST
        );
        assert_eq!(
            code("blockchain.scripthash.get_balance", json!([])),
            INVALID_PARAMS
        );
        assert_eq!(
            code("blockchain.transaction.get", json!(["xyz"])),
            BAD_REQUEST
        );
        assert_eq!(
            code("blockchain.transaction.get", json!([SH, "yes"])),
            BAD_REQUEST
        );
        assert_eq!(code("blockchain.block.header", json!([])), INVALID_PARAMS);
        assert_eq!(code("blockchain.block.header", json!([-1])), BAD_REQUEST);
        assert_eq!(code("blockchain.block.header", json!([1.5])), BAD_REQUEST);
        assert_eq!(code("blockchain.estimatefee", json!(["x"])), INVALID_PARAMS);
        let policies = BTreeMap::new();
        let cx = ParseContext {
            network: bitcoin::Network::Regtest,
            protocol: (1, 4, 0),
            policies: &policies,
        };
        let named = Call::parse("server.ping", &[json!({})], true, &cx).unwrap_err();
        assert_eq!(named.code, INVALID_PARAMS);
    }

    #[test]
    fn configured_policies_override_the_rows() {
        let mut policies = BTreeMap::new();
        policies.insert(
            "blockchain.scripthash.get_history".to_string(),
            Policy::Fastest,
        );
        let c = Call::internal(
            "blockchain.scripthash.get_history",
            vec![json!(SH)],
            bitcoin::Network::Regtest,
            &policies,
        )
        .unwrap();
        assert_eq!(c.policy, Policy::Fastest);
    }
}
