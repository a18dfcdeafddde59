//! Run with `cargo run --release --example bare_hyper_proxy -- --upstream 127.0.0.1:PORT`.
//!
//! The floor of the proxy hop benchmark (`benches/proxy.sh`, server `hyperproxy`): the least a
//! proxy built on hyper 1's server and client, as fiddler_crab's upstream endpoints are, can do
//! per request. No routing, no queue, no slot limit, no header rewrite, no deadline, no counters,
//! no log: each client connection gets an upstream connection of its own (opened on its first
//! request, reopened if it fails), the request goes up as it came in and the upstream's answer
//! comes back as it is. The server side is configured as `examples/bare_hyper.rs` and
//! fiddler_crab's accept loop configure it, on the same runtime. `--legacy` sends through
//! hyper-util's pooled `legacy::Client` instead, the stock way to proxy with hyper. It prints
//! `bare_hyper_proxy listening on ADDR` on stdout and stops by itself on SIGINT/SIGTERM or after
//! `--max-seconds`. Loopback addresses only. See `docs/BENCHMARKS.md` section 15.

#[path = "shared/hyper_server.rs"]
mod hyper_server;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// A bare hyper-to-hyper proxy, the floor for `benches/proxy.sh`.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on (loopback only; port 0 for any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The upstream's address (loopback only).
    #[arg(long)]
    upstream: SocketAddr,
    /// Send through hyper-util's pooled legacy client instead of one connection per client.
    #[arg(long)]
    legacy: bool,
    /// Use the server builder's defaults instead of fiddler_crab's settings.
    #[arg(long)]
    plain: bool,
    /// Spin this many nanoseconds of user-space CPU per request before sending it on: a stand-in
    /// for a proxy's own work, to see what more work per request does to the hop as a whole.
    #[arg(long, default_value_t = 0)]
    spin_ns: u64,
    /// Stop by itself after this many seconds.
    #[arg(long, default_value_t = 600)]
    max_seconds: u64,
}

type Answer = Response<Either<Incoming, Full<Bytes>>>;

fn bad_gateway() -> Answer {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(
        b"upstream unavailable\n",
    ))));
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp
}

/// An upstream connection of this client connection's own: opened on first use, dropped when it
/// fails so that the next request opens another.
async fn dedicated(
    link: Arc<Mutex<Option<SendRequest<Incoming>>>>,
    upstream: SocketAddr,
    req: Request<Incoming>,
) -> Answer {
    let mut link = link.lock().await;
    if link.as_ref().is_none_or(|s| s.is_closed()) {
        let Ok(stream) = tokio::net::TcpStream::connect(upstream).await else {
            return bad_gateway();
        };
        let _ = stream.set_nodelay(true);
        let Ok((sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        else {
            return bad_gateway();
        };
        tokio::spawn(conn);
        *link = Some(sender);
    }
    let Some(sender) = link.as_mut() else {
        return bad_gateway();
    };
    if sender.ready().await.is_err() {
        *link = None;
        return bad_gateway();
    }
    match sender.send_request(req).await {
        Ok(resp) => resp.map(Either::Left),
        Err(_) => {
            *link = None;
            bad_gateway()
        }
    }
}

async fn pooled(
    client: Client<HttpConnector, Incoming>,
    upstream: SocketAddr,
    mut req: Request<Incoming>,
) -> Answer {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let Ok(uri) = format!("http://{upstream}{path}").parse() else {
        return bad_gateway();
    };
    *req.uri_mut() = uri;
    match client.request(req).await {
        Ok(resp) => resp.map(Either::Left),
        Err(_) => bad_gateway(),
    }
}

/// Busy for `ns` nanoseconds of this thread's time (`--spin-ns`).
fn spin(ns: u64) {
    if ns == 0 {
        return;
    }
    let start = std::time::Instant::now();
    let ns = Duration::from_nanos(ns);
    while start.elapsed() < ns {
        std::hint::spin_loop();
    }
}

async fn serve(listener: tokio::net::TcpListener, args: Args) {
    let Args {
        upstream,
        legacy,
        plain,
        spin_ns,
        ..
    } = args;
    let builder = Arc::new(hyper_server::builder(plain));
    let client = Client::builder(TokioExecutor::new()).build_http::<Incoming>();
    loop {
        let stream = hyper_server::accept(&listener).await;
        let builder = builder.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let io = TokioIo::new(stream);
            if legacy {
                let service = service_fn(move |req| {
                    let client = client.clone();
                    spin(spin_ns);
                    async move { Ok::<_, std::convert::Infallible>(pooled(client, upstream, req).await) }
                });
                let _ = builder.serve_connection(io, service).await;
            } else {
                let link = Arc::new(Mutex::new(None));
                let service = service_fn(move |req| {
                    let link = link.clone();
                    spin(spin_ns);
                    async move {
                        Ok::<_, std::convert::Infallible>(dedicated(link, upstream, req).await)
                    }
                });
                let _ = builder.serve_connection(io, service).await;
            }
        });
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (listen, max_seconds) = (args.listen, args.max_seconds);
    if !args.listen.ip().is_loopback() || !args.upstream.ip().is_loopback() {
        bail!(
            "bare_hyper_proxy works on loopback addresses only, not {} and {}",
            args.listen,
            args.upstream
        );
    }
    // The same runtime as `src/main.rs`: multi-thread, one worker per CPU the process may use.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot bind {listen}"))?;
        let addr = listener.local_addr()?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "bare_hyper_proxy listening on {addr}")?;
        out.flush()?;
        drop(out);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            () = serve(listener, args) => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            () = tokio::time::sleep(Duration::from_secs(max_seconds)) => {}
        }
        Ok(())
    })
}
