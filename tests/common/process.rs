//! The `electrum-gateway` program run as a process: started on a configuration file, its
//! addresses read from what it prints, its JSON log lines kept, signalled, and waited for.

use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, Notify};

use super::http::http;
use super::{until, WAIT};

/// A running `electrum-gateway serve`, killed when dropped.
pub struct GatewayProcess {
    child: Child,
    /// The wallet TCP listener.
    pub tcp: SocketAddr,
    /// The HTTP listener.
    pub http: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    logs: Arc<Mutex<Vec<Value>>>,
    logged: Arc<Notify>,
}

/// The configuration file of a regtest gateway in front of `upstreams`, listening on `tcp` and
/// `http` (`127.0.0.1:0`: any free port), with `extra_listen` lines added to its `[listen]`
/// section.
pub fn config_toml(upstreams: &[String], tcp: &str, http: &str, extra_listen: &str) -> String {
    let servers: Vec<String> = upstreams.iter().map(|u| format!("{u:?}")).collect();
    format!(
        "network = \"regtest\"\n\
         [listen]\n\
         tcp = {tcp:?}\n\
         tls = \"\"\n\
         http = {http:?}\n\
         {extra_listen}\n\
         [upstreams]\n\
         servers = [{servers}]\n\
         use_server_list = false\n\
         active = {active}\n\
         reconnect_initial_secs = 0.05\n\
         reconnect_max_secs = 0.5\n\
         request_timeout_secs = 5.0\n",
        servers = servers.join(", "),
        active = upstreams.len().max(1),
    )
}

impl GatewayProcess {
    /// Writes `config` to `dir/config.toml` and starts the program on it, with its data in
    /// `dir/data` and debug-level JSON logs; returns once it printed its listeners' addresses.
    pub async fn start(config: &str, dir: &Path) -> GatewayProcess {
        let path = dir.join("config.toml");
        std::fs::write(&path, config).expect("write the configuration");
        let data_dir = dir.join("data");
        // Set for integration tests, not for the examples that share these helpers.
        let Some(program) = option_env!("CARGO_BIN_EXE_electrum-gateway") else {
            panic!("the electrum-gateway program is built with the integration tests only");
        };
        let mut child = Command::new(program)
            .arg("--log-format")
            .arg("json")
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .arg("--data-dir")
            .arg(&data_dir)
            .env("RUST_LOG", "electrum_gateway=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start electrum-gateway");
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let logged = Arc::new(Notify::new());
        let (addr_tx, mut addr_rx) = mpsc::unbounded_channel::<(bool, SocketAddr)>();
        {
            let (logs, logged) = (logs.clone(), logged.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(a) = line.strip_prefix("electrum-gateway listening on tcp://") {
                        if let Ok(a) = a.trim().parse() {
                            let _ = addr_tx.send((false, a));
                        }
                    } else if let Some(rest) = line.strip_prefix("electrum-gateway HTTP on http://")
                    {
                        if let Some(Ok(a)) = rest.split('/').next().map(str::parse) {
                            let _ = addr_tx.send((true, a));
                        }
                    } else if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        if std::env::var_os("TEST_LOG").is_some() {
                            eprintln!("{line}");
                        }
                        logs.lock().unwrap().push(v);
                        logged.notify_waiters();
                    } else {
                        eprintln!("gateway: {line}");
                    }
                }
            });
        }
        let (mut tcp, mut http) = (None, None);
        while tcp.is_none() || http.is_none() {
            let (is_http, a) = tokio::time::timeout(WAIT, addr_rx.recv())
                .await
                .expect("the gateway did not print its addresses")
                .expect("the gateway exited before printing its addresses");
            if is_http {
                http = Some(a);
            } else {
                tcp = Some(a);
            }
        }
        GatewayProcess {
            child,
            tcp: tcp.unwrap(),
            http: http.unwrap(),
            data_dir,
            logs,
            logged,
        }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    /// Sends `signal` (`libc::SIGTERM`, ...).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let r = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(r, 0, "kill({}, {signal})", self.pid());
    }

    /// Waits for the process to exit, at most `WAIT`.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the gateway did not exit")
            .expect("wait for the gateway")
    }

    /// `GET /health`: the status code and the JSON body.
    pub async fn health(&self) -> (u16, Value) {
        let r = http(self.http, "GET", "/health", &[], None).await;
        (r.status, r.json())
    }

    /// Waits until `/health` answers 200.
    pub async fn wait_healthy(&self) {
        until("the gateway healthy", || async {
            (self.health().await.0 == 200).then_some(())
        })
        .await;
    }

    /// Waits until a log line satisfies `pred` and returns it.
    pub async fn wait_log(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.logged.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = self.logs.lock().unwrap().iter().find(|v| pred(v)) {
                return v.clone();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timed out waiting for the log line: {what}");
            }
        }
    }

    /// The client addresses of the wallet sessions it logged (debug level).
    pub fn wallet_peers(&self) -> Vec<SocketAddr> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["fields"]["message"] == "wallet connected")
            .filter_map(|v| v["fields"]["peer"].as_str()?.parse().ok())
            .collect()
    }
}
