//! The wallet-facing side: one session per wallet connection.
//!
//! A session reads messages and parses each request once into a typed [`Call`]. It answers
//! `server.version` at once (in order, so it takes effect before what follows it) and polls
//! every other request once where it is read: what is ready then (local answers, headers, cache
//! hits) is answered without a task, the rest goes on as its own task, so a slow upstream answer
//! never holds up the rest. Answers are flushed once nothing else is ready. At
//! most `max_pending_per_session` requests are in flight; past that the session stops reading
//! (backpressure) instead of failing requests. All writes go through the session loop, which
//! orders subscription replies before the notifications that follow them ([`ReplyOrder`]).
//!
//! Limits ([`super::limits`], docs/limits.md): a session belongs to a client (its peer
//! address) and is refused at once when that client has `max_sessions_per_client`
//! connections. Every request, batch items one by one, spends from the client's token bucket
//! (its answer's size is charged after); a batch of more than `max_batch` items gets one
//! error; subscriptions are counted per connection, per client and over the gateway. An
//! over-limit request gets error -101 and is a strike; `abuse_strikes` strikes in a row
//! close the connection. Only lines the wallet sends count as activity for the idle timeout.

use futures::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

use super::hub::{SessionEvent, SessionHandle, SessionId, StatusChange};
use super::isolation::Links;
use super::limits::{answer_cost, ClientTicket};
use super::local;
use super::order::{Confirms, ReplyOrder};
use super::router::unavailable;
use super::services::Core;
use crate::metrics::method_label;
use crate::protocol::error::{EXCESSIVE_RESOURCE_USAGE, SERVER_BUSY};
use crate::protocol::methods::{Kind, PROTOCOL_MIN};
use crate::protocol::{
    Args, Call, Id, Incoming, Message, Notification, ParseContext, Request, Response, RpcError,
};
use crate::transport::{feed_shared, FrameSink, Framed};

/// One finished request (or batch) for the session loop to write.
struct Outgoing {
    line: Option<String>,
    /// Boxed: few requests confirm anything, and the channel's slots stay small.
    confirms: Option<Box<Confirms>>,
    /// How many requests this completes.
    done: usize,
}

/// How a subscription was asked for, so notifications use the wallet's own form.
#[derive(Debug, Default)]
struct Forms {
    by_scripthash: bool,
    /// The addresses it was subscribed as (a list: almost always none or one).
    addresses: Vec<String>,
}

/// Shared, read-mostly state of a session that request tasks consult.
struct Shared {
    id: SessionId,
    /// Negotiated protocol as major*10000 + minor*100 + patch.
    protocol: AtomicU32,
    handle: SessionHandle,
    /// Subscription forms by scripthash.
    forms: Mutex<HashMap<Box<str>, Forms>>,
    /// Per upstream slot, how many of this session's scripthashes its sets hold (balances a
    /// wallet's addresses over the upstreams under `[privacy] mode = "spread"`).
    load: Mutex<HashMap<usize, u32>>,
    /// The client this session belongs to: its bucket and subscription count.
    client: ClientTicket,
    /// Over-limit errors since the last request that succeeded.
    strikes: AtomicU32,
}

fn encode_version(v: (u32, u32, u32)) -> u32 {
    v.0 * 10000 + v.1 * 100 + v.2
}

impl Shared {
    fn protocol(&self) -> (u32, u32, u32) {
        let p = self.protocol.load(Ordering::Relaxed);
        (p / 10000, (p / 100) % 100, p % 100)
    }

    /// Counts an over-limit error against the session.
    fn strike(&self) {
        self.strikes.fetch_add(1, Ordering::Relaxed);
    }
}

/// An over-limit error (-101, "excessive resource usage", as ElectrumX sends).
fn over_limit(message: impl Into<String>) -> RpcError {
    RpcError::new(EXCESSIVE_RESOURCE_USAGE, message)
}

fn rate_limited() -> RpcError {
    over_limit("rate limit exceeded: too many or too costly requests from your address; slow down")
}

/// A request the session loop has read: parsed into a call, or refused.
struct Read {
    id: Option<Id>,
    label: &'static str,
    call: Result<Call, RpcError>,
}

