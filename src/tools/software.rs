//! Which server implementation is behind an endpoint, told from what it says about itself.
//!
//! Servers differ in ways a client must smooth over (electrs speaks protocol 1.4 only and
//! has no `get_mempool`; ElectrumX throttles by cost), so a server list is more useful when
//! it names the implementation. The software string of `server.version` usually does; when
//! an operator hides or changes it, the banner and a few tell-tale answers still give it
//! away. The rules, in order (all string matches case-insensitive):
//!
//! 1. The software string of `server.version`, then `server_version` from
//!    `server.features`: `electrum-gateway-sim` → the simulator; `electrum-gateway` → the
//!    gateway; `esplora` → esplora (Blockstream's electrs fork says `electrs-esplora X`);
//!    `electrumpersonalserver` or `electrum personal server` → Electrum Personal Server;
//!    `electrumx` → ElectrumX; `fulcrum` → Fulcrum; `electrs` → electrs (`electrs/X`).
//! 2. The banner, with the same words (ElectrumX's default banner names it, as do
//!    Fulcrum's, EPS's and electrs').
//! 3. electrs' tell-tales: protocol 1.4 at most, an empty `server.peers.subscribe` answer
//!    and a null donation address.
//! 4. Otherwise unknown.

use std::fmt;

use crate::servers::Version;

/// A server implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Software {
    /// ElectrumX (spesmilo/electrumx, e-x).
    ElectrumX,
    /// Fulcrum.
    Fulcrum,
    /// electrs (romanz/electrs).
    Electrs,
    /// Blockstream's esplora electrs fork (`electrs-esplora`).
    Esplora,
    /// Electrum Personal Server.
    PersonalServer,
    /// This gateway.
    Gateway,
    /// The simulated server of this crate.
    Simulator,
    /// Not recognized.
    Unknown,
}

impl Software {
    /// The name used in server lists and tables.
    pub fn name(self) -> &'static str {
        match self {
            Software::ElectrumX => "ElectrumX",
            Software::Fulcrum => "Fulcrum",
            Software::Electrs => "electrs",
            Software::Esplora => "esplora",
            Software::PersonalServer => "ElectrumPersonalServer",
            Software::Gateway => "electrum-gateway",
            Software::Simulator => "electrum-gateway-sim",
            Software::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Software {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a server said that gives its implementation away.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evidence<'a> {
    /// The software string of `server.version`, e.g. `ElectrumX 1.16.0`.
    pub server_version: &'a str,
    /// `server_version` from `server.features`, if it answered.
    pub features_version: Option<&'a str>,
    /// `server.banner`, if it answered.
    pub banner: Option<&'a str>,
    /// The highest protocol version it speaks (`protocol_max` of `server.features`, else the
    /// negotiated one).
    pub protocol_max: Option<Version>,
    /// Whether `server.peers.subscribe` answered an empty list (`None`: no list).
    pub peers_empty: Option<bool>,
    /// Whether `server.donation_address` answered null.
    pub donation_null: bool,
}

/// Names by the words in a software string, most specific first.
fn by_name(text: &str) -> Option<Software> {
    let t = text.to_ascii_lowercase();
    let rules: [(&[&str], Software); 7] = [
        (&["electrum-gateway-sim"], Software::Simulator),
        (&["electrum-gateway"], Software::Gateway),
        (&["esplora"], Software::Esplora),
        (
            &["electrumpersonalserver", "electrum personal server"],
            Software::PersonalServer,
        ),
        (&["electrumx"], Software::ElectrumX),
        (&["fulcrum"], Software::Fulcrum),
        (&["electrs"], Software::Electrs),
    ];
    rules
        .iter()
        .find(|(words, _)| words.iter().any(|w| t.contains(w)))
        .map(|(_, s)| *s)
}

/// Classifies a server (see the module documentation for the rules).
pub fn classify(e: &Evidence<'_>) -> Software {
    std::iter::once(e.server_version)
        .chain(e.features_version)
        .chain(e.banner)
        .find_map(by_name)
        .unwrap_or_else(|| {
            let speaks_only_1_4 = e.protocol_max.is_some_and(|v| v <= (1, 4, 0));
            if speaks_only_1_4 && e.peers_empty == Some(true) && e.donation_null {
                Software::Electrs
            } else {
                Software::Unknown
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(s: &str) -> Software {
        classify(&Evidence {
            server_version: s,
            ..Evidence::default()
        })
    }

    #[test]
    fn software_strings_name_the_implementation() {
        let cases = [
            ("ElectrumX 1.16.0", Software::ElectrumX),
            ("electrumx 1.18.0", Software::ElectrumX),
            ("Fulcrum 1.9.8", Software::Fulcrum),
            ("electrs/0.10.5", Software::Electrs),
            ("electrs-esplora 0.4.1", Software::Esplora),
            ("ElectrumPersonalServer 0.2.4", Software::PersonalServer),
            ("electrum-gateway 0.1.0", Software::Gateway),
            ("electrum-gateway-sim 0.1.0", Software::Simulator),
            ("my server", Software::Unknown),
            ("", Software::Unknown),
        ];
        for (s, want) in cases {
            assert_eq!(named(s), want, "{s:?}");
        }
    }

    #[test]
    fn hidden_software_is_told_by_features_banner_and_tell_tales() {
        let hidden = Evidence {
            server_version: "1.0",
            ..Evidence::default()
        };
        assert_eq!(
            classify(&Evidence {
                features_version: Some("Fulcrum 1.10.0"),
                ..hidden.clone()
            }),
            Software::Fulcrum
        );
        assert_eq!(
            classify(&Evidence {
                banner: Some("You are connected to an ElectrumX 1.16.0 server."),
                ..hidden.clone()
            }),
            Software::ElectrumX
        );
        let electrs_like = Evidence {
            protocol_max: Some((1, 4, 0)),
            peers_empty: Some(true),
            donation_null: true,
            ..hidden.clone()
        };
        assert_eq!(classify(&electrs_like), Software::Electrs);
        // Each tell-tale alone is not enough.
        for not_quite in [
            Evidence {
                protocol_max: Some((1, 6, 0)),
                ..electrs_like.clone()
            },
            Evidence {
                peers_empty: Some(false),
                ..electrs_like.clone()
            },
            Evidence {
                peers_empty: None,
                ..electrs_like.clone()
            },
            Evidence {
                donation_null: false,
                ..electrs_like.clone()
            },
        ] {
            assert_eq!(classify(&not_quite), Software::Unknown, "{not_quite:?}");
        }
        // The software string wins over the banner.
        assert_eq!(
            classify(&Evidence {
                server_version: "Fulcrum 1.9.8",
                banner: Some("Welcome! Formerly an ElectrumX server."),
                ..Evidence::default()
            }),
            Software::Fulcrum
        );
    }
}
