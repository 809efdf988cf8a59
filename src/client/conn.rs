//! The connection task and the state it shares with callers.
//!
//! One background task per client owns the connection: a writer draining a queue of outgoing
//! lines, a reader dispatching each incoming message, and a keepalive. Callers never touch the
//! socket: they register a *pending* entry under a fresh id and queue their line, all under one
//! lock, and then await a oneshot answer. Because registering and the state check happen under
//! the same lock that the task takes to fail everything when the link drops, a call is either
//! refused at once or answered or failed; it never hangs.
//!
//! Subscriptions live in a table keyed by method and params. The reader itself applies
//! subscription answers to the table before it reads the next message, so an initial value,
//! a re-subscription answer and a notification are always seen in the order the server sent
//! them. The table survives reconnects: after a new `server.version`, every subscription is
//! sent again and a changed value is delivered to its subscribers.

use futures::future::join_all;
use futures::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{ClientConfig, ClientError, ClientEvent, ConnectionState, ServerInfo, Subscription};
use crate::protocol::methods::parse_version;
use crate::protocol::{
    batch_to_json, parse, Id, Incoming, Message, Notification, Request, Response, RpcError,
    SubscriptionKey,
};
use crate::transport::{FrameSink, FrameStream, Framed};

/// The server's answer to one request: its result or its error object.
pub(crate) type Answer = Result<Box<RawValue>, RpcError>;
/// What a waiting caller receives: the answer, or why there is none.
type Reply = Result<Answer, ClientError>;

const SCRIPTHASH_SUBSCRIBE: &str = "blockchain.scripthash.subscribe";
const SCRIPTHASH_UNSUBSCRIBE: &str = "blockchain.scripthash.unsubscribe";

/// A request waiting for its answer.
enum Pending {
    /// A plain call (or one member of a batch).
    Call(oneshot::Sender<Reply>),
    /// A subscribe request, first or repeated after a reconnect: its answer updates the
    /// subscription table before anyone else sees it.
    Subscribe {
        key: Arc<SubscriptionKey>,
        reply: oneshot::Sender<Reply>,
    },
    /// A request whose answer nobody needs (unsubscribe).
    Ignore,
}

/// How a connection closed for a notification flood is described (the start of its reason).
pub const NOTIFICATION_FLOOD: &str = "notification flood";

/// Where a subscription's values go to one local subscriber.
type SubscriberTx = futures::channel::mpsc::Sender<Value>;

/// One server subscription and its local subscribers.
struct SubEntry {
    /// The last value delivered; `None` while the first subscribe is in flight.
    last: Option<Value>,
    /// Each local subscriber's queue: a small channel that allocates per queued value, so an
    /// idle subscription costs a few hundred bytes (many thousands are held at once).
    subscribers: Vec<(u64, SubscriberTx)>,
    /// Subscribers that joined while the first subscribe was in flight, waiting for its
    /// answer.
    waiters: Vec<oneshot::Sender<Result<Box<RawValue>, ClientError>>>,
}

impl SubEntry {
    /// Queues a value for every subscriber; a subscriber whose stream is gone is dropped.
    /// Returns true when a subscriber's queue is full: values arrive faster than it takes them.
    fn deliver(&mut self, value: &Value) -> bool {
        let mut full = false;
        self.subscribers
            .retain_mut(|(_, tx)| match tx.try_send(value.clone()) {
                Ok(()) => true,
                Err(e) if e.is_full() => {
                    full = true;
                    true
                }
                Err(_) => false,
            });
        full
    }
}

struct State {
    conn: ConnectionState,
    /// The writer's queue; present from dialing until the connection is lost.
    link: Option<mpsc::UnboundedSender<String>>,
    pending: HashMap<i64, Pending>,
    subs: HashMap<Arc<SubscriptionKey>, SubEntry>,
    info: Option<ServerInfo>,
    /// Why the last connection ended.
    last_reason: String,
    /// Set by [`Shared::shutdown`]: calls fail with `Closed` from then on.
    closing: bool,
}

