//! `GET /metrics`: Prometheus text, encoded by `prometheus-client` from a snapshot of the counters
//! taken at scrape time; the request path keeps its plain atomics.
//!
//! The format is negotiated: OpenMetrics 1.0 for a scraper whose `Accept` names
//! `application/openmetrics-text`, else the classic Prometheus text format 0.0.4 (`text/plain`),
//! which [`to_classic`] derives from the OpenMetrics text.

use super::app::App;
use super::Body;
use common::handler::HandlerSample;
use common::histogram::JobHistogram;
use hyper::header::{HeaderMap, HeaderValue, ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
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
    unauthorized: u64,
    unsent_refused: u64,
    unsent_bytes: i64,
    children: i64,
    light: i64,
    access_log_dropped: u64,
    door: crate::door::DoorSnapshot,
    hold: crate::hold::HoldSnapshot,
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
        "requests_client_gone",
        "Admitted requests stopped while running because the client went away.",
        |c| c.client_gone,
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
    (
        "requests_async",
        "Admitted requests run asynchronously on their connection's task, without the queue.",
        |c| c.async_runs,
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
        ConstCounter::new(self.unauthorized).encode(encoder.encode_descriptor(
            "requests_unauthorized",
            "Requests refused 401 for missing or wrong credentials (never admitted).",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(self.unsent_refused).encode(encoder.encode_descriptor(
            "requests_unsent_refused",
            "Requests and answers refused 503 because their connection's unsent answers were over a budget.",
            None,
            MetricType::Counter,
        )?)?;
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
        let server: [(&str, &str, i64); 3] = [
            (
                "unsent_bytes",
                "Response bytes made and not yet taken by their clients' connections.",
                self.unsent_bytes,
            ),
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
        ConstCounter::new(self.access_log_dropped).encode(encoder.encode_descriptor(
            "access_log_dropped",
            "Access-log lines dropped because the log writer fell behind (or failed).",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(self.door.closed).encode(encoder.encode_descriptor(
            "door_closed",
            "Times the public listener stopped accepting because every queue was full.",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(self.door.closed_micros as f64 / 1e6).encode(
            encoder.encode_descriptor(
                "door_closed_seconds",
                "Total time the public listener did not accept because every queue was full.",
                None,
                MetricType::Counter,
            )?,
        )?;
        let hold: [(&str, &str, u64); 3] = [
            (
                "overflow_held",
                "HTTP/1 connections held unread after an ignored overflow, then closed without a byte.",
                self.hold.held_total,
            ),
            (
                "overflow_hold_client_closed",
                "Holds that ended early because the client closed its connection.",
                self.hold.client_closed,
            ),
            (
                "overflow_hold_evicted",
                "Holds that ended early to make room for a new connection at max_connections.",
                self.hold.evicted,
            ),
        ];
        for (name, help, value) in hold {
            ConstCounter::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        ConstGauge::new(i64::try_from(self.hold.held).unwrap_or(i64::MAX)).encode(
            encoder.encode_descriptor(
                "overflow_held_connections",
                "HTTP/1 connections held now after an ignored overflow.",
                None,
                MetricType::Gauge,
            )?,
        )?;
        Ok(())
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// True if `headers` ask for OpenMetrics: an `Accept` media range `application/openmetrics-text`
/// with a non-zero quality.
fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        })
}

/// The classic Prometheus text format (0.0.4) of an OpenMetrics document: no `# EOF` and no
/// `# UNIT` lines, and a counter family named after its samples (`x_total`), since a classic
/// parser reads a sample whose name is not its family's as another, untyped, family.
fn to_classic(openmetrics: &str) -> String {
    let mut counters: Vec<&str> = Vec::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" counter") {
                counters.push(name);
            }
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The metrics document, in the format `headers` ask for.
pub(super) fn render(app: &App, headers: &HeaderMap) -> Response<Body> {
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
        unauthorized: app.unauthorized(),
        unsent_refused: app.unsent_refused(),
        unsent_bytes: i64::try_from(app.unsent_bytes()).unwrap_or(i64::MAX),
        children: gauge(app.children().live()),
        light: app.light_level(),
        access_log_dropped: super::access::dropped_total(),
        door: app.door().snapshot(),
        hold: app.hold().snapshot(),
    };
    let mut registry = Registry::with_prefix("fiddler_crab");
    registry.register_collector(Box::new(scrape));
    let mut text = String::new();
    let openmetrics = wants_openmetrics(headers);
    let (status, body) = match prometheus_client::encoding::text::encode(&mut text, &registry) {
        Ok(()) if openmetrics => (StatusCode::OK, text),
        Ok(()) => (StatusCode::OK, to_classic(&text)),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics encoding failed\n".to_string(),
        ),
    };
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    let content_type = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENMETRICS: &str = "# HELP p_requests Requests.\n# TYPE p_requests counter\n\
p_requests_total{endpoint=\"/a\"} 3\n# HELP p_depth Depth.\n# TYPE p_depth gauge\n# UNIT p_depth jobs\n\
p_depth 1\n# HELP p_seconds Run time.\n# TYPE p_seconds histogram\np_seconds_sum 0.5\np_seconds_count 1\n\
p_seconds_bucket{le=\"+Inf\"} 1\n# EOF\n";

    #[test]
    fn classic_format_names_counters_after_their_samples_and_drops_eof_and_unit() {
        let classic = to_classic(OPENMETRICS);
        assert_eq!(
            classic,
            "# HELP p_requests_total Requests.\n# TYPE p_requests_total counter\n\
p_requests_total{endpoint=\"/a\"} 3\n# HELP p_depth Depth.\n# TYPE p_depth gauge\n\
p_depth 1\n# HELP p_seconds Run time.\n# TYPE p_seconds histogram\np_seconds_sum 0.5\np_seconds_count 1\n\
p_seconds_bucket{le=\"+Inf\"} 1\n"
        );
    }

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_str(value).unwrap_or(HeaderValue::from_static("")),
        );
        headers
    }

    #[test]
    fn openmetrics_only_when_asked_for() {
        assert!(wants_openmetrics(&accept(
            "application/openmetrics-text; version=1.0.0"
        )));
        assert!(wants_openmetrics(&accept(
            "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
        )));
        assert!(!wants_openmetrics(&accept("text/plain; version=0.0.4")));
        assert!(!wants_openmetrics(&accept(
            "application/openmetrics-text;q=0, text/plain"
        )));
        assert!(!wants_openmetrics(&HeaderMap::new()));
    }
}
