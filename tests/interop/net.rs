//! Three real ElectrumX servers fed by a simulated bitcoind, and a gateway in front of them:
//! the setup of the interop and soak tests.

use super::bitcoind::Bitcoind;
use super::common::{self, Wallet};
use super::electrumx::{self, ElectrumX, Monitor};
use super::expect::{scripthash, Expected};
use bitcoin::ScriptBuf;
use electrum_gateway::config::Config;
use electrum_gateway::gateway::Gateway;
use electrum_gateway::sim::addresses::parse_regtest_address;
use electrum_gateway::sim::{SimConfig, ADDRESSES};
use serde_json::json;

pub struct Interop {
    pub btc: Bitcoind,
    pub servers: Vec<ElectrumX>,
    /// A direct connection to each server, `None` while it is down.
    pub monitors: Vec<Option<Monitor>>,
    pub gw: Gateway,
    /// The documented addresses' output scripts and scripthashes.
    pub scripts: Vec<ScriptBuf>,
    pub shs: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Interop {
    /// Starts the chain, three ElectrumX servers indexing it, and a gateway in front of them
    /// (its configuration changed by `tweak` first); returns once the gateway follows the tip.
    pub async fn start(bin: &std::path::Path, tweak: impl FnOnce(&mut Config)) -> Interop {
        let dir = tempfile::tempdir().expect("temporary directory");
        let btc = Bitcoind::start(SimConfig {
            seed: 21,
            ..SimConfig::default()
        })
        .await;
        let scripts: Vec<ScriptBuf> = ADDRESSES
            .iter()
            .map(|a| parse_regtest_address(a.address).unwrap().script_pubkey())
            .collect();
        let shs: Vec<String> = scripts.iter().map(|s| scripthash(s)).collect();
        for (a, sh) in ADDRESSES.iter().zip(&shs) {
            assert_eq!(a.scripthash, sh, "scripthash of {}", a.address);
        }
        // Three servers index the chain at the same time.
        let mut servers: Vec<ElectrumX> = (0..3)
            .map(|i| ElectrumX::start(bin, i, dir.path(), &btc.url()))
            .collect();
        let tip = btc.snapshot().tip_height();
        let monitors = futures::future::join_all(servers.iter_mut().map(|s| s.ready(tip, &shs)))
            .await
            .into_iter()
            .map(Some)
            .collect();

        let mut cfg = Config {
            network: "regtest".into(),
            data_dir: dir.path().join("gateway"),
            ..Config::default()
        };
        cfg.upstreams.servers = servers.iter().map(|s| s.url()).collect();
        cfg.upstreams.use_server_list = false;
        cfg.upstreams.reconnect_initial_secs = 0.2;
        cfg.upstreams.reconnect_max_secs = 1.0;
        cfg.listen.tcp = "127.0.0.1:0".into();
        cfg.listen.tls = String::new();
        cfg.listen.http = String::new();
        tweak(&mut cfg);
        common::init_logs();
        let gw = Gateway::start(cfg).await.expect("gateway");
        assert!(
            gw.wait_connected(3, electrumx::SYNC_WAIT).await,
            "the gateway connected to the three ElectrumX servers"
        );
        let net = Interop {
            btc,
            servers,
            monitors,
            gw,
            scripts,
            shs,
            _dir: dir,
        };
        net.wait_gateway_tip(tip).await;
        net
    }

    pub fn expected(&self) -> Expected {
        Expected::compute(&self.btc.snapshot(), &self.shs)
    }

    pub async fn wait_gateway_tip(&self, height: u32) {
        let mut rx = self.gw.tip_watch();
        tokio::time::timeout(
            electrumx::SYNC_WAIT,
            rx.wait_for(|t| t.as_ref().is_some_and(|t| t.height >= height)),
        )
        .await
        .expect("the gateway's tip reaches the chain's")
        .expect("pool alive");
    }

    /// Waits until every running ElectrumX serves exactly `e` (tip and statuses), so that
    /// reads through the gateway cannot meet a server that is still catching up.
    pub async fn settle(&self, e: &Expected, what: &str) {
        let statuses = e.statuses();
        futures::future::join_all(
            self.monitors
                .iter()
                .flatten()
                .map(|m| m.wait_synced(what, e.tip_height, &e.tip_hex, &statuses)),
        )
        .await;
    }

    pub async fn wallet(&self, version: &str) -> Wallet {
        let mut w = Wallet::connect(self.gw.tcp_addr().expect("tcp listener")).await;
        let v = w
            .call("server.version", json!(["interop-wallet", version]))
            .await;
        assert!(v[0].as_str().unwrap().starts_with("electrum-gateway"));
        w
    }
}
