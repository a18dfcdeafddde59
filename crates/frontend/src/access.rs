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
    client: std::net::SocketAddr,
    method: hyper::Method,
    uri: hyper::Uri,
    user_agent: Option<hyper::header::HeaderValue>,
}

impl AccessLine {
    pub(super) fn of<B>(req: &hyper::Request<B>, client: std::net::SocketAddr) -> AccessLine {
        AccessLine {
            started: Instant::now(),
            client,
            method: req.method().clone(),
            uri: req.uri().clone(),
            user_agent: req.headers().get(hyper::header::USER_AGENT).cloned(),
        }
    }

    /// One structured line per answered request (ignored overflow never gets here).
    pub(super) fn write(self, app: &App, resp: &hyper::Response<super::Body>) {
        use hyper::body::Body as _;
        let timing = resp.extensions().get::<common::job::JobTiming>().copied();
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

/// The `tracing` target of access-log lines; the binary routes events of this target to the
/// [`AccessLog`] instead of writing them to stderr one by one.
pub const TARGET: &str = "fiddler_crab::access";

/// Bytes of formatted lines the buffer holds at most (about 2,500 lines); a line that would not
/// fit is dropped and counted. Two buffers of this size exist: one filling, one being written.
pub const BUFFER_BYTES: usize = 512 * 1024;

/// The drain thread writes at least this often, and as soon as the buffer is half full.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The process's access log, once the binary has installed one (read by `/metrics`).
static INSTALLED: OnceLock<Arc<AccessLog>> = OnceLock::new();

/// Make `log` the process's access log, whose dropped lines `/metrics` reports. The first call
/// wins; later ones return `false`.
pub fn install(log: Arc<AccessLog>) -> bool {
    INSTALLED.set(log).is_ok()
}

/// Access-log lines dropped so far by the installed access log (0 without one).
pub fn dropped_total() -> u64 {
    INSTALLED.get().map_or(0, |log| log.dropped())
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
