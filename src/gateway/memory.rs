//! Gives memory freed after a burst back to the system.
//!
//! A burst of work (thousands of wallets subscribing at once, each request in flight holding a
//! few kilobytes of state) leaves memory free inside the allocator's heaps once it is done.
//! glibc's allocator returns only what is free at the very top of a heap, so the process's
//! resident memory would stay at the burst's peak even though it holds far less. The trimmer
//! looks every [`TRIM_EVERY`] and, when more than [`TRIM_ABOVE`] bytes lie free in the heaps,
//! has the allocator return every whole free page (`malloc_trim`). Elsewhere (other C
//! libraries, other systems) it does nothing.

use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the heaps are looked at.
pub const TRIM_EVERY: Duration = Duration::from_secs(5);
/// Free bytes in the heaps above which they are trimmed.
pub const TRIM_ABOVE: u64 = 32 << 20;

/// Bytes free inside the allocator's heaps (not returned to the system), where the C library
/// tells.
pub fn free_in_heaps() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's bookkeeping under its own locks.
        let info = unsafe { libc::mallinfo2() };
        Some(info.fordblks as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Returns the heaps' whole free pages to the system; true when any memory was returned.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim is safe to call at any time from any thread.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Trims the heaps whenever more than [`TRIM_ABOVE`] bytes lie free in them, until `shutdown`.
pub async fn run(shutdown: CancellationToken) {
    if free_in_heaps().is_none() {
        return;
    }
    let mut tick = tokio::time::interval(TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let free = free_in_heaps().unwrap_or(0);
        if free > TRIM_ABOVE {
            // Walking the heaps takes a while on a large one: not on a runtime thread.
            let trimmed = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
            tracing::debug!(free, trimmed, "trimmed the allocator's heaps");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn memory_freed_in_the_middle_of_a_heap_is_counted_and_returned() {
        // Many blocks, every other one kept: what is freed cannot be returned from the top.
        let mut blocks: Vec<Vec<u8>> = (0..4096).map(|_| vec![1u8; 16 << 10]).collect();
        let before = free_in_heaps().unwrap();
        let kept: Vec<Vec<u8>> = blocks
            .drain(..)
            .enumerate()
            .filter_map(|(i, b)| (i % 2 == 0).then_some(b))
            .collect();
        let after = free_in_heaps().unwrap();
        assert!(after >= before + (16 << 20), "{before} -> {after}");
        assert!(
            trim(),
            "the free pages between kept blocks go back to the system"
        );
        assert_eq!(kept.len(), 2048);
    }
}
