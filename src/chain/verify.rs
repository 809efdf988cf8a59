//! Checks the gateway runs on upstream answers before anything reaches a wallet.
//!
//! What can be proven is proven: a transaction hashes to the txid asked for, a merkle branch
//! folds up to the root in a header of the verified chain, a header proof folds up to the root
//! of the block hashes, a broadcast's returned txid is the one the raw transaction hashes to,
//! and a scripthash status matches the history it summarises. What cannot be proven (that a
//! history is complete, fee estimates) is compared between upstreams: histories confirmed part
//! strictly and mempool part as sets, fees by a median with outliers dropped.
//!
//! Error messages describe what is wrong without echoing txids or other identifiers, so they
//! can be logged at any level.

use std::str::FromStr;

use bitcoin::block::Header;
use bitcoin::consensus::encode::deserialize;
use bitcoin::hashes::{sha256, sha256d, Hash, HashEngine};
use bitcoin::hex::FromHex;
use bitcoin::{Transaction, TxMerkleNode, Txid};
use serde::Deserialize;

use super::merkle::{self, FoldError};

/// The Electrum wallet refuses transaction merkle branches longer than this.
pub const MAX_MERKLE_BRANCH: usize = 30;

/// An upstream answer that failed a check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The answer is not in the expected shape (bad hex, bad JSON, not a transaction).
    #[error("malformed answer: {0}")]
    BadEncoding(String),
    /// The transaction does not hash to the txid asked for.
    #[error("transaction does not match the requested txid")]
    BadTxid,
    /// The merkle branch does not prove the transaction in the block.
    #[error("bad merkle proof: {0}")]
    BadMerkle(String),
    /// The header or its checkpoint proof is wrong.
    #[error("bad header proof: {0}")]
    BadHeader(String),
    /// The status does not summarise the history.
    #[error("status does not match the history")]
    BadStatus,
    /// Two histories of the same scripthash disagree.
    #[error("histories disagree: {0}")]
    HistoryMismatch(String),
    /// The txid returned by a broadcast is not the broadcast transaction's.
    #[error("broadcast returned a txid that is not the transaction's: {0}")]
    BadBroadcast(String),
    /// A transaction's witness differs from what the other upstreams return (the txid does
    /// not cover it), or a verbose answer's wtxid is not its transaction's.
    #[error("witness does not match: {0}")]
    BadWitness(String),
    /// A well-formed proof that folds to another merkle root than the verified header's at
    /// that height: the proof of another block. An upstream on another branch gives it
    /// honestly.
    #[error("bad merkle proof: {0}")]
    OtherBlock(String),
}

impl VerifyError {
    /// A stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::BadEncoding(_) => "bad_encoding",
            VerifyError::BadTxid => "bad_txid",
            VerifyError::BadMerkle(_) => "bad_merkle",
            VerifyError::BadHeader(_) => "bad_header",
            VerifyError::BadStatus => "bad_status",
            VerifyError::HistoryMismatch(_) => "history_mismatch",
            VerifyError::BadBroadcast(_) => "bad_broadcast",
            VerifyError::BadWitness(_) => "bad_witness",
            VerifyError::OtherBlock(_) => "bad_merkle",
        }
    }

    /// True when the answer is false whatever branch of the chain the upstream is on: a
    /// transaction that does not hash to its txid, a malformed answer, a broadcast returning
    /// another txid, a witness mismatch, a proof that cannot fold to any root. False for what
    /// an honest upstream on another branch (or ahead of the verified chain) may answer: a
    /// proof of its own block at that height, a history or header of its branch.
    pub fn holds_on_every_branch(&self) -> bool {
        !matches!(
            self,
            VerifyError::OtherBlock(_)
                | VerifyError::HistoryMismatch(_)
                | VerifyError::BadHeader(_)
        )
    }
}

fn parse_hash<T: FromStr>(hex: &str, what: &str) -> Result<T, VerifyError> {
    T::from_str(hex.trim())
        .map_err(|_| VerifyError::BadEncoding(format!("{what} is not a 32-byte hex hash")))
}

/// Decodes a raw transaction given as hex: the bytes must be one whole transaction.
pub fn decode_transaction(raw_hex: &str) -> Result<Transaction, VerifyError> {
    let bytes = Vec::<u8>::from_hex(raw_hex.trim())
        .map_err(|_| VerifyError::BadEncoding("transaction is not hex".into()))?;
    deserialize::<Transaction>(&bytes)
        .map_err(|_| VerifyError::BadEncoding("bytes are not one whole transaction".into()))
}

