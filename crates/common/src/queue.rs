//! The bounded handoff queue between the front end and an endpoint's executor.
//!
//! The front end admits a job in O(1): one atomic compare-and-swap on the depth, then a push under a
//! short lock. The executor never shares the filling queue with the front end: when idle it swaps
//! the whole pending batch out for an empty buffer (recycled, so steady state allocates nothing) and
//! runs that batch on its own while the front end fills the fresh one.
//!
//! `depth` counts jobs admitted and not yet started (nor expired), wherever they sit (filling
//! queue or handed-off batch), so the capacity bounds the wait of every admitted job: at most
//! `capacity` jobs are ahead of it, whatever the executor's batch size. A job releases its slot
//! when it leaves the queue (see [`crate::job`]). A job is admitted, and counted so, the moment it
//! enters: a refused one was never admitted and needs nothing undone.
//!
//! The queue is open, then closed (a retired endpoint: nothing new, pending jobs still run), or
//! closed and shedding (shutdown: pending jobs are answered `503`): one atomic state.

use crate::batching::Work;
use crate::job::Job;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Why a job was not admitted.
#[derive(Debug)]
pub enum Refused {
    /// The queue is at capacity: overflow.
    Full(Job),
    /// The queue is closed (shutting down).
    Closed(Job),
}

/// Why [`HandoffQueue::reserve_seat`] held no depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SeatRefused {
    /// The queue is at capacity: overflow.
    Full,
    /// The queue is closed.
    Closed,
}

/// [`HandoffQueue::state`]: admitting.
const OPEN: u8 = 0;
/// Refusing new jobs; pending ones still run.
const CLOSED: u8 = 1;
/// Refusing new jobs; pending ones are answered `503` instead of run.
const SHEDDING: u8 = 2;

#[derive(Debug, Default)]
struct Filling {
    jobs: VecDeque<Job>,
    /// The executor is asleep in `take_batch`: only then does a push need to wake it (a futex
    /// call), so a busy executor costs the front end no system call per admission.
    waiting: bool,
}

/// A bounded queue whose consumer takes the whole pending batch at once.
#[derive(Debug)]
pub struct HandoffQueue {
    capacity: usize,
    depth: Arc<AtomicUsize>,
    /// `OPEN`, `CLOSED` or `SHEDDING`; it only moves forward. Read under the `filling` lock where
    /// it must be exact (a push, the dispatcher's end), with a plain load elsewhere.
    state: AtomicU8,
    filling: Mutex<Filling>,
    ready: Condvar,
}

impl HandoffQueue {
    /// A queue holding at most `capacity` admitted-but-not-started jobs.
    pub fn new(capacity: usize) -> HandoffQueue {
        HandoffQueue {
            capacity,
            depth: Arc::new(AtomicUsize::new(0)),
            state: AtomicU8::new(OPEN),
            filling: Mutex::new(Filling {
                jobs: VecDeque::with_capacity(capacity.min(4096)),
                waiting: false,
            }),
            ready: Condvar::new(),
        }
    }

    /// Capacity, as configured.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Jobs admitted and not yet started.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// True when a new job would currently be admitted: one atomic load, no lock, no allocation.
    /// The front end asks this before reading a body, so overflow costs nearly nothing.
    #[inline]
    pub fn has_room(&self) -> bool {
        self.depth.load(Ordering::Relaxed) < self.capacity
            && self.state.load(Ordering::Relaxed) == OPEN
    }

