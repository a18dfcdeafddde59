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
//! client went away), expired (its queue deadline passed) or shed (shutdown). Whoever wins that
//! move gives the seat's queue depth back.
//!
//! The queue deadlines are kept by one task per line, its keeper ([`keep`]), not by a timer per
//! seat: the seats join in the order they were admitted, all with the endpoint's one
//! `queue_timeout_ms`, so their deadlines come in line order and the keeper only ever sleeps
//! until the front seat's. It also offers the line any free slot every [`LOOK`] while seats
//! wait (a bound on the wait after the executor's concurrency rose, a light back to green, when
//! no release comes to hand slots out), and sleeps without a timer while the line is empty.

use crate::executor::JobRunner;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};

/// How often the keeper offers a waiting line any free slot itself.
pub(crate) const LOOK: Duration = Duration::from_millis(200);

/// [`Seat`] state: in the line.
const WAITING: u8 = 0;
/// Given a running slot (now the seat's to use or give back).
const GRANTED: u8 = 1;
/// Left the line unserved: its client went away.
const LEFT: u8 = 2;
/// Shed at shutdown: to be answered `503`.
const SHED: u8 = 3;
/// Its queue deadline passed in the line: to be answered `504`.
const EXPIRED: u8 = 4;

/// One waiting request's place in the [`Line`].
#[derive(Debug)]
pub(crate) struct Seat {
    state: AtomicU8,
    /// Its queue deadline.
    deadline: Instant,
    /// The waiting task, woken once the state moved.
    waker: Mutex<Option<Waker>>,
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
    /// Its queue deadline passed (by the keeper).
    Expired,
}

impl Seat {
    fn new(deadline: Instant) -> Seat {
        Seat {
            state: AtomicU8::new(WAITING),
            deadline,
            waker: Mutex::new(None),
        }
    }

    /// Where the seat stands now.
    pub(crate) fn standing(&self) -> Standing {
        match self.state.load(Ordering::Acquire) {
            WAITING => Standing::Waiting,
            GRANTED => Standing::Granted,
            LEFT => Standing::Left,
            SHED => Standing::Shed,
            _ => Standing::Expired,
        }
    }

    /// Where the seat stands, with `waker` kept to be woken when it moves if it still waits
    /// (looked at again after keeping it: a move in between is not missed).
    pub(crate) fn standing_or_wake(&self, waker: &Waker) -> Standing {
        let standing = self.standing();
        if standing != Standing::Waiting {
            return standing;
        }
        {
            let mut kept = self.waker.lock().unwrap_or_else(|p| p.into_inner());
            match kept.as_mut() {
                Some(kept) if kept.will_wake(waker) => {}
                _ => *kept = Some(waker.clone()),
            }
        }
        self.standing()
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
            let waker = self.waker.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(waker) = waker {
                waker.wake();
            }
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
    /// The keeper was started (on the first seat).
    kept: AtomicBool,
    /// Wakes the keeper: a seat joined an empty line, or the line was shed.
    keeper: Arc<tokio::sync::Notify>,
}

impl Line {
    /// True if no seat waits. One atomic load, sequentially consistent with a join and with the
    /// release of a slot (see [`Line::join`]).
    pub(crate) fn is_empty(&self) -> bool {
        self.len.load(Ordering::SeqCst) == 0
    }

    /// A new seat at the back with queue deadline `deadline` (no earlier than any seat's ahead of
    /// it), or `None` once the line was shed (shutdown). The caller holds a unit of queue depth
    /// for it already, and afterwards offers the line any free slot: a slot released between its
    /// own look and the join is then not missed. The line's keeper must run (see
    /// [`Line::kept`]).
    pub(crate) fn join(&self, deadline: Instant) -> Option<Arc<Seat>> {
        let mut seats = self.lock();
        if seats.shed {
            return None;
        }
        let seat = Arc::new(Seat::new(deadline));
        let first = seats.waiting.is_empty();
        seats.waiting.push_back(seat.clone());
        self.len.fetch_add(1, Ordering::SeqCst);
        drop(seats);
        if first {
            // The keeper sleeps without a deadline while the line is empty.
            self.keeper.notify_one();
        }
        Some(seat)
    }

