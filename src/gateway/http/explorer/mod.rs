//! A small block explorer on the HTTP listener: blocks, transactions and addresses as the
//! gateway itself sees them.
//!
//! A block explorer on the web asks one server and believes it. This one shows only what the
//! gateway can stand behind, so a user can look at the chain through the same checks a wallet
//! gets: block headers come from the verified header chain, a transaction must hash to its
//! txid, a transaction's block is shown only when its merkle proof folds up to the merkle root
//! of the verified header at that height, and the transactions listed in a block each come with
//! such a proof. Balances, histories and unspent outputs cannot be proven from headers; they are
//! what the upstreams vote, as for a wallet. Every answer goes through the router (and the
//! answer cache) exactly as a wallet's request does; no upstream client is used directly.
//!
//! | path | page |
//! |---|---|
//! | `/explorer` | search box, verified tip and the latest blocks |
//! | `/explorer?q=TERM` | the page TERM names: a height, a block hash, a txid or an address |
//! | `/explorer/block/HEIGHT_OR_HASH[?from=N]` | a block header and its transactions, 25 at a time |
//! | `/explorer/tx/TXID` | a transaction, its inputs and outputs, and its merkle proof |
//! | `/explorer/address/ADDRESS[?from=N]` | balance, history (100 at a time) and unspent outputs |
//!
//! Pages are plain HTML rendered here, with inline CSS and no script, so they work offline and
//! under a Content-Security-Policy that forbids scripts altogether. Every string that comes from
//! the query or from an upstream is escaped. Links are relative, so the pages keep working
//! behind a reverse proxy that mounts the listener under a prefix.

use bitcoin::block::Header;
use bitcoin::hex::DisplayHex;
use bitcoin::{Address, BlockHash, Network, Transaction, TxOut, Txid};
use futures::stream::{self, StreamExt};
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use jsonrpsee::server::HttpBody;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::str::FromStr;

use crate::address::AddressError;
use crate::gateway::services::Core;
use crate::protocol::error::BAD_REQUEST;
use crate::protocol::RpcError;

/// The explorer's stylesheet, inlined into every page.
const STYLE: &str = include_str!("explorer.css");

/// What explorer pages may load: nothing but their own inline style. No script runs at all,
/// and the search form may only submit to the gateway itself.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; \
     form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Longest search term looked at (an address is at most 90 characters).
const MAX_QUERY: usize = 200;
/// Transactions of a block shown per page.
const TXS_PER_PAGE: u32 = 25;
/// Blocks listed on the start page.
const LATEST_BLOCKS: u32 = 10;
/// Previous transactions fetched to show input values and addresses.
const MAX_PREV_TXS: usize = 50;
/// History entries shown per page of an address's history.
const HISTORY_PER_PAGE: usize = 100;
/// Unspent outputs shown on an address page.
const MAX_UTXOS: usize = 200;
/// Output scripthashes whose history is consulted to find a transaction's block.
const MAX_HISTORY_LOOKUPS: usize = 3;
/// Upstream requests one page keeps in flight at once.
const CONCURRENCY: usize = 8;

/// Explorer pages rendered at once; more wait their turn (within the page timeout), so a flood
/// of page loads cannot multiply the load on upstreams that wallets depend on.
static PAGES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(16);

/// A rendered explorer page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The HTTP status: 200, 400 (not understood), 404 (not found), 502 (upstreams failed) or
    /// 504 (timed out).
    pub status: StatusCode,
    /// The whole HTML document.
    pub html: String,
}

/// True for the paths the explorer answers: `/explorer` and everything under `/explorer/`.
pub fn handles(path: &str) -> bool {
    path == "/explorer" || path.starts_with("/explorer/")
}

/// Answers one explorer request as an HTTP response (HTML, no caching, scripts forbidden).
pub async fn serve(ctx: &Core, path: &str, query: Option<&str>) -> Response<HttpBody> {
    let page = answer(ctx, path, query).await;
    let mut r = Response::new(HttpBody::from(page.html));
    *r.status_mut() = page.status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// Renders the page for `path` (which [`handles`] accepted) and its raw query string. Bounded
/// by `[limits] request_timeout_secs` as a whole.
pub async fn answer(ctx: &Core, path: &str, query: Option<&str>) -> Page {
    let nav = Nav::for_path(path);
    let q = query.and_then(|q| form_param(q, "q"));
    let prefill = q.as_deref().map(str::trim).unwrap_or("");
    let timeout = crate::config::secs(ctx.cfg.limits.request_timeout_secs);
    let work = async {
        let target = target(ctx.network, path, query)?;
        // The semaphore is never closed; should it be, pages simply go unlimited.
        let _turn = PAGES.acquire().await.ok();
        render(ctx, &nav, target).await
    };
    let (status, title, body) = match tokio::time::timeout(timeout, work).await {
        Ok(Ok((title, body))) => (StatusCode::OK, title, body),
        Ok(Err(f)) => (f.status, f.title.to_string(), failure_html(&f, prefill)),
        Err(_) => {
            let f = Failure::new(
                StatusCode::GATEWAY_TIMEOUT,
                "Timed out",
                "the upstreams did not answer in time; try again",
            );
            (f.status, f.title.to_string(), failure_html(&f, prefill))
        }
    };
    Page {
        status,
        html: layout(ctx, &nav, &title, prefill, &body),
    }
}

// ---------------------------------------------------------------------------------------------
// What was asked for.

/// A block named by height or hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockAt {
    Height(u32),
    Hash(BlockHash),
}