/// The txid of a raw transaction given as hex.
pub fn txid_of(raw_hex: &str) -> Result<Txid, VerifyError> {
    Ok(decode_transaction(raw_hex)?.compute_txid())
}

/// True when a transaction's witness matters and is not proven by its txid: it carries a
/// witness, or one of its inputs could (an empty script_sig, or a script_sig that is a single
/// push of a witness program: a P2SH-wrapped segwit spend), so a served copy without a witness
/// may be a stripped one.
///
/// Otherwise every input spends a legacy output with a script_sig of its own, and a witness on
/// such an input makes a transaction invalid (BIP141, `SCRIPT_ERR_WITNESS_UNEXPECTED`, in
/// blocks and mempools alike): its bytes are all covered by the txid. A coinbase's witness (the
/// BIP141 reserved value) commits to nothing a wallet reads (its wtxid is zero by definition)
/// and is not counted.
pub fn witness_matters(tx: &Transaction) -> bool {
    if tx.is_coinbase() {
        return false;
    }
    tx.input.iter().any(|i| {
        if !i.witness.is_empty() || i.script_sig.is_empty() {
            return true;
        }
        let mut pushes = i.script_sig.instructions();
        match (pushes.next(), pushes.next()) {
            (Some(Ok(bitcoin::script::Instruction::PushBytes(data))), None) => {
                bitcoin::Script::from_bytes(data.as_bytes()).is_witness_program()
            }
            _ => false,
        }
    })
}

/// `blockchain.transaction.get` (non-verbose): the raw transaction must hash to `txid_hex`.
pub fn check_transaction(txid_hex: &str, raw_hex: &str) -> Result<(), VerifyError> {
    let want: Txid = parse_hash(txid_hex, "txid")?;
    if txid_of(raw_hex)? != want {
        return Err(VerifyError::BadTxid);
    }
    Ok(())
}

/// The result of `blockchain.transaction.get_merkle`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MerkleAnswer {
    /// Height of the block the transaction is in.
    pub block_height: u32,
    /// Branch hashes, display-order hex, from the leaf up.
    pub merkle: Vec<String>,
    /// Position of the transaction in the block.
    pub pos: u64,
}

impl MerkleAnswer {
    /// Parse the JSON result.
    pub fn parse(json: &str) -> Result<MerkleAnswer, VerifyError> {
        serde_json::from_str(json)
            .map_err(|e| VerifyError::BadEncoding(format!("get_merkle result: {e}")))
    }
}

