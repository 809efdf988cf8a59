//! Command-line tools on top of the client library: `call`, `subscribe` and `spider`.
//!
//! They are Connectrum's tools again, for people poking at Electrum servers from a shell and
//! for scripts: one call with its answer as JSON, a live feed of subscription notifications,
//! and a crawler that discovers servers through `server.peers.subscribe` and writes a
//! `servers.json` the gateway can use as its candidate list. Each command is a library
//! function first ([`call::call`], [`subscribe::subscribe`], [`spider::crawl`]) with a thin
//! clap front end (`*Args` and `run`), so Rust programs get the same behaviour without a
//! process in between.
//!
//! Exit codes are shared by `call` and `subscribe` so scripts can tell "the server said no"
//! from "I typed it wrong" from "the network is down" (see [`ToolError::exit_code`]); `spider`
//! has its own, documented on [`spider::run`]. `docs/tools.md` describes the commands.

pub mod call;
pub mod cert;
pub mod software;
pub mod spider;
pub mod subscribe;

mod probe;

use bitcoin::Network;
use clap::Args;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

use crate::address::{network_name, parse_network};
use crate::client::{Client, ClientConfig, ClientError, ProxyConfig, TlsMode};
use crate::protocol::RpcError;
use crate::transport::ServerUrl;

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: the server answered with a JSON-RPC error.
pub const EXIT_RPC_ERROR: i32 = 1;
/// Exit code: bad usage: arguments, an invalid address, an address or server of the wrong
/// network. Also what clap uses for command-line syntax errors.
pub const EXIT_USAGE: i32 = 2;
/// Exit code: the server could not be reached or talked to: connection refused, TLS or
/// certificate pin failure, proxy failure, timeout, lost connection, protocol violation.
pub const EXIT_CONNECTION: i32 = 3;

/// The local gateway's wallet listener, where `call` and `subscribe` go without `--server`.
pub const DEFAULT_SERVER: &str = "tcp://127.0.0.1:50001";

/// Why a tool failed, sorted by who can fix it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ToolError {
    /// The user's input is wrong (bad argument, address, network).
    #[error("{0}")]
    Usage(String),
    /// The server answered with an error.
    #[error("server error {}: {}", .0.code, .0.message)]
    Rpc(RpcError),
    /// The server could not be reached or broke the protocol.
    #[error("{0}")]
    Connection(String),
}

impl ToolError {
    /// The process exit code for this error: [`EXIT_RPC_ERROR`], [`EXIT_USAGE`] or
    /// [`EXIT_CONNECTION`].
    pub fn exit_code(&self) -> i32 {
        match self {
            ToolError::Usage(_) => EXIT_USAGE,
            ToolError::Rpc(_) => EXIT_RPC_ERROR,
            ToolError::Connection(_) => EXIT_CONNECTION,
        }
    }
}

impl From<ClientError> for ToolError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Rpc(e) => ToolError::Rpc(e),
            ClientError::Address(m) => ToolError::Usage(m),
            other => ToolError::Connection(other.to_string()),
        }
    }
}

/// How `--tls-verify` checks a TLS server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsVerify {
    /// Against the webpki (Mozilla) root certificates, with the host name.
    Ca,
    /// Trust on first use: pinned in the pin file, refused if it changes.
    Pin,
    /// No check at all.
    Insecure,
}

/// The connection options `call` and `subscribe` share.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Server URL: tcp://, ssl://, ws://, wss:// or HOST:PORT:t|s.
    #[arg(long, value_name = "URL", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// SOCKS5 proxy, e.g. socks5://127.0.0.1:9050 (.onion servers use Tor's default port
    /// without it).
    #[arg(long, value_name = "socks5://HOST:PORT")]
    pub proxy: Option<String>,
    /// Network of addresses: bitcoin, testnet, testnet4, signet or regtest [default: the
    /// server's, from the genesis hash in server.features].
    #[arg(long, value_name = "NAME")]
    pub network: Option<String>,
    /// TLS certificate check for ssl:// and wss:// servers.
    #[arg(long, value_enum, default_value = "pin")]
    pub tls_verify: TlsVerify,
    /// Pin file for --tls-verify pin [default: ~/.electrum-gateway/pins.json].
    #[arg(long, value_name = "FILE")]
    pub pin_file: Option<PathBuf>,
    /// Seconds to wait for the connection and for each answer.
    #[arg(long, value_name = "S", default_value_t = 30.0)]
    pub timeout: f64,
}

