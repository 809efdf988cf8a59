//! The watching side of the hub: which upstreams watch a scripthash, how each status they
//! announce is vetted against their own history, how watchers that disagree are arbitrated,
//! and how a watcher is replaced. The entry's driver ([`super::Hub`]) calls these one at a
//! time, so an entry's watchers are never handled by two tasks at once.

use futures::StreamExt;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;

use super::super::upstream::Upstream;
use super::{entry_links, Entry, Event, Hub, Watch};
use crate::chain::{parse_history, status_hash};
use crate::client::{Client, ClientError};
use crate::verify::{check_history_status, Reason, Verdict};

/// The method of a scripthash subscription.
pub(super) const SCRIPTHASH_SUBSCRIBE: &str = "blockchain.scripthash.subscribe";
/// The method that ends one.
const SCRIPTHASH_UNSUBSCRIBE: &str = "blockchain.scripthash.unsubscribe";

/// An upstream's answer to a history request.
type Asked = (
    Arc<Upstream>,
    Result<Box<serde_json::value::RawValue>, ClientError>,
);

/// Histories by the status they hash to (with the upstreams that gave each), and each
/// upstream's confirmed part with its tip height, to tell a lie from a mempool behind.
type Tally = (
    Vec<(Value, Vec<usize>)>,
    HashMap<usize, (Vec<crate::chain::HistoryEntry>, u32)>,
);

fn tally_histories(asked: &[Asked]) -> Tally {
    let mut by_status: Vec<(Value, Vec<usize>)> = Vec::new();
    let mut confirmed = HashMap::new();
    for (up, res) in asked {
        let Some(history) = res
            .as_ref()
            .ok()
            .and_then(|raw| parse_history(raw.get()).ok())
        else {
            continue;
        };
        let tip = up.tip().map_or(0, |t| t.height);
        confirmed.insert(
            up.id,
            (crate::chain::confirmed_part(&history, u32::MAX), tip),
        );
        let status = status_hash(&history).map_or(Value::Null, Value::String);
        match by_status.iter_mut().find(|(s, _)| *s == status) {
            Some((_, ids)) => ids.push(up.id),
            None => by_status.push((status, vec![up.id])),
        }
    }
    (by_status, confirmed)
}

/// True for a status an honest server could send: null or 64 hex characters.
pub(super) fn valid_status(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()),
        _ => false,
    }
}

impl Hub {
    /// Fills an entry's watcher set from the upstreams in step, the missing watchers
    /// subscribing at once (one round trip, not one per watcher). Returns whether a watcher was
    /// added.
    pub(super) async fn fill(&self, entry: &Entry, key: u64, watch: &mut Watch) -> bool {
        let mut filled = false;
        let ever = watch.ever;
        let Watch {
            watchers, shunned, ..
        } = watch;
        // Each upstream is tried at most once per pass, so a failing one is never retried
        // in a tight loop; the next pass comes with a pool event or the refill timer.
        let mut tried: Vec<usize> = Vec::new();
        while watchers.len() < self.watchers_wanted() && !self.pool.is_shutting_down() {
            let now = Instant::now();
            shunned.retain(|_, until| *until > now);
            let mut picks: Vec<(Arc<Upstream>, Client)> = Vec::new();
            let mut ranked = None;
            while watchers.len() + picks.len() < self.watchers_wanted() {
                let mut watching: Vec<usize> = watchers.iter().map(|w| w.up.id).collect();
                watching.extend(&tried);
                watching.extend(picks.iter().map(|(up, _)| up.id));
                let mut exclude = watching.clone();
                exclude.extend(shunned.keys());
                // Upstreams that failed this scripthash lately come last, not never: with
                // too few others they are asked again.
                let Some(pick) = self
                    .pick(entry, key, &exclude, &mut ranked)
                    .or_else(|| self.pick(entry, key, &watching, &mut ranked))
                else {
                    break;
                };
                picks.push(pick);
            }
            if picks.is_empty() {
                break;
            }
            tried.extend(picks.iter().map(|(up, _)| up.id));
            let ids: Vec<usize> = picks.iter().map(|(up, _)| up.id).collect();
            // Two at once (the usual first fill) without a list of futures on the heap.
            let watched: Vec<Option<Watcher>> = match <[_; 2]>::try_from(picks) {
                Ok([(a, ca), (b, cb)]) => {
                    let (a, b) =
                        futures::future::join(self.watch(entry, a, ca), self.watch(entry, b, cb))
                            .await;
                    vec![a, b]
                }
                Err(picks) => {
                    futures::future::join_all(
                        picks
                            .into_iter()
                            .map(|(up, client)| self.watch(entry, up, client)),
                    )
                    .await
                }
            };
            // Exactly the watchers wanted: a vector's first push would make room for four.
            watchers.reserve_exact(self.watchers_wanted().saturating_sub(watchers.len()));
            for (id, w) in ids.into_iter().zip(watched) {
                match w {
                    Some(w) => {
                        if ever {
                            self.moves.fetch_add(1, Ordering::Relaxed);
                        }
                        watchers.push(w);
                        filled = true;
                    }
                    None => {
                        shunned.insert(id, Instant::now() + SHUN_FOR);
                    }
                }
            }
        }
        filled
    }

