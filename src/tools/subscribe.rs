//! `electrum-gateway subscribe`: watch the chain tip and addresses from a shell.
//!
//! Prints the current state of everything watched, then one line per notification until
//! interrupted. The connection is kept up in the background: after a reconnect the client
//! re-subscribes and reports whatever changed meanwhile, so a line is never lost to a
//! network blip (the blip itself is reported on stderr).
//!
//! Two output forms: a human one (`headers: height 301 hash 5e3c...`, `ADDRESS: status
//! 4f1c...`), and with `--json` one JSON object per line, `{"method", "params", "initial"}`
//! shaped like the Electrum notification itself (see [`Event::to_json`]).

use bitcoin::Network;
use clap::Args;
use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use std::io::Write;
use std::pin::Pin;

use super::call::check_address_syntax;
use super::{
    header_hash, report_error, server_network, ConnectArgs, ToolError, EXIT_CONNECTION, EXIT_OK,
};
use crate::address::{is_scripthash, script_hash};
use crate::client::{Client, ClientEvent};

const HEADERS: &str = "blockchain.headers.subscribe";
const SCRIPTHASH: &str = "blockchain.scripthash.subscribe";

/// Arguments of `electrum-gateway subscribe`.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["headers", "targets"])))]
pub struct SubscribeArgs {
    /// Where and how to connect.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Watch the chain tip (blockchain.headers.subscribe).
    #[arg(long)]
    pub headers: bool,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Addresses (of --network, or the server's network) and scripthashes (64 hex digits)
    /// to watch.
    #[arg(value_name = "ADDRESS|SCRIPTHASH")]
    pub targets: Vec<String>,
}

/// What to watch, as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The chain tip.
    Headers,
    /// A scripthash (64 hex digits, lower case).
    ScriptHash(String),
    /// An address, converted on the network in use.
    Address(String),
}

impl Target {
    /// Reads a command-line word: 64 hex digits are a scripthash, anything else must be an
    /// address (of some network; which one is checked once the network is known).
    pub fn parse(word: &str) -> Result<Target, ToolError> {
        let word = word.trim();
        if is_scripthash(word) {
            return Ok(Target::ScriptHash(word.to_ascii_lowercase()));
        }
        check_address_syntax(word)?;
        Ok(Target::Address(word.to_string()))
    }
}

/// What a subscription watches, resolved to what goes on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watched {
    /// The chain tip.
    Headers,
    /// A scripthash, with the address it came from if one was given.
    ScriptHash {
        /// The scripthash (hex).
        scripthash: String,
        /// The address, when the user gave one.
        address: Option<String>,
    },
}

impl Watched {
    /// How a human calls it: `headers`, the address, or the scripthash.
    pub fn label(&self) -> &str {
        match self {
            Watched::Headers => "headers",
            Watched::ScriptHash {
                address: Some(a), ..
            } => a,
            Watched::ScriptHash { scripthash, .. } => scripthash,
        }
    }
}

/// A state of something watched: the initial one, or one from a notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// What it is about.
    pub watched: Watched,
    /// The header dict `{"hex", "height"}`, or the scripthash status (a string, or null for
    /// no history).
    pub value: Value,
    /// True for the state at subscription time.
    pub initial: bool,
}

/// An item of the update stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// A new state.
    Event(Event),
    /// The subscription ended (the client was closed, or the server refused it after a
    /// reconnect); no more events come for it.
    Ended(Watched),
}

/// The stream of updates after the initial states.
pub type Updates = Pin<Box<dyn Stream<Item = Update> + Send>>;

impl Event {
    /// The `--json` line: `{"method", "params", "initial"}` where method and params are those
    /// of the Electrum notification (`blockchain.headers.subscribe` with `[{"hex","height"}]`,
    /// `blockchain.scripthash.subscribe` with `[scripthash, status]`); header events add the
    /// block `"hash"`, address events the `"address"`.
    pub fn to_json(&self) -> Value {
        match &self.watched {
            Watched::Headers => {
                let mut v = json!({
                    "method": HEADERS,
                    "params": [self.value],
                    "initial": self.initial,
                });
                if let Some(hash) = self.value["hex"].as_str().and_then(header_hash) {
                    v["hash"] = json!(hash);
                }
                v
            }
            Watched::ScriptHash {
                scripthash,
                address,
            } => {
                let mut v = json!({
                    "method": SCRIPTHASH,
                    "params": [scripthash, self.value],
                    "initial": self.initial,
                });
                if let Some(a) = address {
                    v["address"] = json!(a);
                }
                v
            }
        }
    }

