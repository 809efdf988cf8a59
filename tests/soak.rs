//! Soak: hundreds of wallets (1,000 scripthash subscriptions) read and follow their addresses
//! through the gateway while payments, blocks, a depth-1 reorg and upstream faults happen:
//! every upstream killed and restarted in turn (three real ElectrumX servers, or simulated
//! upstreams), and on the simulated upstreams stalls, flapping and lies as well.
//!
//! For each run it asserts zero failed reads (an error answer or a read left unanswered),
//! zero lost notifications (after every change each wallet's last known status of each of its
//! scripthashes, from its subscription answer and the notifications since, equals the status
//! computed from the chain), zero dropped sessions, and memory that stays flat from one round
//! to the next. `SOAK_ROUNDS` (default 1) repeats the rounds; the test prints what it counted.

// The interop test's setup; the soak uses part of it.
#[allow(dead_code)]
#[path = "interop/bitcoind.rs"]
mod bitcoind;
mod common;
#[allow(dead_code)]
#[path = "interop/electrumx.rs"]
mod electrumx;
#[allow(dead_code)]
#[path = "interop/expect.rs"]
mod expect;
#[allow(dead_code)]
#[path = "interop/net.rs"]
mod net;

use bitcoin::hashes::Hash as _;
use bitcoin::{Address, Network, ScriptBuf, WPubkeyHash};
use common::{Net, Wallet};
use electrum_gateway::address::script_hash_of_script;
use electrum_gateway::sim::Faults;
use expect::Expected;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Wallets, and scripthashes each wallet subscribes to (all distinct).
const WALLETS: usize = 200;
const PER_WALLET: usize = 5;
/// Each wallet sends its four reads this often (load pacing, not synchronisation).
const PACE: Duration = Duration::from_millis(500);
/// The fixed header height every wallet reads.
const FIXED_HEIGHT: u32 = 10;
/// How long the wallets may take to see a change: notifications included, after a kill.
const CONVERGE: Duration = Duration::from_secs(60);

/// Statuses by scripthash (`None`: no history).
type Statuses = BTreeMap<String, Option<String>>;

/// The soak's scripts: one P2WPKH output script per scripthash, none of them known to the
/// chain before the soak pays them.
fn soak_scripts() -> Vec<ScriptBuf> {
    (0..WALLETS * PER_WALLET)
        .map(|i| {
            let key = WPubkeyHash::hash(format!("soak wallet script {i}").as_bytes());
            ScriptBuf::new_p2wpkh(&key)
        })
        .collect()
}

fn address_of(script: &ScriptBuf) -> String {
    Address::from_script(script, Network::Regtest)
        .expect("a standard script")
        .to_string()
}

/// What the fleet of wallets counted, shared with their tasks.
#[derive(Default)]
struct Counts {
    reads: AtomicU64,
    failures: Mutex<Vec<String>>,
    subscribed: AtomicUsize,
    /// Per wallet: the last status of each of its scripthashes, as the gateway told it.
    seen: Vec<Mutex<HashMap<String, Option<String>>>>,
    /// Woken whenever a wallet finished a round of reads or finished subscribing.
    progress: Notify,
}

/// The wallets, each in its own task.
struct Fleet {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    counts: Arc<Counts>,
    shs: Vec<String>,
}

impl Fleet {
    /// Connects every wallet, subscribes each to its scripthashes, and returns once all are
    /// subscribed.
    async fn start(addr: SocketAddr, shs: &[String]) -> Fleet {
        let counts = Arc::new(Counts {
            seen: (0..WALLETS).map(|_| Mutex::default()).collect(),
            ..Counts::default()
        });
        let stop = CancellationToken::new();
        let tasks = (0..WALLETS)
            .map(|i| {
                let mine = shs[i * PER_WALLET..(i + 1) * PER_WALLET].to_vec();
                tokio::spawn(wallet(addr, i, mine, counts.clone(), stop.clone()))
            })
            .collect();
        let fleet = Fleet {
            stop,
            tasks,
            counts,
            shs: shs.to_vec(),
        };
        fleet
            .wait("every wallet subscribed", |c| {
                c.subscribed.load(Ordering::SeqCst) == WALLETS
            })
            .await;
        fleet
    }

