//! `electrum-gateway spider`: discover Electrum servers and write a `servers.json`.
//!
//! Starting from seeds (URLs, server list files, or the bundled list of the network), every
//! endpoint is visited once ([`probe`](super::probe)): reachability, software and its
//! implementation, protocol range, genesis hash, tip, latency, and for TLS the certificate
//! kind. The `server.peers.subscribe` answers of servers on the right network name more
//! endpoints, which are visited in turn until none are new.
//!
//! The network is the one asked for, else the bundled list's (bitcoin), else the one most
//! seeds are on (by genesis hash, ties going to the earlier seed). Peers of servers on
//! another chain are not followed: they are that chain's servers.
//!
//! It never hangs: at most `concurrency` visits at a time, each bounded by `timeout`, and at
//! most `max_servers` hosts (two endpoints each), so a crawl ends after roughly
//! `2 * max_servers / concurrency * timeout` at worst.
//!
//! Servers are keyed by host name, as in server lists: TCP and TLS ports of one host are
//! endpoints of one server. Only usable servers (reachable, on the network, passing the
//! filters) are written, with only their reachable ports; see [`HostReport::to_server_info`]
//! for the extra keys.

use bitcoin::Network;
use clap::Args;
use serde_json::{json, Map};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tokio::task::JoinSet;

use super::{genesis_hash, parse_network_arg, parse_proxy_arg, parse_timeout, probe};
use crate::address::network_name;
use crate::client::ProxyConfig;
use crate::servers::{Onion, ServerInfo, ServerList};
use crate::transport::{Scheme, ServerUrl};

/// Exit code of `spider`: at least one usable server was found.
pub const EXIT_FOUND: i32 = 0;
/// Exit code of `spider`: the crawl ran but found no usable server.
pub const EXIT_NONE_FOUND: i32 = 1;
/// Exit code of `spider`: bad arguments, seeds or output file.
pub const EXIT_USAGE: i32 = super::EXIT_USAGE;

pub use super::probe::{EndpointReport, Facts};

/// The verdict on a server (a host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Reachable, on the network, passing the filters: written to the list.
    Usable,
    /// No endpoint answered; the first error.
    Unreachable(String),
    /// On another chain (its genesis hash, if it told one).
    OtherNetwork(Option<String>),
    /// Left out by `--protocol` or `--onion`.
    Excluded(String),
}

impl Verdict {
    /// A short word for tables: `ok`, `unreachable`, `other-network`, `excluded`.
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Usable => "ok",
            Verdict::Unreachable(_) => "unreachable",
            Verdict::OtherNetwork(_) => "other-network",
            Verdict::Excluded(_) => "excluded",
        }
    }
}

/// Everything learned about one server.
#[derive(Debug, Clone, PartialEq)]
pub struct HostReport {
    /// Host name or IP address, as first seen.
    pub hostname: String,
    /// The IP address a peer announced for it, if different.
    pub ip_addr: Option<String>,
    /// Its endpoints, TLS first.
    pub endpoints: Vec<EndpointReport>,
    /// The verdict.
    pub verdict: Verdict,
}

/// The entry's ports in list form (`s50002`), one per transport.
fn port_entry(url: &ServerUrl) -> Option<String> {
    crate::servers::scheme_letter(url.scheme).map(|l| format!("{l}{}", url.port))
}

