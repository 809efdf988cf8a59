//! Hard-coded (height, block hash) pairs for the public networks.
//!
//! A header at a checkpoint height must have exactly this hash, so an upstream cannot feed the
//! gateway a different history below the newest checkpoint however much work it fakes. Every
//! hash here was taken from a public source, never typed from memory:
//! - mainnet 11111 to 295000, testnet3 546: Bitcoin Core `chainparams.cpp` `checkpointData`;
//! - mainnet 840000 and 880000, testnet3 2500000, testnet4 90000 and 120000, signet 160000: the
//!   block hashes of Bitcoin Core's `m_assumeutxo_data` in `kernel/chainparams.cpp`;
//! - mainnet 478559, 630000 and 700000: block explorers and several independent projects agree.
//!
//! Mainnet 556767 is left out on purpose: the public sources disagree about the BTC-side hash
//! at that height (the well-known hash there is the BCH/BSV split block).

use std::str::FromStr;

use bitcoin::{BlockHash, Network};

/// A block hash the chain must have at a given height.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Height of the block.
    pub height: u32,
    /// Hash the block at `height` must have.
    pub hash: BlockHash,
}

const MAINNET: &[(u32, &str)] = &[
    (
        11111,
        "0000000069e244f73d78e8fd29ba2fd2ed618bd6fa2ee92559f542fdb26e7c1d",
    ),
    (
        33333,
        "000000002dd5588a74784eaa7ab0507a18ad16a236e7b1ce69f00d7ddfb5d0a6",
    ),
    (
        74000,
        "0000000000573993a3c9e41ce34471c079dcf5f52a0e824a81e7f953b8661a20",
    ),
    (
        105000,
        "00000000000291ce28027faea320c8d2b054b2e0fe44a773f3eefb151d6bdc97",
    ),
    (
        134444,
        "00000000000005b12ffd4cd315cd34ffd4a594f430ac814c91184a0d42d2b0fe",
    ),
    (
        168000,
        "000000000000099e61ea72015e79632f216fe6cb33d7899acb35b75c8303b763",
    ),
    (
        193000,
        "000000000000059f452a5f7340de6682a977387c17010ff6e6c3bd83ca8b1317",
    ),
    (
        210000,
        "000000000000048b95347e83192f69cf0366076336c639f9b7228e9ba171342e",
    ),
    (
        216116,
        "00000000000001b4f4b433e81ee46494af945cf96014816a4e2370f11b23df4e",
    ),
    (
        225430,
        "00000000000001c108384350f74090433e7fcf79a606b8e797f065b130575932",
    ),
    (
        250000,
        "000000000000003887df1f29024b06fc2200b55f8af8f35453d7be294df2d214",
    ),
    (
        279000,
        "0000000000000001ae8c72a0b0c301f67e3afca10e819efa9041e458e9bd7e40",
    ),
    (
        295000,
        "00000000000000004d9b4ef50f0f9d686fd69db2e03af35a100370c64632a983",
    ),
    (
        478559,
        "00000000000000000019f112ec0a9982926f1258cdcc558dd7c3b7e5dc7fa148",
    ),
    (
        630000,
        "000000000000000000024bead8df69990852c202db0e0097c1a12ea637d7e96d",
    ),
    (
        700000,
        "0000000000000000000590fc0f3eba193a278534220b2b37e9849e1a770ca959",
    ),
    (
        840000,
        "0000000000000000000320283a032748cef8227873ff4872689bf23f1cda83a5",
    ),
    (
        880000,
        "000000000000000000010b17283c3c400507969a9c2afd1dcf2082ec5cca2880",
    ),
];

const TESTNET3: &[(u32, &str)] = &[
    (
        546,
        "000000002a936ca763904c3c35fce2f3556c559c0214345d31b1bcebf76acb70",
    ),
    (
        2500000,
        "0000000000000093bcb68c03a9a168ae252572d348a2eaeba2cdf9231d73206f",
    ),
];

const TESTNET4: &[(u32, &str)] = &[
    (
        90000,
        "0000000002ebe8bcda020e0dd6ccfbdfac531d2f6a81457191b99fc2df2dbe3b",
    ),
    (
        120000,
        "000000000bd2317e51b3c5794981c35ba894ce27d3e772d5c39ecd9cbce01dc8",
    ),
];

const SIGNET: &[(u32, &str)] = &[(
    160000,
    "0000003ca3c99aff040f2563c2ad8f8ec88bd0fd6b8f0895cfaf1ef90353a62c",
)];

/// The checkpoints of `network`, sorted by height. Regtest has none.
pub fn checkpoints(network: Network) -> Vec<Checkpoint> {
    let table = match network {
        Network::Bitcoin => MAINNET,
        Network::Testnet => TESTNET3,
        Network::Testnet4 => TESTNET4,
        Network::Signet => SIGNET,
        Network::Regtest => &[],
    };
    table
        .iter()
        .map(|&(height, hex)| Checkpoint {
            height,
            // The tables are constants checked by the tests below.
            hash: BlockHash::from_str(hex).expect("checkpoint table holds valid hashes"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_parse_sorted_and_look_like_proof_of_work() {
        for net in [
            Network::Bitcoin,
            Network::Testnet,
            Network::Testnet4,
            Network::Signet,
            Network::Regtest,
        ] {
            let cps = checkpoints(net);
            assert!(cps.windows(2).all(|w| w[0].height < w[1].height), "{net}");
            for cp in &cps {
                // Every real block hash at these heights starts with at least 24 zero bits
                // (signet's easier limit still needs 22); a typo would almost surely not.
                assert!(
                    cp.hash.to_string().starts_with("000000"),
                    "{net} {}",
                    cp.height
                );
            }
        }
        assert_eq!(checkpoints(Network::Bitcoin).len(), 18);
        assert!(checkpoints(Network::Regtest).is_empty());
    }
}
