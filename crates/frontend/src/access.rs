//! The access log: one structured line per answered request (never for ignored overflow), and
//! the bounded buffer that writes such lines in batches off the request path ([`AccessLog`]).

use super::app::App;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// What the access log needs from a request, taken before the request is consumed.
pub(super) struct AccessLine {
    started: Instant,
    client: ClientText,
    method: hyper::Method,
    uri: hyper::Uri,
    user_agent: Option<hyper::header::HeaderValue>,
}

impl AccessLine {
    pub(super) fn of<B>(req: &hyper::Request<B>, client: &ClientText) -> AccessLine {
        AccessLine {
            started: Instant::now(),
            client: *client,
            method: req.method().clone(),
            uri: req.uri().clone(),
            user_agent: req.headers().get(hyper::header::USER_AGENT).cloned(),
        }
    }

    /// One structured line per answered request (ignored overflow never gets here), with the
    /// job's `timing` if the answer came with it beside the response, else from its extensions.
    pub(super) fn write(
        self,
        app: &App,
        resp: &hyper::Response<super::Body>,
        timing: Option<common::job::JobTiming>,
    ) {
        use hyper::body::Body as _;
        let timing = timing.or_else(|| resp.extensions().get::<common::job::JobTiming>().copied());
        let bytes = resp.body().size_hint().exact().unwrap_or(0);
        self.emit(app, resp.status(), timing, bytes, None);
    }

    /// The line of a streamed response, written when its stream ends: the bytes sent and
    /// whether it completed (false: the client went away, or the producer failed or hit a limit
    /// and the response was cut short).
    pub(super) fn write_stream(
        self,
        app: &App,
        status: hyper::StatusCode,
        timing: Option<common::job::JobTiming>,
        summary: common::body::StreamSummary,
    ) {
        self.emit(app, status, timing, summary.bytes, Some(summary.completed));
    }

    fn emit(
        self,
        app: &App,
        status: hyper::StatusCode,
        timing: Option<common::job::JobTiming>,
        bytes: u64,
        completed: Option<bool>,
    ) {
        let timing = timing.unwrap_or_default();
        let path = self.uri.path();
        // The query as sent, or with the values `access_log_redact_query` names hidden; no
        // request header but the user agent is logged (so never `Authorization`).
        let query = self
            .uri
            .query()
            .map(|q| app.server.access_log_redact_query.apply(q));
        let user_agent = self.user_agent.as_ref().and_then(|v| v.to_str().ok());
        if let Some(direct) = INSTALLED.get() {
            if !direct.lines {
                return;
            }
            let line = Line {
                client: self.client.as_bytes(),
                method: self.method.as_str(),
                path,
                query: query.as_deref(),
                user_agent,
                status: status.as_u16(),
                bytes,
                completed,
                queue_wait: timing.queue_wait,
                run: timing.run,
                total: self.started.elapsed(),
                mode: app.mode_of(path),
                light: app.light_name(),
            };
            direct.write(&line);
            return;
        }
        if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
            return;
        }
        tracing::info!(
            target: TARGET,
            client = %self.client,
            method = %self.method,
            path,
            query,
            user_agent,
            status = status.as_u16(),
            bytes,
            // Only on a streamed response's line: whether the stream ended cleanly.
            completed,
            queue_wait_ms = ms(timing.queue_wait),
            run_ms = ms(timing.run),
            total_ms = ms(self.started.elapsed()),
            mode = app.mode_of(path),
            light = app.light_name(),
        );
    }
}

/// Longest text of a socket address: `[` 39 hex-and-colons `%` a 10-digit scope `]:` 5 digits.
const CLIENT_TEXT_MAX: usize = 64;

/// A client's socket address as its `Display` writes it, formatted once per connection (not per
/// request) for the access lines of its requests.
#[derive(Clone, Copy)]
pub(super) struct ClientText {
    len: u8,
    text: [u8; CLIENT_TEXT_MAX],
}

