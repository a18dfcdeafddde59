//! The door: while every endpoint's queue is full and ignores overflow, the public listener
//! holds the connection it accepted, unread, for a time-lag that grows while the flood lasts, and
//! accepts nothing more; the kernel's backlog (and its SYN drops once that is full) absorbs the
//! rest with no work in the server. When a queue has room again, the held connection is served.

use super::app::App;
use config::Overflow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// The first time-lag once the door closes; it doubles while the queues stay full.
pub const FIRST_LAG: Duration = Duration::from_millis(1);

/// The longest time-lag: how long, at most, a queue can have room before the door notices.
pub const MAX_LAG: Duration = Duration::from_millis(100);

/// The door's counters (it keeps no other state: whether it is shut is read from the queues).
#[derive(Debug, Default)]
pub struct Door {
    closed: AtomicU64,
    closed_micros: AtomicU64,
}

/// The door's counters at one moment.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct DoorSnapshot {
    /// Times the door closed.
    pub closed: u64,
    /// Total time it stayed closed, in microseconds.
    pub closed_micros: u64,
}

impl Door {
    /// Return at once if some endpoint has room (or answers overflow `503`); else wait, checking
    /// again after each time-lag (doubling from [`FIRST_LAG`] to [`MAX_LAG`]), until one has.
    pub(super) async fn pass(&self, app: &App) {
        if !shut(app) {
            return;
        }
        let closed_at = Instant::now();
        self.closed.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("door closed: every queue is full");
        let mut lag = FIRST_LAG;
        loop {
            tokio::time::sleep(lag).await;
            if !shut(app) {
                break;
            }
            lag = (lag * 2).min(MAX_LAG);
        }
        let micros = u64::try_from(closed_at.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.closed_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> DoorSnapshot {
        DoorSnapshot {
            closed: self.closed.load(Ordering::Relaxed),
            closed_micros: self.closed_micros.load(Ordering::Relaxed),
        }
    }
}

/// True if there is at least one endpoint and every one ignores overflow and has a full queue
/// (closing endpoints, at shutdown, count as open: their `503` must get through).
fn shut(app: &App) -> bool {
    app.with_table(|table| {
        let mut any = false;
        for route in table.routes() {
            let ep = &route.endpoint;
            let admission = ep.admission();
            if ep.config.overflow != Overflow::Ignore
                || admission.is_closed()
                || admission.queue_depth() < admission.queue_capacity()
            {
                return false;
            }
            any = true;
        }
        any
    })
}
