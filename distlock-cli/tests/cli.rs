//! The real `distlock` binary against the file backend and a real redis-server.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use conformance_tests::fixtures::redis::RedisServer;

fn distlock(backend: &str) -> Command {
    let mut c = Command::cargo_bin("distlock").expect("binary");
    c.env("DISTLOCK_URL", backend).env_remove("DISTLOCK_DIR");
    c
}

fn file_backend() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}?sync=false", dir.path().display());
    (dir, url)
}

fn json(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(out)))
}

#[test]
fn run_passes_the_token_and_exits_with_the_commands_status() {
    let (_d, url) = file_backend();
    let out = distlock(&url)
        .args([
            "run",
            "--lock",
            "job",
            "--",
            "sh",
            "-c",
            "echo \"$DISTLOCK_LOCK $DISTLOCK_FENCING_TOKEN\"; exit 7",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "job 1");
    let out = distlock(&url)
        .args(["run", "--lock", "job", "--", "sh", "-c", "echo $DISTLOCK_FENCING_TOKEN"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2", "the next holder gets the next token");
}

#[test]
fn run_with_json_reports_events_on_stderr_and_leaves_stdout_to_the_command() {
    let (_d, url) = file_backend();
    let out = distlock(&url)
        .args(["--json", "run", "--lock", "json-job", "--", "sh", "-c", "echo command-output; exit 3"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "command-output");
    let events: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stderr).lines().map(|l| json(l.as_bytes())).collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["event"], "acquired");
    assert_eq!(events[0]["key"], "json-job");
    assert_eq!(events[0]["fencing_token"], 1);
    assert_eq!(events[0]["backend"], "file");
    assert_eq!(events[1]["event"], "finished");
    assert_eq!(events[1]["exit_code"], 3);
    assert_eq!(events[1]["command_status"], 3);
    assert_eq!(events[1]["lost"], serde_json::Value::Null);
    assert_eq!(events[1]["released"], true);
}

/// `run --json` keeps stdout for the command on its error paths too: a lock it could not take,
/// a command it could not start and a bad backend URL are JSON event lines on stderr.
#[test]
fn run_with_json_reports_its_errors_on_stderr() {
    let (_d, url) = file_backend();
    let held = distlock(&url).args(["acquire", "--lock", "busy", "--ttl", "60s"]).output().expect("acquire");
    assert!(held.status.success(), "{}", String::from_utf8_lossy(&held.stderr));
    let events_of = |out: &std::process::Output| -> Vec<serde_json::Value> {
        assert_eq!(String::from_utf8_lossy(&out.stdout), "", "stdout is the command's");
        String::from_utf8_lossy(&out.stderr).lines().map(|l| json(l.as_bytes())).collect()
    };
    let out = distlock(&url).args(["--json", "run", "--lock", "busy", "--", "true"]).output().expect("run");
    assert_eq!(out.status.code(), Some(75));
    let events = events_of(&out);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((&events[0]["event"], &events[0]["kind"]), (&"error".into(), &"wait_timed_out".into()));
    let out = distlock(&url)
        .args(["--json", "run", "--lock", "free", "--", "/nonexistent/command"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(127));
    let events = events_of(&out);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["event"], "acquired");
    assert_eq!((&events[1]["event"], &events[1]["kind"]), (&"error".into(), &"not_found".into()));
    assert_eq!(events[1]["released"], true);
    let out =
        distlock("nosuch://x").args(["--json", "run", "--lock", "a", "--", "true"]).output().expect("run");
    assert_eq!(out.status.code(), Some(64));
    let events = events_of(&out);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "error");
}

#[test]
fn run_never_starts_the_command_without_the_lock() {
    let (d, url) = file_backend();
    let out = distlock(&url)
        .args(["--json", "acquire", "--lock", "job", "--ttl", "60s"])
        .output()
        .expect("acquire");
    assert!(out.status.success());
    let marker = d.path().join("ran");
    let out =
        distlock(&url).args(["run", "--lock", "job", "--", "touch"]).arg(&marker).output().expect("run");
    assert_eq!(out.status.code(), Some(75), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!marker.exists(), "the command ran without the lock");
    assert!(String::from_utf8_lossy(&out.stderr).contains("held by another owner"));
}

#[test]
fn a_waiting_run_goes_after_the_holder() {
    let (_d, url) = file_backend();
    let first = distlock(&url).args(["run", "--lock", "job", "--", "sleep", "1"]).spawn().expect("first");
    std::thread::sleep(Duration::from_millis(400));
    let start = Instant::now();
    let out = distlock(&url)
        .args(["run", "--lock", "job", "--wait", "20s", "--", "sh", "-c", "echo $DISTLOCK_FENCING_TOKEN"])
        .output()
        .expect("second");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
    assert!(start.elapsed() >= Duration::from_millis(300), "the second run did not wait for the first");
    let mut first = first;
    assert!(first.wait().expect("first").success());
}

#[test]
fn acquire_inspect_release_for_operators() {
    let (_d, url) = file_backend();
    let a = json(
        &distlock(&url)
            .args(["--json", "acquire", "--lock", "ops/x", "--ttl", "60s"])
            .output()
            .expect("acquire")
            .stdout,
    );
    let owner = a["owner"].as_str().expect("owner").to_owned();
    assert_eq!(a["fencing_token"], 1);
    let i = json(
        &distlock(&url).args(["--json", "inspect", "--lock", "ops/x"]).output().expect("inspect").stdout,
    );
    assert_eq!(i["held"], true);
    assert_eq!(i["owner"].as_str(), Some(owner.as_str()));
    let wrong = distlock(&url)
        .args(["release", "--lock", "ops/x", "--owner", &"0".repeat(32)])
        .output()
        .expect("release");
    assert_eq!(wrong.status.code(), Some(1), "a stranger's release must report not held");
    let ok = distlock(&url)
        .args(["--json", "release", "--lock", "ops/x", "--owner", &owner])
        .output()
        .expect("release");
    assert!(ok.status.success());
    assert_eq!(json(&ok.stdout)["released"], true);
    let i = json(
        &distlock(&url).args(["--json", "inspect", "--lock", "ops/x"]).output().expect("inspect").stdout,
    );
    assert_eq!(i["held"], false);
}

#[test]
fn run_stops_the_command_when_the_lock_is_lost() {
    let (_d, url) = file_backend();
    let mut run = distlock(&url)
        .args(["run", "--lock", "job", "--ttl", "1s", "--kill-grace", "2s", "--", "sleep", "60"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    let deadline = Instant::now() + Duration::from_secs(20);
    let owner = loop {
        let i = json(
            &distlock(&url).args(["--json", "inspect", "--lock", "job"]).output().expect("inspect").stdout,
        );
        if let Some(o) = i["owner"].as_str() {
            break o.to_owned();
        }
        assert!(Instant::now() < deadline, "run never took the lock");
        std::thread::sleep(Duration::from_millis(50));
    };
    // An operator deletes the grant; the next renewal finds it gone.
    assert!(distlock(&url)
        .args(["release", "--lock", "job", "--owner", &owner])
        .status()
        .expect("release")
        .success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = run.try_wait().expect("wait") {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "the command was not stopped after the loss");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(70));
    let mut err = String::new();
    run.stderr.take().expect("stderr").read_to_string(&mut err).expect("read");
    assert!(err.contains("lost"), "{err}");
}

/// The owner of `run`'s lock on `name`, once `run` holds it.
fn holder_of(url: &str, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let i = json(
            &distlock(url).args(["--json", "inspect", "--lock", name]).output().expect("inspect").stdout,
        );
        if let Some(o) = i["owner"].as_str() {
            return o.to_owned();
        }
        assert!(Instant::now() < deadline, "run never took the lock");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `run`'s exit status, within `limit`.
fn exit_of(run: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = run.try_wait().expect("wait") {
            return s;
        }
        assert!(start.elapsed() < limit, "run did not end within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn run_stops_what_the_command_started_when_the_lock_is_lost() {
    let (d, url) = file_backend();
    let out = d.path().join("out");
    // The shell's background loop is a grandchild of distlock: it must stop with the shell.
    let script = format!("while :; do echo x >> {}; sleep 0.1; done & wait", out.display());
    let mut run = distlock(&url)
        .args(["run", "--lock", "tree", "--ttl", "1s", "--kill-grace", "1s", "--", "sh", "-c", &script])
        .stderr(Stdio::null())
        .spawn()
        .expect("run");
    let owner = holder_of(&url, "tree");
    assert!(distlock(&url)
        .args(["release", "--lock", "tree", "--owner", &owner])
        .status()
        .expect("release")
        .success());
    assert_eq!(exit_of(&mut run, Duration::from_secs(15)).code(), Some(70));
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let before = size(&out);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(size(&out), before, "the command's background loop runs on after the lock was lost");
}

#[test]
fn run_stops_what_the_command_left_running_before_it_releases() {
    let (d, url) = file_backend();
    let pid_file = d.path().join("pid");
    let script = format!("sleep 60 & echo $! > {}; exit 0", pid_file.display());
    let status = distlock(&url)
        .args(["run", "--lock", "left", "--kill-grace", "1s", "--", "sh", "-c", &script])
        .stderr(Stdio::null())
        .status()
        .expect("run");
    assert_eq!(status.code(), Some(0));
    let pid = std::fs::read_to_string(&pid_file).expect("pid file");
    let alive =
        Command::new("kill").args(["-0", pid.trim()]).stderr(Stdio::null()).status().expect("kill -0");
    assert!(!alive.success(), "the command's background sleep outlived the run (and the lock)");
}

/// While `run` stops what the command left running (SIGTERM, then SIGKILL after the kill
/// grace), a signal sent to distlock is forwarded to them: a leftover that ignores SIGTERM
/// goes with the SIGHUP at once, not the grace (20 s) later.
#[test]
fn signals_reach_the_leftovers_during_their_grace() {
    let (d, url) = file_backend();
    let pid_file = d.path().join("pid");
    let script = format!("(trap '' TERM; exec sleep 30) & echo $! > {}; exit 0", pid_file.display());
    let mut run = distlock(&url)
        .args(["run", "--lock", "grace", "--ttl", "60s", "--kill-grace", "20s", "--", "sh", "-c", &script])
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    let mut err = run.stderr.take().expect("stderr");
    let mut seen = String::new();
    let mut byte = [0u8; 1];
    while !seen.contains("left processes running") {
        assert!(err.read(&mut byte).expect("read") == 1, "run ended before stopping the leftovers: {seen}");
        seen.push(byte[0] as char);
    }
    let hup = Instant::now();
    let pid = rustix::process::Pid::from_child(&run);
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).expect("SIGHUP");
    let status = exit_of(&mut run, Duration::from_secs(30));
    let took = hup.elapsed();
    assert!(took < Duration::from_secs(5), "the leftover outlived the SIGHUP for {took:?}");
    assert_eq!(status.code(), Some(0));
    let pid = std::fs::read_to_string(&pid_file).expect("pid file");
    let alive =
        Command::new("kill").args(["-0", pid.trim()]).stderr(Stdio::null()).status().expect("kill -0");
    assert!(!alive.success(), "the leftover outlived the run");
}

/// Standard error's reader goes away while the command runs (a log pipe, a hung-up
/// terminal): distlock's later reports fail to write, and it still stops what the command left
/// running and releases (a report that panicked skipped both and exited 101).
#[test]
fn run_stops_the_leftovers_when_its_standard_error_is_gone() {
    let (d, url) = file_backend();
    let pid_file = d.path().join("pid");
    let script = format!("sleep 60 & echo $! > {}; sleep 1; exit 0", pid_file.display());
    let mut run = distlock(&url)
        .args(["run", "--lock", "left", "--kill-grace", "1s", "--", "sh", "-c", &script])
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    let mut err = run.stderr.take().expect("stderr");
    let mut first = [0u8; 8];
    err.read_exact(&mut first).expect("the first report");
    drop(err);
    let status = exit_of(&mut run, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    let pid = std::fs::read_to_string(&pid_file).expect("pid file");
    let alive =
        Command::new("kill").args(["-0", pid.trim()]).stderr(Stdio::null()).status().expect("kill -0");
    assert!(!alive.success(), "the command's background sleep outlived the run (and the lock)");
    let i =
        json(&distlock(&url).args(["--json", "inspect", "--lock", "left"]).output().expect("inspect").stdout);
    assert_eq!(i["held"], false, "the lock was left behind");
}

#[test]
fn run_reports_a_loss_found_only_at_release() {
    let (_d, url) = file_backend();
    // Renewal every 10 s: the command ends long before a renewal could see the loss.
    let mut run = distlock(&url)
        .args(["run", "--lock", "late", "--ttl", "30s", "--", "sleep", "2"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    holder_of(&url, "late");
    assert!(distlock(&url).args(["force-release", "--lock", "late"]).status().expect("force").success());
    assert_eq!(exit_of(&mut run, Duration::from_secs(15)).code(), Some(70), "a loss was reported as success");
    let mut err = String::new();
    run.stderr.take().expect("stderr").read_to_string(&mut err).expect("read");
    assert!(err.contains("no longer held"), "{err}");
}

#[test]
fn a_signal_while_waiting_for_the_lock_ends_the_wait_cleanly() {
    let (_d, url) = file_backend();
    let out = distlock(&url).args(["acquire", "--lock", "busy", "--ttl", "60s"]).output().expect("acquire");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run: &[&str] = &["run", "--lock", "busy", "--wait", "30s", "--", "true"];
    let acquire: &[&str] = &["acquire", "--lock", "busy", "--wait", "30s"];
    for args in [run, acquire] {
        let mut waiter = distlock(&url).args(args).stderr(Stdio::piped()).spawn().expect("spawn");
        // Waiting (the lock is held for a minute).
        std::thread::sleep(Duration::from_millis(1500));
        assert!(waiter.try_wait().expect("wait").is_none(), "{}: did not wait", args[0]);
        let pid = waiter.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
        let status = exit_of(&mut waiter, Duration::from_secs(10));
        assert_eq!(
            status.code(),
            Some(143),
            "{}: killed by the signal instead of ending its wait: {status:?}",
            args[0]
        );
        let mut err = String::new();
        waiter.stderr.take().expect("stderr").read_to_string(&mut err).expect("read");
        assert!(err.contains("giving up"), "{}: {err}", args[0]);
    }
}

#[test]
fn release_of_several_names_releases_the_others_when_one_fails() {
    let (d, url) = file_backend();
    let out = distlock(&url)
        .args(["--json", "acquire", "--lock", "a", "--lock", "b", "--ttl", "60s"])
        .output()
        .expect("acquire");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let owner = json(&out.stdout)["owner"].as_str().expect("owner").to_owned();
    // Another process holds a's record file (its flock): a's release fails.
    let digest = Command::new("sh").args(["-c", "printf %s a | sha256sum"]).output().expect("sha256sum");
    let file = d.path().join(format!("{}.lock", &String::from_utf8_lossy(&digest.stdout)[..32]));
    assert!(file.exists(), "{} is not a's record file", file.display());
    let mut holder = Command::new("flock")
        .args(["-x", "-o"])
        .arg(&file)
        .args(["sleep", "30"])
        .spawn()
        .expect("flock(1) from util-linux");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Command::new("flock").args(["-n"]).arg(&file).arg("true").status().expect("flock -n").success() {
        assert!(Instant::now() < deadline, "flock(1) never took the file");
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = distlock(&url)
        .args(["release", "--lock", "a", "--lock", "b", "--owner", &owner])
        .output()
        .expect("release");
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(out.status.code(), Some(69), "{}", String::from_utf8_lossy(&out.stderr));
    let i =
        json(&distlock(&url).args(["--json", "inspect", "--lock", "b"]).output().expect("inspect").stdout);
    assert_eq!(i["held"], false, "b was left held because a's release failed first");
    // With --json, one object says what happened to each name.
    let out = distlock(&url)
        .args(["--json", "release", "--lock", "a", "--lock", "b", "--owner", &owner])
        .output()
        .expect("release");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let both = json(&out.stdout);
    assert_eq!(both["released"], false, "{both}");
    assert_eq!(both["keys"][0]["key"], "a", "{both}");
    assert_eq!(both["keys"][0]["released"], true, "a's grant was still there: {both}");
    assert_eq!(both["keys"][1]["released"], false, "{both}");
}

#[test]
fn bad_input_and_unreachable_backends_have_their_exit_codes() {
    let (_d, url) = file_backend();
    let out = distlock(&url).args(["run", "--lock", "", "--", "true"]).output().expect("run");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));
    let out = distlock(&url).args(["acquire", "--lock", "x", "--ttl", "0s"]).output().expect("acquire");
    assert_eq!(out.status.code(), Some(64));
    let out = distlock("redis://u:hunter2@127.0.0.1:99999")
        .args(["inspect", "--lock", "x"])
        .output()
        .expect("inspect");
    assert_eq!(out.status.code(), Some(64));
    let port = conformance_tests::fixtures::free_port().expect("port");
    let out = distlock(&format!("redis://u:hunter2@127.0.0.1:{port}?connect_timeout=1s"))
        .args(["--json", "inspect", "--lock", "x"])
        .output()
        .expect("inspect");
    assert_eq!(out.status.code(), Some(69));
    let v = json(&out.stdout);
    assert_eq!(v["retryable"], true);
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!all.contains("hunter2"), "password echoed: {all}");
    let out = distlock(&url).args(["run", "--lock", "x", "--", "/no/such/program"]).output().expect("run");
    assert_eq!(out.status.code(), Some(127));
}

#[test]
fn metrics_are_served_while_a_command_runs() {
    let (_d, url) = file_backend();
    let port = conformance_tests::fixtures::free_port().expect("port");
    let mut run = distlock(&url)
        .args(["--metrics-addr", &format!("127.0.0.1:{port}"), "run", "--lock", "m", "--", "sleep", "3"])
        .spawn()
        .expect("run");
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut body = String::new();
            let _ = s.read_to_string(&mut body);
            if body.contains("distlock_acquire_total") {
                break body;
            }
        }
        assert!(Instant::now() < deadline, "no metrics served");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(body.contains(r#"backend="file""#) && body.contains(r#"outcome="acquired""#), "{body}");
    assert!(run.wait().expect("wait").success());
}

/// `acquire` on the in-process memory store is refused: the lock would end with the process.
#[test]
fn acquire_refuses_the_memory_store() {
    let out = distlock("mem://").args(["acquire", "--lock", "m"]).output().expect("acquire");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("memory store"), "{err}");
}

/// `list` (like `inspect` and `leader`) whose reader has gone ends by SIGPIPE, as other tools
/// do, not with a panic.
#[test]
fn list_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let (_d, url) = file_backend();
    assert!(distlock(&url).args(["acquire", "--lock", "piped"]).output().expect("acquire").status.success());
    let mut list =
        distlock(&url).args(["list"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("list");
    drop(list.stdout.take());
    let mut err = String::new();
    list.stderr.take().expect("stderr").read_to_string(&mut err).expect("read");
    let status = list.wait().expect("wait");
    assert_eq!(status.signal(), Some(13), "{status:?}: {err}");
}

/// The URL's `ttl=` is the default TTL of `acquire` and `run`; `--ttl` overrides it.
#[test]
fn the_urls_ttl_is_the_default_and_the_flag_overrides_it() {
    let (_d, url) = file_backend();
    let url = format!("{url}&ttl=5m");
    let a =
        json(&distlock(&url).args(["--json", "acquire", "--lock", "t1"]).output().expect("acquire").stdout);
    assert_eq!(a["ttl_ms"], 300_000, "{a}");
    let b = json(
        &distlock(&url)
            .args(["--json", "acquire", "--lock", "t2", "--ttl", "7s"])
            .output()
            .expect("acquire")
            .stdout,
    );
    assert_eq!(b["ttl_ms"], 7_000, "{b}");
}

/// A `run` of a command that ignores SIGTERM and writes a heartbeat (ns since the epoch) every
/// 50 ms, under `lock` with `ttl` (seconds) and a 10 s kill grace; returned once it beats.
struct DeafRun {
    run: std::process::Child,
    beats: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl DeafRun {
    fn start(url: &str, lock: &str, ttl: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let beats = dir.path().join("beats");
        let script = format!("trap '' TERM; while :; do date +%s%N >> {}; sleep 0.05; done", beats.display());
        let run = distlock(url)
            .args(["run", "--lock", lock, "--ttl", ttl, "--kill-grace", "10s", "--", "sh", "-c", &script])
            .stderr(Stdio::piped())
            .spawn()
            .expect("run");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::metadata(&beats).map(|m| m.len()).unwrap_or(0) == 0 {
            assert!(Instant::now() < deadline, "the command never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { run, beats, _dir: dir }
    }

    /// Now, in ns since the epoch (the heartbeats' clock).
    fn now_ns() -> u128 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos()
    }

    /// Waits for `run` to end with 70 (the lock lost); asserts that the command's last
    /// heartbeat came at most 500 ms after `expiry` (ns), and returns `run`'s stderr.
    fn ends_by(mut self, expiry: u128) -> String {
        let status = exit_of(&mut self.run, Duration::from_secs(40));
        assert_eq!(status.code(), Some(70));
        let text = std::fs::read_to_string(&self.beats).expect("beats");
        let last: u128 = text.lines().last().and_then(|l| l.trim().parse().ok()).expect("a heartbeat");
        let late_ms = (last.saturating_sub(expiry)) / 1_000_000;
        assert!(
            last <= expiry + Duration::from_millis(500).as_nanos(),
            "the command ran {late_ms} ms past the lock's expiry"
        );
        let mut err = String::new();
        self.run.stderr.take().expect("stderr").read_to_string(&mut err).expect("read");
        err
    }
}

/// The lock's server stops answering, so renewals fail and the lock runs out; the command
/// ignores SIGTERM (so does everything it starts). It gets SIGTERM ahead of the expiry and
/// SIGKILL at it: its last heartbeat comes before the lock could have expired on the server,
/// not a kill grace (10 s) later, when another holder could have had the lock all along.
#[test]
fn run_kills_a_command_that_ignores_sigterm_by_the_time_its_lock_expires() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut server = rt.block_on(RedisServer::start()).expect("redis-server");
    let run = DeafRun::start(&server.url(), "deaf", "4s");
    let paused_at = DeafRun::now_ns();
    server.process().pause().expect("pause");
    // The last renewal came before the pause: the lock was valid for at most its TTL after it.
    let err = run.ends_by(paused_at + Duration::from_secs(4).as_nanos());
    server.process().resume().expect("resume");
    assert!(err.contains("not renewed"), "{err}");
}

/// A renewal refused for good (the user's permissions revoked: NOPERM) ends the guard while
/// the lock is still valid on the server for up to two thirds of its TTL. The command ignores
/// SIGTERM: it gets SIGKILL when the lock may expire there, not a kill grace (10 s) after the
/// refusal, when another holder could have had the lock for 8 s.
#[test]
fn a_renewal_refused_for_good_kills_the_command_by_the_locks_expiry() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server = rt.block_on(RedisServer::start()).expect("redis-server");
    let port = server.port();
    let acl = ["ACL", "SETUSER", "app", "on", ">app-pw", "~*", "&*", "+@all"];
    rt.block_on(conformance_tests::fixtures::redis::command(port, &acl)).expect("ACL SETUSER");
    let run = DeafRun::start(&format!("redis://app:app-pw@127.0.0.1:{port}"), "revoked", "3s");
    let revoked_at = DeafRun::now_ns();
    rt.block_on(conformance_tests::fixtures::redis::command(port, &["ACL", "SETUSER", "app", "-@all"]))
        .expect("ACL SETUSER -@all");
    // The last renewal came before the revocation: the lock was valid for at most its TTL after it.
    let err = run.ends_by(revoked_at + Duration::from_secs(3).as_nanos());
    assert!(err.contains("lost"), "{err}");
    assert!(!err.contains("app-pw"), "{err}");
    drop(server);
}

#[test]
fn the_command_works_against_a_real_redis_server() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server = rt.block_on(RedisServer::start()).expect("redis-server");
    let url = server.url();
    let out = distlock(&url)
        .args(["run", "--lock", "r", "--", "sh", "-c", "echo $DISTLOCK_FENCING_TOKEN"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("token");
    let a =
        json(&distlock(&url).args(["--json", "acquire", "--lock", "r"]).output().expect("acquire").stdout);
    assert!(a["fencing_token"].as_u64().expect("token") > first);
    let held = distlock(&url).args(["run", "--lock", "r", "--", "true"]).output().expect("run");
    assert_eq!(held.status.code(), Some(75));
    let owner = a["owner"].as_str().expect("owner");
    assert!(distlock(&url)
        .args(["release", "--lock", "r", "--owner", owner])
        .status()
        .expect("release")
        .success());
    drop(server);
}

#[test]
fn the_command_works_against_a_real_etcd() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let etcd = rt.block_on(conformance_tests::fixtures::etcd::EtcdCluster::single()).expect("etcd");
    let host = etcd.endpoints()[0].trim_start_matches("http://").to_owned();
    // Session leases end with the process: `acquire` refuses rather than print a lock that
    // will not outlive it.
    let session =
        distlock(&format!("etcd://{host}")).args(["acquire", "--lock", "e"]).output().expect("acquire");
    assert_eq!(session.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&session.stderr);
    assert!(stderr.contains("lease=per-lock") && stderr.contains("does not support"), "{stderr}");
    // Per-lock leases: `acquire` keeps the lock after the command exits, until its TTL.
    let url = format!("etcd://{host}?lease=per-lock");
    let out = distlock(&url)
        .args(["run", "--lock", "e", "--", "sh", "-c", "echo $DISTLOCK_FENCING_TOKEN"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("token");
    let a = json(
        &distlock(&url)
            .args(["--json", "acquire", "--lock", "e", "--ttl", "30s"])
            .output()
            .expect("acquire")
            .stdout,
    );
    assert!(a["fencing_token"].as_u64().expect("token") > first, "{a}");
    let held = distlock(&url).args(["run", "--lock", "e", "--", "true"]).output().expect("run");
    assert_eq!(held.status.code(), Some(75));
    let i =
        json(&distlock(&url).args(["--json", "inspect", "--lock", "e"]).output().expect("inspect").stdout);
    assert_eq!(i["owner"], a["owner"]);
    let owner = a["owner"].as_str().expect("owner");
    assert!(distlock(&url)
        .args(["release", "--lock", "e", "--owner", owner])
        .status()
        .expect("release")
        .success());
    drop(etcd);
}

#[test]
fn the_command_works_against_dynamodb() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let moto = rt.block_on(conformance_tests::fixtures::dynamo::MotoServer::start()).expect("moto");
    let url = format!("dynamodb://cli_locks?region=us-east-1&endpoint={}&create_table=true", moto.endpoint());
    // Credentials from the default chain: throwaway ones in the environment, and nothing
    // from this host's profile files or instance metadata.
    let dynamo = |url: &str| {
        let mut c = distlock(url);
        c.env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test-secret-never-printed")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env_remove("AWS_PROFILE");
        c
    };
    let out = dynamo(&url)
        .args(["run", "--lock", "d", "--", "sh", "-c", "echo $DISTLOCK_FENCING_TOKEN"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("token");
    let a = json(
        &dynamo(&url)
            .args(["--json", "acquire", "--lock", "d", "--ttl", "30s"])
            .output()
            .expect("acquire")
            .stdout,
    );
    assert!(a["fencing_token"].as_u64().expect("token") > first, "{a}");
    let held = dynamo(&url).args(["run", "--lock", "d", "--", "true"]).output().expect("run");
    assert_eq!(held.status.code(), Some(75));
    assert!(!String::from_utf8_lossy(&held.stderr).contains("test-secret"), "a secret was printed");
    let i = json(&dynamo(&url).args(["--json", "inspect", "--lock", "d"]).output().expect("inspect").stdout);
    assert_eq!(i["owner"], a["owner"]);
    let owner = a["owner"].as_str().expect("owner");
    assert!(dynamo(&url)
        .args(["release", "--lock", "d", "--owner", owner])
        .status()
        .expect("release")
        .success());
    let again = dynamo(&url).args(["run", "--lock", "d", "--", "true"]).output().expect("run");
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    drop(moto);
}

#[test]
fn the_command_works_against_zookeeper() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let zk = rt.block_on(conformance_tests::fixtures::zk::ZkEnsemble::single()).expect("ZooKeeper");
    let url = format!("zk://{}/cli?session_timeout=4s", zk.connect_string());
    // Session leases end with the process: `acquire` refuses.
    let session = distlock(&url).args(["acquire", "--lock", "z"]).output().expect("acquire");
    assert_eq!(session.status.code(), Some(64));
    // `run` holds the lock while the command runs, and hands it the czxid as its token.
    let out = distlock(&url)
        .args(["run", "--lock", "z", "--", "sh", "-c", "echo $DISTLOCK_FENCING_TOKEN"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("token");
    // A holder in another process: `run` exits 75 without starting the command.
    let mut holder =
        distlock(&url).args(["run", "--lock", "z", "--", "sleep", "30"]).spawn().expect("holder");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let i = json(
            &distlock(&url).args(["--json", "inspect", "--lock", "z"]).output().expect("inspect").stdout,
        );
        if let Some(t) = i["fencing_token"].as_u64() {
            assert!(t > first, "{i}");
            break;
        }
        assert!(Instant::now() < deadline, "the holder never showed up: {i}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let held = distlock(&url).args(["run", "--lock", "z", "--", "true"]).output().expect("run");
    assert_eq!(held.status.code(), Some(75));
    let _ = holder.kill();
    let _ = holder.wait();
    drop(zk);
}

#[test]
fn run_takes_several_locks_all_or_nothing() {
    let (_d, url) = file_backend();
    let out = distlock(&url)
        .args(["run", "--lock", "b", "--lock", "a", "--", "sh", "-c", "echo \"$DISTLOCK_FENCING_TOKENS\""])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "a=1\nb=1");
    // One of the names held: the command never runs, and the other name is left free.
    let held = json(
        &distlock(&url)
            .args(["--json", "acquire", "--lock", "b", "--ttl", "60s"])
            .output()
            .expect("acquire")
            .stdout,
    );
    assert_eq!(held["fencing_token"], 2);
    let out = distlock(&url).args(["run", "--lock", "a", "--lock", "b", "--", "true"]).output().expect("run");
    assert_eq!(out.status.code(), Some(75), "{}", String::from_utf8_lossy(&out.stderr));
    let i =
        json(&distlock(&url).args(["--json", "inspect", "--lock", "a"]).output().expect("inspect").stdout);
    assert_eq!(i["held"], false, "a partial grant was left behind");
    let bad = distlock(&url)
        .args(["run", "--lock", "a", "--lock", "b", "--read", "--", "true"])
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(64));
}

#[test]
fn a_multi_key_run_passes_the_named_locks_own_token() {
    let (_d, url) = file_backend();
    // b's counter runs ahead of a's: a multi-key guard's own token is the highest of its
    // names' (b's), which a write fenced by `a` must not carry.
    for _ in 0..3 {
        let out = distlock(&url).args(["run", "--lock", "b", "--", "true"]).output().expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let script = r#"printf '%s %s\n' "$DISTLOCK_LOCK" "$DISTLOCK_FENCING_TOKEN"; printf '%s\n' "$DISTLOCK_FENCING_TOKENS""#;
    let out = distlock(&url)
        .args(["--json", "run", "--lock", "a", "--lock", "b", "--", "sh", "-c", script])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "a 1\na=1\nb=4");
    let acquired = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| json(l.as_bytes()))
        .find(|e| e["event"] == "acquired")
        .expect("an acquired event");
    assert_eq!(acquired["key"], "a", "{acquired}");
    assert_eq!(acquired["fencing_token"], 1, "{acquired}");
    assert_eq!(acquired["fencing_tokens"], serde_json::json!({ "a": 1, "b": 4 }), "{acquired}");
}

#[test]
fn force_release_frees_a_held_lock_and_says_when_it_was_free() {
    let (_d, url) = file_backend();
    let a = json(
        &distlock(&url)
            .args(["--json", "acquire", "--lock", "ops/y", "--ttl", "60s"])
            .output()
            .expect("acquire")
            .stdout,
    );
    assert_eq!(a["fencing_token"], 1);
    let out =
        distlock(&url).args(["--json", "force-release", "--lock", "ops/y"]).output().expect("force-release");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&out.stdout)["released"], true);
    assert!(String::from_utf8_lossy(&out.stderr).contains("force-releasing 'ops/y'"), "not logged");
    // The next holder's token is higher, so the old holder's fenced writes are rejected.
    let out = distlock(&url)
        .args(["run", "--lock", "ops/y", "--", "sh", "-c", "echo $DISTLOCK_FENCING_TOKEN"])
        .output()
        .expect("run");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
    let out = distlock(&url).args(["force-release", "--lock", "ops/y"]).output().expect("force-release");
    assert_eq!(out.status.code(), Some(1), "force-release of a free lock");
    assert!(String::from_utf8_lossy(&out.stdout).contains("free"));
}

#[test]
fn migrate_tokens_raises_the_new_backends_counters_above_the_old() {
    let (_old_dir, old) = file_backend();
    let (_new_dir, new) = file_backend();
    for _ in 0..3 {
        let out = distlock(&old).args(["run", "--lock", "jobs/a", "--", "true"]).output().expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let out = distlock(&old).args(["run", "--lock", "other/b", "--", "true"]).output().expect("run");
    assert!(out.status.success());
    // A dry run changes nothing.
    let out = distlock(&new)
        .args(["--json", "migrate-tokens", "--from", &old, "--to", &new, "--prefix", "jobs/", "--dry-run"])
        .output()
        .expect("migrate-tokens");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = json(&out.stdout);
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["keys"].as_array().map(Vec::len), Some(1), "only the key under the prefix: {v}");
    assert_eq!(v["keys"][0]["old"], 3);
    let token = |url: &str, name: &str| {
        let out = distlock(url)
            .args(["run", "--lock", name, "--", "sh", "-c", "echo $DISTLOCK_FENCING_TOKEN"])
            .output()
            .expect("run");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let (_fresh_dir, fresh) = file_backend();
    let out = distlock(&fresh)
        .args(["migrate-tokens", "--from", &old, "--to", &fresh, "--prefix", "jobs/", "--dry-run"])
        .output()
        .expect("dry run");
    assert!(out.status.success());
    assert_eq!(token(&fresh, "jobs/a"), "1", "a dry run raised a counter");
    // The real run: the first grant on the new backend is fenced above every old grant.
    let out = distlock(&new)
        .args(["migrate-tokens", "--from", &old, "--to", &new])
        .output()
        .expect("migrate-tokens");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 key(s) carried over"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(token(&new, "jobs/a"), "4");
    assert_eq!(token(&new, "other/b"), "2");
    // Safe to run twice: never lowers a counter.
    let out = distlock(&new).args(["migrate-tokens", "--from", &old, "--to", &new]).output().expect("again");
    assert!(out.status.success());
    assert_eq!(token(&new, "jobs/a"), "5");
    // An unreachable side is a typed failure with its exit code, not a panic.
    let out = distlock(&new)
        .args(["migrate-tokens", "--from", "redis://127.0.0.1:1", "--to", &new])
        .output()
        .expect("unreachable");
    assert!(!out.status.success());
}

#[test]
fn migrate_tokens_takes_the_prefix_under_the_urls_namespace() {
    let (_old_dir, old) = file_backend();
    let (_new_dir, new) = file_backend();
    let (old_ns, new_ns) = (format!("{old}&namespace=app"), format!("{new}&namespace=app"));
    let out = distlock(&old_ns).args(["run", "--lock", "jobs/a", "--", "true"]).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = distlock(&new)
        .args([
            "--json",
            "migrate-tokens",
            "--from",
            &old_ns,
            "--to",
            &new_ns,
            "--prefix",
            "jobs/",
            "--dry-run",
        ])
        .output()
        .expect("migrate-tokens");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = json(&out.stdout);
    assert_eq!(v["keys"].as_array().map(Vec::len), Some(1), "app/jobs/a under the prefix jobs/: {v}");
    // Two namespaces would carry counters to other names: refused.
    let out = distlock(&new)
        .args(["migrate-tokens", "--from", &old_ns, "--to", &new, "--dry-run"])
        .output()
        .expect("migrate-tokens");
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A signal while the metrics linger after the command ends ends the linger at once, with the
/// command's exit code (run's forwarding handlers no longer swallow it).
#[test]
fn a_signal_during_the_metrics_linger_ends_it() {
    let (_d, url) = file_backend();
    let mut run = distlock(&url)
        .args(["--json", "--metrics-addr", "127.0.0.1:0", "--metrics-linger", "60s"])
        .args(["run", "--lock", "linger", "--", "sh", "-c", "exit 3"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut err = std::io::BufReader::new(run.stderr.take().expect("stderr"));
    let mut line = String::new();
    loop {
        line.clear();
        let n = std::io::BufRead::read_line(&mut err, &mut line).expect("read");
        assert!(n > 0, "stderr ended before the run finished");
        if line.contains("\"finished\"") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(run.try_wait().expect("wait").is_none(), "the metrics did not linger");
    let pid = run.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let status = exit_of(&mut run, Duration::from_secs(10));
    assert_eq!(status.code(), Some(3), "{status:?}");
}

/// What a pseudo-terminal's master end has printed so far, read on a thread of its own.
struct Screen(std::sync::Arc<std::sync::Mutex<String>>);

impl Screen {
    fn of(mut master: std::fs::File) -> Self {
        let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let t = text.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                t.lock().expect("screen").push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self(text)
    }

    /// Waits until `needle` has been printed after the first `from` bytes; returns where it ends.
    fn wait_for(&self, needle: &str, from: usize, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let text = self.0.lock().expect("screen").clone();
            if let Some(at) = text.get(from..).and_then(|t| t.find(needle)) {
                return from + at + needle.len();
            }
            assert!(Instant::now() < deadline, "{needle:?} never appeared; the terminal shows:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Kills every process of the session `sid` (a test's shell and its jobs) when dropped.
struct Session(u32);

impl Drop for Session {
    fn drop(&mut self) {
        let Ok(dir) = std::fs::read_dir("/proc") else { return };
        for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            // After the name's closing parenthesis: state, ppid, pgrp, session.
            let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, r)| r).split_whitespace().collect();
            if fields.get(3).and_then(|s| s.parse::<u32>().ok()) == Some(self.0) {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
        }
    }
}

/// Ctrl-Z on `run` in the foreground of an interactive shell stops the job as a shell's job
/// stops: the shell reports it stopped and gets the terminal back. `bg` continues it in the
/// background, where the command's read of the terminal stops the job again (and distlock
/// leaves the terminal to the shell); `fg` continues it with the terminal: the command reads
/// what is typed. A job that ends in the background leaves the terminal to the shell.
#[test]
fn ctrl_z_suspends_run_as_a_job() {
    use std::os::unix::process::CommandExt;
    let (_d, url) = file_backend();
    let bin = assert_cmd::cargo::cargo_bin("distlock");
    let (mut master, slave) = {
        let (mut m, mut s) = (0, 0);
        #[allow(unsafe_code)]
        // SAFETY: openpty writes the two descriptors it opens; the other pointers may be null.
        let r = unsafe {
            libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), std::ptr::null())
        };
        assert_eq!(r, 0, "openpty");
        #[allow(unsafe_code)]
        // SAFETY: both descriptors were just opened and are owned by nothing else.
        unsafe {
            use std::os::fd::FromRawFd;
            (std::fs::File::from_raw_fd(m), std::fs::File::from_raw_fd(s))
        }
    };
    let mut shell = Command::new("bash");
    shell
        .args(["--norc", "--noprofile", "-i"])
        .env("PS1", "$ ")
        .env("TERM", "dumb")
        .env("DISTLOCK_URL", &url)
        .stdin(slave.try_clone().expect("slave"))
        .stdout(slave.try_clone().expect("slave"))
        .stderr(slave);
    #[allow(unsafe_code)]
    // SAFETY: setsid and ioctl are async-signal-safe; the child makes the terminal on its
    // standard input its controlling terminal, as a terminal emulator's shell has it.
    unsafe {
        shell.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut shell = shell.spawn().expect("bash");
    let _session = Session(shell.id());
    let screen = Screen::of(master.try_clone().expect("master"));
    let wait = Duration::from_secs(20);
    // The quotes keep the typed line (echoed) from matching what the command prints.
    writeln!(
        master,
        "{} run --lock job -- sh -c 'echo sta\"\"rted; read l; echo \"go\"\"t-$l\"'",
        bin.display()
    )
    .expect("type");
    let at = screen.wait_for("started", 0, wait);
    master.write_all(b"\x1a").expect("Ctrl-Z");
    let at = screen.wait_for("Stopped", at, wait);
    writeln!(master, "bg").expect("type");
    let mut at = screen.wait_for("&", at, wait);
    // In the background the command's read stops the job again; the shell keeps the terminal
    // (it reads these lines).
    let deadline = Instant::now() + wait;
    loop {
        writeln!(master, "jobs").expect("type");
        let shown = screen.wait_for("$ ", at, wait);
        let text = screen.0.lock().expect("screen")[at..shown].to_owned();
        at = shown;
        if text.contains("Stopped") {
            break;
        }
        assert!(Instant::now() < deadline, "the job reading the terminal in the background did not stop");
        std::thread::sleep(Duration::from_millis(200));
    }
    writeln!(master, "fg").expect("type");
    writeln!(master, "x").expect("type");
    let at = screen.wait_for("got-x", at, wait);
    writeln!(master, "echo code=$?").expect("type");
    let at = screen.wait_for("code=0", at, wait);
    // A job that ends in the background leaves the terminal with the shell.
    writeln!(
        master,
        "{} run --lock job -- sh -c 'echo sta\"\"rted; sleep 1; echo fin\"\"ished'",
        bin.display()
    )
    .expect("type");
    let at = screen.wait_for("started", at, wait);
    master.write_all(b"\x1a").expect("Ctrl-Z");
    let at = screen.wait_for("Stopped", at, wait);
    writeln!(master, "bg").expect("type");
    let at = screen.wait_for("finished", at, wait);
    std::thread::sleep(Duration::from_millis(500));
    writeln!(master, "echo alive=$((1+1))").expect("type");
    screen.wait_for("alive=2", at, wait);
    writeln!(master, "exit").expect("type");
    let _ = exit_of(&mut shell, wait);
}