impl ClientText {
    pub(super) fn of(addr: std::net::SocketAddr) -> ClientText {
        let mut text = [0u8; CLIENT_TEXT_MAX];
        let mut cursor = io::Cursor::new(&mut text[..]);
        // Every address fits; a write past the end would only shorten the text.
        let _ = address(&mut cursor, addr);
        let len = usize::try_from(cursor.position()).map_or(0, |n| n.min(CLIENT_TEXT_MAX));
        ClientText {
            len: len as u8,
            text,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.text[..usize::from(self.len)]
    }
}

impl std::fmt::Display for ClientText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::str::from_utf8(self.as_bytes()).unwrap_or("-"))
    }
}

/// The `tracing` target of access-log lines; the binary routes events of this target to the
/// [`AccessLog`] instead of writing them to stderr one by one.
pub const TARGET: &str = target!();

/// The access target's name as a literal, for [`TARGET`] and the layouts' constant text.
macro_rules! target {
    () => {
        "fiddler_crab::access"
    };
}
use target;

/// Bytes of formatted lines the buffer holds at most (about 2,500 lines); a line that would not
/// fit is dropped and counted. Two buffers of this size exist: one filling, one being written.
pub const BUFFER_BYTES: usize = 512 * 1024;

/// The drain thread writes at least this often, and as soon as the buffer is half full.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The process's access log, once the binary has installed one (read by `/metrics`), and the
/// format its lines are written in.
static INSTALLED: OnceLock<Direct> = OnceLock::new();

/// The layout of an access line written straight into the installed [`AccessLog`]: the same
/// text `tracing-subscriber`'s formatter gives the event (its `Full` human format without
/// colours, or its JSON format), so the lines read the same as every other log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    /// `TIMESTAMP  INFO fiddler_crab::access: client=… method=GET path="/ping" …`
    Human,
    /// `{"timestamp":…,"level":"INFO","fields":{…},"target":"fiddler_crab::access"}`
    Json,
}

/// Make `log` the process's access log, whose dropped lines `/metrics` reports: from then on,
/// access lines are formatted by this module in `format` and appended to `log` directly, if
/// `lines` (the process's log filter lets the access target through at `info`: the filter is
/// fixed for the process's life, so it is asked once, here, not per line), else dropped
/// unformatted. Without it they are `tracing` events like any other. The first call wins;
/// later ones return `false`.
///
/// Why not through `tracing-subscriber`'s formatter: measured with
/// `benches/ping_instructions.sh`, formatting the line that way (field visitors, `Debug` of
/// floats, styled field names) cost about 19,000 user-space instructions per `/ping`, twice
/// the whole request of a bare hyper server; this writer costs a small fraction of it.
pub fn install(log: Arc<AccessLog>, format: LineFormat, lines: bool) -> bool {
    INSTALLED.set(Direct { log, format, lines }).is_ok()
}

/// Access-log lines dropped so far by the installed access log (0 without one).
pub fn dropped_total() -> u64 {
    INSTALLED.get().map_or(0, |d| d.log.dropped())
}

/// The installed access log and its line format.
#[derive(Debug)]
struct Direct {
    log: Arc<AccessLog>,
    format: LineFormat,
    lines: bool,
}

/// The fields of one access line, in the order they are written.
struct Line<'a> {
    /// The client's address as [`address`] writes it.
    client: &'a [u8],
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    user_agent: Option<&'a str>,
    status: u16,
    bytes: u64,
    completed: Option<bool>,
    queue_wait: Duration,
    run: Duration,
    total: Duration,
    mode: &'a str,
    light: &'a str,
}

thread_local! {
    /// Each thread formats its lines in its own buffer (kept, so no allocation per line).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The formatted `YYYY-MM-DDTHH:MM:SS.` of the last second this thread wrote a line in.
    static SECOND: std::cell::Cell<(u64, [u8; 20])> = const { std::cell::Cell::new((u64::MAX, [0; 20])) };
}

