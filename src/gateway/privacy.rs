//! Which upstreams may learn of a scripthash (`[privacy] mode`).
//!
//! Under `spread` each scripthash has a fixed set of upstream slots: as many as its votes and
//! checks need (two watchers, two agreeing answers) and no more. Every upstream slot is ranked
//! for a scripthash by a keyed hash of the scripthash and the upstream's URL (rendezvous
//! hashing): the order is the same every time, a replaced upstream moves only its own place,
//! and without the secret key, kept in the data directory, nobody can tell which upstreams a
//! scripthash goes to. A wallet session's scripthashes are balanced over the upstreams: a new
//! subscription takes, among the sets its keyed order prefers, the one whose upstreams have
//! seen the fewest of that session's scripthashes, so no upstream sees much more than
//! `set / upstreams` of a wallet. Reads, vetting and votes for the scripthash go to its set;
//! the next upstream in its keyed order steps in only when a member cannot answer or the set
//! disagrees, and it is the same one every time.

use std::collections::HashMap;
use std::path::Path;

use bitcoin::hashes::siphash24;

use crate::config::PrivacyMode;

/// The key file in the data directory.
pub const KEY_FILE: &str = "privacy.key";

/// A scripthash's set: upstream slot ids, in the scripthash's keyed order. Slot ids fit a byte
/// (the pool has at most [`MAX_SLOTS`]); at most [`MAX_SET`] members. Eight bytes, kept in
/// every subscription entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Set {
    ids: [u8; MAX_SET],
    len: u8,
}

/// Largest set.
pub const MAX_SET: usize = 7;
/// Most upstream slots a spread pool can address.
pub const MAX_SLOTS: usize = 255;

impl Set {
    /// A set of these slot ids (the first [`MAX_SET`] that fit a byte).
    pub fn of(ids: &[usize]) -> Set {
        let mut s = Set::default();
        for id in ids {
            if usize::from(s.len) == MAX_SET {
                break;
            }
            if let Ok(b) = u8::try_from(*id) {
                s.ids[usize::from(s.len)] = b;
                s.len += 1;
            }
        }
        s
    }

    /// The slot ids.
    pub fn ids(&self) -> impl Iterator<Item = usize> + '_ {
        self.ids[..usize::from(self.len)]
            .iter()
            .map(|b| usize::from(*b))
    }

    /// True when `slot` is a member.
    pub fn contains(&self, slot: usize) -> bool {
        self.ids().any(|id| id == slot)
    }

    /// Members.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// True for the empty set.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The privacy policy in force.
#[derive(Debug, Clone)]
pub struct Privacy {
    mode: PrivacyMode,
    k0: u64,
    k1: u64,
    set_size: usize,
}

impl Privacy {
    /// The policy `mode` with sets of `set_size` upstreams, its key read from (or first
    /// written to) `dir`/[`KEY_FILE`]. A key file that exists but cannot be read as a key is
    /// an error: a new key would move every scripthash to other upstreams.
    pub fn load(mode: PrivacyMode, set_size: usize, dir: &Path) -> anyhow::Result<Privacy> {
        let (k0, k1) = if mode == PrivacyMode::Off {
            (0, 0)
        } else {
            load_key(dir)?
        };
        Ok(Privacy::with_key(mode, set_size, k0, k1))
    }

    /// The policy with a given key (tests).
    pub fn with_key(mode: PrivacyMode, set_size: usize, k0: u64, k1: u64) -> Privacy {
        Privacy {
            mode,
            k0,
            k1,
            set_size: set_size.clamp(1, MAX_SET),
        }
    }

    /// True when scripthashes are kept to their sets.
    pub fn spread(&self) -> bool {
        self.mode != PrivacyMode::Off
    }

    /// True when each wallet connection has upstream connections of its own.
    pub fn isolated(&self) -> bool {
        self.mode == PrivacyMode::Isolated
    }

    /// The slots, given as `(slot id, upstream URL)`, in `scripthash`'s keyed order.
    pub fn order<'a>(
        &self,
        scripthash: &str,
        slots: impl IntoIterator<Item = (usize, &'a str)>,
    ) -> Vec<usize> {
        let mut ranked: Vec<(u64, usize)> = slots
            .into_iter()
            .map(|(id, url)| {
                let mut data = Vec::with_capacity(scripthash.len() + 1 + url.len());
                data.extend_from_slice(scripthash.as_bytes());
                data.push(0);
                data.extend_from_slice(url.as_bytes());
                let h = siphash24::Hash::hash_with_keys(self.k0, self.k1, &data).as_u64();
                (h, id)
            })
            .collect();
        ranked.sort_unstable();
        ranked.into_iter().map(|(_, id)| id).collect()
    }

    /// The set a scripthash with keyed `order` gets with no other regard: its first members.
    pub fn first_set(&self, order: &[usize]) -> Set {
        Set::of(&order[..order.len().min(self.set_size)])
    }

