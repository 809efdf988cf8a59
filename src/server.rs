//! The wallet-facing side: one [`Session`] per wallet connection.
//!
//! A session reads messages, answers local methods at once (in order, so `server.version`
//! takes effect before what follows it), and runs every other request as its own task so a
//! slow upstream answer never holds up the rest. At most `max_pending_per_session` requests are
//! in flight; past that the session stops reading (backpressure) instead of failing requests.
//! All writes go through the session loop, which also orders subscription replies before the
//! notifications that follow them.

use futures::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::gateway::Ctx;
use crate::hub::{SessionEvent, SessionHandle, SessionId};
use crate::pool::Tip;
use crate::protocol::error::{BAD_REQUEST, EXCESSIVE_RESOURCE_USAGE};
use crate::protocol::methods::{self, format_version, negotiate, Kind, PROTOCOL_MAX, PROTOCOL_MIN};
use crate::protocol::{Id, Incoming, Message, Request, Response, RpcError};
use crate::router::{unavailable, Policy};
use crate::transport::Framed;

/// What a reply carries besides its bytes: subscriptions it confirms, so the session loop can
/// order later notifications after it.
#[derive(Debug, Default)]
struct Confirms {
    /// Scripthash subscription replies: (scripthash, status, or None if it failed).
    scripthashes: Vec<(String, Option<Value>)>,
    /// A `blockchain.headers.subscribe` reply: the tip it carried, or None if it failed.
    headers: Option<Option<Tip>>,
}

/// One finished request (or batch) for the session loop to write.
struct Outgoing {
    line: Option<String>,
    confirms: Confirms,
    /// How many requests this completes.
    done: usize,
}

/// How a subscription was asked for, so notifications use the wallet's own form.
#[derive(Debug, Default)]
struct Forms {
    by_scripthash: bool,
    addresses: HashSet<String>,
}

/// Shared, read-mostly state of a session that request tasks consult.
pub struct SessionShared {
    /// The session id.
    pub id: SessionId,
    /// Negotiated protocol as major*10000 + minor*100 + patch.
    protocol: AtomicU32,
    handle: SessionHandle,
    /// Subscription forms by scripthash.
    forms: std::sync::Mutex<HashMap<String, Forms>>,
}

fn encode_version(v: (u32, u32, u32)) -> u32 {
    v.0 * 10000 + v.1 * 100 + v.2
}

impl SessionShared {
    fn protocol(&self) -> (u32, u32, u32) {
        let p = self.protocol.load(Ordering::Relaxed);
        (p / 10000, (p / 100) % 100, p % 100)
    }
}

