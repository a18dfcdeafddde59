//! The traffic light: green, yellow or red from CPU, memory and pressure, cgroup-aware, read on
//! the request path with one atomic load.
//!
//! A sampler thread reads a [`SampleSource`] every `sample_every` and feeds the pure
//! [`LightState`] machine under a [`LightPolicy`] (thresholds with hysteresis, a minimum dwell
//! before going down). Both it and a watchdog run under [`SupervisedThread`]: a panicking source
//! is replaced, an erroring one retried and then replaced, and meanwhile the last light holds;
//! once no sample has succeeded for `stale_after`, the watchdog sets the fail-safe light and
//! reports the inputs stale. Nothing on the request path ever blocks on the sampler.
//!
//! # Layout
//! - [`sample`]: the inputs ([`Sample`]), the [`SampleSource`] trait, the real [`SystemSource`].
//! - [`cgroup`]: pure parsers of cgroup v2 files and pressure (PSI) files.
//! - [`cgroup_reader`]: [`CgroupReader`] over a cgroup mount, and
//!   [`available_parallelism_with_quota`].
//! - [`state`]: the pure state machine that applies a [`LightPolicy`] to samples.
//! - `sampler`: the sampler and watchdog threads behind [`TrafficLight::start`].

pub mod cgroup;
pub mod cgroup_reader;
pub mod sample;
mod sampler;
pub mod state;

pub use cgroup_reader::{available_parallelism_with_quota, CgroupReader};
pub use sample::{Origin, Sample, SampleSource, SystemSource};
pub use state::LightState;

use common::supervisor::SupervisedThread;
pub use config::light::{Levels, Light, LightPolicy, Thresholds};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The light and what it is based on, for `/status`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LightStatus {
    /// The current light.
    pub light: Light,
    /// The memory signals' own level ([`TrafficLight::memory`]); red: memory is short, and the
    /// worker pools recycle by retiring first.
    pub memory: Light,
    /// Time in the current light, ms.
    pub since_ms: u64,
    /// When the light last changed (or was created), Unix time in ms.
    pub last_change_unix_ms: u64,
    /// The last successful sample; `None` before the first (and for a fixed light).
    pub inputs: Option<Sample>,
    /// Age of `inputs`, ms.
    pub sample_age_ms: Option<u64>,
    /// No sample has succeeded for `stale_after`: the light is the fail-safe.
    pub stale: bool,
    /// The light is fixed (no sampler), as made by [`TrafficLight::fixed`].
    pub fixed: bool,
    /// Times the sampler thread was replaced after a panic.
    pub sampler_restarts: u64,
    /// Samples that failed (the source returned an error).
    pub sample_errors: u64,
    /// The most recent sampling error, if any.
    pub last_error: Option<String>,
}

/// The light's state machine and sampling record: what only the sampler, the watchdog and status
/// rendering touch, behind [`Shared::status`].
#[derive(Debug)]
struct SamplerState {
    state: LightState,
    changed_unix_ms: u64,
    last_sample: Option<(Sample, Instant)>,
    /// The last successful sample, or the start.
    last_ok: Instant,
    stale: bool,
    errors: u64,
    last_error: Option<String>,
    stopping: bool,
}

#[derive(Debug)]
struct Shared {
    /// The light as a `u8`: the request path's one atomic load.
    light: AtomicU8,
    /// The memory signals' level as a `u8` ([`TrafficLight::memory`]).
    memory: AtomicU8,
    status: Mutex<SamplerState>,
    /// Wakes the sampler and watchdog early when stopping.
    wake: Condvar,
    restarts: OnceLock<Arc<AtomicU64>>,
    fixed: bool,
}

impl Shared {
    fn new(light: Light, fixed: bool) -> Shared {
        let now = Instant::now();
        Shared {
            light: AtomicU8::new(light as u8),
            memory: AtomicU8::new(Light::Green as u8),
            status: Mutex::new(SamplerState {
                state: LightState::new(light, now),
                changed_unix_ms: unix_ms(),
                last_sample: None,
                last_ok: now,
                stale: false,
                errors: 0,
                last_error: None,
                stopping: false,
            }),
            wake: Condvar::new(),
            restarts: OnceLock::new(),
            fixed,
        }
    }

