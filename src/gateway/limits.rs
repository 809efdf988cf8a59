//! Limits that keep one client from hurting the others or the upstreams.
//!
//! - [`Connections`]: every wallet connection, from TCP accept (its TLS or WebSocket
//!   handshake included) until it closes, holds a [`ConnPermit`]; at most `max_sessions`
//!   exist at once, so handshakes cannot pile up beyond the session limit.
//! - [`Clients`]: the per-client table, keyed by [`ClientKey`] (the client's IP address; an
//!   IPv6 client by its /64, which one user usually holds whole). A session takes a
//!   [`ClientTicket`] when it starts, which counts its connection against
//!   `max_sessions_per_client` and gives it the client's shared token bucket and
//!   subscription count. The key comes from the peer address the session is given, never
//!   from anything the client sends.
//!
//! The token bucket charges a request before it runs ([`ClientTicket::try_spend`], refused
//! when the bucket is short) and its answer's size after ([`ClientTicket::charge`], which may
//! leave the bucket in debt, as ElectrumX bumps a session's cost by what it sent): a client
//! asking for long histories is slowed in proportion to what it takes, not to how often it
//! asks. A bucket that runs into debt could not be kept by a rate limiter that refuses
//! charges it cannot cover (such as GCRA), which is why this one is kept here.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Answer bytes that cost one more unit (ElectrumX's default `BANDWIDTH_UNIT_COST`).
pub const BYTES_PER_COST: usize = 5000;

/// Connections open or in their handshake, bounded.
#[derive(Debug)]
pub struct Connections {
    open: AtomicUsize,
    max: usize,
}

/// One connection counted in [`Connections`] until dropped.
#[derive(Debug)]
pub struct ConnPermit(Arc<Connections>);

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Connections {
    /// At most `max` connections at once.
    pub fn new(max: usize) -> Arc<Connections> {
        Arc::new(Connections {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// A permit for one more connection, or None when `max` are open.
    pub fn try_open(self: &Arc<Self>) -> Option<ConnPermit> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnPermit(self.clone()))
    }

    /// Connections open or in their handshake now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// Who a limit applies to: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    /// The key of a peer address (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn of(peer: SocketAddr) -> ClientKey {
        match peer.ip() {
            IpAddr::V4(v4) => ClientKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(IpAddr::V4(v4)),
                None => {
                    let bits = u128::from(v6) & !((1u128 << 64) - 1);
                    ClientKey(IpAddr::V6(bits.into()))
                }
            },
        }
    }
}

/// The per-client limits in force.
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// Connections per client.
    pub max_sessions: usize,
    /// Cost units earned per second; 0: no rate limit.
    pub rate: f64,
    /// Bucket size in cost units.
    pub burst: f64,
    /// Subscriptions per client over all its connections.
    pub max_subscriptions: usize,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, limits: &ClientLimits, now: Instant) {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * limits.rate;
        self.tokens = (self.tokens + earned).min(limits.burst);
        self.at = now;
    }
}

/// One client's shared state.
#[derive(Debug)]
struct Client {
    /// Connections holding a ticket (changed under the table's lock).
    sessions: AtomicUsize,
    subscriptions: AtomicUsize,
    bucket: Mutex<Bucket>,
}

impl Client {
    /// True when nothing would be lost by forgetting this client now.
    fn forgettable(&self, limits: &ClientLimits, now: Instant) -> bool {
        if self.sessions.load(Ordering::Acquire) > 0
            || self.subscriptions.load(Ordering::Acquire) > 0
        {
            return false;
        }
        match self.bucket.lock() {
            Ok(mut b) => {
                b.refill(limits, now);
                b.tokens >= limits.burst
            }
            Err(_) => true,
        }
    }
}

/// The per-client table.
#[derive(Debug)]
pub struct Clients {
    limits: ClientLimits,
    table: Mutex<Table>,
}

#[derive(Debug)]
struct Table {
    clients: HashMap<ClientKey, Arc<Client>>,
    /// Size at which clients without connections whose bucket is full again are forgotten.
    prune_at: usize,
}

const PRUNE_MIN: usize = 1024;

