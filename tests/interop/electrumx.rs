//! Real ElectrumX processes for the interop test: finding the installed server, starting,
//! killing and restarting it, and watching what it serves.
//!
//! `.ci/run` installs ElectrumX (`e-x` from PyPI) into `.venv` and exports `ELECTRUMX_BIN`;
//! without that variable the test looks at `.venv/bin/electrumx_server` in the repository.
//! The test is ignored unless run with `cargo test -- --include-ignored`; then a missing
//! ElectrumX fails it.
//!
//! ElectrumX only starts listening once it has caught up with its node, so "ready" means: the
//! port accepts a connection and the server reports the expected tip. Every wait here is
//! bounded and watches a condition (the process exiting ends a wait at once, with its log).

use electrum_gateway::client::{Client, ClientConfig, Subscription};
use electrum_gateway::transport::{Scheme, ServerUrl};
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;

/// Longest time ElectrumX may take to start and index the chain (three of them start at once
/// on a small machine).
pub const START_WAIT: Duration = Duration::from_secs(120);
/// Longest time for an ElectrumX to follow a change of the chain.
pub const SYNC_WAIT: Duration = Duration::from_secs(60);

/// The installed `electrumx_server`: `ELECTRUMX_BIN`, else `.venv/bin/electrumx_server` in the
/// repository. Fails the test, saying how to install it, when it is not there.
#[track_caller]
pub fn binary() -> PathBuf {
    let path = match std::env::var_os("ELECTRUMX_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/electrumx_server"),
    };
    crate::common::programs::program_at(
        "ElectrumX 2.0.0 (electrumx_server)",
        &path,
        "run .ci/run, which installs it into .venv, or `python3 -m venv .venv && \
         .venv/bin/pip install 'e-x[leveldb]==2.0.0'`; or set ELECTRUMX_BIN to an electrumx_server",
    )
}

/// A free loopback port (bound and released; ElectrumX binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One ElectrumX server process and its database.
pub struct ElectrumX {
    /// Which of the test's servers this is.
    pub index: usize,
    /// Its TCP port.
    pub port: u16,
    bin: PathBuf,
    db_dir: PathBuf,
    log: PathBuf,
    daemon_url: String,
    child: Option<Child>,
    starts: usize,
}

impl ElectrumX {
    /// Starts a server on a free port with a fresh database under `dir`.
    pub fn start(bin: &Path, index: usize, dir: &Path, daemon_url: &str) -> ElectrumX {
        let db_dir = dir.join(format!("electrumx-{index}"));
        std::fs::create_dir_all(&db_dir).expect("database directory");
        let mut ex = ElectrumX {
            index,
            port: free_port(),
            bin: bin.to_path_buf(),
            log: dir.join(format!("electrumx-{index}.log")),
            db_dir,
            daemon_url: daemon_url.to_string(),
            child: None,
            starts: 0,
        };
        ex.spawn();
        ex
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let log2 = log.try_clone().expect("log file");
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("COIN", "Bitcoin")
            .env("NET", "regtest")
            .env("DB_ENGINE", "leveldb")
            .env("DB_DIRECTORY", &self.db_dir)
            .env("DAEMON_URL", &self.daemon_url)
            .env("SERVICES", format!("tcp://127.0.0.1:{}", self.port))
            .env("REPORT_SERVICES", "")
            .env("PEER_DISCOVERY", "off")
            .env("PEER_ANNOUNCE", "")
            // Every local client is in one IP group; the gateway multiplexes many wallets
            // over one connection. Cost throttling would only get in the way here.
            .env("COST_SOFT_LIMIT", "0")
            .env("COST_HARD_LIMIT", "0")
            .env("DAEMON_POLL_INTERVAL_BLOCKS", "100")
            .env("DAEMON_POLL_INTERVAL_MEMPOOL", "100")
            .env("CACHE_MB", "50")
            .env("LOG_LEVEL", "info")
            .env("ALLOW_ROOT", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .kill_on_drop(true);
        self.child = Some(cmd.spawn().expect("start electrumx_server"));
    }

    /// The server's URL for the gateway.
    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// Kills the process (SIGKILL: no clean shutdown) and waits for it to be gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill electrumx_server");
        }
    }

    /// Starts the process again on the same port and database.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        self.spawn();
    }

    /// The end of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn check_alive(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "ElectrumX #{} exited ({status}); its log ends:\n{}",
                    self.index,
                    self.log_tail()
                );
            }
        }
    }

    /// Waits until the server accepts connections and serves a tip of at least `height`;
    /// returns a monitor connected to it.
    pub async fn ready(&mut self, height: u32, scripthashes: &[String]) -> Monitor {
        let deadline = Instant::now() + START_WAIT;
        let client = loop {
            self.check_alive();
            let mut cfg = ClientConfig::new(ServerUrl::new(Scheme::Tcp, "127.0.0.1", self.port));
            cfg.reconnect = None;
            cfg.connect_timeout = Duration::from_secs(5);
            cfg.request_timeout = Duration::from_secs(20);
            cfg.ping_interval = None;
            cfg.network = bitcoin::Network::Regtest;
            match Client::connect(cfg).await {
                Ok(c) => break c,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "ElectrumX #{} not listening after {START_WAIT:?} ({e}); its log ends:\n{}",
                        self.index,
                        self.log_tail()
                    );
                    // Not listening yet: it is still indexing. Poll the port again shortly.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let software = client.server_info().map(|i| i.software).unwrap_or_default();
        assert!(
            software.starts_with("ElectrumX"),
            "unexpected server software {software:?}"
        );
        let monitor = Monitor::start(self.index, client, scripthashes).await;
        let tip = monitor
            .wait(
                &format!("ElectrumX #{} at height {height}", self.index),
                SYNC_WAIT,
                |s| s.height >= height,
            )
            .await;
        assert!(tip.height >= height);
        monitor
    }
}