/// Serves one wallet connection until it closes, idles out, or the gateway shuts down.
pub async fn run_session(ctx: Arc<Ctx>, framed: Framed, peer: SocketAddr) {
    let Framed {
        mut sink,
        mut stream,
    } = framed;
    let id = ctx.next_session_id();
    let limits = &ctx.cfg.limits;
    let (ev_tx, mut ev_rx) = mpsc::channel::<SessionEvent>(4096);
    let kill = CancellationToken::new();
    let shared = Arc::new(SessionShared {
        id,
        protocol: AtomicU32::new(encode_version(PROTOCOL_MIN)),
        handle: SessionHandle {
            id,
            tx: ev_tx,
            kill: kill.clone(),
        },
        forms: std::sync::Mutex::new(HashMap::new()),
    });
    let (out_tx, mut out_rx) = mpsc::channel::<Outgoing>(limits.max_pending_per_session + 8);
    let mut pending = 0usize;
    let mut unflushed = 0usize;
    let mut version_done = false;
    let mut tip_rx = ctx.pool.tip_watch();
    // Header subscription state: None = not subscribed; Some(None) = reply in flight.
    let mut headers_sent: Option<Option<Tip>> = None;
    let mut headers_pending_reply = 0usize;
    // Scripthash subscriptions whose reply is in flight, with the newest status seen meanwhile.
    let mut sh_in_flight: HashMap<String, (usize, Option<Value>)> = HashMap::new();
    let idle = crate::config::secs(limits.idle_timeout_secs);
    let idle = if idle.is_zero() {
        Duration::from_secs(u64::MAX / 4)
    } else {
        idle
    };
    tracing::debug!(session = id, %peer, "wallet connected");
    ctx.metrics_session(1);

    let close_reason: String = loop {
        let can_read = pending < limits.max_pending_per_session;
        tokio::select! {
            biased;
            _ = kill.cancelled() => break "too slow to take notifications".into(),
            _ = ctx.shutdown.cancelled() => break "gateway shutting down".into(),
            Some(out) = out_rx.recv() => {
                pending = pending.saturating_sub(out.done);
                if let Some(line) = out.line {
                    if feed(&mut sink, line).await.is_err() {
                        break "write failed".into();
                    }
                }
                // Notifications that arrived while a subscription reply was in flight follow
                // the reply, in order, if they differ from what the reply said.
                let mut follow = Vec::new();
                for (sh, status) in out.confirms.scripthashes {
                    if let Some((n, newest)) = sh_in_flight.get_mut(&sh) {
                        *n = n.saturating_sub(1);
                        let newest = newest.take();
                        if *n == 0 {
                            sh_in_flight.remove(&sh);
                        }
                        if let (Some(newest), Some(status)) = (newest, status) {
                            if newest != status {
                                follow.push((sh, newest));
                            }
                        }
                    }
                }
                if let Some(reply) = out.confirms.headers {
                    headers_pending_reply = headers_pending_reply.saturating_sub(1);
                    match reply {
                        Some(tip) => headers_sent = Some(Some(tip)),
                        None if matches!(headers_sent, Some(None)) && headers_pending_reply == 0 => headers_sent = None,
                        None => {}
                    }
                }
                let mut failed = false;
                for (sh, status) in follow {
                    for line in notification_lines(&shared, &sh, &status) {
                        if feed(&mut sink, line).await.is_err() {
                            failed = true;
                        }
                    }
                }
                if failed {
                    break "write failed".into();
                }
                if headers_pending_reply == 0 {
                    if let Some(Some(sent)) = &headers_sent {
                        let current = tip_rx.borrow().clone();
                        if let Some(cur) = current {
                            if &cur != sent {
                                headers_sent = Some(Some(cur.clone()));
                                if feed(&mut sink, header_notification(&cur)).await.is_err() {
                                    break "write failed".into();
                                }
                            }
                        }
                    }
                }
                // Answers that are ready together go out in one write: let the request
                // tasks that are ready run first, so their answers join this one.
                unflushed += 1;
                if unflushed < 64 && out_rx.is_empty() {
                    tokio::task::yield_now().await;
                }
                if unflushed >= 64 || out_rx.is_empty() {
                    unflushed = 0;
                    if flush(&mut sink).await.is_err() {
                        break "write failed".into();
                    }
                }
            }
            Some(ev) = ev_rx.recv() => {
                let SessionEvent::Status { scripthash, status } = ev;
                if let Some((_, newest)) = sh_in_flight.get_mut(&*scripthash) {
                    *newest = Some(status);
                    continue;
                }
                let mut failed = false;
                for line in notification_lines(&shared, &scripthash, &status) {
                    if write(&mut sink, line).await.is_err() {
                        failed = true;
                    }
                }
                if failed {
                    break "write failed".into();
                }
            }
            changed = tip_rx.changed() => {
                if changed.is_err() {
                    break "gateway shutting down".into();
                }
                let current = tip_rx.borrow_and_update().clone();
                if headers_pending_reply > 0 {
                    continue;
                }
                if let (Some(Some(sent)), Some(cur)) = (&headers_sent, current) {
                    if &cur != sent {
                        headers_sent = Some(Some(cur.clone()));
                        if write(&mut sink, header_notification(&cur)).await.is_err() {
                            break "write failed".into();
                        }
                    }
                }
            }
            line = tokio::time::timeout(idle, stream.next()), if can_read => {
                let line = match line {
                    Err(_) => break "idle timeout".into(),
                    Ok(None) => break "closed by wallet".into(),
                    Ok(Some(Err(e))) => {
                        // Over-long line or broken stream: say why, then close.
                        let resp = Response::err(Id::Null, RpcError::invalid_request(format!("{e}")));
                        let _ = write(&mut sink, resp.to_json()).await;
                        break format!("read error: {e}");
                    }
                    Ok(Some(Ok(line))) => line,
                };
                let incoming = match crate::protocol::parse(&line) {
                    Ok(i) => i,
                    Err(e) => {
                        let resp = Response::err(e.id(), e.to_rpc_error());
                        if write(&mut sink, resp.to_json()).await.is_err() {
                            break "write failed".into();
                        }
                        continue;
                    }
                };
                match incoming {
                    Incoming::Single(Message::Request(req)) => {
                        // Local, order-sensitive methods are answered here, in order.
                        if req.method == "server.version" {
                            let resp = version(&ctx, &shared, &req, &mut version_done);
                            if write(&mut sink, resp.to_json()).await.is_err() {
                                break "write failed".into();
                            }
                            continue;
                        }
                        note_subscription(&req, &mut headers_sent, &mut headers_pending_reply, &mut sh_in_flight, &ctx);
                        pending += 1;
                        let ctx = ctx.clone();
                        let shared = shared.clone();
                        let out_tx = out_tx.clone();
                        tokio::spawn(async move {
                            let has_id = req.id.is_some();
                            let (resp, confirms) = handle(&ctx, &shared, req).await;
                            let line = has_id.then(|| resp.to_json());
                            let _ = out_tx.send(Outgoing { line, confirms, done: 1 }).await;
                        });
                    }
                    Incoming::Single(Message::Notification(n)) => {
                        // A request without an id: run it, answer nothing.
                        let req = Request { id: None, method: n.method, params: n.params, params_object: false };
                        pending += 1;
                        let ctx = ctx.clone();
                        let shared = shared.clone();
                        let out_tx = out_tx.clone();
                        tokio::spawn(async move {
                            let (_resp, confirms) = handle(&ctx, &shared, req).await;
                            let _ = out_tx.send(Outgoing { line: None, confirms, done: 1 }).await;
                        });
                    }
                    Incoming::Single(Message::Response(r)) => {
                        let resp = Response::err(r.id, RpcError::invalid_request("a wallet sends requests, not responses"));
                        if write(&mut sink, resp.to_json()).await.is_err() {
                            break "write failed".into();
                        }
                    }
                    Incoming::Batch(items) => {
                        let mut reqs = Vec::with_capacity(items.len());
                        let mut errors = Vec::new();
                        for item in items {
                            match item {
                                Ok(Message::Request(r)) => reqs.push(r),
                                Ok(Message::Notification(n)) => reqs.push(Request { id: None, method: n.method, params: n.params, params_object: false }),
                                Ok(Message::Response(r)) => errors.push(Response::err(r.id, RpcError::invalid_request("a wallet sends requests, not responses"))),
                                Err((id, e)) => errors.push(Response::err(id.unwrap_or(Id::Null), e)),
                            }
                        }
                        let mut local = Vec::new();
                        let mut remote = Vec::new();
                        for r in reqs {
                            if r.method == "server.version" {
                                local.push((r.id.is_some(), version(&ctx, &shared, &r, &mut version_done)));
                            } else {
                                note_subscription(&r, &mut headers_sent, &mut headers_pending_reply, &mut sh_in_flight, &ctx);
                                remote.push(r);
                            }
                        }
                        let n = remote.len();
                        pending += n;
                        let ctx = ctx.clone();
                        let shared = shared.clone();
                        let out_tx = out_tx.clone();
                        tokio::spawn(async move {
                            let results = futures::future::join_all(remote.into_iter().map(|r| {
                                let ctx = ctx.clone();
                                let shared = shared.clone();
                                async move {
                                    let has_id = r.id.is_some();
                                    let (resp, c) = handle(&ctx, &shared, r).await;
                                    (has_id, resp, c)
                                }
                            })).await;
                            let mut confirms = Confirms::default();
                            let mut lines: Vec<String> = errors.iter().map(Response::to_json).collect();
                            lines.extend(local.iter().filter(|(has_id, _)| *has_id).map(|(_, r)| r.to_json()));
                            for (has_id, resp, c) in results {
                                if has_id {
                                    lines.push(resp.to_json());
                                }
                                confirms.scripthashes.extend(c.scripthashes);
                                if c.headers.is_some() {
                                    confirms.headers = c.headers;
                                }
                            }
                            let line = (!lines.is_empty()).then(|| crate::protocol::batch_to_json(lines));
                            let _ = out_tx.send(Outgoing { line, confirms, done: n }).await;
                        });
                    }
                }
            }
        }
    };
    tracing::debug!(session = id, %peer, reason = %close_reason, "wallet disconnected");
    let subs: Vec<String> = shared
        .forms
        .lock()
        .map(|f| f.keys().cloned().collect())
        .unwrap_or_default();
    ctx.hub.drop_session(subs, id);
    ctx.metrics_session(-1);
    let _ = sink.close().await;
}

