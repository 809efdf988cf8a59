//! The block explorer end to end: a gateway in front of simulated upstreams, its pages loaded,
//! searched and clicked through in headless Chromium, and read over raw loopback HTTP for
//! status codes and escaping. What the pages show is compared with the simulator's own
//! answers.
//!
//! The browser test needs Chromium (a Debian package that `.ci/run` installs), so it is
//! ignored unless run with `cargo test -- --include-ignored`; then a missing Chromium fails it.

#[path = "common/browser.rs"]
mod browser;
mod common;

use bitcoin::consensus::encode::deserialize;
use bitcoin::hex::FromHex;
use browser::Browser;
use common::http::http;
use common::programs::program;
use common::Net;
use electrum_gateway::sim::{Faults, Sim, SimConfig, ADDRESSES};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const THREE: [&str; 3] = ["127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"];

/// The text of the element with `id` in server-rendered HTML (no nested elements of the
/// same tag).
fn element_text(html: &str, id: &str) -> Option<String> {
    let at = html.find(&format!("id=\"{id}\""))?;
    let open_end = at + html[at..].find('>')? + 1;
    let tag_start = html[..at].rfind('<')?;
    let tag: String = html[tag_start + 1..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let close = html[open_end..].find(&format!("</{tag}>"))?;
    let inner = &html[open_end..open_end + close];
    // Strip nested markup.
    let mut text = String::new();
    let mut in_tag = false;
    for c in inner.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    Some(text)
}

fn header_of(sim: &Sim, height: u32) -> bitcoin::block::Header {
    let bytes = Vec::<u8>::from_hex(&sim.header_hex(height).unwrap()).unwrap();
    deserialize(&bytes).unwrap()
}

fn tx_of(sim: &Sim, txid: &bitcoin::Txid) -> bitcoin::Transaction {
    let bytes = Vec::<u8>::from_hex(&sim.tx_hex(txid).unwrap()).unwrap();
    deserialize(&bytes).unwrap()
}

/// Satoshis as the page writes bitcoins: eight decimals and the unit.
fn btc(sats: i64) -> String {
    let sign = if sats < 0 { "-" } else { "" };
    let a = sats.unsigned_abs();
    format!("{sign}{}.{:08} BTC", a / 100_000_000, a % 100_000_000)
}

// ---------------------------------------------------------------------------------------------
// In the browser.

/// Checks the block page the browser shows against the simulated chain.
async fn check_block_page(b: &mut Browser, sim: &Sim, height: u32) {
    let tip = sim.tip_height();
    let header = header_of(sim, height);
    assert_eq!(b.status().await, 200);
    assert_eq!(b.text("#block-height").await, Some(height.to_string()));
    assert_eq!(
        b.text("#block-hash").await,
        Some(sim.block_hash(height).unwrap().to_string())
    );
    assert_eq!(
        b.text("#merkle-root").await,
        Some(header.merkle_root.to_string())
    );
    assert_eq!(
        b.text("#confirmations").await,
        Some((tip - height + 1).to_string())
    );
    assert_eq!(b.text("#nonce").await, Some(header.nonce.to_string()));
    assert_eq!(b.text("#bits").await.as_deref(), Some("0x207fffff"));
    assert_eq!(
        b.text("#prev").await,
        Some(sim.block_hash(height - 1).unwrap().to_string())
    );
    match sim.block_hash(height + 1) {
        Some(next) => assert_eq!(b.text("#next").await, Some(next.to_string())),
        None => assert_eq!(b.text("#next").await, None),
    }
    assert!(b
        .text("#block-time")
        .await
        .unwrap()
        .contains(&header.time.to_string()));
    // Every transaction of the block, in block order (blocks of the simulated chain hold at
    // most a page of them).
    let shown: Vec<String> = b.texts("#txs tbody tr td.mono a").await;
    let want: Vec<String> = sim
        .block_txids(height)
        .unwrap()
        .iter()
        .map(|t| t.to_string())
        .collect();
    assert_eq!(shown, want, "transactions of block {height}");
}

/// Checks the page of a confirmed transaction against the simulated chain.
async fn check_confirmed_tx_page(b: &mut Browser, sim: &Sim, txid: &bitcoin::Txid, height: u32) {
    let tip = sim.tip_height();
    assert_eq!(b.status().await, 200);
    assert_eq!(b.text("#txid").await, Some(txid.to_string()));
    assert_eq!(
        b.text("#merkle").await.as_deref(),
        Some("merkle proof verified")
    );
    assert_eq!(b.text("#tx-block").await, Some(height.to_string()));
    assert_eq!(
        b.text("#tx-confirmations").await,
        Some((tip - height + 1).to_string())
    );
    let tx = tx_of(sim, txid);
    let values = b.attrs("#outputs tbody tr .amount", "data-sats").await;
    let want: Vec<String> = tx
        .output
        .iter()
        .map(|o| o.value.to_sat().to_string())
        .collect();
    assert_eq!(values, want, "output values of {txid}");
    let inputs = b.attrs("#inputs tbody tr", "data-vin").await;
    assert_eq!(inputs.len(), tx.input.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium (apt-get install chromium); run with: cargo test -- --include-ignored"]
async fn the_explorer_in_chromium() {
    let chromium = program("chromium", "apt-get install chromium");
    let net = Net::start_http(&THREE).await;
    let sim = &net.sim;
    let base = net.base();
    let tip = sim.tip_height();
    let mut b = Browser::launch(&chromium).await;

    // The start page: network, verified tip, the latest blocks.
    b.goto(&format!("{base}/explorer")).await;
    assert_eq!(b.status().await, 200);
    assert_eq!(b.text("#network").await.as_deref(), Some("regtest"));
    assert_eq!(b.text("#tip").await, Some(tip.to_string()));
    let latest = b.attrs("#latest tbody tr", "data-height").await;
    let want: Vec<String> = (tip - 9..=tip).rev().map(|h| h.to_string()).collect();
    assert_eq!(latest, want);

    // A height typed into the search box.
    let h = (2..tip - 2)
        .find(|h| sim.block_txids(*h).unwrap().len() >= 3)
        .expect("a block with several transactions");
    b.search(&h.to_string(), &format!("{base}/explorer?q={h}"))
        .await;
    check_block_page(&mut b, sim, h).await;

    // A block hash, then the link to the previous block.
    let hash = sim.block_hash(h + 1).unwrap().to_string();
    b.search(&hash, &format!("{base}/explorer?q={hash}")).await;
    check_block_page(&mut b, sim, h + 1).await;
    let url = b.follow("#prev").await;
    assert_eq!(url, format!("{base}/explorer/block/{h}"));
    check_block_page(&mut b, sim, h).await;

    // A transaction of that block, by its link.
    let second = sim.block_txids(h).unwrap()[1];
    let url = b.follow("#txs tbody tr[data-pos=\"1\"] a").await;
    assert_eq!(url, format!("{base}/explorer/tx/{second}"));
    check_confirmed_tx_page(&mut b, sim, &second, h).await;
    // Its inputs spend outputs of earlier transactions: their values are shown.
    let spent: Vec<String> = b.attrs("#inputs tbody tr .amount", "data-sats").await;
    let tx = tx_of(sim, &second);
    let want: Vec<String> = tx
        .input
        .iter()
        .map(|i| {
            tx_of(sim, &i.previous_output.txid).output[i.previous_output.vout as usize]
                .value
                .to_sat()
                .to_string()
        })
        .collect();
    assert_eq!(spent, want, "values of the spent outputs");

    // The txid of a block's first transaction, searched: the coinbase, paying documented
    // address number height % 8, proven in its block.
    let n = tip - 3;
    let coinbase = sim.block_txids(n).unwrap()[0];
    b.search(
        &coinbase.to_string(),
        &format!("{base}/explorer?q={coinbase}"),
    )
    .await;
    check_confirmed_tx_page(&mut b, sim, &coinbase, n).await;
    let payees = b.texts("#outputs tbody tr a").await;
    assert!(
        payees.contains(&ADDRESSES[n as usize % 8].address.to_string()),
        "{payees:?}"
    );
    let url = b.follow("#tx-block").await;
    assert_eq!(url, format!("{base}/explorer/block/{n}"));
    assert_eq!(b.text("#block-height").await, Some(n.to_string()));

    // An address: balance, history and unspent outputs as the simulator has them.
    for a in [&ADDRESSES[2], &ADDRESSES[5]] {
        b.search(a.address, &format!("{base}/explorer?q={}", a.address))
            .await;
        assert_eq!(b.status().await, 200);
        assert_eq!(b.text("#address").await.as_deref(), Some(a.address));
        assert_eq!(b.text("#scripthash").await.as_deref(), Some(a.scripthash));
        let (confirmed, unconfirmed) = sim.balance(a.scripthash).unwrap();
        assert_eq!(
            b.attr("#confirmed", "data-sats").await,
            Some(confirmed.to_string())
        );
        assert_eq!(
            b.text("#confirmed").await,
            Some(btc(confirmed as i64)),
            "confirmed balance of {}",
            a.address
        );
        assert_eq!(
            b.attr("#unconfirmed", "data-sats").await,
            Some(unconfirmed.to_string())
        );
        let history = sim.history_json(a.scripthash).unwrap();
        let history = history.as_array().unwrap();
        assert_eq!(b.text("#tx-count").await, Some(history.len().to_string()));
        // Newest first, a page at a time: follow "older" to the end.
        let mut txids: Vec<String> = Vec::new();
        let mut heights: Vec<i64> = Vec::new();
        let mut pages = 0;
        loop {
            pages += 1;
            txids.extend(b.attrs("#history tbody tr", "data-txid").await);
            heights.extend(
                b.attrs("#history tbody tr", "data-height")
                    .await
                    .iter()
                    .map(|h| h.parse::<i64>().unwrap()),
            );
            if b.attr("#history-next", "href").await.is_none() {
                break;
            }
            b.follow("#history-next").await;
        }
        assert!(pages > 1, "{} entries fit one page", history.len());
        let distinct: BTreeSet<String> = txids.iter().cloned().collect();
        assert_eq!(distinct.len(), txids.len(), "an entry shown twice");
        let want: BTreeSet<String> = history
            .iter()
            .map(|e| e["tx_hash"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(distinct, want);
        // The mempool first, then blocks from the newest down.
        let newest_first: Vec<i64> = heights
            .iter()
            .map(|h| if *h <= 0 { i64::MAX } else { *h })
            .collect();
        assert!(newest_first.windows(2).all(|w| w[0] >= w[1]), "{heights:?}");
        let unspent = sim.listunspent_json(a.scripthash).unwrap();
        let shown: BTreeSet<String> = b
            .attrs("#unspent tbody tr", "data-outpoint")
            .await
            .into_iter()
            .collect();
        let want: BTreeSet<String> = unspent
            .as_array()
            .unwrap()
            .iter()
            .map(|u| format!("{}:{}", u["tx_hash"].as_str().unwrap(), u["tx_pos"]))
            .collect();
        assert_eq!(shown, want);
        assert_eq!(b.text("#utxo-count").await, Some(want.len().to_string()));
    }

    // A history entry links to its transaction.
    let first = b.attr("#history tbody tr", "data-txid").await.unwrap();
    let url = b.follow("#history tbody tr a").await;
    assert_eq!(url, format!("{base}/explorer/tx/{first}"));
    assert_eq!(b.text("#txid").await, Some(first));

    // A transaction still in the mempool has no block to prove.
    let pending = sim.mempool_txids()[0];
    b.goto(&format!("{base}/explorer/tx/{pending}")).await;
    assert_eq!(b.status().await, 200);
    assert_eq!(
        b.text("#tx-block").await.as_deref(),
        Some("unconfirmed or height unknown")
    );
    assert_eq!(b.text("#merkle").await.as_deref(), Some("unconfirmed"));

    // A search that names nothing: a clear page, status 400, the term shown back.
    b.search(
        "nothing-like-this",
        &format!("{base}/explorer?q=nothing-like-this"),
    )
    .await;
    assert_eq!(b.status().await, 400);
    assert_eq!(
        b.text("#error-title").await.as_deref(),
        Some("Not understood")
    );
    assert_eq!(
        b.text("#searched").await.as_deref(),
        Some("nothing-like-this")
    );

    b.close().await;
    net.gw.shutdown();
}

// ---------------------------------------------------------------------------------------------
// Over plain HTTP.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queries_get_clear_status_codes_and_nothing_is_injected() {
    let net = Net::start_http(&THREE).await;
    let tip = net.sim.tip_height();
    let unknown = "11".repeat(32);

    let cases: Vec<(String, u16, String)> = vec![
        (
            "/explorer?q=hello".into(),
            400,
            "is not a block height".into(),
        ),
        (
            "/explorer?q=4294967296".into(),
            400,
            "is not a block height".into(),
        ),
        (
            format!("/explorer?q={}", tip + 1),
            404,
            format!("the verified chain ends at {tip}"),
        ),
        (
            format!("/explorer?q={unknown}"),
            404,
            "no block of the verified chain and no transaction".into(),
        ),
        (
            format!("/explorer/tx/{unknown}"),
            404,
            "no upstream knows transaction".into(),
        ),
        (
            format!("/explorer/block/{unknown}"),
            404,
            "is not in the verified chain".into(),
        ),
        (
            "/explorer?q=bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4".into(),
            400,
            "an address of another network; this gateway serves regtest".into(),
        ),
        (
            "/explorer/block/12x".into(),
            400,
            "neither a block height".into(),
        ),
        ("/explorer/tx/12".into(), 400, "not a transaction id".into()),
        (
            "/explorer/address/bcrt1qnope".into(),
            400,
            "not a valid address".into(),
        ),
        (
            "/explorer/nothing/here".into(),
            404,
            "no such explorer page".into(),
        ),
    ];
    for (path, status, message) in cases {
        let r = net.get(&path).await;
        assert_eq!(r.status, status, "{path}: {}", r.body);
        assert!(r.headers["content-type"].starts_with("text/html"), "{path}");
        let shown = element_text(&r.body, "error").unwrap_or_default();
        assert!(shown.contains(&message), "{path}: {shown:?}");
    }

    // The pages forbid scripts and load nothing from elsewhere.
    let r = net.get("/explorer").await;
    assert_eq!(r.status, 200);
    let csp = &r.headers["content-security-policy"];
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    assert!(!r.body.contains("http://") && !r.body.contains("https://"));
    assert!(!r.body.contains("<script"));
    let head = http(net.http_addr(), "HEAD", "/explorer", &[], None).await;
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    let post = http(net.http_addr(), "POST", "/explorer", &[], None).await;
    assert_eq!(post.status, 405);

    // A query with markup comes back as text, in the message and in the search box.
    let r = net
        .get("/explorer?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E")
        .await;
    assert_eq!(r.status, 400);
    assert!(!r.body.contains("<script"), "{}", r.body);
    assert!(r.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert_eq!(
        element_text(&r.body, "searched").as_deref(),
        Some("&lt;script&gt;alert(1)&lt;/script&gt;")
    );
    let r = net.get("/explorer?q=%22%3E%3Cb%3Ex").await;
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("value=\"&quot;&gt;&lt;b&gt;x\""),
        "{}",
        r.body
    );
    assert!(!r.body.contains("<b>x"));
    // In a path too.
    let r = net.get("/explorer/block/%3Ci%3E").await;
    assert_eq!(r.status, 400);
    assert!(!r.body.contains("<i>") && r.body.contains("&lt;i&gt;"));

    // Transactions of a block are paged: past the last one there is nothing to show.
    let r = net.get("/explorer/block/1?from=100").await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("no transaction at position 100 or later"));
    net.gw.shutdown();
}

// ---------------------------------------------------------------------------------------------
// Upstreams without verbose transactions, and with markup in their errors.

/// A txid the proxy refuses with markup in the error message.
const EVIL_TXID: &str = "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";

/// What the proxy answers itself instead of passing a request on.
fn intercept(line: &str) -> Option<String> {
    let v: Value = serde_json::from_str(line).ok()?;
    if v.get("method")?.as_str()? != "blockchain.transaction.get" {
        return None;
    }
    let id = v.get("id").cloned().unwrap_or(Value::Null);
    let params = v.get("params")?.as_array()?;
    let message = if params.get(1).and_then(Value::as_bool) == Some(true) {
        // As electrs answers.
        "verbose transactions are currently unsupported <script>alert(1)</script>"
    } else if params.first().and_then(Value::as_str) == Some(EVIL_TXID) {
        "No such mempool or blockchain transaction <img src=x onerror=alert(1)>"
    } else {
        return None;
    };
    Some(json!({"jsonrpc": "2.0", "id": id, "error": {"code": 2, "message": message}}).to_string())
}

/// A line-protocol proxy in front of `upstream` that answers what [`intercept`] takes.
async fn start_proxy(upstream: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((down, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (down_r, mut down_w) = down.into_split();
                let (up_r, mut up_w) = up.into_split();
                let (tx, mut rx) = mpsc::channel::<String>(256);
                let writer = async move {
                    while let Some(line) = rx.recv().await {
                        if down_w.write_all(line.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                };
                let from_up = {
                    let tx = tx.clone();
                    async move {
                        let mut lines = BufReader::new(up_r).lines();
                        while let Ok(Some(l)) = lines.next_line().await {
                            if tx.send(l + "\n").await.is_err() {
                                break;
                            }
                        }
                    }
                };
                let from_down = async move {
                    let mut lines = BufReader::new(down_r).lines();
                    while let Ok(Some(l)) = lines.next_line().await {
                        match intercept(&l) {
                            Some(reply) => {
                                if tx.send(reply + "\n").await.is_err() {
                                    break;
                                }
                            }
                            None => {
                                if up_w.write_all((l + "\n").as_bytes()).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                };
                tokio::select! {
                    _ = writer => {}
                    _ = from_up => {}
                    _ = from_down => {}
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_verbose_transactions_the_block_comes_from_a_history() {
    let sim = Sim::start(SimConfig::with_endpoints(&["127.0.0.1:0", "127.0.0.1:0"]).unwrap())
        .await
        .unwrap();
    let mut upstreams = Vec::new();
    for url in sim.urls() {
        let target: SocketAddr = url.authority().parse().unwrap();
        upstreams.push(format!("tcp://{}", start_proxy(target).await));
    }
    let net = Net::http_in_front_of(sim, upstreams).await;
    let tip = net.sim.tip_height();

    // Confirmed: found through the history of an output's script, then proven.
    let h = tip - 7;
    let txid = *net.sim.block_txids(h).unwrap().last().unwrap();
    let r = net.get(&format!("/explorer/tx/{txid}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        element_text(&r.body, "merkle").as_deref(),
        Some("merkle proof verified")
    );
    assert_eq!(element_text(&r.body, "tx-block"), Some(h.to_string()));
    assert_eq!(
        element_text(&r.body, "tx-confirmations"),
        Some((tip - h + 1).to_string())
    );
    // The refusal's markup went nowhere.
    assert!(!r.body.contains("<script"));

    // In the mempool: the history says so.
    let pending = net.sim.mempool_txids()[0];
    let r = net.get(&format!("/explorer/tx/{pending}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        element_text(&r.body, "tx-block").as_deref(),
        Some("unconfirmed or height unknown")
    );

    // An upstream's error text is shown as text.
    let r = net.get(&format!("/explorer/tx/{EVIL_TXID}")).await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(!r.body.contains("<img"), "{}", r.body);
    assert_eq!(
        element_text(&r.body, "detail").as_deref(),
        Some("No such mempool or blockchain transaction &lt;img src=x onerror=alert(1)&gt;")
    );
    net.gw.shutdown();
}

// ---------------------------------------------------------------------------------------------
// False merkle proofs.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_false_merkle_proof_is_never_shown_as_verified() {
    let net = Net::start_http(&["127.0.0.1:0,bad-merkle", "127.0.0.1:0"]).await;
    let tip = net.sim.tip_height();

    // One honest upstream is enough: the false proof is refused and the honest one shown.
    let h = tip - 5;
    let txid = net.sim.block_txids(h).unwrap()[0];
    let r = net.get(&format!("/explorer/tx/{txid}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        element_text(&r.body, "merkle").as_deref(),
        Some("merkle proof verified")
    );
    assert_eq!(element_text(&r.body, "tx-block"), Some(h.to_string()));

    // Every upstream lying: the transaction is shown, its block is not claimed.
    net.sim.set_faults(
        1,
        Faults {
            bad_merkle: true,
            ..Faults::default()
        },
    );
    let h = tip - 6;
    let txid = net.sim.block_txids(h).unwrap()[0];
    let r = net.get(&format!("/explorer/tx/{txid}")).await;
    assert_eq!(r.status, 200);
    assert!(!r.body.contains("merkle proof verified"), "{}", r.body);
    assert_eq!(
        element_text(&r.body, "merkle").as_deref(),
        Some("merkle proof not verified")
    );
    assert_eq!(
        element_text(&r.body, "tx-block").as_deref(),
        Some("unconfirmed or height unknown")
    );
    assert_eq!(element_text(&r.body, "txid"), Some(txid.to_string()));

    // A block's transactions are listed only with proofs: none here.
    let r = net.get(&format!("/explorer/block/{h}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(element_text(&r.body, "block-height"), Some(h.to_string()));
    assert!(element_text(&r.body, "txs-error").is_some(), "{}", r.body);
    assert!(!r.body.contains(&format!("{txid}</a>")));
    net.gw.shutdown();
}
