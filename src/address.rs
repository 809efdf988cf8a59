//! Bitcoin addresses to Electrum script hashes.
//!
//! Servers index coins by *script hash*, the reversed SHA-256 of an output's scriptPubKey, in
//! hex. The old `blockchain.address.*` methods took an address instead; no current server serves
//! them, so the gateway (and the client library) turns the address into its script hash and calls
//! the `blockchain.scripthash.*` twin. The conversion must know the network: testnet, testnet4
//! and signet share address prefixes (`tb1`, `m`/`n`, `2`), regtest uses `bcrt1` for segwit but
//! the testnet prefixes for base58, and an address of another network must be refused rather
//! than silently watched on the wrong chain.

use bitcoin::hashes::{sha256, Hash};
use bitcoin::hex::DisplayHex;
use bitcoin::{Address, Network, Script};

/// The longest string that can be an address: bech32 strings are at most 90 characters, base58
/// addresses far fewer. Longer input is refused before decoding (base58 decoding is quadratic).
const MAX_ADDRESS_LEN: usize = 90;

/// Why an address could not be turned into a script hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Not an address at all: bad characters, checksum, length or encoding. Holds the reason.
    #[error("invalid address: {0}")]
    Invalid(String),
    /// A well-formed address of another network than the configured one.
    #[error("address {address} is not valid on {expected}")]
    WrongNetwork {
        /// The address as given.
        address: String,
        /// The name of the configured network (see [`network_name`]).
        expected: String,
    },
}

/// The Electrum script hash of `address` on `network`: 64 lowercase hex characters.
///
/// Accepts every address kind the network knows: P2PKH, P2SH, P2WPKH, P2WSH, P2TR, and also
/// future segwit versions, whose scriptPubKey is just as well defined. Surrounding whitespace is
/// ignored; bech32 addresses may be upper case.
pub fn script_hash(address: &str, network: Network) -> Result<String, AddressError> {
    let address = address.trim();
    if address.is_empty() {
        return Err(AddressError::Invalid("empty string".into()));
    }
    if address.len() > MAX_ADDRESS_LEN {
        return Err(AddressError::Invalid(format!(
            "longer than {MAX_ADDRESS_LEN} characters"
        )));
    }
    let unchecked: Address<bitcoin::address::NetworkUnchecked> = address
        .parse()
        .map_err(|e: bitcoin::address::ParseError| AddressError::Invalid(e.to_string()))?;
    if !unchecked.is_valid_for_network(network) {
        return Err(AddressError::WrongNetwork {
            address: address.to_string(),
            expected: network_name(network).to_string(),
        });
    }
    Ok(script_hash_of_script(
        &unchecked.assume_checked().script_pubkey(),
    ))
}

/// The Electrum script hash of a scriptPubKey: hex of the reversed SHA-256 of its bytes.
pub fn script_hash_of_script(script: &Script) -> String {
    let mut bytes = sha256::Hash::hash(script.as_bytes()).to_byte_array();
    bytes.reverse();
    bytes.to_lower_hex_string()
}

/// A network by name, case-insensitively: `bitcoin`/`mainnet`/`main`, `testnet`/`testnet3`,
/// `testnet4`, `signet`, `regtest`.
pub fn parse_network(name: &str) -> Option<Network> {
    match name.trim().to_ascii_lowercase().as_str() {
        "bitcoin" | "mainnet" | "main" => Some(Network::Bitcoin),
        "testnet" | "testnet3" => Some(Network::Testnet),
        "testnet4" => Some(Network::Testnet4),
        "signet" => Some(Network::Signet),
        "regtest" => Some(Network::Regtest),
        _ => None,
    }
}

/// The canonical name of a network, accepted back by [`parse_network`].
pub fn network_name(network: Network) -> &'static str {
    match network {
        Network::Bitcoin => "bitcoin",
        Network::Testnet => "testnet",
        Network::Testnet4 => "testnet4",
        Network::Signet => "signet",
        Network::Regtest => "regtest",
    }
}

