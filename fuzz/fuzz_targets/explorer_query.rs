//! What the explorer makes of a request's path and query string before it asks an upstream:
//! which page it names (height, hash, txid, address, search) or the refusal shown. Nothing may
//! panic; whatever the input, the refusal's HTML must carry no markup from it; and the query
//! decoding and path encoding must round-trip.
#![no_main]

use arbitrary::Arbitrary;
use electrum_gateway::fuzzing::{
    explorer_classify, explorer_escape, explorer_percent_decode, explorer_percent_encode,
};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    network: u8,
    /// Appended to `/explorer`.
    path: String,
    query: Option<String>,
}

fuzz_target!(|input: Input| {
    let network = match input.network % 4 {
        0 => bitcoin::Network::Bitcoin,
        1 => bitcoin::Network::Testnet,
        2 => bitcoin::Network::Signet,
        _ => bitcoin::Network::Regtest,
    };
    let path = format!("/explorer{}", input.path);
    let out = explorer_classify(network, &path, input.query.as_deref());
    if out.starts_with("<section") {
        // A refusal: the request's text appears only escaped.
        for bad in ["<script", "<img", "\"><"] {
            assert!(!out.contains(bad), "{bad} in {out}");
        }
    }
    for s in [&input.path, input.query.as_deref().unwrap_or_default()] {
        // Escaped text has no markup left.
        let e = explorer_escape(s);
        assert!(!e.contains(['<', '>', '"', '\'']), "{e}");
        // Encoding then decoding gives the text back, and an encoded segment is plain.
        let enc = explorer_percent_encode(s);
        assert!(enc
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~%".contains(&b)));
        assert_eq!(&explorer_percent_decode(&enc, false), s);
        assert_eq!(&explorer_percent_decode(&enc, true), s);
        // Decoding never grows the text (beyond U+FFFD replacing bad bytes).
        let dec = explorer_percent_decode(s, true);
        assert!(dec.chars().count() <= s.chars().count(), "{s:?} -> {dec:?}");
        // Only `%XX` with two hex digits is an escape.
        if !s.contains('%') {
            assert_eq!(dec, s.replace('+', " "));
        }
    }
});
