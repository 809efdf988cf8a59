//! Planning the header download: which chunk to ask for next, and how far along we are.
//!
//! A pure state machine the gateway drives: it tells the planner the local height (after each
//! chunk the chain accepted) and the tip upstreams announce, and asks what to request next.
//! Requests are `blockchain.block.headers(start, count)` with `count <= 2016`, aligned to
//! 2016-block boundaries after the first so upstreams (and caches) see the same chunks the
//! Electrum wallet asks for. One request is in flight at a time: headers must be verified in
//! order anyway. When a chunk does not connect (the upstream is on a branch that forked below
//! our tip), the planner steps back further each time so the next chunk overlaps the fork
//! point; the chain skips headers it already has.
//!
//! Time is passed in, never read, so the planner is deterministic in tests. Progress is
//! published on a `tokio::sync::watch` channel for status pages and logs.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// The most headers one `blockchain.block.headers` call returns.
pub const MAX_CHUNK: u32 = 2016;

/// How far back the planner may step to find a fork point (one difficulty period, the default
/// reorg window).
const MAX_REWIND: u32 = 2016;

/// Rate samples older than this are forgotten.
const RATE_WINDOW: Duration = Duration::from_secs(30);

/// A `blockchain.block.headers(start, count)` call to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRequest {
    /// First height.
    pub start: u32,
    /// Number of headers, at most [`MAX_CHUNK`].
    pub count: u32,
}

/// How far the header download is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyncProgress {
    /// Local (verified) tip height.
    pub height: u32,
    /// Tip height the upstreams announce.
    pub target: u32,
    /// `height / target`, 1.0 when caught up.
    pub fraction: f64,
    /// Recent verification rate.
    pub headers_per_sec: f64,
}

/// The download planner.
#[derive(Debug)]
pub struct HeaderSync {
    height: u32,
    target: u32,
    in_flight: Option<ChunkRequest>,
    rewind: u32,
    samples: VecDeque<(Instant, u32)>,
    progress: watch::Sender<SyncProgress>,
}

impl HeaderSync {
    /// A planner for a chain whose verified tip is at `height`.
    pub fn new(height: u32) -> HeaderSync {
        let (progress, _) = watch::channel(SyncProgress {
            height,
            target: height,
            fraction: 1.0,
            headers_per_sec: 0.0,
        });
        HeaderSync {
            height,
            target: height,
            in_flight: None,
            rewind: 0,
            samples: VecDeque::new(),
            progress,
        }
    }

    /// Receive progress updates (height, target, fraction, rate) as they change.
    pub fn subscribe(&self) -> watch::Receiver<SyncProgress> {
        self.progress.subscribe()
    }

    /// The tip height the upstreams announce (the gateway's choice of whose, e.g. the best
    /// one among those it trusts). May go down if a liar is dropped.
    pub fn set_target(&mut self, height: u32) {
        self.target = height;
        self.publish();
    }

    /// The local verified height changed at `now` (a chunk was accepted, a new block arrived,
    /// or a reorganisation happened).
    pub fn set_height(&mut self, height: u32, now: Instant) {
        self.height = height;
        self.samples.push_back((now, height));
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        self.publish();
    }

    /// The next chunk to request, or `None` if caught up or a request is already out. The
    /// returned request counts as in flight until [`completed`](Self::completed),
    /// [`unconnected`](Self::unconnected) or [`failed`](Self::failed).
    pub fn next_request(&mut self) -> Option<ChunkRequest> {
        if self.in_flight.is_some() || (self.height >= self.target && self.rewind == 0) {
            return None;
        }
        let start = (self.height + 1).saturating_sub(self.rewind);
        let until_boundary = MAX_CHUNK - start % MAX_CHUNK;
        let wanted = self.target.saturating_sub(start) + 1;
        let request = ChunkRequest {
            start,
            count: until_boundary.min(wanted).max(1),
        };
        self.in_flight = Some(request);
        Some(request)
    }

    /// The chain accepted the requested chunk; the local tip is now `height`.
    pub fn completed(&mut self, height: u32, now: Instant) {
        self.in_flight = None;
        self.rewind = 0;
        self.set_height(height, now);
    }

    /// The chunk did not connect to the chain: the upstream forked off below our tip. The
    /// next request starts further back (doubling, up to one difficulty period).
    pub fn unconnected(&mut self) {
        self.in_flight = None;
        self.rewind = self
            .rewind
            .saturating_mul(2)
            .clamp(1, MAX_REWIND)
            .min(self.height);
    }

