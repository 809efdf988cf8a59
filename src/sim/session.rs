//! One client connection: read messages, answer them, push notifications.
//!
//! Outgoing messages (answers and notifications alike) go through one queue, each with the
//! time it is due: `latency` delays them all by the same amount, so pipelined requests are
//! answered together after one delay, order is kept, and nothing is lost. On every chain
//! change the session recomputes, from its endpoint's view, the tip and the statuses it has
//! subscribed to and queues a notification for each one that changed, so only subscribers
//! are notified and a lying endpoint's notifications match its lies.

use futures::{SinkExt, StreamExt};
use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use super::faults::Faults;
use super::rpc::{
    announced_tip, header_notification_value, scripthash_notification, served_history, Call,
    SessionState,
};
use super::view::{status, Sh};
use super::Inner;
use crate::protocol::{batch_to_json, parse, Id, Incoming, Message, Notification, Response};
use crate::transport::Framed;

struct Outgoing {
    due: Instant,
    line: String,
    /// How many requests this message answers (0 for a notification).
    answers: u64,
}

/// Removes the connection from its endpoint's table when the session ends or is aborted.
struct Registration {
    inner: Arc<Inner>,
    endpoint: usize,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.inner.endpoints[self.endpoint].forget(self.id);
    }
}

/// Runs one connection to its end.
pub(crate) async fn run(
    inner: Arc<Inner>,
    endpoint: usize,
    id: u64,
    framed: Framed,
    shared_subs: Arc<Mutex<BTreeSet<Sh>>>,
) {
    let _registration = Registration {
        inner: inner.clone(),
        endpoint,
        id,
    };
    let Framed {
        mut sink,
        mut stream,
    } = framed;
    let mut state = SessionState {
        shared_subs,
        conn: id,
        ..SessionState::default()
    };
    let mut changes = inner.changes.subscribe();
    changes.borrow_and_update();
    let mut queue: VecDeque<Outgoing> = VecDeque::new();
    let mut reading = true;
    let mut handled: u64 = 0;
    let ep = &inner.endpoints[endpoint];
    let mut held = HeldOutput::default();
    loop {
        let due = queue.front().map(|o| o.due);
        let release = (!held.lines.is_empty()).then(|| held.last_send + HOLD_BACK_FOR);
        tokio::select! {
            _ = sleep_until(due), if due.is_some() => {
                let Some(out) = queue.pop_front() else { continue };
                ep.count_answers(out.answers);
                held.bytes += out.line.len() + 1;
                held.lines.push(out.line);
                if ep.faults().hold_back
                    && held.sent >= HOLD_BACK_SIZE
                    && held.bytes < HOLD_BACK_SIZE
                {
                    continue;
                }
                if held.release(&mut sink).await.is_err() {
                    break;
                }
            }
            _ = sleep_until(release), if release.is_some() => {
                if held.release(&mut sink).await.is_err() {
                    break;
                }
            }
            msg = stream.next(), if reading => {
                let line = match msg {
                    Some(Ok(line)) => line,
                    Some(Err(e)) => {
                        tracing::debug!(endpoint, error = %e, "connection read error");
                        break;
                    }
                    None => break,
                };
                let faults = ep.faults();
                let (reply, n) = handle_line(&inner, endpoint, &faults, &mut state, &line);
                handled += n;
                let stalled = faults.stall
                    || (faults.stall_subscribe && line.contains("blockchain.scripthash.subscribe"));
                if !stalled {
                    if let Some(line) = reply {
                        queue.push_back(Outgoing {
                            due: Instant::now() + Duration::from_millis(faults.latency_ms),
                            line,
                            answers: n,
                        });
                    }
                }
                if let Some(flood) = faults.flood {
                    queue.extend(flood_after(&line, flood));
                }
                if state.close || faults.drop_after.is_some_and(|d| handled >= d) {
                    reading = false;
                }
            }
            r = changes.changed() => {
                if r.is_err() {
                    break;
                }
                let faults = ep.faults();
                let notes = notifications(&inner, endpoint, &faults, &mut state);
                if !faults.stall {
                    let due = Instant::now() + Duration::from_millis(faults.latency_ms);
                    queue.extend(notes.into_iter().map(|n| Outgoing { due, line: n.to_json(), answers: 0 }));
                }
            }
        }
        if !reading && queue.is_empty() {
            break;
        }
    }
    let _ = sink.close().await;
}