impl HostReport {
    /// The reachable endpoints serving the expected chain, TLS first; only those of the
    /// `protocol` letter when given.
    fn good_endpoints<'a>(
        &'a self,
        genesis: Option<&'a str>,
        protocol: Option<char>,
    ) -> impl Iterator<Item = (&'a EndpointReport, &'a Facts)> + 'a {
        self.endpoints.iter().filter_map(move |e| {
            let f = e.facts()?;
            let on_chain = genesis.is_some() && f.genesis_hash.as_deref() == genesis;
            let letter_ok = protocol.map_or(true, |p| {
                crate::servers::scheme_letter(e.url.scheme) == Some(p)
            });
            (on_chain && letter_ok).then_some((e, f))
        })
    }

    /// The server-list entry for a usable server (`None` otherwise), given the genesis hash
    /// of the network and the `--protocol` letter if any.
    ///
    /// `ports` holds its reachable ports (of that letter), `version` its highest protocol version, and
    /// `pruning_limit` its pruning. Extra keys: `seen_at` (Unix time, as Connectrum writes
    /// it), `software` (the implementation), `server_version` (its own software string),
    /// `protocol_min`, `genesis_hash`, `tip` (height), `tip_hash`, `latency_ms` (one ping),
    /// and for TLS servers `cert` (`ca`, `self-signed` or `broken`), `cert_sha256` and
    /// `cert_detail` (why it is not CA-signed).
    pub fn to_server_info(
        &self,
        genesis: Option<&str>,
        protocol: Option<char>,
    ) -> Option<ServerInfo> {
        if self.verdict != Verdict::Usable {
            return None;
        }
        let good: Vec<_> = self.good_endpoints(genesis, protocol).collect();
        let (_, best) = *good.first()?;
        let mut ports: Vec<String> = Vec::new();
        for (e, _) in &good {
            if let Some(p) = port_entry(&e.url) {
                if !ports.iter().any(|q| q.starts_with(&p[..1])) {
                    ports.push(p);
                }
            }
        }
        let mut info = ServerInfo::new(self.hostname.clone(), ports);
        info.ip_addr = self.ip_addr.clone();
        info.version = best.protocol_max.clone().or(Some(best.protocol.clone()));
        info.pruning_limit = best.pruning.unwrap_or(0);
        let mut extra = Map::new();
        let seen_at = best
            .seen_at
            .duration_since(UNIX_EPOCH)
            .map(|d| (d.as_millis() as f64) / 1000.0)
            .unwrap_or(0.0);
        extra.insert("seen_at".into(), json!(seen_at));
        extra.insert("software".into(), json!(best.software.name()));
        extra.insert("server_version".into(), json!(best.server_version));
        if let Some(v) = &best.protocol_min {
            extra.insert("protocol_min".into(), json!(v));
        }
        if let Some(g) = &best.genesis_hash {
            extra.insert("genesis_hash".into(), json!(g));
        }
        if let Some(h) = best.tip_height {
            extra.insert("tip".into(), json!(h));
        }
        if let Some(h) = &best.tip_hash {
            extra.insert("tip_hash".into(), json!(h));
        }
        extra.insert(
            "latency_ms".into(),
            json!(u64::try_from(best.latency.as_millis()).unwrap_or(u64::MAX)),
        );
        let cert = good.iter().find_map(|(e, _)| e.cert.as_ref());
        if let Some(c) = cert {
            extra.insert("cert".into(), json!(c.kind.as_str()));
            extra.insert("cert_sha256".into(), json!(c.sha256));
            if let Some(d) = &c.detail {
                extra.insert("cert_detail".into(), json!(d));
            }
        }
        info.extra = extra;
        Some(info)
    }
}

/// The outcome of a crawl.
#[derive(Debug, Clone, PartialEq)]
pub struct SpiderReport {
    /// The genesis hash servers were required to serve (`None`: no seed answered).
    pub genesis_hash: Option<String>,
    /// The `protocol` filter of the crawl: only ports of this letter are written.
    pub protocol: Option<char>,
    /// Every server visited, by host name.
    pub servers: Vec<HostReport>,
    /// Peer endpoints (distinct host, transport and port) not visited because `max_servers`
    /// was reached.
    pub skipped: usize,
}

impl SpiderReport {
    /// The usable servers.
    pub fn usable(&self) -> impl Iterator<Item = &HostReport> {
        self.servers.iter().filter(|h| h.verdict == Verdict::Usable)
    }

    /// The usable servers as a Connectrum-format list (see [`HostReport::to_server_info`]).
    pub fn server_list(&self) -> ServerList {
        self.servers
            .iter()
            .filter_map(|h| h.to_server_info(self.genesis_hash.as_deref(), self.protocol))
            .collect()
    }

