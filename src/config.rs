//! Gateway configuration: `config.toml`, with command-line overrides applied on top.
//!
//! Every key is optional; [`Config::default`] is what an empty file means. The annotated
//! `config.toml` at the top of the repository documents each key.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::protocol::Policy;
use crate::transport::ServerUrl;

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Network name: bitcoin, testnet, testnet4, signet or regtest.
    pub network: String,
    /// Where the gateway keeps its state (TLS certificate, pins, learned upstreams).
    pub data_dir: PathBuf,
    /// Wallet-facing listeners.
    pub listen: ListenConfig,
    /// Upstream servers.
    pub upstreams: UpstreamConfig,
    /// Per-session limits.
    pub limits: LimitsConfig,
    /// Routing policy.
    pub routing: RoutingConfig,
    /// Verification of upstream answers.
    pub verify: VerifyConfig,
    /// What each upstream may learn of the wallets.
    pub privacy: PrivacyConfig,
}

/// How scripthashes are spread over upstreams, so that no upstream learns every address of a
/// wallet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrivacyMode {
    /// Every upstream may be asked about any scripthash (the fastest or best ranked first).
    Off,
    /// Each scripthash is assigned, by a keyed hash with a secret kept in the data directory,
    /// to a fixed set of as many upstreams as its checks and votes need; everything the
    /// gateway does for it stays inside that set. A wallet's scripthashes are balanced over
    /// the sets, so each upstream sees about `set / upstreams` of a wallet.
    Spread,
    /// As `spread`, and each wallet connection talks to the upstreams over connections of its
    /// own (through its own Tor circuit when a SOCKS5 proxy is set), so no upstream can link
    /// two wallets by the connection their requests arrive on.
    Isolated,
}

/// Privacy settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyConfig {
    /// `spread` (default), `isolated` or `off`.
    pub mode: PrivacyMode,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            mode: PrivacyMode::Spread,
        }
    }
}

/// Verification settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerifyConfig {
    /// An upstream more than this many blocks behind the verified tip is demoted: it serves no
    /// read that depends on the tip until it catches up.
    pub max_lag: u32,
    /// First sit-out period, seconds, of an upstream caught giving a false answer; it doubles
    /// with every further offence (at most an hour). One offence is forgiven for every hour
    /// without one after the sit-out ends.
    pub penalty_secs: f64,
    /// Check every scripthash status an upstream announces: against the history it returns,
    /// and its confirmed part against another upstream's.
    pub statuses: bool,
    /// Verified answers kept in memory (transactions, merkle proofs, fees, scripthash answers
    /// at a status), at most.
    pub cache_entries: usize,
    /// Mebibytes those answers may take, at most (the least recently used go first); 0 keeps
    /// nothing.
    pub cache_mib: u64,
    /// Merkle proofs are cached once their block is this deep.
    pub cache_depth: u32,
    /// Prove every confirmed entry of a history before it reaches a wallet: its merkle proof,
    /// from the scripthash's own upstreams, against the verified header at its height (one
    /// `get_merkle` per entry the first time, then cached while its block is on the chain).
    pub prove_history: bool,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            max_lag: 1,
            penalty_secs: 30.0,
            statuses: true,
            cache_entries: 50_000,
            cache_mib: 256,
            cache_depth: 6,
            prove_history: true,
        }
    }
}

