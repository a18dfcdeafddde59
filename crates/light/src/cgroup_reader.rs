//! Reads the process's own cgroup v2 (limits, usage, pressure) from a mount that tests can point at
//! a fixture directory; and the CPU count the process may use, quota included.
//!
//! Limits are looked up from the process's group up to the mount root and the tightest one wins:
//! a container's limit often sits on an ancestor (`/sys/fs/cgroup` itself under a cgroup
//! namespace, or a slice above the service). Usage is then read where that limit is, since the
//! limit applies to everything under it.

use super::cgroup::{
    parse_cpu_max, parse_cpu_usage_usec, parse_cpus_allowed, parse_keyed, parse_memory_current,
    parse_memory_max, parse_pressure, parse_self_cgroup, quota_parallelism, MemoryMax, Pressure,
};
use std::path::{Component, Path, PathBuf};

/// Where cgroup v2 is mounted on a standard Linux system.
pub const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

/// A CPU quota and the cgroup directory that sets it.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuLimit {
    /// CPUs' worth of time allowed (`quota / period`).
    pub cpus: f64,
    /// The cgroup directory whose `cpu.max` sets it.
    pub dir: PathBuf,
}

/// A memory limit and the cgroup directory that sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLimit {
    /// The limit, bytes.
    pub bytes: u64,
    /// The cgroup directory whose `memory.max` sets it.
    pub dir: PathBuf,
}

/// Which pressure file to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `cpu.pressure`.
    Cpu,
    /// `memory.pressure`.
    Memory,
}

impl Resource {
    fn cgroup_file(self) -> &'static str {
        match self {
            Resource::Cpu => "cpu.pressure",
            Resource::Memory => "memory.pressure",
        }
    }
}

/// The process's cgroup v2 under a mount `root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupReader {
    root: PathBuf,
    leaf: PathBuf,
}

impl CgroupReader {
    /// The calling process's cgroup under [`CGROUP_MOUNT`]; `None` when the system has no cgroup v2
    /// hierarchy there (cgroup v1, or not Linux).
    pub fn for_self() -> Option<CgroupReader> {
        let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        CgroupReader::new(CGROUP_MOUNT, &text)
    }

    /// The group named by `proc_self_cgroup` (the text of `/proc/self/cgroup`) under `root`;
    /// `None` unless `root` holds a cgroup v2 hierarchy (a `cgroup.controllers` file) and the text
    /// has a v2 line. A group that is not found under `root` (a container sharing the host's
    /// cgroup namespace sees its own group mounted at the root) or whose path leaves the root
    /// reads the root itself.
    pub fn new(root: impl Into<PathBuf>, proc_self_cgroup: &str) -> Option<CgroupReader> {
        let root = root.into();
        if !root.join("cgroup.controllers").is_file() {
            return None;
        }
        let group = Path::new(parse_self_cgroup(proc_self_cgroup)?);
        let inside = group
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        let leaf = root.join(group.strip_prefix("/").unwrap_or(group));
        let leaf = if inside && leaf.is_dir() {
            leaf
        } else {
            root.clone()
        };
        Some(CgroupReader { root, leaf })
    }

    /// The directory of the process's own group.
    pub fn leaf(&self) -> &Path {
        &self.leaf
    }

    /// The tightest CPU quota from the group up to the root; `None` when no level sets one.
    pub fn cpu_limit(&self) -> Option<CpuLimit> {
        self.tightest(|dir| parse_cpu_max(&read(&dir.join("cpu.max"))?)?.cpus())
            .map(|(cpus, dir)| CpuLimit { cpus, dir })
    }

    /// The tightest memory limit from the group up to the root; `None` when no level sets one.
    pub fn memory_limit(&self) -> Option<MemoryLimit> {
        self.tightest(
            |dir| match parse_memory_max(&read(&dir.join("memory.max"))?)? {
                MemoryMax::Unlimited => None,
                MemoryMax::Bytes(b) => Some(b),
            },
        )
        .map(|(bytes, dir)| MemoryLimit { bytes, dir })
    }