    /// A summary table, one line per server, for people.
    pub fn table(&self) -> String {
        let genesis = self.genesis_hash.as_deref();
        let mut rows = vec![[
            "HOST", "PORTS", "STATUS", "SOFTWARE", "VERSION", "PROTO", "TIP", "MS", "CERT", "NOTE",
        ]
        .map(String::from)];
        for h in &self.servers {
            let shown = h
                .good_endpoints(genesis, None)
                .next()
                .map(|(_, f)| f)
                .or_else(|| h.endpoints.iter().find_map(EndpointReport::facts));
            let ports: Vec<String> = h
                .endpoints
                .iter()
                .map(|e| {
                    let p = port_entry(&e.url).unwrap_or_else(|| e.url.to_string());
                    if e.outcome.is_ok() {
                        p
                    } else {
                        format!("{p}!")
                    }
                })
                .collect();
            let cert = h
                .endpoints
                .iter()
                .find_map(|e| e.cert.as_ref())
                .map(|c| c.kind.as_str().to_string())
                .unwrap_or_else(|| "-".into());
            let note = match &h.verdict {
                Verdict::Usable => String::new(),
                Verdict::Unreachable(e) => e.clone(),
                Verdict::OtherNetwork(Some(g)) => format!("genesis {g}"),
                Verdict::OtherNetwork(None) => "genesis unknown".into(),
                Verdict::Excluded(why) => why.clone(),
            };
            let dash = || "-".to_string();
            rows.push([
                h.hostname.clone(),
                ports.join(" "),
                h.verdict.word().to_string(),
                shown
                    .map(|f| f.software.name().to_string())
                    .unwrap_or_else(dash),
                shown.map(|f| f.server_version.clone()).unwrap_or_else(dash),
                shown
                    .map(|f| {
                        let min = f.protocol_min.as_deref().unwrap_or("?");
                        let max = f.protocol_max.as_deref().unwrap_or(&f.protocol);
                        format!("{min}-{max}")
                    })
                    .unwrap_or_else(dash),
                shown
                    .and_then(|f| f.tip_height)
                    .map(|t| t.to_string())
                    .unwrap_or_else(dash),
                shown
                    .map(|f| f.latency.as_millis().to_string())
                    .unwrap_or_else(dash),
                cert,
                note,
            ]);
        }
        let mut widths = [0usize; 10];
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &rows {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<w$}  ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Progress of a crawl, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Endpoints visited.
    pub done: usize,
    /// Endpoints being visited now.
    pub in_flight: usize,
    /// Endpoints waiting for a visit.
    pub queued: usize,
    /// Endpoints that answered.
    pub reachable: usize,
}

/// A progress callback.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// What to crawl and how.
#[derive(Clone)]
pub struct SpiderOptions {
    /// Endpoints to start from (tcp:// and ssl:// only); empty: the bundled list of
    /// `network` (bitcoin when unset).
    pub seeds: Vec<ServerUrl>,
    /// The network servers must be on; `None`: see the module documentation.
    pub network: Option<Network>,
    /// Only servers offering this transport (`t` or `s`) are followed and written.
    pub protocol: Option<char>,
    /// Which `.onion` servers are followed and written.
    pub onion: Onion,
    /// A SOCKS5 proxy for every connection (`.onion` hosts use Tor's default port without
    /// one).
    pub proxy: Option<ProxyConfig>,
    /// Endpoints visited at once (at least 1).
    pub concurrency: usize,
    /// Limit for each visit.
    pub timeout: Duration,
    /// The most hosts visited; further peers are counted in [`SpiderReport::skipped`].
    pub max_servers: usize,
    /// Called whenever progress changes.
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for SpiderOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpiderOptions")
            .field("seeds", &self.seeds)
            .field("network", &self.network)
            .field("protocol", &self.protocol)
            .field("onion", &self.onion)
            .field("proxy", &self.proxy)
            .field("concurrency", &self.concurrency)
            .field("timeout", &self.timeout)
            .field("max_servers", &self.max_servers)
            .finish_non_exhaustive()
    }
}