    /// The upstream to watch the entry's scripthash next, but those in `exclude`: under
    /// `spread`, a member of its set, else the upstream that steps in for it (from `ranked`,
    /// its candidates in order, looked up once per pass); otherwise one spread by `key` over
    /// the upstreams in step.
    pub(super) fn pick(
        &self,
        entry: &Entry,
        key: u64,
        exclude: &[usize],
        ranked: &mut Option<Vec<(Arc<Upstream>, Client)>>,
    ) -> Option<(Arc<Upstream>, Client)> {
        if entry.set.is_empty() {
            return self.pool.pick_for(key, exclude);
        }
        let candidates = ranked.get_or_insert_with(|| {
            self.pool
                .ranked_for_scripthash(true, &entry.scripthash, Some(entry.set))
                .0
        });
        candidates
            .iter()
            .filter(|(up, _)| !exclude.contains(&up.id))
            .find_map(|(up, _)| {
                let client = up.client_for(key)?;
                Some((up.clone(), client))
            })
    }

    /// Subscribes to the entry's scripthash on one upstream, within [`SUBSCRIBE_PATIENCE`], and
    /// vets the status it answers. `None` when it fails, stalls or lies; an upstream that fails
    /// [`STALL_STRIKES`] subscriptions in a row is penalised.
    pub(super) async fn watch(
        &self,
        entry: &Entry,
        up: Arc<Upstream>,
        client: Client,
    ) -> Option<Watcher> {
        let params = vec![Value::String(entry.scripthash.to_string())];
        // Under `isolated`: on a connection of a wallet that subscribed to it.
        let client = match entry_links(entry) {
            Some(links) => match Box::pin(links.client(&up)).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(upstream = %up.name(), error = %e, "no isolated connection");
                    return None;
                }
            },
            None => client,
        };
        up.note_scripthash(&entry.scripthash);
        // Its notifications reach the hub's table through the connection's sink.
        self.tap(&client);
        let answered_before = up.answered();
        let sub = client
            .request_within(SCRIPTHASH_SUBSCRIBE, params.clone(), SUBSCRIBE_PATIENCE)
            .await;
        let initial = match sub {
            Ok(s) => {
                up.subscribe_failures.store(0, Ordering::Relaxed);
                s
            }
            Err(e) if !matches!(e, ClientError::Timeout) => {
                tracing::debug!(upstream = %up.name(), error = %e, "subscribe failed");
                return None;
            }
            // Our patience or the client's request timeout ran out; the subscription may
            // still be made after all.
            _ => {
                client.cast(SCRIPTHASH_UNSUBSCRIBE, params);
                // A stall counts against the upstream only when it answered other requests
                // meanwhile: a selective stall, not a slow or dying server.
                let selective = up.answered() > answered_before && up.connected() > 0;
                tracing::debug!(upstream = %up.name(), selective, "subscribe timed out");
                if selective {
                    let strikes = up.subscribe_failures.fetch_add(1, Ordering::Relaxed) + 1;
                    if strikes >= STALL_STRIKES {
                        up.subscribe_failures.store(0, Ordering::Relaxed);
                        self.pool.penalize(&up, Reason::Stalled);
                    }
                }
                return None;
            }
        };
        let initial: Value = serde_json::from_str(initial.get()).unwrap_or(Value::Bool(false));
        // A null status needs no vetting (see `vet`); the vetting's state is boxed, so that
        // the many subscriptions in flight for unused addresses do not hold room for it.
        if !initial.is_null()
            && Box::pin(self.vet(&up, &client, &entry.scripthash, &initial)).await != Vet::Sound
        {
            // A false status was penalised; a mismatch may be a race with a new transaction:
            // either way another upstream is asked.
            client.cast(SCRIPTHASH_UNSUBSCRIBE, params);
            return None;
        }
        self.count_watcher(&up, &client, true);
        Some(Watcher {
            up,
            client,
            status: Some(initial),
            mempool_behind: false,
            arbitrated: false,
            mismatches: 0,
        })
    }

    /// Lets go of a watcher (its upstream subscription is ended) and shuns its upstream for
    /// the scripthash a while.
    pub(super) fn drop_watcher(
        &self,
        entry: &Entry,
        watchers: &mut Vec<Watcher>,
        i: usize,
        shunned: &mut HashMap<usize, Instant>,
    ) {
        let w = watchers.swap_remove(i);
        shunned.insert(w.up.id, Instant::now() + SHUN_FOR);
        self.release(entry, &w);
        tracing::debug!(upstream = %w.up.name(), "moving a subscription to another upstream");
    }

    /// Ends a watcher's upstream subscription and stops counting it.
    pub(super) fn release(&self, entry: &Entry, w: &Watcher) {
        w.client.cast(
            SCRIPTHASH_UNSUBSCRIBE,
            vec![Value::String(entry.scripthash.to_string())],
        );
        self.count_watcher(&w.up, &w.client, false);
    }

    /// Applies the status every watcher announces, if they agree and there are enough of them;
    /// notes when a disagreement began, and has the entry looked at again
    /// [`ARBITRATE_AFTER`] later.
    pub(super) fn reconcile(self: &Arc<Self>, entry: &Arc<Entry>, watch: &mut Watch) {
        let Watch {
            watchers,
            disagree_since,
            ..
        } = watch;
        let statuses: Vec<&Value> = watchers.iter().filter_map(|w| w.status.as_ref()).collect();
        let Some(first) = statuses.first() else {
            *disagree_since = None;
            return;
        };
        if statuses.iter().all(|s| s == first) {
            *disagree_since = None;
            if statuses.len() >= self.watchers_wanted() {
                let status = (*first).clone();
                // A watcher that announced the agreed status itself is not behind any more.
                for w in watchers.iter_mut().filter(|w| !w.arbitrated) {
                    w.mempool_behind = false;
                }
                self.apply(entry, status);
            }
        } else if disagree_since.is_none() {
            *disagree_since = Some(Instant::now());
            let hub = Arc::downgrade(self);
            let entry = entry.clone();
            tokio::spawn(async move {
                tokio::time::sleep(ARBITRATE_AFTER).await;
                if let Some(hub) = hub.upgrade() {
                    let _ = hub.post(&entry, Event::Due);
                }
            });
        }
    }

    /// Every voter's history of the entry's scripthash (through the checked call; under
    /// `isolated`, over the connections of a wallet that subscribed to it).
    pub(super) async fn histories(
        &self,
        entry: &Entry,
        voters: Vec<(Arc<Upstream>, Client)>,
    ) -> Vec<Asked> {
        let params = vec![Value::String(entry.scripthash.to_string())];
        let links = entry_links(entry);
        voters
            .into_iter()
            .map(|(up, client)| {
                let params = params.clone();
                let links = links.clone();
                async move {
                    let client = match links {
                        Some(links) => match Box::pin(links.client(&up)).await {
                            Ok(c) => c,
                            Err(e) => return (up, Err(e)),
                        },
                        None => client,
                    };
                    let res = self
                        .pool
                        .ask(
                            &up,
                            &client,
                            "blockchain.scripthash.get_history",
                            params,
                            crate::verify::check_history,
                        )
                        .await;
                    (up, res)
                }
            })
            .collect::<futures::stream::FuturesUnordered<_>>()
            .collect::<Vec<_>>()
            .await
    }

    /// Settles a disagreement between watchers: every upstream in step is asked for the
    /// scripthash's history (through the checked call), and the status that two of them agree
    /// on is applied. Watchers on the losing side are penalised (a status that is not what the
    /// majority's history says, or a silence about a change the others report) and replaced.
    pub(super) async fn arbitrate(&self, entry: &Entry, watch: &mut Watch) {
        let Watch {
            watchers, shunned, ..
        } = watch;
        // Under `spread`: the set and the one upstream that steps in for it first (enough for
        // a majority against one liar), the others only when those give no majority (a member
        // stalled while another lied); otherwise every upstream in step at once.
        let (mut voters, reach) =
            self.pool
                .ranked_for_scripthash(true, &entry.scripthash, Some(entry.set));
        let mut rest = if entry.set.is_empty() {
            Vec::new()
        } else {
            voters.split_off((reach + 1).min(voters.len()))
        };
        let mut asked = self.histories(entry, voters).await;
        let (winner, agreeing, confirmed) = loop {
            let (by_status, confirmed) = tally_histories(&asked);
            let total: usize = by_status.iter().map(|(_, ids)| ids.len()).sum();
            if let Some((winner, agreeing)) = by_status
                .into_iter()
                .find(|(_, ids)| ids.len() >= 2 && ids.len() * 2 > total)
            {
                break (winner, agreeing, confirmed);
            }
            if rest.is_empty() {
                tracing::warn!("upstreams disagree on a status and no two agree; asking again");
                return;
            }
            asked.extend(self.histories(entry, std::mem::take(&mut rest)).await);
        };
        // Each answering upstream and its history as given (to prove the winner's).
        let given: HashMap<usize, (Arc<Upstream>, Box<serde_json::value::RawValue>)> = asked
            .into_iter()
            .filter_map(|(up, res)| res.ok().map(|raw| (up.id, (up, raw))))
            .collect();
        let links = entry_links(entry);
        // Two upstreams that agree could still be two liars: the history they agree on must be
        // proven before its status reaches wallets or the other side is penalised.
        let prover = self.prover.get().and_then(Weak::upgrade);
        let winning = agreeing.first().and_then(|id| given.get(id));
        if let (Some(prover), Some((_, raw))) = (prover, winning) {
            let proven = prover
                .prove_history(&entry.scripthash, entry.set, links.as_ref(), raw)
                .await;
            if let Err(refusal) = proven {
                if let Some(reason) = refusal.blame {
                    for (up, _) in agreeing.iter().filter_map(|id| given.get(id)) {
                        self.pool.penalize(up, reason);
                    }
                }
                tracing::warn!(
                    "the status most upstreams agree on has a history that was not proven; \
                     asking again"
                );
                return;
            }
        }
        let mut i = 0;
        while i < watchers.len() {
            let w = &watchers[i];
            if w.status.as_ref() == Some(&winner) {
                i += 1;
                continue;
            }
            // No history from it (a stall, a connection going down): it cannot vouch for this
            // scripthash, so another upstream watches it instead. Not answering is no lie:
            // penalising it once per scripthash would sit a briefly stalled server out for an
            // hour; the pool's timeouts deal with a server that stopped answering.
            if !confirmed.contains_key(&w.up.id) {
                self.drop_watcher(entry, watchers, i, shunned);
                continue;
            }
            // Silent (its history is the majority's, but it never announced the change), wrong
            // (its history's confirmed part is not the majority's), or only behind on the
            // mempool (honest servers see a transaction at different moments: not held against
            // it, and it keeps watching).
            let reason = if agreeing.contains(&w.up.id) {
                Some(Reason::Silent)
            } else if differs(confirmed.get(&w.up.id), confirmed.get(&agreeing[0])) {
                Some(Reason::HistoryMismatch)
            } else {
                None
            };
            // Behind on the mempool twice in a row without catching up in between is no
            // longer lag: it hides what it has been shown.
            let reason = match reason {
                None if watchers[i].mempool_behind => Some(Reason::HistoryMismatch),
                other => other,
            };
            match reason {
                Some(reason) => {
                    self.pool.penalize(&watchers[i].up, reason);
                    self.drop_watcher(entry, watchers, i, shunned);
                }
                None => {
                    watchers[i].mempool_behind = true;
                    i += 1;
                }
            }
        }
        for w in watchers.iter_mut() {
            if w.status.as_ref() != Some(&winner) {
                w.status = Some(winner.clone());
                w.arbitrated = true;
            }
        }
        self.apply(entry, winner);
    }

    /// Checks a status a watcher announced against that upstream's own history: it must be the
    /// status of the history it returns (asked twice, as a transaction may land between the
    /// status and the history). A history it cannot give is not held against it: agreement with
    /// the other watcher still decides what reaches wallets.
    pub(super) async fn vet(
        &self,
        up: &Upstream,
        client: &Client,
        scripthash: &str,
        status: &Value,
    ) -> Vet {
        if !valid_status(status) {
            self.pool.penalize(up, Reason::BadStatus);
            return Vet::False;
        }
        // No history (most of a wallet's addresses): nothing to check it against that the
        // other watcher's agreement does not already settle, and no history to ask for.
        if !self.verify_statuses || status.is_null() {
            return Vet::Sound;
        }
        let params = vec![Value::String(scripthash.to_string())];
        for _ in 0..2 {
            let asked = self
                .pool
                .ask(
                    up,
                    client,
                    "blockchain.scripthash.get_history",
                    params.clone(),
                    |raw| match check_history_status(raw, status.as_str()) {
                        // A malformed history stays false (and penalised); a well-formed one
                        // that does not hash to the status may just be newer.
                        Verdict::False(crate::chain::VerifyError::BadStatus) => {
                            Verdict::Unverifiable("the status may have moved on".into())
                        }
                        verdict => verdict,
                    },
                )
                .await;
            match asked {
                Ok(_) => return Vet::Sound,
                Err(ClientError::Protocol(_)) => continue,
                Err(_) => return Vet::Sound,
            }
        }
        Vet::Mismatch
    }
}

