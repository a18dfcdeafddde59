//! `/metrics` in both formats, each read by its reference parser (the Python `prometheus_client`
//! in `.venv`, made by `scripts/venv.sh`): OpenMetrics when the scraper asks for it, the classic
//! text format 0.0.4 otherwise; both carry the same families and values.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use hyper::header::{HeaderValue, ACCEPT};
use hyper::StatusCode;
use std::path::Path;
use std::process::Command;
use support::{request, TempDir, TestServer};

/// Parse `file` with the reference parser of `format` (`classic` or `openmetrics`) and print one
/// line per sample: `name{labels} value`, sorted.
const PARSE: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families as classic
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
parse = classic if sys.argv[1] == "classic" else openmetrics
text = open(sys.argv[2]).read()
lines = []
for family in parse(text):
    assert family.type in ("counter", "gauge", "histogram"), (family.name, family.type)
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        lines.append(f"{family.type} {s.name}{{{labels}}} {float(s.value)}")
print("\n".join(sorted(lines)))
"#;

fn parsed(format: &str, text: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python3");
    assert!(
        python.exists(),
        "{} is missing: run `bash scripts/venv.sh` (or `.ci/run`) first",
        python.display()
    );
    let dir = TempDir::new("metrics-formats");
    let file = dir.write(&format!("{format}.txt"), text);
    let out = Command::new(python)
        .args(["-c", PARSE, format])
        .arg(&file)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "the {format} parser refused:\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

const PING: &str = "[[endpoint]]\npath = \"/ping\"\nmethods = [\"GET\"]\nbuiltin = \"ping\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_negotiate_openmetrics_or_the_classic_format_and_both_parse() {
    let server = TestServer::start(PING).await;
    for _ in 0..3 {
        assert_eq!(server.get("/ping").await.status, StatusCode::OK);
    }
    let client = server.client();
    let mut fetch = Vec::new();
    for accept in [
        None,
        Some("text/plain; version=0.0.4"),
        Some("application/openmetrics-text; version=1.0.0"),
    ] {
        let mut req = request("GET", "/metrics", "");
        if let Some(accept) = accept {
            req.headers_mut()
                .insert(ACCEPT, HeaderValue::from_static(accept));
        }
        let reply = client.send(req).await;
        assert_eq!(reply.status, StatusCode::OK);
        fetch.push((reply.header("content-type").unwrap(), reply.text()));
    }
    server.shutdown().await;

    let [(plain_type, plain), (classic_type, classic), (om_type, om)] = &fetch[..] else {
        unreachable!()
    };
    assert!(
        plain_type.starts_with("text/plain; version=0.0.4"),
        "{plain_type}"
    );
    assert!(
        classic_type.starts_with("text/plain; version=0.0.4"),
        "{classic_type}"
    );
    assert!(
        om_type.starts_with("application/openmetrics-text"),
        "{om_type}"
    );
    assert!(!classic.contains("# EOF") && om.ends_with("# EOF\n"));

    let classic = parsed("classic", classic);
    let plain = parsed("classic", plain);
    let om = parsed("openmetrics", om);
    assert!(
        classic
            .contains("counter fiddler_crab_requests_admitted_total{endpoint=/ping,mode=crab} 3.0"),
        "{classic}"
    );
    assert!(classic.contains("histogram fiddler_crab_job_duration_seconds_count{"));
    // The same samples either way (the parsers name a counter's family differently, not its
    // samples). Connections and the light may move between scrapes.
    let samples = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| {
                !l.contains("open_connections")
                    && !l.contains("traffic_light")
                    && !l.contains("unsent_bytes")
            })
            .map(|l| l.split_once(' ').unwrap().1.to_string())
            .collect()
    };
    assert_eq!(samples(&classic), samples(&om));
    assert_eq!(samples(&plain), samples(&classic));
}
