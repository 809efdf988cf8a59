//! Where an upstream stands: on the best chain or not, how far behind, demoted or sitting out a
//! penalty; and the one list of reasons for which an upstream is penalised or demoted (the
//! metrics labels come from it).

use std::time::{Duration, Instant};

use crate::chain::{RejectReason, VerifyError};

/// Why an upstream's answer or header was refused and the upstream penalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The answer is not in the expected shape.
    BadEncoding,
    /// A transaction does not hash to the txid asked for.
    BadTxid,
    /// A merkle branch does not prove the transaction in the verified block.
    BadMerkle,
    /// A header (or a header notification) is malformed or fails the chain's rules.
    BadHeader,
    /// A status is not the hash of the upstream's own history.
    BadStatus,
    /// A history's confirmed part disagrees with the other upstreams' majority.
    HistoryMismatch,
    /// A broadcast returned a txid that is not the transaction's.
    BadBroadcast,
    /// The answer lost a vote among upstreams in step.
    VoteMinority,
    /// Subscriptions it was asked for failed or stalled again and again.
    Stalled,
    /// It never announced a status change the other upstreams' histories show.
    Silent,
    /// It sent notifications faster than they could be taken (its connection was closed).
    Flood,
    /// A transaction's witness differs from the one the other upstreams' majority returns
    /// (the txid does not cover it), or a verbose answer's wtxid is not its transaction's.
    BadWitness,
    /// A history it gave (or voted for) names a confirmed transaction that no upstream of the
    /// scripthash could prove in the verified block at that height.
    UnprovenHistory,
    /// Header chain: a chain that does not start at the network's genesis.
    BadGenesis,
    /// Header chain: a header that does not link to its parent.
    BadLink,
    /// Header chain: bits that are not the retarget rule's.
    BadTarget,
    /// Header chain: insufficient proof of work.
    BadPow,
    /// Header chain: a header that contradicts a checkpoint.
    Checkpoint,
    /// Header chain: a timestamp not above the median of the last eleven.
    BadTime,
    /// Header chain: an obsolete block version.
    BadVersion,
    /// Header chain: a fork below the reorganisation window.
    TooOld,
    /// Header chain: headers that connect to nothing known.
    Unconnected,
}

impl Reason {
    /// Every reason, in label order of the metrics.
    pub const ALL: &'static [Reason] = &[
        Reason::BadEncoding,
        Reason::BadTxid,
        Reason::BadMerkle,
        Reason::BadHeader,
        Reason::BadStatus,
        Reason::HistoryMismatch,
        Reason::BadBroadcast,
        Reason::VoteMinority,
        Reason::Stalled,
        Reason::Silent,
        Reason::Flood,
        Reason::BadWitness,
        Reason::UnprovenHistory,
        Reason::BadGenesis,
        Reason::BadLink,
        Reason::BadTarget,
        Reason::BadPow,
        Reason::Checkpoint,
        Reason::BadTime,
        Reason::BadVersion,
        Reason::TooOld,
        Reason::Unconnected,
    ];

    /// The metrics label and log word.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadEncoding => "bad_encoding",
            Reason::BadTxid => "bad_txid",
            Reason::BadMerkle => "bad_merkle",
            Reason::BadHeader => "bad_header",
            Reason::BadStatus => "bad_status",
            Reason::HistoryMismatch => "history_mismatch",
            Reason::BadBroadcast => "bad_broadcast",
            Reason::VoteMinority => "vote_minority",
            Reason::Stalled => "stalled",
            Reason::Silent => "silent",
            Reason::Flood => "flood",
            Reason::BadWitness => "bad_witness",
            Reason::UnprovenHistory => "unproven_history",
            Reason::BadGenesis => "bad_genesis",
            Reason::BadLink => "bad_link",
            Reason::BadTarget => "bad_target",
            Reason::BadPow => "bad_pow",
            Reason::Checkpoint => "checkpoint",
            Reason::BadTime => "bad_time",
            Reason::BadVersion => "bad_version",
            Reason::TooOld => "too_old",
            Reason::Unconnected => "unconnected",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&VerifyError> for Reason {
    fn from(e: &VerifyError) -> Reason {
        match e {
            VerifyError::BadEncoding(_) => Reason::BadEncoding,
            VerifyError::BadTxid => Reason::BadTxid,
            VerifyError::BadMerkle(_) => Reason::BadMerkle,
            VerifyError::BadHeader(_) => Reason::BadHeader,
            VerifyError::BadStatus => Reason::BadStatus,
            VerifyError::HistoryMismatch(_) => Reason::HistoryMismatch,
            VerifyError::BadBroadcast(_) => Reason::BadBroadcast,
            VerifyError::BadWitness(_) => Reason::BadWitness,
            VerifyError::OtherBlock(_) => Reason::BadMerkle,
        }
    }
}

