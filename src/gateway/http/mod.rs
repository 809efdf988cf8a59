//! The HTTP side: metrics, health, status page and admin API on one listener.
//!
//! | route | what |
//! |---|---|
//! | `GET /metrics` | Prometheus text exposition ([`crate::metrics`]) |
//! | `GET /health` | 200 when at least one connected upstream is at the best tip and the gateway is not draining, else 503; JSON with the reason |
//! | `GET /status` | JSON: upstreams, tips, latencies, sessions, subscriptions, recent events |
//! | `GET /` | the status page (self-contained HTML that refreshes itself from `/status`) |
//! | `POST /admin` (also `POST /`) | the admin JSON-RPC 2.0 API ([`admin`]) |
//! | `GET /explorer`, `/explorer/...` | the block explorer ([`explorer`]) |
//!
//! One small hand-written router in front of jsonrpsee's tower service: the read-only routes
//! are four `match` arms, and jsonrpsee already brings hyper, so no web framework is needed.
//!
//! The admin API can change what the gateway does, so the listener is loopback-only unless
//! `[listen] admin_token` is set; with a token every admin call needs
//! `Authorization: Bearer <token>`. Without a token, admin calls must name a loopback host in
//! their `Host` header, so a web page cannot reach the API through DNS rebinding.

pub(crate) mod admin;
pub(crate) mod explorer;
pub(crate) mod status;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use jsonrpsee::server::{HttpBody, ServerConfig};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::layer::util::Identity;

use super::services::Core;

/// The status page: one file, inline CSS and JavaScript, no external assets.
pub const STATUS_PAGE: &str = include_str!("status.html");

/// HTTP connections served at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 256;

/// Time a client has to send a request's headers, counted from when the connection opens or
/// its previous answer went out: a keep-alive connection that sends nothing, or a client
/// that trickles its headers, is closed after it, so idle sockets cannot hold every slot and
/// lock out `/health` and `/metrics`.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection with no byte read or written over a whole period of this length (a request
/// body trickled, an answer not read) is closed; checked once a period, so it goes after one
/// to two periods.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest admin request body.
const MAX_ADMIN_BODY: u32 = 1 << 20;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type RpcService = jsonrpsee::server::TowerService<Identity, Identity>;
type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<HttpBody>, BoxError>> + Send>>;

/// Binds the HTTP listener and serves it until the gateway shuts down; returns the bound
/// address (the port may be 0 in `addr`). Refuses a non-loopback address unless
/// `[listen] admin_token` is set.
pub async fn serve_http(ctx: Arc<Core>, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let token = ctx.cfg.listen.admin_token.clone();
    if !addr.ip().is_loopback() && token.is_empty() {
        anyhow::bail!(
            "refusing to serve HTTP on {addr}: the admin API would be reachable from the network; \
             set [listen] admin_token or listen on a loopback address"
        );
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for HTTP on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let (stop, server_handle) = jsonrpsee::server::stop_channel();
    let config = ServerConfig::builder()
        .http_only()
        .max_request_body_size(MAX_ADMIN_BODY)
        .build();
    let rpc = jsonrpsee::server::Server::builder()
        .set_config(config)
        .to_service_builder()
        .build(admin::module(ctx.clone())?, stop.clone());
    let service = HttpService {
        ctx: ctx.clone(),
        rpc,
        token: (!token.is_empty()).then(|| Arc::from(token.as_str())),
    };
    tracing::info!(addr = %bound, "HTTP listening: /metrics /health /status / and POST /admin");
    tokio::spawn(async move {
        // Dropping the handle tells every connection to finish gracefully.
        let _server_handle = server_handle;
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = ctx.shutdown.cancelled() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::debug!("HTTP connection limit reached; closing a connection");
                continue;
            };
            let service = service.clone();
            let stopped = stop.clone().shutdown();
            tokio::spawn(async move {
                let _permit = permit;
                let served = serve_connection(stream, service, stopped).await;
                if let Err(e) = served {
                    tracing::debug!(error = %e, "HTTP connection ended");
                }
            });
        }
    });
    Ok(bound)
}

/// Serves one HTTP/1 connection until it closes, times out (headers not read within
/// [`HEADER_READ_TIMEOUT`], or no progress for [`STALL_TIMEOUT`]) or the gateway stops (then
/// gracefully: a request under way is answered).
async fn serve_connection(
    stream: tokio::net::TcpStream,
    service: HttpService,
    stopped: impl Future<Output = ()>,
) -> Result<(), BoxError> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let (io, progress) = Progress::wrap(stream);
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let service = hyper_util::service::TowerToHyperService::new(service);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(stopped, conn);
    let mut last = progress.load(std::sync::atomic::Ordering::Relaxed);
    let mut watchdog = tokio::time::interval(STALL_TIMEOUT);
    watchdog.tick().await;
    loop {
        tokio::select! {
            res = &mut conn => return res,
            _ = &mut stopped => {
                conn.as_mut().graceful_shutdown();
                return conn.await;
            }
            _ = watchdog.tick() => {
                let now = progress.load(std::sync::atomic::Ordering::Relaxed);
                if now == last {
                    return Err("HTTP connection stalled".into());
                }
                last = now;
            }
        }
    }
}

