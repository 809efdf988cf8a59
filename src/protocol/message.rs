//! The Electrum JSON-RPC message model.
//!
//! Electrum peers speak "mostly JSON-RPC 2.0": some clients omit `"jsonrpc"` or send `"1.0"`,
//! ElectrumX pads its output with whitespace and answers batches out of order. Parsing here is
//! lenient about all of that and strict about structure. Results and params travel as
//! [`RawValue`] so that bytes from an upstream reach a wallet without being re-parsed.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use std::fmt;

use super::error::RpcError;

/// A JSON-RPC request id. Electrum clients use numbers almost always, strings sometimes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Id {
    /// A numeric id (the common case).
    Num(i64),
    /// A string id.
    Str(String),
    /// An explicit `null` id (allowed by the spec for error responses).
    Null,
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Id::Num(n) => write!(f, "{n}"),
            Id::Str(s) => write!(f, "{s:?}"),
            Id::Null => f.write_str("null"),
        }
    }
}

/// A request (with an id) or a client-to-server notification (without one).
#[derive(Debug, Clone)]
pub struct Request {
    /// The id; `None` for a notification-style request that expects no answer.
    pub id: Option<Id>,
    /// The method name, e.g. `blockchain.scripthash.get_history`.
    pub method: String,
    /// Positional parameters. Named (object) parameters are kept as a single-element list
    /// holding the object; [`Request::params_object`] tells them apart.
    pub params: Vec<Value>,
    /// True when the params came as a JSON object (named parameters).
    pub params_object: bool,
}

impl Request {
    /// A request with positional params.
    pub fn new(id: Id, method: impl Into<String>, params: Vec<Value>) -> Self {
        Request {
            id: Some(id),
            method: method.into(),
            params,
            params_object: false,
        }
    }

    /// Serializes to one JSON-RPC 2.0 line (without the trailing newline).
    pub fn to_json(&self) -> String {
        /// The wire form, serialized in one pass without copying the params.
        #[derive(Serialize)]
        struct Wire<'a, P: Serialize> {
            jsonrpc: &'static str,
            method: &'a str,
            params: P,
            #[serde(skip_serializing_if = "Option::is_none")]
            id: Option<&'a Id>,
        }
        let (method, id) = (self.method.as_str(), self.id.as_ref());
        let line = if self.params_object && self.params.len() == 1 {
            // Named params: the object itself.
            serde_json::to_string(&Wire {
                jsonrpc: "2.0",
                method,
                params: &self.params[0],
                id,
            })
        } else {
            serde_json::to_string(&Wire {
                jsonrpc: "2.0",
                method,
                params: &self.params[..],
                id,
            })
        };
        // Strings, integers and JSON values always serialize.
        line.unwrap_or_default()
    }
}

/// A response to one request: a raw result or an error.
#[derive(Debug)]
pub struct Response {
    /// The id of the request this answers.
    pub id: Id,
    /// The raw result, or the error object.
    pub result: Result<Box<RawValue>, RpcError>,
}

impl Clone for Response {
    fn clone(&self) -> Self {
        Response {
            id: self.id.clone(),
            result: self.result.clone(),
        }
    }
}

impl Response {
    /// A successful response carrying an already-serialized result.
    pub fn ok(id: Id, result: Box<RawValue>) -> Self {
        Response {
            id,
            result: Ok(result),
        }
    }

    /// A successful response from any serializable value.
    pub fn ok_value<T: Serialize>(id: Id, value: &T) -> Self {
        match serde_json::value::to_raw_value(value) {
            Ok(raw) => Response::ok(id, raw),
            Err(e) => Response::err(id, RpcError::internal(format!("serialization: {e}"))),
        }
    }

    /// An error response.
    pub fn err(id: Id, error: RpcError) -> Self {
        Response {
            id,
            result: Err(error),
        }
    }

