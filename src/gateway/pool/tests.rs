//! Unit tests of the pool.

use super::*;

/// A pool on regtest with `servers` configured and `candidates` from a server list, nothing
/// dialed.
fn pool(dir: &std::path::Path, servers: &[&str], candidates: &[&str]) -> Arc<Pool> {
    let mut cfg = Config {
        network: "regtest".into(),
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    cfg.upstreams.active = servers.len().max(1);
    let parse =
        |list: &[&str]| -> Vec<ServerUrl> { list.iter().map(|s| s.parse().unwrap()).collect() };
    Pool::new(
        Arc::new(cfg),
        parse(servers),
        parse(candidates),
        Metrics::new(),
        CancellationToken::new(),
    )
    .unwrap()
}

#[test]
fn a_slot_that_takes_a_new_server_starts_with_a_clean_standing() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(
        dir.path(),
        &["tcp://198.51.100.1:50001"],
        &["tcp://203.0.113.7:50001"],
    );
    let up = pool.upstreams()[0].clone();
    for _ in 0..3 {
        pool.penalize(&up, Reason::BadMerkle);
    }
    pool.set_demoted(&up, Some(Demotion::BadHeader));
    assert_eq!(up.standing().strikes, 3);
    assert!(pool.replace(&up));
    assert_eq!(up.url().to_string(), "tcp://203.0.113.7:50001");
    let st = up.standing();
    assert_eq!(st.strikes, 0, "{st:?}");
    assert!(!st.sitting_out() && st.demoted.is_none(), "{st:?}");
    // The server it had waits as a candidate, and its record went with it.
    assert_eq!(
        pool.candidates(),
        vec!["tcp://198.51.100.1:50001".parse::<ServerUrl>().unwrap()]
    );
}