/// `hold-back`: what a connection may send at once, and how long output waits for more.
const HOLD_BACK_SIZE: usize = 1024;
const HOLD_BACK_FOR: Duration = Duration::from_secs(1);

/// Output due but not sent yet (`hold-back`), and what was sent.
struct HeldOutput {
    lines: Vec<String>,
    bytes: usize,
    /// Bytes sent on the connection so far.
    sent: usize,
    last_send: Instant,
}

impl Default for HeldOutput {
    fn default() -> Self {
        HeldOutput {
            lines: Vec::new(),
            bytes: 0,
            sent: 0,
            last_send: Instant::now(),
        }
    }
}

impl HeldOutput {
    /// Sends everything held, in one write.
    async fn release(&mut self, sink: &mut crate::transport::FrameSink) -> std::io::Result<()> {
        for line in self.lines.drain(..) {
            sink.feed(line).await?;
        }
        sink.flush().await?;
        self.sent += self.bytes;
        self.bytes = 0;
        self.last_send = Instant::now();
        Ok(())
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        // Without a latency fault an answer is due at once: the timer would hold it until
        // its next millisecond tick.
        Some(d) if d <= Instant::now() => {}
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Answers one line (a message or a batch). Returns the reply line, if any, and how many
/// requests it answers.
fn handle_line(
    inner: &Inner,
    endpoint: usize,
    faults: &Faults,
    state: &mut SessionState,
    line: &str,
) -> (Option<String>, u64) {
    let call = Call {
        inner,
        endpoint,
        faults,
    };
    match parse(line) {
        Err(e) => (Some(Response::err(e.id(), e.to_rpc_error()).to_json()), 1),
        Ok(Incoming::Single(msg)) => match answer_message(&call, state, msg) {
            Some(r) => (Some(r.to_json()), 1),
            None => (None, 0),
        },
        Ok(Incoming::Batch(items)) => {
            let replies: Vec<String> = items
                .into_iter()
                .filter_map(|item| match item {
                    Ok(msg) => answer_message(&call, state, msg),
                    Err((id, e)) => Some(Response::err(id.unwrap_or(Id::Null), e)),
                })
                .map(|r| r.to_json())
                .collect();
            let n = replies.len() as u64;
            if replies.is_empty() {
                (None, 0)
            } else {
                (Some(batch_to_json(replies)), n)
            }
        }
    }
}

/// Answers a request; client notifications and stray responses get no answer.
fn answer_message(call: &Call<'_>, state: &mut SessionState, msg: Message) -> Option<Response> {
    let Message::Request(req) = msg else {
        return None;
    };
    let id = req.id.clone()?;
    Some(match call.answer(state, &req) {
        Ok(v) => Response::ok_value(id, &v),
        Err(e) => Response::err(id, e),
    })
}

/// Under `flood=N`: N notifications of alternating made-up statuses after a scripthash
/// subscription.
fn flood_after(line: &str, n: u64) -> Vec<Outgoing> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return Vec::new();
    };
    if v["method"] != "blockchain.scripthash.subscribe" {
        return Vec::new();
    }
    let sh = v["params"][0].clone();
    (0..n)
        .map(|i| {
            let status = if i % 2 == 0 { "ab" } else { "cd" }.repeat(32);
            Outgoing {
                due: Instant::now(),
                line: Notification {
                    method: "blockchain.scripthash.subscribe".into(),
                    params: vec![sh.clone(), serde_json::Value::String(status)],
                }
                .to_json(),
                answers: 0,
            }
        })
        .collect()
}

/// The notifications due to this connection after a change.
fn notifications(
    inner: &Inner,
    endpoint: usize,
    faults: &Faults,
    state: &mut SessionState,
) -> Vec<Notification> {
    if state.headers.is_none() && state.subs.is_empty() {
        return Vec::new();
    }
    let view = inner.view_for(endpoint);
    let mut out = Vec::new();
    if let Some(last) = state.headers {
        let (height, header) = announced_tip(faults, &view);
        let now = (height, header.block_hash());
        if now != last {
            state.headers = Some(now);
            out.push(Notification {
                method: "blockchain.headers.subscribe".into(),
                params: vec![header_notification_value(faults, &header, height)],
            });
        }
    }
    for (sh, last) in state.subs.iter_mut() {
        let now = status(&served_history(&view, faults, sh));
        if now != *last {
            *last = now;
            if !faults.silent {
                out.push(scripthash_notification(sh, last));
            }
        }
    }
    out
}
