//! Run with `cargo run --release --example h2_window -- --addr 127.0.0.1:PORT --server-pid PID`.
//!
//! The HTTP/2 "shut window" attack of issue 12 item 1, for `benches/h2_window.sh`: `--conns`
//! connections that set `SETTINGS_INITIAL_WINDOW_SIZE = 0`, never send WINDOW_UPDATE and answer
//! PINGs (h2 does), each opening `--streams` streams on `--path` (a large answer) and keeping every
//! response. Meanwhile a good client asks `--good-path` on a fresh HTTP/1.1 connection every
//! 100 ms. For `--hold` seconds it samples the server's RSS (`/proc/PID/status`); then it prints
//! one line: the RSS before and at its peak, the streams answered 200 / 503 / reset, the attack
//! connections the server closed, and the good client's answers and slowest answer. Loopback
//! only; ends by itself.

use clap::Parser;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The shut-window attack and a good client beside it.
#[derive(Debug, Parser)]
struct Args {
    /// Server address (loopback only).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// The large answer the attack asks for.
    #[arg(long, default_value = "/big")]
    path: String,
    /// What the good client asks for.
    #[arg(long, default_value = "/ping")]
    good_path: String,
    /// Attack connections.
    #[arg(long, default_value_t = 40)]
    conns: usize,
    /// Streams per attack connection.
    #[arg(long, default_value_t = 64)]
    streams: usize,
    /// Seconds the attack holds its streams (and the RSS is sampled).
    #[arg(long, default_value_t = 10)]
    hold: u64,
    /// The server's pid, for its RSS.
    #[arg(long)]
    server_pid: Option<u32>,
}

fn rss_kib(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The streams of one attack connection.
type Streams = Vec<h2::client::ResponseFuture>;

/// One attack connection: a task that ends when the server closes it, and its streams' answers.
async fn attack(args: &Args) -> anyhow::Result<(tokio::task::JoinHandle<()>, Streams)> {
    let tcp = TcpStream::connect(args.addr).await?;
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await?;
    let closed = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await?;
    let mut pending = Vec::new();
    for _ in 0..args.streams {
        let req = hyper::Request::get(format!("http://{}{}", args.addr, args.path)).body(())?;
        let (answer, _) = client.send_request(req, true)?;
        pending.push(answer);
        client = client.ready().await?;
    }
    Ok((closed, pending))
}

async fn good_request(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut tcp) = TcpStream::connect(addr).await else {
        return false;
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    if tcp.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out).await;
    out.starts_with(b"HTTP/1.1 200")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.addr.ip().is_loopback(), "loopback addresses only");
    let before = rss_kib(args.server_pid);
    let mut closed = Vec::new();
    let mut heads = Vec::new();
    for _ in 0..args.conns {
        let (conn, pending) = attack(&args).await?;
        closed.push(conn);
        for answer in pending {
            heads.push(tokio::spawn(answer));
        }
    }
    let end = Instant::now() + Duration::from_secs(args.hold);
    let (mut peak, mut good, mut good_ok, mut slowest) = (before, 0u32, 0u32, Duration::ZERO);
    while Instant::now() < end {
        let asked = Instant::now();
        let ok = tokio::time::timeout(
            Duration::from_secs(5),
            good_request(args.addr, &args.good_path),
        )
        .await
        .unwrap_or(false);
        slowest = slowest.max(asked.elapsed());
        good += 1;
        good_ok += u32::from(ok);
        peak = peak.max(rss_kib(args.server_pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut ok, mut refused, mut reset, mut kept) = (0, 0, 0, Vec::new());
    for head in heads {
        if !head.is_finished() {
            reset += 1;
            head.abort();
            continue;
        }
        match head.await {
            Ok(Ok(resp)) if resp.status() == 200 => {
                ok += 1;
                kept.push(resp);
            }
            Ok(Ok(_)) => refused += 1,
            _ => reset += 1,
        }
    }
    let server_closed = closed.iter().filter(|c| c.is_finished()).count();
    println!(
        "rss_before_kib={before} rss_peak_kib={peak} growth_mib={:.1} streams_200={ok} streams_503={refused} streams_reset_or_waiting={reset} attack_conns_closed={server_closed}/{} good={good_ok}/{good} good_slowest_ms={}",
        (peak.saturating_sub(before)) as f64 / 1024.0,
        args.conns,
        slowest.as_millis()
    );
    Ok(())
}
