//! The bad-input matrix: one gateway, a well-behaved wallet connected throughout, and one
//! misbehaving client per case. For each case: that client gets a clear error or is
//! disconnected, the well-behaved wallet is still answered (and still notified), and the
//! gateway's peak memory stays bounded.
//!
//! One test function, so nothing else runs in this process while the peak resident size
//! (`VmHWM` in /proc/self/status) is compared before and after.

mod common;

use common::{Net, Wallet, WAIT};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A field of /proc/self/status in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// The well-behaved wallet is still answered.
async fn still_served(w: &mut Wallet, case: &str) {
    let id = w.send("server.ping", json!([])).await;
    let r = tokio::time::timeout(WAIT, w.response(id))
        .await
        .unwrap_or_else(|_| panic!("after {case}: the well-behaved wallet got no answer"));
    assert!(r.get("error").is_none(), "after {case}: {r}");
    let h = w.call("blockchain.block.header", json!([1])).await;
    assert!(h.as_str().is_some_and(|s| s.len() == 160), "after {case}");
}

/// Runs `task` while the well-behaved wallet keeps talking (a wallet pings; one that sends
/// nothing for `idle_timeout_secs` is closed).
async fn meanwhile<T: Send + 'static>(
    good: &mut Wallet,
    case: &str,
    task: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let task = tokio::spawn(task);
    while !task.is_finished() {
        still_served(good, case).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    task.await.expect("task")
}

/// Reads what the gateway says until it closes the connection or `quiet` passes with
/// nothing said; returns the messages and whether it closed.
async fn read_raw(s: &mut TcpStream, quiet: Duration) -> (Vec<Value>, bool) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let closed = loop {
        match tokio::time::timeout(quiet, s.read(&mut chunk)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let msgs = buf
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap_or_else(|e| panic!("bad JSON from gateway: {e}")))
        .collect();
    (msgs, closed)
}

/// Writes what it can (the gateway may close the connection meanwhile).
async fn write_some(s: &mut TcpStream, bytes: &[u8]) {
    let _ = tokio::time::timeout(WAIT, s.write_all(bytes)).await;
}

