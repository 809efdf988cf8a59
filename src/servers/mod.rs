//! Server lists: what is known about public Electrum servers, where it is kept, how it grows.
//!
//! A client needs somewhere to start: a list of servers with their ports, protocol version and
//! pruning, kept in a `servers.json` file, seeded from a bundled list, grown from the
//! `server.peers.subscribe` answers of servers it talks to, and narrowed by filters (transport,
//! Tor, version, pruning) before picking servers to connect to.
//!
//! The file format is Connectrum's, so lists move freely between the two: a JSON array of
//! entries like `{"nickname": null, "hostname": "electrum.example.org", "ip_addr": null,
//! "ports": ["s50002", "t50001"], "version": "1.4", "pruning_limit": 0, "seen_at": 1533670768.8}`,
//! sorted by host name. Reading also accepts the same entries in an object keyed by host name,
//! and the Electrum wallet's own `servers.json` (`{"host": {"s": "50002", "t": "50001",
//! "pruning": "-", "version": "1.4"}}`). Keys this crate does not know (`seen_at`, ...) survive
//! a read-write round trip.
//!
//! A port entry is a protocol letter and an optional port number: `t` is TCP, `s` is TLS, a bare
//! letter means the default port (50001, 50002). The letters `h` and `g` (HTTP and HTTPS) of old
//! lists are kept but are not usable transports. A pruning limit of 0 means the server keeps
//! the full history.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use bitcoin::Network;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Map, Value};

use crate::protocol::methods::parse_version;
use crate::transport::{Scheme, ServerUrl};

/// A protocol version as (major, minor, patch), as [`parse_version`] returns it.
pub type Version = (u32, u32, u32);

const BUNDLED_BITCOIN: &str = include_str!("bitcoin.json");
const BUNDLED_TESTNET: &str = include_str!("testnet.json");
const BUNDLED_TESTNET4: &str = include_str!("testnet4.json");
const BUNDLED_SIGNET: &str = include_str!("signet.json");

/// The default port of a protocol letter: `t` 50001, `s` 50002, and for the obsolete HTTP
/// transports `h` 8081, `g` 8082.
pub fn default_port(letter: char) -> Option<u16> {
    match letter {
        't' => Some(50001),
        's' => Some(50002),
        'h' => Some(8081),
        'g' => Some(8082),
        _ => None,
    }
}

/// The protocol letter of a scheme, if the Electrum server lists have one (`t` and `s` only).
pub fn scheme_letter(scheme: Scheme) -> Option<char> {
    match scheme {
        Scheme::Tcp => Some('t'),
        Scheme::Ssl => Some('s'),
        Scheme::Ws | Scheme::Wss => None,
    }
}

/// True for a plausible host name or IP address: 1 to 253 characters of letters, digits,
/// `-`, `.`, `_` and `:` (IPv6). Keeps junk from peers out of lists and URLs.
pub fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'))
}

