//! Readiness with hysteresis, for a Kubernetes readiness probe (`/readyz`).
//!
//! Not ready as soon as the server is saturated: the traffic light is red, or every endpoint's
//! queue is full. Ready again only once it has stayed recovered for `hold`: the light is not red
//! and some queue is below the low-water mark. So a pod at its limit leaves rotation at once and
//! does not flap back in on the first quiet instant. Evaluated at probe time; no thread.
//!
//! The time comes from a [`Clock`]: the system's, or a [`ManualClock`] that a test moves by hand,
//! so the hold can be tested through real sockets without waiting for it.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the probe sees of the server right now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// The traffic light is red.
    pub red: bool,
    /// The fullest-to-emptiest view: the lowest queue fill (depth ÷ capacity) over all endpoints;
    /// 1.0 means every queue is full.
    pub min_fill: f64,
    /// The server is shutting down.
    pub closing: bool,
}

/// Readiness settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadinessPolicy {
    /// How long the server must stay recovered before it reports ready again.
    pub hold: Duration,
    /// A queue below this fill counts as recovered.
    pub low_water: f64,
}

impl ReadinessPolicy {
    /// The default [`ReadinessPolicy::hold`].
    pub const DEFAULT_HOLD: Duration = Duration::from_secs(2);
}

impl Default for ReadinessPolicy {
    fn default() -> Self {
        ReadinessPolicy {
            hold: ReadinessPolicy::DEFAULT_HOLD,
            low_water: 0.75,
        }
    }
}

/// Where readiness reads the time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The time now.
    fn now(&self) -> Instant;
}

/// The system's monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that stands still until [`ManualClock::advance`] moves it: for tests.
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    elapsed: Mutex<Duration>,
}

impl ManualClock {
    /// A clock standing at the time it was made.
    pub fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock {
            start: Instant::now(),
            elapsed: Mutex::new(Duration::ZERO),
        })
    }

    /// Move the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        *self.elapsed.lock().unwrap_or_else(|p| p.into_inner()) += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + *self.elapsed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug)]
struct State {
    ready: bool,
    recovered_since: Option<Instant>,
}

/// The readiness state machine, with its policy and clock.
#[derive(Debug)]
pub struct Readiness {
    policy: ReadinessPolicy,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

impl Default for Readiness {
    /// The default policy on the system clock.
    fn default() -> Self {
        Readiness::new(ReadinessPolicy::default())
    }
}

/// The probe's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Ready for traffic.
    pub ready: bool,
    /// Why, in a word: `ok`, `red`, `queues-full`, `recovering`, `shutting-down`,
    /// `handler-not-ready`.
    pub reason: &'static str,
}

impl Readiness {
    /// Ready at start, on the system clock.
    pub fn new(policy: ReadinessPolicy) -> Readiness {
        Readiness::with_clock(policy, Arc::new(SystemClock))
    }

    /// Ready at start, reading the time from `clock`.
    pub fn with_clock(policy: ReadinessPolicy, clock: Arc<dyn Clock>) -> Readiness {
        Readiness {
            policy,
            clock,
            state: Mutex::new(State {
                ready: true,
                recovered_since: None,
            }),
        }
    }

    /// Judge `load` now, by the clock.
    pub fn check_now(&self, load: Load) -> Verdict {
        self.check(load, self.clock.now())
    }

    /// Judge `load` at `now`.
    pub fn check(&self, load: Load, now: Instant) -> Verdict {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if load.closing {
            s.ready = false;
            s.recovered_since = None;
            return Verdict {
                ready: false,
                reason: "shutting-down",
            };
        }
        let saturated = load.red || load.min_fill >= 1.0;
        if saturated {
            s.ready = false;
            s.recovered_since = None;
            return Verdict {
                ready: false,
                reason: if load.red { "red" } else { "queues-full" },
            };
        }
        if s.ready {
            return Verdict {
                ready: true,
                reason: "ok",
            };
        }
        if load.min_fill >= self.policy.low_water {
            s.recovered_since = None;
            return Verdict {
                ready: false,
                reason: "recovering",
            };
        }
        let since = *s.recovered_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= self.policy.hold {
            s.ready = true;
            s.recovered_since = None;
            return Verdict {
                ready: true,
                reason: "ok",
            };
        }
        Verdict {
            ready: false,
            reason: "recovering",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(red: bool, min_fill: f64) -> Load {
        Load {
            red,
            min_fill,
            closing: false,
        }
    }

    #[test]
    fn saturation_turns_not_ready_at_once_and_recovery_needs_the_hold_time() {
        let r = Readiness::new(ReadinessPolicy {
            hold: Duration::from_secs(2),
            low_water: 0.75,
        });
        let t0 = Instant::now();
        assert!(r.check(load(false, 0.2), t0).ready);
        assert_eq!(
            r.check(load(false, 1.0), t0),
            Verdict {
                ready: false,
                reason: "queues-full"
            }
        );
        // Just below full is still above low water: not recovered.
        assert!(!r.check(load(false, 0.9), t0 + Duration::from_secs(5)).ready);
        // Below low water, but not yet for the hold time.
        assert!(!r.check(load(false, 0.5), t0 + Duration::from_secs(6)).ready);
        assert!(
            !r.check(load(false, 0.5), t0 + Duration::from_millis(7500))
                .ready
        );
        assert!(r.check(load(false, 0.5), t0 + Duration::from_secs(8)).ready);
    }

    #[test]
    fn a_relapse_during_recovery_restarts_the_hold() {
        let r = Readiness::new(ReadinessPolicy::default());
        let t0 = Instant::now();
        r.check(load(true, 0.0), t0);
        assert!(!r.check(load(false, 0.0), t0 + Duration::from_secs(1)).ready);
        assert_eq!(
            r.check(load(true, 0.0), t0 + Duration::from_millis(2500))
                .reason,
            "red"
        );
        assert!(!r.check(load(false, 0.0), t0 + Duration::from_secs(3)).ready);
        assert!(
            !r.check(load(false, 0.0), t0 + Duration::from_millis(4900))
                .ready
        );
        assert!(r.check(load(false, 0.0), t0 + Duration::from_secs(5)).ready);
    }

    #[test]
    fn the_manual_clock_moves_only_when_told() {
        let clock = ManualClock::new();
        let r = Readiness::with_clock(ReadinessPolicy::default(), clock.clone());
        assert!(!r.check_now(load(true, 0.0)).ready);
        assert!(!r.check_now(load(false, 0.0)).ready);
        clock.advance(ReadinessPolicy::default().hold - Duration::from_millis(1));
        assert!(!r.check_now(load(false, 0.0)).ready);
        clock.advance(Duration::from_millis(1));
        assert!(r.check_now(load(false, 0.0)).ready);
    }

    #[test]
    fn shutting_down_is_never_ready() {
        let r = Readiness::new(ReadinessPolicy::default());
        let v = r.check(
            Load {
                red: false,
                min_fill: 0.0,
                closing: true,
            },
            Instant::now(),
        );
        assert_eq!(
            v,
            Verdict {
                ready: false,
                reason: "shutting-down"
            }
        );
    }
}
