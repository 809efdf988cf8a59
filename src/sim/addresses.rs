//! The documented regtest addresses the simulated chain pays.
//!
//! Tests and wallet developers need addresses whose history is known in advance, so the set is
//! fixed: eight addresses of every common kind, derived from the private keys 1 to 8 (a 32-byte
//! big-endian integer). The strings are constants so that a reader can copy them; a unit test
//! re-derives each one from its key.

use bitcoin::hashes::{sha256, Hash};
use bitcoin::{Address, Network, Script};
use std::str::FromStr;

/// One documented address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimAddress {
    /// The regtest address.
    pub address: &'static str,
    /// Its kind: `p2wpkh`, `p2pkh`, `p2sh-p2wpkh`, `p2wsh` or `p2tr`.
    pub kind: &'static str,
    /// The private key it derives from, as a small integer (1 to 8).
    pub key: u8,
    /// The Electrum scripthash of its output script.
    pub scripthash: &'static str,
}

/// The addresses the simulated chain pays, in the order blocks cycle through them.
pub const ADDRESSES: [SimAddress; 8] = [
    SimAddress {
        address: "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080",
        kind: "p2wpkh",
        key: 1,
        scripthash: "9623df75239b5daa7f5f03042d325b51498c4bb7059c7748b17049bf96f73888",
    },
    SimAddress {
        address: "mg8Jz5776UdyiYcBb9Z873NTozEiADRW5H",
        kind: "p2pkh",
        key: 2,
        scripthash: "79d6fedf08b0a964f2b364c31d2e4f45e5f87f452ede6d1797ae11e83b71f0cd",
    },
    SimAddress {
        address: "2N2uFi5LbDQQwTqAVd5veF6qE9hWww2DVzF",
        kind: "p2sh-p2wpkh",
        key: 3,
        scripthash: "4d3611dab7c887dd7377c18b04295edce510d6f8749d06d89f376e65feee9df0",
    },
    SimAddress {
        address: "bcrt1qs7ql5gdkuzqvqf3zh2rwpmdmasnw9qtdgvhzujug3gtsdl99sdusve6jl0",
        kind: "p2wsh",
        key: 4,
        scripthash: "ee641be925c1f29ad854765fca179e5daeb1f01b0c35137615d31d0bcf32cfcc",
    },
    SimAddress {
        address: "bcrt1paecncecu260mkwvsr63lw5v4s496v9gfn2en56hv4f0d2w2j97fspc8rg9",
        kind: "p2tr",
        key: 5,
        scripthash: "7e0ccba0cbdcb119a929797da8ca9a04cb6238f23067e170def1ba970e5887db",
    },
    SimAddress {
        address: "bcrt1q0ldfeupqc9k2eaffep7cm6yml3ct3jwtxdz4jv",
        kind: "p2wpkh",
        key: 6,
        scripthash: "76d3d8014359ec9327d3f46a787bd007338b2b10e9bd795146dd5c7c83852604",
    },
    SimAddress {
        address: "mp5cELDJZ2pUNYrF1i5dCyT34j48UzaKRU",
        kind: "p2pkh",
        key: 7,
        scripthash: "80416fa8b5ee90659ee7b67102d4c81770d476ebc9542e70be0eebd76177a9ac",
    },
    SimAddress {
        address: "bcrt1p5ju3f0m0dz3y4hgynde804krzz2grxr8chytzgew4fxmk5lunzlq5gm0ln",
        kind: "p2tr",
        key: 8,
        scripthash: "802c2080a53fc485d5c0ab231b386b8ec55543a5d95df880aed2f2cf76e52acb",
    },
];

/// The Electrum scripthash of an output script: sha256 of the script, byte-reversed, in hex.
pub fn script_hash_hex(script: &Script) -> String {
    use bitcoin::hex::DisplayHex;
    let mut h = sha256::Hash::hash(script.as_bytes()).to_byte_array();
    h.reverse();
    h.to_lower_hex_string()
}

/// Parses an address and checks it is valid on regtest.
pub fn parse_regtest_address(s: &str) -> anyhow::Result<Address> {
    let a =
        Address::from_str(s.trim()).map_err(|e| anyhow::anyhow!("invalid address {s:?}: {e}"))?;
    a.require_network(Network::Regtest)
        .map_err(|e| anyhow::anyhow!("not a regtest address {s:?}: {e}"))
}

/// Derives the address of `kind` from the private key `key` (used to check [`ADDRESSES`]).
pub fn derive(kind: &str, key: u8) -> Option<Address> {
    use bitcoin::secp256k1::{Secp256k1, SecretKey};
    use bitcoin::{CompressedPublicKey, KnownHrp, ScriptBuf};
    let secp = Secp256k1::new();
    let mut bytes = [0u8; 32];
    bytes[31] = key;
    let sk = SecretKey::from_slice(&bytes).ok()?;
    let pk = CompressedPublicKey(sk.public_key(&secp));
    Some(match kind {
        "p2wpkh" => Address::p2wpkh(&pk, KnownHrp::Regtest),
        "p2pkh" => Address::p2pkh(pk, Network::Regtest),
        "p2sh-p2wpkh" => Address::p2shwpkh(&pk, Network::Regtest),
        "p2wsh" => {
            let script = ScriptBuf::builder()
                .push_slice(pk.to_bytes())
                .push_opcode(bitcoin::opcodes::all::OP_CHECKSIG)
                .into_script();
            Address::p2wsh(&script, KnownHrp::Regtest)
        }
        "p2tr" => {
            let (xonly, _) = pk.0.x_only_public_key();
            Address::p2tr(&secp, xonly, None, KnownHrp::Regtest)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_addresses_derive_from_their_keys() {
        let mut seen = std::collections::HashSet::new();
        for a in ADDRESSES {
            let derived = derive(a.kind, a.key).expect("known kind");
            assert_eq!(derived.to_string(), a.address, "key {}", a.key);
            let parsed = parse_regtest_address(a.address).expect("valid regtest address");
            assert_eq!(script_hash_hex(&parsed.script_pubkey()), a.scripthash);
            assert!(seen.insert(a.scripthash));
        }
        for kind in ["p2wpkh", "p2pkh", "p2sh-p2wpkh", "p2wsh", "p2tr"] {
            assert!(ADDRESSES.iter().any(|a| a.kind == kind), "{kind} missing");
        }
    }

    #[test]
    fn mainnet_address_refused() {
        assert!(parse_regtest_address("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4").is_err());
        assert!(parse_regtest_address("nonsense").is_err());
    }
}