fn read_request(core: &Core, shared: &Shared, req: Request) -> Read {
    let cx = ParseContext {
        network: core.network,
        protocol: shared.protocol(),
        policies: &core.cfg.routing.policy,
    };
    Read {
        label: method_label(&req.method),
        call: Call::parse(&req.method, &req.params, req.params_object, &cx),
        id: req.id,
    }
}

fn as_request(m: Message) -> Result<Request, Response> {
    match m {
        Message::Request(r) => Ok(r),
        Message::Notification(n) => Ok(Request {
            id: None,
            method: n.method,
            params: n.params,
            params_object: false,
        }),
        Message::Response(r) => Err(Response::err(
            r.id,
            RpcError::invalid_request("a wallet sends requests, not responses"),
        )),
    }
}

/// Serves one wallet connection until it closes, idles out, or the gateway shuts down. When the
/// gateway drains, the session reads no further request, writes the answers of those in
/// flight (and the notifications that come meanwhile), and closes.
pub async fn run(core: Arc<Core>, framed: Framed, peer: SocketAddr) {
    let Framed {
        mut sink,
        mut stream,
    } = framed;
    let id = core.next_session_id();
    let limits = &core.cfg.limits;
    let client = match core.clients.admit(peer) {
        Ok(ticket) => ticket,
        Err(too_many) => {
            core.metrics.limit_rejected("connections");
            tracing::debug!(%peer, "too many connections from one client; refusing");
            let err = over_limit(format!(
                "too many connections from your address (at most {})",
                too_many.0
            ));
            let _ = write(&mut sink, Response::err(Id::Null, err).to_json()).await;
            let _ = sink.close().await;
            return;
        }
    };
    let (ev_tx, mut ev_rx) = mpsc::channel::<SessionEvent>(4096);
    // Cancelled by the hub for this session alone, or with the gateway's shutdown: one
    // token for the session loop to wait on.
    let kill = core.shutdown.child_token();
    // Under `[privacy] mode = "isolated"`: upstream connections of this session's own.
    let links = core
        .pool
        .privacy()
        .isolated()
        .then(|| Arc::new(Links::new(core.pool.clone())));
    let shared = Arc::new(Shared {
        id,
        protocol: AtomicU32::new(encode_version(PROTOCOL_MIN)),
        handle: SessionHandle {
            id,
            tx: ev_tx,
            kill: kill.clone(),
            links: links.clone(),
        },
        forms: Mutex::new(HashMap::new()),
        load: Mutex::new(HashMap::new()),
        client,
        strikes: AtomicU32::new(0),
    });
    // Finished requests come back on a channel made with the first request: a connection
    // that sends none but `server.version` holds none.
    let mut out_tx: Option<mpsc::Sender<Outgoing>> = None;
    let mut out_rx: Option<mpsc::Receiver<Outgoing>> = None;
    let out_capacity = limits.max_pending_per_session + 8;
    let mut pending = 0usize;
    let mut unflushed = 0usize;
    let mut version_done = false;
    let mut tip_rx = core.pool.tip_notice_watch();
    let mut order = ReplyOrder::default();
    // Zero: no idle timeout.
    let idle = crate::config::secs(limits.idle_timeout_secs);
    let idle = (!idle.is_zero()).then_some(idle);
    tracing::debug!(session = id, %peer, "wallet connected");
    core.count_session(1);

    // Futures that live as long as the session are made once: a wake-up (a block, an
    // answer) then registers no new waiter on the tokens nor a new timer.
    let killed = kill.cancelled();
    tokio::pin!(killed);
    // A drain: read nothing more, write the answers in flight, then close.
    let drain_started = core.drain.cancelled();
    tokio::pin!(drain_started);
    let mut draining = false;
    // The session is idle when the wallet sends nothing for the idle time: only a line read
    // counts, not what the gateway sends (answers, notifications, new tips), so a wallet
    // that went away without closing is not kept forever by a busy chain. Lines are not
    // timed one by one (the clock is a system call on some machines): a timer ticks every
    // quarter of the idle time, and the session closes after the ticks of a whole idle time
    // found no line, so between 1 and 1.25 idle times after the last one.
    let tick = idle.map_or(Duration::from_secs(3600), |idle| idle / IDLE_TICKS);
    let idle_timer = tokio::time::sleep(tick);
    tokio::pin!(idle_timer);
    let mut quiet_ticks = 0u32;
    let mut event = true;
    let max_batch = limits.max_batch;
    let abuse_strikes = limits.abuse_strikes;

    // Answers written but not flushed yet, and whether the loop already yielded once for
    // more to join them.
    let mut dirty = false;
    let mut yielded = false;
    let close_reason: String = loop {
        if draining && pending == 0 {
            if flush(&mut sink).await.is_err() {
                break "write failed".into();
            }
            break "gateway draining".into();
        }
        if event {
            quiet_ticks = 0;
        }
        event = false;
        if shared.strikes.load(Ordering::Relaxed) >= abuse_strikes {
            core.metrics.abuse_disconnect();
            let err = over_limit("disconnected for repeatedly exceeding limits");
            let _ = write(&mut sink, Response::err(Id::Null, err).to_json()).await;
            break "abuse: over limits repeatedly".into();
        }
        let can_read = pending < limits.max_pending_per_session && !draining;
        tokio::select! {
            biased;
            _ = &mut killed => break if core.shutdown.is_cancelled() {
                "gateway shutting down".into()
            } else {
                "too slow to take notifications".into()
            },
            _ = &mut drain_started, if !draining => {
                draining = true;
            }
            Some(out) = recv_outgoing(&mut out_rx) => {
                pending = pending.saturating_sub(out.done);
                if let Some(line) = out.line {
                    if feed(&mut sink, line).await.is_err() {
                        break "write failed".into();
                    }
                }
                // Notifications that arrived while a subscription reply was in flight follow
                // the reply, in order, if they differ from what the reply said.
                let current = tip_rx.borrow().clone();
                let confirms = out.confirms.map(|c| *c).unwrap_or_default();
                let follow = order.replied(confirms, current.as_ref().map(|n| &n.tip));
                let mut lines = Vec::new();
                for (sh, status) in &follow.statuses {
                    lines.extend(notification_lines(&shared, sh, status));
                }
                if feed_all(&mut sink, lines).await.is_err() {
                    break "write failed".into();
                }
                // A tip to follow the reply is the current one (`replied` compares with it).
                if let (Some(_), Some(notice)) = (&follow.tip, &current) {
                    if feed_line(&mut sink, notice.line.clone()).await.is_err() {
                        break "write failed".into();
                    }
                }
                // Answers that are ready together go out in one write: the flush waits until
                // nothing else is ready (the last branch), at most 64 answers.
                unflushed += 1;
                if unflushed >= 64 {
                    unflushed = 0;
                    if flush(&mut sink).await.is_err() {
                        break "write failed".into();
                    }
                } else {
                    dirty = true;
                }
            }
            Some(ev) = ev_rx.recv() => {
                let SessionEvent::Status(change) = ev;
                let StatusChange { scripthash, status } = *change;
                if !order.status(&scripthash, &status) {
                    continue;
                }
                let lines = notification_lines(&shared, &scripthash, &status);
                if feed_all(&mut sink, lines).await.is_err() || flush(&mut sink).await.is_err() {
                    break "write failed".into();
                }
            }
            changed = tip_rx.changed() => {
                if changed.is_err() {
                    break "gateway shutting down".into();
                }
                // The notification was serialized once for all sessions: only the reference
                // is copied here.
                let current = tip_rx.borrow_and_update().clone();
                if let Some(notice) = current.filter(|n| order.tip_moved(&n.tip)) {
                    let line = notice.line.clone();
                    if feed_line(&mut sink, line).await.is_err() || flush(&mut sink).await.is_err() {
                        break "write failed".into();
                    }
                }
            }
            _ = &mut idle_timer, if can_read && idle.is_some() => {
                quiet_ticks += 1;
                if quiet_ticks > IDLE_TICKS {
                    break "idle timeout".into();
                }
                idle_timer.as_mut().reset(tokio::time::Instant::now() + tick);
            }
            line = stream.next(), if can_read => {
                event = true;
                let line = match line {
                    None => break "closed by wallet".into(),
                    Some(Err(e)) => {
                        // Over-long line or broken stream: say why, then close.
                        let resp = Response::err(Id::Null, RpcError::invalid_request(format!("{e}")));
                        let _ = write(&mut sink, resp.to_json()).await;
                        break format!("read error: {e}");
                    }
                    Some(Ok(line)) => line,
                };
                let incoming = match crate::protocol::parse_limited(&line, max_batch) {
                    Ok(i) => i,
                    Err(e) => {
                        if matches!(e, crate::protocol::ParseError::BatchTooLarge(_)) {
                            core.metrics.limit_rejected("batch");
                            shared.strike();
                        }
                        let resp = Response::err(e.id(), e.to_rpc_error());
                        if write(&mut sink, resp.to_json()).await.is_err() {
                            break "write failed".into();
                        }
                        continue;
                    }
                };
                match incoming {
                    Incoming::Single(m) => {
                        let req = match as_request(m) {
                            Ok(req) => req,
                            Err(resp) => {
                                if write(&mut sink, resp.to_json()).await.is_err() {
                                    break "write failed".into();
                                }
                                continue;
                            }
                        };
                        if !shared.client.try_spend(1.0) {
                            core.metrics.limit_rejected("rate");
                            shared.strike();
                            if let Some(id) = req.id {
                                let resp = Response::err(id, rate_limited());
                                if write(&mut sink, resp.to_json()).await.is_err() {
                                    break "write failed".into();
                                }
                            }
                            continue;
                        }
                        let read = read_request(&core, &shared, req);
                        // server.version is answered here, in order.
                        if let Some(resp) = version(&core, &shared, &read, &mut version_done) {
                            if let Some(line) = resp {
                                if write(&mut sink, line).await.is_err() {
                                    break "write failed".into();
                                }
                            }
                            continue;
                        }
                        note_subscription(&read, &mut order);
                        pending += 1;
                        let has_id = read.id.is_some();
                        let out_tx = outgoing(&mut out_tx, &mut out_rx, out_capacity);
                        // Polled once here: what is answered at once (local answers, headers
                        // from the verified chain, cache hits) costs no task; the rest goes on
                        // as its own task.
                        let mut answer = Box::pin(handle(core.clone(), shared.clone(), read));
                        match futures::FutureExt::now_or_never(&mut answer) {
                            Some((resp, confirms)) => {
                                let line = has_id.then(|| resp.to_json());
                                let out = Outgoing { line, confirms: boxed(confirms), done: 1 };
                                if let Err(e) = out_tx.try_send(out) {
                                    let out = e.into_inner();
                                    tokio::spawn(async move {
                                        let _ = out_tx.send(out).await;
                                    });
                                }
                            }
                            None => {
                                tokio::spawn(async move {
                                    let (resp, confirms) = answer.await;
                                    let line = has_id.then(|| resp.to_json());
                                    let confirms = boxed(confirms);
                                    let _ = out_tx.send(Outgoing { line, confirms, done: 1 }).await;
                                });
                            }
                        }
                    }
                    Incoming::Batch(items) => {
                        // Every item counts toward `max_pending_per_session`, answered or not:
                        // the loop reads no more until the whole batch has gone out.
                        let n = items.len();
                        let mut lines = Vec::new();
                        let mut remote = Vec::new();
                        let mut limited = false;
                        for item in items {
                            let req = match item.map_err(|(id, e)| Response::err(id.unwrap_or(Id::Null), e)).and_then(as_request) {
                                Ok(req) => req,
                                Err(resp) => {
                                    lines.push(resp.to_json());
                                    continue;
                                }
                            };
                            if !shared.client.try_spend(1.0) {
                                limited = true;
                                core.metrics.limit_rejected("rate");
                                if let Some(id) = req.id {
                                    lines.push(Response::err(id, rate_limited()).to_json());
                                }
                                continue;
                            }
                            let read = read_request(&core, &shared, req);
                            if let Some(resp) = version(&core, &shared, &read, &mut version_done) {
                                lines.extend(resp);
                                continue;
                            }
                            note_subscription(&read, &mut order);
                            remote.push(read);
                        }
                        if limited {
                            // One strike per batch, not per item.
                            shared.strike();
                        }
                        pending += n;
                        let core = core.clone();
                        let shared = shared.clone();
                        let out_tx = outgoing(&mut out_tx, &mut out_rx, out_capacity);
                        // At most `max_pending_per_session` items of a batch run at once; each
                        // answer is serialized as it comes, in order. Once the batch's answer
                        // holds `max_batch_answer_bytes`, the reads after it are answered with
                        // an error instead of their (dropped) answers.
                        let width = limits.max_pending_per_session;
                        let max_bytes = limits.max_batch_answer_bytes;
                        tokio::spawn(async move {
                            let mut answers = futures::stream::iter(remote.into_iter().map(|read| {
                                let core = core.clone();
                                let shared = shared.clone();
                                async move {
                                    let id = read.id.clone();
                                    // Reads and local answers may be dropped; a subscription's or a broadcast's
                                    // answer never is (the wallet must learn what took effect).
                                    let droppable = read.call.as_ref().is_ok_and(|c| matches!(c.kind(), Kind::Read | Kind::Local));
                                    let (resp, c) = handle(core, shared, read).await;
                                    let line = id.is_some().then(|| resp.to_json());
                                    (id, droppable, line, c)
                                }
                            }))
                            .buffered(width);
                            // The batch's answer line is built as answers come, not joined at
                            // the end (which would hold every answer twice).
                            let mut out = String::new();
                            for line in lines {
                                push_batch_item(&mut out, &line);
                            }
                            let mut confirms = Confirms::default();
                            let mut bytes = 0usize;
                            let mut dropped = false;
                            while let Some((id, droppable, line, c)) = answers.next().await {
                                confirms.merge(c);
                                let Some(line) = line else { continue };
                                if droppable && bytes.saturating_add(line.len()) > max_bytes {
                                    dropped = true;
                                    let id = id.unwrap_or(Id::Null);
                                    let err = over_limit(format!(
                                        "batch answer too large: at most {max_bytes} bytes; ask for less in one batch"
                                    ));
                                    push_batch_item(&mut out, &Response::err(id, err).to_json());
                                    continue;
                                }
                                bytes += line.len();
                                push_batch_item(&mut out, &line);
                            }
                            if dropped {
                                core.metrics.limit_rejected("batch_answer");
                                shared.strike();
                            }
                            let line = (!out.is_empty()).then(|| {
                                out.push(']');
                                out
                            });
                            let confirms = boxed(confirms);
                            let _ = out_tx.send(Outgoing { line, confirms, done: n }).await;
                        });
                    }
                }
            }
            // Nothing else is ready: send what was written. Yield once first, so that request
            // tasks about to answer can join this write.
            _ = std::future::ready(()), if dirty => {
                if !yielded {
                    yielded = true;
                    tokio::task::yield_now().await;
                    continue;
                }
                yielded = false;
                dirty = false;
                unflushed = 0;
                if flush(&mut sink).await.is_err() {
                    break "write failed".into();
                }
            }
        }
    };
    tracing::debug!(session = id, %peer, reason = %close_reason, "wallet disconnected");
    let subs: Vec<String> = shared
        .forms
        .lock()
        .map(|f| f.keys().map(|k| k.to_string()).collect())
        .unwrap_or_default();
    shared.client.unsubscribed(subs.len());
    // The connection no longer counts for its client, though request tasks may still run.
    shared.client.close();
    core.hub.drop_session(subs, id);
    core.count_session(-1);
    let _ = sink.close().await;
    if let Some(links) = links {
        links.close().await;
    }
}