/// Queues a line without sending it; [`flush`] sends everything queued in one write.
async fn feed(sink: &mut crate::transport::FrameSink, line: String) -> std::io::Result<()> {
    match tokio::time::timeout(Duration::from_secs(60), sink.feed(line)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "write timed out",
        )),
    }
}

async fn flush(sink: &mut crate::transport::FrameSink) -> std::io::Result<()> {
    match tokio::time::timeout(Duration::from_secs(60), sink.flush()).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "write timed out",
        )),
    }
}

async fn write(sink: &mut crate::transport::FrameSink, line: String) -> std::io::Result<()> {
    match tokio::time::timeout(Duration::from_secs(60), sink.send(line)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "write timed out",
        )),
    }
}

/// Marks subscription replies in flight so notifications wait for them.
fn note_subscription(
    req: &Request,
    headers_sent: &mut Option<Option<Tip>>,
    headers_pending_reply: &mut usize,
    sh_in_flight: &mut HashMap<String, (usize, Option<Value>)>,
    ctx: &Ctx,
) {
    match req.method.as_str() {
        "blockchain.headers.subscribe" => {
            if headers_sent.is_none() {
                *headers_sent = Some(None);
            }
            *headers_pending_reply += 1;
        }
        "blockchain.scripthash.subscribe" | "blockchain.address.subscribe" => {
            if let Some(sh) = subscription_scripthash(ctx, req) {
                sh_in_flight.entry(sh).or_insert((0, None)).0 += 1;
            }
        }
        _ => {}
    }
}