    /// Serializes to one JSON-RPC 2.0 line (without the trailing newline).
    pub fn to_json(&self) -> String {
        let len = self.result.as_ref().map(|r| r.get().len()).unwrap_or(64);
        let mut s = String::with_capacity(len + 48);
        s.push_str(r#"{"jsonrpc":"2.0","#);
        match &self.result {
            Ok(raw) => {
                s.push_str(r#""result":"#);
                s.push_str(raw.get());
            }
            Err(e) => {
                s.push_str(r#""error":"#);
                s.push_str(&e.to_json());
            }
        }
        s.push_str(r#","id":"#);
        push_id(&mut s, &self.id);
        s.push('}');
        s
    }
}

/// A server-to-client notification, e.g. `blockchain.scripthash.subscribe` with
/// `[scripthash, status]`.
#[derive(Debug, Clone)]
pub struct Notification {
    /// The subscription method this notification belongs to.
    pub method: String,
    /// The params: the subscription's params followed by the new value.
    pub params: Vec<Value>,
}

impl Notification {
    /// Serializes to one JSON-RPC 2.0 line (without the trailing newline).
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(64);
        s.push_str(r#"{"jsonrpc":"2.0","method":"#);
        push_json_str(&mut s, &self.method);
        s.push_str(r#","params":"#);
        s.push_str(&Value::Array(self.params.clone()).to_string());
        s.push('}');
        s
    }

    /// The key that identifies the subscription this notification belongs to: the method
    /// and every param but the last (the new value).
    pub fn subscription_key(&self) -> SubscriptionKey {
        let n = self.params.len().saturating_sub(1);
        SubscriptionKey::new(&self.method, &self.params[..n])
    }

    /// The new value carried by the notification (the last param), or `null`.
    pub fn value(&self) -> &Value {
        self.params.last().unwrap_or(&Value::Null)
    }
}

/// Identifies a subscription by method and params, as the Electrum wallet does
/// (never by method alone).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionKey {
    /// The subscription method.
    pub method: String,
    /// The params serialized as compact JSON (a canonical, hashable form).
    pub params: String,
}

impl SubscriptionKey {
    /// Builds a key from a method and its subscription params.
    pub fn new(method: &str, params: &[Value]) -> Self {
        SubscriptionKey {
            method: method.to_string(),
            params: Value::Array(params.to_vec()).to_string(),
        }
    }

    /// The params as JSON values.
    pub fn params_vec(&self) -> Vec<Value> {
        match serde_json::from_str::<Value>(&self.params) {
            Ok(Value::Array(v)) => v,
            _ => Vec::new(),
        }
    }
}

/// One JSON-RPC message of any kind.
#[derive(Debug)]
pub enum Message {
    /// A request (or client notification).
    Request(Request),
    /// A response to a request.
    Response(Response),
    /// A server notification.
    Notification(Notification),
}

/// One line (or WebSocket message) of input: a single message or a batch.
#[derive(Debug)]
pub enum Incoming {
    /// One message.
    Single(Message),
    /// A JSON array of messages; each element parsed independently. An element that is not a
    /// valid message is an `Err` carrying the id (if one could be read) and the error.
    Batch(Vec<Result<Message, (Option<Id>, RpcError)>>),
}

/// Why a line could not be parsed at all.
#[derive(Debug, Clone, PartialEq)]
pub enum ParseError {
    /// Not JSON (answer with -32700 and a null id).
    Json(String),
    /// JSON, but not a JSON-RPC message; carries the id if one could be read (answer -32600).
    Invalid(Option<Id>, String),
    /// A batch of more requests than allowed (the bound it broke); answered with one error
    /// for the whole batch, never one per item.
    BatchTooLarge(usize),
}

impl ParseError {
    /// The JSON-RPC error to send back for this parse failure.
    pub fn to_rpc_error(&self) -> RpcError {
        match self {
            ParseError::Json(m) => RpcError::parse_error(m.clone()),
            ParseError::Invalid(_, m) => RpcError::invalid_request(m.clone()),
            ParseError::BatchTooLarge(max) => RpcError::new(
                super::error::EXCESSIVE_RESOURCE_USAGE,
                format!("batch too large: at most {max} requests in one batch"),
            ),
        }
    }

    /// The id to answer with.
    pub fn id(&self) -> Id {
        match self {
            ParseError::Json(_) => Id::Null,
            ParseError::Invalid(id, _) => id.clone().unwrap_or(Id::Null),
            ParseError::BatchTooLarge(_) => Id::Null,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Json(m) => write!(f, "parse error: {m}"),
            ParseError::Invalid(_, m) => write!(f, "invalid request: {m}"),
            ParseError::BatchTooLarge(max) => write!(f, "batch of more than {max} requests"),
        }
    }
}

impl std::error::Error for ParseError {}

fn some_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

fn some_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// The union of every field a JSON-RPC message may carry. Absent and `null` are told apart
/// for `id` and `result` (a `null` result is a real answer, e.g. to `server.ping`).
#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    jsonrpc: Option<Value>,
    #[serde(default, deserialize_with = "some_value")]
    id: Option<Value>,
    #[serde(default)]
    method: Option<Value>,
    #[serde(default)]
    params: Option<Value>,
    #[serde(default, deserialize_with = "some_raw")]
    result: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "some_value")]
    error: Option<Value>,
}

fn parse_id(v: &Value) -> Result<Id, String> {
    match v {
        Value::Null => Ok(Id::Null),
        Value::String(s) => Ok(Id::Str(s.clone())),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Ok(Id::Num(i)),
            None => Err("id must be an integer or a string".into()),
        },
        _ => Err("id must be an integer or a string".into()),
    }
}