/// Wallet-facing listeners. An empty string disables a listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// Plain TCP listener.
    pub tcp: String,
    /// TLS listener.
    pub tls: String,
    /// WebSocket listener (off by default).
    pub ws: String,
    /// HTTP listener for metrics, health, status and admin.
    pub http: String,
    /// PEM certificate for the TLS listener; empty: a self-signed one kept in the data directory.
    pub tls_cert: String,
    /// PEM private key for the TLS listener.
    pub tls_key: String,
    /// Bearer token the admin API requires; needed to put the HTTP listener on a
    /// non-loopback address.
    pub admin_token: String,
    /// Seconds a drain (SIGTERM, SIGINT, [`crate::gateway::Gateway::drain`]) waits for wallet
    /// sessions to finish their requests before the rest are closed.
    pub drain_secs: f64,
    /// Source networks (CIDR, e.g. `10.0.0.0/8`, or a single address) of balancers that put a
    /// PROXY protocol header (v1 or v2) before each wallet connection; a connection from one
    /// of them must start with a header. Empty: PROXY protocol off.
    pub proxy_protocol_from: Vec<String>,
    /// Browser origins (`scheme://host[:port]`) allowed to open a WebSocket connection;
    /// `"*"` allows any. A handshake without an `Origin` header (not a browser) is always
    /// allowed; one with an origin not listed is refused with HTTP 403.
    pub ws_origins: Vec<String>,
}

/// Upstream servers and how to reach them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Preferred upstream URLs, tried first (`ssl://host:port`, `tcp://`, `ws://`, `host:port:s`).
    pub servers: Vec<String>,
    /// A Connectrum-format `servers.json` of candidates; empty: the bundled list of the network.
    pub server_list: String,
    /// Use candidates from the server list (bundled or file) when configured servers fail.
    pub use_server_list: bool,
    /// How many upstreams to keep active.
    pub active: usize,
    /// Connections per upstream (spreads load past per-IP server limits).
    pub connections_per_upstream: usize,
    /// SOCKS5 proxy for every upstream, e.g. `socks5://127.0.0.1:9050`; empty: none
    /// (`.onion` servers always go through Tor at 127.0.0.1:9050).
    pub proxy: String,
    /// TLS checking for `ssl://` upstreams: `ca`, `pin` (trust on first use) or `insecure`.
    pub tls_verify: String,
    /// Connect timeout in seconds.
    pub connect_timeout_secs: f64,
    /// Timeout of one upstream request in seconds.
    pub request_timeout_secs: f64,
    /// Interval of keepalive pings in seconds.
    pub ping_interval_secs: f64,
    /// First reconnect delay in seconds (doubles up to `reconnect_max_secs`, with jitter).
    pub reconnect_initial_secs: f64,
    /// Longest reconnect delay in seconds.
    pub reconnect_max_secs: f64,
    /// Consecutive failed connection attempts after which an upstream is replaced by a
    /// candidate (when one is available).
    pub replace_after_failures: u32,
    /// Let a candidate from the server list or from peers take a slot while another active
    /// upstream is in its network (IPv4 /16, IPv6 /32). Servers the operator names are never
    /// held back by this rule.
    pub allow_same_subnet: bool,
}

/// Per-session limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Longest request line a wallet may send, in bytes.
    pub max_line_bytes: usize,
    /// Requests one session may have in flight; further lines wait (backpressure).
    pub max_pending_per_session: usize,
    /// Scripthash subscriptions one session may hold.
    pub max_subscriptions_per_session: usize,
    /// Longest time one wallet request may take before it is answered with an error, seconds.
    pub request_timeout_secs: f64,
    /// A session that sends nothing for this long is closed, seconds.
    pub idle_timeout_secs: f64,
    /// Most wallet sessions at once, counting connections still in their TLS or WebSocket
    /// handshake; further connections are closed at once.
    pub max_sessions: usize,
    /// Most connections (sessions and handshakes) from one client address (IPv6: one /64).
    pub max_sessions_per_client: usize,
    /// Cost units a client address earns per second (a plain request costs 1; an answer costs
    /// one more per [`crate::gateway::limits::BYTES_PER_COST`] bytes). 0: no rate limit.
    pub client_rate: f64,
    /// Cost units a client address may spend at once (the token bucket's size).
    pub client_burst: f64,
    /// Scripthash subscriptions one client address may hold over all its connections.
    pub max_subscriptions_per_client: usize,
    /// Distinct scripthashes the gateway subscribes to upstream, over all wallets.
    pub max_subscriptions: usize,
    /// Most requests in one batch; a longer batch gets one error.
    pub max_batch: usize,
    /// Most bytes of answers one batch collects; reads answered past it get an error instead.
    pub max_batch_answer_bytes: usize,
    /// Over-limit errors in a row after which a connection is closed for abuse.
    pub abuse_strikes: u32,
}