/// What is known about one server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// A display name (IRC nickname in old lists), often null.
    #[serde(default)]
    pub nickname: Option<String>,
    /// Host name, IP address or `.onion` name.
    pub hostname: String,
    /// The IP address a peer announced for the host, if it differs from the host name.
    #[serde(default)]
    pub ip_addr: Option<String>,
    /// Port entries: a protocol letter and an optional port, e.g. `"s50002"`, `"t"`.
    #[serde(default, deserialize_with = "de_ports")]
    pub ports: Vec<String>,
    /// The highest protocol version the server announced, e.g. `"1.4"`.
    #[serde(default, deserialize_with = "de_version")]
    pub version: Option<String>,
    /// How many blocks of history a pruned server keeps; 0 means all of it.
    #[serde(default, deserialize_with = "de_pruning")]
    pub pruning_limit: u64,
    /// Every other key of the entry (such as `seen_at`), written back unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ServerInfo {
    /// An entry for `hostname` with the given port entries (`"s50002"`, `"t"`, ...).
    pub fn new<I, S>(hostname: impl Into<String>, ports: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ServerInfo {
            nickname: None,
            hostname: hostname.into(),
            ip_addr: None,
            ports: ports.into_iter().map(Into::into).collect(),
            version: None,
            pruning_limit: 0,
            extra: Map::new(),
        }
    }

    /// An entry for a TCP or TLS server URL (`None` for WebSocket URLs, which have no letter).
    pub fn from_url(url: &ServerUrl) -> Option<Self> {
        let letter = scheme_letter(url.scheme)?;
        Some(ServerInfo::new(
            url.host.clone(),
            [format!("{letter}{}", url.port)],
        ))
    }

    /// The key of this entry in a [`ServerList`]: the host name in lower case.
    pub fn key(&self) -> String {
        self.hostname.to_ascii_lowercase()
    }

    /// The protocol letters of the port entries (`t`, `s`, maybe `h`, `g`).
    pub fn protocols(&self) -> BTreeSet<char> {
        self.ports.iter().filter_map(|p| p.chars().next()).collect()
    }

    /// The port for a protocol letter: the number of its first entry, or the default port for
    /// a bare letter. `None` if the letter is not offered or its port is not a valid number.
    pub fn port(&self, letter: char) -> Option<u16> {
        let entry = self.ports.iter().find(|p| p.starts_with(letter))?;
        let number = &entry[letter.len_utf8()..];
        if number.is_empty() {
            default_port(letter)
        } else {
            number.parse().ok().filter(|&p| p != 0)
        }
    }

    /// The URL for a transport, if the server offers it (TCP and TLS only).
    pub fn url(&self, scheme: Scheme) -> Option<ServerUrl> {
        let port = self.port(scheme_letter(scheme)?)?;
        Some(ServerUrl::new(scheme, self.hostname.clone(), port))
    }

    /// Every usable URL of the server, TLS first.
    pub fn urls(&self) -> Vec<ServerUrl> {
        [Scheme::Ssl, Scheme::Tcp]
            .into_iter()
            .filter_map(|s| self.url(s))
            .collect()
    }

    /// True if the server can be reached over TCP or TLS.
    pub fn is_usable(&self) -> bool {
        self.url(Scheme::Ssl).is_some() || self.url(Scheme::Tcp).is_some()
    }

    /// True for Tor hidden services.
    pub fn is_onion(&self) -> bool {
        self.hostname.to_ascii_lowercase().ends_with(".onion")
    }

    /// The highest protocol version the server announced, if known and well formed.
    pub fn protocol_max(&self) -> Option<Version> {
        let v = self.version.as_deref()?;
        parse_version(v.strip_prefix('v').unwrap_or(v))
    }

    /// The features list of a `server.peers.subscribe` entry: `["v1.4", "p10000", "s", "t50001"]`
    /// (version, pruning if any, then TLS and TCP ports; default ports as a bare letter).
    pub fn peer_features(&self) -> Vec<String> {
        let mut features = Vec::new();
        if let Some(v) = &self.version {
            features.push(format!("v{}", v.strip_prefix('v').unwrap_or(v)));
        }
        if self.pruning_limit > 0 {
            features.push(format!("p{}", self.pruning_limit));
        }
        for letter in ['s', 't'] {
            if let Some(port) = self.port(letter) {
                if Some(port) == default_port(letter) {
                    features.push(letter.to_string());
                } else {
                    features.push(format!("{letter}{port}"));
                }
            }
        }
        features
    }

    /// The whole `server.peers.subscribe` entry: `[ip or host, host, features]`.
    pub fn peer_entry(&self) -> Value {
        let ip = self.ip_addr.as_ref().unwrap_or(&self.hostname);
        json!([ip, self.hostname, self.peer_features()])
    }

    /// Parses one `server.peers.subscribe` entry `[ip, host, features]`.
    ///
    /// Features: `v<version>`, `p<pruning limit>`, `t`/`s` with an optional port. Unknown
    /// features, junk versions and pruning values are ignored; an entry without a valid host
    /// or without a usable TCP/TLS port is an error.
    pub fn from_peer_entry(entry: &Value) -> Result<Self, String> {
        let parts = entry.as_array().ok_or("entry is not an array")?;
        if parts.len() < 3 {
            return Err("entry has fewer than 3 elements".into());
        }
        let host = parts[1].as_str().ok_or("host is not a string")?;
        if !valid_host(host) {
            return Err("invalid host name".into());
        }
        let features = parts[2].as_array().ok_or("features is not an array")?;
        let mut info = ServerInfo::new(host, Vec::<String>::new());
        for feature in features.iter().filter_map(Value::as_str) {
            let mut chars = feature.chars();
            let (Some(letter), rest) = (chars.next(), chars.as_str()) else {
                continue;
            };
            match letter {
                'v' if parse_version(rest).is_some() => info.version = Some(rest.to_string()),
                'p' => {
                    if let Ok(n) = rest.parse() {
                        info.pruning_limit = n;
                    }
                }
                't' | 's' => {
                    let port_ok = rest.is_empty() || rest.parse::<u16>().is_ok_and(|p| p != 0);
                    if port_ok && !info.ports.iter().any(|p| p.starts_with(letter)) {
                        info.ports.push(feature.to_string());
                    }
                }
                _ => {}
            }
        }
        if info.ports.is_empty() {
            return Err("no usable port".into());
        }
        info.ip_addr = parts[0]
            .as_str()
            .filter(|ip| *ip != host && ip.parse::<IpAddr>().is_ok())
            .map(str::to_string);
        Ok(info)
    }

    /// Moves `v...` and `p...` items that old lists mixed into `ports` into `version` and
    /// `pruning_limit` (explicit fields win), as Connectrum does.
    fn normalize(&mut self) {
        let mut version = None;
        let mut pruning = None;
        self.ports.retain(|p| {
            if let Some(v) = p.strip_prefix('v') {
                version = Some(v.to_string());
                false
            } else if let Some(n) = p.strip_prefix('p') {
                pruning = n.parse().ok().or(pruning);
                false
            } else {
                !p.is_empty()
            }
        });
        if self.version.is_none() {
            self.version = version;
        }
        if self.pruning_limit == 0 {
            self.pruning_limit = pruning.unwrap_or(0);
        }
    }

    /// Takes what `newer` knows: ports, version, pruning, IP address, and the nickname and
    /// extra keys it has; keeps the rest of `self`.
    fn update_from(&mut self, newer: ServerInfo) {
        self.hostname = newer.hostname;
        self.ports = newer.ports;
        self.version = newer.version.or(self.version.take());
        self.pruning_limit = newer.pruning_limit;
        if newer.ip_addr.is_some() {
            self.ip_addr = newer.ip_addr;
        }
        if newer.nickname.is_some() {
            self.nickname = newer.nickname;
        }
        self.extra.extend(newer.extra);
    }
}

