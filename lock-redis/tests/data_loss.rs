//! Fencing tokens after a server loses data: redis-server with its default persistence (RDB
//! snapshots by the built-in `save` policy, no AOF) killed with SIGKILL comes back with its last
//! snapshot, older than the tokens it handed out since. The next token must still be greater
//! than every token issued before the crash. And `wait_replicas`: grants confirmed by a real
//! replica before they are returned, unconfirmed ones undone. And failovers and resharding: a
//! Sentinel-managed primary killed while a lock is held and a waiter waits; on a Redis
//! Cluster, a slot with a held lock moved while clients work, and a primary killed; and a
//! cluster listing refused, rather than short, when a slot moves under it.

#[path = "support/proxy.rs"]
mod proxy;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use conformance_tests::fixtures::redis::{
    command, Persistence, RedisCluster, RedisConfig, RedisServer, SentinelSet,
};
use lock_core::{LockClient, LockKey};
use lock_redis::{RedisBackend, RedisOptions, RedlockBackend, RedlockOptions};

async fn snapshot_server() -> RedisServer {
    RedisServer::start_with(RedisConfig { persistence: Persistence::Snapshot, ..RedisConfig::default() })
        .await
        .expect("redis-server with its default snapshots")
}

async fn raw(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}

async fn save(port: u16) {
    let _: () = redis::cmd("SAVE").query_async(&mut raw(port).await).await.expect("SAVE");
}

/// The fencing counter of `name` as the server at `port` holds it now.
async fn counter(port: u16, name: &str) -> Option<u64> {
    let key = format!("{{{}}}:fence", LockKey::new(name).expect("key").full());
    redis::cmd("GET").arg(key).query_async(&mut raw(port).await).await.expect("GET counter")
}

/// Ten acquire/release cycles; returns the last token, checking that each one rose.
async fn ten_cycles(locks: &LockClient, name: &str, mut last: u64) -> u64 {
    for i in 0..10 {
        let g = locks.lock(name).acquire().await.expect("acquire");
        let t = g.fencing_token().get();
        assert!(t > last, "cycle {i}: token {t} after {last}");
        last = t;
        let _ = g.release().await.expect("release");
    }
    last
}

/// Kills `server` with SIGKILL and starts it again on its directory: it loads its snapshot.
async fn crash_and_restart(server: &mut RedisServer) {
    server.process().kill().await;
    server.process().restart().await.expect("restart on the same directory");
}

/// An acquire that rides out the reconnect after a restart.
async fn acquire_token(locks: &LockClient, name: &str) -> u64 {
    let g =
        locks.lock(name).wait(Duration::from_secs(15)).acquire().await.expect("acquire after the restart");
    let t = g.fencing_token().get();
    let _ = g.release().await.expect("release");
    t
}

/// A retried attempt that finds its own earlier grant gets a fresh token, not the one that
/// grant was made with: a grant undone (as a `wait_replicas` attempt or a Redlock round undoes
/// one) and brought back by a restored snapshot holds a token below those issued since, for
/// every primitive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_found_again_gets_a_token_above_those_issued_since() {
    use lock_core::{AcquireRequest, Attempt, LockBackend, Mode};
    let mut server = snapshot_server().await;
    let port = server.port();
    let backend =
        RedisBackend::connect(RedisOptions::new(format!("127.0.0.1:{port}"))).await.expect("connect");
    let locks = LockClient::new(backend.clone());
    let modes = [Mode::Exclusive, Mode::Permit { limit: 1 }, Mode::Read, Mode::Write];
    let reqs: Vec<AcquireRequest> = modes
        .iter()
        .enumerate()
        .map(|(i, m)| {
            AcquireRequest::new(LockKey::new(&format!("again/{i}")).expect("key"), Duration::from_secs(60))
                .with_mode(*m)
        })
        .collect();
    let try_once = |req: &AcquireRequest| {
        let (backend, req) = (backend.clone(), req.clone());
        async move {
            match backend.try_acquire(&req).await {
                Ok(Attempt::Acquired(lease)) => Some(lease.fencing_token().get()),
                _ => None,
            }
        }
    };
    for req in &reqs {
        try_once(req).await.expect("the first grant");
    }
    save(port).await;
    // Each grant is undone; another owner takes the name and lets it go.
    let mut since = Vec::new();
    for req in &reqs {
        let _ = backend
            .release(
                &lock_core::Lease::new(
                    req.key.clone(),
                    req.owner,
                    lock_core::FencingToken::new(1),
                    req.ttl,
                    lock_core::Instant::now(),
                )
                .with_mode(req.mode),
            )
            .await
            .expect("undo");
        let other = AcquireRequest { owner: lock_core::OwnerToken::random(), ..req.clone() };
        let t = try_once(&other).await.expect("another owner's grant");
        let _ = backend
            .release(
                &lock_core::Lease::new(
                    other.key.clone(),
                    other.owner,
                    lock_core::FencingToken::new(t),
                    other.ttl,
                    lock_core::Instant::now(),
                )
                .with_mode(other.mode),
            )
            .await
            .expect("release");
        since.push(t);
    }
    crash_and_restart(&mut server).await;
    let _ = acquire_token(&locks, "again/reconnect").await;
    // The snapshot brought the undone grants back; the attempts sent again find them.
    for ((req, t), mode) in reqs.iter().zip(&since).zip(modes) {
        let again = try_once(req).await.expect("the attempt sent again");
        assert!(again > *t, "{mode:?}: token {again} after {t} was issued");
    }
}