    /// The human line: `headers: height 301 hash 5e3c...`, `ADDRESS: status 4f1c...` or
    /// `ADDRESS: no history`.
    pub fn to_human(&self) -> String {
        let label = self.watched.label();
        match &self.watched {
            Watched::Headers => {
                let height = match self.value.get("height").and_then(Value::as_u64) {
                    Some(h) => h.to_string(),
                    None => "?".into(),
                };
                match self
                    .value
                    .get("hex")
                    .and_then(Value::as_str)
                    .and_then(header_hash)
                {
                    Some(hash) => format!("{label}: height {height} hash {hash}"),
                    None => format!(
                        "{label}: height {height} (unreadable header {})",
                        self.value
                    ),
                }
            }
            Watched::ScriptHash { .. } => match &self.value {
                Value::Null => format!("{label}: no history"),
                Value::String(s) => format!("{label}: status {s}"),
                other => format!("{label}: status {other}"),
            },
        }
    }
}

/// Subscribes to every target on a connected client; returns the initial states (in target
/// order) and the stream of later ones.
///
/// Addresses are converted on `network`; without one, on the server's network (from the
/// genesis hash in `server.features`); with one, a server on another network is refused.
pub async fn subscribe(
    client: &Client,
    network: Option<Network>,
    targets: &[Target],
) -> Result<(Vec<Event>, Updates), ToolError> {
    let needs_network = targets.iter().any(|t| matches!(t, Target::Address(_)));
    let network = match needs_network {
        true => Some(server_network(client, network).await?),
        false => network,
    };
    let mut watched = Vec::with_capacity(targets.len());
    for t in targets {
        watched.push(match t {
            Target::Headers => Watched::Headers,
            Target::ScriptHash(sh) => Watched::ScriptHash {
                scripthash: sh.clone(),
                address: None,
            },
            Target::Address(a) => {
                // `needs_network` made sure there is one.
                let n = network.unwrap_or(Network::Bitcoin);
                let sh = script_hash(a, n).map_err(|e| ToolError::Usage(e.to_string()))?;
                Watched::ScriptHash {
                    scripthash: sh,
                    address: Some(a.clone()),
                }
            }
        });
    }
    let mut initial = Vec::with_capacity(watched.len());
    let mut streams = Vec::with_capacity(watched.len());
    for w in watched {
        let (method, params) = match &w {
            Watched::Headers => (HEADERS, vec![]),
            Watched::ScriptHash { scripthash, .. } => (SCRIPTHASH, vec![json!(scripthash)]),
        };
        let (first, sub) = client.subscribe(method, params).await?;
        let value: Value = serde_json::from_str(first.get()).map_err(|e| {
            ToolError::Connection(format!("server sent an unreadable {method} result: {e}"))
        })?;
        initial.push(Event {
            watched: w.clone(),
            value,
            initial: true,
        });
        let ended = w.clone();
        let events = sub.map(move |value| {
            Update::Event(Event {
                watched: w.clone(),
                value,
                initial: false,
            })
        });
        let stream: Updates =
            Box::pin(events.chain(futures::stream::once(async move { Update::Ended(ended) })));
        streams.push(stream);
    }
    Ok((initial, Box::pin(futures::stream::select_all(streams))))
}