/// The default pin file, shared with the gateway: `~/.electrum-gateway/pins.json`.
pub fn default_pin_file() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home)
            .join(".electrum-gateway")
            .join("pins.json"),
        None => PathBuf::from(".electrum-gateway").join("pins.json"),
    }
}

/// Parses `--timeout` seconds: positive and finite.
pub fn parse_timeout(secs: f64) -> Result<Duration, ToolError> {
    if secs.is_finite() && secs > 0.0 {
        Ok(Duration::from_secs_f64(secs.min(1e6)))
    } else {
        Err(ToolError::Usage(format!(
            "--timeout must be a positive number of seconds, not {secs}"
        )))
    }
}

/// Parses a network name (see [`parse_network`]).
pub fn parse_network_arg(name: &str) -> Result<Network, ToolError> {
    parse_network(name).ok_or_else(|| {
        ToolError::Usage(format!(
            "unknown network {name:?}: use bitcoin, testnet, testnet4, signet or regtest"
        ))
    })
}

/// Parses a SOCKS5 proxy URL.
pub fn parse_proxy_arg(proxy: &str) -> Result<ProxyConfig, ToolError> {
    proxy
        .parse()
        .map_err(|e: ClientError| ToolError::Usage(e.to_string()))
}

impl ConnectArgs {
    /// The network given with `--network`, if any.
    pub fn network(&self) -> Result<Option<Network>, ToolError> {
        self.network.as_deref().map(parse_network_arg).transpose()
    }

    /// The client configuration these options describe. `reconnect` keeps the connection up
    /// in the background (for long-running commands); without it a lost connection closes
    /// the client.
    pub fn client_config(&self, reconnect: bool) -> Result<ClientConfig, ToolError> {
        let server: ServerUrl = self
            .server
            .parse()
            .map_err(|e: crate::transport::UrlError| ToolError::Usage(e.to_string()))?;
        let timeout = parse_timeout(self.timeout)?;
        let mut config = ClientConfig::new(server);
        config.proxy = self.proxy.as_deref().map(parse_proxy_arg).transpose()?;
        config.tls = match self.tls_verify {
            TlsVerify::Ca => TlsMode::Verified,
            TlsVerify::Insecure => TlsMode::Insecure,
            TlsVerify::Pin => TlsMode::Pinned {
                pin_file: self.pin_file.clone().unwrap_or_else(default_pin_file),
            },
        };
        config.connect_timeout = timeout;
        config.request_timeout = timeout;
        if let Some(network) = self.network()? {
            config.network = network;
        }
        if !reconnect {
            config.reconnect = None;
            config.ping_interval = None;
        }
        Ok(config)
    }
}

/// The genesis block hash of a network, as servers write it in `server.features`.
pub fn genesis_hash(network: Network) -> String {
    bitcoin::constants::genesis_block(network)
        .block_hash()
        .to_string()
}

/// The network whose genesis block hash this is (any case), if it is one of the five.
pub fn network_of_genesis(hash: &str) -> Option<Network> {
    let hash = hash.trim().to_ascii_lowercase();
    [
        Network::Bitcoin,
        Network::Testnet,
        Network::Testnet4,
        Network::Signet,
        Network::Regtest,
    ]
    .into_iter()
    .find(|n| genesis_hash(*n) == hash)
}

