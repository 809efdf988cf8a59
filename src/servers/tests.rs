use super::*;

/// A list as Connectrum writes it (sorted by host name, every field present), with an unknown
/// key besides `seen_at`.
const CONNECTRUM_FILE: &str = r#"[
 {
  "nickname": null,
  "hostname": "3smoooajg7qqac2y.onion",
  "ip_addr": null,
  "ports": ["s50002", "t50001"],
  "version": "1.4",
  "pruning_limit": 0,
  "seen_at": 1533670768.867671
 },
 {
  "nickname": null,
  "hostname": "abc1.hsmiths.com",
  "ip_addr": "76.174.26.91",
  "ports": ["s60002", "t60001"],
  "version": "1.4",
  "pruning_limit": 0,
  "seen_at": 1533670768.584984
 },
 {
  "nickname": "DragonZone",
  "hostname": "electrum.dragonzone.net",
  "ip_addr": null,
  "ports": ["t", "h", "s", "g"],
  "version": "1.0",
  "pruning_limit": 10000,
  "seen_at": 1465686119.966315,
  "comment": {"added_by": "hand", "tags": [1, 2]}
 }
]"#;

fn value(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

#[test]
fn connectrum_file_round_trip_keeps_unknown_keys() {
    let list = ServerList::from_json(CONNECTRUM_FILE).unwrap();
    assert_eq!(list.len(), 3);
    let dz = list.get("ELECTRUM.dragonzone.net").unwrap();
    assert_eq!(dz.nickname.as_deref(), Some("DragonZone"));
    assert_eq!(dz.pruning_limit, 10000);
    assert_eq!(dz.extra["seen_at"], json!(1465686119.966315));
    let abc = list.get("abc1.hsmiths.com").unwrap();
    assert_eq!(abc.ip_addr.as_deref(), Some("76.174.26.91"));

    // Written back, the file says exactly what it said before.
    let written = list.to_json();
    assert_eq!(value(&written), value(CONNECTRUM_FILE));
    assert_eq!(ServerList::from_json(&written).unwrap(), list);
}

#[test]
fn output_is_sorted_by_host_name_whatever_the_input_order() {
    let mut list = ServerList::new();
    for host in ["zeta.example", "Alpha.example", "mid.example"] {
        list.insert(ServerInfo::new(host, ["s"]));
    }
    let hosts: Vec<String> = value(&list.to_json())
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["hostname"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(hosts, ["Alpha.example", "mid.example", "zeta.example"]);
    // Stable: the same list always gives the same text.
    assert_eq!(list.to_json(), list.clone().to_json());
}

#[test]
fn entries_keyed_by_host_name_are_read() {
    let text = r#"{
        "electrum.example.org": {"hostname": "electrum.example.org", "nickname": null,
            "ports": ["s50002", "t50001"], "version": "1.4", "pruning_limit": 0,
            "seen_at": 1533670768.8676639},
        "other.example.org": {"ports": ["s"]}
    }"#;
    let list = ServerList::from_json(text).unwrap();
    assert_eq!(list.len(), 2);
    let e = list.get("electrum.example.org").unwrap();
    assert_eq!(e.port('s'), Some(50002));
    assert_eq!(e.extra["seen_at"], json!(1533670768.8676639));
    // The host name comes from the key when the entry lacks it.
    assert_eq!(
        list.get("other.example.org").unwrap().hostname,
        "other.example.org"
    );
}

#[test]
fn electrum_wallet_format_is_read() {
    let text = r#"{
        "blockstream.info": {"pruning": "-", "s": "700", "t": "110", "version": "1.4"},
        "pruned.example": {"pruning": "1000", "s": 50002, "version": "1.4.2", "extra": true},
        "old.example": {"t": "50001", "h": "8081"}
    }"#;
    let list = ServerList::from_json(text).unwrap();
    let b = list.get("blockstream.info").unwrap();
    assert_eq!((b.port('s'), b.port('t')), (Some(700), Some(110)));
    assert_eq!(b.pruning_limit, 0);
    assert_eq!(b.protocol_max(), Some((1, 4, 0)));
    let p = list.get("pruned.example").unwrap();
    assert_eq!(p.pruning_limit, 1000);
    assert_eq!(p.port('t'), None);
    assert_eq!(p.extra["extra"], json!(true));
    let o = list.get("old.example").unwrap();
    assert_eq!(o.protocols(), BTreeSet::from(['h', 't']));
    assert_eq!(o.version, None);

    for bad in [
        r#"{"h.example": {"s": "notaport"}}"#,
        r#"{"h.example": {"t": "70000"}}"#,
        r#"{"h.example": {"s": "50002", "pruning": "lots"}}"#,
    ] {
        assert!(ServerList::from_json(bad).is_err(), "{bad}");
    }
}

