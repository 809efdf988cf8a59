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

/// Form decoding as the URL standard has it: `+` is a space, `%` and two hex digits a byte,
/// anything else is kept as it is; bytes that are not UTF-8 become U+FFFD.
fn model_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
        {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("00");
            out.push(u8::from_str_radix(hex, 16).unwrap_or(0));
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The tags a refusal is made of.
const TAGS: [&str; 11] = [
    "<section class=\"error\">",
    "</section>",
    "<h2 id=\"error-title\">",
    "</h2>",
    "<p id=\"error\">",
    "<p>",
    "<p class=\"muted\">",
    "</p>",
    "<code id=\"searched\">",
    "<code id=\"detail\">",
    "</code>",
];

/// Every `<` in `html` opens one of [`TAGS`], and no `>` stands outside a tag.
fn check_markup(html: &str) {
    let mut rest = html;
    while let Some(i) = rest.find(['<', '>']) {
        assert!(rest[i..].starts_with('<'), "a stray > in {html}");
        let end = rest[i..].find('>').map(|e| i + e + 1);
        let tag = end.map(|e| &rest[i..e]).unwrap_or(&rest[i..]);
        assert!(TAGS.contains(&tag), "tag {tag:?} in {html}");
        rest = &rest[end.unwrap_or(rest.len())..];
    }
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
        // A refusal: its only markup is its own, the request's text appears escaped.
        check_markup(&out);
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
        // Only `%XX` with two hex digits is an escape (checked against a model).
        assert_eq!(dec, model_decode(s), "{s:?}");
    }
});
