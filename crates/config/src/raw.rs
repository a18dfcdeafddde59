//! The raw TOML shape, with defaults, and its validation into [`super::Config`].

use super::{
    AuthConfig, BatchConfig, Config, ConfigError, EndpointConfig, ExecConfig, ExecOutput,
    HandlerConfig, LightConfig, Mode, ModeConfig, OnClientGone, Overflow, QueryRedaction,
    ServerConfig, TlsConfig, RESERVED_PATHS,
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

/// An hour, in ms: the longest read deadline, grace or pause accepted.
const HOUR_MS: u64 = 3_600_000;
/// A day, in ms: the longest job-time or idle limit accepted.
const DAY_MS: u64 = 24 * HOUR_MS;
/// A GiB: the largest body or output limit accepted (both are buffered in memory).
const GIB: u64 = 1024 * 1024 * 1024;

/// Accepted ranges (inclusive) of the numeric keys, as `(min, max)`; `config/reference.toml`
/// documents each beside its key. Every one is far inside what the parts can represent, so a value
/// that passes `check` never overflows at start.
mod range {
    use super::{DAY_MS, GIB, HOUR_MS, MAX_HEADER_BYTES, MAX_QUEUE, MAX_WORKERS, MIN_HEADER_BYTES};
    pub const MAX_CONNECTIONS: (u64, u64) = (1, 1_048_576);
    pub const LISTEN_BACKLOG: (u64, u64) = (1, 65_535);
    pub const READ_TIMEOUT_MS: (u64, u64) = (1, HOUR_MS);
    pub const IDLE_TIMEOUT_MS: (u64, u64) = (1, DAY_MS);
    pub const GRACE_MS: (u64, u64) = (0, HOUR_MS);
    pub const OVERFLOW_HOLD_MS: (u64, u64) = (0, 60_000);
    pub const HEADER_BYTES: (u64, u64) = (MIN_HEADER_BYTES as u64, MAX_HEADER_BYTES as u64);
    pub const IO_BUFFER_BYTES: (u64, u64) = (MIN_HEADER_BYTES as u64, 16 * MAX_HEADER_BYTES as u64);
    pub const REQUESTS_PER_CONNECTION: (u64, u64) = (1, 1_000_000);
    pub const H2_STREAMS: (u64, u64) = (1, 4096);
    pub const UNSENT_BYTES: (u64, u64) = (64 * 1024, 64 * GIB);
    pub const HANDSHAKE_TIMEOUT_MS: (u64, u64) = (1, 600_000);
    /// Two years, in seconds (preload lists ask for one).
    pub const HSTS_MAX_AGE_S: (u64, u64) = (0, 63_072_000);
    pub const SAMPLE_MS: (u64, u64) = (1, 60_000);
    pub const STALE_AFTER_MS: (u64, u64) = (1, HOUR_MS);
    pub const MIN_DWELL_MS: (u64, u64) = (0, HOUR_MS);
    pub const QUEUE: (u64, u64) = (1, MAX_QUEUE as u64);
    pub const QUEUE_TIMEOUT_MS: (u64, u64) = (1, DAY_MS);
    pub const PACE_MS: (u64, u64) = (0, HOUR_MS);
    pub const WORKERS: (u64, u64) = (1, MAX_WORKERS as u64);
    pub const MAX_BODY_BYTES: (u64, u64) = (0, GIB);
    pub const JOB_TIMEOUT_MS: (u64, u64) = (1, DAY_MS);
    pub const KILL_GRACE_MS: (u64, u64) = (0, 600_000);
    pub const MAX_OUTPUT_BYTES: (u64, u64) = (1, GIB);
    pub const STREAM_IDLE_TIMEOUT_MS: (u64, u64) = (1, DAY_MS);
    pub const WEBSOCKET_IDLE_TIMEOUT_MS: (u64, u64) = (1, DAY_MS);
    pub const CONNECT_TIMEOUT_MS: (u64, u64) = (1, 600_000);
    pub const HEALTH_INTERVAL_MS: (u64, u64) = (10, HOUR_MS);
    pub const KEEPALIVE_TIMEOUT_MS: (u64, u64) = (0, HOUR_MS);
    pub const MAX_BATCH: (u64, u64) = (1, 1024);
    pub const MAX_BATCH_WAIT_MS: (u64, u64) = (0, 60_000);
}

/// Longest file path accepted (`cwd`, the program, certificate and key files): Linux's PATH_MAX.
const MAX_PATH_LEN: usize = 4096;
/// Longest endpoint path accepted, in bytes.
const MAX_ENDPOINT_PATH_LEN: usize = 1024;
/// Characters of a bad value quoted in an error message, at most.
const QUOTE_CHARS: usize = 64;

/// `value` for an error message: at most 64 characters, then `...`.
pub fn quote(value: &str) -> String {
    clip(value, QUOTE_CHARS)
}

/// `text` cut to `chars` characters, then `...`.
pub(super) fn clip(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        None => text.to_string(),
        Some((end, _)) => format!("{}...", text.get(..end).unwrap_or_default()),
    }
}

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
        policy.min_dwell =
            p.millis("light.min_dwell_ms", self.min_dwell_ms, range::MIN_DWELL_MS)?;
        policy.validate().map_err(|problem| {
            let (key, rest) = problem.split_once(':').unwrap_or(("", problem.as_str()));
            p.at(format!("light.{}", key.trim()), rest.trim().to_string())
        })?;
        Ok(LightConfig {
            sample_every: p.millis("light.sample_ms", self.sample_ms, range::SAMPLE_MS)?,
            stale_after: p.millis(
                "light.stale_after_ms",
                self.stale_after_ms,
                range::STALE_AFTER_MS,
            )?,
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
    send_timeout_ms: u64,
    overflow_hold_ms: u64,
    shutdown_grace_ms: u64,
    default_mode: Mode,
    max_header_bytes: usize,
    io_buffer_bytes: Option<usize>,
    max_requests_per_connection: usize,
    max_h2_streams: u32,
    max_unsent_bytes: u64,
    max_unsent_bytes_per_connection: u64,
    access_log: bool,
    access_log_redact_query: RawRedaction,
    admin_listen: Option<String>,
    tls: Option<RawTls>,
    auth: Option<RawAuth>,
    protect_admin: bool,
}

/// `[server.auth]` and `[endpoint.auth]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    bearer_tokens_file: Option<PathBuf>,
    basic_users_file: Option<PathBuf>,
    realm: Option<String>,
}

