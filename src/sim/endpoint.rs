//! One listening endpoint: its listener task, its open connections, its faults and counters.
//!
//! Stopping an endpoint closes its listening socket and every connection, as a killed server
//! would; starting it again binds the same address. `flap` is a task that does both in turn.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::faults::Faults;
use super::view::{Sh, View};
use super::{lock, session, Inner};
use crate::listen::{ListenOptions, Listener};
use crate::transport::ServerUrl;

/// The largest request line accepted, as ElectrumX: longer lines close the connection.
pub const MAX_REQUEST_SIZE: usize = 1_000_000;

struct Conn {
    task: JoinHandle<()>,
    subs: Arc<Mutex<BTreeSet<Sh>>>,
}

/// Key of a cached view: (chain generation, lag, fork).
type ViewKey = (u64, u32, u32);

pub(crate) struct Endpoint {
    /// The bound URL (the configured one until first bound).
    url: Mutex<ServerUrl>,
    faults: Mutex<Faults>,
    /// Woken when faults change, so a flap task notices at once.
    faults_changed: Notify,
    listener: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    conns: Mutex<HashMap<u64, Conn>>,
    requests: AtomicU64,
    /// Requests answered, by method.
    by_method: Mutex<HashMap<String, u64>>,
    /// Every scripthash any connection asked about (subscribed to or read), ever.
    asked: Mutex<BTreeSet<Sh>>,
    /// The same, per connection (closed ones included).
    asked_by_conn: Mutex<HashMap<u64, BTreeSet<Sh>>>,
    view_cache: Mutex<Option<(ViewKey, Arc<View>)>>,
}

impl Endpoint {
    pub fn new(url: ServerUrl, faults: Faults) -> Endpoint {
        Endpoint {
            url: Mutex::new(url),
            faults: Mutex::new(faults),
            faults_changed: Notify::new(),
            listener: tokio::sync::Mutex::new(None),
            conns: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
            by_method: Mutex::new(HashMap::new()),
            asked: Mutex::new(BTreeSet::new()),
            asked_by_conn: Mutex::new(HashMap::new()),
            view_cache: Mutex::new(None),
        }
    }

    pub fn url(&self) -> ServerUrl {
        lock(&self.url).clone()
    }

    pub fn faults(&self) -> Faults {
        lock(&self.faults).clone()
    }

    /// Replaces the faults; returns the old ones.
    pub fn set_faults(&self, faults: Faults) -> Faults {
        let old = std::mem::replace(&mut *lock(&self.faults), faults);
        self.faults_changed.notify_waiters();
        old
    }

