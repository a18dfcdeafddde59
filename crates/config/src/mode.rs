//! Execution modes: the mode's kind ([`Mode`]) and the mode with its own settings ([`ModeConfig`]).
//!
//! The mode names (`crab`, `jellyfish`, `adaptive`) are written here and nowhere else: config
//! parsing, `/status`, `/metrics`, logs and error messages all take them from [`Mode::as_str`].

use std::fmt;
use std::num::NonZeroUsize;
use std::time::Duration;

/// How an endpoint's handed-off batches run: the kind of mode, without its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Serial: one job at a time on a dedicated OS thread, FIFO, with a pace wait.
    Crab,
    /// Concurrent: a small bounded pool of worker threads.
    Jellyfish,
    /// The traffic light picks, per handed-off batch: green → jellyfish at `workers`, yellow →
    /// jellyfish at `yellow_workers`, red → crab.
    Adaptive,
}

impl Mode {
    /// Every mode, in the order the docs list them.
    pub const ALL: [Mode; 3] = [Mode::Crab, Mode::Jellyfish, Mode::Adaptive];

    /// The name used in config, status, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Crab => "crab",
            Mode::Jellyfish => "jellyfish",
            Mode::Adaptive => "adaptive",
        }
    }

    /// The mode called `name`, if any.
    pub fn from_name(name: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// The `[[endpoint]]` keys this mode reads beside the ones every endpoint has. A key of another
    /// mode is an error, never silently ignored.
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            Mode::Crab => &["pace_ms"],
            Mode::Jellyfish => &["workers"],
            Mode::Adaptive => &["workers", "yellow_workers", "pace_ms"],
        }
    }

    /// The modes that read `key`, as words: `crab and adaptive`.
    pub(crate) fn users_of(key: &str) -> String {
        let users: Vec<&str> = Mode::ALL
            .into_iter()
            .filter(|m| m.keys().contains(&key))
            .map(Mode::as_str)
            .collect();
        match users.split_last() {
            Some((last, [])) => (*last).to_string(),
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
            None => "no mode".to_string(),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Mode, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = Mode;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mode name")
            }

            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Mode, E> {
                Mode::from_name(name).ok_or_else(|| {
                    let known: Vec<String> = Mode::ALL.iter().map(|m| format!("`{m}`")).collect();
                    E::custom(format_args!(
                        "unknown variant `{name}`, expected one of {}",
                        known.join(", ")
                    ))
                })
            }
        }
        deserializer.deserialize_str(Name)
    }
}

/// An endpoint's mode with the settings only that mode has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeConfig {
    /// One job at a time on the dispatcher thread.
    Crab {
        /// Pause between the end of one job and the start of the next (`pace_ms`, default 0).
        pace: Duration,
    },
    /// A bounded pool of worker threads.
    Jellyfish {
        /// Pool size (`workers`); `None`: the CPUs the process may use.
        workers: Option<NonZeroUsize>,
    },
    /// The traffic light picks per batch.
    Adaptive {
        /// Pool size on green (`workers`); `None`: the CPUs the process may use.
        workers: Option<NonZeroUsize>,
        /// Pool size on yellow (`yellow_workers`); `None`: half of `workers`, at least 1.
        yellow_workers: Option<NonZeroUsize>,
        /// Pause between two jobs on red (`pace_ms`, default 0).
        pace: Duration,
    },
}

impl ModeConfig {
    /// The kind of mode.
    pub fn kind(&self) -> Mode {
        match self {
            ModeConfig::Crab { .. } => Mode::Crab,
            ModeConfig::Jellyfish { .. } => Mode::Jellyfish,
            ModeConfig::Adaptive { .. } => Mode::Adaptive,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_reads_back_from_its_name() {
        for mode in Mode::ALL {
            assert_eq!(Mode::from_name(mode.as_str()), Some(mode));
            let parsed: Mode =
                serde::Deserialize::deserialize(serde::de::value::StrDeserializer::<
                    serde::de::value::Error,
                >::new(mode.as_str()))
                .unwrap();
            assert_eq!(parsed, mode);
        }
        assert_eq!(Mode::from_name("octopus"), None);
    }

    #[test]
    fn a_key_names_the_modes_that_use_it() {
        assert_eq!(Mode::users_of("pace_ms"), "crab and adaptive");
        assert_eq!(Mode::users_of("workers"), "jellyfish and adaptive");
        assert_eq!(Mode::users_of("yellow_workers"), "adaptive");
    }
}
