//! Two gateway replicas behind a real HAProxy, as docs/deploy.md runs them: PROXY protocol v2
//! from HAProxy, health checks on each replica's `/health`.
//!
//! Wallets connect to HAProxy from distinct loopback addresses (127.0.0.2, 127.0.0.3, ...).
//! The test proves that the replicas see those addresses rather than HAProxy's; that wallets
//! sending requests without pause see no failed request while one replica drains on SIGTERM
//! (HAProxy takes it out on its 503, and the wallets it closes come back through HAProxy to
//! the other); and that when the other replica is then killed outright, the wallets reconnect,
//! subscribe again and get their notifications.

mod common;

use common::process::{config_toml, GatewayProcess};
use common::programs::haproxy;
use common::{until, WAIT};
use electrum_gateway::sim::{Sim, SimConfig, ADDRESSES};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, UnixStream};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// Wallets, each from its own loopback address.
const WALLETS: usize = 4;

/// A wallet connection that reports a lost connection instead of failing the test: a wallet
/// whose server goes away reconnects.
struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    local: SocketAddr,
    next_id: i64,
    notifications: Vec<Value>,
}

/// The connection closed before the answer came.
#[derive(Debug)]
struct Lost;

impl Conn {
    /// Connects to `front` from the loopback address `ip`.
    async fn open(ip: &str, front: SocketAddr) -> Result<Conn, Lost> {
        let socket = TcpSocket::new_v4().map_err(|_| Lost)?;
        socket
            .bind(format!("{ip}:0").parse().unwrap())
            .map_err(|_| Lost)?;
        let stream = socket.connect(front).await.map_err(|_| Lost)?;
        let local = stream.local_addr().map_err(|_| Lost)?;
        let (r, w) = stream.into_split();
        Ok(Conn {
            reader: BufReader::new(r),
            writer: w,
            local,
            next_id: 1,
            notifications: Vec::new(),
        })
    }

    /// The next message; `Lost` at the end of the stream. A silent connection fails the test.
    async fn read(&mut self) -> Result<Value, Lost> {
        let mut line = String::new();
        let n = tokio::time::timeout(WAIT, self.reader.read_line(&mut line))
            .await
            .expect("no message and no close within the time limit")
            .map_err(|_| Lost)?;
        if n == 0 {
            return Err(Lost);
        }
        Ok(serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}")))
    }

    /// Sends a request and returns its response (result or error), keeping notifications.
    async fn call(&mut self, method: &str, params: Value) -> Result<Value, Lost> {
        let id = self.next_id;
        self.next_id += 1;
        let line = json!({"id": id, "method": method, "params": params}).to_string() + "\n";
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|_| Lost)?;
        loop {
            let m = self.read().await?;
            if m.get("method").is_some() {
                self.notifications.push(m);
            } else if m["id"] == json!(id) {
                return Ok(m);
            }
        }
    }

    /// Waits for the connection to close, keeping notifications.
    async fn closed(&mut self) {
        while let Ok(m) = self.read().await {
            self.notifications.push(m);
        }
    }

    /// Waits for a status notification of `scripthash`.
    async fn status_change(&mut self, scripthash: &str) -> Value {
        let hit = |m: &Value| {
            m["method"] == "blockchain.scripthash.subscribe" && m["params"][0] == scripthash
        };
        if let Some(i) = self.notifications.iter().position(hit) {
            return self.notifications.remove(i);
        }
        loop {
            let m = self.read().await.expect("connection lost");
            if hit(&m) {
                return m;
            }
        }
    }
}

/// What the wallets saw, all together.
#[derive(Default)]
struct Tally {
    /// Requests answered with a result.
    answered: AtomicU64,
    /// Requests answered with an error: must stay 0.
    errors: AtomicU64,
    /// Requests whose connection closed before their answer, asked again on a new one.
    asked_again: AtomicU64,
    /// Connections made (the first ones included).
    connections: AtomicU64,
}

