//! Dynamic batching: a unit of work an executor runs in one running slot (one job, or up to
//! `max_batch` jobs for one [`Handler::handle_batch`](crate::handler::Handler::handle_batch)
//! call), how long a small batch waits to fill, and the batch-size counters.
//!
//! The dispatcher takes the whole pending batch as always; with `max_batch` above 1 it first
//! waits, at most `max_batch_wait_ms` and never past the oldest job's queue deadline, for the
//! batch to reach `max_batch` ([`fill_until`], [`crate::queue::HandoffQueue::top_up`]). The
//! executor then pops [`Work`] of at most `max_batch` jobs at a time
//! ([`crate::queue::Batch::pop_work`]) and runs each in one running slot
//! ([`crate::executor::JobRunner::run_work`]): every job's turn checks first, then one call for
//! the survivors, then one answer per job.

use crate::handler::{HandlerError, JobResponse};
use crate::job::Job;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// What an executor runs in one running slot.
#[derive(Debug)]
pub enum Work {
    /// One job, one [`Handler::handle`](crate::handler::Handler::handle) call.
    One(Job),
    /// Two or more jobs (at most `max_batch`) for one
    /// [`Handler::handle_batch`](crate::handler::Handler::handle_batch) call.
    Many(Vec<Job>),
}

impl Work {
    /// True if every job's client is gone (nobody waits for any answer).
    pub fn client_gone(&self) -> bool {
        match self {
            Work::One(job) => job.client_gone(),
            Work::Many(jobs) => jobs.iter().all(Job::client_gone),
        }
    }

    /// Jobs in it.
    pub fn len(&self) -> usize {
        match self {
            Work::One(_) => 1,
            Work::Many(jobs) => jobs.len(),
        }
    }

    /// True if it holds no job (never made so by the queue).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Until when a handed-off batch smaller than `max_batch` waits for more jobs: `wait` from
/// `now`, but never past the queue deadline of its oldest job (admitted at `oldest`).
pub fn fill_until(
    now: Instant,
    wait: Duration,
    oldest: Option<Instant>,
    queue_timeout: Duration,
) -> Instant {
    let by_wait = now + wait;
    match oldest {
        Some(admitted) => by_wait.min(admitted + queue_timeout),
        None => by_wait,
    }
}

/// Exactly `n` results from a handler's batch answer: extra results are dropped, missing ones
/// become `500`. The second value says whether the answer had the wrong length.
pub fn exactly(
    mut results: Vec<Result<JobResponse, HandlerError>>,
    n: usize,
) -> (Vec<Result<JobResponse, HandlerError>>, bool) {
    let wrong = results.len() != n;
    if wrong {
        let got = results.len();
        results.truncate(n);
        results.resize_with(n, || {
            Err(HandlerError::Internal(format!(
                "the handler answered {got} results for a batch of {n}"
            )))
        });
    }
    (results, wrong)
}

/// Weight of the newest call in the batch-size moving average, as 1/N.
const SIZE_SMOOTHING: u64 = 8;
/// Fixed-point scale of the moving average.
const SIZE_SCALE: u64 = 256;

/// How big the handler calls of one endpoint were: counters for `/status` and `/metrics`, and a
/// moving average of the batch size for the expected-wait estimate.
#[derive(Debug, Default)]
pub struct BatchStats {
    calls: AtomicU64,
    items: AtomicU64,
    largest: AtomicU64,
    /// Moving average of items per call, times [`SIZE_SCALE`] (0 until the first call).
    mean_scaled: AtomicU64,
}

/// A copy of [`BatchStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BatchSnapshot {
    /// Handler calls (a lone job counts as a call of 1).
    pub calls: u64,
    /// Jobs those calls answered (sent to the handler, not skipped or expired at their turn).
    pub items: u64,
    /// The largest call.
    pub largest: u64,
}

impl BatchStats {
    /// Count one handler call of `items` jobs.
    pub fn record(&self, items: usize) {
        let n = u64::try_from(items).unwrap_or(u64::MAX);
        self.calls.fetch_add(1, Relaxed);
        self.items.fetch_add(n, Relaxed);
        self.largest.fetch_max(n, Relaxed);
        let sample = n.saturating_mul(SIZE_SCALE);
        // A plain load and store: a lost sample does not matter to a moving average.
        let old = self.mean_scaled.load(Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / SIZE_SMOOTHING + sample / SIZE_SMOOTHING
        };
        self.mean_scaled.store(new, Relaxed);
    }

