//! The explorer's pages: the start page, blocks, transactions and addresses.

use super::*;
// ---------------------------------------------------------------------------------------------
// Pages.

pub(super) async fn render(
    ctx: &Core,
    nav: &Nav,
    target: Target,
) -> Result<(String, String), Failure> {
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
                .tracker()
                .with_chain(|c| c.height_of(&hash))
                .is_some()
            {
                return block_page(ctx, nav, BlockAt::Hash(hash), 0).await;
            }
            tx_page(ctx, nav, parse_txid(&hex)?, true).await
        }
    }
}

pub(super) fn home_page(ctx: &Core, nav: &Nav) -> (String, String) {
    let latest: Vec<(u32, BlockHash, u32)> = ctx.pool.tracker().with_chain(|c| {
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
pub(super) struct BlockInfo {
    height: u32,
    hash: BlockHash,
    header: Header,
    tip: u32,
    next: Option<BlockHash>,
}

/// The transactions of a block shown on one page.
pub(super) struct TxList {
    rows: Vec<(u32, Txid)>,
    more: bool,
    error: Option<String>,
}

/// Up to a page of a block's transactions from position `from`, each proven against the
/// verified header. Electrum has no call for a block's transaction count; the first proof's
/// branch length bounds it (`count <= 2^len`), and a "no transaction at this position" answer
/// ends the list.
pub(super) async fn block_txs(ctx: &Core, height: u32, from: u32) -> TxList {
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

pub(super) async fn block_page(
    ctx: &Core,
    nav: &Nav,
    at: BlockAt,
    from: u32,
) -> Result<(String, String), Failure> {
    let info = ctx.pool.tracker().with_chain(|c| {
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
        let tip = ctx.pool.tracker().with_chain(|c| c.height());
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
pub(super) enum Placement {
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
pub(super) enum Hint {
    Height(u32),
    Mempool,
    Nothing,
}

pub(super) fn verbose_hint(ctx: &Core, v: &Value) -> Hint {
    let consensus = ctx.pool.tracker();
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
pub(super) async fn locate(
    ctx: &Core,
    tx: &Transaction,
    txid: &Txid,
    verbose: Option<Value>,
) -> Placement {
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

pub(super) fn proven(ctx: &Core, height: u32, pos: u64, branch: usize) -> Placement {
    match ctx.pool.tracker().with_chain(|c| c.hash(height)) {
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
pub(super) async fn prevouts(ctx: &Core, tx: &Transaction) -> HashMap<Txid, Transaction> {
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
pub(super) fn destination(nav: &Nav, network: Network, out: &TxOut) -> String {
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

pub(super) async fn tx_page(
    ctx: &Core,
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
    let tip = ctx.pool.tracker().with_chain(|c| c.height());

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

pub(super) async fn address_page(
    ctx: &Core,
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
    let tip = ctx.pool.tracker().with_chain(|c| c.height());
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