/// The network of the server behind `client`, told by the genesis hash in its
/// `server.features`, checked against `expected` when given.
///
/// With `expected`, a server that does not say is trusted to be on it (the gateway and most
/// servers do say); a server that names another genesis block is refused. Without
/// `expected`, the server must name a known genesis block.
pub async fn server_network(
    client: &Client,
    expected: Option<Network>,
) -> Result<Network, ToolError> {
    let features: Result<Value, ClientError> = client.call("server.features", vec![]).await;
    let genesis = match features {
        Ok(f) => f
            .get("genesis_hash")
            .and_then(Value::as_str)
            .map(str::to_string),
        Err(ClientError::Rpc(_)) | Err(ClientError::Protocol(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let server = client.url();
    match (genesis, expected) {
        (Some(g), Some(n)) if !g.eq_ignore_ascii_case(&genesis_hash(n)) => {
            let theirs = network_of_genesis(&g)
                .map(|n| format!("on {}", network_name(n)))
                .unwrap_or_else(|| format!("on another chain (genesis {g})"));
            Err(ToolError::Usage(format!(
                "wrong network: {server} is {theirs}, not on {}",
                network_name(n)
            )))
        }
        (_, Some(n)) => Ok(n),
        (Some(g), None) => network_of_genesis(&g).ok_or_else(|| {
            ToolError::Usage(format!(
                "{server} serves an unknown chain (genesis {g}); pass --network"
            ))
        }),
        (None, None) => Err(ToolError::Usage(format!(
            "{server} does not tell its network (no genesis_hash in server.features); \
             pass --network"
        ))),
    }
}

/// The block hash (hex, display order) of a block header given as hex, if it parses.
pub(crate) fn header_hash(hex: &str) -> Option<String> {
    use bitcoin::hex::FromHex;
    let bytes = Vec::<u8>::from_hex(hex).ok()?;
    let header: bitcoin::block::Header = bitcoin::consensus::deserialize(&bytes).ok()?;
    Some(header.block_hash().to_string())
}

/// Prints an error the way every tool does (`error: ...` on stderr) and returns its exit
/// code.
pub fn report_error(e: &ToolError) -> i32 {
    eprintln!("error: {e}");
    e.exit_code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genesis_hashes_name_their_networks() {
        assert_eq!(
            genesis_hash(Network::Bitcoin),
            "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
        );
        assert_eq!(
            genesis_hash(Network::Regtest),
            "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
        );
        for n in [
            Network::Bitcoin,
            Network::Testnet,
            Network::Testnet4,
            Network::Signet,
            Network::Regtest,
        ] {
            assert_eq!(network_of_genesis(&genesis_hash(n)), Some(n));
            assert_eq!(
                network_of_genesis(&genesis_hash(n).to_ascii_uppercase()),
                Some(n)
            );
        }
        assert_eq!(network_of_genesis(&"00".repeat(32)), None);
    }

    #[test]
    fn exit_codes_follow_the_kind_of_error() {
        assert_eq!(
            ToolError::from(ClientError::Rpc(RpcError::method_not_found("x"))).exit_code(),
            EXIT_RPC_ERROR
        );
        assert_eq!(
            ToolError::from(ClientError::Address("bad".into())).exit_code(),
            EXIT_USAGE
        );
        for e in [
            ClientError::Connect("refused".into()),
            ClientError::Timeout,
            ClientError::Tls("x".into()),
            ClientError::Protocol("x".into()),
        ] {
            assert_eq!(ToolError::from(e).exit_code(), EXIT_CONNECTION);
        }
    }

    #[test]
    fn connect_args_build_client_configs() {
        let args = ConnectArgs {
            server: "ssl://h:1".into(),
            proxy: Some("socks5://127.0.0.1:9050".into()),
            network: Some("regtest".into()),
            tls_verify: TlsVerify::Pin,
            pin_file: Some("/tmp/p.json".into()),
            timeout: 2.5,
        };
        let c = args.client_config(false).unwrap();
        assert_eq!(c.server.to_string(), "ssl://h:1");
        assert_eq!(c.proxy.unwrap().addr, "127.0.0.1:9050");
        assert_eq!(c.network, Network::Regtest);
        assert_eq!(
            c.tls,
            TlsMode::Pinned {
                pin_file: "/tmp/p.json".into()
            }
        );
        assert_eq!(c.request_timeout, Duration::from_millis(2500));
        assert!(c.reconnect.is_none());
        let with = args.client_config(true).unwrap();
        assert!(with.reconnect.is_some());

        for (field, bad) in [("server", "ftp://x"), ("proxy", "http://p:1")] {
            let mut a = args.clone();
            match field {
                "server" => a.server = bad.into(),
                _ => a.proxy = Some(bad.into()),
            }
            assert_eq!(
                a.client_config(false).unwrap_err().exit_code(),
                EXIT_USAGE,
                "{field}"
            );
        }
        let mut a = args.clone();
        a.timeout = 0.0;
        assert!(matches!(a.client_config(false), Err(ToolError::Usage(_))));
        let mut a = args;
        a.network = Some("dogecoin".into());
        assert!(matches!(a.client_config(false), Err(ToolError::Usage(_))));
    }
}
