//! Config errors name the file, the key and the problem, from `Config::from_toml` and from the
//! binary's `check`; the embedded default and the reference config are valid.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use fiddler_crab::config::{Config, ConfigError};
use fiddler_crab::{check, default_config, HandlerRegistry};
use std::process::{Command, Output};
use support::TempDir;

/// The error `text` gets, from parsing or from the builtin check.
fn error_of(text: &str) -> ConfigError {
    let parsed = Config::from_toml(text, "test.toml");
    let checked = parsed.and_then(|c| check(&c, &HandlerRegistry::default(), "test.toml"));
    match checked {
        Ok(()) => panic!("this config was accepted:\n{text}"),
        Err(e) => e,
    }
}

/// Assert the error names `key` in test.toml and its problem mentions every one of `words`.
fn assert_error(text: &str, key: &str, words: &[&str]) {
    let e = error_of(text);
    assert_eq!(e.file, "test.toml", "{e}");
    assert_eq!(e.key, key, "{e}");
    for word in words {
        assert!(e.problem.contains(word), "{e:?} does not mention {word:?}");
    }
    assert_eq!(e.to_string(), format!("test.toml: {key}: {}", e.problem));
}

const PING: &str = "[[endpoint]]\npath = \"/ping\"\nbuiltin = \"ping\"\n";

#[test]
fn an_unknown_key_is_named_with_its_table() {
    assert_error(
        &format!("{PING}queu = 3\n"),
        "endpoint[0].queu",
        &["unknown field", "queu"],
    );
    assert_error(
        &format!("[server]\nlisten_on = \"x\"\n\n{PING}"),
        "server.listen_on",
        &["unknown field"],
    );
}

#[test]
fn a_value_of_the_wrong_type_is_named() {
    assert_error(
        &format!("{PING}queue = \"many\"\n"),
        "endpoint[0].queue",
        &["invalid type"],
    );
    let second_exec = format!(
        "{PING}\n[[endpoint]]\npath = \"/run\"\n[endpoint.exec]\ncommand = [\"true\"]\ntimeout_ms = \"soon\"\n"
    );
    assert_error(
        &second_exec,
        "endpoint[1].exec.timeout_ms",
        &["invalid type"],
    );
    assert_error(
        &format!("{PING}overflow = \"drop\"\n"),
        "endpoint[0].overflow",
        &["unknown variant"],
    );
}

#[test]
fn an_endpoint_needs_exactly_one_handler() {
    assert_error(
        "[[endpoint]]\npath = \"/none\"\n",
        "endpoint[0]",
        &["builtin", "exec"],
    );
    assert_error(
        "[[endpoint]]\npath = \"/both\"\nbuiltin = \"ping\"\n[endpoint.exec]\ncommand = [\"true\"]\n",
        "endpoint[0]",
        &["both"],
    );
    assert_error(
        &format!("{PING}\n[[endpoint]]\npath = \"/run\"\n[endpoint.exec]\ncommand = []\n"),
        "endpoint[1].exec.command",
        &["program"],
    );
}

#[test]
fn a_bad_or_duplicate_path_is_refused() {
    assert_error(
        "[[endpoint]]\npath = \"ping\"\nbuiltin = \"ping\"\n",
        "endpoint[0].path",
        &["`ping`", "/"],
    );
    assert_error(
        "[[endpoint]]\npath = \"/a b\"\nbuiltin = \"ping\"\n",
        "endpoint[0].path",
        &["spaces"],
    );
    assert_error(
        &format!("{PING}\n[[endpoint]]\npath = \"/ping\"\nbuiltin = \"echo\"\n"),
        "endpoint[1].path",
        &["/ping", "already used"],
    );
    assert_error(
        "[[endpoint]]\npath = \"/status\"\nbuiltin = \"ping\"\n",
        "endpoint[0].path",
        &["server itself"],
    );
}

#[test]
fn zero_and_out_of_range_numbers_are_refused() {
    assert_error(
        &format!("{PING}queue = 0\n"),
        "endpoint[0].queue",
        &["at least 1"],
    );
    assert_error(
        &format!("{PING}queue_timeout_ms = 0\n"),
        "endpoint[0].queue_timeout_ms",
        &["at least 1"],
    );
    assert_error(
        &format!("[server]\nmax_connections = 0\n\n{PING}"),
        "server.max_connections",
        &["at least 1"],
    );
    assert_error(
        &format!("[server]\nlisten = \"localhost\"\n\n{PING}"),
        "server.listen",
        &["localhost"],
    );
    assert_error(
        &format!("{PING}methods = [\"G T\"]\n"),
        "endpoint[0].methods",
        &["G T"],
    );
}

