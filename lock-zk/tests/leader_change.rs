//! What a change of the ensemble's leader does to a crashed holder: the new leader counts every
//! session's timeout again from the moment it takes over, so a crashed holder's nodes can
//! outlive it by up to two session timeouts (plus the server's tick rounding and the election).
//! The capabilities state it (`expiry_ttls` = 2, see `backend.rs`); this measures it.

mod support;

use std::time::Duration;

use conformance_tests::fixtures::zk::{four_letter, ZkEnsemble};
use lock_core::{Instant, LockBackend, LockClient};
use lock_zk::{ZkBackend, ZkOptions};

/// The index of the ensemble's leader.
async fn leader(zk: &ZkEnsemble) -> usize {
    for (i, s) in zk.servers.iter().enumerate() {
        if four_letter(&s.address(), "srvr").await.unwrap_or_default().contains("Mode: leader") {
            return i;
        }
    }
    panic!("no leader found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_change_restarts_a_crashed_holders_session() {
    let mut zk = ZkEnsemble::start(3).await.expect("a three-server ensemble");
    let connect = zk.connect_string();
    let session = Duration::from_secs(4);
    let key = support::key("leader-change");

    // The holder crashes: its session is left to expire on the server.
    let backend = ZkBackend::connect(ZkOptions::new(&connect).session_timeout(session).close_on_drop(false))
        .await
        .expect("connect");
    let caps = backend.capabilities();
    let holder = LockClient::new(backend);
    let g = holder.lock(&key).acquire().await.expect("acquire");
    let crashed_at = Instant::now();
    let _ = g.detach();
    drop(holder);

    // A waiter with a session long enough to ride out the election.
    let waiter = support::client(&connect, Duration::from_secs(15)).await;
    let waiting = {
        let key = key.clone();
        tokio::spawn(async move {
            let got = waiter.lock(&key).wait(Duration::from_secs(60)).acquire().await;
            (Instant::now(), got)
        })
    };

    // The leader dies halfway through the crashed session's timeout: before it could have
    // expired the session (the client pinged at most a third of a timeout before the crash).
    tokio::time::sleep(session / 2).await;
    let killed = leader(&zk).await;
    zk.servers[killed].process().kill().await;
    let killed_at = Instant::now();

    let (got_at, got) = waiting.await.expect("join");
    let g = got.expect("the waiter gets the lock once the new leader expires the session");
    let blocked = got_at - crashed_at;
    eprintln!(
        "a crashed holder blocked for {blocked:?} (session timeout {session:?}; the leader was killed {:?} after the \
         crash; the stated bound is {:?})",
        killed_at - crashed_at,
        caps.crash_bound(Duration::from_secs(1))
    );
    assert!(
        blocked > session + Duration::from_millis(500),
        "the session expired {blocked:?} after the crash: the new leader did not count it again (update expiry_ttls \
         and the docs)"
    );
    assert!(
        blocked <= caps.crash_bound(Duration::from_secs(1)) + Duration::from_secs(1),
        "a crashed holder blocked for {blocked:?}, beyond the stated bound {:?}",
        caps.crash_bound(Duration::from_secs(1))
    );
    let _ = g.release().await;
}
