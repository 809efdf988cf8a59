//! Test helpers shared by the test binaries: a raw line-protocol wallet that sees exactly what
//! the gateway writes, a gateway in front of simulated upstreams, a loopback HTTP client
//! (`http`), bounded polling, child-process guards, and finding the external programs some
//! tests drive (`programs`).
#![allow(dead_code)]

pub mod http;
pub mod process;
pub mod programs;

use serde_json::{json, Value};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::process::Child;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use electrum_gateway::config::Config;
use electrum_gateway::gateway::Gateway;
use electrum_gateway::sim::{Sim, SimConfig};
use http::{http, Reply};

/// Generous bound for anything a test awaits; only hit when something is broken.
pub const WAIT: Duration = Duration::from_secs(20);

/// A TCP connection to `addr` from the loopback address `local` (`127.0.0.2`, ...): another
/// client as far as per-client limits go.
pub async fn tcp_from(addr: SocketAddr, local: std::net::IpAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(local, 0))
        .expect("bind a loopback address");
    socket.connect(addr).await.expect("connect to gateway")
}

/// A wallet speaking newline-delimited JSON-RPC over TCP.
pub struct Wallet {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: i64,
    /// Notifications read while waiting for responses.
    pub notifications: VecDeque<Value>,
    /// Responses read while waiting for others (by id).
    responses: Vec<Value>,
}

impl Wallet {
    /// Connects.
    pub async fn connect(addr: SocketAddr) -> Wallet {
        let s = TcpStream::connect(addr).await.expect("connect to gateway");
        Wallet::from_stream(s)
    }

    /// A wallet on a connected stream.
    pub fn from_stream(s: TcpStream) -> Wallet {
        let (r, w) = s.into_split();
        Wallet {
            reader: BufReader::new(r),
            writer: w,
            next_id: 1,
            notifications: VecDeque::new(),
            responses: Vec::new(),
        }
    }

    /// Connects from another loopback address (`127.0.0.2`, ...), as another client would.
    pub async fn connect_from(addr: SocketAddr, local: std::net::IpAddr) -> Wallet {
        Wallet::from_stream(tcp_from(addr, local).await)
    }

    /// Reads messages until the gateway closes the connection; returns them.
    pub async fn read_until_closed(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(WAIT, self.reader.read_line(&mut line))
                .await
                .expect("timed out waiting for the gateway to close the connection");
            match n {
                Ok(0) | Err(_) => return out,
                Ok(_) => out.push(serde_json::from_str(&line).unwrap_or(Value::String(line))),
            }
        }
    }

    /// Sends a raw line; false when the gateway already closed the connection.
    pub async fn try_send_line(&mut self, line: &str) -> bool {
        self.writer.write_all(line.as_bytes()).await.is_ok()
            && self.writer.write_all(b"\n").await.is_ok()
    }

    /// Sends a raw line.
    pub async fn send_line(&mut self, line: &str) {
        self.writer.write_all(line.as_bytes()).await.expect("write");
        self.writer.write_all(b"\n").await.expect("write");
    }

    /// Reads one message (any kind); None on EOF.
    pub async fn read_message(&mut self) -> Option<Value> {
        let mut line = String::new();
        let n = tokio::time::timeout(WAIT, self.reader.read_line(&mut line))
            .await
            .expect("timed out waiting for a message")
            .ok()?;
        if n == 0 {
            return None;
        }
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}")))
    }

    /// Reads one line exactly as the gateway wrote it, line end included; None on EOF.
    pub async fn read_raw_line(&mut self) -> Option<String> {
        let mut line = String::new();
        let n = tokio::time::timeout(WAIT, self.reader.read_line(&mut line))
            .await
            .expect("timed out waiting for a line")
            .ok()?;
        (n > 0).then_some(line)
    }

    /// Sends a request and returns its id.
    pub async fn send(&mut self, method: &str, params: Value) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send_line(&line.to_string()).await;
        id
    }

    /// Waits for the response with this id, keeping notifications aside.
    pub async fn response(&mut self, id: i64) -> Value {
        if let Some(i) = self.responses.iter().position(|r| r["id"] == json!(id)) {
            return self.responses.remove(i);
        }
        loop {
            let m = self
                .read_message()
                .await
                .expect("connection closed while waiting");
            if m.get("method").is_some() {
                self.notifications.push_back(m);
            } else if m["id"] == json!(id) {
                return m;
            } else if m.is_array() {
                panic!("unexpected batch {m}");
            } else {
                self.responses.push(m);
            }
        }
    }

    /// Calls and returns the result, panicking on an error answer.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params.clone()).await;
        let r = self.response(id).await;
        if let Some(e) = r.get("error") {
            panic!("{method} {params} failed: {e}");
        }
        r["result"].clone()
    }

    /// Calls and returns the error object, panicking on success.
    pub async fn call_err(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params).await;
        let r = self.response(id).await;
        r.get("error")
            .cloned()
            .unwrap_or_else(|| panic!("{method} succeeded: {r}"))
    }

    /// Waits for the next notification.
    pub async fn notification(&mut self) -> Value {
        if let Some(n) = self.notifications.pop_front() {
            return n;
        }
        loop {
            let m = self
                .read_message()
                .await
                .expect("connection closed while waiting");
            if m.get("method").is_some() {
                return m;
            }
            self.responses.push(m);
        }
    }

    /// Waits for a notification of `method` that satisfies `pred`; other notifications stay
    /// queued in order for later calls.
    pub async fn notification_until(
        &mut self,
        method: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let hit = |n: &Value| n["method"] == json!(method) && pred(n);
        if let Some(i) = self.notifications.iter().position(&hit) {
            return self.notifications.remove(i).expect("index in range");
        }
        loop {
            let m = self
                .read_message()
                .await
                .expect("connection closed while waiting");
            if m.get("method").is_none() {
                self.responses.push(m);
            } else if hit(&m) {
                return m;
            } else {
                self.notifications.push_back(m);
            }
        }
    }
}

