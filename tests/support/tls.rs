//! TLS test support: the checked-in certificates, rustls clients (trusting the test CA, or pinning
//! one certificate's SHA-256 fingerprint), and HTTPS connections whose HTTP version ALPN decides.
//!
//! - [`fixture`], [`leaf_der`], [`fingerprint`]: the files in `crates/frontend/src/tls/fixtures`.
//! - [`trusting_test_ca`], [`pinning`]: client configs; [`Https`] connects with one and
//!   [`HttpsConn`] sends requests over the TLS stream (hyper's HTTP/1.1 or HTTP/2 client).
//! - [`client_hello_start`]: the first bytes of a real ClientHello, for stalling clients.
//! - [`Binary`] and [`log_field`] (from [`super::binary`], where they live now).

pub use super::binary::{log_field, Binary};
use super::{Reply, PATIENCE};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HOST;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{ring as provider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// ALPN offers: HTTP/1.1 only, or HTTP/2 first.
pub const HTTP1: &[&[u8]] = &[b"http/1.1"];
/// ALPN offers: HTTP/2 preferred, HTTP/1.1 accepted.
pub const H2_FIRST: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A file in `crates/frontend/src/tls/fixtures` (see its README: test material only).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/frontend/src/tls/fixtures")
        .join(name)
}

/// The first certificate in a fixture file, DER.
pub fn leaf_der(name: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(fixture(name))
        .unwrap_or_else(|e| panic!("fixture {name}: no certificate: {e}"))
}

/// SHA-256 of `der` as uppercase hex pairs joined by colons (the form the server logs and
/// `openssl x509 -fingerprint -sha256` prints).
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

