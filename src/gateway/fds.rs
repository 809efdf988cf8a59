//! Open files: every wallet connection, upstream connection and listener is a file
//! descriptor, and the default soft limit (often 1024) is far below `[limits] max_sessions`.
//!
//! [`raise_open_files_limit`] lifts the process's soft limit to its hard limit at start;
//! [`Gateway::start`](super::Gateway::start) then warns when the configuration cannot fit in
//! what is left ([`fds_needed`]), since a wallet refused for want of a descriptor looks like a
//! network failure to it.

use crate::config::Config;

/// Descriptors kept for everything that is not a connection: stdio, the runtime's epoll and
/// eventfds, the data directory's files, DNS lookups, the HTTP side's connections.
pub const FD_RESERVE: u64 = 64;

/// The process's limit on open files: (soft, hard). `None` where it cannot be read (not Unix).
// `rlim_t` is u64 on Linux but not on every Unix.
#[allow(clippy::unnecessary_cast)]
pub fn open_files_limit() -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct it is given, which lives on this stack.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        (rc == 0).then_some((lim.rlim_cur as u64, lim.rlim_max as u64))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Raises the soft limit on open files to the hard limit. Returns the limit in force
/// afterwards (the old one when raising failed), `None` where there is no such limit.
#[allow(clippy::unnecessary_cast)]
pub fn raise_open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let (soft, hard) = open_files_limit()?;
        if soft >= hard {
            return Some(soft);
        }
        let lim = libc::rlimit {
            rlim_cur: hard as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
        if rc == 0 {
            Some(hard)
        } else {
            Some(soft)
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Descriptors a gateway with this configuration may hold at once: one per wallet session,
/// two per upstream connection (a reconnect may overlap the old socket's close), one per
/// listener, and [`FD_RESERVE`].
pub fn fds_needed(cfg: &Config) -> u64 {
    let upstreams = cfg.upstreams.active.max(cfg.upstreams.servers.len()) as u64;
    let per_upstream = cfg.upstreams.connections_per_upstream.max(1) as u64;
    let listeners = [
        &cfg.listen.tcp,
        &cfg.listen.tls,
        &cfg.listen.ws,
        &cfg.listen.http,
    ]
    .iter()
    .filter(|a| !a.is_empty())
    .count() as u64;
    (cfg.limits.max_sessions as u64)
        .saturating_add(upstreams.saturating_mul(per_upstream).saturating_mul(2))
        .saturating_add(listeners)
        .saturating_add(FD_RESERVE)
}

/// The warning to log when a gateway configured with `max_sessions` sessions and needing
/// `needed` descriptors in all ([`fds_needed`]) does not fit in `limit`, or `None`.
pub fn fit_warning(max_sessions: usize, needed: u64, limit: Option<u64>) -> Option<String> {
    let limit = limit?;
    let overhead = needed.saturating_sub(max_sessions as u64);
    (needed > limit).then(|| {
        format!(
            "the open-files limit is {limit} but [limits] max_sessions = {max_sessions} with the \
             upstream connections and listeners may need {needed}: wallets beyond about {} \
             sessions will be refused; raise the hard limit (`ulimit -Hn`, LimitNOFILE= in a \
             systemd unit) or lower max_sessions",
            limit.saturating_sub(overhead)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sessions_upstreams_listeners_and_reserve() {
        let mut cfg = Config::default();
        cfg.limits.max_sessions = 10_000;
        cfg.upstreams.servers = vec!["tcp://a:1".into(), "tcp://b:1".into()];
        cfg.upstreams.active = 3;
        cfg.upstreams.connections_per_upstream = 2;
        cfg.listen.tcp = "127.0.0.1:50001".into();
        cfg.listen.tls = "127.0.0.1:50002".into();
        cfg.listen.ws = String::new();
        cfg.listen.http = "127.0.0.1:9190".into();
        assert_eq!(fds_needed(&cfg), 10_000 + 3 * 2 * 2 + 3 + FD_RESERVE);
    }

    #[test]
    fn warns_only_when_the_limit_is_too_low() {
        let needed = 4096 + 100;
        assert_eq!(fit_warning(4096, needed, Some(20_000)), None);
        assert_eq!(fit_warning(4096, needed, Some(needed)), None);
        assert_eq!(fit_warning(4096, needed, None), None);
        let w = fit_warning(4096, needed, Some(1024)).unwrap();
        // 1024 descriptors minus the 100 that are not sessions.
        assert!(w.contains("about 924 sessions"), "{w}");
        assert!(w.contains("max_sessions = 4096"), "{w}");
        let w = fit_warning(4096, needed, Some(50)).unwrap();
        assert!(w.contains("about 0 sessions"), "{w}");
    }

    #[test]
    fn raising_keeps_at_least_the_soft_limit() {
        let before = open_files_limit();
        let after = raise_open_files_limit();
        if let (Some((soft, hard)), Some(now)) = (before, after) {
            assert!(now >= soft && now <= hard);
            assert_eq!(open_files_limit().map(|(s, _)| s), Some(now));
        }
    }
}