impl Default for SpiderOptions {
    fn default() -> Self {
        SpiderOptions {
            seeds: Vec::new(),
            network: None,
            protocol: None,
            onion: Onion::Exclude,
            proxy: None,
            concurrency: 16,
            timeout: Duration::from_secs(10),
            max_servers: 1000,
            progress: None,
        }
    }
}

/// An endpoint's identity: lower-case host, transport, port.
type Key = (String, Scheme, u16);

fn key_of(url: &ServerUrl) -> Key {
    (url.host.to_ascii_lowercase(), url.scheme, url.port)
}

struct Host {
    hostname: String,
    ip_addr: Option<String>,
    endpoints: Vec<Key>,
}

/// The state of a crawl in progress.
struct Crawl<'a> {
    opts: &'a SpiderOptions,
    hosts: BTreeMap<String, Host>,
    seen: HashSet<Key>,
    queue: VecDeque<ServerUrl>,
    results: HashMap<Key, EndpointReport>,
    /// Seed endpoints in order, for the majority vote.
    seed_order: Vec<Key>,
    genesis: Option<String>,
    /// Endpoints left out because `max_servers` was reached.
    skipped: HashSet<Key>,
    progress: Progress,
}

impl<'a> Crawl<'a> {
    fn new(opts: &'a SpiderOptions) -> Self {
        Crawl {
            opts,
            hosts: BTreeMap::new(),
            seen: HashSet::new(),
            queue: VecDeque::new(),
            results: HashMap::new(),
            seed_order: Vec::new(),
            genesis: None,
            skipped: HashSet::new(),
            progress: Progress::default(),
        }
    }

    /// Queues an endpoint unless known; false if it was not queued.
    fn add(&mut self, url: ServerUrl, ip_addr: Option<&str>) -> bool {
        let key = key_of(&url);
        if self.seen.contains(&key) {
            return false;
        }
        let host_key = key.0.clone();
        if !self.hosts.contains_key(&host_key) && self.hosts.len() >= self.opts.max_servers {
            self.skipped.insert(key);
            return false;
        }
        let host = self.hosts.entry(host_key).or_insert_with(|| Host {
            hostname: url.host.clone(),
            ip_addr: None,
            endpoints: Vec::new(),
        });
        if host.ip_addr.is_none() {
            host.ip_addr = ip_addr.map(str::to_string);
        }
        host.endpoints.push(key.clone());
        self.seen.insert(key);
        self.queue.push_back(url);
        true
    }

    /// Queues the endpoints of peers that pass the filters.
    fn add_peers(&mut self, peers: &[ServerInfo]) {
        for peer in peers {
            let onion_ok = match self.opts.onion {
                Onion::Include => true,
                Onion::Exclude => !peer.is_onion(),
                Onion::Only => peer.is_onion(),
            };
            if !onion_ok {
                continue;
            }
            for scheme in [Scheme::Ssl, Scheme::Tcp] {
                let letter = crate::servers::scheme_letter(scheme);
                if self.opts.protocol.is_some_and(|p| Some(p) != letter) {
                    continue;
                }
                if let Some(url) = peer.url(scheme) {
                    self.add(url, peer.ip_addr.as_deref());
                }
            }
        }
    }

    fn report_progress(&mut self, in_flight: usize) {
        self.progress.in_flight = in_flight;
        self.progress.queued = self.queue.len();
        if let Some(cb) = &self.opts.progress {
            cb(&self.progress);
        }
    }