    /// The recent mean number of jobs per handler call, at least 1.
    pub fn mean_size(&self) -> f64 {
        (self.mean_scaled.load(Relaxed) as f64 / SIZE_SCALE as f64).max(1.0)
    }

    /// The counters now.
    pub fn snapshot(&self) -> BatchSnapshot {
        BatchSnapshot {
            calls: self.calls.load(Relaxed),
            items: self.items.load(Relaxed),
            largest: self.largest.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_waits_its_wait_but_never_past_the_oldest_jobs_deadline() {
        let now = Instant::now();
        let timeout = Duration::from_millis(100);
        let wait = Duration::from_millis(20);
        // Fresh oldest job: the wait decides.
        assert_eq!(fill_until(now, wait, Some(now), timeout), now + wait);
        // Oldest job 90 ms old: its deadline is 10 ms away, sooner than the wait.
        let old = now - Duration::from_millis(90);
        assert_eq!(
            fill_until(now, wait, Some(old), timeout),
            now + Duration::from_millis(10)
        );
        // Already past its deadline: no wait at all.
        let older = now - Duration::from_millis(150);
        assert!(fill_until(now, wait, Some(older), timeout) <= now);
        assert_eq!(fill_until(now, wait, None, timeout), now + wait);
    }

    #[test]
    fn a_batch_answer_of_the_wrong_length_is_cut_or_padded_with_500s() {
        let ok = || Ok(JobResponse::new(bytes::Bytes::new().into()));
        let (r, wrong) = exactly(vec![ok(), ok()], 2);
        assert!(!wrong && r.len() == 2 && r.iter().all(Result::is_ok));
        let (r, wrong) = exactly(vec![ok()], 3);
        assert!(wrong);
        assert!(r[0].is_ok());
        for missing in &r[1..] {
            let e = missing.as_ref().unwrap_err();
            assert_eq!(e.status(), hyper::StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(
                e.to_string(),
                "the handler answered 1 results for a batch of 3"
            );
        }
        let (r, wrong) = exactly(vec![ok(), ok(), ok()], 2);
        assert!(wrong && r.len() == 2);
    }

    #[test]
    fn batch_stats_count_calls_items_and_the_largest_and_average_the_size() {
        let s = BatchStats::default();
        assert_eq!(s.mean_size(), 1.0);
        for n in [4, 8, 8, 8] {
            s.record(n);
        }
        assert_eq!(
            s.snapshot(),
            BatchSnapshot {
                calls: 4,
                items: 28,
                largest: 8
            }
        );
        let mean = s.mean_size();
        assert!(mean > 4.0 && mean < 8.0, "{mean}");
    }

    mod runner {
        use crate::counters::EndpointCounters;
        use crate::executor::JobRunner;
        use crate::handler::{Handler, HandlerError, JobRequest, JobResponse};
        use crate::job::{Job, Waiter};
        use crate::queue::HandoffQueue;
        use bytes::Bytes;
        use std::collections::VecDeque;
        use std::num::NonZeroUsize;
        use std::sync::{Arc, Mutex};
        use std::time::{Duration, Instant};

        /// Echoes each body; records each call's size; fails an item whose body is `bad`;
        /// answers one result too few for a batch holding `short`.
        #[derive(Default)]
        struct Echo(Mutex<Vec<usize>>);

        fn echo(req: &JobRequest) -> Result<JobResponse, HandlerError> {
            if req.body.as_ref() == b"bad" {
                return Err(HandlerError::BadGateway("bad item".into()));
            }
            if req.body.as_ref() == b"stream" {
                return Ok(JobResponse::new(crate::body::ResponseBody::stream(
                    |sink| sink.send(Bytes::from_static(b"streamed")),
                )));
            }
            Ok(JobResponse::new(req.body.clone().into()))
        }

        impl Handler for Echo {
            fn handle(&self, req: &JobRequest) -> Result<JobResponse, HandlerError> {
                self.0.lock().unwrap().push(1);
                echo(req)
            }
            fn handle_batch(&self, reqs: &[&JobRequest]) -> Vec<Result<JobResponse, HandlerError>> {
                self.0.lock().unwrap().push(reqs.len());
                let mut out: Vec<_> = reqs.iter().map(|r| echo(r)).collect();
                if reqs.iter().any(|r| r.body.as_ref() == b"short") {
                    out.pop();
                }
                out
            }
            fn can_batch(&self) -> bool {
                true
            }
        }

        fn request(body: &str) -> JobRequest {
            JobRequest {
                method: hyper::Method::POST,
                uri: hyper::Uri::from_static("/b"),
                version: hyper::Version::HTTP_11,
                headers: hyper::HeaderMap::new(),
                body: Bytes::from(body.to_string()),
                remote_addr: ([127, 0, 0, 1], 1).into(),
                local_addr: ([127, 0, 0, 1], 2).into(),
                client: Default::default(),
                upgrade: Default::default(),
                body_stream: Default::default(),
            }
        }

        struct Rig {
            queue: Arc<HandoffQueue>,
            runner: JobRunner,
            handler: Arc<Echo>,
            counters: Arc<EndpointCounters>,
        }

        fn rig(max: usize, wait_ms: u64, queue_timeout: Duration) -> Rig {
            let queue = Arc::new(HandoffQueue::new(64));
            let handler = Arc::new(Echo::default());
            let counters = Arc::new(EndpointCounters::default());
            let runner = JobRunner::new(
                "/b",
                handler.clone(),
                queue.clone(),
                queue_timeout,
                counters.clone(),
            )
            .with_batching(config::BatchConfig {
                max: NonZeroUsize::new(max).unwrap(),
                wait: Duration::from_millis(wait_ms),
            });
            Rig {
                queue,
                runner,
                handler,
                counters,
            }
        }

        impl Rig {
            fn push(&self, body: &str) -> Waiter {
                let (job, waiter) = Job::new(request(body), self.counters.clone());
                self.queue.try_push(job).unwrap();
                waiter
            }

            /// What a serial executor does with one handed-off batch.
            fn run_one_batch(&self) {
                let mut batch = self
                    .queue
                    .take_batch(VecDeque::new(), Duration::from_millis(10))
                    .unwrap();
                while let Some(work) = batch.pop_work(self.runner.max_batch()) {
                    self.runner.run_work(work, 1);
                }
            }

            fn sizes(&self) -> Vec<usize> {
                self.handler.0.lock().unwrap().clone()
            }
        }

        fn answer(w: Waiter) -> (u16, String) {
            let r = w.reply.blocking_recv().unwrap();
            (
                r.status().as_u16(),
                String::from_utf8_lossy(r.body().as_full().unwrap())
                    .trim_end()
                    .to_string(),
            )
        }

        #[test]
        fn a_batch_is_split_into_calls_of_at_most_max_batch_and_each_job_gets_its_own_answer() {
            let rig = rig(4, 0, Duration::from_secs(5));
            let waiters: Vec<Waiter> = (0..10)
                .map(|i| {
                    rig.push(&if i == 5 {
                        "bad".to_string()
                    } else {
                        format!("id-{i}")
                    })
                })
                .collect();
            rig.run_one_batch();
            assert_eq!(rig.sizes(), [4, 4, 2]);
            for (i, w) in waiters.into_iter().enumerate() {
                if i == 5 {
                    assert_eq!(
                        answer(w),
                        (502, "bad item".to_string()),
                        "only this item fails"
                    );
                } else {
                    assert_eq!(answer(w), (200, format!("id-{i}")));
                }
            }
            let c = rig.counters.snapshot();
            assert_eq!((c.admitted, c.completed, c.failed), (10, 9, 1));
            assert_eq!(c.answered(), c.admitted);
            let s = rig.runner.batch_stats().snapshot();
            assert_eq!((s.calls, s.items, s.largest), (3, 10, 4));
        }

        #[test]
        fn every_job_gets_its_own_body_back_in_order() {
            let rig = rig(8, 0, Duration::from_secs(5));
            let waiters: Vec<Waiter> = (0..5).map(|i| rig.push(&format!("id-{i}"))).collect();
            rig.run_one_batch();
            assert_eq!(rig.sizes(), [5]);
            for (i, w) in waiters.into_iter().enumerate() {
                assert_eq!(answer(w), (200, format!("id-{i}")));
            }
        }

        #[test]
        fn a_short_batch_answer_is_500_for_the_job_without_a_result_only() {
            let rig = rig(8, 0, Duration::from_secs(5));
            let waiters: Vec<Waiter> = ["a", "short", "c"].iter().map(|b| rig.push(b)).collect();
            rig.run_one_batch();
            let answers: Vec<(u16, String)> = waiters.into_iter().map(answer).collect();
            assert_eq!(answers[0], (200, "a".to_string()));
            assert_eq!(answers[1], (200, "short".to_string()));
            assert_eq!(
                answers[2],
                (
                    500,
                    "the handler answered 2 results for a batch of 3".to_string()
                )
            );
            let c = rig.counters.snapshot();
            assert_eq!((c.completed, c.failed), (2, 1));
        }

        #[test]
        fn a_streamed_answer_in_a_batch_is_500_for_its_job_only_and_a_lone_job_may_stream() {
            let rig = rig(8, 0, Duration::from_secs(5));
            let waiters: Vec<Waiter> = ["a", "stream"].iter().map(|b| rig.push(b)).collect();
            rig.run_one_batch();
            let answers: Vec<(u16, String)> = waiters.into_iter().map(answer).collect();
            assert_eq!(answers[0], (200, "a".to_string()));
            assert_eq!(
                answers[1],
                (500, "this handler cannot stream its answer".to_string())
            );
            // Alone, the same request is a plain call whose answer streams.
            let alone = rig.push("stream");
            rig.run_one_batch();
            let reply = alone.reply.blocking_recv().unwrap();
            assert_eq!(reply.status(), 200);
            assert!(reply.body().is_stream());
            assert_eq!(rig.sizes(), [2, 1]);
        }

        #[test]
        fn a_job_whose_client_left_is_skipped_and_a_lone_survivor_gets_a_plain_call() {
            let rig = rig(8, 0, Duration::from_secs(5));
            let gone = rig.push("gone");
            let kept = rig.push("kept");
            drop(gone);
            rig.run_one_batch();
            assert_eq!(answer(kept), (200, "kept".to_string()));
            assert_eq!(
                rig.sizes(),
                [1],
                "one handle() call, the gone job never sent"
            );
            let c = rig.counters.snapshot();
            assert_eq!((c.admitted, c.completed, c.skipped), (2, 1, 1));
        }

        #[test]
        fn a_job_whose_deadline_comes_while_the_batch_waits_to_fill_is_answered_504_unsent() {
            // A wait far longer than the queue timeout (the config forbids it; the deadline
            // still bounds the wait).
            let rig = rig(8, 10_000, Duration::from_millis(30));
            let old = rig.push("old");
            let mut batch = rig
                .queue
                .take_batch(VecDeque::new(), Duration::from_millis(10))
                .unwrap();
            let started = Instant::now();
            crate::executor::fill(&rig.queue, &mut batch, &rig.runner);
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "bounded by the deadline"
            );
            while let Some(work) = batch.pop_work(rig.runner.max_batch()) {
                rig.runner.run_work(work, 1);
            }
            assert_eq!(
                answer(old),
                (504, "waited in queue past queue_timeout_ms".to_string())
            );
            assert!(rig.sizes().is_empty(), "nothing was sent to the handler");
            assert_eq!(rig.counters.snapshot().timed_out, 1);
        }

        #[test]
        fn top_up_waits_for_the_batch_to_fill_and_a_closing_queue_cuts_it_short() {
            let rig = Arc::new(rig(3, 0, Duration::from_secs(5)));
            let _first = rig.push("1");
            let mut batch = rig
                .queue
                .take_batch(VecDeque::new(), Duration::from_millis(10))
                .unwrap();
            let pusher = {
                let rig = rig.clone();
                std::thread::spawn(move || vec![rig.push("2"), rig.push("3")])
            };
            // Bounded by a far deadline; ends when the third job is in.
            let far = Instant::now() + Duration::from_secs(30);
            rig.queue.top_up(&mut batch, 3, far);
            assert_eq!(batch.len(), 3);
            let _rest = pusher.join().unwrap();
            rig.queue.close_and_shed();
            let started = Instant::now();
            rig.queue.top_up(&mut batch, 10, far);
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "shutdown ends the wait"
            );
            assert_eq!(batch.len(), 3);
        }
    }
}
