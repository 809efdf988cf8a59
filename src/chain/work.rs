//! Cumulative proof of work: of one block, of a run of headers, and of the best chain up to
//! any height without a walk from the tip.
//!
//! The best chain's cumulative work is kept at every [`WORK_STRIDE`]th height, so the work up
//! to any height costs at most `WORK_STRIDE` additions, and usually one division per
//! difficulty period. Memory: 32 bytes per 2016 headers, about 14 KB for mainnet's ~900,000
//! (cumulative work at every height would take about 29 MB).

use std::collections::HashMap;

use bitcoin::block::Header;
use bitcoin::pow::{CompactTarget, Target, Work};

/// The cumulative work of the best chain is kept at every this many heights.
pub(crate) const WORK_STRIDE: usize = 2016;

/// Work of one block with the given bits; the few distinct bits values are cached.
pub(crate) fn work_of(cache: &mut HashMap<CompactTarget, Work>, bits: CompactTarget) -> Work {
    if cache.len() > 4096 {
        cache.clear();
    }
    *cache
        .entry(bits)
        .or_insert_with(|| Target::from_compact(bits).to_work())
}

/// No work at all.
pub(crate) fn zero_work() -> Work {
    Work::from_be_bytes([0; 32])
}

/// Sums the work of `headers`, computing it once per run of equal bits (a difficulty period
/// has one value on mainnet) without touching a shared cache.
pub(crate) fn sum_work(headers: &[Header]) -> Work {
    let mut total = zero_work();
    let mut last: Option<(CompactTarget, Work)> = None;
    for header in headers {
        let work = match last {
            Some((bits, work)) if bits == header.bits => work,
            _ => {
                let work = Target::from_compact(header.bits).to_work();
                last = Some((header.bits, work));
                work
            }
        };
        total = total + work;
    }
    total
}

/// Cumulative work of a chain of headers (from genesis) at every [`WORK_STRIDE`]th height.
#[derive(Debug, Clone)]
pub(crate) struct WorkMarks {
    /// `marks[k]`: the work of heights `0..k * WORK_STRIDE`; `marks[0]` is zero.
    marks: Vec<Work>,
}

impl Default for WorkMarks {
    fn default() -> Self {
        WorkMarks {
            marks: vec![zero_work()],
        }
    }
}

impl WorkMarks {
    /// Brings the marks up to date with `headers` after they changed from height
    /// `changed_from` on: marks covering changed heights are dropped, missing ones computed
    /// (nothing is summed unless a multiple of `WORK_STRIDE` was crossed).
    pub(crate) fn sync(
        &mut self,
        headers: &[Header],
        changed_from: u32,
        cache: &mut HashMap<CompactTarget, Work>,
    ) {
        let valid = changed_from as usize / WORK_STRIDE + 1;
        self.marks.truncate(valid.max(1));
        let want = headers.len() / WORK_STRIDE + 1;
        while self.marks.len() < want {
            let k = self.marks.len();
            let mut work = self.marks[k - 1];
            for header in &headers[(k - 1) * WORK_STRIDE..k * WORK_STRIDE] {
                work = work + work_of(cache, header.bits);
            }
            self.marks.push(work);
        }
    }

    /// Cumulative work of `headers` up to and including `height` (which must be below
    /// `headers.len()`), given their `total`: from the nearest mark below, or down from the top
    /// when that is nearer.
    pub(crate) fn at(&self, headers: &[Header], total: Work, height: u32) -> Work {
        let h = height as usize;
        let k = ((h + 1) / WORK_STRIDE).min(self.marks.len() - 1);
        let above = &headers[h + 1..];
        let below = &headers[k * WORK_STRIDE..=h];
        if above.len() <= below.len() {
            total - sum_work(above)
        } else {
            self.marks[k] + sum_work(below)
        }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.marks.capacity() * std::mem::size_of::<Work>()
    }
}
