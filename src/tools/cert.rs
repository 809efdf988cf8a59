//! What kind of TLS certificate a server presents: CA-signed, self-signed, or broken.
//!
//! Most public Electrum servers use self-signed certificates and wallets pin them on first
//! use, so "not CA-signed" is normal, not an error; but a server list is more useful when it
//! says which servers a client could check against the web PKI instead. The certificate is
//! fetched over a separate handshake that accepts anything ([`fetch_chain`]), then judged
//! offline ([`classify`]): first as a web PKI chain for the host name, then, failing that, by
//! whether the certificate issued itself.

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::{CertificateError, RootCertStore};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_rustls::TlsConnector;

use crate::client::tls::fingerprint;
use crate::client::{ClientConfig, ProxyConfig, TlsMode};
use crate::transport::ServerUrl;

/// The kind of certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    /// Chains to a web PKI (Mozilla) root and is valid for the host name now.
    CaSigned,
    /// Issued by itself (issuer equals subject): fine for pinning, not for CA checks.
    SelfSigned,
    /// Neither: an unknown issuer, expired, for another name, malformed.
    Broken,
}

impl CertKind {
    /// The name used in server lists and tables: `ca`, `self-signed`, `broken`.
    pub fn as_str(self) -> &'static str {
        match self {
            CertKind::CaSigned => "ca",
            CertKind::SelfSigned => "self-signed",
            CertKind::Broken => "broken",
        }
    }
}

impl fmt::Display for CertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict on a server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertReport {
    /// What kind it is.
    pub kind: CertKind,
    /// SHA-256 fingerprint of the leaf certificate (lower-case hex), as pin files hold it.
    pub sha256: String,
    /// Why it is not CA-signed (for self-signed and broken certificates).
    pub detail: Option<String>,
}

/// Classifies a presented chain (leaf first) for `host` against the webpki roots.
pub fn classify(chain: &[CertificateDer<'_>], host: &str) -> CertReport {
    let roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    classify_with_roots(chain, host, Arc::new(roots))
}

/// Classifies a presented chain (leaf first) for `host` against the given roots.
///
/// CA-signed: the chain verifies to a root and is valid for `host` now. Otherwise
/// self-signed if the leaf's issuer equals its subject (expiry and name do not matter for
/// pinning), else broken, with the reason the chain failed.
pub fn classify_with_roots(
    chain: &[CertificateDer<'_>],
    host: &str,
    roots: Arc<RootCertStore>,
) -> CertReport {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return CertReport {
            kind: CertKind::Broken,
            sha256: String::new(),
            detail: Some("no certificate presented".into()),
        };
    };
    let sha256 = fingerprint(leaf.as_ref());
    let why_not_ca = match ca_check(leaf, intermediates, host, roots) {
        Ok(()) => {
            return CertReport {
                kind: CertKind::CaSigned,
                sha256,
                detail: None,
            }
        }
        Err(why) => why,
    };
    let kind = match issuer_and_subject(leaf.as_ref()) {
        Some((issuer, subject)) if issuer == subject => CertKind::SelfSigned,
        Some(_) => CertKind::Broken,
        None => {
            return CertReport {
                kind: CertKind::Broken,
                sha256,
                detail: Some("malformed certificate".into()),
            }
        }
    };
    CertReport {
        kind,
        sha256,
        detail: Some(why_not_ca),
    }
}

/// Verifies the chain against `roots` for `host`, as a CA-checking client would.
fn ca_check(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    host: &str,
    roots: Arc<RootCertStore>,
) -> Result<(), String> {
    let name = crate::client::tls::server_name(host).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|e| format!("no usable root certificates: {e}"))?;
    verifier
        .verify_server_cert(leaf, intermediates, &name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| describe(&e, host))
}

fn describe(e: &rustls::Error, host: &str) -> String {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "unknown issuer".into(),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired".into(),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not valid yet".into()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("not valid for {host}")
            }
            CertificateError::BadEncoding => "malformed certificate".into(),
            CertificateError::BadSignature => "bad signature".into(),
            CertificateError::Revoked => "revoked".into(),
            other => format!("{other:?}"),
        },
        other => other.to_string(),
    }
}

/// One DER element, as [`der_element`] reads it.
struct Der<'a> {
    tag: u8,
    /// The element with its tag and length.
    whole: &'a [u8],
    /// Its content.
    content: &'a [u8],
    /// The input after it.
    rest: &'a [u8],
}

