//! Run with `cargo run --release --example bench_server -- --config-text '<TOML>'` (or `--config FILE`).
//!
//! The flood benchmark's server: the library's [`fiddler_crab::Server`] with one extra builtin,
//! `sleep100`, that sleeps 100 ms and answers `200` (so a crab endpoint serving it has a capacity of
//! 10 requests per second). It binds the config's `listen` address (use port 0 for any free port),
//! prints `bench_server listening on ADDR` on stdout, and stops by itself on SIGINT/SIGTERM or after
//! `--max-seconds`. `--job-log FILE` records each job's client port and start/end times. Logs go to
//! stderr as the real binary's do (`RUST_LOG`, default `info`, access log as configured). Loopback
//! addresses only. See `docs/BENCHMARKS.md`.

use anyhow::{bail, Context};
use clap::Parser;
use common::handler::{Handler, HandlerError, JobRequest, JobResponse};
use fiddler_crab::config::Config;
use fiddler_crab::{HandlerRegistry, Server};
use hyper::Response;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long one `sleep100` job takes.
const JOB_TIME: Duration = Duration::from_millis(100);

/// The flood benchmark's server.
#[derive(Debug, Parser)]
struct Args {
    /// Config file to serve.
    #[arg(long, conflicts_with = "config_text")]
    config: Option<PathBuf>,
    /// Config given as TOML text.
    #[arg(long)]
    config_text: Option<String>,
    /// Stop by itself after this many seconds.
    #[arg(long, default_value_t = 600)]
    max_seconds: u64,
    /// Append one line per `sleep100` job here: client port, start and end (µs since the epoch).
    #[arg(long)]
    job_log: Option<PathBuf>,
}

/// Sleeps [`JOB_TIME`] on the executor thread, then answers `200 slept 100 ms`. With a job log,
/// it appends `CLIENT_PORT START_US END_US` (wall clock, microseconds since the Unix epoch) per job,
/// so `loadgen --job-log` can tell whether a job started after its client had left.
#[derive(Debug)]
struct Sleep100 {
    job_log: Option<Mutex<File>>,
}

fn unix_us(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros())
}

impl Handler for Sleep100 {
    fn handle(&self, req: &JobRequest) -> Result<JobResponse, HandlerError> {
        let start = SystemTime::now();
        std::thread::sleep(JOB_TIME);
        if let Some(log) = &self.job_log {
            let line = format!(
                "{} {} {}\n",
                req.remote_addr.port(),
                unix_us(start),
                unix_us(SystemTime::now())
            );
            let mut file = log.lock().unwrap_or_else(|p| p.into_inner());
            let _ = file.write_all(line.as_bytes());
        }
        Ok(Response::new("slept 100 ms\n".into()))
    }
}

fn load(args: &Args) -> anyhow::Result<Config> {
    let config = match (&args.config, &args.config_text) {
        (Some(path), None) => Config::from_file(path)?,
        (None, Some(text)) => Config::from_toml(text, "--config-text")?,
        _ => bail!("give exactly one of --config FILE or --config-text TOML"),
    };
    if !config.server.listen.ip().is_loopback() {
        bail!(
            "bench_server serves loopback addresses only, not {}",
            config.server.listen
        );
    }
    Ok(config)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Logging as the real binary does it (stderr, `RUST_LOG`, default `info`), so its cost counts.
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter: tracing_subscriber::filter::Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| spec.parse().ok())
        .unwrap_or_else(|| {
            tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO)
        });
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false),
        )
        .init();
    let config = load(&args)?;
    let mut registry = HandlerRegistry::default();
    let job_log = match &args.job_log {
        Some(path) => {
            Some(Mutex::new(File::create(path).with_context(|| {
                format!("cannot create {}", path.display())
            })?))
        }
        None => None,
    };
    registry.register("sleep100", Arc::new(Sleep100 { job_log }));
    let server = Server::build(&config, &registry)?;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot bind {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    // An admin listener, if configured, takes the probes; it lets the public listener's door
    // close while the queue is full.
    let admin = match config.server.admin_listen {
        Some(admin) => Some(
            tokio::net::TcpListener::bind(admin)
                .await
                .with_context(|| format!("cannot bind {admin}"))?,
        ),
        None => None,
    };
    let listeners = frontend::Listeners {
        admin,
        ..frontend::Listeners::main(listener)
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "bench_server listening on {addr}")?;
    out.flush()?;
    drop(out);

    let max = Duration::from_secs(args.max_seconds);
    server
        .run_all(listeners, async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => {
                        tokio::time::sleep(max).await;
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
                () = tokio::time::sleep(max) => {}
            }
        })
        .await;
    Ok(())
}