    /// The request failed (timeout, error, refused chunk); it may be asked again, possibly of
    /// another upstream.
    pub fn failed(&mut self) {
        self.in_flight = None;
    }

    /// Whether the local chain has reached the announced tip.
    pub fn is_synced(&self) -> bool {
        self.height >= self.target
    }

    /// Current progress.
    pub fn progress(&self) -> SyncProgress {
        let fraction = if self.target == 0 {
            1.0
        } else {
            (f64::from(self.height) / f64::from(self.target)).min(1.0)
        };
        SyncProgress {
            height: self.height,
            target: self.target,
            fraction,
            headers_per_sec: self.rate(),
        }
    }

    fn rate(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, h0)), Some((t1, h1))) if t1 > t0 && h1 > h0 => {
                f64::from(h1 - h0) / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    fn publish(&self) {
        let progress = self.progress();
        self.progress.send_if_modified(|current| {
            if *current == progress {
                false
            } else {
                *current = progress;
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_chunk_aligned_and_one_at_a_time() {
        let t0 = Instant::now();
        let mut sync = HeaderSync::new(0);
        assert_eq!(sync.next_request(), None, "nothing announced yet");
        sync.set_target(5000);
        assert_eq!(
            sync.next_request(),
            Some(ChunkRequest {
                start: 1,
                count: 2015
            })
        );
        assert_eq!(sync.next_request(), None, "one request in flight");
        sync.completed(2015, t0);
        assert_eq!(
            sync.next_request(),
            Some(ChunkRequest {
                start: 2016,
                count: 2016
            })
        );
        sync.failed();
        assert_eq!(
            sync.next_request(),
            Some(ChunkRequest {
                start: 2016,
                count: 2016
            }),
            "asked again"
        );
        sync.completed(4031, t0);
        assert_eq!(
            sync.next_request(),
            Some(ChunkRequest {
                start: 4032,
                count: 969
            })
        );
        sync.completed(5000, t0);
        assert!(sync.is_synced());
        assert_eq!(sync.next_request(), None);
        sync.set_target(5001);
        assert_eq!(
            sync.next_request(),
            Some(ChunkRequest {
                start: 5001,
                count: 1
            })
        );
    }

    #[test]
    fn unconnected_chunks_step_back_to_find_the_fork() {
        let mut sync = HeaderSync::new(5000);
        sync.set_target(5010);
        assert_eq!(
            sync.next_request(),
            Some(ChunkRequest {
                start: 5001,
                count: 10
            })
        );
        sync.unconnected();
        assert_eq!(
            sync.next_request(),
            Some(ChunkRequest {
                start: 5000,
                count: 11
            })
        );
        sync.unconnected();
        assert_eq!(
            sync.next_request(),
            Some(ChunkRequest {
                start: 4999,
                count: 12
            })
        );
        sync.unconnected();
        assert_eq!(
            sync.next_request(),
            Some(ChunkRequest {
                start: 4997,
                count: 14
            })
        );
        for _ in 0..20 {
            sync.unconnected();
            sync.next_request();
        }
        sync.unconnected();
        let deepest = sync.next_request().unwrap();
        assert_eq!(deepest.start, 5001 - MAX_REWIND);
        assert!(deepest.count <= MAX_CHUNK);
        sync.completed(5010, Instant::now());
        assert_eq!(sync.next_request(), None);
    }

    #[test]
    fn progress_is_published() {
        let t0 = Instant::now();
        let mut sync = HeaderSync::new(0);
        let mut rx = sync.subscribe();
        sync.set_target(8064);
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().target, 8064);
        sync.set_height(0, t0);
        sync.set_height(2016, t0 + Duration::from_secs(1));
        sync.set_height(4032, t0 + Duration::from_secs(2));
        let p = *rx.borrow_and_update();
        assert_eq!((p.height, p.target), (4032, 8064));
        assert_eq!(p.fraction, 0.5);
        assert_eq!(p.headers_per_sec, 2016.0);
        // Samples older than the window are forgotten.
        sync.set_height(6048, t0 + Duration::from_secs(100));
        sync.set_height(8064, t0 + Duration::from_secs(101));
        let p = sync.progress();
        assert_eq!(p.headers_per_sec, 2016.0);
        assert_eq!(p.fraction, 1.0);
        assert_eq!(rx.borrow().height, 8064);
    }
}
