//! `https://` upstreams: real TLS handshakes with a rustls server holding the checked-in test
//! certificate (`a.pem`: `localhost` and `127.0.0.1`, under the test root `ca.pem`), the
//! server's name checked and sent as SNI, the roots from `tls_ca_file`, `host_header`, health
//! checks and streamed answers over TLS, and a certificate that is not trusted answered `502`
//! with the reason in `/status`, `/readyz` and the log, never to the client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{channel, BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use light::{Light, TrafficLight};
use rustls::pki_types::CertificateDer;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use support::tls::fixture;
use support::{read_exactly, request, wait_until, within, TempDir, TestServer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the TLS upstream records.
#[derive(Debug, Default)]
struct State {
    /// The SNI of each completed handshake (none if the client sent none).
    sni: Mutex<Vec<Option<String>>>,
    /// Handshakes that failed (the client refused the certificate, or spoke no TLS).
    failed: AtomicUsize,
    /// Each request's path and `Host`.
    seen: Mutex<Vec<(String, String)>>,
    /// The body of the last `GET /sse`: the test sends its events.
    events: Mutex<Option<channel::Sender<Bytes, Infallible>>>,
}

/// An HTTPS upstream on 127.0.0.1 with the test certificate `a.pem`, ALPN `http/1.1`.
struct TlsUpstream {
    state: Arc<State>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsUpstream {
    async fn start() -> TlsUpstream {
        TlsUpstream::start_with(None).await
    }

    /// With `client_root`: a server that asks every client for a certificate and takes only one
    /// that chains to it (mutual TLS).
    async fn start_with(client_root: Option<CertificateDer<'static>>) -> TlsUpstream {
        let acceptor = support::tls::server_a(client_root);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let s = state.clone();
        let task = tokio::spawn(async move {
            // Dropped with the accept loop: aborting it closes every connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, state) = (acceptor.clone(), s.clone());
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        state.failed.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().map(str::to_string);
                    state.sni.lock().unwrap().push(sni);
                    let service = service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(req, &state)) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsUpstream { state, addr, task }
    }

    fn sni(&self) -> Vec<Option<String>> {
        self.state.sni.lock().unwrap().clone()
    }

    fn seen(&self) -> Vec<(String, String)> {
        self.state.seen.lock().unwrap().clone()
    }
}

fn answer(req: Request<Incoming>, state: &State) -> Response<BoxBody<Bytes, Infallible>> {
    let path = req.uri().path().to_string();
    if path == "/health" {
        return Response::new(Full::new(Bytes::from_static(b"ok\n")).boxed());
    }
    let host = req
        .headers()
        .get("host")
        .map_or("-".to_string(), |h| h.to_str().unwrap().to_string());
    state
        .seen
        .lock()
        .unwrap()
        .push((path.clone(), host.clone()));
    if path == "/sse" {
        let (events, body) = channel::Channel::new(1);
        *state.events.lock().unwrap() = Some(events);
        return Response::builder()
            .header("content-type", "text/event-stream")
            .body(body.boxed())
            .unwrap();
    }
    Response::new(Full::new(Bytes::from(format!("over TLS: {path}, host {host}"))).boxed())
}

/// A TOML string for a path.
fn toml_path(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

/// A jellyfish endpoint at `path` (4 workers) forwarding to `url`, with `extra` lines in its
/// `[endpoint.upstream]` table.
fn config(path: &str, url: &str, extra: &str) -> String {
    format!(
        "[[endpoint]]\npath = \"{path}\"\nmode = \"jellyfish\"\nworkers = 4\nqueue = 64\n\
         overflow = \"reject\"\nexpected_wait_admission = false\n\
         [endpoint.upstream]\nurl = \"{url}\"\n{extra}\n"
    )
}

/// `tls_ca_file = "<the test root>"`.
fn trusting_test_root() -> String {
    format!("tls_ca_file = {}", toml_path(&fixture("ca.pem")))
}

/// A server for `toml` under a traffic light fixed green, so that `/readyz` speaks of the
/// upstream alone (a loaded test machine may turn the system's light red).
async fn start_green(toml: &str) -> TestServer {
    TestServer::launch(toml)
        .light(&TrafficLight::fixed(Light::Green))
        .start()
        .await
}

fn upstream_status(server: &TestServer, path: &str) -> serde_json::Value {
    server.status_of(path).handler.expect("an upstream status")["upstream"].clone()
}

#[tokio::test]
async fn an_https_upstream_is_verified_against_tls_ca_file_sent_its_name_as_sni_and_kept_alive() {
    let up = TlsUpstream::start().await;
    let url = format!("https://localhost:{}", up.addr.port());
    // One check in the test's time (a debug build's handshakes are slow on a loaded machine,
    // and a check slower than the interval counts as failed), and the kept-alive connection
    // kept however slow the machine.
    let extra = format!(
        "{}\nhealth_path = \"/health\"\nhealth_interval_ms = 30000\nkeepalive_timeout_ms = 60000",
        trusting_test_root()
    );
    let server = start_green(&config("/u", &url, &extra)).await;
    wait_until("the upstream healthy over TLS", || {
        upstream_status(&server, "/u")["health"] == "healthy"
    })
    .await;
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());

    for i in 0..5 {
        let reply = server.get(&format!("/u?n={i}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert!(
            reply.text().starts_with("over TLS: /u, host "),
            "{}",
            reply.text()
        );
    }
    // The client's `Host` is passed on (the default `host_header = "client"`).
    let seen = up.seen();
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(
        seen.iter().all(|(_, host)| host == "fiddler.test"),
        "{seen:?}"
    );
    // Every handshake named the URL's host, and the five requests, one at a time, took one
    // kept-alive connection (beside the health check's).
    let sni = up.sni();
    assert!(sni.len() <= 2, "a new connection per request: {sni:?}");
    assert!(
        sni.iter().all(|name| name.as_deref() == Some("localhost")),
        "{sni:?}"
    );
    assert_eq!(up.state.failed.load(Ordering::SeqCst), 0);
    let status = upstream_status(&server, "/u");
    assert_eq!(status["failures"], 0, "{status}");
    server.shutdown().await;
}

#[tokio::test]
async fn host_header_upstream_names_the_server_itself_or_its_tls_server_name() {
    let up = TlsUpstream::start().await;
    // By address, with the certificate's name given: SNI and `Host` are that name.
    let by_address = config(
        "/named",
        &format!("https://127.0.0.1:{}", up.addr.port()),
        &format!(
            "{}\ntls_server_name = \"localhost\"\nhost_header = \"upstream\"",
            trusting_test_root()
        ),
    );
    // By address, no name: the certificate's IP address is checked, `Host` is the authority.
    let plain_address = config(
        "/ip",
        &format!("https://127.0.0.1:{}", up.addr.port()),
        &format!("{}\nhost_header = \"upstream\"", trusting_test_root()),
    );
    let server = TestServer::start(&format!("{by_address}\n{plain_address}")).await;

    let reply = server.get("/named").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.text(), "over TLS: /named, host localhost");
    let reply = server.get("/ip").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        reply.text(),
        format!("over TLS: /ip, host 127.0.0.1:{}", up.addr.port())
    );
    // An IP address is never sent as SNI (RFC 6066): only the name is.
    let mut sni = up.sni();
    sni.sort();
    assert_eq!(sni, vec![None, Some("localhost".to_string())]);
    server.shutdown().await;
}

#[tokio::test]
async fn an_untrusted_or_misnamed_certificate_is_a_502_and_says_why_in_status_and_readyz() {
    let up = TlsUpstream::start().await;
    let url = format!("https://localhost:{}", up.addr.port());
    // `b.pem` is a server certificate, not the root `a.pem` chains to.
    let untrusted = config(
        "/untrusted",
        &url,
        &format!(
            "tls_ca_file = {}\nhealth_path = \"/health\"",
            toml_path(&fixture("b.pem"))
        ),
    );
    let misnamed = config(
        "/misnamed",
        &url,
        &format!(
            "{}\ntls_server_name = \"other.example\"",
            trusting_test_root()
        ),
    );
    let server = start_green(&format!("{untrusted}\n{misnamed}")).await;

    wait_until("the untrusted upstream unhealthy", || {
        upstream_status(&server, "/untrusted")["health"] == "unhealthy"
    })
    .await;
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        ready.text().contains("TLS handshake failed"),
        "{}",
        ready.text()
    );
    assert!(!ready.text().contains("127.0.0.1"), "{}", ready.text());

    let reply = server.get("/misnamed").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.text(), "upstream unavailable\n");
    let status = upstream_status(&server, "/misnamed");
    let last = status["last_error"].to_string();
    assert!(last.contains("TLS handshake failed"), "{status}");
    assert!(last.contains("certificate"), "{status}");
    // Nothing reached the upstream's HTTP side; every handshake was refused by the client.
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    assert!(up.sni().is_empty(), "{:?}", up.sni());
    assert!(up.state.failed.load(Ordering::SeqCst) >= 2);
    server.shutdown().await;
}