    /// The set a new subscription gets in a session whose scripthashes so far went to the
    /// slots as `load` counts: among the sets of `order`'s first upstreams, taken in the order
    /// the keyed hash prefers (smallest sum of places first), the first whose busiest member
    /// has the fewest of the session's scripthashes.
    pub fn balanced_set(&self, order: &[usize], load: &HashMap<usize, u32>) -> Set {
        let k = self.set_size.min(order.len());
        if k == 0 {
            return Set::default();
        }
        let busiest = |places: &[usize]| -> u32 {
            places
                .iter()
                .map(|p| load.get(&order[*p]).copied().unwrap_or(0))
                .max()
                .unwrap_or(0)
        };
        let mut best: Option<(u32, usize, Vec<usize>)> = None;
        for places in combinations(order.len(), k) {
            let key = (busiest(&places), places.iter().sum::<usize>());
            if best.as_ref().map_or(true, |(b, sum, _)| key < (*b, *sum)) {
                best = Some((key.0, key.1, places));
            }
        }
        let places = best.map(|(_, _, p)| p).unwrap_or_default();
        let ids: Vec<usize> = places.iter().map(|p| order[*p]).collect();
        Set::of(&ids)
    }
}

/// Every way of choosing `k` of `n` places, in lexicographic order.
fn combinations(n: usize, k: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    if k == 0 || k > n {
        return out;
    }
    let mut c: Vec<usize> = (0..k).collect();
    loop {
        out.push(c.clone());
        // The rightmost place that can still move right.
        let Some(i) = (0..k).rev().find(|&i| c[i] < n - k + i) else {
            return out;
        };
        c[i] += 1;
        for j in i + 1..k {
            c[j] = c[j - 1] + 1;
        }
    }
}

/// Reads the key, or makes one and writes it (owner-only) when there is none.
fn load_key(dir: &Path) -> anyhow::Result<(u64, u64)> {
    let path = dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_key(text.trim()).ok_or_else(|| {
            anyhow::anyhow!(
                "{} is not a privacy key (32 hex digits); remove it to make a new one, which \
                 moves every scripthash to other upstreams",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (k0, k1) = (rand::random::<u64>(), rand::random::<u64>());
            std::fs::create_dir_all(dir)?;
            crate::files::write_atomic_private(&path, format!("{k0:016x}{k1:016x}\n").as_bytes())
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            Ok((k0, k1))
        }
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

fn parse_key(s: &str) -> Option<(u64, u64)> {
    if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let k0 = u64::from_str_radix(s.get(..16)?, 16).ok()?;
    let k1 = u64::from_str_radix(s.get(16..)?, 16).ok()?;
    Some((k0, k1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn privacy(k: usize) -> Privacy {
        Privacy::with_key(PrivacyMode::Spread, k, 7, 11)
    }

    fn slots(n: usize) -> Vec<(usize, String)> {
        (0..n)
            .map(|i| (i, format!("tcp://10.{i}.0.1:50001")))
            .collect()
    }

    fn order(p: &Privacy, sh: &str, slots: &[(usize, String)]) -> Vec<usize> {
        p.order(sh, slots.iter().map(|(i, u)| (*i, u.as_str())))
    }

    #[test]
    fn the_order_is_keyed_stable_and_moves_only_a_replaced_upstream() {
        let p = privacy(2);
        let s = slots(6);
        let a = order(&p, "aa", &s);
        assert_eq!(a, order(&p, "aa", &s), "the same every time");
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..6).collect::<Vec<_>>());
        // Another key, another order (for some scripthash among a few).
        let q = Privacy::with_key(PrivacyMode::Spread, 2, 8, 11);
        assert!((0..20).any(|i| {
            let sh = format!("{i:064x}");
            order(&p, &sh, &s) != order(&q, &sh, &s)
        }));
        // Replacing slot 3's server keeps the others in their relative order.
        let mut replaced = s.clone();
        replaced[3].1 = "tcp://192.0.2.9:50001".into();
        let b = order(&p, "aa", &replaced);
        let without = |v: &[usize]| v.iter().copied().filter(|i| *i != 3).collect::<Vec<_>>();
        assert_eq!(without(&a), without(&b));
    }

    #[test]
    fn balanced_sets_keep_every_upstream_near_its_share_of_a_wallet() {
        let p = privacy(2);
        let s = slots(6);
        let mut worst = 0u32;
        for wallet in 0..200 {
            let mut load = HashMap::new();
            for i in 0..20 {
                let sh = format!("{wallet:032x}{i:032x}");
                let set = p.balanced_set(&order(&p, &sh, &s), &load);
                assert_eq!(set.len(), 2);
                for id in set.ids() {
                    *load.entry(id).or_insert(0) += 1;
                }
            }
            worst = worst.max(load.values().copied().max().unwrap_or(0));
        }
        // 20 scripthashes in sets of 2 over 6 upstreams: 40 / 6, so at most 7 each.
        assert!(worst <= 7, "an upstream saw {worst} of 20");
    }

    #[test]
    fn first_set_and_combinations() {
        let p = privacy(2);
        assert_eq!(
            p.first_set(&[4, 1, 0]).ids().collect::<Vec<_>>(),
            vec![4, 1]
        );
        assert_eq!(p.first_set(&[4]).len(), 1);
        assert_eq!(combinations(4, 2).len(), 6);
        assert_eq!(combinations(3, 3), vec![vec![0, 1, 2]]);
        assert!(combinations(2, 3).is_empty());
        assert!(Set::of(&[300, 2]).ids().eq([2]));
    }

    #[test]
    fn the_key_is_made_once_and_a_bad_key_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_key(dir.path()).unwrap();
        assert_eq!(load_key(dir.path()).unwrap(), a);
        std::fs::write(dir.path().join(KEY_FILE), "").unwrap();
        assert!(load_key(dir.path()).is_err());
        std::fs::write(dir.path().join(KEY_FILE), "zz").unwrap();
        assert!(load_key(dir.path()).is_err());
    }
}