fn from_wire(w: Wire) -> Result<Message, (Option<Id>, RpcError)> {
    let id = match &w.id {
        Some(v) => match parse_id(v) {
            Ok(id) => Some(id),
            Err(m) => return Err((None, RpcError::invalid_request(m))),
        },
        None => None,
    };
    match &w.jsonrpc {
        None => {}
        Some(Value::String(v)) if v == "2.0" || v == "1.0" => {}
        Some(_) => return Err((id, RpcError::invalid_request("unsupported jsonrpc version"))),
    }
    if let Some(method) = w.method {
        let method = match method {
            Value::String(m) => m,
            _ => return Err((id, RpcError::invalid_request("method must be a string"))),
        };
        let (params, params_object) = match w.params {
            None | Some(Value::Null) => (Vec::new(), false),
            Some(Value::Array(a)) => (a, false),
            Some(o @ Value::Object(_)) => (vec![o], true),
            Some(_) => {
                return Err((
                    id,
                    RpcError::invalid_request("params must be an array or an object"),
                ))
            }
        };
        return Ok(match id {
            // A message with a method and no id from a server is a notification; from a
            // client it is a request that expects no answer. Callers decide by direction.
            None => Message::Notification(Notification { method, params }),
            Some(id) => Message::Request(Request {
                id: Some(id),
                method,
                params,
                params_object,
            }),
        });
    }
    let Some(id) = id else {
        return Err((
            None,
            RpcError::invalid_request("message has neither method nor id"),
        ));
    };
    if let Some(err) = w.error {
        if !err.is_null() {
            let e = RpcError::from_value(&err);
            return Ok(Message::Response(Response::err(id, e)));
        }
    }
    match w.result {
        Some(raw) => Ok(Message::Response(Response::ok(id, raw))),
        None => Err((
            Some(id),
            RpcError::invalid_request("response has neither result nor error"),
        )),
    }
}

/// Parses one line (or WebSocket message). Whitespace anywhere is tolerated.
pub fn parse(text: &str) -> Result<Incoming, ParseError> {
    parse_limited(text, usize::MAX)
}

/// Marks the error [`BoundedBatch`] stops with, to tell it from bad JSON.
const BATCH_BOUND: &str = "\u{0}batch bound";

/// A JSON array of at most `.0` raw items: reading stops at the first item past the bound,
/// so an oversized batch costs no memory per item.
struct BoundedBatch(usize);

impl<'de> serde::de::Visitor<'de> for BoundedBatch {
    type Value = Vec<Box<RawValue>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a batch of JSON-RPC messages")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Box<RawValue>>()? {
            if items.len() >= self.0 {
                return Err(serde::de::Error::custom(BATCH_BOUND));
            }
            items.push(item);
        }
        Ok(items)
    }
}

/// Like [`parse`], but a batch of more than `max_batch` items is refused as a whole
/// ([`ParseError::BatchTooLarge`]) as soon as the item past the bound is read.
pub fn parse_limited(text: &str, max_batch: usize) -> Result<Incoming, ParseError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let mut de = serde_json::Deserializer::from_str(text);
        let items = de
            .deserialize_seq(BoundedBatch(max_batch))
            .and_then(|items| de.end().map(|()| items))
            .map_err(|e| {
                if e.to_string().starts_with(BATCH_BOUND) {
                    ParseError::BatchTooLarge(max_batch)
                } else {
                    ParseError::Json(e.to_string())
                }
            })?;
        if items.is_empty() {
            return Err(ParseError::Invalid(None, "empty batch".into()));
        }
        let out = items
            .into_iter()
            .map(|raw| match serde_json::from_str::<Wire>(raw.get()) {
                Ok(w) => from_wire(w),
                Err(e) => Err((None, RpcError::invalid_request(e.to_string()))),
            })
            .collect();
        return Ok(Incoming::Batch(out));
    }
    // One pass over the text; only a line that fails is looked at again, to tell bad JSON
    // from JSON that is not a message.
    let w: Wire = serde_json::from_str(text).map_err(|e| {
        match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Err(json) => ParseError::Json(json.to_string()),
            // Valid JSON that is not an object (or has wrongly typed fields).
            Ok(_) => ParseError::Invalid(None, e.to_string()),
        }
    })?;
    from_wire(w)
        .map(Incoming::Single)
        .map_err(|(id, e)| ParseError::Invalid(id, e.message))
}

