//! The simulated regtest chain: deterministic generation, mining, payments, broadcasts and
//! reorganisations.
//!
//! Everything a client can check is real: headers link to the real regtest genesis block and
//! carry proof of work at regtest difficulty, merkle roots commit to the transactions, txids
//! are hashes of real serialized transactions. Nothing a client cannot check is simulated:
//! signatures are dummies of realistic sizes and scripts are never executed. Inputs are
//! shaped by the kind of output they spend, as a real wallet's are: a P2PKH spend has a
//! script_sig, a P2WPKH, P2WSH or P2TR spend an empty script_sig and a witness, a P2SH-P2WPKH
//! spend the push of its witness program and a witness. Coinbases carry no witness.
//!
//! Randomness comes from a seeded splitmix64 generator owned by the chain, so the same seed
//! and the same sequence of operations give the same block hashes.

use bitcoin::block::{Header, Version as BlockVersion};
use bitcoin::blockdata::constants::genesis_block;
use bitcoin::blockdata::script::{Builder, PushBytesBuf};
use bitcoin::hashes::Hash;
use bitcoin::{
    absolute::LockTime, transaction::Version, Amount, CompactTarget, Network, OutPoint, ScriptBuf,
    Sequence, Transaction, TxIn, TxMerkleNode, TxOut, Txid, Witness,
};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use super::addresses::{parse_regtest_address, ADDRESSES};
use super::block::SimBlock;
use super::view::{script_sh, Sh, View};

/// Regtest difficulty bits (also the genesis block's).
pub const REGTEST_BITS: u32 = 0x207f_ffff;
/// Regtest halves the block subsidy every 150 blocks.
const HALVING_INTERVAL: u32 = 150;
/// A coinbase output may be spent after this many confirmations.
const COINBASE_MATURITY: u32 = 100;
/// Outputs below this are not worth spending or creating.
const DUST: u64 = 1_000;

/// splitmix64: tiny, seedable and stable across crate versions.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The output scripts of the documented addresses, in [`ADDRESSES`] order.
pub(crate) fn wallet_scripts() -> &'static [ScriptBuf] {
    static SCRIPTS: OnceLock<Vec<ScriptBuf>> = OnceLock::new();
    SCRIPTS.get_or_init(|| {
        ADDRESSES
            .iter()
            .map(|a| {
                parse_regtest_address(a.address)
                    .map(|a| a.script_pubkey())
                    .unwrap_or_default()
            })
            .collect()
    })
}

/// The scripthashes of the documented addresses.
pub(crate) fn wallet_shs() -> &'static HashSet<Sh> {
    static SHS: OnceLock<HashSet<Sh>> = OnceLock::new();
    SHS.get_or_init(|| wallet_scripts().iter().map(|s| script_sh(s)).collect())
}

fn subsidy(height: u32) -> u64 {
    let halvings = height / HALVING_INTERVAL;
    if halvings >= 64 {
        0
    } else {
        (50 * 100_000_000u64) >> halvings
    }
}

/// A script_sig that looks like a P2PKH spend (a 72-byte signature and a 33-byte key), so that
/// sizes and fee rates are realistic. It is not a valid signature.
fn dummy_script_sig() -> ScriptBuf {
    let mut sig = vec![0x30u8; 72];
    sig[71] = 0x01;
    let mut key = vec![0x02u8; 33];
    key[1] = 0x79;
    let sig = PushBytesBuf::try_from(sig).unwrap_or_default();
    let key = PushBytesBuf::try_from(key).unwrap_or_default();
    Builder::new().push_slice(sig).push_slice(key).into_script()
}

fn spend_input(op: OutPoint) -> TxIn {
    TxIn {
        previous_output: op,
        script_sig: dummy_script_sig(),
        sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
        witness: Witness::new(),
    }
}

/// A DER signature's size with its sighash byte; not a valid signature.
fn dummy_ecdsa_sig() -> Vec<u8> {
    let mut sig = vec![0x30u8; 72];
    sig[71] = 0x01;
    sig
}