/// The page a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Home,
    Block {
        at: BlockAt,
        from: u32,
    },
    Tx(Txid),
    /// An address of the gateway's network, in its canonical form, with its scripthash and
    /// where its page of history starts.
    Address {
        address: String,
        scripthash: String,
        from: u32,
    },
    /// 64 hex digits from a search: a block hash if the verified chain has it, else a txid.
    Hash(String),
}

/// A page that could not be shown, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    status: StatusCode,
    title: &'static str,
    message: String,
    /// What an upstream said, shown as a detail.
    detail: Option<String>,
}

impl Failure {
    fn new(status: StatusCode, title: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            status,
            title,
            message: message.into(),
            detail: None,
        }
    }

    fn bad(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, "Not understood", message)
    }

    fn not_found(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::NOT_FOUND, "Not found", message)
    }

    fn upstream(e: &RpcError) -> Failure {
        Failure {
            detail: Some(e.message.clone()),
            ..Failure::new(
                StatusCode::BAD_GATEWAY,
                "Upstreams did not answer",
                "no upstream gave an answer that passed verification",
            )
        }
    }
}

/// Which page a path and query name.
fn target(network: Network, path: &str, query: Option<&str>) -> Result<Target, Failure> {
    let rest = path
        .strip_prefix("/explorer")
        .unwrap_or_default()
        .trim_start_matches('/');
    if rest.is_empty() {
        return match query.and_then(|q| form_param(q, "q")) {
            Some(q) if !q.trim().is_empty() => search(network, &q),
            _ => Ok(Target::Home),
        };
    }
    let (kind, arg) = rest.split_once('/').unwrap_or((rest, ""));
    let arg = percent_decode(arg, false);
    match kind {
        "block" => {
            let at = if is_hex64(&arg) {
                BlockAt::Hash(parse_block_hash(&arg)?)
            } else if !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_digit()) {
                BlockAt::Height(parse_height(&arg)?)
            } else {
                return Err(Failure::bad(format!(
                    "“{arg}” is neither a block height nor a block hash"
                )));
            };
            Ok(Target::Block {
                at,
                from: from_param(query)?,
            })
        }
        "tx" if is_hex64(&arg) => Ok(Target::Tx(parse_txid(&arg)?)),
        "tx" => Err(Failure::bad(format!(
            "“{arg}” is not a transaction id (64 hex digits)"
        ))),
        "address" => address_target(network, &arg, from_param(query)?),
        _ => Err(Failure::not_found("there is no such explorer page")),
    }
}

/// The `from` parameter of paged lists: where the page starts.
fn from_param(query: Option<&str>) -> Result<u32, Failure> {
    match query.and_then(|q| form_param(q, "from")) {
        None => Ok(0),
        Some(f) => f
            .trim()
            .parse::<u32>()
            .map_err(|_| Failure::bad(format!("“{f}” is not a position in a list"))),
    }
}

/// What a search term names.
fn search(network: Network, q: &str) -> Result<Target, Failure> {
    let q = q.trim();
    if q.len() > MAX_QUERY {
        return Err(Failure::bad(format!(
            "a search term is at most {MAX_QUERY} characters"
        )));
    }
    // 64 hex digits first: a hash may be all decimal digits.
    if is_hex64(q) {
        return Ok(Target::Hash(q.to_ascii_lowercase()));
    }
    if q.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(Target::Block {
            at: BlockAt::Height(parse_height(q)?),
            from: 0,
        });
    }
    match address_target(network, q, 0) {
        Ok(t) => Ok(t),
        Err(f) if f.title == "Wrong network" => Err(f),
        Err(_) => Err(Failure::bad(format!(
            "“{q}” is not a block height, a block hash, a transaction id or an address"
        ))),
    }
}