/// State shared by the [`super::Client`] handles, the [`Subscription`]s and the task.
pub(crate) struct Shared {
    pub(crate) config: ClientConfig,
    pub(crate) events: broadcast::Sender<ClientEvent>,
    cancel: CancellationToken,
    next_id: AtomicI64,
    next_subscriber: AtomicU64,
    state: Mutex<State>,
    /// When the connection task started; `last_read` counts from here.
    epoch: std::time::Instant,
    /// Milliseconds from `epoch` to the last line read.
    last_read: AtomicU64,
    /// Flushing requests sent to servers that hold answers back.
    pub(crate) nudges: AtomicU64,
    /// Takes scripthash notifications no [`Subscription`] takes ([`super::StatusSink`]).
    sink: std::sync::OnceLock<Arc<dyn super::StatusSink>>,
    /// Tells this client from every other in the process.
    pub(crate) id: u64,
}

/// Numbers the clients of the process.
static NEXT_CLIENT: AtomicU64 = AtomicU64::new(1);

/// How a connection ended.
struct Ended {
    reason: String,
    /// Set when negotiation itself failed.
    error: Option<ClientError>,
    negotiated: bool,
}

impl Shared {
    pub(crate) fn new(config: ClientConfig) -> Self {
        let (events, _) = broadcast::channel(64);
        Shared {
            config,
            events,
            cancel: CancellationToken::new(),
            next_id: AtomicI64::new(0),
            next_subscriber: AtomicU64::new(0),
            state: Mutex::new(State {
                conn: ConnectionState::Connecting,
                link: None,
                pending: HashMap::new(),
                subs: HashMap::new(),
                info: None,
                last_reason: String::new(),
                closing: false,
            }),
            epoch: std::time::Instant::now(),
            last_read: AtomicU64::new(0),
            nudges: AtomicU64::new(0),
            sink: std::sync::OnceLock::new(),
            id: NEXT_CLIENT.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Sets where scripthash notifications that no [`Subscription`] takes go; false when a
    /// sink was set already (it stays).
    pub(crate) fn set_sink(&self, sink: Arc<dyn super::StatusSink>) -> bool {
        self.sink.set(sink).is_ok()
    }

    /// True once a sink is set.
    pub(crate) fn has_sink(&self) -> bool {
        self.sink.get().is_some()
    }

    /// Sends a request whose answer nobody needs; false when no connection is up to take it.
    pub(crate) fn cast(&self, method: &str, params: Vec<Value>) -> bool {
        let mut st = self.lock();
        if st.conn != ConnectionState::Connected {
            return false;
        }
        let Some(link) = &st.link else { return false };
        let id = self.next_id();
        if link
            .send(Request::new(Id::Num(id), method, params).to_json())
            .is_err()
        {
            return false;
        }
        st.pending.insert(id, Pending::Ignore);
        true
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent between statements, so a panic elsewhere while holding
        // the lock leaves nothing half-done worth refusing to continue over.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, event: ClientEvent) {
        let _ = self.events.send(event);
    }

    fn next_id(&self) -> i64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn server_info(&self) -> Option<ServerInfo> {
        self.lock().info.clone()
    }

    pub(crate) fn connection_state(&self) -> ConnectionState {
        self.lock().conn
    }

    /// Asks the task to close the connection and stop; calls fail with `Closed` from now on.
    pub(crate) fn shutdown(&self) {
        self.lock().closing = true;
        self.cancel.cancel();
    }

    /// The error for a call that finds no usable connection.
    fn unavailable(st: &State) -> ClientError {
        if st.closing {
            ClientError::Closed
        } else if st.last_reason.is_empty() {
            ClientError::Disconnected("not connected".into())
        } else {
            ClientError::Disconnected(st.last_reason.clone())
        }
    }

    /// The writer queue, if calls may go out now. `internal` calls (negotiation, pings) may
    /// go out before the connection counts as connected.
    fn usable_link(
        st: &State,
        internal: bool,
    ) -> Result<mpsc::UnboundedSender<String>, ClientError> {
        let ready = internal || st.conn == ConnectionState::Connected;
        match (&st.link, ready && !st.closing) {
            (Some(link), true) => Ok(link.clone()),
            _ => Err(Self::unavailable(st)),
        }
    }

    /// Sends `calls` (as one batch line when `batch`) and waits for every answer, returned in
    /// call order.
    pub(crate) async fn call(
        &self,
        calls: Vec<(String, Vec<Value>)>,
        batch: bool,
        internal: bool,
    ) -> Result<Vec<Answer>, ClientError> {
        if let ([_], false) = (calls.as_slice(), batch) {
            let Some((method, params)) = calls.into_iter().next() else {
                return Ok(Vec::new());
            };
            return self
                .call_one(method, params, internal, self.config.request_timeout)
                .await
                .map(|a| vec![a]);
        }
        let mut ids = Vec::with_capacity(calls.len());
        let mut replies = Vec::with_capacity(calls.len());
        {
            let mut st = self.lock();
            let link = Self::usable_link(&st, internal)?;
            let mut lines = Vec::with_capacity(calls.len());
            for (method, params) in calls {
                let id = self.next_id();
                let (tx, rx) = oneshot::channel();
                st.pending.insert(id, Pending::Call(tx));
                lines.push(Request::new(Id::Num(id), method, params).to_json());
                ids.push(id);
                replies.push(rx);
            }
            let lines = if batch {
                vec![batch_to_json(lines)]
            } else {
                lines
            };
            if lines.into_iter().any(|line| link.send(line).is_err()) {
                for id in &ids {
                    st.pending.remove(id);
                }
                return Err(Self::unavailable(&st));
            }
        }
        // Forget the pending entries however this ends (answered, timed out, or the caller
        // gave up), so that they do not pile up.
        let _forget = Forget { shared: self, ids };
        let all = tokio::time::timeout(self.config.request_timeout, join_all(replies)).await;
        let Ok(all) = all else {
            return Err(ClientError::Timeout);
        };
        all.into_iter()
            .map(|r| match r {
                Ok(reply) => reply,
                Err(_) => Err(ClientError::Disconnected("connection task ended".into())),
            })
            .collect()
    }

    /// [`Shared::call`] for one call, the common case: no batch bookkeeping, and the line
    /// is serialized before the lock is taken.
    /// One request, answered within `limit` (or [`ClientError::Timeout`]).
    pub(crate) async fn call_one(
        &self,
        method: String,
        params: Vec<Value>,
        internal: bool,
        limit: std::time::Duration,
    ) -> Result<Answer, ClientError> {
        let id = self.next_id();
        let line = Request::new(Id::Num(id), method, params).to_json();
        let reply = {
            let mut st = self.lock();
            let link = Self::usable_link(&st, internal)?;
            let (tx, rx) = oneshot::channel();
            st.pending.insert(id, Pending::Call(tx));
            if link.send(line).is_err() {
                st.pending.remove(&id);
                return Err(Self::unavailable(&st));
            }
            rx
        };
        let _forget = ForgetOne { shared: self, id };
        match tokio::time::timeout(limit, reply).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(ClientError::Disconnected("connection task ended".into())),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// Subscribes to `method(params)`, sharing the server subscription with any existing
    /// subscriber of the same key.
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        method: String,
        params: Vec<Value>,
    ) -> Result<(Box<RawValue>, Subscription), ClientError> {
        enum Plan {
            Ready(Box<RawValue>),
            Wait(oneshot::Receiver<Result<Box<RawValue>, ClientError>>),
            Sent(i64, oneshot::Receiver<Reply>),
        }
        let key = Arc::new(SubscriptionKey::new(&method, &params));
        let sid = self.next_subscriber.fetch_add(1, Ordering::Relaxed);
        // The channel holds `buffer` values plus one per sender: one sender, so exactly
        // `max_queued_notifications`.
        let (tx, rx) =
            futures::channel::mpsc::channel(self.config.max_queued_notifications.max(1) - 1);
        let plan = {
            let mut guard = self.lock();
            let st = &mut *guard;
            let link = Self::usable_link(st, false)?;
            match st.subs.entry(key.clone()) {
                Entry::Occupied(mut e) => {
                    let entry = e.get_mut();
                    let plan = match &entry.last {
                        Some(v) => {
                            Plan::Ready(serde_json::value::to_raw_value(v).map_err(|e| {
                                ClientError::Protocol(format!("cannot serialize value: {e}"))
                            })?)
                        }
                        None => {
                            let (wtx, wrx) = oneshot::channel();
                            entry.waiters.push(wtx);
                            Plan::Wait(wrx)
                        }
                    };
                    entry.subscribers.push((sid, tx));
                    plan
                }
                Entry::Vacant(v) => {
                    let id = self.next_id();
                    let line = Request::new(Id::Num(id), method, params).to_json();
                    if link.send(line).is_err() {
                        return Err(Self::unavailable(st));
                    }
                    v.insert(SubEntry {
                        last: None,
                        subscribers: vec![(sid, tx)],
                        waiters: Vec::new(),
                    });
                    let (rtx, rrx) = oneshot::channel();
                    st.pending.insert(
                        id,
                        Pending::Subscribe {
                            key: key.clone(),
                            reply: rtx,
                        },
                    );
                    Plan::Sent(id, rrx)
                }
            }
        };
        // From here on, dropping `sub` (on any error) unregisters this subscriber.
        let sub = Subscription {
            shared: self.clone(),
            key: key.clone(),
            id: sid,
            rx,
        };
        let limit = self.config.request_timeout;
        let initial = match plan {
            Plan::Ready(raw) => raw,
            Plan::Wait(rx) => match tokio::time::timeout(limit, rx).await {
                Ok(Ok(result)) => result?,
                Ok(Err(_)) => {
                    return Err(ClientError::Disconnected(
                        "subscription attempt abandoned".into(),
                    ))
                }
                Err(_) => return Err(ClientError::Timeout),
            },
            Plan::Sent(id, rx) => match tokio::time::timeout(limit, rx).await {
                Ok(Ok(Ok(Ok(raw)))) => raw,
                Ok(Ok(Ok(Err(e)))) => return Err(ClientError::Rpc(e)),
                Ok(Ok(Err(e))) => return Err(e),
                Ok(Err(_)) => {
                    return Err(ClientError::Disconnected("connection task ended".into()))
                }
                Err(_) => {
                    self.abandon_subscribe(id, &key);
                    return Err(ClientError::Timeout);
                }
            },
        };
        Ok((initial, sub))
    }

    /// The first subscribe for `key` timed out: forget it, and fail those waiting on it.
    fn abandon_subscribe(&self, id: i64, key: &SubscriptionKey) {
        let mut st = self.lock();
        st.pending.remove(&id);
        if let Some(entry) = st.subs.get(key) {
            if entry.last.is_none() {
                if let Some(entry) = st.subs.remove(key) {
                    for w in entry.waiters {
                        let _ = w.send(Err(ClientError::Timeout));
                    }
                }
            }
        }
    }

    /// Removes one local subscriber; the last one for a scripthash ends the server
    /// subscription.
    pub(crate) fn remove_subscriber(&self, key: &SubscriptionKey, sid: u64) {
        let mut st = self.lock();
        let Some(entry) = st.subs.get_mut(key) else {
            return;
        };
        entry.subscribers.retain(|(id, _)| *id != sid);
        if !entry.subscribers.is_empty() {
            return;
        }
        if let Some(entry) = st.subs.remove(key) {
            if entry.last.is_some() {
                self.unsubscribe(&mut st, &key.method, key.params_vec());
            }
            // Otherwise the first subscribe is still in flight; its answer finds no entry
            // and unsubscribes then.
        }
    }

    /// Ends a server subscription, when the protocol has a way to (scripthashes only).
    fn unsubscribe(&self, st: &mut State, method: &str, params: Vec<Value>) {
        if method != SCRIPTHASH_SUBSCRIBE || st.conn != ConnectionState::Connected {
            return;
        }
        let Some(link) = &st.link else { return };
        let id = self.next_id();
        if link
            .send(Request::new(Id::Num(id), SCRIPTHASH_UNSUBSCRIBE, params).to_json())
            .is_ok()
        {
            st.pending.insert(id, Pending::Ignore);
        }
    }

    // ---- the reader's side ------------------------------------------------------------

    /// Handles one line from the server. An `Err` closes the connection.
    fn on_line(&self, line: &str) -> Result<(), String> {
        match parse(line) {
            Err(e) => Err(format!("malformed message from server: {e}")),
            Ok(Incoming::Single(m)) => self.on_message(m),
            Ok(Incoming::Batch(items)) => {
                let mut bad = None;
                for item in items {
                    match item {
                        Ok(m) => self.on_message(m)?,
                        Err((_, e)) => bad = Some(e),
                    }
                }
                match bad {
                    None => Ok(()),
                    Some(e) => Err(format!(
                        "malformed message in a batch from server: {}",
                        e.message
                    )),
                }
            }
        }
    }

    fn on_message(&self, message: Message) -> Result<(), String> {
        match message {
            Message::Response(r) => self.on_response(r),
            Message::Notification(n) => return self.on_notification(n),
            Message::Request(r) => {
                debug!(method = %r.method, "server sent a request; ignored");
            }
        }
        Ok(())
    }

    fn on_response(&self, response: Response) {
        let id = match response.id {
            Id::Num(n) => n,
            Id::Null => {
                if let Err(e) = &response.result {
                    warn!(error = %e, "server reported an error without a request id");
                }
                return;
            }
            other => {
                debug!(id = %other, "response with an id the client never used; ignored");
                return;
            }
        };
        let mut st = self.lock();
        let Some(pending) = st.pending.remove(&id) else {
            debug!(
                id,
                "response to no pending request (timed out or unknown); ignored"
            );
            return;
        };
        match pending {
            Pending::Ignore => {}
            Pending::Call(tx) => {
                let _ = tx.send(Ok(response.result));
            }
            Pending::Subscribe { key, reply } => {
                self.on_subscribe_answer(&mut st, &key, &response.result);
                let _ = reply.send(Ok(response.result));
            }
        }
    }

    /// Applies a subscribe answer (first, or after a reconnect) to the table.
    fn on_subscribe_answer(&self, st: &mut State, key: &SubscriptionKey, answer: &Answer) {
        let Some(entry) = st.subs.get_mut(key) else {
            // Every local subscriber left while the request was in flight.
            if answer.is_ok() {
                self.unsubscribe(st, &key.method, key.params_vec());
            }
            return;
        };
        match answer {
            Ok(raw) => {
                // A RawValue is valid JSON by construction.
                let value: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
                match &entry.last {
                    None => {
                        entry.last = Some(value);
                        for w in entry.waiters.drain(..) {
                            let _ = w.send(Ok(raw.clone()));
                        }
                    }
                    Some(prev) if *prev != value => {
                        debug!(method = %key.method, "subscription value changed across a reconnect");
                        if entry.deliver(&value) {
                            debug!(method = %key.method, "a subscriber's queue is full");
                        }
                        entry.last = Some(value);
                    }
                    Some(_) => {}
                }
            }
            Err(e) => {
                let first = entry.last.is_none();
                if let Some(entry) = st.subs.remove(key) {
                    if first {
                        for w in entry.waiters {
                            let _ = w.send(Err(ClientError::Rpc(e.clone())));
                        }
                    } else {
                        // Dropping the entry ends its subscribers' streams.
                        warn!(method = %key.method, error = %e, "server refused a re-subscription; ending its stream");
                    }
                }
            }
        }
    }

    /// Delivers a notification. A subscriber whose queue is full means the server sends
    /// notifications faster than they are taken: that is a flood, and the connection is
    /// closed (reason [`NOTIFICATION_FLOOD`]) rather than queueing without bound.
    fn on_notification(&self, n: Notification) -> Result<(), String> {
        let key = n.subscription_key();
        let mut st = self.lock();
        let Some(entry) = st.subs.get_mut(&key) else {
            drop(st);
            if let (Some(sink), SCRIPTHASH_SUBSCRIBE, [Value::String(sh), status]) =
                (self.sink.get(), n.method.as_str(), n.params.as_slice())
            {
                if sink.status(sh, status) {
                    return Ok(());
                }
                return Err(format!(
                    "{NOTIFICATION_FLOOD}: more notifications for one scripthash than are taken"
                ));
            }
            debug!(method = %n.method, params = %key.params, "notification for no subscription; ignored");
            return Ok(());
        };
        let value = n.value().clone();
        let full = entry.deliver(&value);
        // While the first answer is in flight, `last` stays unset so that the answer is
        // still recognized as the first one; the subscriber sees the answer, then this.
        if entry.last.is_some() {
            entry.last = Some(value);
        }
        if full {
            return Err(format!(
                "{NOTIFICATION_FLOOD}: more than {} notifications queued for one subscription",
                self.config.max_queued_notifications
            ));
        }
        Ok(())
    }

    // ---- the task's side --------------------------------------------------------------

    /// Tears down after a lost connection: every call in flight fails now.
    fn on_disconnect(&self, reason: &str, fin: bool) {
        {
            let mut st = self.lock();
            st.link = None;
            st.last_reason = reason.to_string();
            let err = if st.closing {
                ClientError::Closed
            } else {
                ClientError::Disconnected(reason.to_string())
            };
            for (_, p) in st.pending.drain() {
                match p {
                    Pending::Call(tx) | Pending::Subscribe { reply: tx, .. } => {
                        let _ = tx.send(Err(err.clone()));
                    }
                    Pending::Ignore => {}
                }
            }
            st.subs.retain(|_, e| {
                if e.last.is_some() {
                    return true;
                }
                for w in e.waiters.drain(..) {
                    let _ = w.send(Err(err.clone()));
                }
                false
            });
            st.conn = ConnectionState::Disconnected;
        }
        info!(server = %self.config.server, %reason, "disconnected");
        if let Some(sink) = self.sink.get() {
            sink.lost();
        }
        self.emit(ClientEvent::Disconnected {
            reason: reason.to_string(),
        });
        if fin {
            self.finish();
        }
    }

    /// The client is done: no more reconnects, subscription streams end.
    fn finish(&self) {
        {
            let mut st = self.lock();
            st.conn = ConnectionState::Closed;
            st.link = None;
            st.subs.clear();
        }
        self.emit(ClientEvent::Closed);
    }

    /// Runs one connection: negotiate, re-subscribe, keep alive; returns when it ends.
    async fn serve(
        &self,
        framed: Framed,
        ready: &mut Option<oneshot::Sender<Result<(), ClientError>>>,
    ) -> Ended {
        let (tx, rx) = mpsc::unbounded_channel();
        let reconnected = {
            let mut st = self.lock();
            st.link = Some(tx);
            st.info.is_some()
        };
        let Framed { sink, stream } = framed;
        let mut negotiated = false;
        let mut error = None;
        let reason = {
            let driver = async {
                let asked = std::time::Instant::now();
                let info = match self.negotiate().await {
                    Ok(info) => info,
                    Err(e) => {
                        let reason = format!("version negotiation failed: {e}");
                        error = Some(e);
                        return reason;
                    }
                };
                negotiated = true;
                let nudge = self.nudge_after(&info, asked.elapsed());
                {
                    let mut st = self.lock();
                    st.conn = ConnectionState::Connected;
                    st.info = Some(info.clone());
                }
                info!(server = %self.config.server, software = %info.software, protocol = %info.protocol, "connected");
                self.emit(ClientEvent::Connected {
                    software: info.software,
                    protocol: info.protocol,
                });
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Ok(()));
                }
                let nudger = async {
                    match nudge {
                        Some(after) => self.nudge_held_answers(after).await,
                        None => std::future::pending().await,
                    }
                };
                let kept = async {
                    if reconnected {
                        self.resubscribe().await;
                    }
                    self.keepalive().await
                };
                tokio::select! {
                    r = kept => r,
                    r = nudger => r,
                }
            };
            tokio::select! {
                r = write_loop(sink, rx) => r,
                r = self.read_loop(stream) => r,
                r = driver => r,
                _ = self.cancel.cancelled() => "client closed".to_string(),
            }
        };
        Ended {
            reason,
            error,
            negotiated,
        }
    }

