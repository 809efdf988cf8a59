//! Wallet-scale scenarios: many connections holding many subscriptions (`subscriptions`), and
//! block notifications fanned out to all of them (`fanout`).
//!
//! Wallets connect (at most 100 dialing at once, as wallets starting up would), then each
//! subscribes to its share of `--subscriptions` fresh random scripthashes with `--pipeline`
//! requests in flight. The resident memory of `--pid` is read before the wallets connect,
//! once they all have, and once every subscription is answered, so the growth per
//! connection and per subscription can be told apart. In `fanout` every wallet also
//! subscribes to headers, then `--rounds` blocks are mined one at a time through `--control`
//! and the time from each `sim.mine` to each wallet's header notification is recorded.

use futures::{SinkExt, StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{
    classify, histogram, micros, random_scripthashes, request_line, rss_kb, BenchArgs, Latency,
    Line, Memory, Report, Scenario, Session,
};
use crate::transport::{FrameSink, Framed};

/// How long a wallet waits for a block notification before it counts as missed.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) async fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    let fanout = args.scenario == Scenario::Fanout;
    let mut control = match fanout {
        true => Some(Session::open(args.control.as_ref().unwrap_or(&args.server)).await?),
        false => None,
    };
    let rss = || args.pid.map(rss_kb).transpose();
    let start_kb = rss()?;
    let wallets: Vec<Session> = futures::stream::iter(0..args.connections)
        .map(|_| Session::open(&args.server))
        .buffered(100)
        .try_collect()
        .await?;
    let connected_kb = rss()?;

    // Subscribe: wallet i takes scripthashes i, i + n, i + 2n, ...
    let n = wallets.len();
    let scripthashes = random_scripthashes(args.subscriptions, u64::from(std::process::id()));
    let began = Instant::now();
    let tasks: Vec<_> = wallets
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            let mut fragments: Vec<String> = Vec::new();
            if fanout {
                fragments.push(r#""method":"blockchain.headers.subscribe","params":[]"#.into());
            }
            fragments.extend(scripthashes.iter().skip(i).step_by(n).map(|sh| {
                format!(r#""method":"blockchain.scripthash.subscribe","params":["{sh}"]"#)
            }));
            tokio::spawn(subscribe_all(w.framed, fragments, args.pipeline))
        })
        .collect();
    let mut hist = histogram();
    let mut ok = 0;
    let mut errors = 0;
    let mut framed = Vec::with_capacity(n);
    for t in tasks {
        let (f, h, good, bad) = t.await??;
        hist.add(&h)?;
        ok += good;
        errors += bad;
        framed.push(f);
    }
    let subscribe_s = began.elapsed().as_secs_f64();
    let subscribed_kb = rss()?;

    let mut report = Report::new(args);
    report.subscribe_s = Some(subscribe_s);
    if let (Some(start), Some(connected), Some(subscribed)) =
        (start_kb, connected_kb, subscribed_kb)
    {
        report.memory = Some(Memory {
            start_kb: start,
            connected_kb: connected,
            subscribed_kb: subscribed,
            per_connection_bytes: connected.saturating_sub(start) as f64 * 1024.0 / n as f64,
            per_subscription_bytes: (args.subscriptions > 0).then(|| {
                subscribed.saturating_sub(connected) as f64 * 1024.0 / args.subscriptions as f64
            }),
        });
    }
    match control.as_mut() {
        None => {
            report.duration_s = subscribe_s;
            report.requests = ok;
            report.errors = errors;
            report.rps = ok as f64 / subscribe_s.max(1e-9);
            report.latency_us = Latency::of(&hist);
        }
        Some(control) => {
            let began = Instant::now();
            let (delivered, missed, deliveries, last) =
                mine_rounds(control, framed, args.rounds).await?;
            report.duration_s = began.elapsed().as_secs_f64();
            report.requests = delivered;
            report.errors = errors + missed;
            report.latency_us = Latency::of(&deliveries);
            report.rounds = Some(args.rounds);
            report.last_wallet_us = Some(Latency::of(&last));
        }
    }
    Ok(report)
}

