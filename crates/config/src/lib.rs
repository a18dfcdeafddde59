//! Configuration in two stages: the raw TOML shape (serde, unknown keys refused) becomes a validated
//! [`Config`] with real types. Every error names the file, the key and the problem.
//!
//! The documented reference of every key, with units and defaults, is `config/reference.toml`.
//! Plain data only: the parts that use a setting depend on this crate, never the other way.
//!
//! # Layout
//! - this file: the validated [`Config`] and its parts.
//! - `raw`: the TOML shape (serde) and its validation into [`Config`].
//! - [`mode`]: the execution modes, each with its own settings.
//! - [`light`]: the traffic light's colours and thresholds.
//! - [`tls`]: the HTTPS certificate settings.
//! - [`worker`]: warm worker processes (`[endpoint.worker]`).
//! - [`upstream`]: an HTTP server the endpoint forwards to (`[endpoint.upstream]`).

pub mod light;
pub mod mode;
mod raw;
pub mod tls;
pub mod upstream;
pub mod worker;

pub use upstream::{
    ClientCert, HostHeader, UpstreamAddress, UpstreamConfig, UpstreamServer, UpstreamTls,
};
pub use worker::WorkerConfig;

use http::HeaderValue;
use http::Method;
use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use mode::{Mode, ModeConfig};
pub use raw::quote;

/// Paths the front end answers itself; an endpoint may not take them.
pub const RESERVED_PATHS: &[&str] = &["/status", "/metrics", "/healthz", "/readyz"];

/// Largest config file read, in bytes (1 MiB).
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Characters of a parser's message kept in an error (it may quote a long bad value).
const MAX_MESSAGE_CHARS: usize = 256;

/// Characters of the config's own text quoted where a syntax error points.
const MAX_QUOTE_CHARS: usize = 40;

/// A configuration problem: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {key}: {problem}")]
pub struct ConfigError {
    /// The file the config came from (or `<embedded default>`).
    pub file: String,
    /// The offending key, as a path such as `endpoint[1].exec.timeout_ms`.
    pub key: String,
    /// What is wrong, in a sentence a user can act on.
    pub problem: String,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Server-wide settings.
    pub server: ServerConfig,
    /// The traffic light.
    pub light: LightConfig,
    /// The endpoints, in file order.
    pub endpoints: Vec<EndpointConfig>,
}

/// Server-wide settings (`[server]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Open connections at most; at the limit the server stops accepting.
    pub max_connections: NonZeroUsize,
    /// The kernel's queue of connections not yet accepted (capped by `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// Time a client has to send a complete request head, from the connection's accept or its
    /// last answer (so also how long a new or kept-alive HTTP/1 connection may stay silent).
    pub header_read_timeout: Duration,
    /// How long a connection may stay idle (no request in flight) after its first request.
    pub idle_timeout: Duration,
    /// Time a client has to send the request body.
    pub body_read_timeout: Duration,
    /// How long a connection's writes may stay blocked, or its unsent answers untaken (the client
    /// accepts no byte of a pending answer, on the socket or through HTTP/2 flow control), before
    /// it is closed.
    pub send_timeout: Duration,
    /// How long an HTTP/1 connection whose request overflowed an `ignore` endpoint is held open,
    /// unanswered and unread, before it is closed without a byte (the hold); zero closes it at
    /// once. Held connections count against `max_connections` and are the first evicted at it.
    pub overflow_hold: Duration,
    /// Time the running jobs get to finish on shutdown before children are killed.
    pub shutdown_grace: Duration,
    /// Largest request head (request line and headers); larger gets `431`. At least 8192.
    pub max_header_bytes: usize,
    /// The bound of each HTTP/1 connection's read and write buffers (hyper's `max_buf_size`):
    /// `max_header_bytes` unless set larger. Large bodies move this many bytes per system call
    /// at most; above `max_header_bytes`, the head limit is checked on the parsed head.
    pub io_buffer_bytes: usize,
    /// Requests served on one HTTP/1 connection before it is closed (`Connection: close`).
    pub max_requests_per_connection: NonZeroUsize,
    /// Concurrent streams on one HTTP/2 connection.
    pub max_h2_streams: u32,
    /// Response bytes not yet taken by their clients, server-wide, above which a connection that
    /// still has some is refused new large answers (`503`); see docs/HARDENING.md.
    pub max_unsent_bytes: u64,
    /// Response bytes not yet taken by its client above which a connection is refused new large
    /// answers (`503`); one answer of any size always fits.
    pub max_unsent_bytes_per_connection: u64,
    /// Write one access-log line per answered request (never for ignored overflow).
    pub access_log: bool,
    /// The credentials every endpoint asks for unless it says otherwise (`[server.auth]`).
    pub auth: Option<AuthConfig>,
    /// `/status`, `/metrics`, `/healthz` and `/readyz` ask for the `[server.auth]` credentials
    /// too; default false (open, for probes and scrapers).
    pub protect_admin: bool,
    /// Which query parameter values the access log hides; default none.
    pub access_log_redact_query: QueryRedaction,
    /// A separate listener for `/status`, `/metrics`, `/healthz` and `/readyz` (which the main
    /// listener then no longer answers).
    pub admin_listen: Option<SocketAddr>,
    /// HTTPS on the main listener.
    pub tls: Option<TlsConfig>,
}

