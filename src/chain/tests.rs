//! Header chain tests on real mainnet headers and on chains mined here (regtest-easy targets).

use std::str::FromStr;

use bitcoin::block::{Header, Version};
use bitcoin::consensus::encode::deserialize_hex;
use bitcoin::consensus::Params;
use bitcoin::hashes::Hash;
use bitcoin::pow::{CompactTarget, Target, Work};
use bitcoin::{merkle_tree, BlockHash, Network, TxMerkleNode};

use super::difficulty::{required_bits, DifficultyContext};
use super::*;

// ---------------------------------------------------------------------------------------------
// Helpers

/// Grind the nonce until the header meets its own bits.
fn mine(mut header: Header) -> Header {
    while header.validate_pow(header.target()).is_err() {
        header.nonce += 1;
    }
    header
}

/// A header that does *not* meet its own bits.
fn unmine(mut header: Header) -> Header {
    while header.validate_pow(header.target()).is_ok() {
        header.nonce += 1;
    }
    header
}

/// Builds valid headers on top of some block, tracking what the difficulty rules need.
#[derive(Clone)]
struct Growth {
    ctx: DifficultyContext,
    hash: BlockHash,
    time: u32,
}

impl Growth {
    fn genesis(params: &ChainParams) -> Growth {
        Growth {
            ctx: DifficultyContext::genesis(&params.genesis),
            hash: params.genesis.block_hash(),
            time: params.genesis.time,
        }
    }

    /// After `headers` (heights 1.., on top of genesis).
    fn after(params: &ChainParams, headers: &[Header]) -> Growth {
        let mut g = Growth::genesis(params);
        for h in headers {
            g.ctx = g.ctx.advance(params, h);
            g.hash = h.block_hash();
            g.time = h.time;
        }
        g
    }

    fn header(&self, step: u32, tag: u8, bits: CompactTarget) -> Header {
        Header {
            version: Version::from_consensus(0x2000_0000),
            prev_blockhash: self.hash,
            merkle_root: TxMerkleNode::from_byte_array([tag; 32]),
            time: self.time + step,
            bits,
            nonce: 0,
        }
    }

    fn push(&mut self, params: &ChainParams, header: Header) -> Header {
        self.ctx = self.ctx.advance(params, &header);
        self.hash = header.block_hash();
        self.time = header.time;
        header
    }

    /// The next valid header, `step` seconds after the last.
    fn next(&mut self, params: &ChainParams, step: u32, tag: u8) -> Header {
        let bits = required_bits(params, &self.ctx, self.time + step);
        let header = mine(self.header(step, tag, bits));
        self.push(params, header)
    }

    fn many(&mut self, params: &ChainParams, n: usize, step: u32, tag: u8) -> Vec<Header> {
        (0..n).map(|_| self.next(params, step, tag)).collect()
    }
}

fn regtest() -> ChainParams {
    ChainParams::new(Network::Regtest)
}

/// Easy-to-mine parameters with retargeting on: 16-block periods of 16 s (1 s spacing),
/// proof-of-work limit 0x2003ffff, genesis at the harder 0x2000ffff.
fn easy_params(allow_min_difficulty: bool, bip94: bool) -> ChainParams {
    let mut consensus = Params::new(Network::Regtest);
    consensus.pow_target_spacing = 1;
    consensus.pow_target_timespan = 16;
    consensus.no_pow_retargeting = false;
    consensus.allow_min_difficulty_blocks = allow_min_difficulty;
    let limit = Target::from_compact(CompactTarget::from_consensus(0x2003ffff));
    #[allow(deprecated)]
    {
        consensus.pow_limit = limit;
    }
    consensus.max_attainable_target = limit;
    let genesis = mine(Header {
        version: Version::ONE,
        prev_blockhash: BlockHash::all_zeros(),
        merkle_root: TxMerkleNode::from_byte_array([0xaa; 32]),
        time: 1_700_000_000,
        bits: CompactTarget::from_consensus(0x2000ffff),
        nonce: 0,
    });
    ChainParams {
        consensus,
        genesis,
        bip94,
        checkpoints: Vec::new(),
    }
}

fn work_times(bits: u32, n: u64) -> Work {
    let one = Target::from_compact(CompactTarget::from_consensus(bits)).to_work();
    (1..n).fold(one, |acc, _| acc + one)
}

fn reject(height: u32, reason: RejectReason) -> Result<Accepted, Rejected> {
    Err(Rejected { height, reason })
}

// ---------------------------------------------------------------------------------------------
// Real data