    /// Waits, woken by the wallets' progress, until `done` holds; fails after [`CONVERGE`].
    async fn wait(&self, what: &str, done: impl Fn(&Counts) -> bool) {
        let deadline = tokio::time::Instant::now() + CONVERGE;
        loop {
            let woken = self.counts.progress.notified();
            if done(&self.counts) {
                return;
            }
            self.check_alive(what);
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                self.check_alive(what);
                assert!(done(&self.counts), "timed out waiting for {what}");
                return;
            }
        }
    }

    /// Fails at once when a wallet's task ended (its connection closed, a read hung, or it
    /// got an answer it could not read).
    fn check_alive(&self, what: &str) {
        if let Some(i) = self.tasks.iter().position(|t| t.is_finished()) {
            panic!("wallet {i} stopped while waiting for {what}: its session was dropped");
        }
    }

    /// Waits until every wallet's last known status of each of its scripthashes is `want`'s.
    async fn converge(&self, want: &Statuses, what: &str) {
        let wrong = |c: &Counts| -> usize {
            (0..WALLETS)
                .map(|i| {
                    let seen = c.seen[i].lock().unwrap();
                    self.shs[i * PER_WALLET..(i + 1) * PER_WALLET]
                        .iter()
                        .filter(|sh| seen.get(*sh) != want.get(*sh))
                        .count()
                })
                .sum()
        };
        let deadline = tokio::time::Instant::now() + CONVERGE;
        loop {
            let woken = self.counts.progress.notified();
            let n = wrong(&self.counts);
            if n == 0 {
                return;
            }
            self.check_alive(what);
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                panic!(
                    "{what}: {n} of {} wallet scripthashes still show an old status (a lost \
                     notification)",
                    self.shs.len()
                );
            }
        }
    }

    fn reads(&self) -> u64 {
        self.counts.reads.load(Ordering::SeqCst)
    }

    /// Waits for `n` more reads to be answered, so that every fault is met by reads.
    async fn more_reads(&self, n: u64, what: &str) {
        let target = self.reads() + n;
        self.wait(what, |c| c.reads.load(Ordering::SeqCst) >= target)
            .await;
    }

    /// Stops the wallets; asserts none failed a read or lost its session.
    async fn finish(self) -> u64 {
        self.stop.cancel();
        for (i, t) in self.tasks.into_iter().enumerate() {
            if let Err(e) = t.await {
                panic!("wallet {i} failed (a dropped session or a hung read): {e}");
            }
        }
        let failures = self.counts.failures.lock().unwrap();
        assert!(
            failures.is_empty(),
            "{} failed reads, the first ones: {:#?}",
            failures.len(),
            &failures[..failures.len().min(10)]
        );
        self.counts.reads.load(Ordering::SeqCst)
    }
}

/// One wallet: subscribes, then reads a balance, a history, a fee estimate and a header every
/// [`PACE`], recording every status it is told.
async fn wallet(
    addr: SocketAddr,
    i: usize,
    shs: Vec<String>,
    counts: Arc<Counts>,
    stop: CancellationToken,
) {
    let mut w = Wallet::connect(addr).await;
    w.call("server.version", json!(["soak", "1.4"])).await;
    w.call("blockchain.headers.subscribe", json!([])).await;
    let mut ids = Vec::new();
    for sh in &shs {
        ids.push((
            sh,
            w.send("blockchain.scripthash.subscribe", json!([sh])).await,
        ));
    }
    for (sh, id) in ids {
        let r = w.response(id).await;
        let status = r["result"].clone();
        assert!(
            r.get("error").is_none() && (status.is_null() || status.is_string()),
            "wallet {i}: subscribing failed: {r}"
        );
        counts.seen[i]
            .lock()
            .unwrap()
            .insert(sh.clone(), status.as_str().map(str::to_string));
    }
    counts.subscribed.fetch_add(1, Ordering::SeqCst);
    counts.progress.notify_waiters();

    let mut tick = tokio::time::interval(PACE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut k = i;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let sh = &shs[k % shs.len()];
        k += 1;
        let sent = [
            (
                "get_balance",
                w.send("blockchain.scripthash.get_balance", json!([sh]))
                    .await,
            ),
            (
                "get_history",
                w.send("blockchain.scripthash.get_history", json!([sh]))
                    .await,
            ),
            (
                "estimatefee",
                w.send("blockchain.estimatefee", json!([6])).await,
            ),
            (
                "block.header",
                w.send("blockchain.block.header", json!([FIXED_HEIGHT]))
                    .await,
            ),
        ];
        for (what, id) in sent {
            let r = w.response(id).await;
            let ok = match what {
                "get_balance" => r["result"]["confirmed"].is_u64(),
                "get_history" => r["result"].is_array(),
                "estimatefee" => r["result"].is_number(),
                _ => r["result"].is_string(),
            };
            if ok {
                counts.reads.fetch_add(1, Ordering::SeqCst);
            } else {
                counts
                    .failures
                    .lock()
                    .unwrap()
                    .push(format!("wallet {i} {what}: {r}"));
            }
        }
        {
            let mut seen = counts.seen[i].lock().unwrap();
            for n in w.notifications.drain(..) {
                if n["method"] == "blockchain.scripthash.subscribe" {
                    let p = &n["params"];
                    if let Some(sh) = p[0].as_str() {
                        seen.insert(sh.to_string(), p[1].as_str().map(str::to_string));
                    }
                }
            }
        }
        counts.progress.notify_waiters();
    }
}

