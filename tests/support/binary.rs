//! The real `fiddler_crab` binary as a child process: [`Binary`] starts it (optionally under a
//! lowered open-files limit), collects its stderr line by line, stops it with SIGTERM, and kills it
//! if the test ends first; [`log_field`] reads a field of a log line.

use super::PATIENCE;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// The real `fiddler_crab` binary as a child process: its stderr collected line by line, killed
/// (SIGKILL) if the test ends before it exits.
pub struct Binary {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    /// Set once stderr is closed and every line of it collected.
    stderr_closed: Arc<AtomicBool>,
}

impl Binary {
    /// Start it with `args`, logging at `info` without colours.
    pub fn start(args: &[&str]) -> Binary {
        Binary::start_with(args, |_| {})
    }

    /// Start it with `args` after `setup` adjusts the command (working directory, environment;
    /// it may override `RUST_LOG`).
    pub fn start_with(args: &[&str], setup: impl FnOnce(&mut Command)) -> Binary {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fiddler_crab"));
        command.args(args).env("RUST_LOG", "info");
        setup(&mut command);
        Binary::spawn(command, None)
    }

    /// Start it with `args` allowed at most `open_files` open file descriptors (`ulimit -n` in a
    /// shell that then `exec`s the binary, so the child is the binary itself), logging with the
    /// `rust_log` filter.
    pub fn start_with_open_files(args: &[&str], open_files: u64, rust_log: &str) -> Binary {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(r#"ulimit -n "$1" && shift && exec "$@""#)
            .arg("sh")
            .arg(open_files.to_string())
            .arg(env!("CARGO_BIN_EXE_fiddler_crab"))
            .args(args);
        Binary::spawn(command, Some(rust_log))
    }

    /// Spawn `command` with its stderr collected. The test's own `FIDDLER_CRAB_*` variables are
    /// not passed on unless the command sets them itself.
    fn spawn(mut command: Command, rust_log: Option<&str>) -> Binary {
        for (name, _) in std::env::vars_os() {
            let set_here = command.get_envs().any(|(n, _)| n == name);
            if name.to_string_lossy().starts_with("FIDDLER_CRAB_") && !set_here {
                command.env_remove(name);
            }
        }
        if let Some(rust_log) = rust_log {
            command.env("RUST_LOG", rust_log);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the binary");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().expect("stderr piped");
        let lines = stderr.clone();
        let stderr_closed = Arc::new(AtomicBool::new(false));
        let closed = stderr_closed.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
            closed.store(true, Ordering::Release);
        });
        Binary {
            child,
            stderr,
            stderr_closed,
        }
    }

    /// Wait until something accepts TCP connections at `addr`; fails if the binary exits first.
    pub async fn wait_listening(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect(addr).await.is_err() {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                panic!(
                    "the binary exited before listening: {status}\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the binary never listened on {addr}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The address the main listener is bound to, from the `serving` log line (so the binary can
    /// be told port 0); fails if the binary exits first or after [`PATIENCE`].
    pub async fn wait_serving(&mut self) -> SocketAddr {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.logged(" serving ") {
                let listen = log_field(&line, "listen").expect("`listen=` in the serving line");
                return listen.parse().expect("a socket address after `listen=`");
            }
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                panic!("the binary exited before serving: {status}\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the binary did not log `serving` within {PATIENCE:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The first log line containing `words`, once it is there; fails after [`PATIENCE`].
    pub async fn wait_logged(&self, words: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.logged(words) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "`{words}` was not logged within {PATIENCE:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The first log line containing `words`, if any yet.
    pub fn logged(&self, words: &str) -> Option<String> {
        self.lines().into_iter().find(|l| l.contains(words))
    }

    /// How many log lines contain `words`.
    pub fn count_logged(&self, words: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(words)).count()
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.lines().join("\n")
    }

    fn lines(&self) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Send `signal` to the binary.
    pub fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("a pid"));
        kill(pid, signal).expect("signal the binary");
    }

    /// SIGTERM, then wait for the exit; fails after [`PATIENCE`].
    pub async fn stop(mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit within {PATIENCE:?} of SIGTERM:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Binary {
    /// [`Binary::stop`], then everything it logged, its last lines included.
    pub async fn stop_with_log(self) -> (ExitStatus, String) {
        let stderr = self.stderr.clone();
        let closed = self.stderr_closed.clone();
        let status = self.stop().await;
        // The reader thread collects the last lines until the pipe closes.
        let deadline = Instant::now() + PATIENCE;
        while !closed.load(Ordering::Acquire) {
            assert!(
                Instant::now() < deadline,
                "stderr still open after the exit"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let log = stderr.lock().unwrap_or_else(|p| p.into_inner()).join("\n");
        (status, log)
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The value of `key=` in a human-format log line (up to the next space), if present.
pub fn log_field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("{key}="))? + key.len() + 1;
    let rest = line.get(start..)?;
    Some(rest.split_whitespace().next().unwrap_or("").to_string())
}