#[tokio::test]
async fn server_sent_events_over_tls_reach_the_client_one_by_one() {
    let up = TlsUpstream::start().await;
    let url = format!("https://localhost:{}", up.addr.port());
    let server = TestServer::start(&config("/sse", &url, &trusting_test_root())).await;

    let client = server.client();
    let response = within(
        "the streamed answer's head",
        client.open(request("GET", "/sse", "")),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    wait_until("an event stream at the upstream", || {
        up.state.events.lock().unwrap().is_some()
    })
    .await;
    let mut events = up.state.events.lock().unwrap().take().unwrap();
    // Token 2 is not sent until the client has token 1.
    for token in ["token1", "token2"] {
        let event = format!("data: {token}\n\n");
        events.send_data(Bytes::from(event.clone())).await.unwrap();
        read_exactly(&mut body, &event).await;
    }
    drop(events);
    let end = within("the end of the stream", body.frame()).await;
    assert!(end.is_none(), "{end:?}");
    wait_until("the stream counted as completed", || {
        server.counters("/sse").completed == 1
    })
    .await;
    server.shutdown().await;
}

#[test]
fn check_names_an_unreadable_or_empty_tls_ca_file() {
    use fiddler_crab::config::Config;
    let dir = TempDir::new("upstream-tls-check");
    let missing = dir.path().join("missing.pem");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificate here\n").unwrap();
    for (file, says) in [(&missing, "cannot read"), (&empty, "holds no certificate")] {
        let toml = config(
            "/u",
            "https://localhost:1",
            &format!("tls_ca_file = {}", toml_path(file)),
        );
        let problems =
            fiddler_crab::check_files(&Config::from_toml(&toml, "t.toml").unwrap(), "t.toml");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "endpoint[0].upstream.tls_ca_file");
        assert!(problems[0].problem.contains(says), "{}", problems[0]);
        // The client is told nothing of it: it is a config problem, shown as FILE: KEY: PROBLEM.
        assert!(
            problems[0]
                .to_string()
                .starts_with("t.toml: endpoint[0].upstream.tls_ca_file: "),
            "{}",
            problems[0]
        );
    }
    // The test root is a usable file.
    let good = config("/u", "https://localhost:1", &trusting_test_root());
    let problems =
        fiddler_crab::check_files(&Config::from_toml(&good, "t.toml").unwrap(), "t.toml");
    assert!(problems.is_empty(), "{problems:?}");
}

