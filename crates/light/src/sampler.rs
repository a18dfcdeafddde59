//! The sampler thread (sample, apply the policy, publish) and the watchdog thread (fail-safe once
//! the samples go stale), both under the supervisor.

use super::{Light, LightPolicy, Sample, SampleSource, Shared};
use common::supervisor::{Backoff, SupervisedThread};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A source that errs this many times in a row is replaced by a fresh one from the factory.
const REPLACE_AFTER_ERRORS: u32 = 3;

/// How the sampler runs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    pub(super) policy: LightPolicy,
    pub(super) sample_every: Duration,
    pub(super) stale_after: Duration,
    pub(super) fail_safe: Light,
}

/// Start the sampler and the watchdog; the sampler's restart counter goes into `shared`.
pub(super) fn spawn<F, S>(
    shared: &Arc<Shared>,
    plan: Plan,
    source_factory: F,
) -> std::io::Result<Vec<SupervisedThread>>
where
    F: Fn() -> S + Send + Sync + 'static,
    S: SampleSource + 'static,
{
    let sampler_shared = shared.clone();
    let sampler = SupervisedThread::spawn("light-sampler", Backoff::default(), move || {
        sample_loop(&sampler_shared, &plan, &source_factory);
    })?;
    let _ = shared.restarts.set(sampler.restart_counter());
    let watchdog_shared = shared.clone();
    let watchdog = SupervisedThread::spawn("light-watchdog", Backoff::default(), move || {
        watch_loop(&watchdog_shared, &plan);
    });
    match watchdog {
        Ok(watchdog) => Ok(vec![sampler, watchdog]),
        Err(e) => {
            shared.stop();
            sampler.join();
            Err(e)
        }
    }
}

/// One run of the sampler: a fresh source, then sample until stopped. A panic ends the run and
/// the supervisor starts another.
fn sample_loop<S: SampleSource>(shared: &Shared, plan: &Plan, factory: &dyn Fn() -> S) {
    let mut source = factory();
    let mut errors_in_a_row = 0u32;
    loop {
        if shared.lock().stopping {
            return;
        }
        match source.sample() {
            Ok(sample) => {
                errors_in_a_row = 0;
                let now = Instant::now();
                let mut status = shared.lock();
                status.last_sample = Some((sample, now));
                status.last_ok = now;
                if status.stale {
                    status.stale = false;
                    tracing::info!("traffic light inputs fresh again");
                }
                let before = status.state.light();
                let changed = status.state.update(&sample, now, &plan.policy);
                shared
                    .memory
                    .store(status.state.memory() as u8, Ordering::Relaxed);
                if let Some(light) = changed {
                    shared.publish(&mut status, light);
                    log_change(before, light, &sample);
                }
            }
            Err(cause) => {
                errors_in_a_row += 1;
                if errors_in_a_row == 1 {
                    tracing::warn!(cause = %cause, "traffic light sample failed; retrying");
                } else {
                    tracing::debug!(cause = %cause, errors_in_a_row, "traffic light sample failed");
                }
                let mut status = shared.lock();
                status.errors += 1;
                status.last_error = Some(cause);
                drop(status);
                if errors_in_a_row.is_multiple_of(REPLACE_AFTER_ERRORS) {
                    source = factory();
                }
            }
        }
        if wait(shared, plan.sample_every) {
            return;
        }
    }
}

/// Log a light change: entering red at warn, leaving it at info, the rest (green and yellow
/// trading places, which on a busy shared host happens every few seconds) at debug.
fn log_change(before: Light, light: Light, sample: &Sample) {
    macro_rules! changed {
        ($level:ident) => {
            tracing::$level!(
                light = light.as_str(),
                from = before.as_str(),
                cpu = sample.cpu,
                mem_headroom = sample.mem_headroom,
                cpu_pressure = sample.cpu_pressure,
                mem_pressure = sample.mem_pressure,
                "traffic light changed"
            )
        };
    }
    match (before, light) {
        (_, Light::Red) => changed!(warn),
        (Light::Red, _) => changed!(info),
        _ => changed!(debug),
    }
}

