//! distlock's elections and `etcdctl elect` on the same election, both ways: distlock's
//! election `<name>` is Go's `concurrency.Election` on `<name>#election`, so each side sees the
//! other's leader, waits for it, and takes over when it resigns; `etcdctl elect -l` observes
//! distlock's leader and its proclaims.

use std::process::Stdio;
use std::time::Duration;

use conformance_tests::fixtures::etcd::EtcdCluster;
use futures::StreamExt;
use lock_core::{Instant, LockClient, ReleaseOutcome};
use lock_etcd::{EtcdBackend, EtcdOptions};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

const NAME: &str = "svc/scheduler";
const GO_NAME: &str = "svc/scheduler#election";

/// Runs `etcdctl elect ARGS` against `ep`, with its output as lines.
fn etcdctl_elect(ep: &str, args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = tokio::process::Command::new("etcdctl")
        .args(["--endpoints", ep, "elect"])
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("etcdctl (apt-get install etcd-client)");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    (child, lines)
}

/// The next (key, value) etcdctl prints for a leader, within `within`.
async fn next_leader(lines: &mut Lines<BufReader<ChildStdout>>, within: Duration) -> (String, String) {
    let key = next_line(lines, within).await;
    let value = next_line(lines, within).await;
    (key, value)
}

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>, within: Duration) -> String {
    tokio::time::timeout(within, lines.next_line())
        .await
        .expect("etcdctl printed a leader in time")
        .expect("read etcdctl's output")
        .expect("etcdctl ended early")
}

/// Stops etcdctl as an operator would (SIGTERM): it resigns and exits.
async fn stop(mut child: Child) {
    let pid = child.id().expect("etcdctl runs").to_string();
    let status = tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await.expect("kill");
    assert!(status.success());
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("etcdctl exited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_and_distlock_campaign_against_each_other() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let ep = etcd.endpoints()[0].clone();
    let backend =
        EtcdBackend::connect(EtcdOptions::new(etcd.endpoints()).session_ttl(Duration::from_secs(5)))
            .await
            .expect("connect");
    let locks = LockClient::new(backend);
    let election = locks.election(NAME);

    // etcdctl leads: distlock reads its leader and value, and its campaign waits.
    let (ctl, mut ctl_out) = etcdctl_elect(&ep, &[GO_NAME, "ctl-1"]);
    let (key, value) = next_leader(&mut ctl_out, Duration::from_secs(20)).await;
    assert!(key.starts_with(&format!("{GO_NAME}/")) && value == "ctl-1", "{key} {value}");
    let leader = election.leader().await.expect("leader").expect("etcdctl's candidate leads");
    assert_eq!(leader.value.as_deref(), Some("ctl-1"));
    let ctl_term = leader.term.expect("a term");
    let mut seen = election.observe().await.expect("observe");
    let first = tokio::time::timeout(Duration::from_secs(5), seen.next()).await.expect("first state");
    let first = first.expect("stream").expect("state").expect("a leader");
    assert_eq!(first.value.as_deref(), Some("ctl-1"));

    let waiting = {
        let e = locks.election(NAME).wait(Duration::from_secs(30));
        tokio::spawn(async move { e.campaign("ours-1").await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "distlock was elected while etcdctl leads");
    let resigned = Instant::now();
    stop(ctl).await;
    let ours = waiting.await.expect("campaign task").expect("elected after etcdctl resigned");
    assert!(resigned.elapsed() < Duration::from_secs(5), "hand-over took {:?}", resigned.elapsed());
    assert!(
        ours.fencing_token() > ctl_term,
        "our term {} is not above etcdctl's {ctl_term}",
        ours.fencing_token()
    );
    loop {
        let item = tokio::time::timeout(Duration::from_secs(5), seen.next()).await.expect("observer saw us");
        match item.expect("stream").expect("state") {
            Some(l) if l.value.as_deref() == Some("ours-1") => {
                assert_eq!(l.term, Some(ours.fencing_token()));
                break;
            }
            Some(l) => assert_eq!(l.value.as_deref(), Some("ctl-1"), "observed {l:?}"),
            None => {}
        }
    }

    // distlock leads: `etcdctl elect -l` prints its value and its proclaims, and etcdctl's
    // campaign waits until distlock resigns.
    let (_observer, mut obs_out) = etcdctl_elect(&ep, &["-l", GO_NAME]);
    let (_, value) = next_leader(&mut obs_out, Duration::from_secs(20)).await;
    assert_eq!(value, "ours-1");
    election.proclaim(&ours, "ours-2").await.expect("proclaim");
    let (_, value) = next_leader(&mut obs_out, Duration::from_secs(10)).await;
    assert_eq!(value, "ours-2", "etcdctl's observer did not see the proclaim");
    assert_eq!(election.leader().await.expect("leader").and_then(|l| l.value).as_deref(), Some("ours-2"));

    let (ctl2, mut ctl2_out) = etcdctl_elect(&ep, &[GO_NAME, "ctl-2"]);
    let early = tokio::time::timeout(Duration::from_millis(1500), ctl2_out.next_line()).await;
    assert!(early.is_err(), "etcdctl was elected while distlock leads: {early:?}");
    let resigned = Instant::now();
    assert_eq!(ours.release().await.expect("resign"), ReleaseOutcome::Released);
    let (_, value) = next_leader(&mut ctl2_out, Duration::from_secs(10)).await;
    assert_eq!(value, "ctl-2");
    assert!(resigned.elapsed() < Duration::from_secs(5), "hand-over took {:?}", resigned.elapsed());
    let (_, value) = next_leader(&mut obs_out, Duration::from_secs(10)).await;
    assert_eq!(value, "ctl-2", "etcdctl's observer did not see the hand-over");
    stop(ctl2).await;
}