fn subscription_scripthash(ctx: &Ctx, req: &Request) -> Option<String> {
    let first = req.params.first()?.as_str()?;
    if req.method.starts_with("blockchain.address.") {
        crate::address::script_hash(first, ctx.network).ok()
    } else {
        Some(first.to_ascii_lowercase())
    }
}

fn header_notification(tip: &Tip) -> String {
    crate::protocol::Notification {
        method: "blockchain.headers.subscribe".into(),
        params: vec![tip.to_value()],
    }
    .to_json()
}

fn notification_lines(shared: &SessionShared, sh: &str, status: &Value) -> Vec<String> {
    let Ok(forms) = shared.forms.lock() else {
        return Vec::new();
    };
    let Some(f) = forms.get(sh) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if f.by_scripthash {
        out.push(
            crate::protocol::Notification {
                method: "blockchain.scripthash.subscribe".into(),
                params: vec![Value::String(sh.to_string()), status.clone()],
            }
            .to_json(),
        );
    }
    for a in &f.addresses {
        out.push(
            crate::protocol::Notification {
                method: "blockchain.address.subscribe".into(),
                params: vec![Value::String(a.clone()), status.clone()],
            }
            .to_json(),
        );
    }
    out
}

fn version(ctx: &Ctx, shared: &SessionShared, req: &Request, done: &mut bool) -> Response {
    let id = req.id.clone().unwrap_or(Id::Null);
    if *done {
        return Response::err(id, RpcError::bad_request("server.version already sent"));
    }
    let offered = req.params.get(1).cloned().unwrap_or(Value::Null);
    match negotiate(&offered, (PROTOCOL_MIN, PROTOCOL_MAX)) {
        Ok(v) => {
            *done = true;
            shared.protocol.store(encode_version(v), Ordering::Relaxed);
            Response::ok_value(id, &json!([ctx.software(), format_version(v)]))
        }
        Err(e) => Response::err(id, RpcError::bad_request(e)),
    }
}

