//! Tests of the exec handler against real child processes.
//! Compiled only under #[cfg(test)] (declared by the parent module).

use super::*;
use bytes::Bytes;
use children::Registry;
use hyper::header::{HeaderValue, CONTENT_TYPE, LOCATION};
use hyper::{HeaderMap, Method, StatusCode, Version};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Generous bound that only a hang would exceed.
const HANG: Duration = Duration::from_secs(20);

fn config(command: &[&str]) -> ExecConfig {
    ExecConfig {
        command: command.iter().map(|s| s.to_string()).collect(),
        cwd: None,
        output: ExecOutput::Raw,
        content_type: HeaderValue::from_static("text/plain; charset=utf-8"),
        timeout: Duration::from_secs(15),
        kill_grace: Duration::from_millis(500),
        max_output_bytes: 4 << 20,
        stream: false,
        stream_idle_timeout: Duration::from_secs(15),
        pass_env: vec![],
        env: vec![],
    }
}

fn sh(script: &str) -> ExecConfig {
    config(&["sh", "-c", script])
}

/// A handler with a registry of its own, so parallel tests do not see each other's children.
fn handler(cfg: ExecConfig) -> (ExecHandler, Arc<Registry>) {
    let registry = Arc::new(Registry::new());
    (ExecHandler::new("/run", cfg, registry.clone()), registry)
}

fn request(uri: &str, body: impl Into<Bytes>) -> JobRequest {
    JobRequest {
        method: Method::POST,
        uri: uri.parse().unwrap(),
        version: Version::HTTP_11,
        headers: HeaderMap::new(),
        body: body.into(),
        remote_addr: "127.0.0.1:50000".parse().unwrap(),
        local_addr: "127.0.0.1:8080".parse().unwrap(),
        client: Default::default(),
        upgrade: Default::default(),
        body_stream: Default::default(),
    }
}

fn run(cfg: ExecConfig, req: &JobRequest) -> Result<JobResponse, HandlerError> {
    let (h, registry) = handler(cfg);
    let result = h.handle(req);
    assert_eq!(registry.live(), 0, "a child stayed registered");
    result
}

fn body_text(resp: &JobResponse) -> String {
    String::from_utf8_lossy(resp.body().as_full().unwrap()).into_owned()
}

fn bad_gateway(result: Result<JobResponse, HandlerError>) -> String {
    match result {
        Err(HandlerError::BadGateway(reason)) => reason,
        other => panic!("expected BadGateway, got {other:?}"),
    }
}

fn temp_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("fiddler-exec-{}-{tag}", std::process::id()))
}

/// Read the pid a script wrote to `path`.
fn read_pid(path: &PathBuf) -> i32 {
    let text = std::fs::read_to_string(path).unwrap();
    let _ = std::fs::remove_file(path);
    text.trim().parse().unwrap()
}

/// True once `pid` is gone or a zombie (dead, waiting for init to reap it), within `HANG`.
fn dies(pid: i32) -> bool {
    let until = Instant::now() + HANG;
    while Instant::now() < until {
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
            })
            .unwrap_or(false);
        if !alive || zombie {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn raw_body_echoes_through_cat() {
    let h = ExecHandler::new("/run", config(&["cat"]), Arc::new(Registry::new()));
    let resp = h.handle(&request("/run", "hello, cat")).unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[CONTENT_TYPE], "text/plain; charset=utf-8");
    assert_eq!(resp.body().as_full().unwrap().as_ref(), b"hello, cat");
}

#[test]
fn large_body_round_trips_through_cat() {
    let body = Bytes::from(vec![b'x'; 1 << 20]);
    let resp = run(config(&["cat"]), &request("/run", body.clone())).unwrap();
    assert_eq!(resp.body().as_full(), Some(&body));
}

#[test]
fn large_body_to_a_child_that_never_reads_is_fine() {
    let started = Instant::now();
    let resp = run(config(&["true"]), &request("/run", vec![0u8; 1 << 20])).unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.body().as_full().unwrap().is_empty());
    assert!(started.elapsed() < HANG);
}

#[test]
fn cgi_variables_reach_the_program() {
    let mut req = request("/run?x=1&y=2", "");
    req.method = Method::GET;
    req.headers
        .insert("x-test", HeaderValue::from_static("marker"));
    let script = r#"echo "$REQUEST_METHOD $QUERY_STRING $HTTP_X_TEST $SCRIPT_NAME $PATH_INFO $GATEWAY_INTERFACE""#;
    let resp = run(sh(script), &req).unwrap();
    assert_eq!(body_text(&resp), "GET x=1&y=2 marker /run  CGI/1.1\n");
}

