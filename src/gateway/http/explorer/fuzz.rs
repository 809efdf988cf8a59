//! Entry points for the fuzz targets (feature `fuzzing`): what the explorer makes of a request's
//! path and query before it asks anything of an upstream.

use super::*;

/// Classifies a request as the explorer does (`/explorer...` path and raw query string) and
/// renders what needs no upstream: the error section of a refused request and the relative
/// links of the page. Returns the page named (`Debug` form) or the error section's HTML.
pub(crate) fn classify(network: Network, path: &str, query: Option<&str>) -> String {
    if !handles(path) {
        return String::new();
    }
    let nav = Nav::for_path(path);
    let q = query.and_then(|q| form_param(q, "q"));
    let prefill = q.as_deref().map(str::trim).unwrap_or("");
    match target(network, path, query) {
        Ok(t) => {
            let links = match &t {
                Target::Block { at, .. } => nav.block(&format!("{at:?}")),
                Target::Tx(txid) => nav.tx(&txid.to_string()),
                Target::Address { address, .. } => nav.address(address),
                Target::Home | Target::Hash(_) => nav.block("0"),
            };
            format!("{t:?} {links}")
        }
        Err(f) => failure_html(&f, prefill),
    }
}

/// The explorer's query-string decoding: `percent_decode(s, plus_is_space)`.
pub(crate) fn decode(s: &str, plus_is_space: bool) -> String {
    percent_decode(s, plus_is_space)
}

/// The explorer's path-segment encoding.
pub(crate) fn encode(s: &str) -> String {
    percent_encode(s)
}

/// The explorer's HTML escaping.
pub(crate) fn escape(s: &str) -> String {
    esc(s)
}
