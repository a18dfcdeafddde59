//! The `fiddler_crab` binary: parse the command line, load the config, start logging, serve until
//! SIGTERM/SIGINT, map failures to exit codes (0 ok, 1 runtime failure, 2 bad config or usage).
//! SIGHUP reloads the config; SIGUSR2 restarts the worker processes one at a time.

use clap::Parser;
use cli::{Cli, Command, LogFormat};
use fiddler_crab::config::{Config, EndpointConfig, HandlerConfig};
use fiddler_crab::{
    check, check_files, default_config, default_config_text, worker_slots, HandlerRegistry,
    Reloader, Server,
};
use frontend::access::{self, AccessLog, AccessWriter};
use frontend::tls::{CertStore, DEFAULT_HANDSHAKE_TIMEOUT};
use frontend::{Listeners, Tls};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpSocket;
use tracing_subscriber::fmt::writer::{EitherWriter, MakeWriter};

mod cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::DefaultConfig) => {
            print!("{}", default_config_text());
            return ExitCode::SUCCESS;
        }
        Some(Command::Serve {
            print_config: true,
            routes,
        }) => {
            return match cli::serve_config_text(routes) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(message) => {
                    eprintln!("error: {message}");
                    ExitCode::from(2)
                }
            };
        }
        Some(Command::Check) => {
            return match load(&cli) {
                Ok((config, _)) => {
                    println!("ok: {config}");
                    ExitCode::SUCCESS
                }
                Err(message) => {
                    eprintln!("error: {message}");
                    ExitCode::from(2)
                }
            };
        }
        Some(Command::Serve { .. }) | None => {}
    }
    let access_log = init_logging(cli.log_format, cli.log_level.as_deref());
    common::supervisor::install_panic_hook();
    let (config, registry) = match load(&cli) {
        Ok(loaded) => loaded,
        Err(message) => {
            tracing::error!(%message, "invalid config");
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let ran = run(config, registry, &cli);
    if let Some(log) = access_log {
        if !log.close(ACCESS_LOG_CLOSE_LIMIT) {
            eprintln!("warning: access-log lines still unwritten at exit (stderr blocked?)");
        }
    }
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(cause = %e, "server failed");
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The config to serve: `serve`'s routes, the `--config` file, or the embedded default; then
/// `--listen` and `--port` over its address. Every source goes through the same loader and check.
fn load(cli: &Cli) -> Result<(Config, HandlerRegistry), String> {
    let registry = HandlerRegistry::default();
    let (config, file) = match (&cli.command, &cli.config) {
        (Some(Command::Serve { .. }), Some(path)) => {
            return Err(format!(
                "serve builds its config from the command line; drop --config {} (or FIDDLER_CRAB_CONFIG)",
                path.display()
            ))
        }
        (Some(Command::Serve { routes, .. }), None) => {
            let text = cli::serve_config_text(routes)?;
            let file = "<command line>";
            (Config::from_toml(&text, file), file.to_string())
        }
        (_, Some(path)) => (Config::from_file(path), path.display().to_string()),
        (_, None) => (default_config(), "<embedded default>".to_string()),
    };
    let mut config = config.map_err(|e| e.to_string())?;
    checked(&config, &registry, &file)?;
    if let Some(listen) = cli.listen {
        config.server.listen = listen;
    }
    if let Some(port) = cli.port {
        config.server.listen.set_port(port);
    }
    Ok((config, registry))
}

/// The builtin check, then the file-system check: every problem found, one `FILE: KEY: PROBLEM`
/// per line.
fn checked(config: &Config, registry: &HandlerRegistry, file: &str) -> Result<(), String> {
    check(config, registry, file).map_err(|e| e.to_string())?;
    let problems = check_files(config, file);
    if problems.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    Err(lines.join("\n"))
}

/// Logging to stderr, filtered by `--log-level` (`FIDDLER_CRAB_LOG_LEVEL`), else `RUST_LOG`, else
/// `info`. The filter is tracing-subscriber's `Targets` (`warn`, `info,access=off`,
/// `fiddler_crab=debug,hyper=warn`: a level, and per-target levels), not its regex-based
/// `EnvFilter`: the same directives users write in practice, for about 350 kB less binary.
/// `--log-level` was checked when parsed; a `RUST_LOG` it cannot parse is reported and `info` used.
/// Access lines go to stderr through the access log's buffer, written in batches by its thread;
/// they are formatted by `frontend::access` itself (the same text as this formatter's, without
/// colours), which costs a fraction of a `tracing` event's formatting. The access log is
/// returned so that `main` writes what is left before exiting.
fn init_logging(format: LogFormat, level: Option<&str>) -> Option<Arc<AccessLog>> {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, bad) = match level.and_then(|l| l.parse::<Targets>().ok()) {
        Some(filter) => (filter, None),
        None => match std::env::var("RUST_LOG") {
            Ok(spec) if !spec.trim().is_empty() => match spec.parse::<Targets>() {
                Ok(filter) => (filter, None),
                Err(e) => (default_filter(), Some(format!("RUST_LOG={spec:?}: {e}"))),
            },
            _ => (default_filter(), None),
        },
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let access =
        AccessLog::start(std::io::stderr(), access::BUFFER_BYTES, access::FLUSH_EVERY).ok();
    if let Some(log) = &access {
        let line_format = match format {
            LogFormat::Human => access::LineFormat::Human,
            LogFormat::Json => access::LineFormat::Json,
        };
        // The filter never changes while the process runs: asked once whether access lines pass.
        let lines = filter.would_enable(access::TARGET, &tracing::Level::INFO);
        access::install(log.clone(), line_format, lines);
    }
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(LogWriters {
            access: access.clone(),
        })
        .with_ansi(ansi);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Human => registry.with(layer).init(),
        LogFormat::Json => registry.with(layer.json()).init(),
    }
    if let Some(bad) = bad {
        tracing::warn!(problem = %bad, "cannot parse RUST_LOG; logging at info");
    }
    access
}

/// How long `main` waits, at exit, for the access log to write its last lines.
const ACCESS_LOG_CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// Where log lines go: access lines into the access log's buffer (if its thread started),
/// everything else straight to stderr.
struct LogWriters {
    access: Option<Arc<AccessLog>>,
}

impl<'a> MakeWriter<'a> for LogWriters {
    type Writer = EitherWriter<std::io::Stderr, AccessWriter<'a>>;

    fn make_writer(&'a self) -> Self::Writer {
        EitherWriter::A(std::io::stderr())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        match &self.access {
            Some(log) if meta.target() == access::TARGET => EitherWriter::B(log.writer()),
            _ => EitherWriter::A(std::io::stderr()),
        }
    }
}

fn default_filter() -> tracing_subscriber::filter::Targets {
    tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO)
}

