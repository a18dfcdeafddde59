//! The light's inputs: a [`Sample`], the [`SampleSource`] trait, and the real [`SystemSource`]
//! (cgroup v2 when the process is limited by one, else the host's `/proc/stat` and
//! `/proc/meminfo`, plus PSI).

use super::cgroup::{
    cpu_utilisation, host_cpu_utilisation, memory_headroom, parse_meminfo, parse_pressure,
    parse_proc_stat_cpu, HostCpuTimes, PsiAverages,
};
use super::cgroup_reader::{read, CgroupReader, Resource};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where a reading came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The whole machine (`/proc/stat`, `/proc/meminfo`, `/proc/pressure`).
    Host,
    /// The process's cgroup v2 (its quota, its memory limit, its pressure files).
    Cgroup,
}

/// One reading of the machine as this process sees it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Sample {
    /// CPU utilisation, 0.0–1.0, of what the process may use: its cgroup's quota, else the host.
    pub cpu: f64,
    /// Where `cpu` came from.
    pub cpu_origin: Origin,
    /// Memory headroom, 0.0–1.0: the free fraction of the cgroup's limit, else the host's
    /// available memory over its total.
    pub mem_headroom: f64,
    /// Where `mem_headroom` came from.
    pub mem_origin: Origin,
    /// CPU pressure (percent, 0–100): the share of recent time in which some task waited for a
    /// CPU, from PSI (see `StallShare`); `None` without PSI.
    pub cpu_pressure: Option<f64>,
    /// Memory pressure (percent, 0–100), likewise; `None` without PSI.
    pub mem_pressure: Option<f64>,
    /// Where the pressure readings came from; `None` when there are none.
    pub pressure_origin: Option<Origin>,
}

impl Sample {
    /// A host reading without pressure, for tests and sources of their own.
    pub fn new(cpu: f64, mem_headroom: f64) -> Sample {
        Sample {
            cpu,
            cpu_origin: Origin::Host,
            mem_headroom,
            mem_origin: Origin::Host,
            cpu_pressure: None,
            mem_pressure: None,
            pressure_origin: None,
        }
    }

    /// The same reading with host pressure figures (percent).
    pub fn with_pressure(self, cpu: Option<f64>, mem: Option<f64>) -> Sample {
        Sample {
            cpu_pressure: cpu,
            mem_pressure: mem,
            pressure_origin: (cpu.is_some() || mem.is_some()).then_some(Origin::Host),
            ..self
        }
    }
}

/// Something that reads the machine. The sampler thread calls it every `sample_every`; an error
/// or a panic is survived (see [`super::TrafficLight::start`]).
pub trait SampleSource: Send {
    /// Take one reading.
    fn sample(&mut self) -> Result<Sample, String>;
}

/// The previous cgroup CPU reading, to compute utilisation over the interval since.
#[derive(Debug)]
struct CpuMark {
    dir: PathBuf,
    usage_usec: u64,
    at: Instant,
}

/// The real source: cgroup v2 limits when the process has them, else the host (`/proc/stat`,
/// `/proc/meminfo`), and
/// PSI from the cgroup's own pressure files, else `/proc/pressure`. Any file that is missing or
/// unreadable falls back to the host or leaves the pressure reading empty.
///
/// CPU utilisation is measured between two calls, so the first call after [`SystemSource::new`]
/// covers the time since construction; calls less than a clock tick (10 ms) apart repeat the
/// previous host figure, and calls a few ticks apart give a rough one.
#[derive(Debug)]
pub struct SystemSource {
    host_cpu_mark: Option<HostCpuTimes>,
    host_cpu_last: f64,
    cgroup: Option<CgroupReader>,
    host_pressure: PathBuf,
    cpu_mark: Option<CpuMark>,
    cpu_stall: StallShare,
    mem_stall: StallShare,
}

/// The host's CPU time counters.
const PROC_STAT: &str = "/proc/stat";

/// The host's memory figures.
const PROC_MEMINFO: &str = "/proc/meminfo";

/// How quickly the pressure figure follows the stall counter: the time constant of its
/// exponential smoothing.
const PRESSURE_SMOOTHING: Duration = Duration::from_secs(1);

/// Pressure as the share of time stalled, from PSI's `total=` counter (µs stalled) between two
/// samples, smoothed with a one-second time constant. PSI's own `avg10` is a 10 s average the
/// kernel updates every 2 s: after a CPU hog ends it keeps rising for seconds and takes 8–12 s to
/// fall below a red exit level (measured, docs/BENCHMARKS.md section 5), holding the light red
/// long after the machine is free. The counter follows within a sample or two. The first reading
/// of a file, or one whose counter went backwards (another file), starts from `avg10`.
#[derive(Debug, Default)]
struct StallShare {
    last: Option<StallMark>,
}

#[derive(Debug, Clone, Copy)]
struct StallMark {
    origin: Origin,
    total_us: u64,
    at: Instant,
    share: f64,
}

