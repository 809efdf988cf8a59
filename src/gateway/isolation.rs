//! `[privacy] mode = "isolated"`: each wallet connection talks to the upstreams over
//! connections of its own, so that no upstream connection carries two wallets' scripthashes
//! and an upstream cannot link two wallets by the connection they arrive on.
//!
//! A wallet connection's [`Links`] open one upstream connection per upstream it needs, when
//! it first needs it, and close them all when the wallet leaves. Through a SOCKS5 proxy (Tor),
//! each wallet connection's upstream connections authenticate with a user name of their own,
//! which Tor takes as a request for a separate circuit (stream isolation, `IsolateSOCKSAuth`,
//! on by default), so the exit or onion service cannot link them either.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::pool::Pool;
use super::upstream::Upstream;
use crate::client::{Client, ClientError, ConnectionState, ProxyConfig};
use crate::transport::ServerUrl;

/// One wallet connection's own upstream connections.
pub struct Links {
    pool: Arc<Pool>,
    /// The SOCKS5 user name of this wallet connection's circuits.
    circuit: String,
    /// Per upstream slot: the connection, once made, with the server it goes to.
    slots: Mutex<HashMap<usize, Slot>>,
}

/// One upstream's connection of a wallet connection, with the server it goes to; locked while
/// it is made.
type Slot = Arc<tokio::sync::Mutex<Option<(ServerUrl, Client)>>>;

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links").finish_non_exhaustive()
    }
}

impl Links {
    /// Links for one wallet connection.
    pub fn new(pool: Arc<Pool>) -> Links {
        Links {
            pool,
            circuit: format!("electrum-gateway-{:016x}", rand::random::<u64>()),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// This wallet connection's connection to `up`: the one it has, or a new one.
    pub async fn client(&self, up: &Upstream) -> Result<Client, ClientError> {
        let slot = {
            let mut slots = self
                .slots
                .lock()
                .map_err(|_| ClientError::Protocol("isolation table poisoned".into()))?;
            slots.entry(up.id).or_default().clone()
        };
        // Held while connecting: two reads to one upstream wait for one connection.
        let mut slot = slot.lock().await;
        let url = up.url();
        if let Some((at, client)) = slot.as_ref() {
            let usable = matches!(
                client.state(),
                ConnectionState::Connected | ConnectionState::Connecting
            );
            if *at == url && usable {
                return Ok(client.clone());
            }
        }
        let mut cfg = self.pool.client_config_for(url.clone());
        // Tor is asked for a circuit of this wallet connection's own.
        let proxy = cfg
            .proxy
            .take()
            .or_else(|| url.is_onion().then(ProxyConfig::tor));
        cfg.proxy = proxy.map(|p| ProxyConfig {
            username: Some(self.circuit.clone()),
            password: Some("isolated".into()),
            ..p
        });
        let client = Client::connect(cfg).await?;
        *slot = Some((url, client.clone()));
        Ok(client)
    }

    /// Closes every connection of this wallet connection.
    pub async fn close(&self) {
        let slots: Vec<_> = match self.slots.lock() {
            Ok(mut s) => s.drain().map(|(_, v)| v).collect(),
            Err(_) => return,
        };
        for slot in slots {
            if let Some((_, client)) = slot.lock().await.take() {
                client.close().await;
            }
        }
    }
}
