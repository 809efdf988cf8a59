//! The Electrum wire protocol: message model, lenient parser, line codec with size limits,
//! error codes, the tip value and the method catalogue.

pub mod call;
pub mod codec;
pub mod error;
pub mod message;
pub mod methods;
pub mod tip;

pub use call::{Args, Call, ParseContext};
pub use codec::{CodecError, LineCodec, DEFAULT_MAX_LINE};
pub use error::RpcError;
pub use message::{
    batch_to_json, from_raw, parse, parse_limited, Id, Incoming, Message, Notification, ParseError,
    Request, Response, SubscriptionKey,
};
pub use methods::{lookup, MethodInfo, Policy};
pub use tip::{Tip, TipNotice};
