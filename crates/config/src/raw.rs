//! The raw TOML shape, with defaults, and its validation into [`super::Config`].

use super::{
    Config, ConfigError, EndpointConfig, ExecConfig, ExecOutput, HandlerConfig, LightConfig, Mode,
    ModeConfig, Overflow, ServerConfig, TlsConfig, RESERVED_PATHS,
};
use crate::light::{Levels, Thresholds};
use crate::light::{Light, LightPolicy};
use crate::tls::TlsSettings;
use http::HeaderValue;
use http::Method;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

/// Largest queue capacity accepted (a typo guard; memory per queued job is bounded by the body).
const MAX_QUEUE: usize = 1_000_000;

/// Smallest request-head limit hyper accepts (its minimum read buffer).
const MIN_HEADER_BYTES: usize = 8 * 1024;
/// Largest request-head limit accepted.
const MAX_HEADER_BYTES: usize = 1024 * 1024;

/// Largest worker pool accepted: jellyfish is a small pool, not a thread per request.
const MAX_WORKERS: usize = 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    light: RawLight,
    #[serde(default, rename = "endpoint")]
    endpoints: Vec<RawEndpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLight {
    sample_ms: u64,
    stale_after_ms: u64,
    fail_safe: Light,
    min_dwell_ms: u64,
    cpu: Option<RawThresholds>,
    mem_headroom: Option<RawThresholds>,
    cpu_pressure: Option<RawThresholds>,
    mem_pressure: Option<RawThresholds>,
}

impl Default for RawLight {
    fn default() -> Self {
        RawLight {
            sample_ms: 250,
            stale_after_ms: 5_000,
            fail_safe: Light::Yellow,
            min_dwell_ms: 2_000,
            cpu: None,
            mem_headroom: None,
            cpu_pressure: None,
            mem_pressure: None,
        }
    }
}

/// `{ yellow = [enter, exit], red = [enter, exit] }`; a level left out is never entered.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawThresholds {
    yellow: Option<[f64; 2]>,
    red: Option<[f64; 2]>,
}

impl RawThresholds {
    fn into_thresholds(self) -> Thresholds {
        let levels = |l: Option<[f64; 2]>| l.map(|[enter, exit]| Levels::new(enter, exit));
        Thresholds {
            yellow: levels(self.yellow),
            red: levels(self.red),
        }
    }
}