    /// True once [`HandoffQueue::close`] (or [`HandoffQueue::close_and_shed`]) was called.
    pub fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) != OPEN
    }

    /// Admit `job` (it holds a unit of depth, and counts as admitted) or give it back. O(1): never
    /// waits for the executor.
    pub fn try_push(&self, job: Job) -> Result<(), Refused> {
        if self.is_closed() {
            return Err(Refused::Closed(job));
        }
        if !self.reserve() {
            return Err(Refused::Full(job));
        }
        let mut filling = self.lock();
        // Under the lock: `close` stores its state before taking the lock, so once it has, no job
        // gets in behind the dispatcher's last look.
        if self.is_closed() {
            drop(filling);
            self.depth.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Closed(job));
        }
        job.admit(self.depth.clone());
        filling.jobs.push_back(job);
        let wake = filling.waiting;
        drop(filling);
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Hold one unit of depth for a request that waits outside the queue (a seat in the
    /// [`crate::line::Line`] of an asynchronous handler), as a pushed job would. Refused when the
    /// queue is closed or full; O(1).
    pub(crate) fn reserve_seat(&self) -> Result<(), SeatRefused> {
        if self.is_closed() {
            return Err(SeatRefused::Closed);
        }
        if !self.reserve() {
            return Err(SeatRefused::Full);
        }
        Ok(())
    }

    /// Give back a unit of depth held by [`HandoffQueue::reserve_seat`].
    pub(crate) fn release_seat(&self) {
        self.depth.fetch_sub(1, Ordering::AcqRel);
    }

    fn reserve(&self) -> bool {
        self.depth
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |d| {
                (d < self.capacity).then_some(d + 1)
            })
            .is_ok()
    }

    /// Block until jobs are pending, then take all of them, leaving `spare` (emptied) as the new
    /// filling buffer. Returns `None` once the queue is closed and nothing is pending. Wakes at
    /// least every `tick` so a caller can notice other signals.
    pub fn take_batch(&self, spare: VecDeque<Job>, tick: Duration) -> Option<Batch> {
        let mut spare = spare;
        spare.clear();
        let mut filling = self.lock();
        loop {
            if !filling.jobs.is_empty() {
                std::mem::swap(&mut filling.jobs, &mut spare);
                return Some(Batch { jobs: spare });
            }
            if self.is_closed() {
                return None;
            }
            filling.waiting = true;
            filling = match self.ready.wait_timeout(filling, tick) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
            filling.waiting = false;
        }
    }

    /// Dynamic batching: add the jobs pending now to the handed-off `batch`, and wait for more
    /// until it holds `want` jobs, until `until`, or until the queue closes, whichever comes
    /// first. Each push wakes the wait; jobs keep their queue slots (and their deadlines) as
    /// before.
    pub fn top_up(&self, batch: &mut Batch, want: usize, until: Instant) {
        let mut filling = self.lock();
        loop {
            batch.jobs.extend(filling.jobs.drain(..));
            let now = Instant::now();
            if batch.jobs.len() >= want || now >= until || self.is_closed() {
                return;
            }
            filling.waiting = true;
            filling = match self.ready.wait_timeout(filling, until - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
            filling.waiting = false;
        }
    }

    /// True once pending jobs are to be answered `503` instead of run (shutdown).
    pub fn is_shedding(&self) -> bool {
        self.state.load(Ordering::Acquire) == SHEDDING
    }

    /// Shutdown: refuse new jobs, and have pending ones answered `503` rather than run.
    pub fn close_and_shed(&self) {
        self.move_to(SHEDDING);
    }

    /// Refuse new jobs from now on and wake the executor. Pending jobs still run (a retired
    /// endpoint after a config reload drains this way); the dispatcher ends once they are done.
    pub fn close(&self) {
        self.move_to(CLOSED);
    }

    /// Move the state forward to `state` (never back), then wake the executor. Taking the lock
    /// after the store orders it before every later push's and the dispatcher's look.
    fn move_to(&self, state: u8) {
        self.state.fetch_max(state, Ordering::AcqRel);
        drop(self.lock());
        self.ready.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, Filling> {
        // No code panics while holding this lock; recover the data if a panic elsewhere poisoned it.
        self.filling.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A handed-off batch, owned by the executor alone. A job keeps its queue slot until its turn
/// starts (or it expires); jobs still in a dropped batch give their slots back and are answered
/// `500` by their own `Drop`.
#[derive(Debug)]
pub struct Batch {
    jobs: VecDeque<Job>,
}

impl Batch {
    /// Next job in FIFO order.
    pub fn pop(&mut self) -> Option<Job> {
        self.jobs.pop_front()
    }

    /// The next unit of work in FIFO order: one job, or with `max` above 1 up to `max` jobs for
    /// one batch call (a lone job left is still [`Work::One`]).
    pub fn pop_work(&mut self, max: usize) -> Option<Work> {
        let n = self.jobs.len().min(max);
        if n <= 1 {
            return self.pop().map(Work::One);
        }
        Some(Work::Many(self.jobs.drain(..n).collect()))
    }

    /// When the batch's oldest job was admitted (its queue deadline is the first to come).
    pub fn oldest_admitted(&self) -> Option<Instant> {
        self.jobs.front().map(|j| j.admitted_at)
    }

    /// Jobs left in the batch.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// True when no job is left.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// The emptied buffer, for the next [`HandoffQueue::take_batch`].
    pub fn into_spare(mut self) -> VecDeque<Job> {
        while self.pop().is_some() {}
        std::mem::take(&mut self.jobs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::EndpointCounters;
    use crate::handler::JobRequest;
    use bytes::Bytes;

    fn job(counters: &Arc<EndpointCounters>, n: u8) -> (Job, crate::job::Waiter) {
        let request = JobRequest {
            method: hyper::Method::POST,
            uri: hyper::Uri::from_static("/x"),
            version: hyper::Version::HTTP_11,
            headers: hyper::HeaderMap::new(),
            body: Bytes::from(vec![n]),
            remote_addr: ([127, 0, 0, 1], 1).into(),
            local_addr: ([127, 0, 0, 1], 2).into(),
            client: Default::default(),
            upgrade: Default::default(),
            body_stream: Default::default(),
        };
        Job::new(request, counters.clone())
    }

    #[test]
    fn the_executor_takes_the_whole_pending_batch_in_fifo_order() {
        let counters = Arc::new(EndpointCounters::default());
        let queue = HandoffQueue::new(8);
        let mut waiters = Vec::new();
        for n in 0..5 {
            let (j, w) = job(&counters, n);
            queue.try_push(j).unwrap();
            waiters.push(w);
        }
        assert_eq!(queue.depth(), 5);
        let mut batch = queue
            .take_batch(VecDeque::new(), Duration::from_millis(1))
            .unwrap();
        assert_eq!(batch.len(), 5);
        // The front end fills a fresh queue meanwhile; depth still counts the batch's jobs.
        let (j, _w) = job(&counters, 9);
        queue.try_push(j).unwrap();
        assert_eq!(queue.depth(), 6);
        let order: Vec<u8> = std::iter::from_fn(|| batch.pop())
            .map(|j| {
                let n = j.request.body[0];
                j.discard();
                n
            })
            .collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
        assert_eq!(queue.depth(), 1);
    }

    #[test]
    fn a_full_queue_refuses_at_once_and_has_room_says_so_first() {
        let counters = Arc::new(EndpointCounters::default());
        let queue = HandoffQueue::new(2);
        let mut keep = Vec::new();
        for n in 0..2 {
            let (j, w) = job(&counters, n);
            queue.try_push(j).unwrap();
            keep.push(w);
        }
        assert!(!queue.has_room());
        let (j, _w) = job(&counters, 3);
        match queue.try_push(j) {
            Err(Refused::Full(j)) => j.discard(),
            other => panic!("expected Full, got {other:?}"),
        }
        assert_eq!(queue.depth(), 2);
    }

    #[test]
    fn close_refuses_new_jobs_and_ends_the_dispatcher_once_drained() {
        let counters = Arc::new(EndpointCounters::default());
        let queue = HandoffQueue::new(4);
        let (j, _w) = job(&counters, 1);
        queue.try_push(j).unwrap();
        queue.close();
        let (j, _w2) = job(&counters, 2);
        match queue.try_push(j) {
            Err(Refused::Closed(j)) => j.discard(),
            other => panic!("expected Closed, got {other:?}"),
        }
        // Pending work is still handed over, then the queue reports the end.
        let batch = queue
            .take_batch(VecDeque::new(), Duration::from_millis(1))
            .unwrap();
        let spare = batch.into_spare();
        assert!(queue.take_batch(spare, Duration::from_millis(1)).is_none());
        assert_eq!(queue.depth(), 0);
    }

    #[test]
    fn a_dropped_batch_answers_its_jobs_and_releases_their_depth() {
        let counters = Arc::new(EndpointCounters::default());
        let queue = HandoffQueue::new(4);
        let (j, mut w) = job(&counters, 1);
        queue.try_push(j).unwrap();
        let batch = queue
            .take_batch(VecDeque::new(), Duration::from_millis(1))
            .unwrap();
        drop(batch);
        assert_eq!(queue.depth(), 0);
        assert!(
            w.reply.try_recv().is_err(),
            "the waiter sees the job dropped, and answers 500"
        );
        assert_eq!(counters.snapshot().failed, 1);
    }
}