/// Handles one request that is not `server.version`.
async fn handle(ctx: &Arc<Ctx>, shared: &Arc<SessionShared>, req: Request) -> (Response, Confirms) {
    let id = req.id.clone().unwrap_or(Id::Null);
    let timeout = crate::config::secs(ctx.cfg.limits.request_timeout_secs);
    let fut = ctx
        .metrics
        .track_request(methods::lookup(&req.method), dispatch(ctx, shared, req));
    match tokio::time::timeout(timeout, fut).await {
        Ok((Ok(raw), confirms)) => (Response::ok(id, raw), confirms),
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

fn param_str<'a>(req: &'a Request, i: usize, what: &str) -> Result<&'a str, RpcError> {
    req.params
        .get(i)
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::invalid_params(format!("missing or invalid {what}")))
}

fn check_scripthash(sh: &str) -> Result<String, RpcError> {
    if sh.len() == 64 && sh.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(sh.to_ascii_lowercase())
    } else {
        Err(RpcError::bad_request(format!(
            "{sh} is not a valid script hash"
        )))
    }
}

async fn dispatch(
    ctx: &Arc<Ctx>,
    shared: &Arc<SessionShared>,
    req: Request,
) -> (Result<Box<RawValue>, RpcError>, Confirms) {
    let sub_key = matches!(
        req.method.as_str(),
        "blockchain.scripthash.subscribe" | "blockchain.address.subscribe"
    )
    .then(|| subscription_scripthash(ctx, &req))
    .flatten();
    let is_headers = req.method == "blockchain.headers.subscribe";
    let (result, mut confirms) = dispatch_inner(ctx, shared, req).await;
    if let Some(key) = sub_key {
        if confirms.scripthashes.is_empty() {
            confirms.scripthashes.push((key, None));
        }
    }
    if is_headers && confirms.headers.is_none() {
        confirms.headers = Some(None);
    }
    (result, confirms)
}

