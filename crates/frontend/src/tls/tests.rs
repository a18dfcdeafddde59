//! Real TLS handshakes over 127.0.0.1 against the checked-in fixtures (see `fixtures/README.md`).
//! Compiled only under #[cfg(test)] (declared by the parent module).

use super::store::fingerprint;
use super::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{client, TlsConnector};

/// Far longer than any handshake on loopback takes; only a hang reaches it.
const GENEROUS: Duration = Duration::from_secs(30);

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/tls/fixtures")
        .join(name)
}

/// The first certificate in a fixture file.
fn leaf_der(name: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(fixture(name)).unwrap()
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fiddler-crab-tls-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Put a fixture's content at `name`, replacing what is there.
    fn install(&self, fixture_name: &str, name: &str) -> PathBuf {
        std::fs::copy(fixture(fixture_name), self.path(name)).unwrap();
        self.path(name)
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        std::fs::write(self.path(name), content).unwrap();
        self.path(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A TLS echo server on port 0: each connection gets [`handshake`], then whatever it sends comes
/// back. Every handshake's outcome is reported on `outcomes`.
struct EchoServer {
    addr: SocketAddr,
    outcomes: mpsc::UnboundedReceiver<Result<(), TlsError>>,
}

impl EchoServer {
    async fn start(store: Arc<CertStore>, timeout: Duration) -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(server_config(store));
        let (tx, outcomes) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match handshake(&acceptor, tcp, timeout).await {
                        Ok(tls) => {
                            let _ = tx.send(Ok(()));
                            let (mut rx, mut wx) = tokio::io::split(tls);
                            let _ = tokio::io::copy(&mut rx, &mut wx).await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            }
        });
        EchoServer { addr, outcomes }
    }

    /// The outcome of the next handshake the server finished (or gave up on).
    async fn next_outcome(&mut self) -> Result<(), TlsError> {
        tokio::time::timeout(GENEROUS, self.outcomes.recv())
            .await
            .expect("the server reported no handshake outcome")
            .expect("the server stopped")
    }
}

fn store_a() -> Arc<CertStore> {
    CertStore::from_pem_files(&fixture("a.pem"), &fixture("a.key")).unwrap()
}

/// A client trusting the fixtures' root CA only.
fn client_config(
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(leaf_der("ca.pem")).unwrap();
    client_config_trusting(roots, versions, alpn)
}

fn client_config_trusting(
    roots: RootCertStore,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

fn default_client() -> Arc<ClientConfig> {
    client_config(rustls::DEFAULT_VERSIONS, &[b"h2", b"http/1.1"])
}

async fn connect_as(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> io::Result<client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio::time::timeout(GENEROUS, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client handshake hung"))?
}

async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> io::Result<client::TlsStream<TcpStream>> {
    connect_as(addr, config, ServerName::try_from("localhost").unwrap()).await
}

fn peer_leaf(tls: &client::TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// Send a line and read it back.
async fn echo(tls: &mut client::TlsStream<TcpStream>, line: &str) -> String {
    tls.write_all(line.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let mut buf = vec![0; line.len()];
    tokio::time::timeout(GENEROUS, tls.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8(buf).unwrap()
}

/// Run `openssl` with `args` and no stdin; its exit status and combined output. Panics with a
/// clear message when the binary is missing (CI must install the `openssl` package).
async fn openssl(args: Vec<String>) -> (bool, String) {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("openssl")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
    })
    .await
    .unwrap()
    .expect("the `openssl` command is needed by this test (apt-get install openssl)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn alpn_negotiates_h2_when_offered() {
    let mut server = EchoServer::start(store_a(), GENEROUS).await;
    let tls = connect(server.addr, default_client()).await.unwrap();
    server.next_outcome().await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
}

#[tokio::test]
async fn alpn_negotiates_http1_when_only_it_is_offered() {
    let mut server = EchoServer::start(store_a(), GENEROUS).await;
    let config = client_config(rustls::DEFAULT_VERSIONS, &[b"http/1.1"]);
    let tls = connect(server.addr, config).await.unwrap();
    server.next_outcome().await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn a_client_without_alpn_still_connects() {
    let mut server = EchoServer::start(store_a(), GENEROUS).await;
    let config = client_config(rustls::DEFAULT_VERSIONS, &[]);
    let tls = connect(server.addr, config).await.unwrap();
    server.next_outcome().await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
}

/// Server A's file holds leaf and intermediate and the client trusts only the root: the handshake
/// succeeding also shows the whole chain is sent.
#[tokio::test]
async fn a_tls12_only_client_connects() {
    let mut server = EchoServer::start(store_a(), GENEROUS).await;
    let config = client_config(&[&rustls::version::TLS12], &[b"h2"]);
    let mut tls = connect(server.addr, config).await.unwrap();
    server.next_outcome().await.unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_2)
    );
    assert_eq!(echo(&mut tls, "over 1.2\n").await, "over 1.2\n");
}

#[tokio::test]
async fn a_tls13_only_client_connects() {
    let mut server = EchoServer::start(store_a(), GENEROUS).await;
    let config = client_config(&[&rustls::version::TLS13], &[b"h2"]);
    let mut tls = connect(server.addr, config).await.unwrap();
    server.next_outcome().await.unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
    assert_eq!(echo(&mut tls, "over 1.3\n").await, "over 1.3\n");
}

/// A client that prefers ChaCha20 gets the server's first choice (AES-256-GCM) all the same: the
/// server's cipher order wins (testssl's "server cipher order").
#[tokio::test]
async fn the_servers_cipher_order_wins_over_the_clients() {
    let mut server = EchoServer::start(store_a(), GENEROUS).await;
    let mut provider = provider::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
    assert_eq!(
        provider.cipher_suites[0].suite(),
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
    );
    let mut roots = RootCertStore::empty();
    roots.add(leaf_der("ca.pem")).unwrap();
    let config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = connect(server.addr, Arc::new(config)).await.unwrap();
    server.next_outcome().await.unwrap();
    assert_eq!(
        tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS13_AES_256_GCM_SHA384)
    );
}

/// rustls clients cannot speak TLS 1.1, so the openssl command line plays the old client (with
/// its own security level lowered so that it really sends a 1.1 hello). A TLS 1.2 run first shows
/// the harness can succeed at all.
#[tokio::test]
async fn tls11_is_refused() {
    let mut server = EchoServer::start(store_a(), GENEROUS).await;
    let s_client = |version: &str| {
        vec![
            "s_client".to_string(),
            "-connect".to_string(),
            server.addr.to_string(),
            "-servername".to_string(),
            "localhost".to_string(),
            version.to_string(),
            "-cipher".to_string(),
            "DEFAULT@SECLEVEL=0".to_string(),
        ]
    };
    let tls12 = s_client("-tls1_2");
    let tls11 = s_client("-tls1_1");

    let (ok, output) = openssl(tls12).await;
    assert!(ok, "openssl's TLS 1.2 control run failed:\n{output}");
    server.next_outcome().await.unwrap();

    let (ok, output) = openssl(tls11).await;
    assert!(!ok, "a TLS 1.1 client got through:\n{output}");
    match server.next_outcome().await {
        Err(TlsError::Handshake(e)) => {
            assert!(e.to_string().contains("incompatible"), "{e}");
        }
        other => panic!("expected a refused handshake, got {other:?}"),
    }
}

/// Plain HTTP is not a TLS record: the handshake fails on the first bytes, long before its timeout.
#[tokio::test]
async fn plain_http_fails_the_handshake_at_once() {
    let mut server = EchoServer::start(store_a(), GENEROUS).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    match server.next_outcome().await {
        Err(TlsError::Handshake(_)) => {}
        other => panic!("expected a failed handshake, got {other:?}"),
    }
    // The server closes the connection (after an alert): the client reads to the end.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(GENEROUS, tcp.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection stayed open");
}

#[tokio::test]
async fn a_silent_client_times_out() {
    let timeout = Duration::from_millis(200);
    let mut server = EchoServer::start(store_a(), timeout).await;
    let _tcp = TcpStream::connect(server.addr).await.unwrap();
    match server.next_outcome().await {
        Err(e @ TlsError::HandshakeTimeout(after)) => {
            assert_eq!(after, timeout);
            assert_eq!(e.to_string(), "TLS handshake not completed within 200 ms");
        }
        other => panic!("expected a handshake timeout, got {other:?}"),
    }
}

/// A client that sends half a hello and stalls is cut off too.
#[tokio::test]
async fn a_client_stalling_mid_hello_times_out() {
    let timeout = Duration::from_millis(200);
    let mut server = EchoServer::start(store_a(), timeout).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    // A handshake record header announcing 512 bytes, then nothing.
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    assert!(matches!(
        server.next_outcome().await,
        Err(TlsError::HandshakeTimeout(_))
    ));
}

#[tokio::test]
async fn reload_changes_new_handshakes_only_and_keeps_the_pair_on_errors() {
    let dir = TempDir::new();
    let cert = dir.install("a.pem", "cert.pem");
    let key = dir.install("a.key", "key.pem");
    let store = CertStore::from_pem_files(&cert, &key).unwrap();
    let (a, b) = (leaf_der("a.pem"), leaf_der("b.pem"));
    assert_eq!(store.fingerprint(), fingerprint(&a));
    let mut server = EchoServer::start(store.clone(), GENEROUS).await;

    let mut before = connect(server.addr, default_client()).await.unwrap();
    server.next_outcome().await.unwrap();
    assert_eq!(peer_leaf(&before), a);

    // Cert B (RSA, PKCS#1 key) replaces A.
    dir.install("b.pem", "cert.pem");
    dir.install("b.key", "key.pem");
    assert_eq!(store.reload().unwrap(), fingerprint(&b));
    assert_eq!(store.fingerprint(), fingerprint(&b));
    let after = connect(server.addr, default_client()).await.unwrap();
    server.next_outcome().await.unwrap();
    assert_eq!(peer_leaf(&after), b);
    assert_eq!(echo(&mut before, "still here\n").await, "still here\n");

    // A key that does not match: refused, B stays.
    dir.install("a.key", "key.pem");
    assert!(matches!(store.reload(), Err(TlsError::KeyMismatch { .. })));
    // Garbage in the certificate file: refused, B stays.
    dir.install("b.key", "key.pem");
    dir.write("cert.pem", "not a certificate\n");
    assert!(matches!(
        store.reload(),
        Err(TlsError::NoCertificate { .. })
    ));
    // A key file that vanished: refused, B stays.
    dir.install("b.pem", "cert.pem");
    std::fs::remove_file(&key).unwrap();
    assert!(matches!(store.reload(), Err(TlsError::Read { .. })));

    assert_eq!(store.fingerprint(), fingerprint(&b));
    let later = connect(server.addr, default_client()).await.unwrap();
    server.next_outcome().await.unwrap();
    assert_eq!(peer_leaf(&later), b);
    assert_eq!(echo(&mut before, "and here\n").await, "and here\n");
}

#[test]
fn pkcs8_pkcs1_and_sec1_keys_all_load() {
    for (cert, key) in [
        ("a.pem", "a.key"),      // EC, PKCS#8
        ("a.pem", "a.sec1.key"), // EC, SEC1
        ("b.pem", "b.key"),      // RSA, PKCS#1
    ] {
        let store = CertStore::from_pem_files(&fixture(cert), &fixture(key));
        assert!(store.is_ok(), "{cert} + {key}: {}", store.unwrap_err());
    }
}

#[test]
fn certificate_and_key_may_share_one_file() {
    let dir = TempDir::new();
    let both = std::fs::read_to_string(fixture("a.key")).unwrap()
        + &std::fs::read_to_string(fixture("a.pem")).unwrap();
    let file = dir.write("both.pem", &both);
    let store = CertStore::from_pem_files(&file, &file).unwrap();
    assert_eq!(store.fingerprint(), fingerprint(&leaf_der("a.pem")));
}

#[test]
fn a_missing_file_is_named() {
    let missing = fixture("missing.pem");
    let e = CertStore::from_pem_files(&missing, &fixture("a.key")).unwrap_err();
    assert!(matches!(&e, TlsError::Read { file, .. } if *file == missing));
    assert!(e
        .to_string()
        .starts_with(&format!("{}: cannot read", missing.display())));

    let e = CertStore::from_pem_files(&fixture("a.pem"), &missing).unwrap_err();
    assert!(matches!(&e, TlsError::Read { file, .. } if *file == missing));
}

#[test]
fn a_certificate_file_without_a_certificate_is_named() {
    // A key where the certificate should be.
    let e = CertStore::from_pem_files(&fixture("a.key"), &fixture("a.key")).unwrap_err();
    assert!(matches!(&e, TlsError::NoCertificate { file } if *file == fixture("a.key")));
    assert!(e.to_string().contains("a.key: no certificate found"), "{e}");
}

#[test]
fn a_key_file_without_a_key_is_named() {
    // A certificate where the key should be.
    let e = CertStore::from_pem_files(&fixture("a.pem"), &fixture("b.pem")).unwrap_err();
    assert!(matches!(&e, TlsError::NoKey { file } if *file == fixture("b.pem")));
    assert!(e.to_string().contains("b.pem: no private key found"), "{e}");
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let e = CertStore::from_pem_files(&fixture("a.pem"), &fixture("b.key")).unwrap_err();
    assert!(matches!(&e, TlsError::KeyMismatch { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("b.key: the private key does not match the first certificate in")
            && text.ends_with("a.pem"),
        "{text}"
    );
}

#[test]
fn broken_pem_is_named() {
    let dir = TempDir::new();
    let file = dir.write(
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    );
    let e = CertStore::from_pem_files(&file, &fixture("a.key")).unwrap_err();
    assert!(
        matches!(&e, TlsError::Pem { file: f, .. } if *f == file),
        "{e}"
    );

    let file = dir.write(
        "notx509.pem",
        "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
    );
    let e = CertStore::from_pem_files(&file, &fixture("a.key")).unwrap_err();
    assert!(
        matches!(&e, TlsError::BadCertificate { file: f, .. } if *f == file),
        "{e}"
    );
}

#[tokio::test]
async fn fingerprint_matches_openssl() {
    let store = store_a();
    let path = fixture("a.pem").display().to_string();
    let args = ["x509", "-noout", "-fingerprint", "-sha256", "-in", &path];
    let (ok, output) = openssl(args.iter().map(|s| s.to_string()).collect()).await;
    assert!(ok, "{output}");
    // `sha256 Fingerprint=AB:CD:…` (OpenSSL 1.1 writes `SHA256`).
    let expected = output.trim().rsplit('=').next().unwrap();
    assert_eq!(store.fingerprint(), expected);
}

#[tokio::test]
async fn self_signed_covers_dns_names_and_ip_addresses() {
    let names = ["localhost".to_string(), "127.0.0.1".to_string()];
    let store = CertStore::self_signed(&names).unwrap();
    let mut server = EchoServer::start(store.clone(), GENEROUS).await;
    let own = store.certified_key().cert[0].clone();
    let mut roots = RootCertStore::empty();
    roots.add(own.clone()).unwrap();
    let config = client_config_trusting(roots, rustls::DEFAULT_VERSIONS, &[b"h2"]);

    for name in ["localhost", "127.0.0.1"] {
        let name = ServerName::try_from(name).unwrap();
        let tls = connect_as(server.addr, config.clone(), name).await.unwrap();
        server.next_outcome().await.unwrap();
        assert_eq!(peer_leaf(&tls), own);
    }
    let other = ServerName::try_from("example.com").unwrap();
    assert!(connect_as(server.addr, config, other).await.is_err());

    // Nothing to re-read: reload keeps the certificate.
    assert_eq!(store.reload().unwrap(), fingerprint(&own));
}

#[test]
fn self_signed_needs_a_name() {
    assert!(matches!(
        CertStore::self_signed(&[]),
        Err(TlsError::SelfSigned { .. })
    ));
}