    async fn read_loop(&self, mut stream: FrameStream) -> String {
        loop {
            match stream.next().await {
                None => return "server closed the connection".into(),
                Some(Err(e)) => return format!("read failed: {e}"),
                Some(Ok(line)) => {
                    self.last_read
                        .store(self.millis_since_epoch(), Ordering::Relaxed);
                    if let Err(reason) = self.on_line(&line) {
                        return reason;
                    }
                }
            }
        }
    }

    fn millis_since_epoch(&self) -> u64 {
        self.epoch
            .elapsed()
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX)
    }

    /// For a server that holds small answers back ([`super::ClientConfig::hold_back_nudge`]):
    /// whenever requests have waited `after` with nothing read, asks for an answer long enough
    /// to make the server send what it holds. Never returns.
    async fn nudge_held_answers(&self, after: Duration) -> String {
        let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut tick = tokio::time::interval(after / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Since when requests have been waiting (as seen at a tick).
        let mut waiting_since: Option<u64> = None;
        let mut last_nudge = 0u64;
        loop {
            tick.tick().await;
            let now = self.millis_since_epoch();
            let mut st = self.lock();
            let waiting = st.pending.values().any(|p| !matches!(p, Pending::Ignore));
            if !waiting {
                waiting_since = None;
                continue;
            }
            let since = *waiting_since.get_or_insert(now);
            let quiet_from = since.max(self.last_read.load(Ordering::Relaxed));
            if now.saturating_sub(quiet_from) < after_ms
                || now.saturating_sub(last_nudge) < after_ms
            {
                continue;
            }
            let Some(link) = st.link.clone() else {
                continue;
            };
            let id = self.next_id();
            let line = Request::new(
                Id::Num(id),
                "blockchain.block.headers".to_string(),
                vec![json!(0), json!(8)],
            )
            .to_json();
            if link.send(line).is_ok() {
                st.pending.insert(id, Pending::Ignore);
                last_nudge = now;
                self.nudges.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// How long requests wait before [`Shared::nudge_held_answers`] nudges this server, if it
    /// holds answers back: ElectrumX over TCP or TLS. `rtt` is the negotiation's round trip.
    fn nudge_after(&self, info: &ServerInfo, rtt: Duration) -> Option<Duration> {
        let base = self.config.hold_back_nudge?;
        let holds_back = info.software.to_ascii_lowercase().starts_with("electrumx")
            && !self.config.server.scheme.is_ws();
        holds_back.then(|| base.max(rtt * 3))
    }

    /// `server.version` with the configured range; checks the answer lies in it.
    async fn negotiate(&self) -> Result<ServerInfo, ClientError> {
        let c = &self.config;
        let params = vec![
            json!(c.client_name),
            json!([c.protocol_min, c.protocol_max]),
        ];
        let answer = self
            .call(vec![("server.version".into(), params)], false, true)
            .await?
            .pop()
            .ok_or_else(|| ClientError::Protocol("no answer to server.version".into()))?;
        let raw = answer.map_err(|e| {
            ClientError::Protocol(format!("server refused version negotiation: {e}"))
        })?;
        version_answer(c, &raw)
    }

    /// Sends every subscription again; the reader delivers values that changed.
    async fn resubscribe(&self) {
        let replies = {
            let mut guard = self.lock();
            let st = &mut *guard;
            let Some(link) = st.link.clone() else { return };
            let mut replies = Vec::new();
            for (key, entry) in st.subs.iter() {
                if entry.last.is_none() {
                    continue;
                }
                let id = self.next_id();
                let line =
                    Request::new(Id::Num(id), key.method.clone(), key.params_vec()).to_json();
                if link.send(line).is_err() {
                    break;
                }
                let (tx, rx) = oneshot::channel();
                st.pending.insert(
                    id,
                    Pending::Subscribe {
                        key: key.clone(),
                        reply: tx,
                    },
                );
                replies.push(rx);
            }
            replies
        };
        let total = replies.len();
        let results = join_all(
            replies
                .into_iter()
                .map(|rx| tokio::time::timeout(self.config.request_timeout, rx)),
        )
        .await;
        let count = results
            .iter()
            .filter(|r| matches!(r, Ok(Ok(Ok(Ok(_))))))
            .count();
        if count < total {
            warn!(server = %self.config.server, count, total, "not every subscription was re-established");
        }
        self.emit(ClientEvent::Resubscribed { count });
    }

    /// Pings at the configured interval; returns why the connection is considered dead.
    async fn keepalive(&self) -> String {
        let Some(every) = self.config.ping_interval else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(every).await;
            match self
                .call(vec![("server.ping".into(), vec![])], false, true)
                .await
            {
                // An error answer still proves the server is alive.
                Ok(_) => {}
                Err(ClientError::Timeout) => {
                    return format!(
                        "server did not answer a ping within {:?}",
                        self.config.request_timeout
                    )
                }
                Err(e) => return e.to_string(),
            }
        }
    }
}

/// Removes pending entries when a call ends, however it ends.
struct Forget<'a> {
    shared: &'a Shared,
    ids: Vec<i64>,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        for id in &self.ids {
            st.pending.remove(id);
        }
    }
}