/// A merkle branch proves `txid` at position `pos` of the block whose header has `merkle_root`.
///
/// As the Electrum wallet does: at most [`MAX_MERKLE_BRANCH`] nodes, `pos` must be used up
/// exactly by the branch, and no 64-byte inner node may parse as a transaction
/// (CVE-2017-12842). In addition a right child equal to its left sibling is refused: only a
/// position past the end of a level has one (the CVE-2012-2459 duplication); the legitimate
/// duplicate of a level's last hash is always a left child and passes.
pub fn check_merkle<S: AsRef<str>>(
    txid: &Txid,
    pos: u64,
    branch: &[S],
    merkle_root: &TxMerkleNode,
) -> Result<(), VerifyError> {
    if branch.len() > MAX_MERKLE_BRANCH {
        return Err(VerifyError::BadMerkle(format!(
            "branch of {} nodes is too long",
            branch.len()
        )));
    }
    let nodes = branch
        .iter()
        .map(|s| sha256d::Hash::from_str(s.as_ref().trim()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| VerifyError::BadMerkle("branch node is not a 32-byte hex hash".into()))?;
    let root = merkle::fold(txid.to_raw_hash(), &nodes, pos, true)
        .map_err(|e: FoldError| VerifyError::BadMerkle(e.to_string()))?;
    if root != merkle_root.to_raw_hash() {
        return Err(VerifyError::OtherBlock(
            "root differs from the header's merkle root".into(),
        ));
    }
    Ok(())
}

/// `blockchain.block.header(height, cp_height)`: `branch` proves `header`'s hash at `height`
/// under `root_hex`, the merkle root of the block hashes of heights `0..=cp_height`. The branch
/// must have exactly the length of that tree.
pub fn check_header_proof<S: AsRef<str>>(
    header: &Header,
    height: u32,
    branch: &[S],
    root_hex: &str,
    cp_height: u32,
) -> Result<(), VerifyError> {
    if height > cp_height {
        return Err(VerifyError::BadHeader("height above cp_height".into()));
    }
    let expected = merkle::branch_length(cp_height as usize + 1);
    if branch.len() != expected {
        return Err(VerifyError::BadHeader(format!(
            "branch has {} nodes, expected {expected}",
            branch.len()
        )));
    }
    let nodes = branch
        .iter()
        .map(|s| sha256d::Hash::from_str(s.as_ref().trim()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| VerifyError::BadHeader("branch node is not a 32-byte hex hash".into()))?;
    let root: sha256d::Hash = sha256d::Hash::from_str(root_hex.trim())
        .map_err(|_| VerifyError::BadHeader("root is not a hash".into()))?;
    let got = merkle::fold(
        header.block_hash().to_raw_hash(),
        &nodes,
        u64::from(height),
        false,
    )
    .map_err(|e| VerifyError::BadHeader(e.to_string()))?;
    if got != root {
        return Err(VerifyError::BadHeader(
            "branch does not fold to the root".into(),
        ));
    }
    Ok(())
}

/// One entry of `blockchain.scripthash.get_history`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HistoryEntry {
    /// The transaction.
    pub txid: Txid,
    /// Block height; 0 for mempool with confirmed inputs, -1 for mempool with unconfirmed ones.
    pub height: i64,
}

impl HistoryEntry {
    /// Whether the transaction is in a block.
    pub fn confirmed(&self) -> bool {
        self.height > 0
    }
}

#[derive(Deserialize)]
struct RawEntry {
    tx_hash: String,
    height: i64,
}

/// Parse a `get_history` (or `get_mempool`) result. Extra fields such as `fee` are ignored.
pub fn parse_history(json: &str) -> Result<Vec<HistoryEntry>, VerifyError> {
    let raw: Vec<RawEntry> = serde_json::from_str(json)
        .map_err(|e| VerifyError::BadEncoding(format!("history: {e}")))?;
    raw.into_iter()
        .map(|e| {
            Ok(HistoryEntry {
                txid: parse_hash(&e.tx_hash, "tx_hash")?,
                height: e.height,
            })
        })
        .collect()
}

/// The Electrum status of a history in the order given: single SHA-256 over the concatenated
/// `"tx_hash:height:"`, as hex; `None` for an empty history.
pub fn status_hash(history: &[HistoryEntry]) -> Option<String> {
    if history.is_empty() {
        return None;
    }
    let mut engine = sha256::Hash::engine();
    for entry in history {
        engine.input(format!("{}:{}:", entry.txid, entry.height).as_bytes());
    }
    Some(sha256::Hash::from_engine(engine).to_string())
}

/// The status a server announced (`scripthash.subscribe` or its notification) must be the
/// status of the history it returns (in the order it returns it).
pub fn check_status(history_json: &str, status: Option<&str>) -> Result<(), VerifyError> {
    let history = parse_history(history_json)?;
    let computed = status_hash(&history);
    let matches = match (computed.as_deref(), status) {
        (None, None) => true,
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b.trim()),
        _ => false,
    };
    if matches {
        Ok(())
    } else {
        Err(VerifyError::BadStatus)
    }
}

/// The confirmed entries of a history up to `height`, in the order given.
pub fn confirmed_part(history: &[HistoryEntry], height: u32) -> Vec<HistoryEntry> {
    history
        .iter()
        .filter(|e| e.confirmed() && e.height <= i64::from(height))
        .copied()
        .collect()
}

/// Whether two servers' histories of the same scripthash agree on what can be compared: the
/// confirmed entries up to `height` (the lower of the two servers' tips, so that a block that
/// reached one server first is no disagreement), as identical sequences. Mempools are not
/// compared: honest servers' mempools differ.
pub fn histories_agree(a: &[HistoryEntry], b: &[HistoryEntry], height: u32) -> bool {
    confirmed_part(a, height) == confirmed_part(b, height)
}

/// `blockchain.transaction.broadcast`: the returned txid must be the raw transaction's.
pub fn check_broadcast(raw_hex: &str, returned_txid: &str) -> Result<(), VerifyError> {
    let computed = txid_of(raw_hex)?;
    let returned: Txid = Txid::from_str(returned_txid.trim())
        .map_err(|_| VerifyError::BadBroadcast("result is not a txid".into()))?;
    if computed != returned {
        return Err(VerifyError::BadBroadcast("txid differs".into()));
    }
    Ok(())
}

