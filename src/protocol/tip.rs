//! A block tip as the wire carries it: `{"hex", "height"}`, the value of
//! `blockchain.headers.subscribe` and its notifications.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

/// A block tip: its height and its 80-byte header in hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tip {
    /// Height.
    pub height: u32,
    /// The 80-byte header, hex.
    pub hex: String,
}

impl Tip {
    /// Reads a `blockchain.headers.subscribe` value (`{"hex","height"}`), checking its shape.
    pub fn from_value(v: &Value) -> Option<Tip> {
        let height = u32::try_from(v.get("height")?.as_u64()?).ok()?;
        let hex = v.get("hex")?.as_str()?;
        if hex.len() != 160 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(Tip {
            height,
            hex: hex.to_ascii_lowercase(),
        })
    }

    /// The notification value `{"hex","height"}` (exactly these two keys).
    pub fn to_value(&self) -> Value {
        serde_json::json!({"hex": self.hex, "height": self.height})
    }

    /// The header, if the hex decodes to one.
    pub fn header(&self) -> Option<bitcoin::block::Header> {
        header_from_hex(&self.hex)
    }

    /// The block hash of the header, if the hex decodes to one.
    pub fn block_hash(&self) -> Option<bitcoin::BlockHash> {
        self.header().map(|h| h.block_hash())
    }
}

/// A tip with its `blockchain.headers.subscribe` notification, serialized once: the line every
/// connection subscribed to headers is sent when the tip moves, shared by all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TipNotice {
    /// The tip.
    pub tip: Tip,
    /// The notification, one JSON-RPC message without a line end.
    pub line: Arc<str>,
}

impl TipNotice {
    /// Serializes the notification of `tip`.
    pub fn new(tip: Tip) -> TipNotice {
        let line = crate::protocol::Notification {
            method: "blockchain.headers.subscribe".into(),
            params: vec![tip.to_value()],
        }
        .to_json();
        TipNotice {
            tip,
            line: line.into(),
        }
    }
}

/// Decodes one 80-byte header from hex.
pub fn header_from_hex(hex: &str) -> Option<bitcoin::block::Header> {
    use bitcoin::hex::FromHex;
    let bytes = Vec::<u8>::from_hex(hex).ok()?;
    if bytes.len() != 80 {
        return None;
    }
    bitcoin::consensus::deserialize(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_is_checked_and_the_hash_computed() {
        let genesis = bitcoin::blockdata::constants::genesis_block(bitcoin::Network::Regtest);
        let hex = bitcoin::consensus::encode::serialize_hex(&genesis.header);
        let tip = Tip::from_value(&serde_json::json!({"height": 0, "hex": hex.to_uppercase()}))
            .expect("a well-formed tip");
        assert_eq!(tip.hex, hex);
        assert_eq!(
            tip.block_hash().map(|h| h.to_string()).as_deref(),
            Some("0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206")
        );
        assert_eq!(Tip::from_value(&tip.to_value()), Some(tip));
        assert!(Tip::from_value(&serde_json::json!({"height": -1, "hex": hex})).is_none());
        assert!(Tip::from_value(&serde_json::json!({"height": 1, "hex": "zz"})).is_none());
        let bad = Tip {
            height: 1,
            hex: "zz".repeat(80),
        };
        assert_eq!(bad.block_hash(), None);
    }

    #[test]
    fn a_notice_is_the_notification_of_its_tip() {
        let tip = Tip {
            height: 7,
            hex: "ab".repeat(80),
        };
        let notice = TipNotice::new(tip.clone());
        let v: Value = serde_json::from_str(&notice.line).expect("JSON");
        assert_eq!(v["jsonrpc"], "2.0");
        assert_eq!(v["method"], "blockchain.headers.subscribe");
        assert_eq!(v["params"], serde_json::json!([tip.to_value()]));
        assert!(v.get("id").is_none());
        assert_eq!(notice.tip, tip);
    }
}