#[test]
fn a_key_of_another_mode_is_refused_with_its_path() {
    let jellyfish = "[[endpoint]]\npath = \"/ping\"\nmode = \"jellyfish\"\nbuiltin = \"ping\"\n";
    assert_error(
        &format!("{PING}\n{}pace_ms = 5\n", jellyfish.replace("/ping", "/j")),
        "endpoint[1].pace_ms",
        &["not used by mode \"jellyfish\" (crab and adaptive only)"],
    );
    assert_error(
        &format!("{PING}workers = 2\n"),
        "endpoint[0].workers",
        &["not used by mode \"crab\" (jellyfish and adaptive only)"],
    );
    assert_error(
        &format!("{jellyfish}yellow_workers = 1\n"),
        "endpoint[0].yellow_workers",
        &["not used by mode \"jellyfish\" (adaptive only)"],
    );
    // The server's default mode is the endpoint's mode when it names none.
    assert_error(
        &format!("[server]\ndefault_mode = \"jellyfish\"\n\n{PING}pace_ms = 5\n"),
        "endpoint[0].pace_ms",
        &["not used by mode \"jellyfish\""],
    );
    // Every key of its own mode is accepted.
    let adaptive = "[[endpoint]]\npath = \"/a\"\nmode = \"adaptive\"\nworkers = 2\nyellow_workers = 1\npace_ms = 5\nbuiltin = \"ping\"\n";
    Config::from_toml(adaptive, "test.toml").expect("adaptive reads all three");
}

#[test]
fn an_unknown_builtin_is_named_with_the_known_ones() {
    assert_error(
        "[[endpoint]]\npath = \"/x\"\nbuiltin = \"pong\"\n",
        "endpoint[0].builtin",
        &["pong", "echo", "ping"],
    );
}

#[test]
fn a_config_without_endpoints_is_refused() {
    assert_error("[server]\n", "endpoint", &["at least one"]);
}

#[test]
fn the_embedded_default_is_valid_and_serves_the_examples() {
    let config = default_config().expect("the embedded default parses");
    check(&config, &HandlerRegistry::default(), "<embedded default>").expect("its builtins exist");
    let paths: Vec<&str> = config.paths().collect();
    assert_eq!(paths, ["/ping", "/echo", "/wordcount"]);
}

fn fiddler_crab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fiddler_crab"))
        .args(args)
        .output()
        .expect("run the fiddler_crab binary")
}

