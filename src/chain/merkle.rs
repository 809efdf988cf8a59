//! Bitcoin-style merkle branches as the Electrum protocol carries them.
//!
//! Leaves and nodes are `sha256d` hashes in internal byte order; on the wire they are hex in
//! display order (reversed), which is what `sha256d::Hash`'s `Display`/`FromStr` produce. A level
//! with an odd count duplicates its last hash. [`branch_and_root`] follows ElectrumX's
//! `Merkle.branch_and_root` exactly, including the optional forced `length` used to build a
//! branch inside one cached sub-tree.

use bitcoin::consensus::encode::deserialize;
use bitcoin::hashes::{sha256d, Hash};
use bitcoin::Transaction;

/// `sha256d(left || right)`.
pub fn combine(left: &sha256d::Hash, right: &sha256d::Hash) -> sha256d::Hash {
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(left.as_byte_array());
    buf[32..].copy_from_slice(right.as_byte_array());
    sha256d::Hash::hash(&buf)
}

/// Number of branch nodes for a tree of `count` leaves: `ceil(log2(count))`.
pub fn branch_length(count: usize) -> usize {
    if count <= 1 {
        0
    } else {
        (usize::BITS - (count - 1).leading_zeros()) as usize
    }
}

/// The branch for `hashes[index]` and the root, padding the tree to `length` levels when given
/// (a `length` shorter than the natural one is raised to it). `None` if `index` is out of range.
pub fn branch_and_root(
    hashes: &[sha256d::Hash],
    index: usize,
    length: Option<usize>,
) -> Option<(Vec<sha256d::Hash>, sha256d::Hash)> {
    if index >= hashes.len() {
        return None;
    }
    let length = length.unwrap_or(0).max(branch_length(hashes.len()));
    let mut level: Vec<sha256d::Hash> = hashes.to_vec();
    let mut index = index;
    let mut branch = Vec::with_capacity(length);
    for _ in 0..length {
        if level.len() % 2 == 1 {
            let last = level[level.len() - 1];
            level.push(last);
        }
        branch.push(level[index ^ 1]);
        index >>= 1;
        let next: Vec<sha256d::Hash> = level.chunks(2).map(|p| combine(&p[0], &p[1])).collect();
        level = next;
    }
    Some((branch, level[0]))
}

/// The root of `hashes` padded to `length` levels (see [`branch_and_root`]).
pub fn root(hashes: &[sha256d::Hash], length: Option<usize>) -> Option<sha256d::Hash> {
    branch_and_root(hashes, 0, length).map(|(_, root)| root)
}

/// Why folding a branch failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FoldError {
    /// `index` has bits left after the branch is used up: the position cannot be in this tree.
    #[error("position {0} out of range for a branch of {1} nodes")]
    IndexTooLarge(u64, usize),
    /// A right child equal to its left sibling: only a phantom position past the end of a
    /// level can have that (CVE-2012-2459 style duplication).
    #[error("duplicated node at level {0} on the left of the running hash")]
    Duplicate(usize),
    /// The 64 bytes hashed into an inner node parse as a transaction (CVE-2017-12842): such a
    /// proof can pass off an inner node as a leaf.
    #[error("inner node at level {0} parses as a transaction")]
    InnerTransaction(usize),
}

/// Fold `leaf` up `branch` at position `index` and return the root.
///
/// A node equal to the running hash is fine when the running hash is the left child (that is
/// the legitimate duplication of a level's last hash), and rejected when it is the right child:
/// there it proves a position that does not exist. With `reject_tx_shaped`, any 64-byte inner
/// node that deserializes as a transaction is rejected, as the Electrum wallet does for
/// transaction proofs.
pub fn fold(
    leaf: sha256d::Hash,
    branch: &[sha256d::Hash],
    index: u64,
    reject_tx_shaped: bool,
) -> Result<sha256d::Hash, FoldError> {
    let mut h = leaf;
    let mut i = index;
    let mut inner = [0u8; 64];
    for (level, node) in branch.iter().enumerate() {
        let (left, right) = if i & 1 == 1 {
            if *node == h {
                return Err(FoldError::Duplicate(level));
            }
            (node, &h)
        } else {
            (&h, node)
        };
        inner[..32].copy_from_slice(left.as_byte_array());
        inner[32..].copy_from_slice(right.as_byte_array());
        if reject_tx_shaped && deserialize::<Transaction>(&inner).is_ok() {
            return Err(FoldError::InnerTransaction(level));
        }
        h = sha256d::Hash::hash(&inner);
        i >>= 1;
    }
    if i != 0 {
        return Err(FoldError::IndexTooLarge(index, branch.len()));
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use bitcoin::merkle_tree;

    use super::*;

    fn leaves(n: usize) -> Vec<sha256d::Hash> {
        (0..n)
            .map(|i| sha256d::Hash::hash(&(i as u64).to_le_bytes()))
            .collect()
    }

    #[test]
    fn branch_length_is_ceil_log2() {
        let got: Vec<usize> = [1, 2, 3, 4, 5, 8, 9, 1024, 1025]
            .map(branch_length)
            .to_vec();
        assert_eq!(got, vec![0, 1, 2, 2, 3, 3, 4, 10, 11]);
    }

    #[test]
    fn roots_agree_with_the_bitcoin_crate_and_every_branch_folds() {
        for n in 1..=33 {
            let hs = leaves(n);
            let expected = merkle_tree::calculate_root(hs.iter().copied()).unwrap();
            for i in 0..n {
                let (branch, root) = branch_and_root(&hs, i, None).unwrap();
                assert_eq!(root, expected, "n={n} i={i}");
                assert_eq!(branch.len(), branch_length(n));
                assert_eq!(
                    fold(hs[i], &branch, i as u64, true),
                    Ok(root),
                    "n={n} i={i}"
                );
            }
            assert!(branch_and_root(&hs, n, None).is_none());
        }
    }

    #[test]
    fn phantom_positions_and_long_indexes_are_rejected() {
        // Three leaves: level 0 is [a, b, c, c]; position 3 would be the duplicate of c.
        let hs = leaves(3);
        let (branch, root) = branch_and_root(&hs, 2, None).unwrap();
        assert_eq!(branch[0], hs[2], "the last leaf is its own sibling");
        assert_eq!(fold(hs[2], &branch, 2, true), Ok(root));
        assert_eq!(fold(hs[2], &branch, 3, true), Err(FoldError::Duplicate(0)));
        assert_eq!(
            fold(hs[2], &branch, 6, true),
            Err(FoldError::IndexTooLarge(6, 2))
        );
        // Five leaves: position 6 is a phantom one level up.
        let hs = leaves(5);
        let (branch, root) = branch_and_root(&hs, 4, None).unwrap();
        assert_eq!(fold(hs[4], &branch, 4, true), Ok(root));
        assert_eq!(fold(hs[4], &branch, 6, true), Err(FoldError::Duplicate(1)));
    }
}
