//! The order of what a session writes: a subscription's reply before the notifications that
//! follow it.
//!
//! A wallet that subscribes reads the reply as the state it starts from, and every later
//! notification as a change of it. Replies are computed in request tasks while notifications
//! arrive from the hub and the tip watch, so without care a notification could overtake the
//! reply it follows, or repeat it. [`ReplyOrder`] holds notifications for a scripthash (or the
//! header tip) while a subscription reply for it is in flight, and when the reply is written
//! says what must follow it: the newest value seen meanwhile, if it differs from the reply.
//! It is plain state, driven by the session loop and tested on its own.

use serde_json::Value;
use std::collections::HashMap;

use crate::protocol::Tip;

/// What a finished request confirms, besides its answer.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Confirms {
    /// Scripthash subscription replies: (scripthash, status, or None if it failed).
    pub scripthashes: Vec<(String, Option<Value>)>,
    /// A `blockchain.headers.subscribe` reply: the tip it carried, or None if it failed.
    pub headers: Option<Option<Tip>>,
}

impl Confirms {
    /// Adds another request's confirmations (in a batch).
    pub fn merge(&mut self, other: Confirms) {
        self.scripthashes.extend(other.scripthashes);
        if other.headers.is_some() {
            self.headers = other.headers;
        }
    }
}

/// What a session must write after a reply, in this order.
#[derive(Debug, Default, PartialEq)]
pub struct Follow {
    /// Scripthash notifications: (scripthash, status).
    pub statuses: Vec<(String, Value)>,
    /// A header notification.
    pub tip: Option<Tip>,
}

/// The ordering state of one session.
#[derive(Debug, Default)]
pub struct ReplyOrder {
    /// Header subscription: None = not subscribed; Some(None) = first reply in flight;
    /// Some(Some(tip)) = the tip the wallet was last told.
    headers_sent: Option<Option<Tip>>,
    /// Header subscription replies in flight.
    headers_pending: usize,
    /// Scripthash subscription replies in flight, with the newest status seen meanwhile.
    in_flight: HashMap<String, (usize, Option<Value>)>,
}

impl ReplyOrder {
    /// A header subscription request was read; its reply is now in flight.
    pub fn header_request(&mut self) {
        if self.headers_sent.is_none() {
            self.headers_sent = Some(None);
        }
        self.headers_pending += 1;
    }

    /// A scripthash subscription request was read; its reply is now in flight.
    pub fn scripthash_request(&mut self, scripthash: &str) {
        self.in_flight
            .entry(scripthash.to_string())
            .or_insert((0, None))
            .0 += 1;
    }

    /// A status notification arrived. True when it may be written now; false when it is held
    /// for a reply in flight (and will follow it if it differs).
    pub fn status(&mut self, scripthash: &str, status: &Value) -> bool {
        match self.in_flight.get_mut(scripthash) {
            Some((_, newest)) => {
                *newest = Some(status.clone());
                false
            }
            None => true,
        }
    }

    /// The verified tip moved to `current`: the header notification to write now, if the
    /// wallet subscribed, no reply is in flight, and it was told another tip.
    pub fn tip(&mut self, current: Option<&Tip>) -> Option<Tip> {
        let cur = current?;
        self.tip_moved(cur).then(|| cur.clone())
    }

    /// Like [`ReplyOrder::tip`], without copying the tip out: true when the header
    /// notification of `current` is to be written now. The tip the wallet was told is updated
    /// in place, so a session that only compares allocates nothing.
    pub fn tip_moved(&mut self, current: &Tip) -> bool {
        if self.headers_pending > 0 {
            return false;
        }
        let Some(Some(sent)) = &mut self.headers_sent else {
            return false;
        };
        if sent == current {
            return false;
        }
        sent.clone_from(current);
        true
    }