/// The sender of finished requests, making the channel on first use.
fn outgoing(
    tx: &mut Option<mpsc::Sender<Outgoing>>,
    rx: &mut Option<mpsc::Receiver<Outgoing>>,
    capacity: usize,
) -> mpsc::Sender<Outgoing> {
    tx.get_or_insert_with(|| {
        let (tx, new_rx) = mpsc::channel(capacity);
        *rx = Some(new_rx);
        tx
    })
    .clone()
}

/// The next finished request; never, before the first request made the channel.
async fn recv_outgoing(rx: &mut Option<mpsc::Receiver<Outgoing>>) -> Option<Outgoing> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Appends one serialized message to a batch line being built (`[` before the first).
fn push_batch_item(out: &mut String, item: &str) {
    out.push(if out.is_empty() { '[' } else { ',' });
    out.push_str(item);
}

fn boxed(confirms: Confirms) -> Option<Box<Confirms>> {
    (confirms != Confirms::default()).then(|| Box::new(confirms))
}

/// Ticks of the idle timer per idle time.
const IDLE_TICKS: u32 = 4;

/// How long a write may wait for the wallet to read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs a write within [`WRITE_TIMEOUT`]. Most writes complete at once (the socket has
/// room): the timer (and the clock read it needs) is only set up for one that must wait.
async fn within_write_timeout(
    write: impl std::future::Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    let mut write = std::pin::pin!(write);
    if let std::task::Poll::Ready(r) = futures::poll!(write.as_mut()) {
        return r;
    }
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "write timed out",
        )),
    }
}

