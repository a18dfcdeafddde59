//! Run with `cargo run --release --example bare_hyper -- --listen 127.0.0.1:0`.
//!
//! The baseline of the `GET /ping` benchmark (`benches/ping.sh`): a bare hyper 1 server with no
//! routing, no queue, no counters and no traffic light. It answers every request with the same
//! bytes fiddler_crab's `ping` builtin sends (`200`, `text/plain; charset=utf-8`, `pong\n`), on the
//! same runtime (tokio multi-thread, as `src/main.rs` builds it) and the same hyper-util auto
//! builder configured as fiddler_crab's accept loop configures it (HTTP/1 header-read timer of
//! 10 s, 16 KiB head limit, no half-close, `TCP_NODELAY`), so the difference between the two is
//! what fiddler_crab does per request, not how hyper is set up. `--plain` uses the builder's
//! defaults instead. It prints `bare_hyper listening on ADDR` on stdout and stops by itself on
//! SIGINT/SIGTERM or after `--max-seconds`. Loopback addresses only. See `docs/BENCHMARKS.md`.
//!
//! As the upstream of the proxy benchmark's large bodies (`BODY=up:N` / `BODY=down:N` in
//! `benches/proxy.sh`): `--read-body` reads each request's whole body before its `pong`, and
//! `--answer-bytes N` answers every request with N bytes instead. The handler is chosen once, at
//! start, so the `pong` path is the same code with neither.
//!
//! As an HTTPS upstream (`UPSTREAM_TLS=true` in `benches/proxy.sh`): `--tls-cert CHAIN --tls-key
//! KEY` serves every connection in TLS (rustls, ALPN `http/1.1`, session resumption as rustls
//! does by default) before the same handler.

#[path = "shared/hyper_server.rs"]
mod hyper_server;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

/// A bare hyper hello-world server, the baseline for `benches/ping.sh`.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on (loopback only; port 0 for any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Stop by itself after this many seconds.
    #[arg(long, default_value_t = 600)]
    max_seconds: u64,
    /// Use the auto builder's defaults instead of fiddler_crab's settings.
    #[arg(long)]
    plain: bool,
    /// Read each request's whole body before answering.
    #[arg(long)]
    read_body: bool,
    /// Answer every request with this many bytes (`x`) instead of `pong`.
    #[arg(long)]
    answer_bytes: Option<usize>,
    /// Serve TLS with this certificate chain (PEM, leaf first); needs `--tls-key`.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

/// The answer to every request.
#[derive(Clone)]
enum Answer {
    Pong,
    ReadBodyThenPong,
    Bytes(Bytes),
}

async fn pong(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(pong_response())
}

fn pong_response() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(b"pong\n")));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// `pong`, after the whole body has been read.
async fn read_then_pong(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // A body that fails is the client's problem; the answer is the same.
    let _ = http_body_util::BodyExt::collect(req.into_body()).await;
    Ok(pong_response())
}

async fn serve(
    listener: tokio::net::TcpListener,
    builder: Builder<TokioExecutor>,
    answer: Answer,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let builder = std::sync::Arc::new(builder);
    loop {
        let stream = hyper_server::accept(&listener).await;
        let builder = builder.clone();
        let answer = answer.clone();
        match &tls {
            None => serve_one(TokioIo::new(stream), builder, answer),
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        serve_one(TokioIo::new(stream), builder, answer);
                    }
                });
            }
        }
    }
}

/// Serve one connection's requests with `answer`, on a task of its own.
fn serve_one<I>(io: TokioIo<I>, builder: std::sync::Arc<Builder<TokioExecutor>>, answer: Answer)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    match answer {
        Answer::Pong => {
            tokio::spawn(async move {
                let _ = builder.serve_connection(io, service_fn(pong)).await;
            });
        }
        Answer::ReadBodyThenPong => {
            tokio::spawn(async move {
                let _ = builder
                    .serve_connection(io, service_fn(read_then_pong))
                    .await;
            });
        }
        Answer::Bytes(bytes) => {
            tokio::spawn(async move {
                let service = service_fn(move |_req: Request<Incoming>| {
                    let bytes = bytes.clone();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(bytes))) }
                });
                let _ = builder.serve_connection(io, service).await;
            });
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        bail!(
            "bare_hyper serves loopback addresses only, not {}",
            args.listen
        );
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let answer = match (args.answer_bytes, args.read_body) {
        (Some(n), _) => Answer::Bytes(Bytes::from(vec![b'x'; n])),
        (None, true) => Answer::ReadBodyThenPong,
        (None, false) => Answer::Pong,
    };
    // The same runtime as `src/main.rs`: multi-thread, one worker per CPU the process may use.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot bind {}", args.listen))?;
        let addr = listener.local_addr()?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "bare_hyper listening on {addr}")?;
        out.flush()?;
        drop(out);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            () = serve(listener, hyper_server::builder(args.plain), answer, tls) => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            () = tokio::time::sleep(Duration::from_secs(args.max_seconds)) => {}
        }
        Ok(())
    })
}

/// A TLS acceptor for the chain in `cert` and its key in `key` (ALPN `http/1.1`).
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not PEM", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("no key in {}", key.display()))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}