/// Combine several upstreams' fee answers (BTC/kvB) so that no single upstream moves the
/// answer by more than a factor of two from the honest ones.
///
/// Negative answers (`-1`, "no estimate") and non-finite ones are set aside; if they outnumber
/// the real estimates there is no consensus and the result is `None`. One estimate is taken as
/// it is. Two estimates that differ by more than a factor of four cannot both be honest and no
/// answer is within a factor of two of both: `None`; otherwise their geometric mean, which is.
/// From three on, the median is taken, every value outside `[median / 4, median * 4]` is
/// dropped as an outlier, and the median of what is left (the geometric mean of the middle two
/// for an even count) is the answer: as long as the honest values agree within a factor of
/// four, a single wrong value cannot move it out of the range they span.
pub fn fee_consensus(values: &[f64]) -> Option<f64> {
    let mut estimates: Vec<f64> = values
        .iter()
        .copied()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .collect();
    let missing = values.len() - estimates.len();
    if estimates.is_empty() || missing > estimates.len() {
        return None;
    }
    estimates.sort_by(f64::total_cmp);
    if let [low, high] = estimates[..] {
        if high > low * 4.0 {
            return None;
        }
    }
    let m = median(&estimates);
    let kept: Vec<f64> = estimates
        .into_iter()
        .filter(|v| *v >= m / 4.0 && *v <= m * 4.0)
        .collect();
    Some(median(&kept))
}

