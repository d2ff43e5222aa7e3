//! Semaphores, read-write locks and multi-key locks on a real redis-server: what the
//! conformance suite cannot see. The keys on the server and their cleanup, a waiting writer's
//! intent (lapsing when the writer dies, withdrawn when it gives up), fencing tokens after
//! the counter is lost, many permits, and the all-or-nothing multi-key script (with its reply
//! lost).

#[path = "support/proxy.rs"]
mod proxy;

use std::time::Duration;

use conformance_tests::fixtures::redis::RedisServer;
use lock_core::{AcquireRequest, Error, Instant, LockBackend, LockClient, LockKey, Mode, OwnerToken};
use lock_redis::{RedisBackend, RedisOptions};
use proxy::Proxy;
use redis::aio::MultiplexedConnection;

const LONG: Duration = Duration::from_secs(30);

async fn backend(server: &RedisServer) -> RedisBackend {
    RedisBackend::connect(server.url().parse().expect("url")).await.expect("connect")
}

async fn raw(server: &RedisServer) -> MultiplexedConnection {
    redis::Client::open(server.url()).expect("url").get_multiplexed_async_connection().await.expect("raw")
}

async fn exists(con: &mut MultiplexedConnection, key: &str) -> bool {
    redis::cmd("EXISTS").arg(key).query_async::<i64>(con).await.expect("EXISTS") == 1
}