#[test]
fn check_accepts_a_valid_file_and_exits_0() {
    let dir = TempDir::new("check-ok");
    let file = dir.write("good.toml", PING);
    let out = fiddler_crab(&["check", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("ok: "), "{stdout}");
    assert!(stdout.contains("/ping"), "{stdout}");
}

#[test]
fn check_names_file_key_and_problem_and_exits_2() {
    let dir = TempDir::new("check-bad");
    let cases = [
        (
            format!("{PING}queue = 0\n"),
            "endpoint[0].queue",
            "at least 1",
        ),
        (
            "[[endpoint]]\npath = \"/x\"\nbuiltin = \"nope\"\n".to_string(),
            "endpoint[0].builtin",
            "no builtin handler `nope`",
        ),
        (
            format!("{PING}pase_ms = 5\n"),
            "endpoint[0].pase_ms",
            "unknown field",
        ),
        (
            format!("{PING}mode = \"jellyfish\"\npace_ms = 5\n"),
            "endpoint[0].pace_ms",
            "not used by mode \"jellyfish\" (crab and adaptive only)",
        ),
    ];
    for (i, (text, key, problem)) in cases.iter().enumerate() {
        let file = dir.write(&format!("bad{i}.toml"), text);
        let file = file.to_str().unwrap();
        let out = fiddler_crab(&["check", "--config", file]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let expected = format!("error: {file}: {key}: ");
        assert!(
            stderr.starts_with(&expected),
            "{stderr:?} should start with {expected:?}"
        );
        assert!(
            stderr.contains(problem),
            "{stderr:?} should mention {problem:?}"
        );
    }

    let missing = dir.path().join("missing.toml");
    let out = fiddler_crab(&["check", "--config", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn the_printed_default_config_the_reference_and_the_llama_example_pass_check() {
    let out = fiddler_crab(&["default-config"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let dir = TempDir::new("default-config");
    let printed = dir.write("default.toml", &String::from_utf8_lossy(&out.stdout));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("@WORDCOUNT_PY@"));

    let reference = concat!(env!("CARGO_MANIFEST_DIR"), "/config/reference.toml");
    let llama = concat!(env!("CARGO_MANIFEST_DIR"), "/config/llama.toml");
    for file in [printed.to_str().unwrap(), reference, llama] {
        let out = fiddler_crab(&["check", "--config", file]);
        assert_eq!(out.status.code(), Some(0), "{file}: {out:?}");
    }
    let out = fiddler_crab(&["check"]);
    assert_eq!(out.status.code(), Some(0), "the embedded default: {out:?}");
}

/// Every numeric key with its accepted range, and the TOML that sets it to `{}`.
const NUMERIC_KEYS: &[(&str, u64, u64, &str)] = &[
    ("server.max_connections", 1, 1_048_576, "[server]\nmax_connections = {}\n"),
    ("server.listen_backlog", 1, 65_535, "[server]\nlisten_backlog = {}\n"),
    ("server.header_read_timeout_ms", 1, 3_600_000, "[server]\nheader_read_timeout_ms = {}\n"),
    ("server.idle_timeout_ms", 1, 86_400_000, "[server]\nidle_timeout_ms = {}\n"),
    ("server.body_read_timeout_ms", 1, 3_600_000, "[server]\nbody_read_timeout_ms = {}\n"),
    ("server.shutdown_grace_ms", 0, 3_600_000, "[server]\nshutdown_grace_ms = {}\n"),
    ("server.overflow_hold_ms", 0, 60_000, "[server]\noverflow_hold_ms = {}\n"),
    ("server.max_header_bytes", 8192, 1_048_576, "[server]\nmax_header_bytes = {}\n"),
    ("server.io_buffer_bytes", 8192, 16_777_216, "[server]\nmax_header_bytes = 8192\nio_buffer_bytes = {}\n"),
    ("server.max_requests_per_connection", 1, 1_000_000, "[server]\nmax_requests_per_connection = {}\n"),
    ("server.max_h2_streams", 1, 4096, "[server]\nmax_h2_streams = {}\n"),
    ("server.max_unsent_bytes", 65_536, 64 << 30, "[server]\nmax_unsent_bytes = {}\n"),
    ("server.max_unsent_bytes_per_connection", 65_536, 64 << 30, "[server]\nmax_unsent_bytes_per_connection = {}\n"),
    ("server.tls.handshake_timeout_ms", 1, 600_000, "[server.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nhandshake_timeout_ms = {}\n"),
    ("server.tls.hsts_max_age_s", 0, 63_072_000, "[server.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nhsts_max_age_s = {}\n"),
    ("light.sample_ms", 1, 60_000, "[light]\nsample_ms = {}\n"),
    ("light.stale_after_ms", 1, 3_600_000, "[light]\nstale_after_ms = {}\n"),
    ("light.min_dwell_ms", 0, 3_600_000, "[light]\nmin_dwell_ms = {}\n"),
    ("endpoint[0].queue", 1, 1_000_000, "[[endpoint]]\npath = \"/p\"\nbuiltin = \"ping\"\nqueue = {}\n"),
    ("endpoint[0].queue_timeout_ms", 1, 86_400_000, "[[endpoint]]\npath = \"/p\"\nbuiltin = \"ping\"\nqueue_timeout_ms = {}\n"),
    ("endpoint[0].pace_ms", 0, 3_600_000, "[[endpoint]]\npath = \"/p\"\nbuiltin = \"ping\"\npace_ms = {}\n"),
    ("endpoint[0].workers", 1, 1024, "[[endpoint]]\npath = \"/p\"\nbuiltin = \"ping\"\nmode = \"jellyfish\"\nworkers = {}\n"),
    ("endpoint[0].yellow_workers", 1, 1024, "[[endpoint]]\npath = \"/p\"\nbuiltin = \"ping\"\nmode = \"adaptive\"\nyellow_workers = {}\n"),
    ("endpoint[0].max_body_bytes", 0, 1 << 30, "[[endpoint]]\npath = \"/p\"\nbuiltin = \"ping\"\nmax_body_bytes = {}\n"),
    ("endpoint[0].exec.timeout_ms", 1, 86_400_000, "[[endpoint]]\npath = \"/p\"\n[endpoint.exec]\ncommand = [\"true\"]\ntimeout_ms = {}\n"),
    ("endpoint[0].exec.kill_grace_ms", 0, 600_000, "[[endpoint]]\npath = \"/p\"\n[endpoint.exec]\ncommand = [\"true\"]\nkill_grace_ms = {}\n"),
    ("endpoint[0].exec.max_output_bytes", 1, 1 << 30, "[[endpoint]]\npath = \"/p\"\n[endpoint.exec]\ncommand = [\"true\"]\nmax_output_bytes = {}\n"),
];

/// `template` with `value`, plus an endpoint when the template sets none.
fn with_value(template: &str, value: u64) -> String {
    let text = template.replace("{}", &value.to_string());
    if text.contains("[[endpoint]]") {
        text
    } else {
        format!("{text}\n{PING}")
    }
}

#[test]
fn every_numeric_key_is_refused_above_its_maximum_and_below_its_minimum_naming_the_key() {
    for &(key, min, max, template) in NUMERIC_KEYS {
        for value in [min, max] {
            let text = with_value(template, value);
            let parsed = Config::from_toml(&text, "test.toml");
            assert!(parsed.is_ok(), "{key} = {value} is in range: {parsed:?}");
        }
        let above = with_value(template, max + 1);
        assert_error(
            &above,
            key,
            &[&format!("{} is out of range ({min} to {max})", max + 1)],
        );
        if min > 0 {
            assert_error(
                &with_value(template, min - 1),
                key,
                &["out of range", &format!("at least {min}")],
            );
        }
    }
}

#[test]
fn a_bad_value_is_quoted_by_a_short_prefix_and_paths_have_a_length_cap() {
    let long = "x".repeat(100_000);
    let e = error_of(&format!("[server]\nlisten = \"{long}\"\n\n{PING}"));
    assert_eq!(e.key, "server.listen");
    assert!(e.to_string().len() < 200, "{e}");
    let e = error_of(&format!("[server]\nlisten = [\"{long}\"]\n\n{PING}"));
    assert!(e.to_string().len() < 400, "{e}");
    assert_error(
        &format!("[[endpoint]]\npath = \"/{long}\"\nbuiltin = \"ping\"\n"),
        "endpoint[0].path",
        &["at most 1024"],
    );
    assert_error(
        &format!("[[endpoint]]\npath = \"/p\"\n[endpoint.exec]\ncommand = [\"true\"]\ncwd = \"/{long}\"\n"),
        "endpoint[0].exec.cwd",
        &["at most 4096"],
    );
    assert_error(
        &format!("[[endpoint]]\npath = \"/p\"\n[endpoint.exec]\ncommand = [\"/{long}\"]\n"),
        "endpoint[0].exec.command",
        &["at most 4096"],
    );
    assert_error(
        &format!("[[endpoint]]\npath = \"/p\"\nbuiltin = \"{long}\"\n"),
        "endpoint[0].builtin",
        &["no builtin handler"],
    );
    assert!(
        error_of(&format!(
            "[[endpoint]]\npath = \"/p\"\nbuiltin = \"{long}\"\n"
        ))
        .to_string()
        .len()
            < 200
    );
}

#[test]
fn check_refuses_a_huge_max_connections_instead_of_panicking_at_start() {
    let dir = TempDir::new("check-huge");
    let text = format!("[server]\nmax_connections = 4611686018427387904\n\n{PING}");
    let file = dir.write("huge.toml", &text);
    let file = file.to_str().unwrap();
    let expected = format!(
        "error: {file}: server.max_connections: 4611686018427387904 is out of range (1 to 1048576)"
    );
    for args in [
        &["check", "--config", file][..],
        &["--config", file, "--listen", "127.0.0.1:0"],
    ] {
        let out = fiddler_crab(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&expected), "{stderr}");
    }
}

#[test]
fn check_of_an_endless_file_ends_in_a_clear_error() {
    let out = fiddler_crab(&["check", "--config", "/dev/zero"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: /dev/zero: (file): the file is larger than 1048576 bytes"),
        "{stderr}"
    );
}

/// A file under the tls fixtures (test material only).
fn tls_fixture(name: &str) -> String {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crates/frontend/src/tls/fixtures/"
    )
    .to_string()
        + name
}

#[test]
fn check_finds_missing_programs_scripts_directories_and_tls_files() {
    let dir = TempDir::new("check-files");
    let script = dir.write("here.py", "print('hi')\n");
    let text = format!(
        r#"
[server.tls]
cert = "{cert}"
key = "{key}"

[[endpoint]]
path = "/fine"
[endpoint.exec]
command = ["sh", "{script}", "--flag", "plain words / not a file"]

[[endpoint]]
path = "/no-program"
[endpoint.exec]
command = ["fiddler-crab-no-such-program"]

[[endpoint]]
path = "/no-script"
[endpoint.exec]
command = ["python3", "/srv/x.py"]

[[endpoint]]
path = "/no-cwd"
[endpoint.exec]
command = ["sh", "run.sh"]
cwd = "/nonexistent/fiddler-crab-dir"

[[endpoint]]
path = "/relative"
[endpoint.exec]
command = ["sh", "here.py", "missing.sh"]
cwd = "{dir}"
"#,
        cert = tls_fixture("a.pem"),
        key = tls_fixture("b.key"),
        script = script.display(),
        dir = dir.path().display(),
    );
    let file = dir.write("t.toml", &text);
    let file = file.to_str().unwrap();
    let out = fiddler_crab(&["check", "--config", file]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        format!("{file}: endpoint[1].exec.command[0]: fiddler-crab-no-such-program is not found on PATH"),
        format!("{file}: endpoint[2].exec.command[1]: /srv/x.py does not exist"),
        format!("{file}: endpoint[3].exec.cwd: /nonexistent/fiddler-crab-dir does not exist"),
        format!("{file}: endpoint[4].exec.command[2]: missing.sh does not exist"),
        format!("{file}: server.tls: "),
    ] {
        assert!(stderr.contains(&expected), "{expected:?} not in:\n{stderr}");
    }
    assert!(!stderr.contains("endpoint[0]"), "{stderr}");
    assert!(!stderr.contains("endpoint[4].exec.command[1]"), "{stderr}");
    assert_eq!(stderr.matches(&format!("{file}: ")).count(), 5, "{stderr}");

    // The server's start runs the same check, and refuses to start.
    let out = fiddler_crab(&["--config", file, "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("/srv/x.py does not exist"));
}

#[test]
fn check_finds_worker_socket_directories_that_cannot_be_written_or_created() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("check-sockets");
    let file_not_dir = dir.write("plain-file", "not a directory\n");
    let read_only = dir.path().join("read-only");
    std::fs::create_dir(&read_only).unwrap();
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o500)).unwrap();
    // Root writes through mode bits: expect a problem there only when this test cannot write.
    let read_only_refuses = std::fs::create_dir(read_only.join("probe")).is_err();
    let creatable = dir.path().join("new/deeper");
    let text: String = [
        String::new(),
        format!("socket_dir = \"{}\"", creatable.display()),
        format!("socket_dir = \"{}\"", file_not_dir.display()),
        format!("socket_dir = \"{}/sub\"", file_not_dir.display()),
        "socket_dir = \"/proc/fiddler-crab-sockets\"".to_string(),
        format!("socket_dir = \"{}/sub\"", read_only.display()),
    ]
    .iter()
    .enumerate()
    .map(|(i, socket_dir)| {
        format!("[[endpoint]]\npath = \"/w{i}\"\n[endpoint.worker]\ncommand = [\"true\"]\n{socket_dir}\n")
    })
    .collect();
    let file = dir.write("t.toml", &text);
    let file = file.to_str().unwrap();
    let out = fiddler_crab(&["check", "--config", file]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let key = |i: usize| format!("{file}: endpoint[{i}].worker.socket_dir: ");
    for expected in [
        format!("{}{} is not a directory", key(2), file_not_dir.display()),
        format!("{}{} is not a directory", key(3), file_not_dir.display()),
        format!(
            "{}/proc/fiddler-crab-sockets cannot be created in /proc: ",
            key(4)
        ),
    ] {
        assert!(stderr.contains(&expected), "{expected:?} not in:\n{stderr}");
    }
    if read_only_refuses {
        let expected = format!("{}{}/sub cannot be created in", key(5), read_only.display());
        assert!(stderr.contains(&expected), "{expected:?} not in:\n{stderr}");
    }
    for fine in [0, 1] {
        assert!(!stderr.contains(&key(fine)), "{stderr}");
    }
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(!creatable.exists(), "check creates nothing");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        3,
        "no probe left behind"
    );
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn io_buffers_smaller_than_the_largest_head_are_refused() {
    assert_error(
        "[server]\nmax_header_bytes = 32768\nio_buffer_bytes = 16384\n",
        "server.io_buffer_bytes",
        &["16384", "less than max_header_bytes (32768)"],
    );
}