/// Median of a sorted, non-empty slice (geometric mean of the middle two for an even count,
/// which is within a factor of two of both when they are within four of each other).
fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] * sorted[n / 2]).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use bitcoin::absolute::LockTime;
    use bitcoin::block::{Header, Version};
    use bitcoin::consensus::encode::serialize;
    use bitcoin::pow::CompactTarget;
    use bitcoin::{
        transaction, Amount, Block, BlockHash, OutPoint, ScriptBuf, Sequence, TxIn, TxOut, Witness,
    };

    use super::*;

    // Real regtest transactions and proofs from the worked example in the Electrum protocol
    // documentation (docs/protocol-basics.rst, "Status Example").
    const TX_A6C9: &str = "a6c9c361bd0bc536d6a22648efbf8f9b200e425ef6c3a7a9669dc444c532a347";
    const RAW_A6C9: &str = "02000000000102f758cda73a362840995d62d0079a22a11fc2652cb7740fffb8132486fe76fe730000000000fdffffff31b2d3d434d7c8f46b23a47aabc3c9498d4df5ffb9f13e13c3c3ecb52ab570b80000000000fdffffff0280f0fa02000000001600149f9aa3795e57c535d2f7b160ff023804c60fca6ef0cff00800000000160014553a3b97c2cc7d3d4edeace3281ff038bd067629024730440220274cf69bab8d6fd25bd047ef7420274f58540c32f2cbc12944134e604d2307a7022035a8954b44cbc6b048f4457080a7bcaf903bd970ee8bd297f1ef25451a464c280121027ba4d3ee6471a985307a37d09eb9a0a73c1a31b57616fe3e53a3d6d4540025190247304402205a879e8678c331e4f00a282e629fc048ce2ec0107452ecc19773f4c144c725af02204495325f83cfc987e4e9a090c361cfe11b63173a9b7a5ce498f3924f11ec416a0121027ba4d3ee6471a985307a37d09eb9a0a73c1a31b57616fe3e53a3d6d454002519a7090000";
    const TX_9C42: &str = "9c42f84b2fcdaff676ba25d9d4941741cc0d1a01cce0c23fdc4c0b2afa38431c";
    const RAW_9C42: &str = "0200000000010147a332c544c49d66a9a7c3f65e420e209b8fbfef4826a2d636c50bbd61c3c9a60000000000fdffffff02784a4c00000000001600147bcf38d8a69071c21abbfe0532cb6aeacaf5c29440a5ae02000000001600149f9aa3795e57c535d2f7b160ff023804c60fca6e02473044022020fd51935d101b3bfcf169af182a2ca189407597d8f1868ca55eecae6c58fd0402205adc117093a4329dde60b9b9c579c56c1699129c6be37a581bbd03e851d36962012103c3172a9f8820681c62b8bf28961988a4642b33f4920b9da14b06965c7fff83fda8090000";
    const TX_770F: &str = "770f2d4371b3fabb902dd9a103e2dd005fcd3971181078fca4a2a1d6ff127b30";
    const RAW_770F: &str = "0200000000010147a332c544c49d66a9a7c3f65e420e209b8fbfef4826a2d636c50bbd61c3c9a60100000000fdffffff02005a6202000000001600149f9aa3795e57c535d2f7b160ff023804c60fca6e28758e0600000000160014c388b18dd1771046fecb85f44642ffb7a4efb6270247304402200967ab438e5cb1047873132a7beda3a6e2d87809f58ebcb69976e14c85c2a2700220447d761847b2ab6a239f93cc2f8d42981082e4c4fe05f43b87fcd5f1626e4ed3012103cd68ad8bddacdc82a39a82efd7a045f2d9513a9de31049286b696c87a8efbe87a8090000";
    const HISTORY: &str = r#"[
        {"tx_hash": "a6c9c361bd0bc536d6a22648efbf8f9b200e425ef6c3a7a9669dc444c532a347", "height": 2472},
        {"tx_hash": "9c42f84b2fcdaff676ba25d9d4941741cc0d1a01cce0c23fdc4c0b2afa38431c", "height": 2473},
        {"tx_hash": "770f2d4371b3fabb902dd9a103e2dd005fcd3971181078fca4a2a1d6ff127b30", "height": 2473},
        {"tx_hash": "80b19848aed792565ab7c5a79b7c2a00fbf985741579396ebe0ab6098e607311", "height": 0, "fee": 200},
        {"tx_hash": "e02a1dadfa83b996b24175df807b271ea5d02937ef5b35c195fac1e1bdc3198f", "height": 0, "fee": 300},
        {"tx_hash": "bb4c8ab438c13b89ca80d1d5bee25b0b6b7f55673f4d801998ba97db161d9e85", "height": -1, "fee": 200}
    ]"#;
    const STATUS: &str = "78e96c6562cafa71c115503b9411fdfdc595a45031e2ab76ff75162fe1b0590d";
    // Block 2473 holds three transactions: the coinbase, 9c42 (pos 1) and 770f (pos 2).
    const MERKLE_9C42: [&str; 2] = [
        "9b977e4cc0b2eb44cb5ea2adb30bf6eae892c9a838111031cb49c97d8ad57309",
        "e7a2891bd8f96488681a596f619de4d88a22d3b08a8aee3b44bbdd913e3e3562",
    ];
    const MERKLE_770F: [&str; 2] = [
        "770f2d4371b3fabb902dd9a103e2dd005fcd3971181078fca4a2a1d6ff127b30",
        "ee43317b1b79a9a6b101df711a26d12a88b1419f63db15161a9fdb587fabae63",
    ];

    fn txid(hex: &str) -> Txid {
        Txid::from_str(hex).unwrap()
    }

    #[test]
    fn transactions_must_hash_to_the_requested_txid() {
        check_transaction(TX_A6C9, RAW_A6C9).unwrap();
        check_transaction(TX_9C42, RAW_9C42).unwrap();
        check_transaction(&TX_770F.to_uppercase(), RAW_770F).unwrap();
        assert_eq!(
            check_transaction(TX_9C42, RAW_770F),
            Err(VerifyError::BadTxid)
        );
        let err = check_transaction(TX_9C42, &RAW_9C42[..RAW_9C42.len() - 2]).unwrap_err();
        assert_eq!(err.reason(), "bad_encoding");
        let trailing = format!("{RAW_9C42}00");
        assert_eq!(
            check_transaction(TX_9C42, &trailing).unwrap_err().reason(),
            "bad_encoding"
        );
        assert_eq!(
            check_transaction(TX_9C42, "xyz").unwrap_err().reason(),
            "bad_encoding"
        );
        assert_eq!(
            check_transaction("nope", RAW_9C42).unwrap_err().reason(),
            "bad_encoding"
        );
    }

    #[test]
    fn broadcast_must_return_the_transactions_txid() {
        check_broadcast(RAW_A6C9, TX_A6C9).unwrap();
        assert_eq!(
            check_broadcast(RAW_A6C9, TX_770F).unwrap_err().reason(),
            "bad_broadcast"
        );
        assert_eq!(
            check_broadcast(RAW_A6C9, "sent!").unwrap_err().reason(),
            "bad_broadcast"
        );
        assert_eq!(
            check_broadcast("00", TX_A6C9).unwrap_err().reason(),
            "bad_encoding"
        );
        assert_eq!(txid_of(RAW_770F).unwrap(), txid(TX_770F));
    }

    #[test]
    fn real_proofs_from_one_block_agree_and_check() {
        let nodes = |b: &[&str]| {
            b.iter()
                .map(|s| sha256d::Hash::from_str(s).unwrap())
                .collect::<Vec<_>>()
        };
        let root_a =
            merkle::fold(txid(TX_9C42).to_raw_hash(), &nodes(&MERKLE_9C42), 1, true).unwrap();
        let root_b =
            merkle::fold(txid(TX_770F).to_raw_hash(), &nodes(&MERKLE_770F), 2, true).unwrap();
        assert_eq!(root_a, root_b, "both proofs are of block 2473");
        let root = TxMerkleNode::from_raw_hash(root_a);
        check_merkle(&txid(TX_9C42), 1, &MERKLE_9C42, &root).unwrap();
        // The last transaction of an odd level is its own sibling: legitimate.
        check_merkle(&txid(TX_770F), 2, &MERKLE_770F, &root).unwrap();
        // The same branch claiming the phantom position 3 duplicates a node on the right.
        let err = check_merkle(&txid(TX_770F), 3, &MERKLE_770F, &root).unwrap_err();
        assert!(err.to_string().contains("duplicated"), "{err}");
        assert_eq!(
            check_merkle(&txid(TX_9C42), 0, &MERKLE_9C42, &root)
                .unwrap_err()
                .reason(),
            "bad_merkle"
        );
        assert_eq!(
            check_merkle(&txid(TX_9C42), 5, &MERKLE_9C42, &root)
                .unwrap_err()
                .reason(),
            "bad_merkle"
        );
        let other_root = TxMerkleNode::from_raw_hash(sha256d::Hash::hash(b"another block"));
        assert_eq!(
            check_merkle(&txid(TX_9C42), 1, &MERKLE_9C42, &other_root)
                .unwrap_err()
                .reason(),
            "bad_merkle"
        );
        assert_eq!(
            check_merkle(&txid(TX_9C42), 1, &["beef"], &root)
                .unwrap_err()
                .reason(),
            "bad_merkle"
        );
        let long = vec![MERKLE_9C42[0]; MAX_MERKLE_BRANCH + 1];
        assert_eq!(
            check_merkle(&txid(TX_9C42), 1, &long, &root)
                .unwrap_err()
                .reason(),
            "bad_merkle"
        );
    }

    fn tx(tag: u8, script_len: usize) -> Transaction {
        Transaction {
            version: transaction::Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint {
                    txid: Txid::from_byte_array([tag; 32]),
                    vout: 0,
                },
                script_sig: ScriptBuf::new(),
                sequence: Sequence::MAX,
                witness: Witness::new(),
            }],
            output: vec![TxOut {
                value: Amount::from_sat(1),
                script_pubkey: ScriptBuf::from_bytes(vec![0x51; script_len]),
            }],
        }
    }

    #[test]
    fn every_position_of_a_built_block_checks_against_its_header() {
        for n in [1usize, 2, 5, 7] {
            let txdata: Vec<Transaction> = (0..n).map(|i| tx(i as u8, 25)).collect();
            let mut block = Block {
                header: Header {
                    version: Version::TWO,
                    prev_blockhash: BlockHash::all_zeros(),
                    merkle_root: TxMerkleNode::all_zeros(),
                    time: 0,
                    bits: CompactTarget::from_consensus(0x207fffff),
                    nonce: 0,
                },
                txdata,
            };
            block.header.merkle_root = block.compute_merkle_root().unwrap();
            let leaves: Vec<sha256d::Hash> = block
                .txdata
                .iter()
                .map(|t| t.compute_txid().to_raw_hash())
                .collect();
            for (pos, t) in block.txdata.iter().enumerate() {
                let (branch, _) = merkle::branch_and_root(&leaves, pos, None).unwrap();
                let branch: Vec<String> = branch.iter().map(|h| h.to_string()).collect();
                check_merkle(
                    &t.compute_txid(),
                    pos as u64,
                    &branch,
                    &block.header.merkle_root,
                )
                .unwrap();
                if pos > 0 {
                    let wrong = block.txdata[pos - 1].compute_txid();
                    assert!(
                        check_merkle(&wrong, pos as u64, &branch, &block.header.merkle_root)
                            .is_err()
                    );
                }
            }
        }
    }

    #[test]
    fn an_inner_node_that_is_a_64_byte_transaction_is_refused() {
        // CVE-2017-12842: a 64-byte transaction's halves can be passed off as a txid and its
        // sibling, "proving" a transaction that is not in the block.
        let bytes = serialize(&tx(7, 4));
        assert_eq!(bytes.len(), 64);
        let left = sha256d::Hash::from_slice(&bytes[..32]).unwrap();
        let right = sha256d::Hash::from_slice(&bytes[32..]).unwrap();
        let root = TxMerkleNode::from_raw_hash(sha256d::Hash::hash(&bytes));
        let err =
            check_merkle(&Txid::from_raw_hash(left), 0, &[right.to_string()], &root).unwrap_err();
        assert!(err.to_string().contains("parses as a transaction"), "{err}");
    }

    #[test]
    fn a_witness_matters_unless_every_input_is_a_legacy_spend() {
        let segwit: Transaction = decode_transaction(RAW_A6C9).unwrap();
        assert!(witness_matters(&segwit));
        // Stripped of its witness it still hashes to its txid, and still may carry one: its
        // inputs have empty script_sigs.
        let mut stripped = segwit.clone();
        stripped.input.iter_mut().for_each(|i| i.witness.clear());
        assert_eq!(stripped.compute_txid(), segwit.compute_txid());
        assert_ne!(stripped.compute_wtxid(), segwit.compute_wtxid());
        assert!(witness_matters(&stripped));
        // A legacy spend: a script_sig of its own on every input.
        let mut legacy = tx(1, 25);
        legacy.input[0].script_sig = bitcoin::script::Builder::new()
            .push_slice([0x30u8; 71])
            .push_slice([0x02u8; 33])
            .into_script();
        assert!(!witness_matters(&legacy));
        // A P2SH-wrapped segwit spend: the script_sig is one push of a witness program.
        let mut wrapped = legacy.clone();
        let program = ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array([7; 20]));
        let push = bitcoin::script::PushBytesBuf::try_from(program.into_bytes()).unwrap();
        wrapped.input[0].script_sig = bitcoin::script::Builder::new()
            .push_slice(push)
            .into_script();
        assert!(witness_matters(&wrapped));
        // A witness where none may be is still a witness: it must be corroborated.
        let mut added = legacy.clone();
        added.input[0].witness = Witness::from_slice(&[[1u8; 3]]);
        assert!(witness_matters(&added));
        // A coinbase's witness (the reserved value) commits to nothing a wallet reads.
        let mut coinbase = legacy;
        coinbase.input[0].previous_output = OutPoint::null();
        coinbase.input[0].witness = Witness::from_slice(&[[0u8; 32]]);
        assert!(coinbase.is_coinbase());
        assert!(!witness_matters(&coinbase));
    }

    #[test]
    fn branch_dependent_errors_are_the_proofs_of_another_block() {
        let s = String::new;
        for e in [
            VerifyError::BadEncoding(s()),
            VerifyError::BadTxid,
            VerifyError::BadMerkle(s()),
            VerifyError::BadStatus,
            VerifyError::BadBroadcast(s()),
            VerifyError::BadWitness(s()),
        ] {
            assert!(e.holds_on_every_branch(), "{e}");
        }
        for e in [
            VerifyError::OtherBlock(s()),
            VerifyError::HistoryMismatch(s()),
            VerifyError::BadHeader(s()),
        ] {
            assert!(!e.holds_on_every_branch(), "{e}");
        }
        // A well-formed proof of another block is that; a malformed one is false anywhere.
        let root = TxMerkleNode::from_raw_hash(sha256d::Hash::hash(b"another block"));
        let other = check_merkle(&txid(TX_9C42), 1, &MERKLE_9C42, &root).unwrap_err();
        assert!(!other.holds_on_every_branch());
        let long = vec![MERKLE_9C42[0]; MAX_MERKLE_BRANCH + 1];
        let bad = check_merkle(&txid(TX_9C42), 1, &long, &root).unwrap_err();
        assert!(bad.holds_on_every_branch());
        let phantom = check_merkle(&txid(TX_770F), 3, &MERKLE_770F, &root).unwrap_err();
        assert!(phantom.holds_on_every_branch());
    }

    #[test]
    fn status_of_the_documented_example() {
        let history = parse_history(HISTORY).unwrap();
        assert_eq!(status_hash(&history).as_deref(), Some(STATUS));
        check_status(HISTORY, Some(STATUS)).unwrap();
        check_status(HISTORY, Some(&STATUS.to_uppercase())).unwrap();
        assert_eq!(check_status(HISTORY, None), Err(VerifyError::BadStatus));
        assert_eq!(
            check_status(HISTORY, Some(&STATUS.replace('7', "8"))),
            Err(VerifyError::BadStatus)
        );
        assert_eq!(status_hash(&[]), None);
        check_status("[]", None).unwrap();
        assert_eq!(
            check_status("[]", Some(STATUS)),
            Err(VerifyError::BadStatus)
        );
        assert_eq!(
            check_status("{}", None).unwrap_err().reason(),
            "bad_encoding"
        );
    }

    #[test]
    fn histories_agree_on_confirmed_entries_up_to_a_height() {
        let a = parse_history(HISTORY).unwrap();
        let confirmed = a.iter().filter(|e| e.confirmed()).count();
        assert!(
            confirmed >= 3 && confirmed < a.len(),
            "the fixture has both parts"
        );
        // Mempool entries are not compared.
        let mut b = a.clone();
        b.retain(|e| e.confirmed());
        assert!(histories_agree(&a, &b, u32::MAX));
        // Confirmed entries are compared in order.
        let mut c = a.clone();
        c.swap(0, 1);
        assert!(!histories_agree(&a, &c, u32::MAX));
        // A block only one server has seen yet is no disagreement below its height.
        let top = a
            .iter()
            .filter(|e| e.confirmed())
            .map(|e| e.height)
            .max()
            .unwrap();
        let mut d = a.clone();
        d.retain(|e| e.height != top);
        assert!(!histories_agree(&a, &d, u32::MAX));
        assert!(histories_agree(&a, &d, (top - 1) as u32));
        assert_eq!(confirmed_part(&a, 0), Vec::new());
    }

    #[test]
    fn fee_consensus_drops_outliers_and_missing_estimates() {
        assert_eq!(fee_consensus(&[]), None);
        assert_eq!(fee_consensus(&[-1.0, -1.0]), None);
        assert_eq!(fee_consensus(&[0.0002]), Some(0.0002));
        // One wild value among three honest ones does not move the answer outside their range.
        assert_eq!(
            fee_consensus(&[0.0001, 0.00011, 0.00012, 5.0]),
            Some(0.00011)
        );
        assert_eq!(
            fee_consensus(&[0.0001, 0.00011, 0.00012, 0.0]),
            Some(0.00011)
        );
        // Outlier dropped, median of the rest (geometric mean of the middle two).
        assert_eq!(fee_consensus(&[1.0, 4.0, 100.0]), Some(2.0));
        // "No estimate" counts against a lone answer, not against a majority.
        assert_eq!(fee_consensus(&[-1.0, -1.0, 0.0003]), None);
        assert_eq!(fee_consensus(&[-1.0, 0.25, 1.0]), Some(0.5));
        // Two upstreams, one lying: never more than twice off the honest one.
        assert_eq!(fee_consensus(&[1.0, 100.0]), None);
        assert_eq!(fee_consensus(&[100.0, 1.0]), None);
        let two = fee_consensus(&[1.0, 4.0]).unwrap();
        assert!((two - 2.0).abs() < 1e-12);
        for liar in [0.01, 0.3, 0.5, 2.0, 3.9, 50.0] {
            if let Some(v) = fee_consensus(&[1.0, liar]) {
                assert!((0.5..=2.0).contains(&v), "{liar} moved it to {v}");
            }
            let v = fee_consensus(&[1.0, 1.1, liar]).unwrap();
            assert!((1.0..=1.1).contains(&v), "{liar} moved it to {v}");
        }
        assert_eq!(
            fee_consensus(&[f64::NAN, f64::INFINITY, 0.0002, 0.0002]),
            Some(0.0002)
        );
    }

    #[test]
    fn reasons_are_stable_labels() {
        let all = [
            VerifyError::BadEncoding(String::new()),
            VerifyError::BadTxid,
            VerifyError::BadMerkle(String::new()),
            VerifyError::BadHeader(String::new()),
            VerifyError::BadStatus,
            VerifyError::HistoryMismatch(String::new()),
            VerifyError::BadBroadcast(String::new()),
            VerifyError::BadWitness(String::new()),
            VerifyError::OtherBlock(String::new()),
        ];
        let labels: Vec<&str> = all.iter().map(VerifyError::reason).collect();
        assert_eq!(
            labels,
            [
                "bad_encoding",
                "bad_txid",
                "bad_merkle",
                "bad_header",
                "bad_status",
                "history_mismatch",
                "bad_broadcast",
                "bad_witness",
                "bad_merkle"
            ]
        );
    }

    #[test]
    fn merkle_answers_parse() {
        let answer =
            MerkleAnswer::parse(r#"{"block_height": 2473, "merkle": ["aa"], "pos": 2}"#).unwrap();
        assert_eq!(
            (answer.block_height, answer.pos, answer.merkle.len()),
            (2473, 2, 1)
        );
        assert_eq!(
            MerkleAnswer::parse(r#"{"pos": -1}"#).unwrap_err().reason(),
            "bad_encoding"
        );
    }
}
