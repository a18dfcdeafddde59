//! Warm worker processes (`[endpoint.worker]`): the raw TOML table and its validated form.
//!
//! A worker endpoint keeps one long-lived process per concurrency slot, each serving HTTP/1.1 on
//! its own Unix socket (see `docs/WORKERS.md`). Every limit here has a default; the documented
//! reference of each key is `config/reference.toml`.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroU64};
use std::path::PathBuf;
use std::time::Duration;

/// The longest Unix socket path a worker may be given, in bytes: `sun_path` holds 107 and the
/// Python helper binds `PATH.tmp` first.
pub const MAX_SOCKET_PATH: usize = 103;

/// A warm worker pool (`[endpoint.worker]`), validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// argv of one worker process: program and arguments, never through a shell.
    pub command: Vec<String>,
    /// Working directory of the workers (and base of relative `watch` paths); the server's own
    /// when unset.
    pub cwd: Option<PathBuf>,
    /// Variables set for the workers.
    pub env: Vec<(String, String)>,
    /// Server environment variables passed through beside PATH, LANG and HOME.
    pub pass_env: Vec<String>,
    /// A starting worker that does not accept (and pass `ready_path`) within this is killed and
    /// counted as a failed start. Default 60 s.
    pub ready_timeout: Duration,
    /// Optional path a worker must answer `GET` with 2xx before it counts as ready.
    pub ready_path: Option<String>,
    /// Optional path an idle worker must answer `GET` with 2xx whenever it has been idle
    /// `health_interval`; a worker that does not within `health_timeout` is replaced.
    pub health_path: Option<String>,
    /// How long a worker stays idle before its health check. Default 10 s.
    pub health_interval: Duration,
    /// How long one health check may take. Default 5 s.
    pub health_timeout: Duration,
    /// One request's time limit; past it the answer is `504` and the worker's process group is
    /// terminated and replaced. Default 30 s.
    pub timeout: Duration,
    /// Time between SIGTERM and SIGKILL when a worker is stopped. Default 2 s.
    pub kill_grace: Duration,
    /// Recycle a worker after this many requests (`None`: never). Default never.
    pub max_requests: Option<NonZeroU64>,
    /// Up to this many more requests, drawn at random per worker, so workers do not all recycle
    /// at once. Default 0.
    pub max_requests_jitter: u64,
    /// Recycle a worker whose resident memory exceeds this (checked between requests). Default off.
    pub max_rss_bytes: Option<NonZeroU64>,
    /// Largest response body accepted from a worker; past it the answer is `502` (a streamed
    /// answer is cut short). Default 64 MiB.
    pub max_response_bytes: usize,
    /// A streamed answer (chunked, or of unknown length) may pause at most this long between two
    /// chunks; past it the stream is cut short and the worker replaced. Default 30 s.
    pub stream_idle_timeout: Duration,
    /// A kept-alive connection idle this long is closed and a fresh one made for the next
    /// request (0: a fresh connection per request). Keep it below the worker's own idle timeout
    /// (gunicorn's threaded workers: 2 s). Default 1 s.
    pub keepalive_timeout: Duration,
    /// Directory in which the server creates its private (0700) socket directory; default
    /// `$XDG_RUNTIME_DIR`, else the temporary directory.
    pub socket_dir: Option<PathBuf>,
    /// Files whose change (modification time or size) triggers a rolling restart.
    pub watch: Vec<PathBuf>,
    /// First delay before restarting a worker that failed. Default 100 ms.
    pub restart_backoff: Duration,
    /// Longest restart delay (the delay doubles per consecutive failure). Default 10 s.
    pub max_restart_backoff: Duration,
    /// When the endpoint counts as crash-looping.
    pub crash_loop: CrashLoop,
}

impl WorkerConfig {
    /// True if workers started from `self` would differ from workers started from `other`: their
    /// argv, directory, environment or socket directory, or the request limit each gets at its
    /// start (`max_requests` and its jitter). Any other key (a timeout, a limit read per
    /// request, the health checks, the restart backoff) takes effect on the running workers.
    pub fn starts_other_workers(&self, other: &WorkerConfig) -> bool {
        self.command != other.command
            || self.cwd != other.cwd
            || self.env != other.env
            || self.pass_env != other.pass_env
            || self.socket_dir != other.socket_dir
            || self.max_requests != other.max_requests
            || self.max_requests_jitter != other.max_requests_jitter
    }
}

