//! Subscription multiplexing: one upstream subscription per scripthash, fanned out to every
//! wallet session that subscribed to it.
//!
//! Each scripthash with at least one subscribed session has an entry and a task. The task
//! subscribes on one upstream (spread over upstreams by scripthash), applies the initial
//! status and every notification, and when the upstream's stream ends (connection lost or
//! replaced) subscribes again on another upstream. Because the last known status is kept, a
//! change that happened while moving is noticed by comparing the new upstream's status with
//! it, and every session is notified: no notification is lost across a failover. When the last
//! session leaves, the entry goes and the upstream subscription is dropped.

use futures::StreamExt;
use serde_json::Value;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};

use super::pool::{Pool, PoolEvent};
use super::router::unavailable;
use super::upstream::Upstream;
use crate::chain::{histories_agree, parse_history, HistoryEntry};
use crate::client::{Client, ClientError};
use crate::protocol::RpcError;
use crate::verify::{check_history_status, Reason, Verdict};

/// Identifies a wallet session.
pub type SessionId = u64;

/// What the hub sends a session.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// A scripthash's status changed.
    Status {
        /// The scripthash.
        scripthash: Arc<str>,
        /// The new status (hex string or null).
        status: Value,
    },
}

/// A session's mailbox as the hub sees it. A session that cannot keep up (full mailbox) is
/// told to close through `kill` rather than losing a notification silently.
#[derive(Clone)]
pub struct SessionHandle {
    /// The session id.
    pub id: SessionId,
    /// Where events go.
    pub tx: mpsc::Sender<SessionEvent>,
    /// Set when the session must be closed.
    pub kill: tokio_util::sync::CancellationToken,
}

struct EntryState {
    sessions: HashMap<SessionId, SessionHandle>,
    /// Last status seen from an upstream; `None` until the first answer.
    status: Option<Value>,
}

struct Entry {
    scripthash: Arc<str>,
    state: Mutex<EntryState>,
    known: watch::Sender<bool>,
    closed: Notify,
}

/// The subscription hub.
pub struct Hub {
    pool: Arc<Pool>,
    entries: Mutex<HashMap<Arc<str>, Arc<Entry>>>,
    upstream_subs: AtomicUsize,
    /// Times a subscription moved to another upstream.
    pub moves: AtomicU64,
    /// Notifications sent to sessions.
    pub notifications: AtomicU64,
    subscribe_timeout: Duration,
    verify_statuses: bool,
}

fn key_of(sh: &str) -> u64 {
    let mut h = DefaultHasher::new();
    sh.hash(&mut h);
    h.finish()
}

/// True for a status an honest server could send: null or 64 hex characters.
fn valid_status(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()),
        _ => false,
    }
}

impl Hub {
    /// A hub over a pool. `subscribe_timeout` bounds how long a first subscriber waits for
    /// the initial status.
    pub fn new(pool: Arc<Pool>, subscribe_timeout: Duration, verify_statuses: bool) -> Arc<Hub> {
        Arc::new(Hub {
            pool,
            entries: Mutex::new(HashMap::new()),
            upstream_subs: AtomicUsize::new(0),
            moves: AtomicU64::new(0),
            notifications: AtomicU64::new(0),
            subscribe_timeout,
            verify_statuses,
        })
    }

