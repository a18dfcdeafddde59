//! One run of a program: spawn it in its own process group, feed stdin, capture stdout and
//! stderr, enforce the time limit and the output cap, and reap it, with every wait bounded.
//!
//! Four helper threads serve a run; the calling thread only waits on channels with deadlines:
//! - the waiter blocks until the child exits (leaving it a zombie, so its process group id
//!   cannot be reused), SIGKILLs the rest of its group, reaps it, and sends the exit status;
//! - the stdout reader fills a buffer up to the cap and kills the group past it;
//! - the stderr reader keeps the first [`STDERR_KEEP`] bytes and drains the rest;
//! - the stdin writer writes the body and closes stdin (a child that never reads it is fine).
//!
//! Readers end at end of file, which comes once every process holding the pipe is dead: the
//! group is killed when the child exits, and so is every process that left the group and was
//! re-parented to the server (a child subreaper; see `children::kill_orphans`). Only a process
//! that escaped while the server is no subreaper can keep a pipe open; then the run gives up
//! after [`DRAIN_BOUND`] and the stranded thread ends when it does.

use bytes::Bytes;
use children::{Group, Registered, Registry};
use common::handler::ClientWatch;
use config::ExecConfig;
use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// stderr bytes kept for the log; the rest is read and dropped.
pub(crate) const STDERR_KEEP: usize = 2048;

/// How long, once the child is gone, its pipes get to reach end of file, and how long a
/// SIGKILLed child gets to be reaped, before the run stops waiting.
pub(crate) const DRAIN_BOUND: Duration = Duration::from_secs(5);

/// The longest time limit honoured (a year); a longer configured one is cut to it.
const LONGEST_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Polling interval of the waiter where the platform cannot wait without reaping.
const POLL: Duration = Duration::from_millis(10);

/// How often a run looks whether its client has gone (an atomic load each time).
const CLIENT_POLL: Duration = Duration::from_millis(50);

/// Why a run produced no usable stdout.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The program could not be started.
    Spawn(io::Error),
    /// It exited with a non-zero status.
    Exit(i32),
    /// It was killed by this signal (not by us for a timeout or the output cap).
    Signal(i32),
    /// It ran past the time limit and was killed.
    Timeout,
    /// Streaming: no stdout for `stream_idle_timeout_ms`; it was killed.
    Idle,
    /// Its client went away and it was killed (`on_client_gone = "stop"`, or mid-stream).
    ClientGone,
    /// It wrote more than the output cap and was killed.
    OutputCap,
    /// It exited, but something outside its process group kept stdout open.
    OutputLeftOpen,
    /// A failure of ours (a thread that could not start, a lost channel).
    Internal(String),
}

/// What a run left: stdout on success, and what stderr said either way.
#[derive(Debug)]
pub(crate) struct Run {
    /// The complete stdout of a program that exited with status 0.
    pub(crate) result: Result<Bytes, Failure>,
    /// The start of stderr (lossy UTF-8, trimmed), for the log.
    pub(crate) stderr: String,
}

/// What the stdout reader ended with.
enum Captured {
    Complete(Vec<u8>),
    Overflow,
    Failed(io::Error),
}

/// Run `cfg`'s program with exactly `env` as its environment and `body` on stdin, registered in
/// `registry` while it runs.
pub(crate) fn run(
    cfg: &ExecConfig,
    env: BTreeMap<String, OsString>,
    body: Bytes,
    registry: &Arc<Registry>,
    client: &ClientWatch,
) -> Run {
    let mut stderr = String::new();
    let result = supervise(cfg, env, body, registry, client, &mut stderr);
    Run { result, stderr }
}

