//! Failure and interoperability tests on real redis-server processes.

use std::time::Duration;

use conformance_tests::fixtures::redis::{RedisConfig, RedisServer};
use lock_core::{
    BackendErrorKind, Error, FencingToken, Instant, LockBackend, LockClient, LockKey, Mode, ReleaseOutcome,
};
use lock_redis::{RedisBackend, RedisOptions, RedlockBackend, RedlockOptions};

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

/// A single-node backend on `server`.
async fn connect_single(server: &RedisServer) -> RedisBackend {
    RedisBackend::connect(server.url().parse().expect("url")).await.expect("connect")
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).expect("url").get_multiplexed_async_connection().await.expect("raw connection")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_grants_with_one_node_down_and_refuses_without_quorum() {
    let mut servers = masters(3).await;
    let locks = redlock(&servers).await;
    servers[0].process().kill().await;
    let g = locks.lock("down").ttl(Duration::from_secs(5)).acquire().await.expect("quorum of 2 of 3 grants");
    assert!(g.is_held());
    assert_eq!(g.release().await.expect("release with a node down"), ReleaseOutcome::Released);

    servers[1].process().kill().await;
    let start = Instant::now();
    let err =
        locks.lock("down").ttl(Duration::from_secs(5)).acquire().await.expect_err("1 of 3 is no quorum");
    assert!(matches!(err, Error::Backend { kind: BackendErrorKind::Unavailable, .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("no quorum"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(3), "refusal took {:?}", start.elapsed());
    // Nothing left on the surviving node.
    let mut con = raw(&servers[2].url()).await;
    let n: i64 = redis::cmd("EXISTS").arg("{down}").query_async(&mut con).await.expect("exists");
    assert_eq!(n, 0, "a refused Redlock acquire left a partial grant behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_node_paused_past_the_ttl() {
    let mut servers = masters(3).await;
    let a = redlock(&servers).await;
    let b = redlock(&servers).await;
    servers[0].process().pause().expect("pause");
    let ttl = Duration::from_millis(1500);
    let ga = a.lock("paused").ttl(ttl).acquire().await.expect("2 of 3 grant while one is paused");
    let fa = ga.fencing_token();
    let lease = ga.detach();
    // The paused node applies our queued grant only after it resumes, past the TTL.
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    servers[0].process().resume().expect("resume");
    let gb = b.lock("paused").ttl(ttl).wait(Duration::from_secs(10)).acquire().await.expect("takeover");
    assert!(gb.fencing_token() > fa, "token must rise across the takeover");
    assert_eq!(a.release_lease(&lease).await.expect("stale release"), ReleaseOutcome::NotHeld);
    assert!(gb.is_held());
    assert_eq!(gb.release().await.expect("release"), ReleaseOutcome::Released);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_fencing_rises_with_a_node_down_and_after_a_restart() {
    let mut servers = masters(3).await;
    let locks = redlock(&servers).await;
    let mut last = 0u64;
    let mut step = |t: u64, when: &str| {
        assert!(t > last, "token {t} after {last} ({when})");
        last = t;
    };
    for _ in 0..5 {
        let g = locks.lock("fence").acquire().await.expect("acquire");
        step(g.fencing_token().get(), "all up");
        let _ = g.release().await.expect("release");
    }
    servers[0].process().kill().await;
    for _ in 0..5 {
        let g = locks.lock("fence").acquire().await.expect("acquire with a node down");
        step(g.fencing_token().get(), "node 0 down");
        let _ = g.release().await.expect("release");
    }
    // Restarted without persistence: the node lost its counter.
    servers[0].process().restart().await.expect("restart");
    servers[1].process().kill().await;
    for _ in 0..5 {
        let g =
            locks.lock("fence").wait(Duration::from_secs(5)).acquire().await.expect("acquire after restart");
        step(g.fencing_token().get(), "node 0 restarted empty, node 1 down");
        let _ = g.release().await.expect("release");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_write_back_carries_the_highest_proposal_to_a_quorum() {
    // One node's counter runs far ahead of the others (and of the clock). The granted token
    // is that node's proposal; write-back must raise the other nodes' counters, so that with
    // the leading node gone the next grant is still higher.
    let mut servers = masters(3).await;
    let locks = redlock(&servers).await;
    let single = connect_single(&servers[0]).await;
    let counter = format!("{}:fence", single.redis_key(&LockKey::new("wb").expect("key")));
    let ahead: u64 = 8_000_000_000_000_000;
    let mut con = raw(&servers[0].url()).await;
    let _: () = redis::cmd("SET").arg(&counter).arg(ahead).query_async(&mut con).await.expect("set counter");
    let g = locks.lock("wb").acquire().await.expect("acquire");
    let first = g.fencing_token().get();
    assert_eq!(first, ahead + 1, "the token is the highest proposal");
    let _ = g.release().await.expect("release");
    servers[0].process().kill().await;
    let g = locks.lock("wb").acquire().await.expect("acquire without the leading node");
    assert!(
        g.fencing_token().get() > first,
        "{} must exceed {first}: write-back did not reach a quorum",
        g.fencing_token()
    );
    let _ = g.release().await.expect("release");
}

/// Raising a counter compares the decimal numbers exactly: above 2^53 two counters one apart
/// are the same Lua number, and a raise by one was skipped (then the next grant repeated the
/// token it was raised to).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_a_counter_above_2_pow_53_is_exact() {
    let server = RedisServer::start().await.expect("redis-server");
    let single = connect_single(&server).await;
    let key = LockKey::new("big").expect("key");
    let counter = format!("{}:fence", single.redis_key(&key));
    let base: u64 = 1 << 53;
    let mut con = raw(&server.url()).await;
    let _: () = redis::cmd("SET").arg(&counter).arg(base).query_async(&mut con).await.expect("set counter");
    let raised = single
        .raise_fencing_counter(&key, Mode::Exclusive, FencingToken::new(base + 1))
        .await
        .expect("raise");
    assert_eq!(raised.get(), base + 1, "the counter was not raised by one above 2^53");
    let locks = LockClient::new(single);
    let g = locks.lock("big").acquire().await.expect("acquire");
    assert!(g.fencing_token().get() > base + 1, "token {} repeats the raised counter", g.fencing_token());
    let _ = g.release().await.expect("release");
}

/// A counter raised to where Redis's 64-bit `INCR` would overflow would break every later
/// grant of the key: refused with a typed error, the key still usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_a_counter_past_what_redis_can_count_is_refused() {
    let server = RedisServer::start().await.expect("redis-server");
    let single = connect_single(&server).await;
    let key = LockKey::new("huge").expect("key");
    for at_least in [u64::MAX, i64::MAX as u64, i64::MAX as u64 - 1] {
        let raised = single.raise_fencing_counter(&key, Mode::Exclusive, FencingToken::new(at_least)).await;
        assert!(matches!(raised, Err(Error::Unsupported { .. })), "{at_least}: {raised:?}");
    }
    let locks = LockClient::new(single);
    let g = locks.lock("huge").try_acquire().await.expect("the key still takes grants");
    g.expect("free").release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_after_expiry_is_refused() {
    let server = RedisServer::start().await.expect("redis-server");
    let locks = LockClient::new(connect_single(&server).await);
    let mut lease =
        locks.lock("exp").ttl(Duration::from_millis(200)).acquire().await.expect("acquire").detach();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(matches!(
        locks.extend_lease(&mut lease, Duration::from_secs(10)).await,
        Err(Error::NotHeld { .. })
    ));
    assert!(locks.inspect("exp").await.expect("inspect").is_none(), "extend revived an expired grant");
}

async fn no_zombie_after_release(locks: &LockClient, name: &str) {
    for i in 0..30u64 {
        let g =
            locks.lock(name).ttl(Duration::from_millis(150)).auto_renew().acquire().await.expect("acquire");
        // Release at varying points of the 50 ms renewal cycle.
        tokio::time::sleep(Duration::from_millis(7 * (i % 9))).await;
        assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released, "round {i}");
        assert!(
            locks.inspect(name).await.expect("inspect").is_none(),
            "round {i}: key present right after release"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(locks.inspect(name).await.expect("inspect").is_none(), "a renewal resurrected a released key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_racing_renewal_leaves_no_renewed_zombie_key() {
    let server = RedisServer::start().await.expect("redis-server");
    let single = LockClient::new(connect_single(&server).await);
    no_zombie_after_release(&single, "zombie").await;
    let servers = masters(3).await;
    no_zombie_after_release(&redlock(&servers).await, "zombie").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_are_reloaded_after_script_flush() {
    let server = RedisServer::start().await.expect("redis-server");
    let locks = LockClient::new(connect_single(&server).await);
    let _ = locks.lock("flush").acquire().await.expect("acquire").release().await.expect("release");
    let mut con = raw(&server.url()).await;
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut con).await.expect("flush");
    let g = locks.lock("flush").acquire().await.expect("acquire after SCRIPT FLUSH (NOSCRIPT reload)");
    assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subscriber_connection_serves_all_waiters_of_a_client() {
    let server = RedisServer::start().await.expect("redis-server");
    let holder = LockClient::new(connect_single(&server).await);
    let waiter = LockClient::new(connect_single(&server).await);
    let mut guards = Vec::new();
    let mut waits = Vec::new();
    for i in 0..6 {
        let name = format!("sub/{i}");
        guards.push(holder.lock(&name).ttl(Duration::from_secs(30)).acquire().await.expect("hold"));
        let w = waiter.clone();
        waits.push(tokio::spawn(async move { w.lock(&name).wait(Duration::from_secs(20)).acquire().await }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut con = raw(&server.url()).await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut con)
        .await
        .expect("client list");
    assert_eq!(list.lines().count(), 1, "expected one subscriber connection for 6 waiters:\n{list}");
    for g in guards {
        let _ = g.release().await.expect("release");
    }
    for w in waits {
        let g = w.await.expect("join").expect("waiter woke and acquired");
        let _ = g.release().await.expect("release");
    }
}

/// Waiters are woken by the release's notice, not only by their polls: while a waiter waits
/// it is subscribed to its client's wake-up channel, the release publishes one notice (to
/// that channel alone), and once the waiter holds the lock nobody stays subscribed (after the
/// channel's linger of a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_listens_on_the_channel_the_release_publishes_on() {
    let server = RedisServer::start().await.expect("redis-server");
    let holder = LockClient::new(connect_single(&server).await);
    let waiter = LockClient::new(connect_single(&server).await);
    let mut con = raw(&server.url()).await;
    let subscribed = |con: &mut redis::aio::MultiplexedConnection| {
        let mut con = con.clone();
        async move {
            let chans: Vec<String> =
                redis::cmd("PUBSUB").arg("CHANNELS").arg("*").query_async(&mut con).await.expect("channels");
            chans
        }
    };
    assert!(subscribed(&mut con).await.is_empty());
    let g = holder.lock("wake/me").ttl(Duration::from_secs(30)).acquire().await.expect("hold");
    let w = waiter.clone();
    let wait = tokio::spawn(async move { w.lock("wake/me").wait(Duration::from_secs(20)).acquire().await });
    // The waiter subscribes before its next attempt: wait (bounded) for the subscription.
    let deadline = Instant::now() + Duration::from_secs(5);
    let chans = loop {
        let chans = subscribed(&mut con).await;
        if !chans.is_empty() {
            break chans;
        }
        assert!(Instant::now() < deadline, "the waiter never subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        chans.len() == 1 && chans[0].starts_with("wake:"),
        "the waiter should listen on its client's wake-up channel alone: {chans:?}"
    );
    let published_before = published(&mut con).await;
    assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
    assert_eq!(published(&mut con).await, published_before + 1, "the release published one notice");
    let got = wait.await.expect("join").expect("the waiter acquired after the release");
    // The waiter unsubscribed once it held the lock (no subscription is left behind).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !subscribed(&mut con).await.is_empty() {
        assert!(Instant::now() < deadline, "the waiter stayed subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = got.release().await.expect("release");
}

/// How many PUBLISH commands the server has run (those from scripts included).
async fn published(con: &mut redis::aio::MultiplexedConnection) -> u64 {
    let cmds: String = redis::cmd("INFO").arg("commandstats").query_async(con).await.expect("info");
    cmds.lines()
        .find(|l| l.starts_with("cmdstat_publish:"))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_reconnected() {
    let mut server = RedisServer::start().await.expect("redis-server");
    let locks = LockClient::new(connect_single(&server).await);
    let _ = locks.lock("re").acquire().await.expect("acquire").release().await.expect("release");
    server.process().kill().await;
    let err = locks.lock("re").acquire().await.expect_err("server is down");
    assert!(err.is_retryable(), "{err:?}");
    server.process().restart().await.expect("restart");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match locks.lock("re").acquire().await {
            Ok(g) => {
                let _ = g.release().await.expect("release");
                break;
            }
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("no reconnect after restart: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_and_password_work_and_never_leak() {
    let server = RedisServer::start_with(RedisConfig {
        extra_args: vec![
            "--requirepass".into(),
            "default-secret-1".into(),
            "--user".into(),
            "app".into(),
            "on".into(),
            ">app-secret-2".into(),
            "~*".into(),
            "&*".into(),
            "+@all".into(),
        ],
        ..RedisConfig::default()
    })
    .await
    .expect("redis-server with auth");
    let port = server.port();
    let url = format!("redis://app:app-secret-2@127.0.0.1:{port}");
    let opts: RedisOptions = url.parse().expect("url");
    let backend = RedisBackend::connect(opts.clone()).await.expect("ACL user connects");
    let locks = LockClient::new(backend.clone());
    let _ = locks.lock("acl").acquire().await.expect("acquire").release().await.expect("release");
    let dbg = format!("{backend:?} {opts:?}");
    assert!(!dbg.contains("app-secret-2"), "password in Debug: {dbg}");
    let built = RedisOptions::new(format!("127.0.0.1:{port}")).credentials("app", "app-secret-2");
    let _ = RedisBackend::connect(built).await.expect("ACL user set by option");

    // An empty user is the default user (AUTH with the password alone).
    let opts = RedisOptions::new(format!("127.0.0.1:{port}")).credentials("", "default-secret-1");
    let _ = RedisBackend::connect(opts).await.expect("password set by option");
    let _ =
        RedisBackend::connect(format!("redis://:default-secret-1@127.0.0.1:{port}").parse().expect("url"))
            .await
            .expect("password alone in the URL");

    let bad = format!("redis://app:wrong-secret-3@127.0.0.1:{port}");
    let err = RedisBackend::connect(bad.parse().expect("url")).await.expect_err("wrong password");
    assert!(matches!(err, Error::Backend { kind: BackendErrorKind::Auth, .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert!(!format!("{err} {err:?}").contains("wrong-secret-3"), "password in error: {err:?}");
}

#[tokio::test]
async fn unreachable_and_malformed_are_typed_errors() {
    let port = conformance_tests::fixtures::free_port().expect("port");
    let opts = RedisOptions::new(format!("127.0.0.1:{port}")).connect_timeout(Duration::from_secs(2));
    let err = RedisBackend::connect(opts).await.expect_err("nothing listens");
    assert!(
        matches!(
            err,
            Error::Backend { kind: BackendErrorKind::Connection | BackendErrorKind::RequestTimedOut, .. }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(matches!("redis://:pw@".parse::<RedisOptions>(), Err(Error::InvalidConfig(_))));
    assert!(matches!(RedisBackend::connect(RedisOptions::new("h:0")).await, Err(Error::InvalidConfig(_))));
    let one = RedlockOptions::new([RedisOptions::new("127.0.0.1:1")]);
    assert!(matches!(RedlockBackend::connect(one).await, Err(Error::InvalidConfig(_))));
}

/// The Python interpreter that has redis-py (`$DISTLOCK_PYTHON`, or `target/pyenv`).
fn python_with_redis_py() -> std::path::PathBuf {
    conformance_tests::fixtures::test_python("DISTLOCK_PYTHON").unwrap_or_else(|e| panic!("{e}"))
}

const PY_LOCK: &str = r#"
import sys, redis
r = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]))
lock = r.lock(sys.argv[2], timeout=30)
if sys.argv[3] == "hold":
    print("HELD" if lock.acquire(blocking=False) else "BUSY", flush=True)
    sys.stdin.read()
    lock.release()
    print("RELEASED", flush=True)
else:
    print("GOT" if lock.acquire(blocking=False) else "BUSY", flush=True)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_lock_and_distlock_exclude_each_other() {
    use std::process::Stdio;
    use tokio::io::{AsyncBufReadExt, BufReader};

    let python = python_with_redis_py();
    let server = RedisServer::start().await.expect("redis-server");
    let backend = connect_single(&server).await;
    let locks = LockClient::new(backend.clone());
    let redis_key = backend.redis_key(&LockKey::new("interop").expect("key"));
    let port = server.port().to_string();

    // redis-py holds: we are excluded, and get the lock once it releases.
    let mut child = tokio::process::Command::new(&python)
        .args(["-c", PY_LOCK, &port, &redis_key, "hold"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next_line().await.expect("read").as_deref(), Some("HELD"));
    assert!(
        locks.lock("interop").try_acquire().await.expect("try").is_none(),
        "redis-py's lock did not exclude us"
    );
    let info = locks.inspect("interop").await.expect("inspect").expect("foreign holder visible");
    assert_eq!(info.fencing_token, None, "a foreign holder has no fencing token");
    drop(child.stdin.take().expect("stdin"));
    assert_eq!(lines.next_line().await.expect("read").as_deref(), Some("RELEASED"));
    let g = locks
        .lock("interop")
        .wait(Duration::from_secs(5))
        .acquire()
        .await
        .expect("acquire after redis-py released");

    // We hold: redis-py is excluded.
    let out = tokio::process::Command::new(&python)
        .args(["-c", PY_LOCK, &port, &redis_key, "try"])
        .output()
        .await
        .expect("python");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "BUSY", "our lock did not exclude redis-py");
    assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
    let _ = child.wait().await;
}

/// A server busy with another client's long script answers `BUSY`: a passing state, not a
/// refusal. A renewal it answers so is tried again, and the guard stays held once the script
/// ends (it used to end the guard at once, as a loss).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_busy_with_a_long_script_does_not_end_a_guard() {
    let server = RedisServer::start().await.expect("redis-server");
    let mut con = raw(&server.url()).await;
    // BUSY once a script has run 50 ms (Redis 7; `lua-time-limit` before it).
    let set: redis::RedisResult<()> =
        redis::cmd("CONFIG").arg("SET").arg("busy-reply-threshold").arg(50).query_async(&mut con).await;
    if set.is_err() {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("lua-time-limit")
            .arg(50)
            .query_async(&mut con)
            .await
            .expect("CONFIG SET");
    }
    let locks = LockClient::new(connect_single(&server).await);
    let g = locks.lock("busy").ttl(Duration::from_secs(3)).auto_renew().acquire().await.expect("acquire");
    // Renewal runs every second; the script keeps the server busy for 1.6 s of it.
    let spin = "local s = redis.call('TIME') local t0 = s[1] * 1000000 + s[2] \
                repeat local n = redis.call('TIME') until n[1] * 1000000 + n[2] - t0 > 1600000 return 1";
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut patient = redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("a connection that waits for the script");
    let _: i64 =
        redis::cmd("EVAL").arg(spin).arg(0).query_async(&mut patient).await.expect("the long script");
    // Past the next renewal.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(g.is_held(), "the guard ended while the server was busy");
    assert!(
        tokio::time::timeout(Duration::from_millis(50), g.lost()).await.is_err(),
        "the guard's loss fired"
    );
    assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
}