/// Reads one DER element from the start of `input`.
fn der_element(input: &[u8]) -> Option<Der<'_>> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let header = input.len() - rest.len();
    Some(Der {
        tag,
        whole: &input[..header + len],
        content: &rest[..len],
        rest: &rest[len..],
    })
}

/// The issuer and subject names of a DER certificate, as raw DER, if it parses that far.
fn issuer_and_subject(cert: &[u8]) -> Option<(&[u8], &[u8])> {
    const SEQUENCE: u8 = 0x30;
    let sequence = |input| der_element(input).filter(|e| e.tag == SEQUENCE);
    let cert = sequence(cert)?;
    let tbs = sequence(cert.content)?;
    let mut rest = tbs.content;
    // [0] EXPLICIT version, absent in v1 certificates.
    if rest.first() == Some(&0xa0) {
        rest = der_element(rest)?.rest;
    }
    let serial = der_element(rest)?;
    let signature_algorithm = der_element(serial.rest)?;
    let issuer = sequence(signature_algorithm.rest)?;
    let validity = der_element(issuer.rest)?;
    let subject = sequence(validity.rest)?;
    Some((issuer.whole, subject.whole))
}

/// Why [`fetch_chain`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// No TCP connection (directly or through the proxy).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The TLS handshake failed even without certificate checks.
    #[error("TLS handshake failed: {0}")]
    Tls(String),
}

/// Connects to `url` (directly, or through `proxy`; `.onion` hosts use Tor's default port
/// without one), completes a TLS handshake without checking the certificate, and returns the
/// chain the server presented, leaf first.
pub async fn fetch_chain(
    url: &ServerUrl,
    proxy: Option<&ProxyConfig>,
    timeout: Duration,
) -> Result<Vec<CertificateDer<'static>>, FetchError> {
    match tokio::time::timeout(timeout, fetch_inner(url, proxy)).await {
        Ok(r) => r,
        Err(_) => Err(FetchError::Connect(format!(
            "timed out after {:.1} s",
            timeout.as_secs_f64()
        ))),
    }
}

