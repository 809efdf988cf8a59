//! electrum-gateway: a verifying, multiplexing gateway in front of Electrum servers, and an
//! async Electrum client library (the successor of Connectrum).
//!
//! The layers, each importing only those above it in this list (docs/architecture.md):
//! - [`protocol`]: the Electrum wire, the method catalogue and the typed call;
//! - [`transport`], [`address`], [`servers`], [`client`]: the client library;
//! - [`chain`]: header chain maths and pure answer checks;
//! - [`verify`]: the chain tracker, the one answer-check entry point, standings and reasons;
//! - [`config`], [`metrics`], [`listen`]: what the gateway is told, what it reports, where
//!   wallets connect;
//! - [`gateway`]: sessions, router, hub, pool, cache and the HTTP side, assembled as
//!   [`gateway::Gateway`];
//! - [`sim`], [`tools`], [`bench`]: the simulated server, the command-line tools and the load
//!   generator.
#![warn(missing_docs)]

pub mod address;
pub mod bench;
pub mod chain;
pub mod client;
pub mod config;
pub mod gateway;
pub mod listen;
pub mod metrics;
pub mod protocol;
pub mod servers;
pub mod sim;
pub mod tools;
pub mod transport;
pub mod verify;