/// Queues a line without sending it; [`flush`] sends everything queued in one write.
async fn feed(sink: &mut FrameSink, line: String) -> std::io::Result<()> {
    within_write_timeout(sink.feed(line)).await
}

/// Like [`feed`], for a line shared with other sessions.
async fn feed_line(sink: &mut FrameSink, line: Arc<str>) -> std::io::Result<()> {
    within_write_timeout(feed_shared(sink, line)).await
}

async fn feed_all(sink: &mut FrameSink, lines: Vec<String>) -> std::io::Result<()> {
    for line in lines {
        feed(sink, line).await?;
    }
    Ok(())
}

async fn flush(sink: &mut FrameSink) -> std::io::Result<()> {
    within_write_timeout(sink.flush()).await
}

async fn write(sink: &mut FrameSink, line: String) -> std::io::Result<()> {
    feed(sink, line).await?;
    flush(sink).await
}

/// Marks subscription replies in flight so notifications wait for them.
fn note_subscription(read: &Read, order: &mut ReplyOrder) {
    let Ok(call) = &read.call else { return };
    match call.kind() {
        Kind::Headers => order.header_request(),
        Kind::Subscription => {
            if let Some(sh) = call.scripthash() {
                order.scripthash_request(sh);
            }
        }
        _ => {}
    }
}