    /// Distinct scripthashes subscribed by at least one session.
    pub fn scripthashes(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// Subscriptions held on upstreams now.
    pub fn upstream_subscriptions(&self) -> usize {
        self.upstream_subs.load(Ordering::Relaxed)
    }

    /// Session subscriptions (sum over scripthashes of subscribed sessions).
    pub fn session_subscriptions(&self) -> usize {
        let Ok(entries) = self.entries.lock() else {
            return 0;
        };
        entries
            .values()
            .map(|e| e.state.lock().map(|s| s.sessions.len()).unwrap_or(0))
            .sum()
    }

    /// Subscribes a session to a scripthash and returns the current status. Later changes
    /// arrive as [`SessionEvent::Status`] on the session's mailbox.
    pub async fn subscribe(
        self: &Arc<Self>,
        scripthash: &str,
        session: SessionHandle,
    ) -> Result<Value, RpcError> {
        let sid = session.id;
        let (entry, status) = self.join(scripthash, session)?;
        if let Some(s) = status {
            return Ok(s);
        }
        let mut known = entry.known.subscribe();
        let waited = tokio::time::timeout(self.subscribe_timeout, known.wait_for(|k| *k)).await;
        if let Ok(Ok(_)) = waited {
            if let Ok(st) = entry.state.lock() {
                if let Some(s) = &st.status {
                    return Ok(s.clone());
                }
            }
        }
        self.unsubscribe(scripthash, sid);
        Err(unavailable("no upstream answered the subscription"))
    }

    /// Adds a session to a scripthash's entry, creating the entry (and its upstream task)
    /// for the first session. Returns the entry and its status, if one is known yet.
    fn join(
        self: &Arc<Self>,
        scripthash: &str,
        session: SessionHandle,
    ) -> Result<(Arc<Entry>, Option<Value>), RpcError> {
        let Ok(mut entries) = self.entries.lock() else {
            return Err(RpcError::internal("hub poisoned"));
        };
        let entry = match entries.get(scripthash) {
            Some(e) => e.clone(),
            None => {
                let sh: Arc<str> = Arc::from(scripthash);
                let e = Arc::new(Entry {
                    scripthash: sh.clone(),
                    state: Mutex::new(EntryState {
                        sessions: HashMap::new(),
                        status: None,
                    }),
                    known: watch::channel(false).0,
                    closed: Notify::new(),
                });
                entries.insert(sh, e.clone());
                let hub = self.clone();
                let task_entry = e.clone();
                tokio::spawn(async move { hub.run_entry(task_entry).await });
                e
            }
        };
        let status = match entry.state.lock() {
            Ok(mut st) => {
                st.sessions.insert(session.id, session);
                st.status.clone()
            }
            Err(_) => return Err(RpcError::internal("hub poisoned")),
        };
        Ok((entry, status))
    }

    /// Removes a session's subscription; true if it had one. The upstream subscription goes
    /// with the last session.
    pub fn unsubscribe(&self, scripthash: &str, sid: SessionId) -> bool {
        let Ok(mut entries) = self.entries.lock() else {
            return false;
        };
        let Some(entry) = entries.get(scripthash).cloned() else {
            return false;
        };
        let Ok(mut st) = entry.state.lock() else {
            return false;
        };
        let had = st.sessions.remove(&sid).is_some();
        if st.sessions.is_empty() {
            entries.remove(scripthash);
            entry.closed.notify_one();
        }
        had
    }

    /// Removes every subscription of a session (on disconnect).
    pub fn drop_session(&self, scripthashes: impl IntoIterator<Item = String>, sid: SessionId) {
        for sh in scripthashes {
            self.unsubscribe(&sh, sid);
        }
    }

    /// Applies a status from an upstream; notifies sessions when it changed (not for the
    /// first status, which subscribers read from their reply).
    fn apply(&self, entry: &Entry, status: Value) {
        let targets: Vec<SessionHandle> = {
            let Ok(mut st) = entry.state.lock() else {
                return;
            };
            let first = st.status.is_none();
            if st.status.as_ref() == Some(&status) {
                return;
            }
            st.status = Some(status.clone());
            if first {
                entry.known.send_replace(true);
                return;
            }
            st.sessions.values().cloned().collect()
        };
        for s in targets {
            let ev = SessionEvent::Status {
                scripthash: entry.scripthash.clone(),
                status: status.clone(),
            };
            if s.tx.try_send(ev).is_err() {
                tracing::warn!(
                    session = s.id,
                    "session cannot keep up with notifications; closing it"
                );
                s.kill.cancel();
            } else {
                self.notifications.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn run_entry(self: Arc<Self>, entry: Arc<Entry>) {
        let key = key_of(&entry.scripthash);
        let mut events = self.pool.events();
        let mut moved = false;
        loop {
            let Some((up, client)) = self.pool.pick_for(key) else {
                // No upstream in step now: wait for a change (or for the entry to close).
                tokio::select! {
                    _ = entry.closed.notified() => return,
                    _ = events.recv() => continue,
                }
            };
            let params = vec![Value::String(entry.scripthash.to_string())];
            let sub = tokio::select! {
                r = client.subscribe("blockchain.scripthash.subscribe", params) => r,
                _ = entry.closed.notified() => return,
            };
            let (initial, mut stream) = match sub {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(upstream = %up.name(), error = %e, "subscribe failed");
                    tokio::select! {
                        _ = entry.closed.notified() => return,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    }
                }
            };
            if moved {
                self.moves.fetch_add(1, Ordering::Relaxed);
            }
            moved = true;
            self.upstream_subs.fetch_add(1, Ordering::Relaxed);
            let initial: Value = serde_json::from_str(initial.get()).unwrap_or(Value::Bool(false));
            let mut next = Some(initial);
            let closed = loop {
                if let Some(status) = next.take() {
                    if self.vet(&up, &client, &entry.scripthash, &status).await {
                        self.apply(&entry, status);
                    } else {
                        break false;
                    }
                }
                tokio::select! {
                    v = stream.next() => match v {
                        Some(v) => next = Some(v),
                        None => break false,
                    },
                    ev = events.recv() => {
                        // The upstream fell out of step (demoted, sitting out): move.
                        let relevant = match ev {
                            Ok(PoolEvent::Standing(id)) => id == up.id,
                            Ok(_) => false,
                            Err(_) => true,
                        };
                        if relevant && !up.in_step() {
                            break false;
                        }
                    }
                    _ = entry.closed.notified() => break true,
                }
            };
            self.upstream_subs.fetch_sub(1, Ordering::Relaxed);
            drop(stream);
            if closed {
                return;
            }
            tracing::debug!(upstream = %up.name(), "moving a subscription to another upstream");
        }
    }

    /// Checks a status an upstream announced before any wallet sees it: it must be the status
    /// of the history that upstream returns, and that history's confirmed part must agree with
    /// the other upstreams' (a majority decides when they differ). Every history is asked for
    /// through the pool's checked call. Returns false when the status is false: the upstream
    /// has been penalised and the subscription must move. Transport failures while checking are
    /// not held against it.
    async fn vet(&self, up: &Upstream, client: &Client, scripthash: &str, status: &Value) -> bool {
        if !valid_status(status) {
            self.pool.penalize(up, Reason::BadStatus);
            return false;
        }
        if !self.verify_statuses {
            return true;
        }
        let params = vec![Value::String(scripthash.to_string())];
        let mut history = None;
        // Twice: a new transaction may land between the status and the history, so the first
        // mismatch is not held against the upstream; the second is.
        for attempt in 0..2 {
            let asked = self
                .pool
                .ask(
                    up,
                    client,
                    "blockchain.scripthash.get_history",
                    params.clone(),
                    |raw| match check_history_status(raw, status.as_str()) {
                        Verdict::False(_) if attempt == 0 => {
                            Verdict::Unverifiable("the status may have moved on".into())
                        }
                        verdict => verdict,
                    },
                )
                .await;
            match asked {
                Ok(raw) => {
                    history = Some(raw);
                    break;
                }
                Err(ClientError::Protocol(_)) if attempt == 0 => continue,
                // Proven false: the checked call penalised it.
                Err(ClientError::Protocol(_)) => return false,
                Err(_) => return true,
            }
        }
        let Some(mine) = history.and_then(|h| parse_history(h.get()).ok()) else {
            self.pool.penalize(up, Reason::BadStatus);
            return false;
        };
        // Compare confirmed parts with the other upstreams in step, up to the lowest tip among
        // those compared (a block may reach one upstream before another).
        let others: Vec<_> = self
            .pool
            .ranked_for(true)
            .into_iter()
            .filter(|(u, _)| u.id != up.id)
            .collect();
        if others.is_empty() {
            return true;
        }
        let my_tip = || up.tip().map(|t| t.height).unwrap_or(0);
        let mut versions: Vec<(Vec<HistoryEntry>, u32)> = Vec::new();
        for (other, oc) in others {
            let asked = self
                .pool
                .ask(
                    &other,
                    &oc,
                    "blockchain.scripthash.get_history",
                    params.clone(),
                    |_| Verdict::Proven,
                )
                .await;
            let Some(theirs) = asked.ok().and_then(|raw| parse_history(raw.get()).ok()) else {
                continue;
            };
            let tip = other.tip().map(|t| t.height).unwrap_or(0);
            versions.push((theirs, tip));
            // One agreeing upstream is enough when nobody disagrees so far.
            if versions
                .iter()
                .all(|(v, t)| histories_agree(&mine, v, my_tip().min(*t)))
            {
                return true;
            }
        }
        let agree = versions
            .iter()
            .filter(|(v, t)| histories_agree(&mine, v, my_tip().min(*t)))
            .count()
            + 1;
        let total = versions.len() + 1;
        if agree * 2 > total {
            true
        } else if (total - agree) * 2 > total {
            self.pool.penalize(up, Reason::HistoryMismatch);
            false
        } else {
            tracing::warn!(upstream = %up.name(), "upstreams disagree on a history; no majority");
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    /// A hub over a pool that is never started: no upstream is dialed, so statuses come only
    /// from the test.
    fn hub(dir: &std::path::Path) -> Arc<Hub> {
        let cfg = Config {
            network: "regtest".into(),
            data_dir: dir.to_path_buf(),
            ..Config::default()
        };
        let servers = vec!["tcp://127.0.0.1:1".parse().unwrap()];
        let pool = Pool::new(
            Arc::new(cfg),
            servers,
            vec![],
            Metrics::new(),
            CancellationToken::new(),
        )
        .unwrap();
        Hub::new(pool, Duration::from_millis(10), true)
    }

    fn session(id: SessionId, room: usize) -> (SessionHandle, mpsc::Receiver<SessionEvent>) {
        let (tx, rx) = mpsc::channel(room);
        let handle = SessionHandle {
            id,
            tx,
            kill: CancellationToken::new(),
        };
        (handle, rx)
    }

    const SH: &str = "4d3611dab7c887dd7377c18b04295edce510d6f8749d06d89f376e65feee9df0";

    #[tokio::test]
    async fn one_entry_per_scripthash_fanned_out_to_every_session() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path());
        let (a, mut a_rx) = session(1, 8);
        let (b, mut b_rx) = session(2, 8);
        let (entry, status) = hub.join(SH, a).unwrap();
        assert_eq!(status, None);
        let (again, _) = hub.join(SH, b).unwrap();
        assert!(Arc::ptr_eq(&entry, &again), "one entry for the scripthash");
        assert_eq!(hub.scripthashes(), 1);
        assert_eq!(hub.session_subscriptions(), 2);
        // The first status answers subscribers; it is no notification.
        hub.apply(&entry, json!("s1"));
        assert!(a_rx.try_recv().is_err());
        assert_eq!(hub.join(SH, session(3, 1).0).unwrap().1, Some(json!("s1")));
        hub.unsubscribe(SH, 3);
        // A change reaches every session, once; the same status again is nothing.
        hub.apply(&entry, json!("s2"));
        hub.apply(&entry, json!("s2"));
        for rx in [&mut a_rx, &mut b_rx] {
            let SessionEvent::Status { scripthash, status } = rx.try_recv().unwrap();
            assert_eq!((&*scripthash, status), (SH, json!("s2")));
            assert!(rx.try_recv().is_err());
        }
        assert_eq!(hub.notifications.load(Ordering::Relaxed), 2);
        // The entry goes with its last session.
        assert!(hub.unsubscribe(SH, 1));
        assert!(!hub.unsubscribe(SH, 1));
        assert_eq!(hub.scripthashes(), 1);
        hub.drop_session([SH.to_string()], 2);
        assert_eq!(hub.scripthashes(), 0);
    }

    #[tokio::test]
    async fn a_session_that_cannot_keep_up_is_closed_not_silently_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path());
        let (slow, _slow_rx) = session(1, 1);
        let kill = slow.kill.clone();
        let (entry, _) = hub.join(SH, slow).unwrap();
        hub.apply(&entry, json!("s0"));
        hub.apply(&entry, json!("s1"));
        assert!(!kill.is_cancelled(), "one notification fits");
        hub.apply(&entry, json!("s2"));
        assert!(kill.is_cancelled(), "a full mailbox closes the session");
    }

    #[tokio::test]
    async fn a_subscription_nobody_can_answer_fails_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path());
        let e = hub.subscribe(SH, session(1, 1).0).await.unwrap_err();
        assert!(e.message.contains("no upstream"), "{e:?}");
        assert_eq!(hub.scripthashes(), 0);
        assert_eq!(hub.upstream_subscriptions(), 0);
    }

    #[test]
    fn statuses_must_look_like_statuses() {
        assert!(valid_status(&Value::Null));
        assert!(valid_status(&json!(SH)));
        assert!(!valid_status(&json!("zz")));
        assert!(!valid_status(&json!(5)));
        assert!(!valid_status(&json!(format!("{SH}00"))));
    }
}