/// The watchdog: every quarter of `stale_after` (at most 1 s), set the fail-safe light once no
/// sample has succeeded for `stale_after`.
fn watch_loop(shared: &Shared, plan: &Plan) {
    let tick = (plan.stale_after / 4).clamp(Duration::from_millis(1), Duration::from_secs(1));
    loop {
        {
            let now = Instant::now();
            let mut status = shared.lock();
            if status.stopping {
                return;
            }
            if !status.stale && now.saturating_duration_since(status.last_ok) >= plan.stale_after {
                status.stale = true;
                tracing::warn!(
                    fail_safe = plan.fail_safe.as_str(),
                    stale_after_ms =
                        u64::try_from(plan.stale_after.as_millis()).unwrap_or(u64::MAX),
                    "traffic light inputs stale; using the fail-safe light"
                );
                // Memory is as unknown as the rest: the fail-safe level too.
                shared.memory.store(plan.fail_safe as u8, Ordering::Relaxed);
                if let Some(light) = status.state.force(plan.fail_safe, now) {
                    shared.publish(&mut status, light);
                }
            }
        }
        if wait(shared, tick) {
            return;
        }
    }
}

/// Sleep for `d` or until stopped; true when stopping.
fn wait(shared: &Shared, d: Duration) -> bool {
    let status = shared.lock();
    let (status, _) = shared
        .wake
        .wait_timeout_while(status, d, |s| !s.stopping)
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    status.stopping
}

#[cfg(test)]
mod tests {
    use super::super::{Sample, TrafficLight};
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    const MS: Duration = Duration::from_millis(1);