#[test]
fn server_environment_does_not_leak() {
    // cargo sets CARGO and CARGO_MANIFEST_DIR for tests; neither is allow-listed.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    let mut cfg = config(&["env"]);
    cfg.env = vec![("GREETING".into(), "hi there".into())];
    let resp = run(cfg, &request("/run", "")).unwrap();
    let env = body_text(&resp);
    let names: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
    assert!(names.contains(&"GATEWAY_INTERFACE"), "{env}");
    assert!(env.lines().any(|l| l == "GREETING=hi there"), "{env}");
    assert!(!names.iter().any(|n| n.starts_with("CARGO")), "{env}");
}

#[test]
fn proxy_header_never_sets_http_proxy() {
    let mut req = request("/run", "");
    req.headers.insert(
        "proxy",
        HeaderValue::from_static("http://evil.example:3128"),
    );
    let resp = run(sh(r#"echo "${HTTP_PROXY-unset}""#), &req).unwrap();
    assert_eq!(body_text(&resp), "unset\n");
}

#[test]
fn cwd_is_used() {
    let mut cfg = config(&["pwd"]);
    let dir = std::fs::canonicalize(std::env::temp_dir()).unwrap();
    cfg.cwd = Some(dir.clone());
    let resp = run(cfg, &request("/run", "")).unwrap();
    assert_eq!(body_text(&resp).trim_end(), dir.to_str().unwrap());
}

#[test]
fn non_zero_exit_is_bad_gateway() {
    let reason = bad_gateway(run(sh("echo partial; exit 3"), &request("/run", "")));
    assert_eq!(reason, "program exited with status 3");
}

#[test]
fn death_by_signal_is_bad_gateway() {
    let reason = bad_gateway(run(sh("kill -9 $$"), &request("/run", "")));
    assert_eq!(reason, "program killed by signal SIGKILL");
}

#[test]
fn missing_program_is_bad_gateway() {
    let reason = bad_gateway(run(
        config(&["/nonexistent/fiddler-no-such-program"]),
        &request("/run", ""),
    ));
    // The client is not shown the server's paths; the log has them.
    assert_eq!(reason, "cannot start the program");
}

#[test]
fn timeout_kills_the_whole_group() {
    let pidfile = temp_path("timeout");
    let mut cfg = sh(&format!(
        "sleep 100 & echo $! > {}; sleep 100",
        pidfile.display()
    ));
    cfg.timeout = Duration::from_millis(1500);
    cfg.kill_grace = Duration::from_millis(300);
    let started = Instant::now();
    let result = run(cfg, &request("/run", ""));
    assert!(started.elapsed() < HANG);
    assert_eq!(
        result.unwrap_err(),
        HandlerError::Timeout("ran past timeout_ms (1500 ms) and was killed".into())
    );
    assert!(dies(read_pid(&pidfile)), "the grandchild survived");
}

#[test]
fn timeout_escalates_to_sigkill_when_sigterm_is_ignored() {
    let pidfile = temp_path("stubborn");
    // An ignored signal stays ignored across fork and exec: the grandchild ignores it too.
    let mut cfg = sh(&format!(
        "trap '' TERM; sleep 100 & echo $! > {}; wait",
        pidfile.display()
    ));
    cfg.timeout = Duration::from_millis(1500);
    cfg.kill_grace = Duration::from_millis(200);
    let started = Instant::now();
    let result = run(cfg, &request("/run", ""));
    assert!(started.elapsed() < HANG);
    assert!(
        matches!(result, Err(HandlerError::Timeout(_))),
        "{result:?}"
    );
    assert!(dies(read_pid(&pidfile)), "the grandchild survived");
}

#[test]
fn background_grandchild_holding_stdout_neither_hangs_nor_survives() {
    let pidfile = temp_path("straggler");
    let cfg = sh(&format!(
        "sleep 100 & echo $! > {}; echo done",
        pidfile.display()
    ));
    let started = Instant::now();
    let resp = run(cfg, &request("/run", "")).unwrap();
    assert!(started.elapsed() < HANG);
    assert_eq!(body_text(&resp), "done\n");
    assert!(dies(read_pid(&pidfile)), "the grandchild survived");
}

#[test]
fn output_past_the_cap_kills_the_program() {
    let mut cfg = config(&["yes"]);
    cfg.max_output_bytes = 1000;
    let reason = bad_gateway(run(cfg, &request("/run", "")));
    assert_eq!(reason, "output exceeded max_output_bytes (1000)");
}

#[test]
fn output_exactly_at_the_cap_is_fine() {
    let mut cfg = config(&["printf", "12345"]);
    cfg.max_output_bytes = 5;
    let resp = run(cfg, &request("/run", "")).unwrap();
    assert_eq!(body_text(&resp), "12345");
}

#[test]
fn cgi_status_content_type_and_headers() {
    let mut cfg = sh(
        r"printf 'Status: 404 Not Found\r\nContent-Type: text/html\r\nX-Extra: yes\r\nConnection: close\r\n\r\n<p>no</p>'",
    );
    cfg.output = ExecOutput::Cgi;
    let resp = run(cfg, &request("/run", "")).unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(resp.headers()[CONTENT_TYPE], "text/html");
    assert_eq!(resp.headers()["x-extra"], "yes");
    assert!(!resp.headers().contains_key("connection"));
    assert_eq!(body_text(&resp), "<p>no</p>");
}

#[test]
fn cgi_location_redirects_and_content_type_defaults() {
    let mut cfg = sh(r"printf 'Location: /elsewhere\n\n'");
    cfg.output = ExecOutput::Cgi;
    let resp = run(cfg, &request("/run", "")).unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert_eq!(resp.headers()[LOCATION], "/elsewhere");
    assert_eq!(resp.headers()[CONTENT_TYPE], "text/plain; charset=utf-8");
}

#[test]
fn malformed_cgi_output_is_bad_gateway() {
    let mut cfg = sh("echo just a body");
    cfg.output = ExecOutput::Cgi;
    let reason = bad_gateway(run(cfg, &request("/run", "")));
    assert!(reason.starts_with("malformed CGI response: "), "{reason}");
}

#[test]
fn stderr_is_captured_and_bounded_without_blocking_the_child() {
    let script = "echo oops >&2; head -c 200000 /dev/zero | tr '\\0' e >&2; exit 1";
    let cfg = sh(script);
    let registry = Arc::new(Registry::new());
    let env = env::child_env("/run", &cfg, &request("/run", ""));
    let out = child::run(&cfg, env, Bytes::new(), &registry, &Default::default());
    assert!(
        matches!(out.result, Err(Failure::Exit(1))),
        "{:?}",
        out.result
    );
    assert!(out.stderr.starts_with("oops\neee"), "{}", out.stderr);
    assert!(out.stderr.len() < child::STDERR_KEEP + 100);
    assert!(out.stderr.ends_with("more bytes)"), "{}", out.stderr);
}

#[test]
fn live_counts_running_children_and_returns_to_zero() {
    let gate = temp_path("gate");
    let _ = std::fs::remove_file(&gate);
    // Runs until the test opens the gate.
    let script = format!("while [ ! -e {0} ]; do sleep 0.02; done", gate.display());
    let (h, registry) = handler(sh(&script));
    let worker = std::thread::spawn(move || h.handle(&request("/run", "")));
    let until = Instant::now() + HANG;
    while registry.live() == 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(registry.live(), 1);
    std::fs::write(&gate, "").unwrap();
    let result = worker.join().unwrap();
    let _ = std::fs::remove_file(&gate);
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(registry.live(), 0);
}

#[test]
fn a_run_killed_at_shutdown_is_unavailable() {
    let (h, registry) = handler(sh("sleep 100"));
    let h = std::sync::Arc::new(h);
    let h2 = h.clone();
    let worker = std::thread::spawn(move || h2.handle(&request("/run", "")));
    let until = Instant::now() + HANG;
    while registry.live() == 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    registry.begin_shutdown();
    registry.kill_all();
    let result = worker.join().unwrap();
    assert_eq!(
        result.unwrap_err(),
        HandlerError::Unavailable("server shutting down".into())
    );
    // A run starting after kill_all is killed as soon as it registers.
    let result = h.handle(&request("/run", ""));
    assert!(
        matches!(result, Err(HandlerError::Unavailable(_))),
        "{result:?}"
    );
    assert_eq!(registry.live(), 0);
}

#[test]
fn absurd_timeout_does_not_overflow_the_clock() {
    let mut cfg = config(&["true"]);
    cfg.timeout = Duration::MAX;
    cfg.kill_grace = Duration::MAX;
    assert!(run(cfg, &request("/run", "")).is_ok());
}