async fn fetch_inner(
    url: &ServerUrl,
    proxy: Option<&ProxyConfig>,
) -> Result<Vec<CertificateDer<'static>>, FetchError> {
    // The client's own dialing (direct, or SOCKS5 with remote DNS; `.onion` through Tor) and
    // its unverified TLS mode: the certificate is only looked at here, not trusted, but the
    // handshake signatures are checked, so the server holds the key of what it shows.
    let mut cfg = ClientConfig::new(url.clone());
    cfg.proxy = proxy.cloned();
    let tcp = crate::client::connect::open_stream(&cfg)
        .await
        .map_err(|e| FetchError::Connect(e.to_string()))?;
    let (config, _) = crate::client::tls::client_config(&TlsMode::Insecure, &url.authority())
        .map_err(|e| FetchError::Tls(e.to_string()))?;
    let name =
        crate::client::tls::server_name(&url.host).map_err(|e| FetchError::Tls(e.to_string()))?;
    let mut tls = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| FetchError::Tls(e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let _ = tls.shutdown().await;
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    fn ca() -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Test Root CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        (params.self_signed(&key).unwrap(), key)
    }

    fn leaf_signed_by(
        names: &[&str],
        ca: &(rcgen::Certificate, KeyPair),
        expired: bool,
    ) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2001, 1, 1);
            params.not_after = rcgen::date_time_ymd(2002, 1, 1);
        }
        params.signed_by(&key, &ca.0, &ca.1).unwrap().der().clone()
    }

    fn roots_of(ca: &(rcgen::Certificate, KeyPair)) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.0.der().clone()).unwrap();
        Arc::new(roots)
    }

    #[test]
    fn self_signed_certificates_are_recognized() {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let der = ck.cert.der().clone();
        let r = classify(std::slice::from_ref(&der), "localhost");
        assert_eq!(r.kind, CertKind::SelfSigned);
        assert_eq!(r.sha256, fingerprint(der.as_ref()));
        assert_eq!(r.detail.as_deref(), Some("unknown issuer"));
        // The name does not matter for a self-signed certificate.
        let r = classify(&[der], "127.0.0.2");
        assert_eq!(r.kind, CertKind::SelfSigned);
        // Nor do CA flags (common in certificates made with openssl req -x509).
        let (ca_cert, _) = ca();
        assert_eq!(
            classify(&[ca_cert.der().clone()], "localhost").kind,
            CertKind::SelfSigned
        );
    }

    #[test]
    fn ca_signed_certificates_verify_against_the_roots() {
        let ca = ca();
        let leaf = leaf_signed_by(&["electrum.example.org"], &ca, false);
        let chain = [leaf.clone()];
        let r = classify_with_roots(&chain, "electrum.example.org", roots_of(&ca));
        assert_eq!(
            r,
            CertReport {
                kind: CertKind::CaSigned,
                sha256: fingerprint(leaf.as_ref()),
                detail: None
            }
        );
        // The same chain without its root is signed by a stranger: broken.
        let r = classify(&chain, "electrum.example.org");
        assert_eq!(r.kind, CertKind::Broken);
        assert_eq!(r.detail.as_deref(), Some("unknown issuer"));
        // For another name, or expired: broken, with the reason.
        let r = classify_with_roots(&chain, "other.example.org", roots_of(&ca));
        assert_eq!(r.kind, CertKind::Broken);
        assert_eq!(r.detail.as_deref(), Some("not valid for other.example.org"));
        let old = leaf_signed_by(&["electrum.example.org"], &ca, true);
        let r = classify_with_roots(&[old], "electrum.example.org", roots_of(&ca));
        assert_eq!(
            (r.kind, r.detail.as_deref()),
            (CertKind::Broken, Some("expired"))
        );
    }

    #[test]
    fn names_are_read_from_v3_certificates() {
        let ca = ca();
        let leaf = leaf_signed_by(&["electrum.example.org"], &ca, false);
        let (ca_issuer, ca_subject) = issuer_and_subject(ca.0.der()).unwrap();
        assert_eq!(ca_issuer, ca_subject);
        let (issuer, subject) = issuer_and_subject(leaf.as_ref()).unwrap();
        assert_eq!(issuer, ca_subject);
        assert_ne!(subject, ca_subject);
        // Each name is a whole DER SEQUENCE.
        assert_eq!(issuer[0], 0x30);
        assert_eq!(der_element(issuer).unwrap().whole, issuer);
        // Cut short anywhere, a certificate does not parse (and does not panic).
        let der = leaf.as_ref();
        for len in [0, 1, 4, 10, der.len() / 2] {
            assert!(issuer_and_subject(&der[..len]).is_none(), "{len}");
        }
    }

    #[test]
    fn garbage_is_broken_not_a_panic() {
        for bytes in [
            vec![],
            vec![0x30],
            vec![0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            vec![1; 64],
        ] {
            let r = classify(&[CertificateDer::from(bytes.clone())], "h");
            assert_eq!(r.kind, CertKind::Broken, "{bytes:?}");
        }
        assert_eq!(classify(&[], "h").kind, CertKind::Broken);
    }

    #[tokio::test]
    async fn fetches_the_certificate_a_server_presents() {
        let id = crate::listen::TlsIdentity::generate_localhost().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(id.server_config().unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            // The client closes right after the handshake; that is all this server sees.
            let _ = acceptor.accept(tcp).await;
        });
        let url = ServerUrl::new(crate::transport::Scheme::Ssl, "127.0.0.1", port);
        let chain = fetch_chain(&url, None, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(chain.len(), 1);
        assert_eq!(chain[0].as_ref(), id.cert_der());
        assert_eq!(classify(&chain, "127.0.0.1").kind, CertKind::SelfSigned);
        server.await.unwrap();

        // A plain TCP listener cannot complete a handshake; a closed port cannot connect.
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = plain.local_addr().unwrap().port();
        let url = ServerUrl::new(crate::transport::Scheme::Ssl, "127.0.0.1", port);
        let talker = tokio::spawn(async move {
            let (mut tcp, _) = plain.accept().await.unwrap();
            let _ = tcp.write_all(b"{\"not\": \"tls\"}\n").await;
        });
        assert!(matches!(
            fetch_chain(&url, None, Duration::from_secs(20)).await,
            Err(FetchError::Tls(_))
        ));
        talker.await.unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let url = ServerUrl::new(crate::transport::Scheme::Ssl, "127.0.0.1", port);
        assert!(matches!(
            fetch_chain(&url, None, Duration::from_secs(20)).await,
            Err(FetchError::Connect(_))
        ));
    }
}