async fn dispatch_inner(
    ctx: &Arc<Ctx>,
    shared: &Arc<SessionShared>,
    mut req: Request,
) -> (Result<Box<RawValue>, RpcError>, Confirms) {
    let mut confirms = Confirms::default();
    if req.params_object {
        return (
            Err(RpcError::invalid_params(
                "named parameters are not supported; send a list",
            )),
            confirms,
        );
    }
    let Some(info) = methods::lookup(&req.method) else {
        return (Err(RpcError::method_not_found(&req.method)), confirms);
    };
    let proto = shared.protocol();
    if info.since > (proto.0, proto.1)
        || info.until.is_some_and(|u| (proto.0, proto.1) > u) && !info.address
    {
        return (Err(RpcError::method_not_found(&req.method)), confirms);
    }
    // Old address methods: convert the address, remember it for notifications.
    let mut address = None;
    if info.address {
        let addr = match param_str(&req, 0, "address") {
            Ok(a) => a.to_string(),
            Err(e) => return (Err(e), confirms),
        };
        let sh = match crate::address::script_hash(&addr, ctx.network) {
            Ok(sh) => sh,
            Err(e) => return (Err(RpcError::bad_request(e.to_string())), confirms),
        };
        let Some(twin) = methods::scripthash_twin(&req.method) else {
            return (Err(RpcError::method_not_found(&req.method)), confirms);
        };
        req.method = twin.to_string();
        req.params[0] = Value::String(sh);
        address = Some(addr);
    }
    let result = match req.method.as_str() {
        "server.features" => raw(&ctx.features()),
        "server.banner" => raw(&ctx.banner()),
        "server.donation_address" => raw(&""),
        "server.ping" => raw(&Value::Null),
        "server.peers.subscribe" => raw(&Vec::<Value>::new()),
        "server.add_peer" => raw(&false),
        "blockchain.headers.subscribe" => match ctx.pool.best_tip() {
            Some(tip) => {
                confirms.headers = Some(Some(tip.clone()));
                raw(&tip.to_value())
            }
            None => Err(unavailable("no upstream has announced a tip yet")),
        },
        "blockchain.scripthash.subscribe" => match subscribe(ctx, shared, &req, address).await {
            Ok((sh, status)) => {
                confirms.scripthashes.push((sh, Some(status.clone())));
                raw(&status)
            }
            Err(e) => Err(e),
        },
        "blockchain.scripthash.unsubscribe" => unsubscribe(ctx, shared, &req, address),
        "blockchain.block.header" => block_header(ctx, &req),
        "blockchain.block.headers" => block_headers(ctx, &req, shared.protocol()),
        _ => read(ctx, &req, info.kind).await,
    };
    (result, confirms)
}

async fn subscribe(
    ctx: &Arc<Ctx>,
    shared: &Arc<SessionShared>,
    req: &Request,
    address: Option<String>,
) -> Result<(String, Value), RpcError> {
    let sh = check_scripthash(param_str(req, 0, "scripthash")?)?;
    {
        let Ok(mut forms) = shared.forms.lock() else {
            return Err(RpcError::internal("session state poisoned"));
        };
        if !forms.contains_key(&sh) && forms.len() >= ctx.cfg.limits.max_subscriptions_per_session {
            return Err(RpcError::new(
                EXCESSIVE_RESOURCE_USAGE,
                "too many subscriptions on this connection",
            ));
        }
        let f = forms.entry(sh.clone()).or_default();
        match &address {
            Some(a) => {
                f.addresses.insert(a.clone());
            }
            None => f.by_scripthash = true,
        }
    }
    match ctx.hub.subscribe(&sh, shared.handle.clone()).await {
        Ok(status) => Ok((sh, status)),
        Err(e) => {
            if let Ok(mut forms) = shared.forms.lock() {
                forms.remove(&sh);
            }
            Err(e)
        }
    }
}

fn unsubscribe(
    ctx: &Ctx,
    shared: &SessionShared,
    req: &Request,
    address: Option<String>,
) -> Result<Box<RawValue>, RpcError> {
    let sh = check_scripthash(param_str(req, 0, "scripthash")?)?;
    let Ok(mut forms) = shared.forms.lock() else {
        return Err(RpcError::internal("session state poisoned"));
    };
    let Some(f) = forms.get_mut(&sh) else {
        return raw(&false);
    };
    let had = match &address {
        Some(a) => f.addresses.remove(a),
        None => std::mem::take(&mut f.by_scripthash),
    };
    if f.addresses.is_empty() && !f.by_scripthash {
        forms.remove(&sh);
        ctx.hub.unsubscribe(&sh, shared.id);
    }
    raw(&had)
}