/// Who may call an endpoint (`[server.auth]`, `[endpoint.auth]`): a request must carry
/// `Authorization: Bearer TOKEN` with a token from the tokens file, or `Authorization: Basic ...`
/// with a user and password from the users file. At least one of the two files is set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AuthConfig {
    /// One token per line; blank lines and lines starting with `#` are ignored. Re-read on
    /// SIGHUP.
    pub bearer_tokens_file: Option<PathBuf>,
    /// One `user:password` per line (plaintext; the password is everything after the first
    /// `:`); blank lines and lines starting with `#` are ignored. Re-read on SIGHUP.
    pub basic_users_file: Option<PathBuf>,
    /// The realm named in the `WWW-Authenticate` challenges. Default `fiddler_crab`.
    pub realm: String,
}

/// The query parameter values the access log replaces with `REDACTED`
/// (`server.access_log_redact_query`: `false`, `true`, or a list of parameter names).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum QueryRedaction {
    /// The query is logged as sent (`false`, the default).
    #[default]
    None,
    /// Every parameter's value is redacted (`true`).
    All,
    /// The values of these parameters are redacted.
    Params(Vec<String>),
}

impl QueryRedaction {
    /// `query` as the access log shows it: each `name=value` pair whose value is to be hidden
    /// becomes `name=REDACTED`.
    pub fn apply(&self, query: &str) -> String {
        let names = match self {
            QueryRedaction::None => return query.to_string(),
            QueryRedaction::All => None,
            QueryRedaction::Params(names) => Some(names),
        };
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| {
                let name = pair.split_once('=').map_or(pair, |(n, _)| n);
                let hide = names.is_none_or(|names| names.iter().any(|n| n == name));
                if hide && pair.contains('=') {
                    format!("{name}=REDACTED")
                } else {
                    pair.to_string()
                }
            })
            .collect();
        pairs.join("&")
    }
}

/// HTTPS on the main listener (`[server.tls]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Certificate and key files, and the handshake timeout.
    pub settings: crate::tls::TlsSettings,
    /// `Strict-Transport-Security: max-age=N` on every HTTPS response, when set.
    pub hsts_max_age: Option<u64>,
    /// A plain-HTTP listener that redirects every request to HTTPS with `308`.
    pub redirect_listen: Option<SocketAddr>,
}

/// The traffic light's sampler and policy (`[light]`).
#[derive(Debug, Clone, PartialEq)]
pub struct LightConfig {
    /// Time between two samples.
    pub sample_every: Duration,
    /// With no successful sample for this long, the light goes to `fail_safe`.
    pub stale_after: Duration,
    /// The light while the inputs are stale.
    pub fail_safe: crate::light::Light,
    /// Thresholds with hysteresis, and the minimum time in a state before going down.
    pub policy: crate::light::LightPolicy,
}

/// What happens to a request that finds the queue full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overflow {
    /// Close the connection without a single response byte (HTTP/2: reset the stream).
    Ignore,
    /// Answer `503 Service Unavailable` with `Retry-After` at once.
    Reject,
}