impl From<RejectReason> for Reason {
    fn from(r: RejectReason) -> Reason {
        match r {
            RejectReason::BadGenesis => Reason::BadGenesis,
            RejectReason::BadLink => Reason::BadLink,
            RejectReason::BadTarget => Reason::BadTarget,
            RejectReason::BadPow => Reason::BadPow,
            RejectReason::Checkpoint => Reason::Checkpoint,
            RejectReason::BadTime => Reason::BadTime,
            RejectReason::BadVersion => Reason::BadVersion,
            RejectReason::TooOld => Reason::TooOld,
            RejectReason::Unconnected => Reason::Unconnected,
            RejectReason::BadEncoding => Reason::BadEncoding,
        }
    }
}

/// Why an upstream serves no read that depends on the tip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Demotion {
    /// More than `max_lag` blocks behind the verified tip.
    Lag,
    /// On a branch the best chain does not follow.
    Fork,
    /// Its headers failed verification.
    BadHeader,
}

impl Demotion {
    /// Every demotion reason.
    pub const ALL: &'static [Demotion] = &[Demotion::Lag, Demotion::Fork, Demotion::BadHeader];

    /// The metrics label and log word.
    pub fn as_str(self) -> &'static str {
        match self {
            Demotion::Lag => "lag",
            Demotion::Fork => "fork",
            Demotion::BadHeader => "bad_header",
        }
    }
}

/// Where an upstream stands relative to the best chain.
#[derive(Debug, Clone, Default)]
pub struct Standing {
    /// Its announced tip is on the best chain.
    pub on_best: bool,
    /// How many blocks its tip is behind the best tip (when on the best chain).
    pub lag: u32,
    /// Why it is demoted, if it is.
    pub demoted: Option<Demotion>,
    /// It sits out until then after a false answer.
    pub sit_out_until: Option<Instant>,
    /// False answers not yet forgiven (the sit-out period doubles with each). One is forgiven
    /// for every [`FORGIVE_AFTER`] without a false answer after the latest sit-out ended.
    pub strikes: u32,
    /// Its tip is being linked (headers being fetched from it).
    pub linking: bool,
}

/// The longest sit-out.
pub const MAX_SIT_OUT: Duration = Duration::from_secs(3600);

/// One strike is forgiven for every this long without a false answer, counted from the end of
/// the latest sit-out: an upstream that slipped once is back to a first offence's sit-out after
/// a clean hour, while one that keeps lying keeps its doubled sit-outs.
pub const FORGIVE_AFTER: Duration = Duration::from_secs(3600);

impl Standing {
    /// True while a sit-out period runs.
    pub fn sitting_out(&self) -> bool {
        self.sit_out_until.is_some_and(|t| t > Instant::now())
    }

    /// On the best chain and not demoted (it may still sit out a penalty).
    pub fn on_chain(&self) -> bool {
        self.on_best && self.demoted.is_none()
    }

    /// Usable for reads that depend on the tip.
    pub fn in_step(&self) -> bool {
        self.on_chain() && !self.sitting_out()
    }

    /// Counts a false answer: the upstream sits out for `base` doubled with every earlier
    /// offence not yet forgiven, at most [`MAX_SIT_OUT`]. Returns the period.
    pub fn strike(&mut self, base: Duration) -> Duration {
        self.strike_at(base, Instant::now())
    }

    /// [`Standing::strike`] at `now`.
    pub fn strike_at(&mut self, base: Duration, now: Instant) -> Duration {
        self.strikes = self.strikes_at(now).saturating_add(1);
        let factor = 2u32.saturating_pow(self.strikes.saturating_sub(1).min(16));
        let period = base.saturating_mul(factor).min(MAX_SIT_OUT);
        self.sit_out_until = Some(now + period);
        period
    }