/// How the sim's wallet spends an output of each documented address, by scripthash: the
/// script_sig and the witness, with the address's real public key and scripts and dummy
/// signatures.
fn unlocking() -> &'static HashMap<Sh, (ScriptBuf, Witness)> {
    static SPENDS: OnceLock<HashMap<Sh, (ScriptBuf, Witness)>> = OnceLock::new();
    SPENDS.get_or_init(|| {
        use bitcoin::secp256k1::{Secp256k1, SecretKey};
        let secp = Secp256k1::new();
        let mut out = HashMap::new();
        for (a, script) in ADDRESSES.iter().zip(wallet_scripts()) {
            let mut key = [0u8; 32];
            key[31] = a.key;
            let Ok(sk) = SecretKey::from_slice(&key) else {
                continue;
            };
            let pk = bitcoin::CompressedPublicKey(sk.public_key(&secp));
            let pk_bytes = pk.to_bytes();
            let sig = dummy_ecdsa_sig();
            let (script_sig, witness) = match a.kind {
                "p2wpkh" => (
                    ScriptBuf::new(),
                    Witness::from_slice(&[&sig[..], &pk_bytes]),
                ),
                "p2sh-p2wpkh" => {
                    let program = ScriptBuf::new_p2wpkh(&pk.wpubkey_hash());
                    let push = PushBytesBuf::try_from(program.into_bytes()).unwrap_or_default();
                    (
                        Builder::new().push_slice(push).into_script(),
                        Witness::from_slice(&[&sig[..], &pk_bytes]),
                    )
                }
                "p2wsh" => {
                    let ws = Builder::new()
                        .push_slice(pk_bytes)
                        .push_opcode(bitcoin::opcodes::all::OP_CHECKSIG)
                        .into_script();
                    (
                        ScriptBuf::new(),
                        Witness::from_slice(&[&sig[..], ws.as_bytes()]),
                    )
                }
                "p2tr" => (ScriptBuf::new(), Witness::from_slice(&[[0x5c; 64]])),
                _ => (dummy_script_sig(), Witness::new()),
            };
            out.insert(script_sh(script), (script_sig, witness));
        }
        out
    })
}

/// Fills every input's script_sig and witness the way the output it spends requires (looked
/// up in `view`); an output the wallet does not know is spent like a P2PKH one.
fn sign(tx: &mut Transaction, view: &View) {
    for input in &mut tx.input {
        let shape = view
            .output_sh(&input.previous_output)
            .and_then(|sh| unlocking().get(&sh));
        if let Some((script_sig, witness)) = shape {
            input.script_sig = script_sig.clone();
            input.witness = witness.clone();
        }
    }
}

/// Builds a block on `prev` at `height`: a BIP34 coinbase tagged with `tag` paying the
/// subsidy plus `fees` to `payout`, then `txs`; grinds the nonce until the proof of work holds.
fn make_block(
    prev: &SimBlock,
    height: u32,
    tag: &[u8],
    payout: &ScriptBuf,
    txs: Vec<Arc<Transaction>>,
    fees: u64,
    time_offset: u32,
) -> SimBlock {
    let tag = PushBytesBuf::try_from(tag.to_vec()).unwrap_or_default();
    let coinbase = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig: Builder::new()
                .push_int(i64::from(height))
                .push_slice(tag)
                .into_script(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![TxOut {
            value: Amount::from_sat(subsidy(height) + fees),
            script_pubkey: payout.clone(),
        }],
    };
    let mut all = Vec::with_capacity(txs.len() + 1);
    all.push(Arc::new(coinbase));
    all.extend(txs);
    let txids: Vec<Txid> = all.iter().map(|t| t.compute_txid()).collect();
    let root = bitcoin::merkle_tree::calculate_root(txids.iter().map(|t| t.to_raw_hash()))
        .map(TxMerkleNode::from_raw_hash)
        .unwrap_or_else(TxMerkleNode::all_zeros);
    let mut header = Header {
        version: BlockVersion::from_consensus(0x2000_0000),
        prev_blockhash: prev.hash,
        merkle_root: root,
        time: prev.header.time + 600 + time_offset,
        bits: CompactTarget::from_consensus(REGTEST_BITS),
        nonce: 0,
    };
    let target = header.target();
    let hash = loop {
        match header.validate_pow(target) {
            Ok(hash) => break hash,
            Err(_) => header.nonce = header.nonce.wrapping_add(1),
        }
    };
    SimBlock {
        header,
        hash,
        txs: all,
        txids,
    }
}

