//! Candidate upstreams: which servers may take a slot, in what order, and what the pool
//! remembers about servers between runs (`upstreams.json`).
//!
//! Candidates come in three tiers, always in this order: servers an operator named (configured
//! beyond the active count, or added through the admin API), servers of the server list
//! (bundled or a file), and servers the upstreams announced as peers. Within a tier they keep
//! the order they came in. A peer announcement cannot outrank what the operator chose, and
//! cannot flood the list: peer-learned servers are capped in all ([`MAX_PEERS`]) and per
//! announcing upstream ([`MAX_PEERS_PER_ANNOUNCER`]), and at most one of them per network
//! ([`Subnet`]: IPv4 /16, IPv6 /32) is kept.
//!
//! Diversity: a candidate may not take a slot while another active upstream is in its network,
//! unless it was named by the operator or `upstreams.allow_same_subnet` is set. A server's
//! network is known from its IP literal or, for a peer-learned host name, from the address its
//! peer entry gave; the pool resolves no names itself (behind a proxy that would leak them,
//! and a name resolves to what its DNS says at connection time anyway), so host names without
//! such an address are not grouped. Loopback addresses are not grouped either: a server on
//! this machine is the operator's, and peers may not announce one outside regtest.

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;

use crate::transport::ServerUrl;

/// Most peer-learned servers known at once (waiting or active).
pub const MAX_PEERS: usize = 50;
/// Most peer-learned servers known at once from one announcing upstream.
pub const MAX_PEERS_PER_ANNOUNCER: usize = 4;
/// A peer-learned server is remembered this long (seconds) after a peer list last named it
/// or it last answered.
pub const PEER_MEMORY_SECS: u64 = 7 * 24 * 3600;
/// Most servers remembered in `upstreams.json`.
pub const MAX_REMEMBERED: usize = 300;

/// Where a server came from; the order of the candidate tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Named by the operator: configured, or added through the admin API.
    Configured,
    /// From the server list (bundled or a file).
    List,
    /// Announced by an upstream (`server.peers.subscribe`).
    Peer,
}

/// A network for the diversity rule: an IPv4 /16 or an IPv6 /32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subnet {
    /// The first two octets of an IPv4 address.
    V4([u8; 2]),
    /// The first two segments of an IPv6 address.
    V6([u16; 2]),
}

/// The network of `ip`; none for loopback and unspecified addresses (this machine).
pub fn subnet(ip: IpAddr) -> Option<Subnet> {
    let ip = unmap(ip);
    if ip.is_loopback() || ip.is_unspecified() {
        return None;
    }
    Some(match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            Subnet::V4([o[0], o[1]])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            Subnet::V6([s[0], s[1]])
        }
    })
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they are.
fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// True for an address a server on the internet can have: not loopback, private, link-local,
/// shared (100.64/10), unspecified, broadcast or multicast. Peers announcing anything else
/// would make the gateway dial into its own network.
pub fn is_public(ip: IpAddr) -> bool {
    match unmap(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// The address of `url` when its host is an IP literal.
pub fn ip_of(url: &ServerUrl) -> Option<IpAddr> {
    url.host.parse().ok()
}

/// Where a known server came from, and what is known of its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Its tier.
    pub origin: Origin,
    /// The upstream (`host:port`) whose peer list named it (peer-learned servers only).
    pub announcer: Option<String>,
    /// Its address: the URL's IP literal, else the one its peer entry gave.
    pub ip: Option<IpAddr>,
    /// When a peer list last named it, seconds since the epoch (peer-learned servers only).
    pub seen: u64,
}

impl Source {
    /// A server the operator named.
    pub fn configured() -> Source {
        Source {
            origin: Origin::Configured,
            announcer: None,
            ip: None,
            seen: 0,
        }
    }

    /// A server of the server list.
    pub fn listed() -> Source {
        Source {
            origin: Origin::List,
            ..Source::configured()
        }
    }

    /// A server `announcer` named as a peer at `seen`.
    pub fn peer(announcer: &str, ip: Option<IpAddr>, seen: u64) -> Source {
        Source {
            origin: Origin::Peer,
            announcer: Some(announcer.to_string()),
            ip,
            seen,
        }
    }
}

/// Why a peer-learned server was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// It is known already (its last sighting is updated).
    Known,
    /// [`MAX_PEERS`] peer-learned servers are known.
    Full,
    /// [`MAX_PEERS_PER_ANNOUNCER`] of its announcer's are known.
    AnnouncerFull,
    /// A peer-learned server in its network is known.
    SameSubnet,
}