fn supervise(
    cfg: &ExecConfig,
    env: BTreeMap<String, OsString>,
    body: Bytes,
    registry: &Arc<Registry>,
    client: &ClientWatch,
    stderr_out: &mut String,
) -> Result<Bytes, Failure> {
    let (out_tx, out_rx) = mpsc::channel();
    let cap = cfg.max_output_bytes;
    let Launched {
        guard,
        group,
        exit_rx,
        err_rx,
        deadline,
    } = launch(cfg, env, body, registry, move |stdout, group| {
        let _ = out_tx.send(read_capped(stdout, cap, &group));
    })?;

    let exited = match wait_while_watched(&exit_rx, deadline, client) {
        Ok(status) => status,
        Err(Stopped::ClientGone) => {
            // Nobody waits for the answer: kill the group and what escaped it at once.
            guard.group().signal(Signal::SIGKILL);
            if exit_rx.recv_timeout(DRAIN_BOUND).is_err() {
                tracing::warn!(pgid = group.pgid(), "program not reaped after SIGKILL");
            }
            children::kill_orphans();
            return Err(Failure::ClientGone);
        }
        Err(Stopped::Timeout) => {
            stop(guard.group(), &exit_rx, cfg.kill_grace);
            // Whatever escaped the group (setsid) and outlived its parent is ours now: kill it,
            // so it neither runs on nor holds the pipes open.
            children::kill_orphans();
            *stderr_out = recv_until(&err_rx, Instant::now() + DRAIN_BOUND).unwrap_or_default();
            return Err(Failure::Timeout);
        }
        Err(Stopped::Disconnected) => {
            return Err(Failure::Internal("lost the program's waiter thread".into()));
        }
    };
    // The child is reaped and its group killed, and whatever escaped the group is killed now:
    // the pipes reach end of file promptly.
    children::kill_orphans();
    let drained_by = Instant::now() + DRAIN_BOUND;
    *stderr_out = recv_until(&err_rx, drained_by)
        .unwrap_or_else(|_| "(stderr still open; not read)".to_string());
    let stdout = match recv_until(&out_rx, drained_by) {
        Ok(Captured::Complete(buf)) => buf,
        Ok(Captured::Overflow) => return Err(Failure::OutputCap),
        Ok(Captured::Failed(e)) => return Err(Failure::Internal(format!("reading stdout: {e}"))),
        Err(RecvTimeoutError::Timeout) => return Err(Failure::OutputLeftOpen),
        Err(RecvTimeoutError::Disconnected) => {
            return Err(Failure::Internal("lost the stdout reader thread".into()))
        }
    };
    let status = exited.map_err(|e| Failure::Internal(format!("waiting for the program: {e}")))?;
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(Bytes::from(stdout)),
        (Some(code), _) => Err(Failure::Exit(code)),
        (None, Some(signal)) => Err(Failure::Signal(signal)),
        (None, None) => Err(Failure::Internal(format!("unknown exit status {status}"))),
    }
}

/// A started program: registered in its server's registry (dropping `guard` kills its group),
/// watched by its waiter thread, its stderr and stdout read by helper threads.
pub(crate) struct Launched {
    /// Kills the group when dropped.
    pub(crate) guard: Registered,
    pub(crate) group: Arc<Group>,
    /// The exit status, once the waiter has reaped the child.
    pub(crate) exit_rx: Receiver<io::Result<ExitStatus>>,
    /// The start of stderr, once it reached end of file.
    pub(crate) err_rx: Receiver<String>,
    /// `timeout_ms` from the start.
    pub(crate) deadline: Instant,
}

/// Start `cfg`'s program with exactly `env` and `body` on stdin, registered in `registry`, its
/// waiter, stdin writer and stderr reader running, and its stdout handed to `read_stdout` on a
/// thread of its own (with the group, to kill it past a cap).
pub(crate) fn launch(
    cfg: &ExecConfig,
    env: BTreeMap<String, OsString>,
    body: Bytes,
    registry: &Arc<Registry>,
    read_stdout: impl FnOnce(ChildStdout, Arc<Group>) + Send + 'static,
) -> Result<Launched, Failure> {
    let Some((program, args)) = cfg.command.split_first() else {
        return Err(Failure::Spawn(io::Error::other("empty command")));
    };
    // Clamped so an absurd configured timeout cannot overflow the clock.
    let deadline = Instant::now() + cfg.timeout.min(LONGEST_TIMEOUT);

    // The waiter exists before the child does, so a child is never left without one to reap it.
    let (child_tx, child_rx) = mpsc::channel::<(Child, Arc<Group>)>();
    let (exit_tx, exit_rx) = mpsc::channel();
    spawn_thread("exec-wait", move || wait_for_exit(child_rx, exit_tx))?;

    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(env)
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = &cfg.cwd {
        command.current_dir(dir);
    }
    // From here on, any return (or unwinding panic) drops the guard, which kills the group.
    let (mut child, guard) = registry.spawn(&mut command).map_err(Failure::Spawn)?;
    let group = guard.group().clone();
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    if let Err(mpsc::SendError((mut child, group))) = child_tx.send((child, group.clone())) {
        group.signal(Signal::SIGKILL);
        let _ = group.reap(&mut child, true);
        return Err(Failure::Internal("the waiter thread is gone".into()));
    }

    if let Some(stdout) = stdout {
        let group = group.clone();
        spawn_thread("exec-stdout", move || read_stdout(stdout, group))?;
    }
    let (err_tx, err_rx) = mpsc::channel();
    if let Some(stderr) = stderr {
        spawn_thread("exec-stderr", move || {
            let _ = err_tx.send(read_head(stderr));
        })?;
    }
    if let Some(mut stdin) = stdin.filter(|_| !body.is_empty()) {
        spawn_thread("exec-stdin", move || {
            // A child that does not read its stdin, or closes it early, is not an error.
            if let Err(e) = stdin.write_all(&body) {
                if e.kind() != io::ErrorKind::BrokenPipe {
                    tracing::debug!(cause = %e, "cannot write the body to the program's stdin");
                }
            }
        })?;
    }
    Ok(Launched {
        guard,
        group,
        exit_rx,
        err_rx,
        deadline,
    })
}