/// [`Forget`] for a single request, without a list.
struct ForgetOne<'a> {
    shared: &'a Shared,
    id: i64,
}

impl Drop for ForgetOne<'_> {
    fn drop(&mut self) {
        self.shared.lock().pending.remove(&self.id);
    }
}

/// Reads a server's answer to `server.version` (`[software, protocol]`) and checks that the
/// protocol it chose is within what `c` offered.
fn version_answer(c: &ClientConfig, raw: &RawValue) -> Result<ServerInfo, ClientError> {
    let bad = || {
        let mut shown: String = raw.get().chars().take(200).collect();
        if shown.len() < raw.get().len() {
            shown.push('…');
        }
        ClientError::Protocol(format!("unexpected server.version answer {shown}"))
    };
    let items: Vec<Value> = serde_json::from_str(raw.get()).map_err(|_| bad())?;
    let (Some(Value::String(software)), Some(Value::String(protocol))) =
        (items.first(), items.get(1))
    else {
        return Err(bad());
    };
    let version = parse_version(protocol).ok_or_else(bad)?;
    let min = parse_version(&c.protocol_min);
    let max = parse_version(&c.protocol_max);
    if min.is_some_and(|m| version < m) || max.is_some_and(|m| version > m) {
        return Err(ClientError::Protocol(format!(
            "server chose protocol {protocol}, outside {}..{}",
            c.protocol_min, c.protocol_max
        )));
    }
    Ok(ServerInfo {
        software: software.clone(),
        protocol: protocol.clone(),
    })
}