/// How long one upstream may take to answer a subscription before another is asked.
pub const SUBSCRIBE_PATIENCE: Duration = Duration::from_secs(5);
/// How long an upstream that failed a scripthash's subscription is not asked for it again.
pub(super) const SHUN_FOR: Duration = Duration::from_secs(30);
/// Subscriptions an upstream may fail (or stall) in a row before it is penalised.
const STALL_STRIKES: u32 = 3;
/// How often a scripthash with too few watchers looks for another upstream.
pub(super) const REFILL_EVERY: Duration = Duration::from_millis(500);
/// How long watchers may disagree (an honest one a little behind) before the upstreams vote.
pub const ARBITRATE_AFTER: Duration = Duration::from_secs(2);

/// One upstream watching a scripthash: its subscription is on `client`'s connection, whose
/// notifications the hub's sink routes to the entry by scripthash.
pub(super) struct Watcher {
    pub(super) up: Arc<Upstream>,
    pub(super) client: Client,
    /// The last status it announced that passed vetting.
    pub(super) status: Option<Value>,
    /// It lost the last arbitration on its mempool alone and has not announced the agreed
    /// status since.
    pub(super) mempool_behind: bool,
    /// `status` was set by an arbitration, not announced by this upstream.
    pub(super) arbitrated: bool,
    /// Statuses in a row that did not match its own history.
    pub(super) mismatches: u32,
}

/// What vetting made of a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Vet {
    /// The hash of the announcing upstream's history (or not checked).
    Sound,
    /// Not the hash of its history, twice: a race with a new transaction, or a lie.
    Mismatch,
    /// Proven false (not a status at all); the upstream was penalised.
    False,
}

/// Statuses in a row that do not match the announcing upstream's history before it is
/// penalised (honest servers miss once when a transaction lands between status and history).
pub(super) const MISMATCH_STRIKES: u32 = 3;

/// True when two upstreams' confirmed histories differ on the blocks both have seen (a block
/// one of them has not indexed yet is no difference).
fn differs(
    a: Option<&(Vec<crate::chain::HistoryEntry>, u32)>,
    b: Option<&(Vec<crate::chain::HistoryEntry>, u32)>,
) -> bool {
    match (a, b) {
        (Some((a, ta)), Some((b, tb))) => !crate::chain::histories_agree(a, b, (*ta).min(*tb)),
        _ => false,
    }
}