    /// CPU time used by the group at `dir` since its creation, µs (`cpu.stat` `usage_usec`).
    pub fn cpu_usage_usec(&self, dir: &Path) -> Option<u64> {
        parse_cpu_usage_usec(&read(&dir.join("cpu.stat"))?)
    }

    /// Memory in use by the group at `dir`, bytes: `memory.current` less the inactive page cache
    /// (`memory.stat` `inactive_file`, when readable), which the kernel reclaims before it would
    /// hit the limit. This is the "working set" that container runtimes report.
    pub fn memory_used(&self, dir: &Path) -> Option<u64> {
        let current = parse_memory_current(&read(&dir.join("memory.current"))?)?;
        let inactive = read(&dir.join("memory.stat"))
            .and_then(|stat| parse_keyed(&stat, "inactive_file"))
            .unwrap_or(0);
        Some(current.saturating_sub(inactive))
    }

    /// The group's own pressure file for `resource`; `None` when absent (the host's root cgroup
    /// has none: read `/proc/pressure` instead) or unreadable.
    pub fn pressure(&self, resource: Resource) -> Option<Pressure> {
        parse_pressure(&read(&self.leaf.join(resource.cgroup_file()))?)
    }

    /// The smallest value `level` gives from the leaf up to the root, with its directory; the
    /// deepest wins a tie.
    fn tightest<T: PartialOrd>(&self, level: impl Fn(&Path) -> Option<T>) -> Option<(T, PathBuf)> {
        let mut best: Option<(T, PathBuf)> = None;
        for dir in self
            .leaf
            .ancestors()
            .take_while(|d| d.starts_with(&self.root))
        {
            if let Some(value) = level(dir) {
                if best.as_ref().is_none_or(|(b, _)| value < *b) {
                    best = Some((value, dir.to_path_buf()));
                }
            }
        }
        best
    }
}

