//! TLS to `https://` servers: the roots trusted (`tls_ca_file`, else the system's store), ALPN
//! `http/1.1`, and the name each server's certificate must be valid for (`tls_server_name`, else
//! the URL's host), which is also sent as SNI.
//!
//! Built once when the endpoint starts (and again by a reload), never per connection; rustls
//! keeps resumable sessions, so a new connection to a server seen before takes a short handshake.

use config::UpstreamTls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

/// Largest `tls_ca_file` read (Mozilla's whole bundle is about 220 KB).
const MAX_CA_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// The client settings for an endpoint's `https://` servers. An error names its key
/// (`tls_ca_file`, or `tls` for the system's store and the protocol versions) and says what is
/// wrong.
pub fn client_config(tls: &UpstreamTls) -> Result<Arc<ClientConfig>, (&'static str, String)> {
    let roots = match &tls.ca_file {
        Some(file) => roots_from_file(file).map_err(|e| ("tls_ca_file", e))?,
        None => system_roots().map_err(|e| ("tls", e))?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("tls", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
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
    let mut pem = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_CA_FILE_BYTES + 1).read_to_end(&mut pem))
        .map_err(|e| format!("cannot read `{}`: {e}", file.display()))?;
    if pem.len() as u64 > MAX_CA_FILE_BYTES {
        return Err(format!(
            "`{}` is larger than {MAX_CA_FILE_BYTES} bytes",
            file.display()
        ));
    }
    let mut roots = RootCertStore::empty();
    for (i, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let cert = cert.map_err(|e| {
            format!(
                "`{}`: certificate {} is not valid PEM: {e}",
                file.display(),
                i + 1
            )
        })?;
        roots.add(cert).map_err(|e| {
            format!(
                "`{}`: certificate {} cannot be trusted as a root: {e}",
                file.display(),
                i + 1
            )
        })?;
    }
    if roots.is_empty() {
        return Err(format!(
            "`{}` holds no certificate (PEM, `BEGIN CERTIFICATE`)",
            file.display()
        ));
    }
    Ok(roots)
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