/// A read routed to upstreams, translated between the wallet's protocol version and what
/// upstreams speak.
async fn read(ctx: &Arc<Ctx>, req: &Request, kind: Kind) -> Result<Box<RawValue>, RpcError> {
    let policy = ctx.cfg.policy(&req.method);
    let policy = if kind == Kind::Broadcast && policy == Policy::Local {
        Policy::Broadcast
    } else {
        policy
    };
    match req.method.as_str() {
        "blockchain.scripthash.get_balance"
        | "blockchain.scripthash.get_history"
        | "blockchain.scripthash.get_mempool"
        | "blockchain.scripthash.listunspent" => {
            check_scripthash(param_str(req, 0, "scripthash")?)?;
        }
        "blockchain.relayfee" => {
            // Removed in 1.6 upstream: fall back to mempool.get_info's minrelaytxfee.
            return match ctx
                .router
                .route(policy, "blockchain.relayfee", vec![])
                .await
            {
                Ok(v) => Ok(v),
                Err(e) if e.code == crate::protocol::error::METHOD_NOT_FOUND => {
                    let info = ctx.router.route(policy, "mempool.get_info", vec![]).await?;
                    let v: Value = crate::protocol::from_raw(&info)?;
                    raw(&v.get("minrelaytxfee").cloned().unwrap_or(json!(0.00001)))
                }
                Err(e) => Err(e),
            };
        }
        "mempool.get_info" => {
            return match ctx.router.route(policy, "mempool.get_info", vec![]).await {
                Ok(v) => Ok(v),
                Err(e) if e.code == crate::protocol::error::METHOD_NOT_FOUND => {
                    let fee = ctx
                        .router
                        .route(policy, "blockchain.relayfee", vec![])
                        .await?;
                    let fee: Value = crate::protocol::from_raw(&fee)?;
                    raw(&json!({
                        "mempoolminfee": fee,
                        "minrelaytxfee": fee,
                        "incrementalrelayfee": fee,
                    }))
                }
                Err(e) => Err(e),
            };
        }
        "blockchain.estimatefee" => {
            let target = req
                .params
                .first()
                .and_then(Value::as_u64)
                .ok_or_else(|| RpcError::invalid_params("missing or invalid block target"))?;
            // The 1.6 `mode` argument is sent only when given; servers before 1.6 refuse it.
            let mut params = vec![json!(target)];
            if let Some(mode) = req.params.get(1).filter(|m| !m.is_null()) {
                params.push(mode.clone());
            }
            return match ctx.router.route(policy, &req.method, params.clone()).await {
                Err(e) if params.len() == 2 && e.code != BAD_REQUEST => {
                    ctx.router
                        .route(policy, &req.method, vec![json!(target)])
                        .await
                }
                other => other,
            };
        }
        "blockchain.transaction.id_from_pos" => {
            // Always fetch the merkle branch: it is what proves the txid.
            let height = req.params.first().cloned().unwrap_or(Value::Null);
            let pos = req.params.get(1).cloned().unwrap_or(Value::Null);
            let want_merkle = req.params.get(2).and_then(Value::as_bool).unwrap_or(false);
            let params = vec![height, pos, Value::Bool(true)];
            let v = cached_route(ctx, policy, &req.method, params).await?;
            if want_merkle {
                return Ok(v);
            }
            let v: Value = crate::protocol::from_raw(&v)?;
            return raw(&v.get("tx_hash").cloned().unwrap_or(Value::Null));
        }
        _ => {}
    }
    let res = cached_route(ctx, policy, &req.method, req.params.clone()).await;
    match (&res, req.method.as_str()) {
        (Err(e), "blockchain.scripthash.get_mempool")
            if e.code == crate::protocol::error::METHOD_NOT_FOUND =>
        {
            // electrs has no get_mempool: derive it from the history's mempool part.
            let h = ctx
                .router
                .route(
                    policy,
                    "blockchain.scripthash.get_history",
                    req.params.clone(),
                )
                .await?;
            let hist: Vec<Value> = crate::protocol::from_raw(&h)?;
            let mempool: Vec<Value> = hist
                .into_iter()
                .filter(|e| {
                    e.get("height")
                        .and_then(Value::as_i64)
                        .is_some_and(|h| h <= 0)
                })
                .collect();
            raw(&mempool)
        }
        _ => res,
    }
}