/// Why [`wait_while_watched`] stopped waiting for the program's exit.
enum Stopped {
    Timeout,
    ClientGone,
    Disconnected,
}

/// Wait for the program's exit status until `deadline`, looking every [`CLIENT_POLL`] whether
/// the client has gone.
fn wait_while_watched<T>(
    exit_rx: &Receiver<T>,
    deadline: Instant,
    client: &ClientWatch,
) -> Result<T, Stopped> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match exit_rx.recv_timeout(left.min(CLIENT_POLL)) {
            Ok(status) => return Ok(status),
            Err(RecvTimeoutError::Disconnected) => return Err(Stopped::Disconnected),
            Err(RecvTimeoutError::Timeout) if left <= CLIENT_POLL => return Err(Stopped::Timeout),
            Err(RecvTimeoutError::Timeout) if client.is_gone() => return Err(Stopped::ClientGone),
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

/// Past the time limit: SIGTERM the group, SIGKILL it after `grace`, and wait (bounded) for the
/// waiter to reap the child. If even that does not come, the waiter reaps it later.
pub(crate) fn stop(group: &Group, exit_rx: &Receiver<io::Result<ExitStatus>>, grace: Duration) {
    group.signal(Signal::SIGTERM);
    if exit_rx.recv_timeout(grace).is_ok() {
        return;
    }
    group.signal(Signal::SIGKILL);
    if exit_rx.recv_timeout(DRAIN_BOUND).is_err() {
        tracing::warn!(
            pgid = group.pgid(),
            "program not reaped after SIGKILL; leaving it to the waiter"
        );
    }
}

/// The waiter thread: take the child, wait for it to exit, reap it (killing its group's
/// stragglers first), send the status.
fn wait_for_exit(child_rx: Receiver<(Child, Arc<Group>)>, exit_tx: Sender<io::Result<ExitStatus>>) {
    let Ok((mut child, group)) = child_rx.recv() else {
        return; // the child never started
    };
    let status = loop {
        let exited = children::wait_exited(child.id());
        if let Some(status) = group.reap(&mut child, exited) {
            break status;
        }
        thread::sleep(POLL);
    };
    let _ = exit_tx.send(status);
}

/// Read stdout to its end, or until it would exceed `cap`: then kill the group and stop.
fn read_capped(stdout: ChildStdout, cap: usize, group: &Group) -> Captured {
    let mut buf = Vec::new();
    let limit = u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1);
    match stdout.take(limit).read_to_end(&mut buf) {
        Ok(_) if buf.len() > cap => {
            group.signal(Signal::SIGKILL);
            Captured::Overflow
        }
        Ok(_) => Captured::Complete(buf),
        Err(e) => Captured::Failed(e),
    }
}

/// Read stderr to its end, keeping the first [`STDERR_KEEP`] bytes as lossy, trimmed UTF-8.
fn read_head(mut stderr: ChildStderr) -> String {
    let mut kept = Vec::new();
    let mut dropped = 0usize;
    let mut chunk = [0u8; 8192];
    loop {
        match stderr.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                let room = STDERR_KEEP.saturating_sub(kept.len()).min(n);
                kept.extend_from_slice(&chunk[..room]);
                dropped = dropped.saturating_add(n - room);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let mut text = String::from_utf8_lossy(&kept).trim_end().to_string();
    if dropped > 0 {
        text.push_str(&format!(" ... ({dropped} more bytes)"));
    }
    text
}

/// Receive from `rx`, waiting until `deadline` at most.
pub(crate) fn recv_until<T>(rx: &Receiver<T>, deadline: Instant) -> Result<T, RecvTimeoutError> {
    rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
}

/// Start a named helper thread; failing to is an internal failure, not a panic.
pub(crate) fn spawn_thread(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), Failure> {
    thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map(drop)
        .map_err(|e| Failure::Internal(format!("cannot start a {name} thread: {e}")))
}