/// Every soak wallet connects from 127.0.0.1, one client as far as the per-client limits go:
/// they are lifted to the gateway-wide ones, and the rate limit is off.
fn lift_client_limits(cfg: &mut electrum_gateway::config::Config) {
    cfg.limits.max_sessions = 4 * WALLETS;
    cfg.limits.max_sessions_per_client = 4 * WALLETS;
    cfg.limits.client_rate = 0.0;
    cfg.limits.max_subscriptions_per_client = 10 * WALLETS * PER_WALLET;
}

/// This process's resident memory, KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

fn rounds() -> usize {
    std::env::var("SOAK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// Memory after each round: flat means the last round ended within a quarter (plus 32 MiB
/// of allocator slack) of where the first ended.
fn assert_flat(rss: &[u64]) {
    eprintln!("resident memory after each round, KiB: {rss:?}");
    if let (Some(first), Some(last)) = (rss.first(), rss.last()) {
        assert!(
            *last <= first + first / 4 + 32 * 1024,
            "memory grew from {first} KiB to {last} KiB over the rounds"
        );
    }
}

/// Which soak scripts a change pays: `n` of them, spread over the wallets, different for
/// each `step`.
fn payees(scripts: &[ScriptBuf], step: usize, n: usize) -> Vec<String> {
    (0..n)
        .map(|j| address_of(&scripts[(step * 7919 + j * 211) % scripts.len()]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ElectrumX 2.0.0 (.ci/run installs it into .venv; or set ELECTRUMX_BIN); run with: cargo test -- --include-ignored"]
async fn wallets_keep_reading_while_each_electrumx_is_killed_and_a_block_is_reorganised() {
    let bin = electrumx::binary();
    let scripts = soak_scripts();
    let shs: Vec<String> = scripts.iter().map(|s| script_hash_of_script(s)).collect();
    let mut net = net::Interop::start(&bin, lift_client_limits).await;
    let expected = |net: &net::Interop| -> Statuses {
        Expected::compute(&net.btc.snapshot(), &shs).statuses()
    };
    let fleet = Fleet::start(net.gw.tcp_addr().expect("tcp listener"), &shs).await;
    fleet.converge(&expected(&net), "the first statuses").await;
    let mut step = 0;
    let mut rss = Vec::new();
    for round in 0..rounds() {
        for victim in 0..3 {
            net.monitors[victim] = None;
            net.servers[victim].kill().await;
            for a in payees(&scripts, step, 10) {
                net.btc.pay(&a, 20_000 + step as u64);
            }
            step += 1;
            fleet
                .converge(&expected(&net), "payments, an ElectrumX down")
                .await;
            net.btc.mine(1);
            fleet
                .converge(&expected(&net), "a block, an ElectrumX down")
                .await;
            fleet.more_reads(400, "reads with an ElectrumX down").await;
            net.servers[victim].restart();
            let tip = net.btc.snapshot().tip_height();
            let documented = net.shs.clone();
            net.monitors[victim] = Some(net.servers[victim].ready(tip, &documented).await);
            assert!(
                net.gw.wait_connected(3, electrumx::SYNC_WAIT).await,
                "the gateway reconnected to ElectrumX #{victim}"
            );
            fleet.more_reads(400, "reads after a restart").await;
        }
        // A depth-1 reorg: the last block's payments go back to the mempool.
        for a in payees(&scripts, step, 10) {
            net.btc.pay(&a, 30_000 + step as u64);
        }
        step += 1;
        net.btc.mine(1);
        fleet
            .converge(&expected(&net), "a block to reorganise")
            .await;
        net.btc.reorg(1);
        fleet.converge(&expected(&net), "a depth-1 reorg").await;
        fleet.more_reads(400, "reads after a reorg").await;
        rss.push(rss_kib());
        eprintln!("round {round}: {} reads so far", fleet.reads());
    }
    let reads = fleet.finish().await;
    eprintln!(
        "soak over ElectrumX: {WALLETS} wallets, {} subscriptions, {reads} reads, 0 failed, {} \
         subscription moves",
        shs.len(),
        net.gw.snapshot().counters.subscription_moves
    );
    assert_flat(&rss);
    net.gw.shutdown();
}

/// Waits until upstream `index` of the gateway is in step with the verified tip.
async fn wait_back_in_step(net: &Net, index: usize) {
    let gw = &net.gw;
    net.until(&format!("upstream {index} in step again"), || {
        gw.snapshot()
            .upstreams
            .iter()
            .any(|u| u.index == index && u.standing.in_step())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallets_keep_reading_through_kills_stalls_flapping_and_lies_of_simulated_upstreams() {
    // Endpoints 0 to 2 fail in turn (killed, stalled, flapping); endpoint 3 lies throughout,
    // a different lie at each step, at the same time.
    let net = Net::start_with(&["127.0.0.1:0"; 4], lift_client_limits).await;
    net.wait_in_step(4).await;
    let scripts = soak_scripts();
    let shs: Vec<String> = scripts.iter().map(|s| script_hash_of_script(s)).collect();
    let expected = |net: &Net| -> Statuses {
        shs.iter()
            .map(|sh| (sh.clone(), net.sim.status(sh).expect("a valid scripthash")))
            .collect()
    };
    let fleet = Fleet::start(net.addr(), &shs).await;
    fleet.converge(&expected(&net), "the first statuses").await;
    let failures = ["kill", "stall", "flap=1"];
    let lies = ["lie-history", "lie-balance", "silent", "fake-mempool"];
    const LIAR: usize = 3;
    let mut step = 0;
    let mut rss = Vec::new();
    for round in 0..rounds() {
        for (f, fault) in failures.iter().enumerate() {
            let victim = (round + f) % 3;
            let lie = lies[(round * failures.len() + f) % lies.len()];
            eprintln!("round {round}: endpoint {victim} {fault}, endpoint {LIAR} {lie}");
            if *fault == "kill" {
                net.sim.stop_endpoint(victim).await;
            } else {
                net.sim
                    .set_faults(victim, fault.parse::<Faults>().expect("a known fault"));
            }
            net.sim
                .set_faults(LIAR, lie.parse::<Faults>().expect("a known fault"));
            for a in payees(&scripts, step, 10) {
                net.sim.pay(&a, 20_000 + step as u64).expect("the sim pays");
            }
            step += 1;
            let what = format!("payments, endpoint {victim} {fault}, endpoint {LIAR} {lie}");
            fleet.converge(&expected(&net), &what).await;
            net.sim.mine(1);
            let what = format!("a block, endpoint {victim} {fault}, endpoint {LIAR} {lie}");
            fleet.converge(&expected(&net), &what).await;
            fleet.more_reads(400, &what).await;
            if *fault == "kill" {
                net.sim
                    .start_endpoint(victim)
                    .await
                    .expect("the endpoint listens again");
            } else {
                net.sim.set_faults(victim, Faults::default());
            }
            // A server that failed without lying is used again once it answers.
            wait_back_in_step(&net, victim).await;
        }
        for a in payees(&scripts, step, 10) {
            net.sim.pay(&a, 30_000 + step as u64).expect("the sim pays");
        }
        step += 1;
        net.sim.mine(1);
        fleet
            .converge(&expected(&net), "a block to reorganise")
            .await;
        net.sim.reorg(1).expect("a depth-1 reorg");
        fleet.converge(&expected(&net), "a depth-1 reorg").await;
        fleet.more_reads(400, "reads after a reorg").await;
        rss.push(rss_kib());
        eprintln!("round {round}: {} reads so far", fleet.reads());
    }
    let reads = fleet.finish().await;
    eprintln!(
        "soak over simulated upstreams: {WALLETS} wallets, {} subscriptions, {reads} reads, \
         0 failed",
        shs.len()
    );
    assert_flat(&rss);
}