    /// True if the line of `runner` has its keeper ([`keep`]): started here with the first seat,
    /// on the runtime the asynchronous runs are awaited on. False outside a runtime (no seat may
    /// join then: nothing would keep its deadline). One atomic load once started.
    pub(crate) fn kept(&self, runner: &Arc<JobRunner>) -> bool {
        if self.kept.load(Ordering::Acquire) {
            return true;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        if !self.kept.swap(true, Ordering::AcqRel) {
            runtime.spawn(keep(Arc::downgrade(runner)));
        }
        true
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

    /// Expire the seats at the front whose deadline is `now` or earlier (each woken to answer
    /// `504`, its queue depth given back through `released`). Returns the deadline of the seat
    /// then at the front, if any, and whether the line was shed.
    fn expire(&self, now: Instant, mut released: impl FnMut()) -> (Option<Instant>, bool) {
        let mut seats = self.lock();
        while let Some(front) = seats.waiting.front() {
            if front.deadline > now {
                break;
            }
            if front.moves_to(EXPIRED) {
                released();
            }
            seats.waiting.pop_front();
            self.len.fetch_sub(1, Ordering::SeqCst);
        }
        (seats.waiting.front().map(|s| s.deadline), seats.shed)
    }

    /// Shutdown: no new seat; every waiting one is shed (woken to answer `503`), each one's queue
    /// depth given back through `released`; the keeper ends.
    pub(crate) fn shed(&self, mut released: impl FnMut()) {
        let mut seats = self.lock();
        seats.shed = true;
        for seat in seats.waiting.drain(..) {
            self.len.fetch_sub(1, Ordering::SeqCst);
            if seat.moves_to(SHED) {
                released();
            }
        }
        drop(seats);
        self.keeper.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, Seats> {
        self.seats.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The keeper of `runner`'s line: expires the seats whose queue deadline passed and offers the
/// line free slots every [`LOOK`] while seats wait; sleeps until a seat joins while none does.
/// Ends once the line is shed or the runner is gone.
pub(crate) async fn keep(runner: Weak<JobRunner>) {
    let Some(wake) = runner.upgrade().map(|r| r.line().keeper.clone()) else {
        return;
    };
    loop {
        let next = {
            let Some(runner) = runner.upgrade() else {
                return;
            };
            let now = Instant::now();
            let (front, shed) = runner.line().expire(now, || runner.release_seat());
            if shed {
                return;
            }
            runner.grant_waiting();
            front.map(|deadline| deadline.min(now + LOOK))
        };
        match next {
            Some(next) => {
                tokio::select! {
                    () = tokio::time::sleep_until(next.into()) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[test]
    fn slots_go_to_the_seats_in_the_order_they_came_and_skip_those_that_left() {
        let line = Line::default();
        let seats: Vec<_> = (0..4).map(|_| line.join(far()).unwrap()).collect();
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
        let seat = line.join(far()).unwrap();
        assert!(seat.leave());
        let mut untaken = 0;
        let served = line.grant(|| true, || untaken += 1, || {});
        assert_eq!((served, untaken), (0, 1));
        assert!(line.is_empty());
    }

    #[test]
    fn shedding_wakes_every_seat_and_closes_the_line() {
        let line = Line::default();
        let a = line.join(far()).unwrap();
        let b = line.join(far()).unwrap();
        let mut released = 0;
        line.shed(|| released += 1);
        assert_eq!(released, 2);
        assert_eq!(
            (a.standing(), b.standing()),
            (Standing::Shed, Standing::Shed)
        );
        assert!(line.join(far()).is_none());
        assert!(line.is_empty());
    }

    #[test]
    fn expiry_takes_the_front_seats_past_their_deadline_in_order() {
        let line = Line::default();
        let now = Instant::now();
        let a = line.join(now - Duration::from_millis(2)).unwrap();
        let b = line.join(now - Duration::from_millis(1)).unwrap();
        let c = line.join(now).unwrap();
        let d = line.join(now + Duration::from_secs(1)).unwrap();
        assert!(b.leave(), "b's client went before its deadline");
        let mut released = 0;
        let (front, shed) = line.expire(now, || released += 1);
        assert_eq!((front, shed, released), (Some(d.deadline), false, 2));
        use Standing::*;
        let standing: Vec<_> = [&a, &b, &c, &d].iter().map(|s| s.standing()).collect();
        assert_eq!(standing, [Expired, Left, Expired, Waiting]);
        assert!(!a.leave(), "an expired seat cannot leave again");
        // b's own removal finds it gone already, and the count stays right.
        line.remove(&b);
        assert!(!line.is_empty());
        let served = line.grant(|| true, || {}, || {});
        assert_eq!((served, d.standing()), (1, Granted));
        assert!(line.is_empty());
        assert_eq!(line.expire(now, || released += 1), (None, false));
    }

    #[test]
    fn a_move_wakes_the_waker_kept_while_waiting() {
        struct Flag(AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let line = Line::default();
        let seat = line.join(far()).unwrap();
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        assert_eq!(seat.standing_or_wake(&waker), Standing::Waiting);
        assert!(!flag.0.load(Ordering::SeqCst));
        line.grant(|| true, || {}, || {});
        assert!(flag.0.load(Ordering::SeqCst), "granting woke the waiter");
        assert_eq!(seat.standing_or_wake(&waker), Standing::Granted);
    }
}