fn run(config: Config, registry: HandlerRegistry, cli: &Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let config_path = cli.config.clone();
    let self_signed = cli.self_signed;
    runtime.block_on(async move {
        let server = Server::build(&config, &registry)?;
        let (tls, certs) = tls_for(&config, self_signed)?;
        let listen = config.server.listen;
        tokio::spawn(reload_on_sighup(
            server.reloader(),
            config_path,
            registry,
            listen,
            certs,
        ));
        tokio::spawn(restart_workers_on_sigusr2(server.reloader()));
        let main = bind(config.server.listen, config.server.listen_backlog).await?;
        let admin = match config.server.admin_listen {
            Some(addr) => Some(bind(addr, config.server.listen_backlog).await?),
            None => None,
        };
        let redirect_addr = config.server.tls.as_ref().and_then(|t| t.redirect_listen);
        let redirect = match redirect_addr {
            Some(addr) if tls.is_some() => Some(bind(addr, config.server.listen_backlog).await?),
            _ => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        // The bound address, so a port 0 (or a port the config left to --port) can be read here.
        let bound = main.local_addr()?;
        // tracing has no stable way to log a list or a map (its `valuable` support is unstable):
        // one line per endpoint with scalar fields, then the `serving` line with their count, so
        // every field of a JSON log line is a JSON string, number or boolean.
        for ep in &config.endpoints {
            log_endpoint(ep);
        }
        let endpoints = config.endpoints.len() as u64;
        // Before the `serving` line, which tells a supervisor the server may be signalled.
        let stop = shutdown_signal();
        tracing::info!(listen = %bound, scheme, endpoints, "serving");
        if let Some(admin) = config.server.admin_listen {
            tracing::info!(%admin, "status, metrics and probes on the admin listener");
        }
        if let (Some(addr), true) = (redirect_addr, redirect.is_some()) {
            tracing::info!(redirect = %addr, "plain HTTP redirects to HTTPS");
        }
        server
            .run_all(
                Listeners {
                    main,
                    admin,
                    redirect,
                    tls,
                },
                stop,
            )
            .await;
        Ok(())
    })
}

/// The startup line of one endpoint: path, methods, mode, concurrency (worker processes for a
/// worker endpoint), queue, overflow, handler kind and what it runs (an upstream's URLs), and
/// whether it asks for credentials.
fn log_endpoint(ep: &EndpointConfig) {
    let (handler, runs) = match &ep.handler {
        HandlerConfig::Builtin(name) => ("builtin", name.clone()),
        HandlerConfig::Exec(exec) => ("exec", exec.command.first().cloned().unwrap_or_default()),
        HandlerConfig::Worker(w) => ("worker", w.command.first().cloned().unwrap_or_default()),
        HandlerConfig::Upstream(u) => ("upstream", u.urls()),
    };
    let methods: Vec<&str> = ep.methods.iter().map(|m| m.as_str()).collect();
    tracing::info!(
        path = %ep.path,
        methods = %methods.join(","),
        mode = ep.mode.kind().as_str(),
        concurrency = worker_slots(ep) as u64,
        queue = ep.queue.get() as u64,
        overflow = ep.overflow.as_str(),
        handler,
        runs = %runs,
        auth = ep.auth.is_some(),
        "endpoint"
    );
}

/// HTTPS for the main listener: from `[server.tls]`, or a certificate generated now for
/// `--self-signed` (its SHA-256 fingerprint is logged so a client can pin it).
fn tls_for(
    config: &Config,
    self_signed: bool,
) -> anyhow::Result<(Option<Tls>, Option<Arc<CertStore>>)> {
    let tls_config = config.server.tls.as_ref();
    let timeout = tls_config.map_or(DEFAULT_HANDSHAKE_TIMEOUT, |t| t.settings.handshake_timeout);
    let hsts = tls_config.and_then(|t| t.hsts_max_age);
    let store = if self_signed {
        let mut names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        let ip = config.server.listen.ip();
        if !ip.is_unspecified() && !ip.is_loopback() {
            names.push(ip.to_string());
        }
        let store = CertStore::self_signed(&names)?;
        tracing::info!(fingerprint = %store.fingerprint(), names = %names.join(","), "self-signed certificate generated (development only)");
        // Nothing to reload on SIGHUP: the certificate lives only in memory.
        return Ok((Some(Tls::new(store, timeout, hsts)), None));
    } else if let Some(t) = tls_config {
        let store = frontend::tls::load(&t.settings)?;
        tracing::info!(cert = %t.settings.cert.display(), fingerprint = %store.fingerprint(), "certificate loaded");
        store
    } else {
        return Ok((None, None));
    };
    Ok((Some(Tls::new(store.clone(), timeout, hsts)), Some(store)))
}

/// On every SIGHUP: read and validate the config file again; apply it if valid, otherwise log why
/// and keep serving the current one.
async fn reload_on_sighup(
    reloader: Reloader,
    path: Option<PathBuf>,
    registry: HandlerRegistry,
    listen: SocketAddr,
    certs: Option<Arc<CertStore>>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(cause = %e, "cannot listen for SIGHUP; config reload is off");
            return;
        }
    };
    while hup.recv().await.is_some() {
        // The certificate first: a bad new pair is refused and the old one keeps serving.
        if let Some(store) = &certs {
            match store.reload() {
                Ok(fingerprint) => tracing::info!(%fingerprint, "certificate reloaded"),
                Err(e) => {
                    tracing::warn!(error = %e, "certificate reload refused; the current one keeps serving")
                }
            }
        }
        let Some(path) = &path else {
            tracing::info!("SIGHUP: no config file, nothing to reload");
            continue;
        };
        let file = path.display().to_string();
        let loaded = Config::from_file(path)
            .map_err(|e| e.to_string())
            .and_then(|c| checked(&c, &registry, &file).map(|()| c));
        let mut config = match loaded {
            Ok(config) => config,
            Err(e) => {
                tracing::warn!(%file, error = %e, "config reload refused; the current config keeps serving");
                continue;
            }
        };
        // The address in force (possibly from --listen) cannot change without a restart anyway.
        config.server.listen = listen;
        match reloader.apply(&config) {
            Ok(s) => {
                tracing::info!(%file, kept = s.kept, started = s.started, retired = s.retired, "config reloaded");
                if s.server_changed {
                    tracing::warn!(%file, "[server] settings changed: they take effect at the next restart");
                }
            }
            Err(e) => {
                tracing::warn!(%file, error = %e, "config reload failed; the current config keeps serving")
            }
        }
    }
}

