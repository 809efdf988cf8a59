//! Entry points for the fuzz targets (feature `fuzzing`): the reader's side of a connection,
//! driven without a socket.

use super::*;

/// Subscriptions a fuzzed connection holds: the tip, one scripthash and the peers.
const KEYS: [(&str, &str); 3] = [
    ("blockchain.headers.subscribe", "[]"),
    (
        "blockchain.scripthash.subscribe",
        r#"["8b01df4e368ea28f8dc0423bcf7a4923e3a12d307c875e47a0cfbf90b5c39161"]"#,
    ),
    ("server.peers.subscribe", "[]"),
];

/// Feeds `lines` to a client's reader as a server would send them, with calls (ids 0 to 3),
/// first and repeated subscribes (ids 4 to 6) and an unsubscribe (id 7) in flight. Stops at
/// the first line that closes the connection and returns how many lines were taken.
///
/// Panics if an answer handed to a caller or a value handed to a subscriber is not the JSON
/// the server sent in some form (never valid input, so a bug).
pub(crate) fn read_lines(lines: &[&str]) -> usize {
    let server = "tcp://127.0.0.1:50001"
        .parse()
        .unwrap_or_else(|e| panic!("fixed url: {e}"));
    let mut config = ClientConfig::new(server);
    config.max_queued_notifications = 2;
    let shared = Shared::new(config);
    let mut calls = Vec::new();
    let mut streams = Vec::new();
    {
        let mut st = shared.lock();
        for id in 0..4 {
            let (tx, rx) = oneshot::channel();
            st.pending.insert(id, Pending::Call(tx));
            calls.push(rx);
        }
        for (i, (method, params)) in KEYS.iter().enumerate() {
            let params: Vec<Value> = serde_json::from_str(params).unwrap_or_default();
            let key = Arc::new(SubscriptionKey::new(method, &params));
            let (tx, rx) = futures::channel::mpsc::channel(1);
            // The first has its first answer in flight; the others were answered before.
            let last = (i > 0).then_some(Value::Null);
            st.subs.insert(
                key.clone(),
                SubEntry {
                    last,
                    subscribers: vec![(i as u64, tx)],
                    waiters: Vec::new(),
                },
            );
            let (reply, rx_reply) = oneshot::channel();
            st.pending
                .insert(4 + i as i64, Pending::Subscribe { key, reply });
            calls.push(rx_reply);
            streams.push(rx);
        }
        st.pending.insert(7, Pending::Ignore);
    }
    let mut taken = 0;
    for line in lines {
        taken += 1;
        if shared.on_line(line).is_err() {
            break;
        }
    }
    for mut rx in calls {
        if let Ok(Ok(Ok(raw))) = rx.try_recv() {
            // JSON, as RFC 8259 reads it: a number beyond f64 (`1e2000080000205`) is JSON that
            // `Value` cannot hold, and every reader of an answer handles that as an error.
            assert!(
                serde_json::from_str::<serde::de::IgnoredAny>(raw.get()).is_ok(),
                "{}",
                raw.get()
            );
        }
    }
    for mut rx in streams {
        while rx.try_recv().is_ok() {}
    }
    taken
}

/// Reads a `server.version` answer (any JSON text) as the client does when it negotiates
/// `protocol_min..=protocol_max`.
pub(crate) fn version_answer(
    raw: &str,
    protocol_min: &str,
    protocol_max: &str,
) -> Option<Result<ServerInfo, ClientError>> {
    let raw = RawValue::from_string(raw.to_string()).ok()?;
    let server = "tcp://127.0.0.1:50001"
        .parse()
        .unwrap_or_else(|e| panic!("fixed url: {e}"));
    let mut config = ClientConfig::new(server);
    config.protocol_min = protocol_min.to_string();
    config.protocol_max = protocol_max.to_string();
    Some(super::version_answer(&config, &raw))
}