/// A TLS server with server A's chain and key (`a.pem`, `a.key`: `localhost`, `127.0.0.1`),
/// ALPN `http/1.1`, for fake upstreams; with `client_root`, it asks every client for a
/// certificate and takes only one that chains to it (mutual TLS).
pub fn server_a(client_root: Option<CertificateDer<'static>>) -> tokio_rustls::TlsAcceptor {
    let chain = CertificateDer::pem_file_iter(fixture("a.pem"))
        .expect("fixture a.pem")
        .collect::<Result<Vec<_>, _>>()
        .expect("a.pem holds certificates");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(fixture("a.key")).expect("a.key");
    let provider = Arc::new(provider::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the ring provider speaks TLS 1.2 and 1.3");
    let builder = match client_root {
        None => builder.with_no_client_auth(),
        Some(root) => {
            let mut roots = RootCertStore::empty();
            roots.add(root).expect("a usable client root");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("a client verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .expect("a.pem and a.key match");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// A client trusting the fixtures' root CA (`ca.pem`) and nothing else, offering `alpn`.
pub fn trusting_test_ca(alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(leaf_der("ca.pem"))
        .expect("the test CA is usable");
    let builder = ClientConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("the ring provider speaks TLS 1.2 and 1.3");
    let mut config = builder.with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Every connection a full handshake: a resumed session shows the certificate of the session it
    // resumes, not the one the server presents now.
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

/// Like [`trusting_test_ca`], but resuming TLS sessions (rustls's default client: an in-memory
/// session cache), as browsers and most clients do.
pub fn trusting_test_ca_resuming(alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut config = (*trusting_test_ca(alpn)).clone();
    config.resumption = Resumption::default();
    Arc::new(config)
}

/// A client that trusts exactly one certificate, by its SHA-256 fingerprint, whatever signed it and
/// whatever names it carries: what a user of `--self-signed` does with the logged fingerprint. The
/// handshake signature is still checked against that certificate's key.
pub fn pinning(sha256: &str, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let provider = provider::default_provider();
    let verifier = Pinned {
        sha256: sha256.to_string(),
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("the ring provider speaks TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

/// Certificate pinning: the server's certificate must have this SHA-256 fingerprint.
#[derive(Debug)]
struct Pinned {
    sha256: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = fingerprint(end_entity);
        if seen == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "certificate {seen} is not the pinned {}",
                self.sha256
            )))
        }
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

/// The first `n` bytes a real rustls client sends: the start of its ClientHello record.
pub fn client_hello_start(n: usize) -> Vec<u8> {
    let name = ServerName::try_from("localhost").expect("a valid name");
    let mut conn = rustls::ClientConnection::new(trusting_test_ca(H2_FIRST), name)
        .expect("a client connection");
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).expect("a ClientHello");
    assert!(
        hello.len() > n,
        "the ClientHello is only {} bytes",
        hello.len()
    );
    assert_eq!(hello.first(), Some(&0x16), "a handshake record");
    hello.truncate(n);
    hello
}

/// Where to connect for HTTPS, and as which client. Every [`Https::connect`] is a new TCP
/// connection and a full handshake.
#[derive(Clone)]
pub struct Https {
    /// The server's address.
    pub addr: SocketAddr,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl Https {
    /// HTTPS to `addr` with `config`, expecting a certificate for `localhost`.
    pub fn new(addr: SocketAddr, config: Arc<ClientConfig>) -> Https {
        Https {
            addr,
            config,
            name: ServerName::try_from("localhost").expect("a valid name"),
        }
    }

    /// Expect a certificate for `name` (a DNS name or an IP address) instead.
    pub fn named(mut self, name: &str) -> Https {
        self.name = ServerName::try_from(name.to_string()).expect("a valid server name");
        self
    }

    /// Connect and run the TLS handshake; the error says why it failed.
    pub async fn handshake(&self) -> std::io::Result<TlsStream<TcpStream>> {
        let shake = async {
            let tcp = TcpStream::connect(self.addr).await?;
            TlsConnector::from(self.config.clone())
                .connect(self.name.clone(), tcp)
                .await
        };
        match tokio::time::timeout(PATIENCE, shake).await {
            Ok(result) => result,
            Err(_) => panic!("no TLS handshake with {} within {PATIENCE:?}", self.addr),
        }
    }

    /// Handshake, then start hyper's HTTP/2 client if ALPN chose `h2` and HTTP/1.1 otherwise.
    pub async fn connect(&self) -> HttpsConn {
        let tls = self
            .handshake()
            .await
            .unwrap_or_else(|e| panic!("TLS handshake with {} failed: {e}", self.addr));
        let session = tls.get_ref().1;
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let peer = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .cloned()
            .expect("the server presented a certificate");
        let io = TokioIo::new(tls);
        let (sender, driver) = if alpn.as_deref() == Some(b"h2") {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("HTTP/2 handshake over TLS");
            (Sender::H2(sender), tokio::spawn(conn))
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("HTTP/1.1 handshake over TLS");
            (Sender::H1(sender), tokio::spawn(conn))
        };
        HttpsConn {
            port: self.addr.port(),
            alpn,
            peer,
            sender,
            driver,
        }
    }

    /// `GET path` on a fresh connection.
    pub async fn get(&self, path: &str) -> Reply {
        self.connect().await.get(path).await
    }
}

/// One HTTPS connection, kept open across requests.
pub struct HttpsConn {
    port: u16,
    /// The protocol ALPN chose, if any.
    pub alpn: Option<Vec<u8>>,
    /// The server's certificate (DER) as the handshake presented it.
    pub peer: CertificateDer<'static>,
    sender: Sender,
    driver: JoinHandle<Result<(), hyper::Error>>,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl HttpsConn {
    /// `GET path` on this connection; the server must answer.
    pub async fn get(&mut self, path: &str) -> Reply {
        match self.try_get(path).await {
            Ok(reply) => reply,
            Err(e) => panic!("GET {path} over TLS: no answer: {e:?}"),
        }
    }

    /// `GET path` on this connection; an error means it ended without a (complete) answer.
    pub async fn try_get(&mut self, path: &str) -> Result<Reply, hyper::Error> {
        let exchange = async {
            let response = match &mut self.sender {
                Sender::H1(sender) => {
                    let req = Request::get(path)
                        .header(HOST, "localhost")
                        .body(Full::new(Bytes::new()))
                        .expect("a valid request");
                    sender.ready().await?;
                    sender.send_request(req).await?
                }
                Sender::H2(sender) => {
                    // HTTP/2 carries scheme and authority as pseudo-headers.
                    let req = Request::get(format!("https://localhost:{}{path}", self.port))
                        .body(Full::new(Bytes::new()))
                        .expect("a valid request");
                    sender.ready().await?;
                    sender.send_request(req).await?
                }
            };
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok(Reply {
                status: parts.status,
                version: parts.version,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(PATIENCE, exchange).await {
            Ok(result) => result,
            Err(_) => panic!("GET {path} over TLS: no answer within {PATIENCE:?}"),
        }
    }
}

impl Drop for HttpsConn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}