/// The server's clock in microseconds (`TIME`).
async fn server_us(port: u16) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(&mut raw(port).await).await.expect("TIME");
    s * 1_000_000 + us
}

/// A name's first token is the server's clock in microseconds when it was granted (what lets
/// tokens rise past a counter lost with a snapshot), for every primitive that makes one: the
/// scripts write it as text, the microseconds padded to six digits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_names_token_is_the_servers_clock_in_microseconds() {
    let server = RedisServer::start().await.expect("redis-server");
    let port = server.port();
    let locks = LockClient::new(
        RedisBackend::connect(RedisOptions::new(format!("127.0.0.1:{port}"))).await.expect("connect"),
    );
    for i in 0..40 {
        let before = server_us(port).await;
        let tokens = [
            locks.lock(&format!("clock/lock/{i}")).acquire().await.expect("lock").fencing_token().get(),
            locks
                .semaphore(&format!("clock/sem/{i}"), 2)
                .acquire()
                .await
                .expect("permit")
                .fencing_token()
                .get(),
            locks.read_lock(&format!("clock/r/{i}")).acquire().await.expect("read").fencing_token().get(),
            locks.write_lock(&format!("clock/w/{i}")).acquire().await.expect("write").fencing_token().get(),
        ];
        let after = server_us(port).await;
        for t in tokens {
            assert!(before <= t && t <= after, "token {t} outside the server's clock [{before}, {after}]");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_token_rises_after_a_kill_restores_an_older_snapshot() {
    let mut server = snapshot_server().await;
    let port = server.port();
    let locks = LockClient::new(
        RedisBackend::connect(RedisOptions::new(format!("127.0.0.1:{port}"))).await.expect("connect"),
    );
    let t1 = acquire_token(&locks, "snap").await;
    save(port).await;
    let t11 = ten_cycles(&locks, "snap", t1).await;
    crash_and_restart(&mut server).await;
    // The fault is real: the server came back with the snapshot's counter, not the last one.
    assert_eq!(
        counter(port, "snap").await,
        Some(t1),
        "the restarted server should hold the snapshot's counter"
    );
    let next = acquire_token(&locks, "snap").await;
    assert!(next > t11, "token {next} after a crash that lost tokens up to {t11}: a token was issued twice");
}

async fn snapshot_masters() -> Vec<RedisServer> {
    let mut v = Vec::new();
    for _ in 0..3 {
        v.push(snapshot_server().await);
    }
    v
}

async fn redlock(servers: &[RedisServer]) -> LockClient {
    let nodes = servers.iter().map(|s| RedisOptions::new(format!("127.0.0.1:{}", s.port())));
    LockClient::new(RedlockBackend::connect(RedlockOptions::new(nodes)).await.expect("redlock"))
}

/// Redlock, one master restarted from a stale snapshot while another is down: the surviving
/// quorum overlaps the last grant's quorum on a node that kept its counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_token_rises_with_one_master_restarted_from_a_stale_snapshot() {
    let mut servers = snapshot_masters().await;
    let locks = redlock(&servers).await;
    let t1 = acquire_token(&locks, "snap1").await;
    save(servers[0].port()).await;
    let t11 = ten_cycles(&locks, "snap1", t1).await;
    crash_and_restart(&mut servers[0]).await;
    assert_eq!(counter(servers[0].port(), "snap1").await, Some(t1), "master 0 should hold the stale counter");
    servers[1].process().kill().await;
    let next = acquire_token(&locks, "snap1").await;
    assert!(next > t11, "token {next} after one master lost tokens up to {t11}");
}

/// Redlock, a majority of masters restarted from stale snapshots (the third is down): no node
/// of the next quorum remembers the last tokens; the server clock must carry them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_token_rises_with_a_majority_restarted_from_stale_snapshots() {
    let mut servers = snapshot_masters().await;
    let locks = redlock(&servers).await;
    let t1 = acquire_token(&locks, "snap2").await;
    save(servers[0].port()).await;
    save(servers[1].port()).await;
    let t11 = ten_cycles(&locks, "snap2", t1).await;
    crash_and_restart(&mut servers[0]).await;
    crash_and_restart(&mut servers[1]).await;
    for s in &servers[..2] {
        assert_eq!(
            counter(s.port(), "snap2").await,
            Some(t1),
            "a restarted master should hold the stale counter"
        );
    }
    servers[2].process().kill().await;
    let next = acquire_token(&locks, "snap2").await;
    assert!(next > t11, "token {next} after a majority lost tokens up to {t11}: a token was issued twice");
}

