//! A block of the simulated chain.

use bitcoin::block::Header;
use bitcoin::{BlockHash, Transaction, Txid};
use std::sync::Arc;

/// A block of the simulated chain with its precomputed hash and txids.
#[derive(Debug, Clone)]
pub struct SimBlock {
    /// The header.
    pub header: Header,
    /// The block hash.
    pub hash: BlockHash,
    /// The transactions, coinbase first.
    pub txs: Vec<Arc<Transaction>>,
    /// Their txids, in the same order.
    pub txids: Vec<Txid>,
}

impl SimBlock {
    pub(crate) fn from_block(block: bitcoin::Block) -> SimBlock {
        let txids = block.txdata.iter().map(|t| t.compute_txid()).collect();
        SimBlock {
            hash: block.block_hash(),
            header: block.header,
            txs: block.txdata.into_iter().map(Arc::new).collect(),
            txids,
        }
    }
}