    /// Visits everything queued, and with `follow`, the peers of servers on the network.
    async fn run(&mut self, follow: bool) {
        let mut tasks = JoinSet::new();
        let mut running: HashMap<tokio::task::Id, ServerUrl> = HashMap::new();
        let concurrency = self.opts.concurrency.max(1);
        loop {
            while running.len() < concurrency {
                let Some(url) = self.queue.pop_front() else {
                    break;
                };
                let task = probe::probe(url.clone(), self.opts.proxy.clone(), self.opts.timeout);
                let handle = tasks.spawn(task);
                running.insert(handle.id(), url);
            }
            self.report_progress(running.len());
            let Some(joined) = tasks.join_next_with_id().await else {
                break;
            };
            let report = match joined {
                Ok((id, report)) => {
                    running.remove(&id);
                    report
                }
                Err(e) => {
                    let Some(url) = running.remove(&e.id()) else {
                        continue;
                    };
                    EndpointReport {
                        url,
                        outcome: Err(format!("visit failed: {e}")),
                        cert: None,
                    }
                }
            };
            self.progress.done += 1;
            if let Some(facts) = report.facts() {
                self.progress.reachable += 1;
                let on_network = self.genesis.is_some() && facts.genesis_hash == self.genesis;
                if follow && on_network {
                    if let Some(peers) = &facts.peers {
                        let peers = peers.clone();
                        self.add_peers(&peers);
                    }
                }
            }
            self.results.insert(key_of(&report.url), report);
        }
        self.report_progress(0);
    }

    /// The genesis hash most seeds serve; ties go to the earlier seed.
    fn majority_genesis(&self) -> Option<String> {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for key in &self.seed_order {
            let Some(g) = self
                .results
                .get(key)
                .and_then(EndpointReport::facts)
                .and_then(|f| f.genesis_hash.clone())
            else {
                continue;
            };
            match counts.iter_mut().find(|(h, _)| *h == g) {
                Some((_, n)) => *n += 1,
                None => counts.push((g, 1)),
            }
        }
        let best = counts.iter().map(|(_, n)| *n).max()?;
        counts.into_iter().find(|(_, n)| *n == best).map(|(g, _)| g)
    }

    fn verdict(&self, host: &HostReport) -> Verdict {
        let reachable: Vec<&Facts> = host.endpoints.iter().filter_map(|e| e.facts()).collect();
        let Some(first) = reachable.first() else {
            let why = host
                .endpoints
                .iter()
                .find_map(|e| e.outcome.as_ref().err().cloned())
                .unwrap_or_else(|| "not visited".into());
            return Verdict::Unreachable(why);
        };
        let good: Vec<_> = host.good_endpoints(self.genesis.as_deref(), None).collect();
        if good.is_empty() {
            return Verdict::OtherNetwork(first.genesis_hash.clone());
        }
        let onion = host.hostname.to_ascii_lowercase().ends_with(".onion");
        match self.opts.onion {
            Onion::Exclude if onion => return Verdict::Excluded("onion server".into()),
            Onion::Only if !onion => return Verdict::Excluded("not an onion server".into()),
            _ => {}
        }
        if let Some(p) = self.opts.protocol {
            let has = good
                .iter()
                .any(|(e, _)| crate::servers::scheme_letter(e.url.scheme) == Some(p));
            if !has {
                let what = if p == 's' { "TLS" } else { "TCP" };
                return Verdict::Excluded(format!("no reachable {what} port"));
            }
        }
        Verdict::Usable
    }

    fn into_report(mut self) -> SpiderReport {
        let mut servers = Vec::with_capacity(self.hosts.len());
        for host in self.hosts.values() {
            let mut endpoints: Vec<EndpointReport> = host
                .endpoints
                .iter()
                .filter_map(|k| self.results.remove(k))
                .collect();
            endpoints.sort_by_key(|e| (!e.url.scheme.is_tls(), e.url.port));
            let mut report = HostReport {
                hostname: host.hostname.clone(),
                ip_addr: host.ip_addr.clone(),
                endpoints,
                verdict: Verdict::Usable,
            };
            report.verdict = self.verdict(&report);
            servers.push(report);
        }
        SpiderReport {
            genesis_hash: self.genesis,
            protocol: self.opts.protocol,
            servers,
            skipped: self.skipped.len(),
        }
    }
}