/// Mainnet headers 1 to 10 and their hashes (public: many block explorers and test suites).
const MAINNET_1_TO_10: [(&str, &str); 10] = [
    ("010000006fe28c0ab6f1b372c1a6a246ae63f74f931e8365e15a089c68d6190000000000982051fd1e4ba744bbbe680e1fee14677ba1a3c3540bf7b1cdb606e857233e0e61bc6649ffff001d01e36299", "00000000839a8e6886ab5951d76f411475428afc90947ee320161bbf18eb6048"),
    ("010000004860eb18bf1b1620e37e9490fc8a427514416fd75159ab86688e9a8300000000d5fdcc541e25de1c7a5addedf24858b8bb665c9f36ef744ee42c316022c90f9bb0bc6649ffff001d08d2bd61", "000000006a625f06636b8bb6ac7b960a8d03705d1ace08b1a19da3fdcc99ddbd"),
    ("01000000bddd99ccfda39da1b108ce1a5d70038d0a967bacb68b6b63065f626a0000000044f672226090d85db9a9f2fbfe5f0f9609b387af7be5b7fbb7a1767c831c9e995dbe6649ffff001d05e0ed6d", "0000000082b5015589a3fdf2d4baff403e6f0be035a5d9742c1cae6295464449"),
    ("010000004944469562ae1c2c74d9a535e00b6f3e40ffbad4f2fda3895501b582000000007a06ea98cd40ba2e3288262b28638cec5337c1456aaf5eedc8e9e5a20f062bdf8cc16649ffff001d2bfee0a9", "000000004ebadb55ee9096c9a2f8880e09da59c0d68b1c228da88e48844a1485"),
    ("0100000085144a84488ea88d221c8bd6c059da090e88f8a2c99690ee55dbba4e00000000e11c48fecdd9e72510ca84f023370c9a38bf91ac5cae88019bee94d24528526344c36649ffff001d1d03e477", "000000009b7262315dbf071787ad3656097b892abffd1f95a1a022f896f533fc"),
    ("01000000fc33f596f822a0a1951ffdbf2a897b095636ad871707bf5d3162729b00000000379dfb96a5ea8c81700ea4ac6b97ae9a9312b2d4301a29580e924ee6761a2520adc46649ffff001d189c4c97", "000000003031a0e73735690c5a1ff2a4be82553b2a12b776fbd3a215dc8f778d"),
    ("010000008d778fdc15a2d3fb76b7122a3b5582bea4f21f5a0c693537e7a03130000000003f674005103b42f984169c7d008370967e91920a6a5d64fd51282f75bc73a68af1c66649ffff001d39a59c86", "0000000071966c2b1d065fd446b1e485b2c9d9594acd2007ccbd5441cfc89444"),
    ("010000004494c8cf4154bdcc0720cd4a59d9c9b285e4b146d45f061d2b6c967100000000e3855ed886605b6d4a99d5fa2ef2e9b0b164e63df3c4136bebf2d0dac0f1f7a667c86649ffff001d1c4b5666", "00000000408c48f847aa786c2268fc3e6ec2af68e8468a34a28c61b7f1de0dc6"),
    ("01000000c60ddef1b7618ca2348a46e868afc26e3efc68226c78aa47f8488c4000000000c997a5e56e104102fa209c6a852dd90660a20b2d9c352423edce25857fcd37047fca6649ffff001d28404f53", "000000008d9dc510f23c2657fc4f67bea30078cc05a90eb89e84cc475c080805"),
    ("010000000508085c47cc849eb80ea905cc7800a3be674ffc57263cf210c59d8d00000000112ba175a1e04b14ba9e7ea5f76ab640affeef5ec98173ac9799a852fa39add320cd6649ffff001d1e2de565", "000000002c05cc2e78923c34df87fd108b22221ac6076c18f3ade378a4d915e9"),
];

fn mainnet_headers() -> Vec<Header> {
    MAINNET_1_TO_10
        .iter()
        .map(|(hex, _)| deserialize_hex::<Header>(hex).unwrap())
        .collect()
}

#[test]
fn genesis_hashes_of_every_network() {
    // Bitcoin Core chainparams (mainnet, testnet3, signet, regtest) and BIP-94 (testnet4).
    let expected = [
        (
            Network::Bitcoin,
            "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f",
        ),
        (
            Network::Testnet,
            "000000000933ea01ad0ee984209779baaec3ced90fa3f408719526f8d77f4943",
        ),
        (
            Network::Testnet4,
            "00000000da84f2bafbbc53dee25a72ae507ff4914b867c565be350b0da8bf043",
        ),
        (
            Network::Signet,
            "00000008819873e925422c1ff0f99f7cc9bbb232af63a077a480a3633bee1ef6",
        ),
        (
            Network::Regtest,
            "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206",
        ),
    ];
    for (net, hash) in expected {
        let chain = HeaderChain::new(net);
        assert_eq!(chain.height(), 0);
        assert_eq!(chain.tip().hash.to_string(), hash, "{net}");
        assert_eq!(
            chain.height_of(&BlockHash::from_str(hash).unwrap()),
            Some(0)
        );
    }
}

#[test]
fn real_mainnet_headers_link_and_meet_their_targets() {
    let mut chain = HeaderChain::new(Network::Bitcoin);
    let headers = mainnet_headers();
    assert_eq!(
        chain.accept(1, &headers),
        Ok(Accepted::Extended { from: 1, tip: 10 })
    );
    assert_eq!(chain.verified_count(), 10);
    for (i, (hex, hash)) in MAINNET_1_TO_10.iter().enumerate() {
        let height = i as u32 + 1;
        assert_eq!(chain.hash(height).unwrap().to_string(), *hash);
        assert_eq!(chain.header_hex(height).unwrap(), *hex);
        assert_eq!(
            chain.height_of(&BlockHash::from_str(hash).unwrap()),
            Some(height)
        );
    }
    // Bitcoin Core's `chainwork` for block 10 is 0x0b000b000b: 11 blocks of 0x100010001.
    assert_eq!(
        chain.cumulative_work(),
        Work::from_hex("0x0000000b000b000b").unwrap()
    );
    // Sent again, or overlapping: nothing new.
    assert_eq!(chain.accept(0, &headers[..0]), Ok(Accepted::Known));
    assert_eq!(chain.accept(3, &headers[2..6]), Ok(Accepted::Known));
    assert_eq!(chain.verified_count(), 10);
    assert_eq!(chain.headers(9, 100), &headers[8..]);
    assert!(chain.headers(11, 5).is_empty());
}