impl RawLight {
    fn validate(self, p: &Problems<'_>) -> Result<LightConfig, ConfigError> {
        let mut policy = LightPolicy::default();
        let signals = [
            (self.cpu, &mut policy.cpu),
            (self.mem_headroom, &mut policy.mem_headroom),
            (self.cpu_pressure, &mut policy.cpu_pressure),
            (self.mem_pressure, &mut policy.mem_pressure),
        ];
        for (raw, slot) in signals {
            if let Some(raw) = raw {
                *slot = raw.into_thresholds();
            }
        }
        policy.min_dwell = Duration::from_millis(self.min_dwell_ms);
        policy.validate().map_err(|problem| {
            let (key, rest) = problem.split_once(':').unwrap_or(("", problem.as_str()));
            p.at(format!("light.{}", key.trim()), rest.trim().to_string())
        })?;
        Ok(LightConfig {
            sample_every: p.millis("light.sample_ms", self.sample_ms)?,
            stale_after: p.millis("light.stale_after_ms", self.stale_after_ms)?,
            fail_safe: self.fail_safe,
            policy,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: String,
    max_connections: usize,
    listen_backlog: u32,
    header_read_timeout_ms: u64,
    idle_timeout_ms: u64,
    body_read_timeout_ms: u64,
    shutdown_grace_ms: u64,
    default_mode: Mode,
    max_header_bytes: usize,
    max_requests_per_connection: usize,
    max_h2_streams: u32,
    access_log: bool,
    admin_listen: Option<String>,
    tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    #[serde(default = "default_handshake_timeout_ms")]
    handshake_timeout_ms: u64,
    #[serde(default)]
    hsts_max_age_s: u64,
    redirect_listen: Option<String>,
}

fn default_handshake_timeout_ms() -> u64 {
    10_000
}

fn parse_addr(
    p: &Problems<'_>,
    key: &str,
    addr: &Option<String>,
) -> Result<Option<SocketAddr>, ConfigError> {
    match addr {
        None => Ok(None),
        Some(a) => a.parse().map(Some).map_err(|_| {
            p.at(
                key,
                format!("`{a}` is not an address such as 127.0.0.1:9090"),
            )
        }),
    }
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:8080".to_string(),
            max_connections: 1024,
            listen_backlog: 1024,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            body_read_timeout_ms: 30_000,
            shutdown_grace_ms: 10_000,
            default_mode: Mode::Crab,
            max_header_bytes: 16 * 1024,
            max_requests_per_connection: 1000,
            max_h2_streams: 64,
            access_log: true,
            admin_listen: None,
            tls: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    path: String,
    #[serde(default = "default_methods")]
    methods: Vec<String>,
    mode: Option<Mode>,
    #[serde(default = "default_queue")]
    queue: usize,
    #[serde(default = "default_overflow")]
    overflow: Overflow,
    #[serde(default = "default_queue_timeout_ms")]
    queue_timeout_ms: u64,
    // The mode's own keys: which mode reads which is `Mode::keys`.
    pace_ms: Option<u64>,
    workers: Option<usize>,
    yellow_workers: Option<usize>,
    #[serde(default = "default_true")]
    expected_wait_admission: bool,
    #[serde(default = "default_max_body_bytes")]
    max_body_bytes: u64,
    builtin: Option<String>,
    exec: Option<RawExec>,
    worker: Option<crate::worker::RawWorker>,
}

fn default_methods() -> Vec<String> {
    vec!["GET".to_string(), "POST".to_string()]
}
fn default_queue() -> usize {
    100
}
fn default_true() -> bool {
    true
}
fn default_overflow() -> Overflow {
    Overflow::Ignore
}
fn default_queue_timeout_ms() -> u64 {
    30_000
}
fn default_max_body_bytes() -> u64 {
    1024 * 1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExec {
    command: Vec<String>,
    cwd: Option<PathBuf>,
    #[serde(default = "default_output")]
    output: ExecOutput,
    #[serde(default = "default_content_type")]
    content_type: String,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_kill_grace_ms")]
    kill_grace_ms: u64,
    #[serde(default = "default_max_output_bytes")]
    max_output_bytes: usize,
    #[serde(default)]
    pass_env: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

fn default_output() -> ExecOutput {
    ExecOutput::Raw
}
fn default_content_type() -> String {
    "text/plain; charset=utf-8".to_string()
}
fn default_timeout_ms() -> u64 {
    30_000
}
fn default_kill_grace_ms() -> u64 {
    2_000
}
fn default_max_output_bytes() -> usize {
    1024 * 1024
}

/// Builds errors that all name the same file.
struct Problems<'a> {
    file: &'a str,
}

impl Problems<'_> {
    fn at(&self, key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            key: key.into(),
            problem: problem.into(),
        }
    }

    fn nonzero(&self, key: impl Into<String>, value: usize) -> Result<NonZeroUsize, ConfigError> {
        NonZeroUsize::new(value).ok_or_else(|| self.at(key, "must be at least 1"))
    }

    fn pool_size(&self, key: impl Into<String>, value: usize) -> Result<NonZeroUsize, ConfigError> {
        match NonZeroUsize::new(value) {
            Some(n) if value <= MAX_WORKERS => Ok(n),
            _ => Err(self.at(key, format!("must be between 1 and {MAX_WORKERS}"))),
        }
    }

    fn millis(&self, key: impl Into<String>, ms: u64) -> Result<Duration, ConfigError> {
        if ms == 0 {
            return Err(self.at(key, "must be at least 1 (milliseconds)"));
        }
        Ok(Duration::from_millis(ms))
    }
}

impl RawConfig {
    pub(super) fn validate(self, file: &str) -> Result<Config, ConfigError> {
        let p = Problems { file };
        let default_mode = self.server.default_mode;
        let server = self.server.validate(&p)?;
        let light = self.light.validate(&p)?;
        if self.endpoints.is_empty() {
            return Err(p.at("endpoint", "at least one [[endpoint]] is required"));
        }
        let endpoints = self
            .endpoints
            .into_iter()
            .enumerate()
            .map(|(i, ep)| ep.validate(&p, &format!("endpoint[{i}]"), default_mode))
            .collect::<Result<Vec<_>, _>>()?;
        Config::unique_paths(&endpoints, file)?;
        Ok(Config {
            server,
            light,
            endpoints,
        })
    }
}

impl RawServer {
    fn validate(self, p: &Problems<'_>) -> Result<ServerConfig, ConfigError> {
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            p.at(
                "server.listen",
                format!("`{}` is not an address such as 127.0.0.1:8080", self.listen),
            )
        })?;
        Ok(ServerConfig {
            listen,
            max_connections: p.nonzero("server.max_connections", self.max_connections)?,
            listen_backlog: match self.listen_backlog {
                0 => return Err(p.at("server.listen_backlog", "must be at least 1")),
                n => n,
            },
            header_read_timeout: p
                .millis("server.header_read_timeout_ms", self.header_read_timeout_ms)?,
            body_read_timeout: p
                .millis("server.body_read_timeout_ms", self.body_read_timeout_ms)?,
            idle_timeout: p.millis("server.idle_timeout_ms", self.idle_timeout_ms)?,
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            max_header_bytes: match self.max_header_bytes {
                n if (MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&n) => n,
                _ => {
                    return Err(p.at(
                        "server.max_header_bytes",
                        format!("must be between {MIN_HEADER_BYTES} and {MAX_HEADER_BYTES}"),
                    ))
                }
            },
            max_requests_per_connection: p.nonzero(
                "server.max_requests_per_connection",
                self.max_requests_per_connection,
            )?,
            max_h2_streams: match self.max_h2_streams {
                0 => return Err(p.at("server.max_h2_streams", "must be at least 1")),
                n => n,
            },
            access_log: self.access_log,
            admin_listen: parse_addr(p, "server.admin_listen", &self.admin_listen)?,
            tls: match self.tls {
                None => None,
                Some(t) => Some(TlsConfig {
                    settings: TlsSettings {
                        cert: t.cert,
                        key: t.key,
                        handshake_timeout: p
                            .millis("server.tls.handshake_timeout_ms", t.handshake_timeout_ms)?,
                    },
                    hsts_max_age: (t.hsts_max_age_s > 0).then_some(t.hsts_max_age_s),
                    redirect_listen: parse_addr(
                        p,
                        "server.tls.redirect_listen",
                        &t.redirect_listen,
                    )?,
                }),
            },
        })
    }
}

