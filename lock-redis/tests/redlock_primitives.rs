//! Read-write locks on Redlock with a minority of masters down or restarted empty, and why
//! Redlock offers no semaphores: a quorum of masters that each admit N can admit more than N.
//! And an election's proclaimed value read back through a quorum that holds both values.

use std::time::Duration;

use conformance_tests::fixtures::redis::RedisServer;
use lock_core::{Error, LockClient, Mode, OwnerToken};
use lock_redis::{RedisOptions, RedlockBackend, RedlockOptions};

const LONG: Duration = Duration::from_secs(30);

async fn masters(n: usize) -> Vec<RedisServer> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(RedisServer::start().await.expect("redis-server"));
    }
    v
}

async fn redlock(servers: &[RedisServer]) -> LockClient {
    let nodes = servers.iter().map(|s| RedisOptions::new(format!("127.0.0.1:{}", s.port())));
    LockClient::new(RedlockBackend::connect(RedlockOptions::new(nodes)).await.expect("redlock"))
}

/// Readers share, a writer excludes, and tokens are ordered; returns the last token.
async fn rounds(locks: &LockClient, last: u64, when: &str) -> u64 {
    let r1 = locks.read_lock("doc").ttl(LONG).acquire().await.expect("reader");
    let r2 = locks.read_lock("doc").ttl(LONG).try_acquire().await.expect("try").expect("a second reader");
    assert!(r1.fencing_token().get() > last && r2.fencing_token().get() > last, "{when}: reader tokens fell");
    assert!(
        locks.write_lock("doc").try_acquire().await.expect("try").is_none(),
        "{when}: writer beside readers"
    );
    let holders = locks.holders("doc", Mode::Read).await.expect("holders");
    assert_eq!(holders.len(), 2, "{when}: a quorum agrees on both readers");
    let top = r1.fencing_token().max(r2.fencing_token());
    r1.release().await.expect("release");
    r2.release().await.expect("release");
    let w = locks.write_lock("doc").ttl(LONG).acquire().await.expect("writer");
    assert!(w.fencing_token() > top, "{when}: the writer's token is not above the readers'");
    assert!(
        locks.read_lock("doc").try_acquire().await.expect("try").is_none(),
        "{when}: reader beside a writer"
    );
    assert!(locks.write_lock("doc").try_acquire().await.expect("try").is_none(), "{when}: two writers");
    let t = w.fencing_token().get();
    w.release().await.expect("release");
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_write_locks_hold_with_a_master_down_and_one_restarted_empty() {
    let mut servers = masters(3).await;
    let locks = redlock(&servers).await;
    let mut last = rounds(&locks, 0, "all up").await;
    servers[0].process().kill().await;
    last = rounds(&locks, last, "master 0 down").await;
    // Master 0 comes back without its data, and master 1 goes down.
    servers[0].process().restart().await.expect("restart");
    servers[1].process().kill().await;
    let mut g = None;
    for _ in 0..20 {
        match locks.read_lock("doc").ttl(LONG).try_acquire().await {
            Ok(Some(r)) => {
                g = Some(r);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let r = g.expect("a reader with master 0 restarted empty and master 1 down");
    assert!(r.fencing_token().get() > last, "a token fell after a master lost its counter");
    r.release().await.expect("release");
    rounds(&locks, last, "master 0 restarted empty, master 1 down").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_waiting_with_a_master_down_is_not_starved() {
    let mut servers = masters(3).await;
    let locks = redlock(&servers).await;
    servers[2].process().kill().await;
    let first = locks.read_lock("doc").ttl(LONG).acquire().await.expect("reader");
    let (w, writer) = (
        locks.clone(),
        tokio::spawn({
            let locks = locks.clone();
            async move { locks.write_lock("doc").ttl(LONG).wait(Duration::from_secs(20)).acquire().await }
        }),
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        w.read_lock("doc").try_acquire().await.expect("try").is_none(),
        "a reader jumped a waiting writer"
    );
    first.release().await.expect("release");
    let g = tokio::time::timeout(Duration::from_secs(3), writer)
        .await
        .expect("writer woken")
        .expect("task")
        .expect("writer");
    g.release().await.expect("release");
}

/// The counter-example: three masters, a semaphore of N = 2 on each, three clients whose
/// requests reach the masters in different orders. Every master admits two, every client is
/// admitted by two masters (a quorum), and three clients would hold a permit of two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_of_per_master_semaphores_would_admit_more_than_n() {
    let servers = masters(3).await;
    let owners: Vec<String> = (0..3).map(|_| OwnerToken::random().to_string()).collect();
    // Arrival order per master: A sees 0, 2, 1; B sees 0, 1, 2; C sees 1, 2, 0.
    let orders = [[0, 2, 1], [0, 1, 2], [1, 2, 0]];
    let mut admitted = [0usize; 3];
    for (server, order) in servers.iter().zip(orders) {
        let mut con = redis::Client::open(server.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("raw");
        for who in order {
            let (status, _): (i64, String) = lock_redis::scripts::semaphore::ACQUIRE
                .key("{s}:sem")
                .key("{s}:sem:info")
                .key("{s}:sem:fence")
                .arg(&owners[who])
                .arg(30_000)
                .arg(2)
                .invoke_async(&mut con)
                .await
                .expect("semaphore script");
            admitted[who] += usize::from(status == 1);
        }
    }
    assert_eq!(admitted, [2, 2, 2], "each client holds a quorum (2 of 3) of masters");
    // Which is why Redlock does not offer semaphores.
    let locks = redlock(&servers).await;
    assert_eq!(locks.capabilities().max_permits, 0);
    let err = locks.semaphore("s", 2).acquire().await.expect_err("no semaphores on Redlock");
    assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
}

/// A proclaim reaches two of three masters (the third paused); then one of those two pauses
/// and the third comes back: the two masters that answer disagree, one each. The leader's
/// value is the proclaimed one (the newer metadata), not whichever master answered last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proclaimed_value_is_read_back_from_a_split_quorum() {
    let mut servers = masters(3).await;
    let locks = redlock(&servers).await;
    let election = locks.election("split").ttl(LONG);
    let g = election.campaign("v0").await.expect("campaign");
    servers[2].process().pause().expect("pause");
    election.proclaim(&g, "v1").await.expect("proclaim on two of three");
    servers[2].process().resume().expect("resume");
    servers[0].process().pause().expect("pause");
    let leader = election.leader().await.expect("leader").expect("a leader");
    servers[0].process().resume().expect("resume");
    assert_eq!(leader.value.as_deref(), Some("v1"), "the older value won a tie");
    g.release().await.expect("resign");
}