#[test]
fn tampered_mainnet_headers_are_rejected_without_changing_anything() {
    let headers = mainnet_headers();
    let mut chain = HeaderChain::new(Network::Bitcoin);

    let mut bad = headers.clone();
    bad[4].nonce ^= 1;
    assert_eq!(chain.accept(1, &bad), reject(5, RejectReason::BadPow));

    let mut bad = headers.clone();
    bad[6].bits = CompactTarget::from_consensus(0x1d00fffe);
    assert_eq!(chain.accept(1, &bad), reject(7, RejectReason::BadTarget));

    let mut bad = headers.clone();
    bad.swap(2, 3);
    assert_eq!(chain.accept(1, &bad), reject(3, RejectReason::BadLink));

    // Starting above the tip: the parent is not known.
    assert_eq!(
        chain.accept(2, &headers[1..]),
        reject(2, RejectReason::Unconnected)
    );
    // Claiming a height the first header's parent is not at.
    assert_eq!(
        chain.accept(3, &headers[0..1]),
        reject(3, RejectReason::Unconnected)
    );

    assert_eq!(chain.height(), 0);
    assert_eq!(chain.verified_count(), 0, "a refused chunk commits nothing");
    assert_eq!(
        chain.accept(1, &headers),
        Ok(Accepted::Extended { from: 1, tip: 10 })
    );
}

#[test]
fn accept_hex_takes_the_blockchain_block_headers_form() {
    let mut chain = HeaderChain::new(Network::Bitcoin);
    let hex: String = MAINNET_1_TO_10[..3].iter().map(|(h, _)| *h).collect();
    assert_eq!(
        chain.accept_hex(1, &hex),
        Ok(Accepted::Extended { from: 1, tip: 3 })
    );
    assert_eq!(
        chain.accept_hex(4, &hex[..100]),
        reject(4, RejectReason::BadEncoding)
    );
    assert_eq!(
        chain.accept_hex(4, "zz"),
        reject(4, RejectReason::BadEncoding)
    );
    assert_eq!(chain.headers_hex(1, 3), hex);
    assert_eq!(chain.headers_hex(0, 1).len(), 160);

    // Starting at genesis, as a wallet-style chunk request returns it.
    let mut fresh = HeaderChain::new(Network::Bitcoin);
    let mut from_zero = vec![fresh.tip().header];
    from_zero.extend(mainnet_headers());
    assert_eq!(
        fresh.accept(0, &from_zero),
        Ok(Accepted::Extended { from: 1, tip: 10 })
    );
}

// ---------------------------------------------------------------------------------------------
// Mined chains: rules

#[test]
fn regtest_chain_grows_in_chunks() {
    let params = regtest();
    let mut chain = HeaderChain::with_params(params.clone());
    let mut g = Growth::genesis(&params);
    let headers = g.many(&params, 30, 600, 1);
    assert_eq!(
        chain.accept(1, &headers[..10]),
        Ok(Accepted::Extended { from: 1, tip: 10 })
    );
    // Overlapping chunk: the known part is skipped, the rest appended.
    assert_eq!(
        chain.accept(6, &headers[5..20]),
        Ok(Accepted::Extended { from: 11, tip: 20 })
    );
    assert_eq!(
        chain.accept(21, &headers[20..]),
        Ok(Accepted::Extended { from: 21, tip: 30 })
    );
    assert_eq!(chain.verified_count(), 30);
    assert_eq!(chain.tip().hash, headers[29].block_hash());
    assert_eq!(chain.cumulative_work(), work_times(0x207fffff, 31));
    for (i, h) in headers.iter().enumerate() {
        assert!(chain.contains(&h.block_hash()));
        assert_eq!(chain.height_of(&h.block_hash()), Some(i as u32 + 1));
    }
    assert!(!chain.contains(&BlockHash::all_zeros()));
}

#[test]
fn regtest_rejects_wrong_bits_bad_pow_bad_time_and_foreign_genesis() {
    let params = regtest();
    let mut chain = HeaderChain::with_params(params.clone());
    let mut g = Growth::genesis(&params);
    let base = g.many(&params, 12, 600, 1);
    chain.accept(1, &base).unwrap();

    // Regtest never retargets: any other bits are wrong even with valid work behind them.
    let wrong_bits = mine(g.header(600, 2, CompactTarget::from_consensus(0x2000ffff)));
    assert_eq!(
        chain.accept(13, &[wrong_bits]),
        reject(13, RejectReason::BadTarget)
    );

    let no_work = unmine(g.header(600, 2, CompactTarget::from_consensus(0x207fffff)));
    assert_eq!(
        chain.accept(13, &[no_work]),
        reject(13, RejectReason::BadPow)
    );

    // Median of the last eleven timestamps is that of block 7; equal is too old.
    let median = base[6].time;
    let old = mine(Header {
        time: median,
        ..g.header(0, 2, CompactTarget::from_consensus(0x207fffff))
    });
    assert_eq!(chain.accept(13, &[old]), reject(13, RejectReason::BadTime));
    let ok = mine(Header {
        time: median + 1,
        ..old
    });
    assert_eq!(
        chain.accept(13, &[ok]),
        Ok(Accepted::Extended { from: 13, tip: 13 })
    );

    let foreign = HeaderChain::new(Network::Bitcoin).tip().header;
    assert_eq!(
        chain.accept(0, &[foreign]),
        reject(0, RejectReason::BadGenesis)
    );
}

