//! The `fiddler_worker` helper's own test suite (`python/tests`, stdlib `unittest`), run by
//! `cargo test` so the README's one test command covers it. It runs under the repository's venv
//! (`.venv`, made by `scripts/venv.sh`, which `.ci/run` calls) so the scikit-learn example is
//! tested too; without the venv it fails and says how to make one.

use std::path::Path;
use std::process::Command;

#[test]
fn the_python_helper_suite_passes_under_the_venv() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python3");
    assert!(
        python.exists(),
        "{} is missing: run `bash scripts/venv.sh` (or `.ci/run`) first",
        python.display()
    );
    let out = Command::new(&python)
        .args([
            "-m",
            "unittest",
            "discover",
            "-s",
            "python/tests",
            "-t",
            "python",
        ])
        .current_dir(root)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python tests failed:\n{stderr}");
    // Every test ran: none was skipped for a missing package (the iris tests need scikit-learn).
    let summary = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("OK") || l.starts_with("FAILED"));
    assert!(
        summary.is_some_and(|s| !s.contains("skipped")),
        "some python tests were skipped:\n{stderr}"
    );
}