fn de_ports<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(D::Error::custom(format!(
                    "port entry {other} is not a string"
                ))),
            })
            .collect(),
        // Connectrum also takes "t s50002" and a bare number (a TCP port).
        Value::String(s) => Ok(s.split_whitespace().map(str::to_string).collect()),
        Value::Number(n) => match n.as_u64() {
            Some(p @ 1..=65535) => Ok(vec![format!("t{p}")]),
            _ => Err(D::Error::custom(format!("invalid port {n}"))),
        },
        other => Err(D::Error::custom(format!("invalid ports {other}"))),
    }
}

fn de_version<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        Value::Number(n) => Ok(Some(n.to_string())),
        other => Err(D::Error::custom(format!("invalid version {other}"))),
    }
}

fn de_pruning<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(0),
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| D::Error::custom(format!("invalid pruning limit {n}"))),
        Value::String(s) if s == "-" || s.is_empty() => Ok(0),
        Value::String(s) => s
            .parse()
            .map_err(|_| D::Error::custom(format!("invalid pruning limit {s:?}"))),
        other => Err(D::Error::custom(format!("invalid pruning limit {other}"))),
    }
}

/// Why a `server.peers.subscribe` answer could not be used at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server.peers.subscribe answer is not a list")]
pub struct PeersError;

