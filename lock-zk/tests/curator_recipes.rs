//! distlock and Apache Curator's recipes on the same paths, in both directions, against
//! Debian's Curator 5.4 (Java contenders compiled by the test from tests/java): the semaphore
//! (`InterProcessSemaphoreV2`), the read-write lock (`InterProcessReadWriteLock`) and the
//! election (`LeaderLatch`) respect each other's permits, modes and leadership.

mod support;

use std::time::Duration;

use conformance_tests::fixtures::zk::ZkEnsemble;
use futures::StreamExt;
use lock_core::{Leader, LockClient, Mode};
use support::contender::Contender;

const WAIT: Duration = Duration::from_secs(20);

/// Sends `cmd` to a contender from an async test.
fn send(c: &mut Contender, cmd: &str) -> String {
    tokio::task::block_in_place(|| c.send(cmd))
}

/// Sends `cmd` to a contender in the background (a command that waits).
fn send_later(mut c: Contender, cmd: &str) -> tokio::task::JoinHandle<(Contender, String)> {
    let cmd = cmd.to_owned();
    tokio::task::spawn_blocking(move || {
        let got = c.send(&cmd);
        (c, got)
    })
}

async fn ours(connect: &str) -> LockClient {
    support::client(connect, Duration::from_secs(10)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_permits_are_shared_with_curators_semaphore() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let connect = zk.connect_string();
    let ours = ours(&connect).await;
    let name = support::key("interop-semaphore");
    let path = format!("/distlock/{name}#semaphore");
    let mut curator =
        tokio::task::block_in_place(|| Contender::curator_recipe(&connect, &path, &["semaphore", "2"]));

    // Curator holds one permit of two: we get the other, and nobody gets a third.
    assert_eq!(send(&mut curator, "acquire 5000"), "HELD");
    let p1 = ours.semaphore(&name, 2).try_acquire().await.expect("try").expect("the second of two permits");
    assert!(ours.semaphore(&name, 2).try_acquire().await.expect("try").is_none(), "we took a third permit");
    assert_eq!(send(&mut curator, "acquire 500"), "BUSY", "Curator took a third permit of two");
    let holders = ours.holders(&name, Mode::Permit { limit: 2 }).await.expect("holders");
    assert_eq!(holders.len(), 2, "{holders:?}");
    assert!(holders.iter().any(|h| h.metadata.is_none()), "Curator's lease shows no metadata of ours");

    // We wait for a permit; Curator returns its lease: it is ours.
    let waiter = {
        let (ours, name) = (ours.clone(), name.clone());
        tokio::spawn(async move { ours.semaphore(&name, 2).wait(WAIT).acquire().await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "we took a permit of a full semaphore");
    assert_eq!(send(&mut curator, "release"), "RELEASED");
    let p2 = waiter.await.expect("join").expect("our waiter gets Curator's permit");
    assert!(p2.fencing_token() > p1.fencing_token(), "tokens rise across permits");

    // We hold both: Curator waits, and gets the permit we return.
    let waits = send_later(curator, "acquire 20000");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!waits.is_finished(), "Curator took a permit of a semaphore we fill");
    p1.release().await.expect("release");
    let (mut curator, got) = waits.await.expect("join");
    assert_eq!(got, "HELD", "Curator's waiter did not get the permit we returned");
    assert!(ours.semaphore(&name, 2).try_acquire().await.expect("try").is_none(), "a third permit");
    assert_eq!(send(&mut curator, "release"), "RELEASED");
    p2.release().await.expect("release");
    let p3 = ours.semaphore(&name, 2).try_acquire().await.expect("try").expect("free again");
    p3.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_write_locks_are_shared_with_curators_read_write_lock() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let connect = zk.connect_string();
    let ours = ours(&connect).await;
    let name = support::key("interop-rw");
    let path = format!("/distlock/{name}#rwlock");
    let (mut c_read, c_write) = tokio::task::block_in_place(|| {
        (
            Contender::curator_recipe(&connect, &path, &["read"]),
            Contender::curator_recipe(&connect, &path, &["write"]),
        )
    });

    // Curator's reader holds: our reader shares it, our writer is refused.
    assert_eq!(send(&mut c_read, "acquire 5000"), "HELD");
    let r = ours.read_lock(&name).try_acquire().await.expect("try").expect("readers share with Curator's");
    assert!(ours.write_lock(&name).try_acquire().await.expect("try").is_none(), "a writer beside readers");

    // Curator's writer waits behind both readers, and keeps our new readers out.
    let waits = send_later(c_write, "acquire 20000");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!waits.is_finished(), "Curator's writer was granted beside readers");
    assert!(
        ours.read_lock(&name).try_acquire().await.expect("try").is_none(),
        "a new reader passed Curator's waiting writer"
    );
    r.release().await.expect("release");
    assert_eq!(send(&mut c_read, "release"), "RELEASED");
    let (mut c_write, got) = waits.await.expect("join");
    assert_eq!(got, "HELD", "Curator's writer did not get the lock after the readers left");
    assert!(
        ours.read_lock(&name).try_acquire().await.expect("try").is_none(),
        "a reader beside Curator's writer"
    );
    assert!(ours.write_lock(&name).try_acquire().await.expect("try").is_none(), "two writers");

    // Our writer queues behind Curator's; Curator's next reader queues behind ours.
    let writer = {
        let (ours, name) = (ours.clone(), name.clone());
        tokio::spawn(async move { ours.write_lock(&name).wait(WAIT).acquire().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reader_waits = send_later(c_read, "acquire 20000");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!writer.is_finished(), "our writer was granted beside Curator's");
    assert_eq!(send(&mut c_write, "release"), "RELEASED");
    let w = writer.await.expect("join").expect("our writer after Curator's");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!reader_waits.is_finished(), "Curator's reader was granted beside our writer");
    w.release().await.expect("release");
    let (mut c_read, got) = reader_waits.await.expect("join");
    assert_eq!(got, "HELD", "Curator's reader did not get the lock after our writer");
    let r = ours.read_lock(&name).try_acquire().await.expect("try").expect("readers share again");
    r.release().await.expect("release");
    assert_eq!(send(&mut c_read, "release"), "RELEASED");
}

/// The next leader an observer reports whose value is `value` (vacancies and other leaders on
/// the way are allowed only before it).
async fn next_leader(
    seen: &mut futures::stream::BoxStream<'static, lock_core::Result<Option<Leader>>>,
    value: &str,
) -> Leader {
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), seen.next())
            .await
            .unwrap_or_else(|_| panic!("the observer did not report {value}"))
            .expect("the observer's stream ended")
            .expect("the observer failed");
        if let Some(l) = item.filter(|l| l.value.as_deref() == Some(value)) {
            return l;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elections_are_shared_with_curators_leader_latch() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let connect = zk.connect_string();
    let ours = ours(&connect).await;
    let name = support::key("interop-election");
    let path = format!("/distlock/{name}#election");
    let mut latch =
        tokio::task::block_in_place(|| Contender::curator_recipe(&connect, &path, &["latch", "curator-1"]));
    let election = ours.election(&name);

    // Curator leads: we see its participant id as the leader's value, and do not lead.
    assert_eq!(send(&mut latch, "start"), "STARTED");
    assert_eq!(send(&mut latch, "await 10000"), "LEADER");
    let l = election.leader().await.expect("leader").expect("Curator leads");
    assert_eq!(l.value.as_deref(), Some("curator-1"));
    let mut seen = election.observe().await.expect("observe");
    next_leader(&mut seen, "curator-1").await;
    let campaign = {
        let (ours, name) = (ours.clone(), name.clone());
        tokio::spawn(async move {
            ours.election(&name).wait(Duration::from_secs(30)).campaign("distlock-1").await
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!campaign.is_finished(), "we were elected while Curator led");
    assert_eq!(send(&mut latch, "has"), "LEADER");

    // Curator resigns: we lead, and a second Curator candidate waits and names us.
    assert_eq!(send(&mut latch, "close"), "CLOSED");
    let g = campaign.await.expect("join").expect("elected after Curator resigned");
    let l = next_leader(&mut seen, "distlock-1").await;
    assert_eq!(l.term, Some(g.fencing_token()), "the term is the leader's token");
    let mut latch2 =
        tokio::task::block_in_place(|| Contender::curator_recipe(&connect, &path, &["latch", "curator-2"]));
    assert_eq!(send(&mut latch2, "start"), "STARTED");
    assert_eq!(send(&mut latch2, "await 1000"), "NOT_LEADER", "Curator leads beside us");
    let curators_view = send(&mut latch2, "leader");
    assert!(
        curators_view.starts_with("LEADER_IS {") && curators_view.contains("\"value\":\"distlock-1\""),
        "{curators_view}"
    );

    // A proclaim is seen by our observer and `leader()`; Curator's `getLeader()` reads the
    // leader's node, which keeps the value we campaigned with (a proclaim does not touch it,
    // so that Curator's watch on it stays armed: see below).
    election.proclaim(&g, "distlock-2").await.expect("proclaim");
    next_leader(&mut seen, "distlock-2").await;
    assert_eq!(election.leader().await.expect("leader").and_then(|l| l.value).as_deref(), Some("distlock-2"));
    assert!(send(&mut latch2, "leader").contains("\"value\":\"distlock-1\""));
    assert_eq!(send(&mut latch2, "has"), "NOT_LEADER");

    // We resign: Curator's candidate, which watches our node, leads at once, and our observer
    // sees it.
    let our_term = g.fencing_token();
    g.release().await.expect("resign");
    assert_eq!(send(&mut latch2, "await 10000"), "LEADER");
    let l = next_leader(&mut seen, "curator-2").await;
    assert!(l.term > Some(our_term), "terms rise: {:?} after {our_term}", l.term);
    assert_eq!(send(&mut latch2, "close"), "CLOSED");
}
