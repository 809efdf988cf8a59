//! The difficulty rules: which `bits` the next header must carry.
//!
//! This mirrors Bitcoin Core's `GetNextWorkRequired` / `CalculateNextWorkRequired`:
//! - inside a period the bits stay those of the previous block;
//! - at every `interval`-th height the target is rescaled by the time the previous period took
//!   (first to last block, the historical off-by-one included), clamped to x4 and /4 and to the
//!   proof-of-work limit; the arithmetic is `CompactTarget::from_next_work_required`;
//! - on networks that allow min-difficulty blocks (testnet3, testnet4, regtest) a block more
//!   than two spacings (20 minutes) after its parent must use the limit, and otherwise the bits
//!   of the last block of the period that did not use that exception;
//! - testnet4 (BIP-94) bases the retarget on the period's *first* block, which can never use
//!   the exception, instead of its last;
//! - regtest never retargets.
//!
//! The state needed is small and can be carried forward header by header (see
//! [`DifficultyContext::advance`]), so checking a 2016-header chunk never walks back.

use bitcoin::block::Header;
use bitcoin::pow::CompactTarget;

use super::params::ChainParams;

/// What the difficulty rules need to know about the chain ending at some block (`prev`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DifficultyContext {
    /// Height of `prev`.
    pub prev_height: u32,
    /// Timestamp of `prev`.
    pub prev_time: u32,
    /// Bits of `prev`.
    pub prev_bits: CompactTarget,
    /// Timestamp of the first block of `prev`'s difficulty period.
    pub period_first_time: u32,
    /// Bits of the first block of `prev`'s difficulty period.
    pub period_first_bits: CompactTarget,
    /// Bits of the newest block at or before `prev` in its period that did not use the
    /// min-difficulty exception (the period's first block if all did).
    pub last_real_bits: CompactTarget,
}

impl DifficultyContext {
    /// The context of a chain made of the genesis block alone.
    pub fn genesis(genesis: &Header) -> DifficultyContext {
        DifficultyContext {
            prev_height: 0,
            prev_time: genesis.time,
            prev_bits: genesis.bits,
            period_first_time: genesis.time,
            period_first_bits: genesis.bits,
            last_real_bits: genesis.bits,
        }
    }

    /// The context after `header`, which sits at `prev_height + 1`.
    pub fn advance(&self, params: &ChainParams, header: &Header) -> DifficultyContext {
        let height = self.prev_height + 1;
        let period_start = height % params.interval() == 0;
        let (period_first_time, period_first_bits) = if period_start {
            (header.time, header.bits)
        } else {
            (self.period_first_time, self.period_first_bits)
        };
        let last_real_bits = if period_start || header.bits != params.pow_limit_bits() {
            header.bits
        } else {
            self.last_real_bits
        };
        DifficultyContext {
            prev_height: height,
            prev_time: header.time,
            prev_bits: header.bits,
            period_first_time,
            period_first_bits,
            last_real_bits,
        }
    }
}

/// The bits a block at `ctx.prev_height + 1` with timestamp `time` must carry.
pub fn required_bits(params: &ChainParams, ctx: &DifficultyContext, time: u32) -> CompactTarget {
    let height = ctx.prev_height + 1;
    let consensus = &params.consensus;
    if height % params.interval() != 0 {
        if consensus.allow_min_difficulty_blocks {
            let spacing = i64::try_from(consensus.pow_target_spacing).unwrap_or(i64::MAX);
            if i64::from(time) > i64::from(ctx.prev_time).saturating_add(spacing.saturating_mul(2))
            {
                return params.pow_limit_bits();
            }
            return ctx.last_real_bits;
        }
        return ctx.prev_bits;
    }
    if consensus.no_pow_retargeting {
        return ctx.prev_bits;
    }
    let base = if params.bip94 {
        ctx.period_first_bits
    } else {
        ctx.prev_bits
    };
    retarget(params, base, ctx.period_first_time, ctx.prev_time)
}

/// The retarget at a period boundary: `base` scaled by how long the previous period took
/// (`last_time - first_time`), clamped as consensus requires.
pub fn retarget(
    params: &ChainParams,
    base: CompactTarget,
    first_time: u32,
    last_time: u32,
) -> CompactTarget {
    // Timestamps are not monotonic; a negative span is clamped to the minimum like any short one.
    let span = u64::try_from(i64::from(last_time) - i64::from(first_time)).unwrap_or(0);
    CompactTarget::from_next_work_required(base, span, &params.consensus)
}

#[cfg(test)]
mod tests {
    use bitcoin::Network;

    use super::*;

    fn bits(n: u32) -> CompactTarget {
        CompactTarget::from_consensus(n)
    }