/// Parses a `server.peers.subscribe` answer: `[["ip", "host", ["v1.4", "s", "t50001"]], ...]`.
///
/// Malformed entries are skipped (logged at debug level); only an answer that is not a list
/// at all is an error.
pub fn parse_peers(result: &Value) -> Result<Vec<ServerInfo>, PeersError> {
    let entries = result.as_array().ok_or(PeersError)?;
    Ok(entries
        .iter()
        .filter_map(|entry| match ServerInfo::from_peer_entry(entry) {
            Ok(info) => Some(info),
            Err(reason) => {
                tracing::debug!(%entry, reason, "skipping malformed peer entry");
                None
            }
        })
        .collect())
}

/// Which `.onion` servers a [`Filter`] lets through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Onion {
    /// Clearnet and onion servers alike.
    #[default]
    Include,
    /// Clearnet servers only.
    Exclude,
    /// Onion servers only.
    Only,
}

/// Which pruned servers a [`Filter`] lets through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Pruning {
    /// Pruned or not.
    #[default]
    Any,
    /// Only servers with the full history (pruning limit 0).
    Unpruned,
    /// Servers with the full history or keeping at least this many blocks.
    AtLeast(u64),
}

/// Conditions on servers; the default lets every server through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// A protocol letter (`t` or `s`) the server must offer with a valid port.
    pub protocol: Option<char>,
    /// Tor hidden services in or out.
    pub onion: Onion,
    /// A minimum announced protocol version; servers without a known version are left out.
    pub min_version: Option<Version>,
    /// Pruned servers in or out.
    pub pruning: Pruning,
}

impl Filter {
    /// A filter letting every server through.
    pub fn new() -> Self {
        Filter::default()
    }

    /// Requires a protocol letter (`t` or `s`).
    pub fn with_protocol(mut self, letter: char) -> Self {
        self.protocol = Some(letter);
        self
    }

    /// Requires the letter of a transport (TCP or TLS; no server offers a WebSocket letter,
    /// so for those nothing passes).
    pub fn with_scheme(mut self, scheme: Scheme) -> Self {
        self.protocol = Some(scheme_letter(scheme).unwrap_or('\0'));
        self
    }

    /// Sets which onion servers pass.
    pub fn with_onion(mut self, onion: Onion) -> Self {
        self.onion = onion;
        self
    }

    /// Requires at least this announced protocol version.
    pub fn with_min_version(mut self, version: Version) -> Self {
        self.min_version = Some(version);
        self
    }

    /// Sets which pruned servers pass.
    pub fn with_pruning(mut self, pruning: Pruning) -> Self {
        self.pruning = pruning;
        self
    }

    /// True if the server meets every condition.
    pub fn matches(&self, info: &ServerInfo) -> bool {
        if let Some(letter) = self.protocol {
            if info.port(letter).is_none() {
                return false;
            }
        }
        let onion_ok = match self.onion {
            Onion::Include => true,
            Onion::Exclude => !info.is_onion(),
            Onion::Only => info.is_onion(),
        };
        let version_ok = match self.min_version {
            None => true,
            Some(min) => info.protocol_max().is_some_and(|v| v >= min),
        };
        let pruning_ok = match self.pruning {
            Pruning::Any => true,
            Pruning::Unpruned => info.pruning_limit == 0,
            Pruning::AtLeast(n) => info.pruning_limit == 0 || info.pruning_limit >= n,
        };
        onion_ok && version_ok && pruning_ok
    }
}

/// Why a server list could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ServersError {
    /// Reading or writing the file failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done: "read", "write".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The text is not a server list.
    #[error("invalid server list{}: {reason}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Invalid {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// What is wrong, naming the entry.
        reason: String,
    },
}

/// Servers by lower-case host name, in host name order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerList {
    servers: BTreeMap<String, ServerInfo>,
}

impl ServerList {
    /// An empty list.
    pub fn new() -> Self {
        ServerList::default()
    }

    /// The list shipped with the crate for a network: public servers from the Electrum wallet's
    /// bundled lists for bitcoin, testnet, testnet4 and signet; empty for regtest.
    pub fn bundled(network: Network) -> Self {
        let text = match network {
            Network::Bitcoin => BUNDLED_BITCOIN,
            Network::Testnet => BUNDLED_TESTNET,
            Network::Testnet4 => BUNDLED_TESTNET4,
            Network::Signet => BUNDLED_SIGNET,
            Network::Regtest => return ServerList::new(),
        };
        // The bundled files are compile-time constants checked by the tests below.
        ServerList::from_json(text).expect("bundled server list parses")
    }