    /// The strikes still counted at `now`: one fewer for every full [`FORGIVE_AFTER`] since
    /// the latest sit-out ended.
    pub fn strikes_at(&self, now: Instant) -> u32 {
        let Some(ended) = self.sit_out_until else {
            return self.strikes;
        };
        let clean = now.saturating_duration_since(ended);
        let forgiven = clean.as_secs() / FORGIVE_AFTER.as_secs().max(1);
        let forgiven = u32::try_from(forgiven).unwrap_or(u32::MAX);
        self.strikes.saturating_sub(forgiven)
    }

    /// This standing as it stands at `now`: strikes forgiven by then are gone.
    pub fn as_of(mut self, now: Instant) -> Standing {
        self.strikes = self.strikes_at(now);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_identifiers() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.as_str()), "{r}");
            assert!(r
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
        for d in Demotion::ALL {
            assert!(d
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
    }

    #[test]
    fn every_chain_layer_reason_has_a_label() {
        use crate::chain::RejectReason as R;
        let s = String::new;
        for e in [
            VerifyError::BadEncoding(s()),
            VerifyError::BadTxid,
            VerifyError::BadMerkle(s()),
            VerifyError::BadHeader(s()),
            VerifyError::BadStatus,
            VerifyError::HistoryMismatch(s()),
            VerifyError::BadBroadcast(s()),
            VerifyError::BadWitness(s()),
            VerifyError::OtherBlock(s()),
        ] {
            assert_eq!(Reason::from(&e).as_str(), e.reason());
        }
        for r in [
            R::BadGenesis,
            R::BadLink,
            R::BadTarget,
            R::BadPow,
            R::Checkpoint,
            R::BadTime,
            R::BadVersion,
            R::TooOld,
            R::Unconnected,
            R::BadEncoding,
        ] {
            assert_eq!(Reason::from(r).as_str(), r.as_str());
        }
    }

    #[test]
    fn sit_outs_double_and_stop_at_an_hour() {
        let mut st = Standing {
            on_best: true,
            ..Standing::default()
        };
        assert!(st.in_step());
        let base = Duration::from_secs(30);
        assert_eq!(st.strike(base), Duration::from_secs(30));
        assert_eq!(st.strike(base), Duration::from_secs(60));
        assert!(st.sitting_out() && !st.in_step() && st.on_chain());
        for _ in 0..40 {
            st.strike(base);
        }
        assert_eq!(st.strike(base), MAX_SIT_OUT);
    }

    #[test]
    fn strikes_are_forgiven_one_per_clean_hour_after_the_sit_out() {
        let base = Duration::from_secs(30);
        let now = Instant::now();
        let mut st = Standing::default();
        for _ in 0..5 {
            st.strike_at(base, now);
        }
        // The fifth sit-out runs 8 minutes.
        let end = now + base * 16;
        assert_eq!(st.sit_out_until, Some(end));
        assert_eq!(st.strikes_at(end), 5);
        assert_eq!(
            st.strikes_at(end + FORGIVE_AFTER - Duration::from_secs(1)),
            5
        );
        assert_eq!(st.strikes_at(end + FORGIVE_AFTER), 4);
        assert_eq!(st.strikes_at(end + FORGIVE_AFTER * 3), 2);
        assert_eq!(st.strikes_at(end + FORGIVE_AFTER * 100), 0);
        // Two clean hours later the next offence counts as the fourth: 4 minutes, not 16.
        let later = end + FORGIVE_AFTER * 2;
        assert_eq!(st.strike_at(base, later), base * 8);
        assert_eq!(st.strikes, 4);
        // An offence while still sitting out forgives nothing.
        assert_eq!(st.strike_at(base, later), base * 16);
        assert_eq!(st.strikes, 5);
        // After a long clean spell an upstream starts over.
        let much_later = later + base * 16 + FORGIVE_AFTER * 10;
        assert_eq!(st.strike_at(base, much_later), base);
        assert_eq!(st.strikes, 1);
    }

    #[test]
    fn a_standing_from_before_counts_its_clean_time_from_its_last_sit_out() {
        let base = Duration::from_secs(30);
        let Some(ended) = Instant::now().checked_sub(FORGIVE_AFTER * 3 + base) else {
            return;
        };
        let mut st = Standing {
            strikes: 6,
            sit_out_until: Some(ended),
            ..Standing::default()
        };
        // Three clean hours: three strikes forgiven, so this is the fourth offence.
        assert_eq!(st.strike(base), base * 8);
        assert_eq!(st.strikes, 4);
    }
}
