//! The line: queued requests of an asynchronous handler, each waiting on its own connection task
//! for a running slot, handed one by the slot's release.
//!
//! A request whose handler runs asynchronously ([`crate::handler::Handler::call_async`]) and that
//! finds every running slot taken (or others queued ahead of it) takes a [`Seat`] at the back of
//! the line instead of going through the handoff queue, the dispatcher and an executor thread. The
//! seat holds one unit of the handoff queue's depth, so the queue's capacity, its overflow and the
//! expected-wait admission count it like any queued job. When a slot is given back
//! ([`crate::executor::JobRunner`]'s release), the runner takes it again on behalf of the seat at
//! the front (under the executor's concurrency limit of the moment) and wakes that seat's task,
//! which runs its handler's future in that slot: no thread hand-off.
//!
//! A seat moves out of `Waiting` exactly once, by a compare-and-swap: granted a slot, left (its
//! queue deadline passed or its client went away) or shed (shutdown). Whoever wins that move gives
//! the seat's queue depth back.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// [`Seat`] state: in the line.
const WAITING: u8 = 0;
/// Given a running slot (now the seat's to use or give back).
const GRANTED: u8 = 1;
/// Left the line unserved: its queue deadline passed, or its client went away.
const LEFT: u8 = 2;
/// Shed at shutdown: to be answered `503`.
const SHED: u8 = 3;

/// One waiting request's place in the [`Line`].
#[derive(Debug, Default)]
pub(crate) struct Seat {
    state: AtomicU8,
    /// Wakes the waiting task once the state moved (a permit is kept if it is not waiting yet).
    wake: tokio::sync::Notify,
}

/// Where a [`Seat`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Still waiting.
    Waiting,
    /// Holds a running slot.
    Granted,
    /// Left the line (by its own waiter).
    Left,
    /// Shed at shutdown.
    Shed,
}

impl Seat {
    /// Where the seat stands now.
    pub(crate) fn standing(&self) -> Standing {
        match self.state.load(Ordering::Acquire) {
            WAITING => Standing::Waiting,
            GRANTED => Standing::Granted,
            LEFT => Standing::Left,
            _ => Standing::Shed,
        }
    }

    /// Resolves when the seat's state may have moved (or spuriously: look again).
    pub(crate) async fn moved(&self) {
        self.wake.notified().await;
    }

    /// The waiter leaves the line unserved. True if it did (it was still waiting): the caller
    /// gives its queue depth back and takes it out of the line.
    pub(crate) fn leave(&self) -> bool {
        self.moves_to(LEFT)
    }

    fn moves_to(&self, to: u8) -> bool {
        let moved = self
            .state
            .compare_exchange(WAITING, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if moved && to != LEFT {
            self.wake.notify_one();
        }
        moved
    }
}

#[derive(Debug, Default)]
struct Seats {
    waiting: VecDeque<Arc<Seat>>,
    /// Shutdown: no seat is taken any more.
    shed: bool,
}

/// The seats waiting for a running slot, first come first served. Bounded by the handoff
/// queue's capacity: every seat in it holds a unit of the queue's depth.
#[derive(Debug, Default)]
pub(crate) struct Line {
    seats: Mutex<Seats>,
    /// Seats in `seats`: read without the lock by every slot release.
    len: AtomicUsize,
}

impl Line {
    /// True if no seat waits. One atomic load, sequentially consistent with a join and with the
    /// release of a slot (see [`Line::join`]).
    pub(crate) fn is_empty(&self) -> bool {
        self.len.load(Ordering::SeqCst) == 0
    }

    /// A new seat at the back, or `None` once the line was shed (shutdown). The caller holds a
    /// unit of queue depth for it already, and afterwards offers the line any free slot: a slot
    /// released between its own look and the join is then not missed.
    pub(crate) fn join(&self) -> Option<Arc<Seat>> {
        let mut seats = self.lock();
        if seats.shed {
            return None;
        }
        let seat = Arc::new(Seat::default());
        seats.waiting.push_back(seat.clone());
        self.len.fetch_add(1, Ordering::SeqCst);
        Some(seat)
    }

    /// Take `seat` out of the line (it left: [`Seat::leave`]). O(seats), under the lock; only a
    /// seat that leaves unserved does it.
    pub(crate) fn remove(&self, seat: &Arc<Seat>) {
        let mut seats = self.lock();
        if let Some(at) = seats.waiting.iter().position(|s| Arc::ptr_eq(s, seat)) {
            seats.waiting.remove(at);
            self.len.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Hand running slots to the seats at the front, in order, for as long as `take_slot` takes
    /// one; a slot taken for a seat that left meanwhile goes back through `untake`. Each granted
    /// seat's queue depth goes back through `granted`. Returns how many seats were granted.
    pub(crate) fn grant(
        &self,
        mut take_slot: impl FnMut() -> bool,
        mut untake: impl FnMut(),
        mut granted: impl FnMut(),
    ) -> usize {
        let mut seats = self.lock();
        let mut served = 0;
        while !seats.waiting.is_empty() {
            if !take_slot() {
                break;
            }
            let Some(seat) = seats.waiting.pop_front() else {
                untake();
                break;
            };
            self.len.fetch_sub(1, Ordering::SeqCst);
            if seat.moves_to(GRANTED) {
                granted();
                served += 1;
            } else {
                untake();
            }
        }
        served
    }

    /// Shutdown: no new seat; every waiting one is shed (woken to answer `503`), each one's queue
    /// depth given back through `released`.
    pub(crate) fn shed(&self, mut released: impl FnMut()) {
        let mut seats = self.lock();
        seats.shed = true;
        for seat in seats.waiting.drain(..) {
            self.len.fetch_sub(1, Ordering::SeqCst);
            if seat.moves_to(SHED) {
                released();
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Seats> {
        self.seats.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn slots_go_to_the_seats_in_the_order_they_came_and_skip_those_that_left() {
        let line = Line::default();
        let seats: Vec<_> = (0..4).map(|_| line.join().unwrap()).collect();
        assert!(seats[1].leave());
        line.remove(&seats[1]);
        let mut free = 2;
        let (mut untaken, mut released) = (0, 0);
        let served = line.grant(
            || {
                let took = free > 0;
                free -= usize::from(took);
                took
            },
            || untaken += 1,
            || released += 1,
        );
        assert_eq!((served, untaken, released), (2, 0, 2));
        let standing: Vec<_> = seats.iter().map(|s| s.standing()).collect();
        use Standing::*;
        assert_eq!(standing, [Granted, Left, Granted, Waiting]);
        assert!(!line.is_empty());
        assert!(!seats[0].leave(), "a granted seat cannot leave unserved");
    }

    #[test]
    fn a_seat_that_left_without_being_removed_gives_its_slot_back() {
        let line = Line::default();
        let seat = line.join().unwrap();
        assert!(seat.leave());
        let mut untaken = 0;
        let served = line.grant(|| true, || untaken += 1, || {});
        assert_eq!((served, untaken), (0, 1));
        assert!(line.is_empty());
    }

    #[test]
    fn shedding_wakes_every_seat_and_closes_the_line() {
        let line = Line::default();
        let a = line.join().unwrap();
        let b = line.join().unwrap();
        let mut released = 0;
        line.shed(|| released += 1);
        assert_eq!(released, 2);
        assert_eq!(
            (a.standing(), b.standing()),
            (Standing::Shed, Standing::Shed)
        );
        assert!(line.join().is_none());
        assert!(line.is_empty());
    }
}