/// A wallet's session through HAProxy: connects (again, while HAProxy finds no replica to
/// take it), negotiates the protocol and subscribes to `scripthash`.
async fn session(ip: &str, front: SocketAddr, scripthash: &str, tally: &Tally) -> Conn {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "wallet {ip} could not get a session through HAProxy"
        );
        let Ok(mut c) = Conn::open(ip, front).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tally.connections.fetch_add(1, Ordering::Relaxed);
        let Ok(v) = c
            .call("server.version", json!(["replica-test", "1.4"]))
            .await
        else {
            // HAProxy accepted, then found no replica: a wallet's reconnect pause.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        assert!(v.get("result").is_some(), "server.version: {v}");
        match c
            .call("blockchain.scripthash.subscribe", json!([scripthash]))
            .await
        {
            Ok(r) if r.get("result").is_some() => return c,
            Ok(r) => panic!("subscribe failed: {r}"),
            Err(Lost) => continue,
        }
    }
}

/// Sends requests one after the other, without pause, until told to stop; a request whose
/// connection closes is asked again on a new session. Returns the last session.
async fn busy_wallet(
    ip: String,
    front: SocketAddr,
    scripthash: &'static str,
    tally: Arc<Tally>,
    mine: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> Conn {
    let mut conn = session(&ip, front, scripthash, &tally).await;
    for n in 0u64.. {
        if *stop.borrow_and_update() {
            return conn;
        }
        let (method, params) = if n % 2 == 0 {
            ("blockchain.scripthash.get_balance", json!([scripthash]))
        } else {
            ("blockchain.block.header", json!([1]))
        };
        loop {
            match conn.call(method, params.clone()).await {
                Ok(r) if r.get("result").is_some() => {
                    tally.answered.fetch_add(1, Ordering::Relaxed);
                    mine.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Ok(r) => {
                    eprintln!("wallet {ip}: {method} failed: {r}");
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(Lost) => {
                    tally.asked_again.fetch_add(1, Ordering::Relaxed);
                    conn = session(&ip, front, scripthash, &tally).await;
                }
            }
        }
    }
    unreachable!()
}

/// HAProxy in front of the two replicas, with its admin socket in `dir`.
struct Haproxy {
    _child: Child,
    front: SocketAddr,
    socket: std::path::PathBuf,
}

impl Haproxy {
    async fn start(dir: &Path, a: &GatewayProcess, b: &GatewayProcess) -> Haproxy {
        let front = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let socket = dir.join("haproxy.sock");
        let server = |name: &str, g: &GatewayProcess| {
            format!("    server {name} {} check port {}\n", g.tcp, g.http.port())
        };
        let cfg = format!(
            "global\n\
             \x20   stats socket {socket} mode 600 level admin\n\
             defaults\n\
             \x20   mode tcp\n\
             \x20   timeout connect 1s\n\
             \x20   timeout client 60s\n\
             \x20   timeout server 60s\n\
             \x20   retries 3\n\
             \x20   option redispatch 1\n\
             frontend wallets\n\
             \x20   bind {front}\n\
             \x20   default_backend gateways\n\
             backend gateways\n\
             \x20   balance roundrobin\n\
             \x20   option httpchk GET /health\n\
             \x20   http-check expect status 200\n\
             \x20   default-server send-proxy-v2 inter 100ms fall 1 rise 1\n\
             {a}{b}",
            socket = socket.display(),
            a = server("a", a),
            b = server("b", b),
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
        let child = Command::new(haproxy())
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start haproxy");
        Haproxy {
            _child: child,
            front,
            socket,
        }
    }

    /// Each replica's state in HAProxy's eyes (`UP`, `DOWN`, ...), from `show stat`.
    async fn states(&self) -> Option<Vec<(String, String)>> {
        let mut s = UnixStream::connect(&self.socket).await.ok()?;
        s.write_all(b"show stat\n").await.ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        let mut lines = out.lines();
        let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (px, sv, status) = (col("pxname")?, col("svname")?, col("status")?);
        Some(
            lines
                .map(|l| l.split(',').collect::<Vec<_>>())
                .filter(|f| f.len() > status && f[px] == "gateways" && f[sv].len() == 1)
                .map(|f| (f[sv].to_string(), f[status].to_string()))
                .collect(),
        )
    }

    /// Waits until HAProxy holds replica `name` to be `state` (`UP` or `DOWN`).
    async fn wait_state(&self, name: &str, state: &str) {
        until(&format!("HAProxy: {name} {state}"), || async {
            let states = self.states().await?;
            states
                .iter()
                .any(|(n, s)| n == name && s.starts_with(state))
                .then_some(())
        })
        .await;
    }
}

fn replica_config(upstreams: &[String], tcp: &str, http: &str) -> String {
    config_toml(
        upstreams,
        tcp,
        http,
        "proxy_protocol_from = [\"127.0.0.1/32\"]\ndrain_secs = 10",
    ) + &format!("[limits]\nmax_sessions_per_client = {PER_CLIENT}\n")
}

/// Connections one client address may hold on a replica: two, so that a wallet reconnecting
/// while its old connection closes is not refused.
const PER_CLIENT: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs haproxy (Debian package haproxy)"]
async fn replicas_behind_haproxy_survive_a_drain_and_a_kill() {
    common::init_logs();
    let sim = Sim::start(SimConfig::with_endpoints(&["127.0.0.1:0", "127.0.0.1:0"]).unwrap())
        .await
        .unwrap();
    let urls: Vec<String> = sim.urls().iter().map(|u| u.to_string()).collect();
    let (dir_a, dir_b, dir_h) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let any = "127.0.0.1:0";
    let mut a = GatewayProcess::start(&replica_config(&urls, any, any), dir_a.path()).await;
    let mut b = GatewayProcess::start(&replica_config(&urls, any, any), dir_b.path()).await;
    a.wait_healthy().await;
    b.wait_healthy().await;
    let proxy = Haproxy::start(dir_h.path(), &a, &b).await;
    proxy.wait_state("a", "UP").await;
    proxy.wait_state("b", "UP").await;

    // (a) Each replica sees the wallets' own addresses, not HAProxy's.
    let tally = Arc::new(Tally::default());
    let ips: Vec<String> = (0..WALLETS).map(|i| format!("127.0.0.{}", i + 2)).collect();
    let mut first = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        first.push(session(ip, proxy.front, ADDRESSES[i].scripthash, &tally).await);
    }
    for c in &first {
        let peer = c.local;
        until(&format!("a replica logging wallet {peer}"), || async {
            (a.wallet_peers().contains(&peer) || b.wallet_peers().contains(&peer)).then_some(())
        })
        .await;
    }
    let seen: Vec<SocketAddr> = a
        .wallet_peers()
        .into_iter()
        .chain(b.wallet_peers())
        .collect();
    assert!(
        seen.iter().all(|p| p.ip() != std::net::Ipv4Addr::LOCALHOST),
        "a replica took HAProxy's address for a wallet's: {seen:?}"
    );
    let on_a = first
        .iter()
        .filter(|c| a.wallet_peers().contains(&c.local))
        .count();
    assert!(
        on_a > 0 && on_a < WALLETS,
        "HAProxy spread the wallets: {on_a} of {WALLETS} on a"
    );
    drop(first);

    // (b) Wallets send requests without pause while replica a drains.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut counts = Vec::new();
    let mut tasks = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let mine = Arc::new(AtomicU64::new(0));
        counts.push(mine.clone());
        tasks.push(tokio::spawn(busy_wallet(
            ip.clone(),
            proxy.front,
            ADDRESSES[i].scripthash,
            tally.clone(),
            mine,
            stop_rx.clone(),
        )));
    }
    let progressed = |at: Vec<u64>, more: u64| {
        let counts = counts.clone();
        async move {
            until("every wallet answered again", || async {
                counts
                    .iter()
                    .zip(&at)
                    .all(|(c, at)| c.load(Ordering::Relaxed) >= at + more)
                    .then_some(())
            })
            .await
        }
    };
    let now = |counts: &[Arc<AtomicU64>]| -> Vec<u64> {
        counts.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    };
    progressed(vec![0; WALLETS], 20).await;
    let before_drain = tally.answered.load(Ordering::Relaxed);
    a.signal(libc::SIGTERM);
    proxy.wait_state("a", "DOWN").await;
    let status = a.wait_exit().await;
    assert_eq!(status.code(), Some(0), "replica a after SIGTERM: {status}");
    progressed(now(&counts), 20).await;
    stop_tx.send(true).unwrap();
    let mut wallets = Vec::new();
    for t in tasks {
        wallets.push(t.await.unwrap());
    }
    let errors = tally.errors.load(Ordering::Relaxed);
    eprintln!(
        "drain of a: {} requests answered ({} before the signal), {} errors, {} asked again \
         after a close, {} connections",
        tally.answered.load(Ordering::Relaxed),
        before_drain,
        errors,
        tally.asked_again.load(Ordering::Relaxed),
        tally.connections.load(Ordering::Relaxed),
    );
    assert_eq!(errors, 0, "requests failed while a replica drained");
    // A drained session closes once it has answered all it read: what a wallet can lose is
    // the one request it wrote after that, never read, once per connection a closed.
    let asked_again = tally.asked_again.load(Ordering::Relaxed);
    assert!(asked_again <= WALLETS as u64, "{asked_again} requests lost");
    for w in &wallets {
        let peer = w.local;
        until(&format!("wallet {peer} on b"), || async {
            b.wallet_peers().contains(&peer).then_some(())
        })
        .await;
    }

    // a comes back on its addresses; then b dies at once.
    let config_a = replica_config(&urls, &a.tcp.to_string(), &a.http.to_string());
    let a = GatewayProcess::start(&config_a, dir_a.path()).await;
    a.wait_healthy().await;
    proxy.wait_state("a", "UP").await;
    b.signal(libc::SIGKILL);
    let _ = b.wait_exit().await;

    // (c) Every wallet sees its connection close, reconnects through HAProxy to a, subscribes
    // again and is told of a payment to its address.
    let mut again = Vec::new();
    for (i, mut w) in wallets.into_iter().enumerate() {
        w.closed().await;
        again.push(session(&ips[i], proxy.front, ADDRESSES[i].scripthash, &tally).await);
    }
    for c in &again {
        let peer = c.local;
        until(&format!("replica a logging wallet {peer}"), || async {
            a.wallet_peers().contains(&peer).then_some(())
        })
        .await;
    }
    for (i, c) in again.iter_mut().enumerate() {
        sim.pay(ADDRESSES[i].address, 10_000 + i as u64).unwrap();
        let n = c.status_change(ADDRESSES[i].scripthash).await;
        assert!(n["params"][1].is_string(), "{n}");
    }

    // (d) Per-client limits count the wallet's own address, not HAProxy's (every connection
    // reaches the replica from 127.0.0.1): wallet 0 holds one connection; its second is
    // served, its third refused, while a wallet at another address is still served.
    let mut second = session(&ips[0], proxy.front, ADDRESSES[0].scripthash, &tally).await;
    let mut third = Conn::open(&ips[0], proxy.front).await.expect("connect");
    let refusal = third.read().await.expect("an error before the close");
    assert_eq!(refusal["error"]["code"], json!(-101), "{refusal}");
    third.closed().await;
    let mut other = Conn::open("127.0.0.20", proxy.front)
        .await
        .expect("connect");
    let pong = other.call("server.ping", json!([])).await.expect("served");
    assert!(pong.get("error").is_none(), "{pong}");
    let pong = second.call("server.ping", json!([])).await.expect("served");
    assert!(pong.get("error").is_none(), "{pong}");
}
