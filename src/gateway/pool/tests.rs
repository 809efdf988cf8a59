//! Unit tests of the pool: standings of replaced servers, candidate order, caps, diversity
//! and what is remembered.

use super::*;
use crate::gateway::candidates::{MAX_PEERS, MAX_PEERS_PER_ANNOUNCER};

fn urls(list: &[&str]) -> Vec<ServerUrl> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

/// A pool with `servers` configured and `list` as its server list, nothing dialed: on
/// regtest, as many active upstreams as servers (at least one), then `tweak`.
fn pool_with(
    dir: &std::path::Path,
    servers: &[&str],
    list: &[&str],
    tweak: impl FnOnce(&mut Config),
) -> Arc<Pool> {
    let mut cfg = Config {
        network: "regtest".into(),
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    cfg.upstreams.active = servers.len().max(1);
    tweak(&mut cfg);
    Pool::new(
        Arc::new(cfg),
        urls(servers),
        urls(list),
        Metrics::new(),
        CancellationToken::new(),
    )
    .unwrap()
}

fn pool(dir: &std::path::Path, servers: &[&str], list: &[&str]) -> Arc<Pool> {
    pool_with(dir, servers, list, |_| {})
}

/// `n` peer entries `tcp://{a}.{i % 256}.{i / 256}.7:50001`: a /16 each, up to 256.
fn announced(a: u8, n: u32) -> Vec<ServerInfo> {
    (0..n)
        .map(|i| {
            let host = format!("{a}.{}.{}.7", i % 256, i / 256);
            ServerInfo::new(host, ["t50001"])
        })
        .collect()
}

fn slots(pool: &Pool) -> Vec<String> {
    pool.upstreams()
        .iter()
        .map(|u| u.url().to_string())
        .collect()
}

fn waiting(pool: &Pool) -> Vec<String> {
    pool.candidates().iter().map(ToString::to_string).collect()
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
    assert_eq!(waiting(&pool), vec!["tcp://198.51.100.1:50001"]);
}

#[test]
fn announced_peers_are_capped_and_wait_behind_configured_and_listed_servers() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(
        dir.path(),
        &["tcp://198.51.100.1:50001"],
        &["tcp://203.0.113.7:50001", "tcp://192.0.2.9:50001"],
    );
    // One upstream announces 1,000 servers: only a few are taken, one per /16.
    let (added, refused) = pool.add_peers("attacker:50001", announced(20, 1000));
    assert_eq!((added, added + refused), (MAX_PEERS_PER_ANNOUNCER, 1000));
    let c = waiting(&pool);
    assert_eq!(c[..2], ["tcp://203.0.113.7:50001", "tcp://192.0.2.9:50001"]);
    assert_eq!(
        c[2..],
        [
            "tcp://20.0.0.7:50001",
            "tcp://20.1.0.7:50001",
            "tcp://20.2.0.7:50001",
            "tcp://20.3.0.7:50001"
        ]
    );
    // An operator's candidate goes ahead of all of them, even added last.
    assert!(pool.add_candidate("tcp://192.0.2.200:1".parse().unwrap()));
    assert_eq!(waiting(&pool)[0], "tcp://192.0.2.200:1");
    // Many announcers fill the peer-learned candidates up to the cap, no further.
    for a in 30..60 {
        pool.add_peers(&format!("honest-{a}:50001"), announced(a, 3));
    }
    let peers = waiting(&pool).len() - 3;
    assert_eq!(peers, MAX_PEERS);
    // A server that failed in a slot goes back ahead of every peer.
    let up = pool.upstreams()[0].clone();
    assert!(pool.replace(&up));
    let c = waiting(&pool);
    assert_eq!(
        c[..3],
        [
            "tcp://198.51.100.1:50001",
            "tcp://203.0.113.7:50001",
            "tcp://192.0.2.9:50001"
        ]
    );
}

#[test]
fn peers_may_not_point_into_this_machine_or_its_network_outside_regtest() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_with(dir.path(), &["tcp://198.51.100.1:50001"], &[], |c| {
        c.network = "bitcoin".into();
    });
    let mut peers: Vec<ServerInfo> = [
        "127.0.0.1",
        "10.0.0.1",
        "192.168.1.1",
        "localhost",
        "::1",
        "169.254.0.1",
    ]
    .iter()
    .map(|h| ServerInfo::new(*h, ["t50001"]))
    .collect();
    // A host name whose peer entry gives a private address.
    let mut named = ServerInfo::new("inside.example", ["t50001"]);
    named.ip_addr = Some("10.9.9.9".into());
    peers.push(named);
    peers.push(ServerInfo::new("electrum.example", ["s50002"]));
    assert_eq!(pool.add_peers("a:1", peers), (1, 7));
    assert_eq!(waiting(&pool), vec!["ssl://electrum.example:50002"]);
}

