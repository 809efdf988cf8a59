//! What a broadcast's answers decide ([`super::router::Router::broadcast`]): the verdict from
//! the upstreams in step so far, the rejection to pass on, and what counts as "already known".

use crate::protocol::RpcError;

/// The verdict on a broadcast from the upstreams in step so far: `Some(true)` once at least two
/// accepted it and rejections cannot outnumber acceptances even if every pending one rejects;
/// `Some(false)` once that can no longer happen; `None` while pending answers may decide.
/// (Policy differences such as full-RBF or a higher minimum fee on one server are outvoted by
/// the others either way.)
pub fn broadcast_verdict(accepted: usize, rejected: usize, pending: usize) -> Option<bool> {
    if accepted >= 2 && accepted > rejected + pending {
        Some(true)
    } else if accepted + pending < 2 || rejected >= accepted + pending {
        Some(false)
    } else if pending == 0 {
        // Two or more accepted but as many rejected: no majority either way.
        Some(false)
    } else {
        None
    }
}

/// The error message given most often (the first of those tied).
pub fn most_common(errors: &[RpcError]) -> Option<RpcError> {
    errors
        .iter()
        .max_by_key(|e| {
            (
                errors.iter().filter(|o| o.message == e.message).count(),
                std::cmp::Reverse(errors.iter().position(|o| o.message == e.message)),
            )
        })
        .cloned()
}

/// True for a node's "I have this transaction already" rejection. Bitcoin Core 28 and
/// later say "Transaction outputs already in utxo set" for a confirmed transaction.
pub fn is_already_known(e: &RpcError) -> bool {
    let m = e.message.to_ascii_lowercase();
    m.contains("already known")
        || m.contains("already-known")
        || m.contains("already in utxo set")
        || m.contains("already in block chain")
        || m.contains("already in the block chain")
        || m.contains("txn-already-in-mempool")
        || m.contains("already in mempool")
}

/// The txid of a raw transaction in hex, if it parses.
pub fn txid_of_hex(raw: &str) -> Option<String> {
    use bitcoin::consensus::Decodable;
    use bitcoin::hex::FromHex;
    let bytes = Vec::<u8>::from_hex(raw).ok()?;
    let tx = bitcoin::Transaction::consensus_decode(&mut bytes.as_slice()).ok()?;
    Some(tx.compute_txid().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broadcast_needs_two_upstreams_and_no_majority_against_it() {
        // One acceptance, however fast, is not enough.
        assert_eq!(broadcast_verdict(1, 0, 1), None);
        assert_eq!(broadcast_verdict(1, 0, 0), Some(false));
        assert_eq!(broadcast_verdict(1, 1, 0), Some(false));
        // Two acceptances out of three: success once the third cannot outweigh them.
        assert_eq!(broadcast_verdict(2, 0, 1), Some(true));
        assert_eq!(broadcast_verdict(2, 1, 0), Some(true));
        // A liar accepting what two honest upstreams reject.
        assert_eq!(broadcast_verdict(1, 2, 0), Some(false));
        assert_eq!(broadcast_verdict(1, 1, 1), None);
        // Two against two: no majority.
        assert_eq!(broadcast_verdict(2, 2, 0), Some(false));
        assert_eq!(broadcast_verdict(2, 1, 1), None);
        let e = |m: &str| RpcError::new(2, m);
        assert_eq!(
            most_common(&[e("a"), e("b"), e("b")]).map(|e| e.message),
            Some("b".to_string())
        );
        assert_eq!(
            most_common(&[e("a"), e("b")]).map(|e| e.message),
            Some("a".to_string())
        );
    }

    #[test]
    fn already_known_rejections() {
        assert!(is_already_known(&RpcError::new(2, "txn-already-known")));
        assert!(is_already_known(&RpcError::new(
            2,
            "Transaction already in block chain"
        )));
        assert!(is_already_known(&RpcError::new(
            1,
            "the transaction was rejected by network rules.\n\nTransaction outputs already in utxo set\n[02...]"
        )));
        assert!(!is_already_known(&RpcError::new(
            2,
            "bad-txns-inputs-missingorspent"
        )));
    }
}
