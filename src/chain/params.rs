//! Everything that makes one header chain different from another: consensus parameters from
//! the `bitcoin` crate, the genesis header, testnet4's extra rules and the checkpoints.
//!
//! The fields are public so tests (and private test networks) can build easy-to-mine chains
//! with retargeting enabled, which no public network allows.

use bitcoin::block::Header;
use bitcoin::blockdata::constants::genesis_block;
use bitcoin::consensus::Params;
use bitcoin::pow::CompactTarget;
use bitcoin::Network;

use super::checkpoints::{checkpoints, Checkpoint};

/// The rules a [`HeaderChain`](super::HeaderChain) enforces.
#[derive(Debug, Clone)]
pub struct ChainParams {
    /// Consensus parameters: proof-of-work limit, retarget interval, min-difficulty and
    /// no-retargeting flags, BIP34/65/66 heights.
    pub consensus: Params,
    /// Header of block 0; the chain starts here and never reorganises it.
    pub genesis: Header,
    /// Testnet4 (BIP-94) rules: retarget from the first block of the period and reject a
    /// period's first block timestamped more than 600 s before its parent.
    pub bip94: bool,
    /// Headers at these heights must have these hashes. Sorted by height.
    pub checkpoints: Vec<Checkpoint>,
}

impl ChainParams {
    /// The parameters of a public network (or regtest).
    pub fn new(network: Network) -> ChainParams {
        let consensus = Params::new(network);
        ChainParams {
            genesis: genesis_block(&consensus).header,
            consensus,
            bip94: network == Network::Testnet4,
            checkpoints: checkpoints(network),
        }
    }

    /// The network these parameters describe.
    pub fn network(&self) -> Network {
        self.consensus.network
    }

    /// Blocks per difficulty period (2016 on every public network).
    pub fn interval(&self) -> u32 {
        // A zero spacing would be a broken parameter set; treat it as one block per period
        // instead of dividing by zero.
        let blocks = self.consensus.pow_target_timespan / self.consensus.pow_target_spacing.max(1);
        u32::try_from(blocks).unwrap_or(u32::MAX).max(1)
    }

    /// The compact form of the proof-of-work limit: the bits every min-difficulty block has.
    pub fn pow_limit_bits(&self) -> CompactTarget {
        self.consensus.max_attainable_target.to_compact_lossy()
    }

    /// The checkpoint at `height`, if any.
    pub fn checkpoint_at(&self, height: u32) -> Option<&Checkpoint> {
        self.checkpoints
            .binary_search_by_key(&height, |cp| cp.height)
            .ok()
            .map(|i| &self.checkpoints[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pow_limit_bits_match_the_networks() {
        // Compact limits as written in Bitcoin Core's chainparams and genesis blocks.
        assert_eq!(
            ChainParams::new(Network::Bitcoin)
                .pow_limit_bits()
                .to_consensus(),
            0x1d00ffff
        );
        assert_eq!(
            ChainParams::new(Network::Testnet)
                .pow_limit_bits()
                .to_consensus(),
            0x1d00ffff
        );
        assert_eq!(
            ChainParams::new(Network::Signet)
                .pow_limit_bits()
                .to_consensus(),
            0x1e0377ae
        );
        assert_eq!(
            ChainParams::new(Network::Regtest)
                .pow_limit_bits()
                .to_consensus(),
            0x207fffff
        );
        for net in [Network::Bitcoin, Network::Testnet4, Network::Regtest] {
            assert_eq!(ChainParams::new(net).interval(), 2016);
        }
        assert!(ChainParams::new(Network::Testnet4).bip94);
        assert!(!ChainParams::new(Network::Testnet).bip94);
    }
}