/// Found by fuzzing (server_list): in the Electrum wallet's format, a key named like one of an
/// entry's own fields went into its extra keys, so the list was written with the key twice and
/// did not read back as it was.
#[test]
fn electrum_wallet_entries_with_field_names_round_trip() {
    let text = r#"{"e.example.com": {"ip_addr": "-", "nickname": "e", "pruning_limit": "10",
        "s": "50002", "seen_at": 5}}"#;
    let list = ServerList::from_json(text).unwrap();
    let info = list.get("e.example.com").unwrap();
    assert_eq!(info.ip_addr.as_deref(), Some("-"));
    assert_eq!(info.nickname.as_deref(), Some("e"));
    assert_eq!(info.pruning_limit, 10);
    assert_eq!(info.extra.keys().collect::<Vec<_>>(), ["seen_at"]);
    let written = list.to_json();
    assert_eq!(written.matches("\"ip_addr\"").count(), 1, "{written}");
    let back = ServerList::from_json(&written).unwrap();
    assert_eq!(back.to_json(), written);
    assert!(ServerList::from_json(r#"{"e.example.com": {"s": "1", "ip_addr": 7}}"#).is_err());
}

#[test]
fn connectrum_constructor_quirks() {
    // Ports as a space-separated string or a bare TCP port number; version and pruning mixed
    // into the ports list, as Connectrum's ServerInfo accepts them.
    let text = r#"[
        {"hostname": "a.example", "ports": "t s50012"},
        {"hostname": "b.example", "ports": 51001},
        {"hostname": "c.example", "ports": ["v1.2", "p500", "s"]},
        {"hostname": "d.example", "ports": ["v1.2", "s"], "version": "1.4"}
    ]"#;
    let list = ServerList::from_json(text).unwrap();
    let a = list.get("a.example").unwrap();
    assert_eq!((a.port('t'), a.port('s')), (Some(50001), Some(50012)));
    assert_eq!(list.get("b.example").unwrap().port('t'), Some(51001));
    let c = list.get("c.example").unwrap();
    assert_eq!(c.ports, ["s"]);
    assert_eq!(c.version.as_deref(), Some("1.2"));
    assert_eq!(c.pruning_limit, 500);
    // An explicit field wins over a `v` item.
    assert_eq!(
        list.get("d.example").unwrap().version.as_deref(),
        Some("1.4")
    );
}

