//! When the light changes: the pure state machine ([`LightState`]) that applies a [`LightPolicy`]'s
//! thresholds with hysteresis to samples.
//!
//! Each signal (CPU, memory headroom, CPU pressure, memory pressure) has its own level with its
//! own hysteresis: it enters yellow or red when it crosses that level's *enter* threshold and
//! leaves only once it is back past the *exit* threshold. The light wants the worst signal's
//! level. Going up is immediate: overload is urgent and a cautious moment costs little. Going
//! down waits until the light has been in its state for `min_dwell`, and then steps one level
//! at a time (red → yellow → green, each step another `min_dwell`), so that capacity comes back
//! gradually and a signal hovering at a threshold changes the light at most once per dwell.

use super::sample::Sample;
use config::light::{Light, LightPolicy, Worse};
use std::time::Instant;

/// The light's state machine: pure, driven by samples and the time they are given at.
#[derive(Debug, Clone, PartialEq)]
pub struct LightState {
    light: Light,
    since: Instant,
    /// Each signal's own level (cpu, memory headroom, cpu pressure, memory pressure).
    signals: [Light; 4],
}

impl LightState {
    /// Start at `light` at `now`, every signal at green.
    pub fn new(light: Light, now: Instant) -> LightState {
        LightState {
            light,
            since: now,
            signals: [Light::Green; 4],
        }
    }

    /// The current light.
    pub fn light(&self) -> Light {
        self.light
    }

    /// When the current light began.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// The worst signal's level, as last computed.
    pub fn wanted(&self) -> Light {
        self.signals.iter().copied().max().unwrap_or(Light::Green)
    }

    /// The memory signals' level (the worse of memory headroom and memory pressure), as last
    /// computed: each with its own hysteresis, and no dwell (memory running short is urgent both
    /// ways, and the worker pools read it only to order a recycle).
    pub fn memory(&self) -> Light {
        self.signals[1].max(self.signals[3])
    }

    /// Apply a sample taken at `now`; `Some(new light)` when the light changes. A non-finite
    /// reading keeps its signal's previous level; a missing pressure reading counts as green.
    pub fn update(&mut self, sample: &Sample, now: Instant, policy: &LightPolicy) -> Option<Light> {
        let inputs = [
            (Some(sample.cpu), &policy.cpu, Worse::Higher),
            (
                Some(sample.mem_headroom),
                &policy.mem_headroom,
                Worse::Lower,
            ),
            (sample.cpu_pressure, &policy.cpu_pressure, Worse::Higher),
            (sample.mem_pressure, &policy.mem_pressure, Worse::Higher),
        ];
        for (signal, (value, thresholds, worse)) in self.signals.iter_mut().zip(inputs) {
            *signal = match value {
                Some(v) if v.is_finite() => thresholds.level(*signal, v, worse),
                Some(_) => *signal,
                None => Light::Green,
            };
        }
        let wanted = self.wanted();
        let next = if wanted > self.light {
            wanted
        } else if wanted < self.light
            && now.saturating_duration_since(self.since) >= policy.min_dwell
        {
            self.light.lower()
        } else {
            return None;
        };
        self.force(next, now)
    }

