//! The exchanges' deadlines (`timeout_ms`), kept by one task per handler instead of a timer per
//! exchange.
//!
//! Every exchange of an endpoint has the same `timeout_ms`, so their deadlines come in the order
//! the exchanges started, and at most the endpoint's running slots are in flight. An exchange
//! takes a place in the handler's table when it starts and leaves it when it ends (three short
//! locks: start, its first wait, end); the keeper ([`keep`]), a task on the handler's I/O
//! runtime, sleeps until the earliest deadline in the table, marks what is due as expired and
//! wakes it. A tokio timer per exchange cost about 450 user-space instructions of a proxied
//! `/ping` (its registration in the runtime's timer wheel and its removal, under the wheel's
//! lock), and 112 bytes of the exchange's future (docs/BENCHMARKS.md 16.3).
//!
//! With nothing in flight, the keeper sleeps one `timeout_ms`: an exchange that starts meanwhile
//! has its deadline after that wake-up, so no start ever needs to wake the keeper (which would
//! be a wake of another thread per request at low load). When the handler is closed, its I/O
//! thread keeps the keeper running until the last exchange in flight (on the front end's
//! runtime, which outlives the close) has ended.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How often a closed handler's I/O thread looks whether its last exchange has ended.
const DRAIN_LOOK: Duration = Duration::from_millis(50);

/// The deadlines of the exchanges in flight.
#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    places: Vec<Place>,
    /// Indices of `places` not in use.
    free: Vec<usize>,
}

#[derive(Debug)]
struct Place {
    deadline: Instant,
    /// The exchange's task, once it waited.
    waker: Option<Waker>,
    expired: bool,
    used: bool,
}

/// An exchange's place in the [`Deadlines`], left when dropped.
#[derive(Debug)]
pub(crate) struct Entry<'a> {
    deadlines: &'a Deadlines,
    at: usize,
}

impl Deadlines {
    /// A place for an exchange due at `deadline`.
    pub(crate) fn enter(&self, deadline: Instant) -> Entry<'_> {
        let mut table = self.lock();
        let place = Place {
            deadline,
            waker: None,
            expired: false,
            used: true,
        };
        let at = match table.free.pop() {
            Some(at) => {
                table.places[at] = place;
                at
            }
            None => {
                table.places.push(place);
                table.places.len() - 1
            }
        };
        Entry {
            deadlines: self,
            at,
        }
    }

    /// Expire every place due at `now` (waking its exchange); the earliest deadline still ahead.
    pub(crate) fn expire(&self, now: Instant) -> Option<Instant> {
        let mut table = self.lock();
        let mut next: Option<Instant> = None;
        for place in table.places.iter_mut().filter(|p| p.used && !p.expired) {
            if place.deadline <= now {
                place.expired = true;
                if let Some(waker) = place.waker.take() {
                    waker.wake();
                }
            } else {
                next = Some(next.map_or(place.deadline, |n| n.min(place.deadline)));
            }
        }
        next
    }

    /// Places in use: exchanges in flight.
    fn in_use(&self) -> usize {
        let table = self.lock();
        table.places.len() - table.free.len()
    }

    /// Resolves once no exchange is in flight (looked at every [`DRAIN_LOOK`]); each leaves by
    /// its deadline at the latest, while the keeper runs.
    pub(crate) async fn drained(&self) {
        while self.in_use() > 0 {
            tokio::time::sleep(DRAIN_LOOK).await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Entry<'_> {
    /// Ready once the deadline passed; until then, `cx`'s task is woken when it does.
    pub(crate) fn poll_expired(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut table = self.deadlines.lock();
        let Some(place) = table.places.get_mut(self.at) else {
            return Poll::Ready(());
        };
        if place.expired {
            return Poll::Ready(());
        }
        match &place.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => place.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        let mut table = self.deadlines.lock();
        if let Some(place) = table.places.get_mut(self.at) {
            place.used = false;
            place.waker = None;
            table.free.push(self.at);
        }
    }
}

/// The keeper of `deadlines`, whose exchanges all last at most `timeout`: expires what is due,
/// then sleeps until the next deadline, or one `timeout` while none is ahead. Runs until its
/// runtime stops.
pub(crate) async fn keep(deadlines: Arc<Deadlines>, timeout: Duration) {
    loop {
        let now = Instant::now();
        let idle = now + timeout;
        let next = deadlines.expire(now).map_or(idle, |next| next.min(idle));
        tokio::time::sleep_until(next.into()).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_place_expires_at_its_deadline_wakes_its_waiter_and_is_reused_once_left() {
        let deadlines = Deadlines::default();
        let now = Instant::now();
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let soon = deadlines.enter(now + Duration::from_secs(1));
        let later = deadlines.enter(now + Duration::from_secs(2));
        assert!(soon.poll_expired(&mut cx).is_pending());
        assert!(later.poll_expired(&mut cx).is_pending());
        assert_eq!(deadlines.expire(now), Some(now + Duration::from_secs(1)));
        assert_eq!(
            deadlines.expire(now + Duration::from_secs(1)),
            Some(now + Duration::from_secs(2))
        );
        assert_eq!(woken.0.load(Ordering::SeqCst), 1, "the due one woke");
        assert!(soon.poll_expired(&mut cx).is_ready());
        assert!(later.poll_expired(&mut cx).is_pending());
        drop(soon);
        assert_eq!(deadlines.in_use(), 1);
        // The freed place is taken again, fresh.
        let again = deadlines.enter(now + Duration::from_secs(3));
        assert!(again.poll_expired(&mut cx).is_pending());
        assert_eq!(deadlines.in_use(), 2);
        drop(later);
        drop(again);
        assert_eq!(deadlines.in_use(), 0);
        assert_eq!(deadlines.expire(now + Duration::from_secs(9)), None);
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
    }
}