#[tokio::test]
async fn a_reload_to_an_unreadable_tls_ca_file_is_refused_and_the_endpoint_keeps_serving() {
    let up = TlsUpstream::start().await;
    let url = format!("https://localhost:{}", up.addr.port());
    let server = TestServer::start(&config("/u", &url, &trusting_test_root())).await;
    assert_eq!(server.get("/u").await.status, StatusCode::OK);
    let broken = config(
        "/u",
        &url,
        "tls_ca_file = \"/nonexistent-fiddler-dir/ca.pem\"",
    );
    let e = server.try_reload(&broken).unwrap_err().to_string();
    assert!(e.contains("tls_ca_file"), "{e}");
    assert!(e.contains("cannot read"), "{e}");
    assert_eq!(server.get("/u").await.status, StatusCode::OK);
    server.shutdown().await;
}

#[tokio::test]
async fn without_tls_ca_file_the_systems_store_is_trusted_and_each_refused_handshake_is_logged_once(
) {
    use support::binary::Binary;
    let up = TlsUpstream::start().await;
    let dir = TempDir::new("upstream-tls-system");
    // Two endpoints on the same server: one named as its certificate says, one not.
    let toml = format!(
        "{}\n{}",
        config("/u", &format!("https://localhost:{}", up.addr.port()), ""),
        config(
            "/wrong",
            &format!("https://localhost:{}", up.addr.port()),
            "tls_server_name = \"other.example\""
        )
    );
    let file = dir.write("serve.toml", &toml);
    let listen = format!("127.0.0.1:{}", support::free_port());
    // The system's store, as the binary finds it: here the test root, by the variable OpenSSL
    // and rustls-native-certs both read.
    let mut binary = Binary::start_with(
        &["--config", file.to_str().unwrap(), "--listen", &listen],
        |command| {
            command.env("SSL_CERT_FILE", fixture("ca.pem"));
            command.env_remove("SSL_CERT_DIR");
        },
    );
    let addr = binary.wait_serving().await;
    let client = support::Client { addr };
    let reply = client.get("/u").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    for _ in 0..5 {
        let reply = client.get("/wrong").await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        assert_eq!(reply.text(), "upstream unavailable\n");
    }
    let line = binary.wait_logged("TLS handshake failed").await;
    assert!(
        line.contains("other.example") || line.contains("NotValidForName"),
        "{line}"
    );
    let (_, log) = binary.stop_with_log().await;
    // Each failed exchange is logged once, with its cause; nothing else repeats it.
    let lines = log
        .lines()
        .filter(|l| l.contains("TLS handshake failed"))
        .count();
    assert_eq!(lines, 5, "{log}");
}