#[test]
fn versions_below_the_bip34_66_65_floors_are_rejected() {
    let mut params = regtest();
    params.consensus.bip34_height = 3;
    params.consensus.bip66_height = 5;
    params.consensus.bip65_height = 7;
    let mut chain = HeaderChain::with_params(params.clone());
    let mut g = Growth::genesis(&params);
    let limit = CompactTarget::from_consensus(0x207fffff);
    let with_version = |g: &mut Growth, v: i32| {
        let h = mine(Header {
            version: Version::from_consensus(v),
            ..g.header(600, 1, limit)
        });
        g.push(&params, h)
    };
    let ok: Vec<Header> = vec![with_version(&mut g, 1), with_version(&mut g, 1)];
    chain.accept(1, &ok).unwrap();
    let mut g2 = g.clone();
    assert_eq!(
        chain.accept(3, &[with_version(&mut g2, 1)]),
        reject(3, RejectReason::BadVersion)
    );
    let h3 = with_version(&mut g, 2);
    let h4 = with_version(&mut g, 2);
    chain.accept(3, &[h3, h4]).unwrap();
    let mut g2 = g.clone();
    assert_eq!(
        chain.accept(5, &[with_version(&mut g2, 2)]),
        reject(5, RejectReason::BadVersion)
    );
    let h5 = with_version(&mut g, 3);
    let h6 = with_version(&mut g, 3);
    chain.accept(5, &[h5, h6]).unwrap();
    let mut g2 = g.clone();
    assert_eq!(
        chain.accept(7, &[with_version(&mut g2, 3)]),
        reject(7, RejectReason::BadVersion)
    );
    assert_eq!(
        chain.accept(7, &[with_version(&mut g, 4)]),
        Ok(Accepted::Extended { from: 7, tip: 7 })
    );
}

#[test]
fn retarget_at_period_boundaries_is_enforced() {
    let params = easy_params(false, false);
    let mut chain = HeaderChain::with_params(params.clone());
    let mut g = Growth::genesis(&params);
    // Period 0: 15 blocks 2 s apart, so block 15 is 30 s after genesis (16 s expected).
    let period0 = g.many(&params, 15, 2, 1);
    assert!(period0.iter().all(|h| h.bits.to_consensus() == 0x2000ffff));
    chain.accept(1, &period0).unwrap();
    // Target x 30/16, worked out by hand: 0xffff * 30 = 0x1dffe2 -> compact 0x2001dffe.
    let stale = mine(g.header(2, 1, CompactTarget::from_consensus(0x2000ffff)));
    assert_eq!(
        chain.accept(16, &[stale]),
        reject(16, RejectReason::BadTarget)
    );
    let boundary = g.next(&params, 2, 1);
    assert_eq!(boundary.bits.to_consensus(), 0x2001dffe);
    // Period 1: slow (8 s apart, x7.5 clamped to x4), which would pass the limit: capped.
    let mut period1 = vec![boundary];
    period1.extend(g.many(&params, 15, 8, 1));
    let next = g.next(&params, 8, 1);
    assert_eq!(next.bits.to_consensus(), 0x2003ffff);
    period1.push(next);
    assert_eq!(
        chain.accept(16, &period1),
        Ok(Accepted::Extended { from: 16, tip: 32 })
    );
}

#[test]
fn min_difficulty_exception_and_walk_back_across_chunks() {
    let params = easy_params(true, false);
    let real = CompactTarget::from_consensus(0x2000ffff);
    let limit = params.pow_limit_bits();
    let mut chain = HeaderChain::with_params(params.clone());
    let mut g = Growth::genesis(&params);
    let quick = g.many(&params, 3, 1, 1);
    assert!(quick.iter().all(|h| h.bits == real));
    chain.accept(1, &quick).unwrap();
    // More than two spacings later: the limit is required, real bits are wrong.
    let late_real = mine(g.header(3, 1, real));
    assert_eq!(
        chain.accept(4, &[late_real]),
        reject(4, RejectReason::BadTarget)
    );
    let late = g.next(&params, 3, 1);
    assert_eq!(late.bits, limit);
    chain.accept(4, &[late]).unwrap();
    // Back on time: the last real bits again (found by walking back over block 4, in a
    // separate call, so from stored headers), not the limit.
    let quick_limit = mine(g.header(1, 1, limit));
    assert_eq!(
        chain.accept(5, &[quick_limit]),
        reject(5, RejectReason::BadTarget)
    );
    let back = g.next(&params, 1, 1);
    assert_eq!(back.bits, real);
    assert_eq!(
        chain.accept(5, &[back]),
        Ok(Accepted::Extended { from: 5, tip: 5 })
    );
}