/// Routes a read, answering verified immutable answers from the cache.
async fn cached_route(
    ctx: &Ctx,
    policy: Policy,
    method: &str,
    params: Vec<Value>,
) -> Result<Box<RawValue>, RpcError> {
    let consensus = ctx.pool.consensus();
    if crate::cache::AnswerCache::is_cacheable(method, &params) {
        if let Some(hit) = ctx.cache.get(consensus, method, &params) {
            ctx.metrics.cache_hit(method);
            return Ok(hit);
        }
        ctx.metrics.cache_miss(method);
    }
    let v = ctx.router.route(policy, method, params.clone()).await?;
    ctx.cache.put(consensus, method, &params, &v);
    Ok(v)
}

fn param_height(
    req: &Request,
    i: usize,
    what: &str,
    default: Option<u32>,
) -> Result<u32, RpcError> {
    match req.params.get(i) {
        None | Some(Value::Null) => {
            default.ok_or_else(|| RpcError::invalid_params(format!("missing {what}")))
        }
        Some(v) => v
            .as_u64()
            .and_then(|h| u32::try_from(h).ok())
            .ok_or_else(|| RpcError::bad_request(format!("{what} {v} is not a valid height"))),
    }
}

/// `blockchain.block.header(height, cp_height=0)` from the verified chain, with a header
/// proof computed locally when `cp_height` is given.
fn block_header(ctx: &Ctx, req: &Request) -> Result<Box<RawValue>, RpcError> {
    let height = param_height(req, 0, "height", None)?;
    let cp_height = param_height(req, 1, "cp_height", Some(0))?;
    ctx.pool.consensus().with_chain(|c| {
        let hex = c
            .header_hex(height)
            .ok_or_else(|| RpcError::bad_request(format!("height {height} out of range")))?;
        if cp_height == 0 {
            return raw(&hex);
        }
        let proof = c
            .header_proof(height, cp_height)
            .map_err(|e| RpcError::bad_request(e.to_string()))?;
        raw(&json!({"header": hex, "branch": proof.branch, "root": proof.root}))
    })
}

/// `blockchain.block.headers(start, count, cp_height=0)` from the verified chain: at most
/// 2016 headers, as `hex` up to protocol 1.5 and as a `headers` list from 1.6.
fn block_headers(
    ctx: &Ctx,
    req: &Request,
    wallet: (u32, u32, u32),
) -> Result<Box<RawValue>, RpcError> {
    const MAX: u32 = 2016;
    let start = param_height(req, 0, "start_height", None)?;
    let count = param_height(req, 1, "count", None)?.min(MAX);
    let cp_height = param_height(req, 2, "cp_height", Some(0))?;
    ctx.pool.consensus().with_chain(|c| {
        let tip = c.height();
        let count = if start > tip {
            0
        } else {
            count.min(tip - start + 1)
        };
        let mut out = serde_json::Map::new();
        out.insert("count".into(), json!(count));
        out.insert("max".into(), json!(MAX));
        let hex = c.headers_hex(start, count);
        if (wallet.0, wallet.1) >= (1, 6) {
            let list: Vec<Value> = (0..count as usize)
                .map(|i| Value::String(hex[i * 160..(i + 1) * 160].to_string()))
                .collect();
            out.insert("headers".into(), Value::Array(list));
        } else {
            out.insert("hex".into(), Value::String(hex));
        }
        if count > 0 && cp_height > 0 {
            let proof = c
                .header_proof(start + count - 1, cp_height)
                .map_err(|e| RpcError::bad_request(e.to_string()))?;
            out.insert("branch".into(), json!(proof.branch));
            out.insert("root".into(), json!(proof.root));
        }
        raw(&out)
    })
}
