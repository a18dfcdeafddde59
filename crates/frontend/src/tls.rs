//! HTTPS: the server's certificate (PEM files, reloadable, or self-signed), its rustls config and a
//! bounded TLS handshake.
//!
//! The accept loop builds one [`tokio_rustls::TlsAcceptor`] from [`server_config`] and runs
//! [`handshake`] per connection before handing the stream to hyper. The certificate lives in a
//! [`CertStore`] that rustls asks on every handshake, so [`CertStore::reload`] (on SIGHUP) changes
//! what new connections see without touching open ones.
//!
//! Only rustls's `ring` provider is used: TLS 1.3 and 1.2 with rustls's safe cipher suites; TLS 1.1
//! and older, and plain HTTP sent to the TLS port, fail the handshake.

mod store;

pub use store::CertStore;

use rustls::crypto::ring as provider;
use rustls::ServerConfig;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The protocols offered by ALPN, in the server's order of preference.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

pub use config::tls::{TlsSettings, DEFAULT_HANDSHAKE_TIMEOUT};

/// Read the certificate and key files of `settings` into a reloadable [`CertStore`].
pub fn load(settings: &TlsSettings) -> Result<Arc<CertStore>, TlsError> {
    CertStore::from_pem_files(&settings.cert, &settings.key)
}

/// A TLS problem: a certificate or key file that cannot be used (the error names the file), or a
/// failed handshake.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is not well-formed PEM.
    #[error("{}: not valid PEM: {problem}", file.display())]
    Pem {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The certificate file holds no `CERTIFICATE` block.
    #[error("{}: no certificate found (expected a PEM `BEGIN CERTIFICATE` block)", file.display())]
    NoCertificate {
        /// The file.
        file: PathBuf,
    },
    /// The first certificate in the file is not a valid X.509 certificate.
    #[error("{}: the first certificate is not valid: {problem}", file.display())]
    BadCertificate {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The key file holds no private key block.
    #[error(
        "{}: no private key found (expected a PEM `BEGIN PRIVATE KEY`, `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY` block)",
        file.display()
    )]
    NoKey {
        /// The file.
        file: PathBuf,
    },
    /// The private key is of a kind rustls cannot sign with (RSA, ECDSA P-256/P-384 and Ed25519 work).
    #[error("{}: unusable private key: {problem}", file.display())]
    BadKey {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The private key does not belong to the first certificate.
    #[error(
        "{}: the private key does not match the first certificate in {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A self-signed certificate could not be made.
    #[error("cannot make a self-signed certificate: {problem}")]
    SelfSigned {
        /// What went wrong.
        problem: String,
    },
    /// The TLS handshake failed: a protocol error (plain HTTP, an old TLS version, no shared
    /// cipher suite) or the connection broke.
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] io::Error),
    /// The client did not complete the handshake in time.
    #[error("TLS handshake not completed within {} ms", .0.as_millis())]
    HandshakeTimeout(Duration),
}

/// The rustls server config: TLS 1.3 and 1.2 with rustls's safe defaults (ring provider), ALPN
/// `h2` then `http/1.1`, no client certificates, the certificate asked from `store` per handshake.
pub fn server_config(store: Arc<CertStore>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        // The ring provider supports both default versions, so this cannot fail; should a future
        // rustls disagree, fall back to its own defaults rather than panic.
        .unwrap_or_else(|_| ServerConfig::builder())
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    // The server's cipher suite order (the provider's: AEADs with forward secrecy, strongest
    // first) wins over the client's.
    config.ignore_client_order = true;
    Arc::new(config)
}

/// Run the server side of the TLS handshake on `stream`, giving up after `timeout`: a client that
/// stalls mid-handshake costs at most that long. Fails at once on a protocol error, such as plain
/// HTTP or TLS 1.1 sent to the TLS port.
pub async fn handshake<S>(
    acceptor: &TlsAcceptor,
    stream: S,
    timeout: Duration,
) -> Result<TlsStream<S>, TlsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err(TlsError::Handshake(e)),
        Err(_elapsed) => Err(TlsError::HandshakeTimeout(timeout)),
    }
}

#[cfg(test)]
mod tests;