    pub fn count_answers(&self, n: u64) {
        self.requests.fetch_add(n, Ordering::Relaxed);
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Counts a request for `method`.
    pub fn count_method(&self, method: &str) {
        *lock(&self.by_method).entry(method.to_string()).or_insert(0) += 1;
    }

    /// Requests for `method` answered so far.
    pub fn requests_of(&self, method: &str) -> u64 {
        lock(&self.by_method).get(method).copied().unwrap_or(0)
    }

    pub fn connections(&self) -> usize {
        lock(&self.conns).len()
    }

    /// Sum over open connections of the scripthashes each has subscribed.
    pub fn subscriptions(&self) -> usize {
        lock(&self.conns)
            .values()
            .map(|c| lock(&c.subs).len())
            .sum()
    }

    /// Distinct scripthashes subscribed by any open connection.
    pub fn subscribed(&self) -> BTreeSet<Sh> {
        let conns = lock(&self.conns);
        let mut all = BTreeSet::new();
        for c in conns.values() {
            all.extend(lock(&c.subs).iter().copied());
        }
        all
    }

    /// Records a scripthash connection `conn` asked about.
    pub fn record_asked(&self, conn: u64, sh: Sh) {
        lock(&self.asked).insert(sh);
        lock(&self.asked_by_conn)
            .entry(conn)
            .or_default()
            .insert(sh);
    }

    /// What each connection (closed ones included) asked about.
    pub fn asked_by_connection(&self) -> Vec<BTreeSet<Sh>> {
        lock(&self.asked_by_conn).values().cloned().collect()
    }

    /// Every scripthash any connection asked about since the endpoint started.
    pub fn asked(&self) -> BTreeSet<Sh> {
        lock(&self.asked).clone()
    }

    /// Called by a session as it ends.
    pub fn forget(&self, id: u64) {
        lock(&self.conns).remove(&id);
    }

    /// The cached view for `key`, or a newly built one.
    pub fn cached_view(&self, key: ViewKey, build: impl FnOnce() -> View) -> Arc<View> {
        let mut cache = lock(&self.view_cache);
        if let Some((k, v)) = &*cache {
            if *k == key {
                return v.clone();
            }
        }
        let v = Arc::new(build());
        *cache = Some((key, v.clone()));
        v
    }

    pub async fn is_listening(&self) -> bool {
        self.listener
            .lock()
            .await
            .as_ref()
            .is_some_and(|h| !h.is_finished())
    }
}

/// Binds the endpoint (its configured address the first time, then the same bound address)
/// and starts accepting. Does nothing when already listening.
pub(crate) async fn start(inner: &Arc<Inner>, ep: usize) -> anyhow::Result<()> {
    let e = &inner.endpoints[ep];
    let mut guard = e.listener.lock().await;
    if guard.as_ref().is_some_and(|h| !h.is_finished()) {
        return Ok(());
    }
    if inner.is_closed() {
        anyhow::bail!("the simulator is shut down");
    }
    let url = e.url();
    let options = ListenOptions {
        max_message: MAX_REQUEST_SIZE,
        tls: inner.tls_config.clone(),
        ..ListenOptions::default()
    };
    // A port freed a moment ago may take a little while to be reusable.
    let deadline = Instant::now() + Duration::from_secs(5);
    let listener = loop {
        match Listener::bind(&url, options.clone()).await {
            Ok(l) => break l,
            Err(err)
                if err.kind() == std::io::ErrorKind::AddrInUse
                    && url.port != 0
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => return Err(anyhow::anyhow!("binding {url}: {err}")),
        }
    };
    *lock(&e.url) = listener.url().clone();
    tracing::info!(endpoint = ep, url = %listener.url(), "sim endpoint listening");
    *guard = Some(tokio::spawn(accept_loop(inner.clone(), ep, listener)));
    Ok(())
}

/// Closes the listener and every connection of the endpoint, and waits until they are gone.
pub(crate) async fn stop(inner: &Arc<Inner>, ep: usize) {
    let e = &inner.endpoints[ep];
    let mut guard = e.listener.lock().await;
    if let Some(h) = guard.take() {
        h.abort();
        let _ = h.await;
    }
    let conns: Vec<Conn> = lock(&e.conns).drain().map(|(_, c)| c).collect();
    for c in &conns {
        c.task.abort();
    }
    for c in conns {
        let _ = c.task.await;
    }
}

async fn accept_loop(inner: Arc<Inner>, ep: usize, mut listener: Listener) {
    loop {
        let (framed, peer) = listener.accept().await;
        tracing::debug!(endpoint = ep, %peer, "sim connection");
        let id = inner.next_conn_id();
        let subs: Arc<Mutex<BTreeSet<Sh>>> = Arc::default();
        let e = &inner.endpoints[ep];
        // Insert under the lock held across the spawn, so a session that ends at once
        // cannot remove itself before it is registered.
        let mut conns = lock(&e.conns);
        let task = tokio::spawn(session::run(inner.clone(), ep, id, framed, subs.clone()));
        conns.insert(id, Conn { task, subs });
    }
}

/// Starts a flap task when the endpoint's faults ask for one.
pub(crate) fn spawn_flap(inner: &Arc<Inner>, ep: usize) {
    if let Some(secs) = inner.endpoints[ep].faults().flap_secs {
        tokio::spawn(flap(inner.clone(), ep, secs));
    }
}

/// Alternates `secs` up and `secs` down until the `flap` fault changes; leaves the endpoint
/// up when it ends (unless the simulator is shutting down).
async fn flap(inner: Arc<Inner>, ep: usize, secs: u64) {
    loop {
        if !wait_unless_changed(&inner, ep, secs).await {
            return;
        }
        stop(&inner, ep).await;
        let keep_going = wait_unless_changed(&inner, ep, secs).await;
        if inner.is_closed() {
            return;
        }
        if let Err(e) = start(&inner, ep).await {
            tracing::warn!(endpoint = ep, error = %e, "flap: restarting endpoint failed");
        }
        if !keep_going {
            return;
        }
    }
}

/// Sleeps `secs` seconds; returns false early if the flap setting changed meanwhile.
async fn wait_unless_changed(inner: &Inner, ep: usize, secs: u64) -> bool {
    let e = &inner.endpoints[ep];
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let notified = e.faults_changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if e.faults().flap_secs != Some(secs) || inner.is_closed() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                return e.faults().flap_secs == Some(secs) && !inner.is_closed();
            }
            _ = &mut notified => {}
        }
    }
}
