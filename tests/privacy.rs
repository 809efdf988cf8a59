//! Privacy: what each upstream learns of a wallet, measured from the upstreams' side (the
//! simulator records every scripthash each endpoint was asked about).
//!
//! 100 wallets of 20 addresses each sync through the gateway in front of six upstreams the way
//! an Electrum wallet does (subscribe to every address, then read the history and balance of
//! each). The test reports, per privacy mode, the largest share of one wallet's scripthashes
//! any one upstream saw, and holds `spread` to at most half.

mod common;

use bitcoin::hashes::Hash as _;
use bitcoin::{ScriptBuf, WPubkeyHash};
use common::{Net, Wallet};
use electrum_gateway::address::script_hash_of_script;
use electrum_gateway::config::PrivacyMode;
use serde_json::json;
use std::collections::BTreeSet;

const UPSTREAMS: usize = 6;
const WALLETS: usize = 100;
const ADDRESSES: usize = 20;

/// Each wallet's scripthashes (none known to the chain: a new wallet).
fn wallets() -> Vec<Vec<String>> {
    (0..WALLETS)
        .map(|w| {
            (0..ADDRESSES)
                .map(|i| {
                    let key =
                        WPubkeyHash::hash(format!("privacy wallet {w} address {i}").as_bytes());
                    script_hash_of_script(&ScriptBuf::new_p2wpkh(&key))
                })
                .collect()
        })
        .collect()
}

/// One wallet's sync: subscribe to every address, then read each one's history and balance.
async fn sync(net: &Net, shs: &[String]) -> Wallet {
    let mut w = net.wallet().await;
    let mut ids = Vec::new();
    for sh in shs {
        ids.push(w.send("blockchain.scripthash.subscribe", json!([sh])).await);
    }
    for id in ids {
        let r = w.response(id).await;
        assert!(r.get("error").is_none(), "subscribe failed: {r}");
    }
    let mut ids = Vec::new();
    for sh in shs {
        ids.push(
            w.send("blockchain.scripthash.get_history", json!([sh]))
                .await,
        );
        ids.push(
            w.send("blockchain.scripthash.get_balance", json!([sh]))
                .await,
        );
    }
    for id in ids {
        let r = w.response(id).await;
        assert!(r.get("error").is_none(), "read failed: {r}");
    }
    w
}

/// What the upstreams saw: per wallet, the largest share of its scripthashes one upstream was
/// asked about; and per upstream, the distinct scripthashes of all wallets it saw.
struct Exposure {
    worst_share: Vec<f64>,
    per_upstream: Vec<usize>,
}

impl Exposure {
    fn measure(net: &Net, wallets: &[Vec<String>]) -> Exposure {
        let asked: Vec<BTreeSet<String>> = (0..UPSTREAMS)
            .map(|e| net.sim.asked_scripthashes(e))
            .collect();
        let worst_share = wallets
            .iter()
            .map(|shs| {
                asked
                    .iter()
                    .map(|seen| shs.iter().filter(|sh| seen.contains(*sh)).count())
                    .max()
                    .unwrap_or(0) as f64
                    / shs.len() as f64
            })
            .collect();
        let all: BTreeSet<&String> = wallets.iter().flatten().collect();
        let per_upstream = asked
            .iter()
            .map(|seen| seen.iter().filter(|sh| all.contains(sh)).count())
            .collect();
        Exposure {
            worst_share,
            per_upstream,
        }
    }

    fn max(&self) -> f64 {
        self.worst_share.iter().copied().fold(0.0, f64::max)
    }

    fn mean(&self) -> f64 {
        self.worst_share.iter().sum::<f64>() / self.worst_share.len() as f64
    }

    fn report(&self, mode: &str) {
        eprintln!(
            "privacy {mode}: {} wallets x {ADDRESSES} addresses over {UPSTREAMS} \
             upstreams: the most one upstream saw of a wallet: mean {:.2}, max {:.2}; \
             scripthashes each upstream saw: {:?}",
            self.worst_share.len(),
            self.mean(),
            self.max(),
            self.per_upstream
        );
    }
}

