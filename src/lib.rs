//! electrum-gateway: a verifying, multiplexing gateway in front of Electrum servers, and an
//! async Electrum client library (the successor of Connectrum).
#![warn(missing_docs)]

pub mod chain;
pub mod protocol;
pub mod transport;