/// A stream that counts its reads and writes, for [`serve_connection`]'s watchdog.
struct Progress {
    inner: tokio::net::TcpStream,
    count: Arc<std::sync::atomic::AtomicU64>,
}

impl Progress {
    fn wrap(inner: tokio::net::TcpStream) -> (Progress, Arc<std::sync::atomic::AtomicU64>) {
        let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
        (
            Progress {
                inner,
                count: count.clone(),
            },
            count,
        )
    }

    fn tick<T>(&self, p: &Poll<std::io::Result<T>>) {
        if let Poll::Ready(Ok(_)) = p {
            self.count
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl tokio::io::AsyncRead for Progress {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let p = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.tick(&p);
        p
    }
}

impl tokio::io::AsyncWrite for Progress {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.tick(&p);
        p
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Routes one HTTP request.
#[derive(Clone)]
struct HttpService {
    ctx: Arc<Core>,
    rpc: RpcService,
    token: Option<Arc<str>>,
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<HttpBody> {
    let mut r = Response::new(HttpBody::from(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<HttpBody> {
    respond(status, "application/json", v.to_string())
}

fn error(status: StatusCode, msg: &str) -> Response<HttpBody> {
    json(status, &serde_json::json!({ "error": msg }))
}

/// Compares without an early exit, so timing does not reveal how much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// True when a `Host` header names this machine: a loopback IP or `localhost`, any port.
fn loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl HttpService {
    /// `None` when the admin call may go ahead, else the refusal.
    fn refuse_admin<B>(&self, req: &Request<B>) -> Option<Response<HttpBody>> {
        match &self.token {
            Some(token) => {
                let given = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim);
                match given {
                    Some(g) if same_secret(g.as_bytes(), token.as_bytes()) => None,
                    _ => {
                        let mut r = error(
                            StatusCode::UNAUTHORIZED,
                            "the admin API needs Authorization: Bearer <admin_token>",
                        );
                        r.headers_mut()
                            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                        Some(r)
                    }
                }
            }
            None => {
                let host = req
                    .headers()
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .or_else(|| req.uri().authority().map(|a| a.as_str()))
                    .unwrap_or("");
                (!loopback_host(host)).then(|| {
                    error(
                        StatusCode::FORBIDDEN,
                        "without an admin_token the admin API answers only requests for a loopback host",
                    )
                })
            }
        }
    }

    fn get(&self, path: &str) -> Response<HttpBody> {
        let ctx = &self.ctx;
        match path {
            "/metrics" => respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                ctx.metrics.render(&ctx.snapshot()),
            ),
            "/health" => {
                let (ok, body) = status::health(&ctx.snapshot(), ctx.is_draining());
                let code = if ok {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json(code, &body)
            }
            "/status" => json(
                StatusCode::OK,
                &status::status(&ctx.snapshot(), ctx.metrics.events(), ctx.is_draining()),
            ),
            "/" | "/index.html" => {
                let mut r = respond(
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    STATUS_PAGE.to_string(),
                );
                r.headers_mut().insert(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(
                        "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'",
                    ),
                );
                r
            }
            "/admin" => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "the admin API takes JSON-RPC 2.0 requests by POST",
            ),
            _ => error(StatusCode::NOT_FOUND, "no such page"),
        }
    }
}

impl<B> tower::Service<Request<B>> for HttpService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<HttpBody>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let ready = |r: Response<HttpBody>| -> ResponseFuture { Box::pin(async move { Ok(r) }) };
        let path = req.uri().path();
        match *req.method() {
            Method::POST if path == "/admin" || path == "/" => {
                if let Some(refusal) = self.refuse_admin(&req) {
                    return ready(refusal);
                }
                let mut rpc = self.rpc.clone();
                Box::pin(async move { rpc.call(req).await })
            }
            Method::GET | Method::HEAD if explorer::handles(path) => {
                let ctx = self.ctx.clone();
                let path = path.to_string();
                let query = req.uri().query().map(str::to_string);
                Box::pin(async move { Ok(explorer::serve(&ctx, &path, query.as_deref()).await) })
            }
            Method::GET | Method::HEAD => ready(self.get(path)),
            _ => {
                let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
                let allow = if path == "/admin" || path == "/" {
                    "GET, HEAD, POST"
                } else {
                    "GET, HEAD"
                };
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                ready(r)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "127.0.0.1:9190",
            "127.0.0.1",
            "localhost:9190",
            "LOCALHOST",
            "[::1]:9190",
            "[::1]",
        ] {
            assert!(loopback_host(h), "{h}");
        }
        for h in [
            "evil.example:9190",
            "10.0.0.1:9190",
            "",
            "[::2]:1",
            "localhost.evil",
        ] {
            assert!(!loopback_host(h), "{h}");
        }
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}
