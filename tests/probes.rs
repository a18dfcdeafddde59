//! The server's own paths: `/healthz` is always 200; `/readyz` turns 503 at once when saturated
//! (red light, every queue full) or shutting down, and 200 again only after a held recovery;
//! `/metrics` is valid OpenMetrics text whose counters move with the requests; an admin listener
//! serves only these paths, the main listener only the endpoints.
//!
//! Readiness reads a manual clock here: the recovery hold is proved exact (not ready 1 ms before
//! it, ready at it) through real sockets without waiting for it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use frontend::readiness::{ManualClock, Readiness, ReadinessPolicy};
use hyper::StatusCode;
use light::{Light, TrafficLight};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use support::{held_job, job, registry, request, wait_until, Recorder, TestServer};

const WORK: &str = r#"
[[endpoint]]
path = "/work"
mode = "crab"
builtin = "recorder"
queue = 2
expected_wait_admission = false
"#;

/// How long `/readyz` must see a recovered server before it says ready again.
const HOLD: Duration = ReadinessPolicy::DEFAULT_HOLD;

/// A server whose `/readyz` reads `clock`, the default policy otherwise.
async fn start(
    recorder: &Arc<Recorder>,
    light: &TrafficLight,
    clock: &Arc<ManualClock>,
) -> TestServer {
    TestServer::launch(WORK)
        .registry(&registry("recorder", recorder.clone()))
        .light(light)
        .readiness(Readiness::with_clock(
            ReadinessPolicy::default(),
            clock.clone(),
        ))
        .start()
        .await
}

/// `GET /readyz`: its status and its one-word reason.
async fn readyz(server: &TestServer) -> (StatusCode, String) {
    let reply = server.get("/readyz").await;
    (reply.status, reply.text().trim().to_string())
}