/// A coinbase-only block on `prev` at `height` that no branch of the chain holds: what a
/// `deep-fork` endpoint announces as its tip.
pub(crate) fn stray_block(prev: &SimBlock, height: u32) -> SimBlock {
    let payout = &wallet_scripts()[0];
    make_block(prev, height, b"deep-fork", payout, Vec::new(), 0, 7)
}

/// Builds a wallet transaction spending `inputs` (outputs of `view`) to 1..=3 random
/// documented addresses plus change, at `feerate` sat/vB. Returns `None` when the inputs are
/// too small.
fn random_spend(
    rng: &mut Rng,
    view: &View,
    inputs: &[(OutPoint, u64)],
    feerate: u64,
) -> Option<Transaction> {
    let scripts = wallet_scripts();
    let total: u64 = inputs.iter().map(|(_, v)| v).sum();
    let n_pay = 1 + rng.below(3) as usize;
    let mut outputs = Vec::with_capacity(n_pay + 1);
    let mut paid = 0u64;
    for _ in 0..n_pay {
        let share = 1 + rng.below(30);
        let value = total / 100 * share;
        let script = scripts[rng.below(scripts.len() as u64) as usize].clone();
        outputs.push(TxOut {
            value: Amount::from_sat(value),
            script_pubkey: script,
        });
        paid += value;
    }
    let change_script = scripts[rng.below(scripts.len() as u64) as usize].clone();
    outputs.push(TxOut {
        value: Amount::ZERO,
        script_pubkey: change_script,
    });
    let mut tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: inputs.iter().map(|(op, _)| spend_input(*op)).collect(),
        output: outputs,
    };
    sign(&mut tx, view);
    let fee = tx.vsize() as u64 * feerate;
    let change = total.checked_sub(paid)?.checked_sub(fee)?;
    if change < DUST || outputs_too_small(&tx) {
        return None;
    }
    if let Some(last) = tx.output.last_mut() {
        last.value = Amount::from_sat(change);
    }
    Some(tx)
}

fn outputs_too_small(tx: &Transaction) -> bool {
    tx.output[..tx.output.len() - 1]
        .iter()
        .any(|o| o.value.to_sat() < DUST)
}

/// The chain state shared by every endpoint.
#[derive(Debug)]
pub(crate) struct Chain {
    seed: u64,
    rng: Rng,
    /// Confirmed-only index of the main chain.
    base: View,
    /// The main chain with its mempool: what honest endpoints serve.
    main: Arc<View>,
    /// Reorganisations done so far (tags the replacement blocks).
    reorgs: u32,
    /// Bumped on every change; endpoints key their cached views on it.
    pub generation: u64,
}

impl Chain {
    /// Generates `blocks` blocks on the regtest genesis block, then a few mempool
    /// transactions (some spending unconfirmed parents).
    pub fn generate(seed: u64, blocks: u32) -> Chain {
        let genesis = SimBlock::from_block(genesis_block(Network::Regtest));
        let mut rng = Rng::new(seed);
        let mut base = View::build(&[Arc::new(genesis)]);
        let scripts = wallet_scripts();
        let tag = seed_tag(b"sim", seed);
        for height in 1..=blocks {
            let n_tx = rng.below(5);
            let pool = spendable_pool(&base, height);
            let mut chosen: HashSet<OutPoint> = HashSet::new();
            let mut txs = Vec::new();
            let mut fees = 0u64;
            for _ in 0..n_tx {
                let n_in = 1 + rng.below(2) as usize;
                let inputs = pick(&pool, &mut rng, n_in, &chosen);
                if inputs.is_empty() {
                    break;
                }
                let feerate = 1 + rng.below(25);
                if let Some(tx) = random_spend(&mut rng, &base, &inputs, feerate) {
                    chosen.extend(inputs.iter().map(|(op, _)| *op));
                    fees += inputs.iter().map(|(_, v)| v).sum::<u64>()
                        - tx.output.iter().map(|o| o.value.to_sat()).sum::<u64>();
                    txs.push(Arc::new(tx));
                }
            }
            let payout = &scripts[height as usize % scripts.len()];
            let block = make_block(base.tip(), height, &tag, payout, txs, fees, 0);
            base.apply_block(Arc::new(block));
        }
        let mut main = base.clone();
        // Mempool: three transactions from confirmed outputs, then two spending their outputs.
        let next = base.tip_height() + 1;
        let pool = spendable_pool(&main, next);
        let mut chosen: HashSet<OutPoint> = HashSet::new();
        for _ in 0..3 {
            let inputs = pick(&pool, &mut rng, 1, &chosen);
            if inputs.is_empty() {
                break;
            }
            let feerate = 1 + rng.below(25);
            if let Some(tx) = random_spend(&mut rng, &main, &inputs, feerate) {
                chosen.extend(inputs.iter().map(|(op, _)| *op));
                let _ = main.add_mempool(Arc::new(tx));
            }
        }
        for _ in 0..2 {
            let candidates: Vec<(OutPoint, u64)> = main
                .mempool_spendable()
                .filter(|(_, v, sh)| *v >= 100_000 && wallet_shs().contains(*sh))
                .map(|(op, v, _)| (*op, v))
                .collect();
            if candidates.is_empty() {
                break;
            }
            let pick = candidates[rng.below(candidates.len() as u64) as usize];
            let feerate = 1 + rng.below(25);
            if let Some(tx) = random_spend(&mut rng, &main, &[pick], feerate) {
                let _ = main.add_mempool(Arc::new(tx));
            }
        }
        Chain {
            seed,
            rng,
            base,
            main: Arc::new(main),
            reorgs: 0,
            generation: 0,
        }
    }

