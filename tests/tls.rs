//! HTTPS end to end, with real handshakes: a rustls client trusting only the checked-in test CA
//! (`crates/frontend/src/tls/fixtures`), hyper's HTTP/1.1 or HTTP/2 client over the TLS stream as
//! ALPN decides, and `openssl s_client` playing the TLS 1.1 client rustls cannot be.
//!
//! What is proved: both HTTP versions are served over TLS, with `Strict-Transport-Security` exactly
//! when configured; TLS 1.1 and plain HTTP are refused at the handshake without harming the
//! server; a client stalling mid-handshake is dropped at the handshake timeout, never delays
//! another client, and holds a connection slot only until then; the redirect listener answers
//! `308` to the same host and path on HTTPS; the binary reloads its certificate on SIGHUP for new
//! connections only, refuses a bad one, and with `--self-signed` serves a client that pins the
//! fingerprint it logged.
//!
//! Needs the `openssl` command line (Debian package `openssl`) for the TLS 1.1 test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use frontend::tls::CertStore;
use frontend::Tls;
use hyper::header::HOST;
use hyper::{StatusCode, Version};
use light::{Light, TrafficLight};
use nix::sys::signal::Signal;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use support::tls::{
    client_hello_start, fingerprint, fixture, leaf_der, log_field, pinning, trusting_test_ca,
    trusting_test_ca_resuming, Binary, Https, H2_FIRST, HTTP1,
};
use support::{free_port, read_to_close, request, Client, TempDir, TestServer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const PING: &str = r#"
[server]
# Only the TLS handshake deadline may close a connection in these tests.
header_read_timeout_ms = 60000

[[endpoint]]
path = "/ping"
builtin = "ping"
"#;

/// A handshake deadline no test waits for: only a hang would reach it.
const NEVER: Duration = Duration::from_secs(600);

/// The short handshake deadline of the stalling tests.
const STALL: Duration = Duration::from_millis(300);

/// HTTPS with certificate A (`a.pem`, `a.key`).
fn tls_a(handshake_timeout: Duration, hsts_max_age: Option<u64>) -> Tls {
    let store = CertStore::from_pem_files(&fixture("a.pem"), &fixture("a.key")).unwrap();
    Tls::new(store, handshake_timeout, hsts_max_age)
}

async fn https_server(toml: &str, tls: Tls) -> TestServer {
    TestServer::launch(toml)
        .light(&TrafficLight::fixed(Light::Green))
        .tls(tls)
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_http1_and_h2_by_alpn_with_hsts() {
    let server = https_server(PING, tls_a(NEVER, Some(600))).await;

    let mut h1 = Https::new(server.addr, trusting_test_ca(HTTP1))
        .connect()
        .await;
    assert_eq!(h1.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(h1.peer, leaf_der("a.pem"));
    for _ in 0..2 {
        let reply = h1.get("/ping").await;
        assert_eq!(
            (reply.status, reply.version, reply.text()),
            (StatusCode::OK, Version::HTTP_11, "pong\n".to_string())
        );
        assert_eq!(
            reply.header("strict-transport-security").as_deref(),
            Some("max-age=600")
        );
    }

    let mut h2 = Https::new(server.addr, trusting_test_ca(H2_FIRST))
        .connect()
        .await;
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    for path in ["/ping", "/status"] {
        let reply = h2.get(path).await;
        assert_eq!(
            (reply.status, reply.version),
            (StatusCode::OK, Version::HTTP_2),
            "{path}"
        );
        assert_eq!(
            reply.header("strict-transport-security").as_deref(),
            Some("max-age=600"),
            "{path}"
        );
    }
    // A 404 is an HTTPS response too.
    let missing = h2.get("/nowhere").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.headers.contains_key("strict-transport-security"));

    // No ALPN at all: the server's HTTP/1.1 still answers.
    let reply = Https::new(server.addr, trusting_test_ca(&[]))
        .get("/ping")
        .await;
    assert_eq!(
        (reply.status, reply.version),
        (StatusCode::OK, Version::HTTP_11)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_hsts_header_without_hsts_max_age() {
    let server = https_server(PING, tls_a(NEVER, None)).await;
    for alpn in [HTTP1, H2_FIRST] {
        let reply = Https::new(server.addr, trusting_test_ca(alpn))
            .get("/ping")
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("strict-transport-security"), None, "{alpn:?}");
    }
    server.shutdown().await;
}

/// Run `openssl` with `args` and no stdin; its exit status and combined output.
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

/// rustls clients cannot speak TLS 1.1, so the openssl command line plays the old client, with its
/// own security level lowered so that it really sends a 1.1 hello. The TLS 1.2 run, with the same
/// harness, shows that the refusal is the server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls11_is_refused_and_tls12_accepted() {
    let server = https_server(PING, tls_a(NEVER, None)).await;
    let s_client = |version: &str| -> Vec<String> {
        let ca = fixture("ca.pem").display().to_string();
        let connect = server.addr.to_string();
        [
            "s_client",
            "-connect",
            &connect,
            "-servername",
            "localhost",
            "-CAfile",
            &ca,
            version,
            "-cipher",
            "DEFAULT@SECLEVEL=0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };

    let (ok, output) = openssl(s_client("-tls1_2")).await;
    assert!(ok, "openssl's TLS 1.2 run failed:\n{output}");
    assert!(output.contains("TLSv1.2"), "{output}");
    assert!(output.contains("Verify return code: 0 (ok)"), "{output}");

    let (ok, output) = openssl(s_client("-tls1_1")).await;
    assert!(!ok, "a TLS 1.1 client got through:\n{output}");
    assert!(output.contains("Cipher is (NONE)"), "{output}");

    // Still serving.
    let reply = Https::new(server.addr, trusting_test_ca(HTTP1))
        .get("/ping")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    server.wait_open_connections(0).await;
    server.shutdown().await;
}

/// Plain HTTP is not a TLS record: the handshake fails on the first bytes, so the connection is
/// closed long before the (unreachable) handshake timeout, and at most a TLS alert comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_tls_port_gets_no_http_response() {
    let server = https_server(PING, tls_a(NEVER, None)).await;
    let plain = server.client();
    let attempts: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(async move {
                plain
                    .raw(b"GET /ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    .await
            })
        })
        .collect();
    for attempt in attempts {
        // read_to_close fails after PATIENCE, far below the handshake timeout.
        let answer = attempt.await.unwrap();
        assert!(
            !String::from_utf8_lossy(&answer).contains("HTTP/"),
            "an HTTP answer on the TLS port: {answer:?}"
        );
        assert!(
            answer.is_empty() || answer[0] == 0x15,
            "not a TLS alert record: {answer:?}"
        );
    }
    server.wait_open_connections(0).await;

    let reply = Https::new(server.addr, trusting_test_ca(H2_FIRST))
        .get("/ping")
        .await;
    assert_eq!(
        (reply.status, reply.text()),
        (StatusCode::OK, "pong\n".into())
    );
    server.shutdown().await;
}

/// Connect and send the first `5` bytes of a real ClientHello (the record header), then stall.
async fn stall(addr: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&client_hello_start(5)).await.unwrap();
    tcp
}

/// True if the server has not closed `tcp` (nothing to read yet).
fn still_open(tcp: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_dropped_at_the_handshake_timeout() {
    let server = https_server(PING, tls_a(STALL, None)).await;
    let good = Https::new(server.addr, trusting_test_ca(H2_FIRST));

    let opened = Instant::now();
    let staller = stall(server.addr).await;
    server.wait_open_connections(1).await;
    // A good client in the meantime.
    let reply = good.get("/ping").await;
    assert_eq!(reply.status, StatusCode::OK);

    let answer = read_to_close(staller).await;
    let held = opened.elapsed();
    assert!(answer.is_empty(), "the staller was sent {answer:?}");
    // The deadline counts from the accept, after our connect began: never earlier than this.
    assert!(held >= STALL, "dropped after {held:?}, before {STALL:?}");
    server.wait_open_connections(0).await;

    let reply = good.get("/ping").await;
    assert_eq!(reply.status, StatusCode::OK);
    server.shutdown().await;
}

/// With a handshake deadline no test reaches, stalled clients stay mid-handshake for the whole
/// test: every good request is then served while all of them are open, so none waited for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_do_not_delay_other_clients() {
    const STALLERS: usize = 50;
    let server = https_server(PING, tls_a(NEVER, None)).await;
    let mut stallers = Vec::new();
    for _ in 0..STALLERS {
        stallers.push(stall(server.addr).await);
    }
    server.wait_open_connections(STALLERS).await;

    for alpn in [HTTP1, H2_FIRST, HTTP1, H2_FIRST, HTTP1] {
        let reply = Https::new(server.addr, trusting_test_ca(alpn))
            .get("/ping")
            .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert!(
        stallers.iter().all(still_open),
        "a staller was closed before its deadline"
    );
    assert!(server.app.open_connections() >= STALLERS);

    drop(stallers);
    server.wait_open_connections(0).await;
    server.shutdown().await;
}

/// A connection mid-handshake holds one of `max_connections` slots, but only until the handshake
/// deadline: with every slot taken by stallers, a good client gets in when the first is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_hold_connection_slots_only_until_the_timeout() {
    let toml = PING.replace("[server]\n", "[server]\nmax_connections = 2\n");
    let server = https_server(&toml, tls_a(STALL, None)).await;
    let opened = Instant::now();
    let stallers = [stall(server.addr).await, stall(server.addr).await];
    server.wait_open_connections(2).await;

    // The kernel completes the TCP connect (backlog); the TLS handshake waits for a free slot.
    let reply = Https::new(server.addr, trusting_test_ca(HTTP1))
        .get("/ping")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let served_after = opened.elapsed();
    assert!(
        served_after >= STALL,
        "served after {served_after:?}: a slot was free before any handshake deadline"
    );
    for staller in stallers {
        assert!(read_to_close(staller).await.is_empty());
    }
    server.wait_open_connections(0).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redirect_listener_answers_308_to_the_same_host_and_path_on_https() {
    let server = TestServer::launch(PING)
        .light(&TrafficLight::fixed(Light::Green))
        .tls(tls_a(NEVER, Some(600)))
        .redirect()
        .start()
        .await;
    let redirect = server.redirect.unwrap();
    let plain = Client { addr: redirect };
    let https_port = server.addr.port();

    let cases = [
        (
            format!("127.0.0.1:{}", redirect.port()),
            "/ping?y=1",
            "127.0.0.1",
        ),
        ("fiddler.test".to_string(), "/x?y=1", "fiddler.test"),
        ("fiddler.test:80".to_string(), "/status", "fiddler.test"),
        ("[::1]:8080".to_string(), "/a/b?c=d&e", "[::1]"),
    ];
    for (host, path, location_host) in cases {
        let mut req = request("GET", path, "");
        req.headers_mut().insert(HOST, host.parse().unwrap());
        let reply = plain.send(req).await;
        assert_eq!(reply.status, StatusCode::PERMANENT_REDIRECT, "Host {host}");
        assert_eq!(
            reply.header("location"),
            Some(format!("https://{location_host}:{https_port}{path}")),
            "Host {host}"
        );
        // HSTS is for HTTPS responses only (RFC 6797 7.2).
        assert_eq!(reply.header("strict-transport-security"), None);
    }

    // Following the first redirect: the certificate is valid for 127.0.0.1, the path is served.
    let mut req = request("GET", "/ping?y=1", "");
    let host = format!("127.0.0.1:{}", redirect.port());
    req.headers_mut().insert(HOST, host.parse().unwrap());
    let location = plain.send(req).await.header("location").unwrap();
    let uri: hyper::Uri = location.parse().unwrap();
    assert_eq!(
        (uri.scheme_str(), uri.port_u16()),
        (Some("https"), Some(https_port))
    );
    let followed = Https::new(server.addr, trusting_test_ca(H2_FIRST))
        .named(uri.host().unwrap())
        .get(uri.path_and_query().unwrap().as_str())
        .await;
    assert_eq!(
        (followed.status, followed.text()),
        (StatusCode::OK, "pong\n".into())
    );

    // Without a usable Host there is nowhere to send the client.
    for head in [
        "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: user@fiddler.test\r\nConnection: close\r\n\r\n",
    ] {
        let answer = plain.raw(head.as_bytes()).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 400"), "{head:?}:\n{text}");
    }
    server.shutdown().await;
}

/// `path` as a TOML literal string.
fn toml_path(path: &Path) -> String {
    let text = path.display().to_string();
    assert!(!text.contains('\''), "{text}");
    format!("'{text}'")
}

/// Copy fixture `from` over `to` (in place, as an operator's deploy would).
fn install(from: &str, to: &Path) {
    std::fs::copy(fixture(from), to).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_for_new_connections_only() {
    let dir = TempDir::new("tls-reload");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    install("a.pem", &cert);
    install("a.key", &key);
    let config = dir.write(
        "serve.toml",
        &format!(
            "{PING}\n[server.tls]\ncert = {}\nkey = {}\n",
            toml_path(&cert),
            toml_path(&key)
        ),
    );
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let listen = addr.to_string();
    let mut binary = Binary::start(&["--config", config.to_str().unwrap(), "--listen", &listen]);
    binary.wait_listening(addr).await;
    let https = Https::new(addr, trusting_test_ca(HTTP1));
    let (a, b) = (leaf_der("a.pem"), leaf_der("b.pem"));

    // Opened before any reload, kept open (HTTP/1.1 keep-alive over TLS) throughout.
    let mut kept = https.connect().await;
    assert_eq!(kept.peer, a);
    assert_eq!(kept.get("/ping").await.text(), "pong\n");
    let resuming = Https::new(addr, trusting_test_ca_resuming(HTTP1));
    let mut first = resuming.connect().await;
    assert_eq!(first.peer, a);
    assert_eq!(first.get("/ping").await.text(), "pong\n");
    drop(first);

    install("b.pem", &cert);
    install("b.key", &key);
    binary.signal(Signal::SIGHUP);
    let line = binary.wait_logged("certificate reloaded").await;
    assert_eq!(
        log_field(&line, "fingerprint"),
        Some(fingerprint(&b)),
        "{line}"
    );
    let mut fresh = https.connect().await;
    assert_eq!(fresh.peer, b, "a new connection sees the new certificate");
    assert_eq!(fresh.get("/ping").await.text(), "pong\n");
    assert_eq!(
        kept.get("/ping").await.text(),
        "pong\n",
        "the old connection serves on"
    );
    // A client resuming a session made before the reload is not shown a certificate at all: rustls
    // keeps its session cache (256 sessions, 24 h) across the reload, so the session still stands
    // on A. It is served; only full handshakes are promised the new certificate.
    let mut resumed = resuming.connect().await;
    assert_eq!(resumed.get("/ping").await.text(), "pong\n");

    std::fs::write(&cert, "garbage\n").unwrap();
    std::fs::write(&key, "garbage\n").unwrap();
    binary.signal(Signal::SIGHUP);
    let line = binary.wait_logged("certificate reload refused").await;
    assert!(
        line.contains("cert.pem"),
        "the refusal names the file: {line}"
    );
    let mut after = https.connect().await;
    assert_eq!(
        after.peer, b,
        "a refused reload keeps the current certificate"
    );
    assert_eq!(after.get("/ping").await.text(), "pong\n");
    assert_eq!(fresh.get("/ping").await.text(), "pong\n");
    assert_eq!(kept.get("/ping").await.text(), "pong\n");
    assert_eq!(binary.count_logged("certificate reloaded"), 1);

    drop((kept, fresh, after));
    let status = binary.stop().await;
    assert!(status.success(), "exit {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_serves_a_client_that_pins_the_logged_fingerprint() {
    let dir = TempDir::new("tls-self-signed");
    let config = dir.write("serve.toml", PING);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let listen = addr.to_string();
    let mut binary = Binary::start(&[
        "--config",
        config.to_str().unwrap(),
        "--listen",
        &listen,
        "--self-signed",
    ]);
    let line = binary
        .wait_logged("self-signed certificate generated")
        .await;
    let pinned = log_field(&line, "fingerprint").unwrap_or_default();
    assert_eq!(pinned.len(), 32 * 3 - 1, "a SHA-256 fingerprint: {line}");
    binary.wait_listening(addr).await;

    // Nobody signed it: a client verifying against a CA refuses it.
    let refused = Https::new(addr, trusting_test_ca(H2_FIRST))
        .handshake()
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(
        refused.to_string().contains("invalid peer certificate"),
        "{refused}"
    );
    // Pinning another certificate's fingerprint fails too.
    let wrong = Https::new(addr, pinning(&fingerprint(&leaf_der("a.pem")), H2_FIRST))
        .handshake()
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(wrong.to_string().contains("is not the pinned"), "{wrong}");

    for alpn in [H2_FIRST, HTTP1] {
        let mut conn = Https::new(addr, pinning(&pinned, alpn)).connect().await;
        assert_eq!(fingerprint(&conn.peer), pinned);
        let reply = conn.get("/ping").await;
        assert_eq!(
            (reply.status, reply.text()),
            (StatusCode::OK, "pong\n".into())
        );
    }

    // SIGHUP has no files to read again: the same certificate keeps serving.
    binary.signal(Signal::SIGHUP);
    binary.wait_logged("config reloaded").await;
    let mut conn = Https::new(addr, pinning(&pinned, HTTP1)).connect().await;
    assert_eq!(conn.get("/ping").await.status, StatusCode::OK);
    drop(conn);

    let status = binary.stop().await;
    assert!(status.success(), "exit {status}");
}
