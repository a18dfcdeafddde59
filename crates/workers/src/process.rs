//! One worker process: its environment, spawning it so that it never outlives the server,
//! waiting for its exit, its socket directory, and its resident memory.
//!
//! Orphans are prevented twice over. The child asks the kernel for SIGKILL when its parent dies
//! (`PR_SET_PDEATHSIG`, set between fork and exec by `die_with_parent`), and it is told the
//! server's pid in `FIDDLER_WORKER_PARENT_PID` to watch. Linux delivers the death signal when the
//! *thread* that forked the child exits, not the process: so every worker is spawned from the
//! pool's supervisor thread, which lives exactly as long as the pool, never from a short-lived
//! thread or a tokio worker.

use config::WorkerConfig;
use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

/// The complete environment of the worker for `slot` serving on `socket`: the allow-listed server
/// variables, the configured pairs, then the worker contract's own (which win).
pub(crate) fn worker_env(
    cfg: &WorkerConfig,
    slot: usize,
    socket: &Path,
) -> BTreeMap<String, OsString> {
    let mut env = children::passed_env(cfg.pass_env.iter().map(String::as_str));
    for (name, value) in &cfg.env {
        env.insert(name.clone(), OsString::from(value));
    }
    env.insert(
        "FIDDLER_WORKER_SOCKET".into(),
        socket.as_os_str().to_os_string(),
    );
    env.insert("FIDDLER_WORKER_ID".into(), slot.to_string().into());
    env.insert(
        "FIDDLER_WORKER_PARENT_PID".into(),
        std::process::id().to_string().into(),
    );
    env
}

/// The command that starts one worker for `slot` on `socket`: in its own process group, stdin
/// from `/dev/null`, stdout and stderr onto the server's stderr (so neither is ever an unread
/// pipe), dying with the server. Spawn it from the pool's supervisor thread only (see the module
/// docs), through `children::Registry::spawn`, so that it is registered before any orphan scan
/// could take it for an escaped process.
pub(crate) fn command(cfg: &WorkerConfig, slot: usize, socket: &Path) -> io::Result<Command> {
    let Some((program, args)) = cfg.command.split_first() else {
        return Err(io::Error::other("empty command"));
    };
    let stdout = io::stderr().as_fd().try_clone_to_owned()?;
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(worker_env(cfg, slot, socket))
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::inherit());
    if let Some(dir) = &cfg.cwd {
        command.current_dir(dir);
    }
    die_with_parent(&mut command, nix::unistd::getpid());
    Ok(command)
}

/// In the child, before exec: ask for SIGKILL when the spawning thread dies, and refuse to start
/// if the server (`parent`) is already gone (it died between fork and the `prctl`, so the death
/// signal would never come).
#[allow(unsafe_code)] // the crate's one exception: see the SAFETY comment and Cargo.toml
fn die_with_parent(command: &mut Command, parent: nix::unistd::Pid) {
    let hook = move || -> io::Result<()> {
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
            .map_err(|errno| io::Error::from_raw_os_error(errno as i32))?;
        if nix::unistd::getppid() != parent {
            return Err(io::Error::from_raw_os_error(
                nix::errno::Errno::ESRCH as i32,
            ));
        }
        Ok(())
    };
    // SAFETY: `pre_exec` runs the hook in the forked child before exec, where only
    // async-signal-safe operations are allowed (another thread of the server may have held a lock
    // or been inside malloc at the fork). The hook makes two raw system calls, prctl(2) and
    // getppid(2), both async-signal-safe; it allocates nothing (an `io::Error` from a raw OS error
    // is a plain value), takes no lock, and reads only `parent`, which was copied into the
    // closure before the fork.
    unsafe {
        command.pre_exec(hook);
    }
}

/// How a worker ended, in words: `exited with status 1`, `killed by signal SIGKILL`.
pub(crate) fn describe_exit(status: &io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(signal)) => match Signal::try_from(signal) {
                Ok(sig) => format!("killed by signal {}", sig.as_str()),
                Err(_) => format!("killed by signal {signal}"),
            },
            (None, None) => format!("ended ({s})"),
        },
        Err(e) => format!("could not be waited for: {e}"),
    }
}

