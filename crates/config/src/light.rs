//! The traffic light's colours and the thresholds that move it: plain data, read from `[light]`.
//!
//! The state machine that applies them lives in the `light` crate.

use std::time::Duration;

/// How loaded the machine is, as the executors see it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Light {
    /// Room to spare: full concurrency.
    Green,
    /// Getting busy: reduced concurrency.
    Yellow,
    /// Saturated: one job at a time.
    Red,
}

impl Light {
    /// The name used in config and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Light::Green => "green",
            Light::Yellow => "yellow",
            Light::Red => "red",
        }
    }

    /// One level better (red → yellow → green), green staying green.
    pub fn lower(self) -> Light {
        match self {
            Light::Red => Light::Yellow,
            Light::Yellow | Light::Green => Light::Green,
        }
    }

    /// The light stored as `v` (0 green, 1 yellow, anything else red).
    pub fn from_u8(v: u8) -> Light {
        match v {
            0 => Light::Green,
            1 => Light::Yellow,
            _ => Light::Red,
        }
    }
}

impl std::fmt::Display for Light {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The enter and exit thresholds of one level of one signal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Levels {
    /// Crossing this enters the level.
    pub enter: f64,
    /// The level is left once the signal is back past this (on the good side of `enter`).
    pub exit: f64,
}

impl Levels {
    /// Enter at `enter`, leave past `exit`.
    pub const fn new(enter: f64, exit: f64) -> Levels {
        Levels { enter, exit }
    }
}

/// The yellow and red levels of one signal; `None` turns a level off for that signal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Yellow's thresholds.
    pub yellow: Option<Levels>,
    /// Red's thresholds.
    pub red: Option<Levels>,
}

/// Which way a signal gets worse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Worse {
    /// Higher is worse: in the level while `value >= threshold`.
    Higher,
    /// Lower is worse: in the level while `value < threshold`.
    Lower,
}

impl Worse {
    /// True if `value` is past `threshold` on the bad side.
    pub fn past(self, value: f64, threshold: f64) -> bool {
        match self {
            Worse::Higher => value >= threshold,
            Worse::Lower => value < threshold,
        }
    }
}

impl Thresholds {
    /// The level of a signal at `value` that was at `previous`: a level is entered past its
    /// `enter` threshold and kept while past its `exit` threshold.
    pub fn level(&self, previous: Light, value: f64, worse: Worse) -> Light {
        let held = |levels: Option<Levels>, at: Light| {
            levels.is_some_and(|l| {
                worse.past(value, l.enter) || (previous >= at && worse.past(value, l.exit))
            })
        };
        if held(self.red, Light::Red) {
            Light::Red
        } else if held(self.yellow, Light::Yellow) {
            Light::Yellow
        } else {
            Light::Green
        }
    }

    fn check(&self, name: &str, worse: Worse) -> Result<(), String> {
        for (level, levels) in [("yellow", self.yellow), ("red", self.red)] {
            let Some(l) = levels else { continue };
            if !l.enter.is_finite() || !l.exit.is_finite() {
                return Err(format!("{name}.{level}: thresholds must be numbers"));
            }
            // The exit threshold must lie on the good side of (or at) the enter threshold.
            if worse.past(l.exit, l.enter) && l.exit != l.enter {
                return Err(format!(
                    "{name}.{level}: exit {} is past enter {}; hysteresis needs it on the other side",
                    l.exit, l.enter
                ));
            }
        }
        Ok(())
    }
}

/// The traffic light's thresholds and pacing. The defaults suit a server that should start
/// shedding concurrency well before the machine saturates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LightPolicy {
    /// CPU utilisation (0.0–1.0), higher is worse. Default: yellow at ≥ 0.70 until < 0.60, red
    /// at ≥ 0.90 until < 0.80.
    pub cpu: Thresholds,
    /// Memory headroom (0.0–1.0), lower is worse. Default: yellow at < 0.20 until ≥ 0.25, red at
    /// < 0.10 until ≥ 0.15.
    pub mem_headroom: Thresholds,
    /// CPU pressure, the PSI `some` stall share (percent), higher is worse; ignored when the
    /// sample has none.
    /// Default: no yellow; red at ≥ 40 until < 30.
    pub cpu_pressure: Thresholds,
    /// Memory pressure, the PSI `some` stall share (percent), higher is worse; ignored when the
    /// sample has none. Default: yellow at ≥ 10 until < 5, red at ≥ 25 until < 15.
    pub mem_pressure: Thresholds,
    /// Least time in a state before the light goes down a level. Default 2 s. Going up is never
    /// delayed.
    pub min_dwell: Duration,
}

impl Default for LightPolicy {
    fn default() -> Self {
        LightPolicy {
            cpu: Thresholds {
                yellow: Some(Levels::new(0.70, 0.60)),
                red: Some(Levels::new(0.90, 0.80)),
            },
            mem_headroom: Thresholds {
                yellow: Some(Levels::new(0.20, 0.25)),
                red: Some(Levels::new(0.10, 0.15)),
            },
            cpu_pressure: Thresholds {
                yellow: None,
                red: Some(Levels::new(40.0, 30.0)),
            },
            mem_pressure: Thresholds {
                yellow: Some(Levels::new(10.0, 5.0)),
                red: Some(Levels::new(25.0, 15.0)),
            },
            min_dwell: Duration::from_secs(2),
        }
    }
}

impl LightPolicy {
    /// Check that every threshold is a number and every exit lies on the good side of its enter
    /// (equal is allowed: no hysteresis). The message names the signal and level.
    pub fn validate(&self) -> Result<(), String> {
        self.cpu.check("cpu", Worse::Higher)?;
        self.mem_headroom.check("mem_headroom", Worse::Lower)?;
        self.cpu_pressure.check("cpu_pressure", Worse::Higher)?;
        self.mem_pressure.check("mem_pressure", Worse::Higher)
    }
}