/// A replica of the server at `port`, returned once the primary counts it online.
async fn replica_of(port: u16) -> RedisServer {
    let args = ["--replicaof", "127.0.0.1", &port.to_string()].map(str::to_owned).to_vec();
    let replica = RedisServer::start_with(RedisConfig { extra_args: args, ..RedisConfig::default() })
        .await
        .expect("redis-server as a replica");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let info: String =
            redis::cmd("INFO").arg("replication").query_async(&mut raw(port).await).await.expect("INFO");
        if info.contains("state=online") {
            return replica;
        }
        assert!(tokio::time::Instant::now() < deadline, "the replica never came online: {info}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get(port: u16, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query_async(&mut raw(port).await).await.expect("GET")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_replicas_returns_confirmed_grants_and_undoes_the_others() {
    let primary = RedisServer::start().await.expect("redis-server");
    let replica = replica_of(primary.port()).await;
    let connect = |query: &str| {
        let url = format!("{}?{query}", primary.url());
        async move { RedisBackend::connect(url.parse().expect("url")).await }
    };

    // One replica asked for, one there: granted, and the replica already holds the grant
    // and its fencing counter when the acquire returns. (A generous timeout: a loaded CI
    // machine once kept a fresh replica from acknowledging within 500 ms.)
    let one = connect("wait_replicas=1&wait_timeout=5s&timeout=10s").await.expect("connect");
    let locks = LockClient::new(one.clone());
    let g = locks.lock("replicated").acquire().await.expect("a grant the replica confirms");
    let token = g.fencing_token().get();
    let key = one.redis_key(&LockKey::new("replicated").expect("key"));
    let held = get(replica.port(), &key).await.expect("the grant on the replica");
    assert!(held.split('\n').next().is_some_and(|v| v.ends_with(&format!(":{token}"))), "{held}");
    assert_eq!(counter(replica.port(), "replicated").await, Some(token));
    g.release().await.expect("release");

    // Two asked for, one there: every attempt is undone, and the error says why.
    let two = LockClient::new(connect("wait_replicas=2&wait_timeout=200ms").await.expect("connect"));
    let key = one.redis_key(&LockKey::new("unconfirmed").expect("key"));
    let e = two.lock("unconfirmed").try_acquire().await.expect_err("one replica cannot confirm for two");
    assert!(e.is_retryable() && e.to_string().contains("1 of the 2 replicas"), "{e}");
    assert_eq!(get(primary.port(), &key).await, None, "an unconfirmed grant was left behind");
    let waited = two.lock("unconfirmed").wait(Duration::from_millis(800)).acquire().await;
    assert!(waited.is_err(), "a waiting acquire got an unconfirmed grant");
    assert_eq!(get(primary.port(), &key).await, None, "a waiting acquire left a grant behind");
    // Others are not kept out meanwhile.
    locks
        .lock("unconfirmed")
        .try_acquire()
        .await
        .expect("try")
        .expect("free")
        .release()
        .await
        .expect("release");

    // A WAIT longer than the request timeout could never be told apart from a lost reply.
    let e = connect("wait_replicas=1&wait_timeout=2s&timeout=1s").await.expect_err("wait_timeout >= timeout");
    assert!(e.to_string().contains("wait_timeout"), "{e}");
}

/// With `wait_replicas`, a grant's `WAIT` travels with its script, on one connection. Sent
/// after the script's reply, it could go out on a connection made anew meanwhile (another
/// request failed there and reconnected it), where it covers none of the grant's writes and
/// confirms at once. With the only replica frozen, no grant may be confirmed, however often
/// the connections are cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_replicas_confirms_no_grant_over_a_new_connection() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let primary = RedisServer::start().await.expect("redis-server");
    let mut replica = replica_of(primary.port()).await;
    let url = format!("{}?wait_replicas=1&wait_timeout=20ms&timeout=2s", primary.url());
    let locks = LockClient::new(RedisBackend::connect(url.parse().expect("url")).await.expect("connect"));
    replica.process().pause().expect("freeze the replica");
    let (port, stop) = (primary.port(), Arc::new(AtomicBool::new(false)));
    let cutter = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let _ = command(port, &["CLIENT", "KILL", "TYPE", "normal"]).await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let locks = locks.clone();
            tokio::spawn(async move {
                let mut confirmed = Vec::new();
                for i in 0..80 {
                    let name = format!("cut/{t}/{i}");
                    if let Ok(Some(g)) = locks.lock(&name).try_acquire().await {
                        confirmed.push(name);
                        g.detach();
                    }
                }
                confirmed
            })
        })
        .collect();
    let mut confirmed = Vec::new();
    for t in tasks {
        confirmed.extend(t.await.expect("task"));
    }
    stop.store(true, Ordering::Relaxed);
    cutter.await.expect("cutter");
    replica.process().resume().expect("thaw the replica");
    assert!(confirmed.is_empty(), "grants the frozen replica never had were confirmed: {confirmed:?}");
}

