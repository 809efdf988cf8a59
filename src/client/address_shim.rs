//! Address to scripthash conversion (a stand-in with the same API as the crate's address
//! module, used by the client until that module is available).
//!
//! Electrum servers index outputs by *scripthash*: the SHA-256 of the output script, byte
//! order reversed, as hex. Old clients still send addresses, so the client converts them.

use bitcoin::hashes::{sha256, Hash};
use bitcoin::hex::DisplayHex;
use bitcoin::{Address, Network};
use std::str::FromStr;

/// Why an address could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Not a valid address at all.
    #[error("invalid address: {0}")]
    Invalid(String),
    /// A valid address of another network.
    #[error("address is not valid on {0}")]
    WrongNetwork(Network),
}

/// The Electrum scripthash (64 hex characters) of `address`, which must belong to `network`.
pub fn script_hash(address: &str, network: Network) -> Result<String, AddressError> {
    let unchecked =
        Address::from_str(address.trim()).map_err(|e| AddressError::Invalid(e.to_string()))?;
    let checked = unchecked
        .require_network(network)
        .map_err(|_| AddressError::WrongNetwork(network))?;
    let mut digest = sha256::Hash::hash(checked.script_pubkey().as_bytes()).to_byte_array();
    digest.reverse();
    Ok(digest.to_lower_hex_string())
}

/// Parses a network name as used in configuration files and on the command line.
#[allow(dead_code)] // part of the address module API; the client itself does not need it
pub fn parse_network(name: &str) -> Option<Network> {
    match name.trim().to_ascii_lowercase().as_str() {
        "bitcoin" | "mainnet" | "main" => Some(Network::Bitcoin),
        "testnet" | "testnet3" | "test" => Some(Network::Testnet),
        "testnet4" => Some(Network::Testnet4),
        "signet" => Some(Network::Signet),
        "regtest" => Some(Network::Regtest),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The genesis coinbase address and its scripthash as published with the Electrum
    // protocol documentation.
    const GENESIS: &str = "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa";
    const GENESIS_SH: &str = "8b01df4e368ea28f8dc0423bcf7a4923e3a12d307c875e47a0cfbf90b5c39161";

    #[test]
    fn known_vector() {
        assert_eq!(script_hash(GENESIS, Network::Bitcoin).unwrap(), GENESIS_SH);
        // The same key hash with the test-network prefix has the same output script.
        assert_eq!(
            script_hash("mpXwg4jMtRhuSpVq4xS3HFHmCmWp9NyGKt", Network::Regtest).unwrap(),
            GENESIS_SH
        );
    }

    #[test]
    fn wrong_network_and_garbage() {
        assert_eq!(
            script_hash(GENESIS, Network::Regtest),
            Err(AddressError::WrongNetwork(Network::Regtest))
        );
        assert!(matches!(
            script_hash("not-an-address", Network::Bitcoin),
            Err(AddressError::Invalid(_))
        ));
    }

    #[test]
    fn network_names() {
        assert_eq!(parse_network("Regtest"), Some(Network::Regtest));
        assert_eq!(parse_network("mainnet"), Some(Network::Bitcoin));
        assert_eq!(parse_network("nonsense"), None);
    }
}