impl StallShare {
    fn update(&mut self, origin: Origin, some: PsiAverages, at: Instant) -> f64 {
        let share = match self.last {
            Some(last) if last.origin == origin && some.total >= last.total_us => {
                let elapsed = at.saturating_duration_since(last.at);
                if elapsed < Duration::from_millis(1) {
                    return last.share;
                }
                let stalled = (some.total - last.total_us) as f64;
                let now = (stalled / elapsed.as_secs_f64() / 1e4).clamp(0.0, 100.0);
                let weight =
                    1.0 - (-elapsed.as_secs_f64() / PRESSURE_SMOOTHING.as_secs_f64()).exp();
                last.share + weight * (now - last.share)
            }
            _ => some.avg10,
        };
        self.last = Some(StallMark {
            origin,
            total_us: some.total,
            at,
            share,
        });
        share
    }
}

impl Default for SystemSource {
    fn default() -> Self {
        SystemSource::new()
    }
}

impl SystemSource {
    /// Read this process's cgroup (if on cgroup v2) and the host.
    pub fn new() -> SystemSource {
        SystemSource::with_paths(CgroupReader::for_self(), PathBuf::from("/proc/pressure"))
    }

    /// Read `cgroup` (none: host only) and host pressure files under `host_pressure` (normally
    /// `/proc/pressure`, holding `cpu` and `memory`).
    pub fn with_paths(cgroup: Option<CgroupReader>, host_pressure: PathBuf) -> SystemSource {
        let mut source = SystemSource {
            host_cpu_mark: None,
            host_cpu_last: 0.0,
            cgroup,
            host_pressure,
            cpu_mark: None,
            cpu_stall: StallShare::default(),
            mem_stall: StallShare::default(),
        };
        source.host_cpu();
        source.cgroup_cpu();
        source
    }

    /// Host CPU utilisation since the previous call, from `/proc/stat`; the previous figure when
    /// no tick passed, 0.0 while the file is unreadable (as on a system without `/proc`).
    fn host_cpu(&mut self) -> f64 {
        let Some(now) = read(Path::new(PROC_STAT)).and_then(|text| parse_proc_stat_cpu(&text))
        else {
            self.host_cpu_mark = None;
            return 0.0;
        };
        let Some(before) = self.host_cpu_mark else {
            self.host_cpu_mark = Some(now);
            return self.host_cpu_last;
        };
        if now.total == before.total {
            return self.host_cpu_last;
        }
        self.host_cpu_mark = Some(now);
        self.host_cpu_last = host_cpu_utilisation(before, now).unwrap_or(self.host_cpu_last);
        self.host_cpu_last
    }

    /// Utilisation of the cgroup's CPU quota since the previous call; `None` without a quota,
    /// on the first call for a given limiting group, or when `cpu.stat` is unreadable.
    fn cgroup_cpu(&mut self) -> Option<f64> {
        let cgroup = self.cgroup.as_ref()?;
        let Some(limit) = cgroup.cpu_limit() else {
            self.cpu_mark = None;
            return None;
        };
        let now = CpuMark {
            usage_usec: cgroup.cpu_usage_usec(&limit.dir)?,
            dir: limit.dir,
            at: Instant::now(),
        };
        let previous = self.cpu_mark.replace(now);
        let (previous, now) = (previous?, self.cpu_mark.as_ref()?);
        if previous.dir != now.dir {
            return None;
        }
        cpu_utilisation(
            previous.usage_usec,
            now.usage_usec,
            now.at.duration_since(previous.at),
            limit.cpus,
        )
    }

    /// Headroom under the cgroup's memory limit; `None` without a limit (or one above the host's
    /// memory, which the host's figure then describes better) or when unreadable.
    fn cgroup_memory(&self, host_total: u64) -> Option<f64> {
        let cgroup = self.cgroup.as_ref()?;
        let limit = cgroup.memory_limit()?;
        if host_total > 0 && limit.bytes >= host_total {
            return None;
        }
        Some(memory_headroom(
            limit.bytes,
            cgroup.memory_used(&limit.dir)?,
        ))
    }

    /// The `some` stall share for cpu and memory (see [`StallShare`]): the cgroup's pressure
    /// files if either is readable, else the host's.
    fn pressure(&mut self) -> (Option<f64>, Option<f64>, Option<Origin>) {
        let (cpu, mem, origin) = self.read_pressure();
        let now = Instant::now();
        let Some(origin) = origin else {
            return (None, None, None);
        };
        let cpu = cpu.map(|p| self.cpu_stall.update(origin, p, now));
        let mem = mem.map(|p| self.mem_stall.update(origin, p, now));
        (cpu, mem, Some(origin))
    }

    fn read_pressure(&self) -> (Option<PsiAverages>, Option<PsiAverages>, Option<Origin>) {
        if let Some(cgroup) = &self.cgroup {
            let cpu = cgroup.pressure(Resource::Cpu).map(|p| p.some);
            let mem = cgroup.pressure(Resource::Memory).map(|p| p.some);
            if cpu.is_some() || mem.is_some() {
                return (cpu, mem, Some(Origin::Cgroup));
            }
        }
        let host = |name: &str| host_pressure(&self.host_pressure.join(name));
        let (cpu, mem) = (host("cpu"), host("memory"));
        let origin = (cpu.is_some() || mem.is_some()).then_some(Origin::Host);
        (cpu, mem, origin)
    }
}