    /// Parses a list in Connectrum's format (an array of entries), the same entries keyed by
    /// host name, or the Electrum wallet's `servers.json` format.
    pub fn from_json(text: &str) -> Result<Self, ServersError> {
        let invalid = |reason: String| ServersError::Invalid { path: None, reason };
        let value: Value = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut list = ServerList::new();
        match value {
            Value::Array(entries) => {
                for (i, entry) in entries.into_iter().enumerate() {
                    let info = entry_from_value(entry, None)
                        .map_err(|e| invalid(format!("entry {i}: {e}")))?;
                    list.insert(info);
                }
            }
            Value::Object(entries) => {
                for (host, entry) in entries {
                    let info = entry_from_value(entry, Some(&host))
                        .map_err(|e| invalid(format!("entry {host:?}: {e}")))?;
                    list.insert(info);
                }
            }
            _ => return Err(invalid("expected a JSON array or object".into())),
        }
        Ok(list)
    }

    /// The list in Connectrum's format: a pretty-printed JSON array sorted by host name.
    pub fn to_json(&self) -> String {
        let entries: Vec<&ServerInfo> = self.servers.values().collect();
        // Strings, numbers and maps with string keys always serialize.
        serde_json::to_string_pretty(&entries).expect("server entries serialize") + "\n"
    }

    /// Reads a list file (any format [`from_json`](Self::from_json) accepts).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ServersError> {
        let path = path.as_ref();
        let text = fs::read_to_string(path).map_err(|source| ServersError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
        ServerList::from_json(&text).map_err(|e| match e {
            ServersError::Invalid { reason, .. } => ServersError::Invalid {
                path: Some(path.to_path_buf()),
                reason,
            },
            other => other,
        })
    }

    /// Writes the list in Connectrum's format, atomically: to a temporary file in the same
    /// directory, flushed to disk, then renamed over `path`. Readers see the old file or the
    /// new one, never a part.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), ServersError> {
        let path = path.as_ref();
        crate::files::write_atomic(path, self.to_json().as_bytes()).map_err(|source| {
            ServersError::Io {
                action: "write",
                path: path.to_path_buf(),
                source,
            }
        })
    }

    /// Number of servers.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// True if there are no servers.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The entry for a host name (any case).
    pub fn get(&self, hostname: &str) -> Option<&ServerInfo> {
        self.servers.get(&hostname.to_ascii_lowercase())
    }

    /// Removes and returns the entry for a host name (any case).
    pub fn remove(&mut self, hostname: &str) -> Option<ServerInfo> {
        self.servers.remove(&hostname.to_ascii_lowercase())
    }

    /// The entries, in host name order.
    pub fn iter(&self) -> impl Iterator<Item = &ServerInfo> {
        self.servers.values()
    }

    /// Adds an entry, replacing any entry for the same host; returns the replaced one.
    pub fn insert(&mut self, info: ServerInfo) -> Option<ServerInfo> {
        self.servers.insert(info.key(), info)
    }

    /// Adds an entry, or updates the existing entry for the host with what `info` knows
    /// (ports, version, pruning; nickname, IP address and extra keys when given) while keeping
    /// the rest (such as `seen_at`). Returns true if the host is new.
    pub fn merge(&mut self, info: ServerInfo) -> bool {
        match self.servers.get_mut(&info.key()) {
            Some(existing) => {
                existing.update_from(info);
                false
            }
            None => {
                self.insert(info);
                true
            }
        }
    }

    /// Merges every entry of another list; returns the host names that were new.
    pub fn merge_list(&mut self, other: ServerList) -> Vec<String> {
        other
            .servers
            .into_values()
            .filter_map(|info| {
                let key = info.key();
                self.merge(info).then_some(key)
            })
            .collect()
    }

    /// Merges a `server.peers.subscribe` answer (see [`parse_peers`]); returns the host names
    /// that were new.
    pub fn add_peers(&mut self, result: &Value) -> Result<Vec<String>, PeersError> {
        let mut added = Vec::new();
        for info in parse_peers(result)? {
            let key = info.key();
            if self.merge(info) {
                added.push(key);
            }
        }
        Ok(added)
    }

    /// Keeps only the entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&ServerInfo) -> bool) {
        self.servers.retain(|_, info| keep(info));
    }

    /// The entries that pass a filter.
    pub fn filtered(&self, filter: &Filter) -> ServerList {
        self.iter().filter(|i| filter.matches(i)).cloned().collect()
    }

    /// The URLs of every server offering a transport, in host name order.
    pub fn urls(&self, scheme: Scheme) -> Vec<ServerUrl> {
        self.iter().filter_map(|i| i.url(scheme)).collect()
    }

    /// The list as a `server.peers.subscribe` answer (usable entries only).
    pub fn peers_result(&self) -> Value {
        Value::Array(
            self.iter()
                .filter(|i| i.is_usable())
                .map(ServerInfo::peer_entry)
                .collect(),
        )
    }
}

