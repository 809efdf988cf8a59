//! Server lists as read from a file (Connectrum's array or map, the Electrum wallet's
//! `servers.json`) and `server.peers.subscribe` answers merged into them. Nothing may panic; a
//! list read back from what it writes must be the same list; every usable entry must survive
//! the trip through a peers answer; and URLs, ports and filters must be derivable from any
//! entry that was accepted.
#![no_main]

use electrum_gateway::servers::{parse_peers, Filter, Onion, ServerList};
use electrum_gateway::transport::Scheme;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let mut list = if sel & 1 == 0 {
        match ServerList::from_json(&text) {
            Ok(list) => list,
            Err(_) => return,
        }
    } else {
        // A peers answer merged into an empty list.
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
            return;
        };
        let mut list = ServerList::new();
        if let Ok(added) = list.add_peers(&value) {
            let peers = parse_peers(&value).expect("an answer that merged parses");
            assert!(added.len() <= peers.len());
            assert_eq!(list.len(), added.len());
        }
        list
    };
    // What a list writes, it reads back unchanged.
    let written = list.to_json();
    let back = ServerList::from_json(&written)
        .unwrap_or_else(|e| panic!("own output refused: {e}\n{written}"));
    assert_eq!(back.to_json(), written);
    for info in list.iter() {
        let _ = (
            info.key(),
            info.protocols(),
            info.is_onion(),
            info.protocol_max(),
        );
        let _ = (
            info.peer_features(),
            info.urls(),
            info.port('s'),
            info.port('t'),
        );
        for scheme in [Scheme::Tcp, Scheme::Ssl, Scheme::Ws, Scheme::Wss] {
            if let Some(url) = info.url(scheme) {
                let again = url
                    .to_string()
                    .parse::<electrum_gateway::transport::ServerUrl>();
                assert!(again.is_ok(), "{url} does not parse back");
            }
        }
    }
    // Usable entries go out in a peers answer and come back.
    let answer = list.peers_result();
    let peers = parse_peers(&answer).expect("own peers answer parses");
    let usable = list.iter().filter(|i| i.is_usable()).count();
    assert_eq!(peers.len(), usable, "{answer}");
    let before = list.len();
    let added = list.add_peers(&answer).expect("own peers answer merges");
    assert!(added.is_empty(), "{added:?} were not in the list");
    assert_eq!(list.len(), before);
    let filter = Filter::new()
        .with_protocol(if sel & 2 == 0 { 's' } else { 't' })
        .with_onion(if sel & 4 == 0 {
            Onion::Exclude
        } else {
            Onion::Only
        });
    let kept = list.filtered(&filter);
    assert!(kept.len() <= list.len());
    let _ = list.urls(Scheme::Ssl);
});