/// Crawls the server network from the seeds (see the module documentation). Never fails:
/// servers that cannot be reached are reported as such.
pub async fn crawl(opts: SpiderOptions) -> SpiderReport {
    let bundled = opts.seeds.is_empty();
    let seeds: Vec<ServerUrl> = if bundled {
        ServerList::bundled(opts.network.unwrap_or(Network::Bitcoin))
            .iter()
            .flat_map(ServerInfo::urls)
            .collect()
    } else {
        opts.seeds.clone()
    };
    let mut crawl = Crawl::new(&opts);
    for url in seeds {
        let key = key_of(&url);
        if crawl.add(url, None) {
            crawl.seed_order.push(key);
        }
    }
    crawl.run(false).await;
    crawl.genesis = match (opts.network, bundled) {
        (Some(n), _) => Some(genesis_hash(n)),
        (None, true) => Some(genesis_hash(Network::Bitcoin)),
        (None, false) => crawl.majority_genesis(),
    };
    let seed_peers: Vec<ServerInfo> = crawl
        .seed_order
        .iter()
        .filter_map(|k| crawl.results.get(k))
        .filter_map(EndpointReport::facts)
        .filter(|f| f.genesis_hash.is_some() && f.genesis_hash == crawl.genesis)
        .filter_map(|f| f.peers.clone())
        .flatten()
        .collect();
    crawl.add_peers(&seed_peers);
    crawl.run(true).await;
    crawl.into_report()
}

/// `--onion` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnionArg {
    /// Clearnet and onion servers.
    Include,
    /// Clearnet servers only.
    Exclude,
    /// Onion servers only.
    Only,
}

/// `--protocol` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtocolArg {
    /// Plain TCP.
    T,
    /// TLS.
    S,
}

/// Arguments of `electrum-gateway spider`.
#[derive(Debug, Clone, Args)]
pub struct SpiderArgs {
    /// A server URL (tcp://, ssl://, HOST:PORT:t|s) or a servers.json file to start from
    /// (repeatable) [default: the bundled list of the network].
    #[arg(long, value_name = "URL|FILE")]
    pub seed: Vec<String>,
    /// Write the usable servers to this Connectrum-format servers.json.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Only servers offering this transport: t (TCP) or s (TLS).
    #[arg(long, value_enum)]
    pub protocol: Option<ProtocolArg>,
    /// Onion servers [default: include with --proxy, exclude without].
    #[arg(long, value_enum)]
    pub onion: Option<OnionArg>,
    /// SOCKS5 proxy for every connection, e.g. socks5://127.0.0.1:9050.
    #[arg(long, value_name = "socks5://HOST:PORT")]
    pub proxy: Option<String>,
    /// Network servers must be on: bitcoin, testnet, testnet4, signet or regtest [default:
    /// bitcoin with the bundled seeds, else the one most seeds are on].
    #[arg(long, value_name = "NAME")]
    pub network: Option<String>,
    /// Servers visited at once.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub concurrency: usize,
    /// Seconds allowed for each server visit.
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    pub timeout: f64,
    /// The most servers visited.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub max_servers: usize,
}

/// Reads `--seed` values: URLs, or server list files (every TCP and TLS endpoint in them).
pub fn parse_seeds(seeds: &[String]) -> Result<Vec<ServerUrl>, String> {
    let mut out = Vec::new();
    for s in seeds {
        let as_url = s.parse::<ServerUrl>();
        if s.contains("://") || (as_url.is_ok() && !std::path::Path::new(s).exists()) {
            let url = as_url.map_err(|e| e.to_string())?;
            if url.scheme.is_ws() {
                return Err(format!(
                    "seed {s}: the spider speaks tcp:// and ssl:// only (server lists have no \
                     WebSocket ports)"
                ));
            }
            out.push(url);
            continue;
        }
        let list = ServerList::load(s).map_err(|e| format!("seed {s}: {e}"))?;
        out.extend(list.iter().flat_map(ServerInfo::urls));
    }
    Ok(out)
}

