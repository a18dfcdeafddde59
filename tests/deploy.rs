//! The deployment files in docs/deploy/ and the Dockerfile parse, say what the docs promise, agree
//! with each other (image, user, paths), carry a config the real loader accepts, and query only
//! metrics a real server's /metrics exposes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use fiddler_crab::config::{Config, HandlerConfig};
use serde_yaml::Value;
use std::collections::{BTreeSet, HashMap};
use support::TestServer;

fn repo_file(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/").to_string() + name;
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn deploy_file(name: &str) -> String {
    repo_file(&format!("docs/deploy/{name}"))
}

/// Every YAML document of a multi-document file.
fn yaml_docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .collect()
}

/// The one document of `kind` in `docs`.
fn kind<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    let mut found = docs.iter().filter(|d| d["kind"] == k);
    let doc = found.next().unwrap_or_else(|| panic!("no {k}"));
    assert!(found.next().is_none(), "more than one {k}");
    doc
}

/// A systemd unit as sections of key → values (a key may repeat).
fn parse_unit(text: &str) -> HashMap<String, HashMap<String, Vec<String>>> {
    let mut sections: HashMap<String, HashMap<String, Vec<String>>> = HashMap::new();
    let mut current = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.to_string());
            sections.entry(name.to_string()).or_default();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not key=value: {line}", n + 1));
        let section = current
            .clone()
            .unwrap_or_else(|| panic!("line {}: key outside a section", n + 1));
        sections
            .entry(section)
            .or_default()
            .entry(key.trim().to_string())
            .or_default()
            .push(value.trim().to_string());
    }
    sections
}

#[test]
fn the_systemd_unit_validates_config_reloads_with_sighup_and_outlasts_the_shutdown_grace() {
    let unit = parse_unit(&deploy_file("fiddler_crab.service"));
    let service = &unit["Service"];
    let one = |k: &str| {
        service
            .get(k)
            .and_then(|v| v.first())
            .map(String::as_str)
            .unwrap_or_else(|| panic!("Service.{k} missing"))
    };
    assert!(one("ExecStartPre").contains(" check --config "));
    assert!(one("ExecStart").starts_with("/usr/local/bin/fiddler_crab --config "));
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("KillSignal"), "SIGTERM");
    assert_eq!(one("Restart"), "on-failure");
    let stop: u64 = one("TimeoutStopSec").parse().unwrap();
    let grace_ms = Config::from_toml("[[endpoint]]\npath=\"/p\"\nbuiltin=\"ping\"\n", "x")
        .unwrap()
        .server
        .shutdown_grace
        .as_millis();
    assert!(
        u128::from(stop) * 1000 > grace_ms,
        "TimeoutStopSec must outlast the default shutdown grace"
    );
    for limit in ["CPUQuota", "MemoryMax"] {
        assert!(
            service.contains_key(limit),
            "{limit}: the traffic light reads the cgroup's limits"
        );
    }
    assert!(unit["Install"].contains_key("WantedBy"));
}

#[test]
fn the_kubernetes_manifest_probes_healthz_and_readyz_sets_limits_and_carries_a_valid_config() {
    let docs = yaml_docs(&deploy_file("kubernetes.yaml"));
    let kind = |k: &str| kind(&docs, k);

    let config_text = kind("ConfigMap")["data"]["config.toml"].as_str().unwrap();
    let config = Config::from_toml(config_text, "kubernetes.yaml ConfigMap").unwrap();
    assert_eq!(config.server.listen.port(), 8080);

    let deployment = kind("Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(container["resources"]["limits"]["cpu"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());
    let grace_s = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(u128::from(grace_s) * 1000 > config.server.shutdown_grace.as_millis());
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args
        .windows(2)
        .any(|w| w == ["--config", "/etc/fiddler_crab/config.toml"]));
    assert_eq!(
        pod["volumes"][0]["configMap"]["name"],
        kind("ConfigMap")["metadata"]["name"]
    );

    let service = kind("Service");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
}

/// The Dockerfile as instructions (continuation lines joined, comments dropped) and its comments.
struct Dockerfile {
    instructions: Vec<(String, String)>,
    comments: String,
}

impl Dockerfile {
    fn read() -> Dockerfile {
        let text = repo_file("Dockerfile");
        let mut instructions = Vec::new();
        let mut comments = String::new();
        let mut pending = String::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some(comment) = line.strip_prefix('#') {
                comments.push_str(comment);
                comments.push('\n');
                continue;
            }
            if line.is_empty() && pending.is_empty() {
                continue;
            }
            match line.strip_suffix('\\') {
                Some(part) => pending.push_str(part),
                None => {
                    pending.push_str(line);
                    let (op, rest) = pending.split_once(' ').unwrap_or((&pending, ""));
                    instructions.push((op.to_uppercase(), rest.trim().to_string()));
                    pending.clear();
                }
            }
        }
        Dockerfile {
            instructions,
            comments,
        }
    }

    /// The arguments of every `op` instruction after the last `FROM` (the runtime stage).
    fn runtime(&self, op: &str) -> Vec<&str> {
        let last_from = self
            .instructions
            .iter()
            .rposition(|(o, _)| o == "FROM")
            .expect("a FROM");
        self.instructions[last_from..]
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.as_str())
            .collect()
    }

    fn all(&self, op: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.as_str())
            .collect()
    }

    /// The tag the Dockerfile's own comments build it as (`docker build -t TAG .`).
    fn documented_tag(&self) -> String {
        let line = self
            .comments
            .lines()
            .find(|l| l.contains("docker build"))
            .expect("a documented `docker build` command");
        let tag = line
            .split_whitespace()
            .skip_while(|w| *w != "-t")
            .nth(1)
            .expect("`docker build -t TAG`");
        tag.to_string()
    }
}