/// A crash loop: `exits` unexpected worker exits (or failed starts) within `window`. While one
/// lasts and no worker is ready, the endpoint treats new requests as overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashLoop {
    /// Exits that make a crash loop. Default 5.
    pub exits: NonZeroU32,
    /// The window they are counted in. Default 60 s.
    pub window: Duration,
}

/// The `[endpoint.worker]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWorker {
    command: Vec<String>,
    cwd: Option<PathBuf>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    pass_env: Vec<String>,
    #[serde(default = "default_ready_timeout_ms")]
    ready_timeout_ms: u64,
    ready_path: Option<String>,
    health_path: Option<String>,
    health_interval_ms: Option<u64>,
    health_timeout_ms: Option<u64>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_kill_grace_ms")]
    kill_grace_ms: u64,
    #[serde(default)]
    max_requests: u64,
    #[serde(default)]
    max_requests_jitter: u64,
    #[serde(default)]
    max_rss_bytes: u64,
    #[serde(default = "default_max_response_bytes")]
    max_response_bytes: usize,
    #[serde(default = "default_stream_idle_timeout_ms")]
    stream_idle_timeout_ms: u64,
    #[serde(default = "default_keepalive_timeout_ms")]
    keepalive_timeout_ms: u64,
    socket_dir: Option<PathBuf>,
    #[serde(default)]
    watch: Vec<PathBuf>,
    #[serde(default = "default_restart_backoff_ms")]
    restart_backoff_ms: u64,
    #[serde(default = "default_max_restart_backoff_ms")]
    max_restart_backoff_ms: u64,
    #[serde(default = "default_crash_loop_exits")]
    crash_loop_exits: u32,
    #[serde(default = "default_crash_loop_window_ms")]
    crash_loop_window_ms: u64,
}

fn default_ready_timeout_ms() -> u64 {
    60_000
}
fn default_health_interval_ms() -> u64 {
    10_000
}
fn default_health_timeout_ms() -> u64 {
    5_000
}
fn default_timeout_ms() -> u64 {
    30_000
}
fn default_kill_grace_ms() -> u64 {
    2_000
}
fn default_max_response_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_stream_idle_timeout_ms() -> u64 {
    30_000
}
fn default_keepalive_timeout_ms() -> u64 {
    1_000
}
fn default_restart_backoff_ms() -> u64 {
    100
}
fn default_max_restart_backoff_ms() -> u64 {
    10_000
}
fn default_crash_loop_exits() -> u32 {
    5
}
fn default_crash_loop_window_ms() -> u64 {
    60_000
}

