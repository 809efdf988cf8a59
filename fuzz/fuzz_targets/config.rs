//! The configuration file: TOML parsed into `Config` and validated. Nothing may panic; a
//! configuration that validates must give what the gateway derives from it at start (network,
//! upstream URLs, listen addresses, durations, per-method policies) without an error or a
//! panic, and must survive being written out and read back.
#![no_main]

use electrum_gateway::config::{listen_addr, secs, Config};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = Config::from_toml(text) else {
        return;
    };
    cfg.network().expect("a validated network");
    cfg.upstream_urls().expect("validated upstream URLs");
    for addr in [
        &cfg.listen.tcp,
        &cfg.listen.tls,
        &cfg.listen.ws,
        &cfg.listen.http,
    ] {
        listen_addr(addr).expect("a validated listen address");
    }
    for v in [
        cfg.limits.request_timeout_secs,
        cfg.limits.idle_timeout_secs,
        cfg.upstreams.request_timeout_secs,
        cfg.upstreams.connect_timeout_secs,
        cfg.upstreams.reconnect_initial_secs,
        cfg.upstreams.reconnect_max_secs,
        cfg.upstreams.ping_interval_secs,
        cfg.verify.penalty_secs,
    ] {
        let _ = secs(v);
    }
    // A wallet session's queue of finished requests holds max_pending_per_session + 8.
    let _ = tokio::sync::mpsc::channel::<()>(cfg.limits.max_pending_per_session + 8);
    for method in cfg.routing.policy.keys() {
        let _ = cfg.policy(method);
    }
    if !cfg.upstreams.proxy.is_empty() {
        cfg.upstreams
            .proxy
            .parse::<electrum_gateway::client::ProxyConfig>()
            .expect("a validated proxy");
    }
    // Written out and read back, it is the same configuration.
    let written = toml::to_string(&cfg).expect("a configuration serializes");
    let back = Config::from_toml(&written)
        .unwrap_or_else(|e| panic!("own output refused: {e}\n{written}"));
    assert_eq!(toml::to_string(&back).expect("serializes"), written);
});