/// True if `s` looks like a script hash: exactly 64 hex digits (either case, as servers accept).
pub fn is_scripthash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hex::FromHex;

    /// The expected script hash, computed here from the scriptPubKey hex of a test vector
    /// rather than through address parsing.
    fn expected(script_hex: &str) -> String {
        let script = Vec::<u8>::from_hex(script_hex).unwrap();
        let mut h = sha256::Hash::hash(&script).to_byte_array();
        h.reverse();
        h.iter().map(|b| format!("{b:02x}")).collect()
    }

    const ALL: [Network; 5] = [
        Network::Bitcoin,
        Network::Testnet,
        Network::Testnet4,
        Network::Signet,
        Network::Regtest,
    ];

    /// (address, scriptPubKey hex, networks the address is valid on).
    /// Segwit vectors come from BIP-173 and BIP-350; base58 ones are the genesis-block address
    /// (hash160 62e907b1...) and the well-known P2SH example 3J98t1Wp... (hash160 b472a266...),
    /// and their testnet encodings with the same hashes.
    fn vectors() -> Vec<(&'static str, &'static str, Vec<Network>)> {
        use Network::*;
        let test_like = vec![Testnet, Testnet4, Signet];
        let base58_test = vec![Testnet, Testnet4, Signet, Regtest];
        vec![
            // P2PKH
            (
                "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa",
                "76a91462e907b15cbf27d5425399ebf6f0fb50ebb88f1888ac",
                vec![Bitcoin],
            ),
            (
                "mpXwg4jMtRhuSpVq4xS3HFHmCmWp9NyGKt",
                "76a91462e907b15cbf27d5425399ebf6f0fb50ebb88f1888ac",
                base58_test.clone(),
            ),
            // P2SH
            (
                "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy",
                "a914b472a266d0bd89c13706a4132ccfb16f7c3b9fcb87",
                vec![Bitcoin],
            ),
            (
                "2N9hLwkSqr1cPQAPxbrGVUjxyjD11G2e1he",
                "a914b472a266d0bd89c13706a4132ccfb16f7c3b9fcb87",
                base58_test,
            ),
            // P2WPKH
            (
                "BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4",
                "0014751e76e8199196d454941c45d1b3a323f1433bd6",
                vec![Bitcoin],
            ),
            (
                "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx",
                "0014751e76e8199196d454941c45d1b3a323f1433bd6",
                test_like.clone(),
            ),
            (
                "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080",
                "0014751e76e8199196d454941c45d1b3a323f1433bd6",
                vec![Regtest],
            ),
            // P2WSH
            (
                "bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3",
                "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262",
                vec![Bitcoin],
            ),
            (
                "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
                "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262",
                test_like.clone(),
            ),
            (
                "tb1qqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesrxh6hy",
                "0020000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433",
                test_like.clone(),
            ),
            (
                "bcrt1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qzf4jry",
                "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262",
                vec![Regtest],
            ),
            // P2TR
            (
                "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
                "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798",
                vec![Bitcoin],
            ),
            (
                "tb1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesf3hn0c",
                "5120000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433",
                test_like,
            ),
            (
                "bcrt1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqc8gma6",
                "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798",
                vec![Regtest],
            ),
            // Future segwit versions (BIP-350): well-defined scripts, converted as well.
            (
                "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y",
                "5128751e76e8199196d454941c45d1b3a323f1433bd6751e76e8199196d454941c45d1b3a323f1433bd6",
                vec![Bitcoin],
            ),
            ("BC1SW50QGDZ25J", "6002751e", vec![Bitcoin]),
        ]
    }

    #[test]
    fn electrum_documentation_example() {
        assert_eq!(
            script_hash("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", Network::Bitcoin).unwrap(),
            "8b01df4e368ea28f8dc0423bcf7a4923e3a12d307c875e47a0cfbf90b5c39161"
        );
        let script =
            Vec::<u8>::from_hex("76a91462e907b15cbf27d5425399ebf6f0fb50ebb88f1888ac").unwrap();
        assert_eq!(
            script_hash_of_script(Script::from_bytes(&script)),
            "8b01df4e368ea28f8dc0423bcf7a4923e3a12d307c875e47a0cfbf90b5c39161"
        );
    }

    #[test]
    fn every_kind_on_every_network() {
        for (address, script_hex, valid_on) in vectors() {
            for network in ALL {
                let got = script_hash(address, network);
                if valid_on.contains(&network) {
                    let got = got.unwrap_or_else(|e| panic!("{address} on {network}: {e}"));
                    assert_eq!(got, expected(script_hex), "{address} on {network}");
                    assert!(is_scripthash(&got));
                    assert_eq!(got, got.to_lowercase());
                } else {
                    assert_eq!(
                        got,
                        Err(AddressError::WrongNetwork {
                            address: address.to_string(),
                            expected: network_name(network).to_string(),
                        }),
                        "{address} on {network}"
                    );
                }
            }
        }
    }

    #[test]
    fn wrong_network_error_reads_well() {
        let e = script_hash(
            "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx",
            Network::Regtest,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "address tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx is not valid on regtest"
        );
    }

    #[test]
    fn garbage_is_invalid() {
        let long = "1".repeat(10_000);
        for bad in [
            "",
            "   ",
            "hello",
            "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb", // bad base58 checksum
            "1A1zP1eP5QGefi2DMPTfTL5SLmv7Divf0a", // '0' is not base58
            "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5", // bad bech32 checksum
            "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7k7grplx", // v1 with bech32, not bech32m (BIP-350)
            "BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P", // v0 program of 16 bytes
            "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh", // v0 with bech32m checksum
            "ltc1qw508d6qejxtdg4y5r3zarvary0c5xw7kgmn4n9", // unknown prefix
            "8b01df4e368ea28f8dc0423bcf7a4923e3a12d307c875e47a0cfbf90b5c39161", // a script hash
            long.as_str(),
        ] {
            for network in ALL {
                match script_hash(bad, network) {
                    Err(AddressError::Invalid(reason)) => assert!(!reason.is_empty()),
                    other => panic!("{bad:?} on {network}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn surrounding_whitespace_is_ignored() {
        assert_eq!(
            script_hash(" 1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa\n", Network::Bitcoin).unwrap(),
            expected("76a91462e907b15cbf27d5425399ebf6f0fb50ebb88f1888ac")
        );
    }

    #[test]
    fn network_names() {
        for network in ALL {
            assert_eq!(parse_network(network_name(network)), Some(network));
        }
        for (name, network) in [
            ("mainnet", Network::Bitcoin),
            ("main", Network::Bitcoin),
            ("Bitcoin", Network::Bitcoin),
            ("testnet3", Network::Testnet),
            ("TESTNET4", Network::Testnet4),
            ("signet", Network::Signet),
        ] {
            assert_eq!(parse_network(name), Some(network), "{name}");
        }
        assert_eq!(parse_network("liquid"), None);
        assert_eq!(parse_network(""), None);
    }

    #[test]
    fn scripthash_shape() {
        let good = "8b01df4e368ea28f8dc0423bcf7a4923e3a12d307c875e47a0cfbf90b5c39161";
        assert!(is_scripthash(good));
        assert!(is_scripthash(&good.to_uppercase()));
        assert!(!is_scripthash(&good[1..]));
        assert!(!is_scripthash(&format!("{good}0")));
        assert!(!is_scripthash(&good.replace('8', "g")));
        assert!(!is_scripthash(""));
    }
}
