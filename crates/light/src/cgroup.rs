//! Pure parsers of the cgroup v2, pressure (PSI) and host (`/proc/stat`, `/proc/meminfo`) files
//! the traffic light reads, over `&str`.
//!
//! Every parser returns `None` for text it does not understand; the caller then falls back (to the
//! host's figures, or to no pressure reading) instead of failing.

use std::time::Duration;

/// A `cpu.max` value: `max 100000` or `<quota> <period>` in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuMax {
    /// No quota.
    Unlimited,
    /// `quota_us` of CPU time per `period_us` of wall time.
    Quota {
        /// CPU time allowed per period, µs.
        quota_us: u64,
        /// Period length, µs (never zero).
        period_us: u64,
    },
}

impl CpuMax {
    /// CPUs' worth of time allowed (`quota / period`, e.g. 1.5); `None` when unlimited.
    pub fn cpus(self) -> Option<f64> {
        match self {
            CpuMax::Unlimited => None,
            CpuMax::Quota {
                quota_us,
                period_us,
            } => Some(quota_us as f64 / period_us as f64),
        }
    }
}

/// Parse `cpu.max`. A zero period or quota is malformed.
pub fn parse_cpu_max(text: &str) -> Option<CpuMax> {
    let mut fields = text.split_whitespace();
    let quota = fields.next()?;
    let period_us = match fields.next() {
        Some(p) => p.parse::<u64>().ok().filter(|&p| p > 0)?,
        None => 100_000,
    };
    if quota == "max" {
        return Some(CpuMax::Unlimited);
    }
    let quota_us = quota.parse::<u64>().ok().filter(|&q| q > 0)?;
    Some(CpuMax::Quota {
        quota_us,
        period_us,
    })
}

/// A `memory.max` value: `max` or a byte count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryMax {
    /// No limit.
    Unlimited,
    /// The limit, in bytes.
    Bytes(u64),
}

/// Parse `memory.max`.
pub fn parse_memory_max(text: &str) -> Option<MemoryMax> {
    match text.trim() {
        "max" => Some(MemoryMax::Unlimited),
        n => n.parse().ok().map(MemoryMax::Bytes),
    }
}

/// Parse a single-number file such as `memory.current` (bytes).
pub fn parse_memory_current(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// The value of `key` in a flat-keyed file (`key value` per line), such as `cpu.stat` or
/// `memory.stat`.
pub fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        (fields.next()? == key)
            .then(|| fields.next()?.parse().ok())
            .flatten()
    })
}

/// `usage_usec` from `cpu.stat`: CPU time the cgroup has used since it was created, µs.
pub fn parse_cpu_usage_usec(text: &str) -> Option<u64> {
    parse_keyed(text, "usage_usec")
}

/// Utilisation of a quota of `cpus` CPUs between two `usage_usec` readings taken `elapsed` apart,
/// clamped to 0.0–1.0. `None` when nothing can be said (no time passed, counter went backwards,
/// no quota).
pub fn cpu_utilisation(
    before_usec: u64,
    after_usec: u64,
    elapsed: Duration,
    cpus: f64,
) -> Option<f64> {
    let used = after_usec.checked_sub(before_usec)? as f64;
    let available = elapsed.as_micros() as f64 * cpus;
    (available > 0.0).then(|| (used / available).clamp(0.0, 1.0))
}

/// Fraction of `limit` bytes still free when `used` bytes are in use, clamped to 0.0–1.0.
pub fn memory_headroom(limit: u64, used: u64) -> f64 {
    if limit == 0 {
        return 0.0;
    }
    (limit.saturating_sub(used) as f64 / limit as f64).clamp(0.0, 1.0)
}

/// The host's CPU time from the `cpu ` line of `/proc/stat` (all CPUs), in clock ticks since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCpuTimes {
    /// Ticks not idle: user, nice, system, irq, softirq, steal (guest time is inside user).
    pub busy: u64,
    /// All ticks: busy plus idle and iowait.
    pub total: u64,
}