#[test]
fn malformed_files_are_refused_with_the_entry_named() {
    for (text, needle) in [
        ("not json", ""),
        ("42", "array or object"),
        (
            r#"[{"hostname": "ok.example", "ports": ["s"]}, 7]"#,
            "entry 1",
        ),
        (r#"[{"ports": ["s"]}]"#, "hostname"),
        (
            r#"[{"hostname": "bad host", "ports": ["s"]}]"#,
            "invalid host",
        ),
        (
            r#"[{"hostname": "h.example", "ports": [5]}]"#,
            "not a string",
        ),
        (
            r#"[{"hostname": "h.example", "pruning_limit": -1}]"#,
            "pruning",
        ),
        (r#"{"h.example": [1]}"#, "\"h.example\""),
    ] {
        let err = ServerList::from_json(text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text}: {err}");
    }
}

#[test]
fn ports_and_urls() {
    let info = ServerInfo::new("h.example", ["t", "s50012", "h", "gx"]);
    assert_eq!(info.protocols(), BTreeSet::from(['g', 'h', 's', 't']));
    assert_eq!(info.port('t'), Some(50001));
    assert_eq!(info.port('s'), Some(50012));
    assert_eq!(info.port('h'), Some(8081));
    assert_eq!(info.port('g'), None, "junk port number");
    assert_eq!(info.port('x'), None);
    assert_eq!(
        info.url(Scheme::Tcp).unwrap().to_string(),
        "tcp://h.example:50001"
    );
    assert_eq!(
        info.url(Scheme::Ssl).unwrap().to_string(),
        "ssl://h.example:50012"
    );
    assert_eq!(info.url(Scheme::Ws), None);
    assert_eq!(info.url(Scheme::Wss), None);
    assert_eq!(
        info.urls()
            .iter()
            .map(|u| u.to_string())
            .collect::<Vec<_>>(),
        ["ssl://h.example:50012", "tcp://h.example:50001"]
    );

    let v6 = ServerInfo::new("2001:db8::1", ["t0", "s"]);
    assert_eq!(v6.port('t'), None, "port 0 is not a port");
    assert_eq!(
        v6.url(Scheme::Ssl).unwrap().to_string(),
        "ssl://[2001:db8::1]:50002"
    );

    let only_http = ServerInfo::new("old.example", ["h", "g"]);
    assert!(!only_http.is_usable());
    assert!(only_http.urls().is_empty());

    let url: ServerUrl = "ssl://x.example:995".parse().unwrap();
    let from_url = ServerInfo::from_url(&url).unwrap();
    assert_eq!(from_url.url(Scheme::Ssl), Some(url));
    assert_eq!(
        ServerInfo::from_url(&"wss://x.example:443".parse().unwrap()),
        None
    );
}

#[test]
fn onion_and_version() {
    let mut info = ServerInfo::new("ABCDEF.Onion", ["t"]);
    assert!(info.is_onion());
    assert!(!ServerInfo::new("onion.example", ["t"]).is_onion());
    assert_eq!(info.protocol_max(), None);
    info.version = Some("1.4.2".into());
    assert_eq!(info.protocol_max(), Some((1, 4, 2)));
    info.version = Some("v1.6".into());
    assert_eq!(info.protocol_max(), Some((1, 6, 0)));
    info.version = Some("new".into());
    assert_eq!(info.protocol_max(), None);
}

#[test]
fn peers_answer_is_parsed_with_defaults_and_junk_skipped() {
    let answer = json!([
        [
            "91.63.237.12",
            "electrum3.hachre.de",
            ["v1.4", "p10000", "t", "s"]
        ],
        [
            "2a01:4f8::2",
            "e.example",
            ["v1.4.2", "s50012", "t60001", "x9", "h8081"]
        ],
        ["onionhost.onion", "onionhost.onion", ["v1.6", "t"]],
        ["not an ip", "f.example", ["s50002"]],
        // Unknown and junk features are ignored, the entry kept.
        [
            "1.2.3.4",
            "g.example",
            ["vjunk", "pjunk", "t70000", "s", 17, ""]
        ],
        // Malformed entries, each skipped.
        "just a string",
        ["1.2.3.4", "short.example"],
        ["1.2.3.4", 5, ["s"]],
        ["1.2.3.4", "bad host name", ["s"]],
        ["1.2.3.4", "", ["s"]],
        ["1.2.3.4", "nofeatures.example", "s t"],
        ["1.2.3.4", "noports.example", ["v1.4", "p100"]],
        ["1.2.3.4", "junkports.example", ["tabc", "s0", "t65536"]],
        null
    ]);
    let peers = parse_peers(&answer).unwrap();
    let hosts: Vec<&str> = peers.iter().map(|p| p.hostname.as_str()).collect();
    assert_eq!(
        hosts,
        [
            "electrum3.hachre.de",
            "e.example",
            "onionhost.onion",
            "f.example",
            "g.example"
        ]
    );

    let h = &peers[0];
    assert_eq!(h.ip_addr.as_deref(), Some("91.63.237.12"));
    assert_eq!((h.port('t'), h.port('s')), (Some(50001), Some(50002)));
    assert_eq!(h.version.as_deref(), Some("1.4"));
    assert_eq!(h.pruning_limit, 10000);

    let e = &peers[1];
    assert_eq!(e.ip_addr.as_deref(), Some("2a01:4f8::2"));
    assert_eq!((e.port('s'), e.port('t')), (Some(50012), Some(60001)));
    assert_eq!(e.protocols(), BTreeSet::from(['s', 't']));
    assert_eq!(e.protocol_max(), Some((1, 4, 2)));

    assert_eq!(peers[2].ip_addr, None, "ip equal to host");
    assert!(peers[2].is_onion());
    assert_eq!(peers[3].ip_addr, None, "ip that is not an IP address");

    let g = &peers[4];
    assert_eq!(g.ports, ["s"]);
    assert_eq!((g.version.clone(), g.pruning_limit), (None, 0));

    assert_eq!(parse_peers(&json!({"not": "a list"})), Err(PeersError));
    assert_eq!(parse_peers(&json!([])), Ok(vec![]));
}

#[test]
fn peer_entries_format_and_parse_back() {
    let mut info = ServerInfo::new("e.example", ["t50001", "s50012"]);
    info.version = Some("1.4.2".into());
    info.pruning_limit = 1000;
    info.ip_addr = Some("10.0.0.1".into());
    assert_eq!(
        info.peer_entry(),
        json!(["10.0.0.1", "e.example", ["v1.4.2", "p1000", "s50012", "t"]])
    );
    let back = ServerInfo::from_peer_entry(&info.peer_entry()).unwrap();
    assert_eq!(back.ip_addr, info.ip_addr);
    assert_eq!(back.version, info.version);
    assert_eq!(back.pruning_limit, info.pruning_limit);
    for scheme in [Scheme::Tcp, Scheme::Ssl] {
        assert_eq!(back.url(scheme), info.url(scheme));
    }

    // Without an IP address the host stands in; unusable letters are not announced.
    let plain = ServerInfo::new("p.example", ["s", "h"]);
    assert_eq!(plain.peer_entry(), json!(["p.example", "p.example", ["s"]]));

    let list: ServerList = [plain, info, ServerInfo::new("old.example", ["g"])]
        .into_iter()
        .collect();
    let result = list.peers_result();
    assert_eq!(result.as_array().unwrap().len(), 2, "{result}");
    assert_eq!(parse_peers(&result).unwrap().len(), 2);
}

#[test]
fn add_peers_merges_and_keeps_local_knowledge() {
    let mut list = ServerList::from_json(CONNECTRUM_FILE).unwrap();
    let added = list
        .add_peers(&json!([
            ["95.1.1.1", "Electrum.DragonZone.net", ["v1.4", "s50002"]],
            ["5.6.7.8", "new.example", ["v1.4", "t"]],
            "junk"
        ]))
        .unwrap();
    assert_eq!(added, ["new.example"]);
    assert_eq!(list.len(), 4);
    let dz = list.get("electrum.dragonzone.net").unwrap();
    assert_eq!(dz.ports, ["s50002"]);
    assert_eq!(dz.version.as_deref(), Some("1.4"));
    assert_eq!(dz.pruning_limit, 0);
    assert_eq!(dz.ip_addr.as_deref(), Some("95.1.1.1"));
    assert_eq!(dz.nickname.as_deref(), Some("DragonZone"));
    assert_eq!(dz.extra["seen_at"], json!(1465686119.966315));
    assert!(dz.extra.contains_key("comment"));

    assert_eq!(list.add_peers(&json!("nope")), Err(PeersError));

    // merge_list reports the new hosts only.
    let mut other = ServerList::new();
    other.insert(ServerInfo::new("new.example", ["s"]));
    other.insert(ServerInfo::new("newer.example", ["s"]));
    assert_eq!(list.merge_list(other), ["newer.example"]);
    assert_eq!(list.get("new.example").unwrap().ports, ["s"]);

    // insert replaces outright; remove takes out.
    let old = list.insert(ServerInfo::new("NEW.example", ["t1"])).unwrap();
    assert_eq!(old.ports, ["s"]);
    assert_eq!(list.get("new.example").unwrap().hostname, "NEW.example");
    assert!(list.remove("New.Example").is_some());
    assert!(list.get("new.example").is_none());
}

fn filter_fixture() -> ServerList {
    let mut list = ServerList::new();
    let mut add = |host: &str, ports: &[&str], version: Option<&str>, pruning: u64| {
        let mut info = ServerInfo::new(host, ports.iter().copied());
        info.version = version.map(str::to_string);
        info.pruning_limit = pruning;
        list.insert(info);
    };
    add("tcp-only.example", &["t"], Some("1.4"), 0);
    add("ssl-only.example", &["s50012"], Some("1.6"), 0);
    add("both.example", &["s", "t"], Some("1.4.2"), 1000);
    add("hidden.onion", &["t", "s"], Some("1.5"), 0);
    add("old.example", &["h", "g"], Some("1.0"), 10000);
    add("unknown.example", &["s"], None, 50);
    list
}

fn hosts(list: &ServerList) -> Vec<&str> {
    list.iter().map(|i| i.hostname.as_str()).collect()
}

#[test]
fn filter_by_protocol() {
    let list = filter_fixture();
    assert_eq!(
        hosts(&list.filtered(&Filter::new().with_protocol('t'))),
        ["both.example", "hidden.onion", "tcp-only.example"]
    );
    assert_eq!(
        hosts(&list.filtered(&Filter::new().with_scheme(Scheme::Ssl))),
        [
            "both.example",
            "hidden.onion",
            "ssl-only.example",
            "unknown.example"
        ]
    );
    assert!(list
        .filtered(&Filter::new().with_scheme(Scheme::Wss))
        .is_empty());
    assert_eq!(list.filtered(&Filter::new()), list);
}

#[test]
fn filter_by_onion() {
    let list = filter_fixture();
    assert_eq!(
        hosts(&list.filtered(&Filter::new().with_onion(Onion::Only))),
        ["hidden.onion"]
    );
    let clear = list.filtered(&Filter::new().with_onion(Onion::Exclude));
    assert_eq!(clear.len(), list.len() - 1);
    assert!(clear.get("hidden.onion").is_none());
    assert_eq!(
        list.filtered(&Filter::new().with_onion(Onion::Include))
            .len(),
        list.len()
    );
}

#[test]
fn filter_by_min_version() {
    let list = filter_fixture();
    assert_eq!(
        hosts(&list.filtered(&Filter::new().with_min_version((1, 4, 1)))),
        ["both.example", "hidden.onion", "ssl-only.example"]
    );
    assert_eq!(
        hosts(&list.filtered(&Filter::new().with_min_version((1, 6, 0)))),
        ["ssl-only.example"]
    );
    // Unknown versions do not pass a minimum.
    assert!(list
        .filtered(&Filter::new().with_min_version((0, 1, 0)))
        .get("unknown.example")
        .is_none());
}

#[test]
fn filter_by_pruning() {
    let list = filter_fixture();
    assert_eq!(
        hosts(&list.filtered(&Filter::new().with_pruning(Pruning::Unpruned))),
        ["hidden.onion", "ssl-only.example", "tcp-only.example"]
    );
    assert_eq!(
        hosts(&list.filtered(&Filter::new().with_pruning(Pruning::AtLeast(1000)))),
        [
            "both.example",
            "hidden.onion",
            "old.example",
            "ssl-only.example",
            "tcp-only.example"
        ]
    );
    assert_eq!(
        list.filtered(&Filter::new().with_pruning(Pruning::Any))
            .len(),
        list.len()
    );
}

#[test]
fn filters_combine_and_give_urls() {
    let list = filter_fixture();
    let filter = Filter::new()
        .with_protocol('s')
        .with_onion(Onion::Exclude)
        .with_min_version((1, 4, 0))
        .with_pruning(Pruning::Unpruned);
    let picked = list.filtered(&filter);
    assert_eq!(hosts(&picked), ["ssl-only.example"]);
    assert_eq!(
        picked
            .urls(Scheme::Ssl)
            .iter()
            .map(|u| u.to_string())
            .collect::<Vec<_>>(),
        ["ssl://ssl-only.example:50012"]
    );
    assert_eq!(
        list.urls(Scheme::Tcp)
            .iter()
            .map(|u| u.to_string())
            .collect::<Vec<_>>(),
        [
            "tcp://both.example:50001",
            "tcp://hidden.onion:50001",
            "tcp://tcp-only.example:50001"
        ]
    );
    let mut kept = list.clone();
    kept.retain(|i| i.is_onion());
    assert_eq!(hosts(&kept), ["hidden.onion"]);
}

#[test]
fn bundled_lists_parse_and_are_usable() {
    for network in [
        Network::Bitcoin,
        Network::Testnet,
        Network::Testnet4,
        Network::Signet,
    ] {
        let list = ServerList::bundled(network);
        assert!(!list.is_empty(), "{network}");
        for info in &list {
            assert!(valid_host(&info.hostname), "{network} {}", info.hostname);
            assert!(
                !info.urls().is_empty(),
                "{network} {} has no usable URL",
                info.hostname
            );
            assert!(info.protocol_max().is_some(), "{network} {}", info.hostname);
            assert_eq!(info.pruning_limit, 0);
        }
    }
    assert!(ServerList::bundled(Network::Regtest).is_empty());

    let main = ServerList::bundled(Network::Bitcoin);
    assert!(main.len() >= 30, "{}", main.len());
    assert!(main.iter().any(|i| i.is_onion()));
    assert!(main.iter().any(|i| !i.is_onion()));
    // The same host serves each network on its own ports.
    let bs_main = main.get("electrum.blockstream.info").unwrap();
    let bs_test = ServerList::bundled(Network::Testnet);
    let bs_test = bs_test.get("electrum.blockstream.info").unwrap();
    assert_ne!(bs_main.port('s'), bs_test.port('s'));
}

#[test]
fn save_is_atomic_and_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("servers.json");
    let list = ServerList::from_json(CONNECTRUM_FILE).unwrap();
    list.save(&path).unwrap();
    assert_eq!(ServerList::load(&path).unwrap(), list);

    // Overwriting replaces the whole file.
    let small: ServerList = [ServerInfo::new("only.example", ["s"])]
        .into_iter()
        .collect();
    small.save(&path).unwrap();
    assert_eq!(ServerList::load(&path).unwrap(), small);

    // No temporary file is left behind.
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["servers.json"]);
}