#[test]
fn bip94_retargets_from_the_first_block_and_stops_time_warps() {
    let bip94 = easy_params(true, true);
    let mut testnet3 = bip94.clone();
    testnet3.bip94 = false;
    let mut g = Growth::genesis(&bip94);
    let mut period0 = g.many(&bip94, 14, 1, 1);
    // The period's last block comes 1000 s late and uses the min-difficulty exception.
    period0.push(g.next(&bip94, 1000, 1));
    assert_eq!(period0[14].bits, bip94.pow_limit_bits());
    let mut strict = HeaderChain::with_params(bip94.clone());
    let mut legacy = HeaderChain::with_params(testnet3.clone());
    strict.accept(1, &period0).unwrap();
    legacy.accept(1, &period0).unwrap();

    // Span 1014 s clamps to x4. BIP-94 scales the first block's 0x2000ffff: 0xffff * 4 =
    // 0x3fffc -> 0x2003fffc. Testnet3 scales the last block's limit bits: stays at the limit.
    let bip94_bits = CompactTarget::from_consensus(0x2003fffc);
    let legacy_bits = CompactTarget::from_consensus(0x2003ffff);
    let after = |bits, dt: i64| {
        let t = (i64::from(g.time) + dt) as u32;
        mine(Header {
            time: t,
            ..g.header(0, 1, bits)
        })
    };
    assert_eq!(
        strict.accept(16, &[after(legacy_bits, 1)]),
        reject(16, RejectReason::BadTarget)
    );
    assert_eq!(
        legacy.accept(16, &[after(bip94_bits, 1)]),
        reject(16, RejectReason::BadTarget)
    );

    // 700 s before its parent (but above the median time past): a time warp on testnet4 only.
    assert_eq!(
        strict.accept(16, &[after(bip94_bits, -700)]),
        reject(16, RejectReason::BadTime)
    );
    assert!(matches!(
        legacy.accept(16, &[after(legacy_bits, -700)]),
        Ok(Accepted::Extended { .. })
    ));
    assert_eq!(
        strict.accept(16, &[after(bip94_bits, -500)]),
        Ok(Accepted::Extended { from: 16, tip: 16 })
    );
}

#[test]
fn checkpoints_pin_hashes() {
    let mut params = regtest();
    let mut ga = Growth::genesis(&params);
    let a = ga.many(&params, 5, 600, 1);
    let mut gb = Growth::genesis(&params);
    let b = gb.many(&params, 5, 600, 2);
    params.checkpoints = vec![Checkpoint {
        height: 3,
        hash: b[2].block_hash(),
    }];
    let mut chain = HeaderChain::with_params(params);
    assert_eq!(chain.accept(1, &a), reject(3, RejectReason::Checkpoint));
    assert_eq!(chain.height(), 0);
    assert_eq!(
        chain.accept(1, &b),
        Ok(Accepted::Extended { from: 1, tip: 5 })
    );
}

// ---------------------------------------------------------------------------------------------
// Forks

#[test]
fn forks_switch_only_on_strictly_more_work() {
    let params = regtest();
    let mut chain = HeaderChain::with_params(params.clone());
    let mut ga = Growth::genesis(&params);
    let a = ga.many(&params, 10, 600, 1);
    chain.accept(1, &a).unwrap();

    // Branch b forks after block 5 and reaches the same height: same work, kept aside.
    let mut gb = Growth::after(&params, &a[..5]);
    let b = gb.many(&params, 6, 600, 2);
    assert_eq!(
        chain.accept(6, &b[..5]),
        Ok(Accepted::SideBranch { fork: 5, tip: 10 })
    );
    assert_eq!(chain.tip().hash, a[9].block_hash());
    assert_eq!(chain.side_headers(), 5);

    // One more block on b (sent alone, attaching to the kept branch): b wins.
    assert_eq!(
        chain.accept(11, &b[5..]),
        Ok(Accepted::Reorganized {
            fork: 5,
            disconnected: 5,
            tip: 11
        })
    );
    assert_eq!(chain.tip().hash, b[5].block_hash());
    assert_eq!(chain.hash(8), Some(b[2].block_hash()));
    assert!(!chain.contains(&a[7].block_hash()));
    assert_eq!(chain.height_of(&b[0].block_hash()), Some(6));
    assert_eq!(chain.height_of(&a[4].block_hash()), Some(5));
    assert_eq!(chain.cumulative_work(), work_times(0x207fffff, 12));

    // a comes back with two more blocks on its old tip (now kept aside): a wins again.
    let a_more = ga.many(&params, 2, 600, 1);
    assert_eq!(
        chain.accept(11, &a_more),
        Ok(Accepted::Reorganized {
            fork: 5,
            disconnected: 6,
            tip: 12
        })
    );
    assert_eq!(chain.tip().hash, a_more[1].block_hash());
    assert_eq!(chain.hash(10), Some(a[9].block_hash()));
    assert!(!chain.contains(&b[5].block_hash()));
    assert_eq!(chain.cumulative_work(), work_times(0x207fffff, 13));
    assert_eq!(chain.verified_count(), 10 + 6 + 2);
}

#[test]
fn a_whole_competing_chunk_from_the_fork_point_reorganises_in_one_call() {
    let params = regtest();
    let mut chain = HeaderChain::with_params(params.clone());
    let mut ga = Growth::genesis(&params);
    let a = ga.many(&params, 8, 600, 1);
    chain.accept(1, &a).unwrap();
    let mut gb = Growth::after(&params, &a[..3]);
    let mut b = a[..3].to_vec();
    b.extend(gb.many(&params, 7, 600, 2));
    // The upstream sends its chain from height 1: the shared prefix is skipped.
    assert_eq!(
        chain.accept(1, &b),
        Ok(Accepted::Reorganized {
            fork: 3,
            disconnected: 5,
            tip: 10
        })
    );
    assert_eq!(chain.verified_count(), 8 + 7);
}