impl Overflow {
    /// The name used in config and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::Ignore => "ignore",
            Overflow::Reject => "reject",
        }
    }
}

/// What happens to a running job whose client has gone (HTTP/1 connection closed, HTTP/2
/// stream reset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnClientGone {
    /// The handler is told and stops the job (exec: kills the program and what it started);
    /// counted as `client_gone`.
    Stop,
    /// The job runs to its end; its answer is dropped; counted by its result.
    Finish,
}

/// One endpoint (`[[endpoint]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    /// Request path, starting with `/`: exact, or, for an upstream endpoint whose path ends in
    /// `/`, a prefix (see [`EndpointConfig::is_prefix`]).
    pub path: String,
    /// Methods allowed; others get `405` with `Allow`. `HEAD` is added wherever `GET` is.
    pub methods: Vec<Method>,
    /// Execution mode, with the settings only that mode has.
    pub mode: ModeConfig,
    /// Admitted-but-not-started jobs at most (the handoff queue's capacity).
    pub queue: NonZeroUsize,
    /// What a request that finds the queue full gets.
    pub overflow: Overflow,
    /// What happens to a running job whose client has gone.
    pub on_client_gone: OnClientGone,
    /// A job that waited longer than this is answered `504` and not run.
    pub queue_timeout: Duration,
    /// Treat a request as overflow at once when the expected wait (queue depth ÷ concurrency ×
    /// estimated job time) already exceeds `queue_timeout`.
    pub expected_wait_admission: bool,
    /// Largest request body accepted; larger gets `413` before anything is queued.
    pub max_body_bytes: u64,
    /// Dynamic batching: how many queued requests one handler call may take.
    pub batch: BatchConfig,
    /// What runs the request.
    pub handler: HandlerConfig,
    /// The credentials a request must carry: the endpoint's `[endpoint.auth]`, else the
    /// server's `[server.auth]` unless `auth = false`; `None` is open.
    pub auth: Option<AuthConfig>,
}

/// An endpoint's dynamic batching (`max_batch`, `max_batch_wait_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Requests one handler call takes at most; 1 (the default) is no batching. Above 1 only on
    /// worker endpoints.
    pub max: NonZeroUsize,
    /// How long a batch smaller than `max` waits for more requests, at most (never past its
    /// oldest request's queue deadline). Default zero: take what is queued.
    pub wait: Duration,
}

impl Default for BatchConfig {
    fn default() -> BatchConfig {
        BatchConfig {
            max: NonZeroUsize::MIN,
            wait: Duration::ZERO,
        }
    }
}

/// What runs an endpoint's requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerConfig {
    /// A handler compiled into the server, by name (`ping`, `echo`, or one registered by a test).
    Builtin(String),
    /// An external program.
    Exec(ExecConfig),
    /// Warm worker processes, one per concurrency slot, serving HTTP/1.1 on Unix sockets.
    Worker(WorkerConfig),
    /// An HTTP/1.1 server that runs by itself, reached over TCP or a Unix socket.
    Upstream(UpstreamConfig),
}

/// How an exec handler reads the program's stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecOutput {
    /// stdout is the body, sent with `content_type`.
    Raw,
    /// stdout starts with CGI/1.1 response headers (`Status:`, `Content-Type:`, ...).
    Cgi,
}

/// An external program (`[endpoint.exec]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecConfig {
    /// argv: program and arguments, never through a shell.
    pub command: Vec<String>,
    /// Working directory of the child; the server's own when unset.
    pub cwd: Option<PathBuf>,
    /// How stdout becomes the response.
    pub output: ExecOutput,
    /// Content type of a raw response (and the default for CGI output without one).
    pub content_type: HeaderValue,
    /// Run time limit; then the process group gets SIGTERM.
    pub timeout: Duration,
    /// Time between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// stdout bytes at most; past it the child is killed and `502` answered (when streaming and
    /// the head was sent: the stream is cut short).
    pub max_output_bytes: usize,
    /// Stream stdout to the client as it comes (after the CGI headers), instead of answering
    /// once the program has exited. Default false.
    pub stream: bool,
    /// When streaming: the longest wait for the next stdout bytes once the first came; past it
    /// the program is killed and the stream cut short (default 30 s).
    pub stream_idle_timeout: Duration,
    /// Server environment variables passed through beside PATH, LANG and HOME.
    pub pass_env: Vec<String>,
    /// Variables set for the child.
    pub env: Vec<(String, String)>,
}