/// The servers waiting to take a slot, in tier order, and where every known server (waiting or
/// active) came from.
#[derive(Debug, Default)]
pub struct Candidates {
    waiting: VecDeque<ServerUrl>,
    known: HashMap<ServerUrl, Source>,
}

impl Candidates {
    /// Records where a server came from without queueing it (an active one). An operator's or
    /// the list's word wins over a peer's.
    pub fn know(&mut self, url: ServerUrl, source: Source) {
        match self.known.get_mut(&url) {
            Some(known) if known.origin <= source.origin => {}
            Some(known) => *known = source,
            None => {
                self.known.insert(url, source);
            }
        }
    }

    /// Queues `url` at the end of its tier. False when it waits already.
    pub fn enqueue(&mut self, url: ServerUrl, source: Source) -> bool {
        if self.waiting.contains(&url) {
            return false;
        }
        self.know(url.clone(), source);
        self.insert_in_tier(url);
        true
    }

    fn origin(&self, url: &ServerUrl) -> Origin {
        self.known.get(url).map_or(Origin::Peer, |s| s.origin)
    }

    fn insert_in_tier(&mut self, url: ServerUrl) {
        let origin = self.origin(&url);
        let at = self
            .waiting
            .iter()
            .position(|u| self.origin(u) > origin)
            .unwrap_or(self.waiting.len());
        self.waiting.insert(at, url);
    }

    /// Adds a server `announcer` named as a peer at `now`, at the end of the list, within the
    /// caps. A server known already only has its sighting updated.
    pub fn add_peer(
        &mut self,
        url: ServerUrl,
        announcer: &str,
        ip: Option<IpAddr>,
        now: u64,
    ) -> Result<(), Refused> {
        if let Some(known) = self.known.get_mut(&url) {
            if known.origin == Origin::Peer {
                known.seen = known.seen.max(now);
            }
            return Err(Refused::Known);
        }
        let peers: Vec<&Source> = self
            .known
            .values()
            .filter(|s| s.origin == Origin::Peer)
            .collect();
        if peers.len() >= MAX_PEERS {
            return Err(Refused::Full);
        }
        let from_announcer = peers
            .iter()
            .filter(|s| s.announcer.as_deref() == Some(announcer))
            .count();
        if from_announcer >= MAX_PEERS_PER_ANNOUNCER {
            return Err(Refused::AnnouncerFull);
        }
        let net = ip.and_then(subnet);
        if net.is_some() && peers.iter().any(|s| s.ip.and_then(subnet) == net) {
            return Err(Refused::SameSubnet);
        }
        self.known
            .insert(url.clone(), Source::peer(announcer, ip, now));
        self.waiting.push_back(url);
        Ok(())
    }

    /// Takes the first waiting server that `fits` (given its source and network) accepts.
    pub fn take(&mut self, fits: impl Fn(&Source, Option<Subnet>) -> bool) -> Option<ServerUrl> {
        let at = self.waiting.iter().position(|u| {
            self.known
                .get(u)
                .is_some_and(|s| fits(s, self.subnet_of(u)))
        })?;
        self.waiting.remove(at)
    }