/// Routing settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// Shortest hedge delay, milliseconds: a `fastest` read is also sent to the next upstream
    /// when the first has not answered after max(this, its recent p90 latency).
    pub hedge_min_ms: u64,
    /// Longest hedge delay, milliseconds.
    pub hedge_max_ms: u64,
    /// How many agreeing answers a `quorum` read needs before it answers (more upstreams are
    /// asked when answers disagree; the majority of all of them then decides).
    pub quorum: usize,
    /// Policy overrides per method: `fastest`, `quorum`, `median`, `broadcast` or `local`.
    pub policy: BTreeMap<String, Policy>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            network: "bitcoin".into(),
            data_dir: default_data_dir(),
            listen: ListenConfig::default(),
            upstreams: UpstreamConfig::default(),
            limits: LimitsConfig::default(),
            routing: RoutingConfig::default(),
            verify: VerifyConfig::default(),
            privacy: PrivacyConfig::default(),
        }
    }
}

impl ListenConfig {
    /// `proxy_protocol_from` parsed: networks in CIDR form, a bare address meaning that
    /// address alone.
    pub fn proxy_networks(&self) -> anyhow::Result<Vec<ipnet::IpNet>> {
        self.proxy_protocol_from
            .iter()
            .map(|s| {
                let s = s.trim();
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "listen.proxy_protocol_from: {s:?} is not a network (e.g. \"10.0.0.0/8\") or an address"
                        )
                    })
            })
            .collect()
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            tcp: "127.0.0.1:50001".into(),
            tls: "127.0.0.1:50002".into(),
            ws: String::new(),
            http: "127.0.0.1:9190".into(),
            tls_cert: String::new(),
            tls_key: String::new(),
            admin_token: String::new(),
            drain_secs: 10.0,
            proxy_protocol_from: Vec::new(),
            ws_origins: Vec::new(),
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            servers: Vec::new(),
            server_list: String::new(),
            use_server_list: true,
            active: 6,
            connections_per_upstream: 1,
            proxy: String::new(),
            tls_verify: "pin".into(),
            connect_timeout_secs: 10.0,
            request_timeout_secs: 20.0,
            ping_interval_secs: 60.0,
            reconnect_initial_secs: 1.0,
            reconnect_max_secs: 60.0,
            replace_after_failures: 5,
            allow_same_subnet: false,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_line_bytes: 1_000_000,
            max_pending_per_session: 64,
            max_subscriptions_per_session: 50_000,
            request_timeout_secs: 30.0,
            idle_timeout_secs: 600.0,
            max_sessions: 4096,
            max_sessions_per_client: 64,
            client_rate: 200.0,
            client_burst: 50_000.0,
            max_subscriptions_per_client: 50_000,
            max_subscriptions: 100_000,
            max_batch: 1000,
            max_batch_answer_bytes: 16_000_000,
            abuse_strikes: 10,
        }
    }
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            hedge_min_ms: 150,
            hedge_max_ms: 3000,
            quorum: 2,
            policy: BTreeMap::new(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(home) => Path::new(&home).join(".electrum-gateway"),
        None => PathBuf::from(".electrum-gateway"),
    }
}

/// The most requests `[limits] max_pending_per_session` may allow.
pub const MAX_PENDING_PER_SESSION: usize = 1_000_000;
/// The most answers `[verify] cache_entries` may keep.
pub const MAX_CACHE_ENTRIES: usize = 10_000_000;

/// Converts seconds from the config into a duration, clamping nonsense to sane bounds.
pub fn secs(v: f64) -> Duration {
    if v.is_finite() && v > 0.0 {
        Duration::from_secs_f64(v.min(1e9))
    } else {
        Duration::ZERO
    }
}