impl Direct {
    fn write(&self, line: &Line<'_>) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let written = SCRATCH.try_with(|scratch| {
            let Ok(mut buf) = scratch.try_borrow_mut() else {
                return;
            };
            buf.clear();
            // Writing into a `Vec` cannot fail.
            let _ = match self.format {
                LineFormat::Human => human(&mut buf, now, line),
                LineFormat::Json => json(&mut buf, now, line),
            };
            self.log.push(&buf);
        });
        if written.is_err() {
            self.log.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `tracing-subscriber`'s `Full` format: timestamp, two spaces, the level right-aligned to 5,
/// the target, then `key=value` fields (strings as Rust debug strings, quoted and escaped).
fn human(buf: &mut Vec<u8>, now: Duration, l: &Line<'_>) -> io::Result<()> {
    timestamp(buf, now);
    buf.extend_from_slice(concat!("  INFO ", target!(), ": ").as_bytes());
    fields::<Human>(buf, l)?;
    buf.push(b'\n');
    Ok(())
}

/// `tracing-subscriber`'s JSON format (strings escaped by `serde_json`).
fn json(buf: &mut Vec<u8>, now: Duration, l: &Line<'_>) -> io::Result<()> {
    buf.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(buf, now);
    buf.extend_from_slice(b"\",\"level\":\"INFO\",\"fields\":{");
    fields::<Json>(buf, l)?;
    buf.extend_from_slice(concat!("},\"target\":\"", target!(), "\"}\n").as_bytes());
    Ok(())
}

/// The line's fields, in order, keys and values written as layout `F` writes them (a type, so
/// that each layout gets its own straight-line code: no choice per field on the request path).
fn fields<F: Layout>(buf: &mut Vec<u8>, l: &Line<'_>) -> io::Result<()> {
    // The address and the method are `Display` values: bare in the human layout, JSON strings
    // otherwise (neither holds anything JSON would escape: an HTTP method is a token).
    buf.extend_from_slice(F::CLIENT);
    buf.extend_from_slice(l.client);
    buf.extend_from_slice(F::METHOD);
    buf.extend_from_slice(l.method.as_bytes());
    buf.extend_from_slice(F::PATH);
    F::string(buf, l.path)?;
    if let Some(q) = l.query {
        buf.extend_from_slice(F::QUERY);
        F::string(buf, q)?;
    }
    if let Some(ua) = l.user_agent {
        buf.extend_from_slice(F::USER_AGENT);
        F::string(buf, ua)?;
    }
    buf.extend_from_slice(F::STATUS);
    number(buf, l.status);
    buf.extend_from_slice(F::BYTES);
    number(buf, l.bytes);
    if let Some(c) = l.completed {
        buf.extend_from_slice(F::COMPLETED);
        buf.extend_from_slice(if c { b"true" } else { b"false" });
    }
    buf.extend_from_slice(F::QUEUE_WAIT);
    millis(buf, l.queue_wait);
    buf.extend_from_slice(F::RUN);
    millis(buf, l.run);
    buf.extend_from_slice(F::TOTAL);
    millis(buf, l.total);
    // The mode and the light are names of this server's (`jellyfish`, `green`): nothing in
    // them to escape, in either layout.
    buf.extend_from_slice(F::MODE);
    buf.extend_from_slice(l.mode.as_bytes());
    buf.extend_from_slice(F::LIGHT);
    buf.extend_from_slice(l.light.as_bytes());
    buf.extend_from_slice(F::END);
    Ok(())
}

/// How a layout writes keys and values (see [`fields`]): each key with what separates it from
/// the value before it and what opens its value, as one constant.
trait Layout {
    const CLIENT: &'static [u8];
    const METHOD: &'static [u8];
    const PATH: &'static [u8];
    const QUERY: &'static [u8];
    const USER_AGENT: &'static [u8];
    const STATUS: &'static [u8];
    const BYTES: &'static [u8];
    const COMPLETED: &'static [u8];
    const QUEUE_WAIT: &'static [u8];
    const RUN: &'static [u8];
    const TOTAL: &'static [u8];
    /// Opens the mode's string value.
    const MODE: &'static [u8];
    /// Closes the mode's value and opens the light's.
    const LIGHT: &'static [u8];
    /// Closes the light's value.
    const END: &'static [u8];
    /// A string value: Rust's debug string (human) or a JSON string.
    fn string(buf: &mut Vec<u8>, value: &str) -> io::Result<()>;
}

/// [`LineFormat::Human`]'s layout: ` key=value`, strings as Rust debug strings.
struct Human;

/// [`LineFormat::Json`]'s layout: `,"key":value`, `Display` values as JSON strings.
struct Json;

impl Layout for Human {
    const CLIENT: &'static [u8] = b"client=";
    const METHOD: &'static [u8] = b" method=";
    const PATH: &'static [u8] = b" path=";
    const QUERY: &'static [u8] = b" query=";
    const USER_AGENT: &'static [u8] = b" user_agent=";
    const STATUS: &'static [u8] = b" status=";
    const BYTES: &'static [u8] = b" bytes=";
    const COMPLETED: &'static [u8] = b" completed=";
    const QUEUE_WAIT: &'static [u8] = b" queue_wait_ms=";
    const RUN: &'static [u8] = b" run_ms=";
    const TOTAL: &'static [u8] = b" total_ms=";
    const MODE: &'static [u8] = b" mode=\"";
    const LIGHT: &'static [u8] = b"\" light=\"";
    const END: &'static [u8] = b"\"";

    fn string(buf: &mut Vec<u8>, value: &str) -> io::Result<()> {
        quoted(buf, value)
    }
}

impl Layout for Json {
    const CLIENT: &'static [u8] = b"\"client\":\"";
    const METHOD: &'static [u8] = b"\",\"method\":\"";
    const PATH: &'static [u8] = b"\",\"path\":";
    const QUERY: &'static [u8] = b",\"query\":";
    const USER_AGENT: &'static [u8] = b",\"user_agent\":";
    const STATUS: &'static [u8] = b",\"status\":";
    const BYTES: &'static [u8] = b",\"bytes\":";
    const COMPLETED: &'static [u8] = b",\"completed\":";
    const QUEUE_WAIT: &'static [u8] = b",\"queue_wait_ms\":";
    const RUN: &'static [u8] = b",\"run_ms\":";
    const TOTAL: &'static [u8] = b",\"total_ms\":";
    const MODE: &'static [u8] = b",\"mode\":\"";
    const LIGHT: &'static [u8] = b"\",\"light\":\"";
    const END: &'static [u8] = b"\"";

    fn string(buf: &mut Vec<u8>, value: &str) -> io::Result<()> {
        serde_json::to_writer(&mut *buf, value).map_err(io::Error::other)
    }
}

/// A string as Rust's `{:?}` writes it (what `tracing-subscriber` does with a string field):
/// copied between quotes when nothing in it needs escaping, else through `Debug`.
fn quoted(buf: &mut Vec<u8>, s: &str) -> io::Result<()> {
    if s.bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
    {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
        Ok(())
    } else {
        write!(buf, "{s:?}")
    }
}

/// An integer in decimal.
fn number(buf: &mut Vec<u8>, n: impl itoa::Integer) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// A socket address as its `Display` writes it (IPv4 written here, IPv6 through `Display`).
fn address(out: &mut impl Write, addr: std::net::SocketAddr) -> io::Result<()> {
    match addr {
        std::net::SocketAddr::V4(v4) => {
            let [a, b, c, d] = v4.ip().octets();
            let mut digits = itoa::Buffer::new();
            out.write_all(digits.format(a).as_bytes())?;
            out.write_all(b".")?;
            out.write_all(digits.format(b).as_bytes())?;
            out.write_all(b".")?;
            out.write_all(digits.format(c).as_bytes())?;
            out.write_all(b".")?;
            out.write_all(digits.format(d).as_bytes())?;
            out.write_all(b":")?;
            out.write_all(digits.format(v4.port()).as_bytes())
        }
        v6 => write!(out, "{v6}"),
    }
}

/// `d` in milliseconds with microsecond precision, as the shortest decimal (the text `{:?}` of
/// the `f64` [`ms`] gives: `0.0`, `0.003`, `12.5`), without a float.
fn millis(buf: &mut Vec<u8>, d: Duration) {
    // Rounded to the microsecond, as `ms` rounds.
    let micros = d
        .as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from((d.subsec_nanos() + 500) / 1000));
    let frac = (micros % 1000) as u32;
    // `0.` then up to three digits: one piece, the usual case (under a millisecond).
    let text = [
        b'0',
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ];
    // At least one digit after the point; no trailing zeros after it.
    let keep = match frac {
        0 => 3,
        f if f % 100 == 0 => 3,
        f if f % 10 == 0 => 4,
        _ => 5,
    };
    let whole = micros / 1000;
    if whole == 0 {
        buf.extend_from_slice(&text[..keep]);
    } else {
        number(buf, whole);
        buf.extend_from_slice(&text[1..keep]);
    }
}

