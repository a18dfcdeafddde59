//! A running endpoint: its config, its admission (queue, running slots, counters), and its
//! supervised dispatcher thread.

use crate::admission::Admission;
use crate::batching::BatchSnapshot;
use crate::counters::CountersSnapshot;
use crate::executor::{dispatch, Executor};
use crate::handler::{Handler, HandlerSample};
use crate::supervisor::{Backoff, SupervisedThread};
use config::{EndpointConfig, Mode};
use serde::ser::SerializeMap;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One endpoint with its queue and executor running.
pub struct Endpoint {
    /// Its validated config.
    pub config: EndpointConfig,
    admission: Admission,
    dispatcher: SupervisedThread,
}

/// An endpoint's line in `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointStatus {
    /// Execution mode.
    pub mode: Mode,
    /// Overflow policy.
    pub overflow: &'static str,
    /// Jobs admitted and not yet started.
    pub queue_depth: usize,
    /// Queue capacity.
    pub queue_capacity: usize,
    /// Jobs running now (inline runs included). Shown as `running`, and as `busy` (any running).
    #[serde(flatten, serialize_with = "busy_and_running")]
    pub running: usize,
    /// Times the dispatcher was replaced after a failure.
    pub restarts: u64,
    /// Jobs the executor runs at once now.
    pub concurrency: usize,
    /// Moving estimate of one job's run time, in ms (absent before the first run).
    pub job_time_ms: Option<f64>,
    /// Expected wait of a request admitted now, in ms.
    pub expected_wait_ms: f64,
    /// Whether requests are refused when the expected wait exceeds `queue_timeout_ms`.
    pub expected_wait_admission: bool,
    /// Outcome counters.
    pub counters: CountersSnapshot,
    /// Mode-specific counters (routing decisions, pool restarts).
    pub executor: BTreeMap<&'static str, u64>,
    /// Handler-specific state (worker processes), if the handler has any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handler: Option<serde_json::Value>,
    /// Dynamic batching, on an endpoint with `max_batch` above 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchStatus>,
}

/// An endpoint's dynamic batching in `/status`: its settings and the sizes of its handler calls
/// (`items` ÷ `calls` is the mean batch size).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct BatchStatus {
    /// `max_batch`.
    pub max_batch: usize,
    /// `max_batch_wait_ms`.
    pub max_batch_wait_ms: u64,
    /// Handler calls, items and the largest call.
    #[serde(flatten)]
    pub sizes: BatchSnapshot,
}

impl EndpointStatus {
    /// True while a job runs.
    pub fn busy(&self) -> bool {
        self.running > 0
    }
}

/// `"busy": running > 0, "running": running`: `/status` shows both, the struct keeps one.
fn busy_and_running<S: serde::Serializer>(running: &usize, s: S) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(2))?;
    map.serialize_entry("busy", &(*running > 0))?;
    map.serialize_entry("running", running)?;
    map.end()
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("path", &self.config.path)
            .field("mode", &self.mode())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Start an endpoint: its admission and queue, and its dispatcher thread under a supervisor.
    pub fn start(
        config: EndpointConfig,
        handler: Arc<dyn Handler>,
        executor: Arc<dyn Executor>,
    ) -> std::io::Result<Arc<Endpoint>> {
        let admission = Admission::new(&config, handler, executor);
        let (q, r, x) = (
            admission.queue.clone(),
            admission.runner.clone(),
            admission.executor.clone(),
        );
        let thread_name = format!("fc-{}{}", x.mode(), config.path.replace('/', "-"));
        let dispatcher = SupervisedThread::spawn(&thread_name, Backoff::default(), move || {
            dispatch(&q, x.as_ref(), &r);
            // Closed and drained: no job will reach the handler again.
            r.handler().close();
        })?;
        Ok(Arc::new(Endpoint {
            config,
            admission,
            dispatcher,
        }))
    }

    /// Its admission: where requests come in (see [`Admission`]).
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Its counters now.
    pub fn counters(&self) -> CountersSnapshot {
        self.admission.counters()
    }

    /// The endpoint's status line.
    pub fn status(&self) -> EndpointStatus {
        let admission = &self.admission;
        EndpointStatus {
            concurrency: admission.concurrency(),
            job_time_ms: admission.runner.job_time().map(|d| d.as_secs_f64() * 1e3),
            expected_wait_ms: admission.expected_wait().as_secs_f64() * 1e3,
            expected_wait_admission: self.config.expected_wait_admission,
            executor: admission.executor.counters().into_iter().collect(),
            mode: self.mode(),
            overflow: self.config.overflow.as_str(),
            queue_depth: admission.queue_depth(),
            queue_capacity: admission.queue_capacity(),
            running: admission.running(),
            restarts: self.dispatcher.restarts(),
            counters: admission.counters(),
            handler: admission.runner.handler().status(),
            batch: self.batch_status(),
        }
    }

    /// The endpoint's batching line, if it batches.
    fn batch_status(&self) -> Option<BatchStatus> {
        let runner = &self.admission.runner;
        let config = runner.batching();
        (config.max.get() > 1).then(|| BatchStatus {
            max_batch: config.max.get(),
            max_batch_wait_ms: u64::try_from(config.wait.as_millis()).unwrap_or(u64::MAX),
            sizes: runner.batch_stats().snapshot(),
        })
    }

    /// Have the handler read its files again (see [`Handler::reload_files`]).
    pub fn reload_handler_files(&self) -> Result<(), String> {
        self.admission.runner.handler().reload_files()
    }

    /// Whether the endpoint's handler can serve now (see [`Handler::ready`]).
    pub fn handler_ready(&self) -> Result<(), String> {
        self.admission.runner.handler().ready()
    }

    /// The handler's own numbers for `/metrics` (see [`Handler::samples`]), and on an endpoint
    /// that batches, `batch_calls` and `batch_items` (counters) and `batch_largest`.
    pub fn handler_samples(&self) -> Vec<HandlerSample> {
        let mut samples = self.admission.runner.handler().samples();
        if let Some(b) = self.batch_status() {
            let sample = |name, help, counter, value: u64| HandlerSample {
                name,
                help,
                counter,
                labels: Vec::new(),
                value: i64::try_from(value).unwrap_or(i64::MAX),
            };
            samples.push(sample(
                "batch_calls",
                "Handler calls on an endpoint that batches (a lone job is a call of 1).",
                true,
                b.sizes.calls,
            ));
            samples.push(sample(
                "batch_items",
                "Jobs those handler calls answered (items / calls is the mean batch size).",
                true,
                b.sizes.items,
            ));
            samples.push(sample(
                "batch_largest",
                "The largest handler call so far, in jobs.",
                false,
                b.sizes.largest,
            ));
        }
        samples
    }

    /// The endpoint's run-time histogram.
    pub fn job_seconds(&self) -> Arc<crate::histogram::JobHistogram> {
        self.admission.runner.job_seconds()
    }

    /// The mode its executor runs.
    pub fn mode(&self) -> Mode {
        self.admission.executor.mode()
    }

    /// Shutdown: new requests get `503`, queued jobs are answered `503` at once (their waiting
    /// front ends are woken), the running ones finish.
    pub fn close(&self) {
        self.admission.close();
    }

    /// Retire after a config reload: admit nothing new, run every queued job, then stop.
    pub fn retire(&self) {
        self.admission.retire();
    }

    /// True once the dispatcher has drained and stopped.
    pub fn is_stopped(&self) -> bool {
        self.dispatcher.is_finished()
    }

    /// Resolves once the dispatcher has drained and stopped.
    pub async fn stopped(&self) {
        self.dispatcher.finished().await;
    }
}
