//! TLS to Electrum servers: certificate checking in three modes, and the pin file.
//!
//! Most public Electrum servers use self-signed certificates, so CA verification alone would
//! shut out most of the network. The Electrum wallet's answer, kept here, is *trust on first
//! use*: the first certificate seen for a `host:port` is pinned (its SHA-256 fingerprint is
//! written to a pin file), and a different certificate later is refused. Servers with a
//! CA-issued certificate can be verified against the webpki roots instead, and verification can
//! be switched off entirely only when asked for explicitly.
//!
//! Pinned and insecure modes skip chain and name validation but still check the handshake
//! signatures, so the peer must hold the private key of the certificate it presents.

use bitcoin::hashes::{sha256, Hash};
use bitcoin::hex::DisplayHex;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{ClientError, TlsMode};

/// The lowercase hex SHA-256 fingerprint of a DER-encoded certificate.
pub fn fingerprint(cert_der: &[u8]) -> String {
    sha256::Hash::hash(cert_der)
        .to_byte_array()
        .to_lower_hex_string()
}

/// Normalizes a fingerprint as users write it (`AB:CD:...`, upper case, spaces) to plain
/// lowercase hex.
fn normalize(fp: &str) -> String {
    fp.chars()
        .filter(|c| !matches!(c, ':' | ' ' | '\t'))
        .flat_map(char::to_lowercase)
        .collect()
}

/// Serializes read-modify-write cycles on pin files within this process, so that several
/// clients sharing one pin file do not lose each other's pins.
static PIN_FILE_LOCK: Mutex<()> = Mutex::new(());

/// A pin file: a JSON object mapping `host:port` to a certificate's SHA-256 fingerprint (hex).
///
/// ```json
/// { "electrum.example.org:50002": "3f1c...e9" }
/// ```
///
/// A missing file is an empty store; it is created on the first pin.
#[derive(Debug, Clone)]
pub struct PinStore {
    path: PathBuf,
}

impl PinStore {
    /// A store backed by the file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        PinStore { path: path.into() }
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn load(&self) -> Result<BTreeMap<String, String>, ClientError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => {
                return Err(ClientError::Tls(format!(
                    "cannot read pin file {}: {e}",
                    self.path.display()
                )))
            }
        };
        // An empty file is a truncated one (it is only ever written whole, with at least
        // `{}`): taking it as "no pins" would trust whatever certificate comes next.
        if text.trim().is_empty() {
            return Err(ClientError::Tls(format!(
                "pin file {} is empty (truncated?); remove it to pin certificates anew",
                self.path.display()
            )));
        }
        serde_json::from_str(&text).map_err(|e| {
            ClientError::Tls(format!(
                "pin file {} is not a JSON object of host:port to fingerprint: {e}",
                self.path.display()
            ))
        })
    }

    /// The pinned fingerprint for `server` (`host:port`), normalized to lowercase hex.
    pub fn get(&self, server: &str) -> Result<Option<String>, ClientError> {
        let _guard = PIN_FILE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        Ok(self.load()?.get(server).map(|fp| normalize(fp)))
    }

    /// Pins `fingerprint` for `server`, replacing any earlier pin. The file is rewritten
    /// atomically and durably (written aside and synced, then renamed).
    pub fn set(&self, server: &str, fingerprint: &str) -> Result<(), ClientError> {
        let _guard = PIN_FILE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let mut pins = self.load()?;
        pins.insert(server.to_string(), normalize(fingerprint));
        let err = |e: io::Error| {
            ClientError::Tls(format!(
                "cannot write pin file {}: {e}",
                self.path.display()
            ))
        };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let text = serde_json::to_string_pretty(&pins)
            .map_err(|e| ClientError::Tls(format!("cannot serialize pins: {e}")))?;
        crate::files::write_atomic(&self.path, (text + "\n").as_bytes()).map_err(err)
    }
}

/// The certificate presented did not match the pin; carried inside the rustls error so the
/// handshake failure can be reported as [`ClientError::PinMismatch`].
#[derive(Debug)]
struct PinMismatch {
    expected: String,
    got: String,
}

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "certificate fingerprint {} does not match the pinned {}",
            self.got, self.expected
        )
    }
}

impl std::error::Error for PinMismatch {}