/// A problem with one key of the table: the key (relative to the table) and what is wrong.
pub(crate) type Problem = (&'static str, String);

fn millis(key: &'static str, ms: u64) -> Result<Duration, Problem> {
    match ms {
        0 => Err((key, "must be at least 1 (milliseconds)".into())),
        ms => Ok(Duration::from_millis(ms)),
    }
}

impl RawWorker {
    /// Validate the table; an error names the offending key relative to it.
    pub(crate) fn validate(self) -> Result<WorkerConfig, Problem> {
        match self.command.first() {
            None => {
                return Err((
                    "command",
                    "must name a program: [\"program\", \"arg\", ...]".into(),
                ))
            }
            Some(prog) if prog.is_empty() => {
                return Err(("command", "the program name is empty".into()))
            }
            Some(_) => {}
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            return Err(("command", "arguments may not contain NUL".into()));
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(("env", format!("`{k}` is not a usable environment variable")));
            }
        }
        for (key, path) in [
            ("ready_path", &self.ready_path),
            ("health_path", &self.health_path),
        ] {
            if let Some(path) = path {
                if !path.starts_with('/')
                    || path.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err((
                        key,
                        format!(
                            "`{}` must start with `/` and hold no spaces",
                            crate::quote(path)
                        ),
                    ));
                }
            }
        }
        if self.health_path.is_none() {
            for (key, value) in [
                ("health_interval_ms", self.health_interval_ms),
                ("health_timeout_ms", self.health_timeout_ms),
            ] {
                if value.is_some() {
                    return Err((key, "has no effect without health_path".into()));
                }
            }
        }
        if self.max_requests == 0 && self.max_requests_jitter > 0 {
            return Err((
                "max_requests_jitter",
                "has no effect without max_requests".into(),
            ));
        }
        if self.max_response_bytes == 0 {
            return Err(("max_response_bytes", "must be at least 1".into()));
        }
        let restart_backoff = millis("restart_backoff_ms", self.restart_backoff_ms)?;
        let max_restart_backoff = millis("max_restart_backoff_ms", self.max_restart_backoff_ms)?;
        if max_restart_backoff < restart_backoff {
            return Err((
                "max_restart_backoff_ms",
                format!(
                    "must be at least restart_backoff_ms ({})",
                    self.restart_backoff_ms
                ),
            ));
        }
        let exits = NonZeroU32::new(self.crash_loop_exits)
            .ok_or(("crash_loop_exits", "must be at least 1".to_string()))?;
        if let Some(dir) = &self.socket_dir {
            // The private directory and a socket name go inside it.
            if dir.as_os_str().len() > MAX_SOCKET_PATH - 40 {
                return Err((
                    "socket_dir",
                    format!(
                        "`{}` is too long for Unix socket paths (at most {} bytes)",
                        dir.display(),
                        MAX_SOCKET_PATH - 40
                    ),
                ));
            }
        }
        Ok(WorkerConfig {
            command: self.command,
            cwd: self.cwd,
            env: self.env.into_iter().collect(),
            pass_env: self.pass_env,
            ready_timeout: millis("ready_timeout_ms", self.ready_timeout_ms)?,
            ready_path: self.ready_path,
            health_path: self.health_path,
            health_interval: millis(
                "health_interval_ms",
                self.health_interval_ms
                    .unwrap_or_else(default_health_interval_ms),
            )?,
            health_timeout: millis(
                "health_timeout_ms",
                self.health_timeout_ms
                    .unwrap_or_else(default_health_timeout_ms),
            )?,
            timeout: millis("timeout_ms", self.timeout_ms)?,
            kill_grace: Duration::from_millis(self.kill_grace_ms),
            max_requests: NonZeroU64::new(self.max_requests),
            max_requests_jitter: self.max_requests_jitter,
            max_rss_bytes: NonZeroU64::new(self.max_rss_bytes),
            max_response_bytes: self.max_response_bytes,
            stream_idle_timeout: millis("stream_idle_timeout_ms", self.stream_idle_timeout_ms)?,
            keepalive_timeout: Duration::from_millis(self.keepalive_timeout_ms),
            socket_dir: self.socket_dir,
            watch: self.watch,
            restart_backoff,
            max_restart_backoff,
            crash_loop: CrashLoop {
                exits,
                window: millis("crash_loop_window_ms", self.crash_loop_window_ms)?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::{Config, HandlerConfig};
    use std::time::Duration;

    fn endpoint(worker: &str) -> String {
        format!("[[endpoint]]\npath = \"/w\"\n[endpoint.worker]\n{worker}\n")
    }

    #[test]
    fn a_worker_table_gets_every_default() {
        let c =
            Config::from_toml(&endpoint("command = [\"python3\", \"app.py\"]"), "t.toml").unwrap();
        let HandlerConfig::Worker(w) = &c.endpoints[0].handler else {
            panic!("not a worker endpoint: {:?}", c.endpoints[0].handler);
        };
        assert_eq!(w.command, ["python3", "app.py"]);
        assert_eq!(w.ready_timeout, Duration::from_secs(60));
        assert_eq!(w.timeout, Duration::from_secs(30));
        assert_eq!(w.max_requests, None);
        assert_eq!(w.max_rss_bytes, None);
        assert_eq!(w.max_response_bytes, 64 * 1024 * 1024);
        assert_eq!(w.keepalive_timeout, Duration::from_secs(1));
        assert_eq!(w.crash_loop.exits.get(), 5);
        assert!(w.watch.is_empty() && w.ready_path.is_none() && w.health_path.is_none());
        assert_eq!(w.health_interval, Duration::from_secs(10));
        assert_eq!(w.health_timeout, Duration::from_secs(5));
    }

    /// The worker table of `command = ["x"]`, `max_requests = 100` and `more`, where `more` may
    /// replace either of the two.
    fn worker(more: &str) -> crate::WorkerConfig {
        let mut table = String::new();
        for (key, line) in [
            ("command", "command = [\"x\"]"),
            ("max_requests =", "max_requests = 100"),
        ] {
            if !more.starts_with(key) {
                table.push_str(line);
                table.push('\n');
            }
        }
        table.push_str(more);
        let c = Config::from_toml(&endpoint(&table), "t.toml").unwrap();
        match &c.endpoints[0].handler {
            HandlerConfig::Worker(w) => w.clone(),
            other => panic!("not a worker endpoint: {other:?}"),
        }
    }

    #[test]
    fn only_a_change_of_how_workers_start_starts_other_workers() {
        let base = worker("");
        for start in [
            "command = [\"y\"]",
            "cwd = \"/tmp\"",
            "env = { A = \"1\" }",
            "pass_env = [\"HOME\"]",
            "socket_dir = \"/tmp\"",
            "max_requests = 200",
            "max_requests_jitter = 5",
        ] {
            assert!(base.starts_other_workers(&worker(start)), "{start}");
        }
        for run in [
            "timeout_ms = 5",
            "kill_grace_ms = 5",
            "ready_timeout_ms = 5",
            "ready_path = \"/up\"",
            "health_path = \"/up\"",
            "max_rss_bytes = 5",
            "max_response_bytes = 5",
            "stream_idle_timeout_ms = 5",
            "keepalive_timeout_ms = 5",
            "watch = [\"f\"]",
            "restart_backoff_ms = 5",
            "crash_loop_exits = 9",
        ] {
            let changed = worker(run);
            assert_ne!(base, changed, "{run}");
            assert!(!base.starts_other_workers(&changed), "{run}");
        }
    }

    #[test]
    fn worker_is_exclusive_with_builtin_and_exec() {
        let text = "[[endpoint]]\npath = \"/w\"\nbuiltin = \"ping\"\n[endpoint.worker]\ncommand = [\"x\"]\n";
        let e = Config::from_toml(text, "t.toml").unwrap_err();
        assert_eq!(e.key, "endpoint[0]");
        assert!(e.problem.contains("choose one"), "{e}");
    }

    #[test]
    fn bad_worker_keys_are_named() {
        let cases = [
            ("command = []", "endpoint[0].worker.command"),
            (
                "command = [\"x\"]\nready_path = \"health\"",
                "endpoint[0].worker.ready_path",
            ),
            (
                "command = [\"x\"]\nmax_requests_jitter = 3",
                "endpoint[0].worker.max_requests_jitter",
            ),
            (
                "command = [\"x\"]\ntimeout_ms = 0",
                "endpoint[0].worker.timeout_ms",
            ),
            (
                "command = [\"x\"]\nrestart_backoff_ms = 500\nmax_restart_backoff_ms = 100",
                "endpoint[0].worker.max_restart_backoff_ms",
            ),
            (
                "command = [\"x\"]\nhealth_path = \"up\"",
                "endpoint[0].worker.health_path",
            ),
            (
                "command = [\"x\"]\nhealth_interval_ms = 500",
                "endpoint[0].worker.health_interval_ms",
            ),
            (
                "command = [\"x\"]\nhealth_path = \"/up\"\nhealth_interval_ms = 0",
                "endpoint[0].worker.health_interval_ms",
            ),
            (
                "command = [\"x\"]\nhealth_timeout_ms = 500",
                "endpoint[0].worker.health_timeout_ms",
            ),
            (
                "command = [\"x\"]\ncrash_loop_exits = 0",
                "endpoint[0].worker.crash_loop_exits",
            ),
            (
                "command = [\"x\"]\nprocesses = 3",
                "endpoint[0].worker.processes",
            ),
        ];
        for (table, key) in cases {
            let e = Config::from_toml(&endpoint(table), "t.toml").unwrap_err();
            assert_eq!(e.key, key, "{table}: {e}");
        }
    }
}