/// Why a client was refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyConnections(pub usize);

impl Clients {
    /// An empty table applying `limits`.
    pub fn new(limits: ClientLimits) -> Arc<Clients> {
        Arc::new(Clients {
            limits,
            table: Mutex::new(Table {
                clients: HashMap::new(),
                prune_at: PRUNE_MIN,
            }),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> &ClientLimits {
        &self.limits
    }

    /// Counts one more connection of `peer`'s client, or refuses it when the client already
    /// has `max_sessions` connections.
    pub fn admit(self: &Arc<Self>, peer: SocketAddr) -> Result<ClientTicket, TooManyConnections> {
        let key = ClientKey::of(peer);
        let now = Instant::now();
        let mut table = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if table.clients.len() >= table.prune_at {
            table
                .clients
                .retain(|_, c| !c.forgettable(&self.limits, now));
            table.prune_at = (table.clients.len() * 2).max(PRUNE_MIN);
        }
        let client = table
            .clients
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Client {
                    sessions: AtomicUsize::new(0),
                    subscriptions: AtomicUsize::new(0),
                    bucket: Mutex::new(Bucket {
                        tokens: self.limits.burst,
                        at: now,
                    }),
                })
            })
            .clone();
        if client.sessions.load(Ordering::Acquire) >= self.limits.max_sessions {
            return Err(TooManyConnections(self.limits.max_sessions));
        }
        client.sessions.fetch_add(1, Ordering::AcqRel);
        Ok(ClientTicket {
            clients: self.clone(),
            client,
            key,
            open: AtomicBool::new(true),
        })
    }

    /// Clients the table holds now (with connections, subscriptions, or a bucket refilling).
    pub fn len(&self) -> usize {
        self.table.lock().map(|t| t.clients.len()).unwrap_or(0)
    }

    /// True when the table holds no client.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One connection of a client: counted until dropped; spends from the client's bucket and
/// counts its subscriptions.
#[derive(Debug)]
pub struct ClientTicket {
    clients: Arc<Clients>,
    client: Arc<Client>,
    key: ClientKey,
    /// Still counted as one of the client's connections.
    open: AtomicBool,
}

impl ClientTicket {
    /// Stops counting this connection against the client (when the connection closes, while
    /// request tasks holding the ticket may still finish). Also done on drop.
    pub fn close(&self) {
        if !self.open.swap(false, Ordering::AcqRel) {
            return;
        }
        let now = Instant::now();
        let mut table = self
            .clients
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.client.sessions.fetch_sub(1, Ordering::AcqRel);
        if self.client.forgettable(&self.clients.limits, now) {
            table.clients.remove(&self.key);
        }
    }

    /// Takes `cost` units from the client's bucket if it holds that many; false (nothing
    /// taken) when it does not. Always true when there is no rate limit.
    pub fn try_spend(&self, cost: f64) -> bool {
        let limits = &self.clients.limits;
        if limits.rate <= 0.0 {
            return true;
        }
        let Ok(mut b) = self.client.bucket.lock() else {
            return true;
        };
        b.refill(limits, Instant::now());
        if b.tokens < cost {
            return false;
        }
        b.tokens -= cost;
        true
    }

    /// Charges `cost` units after the fact (an answer's size): the bucket may go into debt,
    /// down to minus its size, and the client waits for it to refill.
    pub fn charge(&self, cost: f64) {
        let limits = &self.clients.limits;
        if limits.rate <= 0.0 || cost <= 0.0 {
            return;
        }
        if let Ok(mut b) = self.client.bucket.lock() {
            b.refill(limits, Instant::now());
            b.tokens = (b.tokens - cost).max(-limits.burst);
        }
    }

    /// Counts one more subscription of the client, or false when it holds the most allowed.
    pub fn try_subscribe(&self) -> bool {
        let max = self.clients.limits.max_subscriptions;
        self.client
            .subscriptions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Counts `n` subscriptions of the client as gone.
    pub fn unsubscribed(&self, n: usize) {
        let _ = self
            .client
            .subscriptions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                Some(s.saturating_sub(n))
            });
    }
}