    /// The main chain with its mempool.
    pub fn main(&self) -> &Arc<View> {
        &self.main
    }

    /// Mines `n` blocks; the first confirms the whole mempool. Returns the new tip height.
    pub fn mine(&mut self, n: u32) -> u32 {
        if n == 0 {
            return self.main.tip_height();
        }
        let mut txs: Vec<Arc<Transaction>> =
            self.main.mempool().iter().map(|m| m.tx.clone()).collect();
        let mut fees: u64 = self.main.mempool().iter().map(|m| m.fee).sum();
        let tag = seed_tag(b"sim", self.seed);
        let scripts = wallet_scripts();
        for _ in 0..n {
            let height = self.base.tip_height() + 1;
            let payout = &scripts[height as usize % scripts.len()];
            let block = make_block(
                self.base.tip(),
                height,
                &tag,
                payout,
                std::mem::take(&mut txs),
                fees,
                0,
            );
            fees = 0;
            self.base.apply_block(Arc::new(block));
        }
        self.main = Arc::new(self.base.clone());
        self.generation += 1;
        self.main.tip_height()
    }

    /// Adds a transaction to the mempool (a broadcast). Scripts are not checked.
    pub fn broadcast(&mut self, tx: Transaction) -> Result<Txid, String> {
        let txid = tx.compute_txid();
        if let Some(loc) = self.main.tx(&txid) {
            if loc.block.is_none() {
                // bitcoind answers a re-broadcast of a mempool transaction with its txid.
                return Ok(txid);
            }
        }
        let mut next = (*self.main).clone();
        next.add_mempool(Arc::new(tx))?;
        self.main = Arc::new(next);
        self.generation += 1;
        Ok(txid)
    }

    /// Adds a package of transactions atomically: all or none. On failure, returns the
    /// failing txid and reason.
    pub fn broadcast_package(
        &mut self,
        txs: Vec<Transaction>,
    ) -> Result<Vec<Txid>, (Txid, String)> {
        let mut next = (*self.main).clone();
        let mut ids = Vec::with_capacity(txs.len());
        for tx in txs {
            let txid = tx.compute_txid();
            if matches!(next.tx(&txid), Some(loc) if loc.block.is_none()) {
                ids.push(txid);
                continue;
            }
            next.add_mempool(Arc::new(tx)).map_err(|e| (txid, e))?;
            ids.push(txid);
        }
        self.main = Arc::new(next);
        self.generation += 1;
        Ok(ids)
    }

