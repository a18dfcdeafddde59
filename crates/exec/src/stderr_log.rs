//! The rate limit on logging a successful program's stderr: a few lines a second per endpoint.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines logged per window at most.
pub(crate) const LINES_PER_WINDOW: u32 = 10;
/// The window.
pub(crate) const WINDOW: Duration = Duration::from_secs(1);

/// At most [`LINES_PER_WINDOW`] lines per [`WINDOW`]; the rest are counted, and the count is
/// reported with the next line logged.
#[derive(Debug)]
pub(crate) struct StderrLimit {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl StderrLimit {
    pub(crate) fn new() -> StderrLimit {
        StderrLimit {
            state: Mutex::new(State {
                window_start: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// At `now`: `Some(n)` if a line may be logged, `n` lines having been suppressed since the
    /// last one logged; `None` if this one is suppressed.
    pub(crate) fn admit(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = s
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= WINDOW);
        if fresh {
            s.window_start = Some(now);
            s.logged = 0;
        }
        if s.logged >= LINES_PER_WINDOW {
            s.suppressed += 1;
            return None;
        }
        s.logged += 1;
        Some(std::mem::take(&mut s.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_lines_a_second_then_the_suppressed_count_with_the_next() {
        let limit = StderrLimit::new();
        let t0 = Instant::now();
        for _ in 0..LINES_PER_WINDOW {
            assert_eq!(limit.admit(t0), Some(0));
        }
        for _ in 0..5 {
            assert_eq!(limit.admit(t0 + Duration::from_millis(999)), None);
        }
        assert_eq!(limit.admit(t0 + WINDOW), Some(5));
        assert_eq!(limit.admit(t0 + WINDOW), Some(0));
    }
}