impl RawEndpoint {
    fn validate(
        self,
        p: &Problems<'_>,
        at: &str,
        default_mode: Mode,
    ) -> Result<EndpointConfig, ConfigError> {
        let key = |k: &str| format!("{at}.{k}");
        if !self.path.starts_with('/') || self.path.chars().any(|c| c.is_whitespace() || c == '?') {
            return Err(p.at(
                key("path"),
                format!(
                    "`{}` must start with `/` and hold no spaces or `?`",
                    self.path
                ),
            ));
        }
        if RESERVED_PATHS.contains(&self.path.as_str()) {
            return Err(p.at(
                key("path"),
                format!("`{}` is answered by the server itself", self.path),
            ));
        }
        if self.methods.is_empty() {
            return Err(p.at(key("methods"), "at least one method is required"));
        }
        let mut methods = Vec::with_capacity(self.methods.len());
        for m in &self.methods {
            let upper = m.to_ascii_uppercase();
            let method = Method::from_bytes(upper.as_bytes())
                .map_err(|_| p.at(key("methods"), format!("`{m}` is not an HTTP method")))?;
            if !methods.contains(&method) {
                methods.push(method);
            }
        }
        if self.queue > MAX_QUEUE {
            return Err(p.at(key("queue"), format!("must be at most {MAX_QUEUE}")));
        }
        let mode = self.mode_config(p, at, default_mode)?;
        let named: Vec<&str> = [
            (self.builtin.is_some(), "`builtin`"),
            (self.exec.is_some(), "`[exec]`"),
            (self.worker.is_some(), "`[worker]`"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        let handler = match (self.builtin, self.exec, self.worker) {
            (Some(name), None, None) => HandlerConfig::Builtin(name),
            (None, Some(exec), None) => HandlerConfig::Exec(exec.validate(p, &key("exec"))?),
            (None, None, Some(worker)) => HandlerConfig::Worker(
                worker
                    .validate()
                    .map_err(|(k, problem)| p.at(format!("{at}.worker.{k}"), problem))?,
            ),
            (None, None, None) => return Err(p.at(
                at,
                "needs `builtin = \"...\"`, an `[endpoint.exec]` or an `[endpoint.worker]` table",
            )),
            _ => return Err(p.at(at, format!("has both {}: choose one", named.join(" and ")))),
        };
        Ok(EndpointConfig {
            path: self.path,
            methods,
            mode,
            expected_wait_admission: self.expected_wait_admission,
            queue: p.nonzero(key("queue"), self.queue)?,
            overflow: self.overflow,
            queue_timeout: p.millis(key("queue_timeout_ms"), self.queue_timeout_ms)?,
            max_body_bytes: self.max_body_bytes,
            handler,
        })
    }

    /// The endpoint's mode (its own, or the server's default) with that mode's settings. A key
    /// only other modes read is an error, so a setting never silently does nothing.
    fn mode_config(
        &self,
        p: &Problems<'_>,
        at: &str,
        default_mode: Mode,
    ) -> Result<ModeConfig, ConfigError> {
        let key = |k: &str| format!("{at}.{k}");
        let mode = self.mode.unwrap_or(default_mode);
        let given = [
            ("pace_ms", self.pace_ms.is_some()),
            ("workers", self.workers.is_some()),
            ("yellow_workers", self.yellow_workers.is_some()),
        ];
        for (name, _) in given.iter().filter(|(_, set)| *set) {
            if !mode.keys().contains(name) {
                return Err(p.at(
                    key(name),
                    format!(
                        "not used by mode \"{mode}\" ({} only)",
                        Mode::users_of(name)
                    ),
                ));
            }
        }
        let pace = Duration::from_millis(self.pace_ms.unwrap_or(0));
        let workers = self
            .workers
            .map(|w| p.pool_size(key("workers"), w))
            .transpose()?;
        let yellow_workers = self
            .yellow_workers
            .map(|w| p.pool_size(key("yellow_workers"), w))
            .transpose()?;
        if let (Some(w), Some(y)) = (workers, yellow_workers) {
            if y > w {
                return Err(p.at(
                    key("yellow_workers"),
                    format!("must be at most workers ({w})"),
                ));
            }
        }
        Ok(match mode {
            Mode::Crab => ModeConfig::Crab { pace },
            Mode::Jellyfish => ModeConfig::Jellyfish { workers },
            Mode::Adaptive => ModeConfig::Adaptive {
                workers,
                yellow_workers,
                pace,
            },
        })
    }
}

impl RawExec {
    fn validate(self, p: &Problems<'_>, at: &str) -> Result<ExecConfig, ConfigError> {
        let key = |k: &str| format!("{at}.{k}");
        match self.command.first() {
            None => {
                return Err(p.at(
                    key("command"),
                    "must name a program: [\"program\", \"arg\", ...]",
                ))
            }
            Some(prog) if prog.is_empty() => {
                return Err(p.at(key("command"), "the program name is empty"))
            }
            Some(_) => {}
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            return Err(p.at(key("command"), "arguments may not contain NUL"));
        }
        let content_type = HeaderValue::from_str(&self.content_type).map_err(|_| {
            p.at(
                key("content_type"),
                format!("`{}` is not a valid header value", self.content_type),
            )
        })?;
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(p.at(
                    key("env"),
                    format!("`{k}` is not a usable environment variable"),
                ));
            }
        }
        Ok(ExecConfig {
            command: self.command,
            cwd: self.cwd,
            output: self.output,
            content_type,
            timeout: p.millis(key("timeout_ms"), self.timeout_ms)?,
            kill_grace: Duration::from_millis(self.kill_grace_ms),
            max_output_bytes: p
                .nonzero(key("max_output_bytes"), self.max_output_bytes)?
                .get(),
            pass_env: self.pass_env,
            env: self.env.into_iter().collect(),
        })
    }
}
