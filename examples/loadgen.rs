//! Run with `cargo run --release --example loadgen -- --addr 127.0.0.1:PORT --path /sleep100 --rate 50 --duration 10`.
//!
//! An open-loop loopback load generator for the flood benchmark. Request `i` is scheduled at
//! `start + i / rate`, whatever happened to the ones before it, each on a fresh connection
//! (HTTP/1.1, one request, closed by the client once the response is read; `--connection-close`
//! sends that header too), and its latency is measured from that *scheduled* time, so a slow
//! server cannot hide its slowness by slowing the generator (no coordinated omission). Each request ends as one of: a status (`200` = admitted and completed), closed with
//! zero response bytes (ignored overflow), a connect error, a broken exchange, or the client's own
//! timeout (it leaves: the connection is closed). Everything is bounded: `rate × duration`
//! requests, each with `--timeout`, and the whole run ends by itself.
//!
//! With `--server-pid` it also samples the server's CPU time and RSS (`/proc`) before and after,
//! polls `GET /status` after the last send until the endpoint is idle (drain time), and reads the
//! endpoint's counters; with `--job-log` it matches `bench_server`'s job log to its requests by
//! client port and counts jobs that started after their client had left. With `--rows` it prints
//! the two markdown table rows `benches/flood.sh` collects (`TABLE1 |…` and `TABLE2 |…`);
//! `--headers` prints their headers. Loopback addresses only. See `docs/BENCHMARKS.md`.

use anyhow::{bail, Context};
use clap::Parser;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// An open-loop loopback load generator.
#[derive(Debug, Parser)]
struct Args {
    /// Server address (loopback only).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Request path; also the endpoint whose `/status` line is read.
    #[arg(long, default_value = "/sleep100")]
    path: String,
    /// Request method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Requests per second, sent open-loop.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds a request may take from its scheduled send time before the client gives up (leaves).
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// Server process to sample (CPU, RSS) and poll (`/status`, drain time).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100)]
    clk_tck: u64,
    /// Endpoint capacity in requests per second, for the goodput ratio.
    #[arg(long, default_value_t = 10.0)]
    capacity_rps: f64,
    /// Latency bar for admitted requests, in ms (`(queue + 1) × job time`).
    #[arg(long, default_value_t = 2100.0)]
    bar_ms: f64,
    /// Row label (for example `50×`).
    #[arg(long, default_value = "")]
    label: String,
    /// Print the two markdown rows for `benches/flood.sh`.
    #[arg(long)]
    rows: bool,
    /// Print the markdown headers of those rows and exit.
    #[arg(long)]
    headers: bool,
    /// Send `Connection: close` with each request (the default sends none: the client closes
    /// after reading the response).
    #[arg(long)]
    connection_close: bool,
    /// Seconds to wait for the endpoint to drain after the last send, at most.
    #[arg(long, default_value_t = 120.0)]
    drain_limit: f64,
    /// Write one CSV line per request here: scheduled offset, outcome, latency (ms).
    #[arg(long)]
    dump: Option<std::path::PathBuf>,
    /// `bench_server --job-log` file of this run: count the jobs that started after their client
    /// had left.
    #[arg(long)]
    job_log: Option<std::path::PathBuf>,
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A response with this status.
    Status(u16),
    /// The server closed the connection without sending a byte (orderly close).
    ClosedEmpty,
    /// The connection was reset before a byte arrived.
    ResetEmpty,
    /// Connecting failed.
    ConnectError,
    /// The exchange broke after some bytes, or the response was not HTTP.
    Broken,
    /// The client gave up at `--timeout` (it left).
    ClientTimeout,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    outcome: Outcome,
    /// From the scheduled send time to the end of the response (or of the failure).
    latency: Duration,
    /// From the moment the task began connecting to the end of the response: `latency` less the
    /// generator's own lag.
    from_send: Duration,
    /// When the request ended.
    ended: Instant,
    /// When it was due.
    scheduled: Instant,
    /// The client's local port (0 if it never connected).
    port: u16,
    /// Wall clock when the request was sent and when it ended, in µs since the Unix epoch.
    sent_us: u128,
    ended_us: u128,
}