#[test]
fn forks_below_the_reorg_window_are_too_old() {
    let params = regtest();
    let mut chain = HeaderChain::with_params(params.clone());
    chain.set_reorg_window(3);
    let mut ga = Growth::genesis(&params);
    let a = ga.many(&params, 10, 600, 1);
    chain.accept(1, &a).unwrap();
    let mut gb = Growth::after(&params, &a[..6]);
    let b = gb.many(&params, 8, 600, 2);
    assert_eq!(chain.accept(7, &b), reject(7, RejectReason::TooOld));
    let mut gc = Growth::after(&params, &a[..7]);
    let c = gc.many(&params, 8, 600, 3);
    assert_eq!(
        chain.accept(8, &c),
        Ok(Accepted::Reorganized {
            fork: 7,
            disconnected: 3,
            tip: 15
        })
    );
}

#[test]
fn deep_forks_are_refused_by_their_own_header_before_their_place_is_looked_up() {
    let params = regtest();
    let mut chain = HeaderChain::with_params(params.clone());
    chain.set_reorg_window(3);
    let mut ga = Growth::genesis(&params);
    let a = ga.many(&params, 10, 600, 1);
    chain.accept(1, &a).unwrap();
    let before = (chain.tip(), chain.cumulative_work(), chain.verified_count());

    // A valid header on block 5: its parent is on the best chain but below the window.
    let deep = Growth::after(&params, &a[..5]).next(&params, 601, 2);
    assert_eq!(chain.accept(6, &[deep]), reject(6, RejectReason::TooOld));
    // One whose parent is nowhere: too old all the same, from its claimed height alone.
    let nowhere = mine(Header {
        prev_blockhash: BlockHash::from_byte_array([7; 32]),
        ..deep
    });
    assert_eq!(chain.accept(6, &[nowhere]), reject(6, RejectReason::TooOld));
    // Its own work comes first: without it, or above the network's limit, nothing else is
    // looked at.
    assert_eq!(
        chain.accept(6, &[unmine(deep)]),
        reject(6, RejectReason::BadPow)
    );
    let above_limit = mine(Header {
        bits: CompactTarget::from_consensus(0x2100ffff),
        ..deep
    });
    assert_eq!(
        chain.accept(6, &[above_limit]),
        reject(6, RejectReason::BadTarget)
    );
    assert_eq!(
        chain.accept(11, &[unmine(ga.header(600, 1, deep.bits))]),
        reject(11, RejectReason::BadPow)
    );
    assert_eq!(
        (chain.tip(), chain.cumulative_work(), chain.verified_count()),
        before
    );
    assert_eq!(chain.side_headers(), 0);
}

#[test]
fn cumulative_work_marks_follow_extensions_and_reorganisations() {
    let params = regtest();
    let mut chain = HeaderChain::with_params(params.clone());
    let mut g = Growth::genesis(&params);
    let a = g.many(&params, 2 * 2016 + 100, 600, 1);
    let mut start = 1;
    for chunk in a.chunks(1000) {
        chain.accept(start, chunk).unwrap();
        start += chunk.len() as u32;
    }
    let direct = |h: u32| work_times(0x207fffff, u64::from(h) + 1);
    for h in [
        0, 1, 1000, 2014, 2015, 2016, 2017, 3000, 4031, 4032, 4033, 4100, 4132,
    ] {
        assert_eq!(chain.work_up_to(h), direct(h), "height {h}");
    }
    assert_eq!(chain.work_up_to(chain.height()), chain.cumulative_work());
    // A heavier branch forking off below the last mark replaces the marks above the fork.
    chain.set_reorg_window(4000);
    let mut gb = Growth::after(&params, &a[..4020]);
    let b = gb.many(&params, 200, 601, 2);
    assert_eq!(
        chain.accept(4021, &b),
        Ok(Accepted::Reorganized {
            fork: 4020,
            disconnected: 112,
            tip: 4220
        })
    );
    for h in [2016, 4020, 4031, 4032, 4033, 4220] {
        assert_eq!(
            chain.work_up_to(h),
            direct(h),
            "height {h} after the reorganisation"
        );
    }
    assert_eq!(chain.cumulative_work(), direct(4220));
}

// ---------------------------------------------------------------------------------------------
// Header proofs

#[test]
fn header_proofs_match_a_direct_tree_and_pass_the_independent_check() {
    let params = regtest();
    let mut chain = HeaderChain::with_params(params.clone());
    let mut g = Growth::genesis(&params);
    let headers = g.many(&params, 36, 600, 1);
    chain.accept(1, &headers).unwrap();
    let mut small = HeaderChain::with_params(params.clone());
    small.accept(1, &headers).unwrap();
    small.set_proof_depth(2);

    for cp in [0u32, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 36] {
        let hashes: Vec<_> = (0..=cp).map(|h| chain.hash(h).unwrap()).collect();
        let root = merkle_tree::calculate_root(hashes.into_iter()).unwrap();
        for height in 0..=cp {
            let direct = chain.header_proof(height, cp).unwrap();
            let cached = small.header_proof(height, cp).unwrap();
            assert_eq!(direct, cached, "height {height} cp {cp}");
            assert_eq!(direct.root, root.to_string());
            let header = chain.header(height).unwrap();
            verify::check_header_proof(header, height, &direct.branch, &direct.root, cp).unwrap();
            if height > 0 {
                let other = chain.header(height - 1).unwrap();
                assert!(verify::check_header_proof(
                    other,
                    height,
                    &direct.branch,
                    &direct.root,
                    cp
                )
                .is_err());
            }
        }
    }
    assert_eq!(
        chain.header_proof(5, 37),
        Err(ProofError::OutOfRange {
            height: 5,
            cp_height: 37,
            tip: 36
        })
    );
    assert!(chain.header_proof(6, 5).is_err());
}