    /// Wait up to 10 s for `cond`; false if it never held.
    fn eventually(mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(MS * 2);
        }
        cond()
    }

    /// Plays a script of results, repeating the last one.
    struct Script(Arc<Mutex<Vec<Result<Sample, String>>>>);

    impl SampleSource for Script {
        fn sample(&mut self) -> Result<Sample, String> {
            let mut script = self.0.lock().unwrap();
            if script.len() > 1 {
                script.remove(0)
            } else {
                script[0].clone()
            }
        }
    }

    fn script(steps: Vec<Result<Sample, String>>) -> Arc<Mutex<Vec<Result<Sample, String>>>> {
        Arc::new(Mutex::new(steps))
    }

    #[test]
    fn samples_drive_the_light_and_the_snapshot() {
        let steps = script(vec![Ok(Sample::new(0.95, 0.9))]);
        let s = steps.clone();
        let light = TrafficLight::start(
            LightPolicy::default(),
            move || Script(s.clone()),
            MS,
            Duration::from_secs(60),
            Light::Yellow,
        )
        .unwrap();
        assert!(eventually(|| light.current() == Light::Red));
        let status = light.snapshot();
        assert_eq!(status.inputs.map(|s| s.cpu), Some(0.95));
        assert!(!status.stale && !status.fixed);
        light.stop();
    }

    #[test]
    fn memory_samples_set_the_memory_level_and_stale_inputs_the_fail_safe() {
        // Little headroom, idle CPU: memory red; then the source fails for good.
        let steps = script(vec![Ok(Sample::new(0.1, 0.05))]);
        let s = steps.clone();
        let light = TrafficLight::start(
            LightPolicy::default(),
            move || Script(s.clone()),
            MS,
            MS * 50,
            Light::Yellow,
        )
        .unwrap();
        assert!(eventually(|| light.memory_short()));
        *steps.lock().unwrap() = vec![Ok(Sample::new(0.1, 0.9))];
        assert!(eventually(|| light.memory() == Light::Green));
        *steps.lock().unwrap() = vec![Err("unreadable".to_string())];
        assert!(eventually(|| light.snapshot().stale));
        assert_eq!(
            light.memory(),
            Light::Yellow,
            "unknown memory: the fail-safe"
        );
        light.stop();
    }

    /// Reads yellow, panics on its second sample ever (across instances), then reads yellow.
    struct PanicsOnce(Arc<AtomicUsize>);

    impl SampleSource for PanicsOnce {
        fn sample(&mut self) -> Result<Sample, String> {
            if self.0.fetch_add(1, Ordering::SeqCst) == 1 {
                panic!("deliberate sampler failure");
            }
            Ok(Sample::new(0.75, 0.9))
        }
    }

    #[test]
    fn a_panicking_source_is_replaced_and_the_light_holds_meanwhile() {
        let calls = Arc::new(AtomicUsize::new(0));
        let made = Arc::new(AtomicUsize::new(0));
        let (c, m) = (calls.clone(), made.clone());
        let light = TrafficLight::start(
            LightPolicy::default(),
            move || {
                m.fetch_add(1, Ordering::SeqCst);
                PanicsOnce(c.clone())
            },
            MS,
            Duration::from_secs(60),
            Light::Red,
        )
        .unwrap();
        assert!(eventually(|| light.snapshot().sampler_restarts == 1));
        let status = light.snapshot();
        assert_eq!(
            status.light,
            Light::Yellow,
            "the last light holds, not the fail-safe"
        );
        assert_eq!(status.inputs.map(|s| s.cpu), Some(0.75));
        assert!(!status.stale);
        // A fresh source samples again after the restart.
        assert!(eventually(|| calls.load(Ordering::SeqCst) >= 4));
        assert_eq!(made.load(Ordering::SeqCst), 2);
        assert_eq!(light.current(), Light::Yellow);
        assert_eq!(light.snapshot().sampler_restarts, 1);
        light.stop();
    }

    #[test]
    fn the_last_light_holds_while_the_source_errs() {
        let steps = script(vec![Ok(Sample::new(0.75, 0.9)), Err("no data".to_string())]);
        let s = steps.clone();
        let light = TrafficLight::start(
            LightPolicy::default(),
            move || Script(s.clone()),
            MS,
            Duration::from_secs(60),
            Light::Red,
        )
        .unwrap();
        assert!(eventually(|| light.snapshot().sample_errors >= 5));
        let status = light.snapshot();
        assert_eq!(status.light, Light::Yellow);
        assert_eq!(status.last_error.as_deref(), Some("no data"));
        assert!(!status.stale);
        light.stop();
    }

    #[test]
    fn a_source_that_always_errs_goes_stale_and_fail_safe() {
        let steps = script(vec![Err("unreadable".to_string())]);
        let s = steps.clone();
        let light = TrafficLight::start(
            LightPolicy::default(),
            move || Script(s.clone()),
            MS * 5,
            MS * 50,
            Light::Red,
        )
        .unwrap();
        assert!(eventually(|| light.current() == Light::Red));
        let status = light.snapshot();
        assert!(status.stale);
        assert_eq!(status.inputs, None);
        assert!(status.sample_errors >= 1);

        // The source recovers: fresh again, and down from the fail-safe under the dwell rules.
        *steps.lock().unwrap() = vec![Ok(Sample::new(0.1, 0.9))];
        assert!(eventually(|| !light.snapshot().stale));
        light.stop();
    }

    /// Reads green once, then blocks on `gate` before each further reading.
    struct Hangs {
        calls: Arc<AtomicUsize>,
        gate: Arc<Mutex<()>>,
    }

    impl SampleSource for Hangs {
        fn sample(&mut self) -> Result<Sample, String> {
            if self.calls.fetch_add(1, Ordering::SeqCst) > 0 {
                drop(self.gate.lock().unwrap());
            }
            Ok(Sample::new(0.1, 0.9))
        }
    }

    #[test]
    fn a_hanging_source_goes_stale_and_fail_safe() {
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let (c, g) = (calls.clone(), gate.clone());
        let light = TrafficLight::start(
            LightPolicy::default(),
            move || Hangs {
                calls: c.clone(),
                gate: g.clone(),
            },
            MS,
            MS * 50,
            Light::Red,
        )
        .unwrap();
        assert!(eventually(|| light.snapshot().stale));
        assert_eq!(light.current(), Light::Red);
        assert!(
            light.snapshot().inputs.is_some(),
            "the last good sample is still shown"
        );
        drop(held);
        assert!(eventually(|| !light.snapshot().stale));
        light.stop();
    }

    #[test]
    fn dropping_the_last_handle_stops_the_sampler() {
        let sampled = Arc::new(AtomicUsize::new(0));
        struct Counting(Arc<AtomicUsize>);
        impl SampleSource for Counting {
            fn sample(&mut self) -> Result<Sample, String> {
                self.0.fetch_add(1, Ordering::SeqCst);
                Ok(Sample::new(0.1, 0.9))
            }
        }
        let c = sampled.clone();
        let light = TrafficLight::start(
            LightPolicy::default(),
            move || Counting(c.clone()),
            MS,
            Duration::from_secs(60),
            Light::Yellow,
        )
        .unwrap();
        let shared = Arc::downgrade(&light.shared);
        assert!(eventually(|| sampled.load(Ordering::SeqCst) > 0));
        drop(light);
        // Both threads let go of the shared state once they have seen the stop.
        assert!(eventually(|| shared.strong_count() == 0));
    }
}