fn notification_lines(shared: &Shared, sh: &str, status: &Value) -> Vec<String> {
    let Ok(forms) = shared.forms.lock() else {
        return Vec::new();
    };
    let Some(f) = forms.get(sh) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if f.by_scripthash {
        out.push(
            Notification {
                method: "blockchain.scripthash.subscribe".into(),
                params: vec![Value::String(sh.to_string()), status.clone()],
            }
            .to_json(),
        );
    }
    for a in &f.addresses {
        out.push(
            Notification {
                method: "blockchain.address.subscribe".into(),
                params: vec![Value::String(a.clone()), status.clone()],
            }
            .to_json(),
        );
    }
    out
}

/// Answers `server.version` in order: `None` when `read` is another request; else the line
/// to write (None for a request without an id).
fn version(core: &Core, shared: &Shared, read: &Read, done: &mut bool) -> Option<Option<String>> {
    let call = read.call.as_ref().ok()?;
    if !matches!(call.args, Args::Version(_)) {
        return None;
    }
    let id = read.id.clone().unwrap_or(Id::Null);
    let resp = if *done {
        Response::err(id, RpcError::bad_request("server.version already sent"))
    } else {
        match local::version(core, call) {
            Ok((v, answer)) => {
                *done = true;
                shared.protocol.store(encode_version(v), Ordering::Relaxed);
                Response::ok_value(id, &answer)
            }
            Err(e) => Response::err(id, e),
        }
    };
    Some(read.id.is_some().then(|| resp.to_json()))
}

