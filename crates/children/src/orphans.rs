//! Escaped descendants: a process that left its job's process group (`setsid`, `setpgid`) is not
//! reached by killing the group. With the server a child subreaper ([`become_subreaper`]), such a
//! process is re-parented to the server once its parent dies, instead of to init; [`kill_orphans`]
//! then finds it by its parent id and kills it, and its own children in turn.
//!
//! What is an orphan is a fact about the whole process (every server in it, every registry), so
//! the set of registered groups and the spawn lock live here, process-wide: a child between its
//! `spawn` and its registration is never mistaken for an orphan, and neither is another server's
//! child in the same process (tests run many servers in one process).

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{getpgrp, getpid, Pid};
use std::collections::BTreeSet;
use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

/// Process groups registered in any registry of this process.
static REGISTERED: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Held (shared) from a child's spawn to its registration; held (exclusive) by an orphan scan.
static SPAWNING: RwLock<()> = RwLock::new(());

/// Rounds of scan-and-kill: each round catches the children re-parented by the previous one's
/// kills. A fork bomb outrunning this is still bounded by the rounds.
const ROUNDS: usize = 8;

/// How long a killed orphan gets to become reapable before the scan stops waiting for it.
const REAP_BOUND: Duration = Duration::from_millis(500);

/// Make this process a child subreaper (Linux `PR_SET_CHILD_SUBREAPER`): orphaned descendants are
/// re-parented to it rather than to init, so [`kill_orphans`] can find them. Elsewhere a no-op
/// that reports it is unsupported.
pub fn become_subreaper() -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "no child subreaper on this platform",
        ))
    }
}

/// Hold while spawning a child until its group is registered.
pub(crate) fn spawning() -> RwLockReadGuard<'static, ()> {
    SPAWNING.read().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn registered() -> MutexGuard<'static, BTreeSet<i32>> {
    REGISTERED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One line of `/proc/PID/stat`: the fields that decide whether a process is an orphan of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    pid: i32,
    ppid: i32,
    pgid: i32,
}

/// Parse `/proc/PID/stat` text: `pid (comm) state ppid pgrp ...`; comm may hold spaces and `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split_whitespace().next()?.parse().ok()?;
    let mut fields = rest.split_whitespace();
    let _state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    Some(Stat { pid, ppid, pgid })
}

/// This process's children that are orphans: re-parented to us (their parent died) and in a
/// process group that is neither ours nor a registered one.
fn scan(me: i32, my_group: i32, registered: &BTreeSet<i32>) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let entry = entry.ok()?;
        let name = entry.file_name();
        let pid: i32 = name.to_str()?.parse().ok()?;
        let text = std::fs::read_to_string(entry.path().join("stat")).ok()?;
        let stat = parse_stat(&text)?;
        (stat.pid == pid
            && stat.ppid == me
            && stat.pgid != my_group
            && !registered.contains(&stat.pgid))
        .then_some(pid)
    })
    .collect()
}

/// Kill every orphaned descendant (see the module docs) and reap it; returns how many were
/// killed. Call after a job's child has exited and been reaped, and at shutdown. Bounded: a few
/// rounds of `/proc` scans and at most `REAP_BOUND` of waiting per round.
pub fn kill_orphans() -> usize {
    let _exclusive = SPAWNING.write().unwrap_or_else(PoisonError::into_inner);
    let (me, my_group) = (getpid().as_raw(), getpgrp().as_raw());
    let mut killed = 0;
    for _ in 0..ROUNDS {
        let orphans = scan(me, my_group, &registered());
        if orphans.is_empty() {
            break;
        }
        for &pid in &orphans {
            match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => tracing::warn!(pid, cause = %e, "cannot kill an escaped process"),
            }
        }
        killed += orphans.len();
        reap(&orphans);
    }
    if killed > 0 {
        tracing::warn!(
            killed,
            "killed processes that escaped their job's process group"
        );
    }
    killed
}

/// Reap the killed orphans (they are our children now), waiting at most [`REAP_BOUND`].
fn reap(pids: &[i32]) {
    let deadline = Instant::now() + REAP_BOUND;
    let mut left: Vec<i32> = pids.to_vec();
    while !left.is_empty() {
        left.retain(|&pid| {
            matches!(
                waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::StillAlive) | Err(Errno::EINTR)
            )
        });
        if left.is_empty() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_with_spaces_and_parens_in_the_name() {
        let s = parse_stat("4242 (a) b (c) S 17 4242 4242 0 -1 4194560 ...").unwrap();
        assert_eq!(
            s,
            Stat {
                pid: 4242,
                ppid: 17,
                pgid: 4242
            }
        );
        assert_eq!(parse_stat("garbage"), None);
    }
}