    /// The status lock. Nothing panics while holding it; a poisoned lock is used as is.
    fn lock(&self) -> MutexGuard<'_, SamplerState> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publish a change made to `status.state`.
    fn publish(&self, status: &mut SamplerState, light: Light) {
        self.light.store(light as u8, Ordering::Relaxed);
        status.changed_unix_ms = unix_ms();
    }

    fn stop(&self) {
        self.lock().stopping = true;
        self.wake.notify_all();
    }
}

/// Stops the threads when the last [`TrafficLight`] handle goes.
#[derive(Debug)]
struct Owner {
    shared: Arc<Shared>,
    threads: Mutex<Vec<SupervisedThread>>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

/// The shared traffic light handle; clones are cheap and see the same light. The sampler stops
/// when the last clone is dropped (or on [`TrafficLight::stop`]).
#[derive(Debug, Clone)]
pub struct TrafficLight {
    shared: Arc<Shared>,
    owner: Arc<Owner>,
}

impl TrafficLight {
    /// A light that stays at `light` (no sampler), for tests and manual override; see also
    /// [`TrafficLight::set`].
    pub fn fixed(light: Light) -> TrafficLight {
        TrafficLight::unstarted(light, true)
    }

    fn unstarted(light: Light, fixed: bool) -> TrafficLight {
        let shared = Arc::new(Shared::new(light, fixed));
        let owner = Arc::new(Owner {
            shared: shared.clone(),
            threads: Mutex::new(Vec::new()),
        });
        TrafficLight { shared, owner }
    }

    /// Start at green and sample the machine with [`SystemSource`]; see [`TrafficLight::start`].
    pub fn system(
        policy: LightPolicy,
        sample_every: Duration,
        stale_after: Duration,
        fail_safe: Light,
    ) -> std::io::Result<TrafficLight> {
        TrafficLight::start(
            policy,
            SystemSource::new,
            sample_every,
            stale_after,
            fail_safe,
        )
    }

    /// Start at green with a sampler thread that takes a sample from a source made by
    /// `source_factory` every `sample_every` and applies `policy`.
    ///
    /// A source that panics (or a factory that does) is replaced by a fresh one from the factory
    /// after the supervisor's backoff, and counted in `sampler_restarts`; a source that returns
    /// errors is retried every `sample_every` and replaced after three errors in a row. The last
    /// light holds meanwhile. Once no sample has succeeded for `stale_after` (a failing, hanging
    /// or restarting source alike) a watchdog sets `fail_safe` and reports `stale`; the next good
    /// sample takes over again from there, under the usual dwell.
    pub fn start<F, S>(
        policy: LightPolicy,
        source_factory: F,
        sample_every: Duration,
        stale_after: Duration,
        fail_safe: Light,
    ) -> std::io::Result<TrafficLight>
    where
        F: Fn() -> S + Send + Sync + 'static,
        S: SampleSource + 'static,
    {
        let light = TrafficLight::unstarted(Light::Green, false);
        let plan = sampler::Plan {
            policy,
            sample_every,
            stale_after,
            fail_safe,
        };
        let threads = sampler::spawn(&light.shared, plan, source_factory)?;
        *light
            .owner
            .threads
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = threads;
        Ok(light)
    }

    /// The current light: one atomic load, never blocks.
    #[inline]
    pub fn current(&self) -> Light {
        Light::from_u8(self.shared.light.load(Ordering::Relaxed))
    }

    /// The memory signals' own level (the worse of memory headroom and memory pressure, each
    /// with its hysteresis, no dwell) as of the last sample; the fail-safe light while the
    /// inputs are stale; green for a fixed light until [`TrafficLight::set_memory`]. One atomic
    /// load, never blocks.
    #[inline]
    pub fn memory(&self) -> Light {
        Light::from_u8(self.shared.memory.load(Ordering::Relaxed))
    }

    /// Memory is short: the memory signals are at red. Worker pools then retire a worker due
    /// for recycling before its replacement starts, rather than after.
    #[inline]
    pub fn memory_short(&self) -> bool {
        self.memory() == Light::Red
    }