/// SIGINT (ctrl-c) and SIGTERM, listened to from the start so an early signal is not lost.
struct Interrupt {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Interrupt {
    fn new() -> std::io::Result<Interrupt> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Interrupt {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Interrupt {})
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Writes one line to stdout; false if stdout is gone (e.g. the reader of a pipe quit).
fn emit(event: &Event, json: bool) -> bool {
    let line = match json {
        true => event.to_json().to_string(),
        false => event.to_human(),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|_| out.flush()).is_ok()
}

/// Runs `electrum-gateway subscribe` until SIGINT/SIGTERM (exit 0) or until every
/// subscription has ended (exit 3). Errors before the first line exit as `call` does (2: bad
/// usage, address or network; 3: connection problem; 1: the server refused a subscription).
pub async fn run(args: SubscribeArgs) -> anyhow::Result<i32> {
    let mut interrupt = Interrupt::new()?;
    tokio::select! {
        code = run_inner(args) => Ok(code),
        _ = interrupt.recv() => Ok(EXIT_OK),
    }
}

async fn run_inner(args: SubscribeArgs) -> i32 {
    let setup = async {
        let mut targets = Vec::new();
        if args.headers {
            targets.push(Target::Headers);
        }
        for word in &args.targets {
            targets.push(Target::parse(word)?);
        }
        let network = args.connect.network()?;
        let config = args.connect.client_config(true)?;
        let client = Client::connect(config).await?;
        let (initial, updates) = subscribe(&client, network, &targets).await?;
        Ok::<_, ToolError>((client, initial, updates))
    };
    let (client, initial, mut updates) = match setup.await {
        Ok(x) => x,
        Err(e) => return report_error(&e),
    };
    let mut events = client.events();
    let server = client.url().to_string();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(ClientEvent::Disconnected { reason }) => {
                    eprintln!("disconnected from {server}: {reason}; reconnecting")
                }
                Ok(ClientEvent::Connected { .. }) => eprintln!("reconnected to {server}"),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
    });
    for event in &initial {
        if !emit(event, args.json) {
            return EXIT_OK;
        }
    }
    let mut live = initial.len();
    while let Some(update) = updates.next().await {
        match update {
            Update::Event(event) => {
                if !emit(&event, args.json) {
                    return EXIT_OK;
                }
            }
            Update::Ended(watched) => {
                eprintln!("subscription to {} ended", watched.label());
                live -= 1;
                if live == 0 {
                    break;
                }
            }
        }
    }
    eprintln!("error: every subscription ended (the connection is closed)");
    EXIT_CONNECTION
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regtest_genesis_hex() -> String {
        let block = bitcoin::constants::genesis_block(Network::Regtest);
        bitcoin::consensus::encode::serialize_hex(&block.header)
    }

    #[test]
    fn targets_are_scripthashes_or_addresses() {
        let sh = "8B01DF4E368EA28F8DC0423BCF7A4923E3A12D307C875E47A0CFBF90B5C39161";
        assert_eq!(
            Target::parse(sh).unwrap(),
            Target::ScriptHash(sh.to_ascii_lowercase())
        );
        assert_eq!(
            Target::parse("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080").unwrap(),
            Target::Address("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080".into())
        );
        // 63 hex digits is neither.
        for bad in [&sh[1..], "nonsense", ""] {
            assert_eq!(Target::parse(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn header_events_show_height_and_hash() {
        let hex = regtest_genesis_hex();
        let e = Event {
            watched: Watched::Headers,
            value: json!({"hex": hex, "height": 0}),
            initial: true,
        };
        let genesis = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206";
        assert_eq!(e.to_human(), format!("headers: height 0 hash {genesis}"));
        let j = e.to_json();
        assert_eq!(j["method"], HEADERS);
        assert_eq!(j["params"], json!([{"hex": hex, "height": 0}]));
        assert_eq!(j["initial"], json!(true));
        assert_eq!(j["hash"], json!(genesis));

        let broken = Event {
            watched: Watched::Headers,
            value: json!({"hex": "zz", "height": 7}),
            initial: false,
        };
        assert!(broken
            .to_human()
            .starts_with("headers: height 7 (unreadable"));
        assert!(broken.to_json().get("hash").is_none());
    }

    #[test]
    fn scripthash_events_show_label_and_status() {
        let w = Watched::ScriptHash {
            scripthash: "ab".repeat(32),
            address: Some("bcrt1qexample".into()),
        };
        let e = Event {
            watched: w.clone(),
            value: json!("cd".repeat(32)),
            initial: false,
        };
        assert_eq!(
            e.to_human(),
            format!("bcrt1qexample: status {}", "cd".repeat(32))
        );
        assert_eq!(
            e.to_json(),
            json!({
                "method": SCRIPTHASH,
                "params": ["ab".repeat(32), "cd".repeat(32)],
                "initial": false,
                "address": "bcrt1qexample",
            })
        );
        let bare = Event {
            watched: Watched::ScriptHash {
                scripthash: "ab".repeat(32),
                address: None,
            },
            value: Value::Null,
            initial: true,
        };
        assert_eq!(bare.to_human(), format!("{}: no history", "ab".repeat(32)));
        assert!(bare.to_json().get("address").is_none());
    }
}