/// RFC 3339 UTC with microseconds, `2026-12-01T20:42:22.368686Z`, as `tracing-subscriber`
/// writes it; the date and time of day are formatted once per second per thread.
fn timestamp(buf: &mut Vec<u8>, since_epoch: Duration) {
    let secs = since_epoch.as_secs();
    let (cached, text) = SECOND.get();
    if cached == secs {
        buf.extend_from_slice(&text);
    } else {
        let (y, m, d) = civil_from_days((secs / 86_400) as i64);
        let t = secs % 86_400;
        let start = buf.len();
        let _ = write!(
            buf,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.",
            t / 3600,
            t / 60 % 60,
            t % 60
        );
        // Cached when it has the usual 20 bytes (years 0–9999).
        if let Ok(text) = <[u8; 20]>::try_from(&buf[start..]) {
            SECOND.set((secs, text));
        }
    }
    let micros = since_epoch.subsec_micros();
    let mut digits = [b'0'; 7];
    let mut n = micros;
    for d in digits[..6].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    digits[6] = b'Z';
    buf.extend_from_slice(&digits);
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, the algorithm behind most date libraries' conversion).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A bounded buffer of preformatted log lines, written out in large batches by a background
/// thread: a request appends its line under a short lock (a copy, no allocation, no system
/// call); the thread swaps the filled buffer for an empty one and writes the batch with one
/// `write_all`. When the writer falls behind and the buffer is full, lines are dropped and
/// counted, so a slow or blocked stderr never slows a request.
#[derive(Debug)]
pub struct AccessLog {
    state: Mutex<Filling>,
    /// Wakes the drain thread: buffer half full, or closing.
    wake: Condvar,
    /// Wakes [`AccessLog::close`]: the drain thread has written everything and stopped.
    done: Condvar,
    capacity: usize,
    dropped: AtomicU64,
}

#[derive(Debug)]
struct Filling {
    lines: Vec<u8>,
    closing: bool,
    stopped: bool,
}

impl AccessLog {
    /// Start the drain thread writing to `out`, with a buffer of `capacity` bytes, writing at
    /// least every `period`. Fails only if the thread cannot be spawned.
    pub fn start(
        out: impl Write + Send + 'static,
        capacity: usize,
        period: Duration,
    ) -> io::Result<Arc<AccessLog>> {
        let log = Arc::new(AccessLog {
            state: Mutex::new(Filling {
                lines: Vec::with_capacity(capacity),
                closing: false,
                stopped: false,
            }),
            wake: Condvar::new(),
            done: Condvar::new(),
            capacity,
            dropped: AtomicU64::new(0),
        });
        let drained = log.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || drained.drain(out, period))?;
        Ok(log)
    }

    /// Append one formatted line (or several, written as one piece); dropped and counted if the
    /// buffer has no room for all of it.
    pub fn push(&self, line: &[u8]) {
        let mut state = self.lock();
        let before = state.lines.len();
        if before + line.len() > self.capacity || state.stopped {
            drop(state);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        state.lines.extend_from_slice(line);
        let half = self.capacity / 2;
        if before < half && state.lines.len() >= half {
            self.wake.notify_one();
        }
    }

    /// Lines dropped so far: buffer full, or lost to a failed write.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// A writer that appends to this log, for a log subscriber: each `write` is one line.
    pub fn writer(&self) -> AccessWriter<'_> {
        AccessWriter(self)
    }

    /// Write everything buffered, stop the drain thread, and wait for it at most `limit`.
    /// Returns `true` if everything was written (`false`: the writer is blocked or failing).
    pub fn close(&self, limit: Duration) -> bool {
        let mut state = self.lock();
        state.closing = true;
        self.wake.notify_one();
        let deadline = Instant::now() + limit;
        while !state.stopped {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = match self.done.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }

    fn lock(&self) -> MutexGuard<'_, Filling> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The drain thread: wait for half a buffer, the period, or closing; swap; write; repeat.
    fn drain(&self, mut out: impl Write, period: Duration) {
        let mut batch: Vec<u8> = Vec::with_capacity(self.capacity);
        loop {
            let closing = {
                let mut state = self.lock();
                let deadline = Instant::now() + period;
                while !state.closing && state.lines.len() < self.capacity / 2 {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    state = match self.wake.wait_timeout(state, left) {
                        Ok((state, _)) => state,
                        Err(poisoned) => poisoned.into_inner().0,
                    };
                }
                std::mem::swap(&mut state.lines, &mut batch);
                state.closing
            };
            if !batch.is_empty() {
                let written = out.write_all(&batch).and_then(|()| out.flush());
                if written.is_err() {
                    let lost = batch.iter().filter(|&&b| b == b'\n').count();
                    self.dropped.fetch_add(lost as u64, Ordering::Relaxed);
                }
                batch.clear();
            }
            if closing {
                let mut state = self.lock();
                if state.lines.is_empty() {
                    state.stopped = true;
                    self.done.notify_all();
                    return;
                }
            }
        }
    }
}

/// A handle that appends what is written to an [`AccessLog`] (see [`AccessLog::writer`]).
#[derive(Debug, Clone, Copy)]
pub struct AccessWriter<'a>(&'a AccessLog);