/// Handles one request that is not `server.version`, within the request timeout, counted in
/// the metrics by method and outcome.
async fn handle(core: Arc<Core>, shared: Arc<Shared>, read: Read) -> (Response, Confirms) {
    let (core, shared) = (&core, &shared);
    let id = read.id.unwrap_or(Id::Null);
    let timeout = crate::config::secs(core.cfg.limits.request_timeout_secs);
    let fut = core.metrics.track_request(read.label, async {
        match read.call {
            Ok(call) => dispatch(core, shared, call).await,
            Err(e) => (Err(e), Confirms::default()),
        }
    });
    match tokio::time::timeout(timeout, fut).await {
        Ok((Ok(raw), confirms)) => {
            // A long answer (a history, a big transaction) costs by its size.
            shared.client.charge(answer_cost(raw.get().len()));
            shared.strikes.store(0, Ordering::Relaxed);
            (Response::ok(id, raw), confirms)
        }
        Ok((Err(e), confirms)) => (Response::err(id, e), confirms),
        Err(_) => (
            Response::err(id, unavailable("request timed out")),
            Confirms::default(),
        ),
    }
}

fn raw<T: serde::Serialize>(v: &T) -> Result<Box<RawValue>, RpcError> {
    serde_json::value::to_raw_value(v).map_err(|e| RpcError::internal(e.to_string()))
}