/// Sends every request with at most `k` in flight; returns the connection, the latency
/// histogram, and how many were answered without and with an error.
async fn subscribe_all(
    mut framed: Framed,
    fragments: Vec<String>,
    k: usize,
) -> anyhow::Result<(Framed, Histogram<u64>, u64, u64)> {
    let mut hist = histogram();
    let (mut ok, mut errors) = (0u64, 0u64);
    let mut sent: Vec<Instant> = Vec::with_capacity(fragments.len());
    let mut answered = 0usize;
    let mut next = 0usize;
    // Ids start above the one `server.version` used.
    let id_base = 1000u64;
    while answered < fragments.len() {
        while next < fragments.len() && next - answered < k {
            framed
                .sink
                .feed(request_line(id_base + next as u64, &fragments[next]))
                .await?;
            sent.push(Instant::now());
            next += 1;
        }
        framed.sink.flush().await?;
        let line = tokio::time::timeout(NOTIFY_TIMEOUT, framed.stream.next())
            .await
            .map_err(|_| anyhow::anyhow!("a subscription was not answered in time"))?;
        let Some(line) = line else {
            anyhow::bail!("the server closed a wallet connection while subscribing");
        };
        if let Line::Answer { id, ok: good } = classify(&line?) {
            let Some(i) = id.checked_sub(id_base).map(|i| i as usize) else {
                continue;
            };
            if i < next {
                answered += 1;
                let _ = hist.record(micros(sent[i].elapsed()));
                if good {
                    ok += 1;
                } else {
                    errors += 1;
                }
            }
        }
    }
    Ok((framed, hist, ok, errors))
}

/// Mines `rounds` blocks one at a time and waits for every wallet's header notification of
/// each. Returns (delivered, missed, delivery latencies, per-block time to the last wallet).
async fn mine_rounds(
    control: &mut Session,
    wallets: Vec<Framed>,
    rounds: usize,
) -> anyhow::Result<(u64, u64, Histogram<u64>, Histogram<u64>)> {
    let n = wallets.len();
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, u64, Instant)>();
    // Keep the sending halves open; readers report each header notification's height.
    let mut sinks: Vec<FrameSink> = Vec::with_capacity(n);
    let mut readers = Vec::with_capacity(n);
    for (i, f) in wallets.into_iter().enumerate() {
        sinks.push(f.sink);
        let tx = tx.clone();
        let mut stream = f.stream;
        readers.push(tokio::spawn(async move {
            while let Some(Ok(line)) = stream.next().await {
                let now = Instant::now();
                if !matches!(classify(&line), Line::Notification) {
                    continue;
                }
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if v["method"] != "blockchain.headers.subscribe" {
                    continue;
                }
                if let Some(h) = v["params"][0]["height"].as_u64() {
                    if tx.send((i, h, now)).is_err() {
                        return;
                    }
                }
            }
        }));
    }
    drop(tx);
    let mut deliveries = histogram();
    let mut last = histogram();
    let (mut delivered, mut missed) = (0u64, 0u64);
    for _ in 0..rounds {
        let t0 = Instant::now();
        let height = control
            .call("sim.mine", json!([1]))
            .await?
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("sim.mine did not answer a height"))?;
        let mut seen = vec![false; n];
        let mut count = 0usize;
        let mut slowest = Duration::ZERO;
        let deadline = tokio::time::sleep(NOTIFY_TIMEOUT);
        tokio::pin!(deadline);
        while count < n {
            let (i, h, at) = tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => ev,
                    None => break,
                },
                _ = &mut deadline => break,
            };
            if h >= height && !seen[i] {
                seen[i] = true;
                count += 1;
                let d = at.saturating_duration_since(t0);
                slowest = slowest.max(d);
                let _ = deliveries.record(micros(d));
            }
        }
        delivered += count as u64;
        missed += (n - count) as u64;
        if count > 0 {
            let _ = last.record(micros(slowest));
        }
    }
    for r in readers {
        r.abort();
    }
    for mut s in sinks {
        let _ = s.close().await;
    }
    Ok((delivered, missed, deliveries, last))
}
