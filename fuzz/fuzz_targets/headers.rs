//! Header acceptance on a regtest chain (and on a regtest chain that retargets every 12 blocks
//! and allows min-difficulty blocks, so the difficulty rules run): headers mined on any known
//! block with fuzzed times, bits, versions and claimed heights, raw 80-byte headers, header
//! hex, tie-breaks and header proofs. It must never panic; after every step the best chain
//! must link from genesis, meet its bits and the median-time rule, carry the work it claims;
//! a refused chunk must change nothing; and every header proof it gives must verify.
#![no_main]

use arbitrary::Arbitrary;
use bitcoin::block::{Header, Version};
use bitcoin::hashes::Hash;
use bitcoin::{BlockHash, CompactTarget, Network, Target, TxMerkleNode, Work};
use electrum_gateway::chain::{check_header_proof, check_own_work, ChainParams, HeaderChain};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Mined {
    /// Seconds after its parent (negative: before).
    dt: i16,
    /// Bits other than the required ones (mined if easy enough).
    bits: Option<u32>,
    /// Version other than 4.
    version: Option<i32>,
    /// Leave the nonce as found by the fuzzer (likely failing proof of work).
    unmined: bool,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Headers mined on a known block (`parent` picks one), sent as starting at their true
    /// height plus `shift`.
    Mine {
        parent: u16,
        headers: Vec<Mined>,
        shift: i8,
        hex: bool,
    },
    /// Arbitrary headers at an arbitrary height.
    Raw { start: u32, headers: Vec<[u8; 80]> },
    /// Arbitrary header hex at an arbitrary height.
    Hex { start: u32, hex: String },
    /// Break a tie for a known block.
    Prefer { which: u16 },
    /// A header proof.
    Proof { height: u16, cp_height: u16 },
    /// Shrink the reorg window.
    Window { blocks: u8 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    retarget: bool,
    ops: Vec<Op>,
}

/// Most headers one input mines, to keep an execution fast.
const MAX_MINED: usize = 400;
/// Nonces tried per header before giving up on one.
const MAX_TRIES: u32 = 4096;

fn params(retarget: bool) -> ChainParams {
    let mut p = ChainParams::new(Network::Regtest);
    if retarget {
        p.consensus.no_pow_retargeting = false;
        p.consensus.allow_min_difficulty_blocks = true;
        p.consensus.pow_target_spacing = 600;
        p.consensus.pow_target_timespan = 12 * 600;
    }
    p
}

/// The best chain's headers from genesis, as the chain serves them.
fn best(chain: &HeaderChain) -> Vec<Header> {
    (0..=chain.height())
        .map(|h| {
            *chain
                .header(h)
                .expect("every height up to the tip has a header")
        })
        .collect()
}

fn check_invariants(chain: &HeaderChain, params: &ChainParams) {
    let headers = best(chain);
    assert_eq!(headers[0], params.genesis);
    let mut work = Work::from_be_bytes([0; 32]);
    let mut times: Vec<u32> = Vec::new();
    for (h, header) in headers.iter().enumerate() {
        work = work + header.work();
        if h > 0 {
            assert_eq!(
                header.prev_blockhash,
                headers[h - 1].block_hash(),
                "link at {h}"
            );
            assert!(check_own_work(params, header).is_ok(), "work at {h}");
            let mut last: Vec<u32> = times.iter().rev().take(11).copied().collect();
            last.sort_unstable();
            assert!(header.time > last[last.len() / 2], "median time at {h}");
            if params.consensus.no_pow_retargeting {
                assert_eq!(header.bits, params.genesis.bits, "bits at {h}");
            }
        }
        times.push(header.time);
        assert_eq!(chain.hash(h as u32), Some(header.block_hash()));
        assert_eq!(chain.height_of(&header.block_hash()), Some(h as u32));
    }
    assert_eq!(chain.cumulative_work(), work, "work of the best chain");
    assert_eq!(chain.tip().hash, headers[headers.len() - 1].block_hash());
}

fn mine(mut header: Header, tries: u32) -> Option<Header> {
    let target = Target::from_compact(header.bits);
    for _ in 0..tries {
        if header.validate_pow(target).is_ok() {
            return Some(header);
        }
        header.nonce = header.nonce.wrapping_add(1);
    }
    None
}

fuzz_target!(|input: Input| {
    let params = params(input.retarget);
    let mut chain = HeaderChain::with_params(params.clone());
    // Every header seen that has a place: (header, height).
    let mut known: Vec<(Header, u32)> = vec![(params.genesis, 0)];
    let mut mined = 0usize;
    for op in input.ops {
        let before = (chain.tip().hash, chain.height(), chain.cumulative_work());
        let (result, claimed) = match op {
            Op::Mine {
                parent,
                headers,
                shift,
                hex,
            } => {
                let (mut prev, height) = known[usize::from(parent) % known.len()];
                let mut chunk = Vec::new();
                for (k, m) in headers.iter().enumerate() {
                    if mined >= MAX_MINED {
                        break;
                    }
                    mined += 1;
                    let header = Header {
                        version: Version::from_consensus(m.version.unwrap_or(4)),
                        prev_blockhash: prev.block_hash(),
                        merkle_root: TxMerkleNode::from_byte_array([k as u8; 32]),
                        time: prev.time.wrapping_add_signed(i32::from(m.dt)),
                        bits: m.bits.map_or(prev.bits, CompactTarget::from_consensus),
                        nonce: mined as u32,
                    };
                    let header = if m.unmined {
                        header
                    } else {
                        match mine(header, MAX_TRIES) {
                            Some(h) => h,
                            None => break,
                        }
                    };
                    chunk.push(header);
                    prev = header;
                }
                if chunk.is_empty() {
                    continue;
                }
                let start = (height + 1).saturating_add_signed(i32::from(shift));
                for (k, h) in chunk.iter().enumerate() {
                    known.push((*h, height + 1 + k as u32));
                }
                let result = if hex {
                    let text: String = chunk
                        .iter()
                        .map(bitcoin::consensus::encode::serialize_hex)
                        .collect();
                    chain.accept_hex(start, &text)
                } else {
                    chain.accept(start, &chunk)
                };
                (result, Some((start, chunk)))
            }
            Op::Raw { start, headers } => {
                let chunk: Vec<Header> = headers
                    .iter()
                    .filter_map(|b| bitcoin::consensus::deserialize(b).ok())
                    .collect();
                (chain.accept(start, &chunk), Some((start, chunk)))
            }
            Op::Hex { start, hex } => (chain.accept_hex(start, &hex), None),
            Op::Prefer { which } => {
                let hash: BlockHash = known[usize::from(which) % known.len()].0.block_hash();
                let _ = chain.prefer(&hash);
                check_invariants(&chain, &params);
                continue;
            }
            Op::Proof { height, cp_height } => {
                let (height, cp_height) = (u32::from(height), u32::from(cp_height));
                if let Ok(proof) = chain.header_proof(height, cp_height) {
                    let header = *chain.header(height).expect("proved header is on the chain");
                    check_header_proof(&header, height, &proof.branch, &proof.root, cp_height)
                        .unwrap_or_else(|e| panic!("own proof of {height} at {cp_height}: {e}"));
                }
                continue;
            }
            Op::Window { blocks } => {
                chain.set_reorg_window(u32::from(blocks));
                continue;
            }
        };
        match result {
            Ok(_) => {
                // Every header of an accepted chunk met its own bits.
                if let Some((_, chunk)) = &claimed {
                    for h in chunk {
                        assert!(
                            check_own_work(&params, h).is_ok()
                                || chain.height_of(&h.block_hash()).is_none(),
                            "accepted a header without its proof of work"
                        );
                    }
                }
            }
            Err(_) => {
                let after = (chain.tip().hash, chain.height(), chain.cumulative_work());
                assert_eq!(before, after, "a refused chunk changed the chain");
            }
        }
        check_invariants(&chain, &params);
    }
});