fn code(m: &Value) -> i64 {
    m["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("not an error: {m}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_matrix() {
    let net = Net::start_with(&["127.0.0.1:0", "127.0.0.1:0"], |c| {
        c.limits.idle_timeout_secs = 3.0;
        c.limits.max_subscriptions_per_client = 200;
        c.limits.abuse_strikes = 5;
        c.limits.max_sessions = 40;
        c.limits.max_batch_answer_bytes = 2_000_000;
        c.listen.tls = "127.0.0.1:0".into();
        c.listen.ws = "127.0.0.1:0".into();
    })
    .await;
    let addr = net.addr();
    // The well-behaved wallet comes from 127.0.0.2: the per-client limits the misbehaving
    // clients (127.0.0.1) run into are not its own.
    let mut good = Wallet::connect_from(addr, "127.0.0.2".parse().unwrap()).await;
    good.call("server.version", json!(["good", "1.4"])).await;
    good.call("blockchain.headers.subscribe", json!([])).await;
    still_served(&mut good, "setup").await;
    let peak_before = status_kib("VmHWM:");
    let quiet = Duration::from_secs(1);

    // Malformed JSON: a parse error, and the connection goes on.
    let mut s = TcpStream::connect(addr).await.unwrap();
    write_some(
        &mut s,
        b"{\"id\":1,\"method\":\n{\"id\":2,\"method\":\"server.ping\"}\n",
    )
    .await;
    let (said, _) = read_raw(&mut s, quiet).await;
    assert_eq!(said.len(), 2, "malformed JSON: {said:?}");
    assert_eq!(code(&said[0]), -32700, "malformed JSON: {said:?}");
    assert_eq!(said[1]["id"], 2, "the next line is served");
    still_served(&mut good, "malformed JSON").await;

    // Invalid UTF-8: an error, then the close.
    let mut s = TcpStream::connect(addr).await.unwrap();
    write_some(
        &mut s,
        b"{\"id\":1,\"method\":\"server.ping\",\"params\":[\"\xff\xfe\"]}\n",
    )
    .await;
    let (said, closed) = read_raw(&mut s, WAIT).await;
    assert!(closed, "invalid UTF-8 closes the connection");
    assert_eq!(said.len(), 1, "invalid UTF-8: {said:?}");
    assert_eq!(code(&said[0]), -32600);
    still_served(&mut good, "invalid UTF-8").await;

    // A line over max_line_bytes: an error, then the close.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut long = vec![b'a'; 1_100_000];
    long.push(b'\n');
    write_some(&mut s, &long).await;
    let (said, closed) = read_raw(&mut s, WAIT).await;
    assert!(closed, "an oversized line closes the connection");
    assert!(
        said.iter().all(|m| code(m) == -32600),
        "oversized line: {said:?}"
    );
    still_served(&mut good, "oversized line").await;

    // A 1 MB batch of about 500,000 junk items: one error for the batch, not 500,000.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let huge = format!("[{}0]\n", "0,".repeat(499_990));
    write_some(&mut s, huge.as_bytes()).await;
    write_some(&mut s, b"{\"id\":7,\"method\":\"server.ping\"}\n").await;
    let (said, _) = read_raw(&mut s, quiet).await;
    assert_eq!(
        said.len(),
        2,
        "huge batch: one error, then the ping's answer: {said:?}"
    );
    assert!(said[0].is_object(), "one error, not a batch of errors");
    assert_eq!(code(&said[0]), -101, "huge batch: {}", said[0]);
    assert_eq!(
        said[1]["id"], 7,
        "the connection goes on after one refused batch"
    );
    still_served(&mut good, "huge batch").await;

    // A full batch of reads that go upstream: answered as one batch.
    let mut w = Wallet::connect(addr).await;
    let items: Vec<Value> = (0..1000u32)
        .map(|i| {
            json!({"jsonrpc": "2.0", "id": i, "method": "blockchain.scripthash.get_balance",
                   "params": [format!("{:064x}", 1_000_000 + i)]})
        })
        .collect();
    w.send_line(&Value::Array(items).to_string()).await;
    let answers = w.read_message().await.unwrap();
    assert_eq!(answers.as_array().map(Vec::len), Some(1000));
    still_served(&mut good, "batch of 1000 reads").await;

    // A small batch of large reads: 1,000 x 48 kB of headers would be 48 MB held for one
    // line; the answer stops at max_batch_answer_bytes (2 MB here).
    let mut w = Wallet::connect(addr).await;
    let items: Vec<Value> = (0..1000u32)
        .map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "blockchain.block.headers", "params": [0, 300]}))
        .collect();
    w.send_line(&Value::Array(items).to_string()).await;
    let answers = w.read_message().await.unwrap();
    let answers = answers.as_array().expect("a batch answer");
    assert_eq!(answers.len(), 1000);
    let refused = answers
        .iter()
        .filter(|a| a["error"]["code"] == json!(-101))
        .count();
    assert!(refused >= 950, "answers past 2 MB refused: {refused}");
    drop(w);
    still_served(&mut good, "batch of large reads").await;

    // A subscription flood: past the client's limit, errors, then the close for abuse.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut flood = String::new();
    for i in 0..300u32 {
        flood.push_str(
            &json!({"id": i, "method": "blockchain.scripthash.subscribe",
                    "params": [format!("{:064x}", 2_000_000 + i)]})
            .to_string(),
        );
        flood.push('\n');
    }
    let (said, closed) = meanwhile(&mut good, "subscription flood", async move {
        write_some(&mut s, flood.as_bytes()).await;
        read_raw(&mut s, WAIT).await
    })
    .await;
    assert!(closed, "a subscription flood is disconnected");
    let refused = said
        .iter()
        .filter(|m| m["error"]["code"] == json!(-101))
        .count();
    assert!(
        refused >= 5,
        "over-limit errors before the close: {refused}"
    );
    assert!(said.len() <= 300);
    still_served(&mut good, "subscription flood").await;
    // Its subscriptions were given back.
    net.until("the flood's subscriptions to be dropped", || {
        net.gw.snapshot().subscriptions.scripthashes == 0
    })
    .await;

    // Slowloris: half a line, never finished; the idle timeout closes it.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (said, closed) = meanwhile(&mut good, "slowloris", async move {
        write_some(&mut s, b"{\"id\":1,\"method\":\"server.pi").await;
        read_raw(&mut s, WAIT).await
    })
    .await;
    assert!(closed && said.is_empty(), "slowloris closed: {said:?}");
    still_served(&mut good, "slowloris").await;

    // A client that never reads, asking for 48 kB answers 2,000 times (96 MB): the gateway
    // stops reading it instead of buffering its answers.
    let never_reads = TcpStream::connect(addr).await.unwrap();
    let (_keep_reading_half, mut wr) = never_reads.into_split();
    let line = "{\"id\":1,\"method\":\"blockchain.block.headers\",\"params\":[0,300]}\n";
    let writer = tokio::spawn(async move {
        for _ in 0..2000 {
            match tokio::time::timeout(Duration::from_secs(2), wr.write_all(line.as_bytes())).await
            {
                Ok(Ok(())) => {}
                _ => return wr,
            }
        }
        wr
    });
    let _wr = writer.await.unwrap();
    still_served(&mut good, "a client that never reads").await;

    // Handshakes given up half way, on TLS and WebSocket: more of them than max_sessions (40),
    // so a place that leaked would lock every wallet out.
    let tls = net.gw.tls_addr().unwrap();
    let ws = net.gw.ws_addr().unwrap();
    for _ in 0..60 {
        let mut t = TcpStream::connect(tls).await.unwrap();
        write_some(&mut t, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await;
        drop(t);
        let mut w = TcpStream::connect(ws).await.unwrap();
        write_some(
            &mut w,
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: webso",
        )
        .await;
        drop(w);
    }
    net.until("given-up handshakes to free their places", || {
        net.gw.snapshot().sessions <= 3
    })
    .await;
    common::until("a new wallet to be served", || async {
        let mut w = Wallet::connect(addr).await;
        let id = w.send("server.ping", json!([])).await;
        let r = w.read_message().await?;
        (r["id"] == json!(id)).then_some(())
    })
    .await;
    still_served(&mut good, "mid-handshake disconnects").await;

    // Addresses of another network: a clear error, and the connection goes on.
    let mut w = Wallet::connect(addr).await;
    for a in [
        "1BoatSLRHtKNngkdXEeobR76b53LETtpyT",
        "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq",
        "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx",
    ] {
        let e = w
            .call_err("blockchain.address.get_balance", json!([a]))
            .await;
        assert!(
            e["code"].as_i64().is_some() && e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{a}: {e}"
        );
    }
    w.call("server.ping", json!([])).await;
    still_served(&mut good, "wrong-network addresses").await;

    // The well-behaved wallet is still notified.
    let height = net.sim.mine(1);
    let n = good
        .notification_until("blockchain.headers.subscribe", |n| {
            n["params"][0]["height"] == json!(height)
        })
        .await;
    assert_eq!(n["params"][0]["height"], json!(height));

    // Memory: the peak grew by far less than what the bad inputs would have cost if buffered
    // (60 MB of errors for the huge batch, 96 MB of answers for the client that never reads).
    let peak_after = status_kib("VmHWM:");
    let grew_mib = peak_after.saturating_sub(peak_before) as f64 / 1024.0;
    eprintln!(
        "peak resident: {:.1} MiB before the matrix, {:.1} MiB after (+{grew_mib:.1} MiB)",
        peak_before as f64 / 1024.0,
        peak_after as f64 / 1024.0
    );
    assert!(grew_mib < 40.0, "peak memory grew by {grew_mib:.1} MiB");
}
