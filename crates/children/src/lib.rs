//! A server's child processes: each in its own process group, in a per-server registry, for
//! shutdown, status and clean-up. Exec runs and (later) worker processes register here.
//!
//! Every exec run registers its child's process group for as long as it runs, through a
//! `Registered` guard that also kills the group when dropped, so neither a normal return nor a
//! panic unwinding through the handler leaves a child behind.
//!
//! A group is only ever signalled while its leader is unreaped (a zombie at worst): the waiter
//! marks the `Group` reaped under the same lock that every signal takes, so a process group id
//! that the kernel may already have handed to an unrelated process is never signalled.

mod orphans;

pub use orphans::{become_subreaper, kill_orphans};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// One child's process group (its pgid is the child's pid), and whether the child was reaped.
#[derive(Debug)]
pub struct Group {
    pgid: Pid,
    /// True once the leader has been reaped: its id may then be reused, so it is never signalled.
    reaped: Mutex<bool>,
}

impl Group {
    /// The group led by the (unreaped) child `pid`.
    pub fn new(pid: u32) -> Group {
        Group {
            pgid: Pid::from_raw(i32::try_from(pid).unwrap_or(0)),
            reaped: Mutex::new(false),
        }
    }

    /// The process group id.
    pub fn pgid(&self) -> i32 {
        self.pgid.as_raw()
    }

    /// Send `signal` to every process of the group, unless the leader was already reaped.
    /// A group that is already gone is not an error.
    pub fn signal(&self, signal: Signal) {
        let reaped = lock(&self.reaped);
        if *reaped || self.pgid.as_raw() <= 1 {
            return;
        }
        match killpg(self.pgid, signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => {
                tracing::warn!(pgid = self.pgid.as_raw(), signal = %signal, cause = %e, "cannot signal process group")
            }
        }
    }

    /// Reap the leader and mark the group reaped. If `exited` (the leader is known to be a zombie),
    /// first SIGKILL whatever else still lives in its group (a background grandchild holding
    /// stdout), then wait; otherwise only try: `None` while the leader still runs.
    pub fn reap(&self, child: &mut Child, exited: bool) -> Option<io::Result<ExitStatus>> {
        let mut reaped = lock(&self.reaped);
        if *reaped {
            return Some(Err(io::Error::other("child already reaped")));
        }
        let result = if exited {
            if self.pgid.as_raw() > 1 {
                let _ = killpg(self.pgid, Signal::SIGKILL);
            }
            child.wait()
        } else {
            child.try_wait().transpose()?
        };
        // Reaped, or impossible to wait for: either way the id is no longer ours to signal.
        *reaped = true;
        Some(result)
    }

    /// True once the leader has been reaped.
    #[cfg(test)]
    pub fn is_reaped(&self) -> bool {
        *lock(&self.reaped)
    }
}

/// A set of live process groups, and the shutdown state that decides how a killed run answers.
/// One per server: its exec handlers register their children here; its shutdown kills them.
#[derive(Debug)]
pub struct Registry {
    groups: Mutex<Groups>,
    shutting_down: AtomicBool,
}