impl Config {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Parses TOML text and validates it.
    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        let cfg: Config = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.network()?;
        for s in &self.upstreams.servers {
            s.parse::<ServerUrl>()?;
        }
        for (name, addr) in [
            ("listen.tcp", &self.listen.tcp),
            ("listen.tls", &self.listen.tls),
            ("listen.ws", &self.listen.ws),
            ("listen.http", &self.listen.http),
        ] {
            if !addr.is_empty() {
                addr.parse::<SocketAddr>()
                    .map_err(|e| anyhow::anyhow!("{name} = {addr:?}: {e}"))?;
            }
        }
        self.listen.proxy_networks()?;
        if !(self.listen.drain_secs.is_finite() && self.listen.drain_secs >= 0.0) {
            anyhow::bail!(
                "listen.drain_secs = {}: must be a number of seconds, 0 or more",
                self.listen.drain_secs
            );
        }
        if self.upstreams.active == 0 {
            anyhow::bail!("upstreams.active must be at least 1");
        }
        if self.upstreams.connections_per_upstream == 0 {
            anyhow::bail!("upstreams.connections_per_upstream must be at least 1");
        }
        match self.upstreams.tls_verify.as_str() {
            "ca" | "pin" | "insecure" => {}
            other => anyhow::bail!("upstreams.tls_verify = {other:?}: use ca, pin or insecure"),
        }
        if !self.upstreams.proxy.is_empty() {
            self.upstreams
                .proxy
                .parse::<crate::client::ProxyConfig>()
                .map_err(|e| anyhow::anyhow!("upstreams.proxy: {e}"))?;
        }
        for method in self.routing.policy.keys() {
            if crate::protocol::lookup(method).is_none() {
                anyhow::bail!("routing.policy: unknown method {method:?}");
            }
        }
        if self.limits.max_pending_per_session == 0 || self.limits.max_line_bytes < 1024 {
            anyhow::bail!("limits: max_pending_per_session >= 1 and max_line_bytes >= 1024");
        }
        // Sizes taken at once: a session's queue of answers (tokio refuses a channel of more
        // than usize::MAX >> 3 with a panic) and the answer cache's index (allocated whole).
        if self.limits.max_pending_per_session > MAX_PENDING_PER_SESSION {
            anyhow::bail!(
                "limits.max_pending_per_session must be at most {MAX_PENDING_PER_SESSION}"
            );
        }
        if self.verify.cache_entries > MAX_CACHE_ENTRIES {
            anyhow::bail!("verify.cache_entries must be at most {MAX_CACHE_ENTRIES}");
        }
        if self.limits.max_sessions == 0 {
            anyhow::bail!("limits.max_sessions must be at least 1");
        }
        for (name, v) in [
            (
                "limits.max_sessions_per_client",
                self.limits.max_sessions_per_client,
            ),
            (
                "limits.max_subscriptions_per_client",
                self.limits.max_subscriptions_per_client,
            ),
            ("limits.max_subscriptions", self.limits.max_subscriptions),
            ("limits.max_batch", self.limits.max_batch),
            (
                "limits.max_batch_answer_bytes",
                self.limits.max_batch_answer_bytes,
            ),
            ("limits.abuse_strikes", self.limits.abuse_strikes as usize),
        ] {
            if v == 0 {
                anyhow::bail!("{name} must be at least 1");
            }
        }
        let (rate, burst) = (self.limits.client_rate, self.limits.client_burst);
        if !(rate.is_finite() && rate >= 0.0) {
            anyhow::bail!("limits.client_rate = {rate}: must be 0 (off) or a positive number");
        }
        if rate > 0.0 && !(burst.is_finite() && burst >= 1.0) {
            anyhow::bail!("limits.client_burst = {burst}: must be at least 1");
        }
        for origin in &self.listen.ws_origins {
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                anyhow::bail!(
                    "listen.ws_origins: {origin:?} is not an origin (http://host[:port], \
                     https://host[:port] or \"*\")"
                );
            }
        }
        let positive = [
            (
                "limits.request_timeout_secs",
                self.limits.request_timeout_secs,
            ),
            (
                "upstreams.request_timeout_secs",
                self.upstreams.request_timeout_secs,
            ),
            (
                "upstreams.connect_timeout_secs",
                self.upstreams.connect_timeout_secs,
            ),
            (
                "upstreams.reconnect_initial_secs",
                self.upstreams.reconnect_initial_secs,
            ),
            (
                "upstreams.reconnect_max_secs",
                self.upstreams.reconnect_max_secs,
            ),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                anyhow::bail!("{name} = {v}: must be a positive number of seconds");
            }
        }
        if self.upstreams.reconnect_max_secs < self.upstreams.reconnect_initial_secs {
            anyhow::bail!("upstreams.reconnect_max_secs must not be below reconnect_initial_secs");
        }
        if self.routing.hedge_min_ms > self.routing.hedge_max_ms {
            anyhow::bail!(
                "routing.hedge_min_ms ({}) must not exceed routing.hedge_max_ms ({})",
                self.routing.hedge_min_ms,
                self.routing.hedge_max_ms
            );
        }
        if self.routing.quorum == 0 {
            anyhow::bail!("routing.quorum must be at least 1");
        }
        for (name, v) in [
            ("verify.penalty_secs", self.verify.penalty_secs),
            ("limits.idle_timeout_secs", self.limits.idle_timeout_secs),
            (
                "upstreams.ping_interval_secs",
                self.upstreams.ping_interval_secs,
            ),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                anyhow::bail!("{name} = {v}: must be zero or a positive number of seconds");
            }
        }
        Ok(())
    }

    /// The configured network.
    pub fn network(&self) -> anyhow::Result<bitcoin::Network> {
        crate::address::parse_network(&self.network)
            .ok_or_else(|| anyhow::anyhow!("unknown network {:?}", self.network))
    }

    /// The configured upstream URLs, parsed.
    pub fn upstream_urls(&self) -> anyhow::Result<Vec<ServerUrl>> {
        self.upstreams
            .servers
            .iter()
            .map(|s| s.parse::<ServerUrl>().map_err(Into::into))
            .collect()
    }

    /// The routing policy for a method: the configured override, or its catalogue row's
    /// default (`local` for a method the catalogue does not know).
    pub fn policy(&self, method: &str) -> Policy {
        self.routing
            .policy
            .get(method)
            .copied()
            .unwrap_or_else(|| crate::protocol::lookup(method).map_or(Policy::Local, |m| m.policy))
    }
}