/// What one ElectrumX serves now, as seen through its subscriptions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Served {
    /// Tip height.
    pub height: u32,
    /// Tip header, hex.
    pub hex: String,
    /// Status by scripthash.
    pub statuses: BTreeMap<String, Option<String>>,
}

/// A direct connection to one ElectrumX, subscribed to headers and to the test's
/// scripthashes, so that the test can wait until that server has caught up with a change.
pub struct Monitor {
    index: usize,
    /// Kept open: the subscriptions live on this connection.
    _client: Client,
    rx: watch::Receiver<Served>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn status_value(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

impl Monitor {
    async fn start(index: usize, client: Client, scripthashes: &[String]) -> Monitor {
        let (tip, mut tips) = client
            .subscribe("blockchain.headers.subscribe", vec![])
            .await
            .expect("headers.subscribe on ElectrumX");
        let tip: Value = serde_json::from_str(tip.get()).expect("JSON");
        // Subscribe to every scripthash at once: pipelined on one connection, as ElectrumX
        // holds small answers back for up to a second.
        let subs = futures::future::join_all(scripthashes.iter().map(|sh| {
            let client = client.clone();
            async move {
                let (status, stream) = client
                    .subscribe("blockchain.scripthash.subscribe", vec![json!(sh)])
                    .await
                    .expect("scripthash.subscribe on ElectrumX");
                let status: Value = serde_json::from_str(status.get()).expect("JSON");
                (sh.clone(), status, stream)
            }
        }))
        .await;
        let mut served = Served {
            height: tip["height"].as_u64().expect("height") as u32,
            hex: tip["hex"].as_str().expect("hex").to_string(),
            statuses: BTreeMap::new(),
        };
        let mut streams: Vec<(String, Subscription)> = Vec::new();
        for (sh, status, stream) in subs {
            served.statuses.insert(sh.clone(), status_value(&status));
            streams.push((sh, stream));
        }
        let (tx, rx) = watch::channel(served);
        let task = tokio::spawn(async move {
            let mut changes = futures::stream::select_all(
                streams
                    .into_iter()
                    .map(|(sh, s)| s.map(move |v| (Some(sh.clone()), v)).boxed()),
            );
            loop {
                tokio::select! {
                    t = tips.next() => match t {
                        Some(t) => tx.send_modify(|s| {
                            s.height = t["height"].as_u64().unwrap_or(0) as u32;
                            s.hex = t["hex"].as_str().unwrap_or_default().to_string();
                        }),
                        None => return,
                    },
                    c = changes.next() => match c {
                        Some((Some(sh), v)) => tx.send_modify(|s| {
                            s.statuses.insert(sh, status_value(&v));
                        }),
                        _ => return,
                    },
                }
            }
        });
        Monitor {
            index,
            _client: client,
            rx,
            task,
        }
    }

    /// Waits until what the server serves satisfies `cond`; panics with `what` after `limit`.
    pub async fn wait(
        &self,
        what: &str,
        limit: Duration,
        cond: impl Fn(&Served) -> bool,
    ) -> Served {
        let mut rx = self.rx.clone();
        let waited = match tokio::time::timeout(limit, rx.wait_for(|s| cond(s))).await {
            Ok(Ok(s)) => s.clone(),
            Ok(Err(_)) => panic!(
                "ElectrumX #{}: connection lost waiting for {what}",
                self.index
            ),
            Err(_) => panic!(
                "ElectrumX #{}: timed out waiting for {what}; it serves {:?}",
                self.index,
                *self.rx.borrow()
            ),
        };
        waited
    }

    /// Waits until the server serves exactly this tip and these statuses.
    pub async fn wait_synced(
        &self,
        what: &str,
        height: u32,
        hex: &str,
        statuses: &BTreeMap<String, Option<String>>,
    ) {
        self.wait(what, SYNC_WAIT, |s| {
            s.height == height && s.hex == hex && &s.statuses == statuses
        })
        .await;
    }
}