impl SpiderArgs {
    /// The crawl these arguments ask for.
    pub fn options(&self) -> Result<SpiderOptions, String> {
        if self.concurrency == 0 {
            return Err("--concurrency must be at least 1".into());
        }
        if self.max_servers == 0 {
            return Err("--max-servers must be at least 1".into());
        }
        let proxy = self
            .proxy
            .as_deref()
            .map(parse_proxy_arg)
            .transpose()
            .map_err(|e| e.to_string())?;
        let onion = match self.onion {
            Some(OnionArg::Include) => Onion::Include,
            Some(OnionArg::Exclude) => Onion::Exclude,
            Some(OnionArg::Only) => Onion::Only,
            None if proxy.is_some() => Onion::Include,
            None => Onion::Exclude,
        };
        Ok(SpiderOptions {
            seeds: parse_seeds(&self.seed)?,
            network: self
                .network
                .as_deref()
                .map(parse_network_arg)
                .transpose()
                .map_err(|e| e.to_string())?,
            protocol: self.protocol.map(|p| match p {
                ProtocolArg::T => 't',
                ProtocolArg::S => 's',
            }),
            onion,
            proxy,
            concurrency: self.concurrency,
            timeout: parse_timeout(self.timeout).map_err(|e| e.to_string())?,
            max_servers: self.max_servers,
            progress: None,
        })
    }
}

/// A one-line progress display on stderr, redrawn in place; only on a terminal.
fn terminal_progress() -> Option<ProgressFn> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    Some(Arc::new(|p: &Progress| {
        eprint!(
            "\r\x1b[2Kspider: {} visited, {} answering, {} in flight, {} queued",
            p.done, p.reachable, p.in_flight, p.queued
        );
    }))
}

