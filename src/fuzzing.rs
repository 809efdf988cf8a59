//! Entry points for the coverage-guided fuzz targets in `fuzz/` (feature `fuzzing`, off by
//! default). Thin wrappers over internals the targets cannot reach otherwise; everything public
//! elsewhere in the crate is fuzzed through its own interface. Not a stable interface.

use bitcoin::Network;

use crate::client::{ClientError, ServerInfo};

/// Feeds `lines` to an upstream client's reader as a server would send them, with calls,
/// subscribes and an unsubscribe in flight; returns how many lines were read before one closed
/// the connection (or all of them). Panics if a caller is handed an answer that is not JSON.
pub fn client_read_lines(lines: &[&str]) -> usize {
    crate::client::conn::fuzz::read_lines(lines)
}

/// Reads a `server.version` answer `raw` (JSON text; `None` if it is not JSON) as a client that
/// offered `protocol_min..=protocol_max` does.
pub fn client_version_answer(
    raw: &str,
    protocol_min: &str,
    protocol_max: &str,
) -> Option<Result<ServerInfo, ClientError>> {
    crate::client::conn::fuzz::version_answer(raw, protocol_min, protocol_max)
}

/// What the explorer makes of an HTTP path and raw query string: the page it names or the
/// HTML of its refusal (empty for a path it does not handle).
pub fn explorer_classify(network: Network, path: &str, query: Option<&str>) -> String {
    crate::gateway::http::explorer::fuzz::classify(network, path, query)
}

/// The explorer's decoding of `%XX` escapes (and `+` in form values).
pub fn explorer_percent_decode(s: &str, plus_is_space: bool) -> String {
    crate::gateway::http::explorer::fuzz::decode(s, plus_is_space)
}

/// The explorer's encoding of a path segment.
pub fn explorer_percent_encode(s: &str) -> String {
    crate::gateway::http::explorer::fuzz::encode(s)
}

/// The explorer's HTML escaping.
pub fn explorer_escape(s: &str) -> String {
    crate::gateway::http::explorer::fuzz::escape(s)
}