#[test]
fn the_dockerfile_builds_release_small_in_stages_and_runs_unprivileged_on_8080() {
    let docker = Dockerfile::read();
    let froms = docker.all("FROM");
    assert_eq!(froms.len(), 2, "a builder and a runtime stage: {froms:?}");
    assert!(froms[0].ends_with(" AS builder"), "{froms:?}");
    let args = docker.all("ARG").join("\n");
    assert!(args.contains("RUST_IMAGE=rust:"), "{args}");
    assert!(
        args.contains("RUNTIME_IMAGE=debian:bookworm-slim"),
        "{args}"
    );
    let build = docker.all("RUN").join("\n");
    assert!(
        build.contains("cargo build --locked --profile release-small"),
        "{build}"
    );

    let install = docker.runtime("RUN").join("\n");
    for package in ["python3", "ca-certificates"] {
        assert!(install.contains(package), "{package} in the runtime image");
    }
    let copies = docker.runtime("COPY").join("\n");
    for dir in ["examples/", "python/"] {
        assert!(
            copies.contains(&format!("{dir} /opt/fiddler_crab/{dir}")),
            "{dir} in the image"
        );
    }
    assert_eq!(docker.runtime("EXPOSE"), ["8080"]);
    assert_eq!(docker.runtime("ENV"), ["FIDDLER_CRAB_LISTEN=0.0.0.0:8080"]);
    let user = docker.runtime("USER");
    assert_eq!(user.len(), 1);
    assert_ne!(user[0].split(':').next(), Some("0"), "not root");
    assert!(docker.runtime("HEALTHCHECK")[0].contains("/healthz"));
    let entry = docker.runtime("ENTRYPOINT");
    assert!(
        entry[0].contains("/usr/local/bin/fiddler_crab"),
        "{entry:?}"
    );

    let ignore = repo_file(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target/"),
        "the build context leaves target/ out"
    );
}