pub(crate) use children::wait_exited;

/// True if the child `pid` has exited (a zombie not yet reaped, or already reaped by its
/// waiter), without reaping it. One system call: a request checks it before it is sent, so a
/// worker that died while idle costs no request.
pub(crate) fn has_exited(pid: u32) -> bool {
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(nix::unistd::Pid::from_raw(pid)), flags) {
        Ok(WaitStatus::StillAlive) => false,
        Ok(_) => true,
        // Not our child (any more): the waiter reaped it.
        Err(nix::errno::Errno::ECHILD) => true,
        Err(_) => false,
    }
}

/// Most processes [`rss_bytes`] visits in one worker's tree: a pre-forking server's arbiter and its
/// workers are a handful; the bound keeps a fork bomb from turning a memory check into a scan.
const RSS_TREE_MAX: usize = 256;

/// The resident memory of the worker `pid` and every process it started (a pre-forking server
/// such as gunicorn holds its model in the processes its arbiter forks, not in the arbiter): the
/// sum of `VmRSS` (`/proc/PID/status`) over the tree, in bytes, found through
/// `/proc/PID/task/TID/children`. Pages shared between them (copy-on-write after a fork) count
/// once per process, as `ps` and `top` add them: an upper bound of what the tree holds. `None`
/// once `pid` is gone.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let mut total = process_rss(pid)?;
    let mut pending = children(pid);
    let mut visited = 1;
    while let Some(child) = pending.pop() {
        if visited >= RSS_TREE_MAX {
            break;
        }
        visited += 1;
        // A child that exited meanwhile holds nothing.
        total = total.saturating_add(process_rss(child).unwrap_or(0));
        pending.extend(children(child));
    }
    Some(total)
}

/// `VmRSS` of one process, in bytes.
fn process_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

/// The children of every thread of `pid` (empty if it is gone, or the kernel lacks the file).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for task in tasks.flatten() {
        let Ok(list) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        found.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    found
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// Distinguishes the socket directories of several pools in one process.
static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A private (0700) directory holding one pool's worker sockets; removed when dropped.
#[derive(Debug)]
pub(crate) struct SocketDir {
    path: PathBuf,
}

impl SocketDir {
    /// Create a fresh directory inside `base`, or inside `$XDG_RUNTIME_DIR` (else the temporary
    /// directory) when `base` is `None`. `base` is created (0700) if missing.
    pub(crate) fn create(base: Option<&Path>) -> io::Result<SocketDir> {
        let base = match base {
            Some(dir) => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)?;
                dir.to_path_buf()
            }
            None => default_socket_base(),
        };
        remove_stale(&base);
        let pid = std::process::id();
        for _ in 0..1000 {
            let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("fc-{pid}-{n}"));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    let dir = SocketDir { path };
                    // A long socket name (slot 9999, ten billionth worker) must fit an address.
                    let longest = dir.socket(9999, 9_999_999_999);
                    if longest.as_os_str().len() > config::worker::MAX_SOCKET_PATH {
                        return Err(io::Error::other(format!(
                            "socket paths under {} would exceed {} bytes; set a shorter socket_dir",
                            base.display(),
                            config::worker::MAX_SOCKET_PATH
                        )));
                    }
                    return Ok(dir);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("no free socket directory name"))
    }

    /// The socket path of worker `key` in `slot`: unique for the pool's life, so a replacement
    /// never meets its predecessor's socket.
    pub(crate) fn socket(&self, slot: usize, key: u64) -> PathBuf {
        self.path.join(format!("w{slot}-{key}.sock"))
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Where a pool without `socket_dir` creates its socket directory: `$XDG_RUNTIME_DIR` when it
/// is an absolute path to a directory, else the temporary directory.
pub fn default_socket_base() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute() && d.is_dir())
        .unwrap_or_else(std::env::temp_dir)
}