impl Drop for ClientTicket {
    fn drop(&mut self) {
        self.close();
    }
}

/// The cost of an answer of `bytes` bytes beyond the request's own unit.
pub fn answer_cost(bytes: usize) -> f64 {
    (bytes / BYTES_PER_COST) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: f64, burst: f64) -> ClientLimits {
        ClientLimits {
            max_sessions: 2,
            rate,
            burst,
            max_subscriptions: 3,
        }
    }

    #[test]
    fn ipv6_clients_are_grouped_by_64() {
        let a: SocketAddr = "[2001:db8:1:2:aaaa::1]:1".parse().unwrap();
        let b: SocketAddr = "[2001:db8:1:2:bbbb::9]:2".parse().unwrap();
        let c: SocketAddr = "[2001:db8:1:3::1]:3".parse().unwrap();
        assert_eq!(ClientKey::of(a), ClientKey::of(b));
        assert_ne!(ClientKey::of(a), ClientKey::of(c));
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:5".parse().unwrap();
        let v4: SocketAddr = "10.0.0.1:6".parse().unwrap();
        assert_eq!(ClientKey::of(mapped), ClientKey::of(v4));
    }

    #[test]
    fn connections_per_client_are_counted_until_dropped() {
        let clients = Clients::new(limits(0.0, 1.0));
        let p: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let q: SocketAddr = "10.0.0.2:1".parse().unwrap();
        let a = clients.admit(p).unwrap();
        let _b = clients.admit(p).unwrap();
        assert_eq!(clients.admit(p).unwrap_err(), TooManyConnections(2));
        let _other = clients.admit(q).unwrap();
        drop(a);
        let c = clients.admit(p).unwrap();
        // Closed, then dropped: counted off once.
        c.close();
        drop(c);
        let _d = clients.admit(p).unwrap();
        assert!(clients.admit(p).is_err());
    }

    #[test]
    fn bucket_refuses_when_short_and_debt_holds_until_refilled() {
        let clients = Clients::new(limits(1.0, 10.0));
        let t = clients.admit("10.0.0.1:1".parse().unwrap()).unwrap();
        for _ in 0..10 {
            assert!(t.try_spend(1.0));
        }
        assert!(!t.try_spend(1.0));
        // A second connection of the same client shares the bucket.
        let u = clients.admit("10.0.0.1:2".parse().unwrap()).unwrap();
        assert!(!u.try_spend(1.0));
        u.charge(100.0);
        let tokens = u.client.bucket.lock().map(|b| b.tokens).unwrap_or(0.0);
        assert!(
            tokens <= -9.0,
            "debt is kept, bounded by the bucket size: {tokens}"
        );
    }

    #[test]
    fn subscriptions_per_client_are_bounded() {
        let clients = Clients::new(limits(0.0, 1.0));
        let t = clients.admit("10.0.0.1:1".parse().unwrap()).unwrap();
        assert!(t.try_subscribe() && t.try_subscribe() && t.try_subscribe());
        assert!(!t.try_subscribe());
        t.unsubscribed(2);
        assert!(t.try_subscribe());
    }

    #[test]
    fn a_client_is_forgotten_only_once_nothing_is_lost() {
        let clients = Clients::new(limits(0.001, 10.0));
        let t = clients.admit("10.0.0.1:1".parse().unwrap()).unwrap();
        assert!(t.try_spend(5.0));
        drop(t);
        // The bucket is not full again: reconnecting must not reset it.
        assert_eq!(clients.len(), 1);
        let t = clients.admit("10.0.0.1:1".parse().unwrap()).unwrap();
        assert!(!t.try_spend(6.0));
        drop(t);
        let fresh = Clients::new(limits(0.0, 10.0));
        drop(fresh.admit("10.0.0.1:1".parse().unwrap()).unwrap());
        assert!(fresh.is_empty());
    }

    #[test]
    fn connections_are_bounded_and_released() {
        let c = Connections::new(2);
        let a = c.try_open().unwrap();
        let _b = c.try_open().unwrap();
        assert!(c.try_open().is_none());
        drop(a);
        assert_eq!(c.open(), 1);
        assert!(c.try_open().is_some());
    }
}