impl EndpointConfig {
    /// True if the endpoint serves every path under its own (an upstream endpoint whose `path`
    /// ends in `/`); otherwise it serves its exact path only.
    pub fn is_prefix(&self) -> bool {
        matches!(self.handler, HandlerConfig::Upstream(_)) && self.path.ends_with('/')
    }
}

impl Config {
    /// Parse and validate TOML text; `file` names the source in errors.
    ///
    /// A parse error names the key path serde was at (`endpoint[1].exec.timeout_ms`, tracked by
    /// `serde_path_to_error`), and the line where toml located the problem. A syntax error comes
    /// before any key was read: it names `(document)` and quotes the text toml points at (its
    /// message alone says "duplicate key" without the key).
    pub fn from_toml(text: &str, file: &str) -> Result<Config, ConfigError> {
        let error = |key: String, e: toml::de::Error, quote: bool| {
            // serde's messages may quote the bad value: cut them short.
            let mut problem = raw::clip(e.message().trim(), MAX_MESSAGE_CHARS);
            if let Some(span) = e.span() {
                let at = text.get(span.clone()).unwrap_or_default().trim();
                if quote && !at.is_empty() && !at.contains('\n') {
                    problem = format!("{problem}: `{}`", raw::clip(at, MAX_QUOTE_CHARS));
                }
                problem = format!("{problem} (line {})", line_of(text, span.start));
            }
            ConfigError {
                file: file.to_string(),
                key,
                problem,
            }
        };
        let document = toml::Deserializer::parse(text)
            .map_err(|e| error("(document)".to_string(), e, true))?;
        let raw: raw::RawConfig = serde_path_to_error::deserialize(document).map_err(|e| {
            let path = e.path().to_string();
            // An empty path (an error before any key was read) prints as ".".
            let key = if path == "." {
                "(document)".to_string()
            } else {
                path
            };
            error(key, e.into_inner(), false)
        })?;
        raw.validate(file)
    }

