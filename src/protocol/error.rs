//! JSON-RPC error objects and the codes Electrum servers use.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// Invalid JSON was received.
pub const PARSE_ERROR: i64 = -32700;
/// The JSON is not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// The method does not exist or is not available.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Invalid method parameters.
pub const INVALID_PARAMS: i64 = -32602;
/// Internal error.
pub const INTERNAL_ERROR: i64 = -32603;
/// ElectrumX "bad request" (e.g. unknown transaction, bad scripthash).
pub const BAD_REQUEST: i64 = 1;
/// ElectrumX "daemon error" (bitcoind refused, e.g. a rejected broadcast).
pub const DAEMON_ERROR: i64 = 2;
/// Excessive resource usage (ElectrumX cost limits).
pub const EXCESSIVE_RESOURCE_USAGE: i64 = -101;
/// Server busy.
pub const SERVER_BUSY: i64 = -102;
/// History too large (ElectrumX 2.0).
pub const HISTORY_TOO_LARGE: i64 = 10001;

/// A JSON-RPC error object: `{"code": int, "message": str}` (plus optional `data`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcError {
    /// The numeric code.
    pub code: i64,
    /// A human-readable message.
    pub message: String,
    /// Optional extra data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    /// An error with a code and message.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }
    /// -32700.
    pub fn parse_error(message: impl Into<String>) -> Self {
        Self::new(PARSE_ERROR, message)
    }
    /// -32600.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(INVALID_REQUEST, message)
    }
    /// -32601 for `method`.
    pub fn method_not_found(method: &str) -> Self {
        Self::new(METHOD_NOT_FOUND, format!("unknown method \"{method}\""))
    }
    /// -32602.
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(INVALID_PARAMS, message)
    }
    /// -32603.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(INTERNAL_ERROR, message)
    }
    /// Code 1, "bad request".
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(BAD_REQUEST, message)
    }

    /// Reads an error object leniently: servers send `{"code","message"}`, but some old ones
    /// send a bare string.
    pub fn from_value(v: &Value) -> Self {
        match v {
            Value::Object(o) => {
                let code = o
                    .get("code")
                    .and_then(Value::as_i64)
                    .unwrap_or(INTERNAL_ERROR);
                let message = match o.get("message") {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                RpcError {
                    code,
                    message,
                    data: o.get("data").cloned(),
                }
            }
            Value::String(s) => RpcError::new(INTERNAL_ERROR, s.clone()),
            other => RpcError::new(INTERNAL_ERROR, other.to_string()),
        }
    }

    /// Compact JSON of the error object.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| format!(r#"{{"code":{},"message":"error"}}"#, self.code))
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl std::error::Error for RpcError {}