/// With `wait_replicas`, grants travel on a connection of their own, where each waits behind
/// the `WAIT`s of the grants before it. A try that times out there is undone on that same
/// connection, after its own request: an undo that overtook it would find nothing, and the
/// grant made later would block the lock for its TTL with no holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undo_never_overtakes_its_attempt_behind_replica_waits() {
    // No replica: every WAIT blocks its whole wait_timeout.
    let server = RedisServer::start().await.expect("redis-server");
    let url = format!("{}?wait_replicas=1&wait_timeout=150ms&timeout=200ms", server.url());
    let backend = RedisBackend::connect(url.parse().expect("url")).await.expect("connect");
    let locks = LockClient::new(backend.clone());
    let busy: Vec<_> = (0..5)
        .map(|i| {
            let l = locks.clone();
            tokio::spawn(async move {
                let _ = l.lock(&format!("busy{i}")).try_acquire().await;
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let late = locks.lock("late").ttl(Duration::from_secs(30)).try_acquire().await;
    assert!(late.is_err(), "the try waits behind five WAITs of 150 ms: {late:?}");
    for b in busy {
        let _ = b.await;
    }
    tokio::time::sleep(Duration::from_millis(900)).await;
    let left = backend.redis_key(&LockKey::new("late").expect("key"));
    assert_eq!(get(server.port(), &left).await, None, "a grant nobody holds was left behind");
}

/// Returns once the replica of the primary at `port` has every write the primary has.
async fn caught_up(port: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let info = command(port, &["INFO", "replication"]).await.unwrap_or_default().concat();
        let field = |name: &str| {
            info.split(['\r', '\n', ','])
                .find_map(|f| f.strip_prefix(name))
                .and_then(|v| v.parse::<u64>().ok())
        };
        if let (Some(primary), Some(replica)) = (field("master_repl_offset:"), field("offset=")) {
            if info.contains("state=online") && replica >= primary {
                return;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "the replica never caught up: {info}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_is_followed_and_tokens_keep_rising() {
    let mut set = SentinelSet::start().await.expect("a primary, a replica and three sentinels");
    let (old, new) = (set.servers[0].port(), set.servers[1].port());
    assert_eq!(set.primary_port().await, Some(old));
    let backend =
        RedisBackend::connect(set.url().parse().expect("url")).await.expect("connect through the sentinels");
    let locks = LockClient::new(backend);
    let last = ten_cycles(&locks, "failover", 0).await;

    // A holder, and a waiter for its lock.
    let held = locks.lock("held").ttl(Duration::from_secs(30)).acquire().await.expect("holder");
    let waiter = {
        let locks = locks.clone();
        tokio::spawn(async move { locks.lock("held").wait(Duration::from_secs(60)).acquire().await })
    };
    // Everything so far is on the replica (replication is asynchronous: without this, the
    // failover may lose the holder's grant, which is Redis's promise, not ours to test).
    caught_up(old).await;

    set.servers[0].process().kill().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while set.primary_port().await != Some(new) {
        assert!(tokio::time::Instant::now() < deadline, "the sentinels never promoted the replica");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // New grants go to the new primary, with tokens above every earlier one.
    let after = acquire_token(&locks, "failover").await;
    assert!(after > last, "token {after} after the failover, {last} before");
    // The holder still holds on the new primary, the waiter still waits; the release hands over.
    assert!(!waiter.is_finished(), "the waiter got a lock that is held");
    assert_eq!(
        held.release().await.expect("release on the new primary"),
        lock_core::ReleaseOutcome::Released
    );
    let g = waiter.await.expect("join").expect("the waiter carries on against the new primary");
    assert!(g.fencing_token().get() > after, "the waiter's token {} after {after}", g.fencing_token().get());
    g.release().await.expect("release");
}

/// A stand-in for a sentinel that missed a failover, or knows it first: answers `SENTINEL
/// get-master-addr-by-name` with the server at `port` on loopback, anything else with OK.
async fn fake_sentinel(port: u16) -> u16 {
    fake_sentinel_naming(Arc::new(AtomicU16::new(port))).await
}

/// [`fake_sentinel`] naming the server whose port `port` holds when asked.
async fn fake_sentinel_naming(port: Arc<AtomicU16>) -> u16 {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let me = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let port = port.clone();
            tokio::spawn(async move {
                let (r, mut w) = conn.into_split();
                let mut r = tokio::io::BufReader::new(r);
                while let Some(cmd) = read_command(&mut r).await {
                    let reply = match cmd.first().map(|c| c.to_ascii_uppercase()).as_deref() {
                        Some("SENTINEL") => {
                            let p = port.load(Ordering::SeqCst).to_string();
                            format!("*2\r\n$9\r\n127.0.0.1\r\n${}\r\n{p}\r\n", p.len())
                        }
                        Some("HELLO") => "-ERR unknown command 'HELLO'\r\n".to_owned(),
                        Some("PING") => "+PONG\r\n".to_owned(),
                        _ => "+OK\r\n".to_owned(),
                    };
                    if w.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    me
}

/// One RESP command (an array of bulk strings); `None` at the end of the stream.
async fn read_command(r: &mut (impl tokio::io::AsyncBufRead + Unpin)) -> Option<Vec<String>> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut line = String::new();
    r.read_line(&mut line).await.ok()?;
    let n: usize = line.trim().strip_prefix('*')?.parse().ok()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        line.clear();
        r.read_line(&mut line).await.ok()?;
        let len: usize = line.trim().strip_prefix('$')?.parse().ok()?;
        let mut buf = vec![0; len + 2];
        r.read_exact(&mut buf).await.ok()?;
        buf.truncate(len);
        out.push(String::from_utf8(buf).ok()?);
    }
    Some(out)
}

/// A sentinel that names a replica (one that has not seen a failover yet, listed first) is
/// passed over: the client asks the named server its `ROLE` and takes the next sentinel's
/// answer, so no write goes to a replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_that_names_a_replica_is_passed_over() {
    let primary = RedisServer::start().await.expect("redis-server");
    let replica = replica_of(primary.port()).await;
    let (stale, knows) = (fake_sentinel(replica.port()).await, fake_sentinel(primary.port()).await);
    let url = format!("redis+sentinel://127.0.0.1:{stale},127.0.0.1:{knows}/fake");
    let backend =
        RedisBackend::connect(url.parse().expect("url")).await.expect("connect through the sentinels");
    let key = backend.redis_key(&LockKey::new("role").expect("key"));
    let locks = LockClient::new(backend);
    let g = locks.lock("role").acquire().await.expect("a grant on the primary");
    assert!(get(primary.port(), &key).await.is_some(), "the grant is not on the primary");
    g.release().await.expect("release");
}

/// A `try_acquire` whose grant is made on the primary and replicated, but whose reply is lost
/// with the primary (it answers no more), then the replica promoted tens of seconds later (as
/// Sentinel's `down-after-milliseconds` makes it): the undo keeps asking until the grant's TTL
/// and deletes the grant on the new primary (it gave up after about a second, and the grant
/// nobody holds blocked the name on the new primary for its whole TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_grant_is_undone_on_the_primary_promoted_after_the_failover() {
    let primary = RedisServer::start().await.expect("redis-server");
    let replica = replica_of(primary.port()).await;
    let front = proxy::Proxy::start(primary.port()).await;
    let named = Arc::new(AtomicU16::new(front.port()));
    let sentinel = fake_sentinel_naming(named.clone()).await;
    let url = format!("redis+sentinel://127.0.0.1:{sentinel}/fake");
    let opts: RedisOptions = url.parse().expect("url");
    let backend = RedisBackend::connect(opts.request_timeout(Duration::from_millis(500)))
        .await
        .expect("connect through the sentinel");
    let key = backend.redis_key(&LockKey::new("promoted").expect("key"));
    let locks = LockClient::new(backend);
    locks.lock("warm-up").acquire().await.expect("warm up").release().await.expect("release");

    // The grant is made and replicated; its reply is lost, and the primary answers no more.
    front.cut_next_reply();
    front.refuse_connections(true);
    let ttl = Duration::from_secs(30);
    let err = locks.lock("promoted").ttl(ttl).try_acquire().await.expect_err("the reply was lost");
    assert!(err.is_retryable(), "{err:?}");
    caught_up(primary.port()).await;
    assert!(get(replica.port(), &key).await.is_some(), "the grant should be on the replica");
    // Past the quick rechecks, the replica is promoted and the sentinel names it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    command(replica.port(), &["REPLICAOF", "NO", "ONE"]).await.expect("promote the replica");
    named.store(replica.port(), Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while get(replica.port(), &key).await.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lost grant stayed on the promoted primary (until its TTL of {ttl:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let g = locks.lock("promoted").try_acquire().await.expect("try").expect("the name is free");
    g.release().await.expect("release");
}

/// Waiters that registered before a Sentinel failover are woken by releases on the promoted
/// primary: their client's subscriber moves there with the failover. (It kept trying the dead
/// primary, and those waiters fell back to polling every 250 ms.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_from_before_a_sentinel_failover_are_woken_on_the_new_primary() {
    const NAMES: usize = 16;
    let mut primary = RedisServer::start().await.expect("redis-server");
    let replica = replica_of(primary.port()).await;
    let named = Arc::new(AtomicU16::new(primary.port()));
    let sentinel = fake_sentinel_naming(named.clone()).await;
    let url = format!("redis+sentinel://127.0.0.1:{sentinel}/fake");
    let connect = || async {
        RedisBackend::connect(url.parse().expect("url")).await.expect("connect through the sentinel")
    };
    let (holders, waiter_backend) = (LockClient::new(connect().await), connect().await);
    let queues: Vec<String> = (0..NAMES)
        .map(|i| {
            format!("{}:q", waiter_backend.redis_key(&LockKey::new(&format!("moved/{i}")).expect("key")))
        })
        .collect();
    let waiters = LockClient::new(waiter_backend);
    let mut held = Vec::new();
    for i in 0..NAMES {
        held.push(
            holders.lock(&format!("moved/{i}")).ttl(Duration::from_secs(60)).acquire().await.expect("holder"),
        );
    }
    let mut waiting = Vec::new();
    for i in 0..NAMES {
        let w = waiters.clone();
        waiting.push(tokio::spawn(async move {
            let g = w.lock(&format!("moved/{i}")).wait(Duration::from_secs(60)).acquire().await;
            (tokio::time::Instant::now(), g)
        }));
    }
    // Every waiter is in its name's queue, and the replica has it all.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for q in &queues {
        while command(primary.port(), &["ZCARD", q]).await.unwrap_or_default().concat() != "1" {
            assert!(tokio::time::Instant::now() < deadline, "a waiter never queued on {q}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    caught_up(primary.port()).await;

    primary.process().kill().await;
    command(replica.port(), &["REPLICAOF", "NO", "ONE"]).await.expect("promote the replica");
    named.store(replica.port(), Ordering::SeqCst);
    // Both clients follow (the sentinel is asked every second, and at once on trouble): the
    // holders' once a try of theirs succeeds, the waiters' once their wake-up channel is
    // subscribed on the new primary (with the change; without it, after the deadline).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(g)) = holders.lock("moved/probe").try_acquire().await {
            g.release().await.expect("release");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the holders' client never followed the failover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while command(replica.port(), &["PUBSUB", "CHANNELS", "*wake:*"]).await.unwrap_or_default().is_empty()
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut took = Vec::new();
    for (g, w) in held.into_iter().zip(waiting) {
        let released = tokio::time::Instant::now();
        assert_eq!(
            g.release().await.expect("release on the new primary"),
            lock_core::ReleaseOutcome::Released
        );
        let (at, g) = w.await.expect("join");
        took.push(at.saturating_duration_since(released));
        g.expect("the waiter carries on against the new primary").release().await.expect("release");
        // Waiters that poll were all woken together when the primary went: a gap that is no
        // divisor of their 250 ms spreads the releases over their polling phase.
        tokio::time::sleep(Duration::from_millis(97)).await;
    }
    took.sort();
    // A waiter woken by the release has the lock in a millisecond or two; one that polls (at
    // most every 250 ms) within 25 ms only now and then (at most 4 of 8 in runs of the code
    // before). A quarter may be slow on a loaded machine.
    let prompt = took.iter().filter(|t| **t < Duration::from_millis(25)).count();
    assert!(
        prompt >= NAMES * 3 / 4,
        "hand-offs after the failover took {took:?}: the waiters were not woken, they polled"
    );
}

/// A cluster client's lock `name`: the backend, the client, and the slot its keys live in.
async fn cluster_lock(cluster: &RedisCluster, name: &str) -> (LockClient, u16) {
    let backend =
        RedisBackend::connect(cluster.url().parse().expect("url")).await.expect("connect to the cluster");
    let key = backend.redis_key(&LockKey::new(name).expect("key"));
    let slot = cluster.slot(&key).await.expect("the key's slot");
    (LockClient::new(backend), slot)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_slot_moves_with_a_held_lock_while_clients_work() {
    let cluster = RedisCluster::start(3).await.expect("a Redis Cluster");
    let (locks, slot) = cluster_lock(&cluster, "moving").await;
    // A name whose keys would get an empty hash tag (`P{}x}`), and so no common slot, is
    // refused with a typed error.
    let err = locks.lock("}x").try_acquire().await.expect_err("a name starting with '}'");
    assert!(matches!(err, lock_core::Error::Unsupported { .. }), "{err:?}");
    let held = locks.lock("moving").ttl(Duration::from_secs(30)).acquire().await.expect("holder");
    let first = held.fencing_token().get();
    let from = cluster.owner(slot).await.expect("the slot's primary");
    let to = cluster.primaries().await.into_iter().find(|p| *p != from).expect("another primary");

    // Clients at work on the same slot while it moves: a waiter for the held lock, and a
    // semaphore on the same name (its keys share the lock's hash tag) taken and given back.
    let waiter = {
        let locks = locks.clone();
        tokio::spawn(async move { locks.lock("moving").wait(Duration::from_secs(60)).acquire().await })
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let (locks, stop) = (locks.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut last, mut rounds) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let g = locks.semaphore("moving", 2).wait(Duration::from_secs(20)).acquire().await;
                let g = g.expect("a permit while the slot moves");
                let t = g.fencing_token().get();
                assert!(t > last, "permit token {t} after {last}");
                last = t;
                g.release().await.expect("release a permit");
                rounds += 1;
            }
            rounds
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.move_slot(slot, to).await.expect("move the slot");
    assert_eq!(cluster.owner(slot).await, Some(to), "the slot did not move");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let rounds = worker.await.expect("the worker");
    assert!(rounds > 0, "no permit was taken while the slot moved");

    // The grant moved with its slot: it still extends; the waiter still waits; the release
    // (on the new primary) hands the lock over with a higher token.
    held.extend(Duration::from_secs(30)).await.expect("extend after the move");
    assert!(!waiter.is_finished(), "the waiter got a lock that is held");
    assert_eq!(held.release().await.expect("release after the move"), lock_core::ReleaseOutcome::Released);
    let g = waiter.await.expect("join").expect("the waiter carries on after the move");
    assert!(g.fencing_token().get() > first, "token {} after {first}", g.fencing_token().get());
    g.release().await.expect("release");
}

/// Every page of `list(prefix)` on `backend`, one grant per page asked.
async fn cluster_listing(backend: &RedisBackend, prefix: &str) -> lock_core::Result<Vec<String>> {
    use lock_core::LockBackend;
    let (mut names, mut cursor) = (Vec::new(), None);
    loop {
        let page = backend.list(prefix, cursor, 1).await?;
        names.extend(page.entries.into_iter().map(|(name, _)| name));
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    names.sort();
    Ok(names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_listing_is_refused_rather_than_short_when_a_slot_moves() {
    use lock_core::LockBackend;
    let cluster = RedisCluster::start(3).await.expect("a Redis Cluster");
    let backend =
        RedisBackend::connect(cluster.url().parse().expect("url")).await.expect("connect to the cluster");
    let locks = LockClient::new(backend.clone());
    // Names held on every primary.
    let names: Vec<String> = (0..24).map(|i| format!("listed/{i:02}")).collect();
    let mut held = Vec::new();
    for name in &names {
        held.push(locks.lock(name).ttl(Duration::from_secs(120)).acquire().await.expect("lock"));
    }
    let slot_of = |name: &str| {
        let key = backend.redis_key(&LockKey::new(name).expect("key"));
        let cluster = &cluster;
        async move { cluster.slot(&key).await.expect("the key's slot") }
    };
    assert_eq!(cluster_listing(&backend, "listed/").await.expect("a listing of a settled cluster"), names);

    // A slot moves between two pages (its keys with it, then `SETSLOT … NODE`): the next page
    // is refused, retryably, since keys may have moved to a primary scanned before.
    let first = backend.list("listed/", None, 1).await.expect("the first page");
    let cursor = first.cursor.expect("more pages: three primaries");
    let slot = slot_of(&names[0]).await;
    let from = cluster.owner(slot).await.expect("the slot's primary");
    let to = cluster.primaries().await.into_iter().find(|p| *p != from).expect("another primary");
    cluster.move_slot(slot, to).await.expect("move the slot");
    let err = backend.list("listed/", Some(cursor), 1).await.expect_err("a page after a slot moved");
    assert!(err.is_retryable() && err.to_string().contains("changed since"), "{err}");
    // Begun again, the listing is whole (the client's own slot map may still be behind).
    assert_eq!(cluster_listing(&backend, "listed/").await.expect("a listing after the move"), names);

    // While a slot is being moved (`IMPORTING` / `MIGRATING`, no key moved yet), a listing and
    // the fencing counters are refused from their first page; once the move is called off,
    // they are whole again.
    let slot = slot_of(&names[1]).await;
    let from = cluster.owner(slot).await.expect("the slot's primary");
    let to = cluster.primaries().await.into_iter().find(|p| *p != from).expect("another primary");
    cluster.begin_slot_move(slot, to).await.expect("begin a slot move");
    let err = backend.list("listed/", None, 1).await.expect_err("a listing while a slot moves");
    assert!(err.is_retryable() && err.to_string().contains("migrating"), "{err}");
    let err = backend.fencing_counters("listed/", None, 100).await.expect_err("counters while a slot moves");
    assert!(err.is_retryable(), "{err}");
    cluster.cancel_slot_move(slot, from, to).await.expect("call the move off");
    assert_eq!(cluster_listing(&backend, "listed/").await.expect("a listing after it"), names);
    for g in held {
        g.release().await.expect("release");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_primary_killed_with_a_held_lock_keeps_tokens_rising() {
    // Fails over 2 s after the primary stops answering.
    let mut cluster =
        RedisCluster::start_with(3, None, Duration::from_secs(2)).await.expect("a Redis Cluster");
    let (locks, slot) = cluster_lock(&cluster, "failover").await;
    let last = ten_cycles(&locks, "failover", 0).await;
    // Renewed through the failover (a TTL longer than the failover takes).
    let held =
        locks.lock("failover").ttl(Duration::from_secs(8)).auto_renew().acquire().await.expect("holder");
    let token = held.fencing_token().get();
    assert!(token > last);
    let owner = cluster.owner(slot).await.expect("the slot's primary");
    caught_up(owner).await;
    // A client that only lists, its slot map read before the failover.
    let lister =
        RedisBackend::connect(cluster.url().parse().expect("url")).await.expect("connect to the cluster");
    let lister = LockClient::new(lister);
    assert!(lister.list("failover").await.expect("list").iter().any(|(k, _)| k == "failover"));
    // A waiter for the held lock, and tries of a semaphore on the same name (same slot): the
    // failover's refusals are retryable, so the waiter waits on and no try fails for good.
    let waiter = {
        let locks = locks.clone();
        tokio::spawn(async move { locks.lock("failover").wait(Duration::from_secs(60)).acquire().await })
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let (locks, stop) = (locks.clone(), stop.clone());
        tokio::spawn(async move {
            let mut refused = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match locks.semaphore("failover", 2).try_acquire().await {
                    Ok(Some(g)) => drop(g.release().await),
                    Ok(None) => {}
                    Err(e) if e.is_retryable() => {}
                    Err(e) => refused.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            refused
        })
    };

    let server = cluster.servers.iter_mut().find(|s| s.port() == owner).expect("the primary's server");
    server.process().kill().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while cluster.owner(slot).await.is_none_or(|p| p == owner) {
        assert!(tokio::time::Instant::now() < deadline, "no replica took over the slot");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let refused = prober.await.expect("the prober");
    assert!(refused.is_empty(), "tries failed for good during the failover: {refused:?}");
    assert!(held.is_held(), "the holder's renewal gave up during the failover");
    assert!(!waiter.is_finished(), "the waiter ended during the failover: {:?}", waiter.await);
    // The lister's map still names the dead primary: listing alone brings it up to date
    // (refused meanwhile, retryably), and then finds the held lock on the new primary.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let listed = loop {
        match lister.list("failover").await {
            Ok(listed) => break listed,
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                assert!(tokio::time::Instant::now() < deadline, "the lister never caught up: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(listed.iter().any(|(k, _)| k == "failover"), "{listed:?}");

    // The replica has the holder's grant; new grants on the new primary rise above it.
    assert_eq!(
        held.release().await.expect("release on the new primary"),
        lock_core::ReleaseOutcome::Released
    );
    let g = waiter.await.expect("join").expect("the waiter carries on after the failover");
    assert!(
        g.fencing_token().get() > token,
        "token {} after the failover, {token} before",
        g.fencing_token()
    );
    g.release().await.expect("release");
    let after = acquire_token(&locks, "failover").await;
    assert!(after > token, "token {after} after the failover, {token} before");
}

/// A cluster client whose first seed cannot be reached still gets wake-up notices: its
/// subscriber connection goes to another node (every node of a cluster sees every
/// publication), not only to the first seed, for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_client_whose_first_seed_is_down_still_subscribes() {
    let cluster = RedisCluster::start(3).await.expect("a Redis Cluster");
    let primaries = cluster.primaries().await;
    let dead = conformance_tests::fixtures::free_port().expect("a free port");
    let nodes = std::iter::once(format!("127.0.0.1:{dead}"))
        .chain(primaries.iter().map(|p| format!("127.0.0.1:{p}")));
    let locks = LockClient::new(RedisBackend::connect(RedisOptions::cluster(nodes)).await.expect("connect"));
    let held = locks.lock("woken").ttl(Duration::from_secs(30)).acquire().await.expect("hold");
    let waiter = {
        let locks = locks.clone();
        tokio::spawn(async move { locks.lock("woken").wait(Duration::from_secs(20)).acquire().await })
    };
    let mut subscribed = false;
    for _ in 0..50 {
        for p in &primaries {
            let channels = command(*p, &["PUBSUB", "CHANNELS", "*"]).await.unwrap_or_default();
            subscribed |= !channels.is_empty();
        }
        if subscribed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(subscribed, "no node has the waiter's subscription: the subscriber only tries the first seed");
    held.release().await.expect("release");
    waiter.await.expect("join").expect("the waiter got the lock").release().await.expect("release");
}

/// With `wait_replicas`, a grant's script and its `WAIT` go in one pipeline; a refusal inside
/// it keeps its code: `NOREPLICAS` (`min-replicas-to-write` with too few replicas) is a passing
/// state, retryable, as it is for a single command (a pipeline's error lost the code, and the
/// refusal ended a waiting acquire at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_replicas_refused_by_min_replicas_is_retryable() {
    let args = ["--min-replicas-to-write", "1"].map(str::to_owned).to_vec();
    let server = RedisServer::start_with(RedisConfig { extra_args: args, ..RedisConfig::default() })
        .await
        .expect("redis-server");
    let url = format!("{}?wait_replicas=1&wait_timeout=50ms", server.url());
    let locks = LockClient::new(RedisBackend::connect(url.parse().expect("url")).await.expect("connect"));
    let e = locks.lock("norep").try_acquire().await.expect_err("no replica to write with");
    assert!(e.is_retryable(), "{e}");
}