/// Runs `electrum-gateway spider`: crawls, prints the summary table on stdout and writes
/// `--out` when at least one usable server was found (an empty crawl never overwrites a
/// list). Exit codes: 0 some usable server found, 1 none, 2 bad arguments, seeds or output
/// file.
pub async fn run(args: SpiderArgs) -> anyhow::Result<i32> {
    let mut opts = match args.options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(EXIT_USAGE);
        }
    };
    if opts.seeds.is_empty() && opts.network == Some(Network::Regtest) {
        eprintln!("error: there is no bundled server list for regtest; give --seed");
        return Ok(EXIT_USAGE);
    }
    let progress = terminal_progress();
    opts.progress = progress.clone();
    let report = crawl(opts).await;
    if progress.is_some() {
        eprint!("\r\x1b[2K");
    }
    print!("{}", report.table());
    let usable = report.usable().count();
    let network = report
        .genesis_hash
        .as_deref()
        .and_then(super::network_of_genesis)
        .map(|n| network_name(n).to_string())
        .or_else(|| report.genesis_hash.clone().map(|g| format!("genesis {g}")))
        .unwrap_or_else(|| "unknown network".into());
    println!(
        "{usable} usable of {} servers ({network})",
        report.servers.len()
    );
    if report.skipped > 0 {
        println!(
            "{} more peer endpoints not visited (--max-servers reached)",
            report.skipped
        );
    }
    if usable == 0 {
        if let Some(out) = &args.out {
            eprintln!("no usable server found; {} left unchanged", out.display());
        }
        return Ok(EXIT_NONE_FOUND);
    }
    if let Some(out) = &args.out {
        if let Err(e) = report.server_list().save(out) {
            eprintln!("error: {e}");
            return Ok(EXIT_USAGE);
        }
        println!("wrote {usable} servers to {}", out.display());
    }
    Ok(EXIT_FOUND)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::cert::CertReport;
    use crate::tools::software::Software;

    fn facts(software: Software, genesis: &str) -> Facts {
        Facts {
            server_version: format!("{software} 1.0"),
            protocol: "1.4".into(),
            protocol_min: Some("1.4".into()),
            protocol_max: Some("1.6".into()),
            software,
            genesis_hash: Some(genesis.into()),
            pruning: None,
            tip_height: Some(800_000),
            tip_hash: Some("ab".repeat(32)),
            latency: Duration::from_millis(42),
            banner: None,
            peers: Some(vec![]),
            seen_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }

    fn endpoint(url: &str, outcome: Result<Facts, String>) -> EndpointReport {
        EndpointReport {
            url: url.parse().unwrap(),
            outcome,
            cert: None,
        }
    }

    fn report() -> SpiderReport {
        let g = genesis_hash(Network::Bitcoin);
        let mut tls = endpoint("ssl://a.example:50002", Ok(facts(Software::Fulcrum, &g)));
        tls.cert = Some(CertReport {
            kind: super::super::cert::CertKind::SelfSigned,
            sha256: "cd".repeat(32),
            detail: Some("unknown issuer".into()),
        });
        SpiderReport {
            genesis_hash: Some(g.clone()),
            protocol: None,
            skipped: 0,
            servers: vec![
                HostReport {
                    hostname: "a.example".into(),
                    ip_addr: Some("192.0.2.1".into()),
                    endpoints: vec![
                        tls,
                        endpoint("tcp://a.example:50001", Ok(facts(Software::Fulcrum, &g))),
                    ],
                    verdict: Verdict::Usable,
                },
                HostReport {
                    hostname: "b.example".into(),
                    ip_addr: None,
                    endpoints: vec![endpoint("tcp://b.example:50001", Err("refused".into()))],
                    verdict: Verdict::Unreachable("refused".into()),
                },
            ],
        }
    }

    #[test]
    fn usable_servers_become_list_entries_with_their_facts() {
        let list = report().server_list();
        assert_eq!(list.len(), 1);
        let e = list.get("a.example").unwrap();
        assert_eq!(e.ports, ["s50002", "t50001"]);
        assert_eq!(e.ip_addr.as_deref(), Some("192.0.2.1"));
        assert_eq!(e.version.as_deref(), Some("1.6"));
        assert_eq!(e.extra["software"], json!("Fulcrum"));
        assert_eq!(e.extra["server_version"], json!("Fulcrum 1.0"));
        assert_eq!(e.extra["tip"], json!(800_000));
        assert_eq!(e.extra["latency_ms"], json!(42));
        assert_eq!(e.extra["seen_at"], json!(1_700_000_000.0));
        assert_eq!(e.extra["cert"], json!("self-signed"));
        assert_eq!(e.extra["cert_sha256"], json!("cd".repeat(32)));
        assert_eq!(
            e.extra["genesis_hash"],
            json!(genesis_hash(Network::Bitcoin))
        );
        // The written list reads back with every key.
        let again = ServerList::from_json(&list.to_json()).unwrap();
        assert_eq!(again, list);

        // With a transport filter only that port is written.
        let mut only_tcp = report();
        only_tcp.protocol = Some('t');
        let e = only_tcp.server_list();
        let e = e.get("a.example").unwrap();
        assert_eq!(e.ports, ["t50001"]);
        assert!(e.extra.get("cert").is_none());
    }

    #[test]
    fn the_table_has_a_row_per_server() {
        let table = report().table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("HOST "));
        let a: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            a,
            [
                "a.example",
                "s50002",
                "t50001",
                "ok",
                "Fulcrum",
                "Fulcrum",
                "1.0",
                "1.4-1.6",
                "800000",
                "42",
                "self-signed"
            ]
        );
        assert!(lines[2].starts_with("b.example"));
        assert!(lines[2].contains("t50001!"));
        assert!(lines[2].ends_with("  refused"), "{table}");
        // Columns line up: every row puts STATUS at the same offset.
        let col = lines[0].find("STATUS").unwrap();
        assert_eq!(&lines[1][col..col + 2], "ok");
        assert_eq!(&lines[2][col..col + 11], "unreachable");
    }

    #[test]
    fn seeds_are_urls_or_server_list_files() {
        let urls = parse_seeds(&["tcp://h:1".into(), "h:2:s".into()]).unwrap();
        assert_eq!(
            urls.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["tcp://h:1", "ssl://h:2"]
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("servers.json");
        let mut list = ServerList::new();
        list.insert(ServerInfo::new("x.example", ["s50002", "t"]));
        list.save(&file).unwrap();
        let from_file = parse_seeds(&[file.to_string_lossy().into_owned()]).unwrap();
        assert_eq!(
            from_file
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["ssl://x.example:50002", "tcp://x.example:50001"]
        );
        for bad in [
            "ws://h:1",
            "ftp://h:1",
            "/nonexistent/servers.json",
            "nonsense",
        ] {
            assert!(parse_seeds(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