    /// A reply carrying `confirms` was written: what must follow it now, given the verified
    /// tip `current`.
    pub fn replied(&mut self, confirms: Confirms, current: Option<&Tip>) -> Follow {
        let mut follow = Follow::default();
        for (sh, status) in confirms.scripthashes {
            let Some((n, newest)) = self.in_flight.get_mut(&sh) else {
                continue;
            };
            *n = n.saturating_sub(1);
            let newest = newest.take();
            if *n == 0 {
                self.in_flight.remove(&sh);
            }
            if let (Some(newest), Some(status)) = (newest, status) {
                if newest != status {
                    follow.statuses.push((sh, newest));
                }
            }
        }
        if let Some(reply) = confirms.headers {
            self.headers_pending = self.headers_pending.saturating_sub(1);
            match reply {
                Some(tip) => self.headers_sent = Some(Some(tip)),
                None if matches!(self.headers_sent, Some(None)) && self.headers_pending == 0 => {
                    self.headers_sent = None
                }
                None => {}
            }
        }
        follow.tip = self.tip(current);
        follow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tip(h: u32) -> Tip {
        Tip {
            height: h,
            hex: format!("{h:0160}"),
        }
    }

    fn reply(sh: &str, status: Option<Value>) -> Confirms {
        Confirms {
            scripthashes: vec![(sh.to_string(), status)],
            headers: None,
        }
    }

    #[test]
    fn a_status_during_the_reply_follows_it_only_if_it_differs() {
        let mut o = ReplyOrder::default();
        o.scripthash_request("a");
        // Held while the reply is in flight; another scripthash is not.
        assert!(!o.status("a", &json!("s1")));
        assert!(o.status("b", &json!("x")));
        assert!(!o.status("a", &json!("s2")));
        // The reply said s1, the newest is s2: s2 follows.
        let f = o.replied(reply("a", Some(json!("s1"))), None);
        assert_eq!(f.statuses, vec![("a".to_string(), json!("s2"))]);
        // Afterwards notifications go straight out.
        assert!(o.status("a", &json!("s3")));
        // A reply that already carried the newest status is not repeated.
        o.scripthash_request("a");
        assert!(!o.status("a", &json!("s4")));
        assert_eq!(
            o.replied(reply("a", Some(json!("s4"))), None),
            Follow::default()
        );
    }

    #[test]
    fn two_subscribes_in_flight_hold_until_both_replied() {
        let mut o = ReplyOrder::default();
        o.scripthash_request("a");
        o.scripthash_request("a");
        assert!(!o.status("a", &json!("s1")));
        let f = o.replied(reply("a", Some(json!("s0"))), None);
        assert_eq!(f.statuses, vec![("a".to_string(), json!("s1"))]);
        assert!(!o.status("a", &json!("s2")), "still one reply in flight");
        // A failed reply releases the hold without a notification.
        assert_eq!(o.replied(reply("a", None), None), Follow::default());
        assert!(o.status("a", &json!("s3")));
    }

    #[test]
    fn header_notifications_wait_for_the_reply_and_never_repeat_it() {
        let mut o = ReplyOrder::default();
        // Not subscribed: no header notifications.
        assert_eq!(o.tip(Some(&tip(5))), None);
        o.header_request();
        assert_eq!(o.tip(Some(&tip(6))), None, "reply in flight");
        // The reply carried 6 and the tip is 6: nothing follows.
        let f = o.replied(
            Confirms {
                scripthashes: vec![],
                headers: Some(Some(tip(6))),
            },
            Some(&tip(6)),
        );
        assert_eq!(f.tip, None);
        assert_eq!(o.tip(Some(&tip(6))), None);
        assert_eq!(o.tip(Some(&tip(7))), Some(tip(7)));
        assert_eq!(o.tip(Some(&tip(7))), None, "told once");
        // A reply computed before a block: the new tip follows it at once.
        o.header_request();
        let f = o.replied(
            Confirms {
                scripthashes: vec![],
                headers: Some(Some(tip(7))),
            },
            Some(&tip(8)),
        );
        assert_eq!(f.tip, Some(tip(8)));
    }

    #[test]
    fn a_failed_header_subscription_leaves_the_wallet_unsubscribed() {
        let mut o = ReplyOrder::default();
        o.header_request();
        let f = o.replied(
            Confirms {
                scripthashes: vec![],
                headers: Some(None),
            },
            Some(&tip(3)),
        );
        assert_eq!(f, Follow::default());
        assert_eq!(o.tip(Some(&tip(4))), None);
    }
}
