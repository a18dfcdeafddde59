//! The hold: an HTTP/1 connection whose request overflowed an `ignore` endpoint is kept open,
//! unanswered and unread, until `server.overflow_hold_ms` passes (then closed without a byte),
//! its client closes, or a new connection needs its slot; here are its counters.
//!
//! Closing at once makes a keep-alive client reconnect at once (and, over TLS, handshake again):
//! a flood of attempts that each cost the server more than a `503` would. Held, the client waits
//! for the deadline, and a held connection costs its file descriptor and a small task while
//! nothing happens: no timer per sweep, no read, no buffer (hyper's connection is gone).

use std::sync::atomic::{AtomicU64, Ordering};

/// The hold's counters.
#[derive(Debug, Default)]
pub struct Hold {
    held: AtomicU64,
    ended: AtomicU64,
    client_closed: AtomicU64,
    evicted: AtomicU64,
}

/// The hold's counters at one moment.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct HoldSnapshot {
    /// Connections held so far (one per ignored HTTP/1 overflow while the hold is on).
    pub held_total: u64,
    /// Connections held now.
    pub held: u64,
    /// Holds that ended early because their client closed the connection.
    pub client_closed: u64,
    /// Holds that ended early because a new connection needed the slot (`max_connections`).
    pub evicted: u64,
}

/// Why a hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HoldEnd {
    /// The deadline passed: closed without a byte.
    Expired,
    /// The client closed (or reset) its side first.
    ClientClosed,
    /// Closed to make room for a new connection at the connection limit.
    Evicted,
    /// The server is shutting down.
    Drained,
}

impl Hold {
    /// A connection starts its hold.
    pub(super) fn start(&self) {
        self.held.fetch_add(1, Ordering::Relaxed);
    }

    /// A hold ended, for `why`.
    pub(super) fn end(&self, why: HoldEnd) {
        self.ended.fetch_add(1, Ordering::Relaxed);
        match why {
            HoldEnd::ClientClosed => self.client_closed.fetch_add(1, Ordering::Relaxed),
            HoldEnd::Evicted => self.evicted.fetch_add(1, Ordering::Relaxed),
            HoldEnd::Expired | HoldEnd::Drained => 0,
        };
    }

    /// The counters now.
    pub fn snapshot(&self) -> HoldSnapshot {
        // Two loads, not one snapshot: saturating, so a hold that ends between them cannot make
        // `held` negative.
        let ended = self.ended.load(Ordering::Relaxed);
        let held_total = self.held.load(Ordering::Relaxed);
        HoldSnapshot {
            held_total,
            held: held_total.saturating_sub(ended),
            client_closed: self.client_closed.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_now_is_started_minus_ended_and_early_ends_are_counted_by_cause() {
        let hold = Hold::default();
        for _ in 0..4 {
            hold.start();
        }
        hold.end(HoldEnd::Expired);
        hold.end(HoldEnd::ClientClosed);
        hold.end(HoldEnd::Evicted);
        let s = hold.snapshot();
        assert_eq!((s.held_total, s.held), (4, 1));
        assert_eq!((s.client_closed, s.evicted), (1, 1));
        hold.end(HoldEnd::Drained);
        assert_eq!(hold.snapshot().held, 0);
    }
}