#[test]
fn the_deployment_runs_the_image_the_dockerfile_builds_as_its_user_with_its_files() {
    let docker = Dockerfile::read();
    let docs = yaml_docs(&deploy_file("kubernetes.yaml"));
    let pod = &kind(&docs, "Deployment")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];

    let tag = docker.documented_tag();
    assert_eq!(tag, "fiddler-crab:latest");
    assert_eq!(container["image"].as_str(), Some(tag.as_str()));
    assert_eq!(
        container["imagePullPolicy"], "IfNotPresent",
        "a local `latest` is not pulled"
    );
    let readme = deploy_file("README.md");
    assert!(
        readme.contains(&format!("docker build -t {tag} .")),
        "docs/deploy/README.md builds {tag}"
    );

    let uid = docker.runtime("USER")[0]
        .split(':')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        pod["securityContext"]["runAsUser"]
            .as_u64()
            .map(|u| u.to_string()),
        Some(uid)
    );
    assert_eq!(container["ports"][0]["containerPort"], 8080);

    // The ConfigMap's programs are files the image carries: a COPY maps repo files to them.
    let copies: Vec<(String, String)> = docker
        .runtime("COPY")
        .iter()
        .filter(|c| !c.starts_with("--from"))
        .map(|c| {
            let (from, to) = c.split_once(' ').unwrap();
            (from.to_string(), to.trim().to_string())
        })
        .collect();
    let config = Config::from_toml(
        kind(&docs, "ConfigMap")["data"]["config.toml"]
            .as_str()
            .unwrap(),
        "kubernetes.yaml ConfigMap",
    )
    .unwrap();
    let mut checked = 0;
    for ep in &config.endpoints {
        let HandlerConfig::Exec(exec) = &ep.handler else {
            continue;
        };
        for arg in exec.command.iter().filter(|a| a.starts_with('/')) {
            let (from, to) = copies
                .iter()
                .find(|(_, to)| arg.starts_with(to.as_str()))
                .unwrap_or_else(|| panic!("{}: no COPY puts {arg} in the image", ep.path));
            let source = format!("{from}{}", &arg[to.len()..]);
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/").to_string() + &source;
            assert!(
                std::path::Path::new(&path).is_file(),
                "{arg} comes from {source}, which is missing"
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "the ConfigMap runs a program from the image");
}

/// The metric names (without labels) a real server's `/metrics` lists, for the ConfigMap's config.
async fn scraped_metric_names() -> BTreeSet<String> {
    let docs = yaml_docs(&deploy_file("kubernetes.yaml"));
    let config = kind(&docs, "ConfigMap")["data"]["config.toml"]
        .as_str()
        .unwrap();
    let server = TestServer::start(config).await;
    assert_eq!(server.get("/ping").await.text(), "pong\n");
    let text = server.get("/metrics").await.text();
    server.shutdown().await;
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// Every `fiddler_crab_*` name in a query.
fn metric_names_in(query: &str) -> Vec<String> {
    query
        .match_indices("fiddler_crab_")
        .map(|(i, _)| {
            query[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

fn assert_scraped(queries: &[&str], scraped: &BTreeSet<String>) {
    let mut names = 0;
    for query in queries {
        for name in metric_names_in(query) {
            assert!(
                scraped.contains(&name),
                "`{name}` is not in /metrics: {scraped:?}\n{query}"
            );
            names += 1;
        }
    }
    assert!(names > 0, "the queries name no metric");
}

/// The Deployment's name; the autoscalers must target it.
fn deployment_name() -> Value {
    let docs = yaml_docs(&deploy_file("kubernetes.yaml"));
    kind(&docs, "Deployment")["metadata"]["name"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keda_scaled_object_scales_the_deployment_on_queue_metrics_that_metrics_exposes() {
    let docs = yaml_docs(&deploy_file("autoscaling-keda.yaml"));
    let scaled = kind(&docs, "ScaledObject");
    assert_eq!(scaled["apiVersion"], "keda.sh/v1alpha1");
    let target = &scaled["spec"]["scaleTargetRef"];
    assert_eq!(target["kind"], "Deployment");
    assert_eq!(target["name"], deployment_name());
    assert!(scaled["spec"]["minReplicaCount"].as_u64().unwrap() >= 1);
    assert!(
        scaled["spec"]["maxReplicaCount"].as_u64() > scaled["spec"]["minReplicaCount"].as_u64()
    );

    let triggers = scaled["spec"]["triggers"].as_sequence().unwrap();
    let names: Vec<&str> = triggers
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["queue-depth", "expected-wait"]);
    let mut queries = Vec::new();
    for t in triggers {
        assert_eq!(t["type"], "prometheus");
        assert_eq!(t["metricType"], "AverageValue", "a per-pod threshold");
        let threshold: f64 = t["metadata"]["threshold"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(threshold > 0.0);
        queries.push(t["metadata"]["query"].as_str().unwrap());
    }
    assert!(queries[0].contains("fiddler_crab_queue_depth"));
    assert!(queries[1].contains("fiddler_crab_job_duration_seconds_sum"));
    assert_scraped(&queries, &scraped_metric_names().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hpa_scales_on_pods_metrics_that_adapter_rules_build_from_metrics_that_exist() {
    let docs = yaml_docs(&deploy_file("autoscaling-hpa.yaml"));
    let hpa = kind(&docs, "HorizontalPodAutoscaler");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], deployment_name());
    assert!(hpa["spec"]["maxReplicas"].as_u64() > hpa["spec"]["minReplicas"].as_u64());

    let rules_text = kind(&docs, "ConfigMap")["data"]["config.yaml"]
        .as_str()
        .unwrap();
    let adapter: Value = serde_yaml::from_str(rules_text).unwrap();
    let rules = adapter["rules"].as_sequence().unwrap();
    let served: Vec<&str> = rules
        .iter()
        .map(|r| r["name"]["as"].as_str().unwrap())
        .collect();

    let metrics = hpa["spec"]["metrics"].as_sequence().unwrap();
    let mut targeted = Vec::new();
    for m in metrics {
        assert_eq!(m["type"], "Pods");
        let name = m["pods"]["metric"]["name"].as_str().unwrap();
        assert!(
            served.contains(&name),
            "no adapter rule serves `{name}`: {served:?}"
        );
        assert_eq!(m["pods"]["target"]["type"], "AverageValue");
        targeted.push(name);
    }
    assert_eq!(
        targeted,
        [
            "fiddler_crab_queued_work_seconds",
            "fiddler_crab_queue_depth"
        ]
    );

    let mut queries = Vec::new();
    for r in rules {
        assert_eq!(r["resources"]["overrides"]["pod"]["resource"], "pod");
        assert_eq!(
            r["resources"]["overrides"]["namespace"]["resource"],
            "namespace"
        );
        queries.push(r["seriesQuery"].as_str().unwrap());
        queries.push(r["metricsQuery"].as_str().unwrap());
    }
    assert_scraped(&queries, &scraped_metric_names().await);
}

#[test]
fn the_pod_monitor_scrapes_the_deployments_pods_on_the_named_port() {
    let docs = yaml_docs(&deploy_file("podmonitor.yaml"));
    let monitor = kind(&docs, "PodMonitor");
    let k8s = yaml_docs(&deploy_file("kubernetes.yaml"));
    let deployment = kind(&k8s, "Deployment");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(
        endpoint["port"],
        deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"]
    );
}
