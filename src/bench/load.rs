//! Plain load (`load`) and load across an upstream's death (`failover`).
//!
//! Every connection keeps `--pipeline` requests in flight: each answer frees its slot and the
//! next request goes out at once, answers already buffered are handled before one flush, so
//! the generator costs about one read and one write per batch of answers. A request's id
//! names its slot, so answers may come in any order. A connection that is lost is dialed
//! again at once (what a wallet behind a TCP proxy has to do); its requests in flight count
//! as errors.

use futures::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use super::{
    classify, histogram, micros, request_line, BenchArgs, Line, Plan, Report, Scenario, Session,
};
use crate::transport::ServerUrl;

/// The measured window, shared by every connection.
#[derive(Clone, Copy)]
struct Window {
    from: Instant,
    end: Instant,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        t >= self.from && t < self.end
    }
}

/// What one connection measured.
struct Outcome {
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    reconnects: u64,
    /// (sent, answered) times of answers, and times of errors, kept only in `failover` (to
    /// find the outage).
    answered_at: Vec<(Instant, Instant)>,
    failed_at: Vec<Instant>,
}

pub(super) async fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    let failover = args.scenario == Scenario::Failover;
    let kill_pid = match (failover, args.kill_pid) {
        (true, Some(pid)) => {
            super::rss_kb(pid)?;
            Some(pid)
        }
        (true, None) => anyhow::bail!("--scenario failover needs --kill-pid"),
        (false, _) => None,
    };
    if let Some(pid) = args.pid {
        super::cpu_time(pid)?;
    }
    let plan = Arc::new(Plan::discover(&args.server, &args.method, args.scripthashes).await?);
    let sessions =
        futures::future::try_join_all((0..args.connections).map(|_| Session::open(&args.server)))
            .await?;
    let start = Instant::now();
    let from = start + Duration::from_secs_f64(args.warmup);
    let window = Window {
        from,
        end: from + Duration::from_secs_f64(args.duration),
    };
    let killer = kill_pid.map(|pid| {
        let at = from + Duration::from_secs_f64(args.kill_after);
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let status = tokio::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .await;
            let killed = Instant::now();
            match status {
                Ok(s) if s.success() => Ok(killed),
                Ok(s) => Err(anyhow::anyhow!("kill -KILL {pid} failed: {s}")),
                Err(e) => Err(anyhow::anyhow!("cannot run kill: {e}")),
            }
        })
    });
    // CPU of the process under test and of the bench, over the measured window.
    let pid = args.pid;
    let cpu = tokio::spawn(async move {
        let me = std::process::id();
        let read = |p: Option<u32>| p.map(super::cpu_time).transpose();
        tokio::time::sleep_until(window.from).await;
        let (p0, b0) = (read(pid)?, super::cpu_time(me)?);
        tokio::time::sleep_until(window.end).await;
        let (p1, b1) = (read(pid)?, super::cpu_time(me)?);
        anyhow::Ok((
            p0.zip(p1).map(|(a, b)| b.saturating_sub(a)),
            b1.saturating_sub(b0),
        ))
    });
    let step = plan.fragments.len() / args.connections.max(1);
    let tasks: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, session)| {
            let plan = plan.clone();
            let url = args.server.clone();
            let k = args.pipeline;
            tokio::spawn(drive(session, url, plan, i * step, k, window, failover))
        })
        .collect();
    let mut total = Outcome {
        hist: histogram(),
        ok: 0,
        errors: 0,
        reconnects: 0,
        answered_at: Vec::new(),
        failed_at: Vec::new(),
    };
    for t in tasks {
        let o = t.await?;
        total.hist.add(&o.hist)?;
        total.ok += o.ok;
        total.errors += o.errors;
        total.reconnects += o.reconnects;
        total.answered_at.extend(o.answered_at);
        total.failed_at.extend(o.failed_at);
    }
    let mut report = Report::new(args);
    report.duration_s = args.duration;
    report.requests = total.ok;
    report.errors = total.errors;
    report.rps = total.ok as f64 / args.duration;
    report.latency_us = super::Latency::of(&total.hist);
    report.reconnects = total.reconnects;
    let (pid_cpu, bench_cpu) = cpu.await??;
    report.bench_cpu_s = bench_cpu.as_secs_f64();
    if let Some(c) = pid_cpu {
        report.cpu_s = Some(c.as_secs_f64());
        report.cpu_us_per_request = (total.ok > 0).then(|| c.as_secs_f64() * 1e6 / total.ok as f64);
    }
    if let Some(killer) = killer {
        let killed = killer.await??;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        report.killed_at_s = Some(killed.saturating_duration_since(from).as_secs_f64());
        report.first_answer_after_kill_ms = total
            .answered_at
            .iter()
            .filter(|(sent, _)| *sent >= killed)
            .map(|(_, at)| ms(*at - killed))
            .reduce(f64::min);
        let mut after: Vec<Instant> = total
            .answered_at
            .iter()
            .map(|(_, at)| *at)
            .filter(|t| *t >= killed)
            .collect();
        after.sort();
        let mut prev = killed;
        let mut stall = Duration::ZERO;
        for t in after.iter().chain(std::iter::once(&window.end)) {
            stall = stall.max(t.saturating_duration_since(prev));
            prev = *t;
        }
        report.longest_stall_ms = Some(ms(stall));
        report.errors_after_kill =
            Some(total.failed_at.iter().filter(|t| **t >= killed).count() as u64);
    }
    Ok(report)
}