/// An endpoint's `auth`: `false` (open), `true` (the server's), or its own table.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawEndpointAuth {
    Switch(bool),
    Own(RawAuth),
}

/// `access_log_redact_query`: `true`/`false`, or the names of the parameters to redact.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawRedaction {
    All(bool),
    Names(Vec<String>),
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
                format!("`{}` is not an address such as 127.0.0.1:9090", quote(a)),
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
            send_timeout_ms: 30_000,
            overflow_hold_ms: 1_000,
            shutdown_grace_ms: 10_000,
            default_mode: Mode::Crab,
            max_header_bytes: 16 * 1024,
            io_buffer_bytes: None,
            max_requests_per_connection: 1000,
            max_h2_streams: 64,
            max_unsent_bytes: 16 << 20,
            max_unsent_bytes_per_connection: 2 << 20,
            access_log: true,
            access_log_redact_query: RawRedaction::All(false),
            admin_listen: None,
            tls: None,
            auth: None,
            protect_admin: false,
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
    #[serde(default = "default_on_client_gone")]
    on_client_gone: OnClientGone,
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
    max_batch: Option<usize>,
    max_batch_wait_ms: Option<u64>,
    builtin: Option<String>,
    exec: Option<RawExec>,
    auth: Option<RawEndpointAuth>,
    worker: Option<crate::worker::RawWorker>,
    upstream: Option<crate::upstream::RawUpstream>,
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
fn default_on_client_gone() -> OnClientGone {
    OnClientGone::Stop
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
    stream: bool,
    #[serde(default = "default_stream_idle_timeout_ms")]
    stream_idle_timeout_ms: u64,
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
fn default_stream_idle_timeout_ms() -> u64 {
    30_000
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

    /// `value` if it lies in `min..=max`, else `KEY: VALUE is out of range (MIN to MAX)`.
    fn in_range<T>(
        &self,
        key: impl Into<String>,
        value: T,
        (min, max): (u64, u64),
    ) -> Result<T, ConfigError>
    where
        T: Copy + TryInto<u64> + std::fmt::Display,
    {
        match value.try_into() {
            Ok(v) if (min..=max).contains(&v) => Ok(value),
            Ok(v) if v < min => Err(self.at(
                key,
                format!("{value} is out of range ({min} to {max}): must be at least {min}"),
            )),
            _ => Err(self.at(key, format!("{value} is out of range ({min} to {max})"))),
        }
    }

    /// A count in `range`, whose minimum is at least 1.
    fn count(
        &self,
        key: impl Into<String>,
        value: usize,
        range: (u64, u64),
    ) -> Result<NonZeroUsize, ConfigError> {
        let key = key.into();
        let value = self.in_range(key.clone(), value, range)?;
        NonZeroUsize::new(value).ok_or_else(|| self.at(key, "must be at least 1"))
    }

    /// A duration in milliseconds in `range`.
    fn millis(
        &self,
        key: impl Into<String>,
        ms: u64,
        range: (u64, u64),
    ) -> Result<Duration, ConfigError> {
        Ok(Duration::from_millis(self.in_range(key, ms, range)?))
    }

    /// A file path of at most [`MAX_PATH_LEN`] bytes.
    fn path(&self, key: impl Into<String>, path: PathBuf) -> Result<PathBuf, ConfigError> {
        let len = path.as_os_str().len();
        if len > MAX_PATH_LEN {
            return Err(self.at(
                key,
                format!("the path is {len} bytes long; at most {MAX_PATH_LEN} are accepted"),
            ));
        }
        Ok(path)
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
            .map(|(i, ep)| ep.validate(&p, &format!("endpoint[{i}]"), default_mode, &server.auth))
            .collect::<Result<Vec<_>, _>>()?;
        Config::unique_paths(&endpoints, file)?;
        Ok(Config {
            server,
            light,
            endpoints,
        })
    }
}

/// The realm of the `WWW-Authenticate` challenges when the config names none.
const DEFAULT_REALM: &str = "fiddler_crab";

/// Longest realm accepted, in bytes.
const MAX_REALM_LEN: usize = 128;

impl RawAuth {
    /// `at` is the table's key (`server.auth`, `endpoint[0].auth`).
    fn validate(self, p: &Problems<'_>, at: &str) -> Result<AuthConfig, ConfigError> {
        let key = |k: &str| format!("{at}.{k}");
        if self.bearer_tokens_file.is_none() && self.basic_users_file.is_none() {
            return Err(p.at(at, "needs `bearer_tokens_file`, `basic_users_file` or both"));
        }
        let realm = self.realm.unwrap_or_else(|| DEFAULT_REALM.to_string());
        // The realm is sent inside a quoted string: no quote, backslash or control character,
        // so it never needs escaping.
        if realm.is_empty()
            || realm.len() > MAX_REALM_LEN
            || realm
                .chars()
                .any(|c| c == '"' || c == '\\' || c.is_control() || !c.is_ascii())
        {
            return Err(p.at(
                key("realm"),
                format!(
                    "`{}` must be 1 to {MAX_REALM_LEN} printable ASCII characters without `\"` or `\\`",
                    quote(&realm)
                ),
            ));
        }
        Ok(AuthConfig {
            bearer_tokens_file: self
                .bearer_tokens_file
                .map(|f| p.path(key("bearer_tokens_file"), f))
                .transpose()?,
            basic_users_file: self
                .basic_users_file
                .map(|f| p.path(key("basic_users_file"), f))
                .transpose()?,
            realm,
        })
    }
}

impl RawServer {
    fn validate(self, p: &Problems<'_>) -> Result<ServerConfig, ConfigError> {
        if self.protect_admin && self.auth.is_none() {
            return Err(p.at(
                "server.protect_admin",
                "needs a [server.auth] table (the credentials the server's own paths ask for)",
            ));
        }
        let max_header_bytes = p.in_range(
            "server.max_header_bytes",
            self.max_header_bytes,
            range::HEADER_BYTES,
        )?;
        let io_buffer_bytes = match self.io_buffer_bytes {
            None => max_header_bytes,
            Some(bytes) => {
                let bytes = p.in_range("server.io_buffer_bytes", bytes, range::IO_BUFFER_BYTES)?;
                if bytes < max_header_bytes {
                    return Err(p.at(
                        "server.io_buffer_bytes",
                        format!(
                            "{bytes} is less than max_header_bytes ({max_header_bytes}): the buffers must hold the largest head"
                        ),
                    ));
                }
                bytes
            }
        };
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            p.at(
                "server.listen",
                format!(
                    "`{}` is not an address such as 127.0.0.1:8080",
                    quote(&self.listen)
                ),
            )
        })?;
        Ok(ServerConfig {
            listen,
            max_connections: p.count(
                "server.max_connections",
                self.max_connections,
                range::MAX_CONNECTIONS,
            )?,
            listen_backlog: p.in_range(
                "server.listen_backlog",
                self.listen_backlog,
                range::LISTEN_BACKLOG,
            )?,
            header_read_timeout: p.millis(
                "server.header_read_timeout_ms",
                self.header_read_timeout_ms,
                range::READ_TIMEOUT_MS,
            )?,
            body_read_timeout: p.millis(
                "server.body_read_timeout_ms",
                self.body_read_timeout_ms,
                range::READ_TIMEOUT_MS,
            )?,
            idle_timeout: p.millis(
                "server.idle_timeout_ms",
                self.idle_timeout_ms,
                range::IDLE_TIMEOUT_MS,
            )?,
            send_timeout: p.millis(
                "server.send_timeout_ms",
                self.send_timeout_ms,
                range::IDLE_TIMEOUT_MS,
            )?,
            overflow_hold: p.millis(
                "server.overflow_hold_ms",
                self.overflow_hold_ms,
                range::OVERFLOW_HOLD_MS,
            )?,
            shutdown_grace: p.millis(
                "server.shutdown_grace_ms",
                self.shutdown_grace_ms,
                range::GRACE_MS,
            )?,
            max_header_bytes,
            io_buffer_bytes,
            max_requests_per_connection: p.count(
                "server.max_requests_per_connection",
                self.max_requests_per_connection,
                range::REQUESTS_PER_CONNECTION,
            )?,
            max_h2_streams: p.in_range(
                "server.max_h2_streams",
                self.max_h2_streams,
                range::H2_STREAMS,
            )?,
            max_unsent_bytes: p.in_range(
                "server.max_unsent_bytes",
                self.max_unsent_bytes,
                range::UNSENT_BYTES,
            )?,
            max_unsent_bytes_per_connection: p.in_range(
                "server.max_unsent_bytes_per_connection",
                self.max_unsent_bytes_per_connection,
                range::UNSENT_BYTES,
            )?,
            access_log: self.access_log,
            auth: self
                .auth
                .map(|a| a.validate(p, "server.auth"))
                .transpose()?,
            protect_admin: self.protect_admin,
            access_log_redact_query: match self.access_log_redact_query {
                RawRedaction::All(false) => QueryRedaction::None,
                RawRedaction::All(true) => QueryRedaction::All,
                RawRedaction::Names(names) => QueryRedaction::Params(names),
            },
            admin_listen: parse_addr(p, "server.admin_listen", &self.admin_listen)?,
            tls: match self.tls {
                None => None,
                Some(t) => Some(TlsConfig {
                    settings: TlsSettings {
                        cert: p.path("server.tls.cert", t.cert)?,
                        key: p.path("server.tls.key", t.key)?,
                        handshake_timeout: p.millis(
                            "server.tls.handshake_timeout_ms",
                            t.handshake_timeout_ms,
                            range::HANDSHAKE_TIMEOUT_MS,
                        )?,
                    },
                    hsts_max_age: Some(p.in_range(
                        "server.tls.hsts_max_age_s",
                        t.hsts_max_age_s,
                        range::HSTS_MAX_AGE_S,
                    )?)
                    .filter(|&s| s > 0),
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
        mut self,
        p: &Problems<'_>,
        at: &str,
        default_mode: Mode,
        server_auth: &Option<AuthConfig>,
    ) -> Result<EndpointConfig, ConfigError> {
        let key = |k: &str| format!("{at}.{k}");
        if self.path.len() > MAX_ENDPOINT_PATH_LEN {
            return Err(p.at(
                key("path"),
                format!(
                    "`{}` is {} bytes long; at most {MAX_ENDPOINT_PATH_LEN} are accepted",
                    quote(&self.path),
                    self.path.len()
                ),
            ));
        }
        let auth = match (self.auth.take(), server_auth) {
            (None, server) => server.clone(),
            (Some(RawEndpointAuth::Switch(true)), Some(server)) => Some(server.clone()),
            (Some(RawEndpointAuth::Switch(true)), None) => {
                return Err(p.at(key("auth"), "`auth = true` needs a [server.auth] table"))
            }
            (Some(RawEndpointAuth::Switch(false)), _) => None,
            (Some(RawEndpointAuth::Own(own)), _) => Some(own.validate(p, &key("auth"))?),
        };
        if !self.path.starts_with('/') || self.path.chars().any(|c| c.is_whitespace() || c == '?') {
            return Err(p.at(
                key("path"),
                format!(
                    "`{}` must start with `/` and hold no spaces or `?`",
                    quote(&self.path)
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
            let method = Method::from_bytes(upper.as_bytes()).map_err(|_| {
                p.at(
                    key("methods"),
                    format!("`{}` is not an HTTP method", quote(m)),
                )
            })?;
            if !methods.contains(&method) {
                methods.push(method);
            }
        }
        // HEAD is answered wherever GET is (RFC 9110 9.3.2): same headers, no body.
        if let Some(get) = methods.iter().position(|m| m == Method::GET) {
            if !methods.contains(&Method::HEAD) {
                methods.insert(get + 1, Method::HEAD);
            }
        }
        let mode = self.mode_config(p, at, default_mode)?;
        let queue_timeout = p.millis(
            key("queue_timeout_ms"),
            self.queue_timeout_ms,
            range::QUEUE_TIMEOUT_MS,
        )?;
        let named: Vec<&str> = [
            (self.builtin.is_some(), "`builtin`"),
            (self.exec.is_some(), "`[exec]`"),
            (self.worker.is_some(), "`[worker]`"),
            (self.upstream.is_some(), "`[upstream]`"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        let handler = match (self.builtin, self.exec, self.worker, self.upstream) {
            (Some(name), None, None, None) => HandlerConfig::Builtin(name),
            (None, Some(exec), None, None) => {
                HandlerConfig::Exec(exec.validate(p, &key("exec"))?)
            }
            (None, None, Some(worker), None) => HandlerConfig::Worker(
                worker
                    .validate()
                    .map_err(|(k, problem)| p.at(format!("{at}.worker.{k}"), problem))?,
            ),
            (None, None, None, Some(upstream)) => {
                let ranges = [
                    range::CONNECT_TIMEOUT_MS,
                    range::JOB_TIMEOUT_MS,
                    range::STREAM_IDLE_TIMEOUT_MS,
                    range::WEBSOCKET_IDLE_TIMEOUT_MS,
                    range::HEALTH_INTERVAL_MS,
                    range::KEEPALIVE_TIMEOUT_MS,
                ];
                let upstream = upstream
                    .validate(ranges, range::MAX_OUTPUT_BYTES)
                    .map_err(|(k, problem)| p.at(format!("{at}.upstream.{k}"), problem))?;
                if upstream.strip_prefix && !self.path.ends_with('/') {
                    return Err(p.at(
                        key("upstream.strip_prefix"),
                        "needs a prefix endpoint (a `path` ending in `/`)",
                    ));
                }
                HandlerConfig::Upstream(upstream)
            }
            (None, None, None, None) => return Err(p.at(
                at,
                "needs `builtin = \"...\"`, an `[endpoint.exec]`, an `[endpoint.worker]` or an `[endpoint.upstream]` table",
            )),
            _ => return Err(p.at(at, format!("has both {}: choose one", named.join(" and ")))),
        };
        let batch = batch_config(p, at, self.max_batch, self.max_batch_wait_ms, &handler)?;
        if batch.max.get() > 1 && batch.wait >= queue_timeout {
            return Err(p.at(
                key("max_batch_wait_ms"),
                format!(
                    "must be less than queue_timeout_ms ({}): a lone request would wait for its batch until its queue deadline",
                    queue_timeout.as_millis()
                ),
            ));
        }
        Ok(EndpointConfig {
            path: self.path,
            methods,
            mode,
            expected_wait_admission: self.expected_wait_admission,
            queue: p.count(key("queue"), self.queue, range::QUEUE)?,
            overflow: self.overflow,
            on_client_gone: self.on_client_gone,
            queue_timeout,
            batch,
            max_body_bytes: p.in_range(
                key("max_body_bytes"),
                self.max_body_bytes,
                range::MAX_BODY_BYTES,
            )?,
            handler,
            auth,
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
        let pace = p.millis(key("pace_ms"), self.pace_ms.unwrap_or(0), range::PACE_MS)?;
        let workers = self
            .workers
            .map(|w| p.count(key("workers"), w, range::WORKERS))
            .transpose()?;
        let yellow_workers = self
            .yellow_workers
            .map(|w| p.count(key("yellow_workers"), w, range::WORKERS))
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

/// The endpoint's dynamic batching: `max_batch` only where the handler can take a batch in one
/// call (warm workers); `max_batch_wait_ms` only where `max_batch` is above 1.
fn batch_config(
    p: &Problems<'_>,
    at: &str,
    max_batch: Option<usize>,
    max_batch_wait_ms: Option<u64>,
    handler: &HandlerConfig,
) -> Result<BatchConfig, ConfigError> {
    let key = |k: &str| format!("{at}.{k}");
    let max = p.count(key("max_batch"), max_batch.unwrap_or(1), range::MAX_BATCH)?;
    let wait = p.millis(
        key("max_batch_wait_ms"),
        max_batch_wait_ms.unwrap_or(0),
        range::MAX_BATCH_WAIT_MS,
    )?;
    if max.get() > 1 {
        let kind = match handler {
            HandlerConfig::Worker(_) => None,
            HandlerConfig::Builtin(_) => Some("a builtin"),
            HandlerConfig::Exec(_) => Some("an exec"),
            HandlerConfig::Upstream(_) => Some("an upstream"),
        };
        if let Some(kind) = kind {
            return Err(p.at(
                key("max_batch"),
                format!("{kind} endpoint runs one request per call and cannot take a batch; only `[endpoint.worker]` endpoints batch (use 1, or leave it out)"),
            ));
        }
    } else if max_batch_wait_ms.is_some_and(|ms| ms > 0) {
        return Err(p.at(
            key("max_batch_wait_ms"),
            "has no effect without max_batch above 1",
        ));
    }
    Ok(BatchConfig { max, wait })
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
            Some(prog) if prog.len() > MAX_PATH_LEN => {
                return Err(p.at(
                    key("command"),
                    format!(
                        "the program name is {} bytes long; at most {MAX_PATH_LEN} are accepted",
                        prog.len()
                    ),
                ))
            }
            Some(_) => {}
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            return Err(p.at(key("command"), "arguments may not contain NUL"));
        }
        let content_type = HeaderValue::from_str(&self.content_type).map_err(|_| {
            p.at(
                key("content_type"),
                format!(
                    "`{}` is not a valid header value",
                    quote(&self.content_type)
                ),
            )
        })?;
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(p.at(
                    key("env"),
                    format!("`{}` is not a usable environment variable", quote(k)),
                ));
            }
        }
        Ok(ExecConfig {
            command: self.command,
            cwd: self.cwd.map(|c| p.path(key("cwd"), c)).transpose()?,
            output: self.output,
            content_type,
            timeout: p.millis(key("timeout_ms"), self.timeout_ms, range::JOB_TIMEOUT_MS)?,
            kill_grace: p.millis(
                key("kill_grace_ms"),
                self.kill_grace_ms,
                range::KILL_GRACE_MS,
            )?,
            max_output_bytes: p.in_range(
                key("max_output_bytes"),
                self.max_output_bytes,
                range::MAX_OUTPUT_BYTES,
            )?,
            stream: self.stream,
            stream_idle_timeout: p.millis(
                key("stream_idle_timeout_ms"),
                self.stream_idle_timeout_ms,
                range::STREAM_IDLE_TIMEOUT_MS,
            )?,
            pass_env: self.pass_env,
            env: self.env.into_iter().collect(),
        })
    }
}