async fn run(mode: PrivacyMode) -> (Net, Exposure) {
    let net = Net::start_with(&["127.0.0.1:0"; UPSTREAMS], |cfg| {
        cfg.privacy.mode = mode;
        // Every wallet connects from 127.0.0.1: one client for the per-client limits.
        cfg.limits.max_sessions_per_client = 1000;
        cfg.limits.client_rate = 0.0;
    })
    .await;
    net.wait_in_step(UPSTREAMS).await;
    let wallets = wallets();
    let mut open = Vec::new();
    for shs in &wallets {
        open.push(sync(&net, shs).await);
    }
    let exposure = Exposure::measure(&net, &wallets);
    // The gateway's own count of what each upstream was asked about agrees with the
    // upstreams' records (a fresh simulator: these wallets are all it was asked about, besides
    // nothing).
    let snap = net.gw.snapshot();
    for (e, seen) in exposure.per_upstream.iter().enumerate() {
        let counted = snap
            .upstreams
            .iter()
            .find(|u| u.url == net.sim.url(e).to_string())
            .map(|u| u.scripthashes_seen)
            .expect("every endpoint is an upstream");
        assert_eq!(counted, *seen, "upstream {e}: the gateway's count");
    }
    drop(open);
    (net, exposure)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_spread_no_upstream_sees_more_than_half_of_any_wallet() {
    let (net, spread) = run(PrivacyMode::Spread).await;
    spread.report("spread");
    assert!(
        spread.max() <= 0.5,
        "an upstream saw {:.0}% of a wallet's scripthashes",
        spread.max() * 100.0
    );
    // Every scripthash went to exactly its set of two (no upstream failed, none disagreed):
    // six upstreams see two sixths of the whole, no more.
    let total: usize = spread.per_upstream.iter().sum();
    assert_eq!(total, 2 * WALLETS * ADDRESSES);
    // The metric says the same.
    let text = net.gw.metrics_text();
    assert!(
        text.contains("electrum_gateway_upstream_scripthashes{"),
        "upstream_scripthashes is exported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_privacy_off_the_best_upstreams_see_nearly_every_address() {
    let (_net, off) = run(PrivacyMode::Off).await;
    off.report("off");
    // What `spread` prevents: some upstream saw well over half of most wallets.
    assert!(off.mean() > 0.5, "mean worst share {:.2}", off.mean());
}

/// A SOCKS5 proxy that accepts any user name and password (as Tor does, taking each user name
/// as a request for a circuit of its own) and records the user names it was given.
async fn recording_socks5() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let users = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = users.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 2];
                s.read_exact(&mut head).await.ok()?;
                let mut methods = vec![0u8; usize::from(head[1])];
                s.read_exact(&mut methods).await.ok()?;
                let user = if methods.contains(&2) {
                    s.write_all(&[5, 2]).await.ok()?;
                    let mut ver_len = [0u8; 2];
                    s.read_exact(&mut ver_len).await.ok()?;
                    let mut name = vec![0u8; usize::from(ver_len[1])];
                    s.read_exact(&mut name).await.ok()?;
                    let mut plen = [0u8; 1];
                    s.read_exact(&mut plen).await.ok()?;
                    let mut pass = vec![0u8; usize::from(plen[0])];
                    s.read_exact(&mut pass).await.ok()?;
                    s.write_all(&[1, 0]).await.ok()?;
                    String::from_utf8_lossy(&name).to_string()
                } else {
                    s.write_all(&[5, 0]).await.ok()?;
                    String::new()
                };
                let mut req = [0u8; 4];
                s.read_exact(&mut req).await.ok()?;
                let host = match req[3] {
                    1 => {
                        let mut ip = [0u8; 4];
                        s.read_exact(&mut ip).await.ok()?;
                        std::net::Ipv4Addr::from(ip).to_string()
                    }
                    3 => {
                        let mut len = [0u8; 1];
                        s.read_exact(&mut len).await.ok()?;
                        let mut name = vec![0u8; usize::from(len[0])];
                        s.read_exact(&mut name).await.ok()?;
                        String::from_utf8_lossy(&name).to_string()
                    }
                    _ => return None,
                };
                let mut port = [0u8; 2];
                s.read_exact(&mut port).await.ok()?;
                let port = u16::from_be_bytes(port);
                let mut up = tokio::net::TcpStream::connect((host.as_str(), port))
                    .await
                    .ok()?;
                s.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await.ok()?;
                seen.lock().unwrap().push(user);
                tokio::io::copy_bidirectional(&mut s, &mut up).await.ok()?;
                Some(())
            });
        }
    });
    (addr, users)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_isolated_no_upstream_connection_carries_two_wallets() {
    const N: usize = 20;
    let (proxy, users) = recording_socks5().await;
    let net = Net::start_with(&["127.0.0.1:0"; UPSTREAMS], |cfg| {
        cfg.privacy.mode = PrivacyMode::Isolated;
        cfg.upstreams.proxy = format!("socks5://{proxy}");
        cfg.limits.max_sessions_per_client = 1000;
        cfg.limits.client_rate = 0.0;
    })
    .await;
    net.wait_in_step(UPSTREAMS).await;
    let wallets: Vec<Vec<String>> = wallets().into_iter().take(N).collect();
    let mut open = Vec::new();
    for shs in &wallets {
        let mut w = sync(&net, shs).await;
        // A transaction read too: it goes over the wallet's own connections as well.
        let txid = net.sim.block_txids(1).unwrap()[0].to_string();
        w.call("blockchain.transaction.get", json!([txid])).await;
        open.push(w);
    }
    // Seen from the upstreams: every connection's scripthashes belong to one wallet.
    let owner: std::collections::HashMap<&String, usize> = wallets
        .iter()
        .enumerate()
        .flat_map(|(i, shs)| shs.iter().map(move |sh| (sh, i)))
        .collect();
    let mut carrying = 0;
    for e in 0..UPSTREAMS {
        for conn in net.sim.asked_by_connection(e) {
            let of: BTreeSet<usize> = conn
                .iter()
                .filter_map(|sh| owner.get(sh).copied())
                .collect();
            assert!(
                of.len() <= 1,
                "an upstream connection carried wallets {of:?}"
            );
            carrying += usize::from(of.len() == 1);
        }
    }
    assert!(
        carrying >= N,
        "each wallet's scripthashes went over its own connections"
    );
    // Sets still keep each upstream to its share of a wallet.
    let exposure = Exposure::measure(&net, &wallets);
    exposure.report("isolated");
    assert!(exposure.max() <= 0.5);
    // Each wallet's connections asked the proxy for circuits of their own: one user name per
    // wallet, besides the pool's own connections (no user name).
    let names: BTreeSet<String> = users
        .lock()
        .unwrap()
        .iter()
        .filter(|u| !u.is_empty())
        .cloned()
        .collect();
    assert_eq!(
        names.len(),
        N,
        "one circuit per wallet connection: {names:?}"
    );
    // A wallet's connections close with it.
    drop(open);
    let gw = &net.gw;
    net.until("the wallets' upstream connections closed", || {
        (0..UPSTREAMS)
            .map(|e| net.sim.connections(e))
            .sum::<usize>()
            == UPSTREAMS
            && gw.snapshot().sessions == 0
    })
    .await;
}