/// A root CA and a client certificate it signed (for `clientAuth`), made now; the root, and the
/// client's chain and key written as PEM files in `dir`.
fn client_identity(
    dir: &TempDir,
) -> (
    CertificateDer<'static>,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(vec!["client.test".to_string()]).unwrap();
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = client.signed_by(&key, &issuer).unwrap();
    let cert_file = dir.write("client.pem", &cert.pem());
    let key_file = dir.write("client.key", &key.serialize_pem());
    (ca_cert.der().clone(), cert_file, key_file)
}

#[tokio::test]
async fn a_server_that_asks_for_a_client_certificate_takes_tls_cert_file_and_refuses_none() {
    let dir = TempDir::new("upstream-mtls");
    let (root, cert_file, key_file) = client_identity(&dir);
    let up = TlsUpstream::start_with(Some(root)).await;
    let url = format!("https://localhost:{}", up.addr.port());
    let with_cert = config(
        "/with",
        &url,
        &format!(
            "{}\ntls_cert_file = {}\ntls_key_file = {}",
            trusting_test_root(),
            toml_path(&cert_file),
            toml_path(&key_file)
        ),
    );
    let without = config("/without", &url, &trusting_test_root());
    let server = TestServer::start(&format!("{with_cert}\n{without}")).await;

    let reply = server.get("/with").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.text(), "over TLS: /with, host fiddler.test");
    let reply = server.get("/without").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    // Under TLS 1.3 the server refuses the missing certificate after the client's side of the
    // handshake is done: the request may have been written, so it is not sent again.
    assert_eq!(
        reply.text(),
        "upstream closed the connection without answering\n"
    );
    assert_eq!(up.seen().len(), 1, "{:?}", up.seen());
    assert!(up.state.failed.load(Ordering::SeqCst) >= 1);
    server.shutdown().await;
}

#[test]
fn check_names_a_client_key_that_is_not_the_certificates() {
    use fiddler_crab::config::Config;
    let dir = TempDir::new("upstream-mtls-check");
    let (_, cert_file, _) = client_identity(&dir);
    let toml = config(
        "/u",
        "https://localhost:1",
        &format!(
            "{}\ntls_cert_file = {}\ntls_key_file = {}",
            trusting_test_root(),
            toml_path(&cert_file),
            toml_path(&fixture("a.key"))
        ),
    );
    let problems =
        fiddler_crab::check_files(&Config::from_toml(&toml, "t.toml").unwrap(), "t.toml");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].key, "endpoint[0].upstream.tls_key_file");
    assert!(
        problems[0].problem.contains("is not the key of"),
        "{}",
        problems[0]
    );
}

#[tokio::test]
async fn a_reload_that_keeps_the_endpoint_reads_a_renewed_tls_ca_file() {
    let up = TlsUpstream::start().await;
    let dir = TempDir::new("upstream-tls-renewed");
    // At first the file holds another certificate than the root the upstream's chains to.
    let ca = dir.write(
        "ca.pem",
        &std::fs::read_to_string(fixture("b.pem")).unwrap(),
    );
    let toml = config(
        "/u",
        &format!("https://localhost:{}", up.addr.port()),
        &format!("tls_ca_file = {}", toml_path(&ca)),
    );
    let server = TestServer::start(&toml).await;
    assert_eq!(server.get("/u").await.status, StatusCode::BAD_GATEWAY);

    // Renewed in place, same path, same config: the endpoint is kept and reads it again.
    std::fs::write(&ca, std::fs::read(fixture("ca.pem")).unwrap()).unwrap();
    let summary = server.reload(&toml);
    assert_eq!((summary.kept, summary.started), (1, 0));
    let reply = server.get("/u").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    server.shutdown().await;
}
