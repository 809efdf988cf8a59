//! Verification: what stands between an upstream and a wallet.
//!
//! Three things live here, and nothing else decides what is true:
//! - [`ChainTracker`] ([`tracker`]): the gateway's own verified header chain (proof of work,
//!   retarget rules, checkpoints; [`crate::chain`] does the header maths), where every
//!   upstream's announced tip stands on it, and the linking of upstream branches;
//! - [`check`] ([`mod@check`]): the one entry point that checks an upstream's answer to a call
//!   against the verified chain (transactions, merkle proofs, broadcasts), plus the status and
//!   history checks of subscriptions. An answer that is not proven by itself is named there
//!   with what it still needs: an `id_from_pos` answer, the transaction it names
//!   ([`check_position_tx`]); a transaction whose witness matters, a second upstream's
//!   identical bytes ([`corroboration`]);
//! - [`Standing`] and [`Reason`] ([`standing`]): where an upstream stands (in step, demoted,
//!   sitting out a penalty) and the one list of reasons it is penalised or demoted for, which
//!   the metrics labels come from.
//!
//! What cannot be proven (balances, histories' completeness, fees) is voted on by the router
//! (`gateway::vote`). docs/trust.md says what is proven, voted and trusted.

pub mod check;
pub mod standing;
pub mod tracker;

pub use check::{
    check, check_history, check_history_status, check_position_tx, corroboration, position_txid,
    ProvenBlock, Verdict,
};
pub use standing::{Demotion, Reason, Standing};
pub use tracker::{headers_hex, ChainTracker, LinkGuard, Placement};