/// Accepts any certificate chain (or only the pinned one), but checks handshake signatures.
#[derive(Debug)]
struct LenientVerifier {
    /// The pinned fingerprint; `None` accepts any certificate.
    expected: Option<String>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for LenientVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(expected) = &self.expected {
            let got = fingerprint(end_entity.as_ref());
            if &got != expected {
                return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(PinMismatch {
                        expected: expected.clone(),
                        got,
                    })),
                )));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What to do after a successful handshake.
#[derive(Debug)]
pub(crate) enum AfterHandshake {
    /// Nothing (verified, insecure, or already pinned).
    Nothing,
    /// Pin the presented certificate for `server` in `store` (first use).
    Pin { store: PinStore, server: String },
}

/// Builds the rustls client configuration for `mode` and the server `server` (`host:port`).
pub(crate) fn client_config(
    mode: &TlsMode,
    server: &str,
) -> Result<(Arc<rustls::ClientConfig>, AfterHandshake), ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(format!("TLS setup: {e}")))?;
    let (config, after) = match mode {
        TlsMode::Verified => {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            (
                builder.with_root_certificates(roots).with_no_client_auth(),
                AfterHandshake::Nothing,
            )
        }
        TlsMode::Pinned { pin_file } => {
            let store = PinStore::new(pin_file.clone());
            let expected = store.get(server)?;
            let after = match expected {
                Some(_) => AfterHandshake::Nothing,
                None => AfterHandshake::Pin {
                    store,
                    server: server.to_string(),
                },
            };
            let verifier = LenientVerifier {
                expected,
                algorithms,
            };
            (
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier))
                    .with_no_client_auth(),
                after,
            )
        }
        TlsMode::Insecure => {
            let verifier = LenientVerifier {
                expected: None,
                algorithms,
            };
            (
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier))
                    .with_no_client_auth(),
                AfterHandshake::Nothing,
            )
        }
    };
    Ok((Arc::new(config), after))
}

/// The name to send as SNI and to verify: the host name, or an IP address.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, ClientError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_string())
        .map_err(|e| ClientError::Tls(format!("invalid TLS server name {host:?}: {e}")))
}

/// Turns a failed handshake into a client error, recognizing a pin mismatch.
pub(crate) fn handshake_error(e: io::Error, server: &str) -> ClientError {
    if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        if let Some(pm) = other.0.downcast_ref::<PinMismatch>() {
            return ClientError::PinMismatch {
                server: server.to_string(),
                expected: pm.expected.clone(),
                got: pm.got.clone(),
            };
        }
    }
    ClientError::Tls(format!("TLS handshake with {server} failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_sha256_hex() {
        // SHA-256 of the empty input.
        assert_eq!(
            fingerprint(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn pin_store_round_trip_and_normalization() {
        let dir = tempfile::tempdir().unwrap();
        let store = PinStore::new(dir.path().join("sub/pins.json"));
        assert_eq!(store.get("h:1").unwrap(), None);
        store.set("h:1", "AB:CD:EF").unwrap();
        store.set("h:2", "0123").unwrap();
        assert_eq!(store.get("h:1").unwrap().as_deref(), Some("abcdef"));
        assert_eq!(store.get("h:2").unwrap().as_deref(), Some("0123"));
        // A second store on the same file sees both pins.
        let again = PinStore::new(store.path());
        assert_eq!(again.get("h:1").unwrap().as_deref(), Some("abcdef"));
    }

    #[test]
    fn corrupt_pin_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.json");
        // Not JSON, truncated JSON, and empty (a truncated write): never "no pins", which
        // would trust whatever certificate comes next.
        for text in ["not json", "{\"h:1\": \"ab", "", "  \n"] {
            std::fs::write(&path, text).unwrap();
            match PinStore::new(&path).get("h:1") {
                Err(ClientError::Tls(m)) => assert!(m.contains("pin file"), "{m}"),
                other => panic!("{text:?}: {other:?}"),
            }
            assert!(PinStore::new(&path).set("h:2", "0123").is_err(), "{text:?}");
        }
        // A missing file is an empty store.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(PinStore::new(&path).get("h:1").unwrap(), None);
    }

    #[test]
    fn server_names() {
        assert!(matches!(
            server_name("127.0.0.1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("::1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("electrum.example.org").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(server_name("bad name!").is_err());
    }
}
