//! The server's current certificate and key, read per handshake and swapped whole on reload.

use super::TlsError;
use rustls::crypto::ring as provider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::InconsistentKeys;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

/// The certificate chain and key the server presents; rustls asks it on every handshake.
///
/// The pair sits behind a lock that is taken only to clone an `Arc` (never across an `await`), so a
/// [`reload`](CertStore::reload) is seen by the next handshake and not by connections already open.
pub struct CertStore {
    source: Source,
    current: RwLock<Current>,
}

/// Where the pair came from, so that a reload can read it again.
#[derive(Debug)]
enum Source {
    Files { cert: PathBuf, key: PathBuf },
    SelfSigned,
}

/// A usable pair and its fingerprint.
struct Current {
    key: Arc<CertifiedKey>,
    fingerprint: String,
}

impl CertStore {
    /// Read a PEM certificate chain (the server's certificate first, then intermediates) and a PEM
    /// private key (PKCS#8, PKCS#1 or SEC1; the first key block in the file), and check that the
    /// key belongs to the first certificate. The two paths may name the same file.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Arc<CertStore>, TlsError> {
        let current = load_files(cert, key)?;
        Ok(Arc::new(CertStore {
            source: Source::Files {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            },
            current: RwLock::new(current),
        }))
    }

    /// Make a fresh self-signed certificate (ECDSA P-256) for development, valid for `names`: DNS
    /// names such as `localhost`, and IP addresses such as `127.0.0.1`, which become IP SANs.
    /// Clients must be told to trust it (`curl -k`). A new key every call; nothing is written.
    pub fn self_signed(names: &[String]) -> Result<Arc<CertStore>, TlsError> {
        if names.is_empty() {
            return Err(TlsError::SelfSigned {
                problem: "no names given (for example `localhost`, `127.0.0.1`)".to_string(),
            });
        }
        let failed = |e: rcgen::Error| TlsError::SelfSigned {
            problem: e.to_string(),
        };
        let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(failed)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fiddler_crab self-signed");
        let key_pair = rcgen::KeyPair::generate().map_err(failed)?;
        let cert = params.self_signed(&key_pair).map_err(failed)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
        let signing_key =
            provider::sign::any_supported_type(&key).map_err(|e| TlsError::SelfSigned {
                problem: e.to_string(),
            })?;
        let certified = CertifiedKey::new(vec![cert.der().clone()], signing_key);
        Ok(Arc::new(CertStore {
            source: Source::SelfSigned,
            current: RwLock::new(Current::new(certified)),
        }))
    }

    /// Read the same files again. On any error the pair in use stays and the error is returned (for
    /// the caller to log once); on success new handshakes present the new pair, and the new
    /// fingerprint is returned. A self-signed store has no files: it keeps its pair and returns Ok.
    pub fn reload(&self) -> Result<String, TlsError> {
        let Source::Files { cert, key } = &self.source else {
            return Ok(self.fingerprint());
        };
        let fresh = load_files(cert, key)?;
        let fingerprint = fresh.fingerprint.clone();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(fingerprint)
    }

    /// SHA-256 of the current server certificate (DER), as uppercase hex pairs joined by colons,
    /// the form `openssl x509 -noout -fingerprint -sha256` prints.
    pub fn fingerprint(&self) -> String {
        self.read(|c| c.fingerprint.clone())
    }

    /// The pair new handshakes get.
    pub(super) fn certified_key(&self) -> Arc<CertifiedKey> {
        self.read(|c| c.key.clone())
    }

    fn read<T>(&self, f: impl FnOnce(&Current) -> T) -> T {
        f(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("source", &self.source)
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

impl Current {
    fn new(key: CertifiedKey) -> Current {
        let fingerprint = key
            .cert
            .first()
            .map(|leaf| fingerprint(leaf))
            .unwrap_or_default();
        Current {
            key: Arc::new(key),
            fingerprint,
        }
    }
}

/// Read, parse and check a certificate chain and its key.
fn load_files(cert_file: &Path, key_file: &Path) -> Result<Current, TlsError> {
    let chain = read_chain(cert_file)?;
    let key = read_key(key_file)?;
    let signing_key = provider::sign::any_supported_type(&key).map_err(|e| TlsError::BadKey {
        file: key_file.to_path_buf(),
        problem: e.to_string(),
    })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // Unknown: the key cannot tell its public half; nothing to compare, as rustls itself does.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch {
                cert: cert_file.to_path_buf(),
                key: key_file.to_path_buf(),
            })
        }
        Err(e) => {
            return Err(TlsError::BadCertificate {
                file: cert_file.to_path_buf(),
                problem: e.to_string(),
            })
        }
    }
    Ok(Current::new(certified))
}

fn read_file(file: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(file).map_err(|source| TlsError::Read {
        file: file.to_path_buf(),
        source,
    })
}

/// Every `CERTIFICATE` block in the file, in order; other blocks (such as a key) are skipped.
fn read_chain(file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(file)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(file, e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            file: file.to_path_buf(),
        });
    }
    Ok(chain)
}

/// The first private key block in the file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
fn read_key(file: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_file(file)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            file: file.to_path_buf(),
        },
        e => pem_error(file, e),
    })
}

fn pem_error(file: &Path, e: pem::Error) -> TlsError {
    TlsError::Pem {
        file: file.to_path_buf(),
        problem: e.to_string(),
    }
}

/// SHA-256 of `der` as `AB:CD:…`.
pub(super) fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}
