//! Headless Chromium driven over the DevTools protocol: real page loads, typing into a form,
//! pressing Enter and following links, then reading what the rendered DOM shows.
//!
//! `--dump-dom` can only load a URL; these tests also need to submit a form and click, so they
//! speak the DevTools protocol (JSON over a WebSocket) to one page target. Waits are bounded
//! polls of what the page shows (its URL and `document.readyState`), never sleeps standing in
//! for an event.
#![allow(dead_code)]

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Bound on anything the browser is waited for (a cold Chromium start can take a while).
pub const BROWSER_WAIT: Duration = Duration::from_secs(60);

/// One headless Chromium with one page.
pub struct Browser {
    child: Child,
    ws: WebSocketStream<TcpStream>,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium with a fresh profile and attaches to a new blank page.
    pub async fn launch(bin: &Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromium");
        let stderr = child.stderr.take().expect("chromium stderr");
        let mut lines = BufReader::new(stderr).lines();
        let endpoint = tokio::time::timeout(BROWSER_WAIT, async {
            let mut seen = String::new();
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) => {
                        if let Some(url) = line.split("DevTools listening on ").nth(1) {
                            return url.trim().to_string();
                        }
                        seen.push_str(&line);
                        seen.push('\n');
                    }
                    _ => panic!("chromium exited before listening:\n{seen}"),
                }
            }
        })
        .await
        .expect("chromium did not announce its DevTools endpoint");
        // Keep draining stderr so Chromium never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let authority = endpoint
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .expect("ws:// DevTools URL")
            .to_string();
        let stream = TcpStream::connect(&authority)
            .await
            .expect("connect to DevTools");
        let (ws, _) = tokio_tungstenite::client_async(endpoint.as_str(), stream)
            .await
            .expect("DevTools WebSocket handshake");
        let mut b = Browser {
            child,
            ws,
            session: String::new(),
            next_id: 1,
            _profile: profile,
        };
        let target = b
            .command("Target.createTarget", json!({"url": "about:blank"}), false)
            .await;
        let target_id = target["targetId"].as_str().expect("targetId").to_string();
        let attached = b
            .command(
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
                false,
            )
            .await;
        b.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        b
    }

    /// One DevTools command; its result. Events read meanwhile are dropped (nothing here
    /// depends on them). Panics on a protocol error.
    async fn command(&mut self, method: &str, params: Value, on_page: bool) -> Value {
        match self.try_command(method, params, on_page).await {
            Ok(v) => v,
            Err(e) => panic!("{method}: {e}"),
        }
    }

    async fn try_command(
        &mut self,
        method: &str,
        params: Value,
        on_page: bool,
    ) -> Result<Value, Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if on_page {
            msg["sessionId"] = json!(self.session);
        }
        self.ws
            .send(Message::Text(msg.to_string()))
            .await
            .expect("send to DevTools");
        let reply = tokio::time::timeout(BROWSER_WAIT, async {
            loop {
                let m = self
                    .ws
                    .next()
                    .await
                    .expect("DevTools closed")
                    .expect("DevTools read");
                let Message::Text(text) = m else { continue };
                let v: Value = serde_json::from_str(&text).expect("DevTools JSON");
                if v.get("id").and_then(Value::as_u64) == Some(id) {
                    return v;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no answer to {method}"));
        match reply.get("error") {
            Some(e) => Err(e.clone()),
            None => Ok(reply["result"].clone()),
        }
    }

    /// Evaluates a JavaScript expression in the page; its value (JSON), or None if the page
    /// was between documents or the expression threw.
    pub async fn try_eval(&mut self, expression: &str) -> Option<Value> {
        let r = self
            .try_command(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
                true,
            )
            .await
            .ok()?;
        if r.get("exceptionDetails").is_some() {
            return None;
        }
        Some(r["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// Evaluates a JavaScript expression in the page; its value.
    pub async fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression)
            .await
            .unwrap_or_else(|| panic!("evaluating {expression} failed"))
    }

    /// The page's URL.
    pub async fn url(&mut self) -> String {
        self.eval("location.href")
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The HTTP status the current document was served with.
    pub async fn status(&mut self) -> u64 {
        self.eval("performance.getEntriesByType('navigation')[0].responseStatus")
            .await
            .as_u64()
            .expect("navigation status")
    }

    /// Waits until the page at exactly `url` has loaded.
    pub async fn wait_loaded(&mut self, url: &str) {
        let deadline = tokio::time::Instant::now() + BROWSER_WAIT;
        loop {
            if let Some(v) = self.try_eval("[location.href, document.readyState]").await {
                if v[0] == url && v[1] == "complete" {
                    return;
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                panic!("page {url} did not load (now at {})", self.url().await);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Loads `url` and waits until it has loaded.
    pub async fn goto(&mut self, url: &str) {
        let r = self
            .command("Page.navigate", json!({"url": url}), true)
            .await;
        assert!(r.get("errorText").is_none(), "navigating to {url}: {r}");
        self.wait_loaded(url).await;
    }

    /// Types `term` into the search box (replacing what it holds) and presses Enter, as a
    /// user does; waits until the page `expect_url` has loaded.
    pub async fn search(&mut self, term: &str, expect_url: &str) {
        let focused = self
            .eval(
                "(() => { const i = document.querySelector('form.search input[name=q]'); \
                 if (!i) return false; i.focus(); i.select(); return true; })()",
            )
            .await;
        assert_eq!(
            focused,
            json!(true),
            "no search box on {}",
            self.url().await
        );
        self.command("Input.insertText", json!({"text": term}), true)
            .await;
        for kind in ["keyDown", "keyUp"] {
            self.command(
                "Input.dispatchKeyEvent",
                json!({
                    "type": kind, "key": "Enter", "code": "Enter",
                    "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13,
                    "text": if kind == "keyDown" { "\r" } else { "" },
                }),
                true,
            )
            .await;
        }
        self.wait_loaded(expect_url).await;
    }

    /// Clicks the link `selector` names and waits until its target has loaded; returns the
    /// URL it led to.
    pub async fn follow(&mut self, selector: &str) -> String {
        let sel = serde_json::to_string(selector).unwrap();
        let href = self
            .eval(&format!(
                "(() => {{ const a = document.querySelector({sel}); return a ? a.href : null; }})()"
            ))
            .await;
        let Some(href) = href.as_str().map(str::to_string) else {
            panic!("no link {selector} on {}", self.url().await);
        };
        self.eval(&format!("document.querySelector({sel}).click(), true"))
            .await;
        self.wait_loaded(&href).await;
        href
    }

    /// The text of the first element `selector` matches.
    pub async fn text(&mut self, selector: &str) -> Option<String> {
        let sel = serde_json::to_string(selector).unwrap();
        self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); return e ? e.textContent : null; }})()"
        ))
        .await
        .as_str()
        .map(str::to_string)
    }

    /// An attribute of the first element `selector` matches.
    pub async fn attr(&mut self, selector: &str, name: &str) -> Option<String> {
        let sel = serde_json::to_string(selector).unwrap();
        let name = serde_json::to_string(name).unwrap();
        self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); return e ? e.getAttribute({name}) : null; }})()"
        ))
        .await
        .as_str()
        .map(str::to_string)
    }

    /// An attribute of every element `selector` matches, in document order.
    pub async fn attrs(&mut self, selector: &str, name: &str) -> Vec<String> {
        let sel = serde_json::to_string(selector).unwrap();
        let name = serde_json::to_string(name).unwrap();
        let v = self
            .eval(&format!(
                "Array.from(document.querySelectorAll({sel})).map(e => e.getAttribute({name}))"
            ))
            .await;
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|x| x.as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The text of every element `selector` matches, in document order.
    pub async fn texts(&mut self, selector: &str) -> Vec<String> {
        let sel = serde_json::to_string(selector).unwrap();
        let v = self
            .eval(&format!(
                "Array.from(document.querySelectorAll({sel})).map(e => e.textContent)"
            ))
            .await;
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|x| x.as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Closes the browser and waits for it to exit (killing it if it does not).
    pub async fn close(mut self) {
        // The browser may close the socket before answering: send, do not wait for a reply.
        let msg = json!({"id": self.next_id, "method": "Browser.close", "params": {}});
        let _ = self.ws.send(Message::Text(msg.to_string())).await;
        if tokio::time::timeout(BROWSER_WAIT, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