/// Everything `/status` says about the endpoint that the report needs.
#[derive(Debug, Clone, Copy, Default)]
struct EndpointView {
    queue_depth: u64,
    queue_capacity: u64,
    busy: bool,
    job_time_ms: f64,
    admitted: u64,
    completed: u64,
    failed: u64,
    timed_out: u64,
    skipped: u64,
    overflowed: u64,
}

#[derive(Debug, Clone, Copy)]
struct ProcSample {
    user_s: f64,
    sys_s: f64,
    rss_kib: u64,
}

impl ProcSample {
    fn cpu_s(&self) -> f64 {
        self.user_s + self.sys_s
    }
}

const TABLE1_HEADER: &str = "| load | offered rps | sent | 200 | goodput in window rps (% of cap) | goodput total rps (% of cap) | overflow: server / zero-byte closes | 503 / 504 / other / conn err / client left | admitted p50 ms | admitted p99 ms | max ms | p99 from actual send ms | p99 ÷ bar | p99 ÷ (queue+1) × measured job |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";
const TABLE2_HEADER: &str = "| load | server CPU s (user + sys) | CPU s per 10k overflow | RSS before → after MiB | drain after last send ms | server: admitted / completed / skipped / timed out / failed | completed − client 200s (ran, nobody read) | jobs started after their client left, of jobs run | job time ms (server avg) | generator lag max ms |\n|---|---|---|---|---|---|---|---|---|---|";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.headers {
        println!("TABLE1 {}", TABLE1_HEADER.replace('\n', "\nTABLE1 "));
        println!("TABLE2 {}", TABLE2_HEADER.replace('\n', "\nTABLE2 "));
        return Ok(());
    }
    if !args.addr.ip().is_loopback() {
        bail!("loadgen targets loopback addresses only, not {}", args.addr);
    }
    let within = |v: f64, max: f64| v > 0.0 && v <= max;
    if !within(args.rate, 100_000.0) || !within(args.duration, 3600.0) {
        bail!("--rate must be in (0, 100000] and --duration in (0, 3600] seconds");
    }
    if !within(args.timeout, 3600.0) || !within(args.drain_limit, 3600.0) {
        bail!("--timeout and --drain-limit must be in (0, 3600] seconds");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let close = if args.connection_close {
        "Connection: close\r\n"
    } else {
        ""
    };
    let request: Arc<[u8]> = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\n{close}\r\n",
        args.method, args.path, args.addr
    )
    .into_bytes()
    .into();
    let timeout = Duration::from_secs_f64(args.timeout);
    let duration = Duration::from_secs_f64(args.duration);
    let count = (args.rate * args.duration).round() as u64;

    let before = match args.server_pid {
        Some(pid) => Some(sample(pid, args.clk_tck)?),
        None => None,
    };

    // Open loop: request i goes at start + i / rate, whatever the others are doing.
    let start = Instant::now() + Duration::from_millis(20);
    let window_end = start + duration;
    let mut tasks = JoinSet::new();
    let mut lag_max = Duration::ZERO;
    for i in 0..count {
        let scheduled = start + Duration::from_secs_f64(i as f64 / args.rate);
        tokio::time::sleep_until(scheduled.into()).await;
        lag_max = lag_max.max(scheduled.elapsed());
        let (addr, request) = (args.addr, request.clone());
        tasks.spawn(one_request(addr, request, scheduled, timeout));
    }

    // Drain: from the end of the send window until the endpoint is idle, by its own /status.
    let drain = match args.server_pid {
        Some(_) => Some(
            wait_drained(
                args.addr,
                &args.path,
                window_end,
                Duration::from_secs_f64(args.drain_limit),
            )
            .await,
        ),
        None => None,
    };

    let mut records = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let hard_stop =
        tokio::time::sleep_until((window_end + timeout + Duration::from_secs(5)).into());
    tokio::pin!(hard_stop);
    loop {
        tokio::select! {
            next = tasks.join_next() => match next {
                Some(Ok(record)) => records.push(record),
                Some(Err(e)) => bail!("a request task failed: {e}"),
                None => break,
            },
            () = &mut hard_stop => {
                tasks.abort_all();
                bail!("requests still open past the run limit");
            }
        }
    }

    let (after, view) = match args.server_pid {
        Some(pid) => (
            Some(sample(pid, args.clk_tck)?),
            Some(endpoint_view(args.addr, &args.path).await?),
        ),
        None => (None, None),
    };
    if let Some(path) = &args.dump {
        dump(path, &records, start)?;
    }
    let audit = match &args.job_log {
        Some(path) => Some(audit_jobs(path, &records)?),
        None => None,
    };
    let mut report = Report::new(&records, start, window_end, lag_max);
    report.audit = audit;
    report.print_human(&args, before, after, view, drain);
    if args.rows {
        report.print_rows(&args, before, after, view, drain);
    }
    Ok(())
}