#[test]
fn header_proof_cache_follows_reorganisations() {
    let params = regtest();
    let mut chain = HeaderChain::with_params(params.clone());
    chain.set_proof_depth(2);
    let mut ga = Growth::genesis(&params);
    let a = ga.many(&params, 20, 600, 1);
    chain.accept(1, &a).unwrap();
    let before = chain.header_proof(3, 20).unwrap();
    let mut gb = Growth::after(&params, &a[..9]);
    let b = gb.many(&params, 13, 600, 2);
    assert!(matches!(
        chain.accept(10, &b),
        Ok(Accepted::Reorganized { fork: 9, .. })
    ));
    let after = chain.header_proof(3, 20).unwrap();
    assert_ne!(before.root, after.root);
    let hashes: Vec<_> = (0..=20).map(|h| chain.hash(h).unwrap()).collect();
    assert_eq!(
        after.root,
        merkle_tree::calculate_root(hashes.into_iter())
            .unwrap()
            .to_string()
    );
    verify::check_header_proof(chain.header(3).unwrap(), 3, &after.branch, &after.root, 20)
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Store

#[test]
fn store_reload_trusts_what_was_verified() {
    let dir = tempfile::tempdir().unwrap();
    let params = regtest();
    let mut g = Growth::genesis(&params);
    let headers = g.many(&params, 40, 600, 1);
    {
        let mut chain = HeaderChain::open(params.clone(), dir.path()).unwrap();
        assert_eq!(chain.height(), 0);
        chain.accept(1, &headers[..25]).unwrap();
        chain.accept(26, &headers[25..]).unwrap();
        assert_eq!(chain.verified_count(), 40);
        assert_eq!(chain.persist_error(), None);
    }
    let chain = HeaderChain::open(params.clone(), dir.path()).unwrap();
    assert_eq!(chain.height(), 40);
    assert_eq!(chain.tip().hash, headers[39].block_hash());
    assert_eq!(
        chain.verified_count(),
        0,
        "reloaded headers are not verified again"
    );
    assert_eq!(chain.cumulative_work(), work_times(0x207fffff, 41));
    assert_eq!(chain.height_of(&headers[10].block_hash()), Some(11));
}

#[test]
fn store_recovers_from_a_torn_write_and_a_stale_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let params = regtest();
    let mut g = Growth::genesis(&params);
    let headers = g.many(&params, 30, 600, 1);
    {
        let mut chain = HeaderChain::open(params.clone(), dir.path()).unwrap();
        chain.accept(1, &headers[..20]).unwrap();
    }
    let dat = dir.path().join("headers-regtest.dat");
    let tip = dir.path().join("headers-regtest.tip");
    // A crash after appending ten headers and half of another, before the sidecar moved.
    let sidecar = std::fs::read_to_string(&tip).unwrap();
    {
        let mut chain = HeaderChain::open(params.clone(), dir.path()).unwrap();
        chain.accept(21, &headers[20..]).unwrap();
    }
    std::fs::write(&tip, &sidecar).unwrap();
    let mut bytes = std::fs::read(&dat).unwrap();
    bytes.extend_from_slice(&[0x42; 37]);
    std::fs::write(&dat, &bytes).unwrap();

    let chain = HeaderChain::open(params.clone(), dir.path()).unwrap();
    assert_eq!(chain.height(), 30);
    assert_eq!(
        chain.verified_count(),
        10,
        "only the part after the sidecar is checked again"
    );
    assert_eq!(std::fs::metadata(&dat).unwrap().len(), 31 * 80);
    drop(chain);

    // A damaged tail after the sidecar is dropped, the verified part kept.
    std::fs::write(&tip, &sidecar).unwrap();
    let mut bytes = std::fs::read(&dat).unwrap();
    bytes[25 * 80 + 70] ^= 0xff;
    std::fs::write(&dat, &bytes).unwrap();
    let chain = HeaderChain::open(params.clone(), dir.path()).unwrap();
    assert_eq!(
        chain.height(),
        20,
        "the re-verified chunk is refused as a whole"
    );
    assert_eq!(chain.tip().hash, headers[19].block_hash());
    drop(chain);

    // No usable sidecar: everything is verified again.
    std::fs::write(&tip, "regtest 5 not-a-hash\n").unwrap();
    let chain = HeaderChain::open(params.clone(), dir.path()).unwrap();
    assert_eq!(chain.verified_count(), u64::from(chain.height()));
}

#[test]
fn store_follows_reorganisations_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let params = regtest();
    let mut ga = Growth::genesis(&params);
    let a = ga.many(&params, 12, 600, 1);
    let mut gb = Growth::after(&params, &a[..4]);
    let b = gb.many(&params, 10, 600, 2);
    {
        let mut chain = HeaderChain::open(params.clone(), dir.path()).unwrap();
        chain.accept(1, &a).unwrap();
        assert!(matches!(
            chain.accept(5, &b),
            Ok(Accepted::Reorganized { fork: 4, .. })
        ));
    }
    let chain = HeaderChain::open(params.clone(), dir.path()).unwrap();
    assert_eq!(chain.height(), 14);
    assert_eq!(chain.tip().hash, b[9].block_hash());
    assert_eq!(chain.verified_count(), 0);
    drop(chain);

    // A checkpoint added since (pinning a's block 6) cuts the stored chain below it.
    let mut pinned = params.clone();
    pinned.checkpoints = vec![Checkpoint {
        height: 6,
        hash: a[5].block_hash(),
    }];
    let chain = HeaderChain::open(pinned, dir.path()).unwrap();
    assert_eq!(chain.height(), 5);
    assert_eq!(chain.tip().hash, b[0].block_hash());
}

