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
//!
//! `--subscribe-limit` and `--max-rss-growth-mib` stop subscribing early (the requests in
//! flight are still answered) and the report says how far it got: for shapes the process
//! under test cannot reach in reasonable time or memory.

use futures::{SinkExt, StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
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
    let stop = Arc::new(AtomicU8::new(GOING));
    let limits = tokio::spawn(watch_limits(args.clone(), start_kb, stop.clone()));
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
            tokio::spawn(subscribe_all(
                w.framed,
                fragments,
                args.pipeline,
                stop.clone(),
            ))
        })
        .collect();
    drop(scripthashes);
    let mut hist = histogram();
    let mut ok = 0;
    let mut errors = 0;
    let mut framed = Vec::with_capacity(n);
    for t in tasks {
        let (f, latencies, good, bad) = t.await??;
        for us in latencies {
            let _ = hist.record(us);
        }
        ok += good;
        errors += bad;
        framed.push(f);
    }
    let subscribe_s = began.elapsed().as_secs_f64();
    limits.abort();
    let subscribed_kb = rss()?;
    // The wallets stay connected (their connections are in `framed`) while the burst's state
    // is freed.
    let settled_kb = if args.settle > 0.0 {
        tokio::time::sleep(std::time::Duration::from_secs_f64(args.settle)).await;
        rss()?
    } else {
        None
    };
    let answered = ok + errors;
    // The headers subscriptions of `fanout` are not scripthash subscriptions.
    let answered_scripthashes = answered.saturating_sub(if fanout { n as u64 } else { 0 });

    let mut report = Report::new(args);
    report.subscribe_s = Some(subscribe_s);
    report.subscriptions_answered = Some(answered_scripthashes);
    report.stopped_by = match stop.load(Ordering::Relaxed) {
        TIME_LIMIT => Some("time limit".into()),
        MEMORY_LIMIT => Some("memory limit".into()),
        _ => None,
    };
    if let (Some(start), Some(connected), Some(subscribed)) =
        (start_kb, connected_kb, subscribed_kb)
    {
        report.memory = Some(Memory {
            start_kb: start,
            connected_kb: connected,
            subscribed_kb: subscribed,
            per_connection_bytes: connected.saturating_sub(start) as f64 * 1024.0 / n as f64,
            per_subscription_bytes: (answered_scripthashes > 0).then(|| {
                subscribed.saturating_sub(connected) as f64 * 1024.0 / answered_scripthashes as f64
            }),
            growth_bytes: subscribed.saturating_sub(start).saturating_mul(1024),
            settled_kb,
            per_subscription_settled_bytes: settled_kb.filter(|_| answered_scripthashes > 0).map(
                |settled| {
                    settled.saturating_sub(connected) as f64 * 1024.0 / answered_scripthashes as f64
                },
            ),
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

/// Sends every request with at most `k` in flight, until all are answered or `stop` is set
/// (then the requests in flight are still waited for, at most [`DRAIN_WAIT`]); returns the
/// connection, the answers' latencies in microseconds, and how many were answered without
/// and with an error.
async fn subscribe_all(
    mut framed: Framed,
    fragments: Vec<String>,
    k: usize,
    stop: Arc<AtomicU8>,
) -> anyhow::Result<(Framed, Vec<u64>, u64, u64)> {
    let mut latencies = Vec::with_capacity(fragments.len());
    let (mut ok, mut errors) = (0u64, 0u64);
    let mut sent: Vec<Instant> = Vec::with_capacity(fragments.len());
    let mut answered = 0usize;
    let mut next = 0usize;
    // Ids start above the one `server.version` used.
    let id_base = 1000u64;
    let mut waiting_since = Instant::now();
    loop {
        let stopped = stop.load(Ordering::Relaxed) != GOING;
        if !stopped {
            while next < fragments.len() && next - answered < k {
                framed
                    .sink
                    .feed(request_line(id_base + next as u64, &fragments[next]))
                    .await?;
                sent.push(Instant::now());
                next += 1;
            }
            framed.sink.flush().await?;
        }
        if answered == next && (stopped || next == fragments.len()) {
            break;
        }
        let line = match tokio::time::timeout(POLL, framed.stream.next()).await {
            Ok(line) => line,
            Err(_) => {
                let waited = waiting_since.elapsed();
                if stopped && waited > DRAIN_WAIT {
                    break;
                }
                if waited > NOTIFY_TIMEOUT {
                    anyhow::bail!("a subscription was not answered in time");
                }
                continue;
            }
        };
        let Some(line) = line else {
            anyhow::bail!("the server closed a wallet connection while subscribing");
        };
        if let Line::Answer { id, ok: good } = classify(&line?) {
            let Some(i) = id.checked_sub(id_base).map(|i| i as usize) else {
                continue;
            };
            if i < next {
                answered += 1;
                waiting_since = Instant::now();
                latencies.push(micros(sent[i].elapsed()));
                if good {
                    ok += 1;
                } else {
                    errors += 1;
                }
            }
        }
    }
    Ok((framed, latencies, ok, errors))
}

/// Values of the stop flag shared by the subscribing wallets.
const GOING: u8 = 0;
const TIME_LIMIT: u8 = 1;
const MEMORY_LIMIT: u8 = 2;
/// How often the limits are checked and a waiting wallet looks at the stop flag.
const POLL: Duration = Duration::from_millis(200);
/// How long a stopped wallet still waits for its requests in flight.
const DRAIN_WAIT: Duration = Duration::from_secs(10);

/// Sets `stop` when `--subscribe-limit` has passed or `--pid` has grown by more than
/// `--max-rss-growth-mib` since `start_kb`.
async fn watch_limits(args: BenchArgs, start_kb: Option<u64>, stop: Arc<AtomicU8>) {
    let began = Instant::now();
    let cap_kb = args.max_rss_growth_mib.saturating_mul(1024);
    loop {
        tokio::time::sleep(POLL).await;
        if args.subscribe_limit > 0.0 && began.elapsed().as_secs_f64() >= args.subscribe_limit {
            stop.store(TIME_LIMIT, Ordering::Relaxed);
            return;
        }
        if let (Some(pid), Some(start), true) = (args.pid, start_kb, cap_kb > 0) {
            match rss_kb(pid) {
                Ok(now) if now.saturating_sub(start) > cap_kb => {
                    stop.store(MEMORY_LIMIT, Ordering::Relaxed);
                    return;
                }
                Ok(_) => {}
                // The process is gone: the wallets will see their connections close.
                Err(_) => return,
            }
        }
    }
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