async fn write_loop(mut sink: FrameSink, mut rx: mpsc::UnboundedReceiver<String>) -> String {
    while let Some(line) = rx.recv().await {
        if let Err(e) = sink.feed(line).await {
            return format!("write failed: {e}");
        }
        // Send whatever else is queued in the same flush, after letting the callers that
        // are ready to run queue their lines too.
        while let Ok(line) = rx.try_recv() {
            if let Err(e) = sink.feed(line).await {
                return format!("write failed: {e}");
            }
        }
        tokio::task::yield_now().await;
        while let Ok(line) = rx.try_recv() {
            if let Err(e) = sink.feed(line).await {
                return format!("write failed: {e}");
            }
        }
        if let Err(e) = sink.flush().await {
            return format!("write failed: {e}");
        }
    }
    // The queue's sender lives in the shared state until the connection is torn down.
    std::future::pending().await
}

/// The connection task: serves the first connection, then reconnects per the policy until
/// the client is closed. `ready` learns whether the first negotiation succeeded.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut framed: Framed,
    ready: oneshot::Sender<Result<(), ClientError>>,
) {
    let mut ready = Some(ready);
    let mut failures: u32 = 0;
    loop {
        let ended = shared.serve(framed, &mut ready).await;
        let first_failed = ready.is_some();
        let backoff = match &shared.config.reconnect {
            Some(b) if !first_failed && !shared.cancel.is_cancelled() => b.clone(),
            _ => {
                shared.on_disconnect(&ended.reason, true);
                if let Some(ready) = ready.take() {
                    let err = ended
                        .error
                        .unwrap_or(ClientError::Disconnected(ended.reason));
                    let _ = ready.send(Err(err));
                }
                return;
            }
        };
        shared.on_disconnect(&ended.reason, false);
        if ended.negotiated {
            failures = 0;
        }
        framed = loop {
            let delay = backoff.delay(failures);
            failures = failures.saturating_add(1);
            debug!(server = %shared.config.server, ?delay, "reconnecting after delay");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shared.cancel.cancelled() => return shared.finish(),
            }
            shared.lock().conn = ConnectionState::Connecting;
            shared.emit(ClientEvent::Connecting);
            let dialed = tokio::select! {
                r = super::connect::dial(&shared.config) => r,
                _ = shared.cancel.cancelled() => return shared.finish(),
            };
            match dialed {
                Ok(f) => break f,
                Err(e) => {
                    let reason = e.to_string();
                    {
                        let mut st = shared.lock();
                        st.conn = ConnectionState::Disconnected;
                        st.last_reason = reason.clone();
                    }
                    debug!(server = %shared.config.server, %reason, "reconnection attempt failed");
                    shared.emit(ClientEvent::Disconnected { reason });
                }
            }
        };
    }
}

#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz;