    /// Set the memory level now (manual override, tests). A running sampler overwrites it at its
    /// next sample.
    pub fn set_memory(&self, level: Light) {
        self.shared.memory.store(level as u8, Ordering::Relaxed);
    }

    /// Set the light now (manual override, tests). A running sampler goes on from this light at
    /// its next sample, under the usual rules.
    pub fn set(&self, light: Light) {
        let mut status = self.shared.lock();
        if let Some(light) = status.state.force(light, Instant::now()) {
            self.shared.publish(&mut status, light);
        }
    }

    /// The light and its inputs, for status rendering. Takes the sampler's lock briefly; not for
    /// the request path.
    pub fn snapshot(&self) -> LightStatus {
        let now = Instant::now();
        let status = self.shared.lock();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        LightStatus {
            light: status.state.light(),
            memory: self.memory(),
            since_ms: ms(now.saturating_duration_since(status.state.since())),
            last_change_unix_ms: status.changed_unix_ms,
            inputs: status.last_sample.map(|(s, _)| s),
            sample_age_ms: status
                .last_sample
                .map(|(_, at)| ms(now.saturating_duration_since(at))),
            stale: status.stale,
            fixed: self.shared.fixed,
            sampler_restarts: self
                .shared
                .restarts
                .get()
                .map_or(0, |r| r.load(Ordering::Relaxed)),
            sample_errors: status.errors,
            last_error: status.last_error.clone(),
        }
    }

    /// Stop the sampler and watchdog and wait for them: at most the sample in progress, or the
    /// supervisor's restart backoff if the sampler is between runs. The light keeps its last
    /// value. Dropping the last handle also stops them, without waiting.
    pub fn stop(&self) {
        self.shared.stop();
        let threads = std::mem::take(
            &mut *self
                .owner
                .threads
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for thread in threads {
            thread.join();
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn light_names_order_and_serde() {
        assert_eq!(Light::Yellow.as_str(), "yellow");
        assert_eq!(Light::Red.to_string(), "red");
        assert!(Light::Green < Light::Yellow && Light::Yellow < Light::Red);
        assert_eq!(Light::Red.lower(), Light::Yellow);
        assert_eq!(Light::Green.lower(), Light::Green);
        assert_eq!(serde_json::to_string(&Light::Green).unwrap(), "\"green\"");
        for l in [Light::Green, Light::Yellow, Light::Red] {
            assert_eq!(Light::from_u8(l as u8), l);
        }
    }

    #[test]
    fn a_fixed_light_holds_and_can_be_set() {
        let light = TrafficLight::fixed(Light::Yellow);
        assert_eq!(light.current(), Light::Yellow);
        let other = light.clone();
        other.set(Light::Red);
        assert_eq!(light.current(), Light::Red);
        let s = light.snapshot();
        assert_eq!(
            (s.light, s.fixed, s.stale, s.inputs),
            (Light::Red, true, false, None)
        );
        light.stop();
        assert_eq!(light.current(), Light::Red);
    }

    #[test]
    fn a_fixed_lights_memory_level_is_green_until_set() {
        let light = TrafficLight::fixed(Light::Red);
        assert_eq!(light.memory(), Light::Green);
        assert!(!light.memory_short());
        light.clone().set_memory(Light::Red);
        assert!(light.memory_short());
        light.set_memory(Light::Yellow);
        assert!(!light.memory_short());
    }

    #[test]
    fn status_serializes_with_lowercase_names() {
        let light = TrafficLight::fixed(Light::Green);
        light.shared.lock().last_sample = Some((
            Sample::new(0.5, 0.8).with_pressure(Some(1.5), None),
            Instant::now(),
        ));
        light.set_memory(Light::Red);
        let json = serde_json::to_value(light.snapshot()).unwrap();
        assert_eq!(json["light"], "green");
        assert_eq!(json["memory"], "red");
        assert_eq!(json["inputs"]["cpu"], 0.5);
        assert_eq!(json["inputs"]["cpu_origin"], "host");
        assert_eq!(json["inputs"]["pressure_origin"], "host");
        assert_eq!(json["inputs"]["mem_pressure"], serde_json::Value::Null);
        assert_eq!(json["sampler_restarts"], 0);
    }
}