/// Serializes a list of already-serialized messages as one batch line.
pub fn batch_to_json<I: IntoIterator<Item = String>>(items: I) -> String {
    let mut s = String::from("[");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&item);
    }
    s.push(']');
    s
}

fn push_id(s: &mut String, id: &Id) {
    match id {
        Id::Num(n) => s.push_str(&n.to_string()),
        Id::Str(v) => push_json_str(s, v),
        Id::Null => s.push_str("null"),
    }
}

fn push_json_str(s: &mut String, v: &str) {
    match serde_json::to_string(v) {
        Ok(j) => s.push_str(&j),
        Err(_) => s.push_str("\"\""),
    }
}

/// Deserializes a raw result into a typed value, mapping failure to a bad-response error.
pub fn from_raw<T: de::DeserializeOwned>(raw: &RawValue) -> Result<T, RpcError> {
    serde_json::from_str(raw.get())
        .map_err(|e| RpcError::internal(format!("unexpected result shape: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_over_the_bound_is_one_error_without_reading_it_all() {
        let ok = parse_limited("[0,0,0]", 3).unwrap();
        assert!(matches!(ok, Incoming::Batch(ref v) if v.len() == 3));
        let big = format!("[{}0]", "0,".repeat(500_000));
        match parse_limited(&big, 1000) {
            Err(e @ ParseError::BatchTooLarge(1000)) => {
                assert_eq!(
                    e.to_rpc_error().code,
                    crate::protocol::error::EXCESSIVE_RESOURCE_USAGE
                );
                assert_eq!(e.id(), Id::Null);
            }
            other => panic!("expected BatchTooLarge, got {other:?}"),
        }
        // Bad JSON stays a parse error; trailing garbage too.
        assert!(matches!(parse_limited("[0,", 10), Err(ParseError::Json(_))));
        assert!(matches!(
            parse_limited("[0] x", 10),
            Err(ParseError::Json(_))
        ));
    }

    fn single(text: &str) -> Message {
        match parse(text).expect("parses") {
            Incoming::Single(m) => m,
            Incoming::Batch(_) => panic!("expected a single message"),
        }
    }

    #[test]
    fn accepts_2_0_1_0_and_missing_jsonrpc() {
        for line in [
            r#"{"jsonrpc":"2.0","id":1,"method":"server.ping","params":[]}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"server.ping","params":[]}"#,
            r#"{"id":1,"method":"server.ping","params":[]}"#,
            r#"{"id":1,"method":"server.ping"}"#,
        ] {
            match single(line) {
                Message::Request(r) => {
                    assert_eq!(r.id, Some(Id::Num(1)));
                    assert_eq!(r.method, "server.ping");
                    assert!(r.params.is_empty());
                }
                other => panic!("not a request: {other:?}"),
            }
        }
    }

    #[test]
    fn rejects_unknown_jsonrpc_version() {
        let e = parse(r#"{"jsonrpc":"3.0","id":7,"method":"x"}"#).unwrap_err();
        assert_eq!(e.id(), Id::Num(7));
        assert_eq!(e.to_rpc_error().code, super::super::error::INVALID_REQUEST);
    }

    #[test]
    fn tolerates_padding_like_electrumx() {
        let line = "{\"jsonrpc\": \"2.0\", \"result\": {\"height\": 5, \"hex\": \"00\"}      , \"id\": 3          }";
        match single(line) {
            Message::Response(r) => {
                assert_eq!(r.id, Id::Num(3));
                let v: Value = from_raw(r.result.as_ref().unwrap()).unwrap();
                assert_eq!(v["height"], 5);
            }
            other => panic!("not a response: {other:?}"),
        }
    }

    #[test]
    fn null_result_is_a_result() {
        match single(r#"{"jsonrpc":"2.0","id":2,"result":null}"#) {
            Message::Response(r) => assert_eq!(r.result.unwrap().get(), "null"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_response_parsed() {
        match single(
            r#"{"jsonrpc":"2.0","id":"a","error":{"code":-32601,"message":"unknown method"}}"#,
        ) {
            Message::Response(r) => {
                assert_eq!(r.id, Id::Str("a".into()));
                let e = r.result.unwrap_err();
                assert_eq!(e.code, -32601);
                assert_eq!(e.message, "unknown method");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn notification_and_key() {
        match single(
            r#"{"jsonrpc":"2.0","method":"blockchain.scripthash.subscribe","params":["ab",null]}"#,
        ) {
            Message::Notification(n) => {
                let k = n.subscription_key();
                assert_eq!(
                    k,
                    SubscriptionKey::new("blockchain.scripthash.subscribe", &[Value::from("ab")])
                );
                assert_eq!(n.value(), &Value::Null);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_input() {
        assert!(matches!(parse("{not json"), Err(ParseError::Json(_))));
        assert!(matches!(parse(""), Err(ParseError::Json(_))));
        assert!(matches!(parse("42"), Err(ParseError::Invalid(..))));
        assert!(matches!(parse("[]"), Err(ParseError::Invalid(..))));
        assert!(matches!(
            parse(r#"{"id":1}"#),
            Err(ParseError::Invalid(Some(Id::Num(1)), _))
        ));
        assert!(matches!(
            parse(r#"{"id":1,"method":5}"#),
            Err(ParseError::Invalid(Some(Id::Num(1)), _))
        ));
        assert!(matches!(
            parse(r#"{"id":[1],"method":"x"}"#),
            Err(ParseError::Invalid(None, _))
        ));
        assert!(matches!(
            parse(r#"{"id":1,"method":"x","params":"s"}"#),
            Err(ParseError::Invalid(Some(Id::Num(1)), _))
        ));
    }

    #[test]
    fn out_of_order_batch_matched_by_id() {
        let line = r#"[ {"jsonrpc":"2.0","id":2,"result":"b"} , {"id":1,"result":"a"}, 5 ]"#;
        let Incoming::Batch(items) = parse(line).unwrap() else {
            panic!("batch expected")
        };
        assert_eq!(items.len(), 3);
        let mut got = std::collections::HashMap::new();
        for item in items.iter().flatten() {
            if let Message::Response(r) = item {
                got.insert(r.id.clone(), r.result.as_ref().unwrap().get().to_string());
            }
        }
        assert_eq!(got[&Id::Num(1)], "\"a\"");
        assert_eq!(got[&Id::Num(2)], "\"b\"");
        assert!(items[2].is_err());
    }

    #[test]
    fn requests_serialize_as_compact_json_rpc() {
        let r = Request::new(Id::Num(9), "m\"x", vec![Value::from(5), Value::from("a")]);
        assert_eq!(
            r.to_json(),
            r#"{"jsonrpc":"2.0","method":"m\"x","params":[5,"a"],"id":9}"#
        );
        let mut named = Request::new(Id::Str("s".into()), "m", vec![serde_json::json!({"k": 1})]);
        named.params_object = true;
        assert_eq!(
            named.to_json(),
            r#"{"jsonrpc":"2.0","method":"m","params":{"k":1},"id":"s"}"#
        );
        named.id = None;
        assert_eq!(
            named.to_json(),
            r#"{"jsonrpc":"2.0","method":"m","params":{"k":1}}"#
        );
    }

    #[test]
    fn serialization_round_trips() {
        let r = Request::new(Id::Num(9), "blockchain.block.header", vec![Value::from(5)]);
        let line = r.to_json();
        match single(&line) {
            Message::Request(back) => {
                assert_eq!(back.method, "blockchain.block.header");
                assert_eq!(back.params, vec![Value::from(5)]);
            }
            other => panic!("{other:?}"),
        }
        let resp = Response::err(Id::Str("x\"y".into()), RpcError::new(1, "bad \"thing\""));
        match single(&resp.to_json()) {
            Message::Response(back) => {
                assert_eq!(back.id, Id::Str("x\"y".into()));
                assert_eq!(back.result.unwrap_err().message, "bad \"thing\"");
            }
            other => panic!("{other:?}"),
        }
        let n = Notification {
            method: "blockchain.headers.subscribe".into(),
            params: vec![serde_json::json!({"hex":"00","height":1})],
        };
        let v: Value = serde_json::from_str(&n.to_json()).unwrap();
        assert_eq!(v["params"][0]["height"], 1);
        assert!(v.get("id").is_none());
    }
}