    /// Pays `sats` to `script` from the sim's wallet in a new mempool transaction.
    pub fn pay(&mut self, script: ScriptBuf, sats: u64) -> anyhow::Result<Txid> {
        if sats == 0 {
            anyhow::bail!("amount must be positive");
        }
        let feerate = 1 + self.rng.below(20);
        // A one-input, two-output transaction is at most about 260 vbytes with these scripts.
        let need = sats.saturating_add(300 * feerate).saturating_add(DUST);
        let next = self.main.tip_height() + 1;
        // Prefer confirmed mature outputs, then the smallest that is large enough; fall back
        // to immature coinbases, then to unconfirmed outputs.
        let mut best: Option<(u8, u64, OutPoint)> = None;
        let mut consider = |key: (u8, u64, OutPoint)| {
            if best.map_or(true, |b| key < b) {
                best = Some(key);
            }
        };
        for (op, u) in self.main.confirmed_spendable() {
            if wallet_shs().contains(&u.sh) && u.value >= need {
                let mature = !u.coinbase || u.height + COINBASE_MATURITY <= next;
                consider((u8::from(!mature), u.value, *op));
            }
        }
        for (op, v, sh) in self.main.mempool_spendable() {
            if wallet_shs().contains(sh) && v >= need {
                consider((2, v, *op));
            }
        }
        let Some((_, value, op)) = best else {
            anyhow::bail!("the simulated wallet has no unspent output of at least {need} sat");
        };
        let change_script = self
            .main
            .tx(&op.txid)
            .and_then(|l| l.tx.output.get(op.vout as usize))
            .map(|o| o.script_pubkey.clone())
            .unwrap_or_else(|| wallet_scripts()[0].clone());
        let mut tx = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![spend_input(op)],
            output: vec![
                TxOut {
                    value: Amount::from_sat(sats),
                    script_pubkey: script,
                },
                TxOut {
                    value: Amount::ZERO,
                    script_pubkey: change_script,
                },
            ],
        };
        sign(&mut tx, &self.main);
        let fee = tx.vsize() as u64 * feerate;
        let change = value
            .checked_sub(sats)
            .and_then(|v| v.checked_sub(fee))
            .ok_or_else(|| anyhow::anyhow!("the payment does not leave room for its fee"))?;
        tx.output[1].value = Amount::from_sat(change);
        self.broadcast(tx).map_err(|e| anyhow::anyhow!(e))
    }

    /// Disconnects the last `depth` blocks and mines `depth + 1` coinbase-only blocks instead,
    /// so the new branch has more work. Transactions of the disconnected blocks go back to the
    /// mempool (those whose inputs vanished are dropped).
    pub fn reorg(&mut self, depth: u32) -> anyhow::Result<u32> {
        let tip = self.main.tip_height();
        if depth == 0 || depth > tip {
            anyhow::bail!("reorg depth must be between 1 and the tip height {tip}");
        }
        let fork_point = tip - depth;
        let blocks = self.main.blocks();
        let mut candidates: Vec<Arc<Transaction>> = blocks[fork_point as usize + 1..]
            .iter()
            .flat_map(|b| b.txs[1..].iter().cloned())
            .collect();
        candidates.extend(self.main.mempool().iter().map(|m| m.tx.clone()));
        self.reorgs += 1;
        let mut tag = seed_tag(b"reorg", self.seed);
        tag.extend_from_slice(&self.reorgs.to_le_bytes());
        let mut base = View::build(&blocks[..=fork_point as usize]);
        let scripts = wallet_scripts();
        for _ in 0..=depth {
            let height = base.tip_height() + 1;
            let payout = &scripts[height as usize % scripts.len()];
            let block = make_block(base.tip(), height, &tag, payout, Vec::new(), 0, 1);
            base.apply_block(Arc::new(block));
        }
        let mut main = base.clone();
        main.add_mempool_lenient(&candidates);
        self.base = base;
        self.main = Arc::new(main);
        self.generation += 1;
        Ok(self.main.tip_height())
    }

    /// The view of an endpoint that serves a competing branch (its last `fork` blocks replaced
    /// by deterministic coinbase-only blocks) and lags `lag` blocks behind its branch's tip.
    /// Transactions of blocks it does not have are in its mempool.
    pub fn branch_view(&self, lag: u32, fork: u32) -> View {
        let main = &self.main;
        let tip = main.tip_height();
        let fork = fork.min(tip);
        let view_tip = tip - lag.min(tip);
        let fork_point = tip - fork;
        let mut blocks: Vec<Arc<SimBlock>> =
            main.blocks()[..=fork_point.min(view_tip) as usize].to_vec();
        if view_tip > fork_point {
            let tag = seed_tag(b"fork", self.seed);
            let scripts = wallet_scripts();
            for height in fork_point + 1..=view_tip {
                let prev = blocks[blocks.len() - 1].clone();
                // Pay the next address in the cycle, so the branch differs in history too.
                let payout = &scripts[(height as usize + 1) % scripts.len()];
                let block = make_block(&prev, height, &tag, payout, Vec::new(), 0, 1);
                blocks.push(Arc::new(block));
            }
        }
        let first_missing = fork_point.min(view_tip) as usize + 1;
        let candidates: Vec<Arc<Transaction>> = main.blocks()[first_missing..]
            .iter()
            .flat_map(|b| b.txs[1..].iter().cloned())
            .chain(main.mempool().iter().map(|m| m.tx.clone()))
            .collect();
        let mut view = View::build(&blocks);
        view.add_mempool_lenient(&candidates);
        view
    }
}

