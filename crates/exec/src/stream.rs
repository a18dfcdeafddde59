//! A streamed run (`stream = true`): the program's stdout is forwarded to the client as it comes.
//!
//! The handler starts the program and reads stdout until the response head is known: the whole
//! CGI header block (`output = "cgi"`), or the first bytes (`raw`). A program that ends before
//! that is answered as a collected run is (`502` for a failure, the whole small body otherwise).
//! Then the head goes out and the producer, on the same executor thread, forwards each chunk the
//! stdout reader thread hands over through a bounded channel ([`PIPE_CHUNKS`] chunks of at most
//! [`READ_BYTES`]): a slow client blocks the producer in `BodySink::send`, the reader then blocks
//! on the channel, and the program blocks on its full stdout pipe. Nothing grows.
//!
//! Limits mid-stream: `timeout_ms` bounds the whole response (the sink's deadline too),
//! `stream_idle_timeout_ms` the wait for the next chunk once the first bytes came (the first
//! are bounded by `timeout_ms` alone), `max_output_bytes` the whole stdout; a
//! limit hit, a failed exit or a client gone kills the process group (SIGTERM, then SIGKILL after
//! `kill_grace_ms`; at once for a client gone) and ends the stream early, logged once.

use crate::child::{self, Failure, Launched, DRAIN_BOUND};
use crate::{cgi, env, Registry};
use bytes::Bytes;
use common::body::{BodySink, ResponseBody, StreamError};
use common::handler::{HandlerError, JobRequest, JobResponse};
use config::{ExecConfig, ExecOutput};
use nix::sys::signal::Signal;
use std::io::{self, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::ChildStdout;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Chunks the stdout reader may read ahead of the producer.
const PIPE_CHUNKS: usize = 2;

/// Largest single read from stdout: one chunk.
const READ_BYTES: usize = 16 * 1024;

/// How often a run waiting for stdout looks whether its client has gone.
const CLIENT_POLL: Duration = Duration::from_millis(50);

/// What the stdout reader hands over. The channel closing is the end of stdout.
enum Piece {
    Data(Bytes),
    /// stdout passed `max_output_bytes`; the group was killed.
    Overflow,
    Failed(io::Error),
}

/// What came next from the program.
enum Next {
    Data(Bytes),
    /// stdout reached end of file.
    End,
    Failed(Failure),
}

/// Run `cfg`'s program for `req` and answer as soon as the head is known, its body streamed.
pub(crate) fn handle(
    endpoint: &str,
    cfg: &ExecConfig,
    registry: &Arc<Registry>,
    req: &JobRequest,
) -> Result<JobResponse, HandlerError> {
    let env = env::child_env(endpoint, cfg, req);
    let (tx, rx) = mpsc::sync_channel(PIPE_CHUNKS);
    let cap = cfg.max_output_bytes;
    let launched = child::launch(
        cfg,
        env,
        req.body.clone(),
        registry,
        move |stdout, group| {
            read_chunks(stdout, cap, &group, &tx);
        },
    )
    .map_err(|f| crate::error(endpoint, cfg, registry, f))?;
    let mut run = StreamingRun {
        endpoint: endpoint.into(),
        cfg: cfg.clone(),
        registry: registry.clone(),
        launched,
        stdout: rx,
    };
    // Before the head, the client is watched as for a collected run (`on_client_gone`).
    let client = req.client.clone();
    let mut head: Vec<u8> = Vec::new();
    loop {
        // The first bytes are bounded by `timeout_ms` alone; the idle timeout runs between chunks.
        match run.next(&|| client.is_gone(), !head.is_empty()) {
            Next::Data(data) => {
                head.extend_from_slice(&data);
                if cfg.output == ExecOutput::Raw {
                    break;
                }
                match cgi::header_end(&head) {
                    Ok(Some(_)) => break,
                    Ok(None) => {}
                    Err(e) => {
                        run.stop(false);
                        return Err(run.failed(e));
                    }
                }
            }
            // Ended before the head was complete: answered as a collected run.
            Next::End => {
                let head = Bytes::from(head);
                run.exited().map_err(|f| run.error(f))?;
                return match cfg.output {
                    ExecOutput::Raw => Ok(cgi::raw_response(head, &cfg.content_type)),
                    ExecOutput::Cgi => cgi::cgi_response(head, &cfg.content_type),
                };
            }
            Next::Failed(failure) => {
                run.stop(matches!(failure, Failure::ClientGone));
                return Err(run.error(failure));
            }
        }
    }
    let head = Bytes::from(head);
    let mut resp = match cfg.output {
        ExecOutput::Raw => cgi::raw_response(head, &cfg.content_type),
        ExecOutput::Cgi => match cgi::cgi_response(head, &cfg.content_type) {
            Ok(resp) => resp,
            Err(e) => {
                run.stop(false);
                return Err(run.failed(e));
            }
        },
    };
    let first = resp.body().as_full().cloned().unwrap_or_default();
    *resp.body_mut() = ResponseBody::stream(move |sink| run.produce(first, sink));
    Ok(resp)
}

/// A started program whose stdout is being streamed.
struct StreamingRun {
    endpoint: Arc<str>,
    cfg: ExecConfig,
    registry: Arc<Registry>,
    launched: Launched,
    stdout: Receiver<Piece>,
}

impl StreamingRun {
    /// Forward the rest of stdout into `sink`, starting with `first` (read with the head).
    fn produce(mut self, first: Bytes, sink: &mut BodySink) -> Result<(), StreamError> {
        sink.set_deadline(self.launched.deadline);
        let mut pending = Some(first);
        loop {
            if let Some(data) = pending.take() {
                if let Err(e) = sink.send(data) {
                    self.stop(e == StreamError::ClientGone);
                    self.log_cut(&e, sink);
                    return Err(e);
                }
            }
            match self.next(&|| sink.is_client_gone(), true) {
                Next::Data(data) => pending = Some(data),
                Next::End => {
                    return match self.exited() {
                        Ok(()) => Ok(()),
                        Err(failure) => {
                            let e = self.stream_error(failure);
                            self.log_cut(&e, sink);
                            Err(e)
                        }
                    }
                }
                Next::Failed(failure) => {
                    self.stop(matches!(failure, Failure::ClientGone));
                    let e = self.stream_error(failure);
                    self.log_cut(&e, sink);
                    return Err(e);
                }
            }
        }
    }

    /// The next chunk of stdout, its end, or why there is none: the whole-response deadline, the
    /// idle timeout (if `idle`), a client gone (asked every [`CLIENT_POLL`]), a cap, a failed read.
    fn next(&mut self, gone: &dyn Fn() -> bool, idle: bool) -> Next {
        let idle_until = if idle {
            Instant::now() + self.cfg.stream_idle_timeout
        } else {
            self.launched.deadline
        };
        loop {
            let now = Instant::now();
            let until = self.launched.deadline.min(idle_until);
            let left = until.saturating_duration_since(now);
            match self.stdout.recv_timeout(left.min(CLIENT_POLL)) {
                Ok(Piece::Data(data)) => return Next::Data(data),
                Ok(Piece::Overflow) => return Next::Failed(Failure::OutputCap),
                Ok(Piece::Failed(e)) => {
                    return Next::Failed(Failure::Internal(format!("reading stdout: {e}")))
                }
                Err(RecvTimeoutError::Disconnected) => return Next::End,
                Err(RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    if now >= self.launched.deadline {
                        return Next::Failed(Failure::Timeout);
                    }
                    if now >= idle_until {
                        return Next::Failed(Failure::Idle);
                    }
                    if gone() {
                        return Next::Failed(Failure::ClientGone);
                    }
                }
            }
        }
    }

    /// stdout ended: wait (until the deadline) for the program's exit and reap it; `Ok` for
    /// status 0. Whatever escaped its group is killed.
    fn exited(&mut self) -> Result<(), Failure> {
        let left = self
            .launched
            .deadline
            .saturating_duration_since(Instant::now());
        let status = match self.launched.exit_rx.recv_timeout(left) {
            Ok(status) => status,
            Err(RecvTimeoutError::Timeout) => {
                self.stop(false);
                return Err(Failure::Timeout);
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(Failure::Internal("lost the program's waiter thread".into()))
            }
        };
        children::kill_orphans();
        let status =
            status.map_err(|e| Failure::Internal(format!("waiting for the program: {e}")))?;
        match (status.code(), status.signal()) {
            (Some(0), _) => Ok(()),
            (Some(code), _) => Err(Failure::Exit(code)),
            (None, Some(signal)) => Err(Failure::Signal(signal)),
            (None, None) => Err(Failure::Internal(format!("unknown exit status {status}"))),
        }
    }

    /// Stop the program: `at_once` (its client is gone) with SIGKILL, else SIGTERM then SIGKILL
    /// after `kill_grace_ms`; reap it (bounded) and kill what escaped its group.
    fn stop(&self, at_once: bool) {
        let group = self.launched.guard.group();
        if at_once {
            group.signal(Signal::SIGKILL);
            if self.launched.exit_rx.recv_timeout(DRAIN_BOUND).is_err() {
                tracing::warn!(pgid = group.pgid(), "program not reaped after SIGKILL");
            }
        } else {
            child::stop(group, &self.launched.exit_rx, self.cfg.kill_grace);
        }
        children::kill_orphans();
    }

    /// The answer before the head for `failure`, logged with the program's stderr.
    fn error(&self, failure: Failure) -> HandlerError {
        let e = crate::error(&self.endpoint, &self.cfg, &self.registry, failure);
        self.failed(e)
    }

    /// Log a failure before the head (with what stderr said) and return it.
    fn failed(&self, e: HandlerError) -> HandlerError {
        if !matches!(e, HandlerError::ClientGone(_)) {
            tracing::warn!(
                endpoint = %self.endpoint,
                status = e.status().as_u16(),
                cause = %e,
                stderr = %self.stderr(),
                "program failed"
            );
        }
        e
    }

    /// How a failure after the head ends the stream.
    fn stream_error(&self, failure: Failure) -> StreamError {
        match crate::error(&self.endpoint, &self.cfg, &self.registry, failure) {
            HandlerError::ClientGone(_) => StreamError::ClientGone,
            HandlerError::Timeout(why) => StreamError::Timeout(why),
            other => StreamError::Failed(other.to_string()),
        }
    }

    /// One line for a stream cut short (a client gone is no failure of the program: debug).
    fn log_cut(&self, e: &StreamError, sink: &BodySink) {
        if matches!(e, StreamError::ClientGone) {
            tracing::debug!(endpoint = %self.endpoint, bytes = sink.produced(), "client gone mid-stream; program killed");
        } else {
            tracing::warn!(
                endpoint = %self.endpoint,
                bytes = sink.produced(),
                cause = %e,
                stderr = %self.stderr(),
                "stream cut short"
            );
        }
    }

    /// The start of stderr, if its reader has finished (never waits long: the program is gone).
    fn stderr(&self) -> String {
        child::recv_until(
            &self.launched.err_rx,
            Instant::now() + Duration::from_millis(100),
        )
        .unwrap_or_default()
    }
}

/// The stdout reader of a streamed run: hand each read over as it comes (blocking while the
/// channel is full); past `cap` bytes in all, kill the group and stop.
fn read_chunks(
    mut stdout: ChildStdout,
    cap: usize,
    group: &children::Group,
    tx: &SyncSender<Piece>,
) {
    let mut total = 0usize;
    let mut buf = vec![0u8; READ_BYTES];
    loop {
        match stdout.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                total = total.saturating_add(n);
                if total > cap {
                    group.signal(Signal::SIGKILL);
                    let _ = tx.send(Piece::Overflow);
                    return;
                }
                if tx
                    .send(Piece::Data(Bytes::copy_from_slice(&buf[..n])))
                    .is_err()
                {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.send(Piece::Failed(e));
                return;
            }
        }
    }
}