/// The configuration tests run a gateway with: regtest, every listener on a free loopback port
/// or off, quick reconnects, short timeouts and sit-outs.
pub fn test_config(upstreams: Vec<String>, data_dir: &std::path::Path) -> Config {
    let mut cfg = Config {
        network: "regtest".into(),
        data_dir: data_dir.to_path_buf(),
        ..Config::default()
    };
    cfg.upstreams.active = upstreams.len().max(1);
    cfg.upstreams.servers = upstreams;
    cfg.upstreams.use_server_list = false;
    cfg.upstreams.reconnect_initial_secs = 0.05;
    cfg.upstreams.reconnect_max_secs = 0.5;
    cfg.upstreams.request_timeout_secs = 5.0;
    cfg.listen.tcp = "127.0.0.1:0".into();
    cfg.listen.tls = String::new();
    cfg.listen.http = String::new();
    cfg.routing.hedge_min_ms = 50;
    cfg.routing.hedge_max_ms = 500;
    cfg.verify.penalty_secs = 0.3;
    cfg
}

/// A gateway in front of simulated upstreams.
pub struct Net {
    /// The simulated upstreams.
    pub sim: Sim,
    /// The gateway.
    pub gw: Gateway,
    _dir: tempfile::TempDir,
}

impl Net {
    /// A gateway in front of the sim's endpoints (`ADDR[,FAULT...]` each), once its verified
    /// tip is the sim's.
    pub async fn start(endpoints: &[&str]) -> Net {
        Self::start_with(endpoints, |_| {}).await
    }

    /// Same, with the configuration changed by `tweak` first.
    /// Three simulated upstreams, the first carrying `faults` and the two honest ones slowed
    /// by 30 ms, so that the attacker is the fastest and asked first.
    pub async fn with_attacker(faults: &str) -> Net {
        let attacker = format!("127.0.0.1:0,{faults}");
        let net = Net::start(&[
            &attacker,
            "127.0.0.1:0,latency=30",
            "127.0.0.1:0,latency=30",
        ])
        .await;
        net.wait_in_step(3).await;
        net
    }

    /// Waits until `n` upstreams are in step with the verified tip.
    pub async fn wait_in_step(&self, n: usize) {
        let gw = &self.gw;
        until("upstreams in step", || async move {
            let in_step = gw
                .snapshot()
                .upstreams
                .iter()
                .filter(|u| u.standing.in_step())
                .count();
            (in_step >= n).then_some(())
        })
        .await;
    }

    pub async fn start_with(endpoints: &[&str], tweak: impl FnOnce(&mut Config)) -> Net {
        let sim = start_sim(endpoints).await;
        let urls = sim.urls().iter().map(|u| u.to_string()).collect();
        let net = Net::launch(sim, urls, tweak).await;
        net.wait_tip(net.sim.tip_height()).await;
        net
    }

    /// A gateway that also serves HTTP (on a free loopback port) in front of the sim's
    /// endpoints, once every upstream is connected and announced a tip and the best tip is the
    /// sim's.
    pub async fn start_http(endpoints: &[&str]) -> Net {
        let sim = start_sim(endpoints).await;
        let urls = sim.urls().iter().map(|u| u.to_string()).collect();
        Net::http_in_front_of(sim, urls).await
    }