    /// A server that left its slot after failing: an operator's or a listed one waits again at
    /// the end of its tier; a peer-learned one is forgotten, which makes room for another.
    pub fn requeue(&mut self, url: ServerUrl) {
        match self.known.get(&url).map(|s| s.origin) {
            Some(Origin::Peer) => {
                self.known.remove(&url);
            }
            Some(_) => {
                if !self.waiting.contains(&url) {
                    self.insert_in_tier(url);
                }
            }
            None => {
                self.enqueue(url, Source::configured());
            }
        }
    }

    /// The network of a known server: its IP literal's, else the address its peer entry gave.
    pub fn subnet_of(&self, url: &ServerUrl) -> Option<Subnet> {
        ip_of(url)
            .or_else(|| self.known.get(url).and_then(|s| s.ip))
            .and_then(subnet)
    }

    /// Where a known server came from.
    #[cfg(test)]
    pub fn source(&self, url: &ServerUrl) -> Option<&Source> {
        self.known.get(url)
    }

    /// Every known server, waiting or active, with its source.
    pub fn known(&self) -> impl Iterator<Item = (&ServerUrl, &Source)> {
        self.known.iter()
    }

    /// The waiting servers, in the order they would take a slot.
    pub fn urls(&self) -> Vec<ServerUrl> {
        self.waiting.iter().cloned().collect()
    }
}

/// What the pool learned about a server, saved in the data directory (`upstreams.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Learned {
    /// Last successful connection, seconds since the epoch.
    pub last_success: Option<u64>,
    /// Last score (lower is better).
    pub score: Option<f64>,
    /// Failed connection attempts in a row when last seen.
    pub failures: u32,
    /// Server software.
    pub software: String,
    /// Where it came from when last saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// Peer-learned: when a peer list last named it, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
    /// Peer-learned: the upstream whose peer list named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announced_by: Option<String>,
    /// Peer-learned: the address its peer entry gave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

impl Learned {
    /// Seconds since the epoch when it was last named by a peer or answered.
    pub fn last_heard(&self) -> u64 {
        self.last_seen
            .unwrap_or(0)
            .max(self.last_success.unwrap_or(0))
    }

    /// A server remembered as peer-learned (or from a file that did not say) and heard of
    /// within [`PEER_MEMORY_SECS`] of `now`.
    pub fn recent_peer(&self, now: u64) -> bool {
        matches!(self.origin, None | Some(Origin::Peer))
            && self.last_heard().saturating_add(PEER_MEMORY_SECS) >= now
    }
}

