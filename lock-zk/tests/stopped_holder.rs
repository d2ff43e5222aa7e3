//! A holder process stopped (SIGSTOP) for longer than its session timeout: the server expires
//! its session and another client takes the lock; woken up (SIGCONT), the holder still looks
//! connected, and an `extend` right away must tell it the lock is lost, never that it holds.
//!
//! The holder is this test binary run again with `DISTLOCK_ZK_HOLDER` set (the connect string
//! and the key): the ignored test `stoppable_holder` then takes the lock, prints its fencing
//! token, and answers every `extend` line on stdin with the outcome.

mod support;

use std::process::Stdio;
use std::time::Duration;

use conformance_tests::fixtures::zk::ZkEnsemble;
use lock_core::{Error, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

/// The holder's session timeout (the fixture's server allows 400 ms to 60 s).
const SESSION: Duration = Duration::from_secs(2);

#[tokio::test]
#[ignore = "run only as the child of a_holder_stopped_past_its_session_is_told_it_lost_the_lock"]
async fn stoppable_holder() {
    let Ok(spec) = std::env::var("DISTLOCK_ZK_HOLDER") else { return };
    let (connect, key) = spec.split_once(' ').expect("connect string and key");
    let locks = support::client(connect, SESSION).await;
    let g = locks.lock(key).acquire().await.expect("acquire");
    println!("ACQUIRED {}", g.fencing_token());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim() != "extend" {
            continue;
        }
        match g.extend(SESSION).await {
            Ok(()) => println!("EXTENDED {:?}", g.valid_until().saturating_duration_since(Instant::now())),
            Err(Error::NotHeld { .. }) => println!("NOTHELD"),
            Err(e) => println!("ERROR {e}"),
        }
    }
}

/// The holder process and its output.
struct Holder {
    child: Child,
    out: Lines<BufReader<ChildStdout>>,
}

impl Holder {
    fn spawn(connect: &str, key: &str) -> Self {
        let exe = std::env::current_exe().expect("current exe");
        let mut child = tokio::process::Command::new(exe)
            .args(["--exact", "stoppable_holder", "--ignored", "--nocapture", "--test-threads=1"])
            .env("DISTLOCK_ZK_HOLDER", format!("{connect} {key}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the holder");
        let out = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Self { child, out }
    }

    /// The next line that holds `word`, from `word` on (libtest prints its own text first).
    async fn expect(&mut self, word: &str) -> String {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), self.out.next_line())
                .await
                .expect("the holder answered in time")
                .expect("read from the holder")
                .expect("the holder ended early");
            if let Some(i) = line.find(word) {
                return line[i..].trim().to_owned();
            }
        }
    }

    /// The holder's answer to the next line that holds one of `words`.
    async fn answer(&mut self) -> String {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), self.out.next_line())
                .await
                .expect("the holder answered in time")
                .expect("read from the holder")
                .expect("the holder ended early");
            for word in ["EXTENDED", "NOTHELD", "ERROR"] {
                if let Some(i) = line.find(word) {
                    return line[i..].trim().to_owned();
                }
            }
        }
    }

    async fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(format!("{line}\n").as_bytes()).await.expect("write to the holder");
        stdin.flush().await.expect("flush");
    }

    fn signal(&self, sig: rustix::process::Signal) {
        let pid = self.child.id().expect("the holder runs");
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid");
        rustix::process::kill_process(pid, sig).expect("signal the holder");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_stopped_past_its_session_is_told_it_lost_the_lock() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let connect = zk.connect_string();
    let key = support::key("sigstop");
    let mut holder = Holder::spawn(&connect, &key);
    let fence: u64 = holder.expect("ACQUIRED ").await["ACQUIRED ".len()..].parse().expect("token");

    // Running, the holder holds and extends.
    holder.send("extend").await;
    let running = holder.answer().await;
    assert!(running.starts_with("EXTENDED"), "a running holder's extend: {running}");
    let other = support::client(&connect, Duration::from_secs(10)).await;
    assert!(other.lock(&key).try_acquire().await.expect("try").is_none(), "the holder does not exclude");

    // Stopped past its session timeout: the server expires the session, deletes the holder's
    // child, and the other client takes the lock.
    holder.signal(rustix::process::Signal::STOP);
    let stopped = Instant::now();
    let g = other.lock(&key).wait(Duration::from_secs(30)).acquire().await.expect("taken after the expiry");
    assert!(g.fencing_token().get() > fence, "the new holder's token must exceed the stopped one's");
    assert!(stopped.elapsed() >= SESSION / 2, "taken {:?} after the stop", stopped.elapsed());

    // The question waits in the pipe; woken up, the holder answers it at once.
    holder.send("extend").await;
    holder.signal(rustix::process::Signal::CONT);
    let woken = holder.answer().await;
    assert_eq!(
        woken, "NOTHELD",
        "a holder stopped past its session was told '{woken}' while another client holds the lock"
    );
    assert!(g.is_held());
    g.release().await.expect("release");
}