fn address_target(network: Network, s: &str, from: u32) -> Result<Target, Failure> {
    let s = s.trim();
    match crate::address::script_hash(s, network) {
        Ok(scripthash) => {
            // Valid for the network (just checked): show it in its canonical form.
            let address = s
                .parse::<Address<bitcoin::address::NetworkUnchecked>>()
                .map(|a| a.assume_checked().to_string())
                .unwrap_or_else(|_| s.to_string());
            Ok(Target::Address {
                address,
                scripthash,
                from,
            })
        }
        Err(AddressError::WrongNetwork { expected, .. }) => Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "Wrong network",
            format!("“{s}” is an address of another network; this gateway serves {expected}"),
        )),
        Err(AddressError::Invalid(why)) => {
            Err(Failure::bad(format!("“{s}” is not a valid address: {why}")))
        }
    }
}

fn is_hex64(s: &str) -> bool {
    crate::address::is_scripthash(s)
}

fn parse_height(s: &str) -> Result<u32, Failure> {
    s.parse::<u32>()
        .map_err(|_| Failure::bad(format!("“{s}” is not a block height")))
}

fn parse_block_hash(s: &str) -> Result<BlockHash, Failure> {
    BlockHash::from_str(s).map_err(|_| Failure::bad(format!("“{s}” is not a block hash")))
}

fn parse_txid(s: &str) -> Result<Txid, Failure> {
    Txid::from_str(s).map_err(|_| Failure::bad(format!("“{s}” is not a transaction id")))
}

mod fetch;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz;
mod html;
mod pages;

use fetch::*;
use html::*;
use pages::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_terms_name_pages() {
        let net = Network::Regtest;
        let sim = crate::sim::ADDRESSES[1];
        assert_eq!(
            search(net, " 42 "),
            Ok(Target::Block {
                at: BlockAt::Height(42),
                from: 0
            })
        );
        let hex = "AB".repeat(32);
        assert_eq!(search(net, &hex), Ok(Target::Hash("ab".repeat(32))));
        let digits = "12".repeat(32);
        assert_eq!(search(net, &digits), Ok(Target::Hash(digits.clone())));
        assert_eq!(
            search(net, sim.address),
            Ok(Target::Address {
                address: sim.address.into(),
                scripthash: sim.scripthash.into(),
                from: 0
            })
        );
        // Upper-case bech32 is the same address, shown in its canonical form.
        let upper = crate::sim::ADDRESSES[0].address.to_ascii_uppercase();
        assert!(matches!(
            search(net, &upper),
            Ok(Target::Address { address, .. }) if address == crate::sim::ADDRESSES[0].address
        ));
        for bad in [
            "hello",
            "4294967296",
            "-1",
            "12ab",
            &"a".repeat(MAX_QUERY + 1),
        ] {
            let f = search(net, bad).unwrap_err();
            assert_eq!(f.status, StatusCode::BAD_REQUEST, "{bad}");
        }
        // A mainnet address on a regtest gateway.
        let f = search(net, "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4").unwrap_err();
        assert_eq!(
            (f.status, f.title),
            (StatusCode::BAD_REQUEST, "Wrong network")
        );
        assert!(f.message.contains("regtest"), "{}", f.message);
    }

    #[test]
    fn paths_name_pages() {
        let net = Network::Regtest;
        let hash = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206";
        assert_eq!(
            target(net, "/explorer/block/7", Some("from=25")),
            Ok(Target::Block {
                at: BlockAt::Height(7),
                from: 25
            })
        );
        assert_eq!(
            target(net, &format!("/explorer/block/{hash}"), None),
            Ok(Target::Block {
                at: BlockAt::Hash(BlockHash::from_str(hash).unwrap()),
                from: 0
            })
        );
        assert_eq!(
            target(net, &format!("/explorer/tx/{hash}"), None),
            Ok(Target::Tx(Txid::from_str(hash).unwrap()))
        );
        assert_eq!(target(net, "/explorer", None), Ok(Target::Home));
        assert_eq!(target(net, "/explorer/", Some("q=+")), Ok(Target::Home));
        for (path, query, status) in [
            ("/explorer/block/x", None, StatusCode::BAD_REQUEST),
            ("/explorer/block/", None, StatusCode::BAD_REQUEST),
            (
                "/explorer/block/1",
                Some("from=-1"),
                StatusCode::BAD_REQUEST,
            ),
            ("/explorer/tx/123", None, StatusCode::BAD_REQUEST),
            ("/explorer/address/nope", None, StatusCode::BAD_REQUEST),
            ("/explorer/nope", None, StatusCode::NOT_FOUND),
            ("/explorer/block/1/2", None, StatusCode::BAD_REQUEST),
        ] {
            assert_eq!(
                target(net, path, query).unwrap_err().status,
                status,
                "{path}"
            );
        }
        assert!(handles("/explorer") && handles("/explorer/tx/1"));
        assert!(!handles("/explorers") && !handles("/"));
    }
}