/// Runs a call by its kind. A subscription's reply always confirms (with None when it failed),
/// so the session's ordering state is released.
async fn dispatch(
    core: &Arc<Core>,
    shared: &Arc<Shared>,
    call: Call,
) -> (Result<Box<RawValue>, RpcError>, Confirms) {
    let mut confirms = Confirms::default();
    let result = match call.kind() {
        Kind::Local => local::answer(core, &call, shared.protocol()),
        Kind::Headers => {
            let tip = local::tip(core);
            confirms.headers = Some(tip.as_ref().ok().cloned());
            tip.and_then(|t| raw(&t.to_value()))
        }
        Kind::Subscription => {
            let res = subscribe(core, shared, &call).await;
            if let Some(sh) = call.scripthash() {
                let status = res.as_ref().ok().cloned();
                confirms.scripthashes.push((sh.to_string(), status));
            }
            res.and_then(|s| raw(&s))
        }
        Kind::Unsubscribe => unsubscribe(core, shared, &call),
        // Boxed: a read's future is several kilobytes, and every request in flight (thousands
        // of subscriptions at a wallet's start) would hold room for one.
        Kind::Read | Kind::Broadcast => {
            Box::pin(read(core, &call, shared.handle.links.as_ref())).await
        }
    };
    (result, confirms)
}

/// A routed read, in the form the wallet asked for.
async fn read(
    core: &Core,
    call: &Call,
    links: Option<&Arc<Links>>,
) -> Result<Box<RawValue>, RpcError> {
    let answer = core.read_for(call, links).await?;
    match call.args {
        // id_from_pos is always asked with its merkle branch (what proves the txid); a wallet
        // that did not ask for the branch gets the txid alone.
        Args::IdFromPos { merkle: false, .. } => {
            let v: Value = crate::protocol::from_raw(&answer)?;
            raw(&v.get("tx_hash").cloned().unwrap_or(Value::Null))
        }
        _ => Ok(answer),
    }
}

async fn subscribe(core: &Arc<Core>, shared: &Arc<Shared>, call: &Call) -> Result<Value, RpcError> {
    let Some(sh) = call.scripthash() else {
        return Err(RpcError::invalid_params("missing scripthash"));
    };
    {
        let Ok(mut forms) = shared.forms.lock() else {
            return Err(RpcError::internal("session state poisoned"));
        };
        if !forms.contains_key(sh) {
            if forms.len() >= core.cfg.limits.max_subscriptions_per_session {
                core.metrics.limit_rejected("subscriptions");
                shared.strike();
                return Err(over_limit("too many subscriptions on this connection"));
            }
            if !shared.client.try_subscribe() {
                core.metrics.limit_rejected("subscriptions");
                shared.strike();
                return Err(over_limit("too many subscriptions from your address"));
            }
        }
        let f = forms.entry(Box::from(sh)).or_default();
        match &call.address {
            Some(a) => {
                if !f.addresses.contains(a) {
                    f.addresses.push(a.clone());
                }
            }
            None => f.by_scripthash = true,
        }
    }
    match core
        .hub
        .subscribe(sh, shared.handle.clone(), &shared.load)
        .await
    {
        Ok(status) => Ok(status),
        Err(e) => {
            if let Ok(mut forms) = shared.forms.lock() {
                if forms.remove(sh).is_some() {
                    shared.client.unsubscribed(1);
                }
            }
            if e.code == SERVER_BUSY {
                core.metrics.limit_rejected("subscriptions_global");
            }
            Err(e)
        }
    }
}

fn unsubscribe(core: &Core, shared: &Shared, call: &Call) -> Result<Box<RawValue>, RpcError> {
    let Some(sh) = call.scripthash() else {
        return Err(RpcError::invalid_params("missing scripthash"));
    };
    let Ok(mut forms) = shared.forms.lock() else {
        return Err(RpcError::internal("session state poisoned"));
    };
    let Some(f) = forms.get_mut(sh) else {
        return raw(&false);
    };
    let had = match &call.address {
        Some(a) => match f.addresses.iter().position(|x| x == a) {
            Some(i) => {
                f.addresses.swap_remove(i);
                true
            }
            None => false,
        },
        None => std::mem::take(&mut f.by_scripthash),
    };
    if f.addresses.is_empty() && !f.by_scripthash {
        forms.remove(sh);
        shared.client.unsubscribed(1);
        core.hub.unsubscribe(sh, shared.id);
    }
    raw(&had)
}