/// Confirmed wallet outputs worth spending at `next_height`: mature ones, or any when none
/// is mature yet (short chains).
fn spendable_pool(view: &View, next_height: u32) -> Vec<(OutPoint, u64)> {
    let usable = |u: &super::view::Utxo| u.value >= 100_000 && wallet_shs().contains(&u.sh);
    let mature: Vec<(OutPoint, u64)> = view
        .confirmed_spendable()
        .filter(|(_, u)| usable(u) && (!u.coinbase || u.height + COINBASE_MATURITY <= next_height))
        .map(|(op, u)| (*op, u.value))
        .collect();
    if !mature.is_empty() {
        return mature;
    }
    view.confirmed_spendable()
        .filter(|(_, u)| usable(u))
        .map(|(op, u)| (*op, u.value))
        .collect()
}

/// Picks up to `n` distinct outputs from `pool` at random, skipping `exclude`.
fn pick(
    pool: &[(OutPoint, u64)],
    rng: &mut Rng,
    n: usize,
    exclude: &HashSet<OutPoint>,
) -> Vec<(OutPoint, u64)> {
    let mut out: Vec<(OutPoint, u64)> = Vec::new();
    if pool.is_empty() {
        return out;
    }
    for _ in 0..n {
        let p = pool[rng.below(pool.len() as u64) as usize];
        if !exclude.contains(&p.0) && !out.iter().any(|(op, _)| *op == p.0) {
            out.push(p);
        }
    }
    out
}

fn seed_tag(prefix: &[u8], seed: u64) -> Vec<u8> {
    let mut t = prefix.to_vec();
    t.extend_from_slice(&seed.to_le_bytes());
    t
}