impl Write for AccessWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Milliseconds with microsecond precision, for log fields.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    type Gate = Arc<(Mutex<bool>, Condvar)>;

    /// A writer that sends each batch it is given, after waiting for the gate to let it through.
    struct Gated {
        gate: Gate,
        batches: mpsc::Sender<Vec<u8>>,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (open, turn) = &*self.gate;
            let mut open = open.lock().unwrap();
            while !*open {
                open = turn.wait(open).unwrap();
            }
            let _ = self.batches.send(buf.to_vec());
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn gated(open: bool) -> (Gated, Gate, mpsc::Receiver<Vec<u8>>) {
        let gate = Arc::new((Mutex::new(open), Condvar::new()));
        let (batches, received) = mpsc::channel();
        let writer = Gated {
            gate: gate.clone(),
            batches,
        };
        (writer, gate, received)
    }

    fn open(gate: &(Mutex<bool>, Condvar)) {
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
    }

    fn line() -> Line<'static> {
        Line {
            client: b"127.0.0.1:40100",
            method: "GET",
            path: "/ping",
            query: Some("a=1"),
            user_agent: Some("x\"y\u{7}é"),
            status: 200,
            bytes: 5,
            completed: None,
            queue_wait: Duration::ZERO,
            run: Duration::from_nanos(2_600),
            total: Duration::from_micros(12_500),
            mode: "jellyfish",
            light: "green",
        }
    }

    /// 2026-12-01T20:42:22.368686Z
    const NOW: Duration = Duration::new(1_796_157_742, 368_686_000);

    #[test]
    fn the_human_line_is_tracing_subscribers_full_format() {
        let mut buf = Vec::new();
        human(&mut buf, NOW, &line()).unwrap();
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "2026-12-01T20:42:22.368686Z  INFO fiddler_crab::access: client=127.0.0.1:40100 \
             method=GET path=\"/ping\" query=\"a=1\" user_agent=\"x\\\"y\\u{7}é\" status=200 bytes=5 \
             queue_wait_ms=0.0 run_ms=0.003 total_ms=12.5 mode=\"jellyfish\" light=\"green\"\n"
        );
        // The same second again comes from the per-thread cache; a stream's line says whether
        // it completed.
        let mut buf = Vec::new();
        let mut l = line();
        l.completed = Some(false);
        l.query = None;
        human(&mut buf, NOW + Duration::from_micros(1), &l).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(
            text.starts_with("2026-12-01T20:42:22.368687Z  INFO"),
            "{text}"
        );
        assert!(
            text.contains(" bytes=5 completed=false queue_wait_ms="),
            "{text}"
        );
        assert!(!text.contains("query"), "{text}");
    }

    #[test]
    fn the_json_line_is_tracing_subscribers_json_format() {
        let mut buf = Vec::new();
        let mut l = line();
        l.completed = Some(true);
        json(&mut buf, NOW, &l).unwrap();
        assert_eq!(buf.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["timestamp"], "2026-12-01T20:42:22.368686Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], TARGET);
        let f = &v["fields"];
        assert_eq!(f["client"], "127.0.0.1:40100");
        assert_eq!(f["method"], "GET");
        assert_eq!(f["path"], "/ping");
        assert_eq!(f["query"], "a=1");
        assert_eq!(f["user_agent"], "x\"y\u{7}é");
        assert_eq!(f["status"], 200);
        assert_eq!(f["bytes"], 5);
        assert_eq!(f["completed"], true);
        assert_eq!(f["queue_wait_ms"], 0.0);
        assert_eq!(f["run_ms"], 0.003);
        assert_eq!(f["total_ms"], 12.5);
        assert_eq!(f["mode"], "jellyfish");
        assert_eq!(f["light"], "green");
    }

    #[test]
    fn milliseconds_read_as_the_f64_they_stand_for() {
        for nanos in [
            0u64,
            499,
            500,
            1_000,
            2_600,
            10_000,
            100_000,
            999_499,
            999_500,
            1_000_000,
            12_345_678,
            3_600_000_000_000,
        ] {
            let d = Duration::from_nanos(nanos);
            let mut buf = Vec::new();
            millis(&mut buf, d);
            assert_eq!(
                String::from_utf8(buf).unwrap(),
                format!("{:?}", ms(d)),
                "{nanos} ns"
            );
        }
    }

    #[test]
    fn addresses_read_as_their_display() {
        for a in [
            "127.0.0.1:40100",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "[::1]:8080",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535",
        ] {
            let addr: std::net::SocketAddr = a.parse().unwrap();
            let mut buf = Vec::new();
            address(&mut buf, addr).unwrap();
            assert_eq!(String::from_utf8(buf).unwrap(), addr.to_string());
            assert_eq!(ClientText::of(addr).to_string(), addr.to_string());
        }
    }

    #[test]
    fn days_since_the_epoch_become_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_788), (2026, 12, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn lines_are_written_within_the_period_without_a_shutdown() {
        let (writer, _gate, batches) = gated(true);
        let log = AccessLog::start(writer, 1024, Duration::from_millis(50)).unwrap();
        log.writer().write_all(b"one\n").unwrap();
        log.writer().write_all(b"two\n").unwrap();
        let batch = batches.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(batch, b"one\ntwo\n");
        assert!(log.close(Duration::from_secs(10)));
    }

    #[test]
    fn close_writes_every_buffered_line() {
        let (writer, _gate, batches) = gated(true);
        // A period far longer than the test: only close can write the lines.
        let log = AccessLog::start(writer, 64 * 1024, Duration::from_secs(3600)).unwrap();
        for i in 0..1000 {
            log.push(format!("line {i}\n").as_bytes());
        }
        assert!(log.close(Duration::from_secs(10)));
        let written: Vec<u8> = batches.try_iter().flatten().collect();
        let lines: Vec<&[u8]> = written
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len(), 1000);
        assert_eq!(lines[999], b"line 999");
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn a_blocked_writer_makes_lines_drop_and_count_and_never_blocks_the_caller() {
        let (writer, gate, batches) = gated(false);
        let log = AccessLog::start(writer, 100, Duration::from_millis(10)).unwrap();
        // 10 lines of 10 bytes fill the buffer (the drain thread may hold some, blocked).
        for _ in 0..30 {
            log.push(b"123456789\n");
        }
        assert!(log.dropped() >= 10, "dropped {}", log.dropped());
        // A line longer than the whole buffer is dropped too.
        let before = log.dropped();
        log.push(&[b'x'; 101]);
        assert_eq!(log.dropped(), before + 1);
        // Once the writer moves again, what was kept is written and nothing more is lost.
        open(&gate);
        assert!(log.close(Duration::from_secs(10)));
        let written: usize = batches.try_iter().map(|b| b.len()).sum();
        assert_eq!(written as u64 / 10 + log.dropped() - 1, 30);
    }

    #[test]
    fn close_gives_up_after_its_limit_on_a_blocked_writer() {
        let (writer, gate, _batches) = gated(false);
        let log = AccessLog::start(writer, 100, Duration::from_millis(1)).unwrap();
        log.push(b"stuck\n");
        assert!(!log.close(Duration::from_millis(50)));
        open(&gate);
        assert!(log.close(Duration::from_secs(10)));
    }
}
