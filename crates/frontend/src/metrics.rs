//! `GET /metrics`: Prometheus (OpenMetrics) text, encoded by `prometheus-client` from a snapshot of
//! the counters taken at scrape time; the request path keeps its plain atomics.

use super::app::App;
use super::Body;
use bytes::Bytes;
use common::handler::HandlerSample;
use common::histogram::JobHistogram;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::Arc;

use common::counters::CountersSnapshot;

/// One endpoint's numbers at scrape time.
#[derive(Debug)]
struct EndpointScrape {
    path: String,
    mode: &'static str,
    counters: CountersSnapshot,
    queue_depth: i64,
    queue_capacity: i64,
    running: i64,
    job_seconds: Arc<JobHistogram>,
    /// The handler's own numbers (worker processes).
    samples: Vec<HandlerSample>,
}

#[derive(Debug)]
struct Scrape {
    endpoints: Vec<EndpointScrape>,
    open_connections: i64,
    children: i64,
    light: i64,
}

type CounterOf = fn(&CountersSnapshot) -> u64;

const COUNTERS: &[(&str, &str, CounterOf)] = &[
    (
        "requests_admitted",
        "Requests admitted into the handoff queue.",
        |c| c.admitted,
    ),
    (
        "requests_completed",
        "Admitted requests answered by their handler.",
        |c| c.completed,
    ),
    (
        "requests_failed",
        "Admitted requests answered with an error (handler failure, panic, shutdown).",
        |c| c.failed,
    ),
    (
        "requests_timed_out",
        "Admitted requests answered 504 (queue timeout or run time limit).",
        |c| c.timed_out,
    ),
    (
        "requests_skipped",
        "Admitted requests not run because the client had gone.",
        |c| c.skipped,
    ),
    (
        "requests_overflowed",
        "Requests that found no room: ignored or rejected.",
        |c| c.overflowed,
    ),
    (
        "requests_shed_by_wait",
        "Overflowed because the expected wait exceeded the queue timeout.",
        |c| c.shed_by_wait,
    ),
    ("handler_panics", "Handler panics contained.", |c| c.panics),
];

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (name, help, value) in COUNTERS {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for ep in &self.endpoints {
                let labels = [("endpoint", ep.path.as_str()), ("mode", ep.mode)];
                ConstCounter::new(value(&ep.counters)).encode(metric.encode_family(&labels)?)?;
            }
        }
        type GaugeOf = fn(&EndpointScrape) -> i64;
        let gauges: [(&str, &str, GaugeOf); 3] = [
            ("queue_depth", "Jobs admitted and not yet started.", |e| {
                e.queue_depth
            }),
            ("queue_capacity", "Handoff queue capacity.", |e| {
                e.queue_capacity
            }),
            ("jobs_running", "Jobs running now.", |e| e.running),
        ];
        for (name, help, value) in gauges {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for ep in &self.endpoints {
                let labels = [("endpoint", ep.path.as_str()), ("mode", ep.mode)];
                ConstGauge::new(value(ep)).encode(metric.encode_family(&labels)?)?;
            }
        }
        let mut metric = encoder.encode_descriptor(
            "job_duration_seconds",
            "Handler run time of each job that ran.",
            None,
            MetricType::Histogram,
        )?;
        for ep in &self.endpoints {
            let labels = [("endpoint", ep.path.as_str()), ("mode", ep.mode)];
            let h = ep.job_seconds.snapshot();
            metric
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
        }
        // Handler samples, one descriptor per name across every endpoint that has it.
        let mut by_name: BTreeMap<&str, Vec<(&EndpointScrape, &HandlerSample)>> = BTreeMap::new();
        for ep in &self.endpoints {
            for sample in &ep.samples {
                by_name.entry(sample.name).or_default().push((ep, sample));
            }
        }
        for (name, samples) in by_name {
            let Some(&(_, first)) = samples.first() else {
                continue;
            };
            let kind = if first.counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            let mut metric = encoder.encode_descriptor(name, first.help, None, kind)?;
            for &(ep, sample) in &samples {
                let mut labels = vec![("endpoint", ep.path.clone()), ("mode", ep.mode.to_string())];
                labels.extend(sample.labels.iter().map(|(k, v)| (*k, v.clone())));
                let family = metric.encode_family(&labels)?;
                if first.counter {
                    ConstCounter::new(u64::try_from(sample.value).unwrap_or(0)).encode(family)?;
                } else {
                    ConstGauge::new(sample.value).encode(family)?;
                }
            }
        }
        let server: [(&str, &str, i64); 2] = [
            (
                "open_connections",
                "Client connections open now.",
                self.open_connections,
            ),
            (
                "child_processes",
                "Exec child process groups alive now.",
                self.children,
            ),
        ];
        for (name, help, value) in server {
            ConstGauge::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        {
            let light = self.light;
            let metric = encoder.encode_descriptor(
                "traffic_light",
                "The CPU/RAM traffic light: 0 green, 1 yellow, 2 red.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(light).encode(metric)?;
        }
        Ok(())
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The metrics document.
pub(super) fn render(app: &App) -> Response<Body> {
    let scrape = Scrape {
        endpoints: app
            .endpoints()
            .iter()
            .map(|e| {
                let status = e.status();
                EndpointScrape {
                    path: e.config.path.clone(),
                    mode: status.mode.as_str(),
                    counters: status.counters,
                    queue_depth: gauge(status.queue_depth),
                    queue_capacity: gauge(status.queue_capacity),
                    running: gauge(status.running),
                    job_seconds: e.job_seconds(),
                    samples: e.handler_samples(),
                }
            })
            .collect(),
        open_connections: gauge(app.open_connections()),
        children: gauge(app.children().live()),
        light: app.light_level(),
    };
    let mut registry = Registry::with_prefix("fiddler_crab");
    registry.register_collector(Box::new(scrape));
    let mut text = String::new();
    let (status, body) = match prometheus_client::encoding::text::encode(&mut text, &registry) {
        Ok(()) => (StatusCode::OK, text),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics encoding failed\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