impl FromIterator<ServerInfo> for ServerList {
    fn from_iter<I: IntoIterator<Item = ServerInfo>>(iter: I) -> Self {
        let mut list = ServerList::new();
        for info in iter {
            list.insert(info);
        }
        list
    }
}

impl<'a> IntoIterator for &'a ServerList {
    type Item = &'a ServerInfo;
    type IntoIter = std::collections::btree_map::Values<'a, String, ServerInfo>;
    fn into_iter(self) -> Self::IntoIter {
        self.servers.values()
    }
}

/// One entry of a list file. `key` is the host name the entry is filed under in the object
/// forms. Entries with `ports` or `hostname` are Connectrum's; others are the Electrum wallet's
/// `{"s": "50002", "t": "50001", "pruning": "-", "version": "1.4"}`.
fn entry_from_value(entry: Value, key: Option<&str>) -> Result<ServerInfo, String> {
    let Value::Object(mut map) = entry else {
        return Err("not a JSON object".into());
    };
    let connectrum = key.is_none() || map.contains_key("ports") || map.contains_key("hostname");
    let info = if connectrum {
        if let Some(key) = key {
            map.entry("hostname")
                .or_insert_with(|| Value::String(key.to_string()));
        }
        let mut info: ServerInfo =
            serde_json::from_value(Value::Object(map)).map_err(|e| e.to_string())?;
        info.normalize();
        info
    } else {
        electrum_entry(key.unwrap_or_default(), map)?
    };
    if !valid_host(&info.hostname) {
        return Err(format!("invalid host name {:?}", info.hostname));
    }
    Ok(info)
}

/// Converts an entry of the Electrum wallet's list format.
fn electrum_entry(host: &str, map: Map<String, Value>) -> Result<ServerInfo, String> {
    let mut info = ServerInfo::new(host, Vec::<String>::new());
    for (k, v) in map {
        match k.as_str() {
            "s" | "t" | "h" | "g" => {
                let port = match &v {
                    Value::String(s) => s.parse::<u16>().ok(),
                    Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
                    _ => None,
                }
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("invalid port {v} for {k:?}"))?;
                info.ports.push(format!("{k}{port}"));
            }
            "pruning" => {
                info.pruning_limit = de_pruning(v).map_err(|e| e.to_string())?;
            }
            "version" => info.version = de_version(v).map_err(|e| e.to_string())?,
            // Names of the entry's own fields are those fields, not extra keys: kept in `extra`
            // they would be written twice, and read back as something else.
            "nickname" | "ip_addr" => {
                let text = match v {
                    Value::Null => None,
                    Value::String(s) => Some(s),
                    other => return Err(format!("invalid {k} {other}")),
                };
                if k == "nickname" {
                    info.nickname = text;
                } else {
                    info.ip_addr = text;
                }
            }
            "pruning_limit" => {
                info.pruning_limit = de_pruning(v).map_err(|e| e.to_string())?;
            }
            _ => {
                info.extra.insert(k, v);
            }
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests;