/// Parse the `cpu ` line of `/proc/stat`: `user nice system idle iowait irq softirq steal ...`.
pub fn parse_proc_stat_cpu(text: &str) -> Option<HostCpuTimes> {
    let line = text.lines().find(|line| line.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    let idle = ticks
        .get(3)?
        .saturating_add(ticks.get(4).copied().unwrap_or(0));
    let total = ticks.iter().fold(0u64, |sum, t| sum.saturating_add(*t));
    Some(HostCpuTimes {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// Host CPU utilisation between two `/proc/stat` readings, 0.0–1.0: busy ticks over all ticks.
/// `None` when no tick passed or a counter went backwards.
pub fn host_cpu_utilisation(before: HostCpuTimes, after: HostCpuTimes) -> Option<f64> {
    let total = after.total.checked_sub(before.total)?;
    let busy = after.busy.checked_sub(before.busy)?;
    (total > 0).then(|| (busy as f64 / total as f64).clamp(0.0, 1.0))
}

/// `MemTotal` and `MemAvailable` from `/proc/meminfo`, in bytes (the file gives kB).
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let bytes = |key: &str| parse_keyed(text, key).map(|kb| kb.saturating_mul(1024));
    Some((bytes("MemTotal:")?, bytes("MemAvailable:")?))
}

/// One line of a pressure file: the share of wall time (percent, 0–100) in which tasks were
/// stalled, averaged over 10 s, 60 s and 300 s, and the total stall time in µs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PsiAverages {
    /// Percent stalled over the last 10 s.
    pub avg10: f64,
    /// Percent stalled over the last 60 s.
    pub avg60: f64,
    /// Percent stalled over the last 300 s.
    pub avg300: f64,
    /// Total stall time, µs.
    pub total: u64,
}

/// A pressure file (`cpu.pressure`, `/proc/pressure/memory`, ...): `some` is the share of time
/// at least one task was stalled, `full` all of them (absent for the host's CPU on older kernels).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pressure {
    /// At least one task stalled.
    pub some: PsiAverages,
    /// All non-idle tasks stalled.
    pub full: Option<PsiAverages>,
}

/// Parse a pressure file: `some avg10=1.23 avg60=0.50 avg300=0.10 total=12345` then an optional
/// `full ...` line. The `some` line is required.
pub fn parse_pressure(text: &str) -> Option<Pressure> {
    let mut some = None;
    let mut full = None;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("some") => some = parse_psi_fields(fields),
            Some("full") => full = parse_psi_fields(fields),
            _ => {}
        }
    }
    Some(Pressure { some: some?, full })
}

fn parse_psi_fields<'a>(fields: impl Iterator<Item = &'a str>) -> Option<PsiAverages> {
    let (mut avg10, mut avg60, mut avg300, mut total) = (None, None, None, None);
    for field in fields {
        let (key, value) = field.split_once('=')?;
        match key {
            "avg10" => avg10 = value.parse::<f64>().ok(),
            "avg60" => avg60 = value.parse::<f64>().ok(),
            "avg300" => avg300 = value.parse::<f64>().ok(),
            "total" => total = value.parse::<u64>().ok(),
            _ => {}
        }
    }
    let percent = |v: f64| v.is_finite().then(|| v.clamp(0.0, 100.0));
    Some(PsiAverages {
        avg10: percent(avg10?)?,
        avg60: avg60.and_then(percent).unwrap_or(0.0),
        avg300: avg300.and_then(percent).unwrap_or(0.0),
        total: total.unwrap_or(0),
    })
}

/// The cgroup v2 path in `/proc/self/cgroup` (the `0::/path` line), e.g. `/system.slice/x.service`.
pub fn parse_self_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        match (fields.next()?, fields.next()?, fields.next()?) {
            ("0", "", path) => Some(path.trim_end()),
            _ => None,
        }
    })
}