/// On every SIGUSR2: replace every worker process, one at a time per endpoint, each only once its
/// successor is ready (a rolling restart: no request is dropped).
async fn restart_workers_on_sigusr2(reloader: Reloader) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr2 = match signal(SignalKind::user_defined2()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(cause = %e, "cannot listen for SIGUSR2; worker restarts on request are off");
            return;
        }
    };
    while usr2.recv().await.is_some() {
        let pools = reloader.restart_workers();
        tracing::info!(signal = "SIGUSR2", pools, "rolling restart of the workers");
    }
}

/// Bind `addr` with the configured listen backlog (the kernel caps it at `somaxconn`).
async fn bind(addr: SocketAddr, backlog: u32) -> anyhow::Result<tokio::net::TcpListener> {
    let listen = || -> std::io::Result<tokio::net::TcpListener> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(backlog)
    };
    listen().map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

/// Resolves on SIGTERM or SIGINT. Both handlers are installed when this is called, not when the
/// future is first polled: a signal sent as soon as the `serving` line is out (a supervisor, a
/// test) must stop the server gracefully, not kill it with the default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => tracing::info!(signal = "SIGTERM", "stop requested"),
                _ = int.recv() => tracing::info!(signal = "SIGINT", "stop requested"),
            },
            (Ok(mut term), Err(e)) => {
                tracing::error!(cause = %e, "cannot listen for SIGINT; only SIGTERM stops the server");
                term.recv().await;
                tracing::info!(signal = "SIGTERM", "stop requested");
            }
            (Err(e), Ok(mut int)) => {
                tracing::error!(cause = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
                int.recv().await;
                tracing::info!(signal = "SIGINT", "stop requested");
            }
            (Err(e), Err(_)) => {
                tracing::error!(cause = %e, "cannot listen for SIGTERM or SIGINT; the server runs until killed");
                std::future::pending::<()>().await;
            }
        }
    }
}