fn host_pressure(path: &Path) -> Option<PsiAverages> {
    parse_pressure(&read(path)?).map(|p| p.some)
}

impl SampleSource for SystemSource {
    fn sample(&mut self) -> Result<Sample, String> {
        // Read the host even when the cgroup answers, so a fallback later has a fresh baseline.
        let host_cpu = self.host_cpu();
        let (cpu, cpu_origin) = match self.cgroup_cpu() {
            Some(c) => (c, Origin::Cgroup),
            None => (host_cpu, Origin::Host),
        };
        let (total, available) = read(Path::new(PROC_MEMINFO))
            .and_then(|text| parse_meminfo(&text))
            .unwrap_or((0, 0));
        let (mem_headroom, mem_origin) = match self.cgroup_memory(total) {
            Some(m) => (m, Origin::Cgroup),
            None if total > 0 => (
                memory_headroom(total, total.saturating_sub(available)),
                Origin::Host,
            ),
            None => return Err("no memory figures from the host".to_string()),
        };
        let (cpu_pressure, mem_pressure, pressure_origin) = self.pressure();
        Ok(Sample {
            cpu,
            cpu_origin,
            mem_headroom,
            mem_origin,
            cpu_pressure,
            mem_pressure,
            pressure_origin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/fixtures")
    }

    #[test]
    fn system_source_reads_the_fixture_cgroup() {
        let proc_cgroup = read(&fixtures().join("proc_self_cgroup")).unwrap();
        let reader = CgroupReader::new(fixtures().join("cgroup"), &proc_cgroup);
        let mut source = SystemSource::with_paths(reader, fixtures().join("pressure"));
        let s = source.sample().unwrap();
        // The fixture's usage counter does not move: the quota is idle.
        assert_eq!((s.cpu, s.cpu_origin), (0.0, Origin::Cgroup));
        // A 1 GiB limit: the fixture machine may have less, in which case the host answers.
        if s.mem_origin == Origin::Cgroup {
            assert_eq!(s.mem_headroom, 0.5);
        }
        assert_eq!(s.cpu_pressure, Some(41.5));
        assert_eq!(s.mem_pressure, Some(3.0));
        assert_eq!(s.pressure_origin, Some(Origin::Cgroup));
    }

    #[test]
    fn system_source_without_cgroup_reads_the_host() {
        let mut source = SystemSource::with_paths(None, fixtures().join("pressure"));
        let s = source.sample().unwrap();
        assert_eq!((s.cpu_origin, s.mem_origin), (Origin::Host, Origin::Host));
        assert!((0.0..=1.0).contains(&s.cpu) && (0.0..=1.0).contains(&s.mem_headroom));
        assert_eq!((s.cpu_pressure, s.mem_pressure), (Some(1.23), Some(0.5)));
        assert_eq!(s.pressure_origin, Some(Origin::Host));

        let mut bare = SystemSource::with_paths(None, fixtures().join("no-such-dir"));
        let s = bare.sample().unwrap();
        assert_eq!(
            (s.cpu_pressure, s.mem_pressure, s.pressure_origin),
            (None, None, None)
        );
    }

    fn psi(avg10: f64, total: u64) -> PsiAverages {
        PsiAverages {
            avg10,
            avg60: 0.0,
            avg300: 0.0,
            total,
        }
    }

    #[test]
    fn pressure_follows_the_stall_counter_not_the_ten_second_average() {
        let mut share = StallShare::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // The first reading has nothing to compare with: avg10.
        assert_eq!(share.update(Origin::Host, psi(5.0, 1_000_000), t0), 5.0);
        // A hog: stalled all of the next 10 s (µs stalled == µs elapsed), while avg10 lags.
        let mut total = 1_000_000;
        let mut last = 5.0;
        for i in 1..=40 {
            total += 250_000;
            last = share.update(Origin::Host, psi(20.0, total), at(i * 250));
        }
        assert!(last > 99.0, "{last}");
        // The hog ends: no more stall. avg10 would still read 90; the share drops within ~3 s.
        for i in 41..=52 {
            last = share.update(Origin::Host, psi(90.0, total), at(i * 250));
        }
        assert!(last < 5.0, "{last}");
        // Another file (the counter went backwards, or another origin): starts over from avg10.
        assert_eq!(share.update(Origin::Host, psi(7.0, 10), at(14_000)), 7.0);
        assert_eq!(share.update(Origin::Cgroup, psi(8.0, 20), at(14_250)), 8.0);
    }

    #[test]
    fn the_real_system_source_samples() {
        let mut source = SystemSource::new();
        let s = source.sample().unwrap();
        assert!((0.0..=1.0).contains(&s.cpu) && (0.0..=1.0).contains(&s.mem_headroom));
    }
}
