//! The verified header chain and the checks on upstream answers.
//!
//! The gateway talks to several upstream Electrum servers so that no single one can lie to a
//! wallet. Whatever can be proven is proven here, locally: the header chain is downloaded from
//! genesis and every header is checked against the consensus rules (links, proof of work,
//! difficulty, checkpoints, timestamps), the best chain is the one with most work, and
//! transactions, merkle proofs, header proofs, statuses and broadcasts are checked against it.
//! What cannot be proven (histories' completeness, fee estimates) is compared between
//! upstreams with the helpers in [`verify`]; `crate::verify` applies all of it to upstreams. See
//! `docs/trust.md` for the full trust model.
//!
//! - [`headers`]: [`HeaderChain`], the best chain, forks and header proofs;
//! - [`store`]: the on-disk copy of the best chain;
//! - `work`: cumulative proof of work, indexed every 2016 heights;
//! - [`difficulty`]: which bits the next header must carry;
//! - [`params`] and [`mod@checkpoints`]: what differs between networks;
//! - [`merkle`]: Electrum-style merkle branches;
//! - [`verify`]: pure checks on answers.

pub mod checkpoints;
pub mod difficulty;
pub mod headers;
pub mod merkle;
pub mod params;
pub mod store;
pub mod verify;
mod work;

pub use checkpoints::{checkpoints, Checkpoint};
pub use headers::{
    check_own_work, parse_headers_hex, Accepted, HeaderChain, HeaderProof, ProofError,
    RejectReason, Rejected, Tip, DEFAULT_REORG_WINDOW,
};
pub use params::ChainParams;
pub use store::{HeaderStore, StoreError};
pub use verify::{
    check_broadcast, check_header_proof, check_merkle, check_status, check_transaction,
    confirmed_part, decode_transaction, fee_consensus, histories_agree, parse_history, status_hash,
    txid_of, witness_matters, HistoryEntry, MerkleAnswer, VerifyError,
};

#[cfg(test)]
mod tests;