#[test]
fn failed_save_leaves_the_target_alone_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    // The target is a non-empty directory: the temporary file is written, the rename fails.
    let target = dir.path().join("servers.json");
    fs::create_dir(&target).unwrap();
    fs::write(target.join("keep"), "x").unwrap();
    let list: ServerList = [ServerInfo::new("a.example", ["s"])].into_iter().collect();
    let err = list.save(&target).unwrap_err();
    assert!(
        matches!(
            err,
            ServersError::Io {
                action: "write",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("servers.json"), "{err}");
    assert_eq!(fs::read_to_string(target.join("keep")).unwrap(), "x");
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["servers.json"]);

    // A missing directory is an error too.
    assert!(list.save(dir.path().join("missing/servers.json")).is_err());
}

#[test]
fn load_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.json");
    let err = ServerList::load(&missing).unwrap_err();
    assert!(matches!(err, ServersError::Io { action: "read", .. }));
    assert!(err.to_string().contains("none.json"), "{err}");

    let bad = dir.path().join("bad.json");
    fs::write(&bad, r#"[{"hostname": "x y"}]"#).unwrap();
    let err = ServerList::load(&bad).unwrap_err().to_string();
    assert!(err.contains("bad.json") && err.contains("entry 0"), "{err}");
}

#[test]
fn readers_never_see_a_partly_written_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("servers.json");
    let big = ServerList::bundled(Network::Bitcoin);
    let small = ServerList::bundled(Network::Testnet);
    big.save(&path).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..200 {
                let list = if i % 2 == 0 { &small } else { &big };
                list.save(&path).unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut reads = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) || reads == 0 {
            let got = ServerList::load(&path).unwrap();
            assert!(got == big || got == small, "a read saw a partial list");
            reads += 1;
        }
    });
}