    /// Same, in front of the given upstream URLs, which serve `sim`'s chain.
    pub async fn http_in_front_of(sim: Sim, upstreams: Vec<String>) -> Net {
        let net = Net::launch(sim, upstreams, |cfg| cfg.listen.http = "127.0.0.1:0".into()).await;
        net.wait_ready().await;
        net
    }

    /// Starts the gateway in front of `upstreams` without waiting for anything.
    async fn launch(sim: Sim, upstreams: Vec<String>, tweak: impl FnOnce(&mut Config)) -> Net {
        init_logs();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = test_config(upstreams, dir.path());
        tweak(&mut cfg);
        let gw = Gateway::start(cfg).await.unwrap();
        Net { sim, gw, _dir: dir }
    }

    /// The gateway's TCP address.
    pub fn addr(&self) -> SocketAddr {
        self.gw.tcp_addr().unwrap()
    }

    /// The gateway's HTTP address (a gateway from [`Net::start_http`]).
    pub fn http_addr(&self) -> SocketAddr {
        self.gw.http_addr().expect("HTTP listener")
    }

    /// `http://` and the HTTP address.
    pub fn base(&self) -> String {
        format!("http://{}", self.http_addr())
    }

    /// GETs `path` from the gateway's HTTP listener.
    pub async fn get(&self, path: &str) -> Reply {
        http(self.http_addr(), "GET", path, &[], None).await
    }

    /// `host:port` of each simulated endpoint: the upstream names the gateway uses.
    pub fn names(&self) -> Vec<String> {
        self.sim.urls().iter().map(|u| u.authority()).collect()
    }

    /// A connected wallet that negotiated protocol 1.6.
    pub async fn wallet(&self) -> Wallet {
        let mut w = Wallet::connect(self.addr()).await;
        let v = w
            .call("server.version", json!(["test-wallet", ["1.4", "1.6"]]))
            .await;
        assert_eq!(v[1], "1.6");
        w
    }

    /// Waits until the gateway's verified tip reaches `height`.
    pub async fn wait_tip(&self, height: u32) {
        let mut rx = self.gw.tip_watch();
        tokio::time::timeout(
            WAIT,
            rx.wait_for(|t| t.as_ref().is_some_and(|t| t.height >= height)),
        )
        .await
        .expect("the gateway never reached the tip")
        .unwrap();
    }

    /// Waits until every upstream is connected and announced a tip, and the best tip is the
    /// sim's.
    pub async fn wait_ready(&self) {
        let gw = &self.gw;
        let height = self.sim.tip_height();
        until("every upstream connected with a tip", || async move {
            let snap = gw.snapshot();
            let all = snap
                .upstreams
                .iter()
                .all(|u| u.connections > 0 && u.tip.is_some());
            let best = snap.best_tip.is_some_and(|t| t.height == height);
            (all && best).then_some(())
        })
        .await;
    }

    /// Waits until every upstream is connected and announced `height`.
    pub async fn wait_all_at(&self, height: u32) {
        let gw = &self.gw;
        until("every upstream at the tip", || async move {
            gw.snapshot()
                .upstreams
                .iter()
                .all(|u| u.connections > 0 && u.tip.as_ref().is_some_and(|t| t.height == height))
                .then_some(())
        })
        .await;
    }

    /// Upstream subscriptions to scripthashes, summed over the sim's first `n` endpoints.
    pub fn upstream_subs(&self, n: usize) -> usize {
        (0..n).map(|i| self.sim.subscriptions(i)).sum()
    }

    /// Polls an observable condition that no event announces until it holds; on a timeout
    /// prints each upstream's standing, then fails.
    pub async fn until(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !cond() {
            if tokio::time::Instant::now() >= deadline {
                for u in self.gw.snapshot().upstreams {
                    eprintln!(
                        "upstream {} {:?} tip={:?}",
                        u.index,
                        u.standing,
                        u.tip.map(|t| t.height)
                    );
                }
                panic!("timed out waiting for {what}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// A simulator serving the given endpoints (`ADDR[,FAULT...]` each).
async fn start_sim(endpoints: &[&str]) -> Sim {
    Sim::start(SimConfig::with_endpoints(endpoints).unwrap())
        .await
        .unwrap()
}

/// Polls an observable condition that no event announces until `probe` yields a value, or
/// fails the test after `WAIT`.
pub async fn until<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A child process, killed and reaped when dropped.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// With `TEST_LOG` set (a `RUST_LOG`-style filter such as `electrum_gateway=debug`), the
/// gateway's logs go to the test's output.
pub fn init_logs() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}