/// The server has just recovered: `/readyz` says `recovering` from this probe on until the clock
/// has moved the whole hold, and `ok` from then on.
async fn assert_ready_exactly_after_the_hold(server: &TestServer, clock: &ManualClock) {
    let recovering = (StatusCode::SERVICE_UNAVAILABLE, "recovering".to_string());
    assert_eq!(readyz(server).await, recovering);
    clock.advance(HOLD - Duration::from_millis(1));
    assert_eq!(readyz(server).await, recovering, "ready before the hold");
    clock.advance(Duration::from_millis(1));
    assert_eq!(readyz(server).await, (StatusCode::OK, "ok".into()));
    assert_eq!(readyz(server).await, (StatusCode::OK, "ok".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_light_and_recovers_only_after_the_hold() {
    let recorder = Recorder::new(Duration::ZERO);
    let light = TrafficLight::fixed(Light::Green);
    let clock = ManualClock::new();
    let server = start(&recorder, &light, &clock).await;

    assert_eq!(readyz(&server).await, (StatusCode::OK, "ok".into()));
    light.set(Light::Red);
    assert_eq!(
        readyz(&server).await,
        (StatusCode::SERVICE_UNAVAILABLE, "red".into())
    );
    // Alive all along, and still serving.
    assert_eq!(server.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(server.post("/work", "").await.status, StatusCode::OK);

    // Red again while recovering restarts the hold.
    light.set(Light::Green);
    assert_eq!(
        readyz(&server).await,
        (StatusCode::SERVICE_UNAVAILABLE, "recovering".into())
    );
    clock.advance(HOLD - Duration::from_millis(1));
    light.set(Light::Red);
    assert_eq!(
        readyz(&server).await,
        (StatusCode::SERVICE_UNAVAILABLE, "red".into())
    );
    light.set(Light::Green);
    assert_ready_exactly_after_the_hold(&server, &clock).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_queues_full_while_every_queue_is_full() {
    let recorder = Recorder::new(Duration::ZERO);
    let light = TrafficLight::fixed(Light::Green);
    let clock = ManualClock::new();
    let server = start(&recorder, &light, &clock).await;
    let client = server.client();

    let held = client.spawn(held_job("/work", "held"));
    recorder.gate().wait_arrived(1).await;
    let queued: Vec<_> = (0..2)
        .map(|i| client.spawn(job("/work", &format!("queued-{i}"))))
        .collect();
    server.wait_queued("/work", 2).await;
    assert_eq!(
        readyz(&server).await,
        (StatusCode::SERVICE_UNAVAILABLE, "queues-full".into())
    );
    assert_eq!(server.get("/healthz").await.status, StatusCode::OK);

    recorder.gate().open();
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
    for reply in queued {
        assert_eq!(reply.await.unwrap().status, StatusCode::OK);
    }
    server.wait_queued("/work", 0).await;
    assert_ready_exactly_after_the_hold(&server, &clock).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_shutting_down_during_the_drain() {
    let recorder = Recorder::new(Duration::ZERO);
    let light = TrafficLight::fixed(Light::Green);
    let clock = ManualClock::new();
    let mut server = start(&recorder, &light, &clock).await;
    let client = server.client();
    // A kept-open connection: new ones are no longer accepted once shutdown begins.
    let mut probe = client.connect_h1().await;
    assert_eq!(
        probe.send(request("GET", "/readyz", "")).await.status,
        StatusCode::OK
    );

    let held = client.spawn(held_job("/work", "held"));
    recorder.gate().wait_arrived(1).await;
    let endpoint = server.endpoint("/work");
    server.begin_shutdown();
    wait_until("the queue is closed", || endpoint.admission().is_closed()).await;

    let reply = probe.send(request("GET", "/readyz", "")).await;
    assert_eq!(
        (reply.status, reply.text().trim()),
        (StatusCode::SERVICE_UNAVAILABLE, "shutting-down")
    );
    let health = probe.send(request("GET", "/healthz", "")).await;
    assert_eq!(health.status, StatusCode::OK, "alive while draining");

    recorder.gate().open();
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
    drop(probe);
    server.join().await;
}

/// One sample line of an OpenMetrics exposition.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parse OpenMetrics text strictly: `# TYPE`/`# HELP`/`# UNIT` metadata, every sample in a family
/// declared before it with a suffix its type allows, quoted label values, numeric values, and a
/// final `# EOF`. Panics with the offending line otherwise.
fn parse_openmetrics(text: &str) -> Vec<Sample> {
    const TYPES: &[&str] = &[
        "counter",
        "gauge",
        "histogram",
        "gaugehistogram",
        "summary",
        "info",
        "stateset",
        "unknown",
    ];
    let valid_name = |n: &str| {
        let mut chars = n.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    assert!(text.ends_with("# EOF\n"), "no final `# EOF` line");
    let mut families: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let fail = |why: &str| -> ! { panic!("line {}: {why}: {line:?}", i + 1) };
        if *line == "# EOF" {
            if i + 1 != lines.len() {
                fail("`# EOF` before the end");
            }
            continue;
        }
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !valid_name(name) {
                fail("bad metric name");
            }
            match kind {
                "TYPE" => {
                    let ty = parts.next().unwrap_or("");
                    if !TYPES.contains(&ty) {
                        fail("unknown type");
                    }
                    if families.insert(name.to_string(), ty.to_string()).is_some() {
                        fail("family declared twice");
                    }
                }
                "HELP" | "UNIT" => {}
                _ => fail("unknown metadata"),
            }
            continue;
        }
        // name[{labels}] value [timestamp]
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| fail("no value"));
        let name = &line[..name_end];
        if !valid_name(name) {
            fail("bad sample name");
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let end = loop {
                let (start, c) = chars.next().unwrap_or_else(|| fail("unclosed labels"));
                if c == '}' {
                    break start;
                }
                let eq = body[start..]
                    .find('=')
                    .unwrap_or_else(|| fail("label without `=`"));
                let label = &body[start..start + eq];
                if !valid_name(label) || label.contains(':') {
                    fail("bad label name");
                }
                while chars.peek().is_some_and(|&(j, _)| j < start + eq + 1) {
                    chars.next();
                }
                if chars.next().map(|(_, c)| c) != Some('"') {
                    fail("unquoted label value");
                }
                let mut value = String::new();
                loop {
                    match chars.next().map(|(_, c)| c) {
                        Some('"') => break,
                        Some('\\') => match chars.next().map(|(_, c)| c) {
                            Some('n') => value.push('\n'),
                            Some(c @ ('\\' | '"')) => value.push(c),
                            _ => fail("bad escape"),
                        },
                        Some(c) => value.push(c),
                        None => fail("unterminated label value"),
                    }
                }
                if labels.insert(label.to_string(), value).is_some() {
                    fail("repeated label");
                }
                match chars.peek().map(|&(_, c)| c) {
                    Some(',') => {
                        chars.next();
                    }
                    Some('}') => {}
                    _ => fail("expected `,` or `}` after a label"),
                }
            };
            rest = &body[end + 1..];
        }
        let mut fields = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| fail("no space before the value"))
            .split(' ');
        let value = match fields.next().unwrap_or("") {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| fail("bad value")),
        };
        if let Some(ts) = fields.next() {
            ts.parse::<f64>().unwrap_or_else(|_| fail("bad timestamp"));
        }
        if fields.next().is_some() {
            fail("trailing fields");
        }
        let suffixes: &[&str] = match families.get(name).map(String::as_str) {
            Some("counter") => fail("a counter sample needs the `_total` suffix"),
            Some(_) => &[""],
            None => &["_total", "_created", "_bucket", "_count", "_sum", "_info"],
        };
        let family_ok = suffixes.iter().any(|suffix| {
            name.strip_suffix(suffix)
                .and_then(|family| families.get(family))
                .is_some_and(|ty| match *suffix {
                    "" => true,
                    "_total" | "_created" => ty == "counter",
                    "_bucket" | "_count" | "_sum" => ty == "histogram" || ty == "summary",
                    "_info" => ty == "info",
                    _ => false,
                })
        });
        if !family_ok {
            fail("sample of no family declared before it");
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    samples
}

/// The value of `name` (with the `fiddler_crab_` prefix added) whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let full = format!("fiddler_crab_{name}");
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == full
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    match found.as_slice() {
        [one] => one.value,
        _ => panic!("{} samples {full} with {labels:?}", found.len()),
    }
}

/// `GET /metrics` asking for OpenMetrics.
fn openmetrics_request() -> hyper::Request<http_body_util::Full<bytes::Bytes>> {
    let mut req = request("GET", "/metrics", "");
    req.headers_mut().insert(
        hyper::header::ACCEPT,
        hyper::header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0"),
    );
    req
}

async fn scrape(server: &TestServer) -> Vec<Sample> {
    let reply = server.client().send(openmetrics_request()).await;
    assert_eq!(reply.status, StatusCode::OK);
    let content_type = reply.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    parse_openmetrics(&reply.text())
}

const WORK_LABELS: &[(&str, &str)] = &[("endpoint", "/work"), ("mode", "crab")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_openmetrics_and_count_what_happened() {
    let recorder = Recorder::new(Duration::from_millis(3));
    let light = TrafficLight::fixed(Light::Green);
    let clock = ManualClock::new();
    let server = start(&recorder, &light, &clock).await;
    let client = server.client();

    let before = scrape(&server).await;
    assert_eq!(value(&before, "requests_admitted_total", WORK_LABELS), 0.0);
    assert_eq!(
        value(&before, "job_duration_seconds_count", WORK_LABELS),
        0.0
    );
    assert_eq!(value(&before, "traffic_light", &[]), 0.0);

    for i in 0..3 {
        let reply = client.send(job("/work", &format!("job-{i}"))).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    // Fill the queue behind a held job, then overflow it once.
    let held = client.spawn(held_job("/work", "held"));
    recorder.gate().wait_arrived(1).await;
    let queued: Vec<_> = (0..2)
        .map(|i| client.spawn(job("/work", &format!("queued-{i}"))))
        .collect();
    server.wait_queued("/work", 2).await;
    assert!(client.try_send(job("/work", "ignored")).await.is_err());
    let during = scrape(&server).await;
    assert_eq!(value(&during, "queue_depth", WORK_LABELS), 2.0);
    assert_eq!(value(&during, "queue_capacity", WORK_LABELS), 2.0);
    assert_eq!(value(&during, "jobs_running", WORK_LABELS), 1.0);
    assert_eq!(
        value(&during, "requests_overflowed_total", WORK_LABELS),
        1.0
    );
    assert!(value(&during, "open_connections", &[]) >= 3.0);

    recorder.gate().open();
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
    for reply in queued {
        assert_eq!(reply.await.unwrap().status, StatusCode::OK);
    }
    server.wait_queued("/work", 0).await;
    wait_until("every job is counted", || {
        server.counters("/work").completed == 6
    })
    .await;
    light.set(Light::Red);

    let after = scrape(&server).await;
    let c = server.counters("/work");
    assert_eq!(value(&after, "requests_admitted_total", WORK_LABELS), 6.0);
    assert_eq!(value(&after, "requests_completed_total", WORK_LABELS), 6.0);
    assert_eq!(value(&after, "requests_failed_total", WORK_LABELS), 0.0);
    assert_eq!(value(&after, "requests_overflowed_total", WORK_LABELS), 1.0);
    assert_eq!(
        value(&after, "requests_shed_by_wait_total", WORK_LABELS),
        0.0
    );
    // One observation per job that ran, in the buckets and the count alike.
    let count = value(&after, "job_duration_seconds_count", WORK_LABELS);
    assert_eq!(count, c.completed as f64);
    assert!(value(&after, "job_duration_seconds_sum", WORK_LABELS) > 0.0);
    let mut buckets: Vec<(f64, f64)> = after
        .iter()
        .filter(|s| {
            s.name == "fiddler_crab_job_duration_seconds_bucket"
                && s.labels.get("endpoint").map(String::as_str) == Some("/work")
        })
        .map(|s| {
            let le = &s.labels["le"];
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            (le, s.value)
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "cumulative buckets decrease: {buckets:?}"
    );
    assert_eq!(buckets.last(), Some(&(f64::INFINITY, count)));
    assert_eq!(value(&after, "traffic_light", &[]), 2.0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_serves_only_the_servers_own_paths() {
    let recorder = Recorder::new(Duration::ZERO);
    let server = TestServer::launch(WORK)
        .registry(&registry("recorder", recorder.clone()))
        .light(&TrafficLight::fixed(Light::Green))
        .admin()
        .start()
        .await;
    let main = server.client();
    let admin = server.admin_client();
    assert_ne!(main.addr, admin.addr);

    for path in ["/status", "/metrics", "/healthz", "/readyz"] {
        assert_eq!(admin.get(path).await.status, StatusCode::OK, "admin {path}");
        assert_eq!(
            main.get(path).await.status,
            StatusCode::NOT_FOUND,
            "main {path}"
        );
    }
    assert_eq!(main.send(job("/work", "main")).await.status, StatusCode::OK);
    assert_eq!(
        admin.send(job("/work", "admin")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(admin.get("/nowhere").await.status, StatusCode::NOT_FOUND);
    assert_eq!(recorder.ids(), ["main"]);

    let status: serde_json::Value =
        serde_json::from_slice(&admin.get("/status").await.body).unwrap();
    assert_eq!(status["endpoints"]["/work"]["counters"]["admitted"], 1);
    let metrics = parse_openmetrics(&admin.send(openmetrics_request()).await.text());
    assert_eq!(
        value(&metrics, "requests_completed_total", WORK_LABELS),
        1.0
    );
    server.shutdown().await;
}

#[test]
fn the_openmetrics_checker_refuses_malformed_text() {
    let good = "# TYPE x counter\n# HELP x An x.\nx_total{a=\"1\",b=\"q\\\"\"} 3\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 0.5\n# EOF\n";
    let samples = parse_openmetrics(good);
    assert_eq!(samples.len(), 4);
    assert_eq!(samples[0].labels["b"], "q\"");
    for bad in [
        "# TYPE x counter\nx_total 3\n",                // no # EOF
        "# TYPE x counter\nx 3\n# EOF\n",               // counter without _total
        "y_total 3\n# EOF\n",                           // no family declared
        "# TYPE x gauge\nx{a=1} 3\n# EOF\n",            // unquoted label value
        "# TYPE x gauge\nx three\n# EOF\n",             // not a number
        "# TYPE x gauge\n# EOF\nx 1\n# EOF\n",          // EOF before the end
        "# TYPE x gauge\nx{a=\"1\" 3\n# EOF\n",         // unclosed labels
        "# TYPE 1x gauge\n1x 3\n# EOF\n",               // bad name
        "# TYPE x gauge\n# TYPE x gauge\nx 3\n# EOF\n", // declared twice
    ] {
        let refused = std::panic::catch_unwind(|| parse_openmetrics(bad)).is_err();
        assert!(refused, "accepted {bad:?}");
    }
}