/// The number of CPUs in a kernel CPU list such as `0-3,8,10-11` (7).
pub fn parse_cpu_list(text: &str) -> Option<usize> {
    let mut count = 0usize;
    for range in text.trim().split(',').filter(|r| !r.is_empty()) {
        count += match range.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (lo.parse::<usize>().ok()?, hi.parse::<usize>().ok()?);
                hi.checked_sub(lo)? + 1
            }
            None => range.parse::<usize>().map(|_| 1).ok()?,
        };
    }
    (count > 0).then_some(count)
}

/// The CPUs this process may be scheduled on (its affinity), from `/proc/self/status`'s
/// `Cpus_allowed_list:` line.
pub fn parse_cpus_allowed(status: &str) -> Option<usize> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .and_then(parse_cpu_list)
}

/// Threads worth running under a quota of `cpus` CPUs on a machine where `cap` CPUs are usable:
/// `ceil(cpus)`, at least 1, at most `cap` (itself at least 1).
pub fn quota_parallelism(cpus: f64, cap: usize) -> usize {
    let cap = cap.max(1);
    if !cpus.is_finite() || cpus <= 0.0 {
        return 1;
    }
    let wanted = cpus.ceil();
    if wanted >= cap as f64 {
        cap
    } else {
        (wanted as usize).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU_PRESSURE: &str = include_str!("fixtures/cgroup/app.slice/fc.service/cpu.pressure");

    #[test]
    fn host_cpu_is_busy_ticks_over_all_ticks_between_two_readings() {
        let before = "cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 50 0 50 350 50 0 0 0 0 0\nintr 1\n";
        let after = "cpu  250 0 150 850 150 0 0 0 0 0\ncpu0 1 1 1 1\n";
        let before = parse_proc_stat_cpu(before).unwrap();
        let after = parse_proc_stat_cpu(after).unwrap();
        assert_eq!(
            before,
            HostCpuTimes {
                busy: 200,
                total: 1000
            }
        );
        // 200 busy ticks out of 400.
        assert_eq!(host_cpu_utilisation(before, after), Some(0.5));
        assert_eq!(host_cpu_utilisation(after, after), None);
        assert_eq!(host_cpu_utilisation(after, before), None);
        // An old kernel's four fields are enough.
        let old = parse_proc_stat_cpu("cpu 1 2 3 4\n").unwrap();
        assert_eq!(old, HostCpuTimes { busy: 6, total: 10 });
        for bad in ["", "cpu0 1 2 3 4\n", "cpu 1 2 x 4\n", "cpu 1 2\n"] {
            assert_eq!(parse_proc_stat_cpu(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn meminfo_gives_total_and_available_bytes() {
        let text = "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    4000000 kB\n";
        assert_eq!(parse_meminfo(text), Some((16_384_000_000, 4_096_000_000)));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn cpu_max_unlimited_and_quotas() {
        assert_eq!(parse_cpu_max("max 100000\n"), Some(CpuMax::Unlimited));
        assert_eq!(parse_cpu_max("max"), Some(CpuMax::Unlimited));
        let quota = parse_cpu_max("150000 100000\n").unwrap();
        assert_eq!(quota.cpus(), Some(1.5));
        assert_eq!(quota_parallelism(quota.cpus().unwrap(), 64), 2);
        assert_eq!(parse_cpu_max("200000 100000").unwrap().cpus(), Some(2.0));
        assert_eq!(parse_cpu_max("50000 100000").unwrap().cpus(), Some(0.5));
        for bad in ["", "abc 100000", "100000 0", "0 100000", "max x"] {
            assert_eq!(parse_cpu_max(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn quota_parallelism_rounds_up_within_bounds() {
        assert_eq!(quota_parallelism(1.5, 64), 2);
        assert_eq!(quota_parallelism(2.0, 64), 2);
        assert_eq!(quota_parallelism(0.2, 64), 1);
        assert_eq!(quota_parallelism(8.0, 4), 4);
        assert_eq!(quota_parallelism(f64::NAN, 4), 1);
        assert_eq!(quota_parallelism(3.0, 0), 1);
    }

    #[test]
    fn memory_max_and_current() {
        assert_eq!(parse_memory_max("max\n"), Some(MemoryMax::Unlimited));
        assert_eq!(
            parse_memory_max("536870912\n"),
            Some(MemoryMax::Bytes(536_870_912))
        );
        assert_eq!(parse_memory_max("lots"), None);
        assert_eq!(parse_memory_current("104857600\n"), Some(104_857_600));
        assert_eq!(parse_memory_current(""), None);
        assert_eq!(memory_headroom(1000, 250), 0.75);
        assert_eq!(memory_headroom(1000, 2000), 0.0);
        assert_eq!(memory_headroom(0, 0), 0.0);
    }

    #[test]
    fn cpu_stat_usage_delta_is_utilisation_of_the_quota() {
        let before =
            parse_cpu_usage_usec("usage_usec 1000000\nuser_usec 800000\nsystem_usec 200000\n");
        let after = parse_cpu_usage_usec("usage_usec 1750000\nuser_usec 1400000\n");
        let (before, after) = (before.unwrap(), after.unwrap());
        // 0.75 s of CPU in 0.5 s of wall time under a 1.5-CPU quota: fully used.
        let second = Duration::from_millis(500);
        assert_eq!(cpu_utilisation(before, after, second, 1.5), Some(1.0));
        // The same use over 1 s under 1.5 CPUs: half.
        let util = cpu_utilisation(before, after, Duration::from_secs(1), 1.5).unwrap();
        assert!((util - 0.5).abs() < 1e-9, "{util}");
        assert_eq!(cpu_utilisation(after, before, second, 1.5), None);
        assert_eq!(cpu_utilisation(before, after, Duration::ZERO, 1.5), None);
        assert_eq!(parse_cpu_usage_usec("user_usec 5\n"), None);
        assert_eq!(
            parse_keyed("inactive_file 4096\nactive_file 1\n", "inactive_file"),
            Some(4096)
        );
    }

    #[test]
    fn pressure_some_and_full_lines() {
        let p = parse_pressure(CPU_PRESSURE).unwrap();
        assert_eq!(p.some.avg10, 41.5);
        assert_eq!(p.some.avg60, 20.25);
        assert_eq!(p.some.avg300, 5.0);
        assert_eq!(p.some.total, 987_654_321);
        assert_eq!(p.full.unwrap().avg10, 12.0);

        let host_cpu =
            parse_pressure("some avg10=1.23 avg60=0.50 avg300=0.10 total=12345\n").unwrap();
        assert_eq!(host_cpu.some.avg10, 1.23);
        assert_eq!(host_cpu.full, None);

        assert_eq!(
            parse_pressure("full avg10=1.00 avg60=0 avg300=0 total=1"),
            None
        );
        assert_eq!(parse_pressure("some avg60=1.00"), None);
        assert_eq!(parse_pressure(""), None);
    }

    #[test]
    fn self_cgroup_finds_the_v2_line() {
        let hybrid = "9:name=systemd:/\n4:memory:/x\n0::/app.slice/fc.service\n";
        assert_eq!(parse_self_cgroup(hybrid), Some("/app.slice/fc.service"));
        assert_eq!(parse_self_cgroup("0::/\n"), Some("/"));
        assert_eq!(parse_self_cgroup("4:memory:/x\n"), None);
    }

    #[test]
    fn cpu_lists_and_affinity() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), Some(7));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list(""), None);
        let status =
            "Name:\tfiddler\nCpus_allowed:\tf\nCpus_allowed_list:\t0-1\nMems_allowed:\t1\n";
        assert_eq!(parse_cpus_allowed(status), Some(2));
    }
}