#[test]
fn a_failed_store_write_keeps_the_chain_and_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let params = regtest();
    let mut g = Growth::genesis(&params);
    let headers = g.many(&params, 6, 600, 1);
    let mut chain = HeaderChain::open(params.clone(), dir.path()).unwrap();
    // Make replacing the sidecar fail: a non-empty directory where the file should go.
    let tip = dir.path().join("headers-regtest.tip");
    std::fs::remove_file(&tip).unwrap();
    std::fs::create_dir(&tip).unwrap();
    std::fs::write(tip.join("block"), b"x").unwrap();
    assert_eq!(
        chain.accept(1, &headers),
        Ok(Accepted::Extended { from: 1, tip: 6 })
    );
    assert!(chain.persist_error().is_some());
    assert_eq!(chain.height(), 6, "the chain lives in memory regardless");
    assert!(chain.flush().is_err());
    std::fs::remove_dir_all(&tip).unwrap();
    chain.flush().unwrap();
    assert_eq!(chain.persist_error(), None);
    drop(chain);
    let chain = HeaderChain::open(params, dir.path()).unwrap();
    assert_eq!((chain.height(), chain.verified_count()), (6, 0));
}

#[test]
fn the_chain_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<HeaderChain>();
}

#[test]
fn store_of_another_chain_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let main_genesis =
        bitcoin::consensus::encode::serialize(&HeaderChain::new(Network::Bitcoin).tip().header);
    std::fs::write(dir.path().join("headers-regtest.dat"), main_genesis).unwrap();
    assert!(matches!(
        HeaderChain::open(regtest(), dir.path()),
        Err(StoreError::WrongChain(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Speed

/// Verification speed; run with
/// `cargo test --release --lib chain::tests::verification_speed -- --ignored --nocapture`.
#[test]
#[ignore]
fn verification_speed() {
    let params = regtest();
    let mut g = Growth::genesis(&params);
    let headers = g.many(&params, 20 * 2016, 600, 1);
    let mut chain = HeaderChain::with_params(params);
    let started = std::time::Instant::now();
    for (i, chunk) in headers.chunks(2016).enumerate() {
        chain.accept(1 + (i * 2016) as u32, chunk).unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "verified {} headers in {:?}: {:.0} headers/s",
        headers.len(),
        elapsed,
        headers.len() as f64 / elapsed.as_secs_f64()
    );
    let started = std::time::Instant::now();
    let proof = chain.header_proof(1234, 40000).unwrap();
    println!("first header proof (cp 40000): {:?}", started.elapsed());
    let started = std::time::Instant::now();
    let again = chain.header_proof(30000, 40000).unwrap();
    println!("next header proof: {:?}", started.elapsed());
    assert_eq!(proof.root, again.root);
}

/// What refusing a deep-fork header costs on a long chain (`MEASURE_HEADERS`, default 900,000,
/// about mainnet's height); run with
/// `cargo test --release --lib chain::tests::deep_fork_refusal_cost -- --ignored --nocapture`.
#[test]
#[ignore]
fn deep_fork_refusal_cost() {
    let n: usize = std::env::var("MEASURE_HEADERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(900_000);
    let params = regtest();
    let mut g = Growth::genesis(&params);
    let mut chain = HeaderChain::with_params(params.clone());
    let mut all = Vec::with_capacity(n);
    while all.len() < n {
        let chunk = g.many(&params, 2016.min(n - all.len()), 600, 1);
        chain.accept(1 + all.len() as u32, &chunk).unwrap();
        all.extend(chunk);
    }
    println!("chain of {} headers", chain.height());
    for parent in [1, n / 2, n - 2100] {
        let fork = Growth::after(&params, &all[..parent]).next(&params, 601, 9);
        let height = parent as u32 + 1;
        let mut times = Vec::new();
        for _ in 0..5 {
            let started = std::time::Instant::now();
            let refused = chain.accept(height, &[fork]);
            times.push(started.elapsed());
            assert_eq!(refused, reject(height, RejectReason::TooOld));
        }
        times.sort();
        println!("refusing a fork off height {parent}: median {:?}", times[2]);
    }
    // A fork inside the window: placed as a side branch, its work computed from the marks.
    let parent = n - 2000;
    let fork = Growth::after(&params, &all[..parent]).next(&params, 601, 9);
    let started = std::time::Instant::now();
    let placed = chain.accept(parent as u32 + 1, &[fork]);
    println!(
        "placing a fork off height {parent} (inside the window): {:?}",
        started.elapsed()
    );
    assert!(
        matches!(placed, Ok(Accepted::SideBranch { .. })),
        "{placed:?}"
    );
    let mut times = Vec::new();
    for k in 0..5 {
        let next = g.next(&params, 600, 1);
        let started = std::time::Instant::now();
        chain.accept((n + 1 + k) as u32, &[next]).unwrap();
        times.push(started.elapsed());
    }
    times.sort();
    println!("extending the tip by one header: median {:?}", times[2]);
    println!("work index: {} bytes", chain.work_index_bytes());
}
