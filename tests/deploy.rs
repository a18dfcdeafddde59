//! The deployment files in docs/deploy/ parse, say what the docs promise, and carry a config the
//! real loader accepts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fiddler_crab::config::Config;
use std::collections::HashMap;

fn deploy_file(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/deploy/").to_string() + name;
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
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
    let text = deploy_file("kubernetes.yaml");
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
        .collect();
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k}"))
    };

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