async fn one_request(
    addr: SocketAddr,
    request: Arc<[u8]>,
    scheduled: Instant,
    timeout: Duration,
) -> Record {
    let sent = Instant::now();
    let sent_us = unix_us();
    let port = AtomicU16::new(0);
    let outcome = tokio::time::timeout_at(
        (scheduled + timeout).into(),
        exchange(addr, &request, &port),
    )
    .await
    .map(|r| r.0)
    .unwrap_or(Outcome::ClientTimeout);
    // Leaving: the connection is dropped (closed) here, when the timeout dropped `exchange`.
    let ended = Instant::now();
    Record {
        outcome,
        latency: ended.saturating_duration_since(scheduled),
        from_send: ended.saturating_duration_since(sent),
        ended,
        scheduled,
        port: port.load(Ordering::Relaxed),
        sent_us,
        ended_us: unix_us(),
    }
}

fn unix_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

/// Jobs of a `bench_server --job-log` matched to this run's requests by client port.
#[derive(Debug, Default, Clone, Copy)]
struct JobAudit {
    /// Jobs in the log.
    jobs: usize,
    /// Jobs matched to a request of this run.
    matched: usize,
    /// Jobs whose client had left before the job started: work nobody waited for.
    started_after_left: usize,
    /// Jobs whose client left while the job ran.
    left_while_running: usize,
    /// Largest gap between the client leaving and its job starting, in ms.
    worst_gap_ms: f64,
}

fn audit_jobs(path: &std::path::Path, records: &[Record]) -> anyhow::Result<JobAudit> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut by_port: HashMap<u16, Vec<&Record>> = HashMap::new();
    for r in records.iter().filter(|r| r.port != 0) {
        by_port.entry(r.port).or_default().push(r);
    }
    let mut audit = JobAudit::default();
    for line in text.lines() {
        let mut f = line.split_whitespace().map(str::parse::<u128>);
        let (Some(Ok(port)), Some(Ok(start)), Some(Ok(end))) = (f.next(), f.next(), f.next())
        else {
            continue;
        };
        audit.jobs += 1;
        // The request on that port that was sent last before the job started.
        let Some(rec) = u16::try_from(port)
            .ok()
            .and_then(|p| by_port.get(&p))
            .and_then(|rs| {
                rs.iter()
                    .filter(|r| r.sent_us <= start)
                    .max_by_key(|r| r.sent_us)
            })
        else {
            continue;
        };
        audit.matched += 1;
        if rec.outcome != Outcome::ClientTimeout {
            continue;
        }
        if rec.ended_us < start {
            audit.started_after_left += 1;
            audit.worst_gap_ms = audit.worst_gap_ms.max((start - rec.ended_us) as f64 / 1e3);
        } else if rec.ended_us < end {
            audit.left_while_running += 1;
        }
    }
    Ok(audit)
}

/// One CSV line per request, in schedule order.
fn dump(path: &std::path::Path, records: &[Record], start: Instant) -> anyhow::Result<()> {
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| r.scheduled);
    let mut out = String::from("scheduled_ms,outcome,latency_ms\n");
    for r in sorted {
        let outcome = match r.outcome {
            Outcome::Status(code) => code.to_string(),
            other => format!("{other:?}"),
        };
        out.push_str(&format!(
            "{:.1},{outcome},{:.1}\n",
            r.scheduled.saturating_duration_since(start).as_secs_f64() * 1e3,
            r.latency.as_secs_f64() * 1e3
        ));
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

/// One request on a fresh connection; the response bytes come back with the outcome.
async fn exchange(addr: SocketAddr, request: &[u8], port: &AtomicU16) -> (Outcome, Vec<u8>) {
    let mut stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(_) => return (Outcome::ConnectError, Vec::new()),
    };
    if let Ok(local) = stream.local_addr() {
        port.store(local.port(), Ordering::Relaxed);
    }
    let _ = stream.set_nodelay(true);
    if stream.write_all(request).await.is_err() {
        return (Outcome::ResetEmpty, Vec::new());
    }
    // Never shut down our write side: a half-closed client looks gone to the server.
    let mut buf = Vec::with_capacity(1024);
    loop {
        match stream.read_buf(&mut buf).await {
            Ok(0) => break,
            Ok(_) if response_complete(&buf) => break,
            Ok(_) => {}
            Err(_) if buf.is_empty() => return (Outcome::ResetEmpty, buf),
            Err(_) => return (Outcome::Broken, buf),
        }
        if buf.len() > 16 << 20 {
            return (Outcome::Broken, buf);
        }
    }
    if buf.is_empty() {
        return (Outcome::ClosedEmpty, buf);
    }
    match status_code(&buf) {
        Some(code) => (Outcome::Status(code), buf),
        None => (Outcome::Broken, buf),
    }
}