async fn pttl(con: &mut MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(con).await.expect("PTTL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_keys_expire_with_the_last_permit_and_leave_only_the_counter() {
    let server = RedisServer::start().await.expect("redis-server");
    let locks = LockClient::new(backend(&server).await);
    let mut con = raw(&server).await;
    let a = locks.semaphore("pool", 3).ttl(LONG).acquire().await.expect("permit");
    let b = locks.semaphore("pool", 3).ttl(Duration::from_secs(10)).acquire().await.expect("permit");
    let n: i64 = redis::cmd("ZCARD").arg("{pool}:sem").query_async(&mut con).await.expect("ZCARD");
    assert_eq!(n, 2);
    let limit: String =
        redis::cmd("HGET").arg("{pool}:sem:info").arg("limit").query_async(&mut con).await.expect("HGET");
    assert_eq!(limit, "3", "the number of permits is stored with the semaphore");
    for key in ["{pool}:sem", "{pool}:sem:info"] {
        let left = pttl(&mut con, key).await;
        assert!(left > 10_000 && left <= 30_000, "{key} expires in {left} ms: not with the last permit");
    }
    assert_eq!(pttl(&mut con, "{pool}:sem:fence").await, -1, "the counter must never expire");
    assert!(!exists(&mut con, "{pool}").await, "a permit wrote the lock's key");
    a.release().await.expect("release");
    b.release().await.expect("release");
    for key in ["{pool}:sem", "{pool}:sem:info"] {
        assert!(!exists(&mut con, key).await, "{key} is left after the last release");
    }
    assert!(exists(&mut con, "{pool}:sem:fence").await, "the counter must survive the release");

    // Holders that vanish without releasing: the keys expire with the last permit.
    for _ in 0..2 {
        let _ = locks
            .semaphore("gone", 2)
            .ttl(Duration::from_millis(300))
            .acquire()
            .await
            .expect("permit")
            .detach();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for key in ["{gone}:sem", "{gone}:sem:info"] {
        assert!(!exists(&mut con, key).await, "{key} outlived its permits");
    }
    assert!(locks.holders("gone", Mode::Permit { limit: 2 }).await.expect("holders").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_write_keys_are_cleaned_up_and_a_try_leaves_no_intent() {
    let server = RedisServer::start().await.expect("redis-server");
    let locks = LockClient::new(backend(&server).await);
    let mut con = raw(&server).await;
    let r1 = locks.read_lock("doc").ttl(LONG).acquire().await.expect("reader");
    let r2 = locks.read_lock("doc").ttl(LONG).acquire().await.expect("reader");
    let n: i64 = redis::cmd("HLEN").arg("{doc}:rw:tokens").query_async(&mut con).await.expect("HLEN");
    assert_eq!(n, 4, "a token and the metadata per reader");
    assert!(locks.write_lock("doc").try_acquire().await.expect("try").is_none());
    assert!(!exists(&mut con, "{doc}:rw:intents").await, "a writer that did not wait left an intent");
    let holders = locks.holders("doc", Mode::Read).await.expect("holders");
    assert_eq!(holders.len(), 2);
    assert!(holders.iter().all(|h| h.mode == Mode::Read && h.remaining_ttl.is_some()));
    r1.release().await.expect("release");
    r2.release().await.expect("release");
    for key in ["{doc}:rw:readers", "{doc}:rw:tokens"] {
        assert!(!exists(&mut con, key).await, "{key} is left after the last reader");
    }
    let w = locks.write_lock("doc").ttl(LONG).acquire().await.expect("writer");
    let value: String = redis::cmd("GET").arg("{doc}:rw:writer").query_async(&mut con).await.expect("GET");
    let (grant, meta) = value.split_once('\n').expect("the writer's metadata after its grant");
    assert_eq!(grant, format!("{}:{}", w.lease().owner(), w.fencing_token()));
    assert!(lock_core::Metadata::decode(meta).is_some(), "{meta}");
    let holders = locks.holders("doc", Mode::Write).await.expect("holders");
    assert_eq!(holders.len(), 1);
    assert_eq!((holders[0].mode, holders[0].fencing_token), (Mode::Write, Some(w.fencing_token())));
    w.release().await.expect("release");
    assert!(!exists(&mut con, "{doc}:rw:writer").await);
    assert!(exists(&mut con, "{doc}:rw:fence").await, "the counter must survive the release");
}

/// Tries a reader until it is granted; how long that took.
async fn reader_admitted_within(locks: &LockClient, name: &str, bound: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if let Some(g) = locks.read_lock(name).ttl(LONG).try_acquire().await.expect("try") {
            g.release().await.expect("release");
            return start.elapsed();
        }
        assert!(start.elapsed() < bound, "a reader was still refused after {bound:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_dies_while_waiting_blocks_readers_only_until_its_intent_lapses() {
    let server = RedisServer::start().await.expect("redis-server");
    let locks = LockClient::new(backend(&server).await);
    let mut con = raw(&server).await;
    let reader = locks.read_lock("doc").ttl(LONG).acquire().await.expect("reader");
    // What a waiting writer leaves before its process dies: one refused attempt with an intent.
    let intent_ms = 800;
    let started = Instant::now();
    let (status, _): (i64, String) = lock_redis::scripts::rwlock::ACQUIRE_WRITE
        .key("{doc}:rw:writer")
        .key("{doc}:rw:readers")
        .key("{doc}:rw:tokens")
        .key("{doc}:rw:intents")
        .key("{doc}:rw:fence")
        .arg(OwnerToken::random().to_string())
        .arg(30_000)
        .arg(intent_ms)
        .invoke_async(&mut con)
        .await
        .expect("write script");
    assert_eq!(status, 0, "the writer was granted beside a reader");
    assert!(
        locks.read_lock("doc").try_acquire().await.expect("try").is_none(),
        "the intent did not hold readers back"
    );
    reader_admitted_within(&locks, "doc", Duration::from_secs(5)).await;
    let lapsed = started.elapsed();
    assert!(
        lapsed >= Duration::from_millis(intent_ms - 50),
        "a reader was admitted {lapsed:?} in, before the intent lapsed"
    );
    assert!(!exists(&mut con, "{doc}:rw:intents").await, "the lapsed intent's key outlived it");
    reader.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_gives_up_or_is_cancelled_withdraws_its_intent_at_once() {
    let server = RedisServer::start().await.expect("redis-server");
    let locks = LockClient::new(backend(&server).await);
    // The writer is another client, as another process would be: a task that holds a read
    // lock and waits for the write lock of the same client is refused at once (AlreadyHeld).
    let writer = LockClient::new(backend(&server).await);
    assert!(locks.backend().capabilities().writer_preference);
    let reader = locks.read_lock("doc").ttl(LONG).acquire().await.expect("reader");
    // Gives up at its deadline: the intent is gone when the error is returned.
    let err = writer
        .write_lock("doc")
        .wait(Duration::from_millis(300))
        .acquire()
        .await
        .expect_err("a reader holds it");
    assert!(matches!(err, Error::WaitTimedOut { .. }), "{err:?}");
    assert!(
        locks.read_lock("doc").try_acquire().await.expect("try").is_some(),
        "the intent outlived its writer's wait"
    );
    // Cancelled while waiting: withdrawn in the background, well before it would lapse.
    let waiting = writer.write_lock("doc").wait(Duration::from_secs(30)).acquire();
    assert!(tokio::time::timeout(Duration::from_millis(300), waiting).await.is_err());
    let lapse = backend(&server).await.writer_intent_ttl();
    let took = reader_admitted_within(&locks, "doc", lapse).await;
    assert!(took < Duration::from_secs(1), "the cancelled writer's intent was withdrawn only after {took:?}");
    reader.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_and_read_write_tokens_rise_after_their_counter_is_lost() {
    let server = RedisServer::start().await.expect("redis-server");
    let locks = LockClient::new(backend(&server).await);
    let mut con = raw(&server).await;
    let p = locks.semaphore("s", 2).ttl(LONG).acquire().await.expect("permit");
    let (t1, _) = (p.fencing_token(), p.release().await.expect("release"));
    let r = locks.read_lock("s").ttl(LONG).acquire().await.expect("reader");
    let (r1, _) = (r.fencing_token(), r.release().await.expect("release"));
    // Data loss: the counters are gone (a restart from an older snapshot).
    let _: i64 =
        redis::cmd("DEL").arg("{s}:sem:fence").arg("{s}:rw:fence").query_async(&mut con).await.expect("DEL");
    let p2 = locks.semaphore("s", 2).ttl(LONG).acquire().await.expect("permit");
    assert!(p2.fencing_token() > t1, "permit token {} after {t1} repeated a token", p2.fencing_token());
    let w = locks.write_lock("s").ttl(LONG).acquire().await.expect("writer");
    assert!(w.fencing_token() > r1, "writer token {} after reader {r1}", w.fencing_token());
    p2.release().await.expect("release");
    w.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_permits_are_granted_listed_and_the_next_refused() {
    let server = RedisServer::start().await.expect("redis-server");
    let locks = LockClient::new(backend(&server).await);
    let mut guards = Vec::new();
    for _ in 0..64 {
        guards.push(locks.semaphore("big", 64).ttl(LONG).acquire().await.expect("permit"));
    }
    assert!(locks.semaphore("big", 64).try_acquire().await.expect("try").is_none(), "a 65th permit of 64");
    let holders = locks.holders("big", Mode::Permit { limit: 64 }).await.expect("holders");
    assert_eq!(holders.len(), 64);
    assert!(holders.iter().all(|h| h.mode == Mode::Permit { limit: 64 }));
    let mut tokens: Vec<u64> = holders.iter().filter_map(|h| h.fencing_token).map(|t| t.get()).collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), 64, "tokens repeat across permits");
    let mut ours: Vec<u64> = guards.iter().map(|g| g.fencing_token().get()).collect();
    ours.sort_unstable();
    assert_eq!(ours, tokens, "holders() does not report the granted tokens");
    for g in guards {
        g.release().await.expect("release");
    }
}

fn requests(names: &[&str], owner: OwnerToken) -> Vec<AcquireRequest> {
    names
        .iter()
        .map(|n| {
            let mut r = AcquireRequest::new(LockKey::new(n).expect("key"), LONG);
            r.owner = owner;
            r
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_atomic_multi_key_attempt_writes_nothing_when_one_name_is_held() {
    let server = RedisServer::start().await.expect("redis-server");
    let store = backend(&server).await;
    let locks = LockClient::new(store.clone());
    let mut con = raw(&server).await;
    let b = locks.lock("b").ttl(LONG).acquire().await.expect("b");
    let reqs = requests(&["a", "b", "c"], OwnerToken::random());
    assert!(store.try_acquire_all(&reqs).await.expect("attempt").is_none());
    for key in ["{a}", "{a}:fence", "{c}", "{c}:fence"] {
        assert!(!exists(&mut con, key).await, "a refused multi-key attempt wrote {key}");
    }
    b.release().await.expect("release");
    let leases = store.try_acquire_all(&reqs).await.expect("attempt").expect("all free now");
    for (lease, name) in leases.iter().zip(["a", "b", "c"]) {
        let info = locks.inspect(name).await.expect("inspect").expect("held");
        assert_eq!((info.owner, info.fencing_token), (Some(lease.owner()), Some(lease.fencing_token())));
        assert_eq!(lease.key().full(), name);
    }
    // Asked again with the same owner (a retry whose reply was lost): granted again, each
    // name with a new token (the first ones were never seen by the caller, and a grant found
    // again after a loss of data may hold a token below those issued since).
    let again = store.try_acquire_all(&reqs).await.expect("attempt").expect("ours");
    for (a, l) in again.iter().zip(&leases) {
        assert!(
            a.fencing_token() > l.fencing_token(),
            "{:?} after {:?}",
            a.fencing_token(),
            l.fencing_token()
        );
    }
    for l in &again {
        store.release(l).await.expect("release");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_key_attempt_whose_reply_is_lost_leaves_nothing() {
    let server = RedisServer::start().await.expect("redis-server");
    let proxy = Proxy::start(server.port()).await;
    let opts = RedisOptions::new(proxy.address()).request_timeout(Duration::from_millis(500));
    let locks = LockClient::new(RedisBackend::connect(opts).await.expect("connect through the proxy"));
    let warm = locks.lock_all(["w1", "w2"]).try_acquire().await.expect("warm up").expect("free");
    warm.release().await.expect("release");
    proxy.cut_next_reply();
    let err = locks.lock_all(["x", "y"]).ttl(LONG).try_acquire().await.expect_err("the reply was lost");
    assert!(err.is_retryable(), "{err:?}");
    let mut con = raw(&server).await;
    assert!(exists(&mut con, "{x}:fence").await, "the script should have run on the server");
    let other = LockClient::new(backend(&server).await);
    let g = other.lock_all(["x", "y"]).try_acquire().await.expect("try");
    assert!(g.is_some(), "the multi-key grant whose reply was lost still blocks others");
}

/// An election's observer is woken by what the election publishes (grants, proclaims and
/// releases), not by its 1 s poll: each change reaches it well within that. The grant's value
/// carries the leader's metadata, which expires with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_observers_are_woken_by_grants_proclaims_and_releases() {
    use futures::StreamExt;
    let server = RedisServer::start().await.expect("redis-server");
    let b = backend(&server).await;
    let native = b.observe(&LockKey::new("svc/observed").expect("key"), Mode::Leader).await.expect("observe");
    assert!(native.is_some(), "the backend's own observer stream, not the client's polling");
    let locks = LockClient::new(b);
    let election = locks.election("svc/observed");
    let mut seen = election.observe().await.expect("observe");
    let first = seen.next().await.expect("stream").expect("state");
    assert!(first.is_none(), "a fresh election has a leader: {first:?}");
    // Well below the 1 s poll, generous for a loaded machine.
    let prompt = Duration::from_millis(600);
    let mut next = async || {
        let started = Instant::now();
        let item = tokio::time::timeout(Duration::from_secs(5), seen.next())
            .await
            .expect("a change")
            .expect("stream");
        (item.expect("state"), started.elapsed())
    };

    let g = election.campaign("a:1").await.expect("elected");
    let (l, took) = next().await;
    assert_eq!(l.as_ref().and_then(|l| l.value.as_deref()), Some("a:1"));
    assert!(took < prompt, "the grant reached the observer after {took:?}");
    election.proclaim(&g, "a:2").await.expect("proclaim");
    let (l, took) = next().await;
    assert_eq!(l.as_ref().and_then(|l| l.value.as_deref()), Some("a:2"));
    assert!(took < prompt, "the proclaim reached the observer after {took:?}");
    let m = l.and_then(|l| l.info.metadata).expect("the leader's metadata");
    assert_eq!(m.pid, std::process::id());
    g.release().await.expect("resign");
    let (l, took) = next().await;
    assert!(l.is_none(), "after the resignation the observer saw {l:?}");
    assert!(took < prompt, "the resignation reached the observer after {took:?}");

    let mut con = raw(&server).await;
    let g = election.ttl(Duration::from_millis(500)).campaign("b").await.expect("elected");
    let lease = g.detach();
    assert!(exists(&mut con, "{svc/observed}:elect").await);
    let (l, _) = next().await;
    assert_eq!(l.and_then(|l| l.term), Some(lease.fencing_token()));
    // An expiry publishes nothing: the observer reads again at the leader's expiry.
    let (l, took) = next().await;
    assert!(l.is_none(), "after the expiry the observer saw {l:?}");
    assert!(took < Duration::from_millis(1500), "the expiry reached the observer after {took:?}");
}

/// Every grant carries its holder's metadata: a semaphore's permits and a read-write lock's
/// readers (kept in the primitive's hash, gone with the grant) and its writer (in the grant's
/// value, as a lock's), shown by `holders` and `list`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permits_readers_and_writers_carry_their_metadata() {
    let server = RedisServer::start().await.expect("redis-server");
    let b = backend(&server).await;
    let locks = LockClient::new(b.clone());
    let value_of = |info: &lock_core::LockInfo| info.metadata.as_ref().and_then(|m| m.value.clone());
    let permits: Vec<_> = futures::future::join_all(
        ["permit-a", "permit-b"].map(|v| locks.semaphore("meta/sem", 2).value(v).acquire()),
    )
    .await
    .into_iter()
    .map(|g| g.expect("permit"))
    .collect();
    let mut held: Vec<_> = locks.holders("meta/sem", Mode::Permit { limit: 2 }).await.expect("holders");
    held.sort_by_key(|i| i.fencing_token);
    let values: Vec<_> = held.iter().map(value_of).collect();
    assert_eq!(values.len(), 2, "{held:?}");
    assert!(
        values.contains(&Some("permit-a".into())) && values.contains(&Some("permit-b".into())),
        "{values:?}"
    );
    let m = held[0].metadata.as_ref().expect("metadata");
    assert_eq!(m.pid, std::process::id());
    let reader = locks.read_lock("meta/rw").value("reader").acquire().await.expect("reader");
    let listed = locks.list("meta/").await.expect("list");
    let of =
        |name: &str| listed.iter().filter(|(n, _)| n == name).map(|(_, i)| value_of(i)).collect::<Vec<_>>();
    assert_eq!(of("meta/rw"), vec![Some("reader".to_owned())], "{listed:?}");
    assert_eq!(of("meta/sem").len(), 2, "{listed:?}");
    for p in permits {
        p.release().await.expect("release");
    }
    reader.release().await.expect("release");

    // The writer's metadata rides in its value; its token is read back whole.
    let writer = locks.write_lock("meta/rw").value("writer").acquire().await.expect("writer");
    let held = locks.holders("meta/rw", Mode::Write).await.expect("holders");
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(value_of(&held[0]), Some("writer".into()));
    assert_eq!(held[0].fencing_token, Some(writer.fencing_token()));
    writer.extend(Duration::from_secs(30)).await.expect("extend keeps the value");
    assert_eq!(
        value_of(&locks.holders("meta/rw", Mode::Write).await.expect("holders")[0]),
        Some("writer".into())
    );
    writer.release().await.expect("release");

    // Nothing of the metadata outlives the grants: only the counters stay.
    let mut con = raw(&server).await;
    let keys: Vec<String> = redis::cmd("KEYS").arg("*meta*").query_async(&mut con).await.expect("KEYS");
    assert!(keys.iter().all(|k| k.ends_with(":fence")), "left behind: {keys:?}");
}
