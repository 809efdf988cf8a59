//! The pure answer checks: merkle proofs against a header's root, header proofs against a
//! checkpoint root, transactions against their txid, broadcasts, histories and their status
//! hashes. They must never panic, and what they accept must hold: a merkle proof they accept
//! folds to the root, a status they accept is the hash of the history, a transaction they accept
//! hashes to its txid; and a correct proof built here is accepted.
#![no_main]

use arbitrary::Arbitrary;
use bitcoin::hashes::{sha256d, Hash};
use bitcoin::{TxMerkleNode, Txid};
use electrum_gateway::chain::merkle;
use electrum_gateway::chain::{
    check_broadcast, check_header_proof, check_merkle, check_status, check_transaction,
    parse_history, status_hash, txid_of, MerkleAnswer,
};
use libfuzzer_sys::fuzz_target;
use std::str::FromStr;

#[derive(Arbitrary, Debug)]
enum Input {
    /// A `blockchain.transaction.get_merkle` answer (JSON) for `txid`, checked against the root
    /// its own branch folds to, or against `other_root`.
    Merkle {
        txid: [u8; 32],
        answer: String,
        other_root: Option<[u8; 32]>,
    },
    /// A tree of `count` leaves (distinct hashes from `seed`) and a branch built for `pos`,
    /// padded to `length`; and an arbitrary branch folded from `leaf`.
    Tree {
        seed: u8,
        count: u16,
        pos: u64,
        length: Option<u8>,
        leaf: [u8; 32],
        branch: Vec<[u8; 32]>,
        reject_tx_shaped: bool,
    },
    /// A header proof: an 80-byte header at `height` with `branch` against `root` (or the root
    /// the branch folds to) at `cp_height`.
    HeaderProof {
        header: [u8; 80],
        height: u32,
        branch: Vec<String>,
        root: Option<String>,
        cp_height: u32,
    },
    /// A raw transaction (hex) against a claimed txid, as a `transaction.get` answer and as
    /// what a broadcast returned.
    Transaction { txid: String, raw: String },
    /// A history (JSON) and a status.
    Status {
        history: String,
        status: Option<String>,
    },
}

fn hex_hash(s: &str) -> Option<sha256d::Hash> {
    sha256d::Hash::from_str(s.trim()).ok()
}

fuzz_target!(|input: Input| {
    match input {
        Input::Merkle {
            txid,
            answer,
            other_root,
        } => {
            let Ok(parsed) = MerkleAnswer::parse(&answer) else {
                return;
            };
            let txid = Txid::from_byte_array(txid);
            let nodes: Option<Vec<sha256d::Hash>> =
                parsed.merkle.iter().map(|s| hex_hash(s)).collect();
            let folded = nodes
                .as_ref()
                .and_then(|n| merkle::fold(txid.to_raw_hash(), n, parsed.pos, true).ok());
            let root = match (other_root, folded) {
                (Some(r), _) => sha256d::Hash::from_byte_array(r),
                (None, Some(r)) => r,
                (None, None) => sha256d::Hash::all_zeros(),
            };
            let ok = check_merkle(
                &txid,
                parsed.pos,
                &parsed.merkle,
                &TxMerkleNode::from_raw_hash(root),
            )
            .is_ok();
            if ok {
                assert_eq!(folded, Some(root), "accepted a proof that does not fold");
            } else if other_root.is_none() && folded.is_some() {
                // Refused although it folds: only for a branch over the length limit.
                assert!(parsed.merkle.len() > 30, "{parsed:?} refused");
            }
        }
        Input::Tree {
            seed,
            count,
            pos,
            length,
            leaf,
            branch,
            reject_tx_shaped,
        } => {
            let count = usize::from(count % 1200);
            let hashes: Vec<sha256d::Hash> = (0..count)
                .map(|i| sha256d::Hash::hash(&[&[seed][..], &(i as u64).to_le_bytes()].concat()))
                .collect();
            let length = length.map(|l| usize::from(l % 24));
            match merkle::branch_and_root(&hashes, (pos % 4096) as usize, length) {
                Some((br, root)) => {
                    let p = (pos % 4096) as usize;
                    assert!(p < count);
                    assert!(br.len() >= merkle::branch_length(count));
                    assert_eq!(merkle::root(&hashes, length), Some(root));
                    // A branch built for a leaf folds back to its root.
                    assert_eq!(
                        merkle::fold(hashes[p], &br, p as u64, false),
                        Ok(root),
                        "count {count} pos {p}"
                    );
                }
                None => assert!((pos % 4096) as usize >= count),
            }
            let branch: Vec<sha256d::Hash> = branch
                .into_iter()
                .map(sha256d::Hash::from_byte_array)
                .collect();
            let _ = merkle::fold(
                sha256d::Hash::from_byte_array(leaf),
                &branch,
                pos,
                reject_tx_shaped,
            );
        }
        Input::HeaderProof {
            header,
            height,
            branch,
            root,
            cp_height,
        } => {
            let Ok(header) = bitcoin::consensus::deserialize::<bitcoin::block::Header>(&header)
            else {
                return;
            };
            let folded = branch
                .iter()
                .map(|s| hex_hash(s))
                .collect::<Option<Vec<_>>>()
                .and_then(|n| {
                    merkle::fold(
                        header.block_hash().to_raw_hash(),
                        &n,
                        u64::from(height),
                        false,
                    )
                    .ok()
                });
            let root = root.unwrap_or_else(|| folded.map_or_else(String::new, |r| r.to_string()));
            let ok = check_header_proof(&header, height, &branch, &root, cp_height).is_ok();
            if ok {
                assert_eq!(
                    folded,
                    hex_hash(&root),
                    "accepted a proof that does not fold"
                );
                assert!(height <= cp_height);
            }
        }
        Input::Transaction { txid, raw } => {
            let _ = txid_of(&raw);
            if check_transaction(&txid, &raw).is_ok() {
                let computed = txid_of(&raw).expect("an accepted transaction decodes");
                assert_eq!(
                    Some(computed),
                    Txid::from_str(txid.trim()).ok(),
                    "accepted under another txid"
                );
            }
            let _ = check_broadcast(&raw, &txid);
        }
        Input::Status { history, status } => {
            let parsed = parse_history(&history);
            if check_status(&history, status.as_deref()).is_ok() {
                let parsed = parsed.expect("an accepted history parses");
                match (status_hash(&parsed), status) {
                    (None, None) => {}
                    (Some(a), Some(b)) => assert!(a.eq_ignore_ascii_case(b.trim())),
                    (a, b) => panic!("status {b:?} accepted for {a:?}"),
                }
            }
        }
    }
});