/// Remove the socket directories that servers killed with SIGKILL left in `base`: ours (same
/// owner), named `fc-PID-N`, whose PID no longer runs. Best effort.
fn remove_stale(base: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let uid = nix::unistd::getuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("fc-"))
            .and_then(|rest| rest.split_once('-'))
            .filter(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let ours =
            std::fs::symlink_metadata(entry.path()).is_ok_and(|m| m.is_dir() && m.uid() == uid);
        let dead = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            == Err(nix::errno::Errno::ESRCH);
        if ours && dead && pid > 0 {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn an_exited_child_is_seen_without_being_reaped() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert!(!has_exited(child.id()));
        child.kill().unwrap();
        while !has_exited(child.id()) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // Still ours to reap: WNOWAIT left it a zombie.
        assert!(child.wait().is_ok());
        assert!(has_exited(child.id()), "reaped counts as exited");
    }

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tpython3\nVmPeak:\t  20000 kB\nVmRSS:\t   12345 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(status), Some(12345 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert!(rss_bytes(std::process::id()).is_some_and(|b| b > 0));
    }

    #[test]
    fn the_resident_memory_of_a_worker_counts_the_processes_it_started() {
        // A child that holds about 64 MiB resident, as a pre-forked worker holds its model.
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import sys; b = bytearray(64 << 20); b[::4096] = b'x' * len(b[::4096]); \
                 print('ready', flush=True); sys.stdin.read()",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).expect("read");
        assert_eq!(line.trim(), "ready");
        let me = std::process::id();
        let alone = process_rss(me).expect("own rss");
        let child_rss = process_rss(child.id()).expect("child rss");
        assert!(child_rss >= 64 << 20, "{child_rss}");
        let tree = rss_bytes(me).expect("tree rss");
        drop(child.stdin.take());
        let _ = child.wait();
        assert!(
            tree >= alone + (60 << 20),
            "the child's memory is counted: {tree} vs {alone}"
        );
    }

    #[test]
    fn the_socket_directory_is_private_and_removed_with_its_owner() {
        let base = std::env::temp_dir().join(format!("fc-test-{}", std::process::id()));
        let dir = SocketDir::create(Some(&base)).unwrap();
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let other = SocketDir::create(Some(&base)).unwrap();
        assert_ne!(dir.path(), other.path());
        assert!(dir.socket(3, 9).ends_with("w3-9.sock"));
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(!path.exists());
        drop(other);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn directories_left_by_dead_servers_are_removed_and_live_ones_kept() {
        let base = std::env::temp_dir().join(format!("fc-stale-{}", std::process::id()));
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        dead.wait().unwrap();
        let stale = base.join(format!("fc-{dead_pid}-0"));
        let alive = base.join(format!("fc-{}-77", std::process::id()));
        let other = base.join("fc-notes");
        for d in [&stale, &alive, &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        let dir = SocketDir::create(Some(&base)).unwrap();
        assert!(!stale.exists(), "a dead server's directory stays");
        assert!(alive.exists() && other.exists());
        drop(dir);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn the_environment_is_the_allow_list_the_config_and_the_contract() {
        let cfg = config::Config::from_toml(
            "[[endpoint]]\npath = \"/w\"\n[endpoint.worker]\ncommand = [\"x\"]\nenv = { A = \"1\", FIDDLER_WORKER_ID = \"spoof\" }\npass_env = [\"FC_TEST_NOT_SET\"]\n",
            "t.toml",
        )
        .unwrap();
        let config::HandlerConfig::Worker(w) = &cfg.endpoints[0].handler else {
            panic!("not a worker");
        };
        let env = worker_env(w, 2, Path::new("/run/x.sock"));
        assert_eq!(env["A"], "1");
        assert_eq!(env["FIDDLER_WORKER_ID"], "2");
        assert_eq!(env["FIDDLER_WORKER_SOCKET"], "/run/x.sock");
        assert_eq!(
            env["FIDDLER_WORKER_PARENT_PID"],
            std::process::id().to_string().as_str()
        );
        assert!(!env.contains_key("FC_TEST_NOT_SET"));
        assert!(env.keys().all(|k| [
            "A",
            "PATH",
            "LANG",
            "HOME",
            "FIDDLER_WORKER_SOCKET",
            "FIDDLER_WORKER_ID",
            "FIDDLER_WORKER_PARENT_PID"
        ]
        .contains(&k.as_str())));
    }
}
