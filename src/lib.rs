//! electrum-gateway: a verifying, multiplexing gateway in front of Electrum servers, and an
//! async Electrum client library (the successor of Connectrum).
//!
//! The layers, each importing only those above it in this list (docs/architecture.md):
//! - [`protocol`]: the Electrum wire, the method catalogue and the typed call;
//! - [`transport`], [`address`], [`servers`], [`client`]: the client library;
//! - [`chain`]: header chain maths and pure answer checks;
//! - `verify`: the chain tracker, the one answer-check entry point, standings and reasons;
//! - `config`, `metrics`, `listen`: what the gateway is told, what it reports, where wallets
//!   connect;
//! - `gateway`: sessions, router, hub, pool, cache and the HTTP side, assembled as
//!   `gateway::Gateway`;
//! - `sim`, `tools`, `bench`: the simulated server, the command-line tools and the load
//!   generator.
//!
//! The client library needs no feature (`default-features = false`); the feature `gateway`
//! brings the gateway, `sim`, `tools` and `bench` the programs, and `cli` (the default) all of
//! them with the command line.
#![warn(missing_docs)]

pub mod address;
pub mod chain;
pub mod client;
mod files;
pub mod protocol;
pub mod servers;
pub mod transport;

#[cfg(feature = "bench")]
pub mod bench;
#[cfg(feature = "gateway")]
pub mod config;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "gateway")]
pub mod gateway;
#[cfg(feature = "gateway")]
pub mod listen;
#[cfg(feature = "gateway")]
pub mod metrics;
#[cfg(feature = "gateway")]
pub mod proxy_protocol;
#[cfg(feature = "sim")]
pub mod sim;
#[cfg(feature = "tools")]
pub mod tools;
#[cfg(feature = "gateway")]
pub mod verify;

/// The README's examples, compiled as doc tests so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