    /// Read, parse and validate a TOML file of at most [`MAX_CONFIG_BYTES`] (reading stops one
    /// byte past it, so `/dev/zero` or a runaway file is a clear error, not an allocation).
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        use std::io::Read;
        let file = path.display().to_string();
        let error = |problem: String| ConfigError {
            file: file.clone(),
            key: "(file)".to_string(),
            problem,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes))
            .map_err(|e| error(format!("cannot read: {e}")))?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(error(format!(
                "the file is larger than {MAX_CONFIG_BYTES} bytes, the most a config may be"
            )));
        }
        let text = String::from_utf8(bytes)
            .map_err(|e| error(format!("cannot read: not UTF-8 text ({e})")))?;
        Config::from_toml(&text, &file)
    }

    /// The endpoint paths, for logs.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.endpoints.iter().map(|e| e.path.as_str())
    }

    /// Check that no two endpoints share a path (also done by [`Config::from_toml`]).
    fn unique_paths(endpoints: &[EndpointConfig], file: &str) -> Result<(), ConfigError> {
        let mut seen = HashSet::new();
        for (i, ep) in endpoints.iter().enumerate() {
            if !seen.insert(ep.path.as_str()) {
                return Err(ConfigError {
                    file: file.to_string(),
                    key: format!("endpoint[{i}].path"),
                    problem: format!("`{}` is already used by an earlier endpoint", ep.path),
                });
            }
        }
        Ok(())
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let before = text.get(..offset).unwrap_or(text);
    before.bytes().filter(|&b| b == b'\n').count() + 1
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "listen {}, endpoints:", self.server.listen)?;
        for ep in &self.endpoints {
            write!(f, " {} ({})", ep.path, ep.mode.kind())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_redaction_hides_the_values_asked_for() {
        let parse = |line: &str| {
            Config::from_toml(
                &format!("[server]\n{line}\n[[endpoint]]\npath = \"/a\"\nbuiltin = \"ping\"\n"),
                "t.toml",
            )
            .unwrap()
            .server
            .access_log_redact_query
        };
        let q = "token=s3cret&page=2&flag";
        assert_eq!(parse("").apply(q), q);
        assert_eq!(parse("access_log_redact_query = false").apply(q), q);
        assert_eq!(
            parse("access_log_redact_query = true").apply(q),
            "token=REDACTED&page=REDACTED&flag"
        );
        assert_eq!(
            parse("access_log_redact_query = [\"token\"]").apply(q),
            "token=REDACTED&page=2&flag"
        );
    }

    #[test]
    fn errors_name_the_key_with_its_endpoint_index() {
        let text = "[[endpoint]]\npath = \"/a\"\nbuiltin = \"ping\"\n\n[[endpoint]]\npath = \"/b\"\n[endpoint.exec]\ncommand = [\"x\"]\ntimeout_ms = \"soon\"\n";
        let e = Config::from_toml(text, "t.toml").unwrap_err();
        assert_eq!(e.file, "t.toml");
        assert_eq!(e.key, "endpoint[1].exec.timeout_ms");
        assert!(e.problem.contains("invalid type"), "{e}");
        assert!(e.problem.ends_with("(line 9)"), "{e}");
    }

    #[test]
    fn a_syntax_error_names_the_document_and_its_line() {
        let text = "[[endpoint]]\npath = \"/a\"\nbuiltin = = \"ping\"\n";
        let e = Config::from_toml(text, "t.toml").unwrap_err();
        assert_eq!(e.key, "(document)");
        assert!(e.problem.ends_with("(line 3)"), "{e}");
    }

    #[test]
    fn a_duplicate_key_is_quoted_with_its_line() {
        let text = "[[endpoint]]\npath = \"/a\"\npath = \"/b\"\nbuiltin = \"ping\"\n";
        let e = Config::from_toml(text, "t.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.toml: (document): duplicate key: `path` (line 3)"
        );
    }

    #[test]
    fn a_key_the_mode_does_not_use_is_an_error_naming_the_modes_that_do() {
        let text =
            "[[endpoint]]\npath = \"/p\"\nmode = \"jellyfish\"\npace_ms = 5\nbuiltin = \"ping\"\n";
        let e = Config::from_toml(text, "t.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.toml: endpoint[0].pace_ms: not used by mode \"jellyfish\" (crab and adaptive only)"
        );
        let text = "[server]\ndefault_mode = \"crab\"\n[[endpoint]]\npath = \"/p\"\nworkers = 2\nbuiltin = \"ping\"\n";
        let e = Config::from_toml(text, "t.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.toml: endpoint[0].workers: not used by mode \"crab\" (jellyfish and adaptive only)"
        );
    }

    #[test]
    fn each_mode_holds_its_own_settings() {
        let text = "[[endpoint]]\npath = \"/a\"\nmode = \"adaptive\"\nworkers = 4\nyellow_workers = 2\npace_ms = 7\nbuiltin = \"ping\"\n\
                    [[endpoint]]\npath = \"/j\"\nmode = \"jellyfish\"\nworkers = 3\nbuiltin = \"ping\"\n\
                    [[endpoint]]\npath = \"/c\"\npace_ms = 9\nbuiltin = \"ping\"\n";
        let c = Config::from_toml(text, "t.toml").unwrap();
        let n = |n| NonZeroUsize::new(n);
        assert_eq!(
            c.endpoints[0].mode,
            ModeConfig::Adaptive {
                workers: n(4),
                yellow_workers: n(2),
                pace: Duration::from_millis(7)
            }
        );
        assert_eq!(c.endpoints[1].mode, ModeConfig::Jellyfish { workers: n(3) });
        assert_eq!(
            c.endpoints[2].mode,
            ModeConfig::Crab {
                pace: Duration::from_millis(9)
            }
        );
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let c = Config::from_toml(
            "[[endpoint]]\npath = \"/p\"\nbuiltin = \"ping\"\n",
            "t.toml",
        )
        .unwrap();
        let ep = &c.endpoints[0];
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            (ep.mode, ep.overflow, ep.queue.get()),
            (
                ModeConfig::Crab {
                    pace: Duration::ZERO
                },
                Overflow::Ignore,
                100
            )
        );
        assert_eq!(ep.methods, vec![Method::GET, Method::HEAD, Method::POST]);
        assert!(ep.expected_wait_admission);
    }

    #[test]
    fn the_server_default_mode_applies_where_an_endpoint_names_none() {
        let text = "[server]\ndefault_mode = \"jellyfish\"\n[[endpoint]]\npath = \"/p\"\nbuiltin = \"ping\"\n[[endpoint]]\npath = \"/q\"\nmode = \"crab\"\nbuiltin = \"ping\"\n";
        let c = Config::from_toml(text, "t.toml").unwrap();
        assert_eq!(c.endpoints[0].mode.kind(), Mode::Jellyfish);
        assert_eq!(c.endpoints[1].mode.kind(), Mode::Crab);
    }

    #[test]
    fn yellow_workers_may_not_exceed_workers() {
        let text = "[[endpoint]]\npath = \"/p\"\nmode = \"adaptive\"\nworkers = 2\nyellow_workers = 3\nbuiltin = \"ping\"\n";
        let e = Config::from_toml(text, "t.toml").unwrap_err();
        assert_eq!(e.key, "endpoint[0].yellow_workers");
    }

    fn batch_of(endpoint_keys: &str, handler: &str) -> Result<BatchConfig, ConfigError> {
        let text = format!("[[endpoint]]\npath = \"/b\"\n{endpoint_keys}\n{handler}\n");
        Config::from_toml(&text, "t.toml").map(|c| c.endpoints[0].batch)
    }

    const WORKER: &str =
        "[endpoint.worker]\ncommand = [\"python3\", \"-m\", \"fiddler_worker\", \"app\"]";

    #[test]
    fn batching_is_off_by_default_and_takes_its_keys_on_a_worker_endpoint() {
        assert_eq!(batch_of("", WORKER).unwrap(), BatchConfig::default());
        let b = batch_of("max_batch = 16\nmax_batch_wait_ms = 5", WORKER).unwrap();
        assert_eq!(b.max.get(), 16);
        assert_eq!(b.wait, Duration::from_millis(5));
    }

    #[test]
    fn max_batch_on_a_builtin_or_exec_endpoint_is_an_error_saying_why() {
        let e = batch_of("max_batch = 4", "builtin = \"ping\"").unwrap_err();
        assert_eq!(e.key, "endpoint[0].max_batch");
        assert!(
            e.problem
                .contains("a builtin endpoint runs one request per call"),
            "{e}"
        );
        let e = batch_of("max_batch = 4", "[endpoint.exec]\ncommand = [\"cat\"]").unwrap_err();
        assert_eq!(e.key, "endpoint[0].max_batch");
        assert!(e.problem.contains("an exec endpoint"), "{e}");
        let e = batch_of(
            "max_batch = 4",
            "[endpoint.upstream]\nurl = \"http://127.0.0.1:8081\"",
        )
        .unwrap_err();
        assert!(e.problem.contains("an upstream endpoint"), "{e}");
        // 1 is no batching: fine everywhere.
        assert!(batch_of("max_batch = 1", "builtin = \"ping\"").is_ok());
    }

    #[test]
    fn batch_values_out_of_range_or_without_effect_are_errors() {
        let e = batch_of("max_batch = 0", WORKER).unwrap_err();
        assert_eq!(e.key, "endpoint[0].max_batch");
        let e = batch_of("max_batch = 1025", WORKER).unwrap_err();
        assert_eq!(e.key, "endpoint[0].max_batch");
        let e = batch_of("max_batch = 8\nmax_batch_wait_ms = 60001", WORKER).unwrap_err();
        assert_eq!(e.key, "endpoint[0].max_batch_wait_ms");
        let e = batch_of("max_batch_wait_ms = 5", WORKER).unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.toml: endpoint[0].max_batch_wait_ms: has no effect without max_batch above 1"
        );
        let e = batch_of(
            "queue_timeout_ms = 100\nmax_batch = 8\nmax_batch_wait_ms = 100",
            WORKER,
        )
        .unwrap_err();
        assert_eq!(e.key, "endpoint[0].max_batch_wait_ms");
        assert!(
            e.problem.contains("less than queue_timeout_ms (100)"),
            "{e}"
        );
    }
}
