//! The README's configuration example runs as printed: it passes `check` and serves, from the
//! repository, what its comments say.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use hyper::StatusCode;
use std::process::Command;
use support::binary::Binary;
use support::{request, Client, TempDir};

/// The first TOML block of the README's "Configuration" section.
fn readme_config() -> String {
    let readme = include_str!("../README.md");
    let section = &readme[readme
        .find("## Configuration")
        .expect("a Configuration section")..];
    let start = section.find("```toml\n").expect("a TOML block") + "```toml\n".len();
    let len = section[start..]
        .find("```\n")
        .expect("the end of the block");
    section[start..start + len].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_config_example_passes_check_and_serves_as_printed() {
    let dir = TempDir::new("readme");
    let file = dir.write("readme.toml", &readme_config());
    let file = file.to_str().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");

    let out = Command::new(env!("CARGO_BIN_EXE_fiddler_crab"))
        .args(["check", "--config", file])
        .current_dir(root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    let mut binary = Binary::start_with(&["--config", file, "--listen", "127.0.0.1:0"], |c| {
        c.current_dir(root);
    });
    let client = Client {
        addr: binary.wait_serving().await,
    };
    assert_eq!(client.get("/ping").await.text(), "pong\n");
    assert_eq!(
        client.send(request("HEAD", "/ping", "")).await.status,
        StatusCode::OK
    );
    let counts: serde_json::Value =
        serde_json::from_slice(&client.post("/wordcount", "hello crab world\n").await.body)
            .unwrap();
    assert_eq!(
        counts,
        serde_json::json!({"lines": 1, "words": 3, "bytes": 17, "method": "POST"})
    );
    assert_eq!(client.post("/upper", "crab").await.text(), "CRAB");
    assert!(binary.stop().await.success());
}