    /// Set the light to `light` at `now` regardless of samples (the sampler's fail-safe);
    /// `Some(light)` when that is a change.
    pub fn force(&mut self, light: Light, now: Instant) -> Option<Light> {
        if light == self.light {
            return None;
        }
        self.light = light;
        self.since = now;
        Some(light)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::light::Levels;
    use std::time::Duration;
    use Light::{Green, Red, Yellow};

    const MS: Duration = Duration::from_millis(1);

    /// A state machine with the default policy and a virtual clock in ms.
    struct Run {
        state: LightState,
        policy: LightPolicy,
        t0: Instant,
    }

    impl Run {
        fn new() -> Run {
            let t0 = Instant::now();
            Run {
                state: LightState::new(Green, t0),
                policy: LightPolicy::default(),
                t0,
            }
        }

        fn at(&mut self, ms: u64, sample: Sample) -> Option<Light> {
            self.state
                .update(&sample, self.t0 + MS * ms as u32, &self.policy)
        }
    }

    fn cpu(c: f64) -> Sample {
        Sample::new(c, 0.9)
    }

    fn mem(headroom: f64) -> Sample {
        Sample::new(0.1, headroom)
    }

    #[test]
    fn default_policy_is_valid_and_bad_ones_are_named() {
        assert_eq!(LightPolicy::default().validate(), Ok(()));
        let mut p = LightPolicy::default();
        p.cpu.red = Some(Levels::new(0.8, 0.9));
        assert!(p.validate().unwrap_err().starts_with("cpu.red"));
        let mut p = LightPolicy::default();
        p.mem_headroom.yellow = Some(Levels::new(0.2, 0.1));
        assert!(p.validate().unwrap_err().starts_with("mem_headroom.yellow"));
        let mut p = LightPolicy::default();
        p.cpu_pressure.red = Some(Levels::new(f64::NAN, 1.0));
        assert!(p.validate().is_err());
    }

    #[test]
    fn cpu_thresholds_escalate_at_once() {
        let mut r = Run::new();
        assert_eq!(r.at(0, cpu(0.69)), None);
        assert_eq!(r.at(1, cpu(0.70)), Some(Yellow));
        assert_eq!(r.at(2, cpu(0.89)), None);
        assert_eq!(r.at(3, cpu(0.90)), Some(Red), "up ignores the dwell");
        let mut r = Run::new();
        assert_eq!(r.at(0, cpu(0.95)), Some(Red), "green to red in one step");
    }

    #[test]
    fn memory_headroom_thresholds() {
        let mut r = Run::new();
        assert_eq!(r.at(0, mem(0.20)), None);
        assert_eq!(r.at(1, mem(0.19)), Some(Yellow));
        assert_eq!(r.at(2, mem(0.09)), Some(Red));
        // Better, but not back to the exit levels: stays red and yellow long past the dwell.
        assert_eq!(r.at(5_000, mem(0.14)), None);
        assert_eq!(r.at(10_000, mem(0.15)), Some(Yellow));
        assert_eq!(r.at(15_000, mem(0.24)), None);
        assert_eq!(r.at(20_000, mem(0.25)), Some(Green));
    }

    #[test]
    fn hovering_around_a_threshold_does_not_flap() {
        let mut r = Run::new();
        let mut changes = Vec::new();
        for step in 0..200u64 {
            let c = if step % 2 == 0 { 0.71 } else { 0.69 };
            changes.extend(r.at(step * 100, cpu(c)));
        }
        assert_eq!(
            changes,
            [Yellow],
            "inside the hysteresis band the light holds"
        );
    }

    #[test]
    fn swinging_across_the_whole_band_changes_at_most_once_per_dwell_down() {
        let mut r = Run::new();
        let mut downs = 0;
        for step in 0..100u64 {
            // 10 s at 100 ms steps, swinging between busy and idle.
            let c = if step % 2 == 0 { 0.75 } else { 0.50 };
            if r.at(step * 100, cpu(c)) == Some(Green) {
                downs += 1;
            }
        }
        assert!(downs <= 5, "{downs} drops in 10 s with a 2 s dwell");
    }

    #[test]
    fn going_down_waits_for_min_dwell_and_steps_one_level() {
        let mut r = Run::new();
        assert_eq!(r.at(0, cpu(0.95)), Some(Red));
        assert_eq!(r.at(1_000, cpu(0.10)), None, "dwell not over");
        assert_eq!(r.at(1_999, cpu(0.10)), None);
        assert_eq!(r.at(2_000, cpu(0.10)), Some(Yellow), "one level down");
        assert_eq!(
            r.at(3_000, cpu(0.10)),
            None,
            "a fresh dwell for the next step"
        );
        assert_eq!(r.at(4_000, cpu(0.10)), Some(Green));
        assert_eq!(r.state.since(), r.t0 + MS * 4_000);
    }

    #[test]
    fn worst_signal_wins() {
        let mut r = Run::new();
        let sample = Sample::new(0.75, 0.05);
        assert_eq!(r.at(0, sample), Some(Red), "memory red beats cpu yellow");
        assert_eq!(r.state.wanted(), Red);
        // Memory recovers; cpu still yellow: down to yellow, not green.
        assert_eq!(r.at(3_000, Sample::new(0.75, 0.9)), Some(Yellow));
        assert_eq!(r.at(6_000, Sample::new(0.75, 0.9)), None);
    }

    #[test]
    fn cpu_pressure_drives_red_with_hysteresis() {
        let mut r = Run::new();
        let psi = |p: f64| cpu(0.2).with_pressure(Some(p), None);
        assert_eq!(
            r.at(0, psi(39.9)),
            None,
            "no yellow level for cpu pressure by default"
        );
        assert_eq!(r.at(1, psi(40.0)), Some(Red));
        assert_eq!(r.at(5_000, psi(30.0)), None, "held until below 30");
        assert_eq!(r.at(6_000, psi(29.9)), Some(Yellow), "one step down");
        assert_eq!(r.at(9_000, psi(29.9)), Some(Green));
        // A source that loses its pressure files: no reading is no signal.
        assert_eq!(r.at(9_001, psi(50.0)), Some(Red));
        assert_eq!(r.at(12_000, cpu(0.2)), Some(Yellow));
    }

    #[test]
    fn memory_pressure_has_both_levels() {
        let mut r = Run::new();
        let psi = |p: f64| cpu(0.2).with_pressure(None, Some(p));
        assert_eq!(r.at(0, psi(10.0)), Some(Yellow));
        assert_eq!(r.at(1, psi(25.0)), Some(Red));
    }

    #[test]
    fn the_memory_level_follows_the_memory_signals_only() {
        let mut r = Run::new();
        r.at(0, cpu(0.99));
        assert_eq!((r.state.light(), r.state.memory()), (Red, Green));
        r.at(1, mem(0.05));
        assert_eq!(r.state.memory(), Red);
        // No dwell: back to green once headroom is past the red and yellow exits.
        r.at(2, mem(0.5));
        assert_eq!((r.state.light(), r.state.memory()), (Red, Green));
        r.at(3, mem(0.5).with_pressure(None, Some(99.0)));
        assert_eq!(r.state.memory(), Red, "memory pressure counts too");
    }

    #[test]
    fn a_non_finite_reading_keeps_the_signal_level() {
        let mut r = Run::new();
        assert_eq!(r.at(0, cpu(0.95)), Some(Red));
        assert_eq!(r.at(5_000, cpu(f64::NAN)), None);
        assert_eq!(r.state.wanted(), Red);
    }

    #[test]
    fn force_sets_the_light_and_restarts_the_dwell() {
        let mut r = Run::new();
        let t = r.t0 + MS * 10;
        assert_eq!(r.state.force(Yellow, t), Some(Yellow));
        assert_eq!(r.state.force(Yellow, t), None);
        assert_eq!(
            r.at(1_000, cpu(0.1)),
            None,
            "dwell counts from the forced change"
        );
        assert_eq!(r.at(2_010, cpu(0.1)), Some(Green));
    }
}