    /// Bitcoin Core's `src/test/pow_tests.cpp` vectors: real mainnet periods.
    #[test]
    fn mainnet_retarget_matches_bitcoin_core_vectors() {
        let main = ChainParams::new(Network::Bitcoin);
        // Block 32256, the first difficulty increase: period 30240..=32255.
        assert_eq!(
            retarget(&main, bits(0x1d00ffff), 1261130161, 1262152739),
            bits(0x1d00d86a)
        );
        // Block 2016: the first period was slow; the target stays at the limit.
        assert_eq!(
            retarget(&main, bits(0x1d00ffff), 1231006505, 1233061996),
            bits(0x1d00ffff)
        );
        // Lower clamp: a period far faster than two weeks moves by exactly /4.
        assert_eq!(
            retarget(&main, bits(0x1c05a3f4), 1279008237, 1279297671),
            bits(0x1c0168fd)
        );
        // Upper clamp: a very slow period moves by exactly x4.
        assert_eq!(
            retarget(&main, bits(0x1c387f6f), 1263163443, 1269211443),
            bits(0x1d00e1fd)
        );
    }

    /// Real signet periods (rust-bitcoin's own test vectors for signet blocks 2016 and 4032).
    #[test]
    fn signet_boundaries_through_the_context() {
        let signet = ChainParams::new(Network::Signet);
        let mut ctx = DifficultyContext::genesis(&signet.genesis);
        assert_eq!(ctx.period_first_time, 1598918400);
        ctx.prev_height = 2015;
        ctx.prev_time = 1599332177;
        assert_eq!(required_bits(&signet, &ctx, 1599332844), bits(503394215));
        let ctx = DifficultyContext {
            prev_height: 4031,
            prev_time: 1600591200,
            prev_bits: bits(503394215),
            period_first_time: 1599332844,
            period_first_bits: bits(503394215),
            last_real_bits: bits(503394215),
        };
        assert_eq!(required_bits(&signet, &ctx, 1600591800), bits(503397348));
        // Inside a period mainnet-style networks simply repeat the previous bits.
        let inside = DifficultyContext {
            prev_height: 4032,
            ..ctx
        };
        assert_eq!(required_bits(&signet, &inside, 1), bits(503394215));
    }

    #[test]
    fn twenty_minute_rule_and_walk_back() {
        let test3 = ChainParams::new(Network::Testnet);
        let limit = test3.pow_limit_bits();
        let real = bits(0x1c0fffff);
        let mut ctx = DifficultyContext {
            prev_height: 4033,
            prev_time: 1_000_000,
            prev_bits: real,
            period_first_time: 999_000,
            period_first_bits: real,
            last_real_bits: real,
        };
        // Exactly 20 minutes later is not "more than" 20 minutes.
        assert_eq!(required_bits(&test3, &ctx, 1_000_000 + 1200), real);
        assert_eq!(required_bits(&test3, &ctx, 1_000_000 + 1201), limit);
        // After a min-difficulty block, a quick block returns to the last real bits.
        let min_block = Header {
            time: 1_002_000,
            bits: limit,
            ..test3.genesis
        };
        ctx = ctx.advance(&test3, &min_block);
        assert_eq!(ctx.prev_bits, limit);
        assert_eq!(ctx.last_real_bits, real);
        assert_eq!(required_bits(&test3, &ctx, 1_002_001), real);
        // Mainnet has no such exception.
        let main = ChainParams::new(Network::Bitcoin);
        assert_eq!(required_bits(&main, &ctx, 1_000_000_000), limit);
    }

    #[test]
    fn bip94_retargets_from_the_first_block() {
        let mut params = ChainParams::new(Network::Testnet);
        let real = bits(0x1c0fffff);
        let ctx = DifficultyContext {
            prev_height: 4031,
            prev_time: 2_000_000 + 1_209_600,
            prev_bits: params.pow_limit_bits(),
            period_first_time: 2_000_000,
            period_first_bits: real,
            last_real_bits: real,
        };
        // testnet3: the min-difficulty last block drags the next period to the limit.
        assert_eq!(
            required_bits(&params, &ctx, 3_300_000),
            params.pow_limit_bits()
        );
        params.bip94 = true;
        // BIP-94: an on-schedule period keeps the first block's real difficulty.
        assert_eq!(required_bits(&params, &ctx, 3_300_000), real);
    }

    #[test]
    fn regtest_never_retargets() {
        let reg = ChainParams::new(Network::Regtest);
        let ctx = DifficultyContext {
            prev_height: 2015,
            ..DifficultyContext::genesis(&reg.genesis)
        };
        assert_eq!(required_bits(&reg, &ctx, 5), bits(0x207fffff));
    }
}