/// Keeps what is worth remembering: servers configured or listed now, and the peer-learned
/// ones the pool knows now (within the caps) that were heard of within [`PEER_MEMORY_SECS`];
/// at most [`MAX_REMEMBERED`], the operator's first, then listed ones, then the peers heard of
/// most recently. `current` gives the origin of the servers the pool knows now (by URL).
pub fn prune(learned: &mut HashMap<String, Learned>, current: &HashMap<String, Origin>, now: u64) {
    learned.retain(|url, l| match current.get(url) {
        Some(Origin::Configured | Origin::List) => true,
        Some(Origin::Peer) => l.recent_peer(now),
        None => false,
    });
    if learned.len() <= MAX_REMEMBERED {
        return;
    }
    let mut ranked: Vec<(Origin, u64, String)> = learned
        .iter()
        .map(|(url, l)| {
            let origin = current.get(url).copied().unwrap_or(Origin::Peer);
            (origin, u64::MAX - l.last_heard(), url.clone())
        })
        .collect();
    ranked.sort();
    let keep: HashSet<String> = ranked
        .into_iter()
        .take(MAX_REMEMBERED)
        .map(|(_, _, url)| url)
        .collect();
    learned.retain(|url, _| keep.contains(url));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> ServerUrl {
        s.parse().unwrap()
    }

    #[test]
    fn networks_group_by_16_and_32_and_leave_this_machine_out() {
        let net = |s: &str| subnet(s.parse().unwrap());
        assert_eq!(net("203.0.113.7"), net("203.0.9.1"));
        assert_ne!(net("203.0.113.7"), net("203.1.113.7"));
        assert_eq!(net("::ffff:203.0.1.1"), net("203.0.2.2"));
        assert_eq!(net("2001:db8:1::1"), net("2001:db8:ffff::2"));
        assert_ne!(net("2001:db8::1"), net("2001:db9::1"));
        assert_eq!(net("127.0.0.1"), None);
        assert_eq!(net("127.1.2.3"), None);
        assert_eq!(net("::1"), None);
        for private in [
            "10.1.2.3",
            "192.168.0.1",
            "172.16.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "127.0.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "224.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["203.0.113.7", "8.8.8.8", "2001:db8::1", "100.128.0.1"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn tiers_keep_their_order_whatever_arrives_when() {
        let mut c = Candidates::default();
        let ip = |s: &str| Some(s.parse().unwrap());
        c.add_peer(url("tcp://198.51.100.1:1"), "a:1", ip("198.51.100.1"), 5)
            .unwrap();
        c.enqueue(url("tcp://203.0.113.1:1"), Source::listed());
        c.enqueue(url("tcp://192.0.2.1:1"), Source::configured());
        c.enqueue(url("tcp://203.0.114.1:1"), Source::listed());
        assert_eq!(
            c.urls(),
            vec![
                url("tcp://192.0.2.1:1"),
                url("tcp://203.0.113.1:1"),
                url("tcp://203.0.114.1:1"),
                url("tcp://198.51.100.1:1"),
            ]
        );
        // A configured server that failed goes back ahead of the list; a peer is forgotten.
        let first = c.take(|_, _| true).unwrap();
        c.requeue(first.clone());
        assert_eq!(c.urls()[0], first);
        let peer = url("tcp://198.51.100.1:1");
        c.requeue(peer.clone());
        assert!(c.source(&peer).is_none());
        // A listed server a peer also announces stays listed.
        let listed = url("tcp://203.0.113.1:1");
        assert_eq!(
            c.add_peer(listed.clone(), "a:1", None, 9),
            Err(Refused::Known)
        );
        assert_eq!(c.source(&listed).unwrap().origin, Origin::List);
    }

    #[test]
    fn pruning_keeps_the_operators_and_recent_peers_only() {
        let now = 10 * PEER_MEMORY_SECS;
        let mut learned = HashMap::new();
        let mut current = HashMap::new();
        let peer = |seen: u64| Learned {
            origin: Some(Origin::Peer),
            last_seen: Some(seen),
            ..Learned::default()
        };
        learned.insert("tcp://conf:1".to_string(), Learned::default());
        current.insert("tcp://conf:1".to_string(), Origin::Configured);
        learned.insert(
            "tcp://gone:1".to_string(),
            Learned {
                origin: Some(Origin::Configured),
                ..Learned::default()
            },
        );
        learned.insert(
            "tcp://old-peer:1".to_string(),
            peer(now - PEER_MEMORY_SECS - 1),
        );
        learned.insert("tcp://new-peer:1".to_string(), peer(now - 60));
        learned.insert("tcp://unknown-peer:1".to_string(), peer(now));
        for i in 0..1000 {
            learned.insert(format!("tcp://p{i}:1"), peer(now - i));
        }
        for url in learned.keys() {
            if url.contains("peer:") || url.starts_with("tcp://p") {
                current.insert(url.clone(), Origin::Peer);
            }
        }
        current.remove("tcp://unknown-peer:1");
        prune(&mut learned, &current, now);
        assert_eq!(learned.len(), MAX_REMEMBERED);
        assert!(learned.contains_key("tcp://conf:1"));
        assert!(!learned.contains_key("tcp://gone:1"));
        assert!(!learned.contains_key("tcp://old-peer:1"));
        // A peer the pool does not know now (refused by the caps) is not kept either.
        assert!(!learned.contains_key("tcp://unknown-peer:1"));
        // The most recently heard of are kept.
        assert!(learned.contains_key("tcp://p0:1") && learned.contains_key("tcp://new-peer:1"));
        assert!(!learned.contains_key("tcp://p999:1"));
    }
}
