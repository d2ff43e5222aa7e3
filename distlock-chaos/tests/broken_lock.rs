//! The harness's own test: a run whose workers use a deliberately broken lock fails, through
//! the real workers, history, registers and checker, and names what broke. (The checker's
//! unit tests feed it histories made by hand; this one feeds it a real run's.)

use std::process::Command;

#[test]
fn a_run_with_a_lock_that_grants_twice_fails() {
    let out = tempfile::tempdir().expect("a temporary directory");
    let status = Command::new(env!("CARGO_BIN_EXE_distlock-chaos"))
        .args(["--scenario", "file.pause", "--duration", "6s", "--interval", "1s..2s"])
        .args(["--broken", "double-grant", "--seed", "7", "--out"])
        .arg(out.path())
        .status()
        .expect("run distlock-chaos");
    assert_eq!(status.code(), Some(1), "a run whose lock grants twice must end with violations");
    let report = std::fs::read_to_string(out.path().join("RESULTS.md")).expect("RESULTS.md");
    assert!(report.contains("overlapping definite holds"), "no overlap reported:\n{report}");
    assert!(report.contains("duplicated"), "no repeated token reported:\n{report}");
}
