//! HTTPS settings (`[server.tls]`): plain data; the `frontend` crate loads and serves them.

use std::path::PathBuf;
use std::time::Duration;

/// Default for [`TlsSettings::handshake_timeout`]: 10 s.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the server's certificate comes from, and how long a client has to finish the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM file with the certificate chain: the server's certificate first, then intermediates.
    pub cert: PathBuf,
    /// PEM file with the private key of the first certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Time a client has to complete the TLS handshake after connecting; default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
}