/// Parses an optional listen address ("" = off).
pub fn listen_addr(s: &str) -> anyhow::Result<Option<SocketAddr>> {
    if s.is_empty() {
        Ok(None)
    } else {
        Ok(Some(s.parse()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_toml_parses_and_matches_defaults() {
        let text = include_str!("../config.toml");
        let cfg = Config::from_toml(text).expect("config.toml parses");
        let d = Config::default();
        assert_eq!(cfg.listen.tcp, d.listen.tcp);
        assert_eq!(cfg.listen.tls, d.listen.tls);
        assert_eq!(cfg.listen.http, d.listen.http);
        assert_eq!(cfg.upstreams.active, d.upstreams.active);
        assert_eq!(
            cfg.upstreams.allow_same_subnet,
            d.upstreams.allow_same_subnet
        );
        assert_eq!(cfg.limits.max_line_bytes, d.limits.max_line_bytes);
        let (l, dl) = (&cfg.limits, &d.limits);
        assert_eq!(l.max_sessions_per_client, dl.max_sessions_per_client);
        assert_eq!(l.client_rate, dl.client_rate);
        assert_eq!(l.client_burst, dl.client_burst);
        assert_eq!(
            l.max_subscriptions_per_client,
            dl.max_subscriptions_per_client
        );
        assert_eq!(l.max_subscriptions, dl.max_subscriptions);
        assert_eq!(l.max_batch, dl.max_batch);
        assert_eq!(l.max_batch_answer_bytes, dl.max_batch_answer_bytes);
        assert_eq!(l.abuse_strikes, dl.abuse_strikes);
        assert_eq!(cfg.listen.ws_origins, d.listen.ws_origins);
        assert_eq!(cfg.listen.drain_secs, d.listen.drain_secs);
        assert_eq!(cfg.listen.proxy_protocol_from, d.listen.proxy_protocol_from);
    }

    #[test]
    fn proxy_protocol_sources_are_networks_or_addresses() {
        let cfg = Config::from_toml(
            "[listen]\nproxy_protocol_from = [\"127.0.0.1/32\", \"10.0.0.0/8\", \"::1\", \" 192.0.2.7 \"]",
        )
        .unwrap();
        let nets: Vec<String> = cfg
            .listen
            .proxy_networks()
            .unwrap()
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            nets,
            ["127.0.0.1/32", "10.0.0.0/8", "::1/128", "192.0.2.7/32"]
        );
    }

    #[test]
    fn rejects_bad_values() {
        assert!(Config::from_toml("network = \"moon\"").is_err());
        assert!(Config::from_toml("[listen]\ntcp = \"nope\"").is_err());
        assert!(Config::from_toml("[upstreams]\nservers = [\"ftp://x:1\"]").is_err());
        assert!(Config::from_toml("[upstreams]\nactive = 0").is_err());
        assert!(Config::from_toml("[routing.policy]\n\"no.such\" = \"fastest\"").is_err());
        assert!(Config::from_toml("[routing.policy]\n\"server.ping\" = \"sideways\"").is_err());
        assert!(Config::from_toml("unknown_key = 1").is_err());
        // Values that cannot work are refused at start, with the key named.
        for bad in [
            "[routing]\nhedge_min_ms = 500\nhedge_max_ms = 100",
            "[routing]\nquorum = 0",
            "[limits]\nrequest_timeout_secs = 0",
            "[limits]\nmax_sessions = 0",
            "[limits]\nmax_sessions_per_client = 0",
            "[limits]\nmax_subscriptions_per_client = 0",
            "[limits]\nmax_subscriptions = 0",
            "[limits]\nmax_batch = 0",
            "[limits]\nmax_batch_answer_bytes = 0",
            "[limits]\nabuse_strikes = 0",
            "[limits]\nclient_rate = -1.0",
            "[limits]\nclient_burst = 0.5",
            "[listen]\nws_origins = [\"evil.example\"]",
            "[upstreams]\nreconnect_initial_secs = 0",
            "[upstreams]\nrequest_timeout_secs = -1",
            "[upstreams]\nreconnect_initial_secs = 10\nreconnect_max_secs = 1",
            "[verify]\npenalty_secs = nan",
            "[listen]\ndrain_secs = -1",
            "[listen]\nproxy_protocol_from = [\"10.0.0.0/33\"]",
            "[listen]\nproxy_protocol_from = [\"balancer.example\"]",
            // Sizes taken whole at start or at a first request.
            "[limits]\nmax_pending_per_session = 4611686018427387904",
            "[verify]\ncache_entries = 1099511627776",
        ] {
            let e = Config::from_toml(bad).expect_err(bad).to_string();
            let key = bad.lines().last().unwrap().split(' ').next().unwrap();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn policy_overrides() {
        let cfg = Config::from_toml(
            "[routing.policy]\n\"blockchain.scripthash.get_history\" = \"fastest\"",
        )
        .unwrap();
        assert_eq!(
            cfg.policy("blockchain.scripthash.get_history"),
            Policy::Fastest
        );
        assert_eq!(
            cfg.policy("blockchain.scripthash.get_balance"),
            Policy::Quorum
        );
        assert_eq!(cfg.policy("blockchain.estimatefee"), Policy::Median);
        assert_eq!(
            cfg.policy("blockchain.transaction.broadcast"),
            Policy::Broadcast
        );
        assert_eq!(cfg.policy("server.ping"), Policy::Local);
    }
}
