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
use bitcoin::consensus::encode::deserialize;
use bitcoin::hex::{DisplayHex, FromHex};
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
use crate::cache::AnswerCache;
use crate::chain::check_merkle;
use crate::gateway::Ctx;
use crate::protocol::error::BAD_REQUEST;
use crate::protocol::RpcError;

/// The explorer's stylesheet, inlined into every page.
const STYLE: &str = include_str!("explorer/explorer.css");

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
pub async fn serve(ctx: &Ctx, path: &str, query: Option<&str>) -> Response<HttpBody> {
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
pub async fn answer(ctx: &Ctx, path: &str, query: Option<&str>) -> Page {
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

// ---------------------------------------------------------------------------------------------
// Asking the upstreams, through the verified paths.

/// One request as a wallet's would go: the method's routing policy, the router's checks
/// (transactions hash to their txid, merkle proofs fold to verified headers, scripthash reads
/// are voted on) and the cache of verified immutable answers.
async fn call(ctx: &Ctx, method: &str, params: Vec<Value>) -> Result<Value, RpcError> {
    let consensus = ctx.pool.consensus();
    let cacheable = AnswerCache::is_cacheable(method, &params);
    let raw = match cacheable
        .then(|| ctx.cache.get(consensus, method, &params))
        .flatten()
    {
        Some(hit) => {
            ctx.metrics.cache_hit(method);
            hit
        }
        None => {
            if cacheable {
                ctx.metrics.cache_miss(method);
            }
            let raw = ctx
                .router
                .route(ctx.cfg.policy(method), method, params.clone())
                .await?;
            ctx.cache.put(consensus, method, &params, &raw);
            raw
        }
    };
    serde_json::from_str(raw.get())
        .map_err(|e| RpcError::internal(format!("unreadable answer: {e}")))
}

/// True when an upstream's error says the thing asked for does not exist.
fn is_not_found(e: &RpcError) -> bool {
    let m = e.message.to_ascii_lowercase();
    m.contains("no such") || m.contains("not found") || m.contains("unknown transaction")
}

fn decode_tx(hex: &str) -> Option<Transaction> {
    let bytes = Vec::<u8>::from_hex(hex.trim()).ok()?;
    deserialize(&bytes).ok()
}

/// A transaction by txid; the router has checked that it hashes to `txid`.
async fn fetch_tx(ctx: &Ctx, txid: &Txid) -> Result<Transaction, RpcError> {
    let v = call(
        ctx,
        "blockchain.transaction.get",
        vec![json!(txid.to_string())],
    )
    .await?;
    let tx = v
        .as_str()
        .and_then(decode_tx)
        .ok_or_else(|| RpcError::internal("the answer is not a transaction"))?;
    if tx.compute_txid() != *txid {
        return Err(RpcError::internal("the answer is another transaction"));
    }
    Ok(tx)
}

/// The merkle root of the verified header at `height`, if the verified chain has it.
fn verified_root(ctx: &Ctx, height: u32) -> Option<bitcoin::TxMerkleNode> {
    ctx.pool
        .consensus()
        .with_chain(|c| c.header(height).map(|h| h.merkle_root))
}

/// The transaction at `pos` of block `height`, with the length of its merkle branch, proven
/// against the verified header.
async fn tx_at(ctx: &Ctx, height: u32, pos: u32) -> Result<(Txid, usize), RpcError> {
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
    let branch: Vec<&str> = v
        .get("merkle")
        .and_then(Value::as_array)
        .map(|m| m.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let root = verified_root(ctx, height)
        .ok_or_else(|| RpcError::internal("the block left the verified chain"))?;
    check_merkle(&txid, u64::from(pos), &branch, &root)
        .map_err(|e| RpcError::internal(e.to_string()))?;
    Ok((txid, branch.len()))
}

/// A merkle proof of `txid` in block `height`, checked against the verified header; returns
/// the transaction's position and the branch length.
async fn prove(ctx: &Ctx, txid: &Txid, height: u32) -> Result<(u64, usize), String> {
    let v = call(
        ctx,
        "blockchain.transaction.get_merkle",
        vec![json!(txid.to_string()), json!(height)],
    )
    .await
    .map_err(|e| e.message)?;
    let answer = crate::chain::MerkleAnswer::parse(&v.to_string()).map_err(|e| e.to_string())?;
    if answer.block_height != height {
        return Err("the proof is for another block".into());
    }
    let root = verified_root(ctx, height)
        .ok_or_else(|| "the block is not in the verified chain".to_string())?;
    check_merkle(txid, answer.pos, &answer.merkle, &root).map_err(|e| e.to_string())?;
    Ok((answer.pos, answer.merkle.len()))
}

// ---------------------------------------------------------------------------------------------
// Pages.

async fn render(ctx: &Ctx, nav: &Nav, target: Target) -> Result<(String, String), Failure> {
    match target {
        Target::Home => Ok(home_page(ctx, nav)),
        Target::Block { at, from } => block_page(ctx, nav, at, from).await,
        Target::Tx(txid) => tx_page(ctx, nav, txid, false).await,
        Target::Address {
            address,
            scripthash,
            from,
        } => address_page(ctx, nav, &address, &scripthash, from).await,
        Target::Hash(hex) => {
            let hash = parse_block_hash(&hex)?;
            if ctx
                .pool
                .consensus()
                .with_chain(|c| c.height_of(&hash))
                .is_some()
            {
                return block_page(ctx, nav, BlockAt::Hash(hash), 0).await;
            }
            tx_page(ctx, nav, parse_txid(&hex)?, true).await
        }
    }
}

fn home_page(ctx: &Ctx, nav: &Nav) -> (String, String) {
    let latest: Vec<(u32, BlockHash, u32)> = ctx.pool.consensus().with_chain(|c| {
        let tip = c.height();
        (tip.saturating_sub(LATEST_BLOCKS - 1)..=tip)
            .rev()
            .filter_map(|h| Some((h, c.hash(h)?, c.header(h)?.time)))
            .collect()
    });
    let mut rows = String::new();
    for (h, hash, time) in &latest {
        let _ = write!(
            rows,
            "<tr data-height=\"{h}\"><td class=\"num\"><a href=\"{}\">{h}</a></td>\
             <td class=\"mono\"><a href=\"{}\">{}</a></td><td>{}</td></tr>",
            esc(&nav.block(&h.to_string())),
            esc(&nav.block(&hash.to_string())),
            esc(&hash.to_string()),
            esc(&utc(*time)),
        );
    }
    let body = format!(
        "<section><h2>Search</h2>\
         <p>Look up a block by height or hash, a transaction by txid, or an address of this \
         network.</p>\
         <p class=\"muted\">Block headers come from the gateway's verified header chain; a \
         transaction's block is shown once its merkle proof checks against that chain; \
         balances and histories are what the upstreams agree on, as for a wallet.</p></section>\
         <section><h2>Latest verified blocks</h2><table id=\"latest\"><thead><tr>\
         <th class=\"num\">height</th><th>block hash</th><th>time</th></tr></thead>\
         <tbody>{rows}</tbody></table></section>"
    );
    ("Explorer".into(), body)
}

/// A block of the verified chain, as the page needs it.
struct BlockInfo {
    height: u32,
    hash: BlockHash,
    header: Header,
    tip: u32,
    next: Option<BlockHash>,
}

/// The transactions of a block shown on one page.
struct TxList {
    rows: Vec<(u32, Txid)>,
    more: bool,
    error: Option<String>,
}

/// Up to a page of a block's transactions from position `from`, each proven against the
/// verified header. Electrum has no call for a block's transaction count; the first proof's
/// branch length bounds it (`count <= 2^len`), and a "no transaction at this position" answer
/// ends the list.
async fn block_txs(ctx: &Ctx, height: u32, from: u32) -> TxList {
    let mut list = TxList {
        rows: Vec::new(),
        more: false,
        error: None,
    };
    let depth = match tx_at(ctx, height, from).await {
        Ok((txid, depth)) => {
            list.rows.push((from, txid));
            depth
        }
        Err(e) if e.code == BAD_REQUEST && from > 0 => return list,
        Err(e) => {
            list.error = Some(e.message);
            return list;
        }
    };
    let bound = 1u64 << depth.min(32);
    let end = (u64::from(from) + u64::from(TXS_PER_PAGE) + 1).min(bound);
    let rest = (u64::from(from) + 1..end).filter_map(|p| u32::try_from(p).ok());
    let mut fetched = stream::iter(rest)
        .map(|pos| async move { (pos, tx_at(ctx, height, pos).await) })
        .buffered(CONCURRENCY);
    while let Some((pos, res)) = fetched.next().await {
        match res {
            Ok((txid, _)) => list.rows.push((pos, txid)),
            Err(e) if e.code == BAD_REQUEST => break,
            Err(e) => {
                list.error = Some(e.message);
                break;
            }
        }
    }
    if list.rows.len() > TXS_PER_PAGE as usize {
        list.rows.truncate(TXS_PER_PAGE as usize);
        list.more = true;
    }
    list
}

async fn block_page(
    ctx: &Ctx,
    nav: &Nav,
    at: BlockAt,
    from: u32,
) -> Result<(String, String), Failure> {
    let info = ctx.pool.consensus().with_chain(|c| {
        let tip = c.height();
        let height = match at {
            BlockAt::Height(h) => h,
            BlockAt::Hash(hash) => c.height_of(&hash)?,
        };
        Some(BlockInfo {
            height,
            hash: c.hash(height)?,
            header: *c.header(height)?,
            tip,
            next: height.checked_add(1).and_then(|n| c.hash(n)),
        })
    });
    let Some(b) = info else {
        let tip = ctx.pool.consensus().with_chain(|c| c.height());
        return Err(Failure::not_found(match at {
            BlockAt::Height(h) => {
                format!("there is no block at height {h}: the verified chain ends at {tip}")
            }
            BlockAt::Hash(hash) => {
                format!("block {hash} is not in the verified chain")
            }
        }));
    };
    let h = &b.header;
    let prev = if b.height == 0 {
        "<span class=\"muted\">none (genesis block)</span>".to_string()
    } else {
        format!(
            "<a id=\"prev\" class=\"mono\" href=\"{}\">{}</a> <span class=\"muted\">height {}</span>",
            esc(&nav.block(&(b.height - 1).to_string())),
            esc(&h.prev_blockhash.to_string()),
            b.height - 1
        )
    };
    let next = match b.next {
        Some(n) => format!(
            "<a id=\"next\" class=\"mono\" href=\"{}\">{}</a> <span class=\"muted\">height {}</span>",
            esc(&nav.block(&(b.height + 1).to_string())),
            esc(&n.to_string()),
            b.height + 1
        ),
        None => "<span class=\"muted\">none yet: this is the verified tip</span>".to_string(),
    };
    let rows = [
        ("height", "block-height", b.height.to_string()),
        ("hash", "block-hash", mono(&b.hash.to_string())),
        (
            "confirmations",
            "confirmations",
            (b.tip - b.height + 1).to_string(),
        ),
        (
            "time",
            "block-time",
            format!(
                "{} <span class=\"muted\">({})</span>",
                esc(&utc(h.time)),
                h.time
            ),
        ),
        ("previous block", "block-prev", prev),
        ("next block", "block-next", next),
        (
            "merkle root",
            "merkle-root",
            mono(&h.merkle_root.to_string()),
        ),
        ("bits", "bits", format!("0x{:08x}", h.bits.to_consensus())),
        ("nonce", "nonce", h.nonce.to_string()),
        (
            "version",
            "version",
            format!("0x{:08x}", h.version.to_consensus()),
        ),
    ];
    let txs = block_txs(ctx, b.height, from).await;
    let mut tx_rows = String::new();
    for (pos, txid) in &txs.rows {
        let what = if *pos == 0 { "coinbase" } else { "" };
        let _ = write!(
            tx_rows,
            "<tr data-pos=\"{pos}\"><td class=\"num\">{pos}</td><td class=\"mono\">\
             <a href=\"{}\">{}</a></td><td class=\"muted\">{what}</td></tr>",
            esc(&nav.tx(&txid.to_string())),
            esc(&txid.to_string()),
        );
    }
    if txs.rows.is_empty() && txs.error.is_none() {
        let _ = write!(
            tx_rows,
            "<tr><td colspan=\"3\" class=\"muted\">no transaction at position {from} or later</td></tr>"
        );
    }
    let mut pager = String::new();
    if from > 0 {
        let back = from.saturating_sub(TXS_PER_PAGE);
        let _ = write!(
            pager,
            "<a id=\"txs-prev\" href=\"{}?from={back}\">← previous {TXS_PER_PAGE}</a>",
            esc(&nav.block(&b.height.to_string()))
        );
    }
    if txs.more {
        let _ = write!(
            pager,
            "<a id=\"txs-next\" href=\"{}?from={}\">next {TXS_PER_PAGE} →</a>",
            esc(&nav.block(&b.height.to_string())),
            from.saturating_add(TXS_PER_PAGE)
        );
    }
    let error = txs
        .error
        .map(|e| {
            format!(
                "<p id=\"txs-error\" class=\"bad\">could not load more transactions: {}</p>",
                esc(&e)
            )
        })
        .unwrap_or_default();
    let body = format!(
        "<section><h2>Block {height}</h2>{table}\
         <p><span id=\"header-verified\" class=\"badge ok\">in the verified chain</span> \
         <span class=\"muted\">linked to genesis, proof of work and difficulty checked by \
         the gateway</span></p></section>\
         <section><h2>Transactions{range}</h2>\
         <p class=\"muted\">Each listed with a merkle proof checked against this header.</p>\
         <table id=\"txs\"><thead><tr><th class=\"num\">#</th><th>txid</th><th></th></tr>\
         </thead><tbody>{tx_rows}</tbody></table>{error}<div class=\"pager\">{pager}</div>\
         </section>",
        height = b.height,
        table = kv_table(&rows),
        range = if from > 0 {
            format!(" from position {from}")
        } else {
            String::new()
        },
    );
    Ok((format!("Block {}", b.height), body))
}

/// Where a transaction stands.
enum Placement {
    /// In the block at this height, by a merkle proof checked against the verified header.
    Proven {
        height: u32,
        hash: BlockHash,
        pos: u64,
        branch: usize,
    },
    /// The upstreams asked hold it in their mempool.
    Mempool,
    /// Upstreams placed it at `claimed`, but no proof checked.
    Unproven { claimed: u32, reason: String },
    /// Nothing says where it is.
    Unknown,
}

/// What an upstream's verbose transaction says about its block.
enum Hint {
    Height(u32),
    Mempool,
    Nothing,
}

fn verbose_hint(ctx: &Ctx, v: &Value) -> Hint {
    let consensus = ctx.pool.consensus();
    if let Some(hash) = v
        .get("blockhash")
        .and_then(Value::as_str)
        .and_then(|s| BlockHash::from_str(s).ok())
    {
        if let Some(h) = consensus.with_chain(|c| c.height_of(&hash)) {
            return Hint::Height(h);
        }
    }
    let tip = consensus.with_chain(|c| c.height());
    match v.get("confirmations").and_then(Value::as_u64) {
        Some(0) if v.get("blockhash").is_none() => Hint::Mempool,
        Some(n) if n >= 1 && n <= u64::from(tip) + 1 => Hint::Height(tip + 1 - n as u32),
        _ => Hint::Nothing,
    }
}

/// Finds the block of `tx` and proves it: the height from the verbose transaction if an
/// upstream gave one, else from the history of one of its output scripts.
async fn locate(ctx: &Ctx, tx: &Transaction, txid: &Txid, verbose: Option<Value>) -> Placement {
    let mut tried: HashSet<u32> = HashSet::new();
    let mut failed: Option<(u32, String)> = None;
    let mut in_mempool = false;
    if let Some(v) = verbose {
        match verbose_hint(ctx, &v) {
            Hint::Height(h) => {
                tried.insert(h);
                match prove(ctx, txid, h).await {
                    Ok((pos, branch)) => return proven(ctx, h, pos, branch),
                    Err(e) => failed = Some((h, e)),
                }
            }
            Hint::Mempool => in_mempool = true,
            Hint::Nothing => {}
        }
    }
    let mut seen = HashSet::new();
    let scripthashes = tx
        .output
        .iter()
        .filter(|o| !o.script_pubkey.is_op_return() && !o.script_pubkey.is_empty())
        .map(|o| crate::address::script_hash_of_script(&o.script_pubkey))
        .filter(|sh| seen.insert(sh.clone()))
        .take(MAX_HISTORY_LOOKUPS);
    let want = txid.to_string();
    for sh in scripthashes {
        let Ok(history) = call(ctx, "blockchain.scripthash.get_history", vec![json!(sh)]).await
        else {
            continue;
        };
        let height = history.as_array().and_then(|list| {
            list.iter()
                .find(|e| e.get("tx_hash").and_then(Value::as_str) == Some(want.as_str()))
                .and_then(|e| e.get("height").and_then(Value::as_i64))
        });
        match height {
            Some(h) if h > 0 => {
                let Ok(h) = u32::try_from(h) else { continue };
                if !tried.insert(h) {
                    continue;
                }
                match prove(ctx, txid, h).await {
                    Ok((pos, branch)) => return proven(ctx, h, pos, branch),
                    Err(e) => failed = Some((h, e)),
                }
                break;
            }
            Some(_) => {
                in_mempool = true;
                break;
            }
            None => continue,
        }
    }
    match failed {
        Some((claimed, reason)) => Placement::Unproven { claimed, reason },
        None if in_mempool => Placement::Mempool,
        None => Placement::Unknown,
    }
}

fn proven(ctx: &Ctx, height: u32, pos: u64, branch: usize) -> Placement {
    match ctx.pool.consensus().with_chain(|c| c.hash(height)) {
        Some(hash) => Placement::Proven {
            height,
            hash,
            pos,
            branch,
        },
        None => Placement::Unproven {
            claimed: height,
            reason: "the block left the verified chain".into(),
        },
    }
}

/// The outputs the inputs of `tx` spend, fetched (and checked) from their transactions; at
/// most [`MAX_PREV_TXS`] previous transactions are fetched.
async fn prevouts(ctx: &Ctx, tx: &Transaction) -> HashMap<Txid, Transaction> {
    if tx.is_coinbase() {
        return HashMap::new();
    }
    let mut seen = HashSet::new();
    let wanted: Vec<Txid> = tx
        .input
        .iter()
        .map(|i| i.previous_output.txid)
        .filter(|t| seen.insert(*t))
        .take(MAX_PREV_TXS)
        .collect();
    stream::iter(wanted)
        .map(|t| async move { (t, fetch_tx(ctx, &t).await) })
        .buffered(CONCURRENCY)
        .filter_map(|(t, r)| async move { r.ok().map(|tx| (t, tx)) })
        .collect()
        .await
}

/// An output's destination: a link to its address, or a description of its script.
fn destination(nav: &Nav, network: Network, out: &TxOut) -> String {
    let script = &out.script_pubkey;
    if let Ok(a) = Address::from_script(script, network) {
        let a = a.to_string();
        return format!(
            "<a class=\"mono\" href=\"{}\">{}</a>",
            esc(&nav.address(&a)),
            esc(&a)
        );
    }
    if script.is_op_return() {
        let data = script.as_bytes().get(1..).unwrap_or_default();
        return format!(
            "<span class=\"muted\">OP_RETURN</span> <span class=\"mono\">{}</span>",
            esc(&shorten(&data.to_lower_hex_string(), 160))
        );
    }
    format!(
        "<span class=\"muted\">non-standard script</span> <span class=\"mono\">{}</span>",
        esc(&shorten(&script.to_asm_string(), 160))
    )
}

async fn tx_page(
    ctx: &Ctx,
    nav: &Nav,
    txid: Txid,
    from_search: bool,
) -> Result<(String, String), Failure> {
    let id = txid.to_string();
    let (tx, verbose) = tokio::join!(
        fetch_tx(ctx, &txid),
        call(
            ctx,
            "blockchain.transaction.get",
            vec![json!(id), json!(true)]
        ),
    );
    let tx = tx.map_err(|e| {
        if is_not_found(&e) {
            Failure {
                detail: Some(e.message.clone()),
                ..Failure::not_found(if from_search {
                    format!("no block of the verified chain and no transaction has the hash {id}")
                } else {
                    format!("no upstream knows transaction {id}")
                })
            }
        } else {
            Failure::upstream(&e)
        }
    })?;
    let (prev, placement) = tokio::join!(prevouts(ctx, &tx), locate(ctx, &tx, &txid, verbose.ok()));
    let tip = ctx.pool.consensus().with_chain(|c| c.height());

    let (status, block, confirmations) = match &placement {
        Placement::Proven {
            height,
            hash,
            pos,
            branch,
        } => (
            format!(
                "<span id=\"merkle\" class=\"badge ok\">merkle proof verified</span> \
                 <span class=\"muted\">position {pos}, branch of {branch} hashes, folds to the \
                 merkle root of the verified header</span>"
            ),
            format!(
                "<a id=\"tx-block\" href=\"{}\">{height}</a> <a class=\"mono\" href=\"{}\">{}</a>",
                esc(&nav.block(&height.to_string())),
                esc(&nav.block(&hash.to_string())),
                esc(&hash.to_string())
            ),
            (tip.saturating_sub(*height) + 1).to_string(),
        ),
        Placement::Mempool => (
            "<span id=\"merkle\" class=\"badge warn\">unconfirmed</span> \
             <span class=\"muted\">in the mempool of the upstreams asked</span>"
                .to_string(),
            "<span id=\"tx-block\">unconfirmed or height unknown</span>".to_string(),
            "0".to_string(),
        ),
        Placement::Unproven { claimed, reason } => (
            format!(
                "<span id=\"merkle\" class=\"badge bad\">merkle proof not verified</span> \
                 <span class=\"muted\">upstreams placed it at height {claimed}, but no proof \
                 checked against the verified header: {}</span>",
                esc(reason)
            ),
            "<span id=\"tx-block\">unconfirmed or height unknown</span>".to_string(),
            "<span class=\"muted\">unknown</span>".to_string(),
        ),
        Placement::Unknown => (
            "<span id=\"merkle\" class=\"badge warn\">no proof</span> \
             <span class=\"muted\">no upstream said which block holds it</span>"
                .to_string(),
            "<span id=\"tx-block\">unconfirmed or height unknown</span>".to_string(),
            "<span class=\"muted\">unknown</span>".to_string(),
        ),
    };

    let mut inputs = String::new();
    let mut total_in: Option<u64> = (!tx.is_coinbase()).then_some(0);
    for (i, input) in tx.input.iter().enumerate() {
        let op = input.previous_output;
        if tx.is_coinbase() {
            let _ = write!(
                inputs,
                "<tr data-vin=\"{i}\"><td class=\"num\">{i}</td><td><span class=\"muted\">\
                 coinbase</span> <span class=\"mono\">{}</span></td><td></td>\
                 <td class=\"num\"></td></tr>",
                esc(&shorten(
                    &input.script_sig.as_bytes().to_lower_hex_string(),
                    200
                ))
            );
            continue;
        }
        let spent = prev
            .get(&op.txid)
            .and_then(|p| p.output.get(op.vout as usize));
        total_in = match (total_in, spent) {
            (Some(t), Some(o)) => t.checked_add(o.value.to_sat()),
            _ => None,
        };
        let (from, value) = match spent {
            Some(o) => (
                destination(nav, ctx.network, o),
                amount_html(o.value.to_sat() as i64),
            ),
            None => (
                "<span class=\"muted\">–</span>".into(),
                "<span class=\"muted\">–</span>".into(),
            ),
        };
        let _ = write!(
            inputs,
            "<tr data-vin=\"{i}\"><td class=\"num\">{i}</td><td class=\"mono\">\
             <a href=\"{}\">{}</a>:{}</td><td>{from}</td><td class=\"num\">{value}</td></tr>",
            esc(&nav.tx(&op.txid.to_string())),
            esc(&op.txid.to_string()),
            op.vout,
        );
    }
    let mut outputs = String::new();
    let mut total_out: u64 = 0;
    for (n, out) in tx.output.iter().enumerate() {
        total_out = total_out.saturating_add(out.value.to_sat());
        let _ = write!(
            outputs,
            "<tr data-vout=\"{n}\"><td class=\"num\">{n}</td><td>{}</td>\
             <td class=\"num\">{}</td></tr>",
            destination(nav, ctx.network, out),
            amount_html(out.value.to_sat() as i64),
        );
    }
    let vsize = tx.vsize();
    let fee = match total_in {
        Some(i) if i >= total_out => {
            let fee = i - total_out;
            format!(
                "{} <span class=\"muted\">({:.1} sat/vB)</span>",
                amount_html(fee as i64),
                fee as f64 / vsize.max(1) as f64
            )
        }
        _ if tx.is_coinbase() => "<span class=\"muted\">none (coinbase)</span>".into(),
        _ => "<span class=\"muted\">unknown (not every spent output was fetched)</span>".into(),
    };
    let wtxid = tx.compute_wtxid().to_string();
    let mut rows = vec![
        ("txid", "txid", mono(&id)),
        ("status", "tx-status", status),
        ("block", "tx-block-row", block),
        ("confirmations", "tx-confirmations", confirmations),
        ("fee", "fee", fee),
        ("total output", "total-out", amount_html(total_out as i64)),
        (
            "size",
            "size",
            format!(
                "{} bytes, {vsize} vbytes, {} weight units",
                tx.total_size(),
                tx.weight().to_wu()
            ),
        ),
        ("version", "tx-version", tx.version.0.to_string()),
        (
            "lock time",
            "locktime",
            tx.lock_time.to_consensus_u32().to_string(),
        ),
    ];
    if wtxid != id {
        rows.insert(1, ("wtxid", "wtxid", mono(&wtxid)));
    }
    let body = format!(
        "<section><h2>Transaction</h2>{table}\
         <p class=\"muted\">The transaction was checked to hash to its txid.</p></section>\
         <section><h2>Inputs ({n_in})</h2><table id=\"inputs\"><thead><tr>\
         <th class=\"num\">#</th><th>previous output</th><th>from</th><th class=\"num\">value</th>\
         </tr></thead><tbody>{inputs}</tbody></table></section>\
         <section><h2>Outputs ({n_out})</h2><table id=\"outputs\"><thead><tr>\
         <th class=\"num\">#</th><th>to</th><th class=\"num\">value</th></tr></thead>\
         <tbody>{outputs}</tbody></table></section>",
        table = kv_table(&rows),
        n_in = tx.input.len(),
        n_out = tx.output.len(),
    );
    Ok((format!("Transaction {}", shorten(&id, 16)), body))
}

async fn address_page(
    ctx: &Ctx,
    nav: &Nav,
    address: &str,
    scripthash: &str,
    from: u32,
) -> Result<(String, String), Failure> {
    let p = || vec![json!(scripthash)];
    let (balance, history, unspent) = tokio::join!(
        call(ctx, "blockchain.scripthash.get_balance", p()),
        call(ctx, "blockchain.scripthash.get_history", p()),
        call(ctx, "blockchain.scripthash.listunspent", p()),
    );
    if let (Err(e), Err(_), Err(_)) = (&balance, &history, &unspent) {
        return Err(Failure::upstream(e));
    }
    let tip = ctx.pool.consensus().with_chain(|c| c.height());
    let failed = |what: &str, e: &RpcError| {
        format!(
            "<p class=\"bad\">could not load the {what}: {}</p>",
            esc(&e.message)
        )
    };

    let balance_html = match &balance {
        Ok(v) => {
            let confirmed = v.get("confirmed").and_then(Value::as_i64).unwrap_or(0);
            let unconfirmed = v.get("unconfirmed").and_then(Value::as_i64).unwrap_or(0);
            let card = |id: &str, label: &str, sats: i64| {
                format!(
                    "<div class=\"card\"><div class=\"v\" id=\"{id}\" data-sats=\"{sats}\">{}</div>\
                     <div class=\"k\">{label}</div></div>",
                    esc(&btc(sats))
                )
            };
            format!(
                "<div class=\"cards\">{}{}{}</div>",
                card("confirmed", "confirmed balance", confirmed),
                card("unconfirmed", "unconfirmed", unconfirmed),
                card("total", "total", confirmed.saturating_add(unconfirmed)),
            )
        }
        Err(e) => failed("balance", e),
    };

    let history_html = match &history {
        Ok(v) => {
            let mut entries: Vec<(String, i64)> = v
                .as_array()
                .map(|l| {
                    l.iter()
                        .filter_map(|e| {
                            Some((
                                e.get("tx_hash")?.as_str()?.to_string(),
                                e.get("height")?.as_i64()?,
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            // Newest first: the mempool, then blocks from the highest down.
            entries.sort_by_key(|(_, h)| if *h <= 0 { i64::MIN } else { -*h });
            let total = entries.len();
            let start = (from as usize).min(total);
            let mut rows = String::new();
            for (txid, h) in entries.iter().skip(start).take(HISTORY_PER_PAGE) {
                let (height, conf) = if *h > 0 {
                    (
                        format!("<a href=\"{}\">{h}</a>", esc(&nav.block(&h.to_string()))),
                        (i64::from(tip) - h + 1).max(0).to_string(),
                    )
                } else if *h == 0 {
                    ("<span class=\"warn\">unconfirmed</span>".into(), "0".into())
                } else {
                    (
                        "<span class=\"warn\">unconfirmed</span> \
                         <span class=\"muted\">(spends unconfirmed outputs)</span>"
                            .into(),
                        "0".into(),
                    )
                };
                let _ = write!(
                    rows,
                    "<tr data-txid=\"{t}\" data-height=\"{h}\"><td class=\"mono\">{link}</td><td class=\"num\">{height}\
                     </td><td class=\"num\">{conf}</td></tr>",
                    t = esc(txid),
                    link = tx_link(nav, txid),
                );
            }
            if start == total {
                let _ = write!(
                    rows,
                    "<tr><td colspan=\"3\" class=\"muted\">no transactions at position {from} \
                     or later</td></tr>"
                );
            }
            let end = (start + HISTORY_PER_PAGE).min(total);
            let here = nav.address(address);
            let mut pager = String::new();
            if start > 0 {
                let _ = write!(
                    pager,
                    "<a id=\"history-prev\" href=\"{}?from={}\">← newer</a>",
                    esc(&here),
                    start.saturating_sub(HISTORY_PER_PAGE)
                );
            }
            if end < total {
                let _ = write!(
                    pager,
                    "<a id=\"history-next\" href=\"{}?from={end}\">older →</a>",
                    esc(&here)
                );
            }
            let shown = if total == 0 {
                String::new()
            } else if start < end {
                format!(", newest first: {} to {end}", start + 1)
            } else {
                String::new()
            };
            format!(
                "<p>Transactions: <strong id=\"tx-count\">{total}</strong>{shown}</p>\
                 <table id=\"history\"><thead><tr><th>txid</th><th class=\"num\">height</th>\
                 <th class=\"num\">confirmations</th></tr></thead><tbody>{rows}</tbody></table>\
                 <div class=\"pager\">{pager}</div>"
            )
        }
        Err(e) => failed("history", e),
    };

    let unspent_html = match &unspent {
        Ok(v) => {
            let mut utxos: Vec<(String, u64, i64, i64)> = v
                .as_array()
                .map(|l| {
                    l.iter()
                        .filter_map(|e| {
                            Some((
                                e.get("tx_hash")?.as_str()?.to_string(),
                                e.get("tx_pos")?.as_u64()?,
                                e.get("height").and_then(Value::as_i64).unwrap_or(0),
                                e.get("value")?.as_i64()?,
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            utxos.sort_by_key(|(_, _, h, _)| if *h <= 0 { i64::MIN } else { -*h });
            let total = utxos.len();
            let sum: i64 = utxos.iter().map(|u| u.3).fold(0, i64::saturating_add);
            let mut rows = String::new();
            for (txid, pos, h, value) in utxos.iter().take(MAX_UTXOS) {
                let height = if *h > 0 {
                    format!("<a href=\"{}\">{h}</a>", esc(&nav.block(&h.to_string())))
                } else {
                    "<span class=\"warn\">unconfirmed</span>".into()
                };
                let _ = write!(
                    rows,
                    "<tr data-outpoint=\"{}:{pos}\"><td class=\"mono\">{}:{pos}</td>\
                     <td class=\"num\">{height}</td><td class=\"num\">{}</td></tr>",
                    esc(txid),
                    tx_link(nav, txid),
                    amount_html(*value),
                );
            }
            if total == 0 {
                rows.push_str("<tr><td colspan=\"3\" class=\"muted\">no unspent outputs</td></tr>");
            }
            let note = if total > MAX_UTXOS {
                format!("<p class=\"muted\">showing the {MAX_UTXOS} most recent of {total}</p>")
            } else {
                String::new()
            };
            format!(
                "<p>Unspent outputs: <strong id=\"utxo-count\">{total}</strong>, \
                 {}</p><table id=\"unspent\"><thead><tr><th>output</th>\
                 <th class=\"num\">height</th><th class=\"num\">value</th></tr></thead>\
                 <tbody>{rows}</tbody></table>{note}",
                amount_html(sum)
            )
        }
        Err(e) => failed("unspent outputs", e),
    };

    let kind = address
        .parse::<Address<bitcoin::address::NetworkUnchecked>>()
        .ok()
        .and_then(|a| a.assume_checked().address_type())
        .map(|t| t.to_string())
        .unwrap_or_else(|| "other".into());
    let rows = [
        ("address", "address", mono(address)),
        ("type", "address-type", esc(&kind)),
        ("scripthash", "scripthash", mono(scripthash)),
    ];
    let body = format!(
        "<section><h2>Address</h2>{table}</section>\
         <section><h2>Balance</h2>{balance_html}</section>\
         <section><h2>History</h2>{history_html}</section>\
         <section><h2>Unspent outputs</h2>{unspent_html}\
         <p class=\"muted\">Balances, histories and unspent outputs cannot be proven from block \
         headers: they are what the upstreams agree on, as for a wallet. Open a transaction to \
         see its merkle proof.</p></section>",
        table = kv_table(&rows),
    );
    Ok((format!("Address {}", shorten(address, 20)), body))
}

// ---------------------------------------------------------------------------------------------
// HTML.

/// Relative links from the page being rendered, so a path prefix added by a reverse proxy is
/// kept.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Nav {
    /// The explorer's start page, relative to this page.
    root: String,
    /// The status page, relative to this page.
    status: String,
}

impl Nav {
    fn for_path(path: &str) -> Nav {
        let depth = path.matches('/').count().saturating_sub(1);
        let up = "../".repeat(depth);
        Nav {
            root: format!("{up}explorer"),
            status: if depth == 0 { "./".into() } else { up },
        }
    }

    fn block(&self, at: &str) -> String {
        format!("{}/block/{at}", self.root)
    }

    fn tx(&self, txid: &str) -> String {
        format!("{}/tx/{txid}", self.root)
    }

    fn address(&self, address: &str) -> String {
        format!("{}/address/{}", self.root, percent_encode(address))
    }
}

fn layout(ctx: &Ctx, nav: &Nav, title: &str, q: &str, body: &str) -> String {
    let (tip, target) = ctx.pool.consensus().progress();
    let syncing = if target > tip {
        format!("<span class=\"badge warn\">syncing headers: {tip} of {target}</span>")
    } else {
        String::new()
    };
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <title>{title} · electrum-gateway explorer</title>\n<style>\n{STYLE}</style>\n</head>\n\
         <body>\n<header>\n<h1><a href=\"{status}\">electrum-gateway</a> \
         <a class=\"sub\" href=\"{root}\">explorer</a></h1>\n\
         <span>network <strong id=\"network\">{network}</strong></span>\n\
         <span>verified tip <a id=\"tip\" href=\"{tip_href}\">{tip}</a></span>{syncing}\n\
         <form class=\"search\" method=\"get\" action=\"{root}\" role=\"search\">\
         <input type=\"search\" name=\"q\" value=\"{q}\" maxlength=\"{MAX_QUERY}\" \
         placeholder=\"block height or hash, transaction id, or address\" \
         aria-label=\"block height or hash, transaction id, or address\">\
         <button type=\"submit\">Search</button></form>\n</header>\n<main>\n{body}\n</main>\n\
         </body>\n</html>\n",
        title = esc(title),
        status = esc(&nav.status),
        root = esc(&nav.root),
        network = esc(crate::address::network_name(ctx.network)),
        tip_href = esc(&nav.block(&tip.to_string())),
        q = esc(q),
    )
}

fn failure_html(f: &Failure, q: &str) -> String {
    let searched = if q.is_empty() {
        String::new()
    } else {
        format!(
            "<p>You searched for <code id=\"searched\">{}</code>.</p>",
            esc(q)
        )
    };
    let detail = f
        .detail
        .as_deref()
        .map(|d| {
            format!(
                "<p class=\"muted\">Upstream answer: <code id=\"detail\">{}</code></p>",
                esc(&shorten(d, 500))
            )
        })
        .unwrap_or_default();
    let hint = if matches!(f.status, StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND) {
        "<p class=\"muted\">Search for a block height, a block hash, a transaction id \
         (64 hex digits) or an address of this network.</p>"
    } else {
        ""
    };
    format!(
        "<section class=\"error\"><h2 id=\"error-title\">{}</h2>\
         <p id=\"error\">{}</p>{searched}{detail}{hint}</section>",
        esc(f.title),
        esc(&f.message)
    )
}

fn kv_table(rows: &[(&str, &str, String)]) -> String {
    let mut out = String::from("<table class=\"kv\"><tbody>");
    for (label, id, html) in rows {
        let _ = write!(
            out,
            "<tr><th>{}</th><td id=\"{}\">{html}</td></tr>",
            esc(label),
            esc(id)
        );
    }
    out.push_str("</tbody></table>");
    out
}

fn mono(s: &str) -> String {
    format!("<span class=\"mono\">{}</span>", esc(s))
}

/// A link to a transaction whose id came from an upstream: linked only if it is a txid.
fn tx_link(nav: &Nav, txid: &str) -> String {
    match Txid::from_str(txid) {
        Ok(t) => format!(
            "<a href=\"{}\">{}</a>",
            esc(&nav.tx(&t.to_string())),
            esc(&t.to_string())
        ),
        Err(_) => esc(txid),
    }
}

fn amount_html(sats: i64) -> String {
    format!(
        "<span class=\"amount\" data-sats=\"{sats}\">{}</span>",
        esc(&btc(sats))
    )
}

/// HTML-escapes text for element content and quoted attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// At most `max` characters, with an ellipsis when cut.
fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Satoshis as bitcoins with all eight decimals: `-0.00012345 BTC`.
fn btc(sats: i64) -> String {
    let sign = if sats < 0 { "-" } else { "" };
    let abs = sats.unsigned_abs();
    format!("{sign}{}.{:08} BTC", abs / 100_000_000, abs % 100_000_000)
}

/// A Unix time as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(ts: u32) -> String {
    let days = i64::from(ts / 86_400);
    let secs = ts % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The value of `name` in an `application/x-www-form-urlencoded` query string.
fn form_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k, true) == name).then(|| percent_decode(v, true))
    })
}

/// Decodes `%XX` escapes (and `+` as a space in form values); malformed escapes stay as they
/// are, and bytes that are not UTF-8 become U+FFFD.
fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Escapes everything but unreserved characters, for a path segment.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(esc("plain"), "plain");
    }

    #[test]
    fn dates_are_utc() {
        // The mainnet genesis block's time, and the regtest genesis block's.
        assert_eq!(utc(1_231_006_505), "2009-01-03 18:15:05 UTC");
        assert_eq!(utc(1_296_688_602), "2011-02-02 23:16:42 UTC");
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        // A leap day, and the last second a u32 holds.
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(u32::MAX), "2106-02-07 06:28:15 UTC");
    }

    #[test]
    fn amounts_keep_eight_decimals() {
        assert_eq!(btc(0), "0.00000000 BTC");
        assert_eq!(btc(1), "0.00000001 BTC");
        assert_eq!(btc(5_000_000_000), "50.00000000 BTC");
        assert_eq!(btc(-12_345), "-0.00012345 BTC");
        assert_eq!(btc(i64::MIN), "-92233720368.54775808 BTC");
    }

    #[test]
    fn query_strings_decode_like_forms() {
        assert_eq!(form_param("q=abc", "q").as_deref(), Some("abc"));
        assert_eq!(
            form_param("x=1&q=%3Cscript%3E+1", "q").as_deref(),
            Some("<script> 1")
        );
        assert_eq!(form_param("q", "q").as_deref(), Some(""));
        assert_eq!(form_param("qq=1", "q"), None);
        assert_eq!(form_param("q=%zz%4", "q").as_deref(), Some("%zz%4"));
        assert_eq!(form_param("q=%FF", "q").as_deref(), Some("\u{fffd}"));
        assert_eq!(percent_decode("a+b%20c", false), "a+b c");
    }

    #[test]
    fn links_are_relative_to_the_page() {
        let top = Nav::for_path("/explorer");
        assert_eq!(top.tx("ab"), "explorer/tx/ab");
        assert_eq!(top.status, "./");
        let slash = Nav::for_path("/explorer/");
        assert_eq!(slash.block("7"), "../explorer/block/7");
        let deep = Nav::for_path("/explorer/block/7");
        assert_eq!(
            deep.address("bcrt1q x"),
            "../../explorer/address/bcrt1q%20x"
        );
        assert_eq!(deep.status, "../../");
    }

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