#[test]
fn no_two_upstreams_in_one_network_unless_the_operator_named_them() {
    let dir = tempfile::tempdir().unwrap();
    // Configured servers may share a network; candidates filling the active set may not.
    let list = [
        "tcp://203.0.9.9:50001",
        "tcp://8.8.8.8:50001",
        "tcp://8.8.4.4:50001",
        "tcp://9.9.9.9:50001",
    ];
    let pool = pool_with(
        dir.path(),
        &["tcp://203.0.113.1:50001", "tcp://203.0.113.2:50001"],
        &list,
        |c| c.upstreams.active = 4,
    );
    assert_eq!(
        slots(&pool),
        [
            "tcp://203.0.113.1:50001",
            "tcp://203.0.113.2:50001",
            "tcp://8.8.8.8:50001",
            "tcp://9.9.9.9:50001"
        ]
    );
    assert_eq!(
        waiting(&pool),
        ["tcp://203.0.9.9:50001", "tcp://8.8.4.4:50001"]
    );
    // Replacing 9.9.9.9: both waiting servers share a network with an active upstream.
    let up = pool.upstreams()[3].clone();
    assert!(!pool.replace(&up));
    // One the operator names may.
    assert!(pool.add_candidate("tcp://8.8.1.1:50001".parse().unwrap()));
    assert!(pool.replace(&up));
    assert_eq!(up.url().to_string(), "tcp://8.8.1.1:50001");
    // A peer-learned host name is placed by the address its peer entry gave.
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_with(
        dir.path(),
        &["tcp://203.0.113.1:50001", "tcp://198.51.100.1:50001"],
        &[],
        |_| {},
    );
    let peer = |host: &str, ip: &str| {
        let mut p = ServerInfo::new(host, ["t50001"]);
        p.ip_addr = Some(ip.into());
        p
    };
    assert_eq!(
        pool.add_peers("a:1", vec![peer("near.example", "203.0.1.1")]),
        (1, 0)
    );
    let up = pool.upstreams()[1].clone();
    assert!(!pool.replace(&up));
    pool.add_peers("b:1", vec![peer("far.example", "192.0.2.1")]);
    assert!(pool.replace(&up));
    assert_eq!(up.url().to_string(), "tcp://far.example:50001");
    // Unless same-network candidates are allowed.
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_with(dir.path(), &["tcp://203.0.113.1:50001"], &list, |c| {
        c.upstreams.active = 2;
        c.upstreams.allow_same_subnet = true;
    });
    assert_eq!(slots(&pool)[1], "tcp://203.0.9.9:50001");
    // Servers on this machine are the operator's: never held back.
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_with(
        dir.path(),
        &["tcp://127.0.0.1:1"],
        &["tcp://127.0.0.1:2", "tcp://127.0.0.2:3"],
        |c| c.upstreams.active = 3,
    );
    assert_eq!(slots(&pool).len(), 3);
}

#[test]
fn what_is_remembered_is_pruned_and_restored_behind_the_list() {
    let dir = tempfile::tempdir().unwrap();
    let now = unix(SystemTime::now());
    // A file from an earlier run: a thousand announced servers, a few heard of lately.
    let mut file: HashMap<String, Learned> = HashMap::new();
    for i in 0..1000u32 {
        let recent = i < 10;
        file.insert(
            format!("tcp://21.{}.{}.7:50001", i % 256, i / 256),
            Learned {
                origin: Some(Origin::Peer),
                last_seen: Some(if recent {
                    now - 60
                } else {
                    now - 30 * 24 * 3600
                }),
                announced_by: Some("attacker:50001".into()),
                ip: Some(format!("21.{}.{}.7", i % 256, i / 256)),
                ..Learned::default()
            },
        );
    }
    file.insert(
        "tcp://198.51.100.9:50001".into(),
        Learned {
            origin: Some(Origin::Configured),
            ..Learned::default()
        },
    );
    std::fs::write(
        dir.path().join("upstreams.json"),
        serde_json::to_vec(&file).unwrap(),
    )
    .unwrap();
    let pool = pool(
        dir.path(),
        &["tcp://198.51.100.1:50001"],
        &["tcp://203.0.113.7:50001"],
    );
    // The list first; of the announced ones only recent ones, and few of the same
    // announcer.
    let c = waiting(&pool);
    assert_eq!(c[0], "tcp://203.0.113.7:50001");
    assert_eq!(c.len(), 1 + MAX_PEERS_PER_ANNOUNCER, "{c:?}");
    assert!(c[1..].iter().all(|u| u.starts_with("tcp://21.")), "{c:?}");
    let restored = |u: &String| u[9..].split('.').next().and_then(|n| n.parse::<u32>().ok());
    assert!(
        c[1..].iter().all(|u| restored(u).is_some_and(|i| i < 10)),
        "stale: {c:?}"
    );
    pool.save();
    let saved: HashMap<String, Learned> =
        serde_json::from_slice(&std::fs::read(dir.path().join("upstreams.json")).unwrap()).unwrap();
    // Kept: the configured server, the listed one and the restored peers; no longer
    // configured servers and stale peers are gone.
    assert_eq!(saved.len(), 2 + c.len() - 1, "{saved:?}");
    assert!(saved.contains_key("tcp://198.51.100.1:50001"));
    assert!(!saved.contains_key("tcp://198.51.100.9:50001"));
    assert_eq!(saved["tcp://203.0.113.7:50001"].origin, Some(Origin::List));
    for u in &c[1..] {
        assert_eq!(saved[u].announced_by.as_deref(), Some("attacker:50001"));
    }
}

#[test]
fn a_corrupt_upstream_state_is_set_aside_and_written_anew() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("upstreams.json");
    // Cut short mid-write by an older version or a full disk.
    std::fs::write(
        &state,
        b"{\"tcp://198.51.100.1:50001\": {\"origin\": \"conf",
    )
    .unwrap();
    let pool = pool(dir.path(), &["tcp://198.51.100.1:50001"], &[]);
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("upstreams.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "kept for inspection");
    assert!(!state.exists(), "no longer in the way");
    pool.save();
    let saved: HashMap<String, Learned> =
        serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert!(saved.contains_key("tcp://198.51.100.1:50001"));
}
