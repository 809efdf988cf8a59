//! electrum-gateway: a verifying, multiplexing gateway in front of Electrum servers, and an
//! async Electrum client library (the successor of Connectrum).
#![warn(missing_docs)]

pub mod address;
pub mod bench;
pub mod cache;
pub mod chain;
pub mod client;
pub mod config;
pub mod consensus;
pub mod gateway;
pub mod http;
pub mod hub;
pub mod listen;
pub mod metrics;
pub mod pool;
pub mod protocol;
pub mod router;
pub mod server;
pub mod servers;
pub mod sim;
pub mod tools;
pub mod transport;