/// Read a small text file; `None` when it is missing or unreadable.
///
/// Into a buffer of [`READ_CAPACITY`] bytes from the start: `/proc` and cgroup files report a
/// size of 0, so `std::fs::read_to_string` would begin with 32-byte probe reads and grow from
/// there (eight `read` calls for a 2 KiB `/proc/stat`, at every sample of the light).
pub(crate) fn read(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut text = String::with_capacity(READ_CAPACITY);
    std::fs::File::open(path)
        .ok()?
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// The first read's room in [`read`]: `/proc/stat` of a machine with a few dozen CPUs, and every
/// cgroup file the light reads, in one `read` call.
const READ_CAPACITY: usize = 8 * 1024;

/// The number of CPUs the process may use, its cgroup v2 `cpu.max` quota included:
/// `ceil(quota / period)` (1.5 CPUs → 2), at least 1, at most the CPUs the process may be
/// scheduled on (its affinity, from `/proc/self/status`). Without a v2 quota this is
/// [`std::thread::available_parallelism`] (which also applies cgroup v1 quotas, rounded down).
///
/// The affinity, rather than `available_parallelism`, caps a quota because the standard library
/// rounds a quota down (1.5 → 1), which would leave half a CPU of the quota unused.
pub fn available_parallelism_with_quota() -> usize {
    let std_count = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Some(limit) = CgroupReader::for_self().and_then(|r| r.cpu_limit()) else {
        return std_count;
    };
    let affinity = read(Path::new("/proc/self/status"))
        .and_then(|status| parse_cpus_allowed(&status))
        .unwrap_or(std_count);
    quota_parallelism(limit.cpus, affinity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/fixtures")
    }

    fn fixture_reader() -> CgroupReader {
        let proc_cgroup = read(&fixtures().join("proc_self_cgroup")).unwrap();
        CgroupReader::new(fixtures().join("cgroup"), &proc_cgroup).unwrap()
    }

    /// A fresh, empty directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("fc-light-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, rel: &str, text: &str) {
            let path = self.0.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn fixture_tree_takes_the_tightest_limits_and_reads_usage_where_they_are() {
        let r = fixture_reader();
        let root = fixtures().join("cgroup");
        assert_eq!(r.leaf(), root.join("app.slice/fc.service"));

        // The service has no quota; the slice above it allows 1.5 CPUs.
        let cpu = r.cpu_limit().unwrap();
        assert_eq!(
            cpu,
            CpuLimit {
                cpus: 1.5,
                dir: root.join("app.slice")
            }
        );
        assert_eq!(quota_parallelism(cpu.cpus, 64), 2);
        assert_eq!(r.cpu_usage_usec(&cpu.dir), Some(5_000_000));

        // The slice has no memory limit; the service has 1 GiB, 768 MiB current of which 256 MiB
        // is inactive page cache.
        let mem = r.memory_limit().unwrap();
        assert_eq!(
            mem,
            MemoryLimit {
                bytes: 1 << 30,
                dir: r.leaf().to_path_buf()
            }
        );
        assert_eq!(r.memory_used(&mem.dir), Some(512 << 20));

        assert_eq!(r.pressure(Resource::Cpu).unwrap().some.avg10, 41.5);
        assert_eq!(r.pressure(Resource::Memory).unwrap().some.avg10, 3.0);
    }

    #[test]
    fn a_temp_tree_with_missing_files_degrades_to_none() {
        let t = TempDir::new();
        t.write("cgroup.controllers", "cpu memory\n");
        t.write("job/cpu.max", "max 100000\n");
        t.write("job/memory.max", "max\n");
        t.write("job/memory.current", "4096\n");
        let r = CgroupReader::new(&t.0, "0::/job\n").unwrap();
        assert_eq!(r.leaf(), t.0.join("job"));
        assert_eq!(r.cpu_limit(), None);
        assert_eq!(r.memory_limit(), None);
        assert_eq!(r.cpu_usage_usec(r.leaf()), None);
        assert_eq!(
            r.memory_used(r.leaf()),
            Some(4096),
            "no memory.stat: current as is"
        );
        assert_eq!(r.pressure(Resource::Cpu), None);

        // Limits appear at run time (e.g. `docker update`) and are picked up on the next read.
        t.write("job/cpu.max", "200000 100000\n");
        t.write("job/memory.max", "garbage\n");
        t.write("memory.max", "8192\n");
        assert_eq!(r.cpu_limit().map(|l| l.cpus), Some(2.0));
        assert_eq!(
            r.memory_limit().map(|l| (l.bytes, l.dir)),
            Some((8192, t.0.clone()))
        );
    }

    #[test]
    fn not_v2_or_unknown_group_is_handled() {
        let t = TempDir::new();
        assert_eq!(
            CgroupReader::new(&t.0, "0::/\n"),
            None,
            "no cgroup.controllers: not v2"
        );
        t.write("cgroup.controllers", "cpu\n");
        assert_eq!(CgroupReader::new(&t.0, "4:memory:/x\n"), None, "no v2 line");
        let gone = CgroupReader::new(&t.0, "0::/not/here\n").unwrap();
        assert_eq!(
            gone.leaf(),
            t.0,
            "a group absent under the mount reads the root"
        );
        let escaping = CgroupReader::new(&t.0, "0::/../../x\n").unwrap();
        assert_eq!(escaping.leaf(), t.0);
    }

    #[test]
    fn parallelism_with_quota_is_within_bounds() {
        let n = available_parallelism_with_quota();
        let std_count = std::thread::available_parallelism().unwrap().get();
        assert!(n >= 1);
        let affinity = read(Path::new("/proc/self/status"))
            .and_then(|s| parse_cpus_allowed(&s))
            .unwrap_or(std_count);
        assert!(n <= affinity.max(std_count), "{n}");
    }
}