fn header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// True once the head and `Content-Length` bytes of body have arrived.
fn response_complete(buf: &[u8]) -> bool {
    let Some(end) = header_end(buf) else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    length.is_some_and(|len| buf.len() - end >= len)
}

fn status_code(buf: &[u8]) -> Option<u16> {
    let line = buf.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

fn body(buf: &[u8]) -> &[u8] {
    header_end(buf).map_or(&[][..], |end| &buf[end..])
}

/// The endpoint's line of `GET /status`.
async fn endpoint_view(addr: SocketAddr, path: &str) -> anyhow::Result<EndpointView> {
    let request = format!("GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let (outcome, buf) = tokio::time::timeout(
        Duration::from_secs(10),
        exchange(addr, request.as_bytes(), &AtomicU16::new(0)),
    )
    .await
    .context("GET /status timed out")?;
    if outcome != Outcome::Status(200) {
        bail!("GET /status: {outcome:?}");
    }
    let doc: serde_json::Value = serde_json::from_slice(body(&buf)).context("GET /status: JSON")?;
    let ep = &doc["endpoints"][path];
    if ep.is_null() {
        bail!("GET /status has no endpoint {path}");
    }
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let c = &ep["counters"];
    Ok(EndpointView {
        queue_depth: n(&ep["queue_depth"]),
        queue_capacity: n(&ep["queue_capacity"]),
        busy: ep["busy"].as_bool().unwrap_or(false),
        job_time_ms: ep["job_time_ms"].as_f64().unwrap_or(f64::NAN),
        admitted: n(&c["admitted"]),
        completed: n(&c["completed"]),
        failed: n(&c["failed"]),
        timed_out: n(&c["timed_out"]),
        skipped: n(&c["skipped"]),
        overflowed: n(&c["overflowed"]),
    })
}

/// Poll `/status` from `window_end` until the endpoint has nothing queued and nothing running on two
/// polls in a row; the drain time is from `window_end` to the first of them.
async fn wait_drained(
    addr: SocketAddr,
    path: &str,
    window_end: Instant,
    limit: Duration,
) -> Option<Duration> {
    tokio::time::sleep_until(window_end.into()).await;
    let mut idle_since: Option<Instant> = None;
    while window_end.elapsed() < limit {
        let at = Instant::now();
        match endpoint_view(addr, path).await {
            Ok(v) if v.queue_depth == 0 && !v.busy => match idle_since {
                Some(first) => return Some(first.saturating_duration_since(window_end)),
                None => idle_since = Some(at),
            },
            _ => idle_since = None,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

fn sample(pid: u32, clk_tck: u64) -> anyhow::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name's closing parenthesis start at field 3 (state); utime and
    // stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(i)
            .context("short /proc/PID/stat")?
            .parse::<u64>()?)
    };
    let per_s = clk_tck.max(1) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(ProcSample {
        user_s: tick(11)? as f64 / per_s,
        sys_s: tick(12)? as f64 / per_s,
        rss_kib,
    })
}

/// Nearest-rank percentile of sorted `values`, in ms.
fn percentile_ms(values: &[Duration], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    let i = rank.clamp(1, values.len()) - 1;
    values.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

/// What the client saw.
#[derive(Debug, Default)]
struct Report {
    sent: usize,
    ok: usize,
    ok_in_window: usize,
    s503: usize,
    s504: usize,
    other_status: usize,
    closed_empty: usize,
    reset_empty: usize,
    connect_error: usize,
    broken: usize,
    client_timeout: usize,
    /// Latencies of the 200s from their scheduled send, sorted.
    ok_latencies: Vec<Duration>,
    /// Latencies of the 200s from their actual send, sorted.
    ok_from_send: Vec<Duration>,
    /// From the start to the last 200.
    ok_span: Duration,
    lag_max: Duration,
    /// Jobs matched against the server's job log.
    audit: Option<JobAudit>,
}

impl Report {
    fn new(records: &[Record], start: Instant, window_end: Instant, lag_max: Duration) -> Report {
        let mut r = Report {
            sent: records.len(),
            lag_max,
            ..Report::default()
        };
        for rec in records {
            match rec.outcome {
                Outcome::Status(200) => {
                    r.ok += 1;
                    r.ok_latencies.push(rec.latency);
                    r.ok_from_send.push(rec.from_send);
                    if rec.ended <= window_end {
                        r.ok_in_window += 1;
                    }
                    r.ok_span = r.ok_span.max(rec.ended.saturating_duration_since(start));
                }
                Outcome::Status(503) => r.s503 += 1,
                Outcome::Status(504) => r.s504 += 1,
                Outcome::Status(_) => r.other_status += 1,
                Outcome::ClosedEmpty => r.closed_empty += 1,
                Outcome::ResetEmpty => r.reset_empty += 1,
                Outcome::ConnectError => r.connect_error += 1,
                Outcome::Broken => r.broken += 1,
                Outcome::ClientTimeout => r.client_timeout += 1,
            }
        }
        r.ok_latencies.sort_unstable();
        r.ok_from_send.sort_unstable();
        r
    }

    /// Nearest-rank percentile of the 200s' latencies from their scheduled send, in ms.
    fn percentile_ms(&self, p: f64) -> f64 {
        percentile_ms(&self.ok_latencies, p)
    }

    fn goodput_window(&self, args: &Args) -> f64 {
        self.ok_in_window as f64 / args.duration
    }

    fn goodput_total(&self) -> f64 {
        if self.ok_span.is_zero() {
            return 0.0;
        }
        self.ok as f64 / self.ok_span.as_secs_f64()
    }

    fn print_human(
        &self,
        args: &Args,
        before: Option<ProcSample>,
        after: Option<ProcSample>,
        view: Option<EndpointView>,
        drain: Option<Option<Duration>>,
    ) {
        println!(
            "loadgen {} {}{} at {} rps for {} s (timeout {} s): sent {}",
            args.method, args.addr, args.path, args.rate, args.duration, args.timeout, self.sent
        );
        println!(
            "  200: {} ({} within the send window); 503: {}; 504: {}; other status: {}",
            self.ok, self.ok_in_window, self.s503, self.s504, self.other_status
        );
        println!(
            "  closed with zero bytes: {} (+{} reset before a byte); connect errors: {}; broken: {}; client left (timeout): {}",
            self.closed_empty, self.reset_empty, self.connect_error, self.broken, self.client_timeout
        );
        println!(
            "  goodput: {:.2} rps in the window, {:.2} rps overall ({:.1}% / {:.1}% of {} rps capacity)",
            self.goodput_window(args),
            self.goodput_total(),
            100.0 * self.goodput_window(args) / args.capacity_rps,
            100.0 * self.goodput_total() / args.capacity_rps,
            args.capacity_rps
        );
        println!(
            "  admitted latency from scheduled send: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (bar {} ms); p99 from actual send {:.1} ms",
            self.percentile_ms(50.0),
            self.percentile_ms(99.0),
            self.percentile_ms(100.0),
            args.bar_ms,
            percentile_ms(&self.ok_from_send, 99.0),
        );
        println!(
            "  generator lag (latest send behind schedule): {:.2} ms",
            self.lag_max.as_secs_f64() * 1e3
        );
        if let (Some(b), Some(a)) = (before, after) {
            println!(
                "  server CPU {:.2} s during the run (user {:.2} s, sys {:.2} s); RSS {} KiB -> {} KiB",
                a.cpu_s() - b.cpu_s(),
                a.user_s - b.user_s,
                a.sys_s - b.sys_s,
                b.rss_kib,
                a.rss_kib
            );
        }
        if let Some(d) = drain {
            match d {
                Some(d) => println!(
                    "  drained {:.0} ms after the last send",
                    d.as_secs_f64() * 1e3
                ),
                None => println!("  did not drain within the timeout"),
            }
        }
        if let Some(a) = self.audit {
            println!(
                "  job log: {} jobs, {} matched to requests; {} started after their client had left (worst {:.1} ms after), {} clients left while their job ran",
                a.jobs, a.matched, a.started_after_left, a.worst_gap_ms, a.left_while_running
            );
        }
        if let Some(v) = view {
            println!(
                "  server counters: admitted {} completed {} failed {} timed_out {} skipped {} overflowed {}; job time {:.2} ms",
                v.admitted, v.completed, v.failed, v.timed_out, v.skipped, v.overflowed, v.job_time_ms
            );
        }
    }

    fn print_rows(
        &self,
        args: &Args,
        before: Option<ProcSample>,
        after: Option<ProcSample>,
        view: Option<EndpointView>,
        drain: Option<Option<Duration>>,
    ) {
        let cap = args.capacity_rps;
        let p99 = self.percentile_ms(99.0);
        let overflow_server = view.map_or("?".to_string(), |v| v.overflowed.to_string());
        // The same bar with the job time the server measured instead of the nominal one.
        let measured_bar =
            view.filter(|v| v.job_time_ms.is_finite())
                .map_or("?".to_string(), |v| {
                    let bar = (v.queue_capacity + 1) as f64 * v.job_time_ms;
                    format!("{:.3} ({bar:.0} ms)", p99 / bar)
                });
        println!(
            "TABLE1 | {} | {:.0} | {} | {} | {:.2} ({:.1}%) | {:.2} ({:.1}%) | {} / {} | {} / {} / {} / {} / {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.3} | {} |",
            args.label,
            args.rate,
            self.sent,
            self.ok,
            self.goodput_window(args),
            100.0 * self.goodput_window(args) / cap,
            self.goodput_total(),
            100.0 * self.goodput_total() / cap,
            overflow_server,
            self.closed_empty + self.reset_empty,
            self.s503,
            self.s504,
            self.other_status + self.broken,
            self.connect_error,
            self.client_timeout,
            self.percentile_ms(50.0),
            p99,
            self.percentile_ms(100.0),
            percentile_ms(&self.ok_from_send, 99.0),
            p99 / args.bar_ms,
            measured_bar,
        );
        let cpu = match (before, after) {
            (Some(b), Some(a)) => Some(a.cpu_s() - b.cpu_s()),
            _ => None,
        };
        let cpu_split = match (before, after) {
            (Some(b), Some(a)) => format!(
                "{:.2} ({:.2} + {:.2})",
                a.cpu_s() - b.cpu_s(),
                a.user_s - b.user_s,
                a.sys_s - b.sys_s
            ),
            _ => "?".to_string(),
        };
        let cpu_per_10k = match (cpu, view) {
            (Some(c), Some(v)) if v.overflowed >= 100 => {
                format!("{:.3}", c * 10_000.0 / v.overflowed as f64)
            }
            _ => "n/a (< 100 overflowed)".to_string(),
        };
        let rss = match (before, after) {
            (Some(b), Some(a)) => format!(
                "{:.1} → {:.1}",
                b.rss_kib as f64 / 1024.0,
                a.rss_kib as f64 / 1024.0
            ),
            _ => "?".to_string(),
        };
        let drain = match drain {
            Some(Some(d)) => format!("{:.0}", d.as_secs_f64() * 1e3),
            Some(None) => "not drained".to_string(),
            None => "?".to_string(),
        };
        let (counters, ran_unread, job_ms) = match view {
            Some(v) => (
                format!(
                    "{} / {} / {} / {} / {}",
                    v.admitted, v.completed, v.skipped, v.timed_out, v.failed
                ),
                (v.completed as i64 - self.ok as i64).to_string(),
                format!("{:.2}", v.job_time_ms),
            ),
            None => ("?".to_string(), "?".to_string(), "?".to_string()),
        };
        let audit = self.audit.map_or("?".to_string(), |a| {
            format!(
                "{} of {} ({} left mid-run)",
                a.started_after_left, a.matched, a.left_while_running
            )
        });
        println!(
            "TABLE2 | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} |",
            args.label,
            cpu_split,
            cpu_per_10k,
            rss,
            drain,
            counters,
            ran_unread,
            audit,
            job_ms,
            self.lag_max.as_secs_f64() * 1e3,
        );
    }
}