/// A script for a `sim.pay` target: a regtest address, or the scripthash of a documented one.
pub(crate) fn pay_target(address_or_scripthash: &str) -> anyhow::Result<ScriptBuf> {
    let s = address_or_scripthash.trim();
    if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) {
        let lower = s.to_ascii_lowercase();
        return ADDRESSES
            .iter()
            .position(|a| a.scripthash == lower)
            .map(|i| wallet_scripts()[i].clone())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown scripthash {s}: only scripthashes of the documented addresses can be paid"
                )
            });
    }
    Ok(parse_regtest_address(s)?.script_pubkey())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::view::{merkle_branch, merkle_fold, status};

    fn chain() -> Chain {
        Chain::generate(7, 300)
    }

    #[test]
    fn generation_is_deterministic_and_seeded() {
        let a = Chain::generate(1, 120);
        let b = Chain::generate(1, 120);
        let c = Chain::generate(2, 120);
        let hashes = |ch: &Chain| {
            ch.main()
                .blocks()
                .iter()
                .map(|b| b.hash)
                .collect::<Vec<_>>()
        };
        assert_eq!(hashes(&a), hashes(&b));
        assert_ne!(hashes(&a)[1..], hashes(&c)[1..]);
        assert_eq!(hashes(&a)[0], hashes(&c)[0]);
        let mem = |ch: &Chain| {
            ch.main()
                .mempool()
                .iter()
                .map(|m| m.txid)
                .collect::<Vec<_>>()
        };
        assert_eq!(mem(&a), mem(&b));
    }

    #[test]
    fn chain_is_valid() {
        let ch = chain();
        let view = ch.main();
        assert_eq!(view.tip_height(), 300);
        let genesis = genesis_block(Network::Regtest);
        assert_eq!(view.blocks()[0].hash, genesis.block_hash());
        assert_eq!(
            genesis.block_hash().to_string(),
            "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
        );
        let mut several_outputs = false;
        let mut spends = 0;
        let mut witnesses = 0;
        for (h, b) in view.blocks().iter().enumerate() {
            assert_eq!(b.header.block_hash(), b.hash);
            assert!(
                b.header.validate_pow(b.header.target()).is_ok(),
                "pow at {h}"
            );
            assert_eq!(b.header.bits.to_consensus(), REGTEST_BITS);
            if h > 0 {
                assert_eq!(
                    b.header.prev_blockhash,
                    view.blocks()[h - 1].hash,
                    "link at {h}"
                );
            }
            let block = bitcoin::Block {
                header: b.header,
                txdata: b.txs.iter().map(|t| (**t).clone()).collect(),
            };
            assert!(block.check_merkle_root(), "merkle root at {h}");
            for (tx, txid) in b.txs.iter().zip(&b.txids) {
                // The txid is the hash of the serialization without the witness.
                let mut stripped = (**tx).clone();
                witnesses += stripped
                    .input
                    .iter()
                    .filter(|i| !i.witness.is_empty())
                    .count();
                stripped.input.iter_mut().for_each(|i| i.witness.clear());
                let bytes = bitcoin::consensus::serialize(&stripped);
                let mut hash = bitcoin::hashes::sha256d::Hash::hash(&bytes).to_byte_array();
                hash.reverse();
                assert_eq!(
                    bitcoin::hex::DisplayHex::to_lower_hex_string(&hash[..]),
                    txid.to_string()
                );
                several_outputs |= tx.output.len() > 2;
            }
            spends += b.txs.len() - 1;
        }
        assert!(several_outputs, "some transactions have several outputs");
        assert!(
            spends > 50,
            "the chain has spending transactions ({spends})"
        );
        assert!(
            witnesses > 20,
            "segwit spends carry witnesses ({witnesses})"
        );
        let mem = view.mempool();
        assert!(mem.len() >= 4, "mempool at startup: {}", mem.len());
        assert!(mem.iter().any(|m| m.unconfirmed_parent));
        assert!(mem.iter().any(|m| !m.unconfirmed_parent));
        assert!(mem.iter().all(|m| m.fee > 0));
    }

    #[test]
    fn balances_agree_with_unspent_and_history() {
        let ch = chain();
        let view = ch.main();
        let mut saw_minus_one = false;
        for sh in wallet_shs() {
            let (confirmed, unconfirmed) = view.balance(sh);
            let unspent: u64 = view.listunspent(sh).iter().map(|u| u.value).sum();
            assert_eq!(confirmed as i64 + unconfirmed, unspent as i64);
            let history = view.history(sh);
            assert!(!history.is_empty());
            saw_minus_one |= history.iter().any(|h| h.height == -1);
            // Every unspent output belongs to a transaction in the history.
            for u in view.listunspent(sh) {
                assert!(history.iter().any(|h| h.txid == u.txid));
            }
            // Recompute the balance by walking the history's transactions.
            let mut received = 0i64;
            let mut spent = 0i64;
            for h in &history {
                let tx = &view.tx(&h.txid).unwrap().tx;
                for out in &tx.output {
                    if script_sh(&out.script_pubkey) == *sh {
                        received += out.value.to_sat() as i64;
                    }
                }
                for input in &tx.input {
                    if let Some(prev) = view.tx(&input.previous_output.txid) {
                        let out = &prev.tx.output[input.previous_output.vout as usize];
                        if script_sh(&out.script_pubkey) == *sh {
                            spent += out.value.to_sat() as i64;
                        }
                    }
                }
            }
            assert_eq!(received - spent, unspent as i64);
            // Ordering: confirmed ascending, then 0 before -1.
            let heights: Vec<i64> = history.iter().map(|h| h.height).collect();
            let confirmed_part: Vec<i64> = heights.iter().copied().filter(|h| *h > 0).collect();
            assert!(confirmed_part.windows(2).all(|w| w[0] <= w[1]));
            assert!(status(&history).is_some());
        }
        assert!(saw_minus_one, "some history has height -1");
    }

    #[test]
    fn spent_outputs_leave_listunspent() {
        let mut ch = chain();
        let sh = script_sh(&wallet_scripts()[0]);
        let before = ch.main().listunspent(&sh);
        let target = pay_target(ADDRESSES[1].address).unwrap();
        let txid = ch.pay(target, 12_345).unwrap();
        let view = ch.main().clone();
        let tx = &view.tx(&txid).unwrap().tx;
        let spent = tx.input[0].previous_output;
        for sh in wallet_shs() {
            assert!(view
                .listunspent(sh)
                .iter()
                .all(|u| OutPoint::new(u.txid, u.vout) != spent));
        }
        let _ = before;
        let sh1 = script_sh(&wallet_scripts()[1]);
        assert!(view
            .listunspent(&sh1)
            .iter()
            .any(|u| u.txid == txid && u.value == 12_345 && u.height == 0));
        // Once mined, the payment is confirmed at the new tip.
        let tip = ch.mine(1);
        let view = ch.main();
        assert!(view.mempool().is_empty());
        assert!(view
            .history(&sh1)
            .iter()
            .any(|h| h.txid == txid && h.height == i64::from(tip)));
    }

    #[test]
    fn mine_confirms_mempool_in_first_block() {
        let mut ch = chain();
        let mempool: Vec<Txid> = ch.main().mempool().iter().map(|m| m.txid).collect();
        let tip = ch.mine(3);
        assert_eq!(tip, 303);
        let b = ch.main().block(301).unwrap();
        assert_eq!(&b.txids[1..], &mempool[..]);
        assert_eq!(ch.main().block(302).unwrap().txs.len(), 1);
        // The coinbase collects the fees.
        let cb = b.txs[0].output[0].value.to_sat();
        assert!(cb > subsidy(301));
    }

    #[test]
    fn reorg_returns_transactions_to_mempool() {
        let mut ch = chain();
        ch.mine(1);
        let confirmed: Vec<Txid> = ch.main().block(301).unwrap().txids[1..].to_vec();
        assert!(!confirmed.is_empty());
        let old_tip = ch.main().tip().hash;
        let tip = ch.reorg(2).unwrap();
        assert_eq!(tip, 302);
        let view = ch.main();
        assert_ne!(view.block(301).unwrap().hash, old_tip);
        for txid in confirmed {
            let loc = view.tx(&txid).expect("back in the mempool");
            assert!(loc.block.is_none());
        }
        for (h, b) in view.blocks().iter().enumerate().skip(1) {
            assert_eq!(b.header.prev_blockhash, view.blocks()[h - 1].hash);
            assert!(b.header.validate_pow(b.header.target()).is_ok());
        }
        assert!(ch.reorg(0).is_err());
        assert!(ch.reorg(10_000).is_err());
    }

    #[test]
    fn branch_views() {
        let ch = chain();
        let main = ch.main();
        let lag = ch.branch_view(5, 0);
        assert_eq!(lag.tip_height(), 295);
        assert_eq!(lag.tip().hash, main.block(295).unwrap().hash);
        // Transactions of the missing blocks are unconfirmed there.
        let txid = main.block(298).unwrap().txids.get(1).copied();
        if let Some(txid) = txid {
            assert!(lag.tx(&txid).unwrap().block.is_none());
        }
        let fork = ch.branch_view(0, 3);
        assert_eq!(fork.tip_height(), 300);
        assert_eq!(fork.block(297).unwrap().hash, main.block(297).unwrap().hash);
        for h in 298..=300 {
            let b = fork.block(h).unwrap();
            assert_ne!(b.hash, main.block(h).unwrap().hash);
            assert!(b.header.validate_pow(b.header.target()).is_ok());
            assert_eq!(b.header.prev_blockhash, fork.block(h - 1).unwrap().hash);
        }
        // Deterministic.
        assert_eq!(ch.branch_view(0, 3).tip().hash, fork.tip().hash);
        let both = ch.branch_view(2, 3);
        assert_eq!(both.tip_height(), 298);
        assert_eq!(both.block(298).unwrap().hash, fork.block(298).unwrap().hash);
    }

    #[test]
    fn header_proofs_verify() {
        let ch = chain();
        let view = ch.main();
        let leaves = view.block_hashes(200);
        let (branch, root) = merkle_branch(&leaves, 77);
        assert_eq!(merkle_fold(leaves[77], &branch, 77), root);
    }

    #[test]
    fn pay_targets() {
        assert!(pay_target(ADDRESSES[3].scripthash).is_ok());
        assert!(pay_target(&"ab".repeat(32)).is_err());
        assert!(pay_target("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080").is_ok());
        assert!(pay_target("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4").is_err());
    }
}