#[derive(Debug)]
struct Groups {
    live: BTreeMap<i32, Arc<Group>>,
    /// Set by `kill_all`: a group registering afterwards is killed at once.
    killed: bool,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    /// An empty registry.
    pub const fn new() -> Registry {
        Registry {
            groups: Mutex::new(Groups {
                live: BTreeMap::new(),
                killed: false,
            }),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Register `group` for as long as the returned guard lives. If [`Registry::kill_all`] already
    /// ran, the group is killed at once (the run then answers as shut down).
    pub fn register(self: &Arc<Self>, group: Arc<Group>) -> Registered {
        let mut groups = lock(&self.groups);
        if groups.killed {
            group.signal(Signal::SIGKILL);
        }
        groups.live.insert(group.pgid(), group.clone());
        drop(groups);
        orphans::registered().insert(group.pgid());
        Registered {
            registry: self.clone(),
            group,
        }
    }

    /// Spawn `command` (which should put the child in its own process group) and register its
    /// group, with no moment in between at which an orphan scan could take the new child for an
    /// escaped process (see [`kill_orphans`]).
    pub fn spawn(self: &Arc<Self>, command: &mut Command) -> io::Result<(Child, Registered)> {
        let _spawning = orphans::spawning();
        let child = command.spawn()?;
        let registered = self.register(Arc::new(Group::new(child.id())));
        Ok((child, registered))
    }

    /// SIGKILL every registered group, and every group that registers from now on, then every
    /// escaped descendant (see [`kill_orphans`]). Used at shutdown, after the grace period.
    pub fn kill_all(&self) {
        self.begin_shutdown();
        let mut groups = lock(&self.groups);
        groups.killed = true;
        for group in groups.live.values() {
            group.signal(Signal::SIGKILL);
        }
        drop(groups);
        kill_orphans();
    }

    /// Mark the server as shutting down: a run whose program is killed from now on answers
    /// `503 server shutting down` instead of `502`.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// True once shutdown began.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// The number of child process groups running now.
    pub fn live(&self) -> usize {
        lock(&self.groups).live.len()
    }
}

/// A registered group: while it lives the group counts as live; dropping it SIGKILLs the group
/// (a no-op once the leader is reaped) and unregisters it.
#[derive(Debug)]
pub struct Registered {
    registry: Arc<Registry>,
    group: Arc<Group>,
}

impl Registered {
    /// The registered group.
    pub fn group(&self) -> &Arc<Group> {
        &self.group
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.group.signal(Signal::SIGKILL);
        lock(&self.registry.groups).live.remove(&self.group.pgid());
        orphans::registered().remove(&self.group.pgid());
    }
}

/// Lock `m`, taking the data over from a thread that panicked while holding it: every state
/// kept here is valid between any two statements.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Server variables every child gets, besides those its config passes through.
pub const ALWAYS_PASSED: &[&str] = &["PATH", "LANG", "HOME"];

/// The server's environment variables a child may see: [`ALWAYS_PASSED`] and the names in
/// `pass_env`, where set; a name no environment can hold is skipped rather than looked up.
pub fn passed_env<'a>(pass_env: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, OsString> {
    let usable = |name: &&str| !name.is_empty() && !name.contains(['=', '\0']);
    ALWAYS_PASSED
        .iter()
        .copied()
        .chain(pass_env)
        .filter(usable)
        .filter_map(|name| Some((name.to_string(), std::env::var_os(name)?)))
        .collect()
}

/// Block until the child `pid` has exited, without reaping it (so its pid, which is also its
/// process group id, cannot be reused while the group may still be signalled). False if that is
/// not possible here: the caller then polls.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
pub fn wait_exited(pid: u32) -> bool {
    use nix::sys::wait::{waitid, Id, WaitPidFlag};
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    let pid = Pid::from_raw(pid);
    loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(_) => return true,
            Err(Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

/// Block until the child `pid` has exited, without reaping it: not possible on this platform.
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
pub fn wait_exited(_pid: u32) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    /// Tests that scan for orphans run one at a time (a scan kills every orphan of the process).
    static ORPHAN_SCANS: Mutex<()> = Mutex::new(());

    fn leaked() -> Arc<Registry> {
        Arc::new(Registry::new())
    }

    /// Register a sleeper as `Registry::spawn` does, holding the spawn lock throughout, so a
    /// parallel test's orphan scan never takes it for an escaped process.
    fn registered_sleeper(registry: &Arc<Registry>) -> (std::process::Child, Registered) {
        registry
            .spawn(
                Command::new("sleep")
                    .arg("100")
                    .process_group(0)
                    .stdin(Stdio::null()),
            )
            .unwrap()
    }

    #[test]
    fn guard_drop_kills_and_unregisters() {
        let registry = leaked();
        let (mut child, guard) = registered_sleeper(&registry);
        let group = guard.group().clone();
        assert_eq!(registry.live(), 1);
        drop(guard);
        assert_eq!(registry.live(), 0);
        let status = group.reap(&mut child, true).unwrap().unwrap();
        assert!(!status.success());
        assert!(group.is_reaped());
    }

    #[test]
    fn kill_all_kills_live_and_later_groups() {
        let _alone = ORPHAN_SCANS.lock().unwrap_or_else(|p| p.into_inner());
        let registry = leaked();
        let (mut first, _r1) = registered_sleeper(&registry);
        let g1 = _r1.group().clone();
        assert!(!registry.shutting_down());
        registry.kill_all();
        assert!(registry.shutting_down());
        let (mut second, _r2) = registered_sleeper(&registry);
        let g2 = _r2.group().clone();
        assert_eq!(registry.live(), 2);
        // Both were SIGKILLed: wait() returns (a hang here is the failure).
        assert!(!g1.reap(&mut first, true).unwrap().unwrap().success());
        assert!(!g2.reap(&mut second, true).unwrap().unwrap().success());
    }

    #[test]
    fn an_escaped_grandchild_is_reparented_to_us_and_killed() {
        let _alone = ORPHAN_SCANS.lock().unwrap_or_else(|p| p.into_inner());
        become_subreaper().unwrap();
        let registry = leaked();
        let marker = format!("{}.25", 4000 + std::process::id() % 1000);
        let script = format!("setsid sleep {marker} & echo started");
        let (mut child, guard) = registry
            .spawn(
                Command::new("sh")
                    .args(["-c", &script])
                    .process_group(0)
                    .stdout(Stdio::piped()),
            )
            .unwrap();
        // sh exits at once; the escapee (its own session) is re-parented to this process.
        let status = loop {
            if let Some(status) = guard.group().reap(&mut child, false) {
                break status.unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert!(status.success());
        drop(guard);
        let want = format!("sleep\0{marker}\0");
        let alive = || {
            std::fs::read_dir("/proc").unwrap().any(|e| {
                let path = e.unwrap().path().join("cmdline");
                std::fs::read(path).is_ok_and(|c| c == want.as_bytes())
            })
        };
        let started = std::time::Instant::now();
        while !alive() && started.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(alive(), "the escapee should run until it is killed");
        kill_orphans();
        assert!(!alive());
    }

    #[test]
    fn reaped_group_is_never_signalled() {
        // Never registered: held under the spawn lock so no parallel orphan scan reaps it first.
        let _spawning = orphans::spawning();
        let mut child = Command::new("true").process_group(0).spawn().unwrap();
        let group = Group::new(child.id());
        group.reap(&mut child, true).unwrap().unwrap();
        // The id may belong to someone else now; this must be a no-op, not a kill.
        group.signal(Signal::SIGKILL);
        assert!(group.is_reaped());
    }

    #[test]
    fn poisoned_lock_is_taken_over() {
        let m = Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m), 1);
    }
}
