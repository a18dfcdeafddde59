//! TLS to `https://` servers: the roots trusted (`tls_ca_file`, else the system's store), ALPN
//! `http/1.1`, the client certificate shown to servers that ask for one (`tls_cert_file` and
//! `tls_key_file`), and the name each server's certificate must be valid for (`tls_server_name`,
//! else the URL's host), which is also sent as SNI.
//!
//! Built once when the endpoint starts (and again by a reload), never per connection; rustls
//! keeps resumable sessions, so a new connection to a server seen before takes a short handshake.

use config::{ClientCert, UpstreamTls};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

/// Largest PEM file read (Mozilla's whole CA bundle is about 220 KB).
const MAX_PEM_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// The client settings for an endpoint's `https://` servers. An error names its key
/// (`tls_ca_file`, `tls_cert_file`, `tls_key_file`, or `tls` for the system's store and the
/// protocol versions) and says what is wrong.
pub fn client_config(tls: &UpstreamTls) -> Result<Arc<ClientConfig>, (&'static str, String)> {
    let roots = match &tls.ca_file {
        Some(file) => roots_from_file(file).map_err(|e| ("tls_ca_file", e))?,
        None => system_roots().map_err(|e| ("tls", e))?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("tls", e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match &tls.client_cert {
        None => builder.with_no_client_auth(),
        Some(ClientCert {
            cert_file,
            key_file,
        }) => {
            let chain = certificates(cert_file).map_err(|e| ("tls_cert_file", e))?;
            let key = private_key(key_file).map_err(|e| ("tls_key_file", e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| match e {
                    rustls::Error::InconsistentKeys(_) => (
                        "tls_key_file",
                        format!(
                            "`{}` is not the key of `{}`",
                            key_file.display(),
                            cert_file.display()
                        ),
                    ),
                    e => ("tls_key_file", format!("`{}`: {e}", key_file.display())),
                })?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The name a server at `host` must prove it is: `tls_server_name`, or the host itself.
pub fn server_name(tls: &UpstreamTls, host: &str) -> Result<ServerName<'static>, String> {
    let name = tls.server_name.as_deref().unwrap_or(host);
    ServerName::try_from(name.to_string()).map_err(|_| {
        format!("`{name}` is not a DNS name or an IP address a certificate can be checked against")
    })
}

/// The certificates of a PEM file, each trusted as a root: at least one, every one usable.
fn roots_from_file(file: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in certificates(file)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            format!(
                "`{}`: certificate {} cannot be trusted as a root: {e}",
                file.display(),
                i + 1
            )
        })?;
    }
    Ok(roots)
}

/// A PEM file's bytes, at most [`MAX_PEM_FILE_BYTES`].
fn read_pem(file: &Path) -> Result<Vec<u8>, String> {
    let mut pem = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_PEM_FILE_BYTES + 1).read_to_end(&mut pem))
        .map_err(|e| format!("cannot read `{}`: {e}", file.display()))?;
    if pem.len() as u64 > MAX_PEM_FILE_BYTES {
        return Err(format!(
            "`{}` is larger than {MAX_PEM_FILE_BYTES} bytes",
            file.display()
        ));
    }
    Ok(pem)
}

/// Every `CERTIFICATE` block of a PEM file, in order (other blocks skipped): at least one.
fn certificates(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem(file)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("`{}` is not valid PEM: {e}", file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "`{}` holds no certificate (PEM, `BEGIN CERTIFICATE`)",
            file.display()
        ));
    }
    Ok(certs)
}

/// The first private key block of a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
fn private_key(file: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_pem(file)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "`{}` holds no private key (PEM, `BEGIN PRIVATE KEY`)",
            file.display()
        ),
        e => format!("`{}` is not valid PEM: {e}", file.display()),
    })
}

/// The system's trusted roots (on Linux the bundle openssl-probe finds, or `SSL_CERT_FILE` /
/// `SSL_CERT_DIR`): at least one, else an error that says how to give some.
fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _unusable) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or(String::new(), |e| format!(" ({e})"));
        return Err(format!(
            "no trusted certificate in the system's store{why}: install ca-certificates, or give \
             tls_ca_file"
        ));
    }
    Ok(roots)
}
