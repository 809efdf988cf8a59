//! A wallet's lines as the session reads them: the JSON-RPC parser (single messages and
//! batches), then each request parsed into a typed call at the protocol version negotiated so
//! far. Every refusal must be an error response that is itself valid JSON-RPC for the same id,
//! and every accepted call must give its canonical parameters and cache key without panicking.
#![no_main]

use electrum_gateway::protocol::methods::{negotiate, PROTOCOL_MAX, PROTOCOL_MIN};
use electrum_gateway::protocol::{
    parse, Args, Call, Id, Incoming, Message, ParseContext, Policy, Request, Response,
};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

fn check_response(resp: &Response) {
    let line = resp.to_json();
    match parse(&line) {
        Ok(Incoming::Single(Message::Response(back))) => assert_eq!(back.id, resp.id, "{line}"),
        other => panic!("our own response {line} reads back as {other:?}"),
    }
}

fn handle(req: Request, cx: &mut ParseContext<'_>) {
    let id = req.id.clone().unwrap_or(Id::Null);
    match Call::parse(&req.method, &req.params, req.params_object, cx) {
        Ok(call) => {
            let _ = (
                call.method(),
                call.kind(),
                call.scripthash(),
                call.proof_height(),
            );
            let params = call.params();
            // What goes upstream is canonical: it parses, to the same parameters. (The version
            // is answered locally and never sent.)
            if !matches!(call.args, Args::Version(_)) {
                let again = Call::parse(call.method(), &params, false, cx)
                    .unwrap_or_else(|e| panic!("{params:?} of {} refused: {e:?}", call.method()));
                assert_eq!(again.params(), params, "{}", call.method());
                assert_eq!(again.cache_key(), call.cache_key());
            }
            if let Some(key) = call.cache_key() {
                assert!(!key.is_empty());
            }
            if let Args::Version(offered) = &call.args {
                if let Ok(v) = negotiate(offered, (PROTOCOL_MIN, PROTOCOL_MAX)) {
                    assert!((PROTOCOL_MIN..=PROTOCOL_MAX).contains(&v), "{v:?}");
                    cx.protocol = v;
                }
            }
        }
        Err(e) => check_response(&Response::err(id, e)),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    // The codec hands the session UTF-8 lines only.
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let network = match sel % 3 {
        0 => bitcoin::Network::Bitcoin,
        1 => bitcoin::Network::Testnet,
        _ => bitcoin::Network::Regtest,
    };
    let mut policies = BTreeMap::new();
    if sel & 4 != 0 {
        policies.insert(
            "blockchain.scripthash.get_balance".to_string(),
            Policy::Local,
        );
    }
    let mut cx = ParseContext {
        network,
        protocol: PROTOCOL_MIN,
        policies: &policies,
    };
    for line in text.split('\n') {
        let incoming = match parse(line) {
            Ok(i) => i,
            Err(e) => {
                check_response(&Response::err(e.id(), e.to_rpc_error()));
                continue;
            }
        };
        let items = match incoming {
            Incoming::Single(m) => vec![Ok(m)],
            Incoming::Batch(items) => items,
        };
        for item in items {
            match item {
                Ok(Message::Request(r)) => handle(r, &mut cx),
                Ok(Message::Notification(n)) => handle(
                    Request {
                        id: None,
                        method: n.method,
                        params: n.params,
                        params_object: false,
                    },
                    &mut cx,
                ),
                Ok(Message::Response(r)) => check_response(&Response::err(
                    r.id,
                    electrum_gateway::protocol::RpcError::invalid_request("a response"),
                )),
                Err((id, e)) => check_response(&Response::err(id.unwrap_or(Id::Null), e)),
            }
        }
    }
});