/// One connection's request loop until the window ends.
async fn drive(
    session: Session,
    url: ServerUrl,
    plan: Arc<Plan>,
    offset: usize,
    k: usize,
    window: Window,
    track: bool,
) -> Outcome {
    let mut out = Outcome {
        hist: histogram(),
        ok: 0,
        errors: 0,
        reconnects: 0,
        answered_at: Vec::new(),
        failed_at: Vec::new(),
    };
    let fragments = &plan.fragments;
    let mut cursor = offset;
    // Slot i holds the id and send time of its request in flight; ids are seq * k + i.
    let mut slots: Vec<Option<(u64, Instant)>> = vec![None; k];
    let mut seq: u64 = 1;
    let deadline = tokio::time::sleep_until(window.end);
    tokio::pin!(deadline);
    let mut framed = Some(session.framed);
    'connection: loop {
        let Some(conn) = framed.as_mut() else {
            // Lost: dial again until the window ends.
            let redial = async {
                loop {
                    match Session::open(&url).await {
                        Ok(s) => break s.framed,
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            };
            tokio::select! {
                f = redial => {
                    out.reconnects += 1;
                    framed = Some(f);
                    continue 'connection;
                }
                _ = &mut deadline => break 'connection,
            }
        };
        // Fill every free slot, then flush once.
        let mut failed = false;
        for (i, slot) in slots.iter_mut().enumerate() {
            if slot.is_none() {
                let id = seq * k as u64 + i as u64;
                let line = request_line(id, &fragments[cursor % fragments.len()]);
                cursor += 1;
                *slot = Some((id, Instant::now()));
                if conn.sink.feed(line).await.is_err() {
                    failed = true;
                    break;
                }
            }
        }
        seq += 1;
        if !failed && conn.sink.flush().await.is_err() {
            failed = true;
        }
        while !failed {
            let next = tokio::select! {
                biased;
                _ = &mut deadline => break 'connection,
                line = conn.stream.next() => line,
            };
            let mut next = Some(next);
            let mut refill = false;
            // Handle this answer and every one already buffered, then send what they freed.
            while let Some(line) = next.take() {
                let line = match line {
                    Some(Ok(line)) => line,
                    _ => {
                        failed = true;
                        break;
                    }
                };
                if let Line::Answer { id, ok } = classify(&line) {
                    let i = (id % k as u64) as usize;
                    if let Some((sent_id, sent)) = slots[i] {
                        if sent_id == id {
                            slots[i] = None;
                            refill = true;
                            let now = Instant::now();
                            if window.contains(now) {
                                if ok {
                                    out.ok += 1;
                                    let _ = out.hist.record(micros(now - sent));
                                } else {
                                    out.errors += 1;
                                }
                                if track {
                                    if ok {
                                        out.answered_at.push((sent, now));
                                    } else {
                                        out.failed_at.push(now);
                                    }
                                }
                            }
                        }
                    }
                }
                next = conn.stream.next().now_or_never();
            }
            if failed {
                break;
            }
            if refill {
                if Instant::now() >= window.end {
                    break 'connection;
                }
                continue 'connection;
            }
        }
        // The connection failed: what was in flight is lost.
        let now = Instant::now();
        for slot in slots.iter_mut() {
            if slot.take().is_some() && window.contains(now) {
                out.errors += 1;
                if track {
                    out.failed_at.push(now);
                }
            }
        }
        framed = None;
    }
    out
}
