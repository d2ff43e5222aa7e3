//! The whole conformance suite against real ZooKeeper: one standalone server, and an
//! ensemble of three on loopback.
//!
//! Every client of the suite reaches the servers through a proxy of its own
//! (`support::proxy`), which is how a session is expired while its client lives on: the
//! proxy stalls, as a paused process would, until the server has expired the session and
//! closed its connection.

mod support;

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use conformance_tests::fixtures::zk::{ZkEnsemble, ZkTarget};
use conformance_tests::{conformance_suite, Suite};
use lock_core::{LockBackend, LockClient};
use lock_zk::{ZkBackend, ZkOptions};
use support::proxy::ZkProxy;

/// Each client's backend and the proxy it connects through.
type Proxies = Arc<Mutex<Vec<(Weak<dyn LockBackend>, Arc<ZkProxy>)>>>;

const SESSION: Duration = Duration::from_secs(2);

fn suite(name: &str, connect: String, keep: Arc<dyn std::any::Any + Send + Sync>) -> Suite {
    // `h1:p1,h2:p2[/chroot]`: the proxy goes to each server in turn; the chroot stays.
    let (hosts, chroot) = match connect.find('/') {
        Some(i) => (connect[..i].to_owned(), connect[i..].to_owned()),
        None => (connect.clone(), String::new()),
    };
    let upstreams: Vec<String> = hosts.split(',').map(str::to_owned).collect();
    let proxies: Proxies = Arc::default();
    let made = proxies.clone();
    Suite::new(name, move || {
        let (upstreams, chroot, made, _keep) =
            (upstreams.clone(), chroot.clone(), made.clone(), keep.clone());
        async move {
            let proxy = Arc::new(ZkProxy::start_many(upstreams).await);
            // Detached sessions: dropping a client leaves its session to expire, as a crash does.
            let o = ZkOptions::new(format!("{}{chroot}", proxy.addr))
                .session_timeout(SESSION)
                .close_on_drop(false);
            let backend: Arc<dyn LockBackend> = Arc::new(ZkBackend::connect(o).await?);
            made.lock().expect("proxies").push((Arc::downgrade(&backend), proxy));
            Ok(LockClient::from_arc(backend))
        }
    })
    // A crash: the lock is kept, the client goes away without closing its session.
    .crash_with(|client, guard| async move {
        let _ = guard.detach();
        drop(client);
    })
    // A pause: the client's proxy forwards nothing until the server has expired the session
    // (it closes the session's connection then), and connects the client anew after. A server
    // may close the connection for another reason first (a loaded follower losing its
    // leader): the client then resumes a session it has given up, and deletes its nodes
    // (`tests/lost_session.rs`), which is what the checks see either way.
    .expire_with(move |client| {
        let proxies = proxies.clone();
        async move {
            let mine = Arc::downgrade(client.backend());
            let proxy = proxies
                .lock()
                .expect("proxies")
                .iter()
                .find(|(b, _)| b.ptr_eq(&mine))
                .map(|(_, p)| p.clone());
            let Some(proxy) = proxy else { panic!("a client the suite did not make") };
            let session = client.capabilities().session_timeout.unwrap_or(SESSION);
            // In a task of its own, so that a check that drops this future still gets its
            // client back.
            let pause = tokio::spawn(async move {
                proxy.stall();
                // Never sooner than a session timeout after the client went silent.
                tokio::time::sleep(session).await;
                let expired =
                    tokio::time::timeout(session * 4 + Duration::from_secs(5), proxy.upstreams_closed())
                        .await;
                proxy.heal();
                assert!(expired.is_ok(), "the server did not expire a silent session");
            });
            pause.await.expect("the pause");
        }
    })
}

conformance_suite!(zookeeper_single_server, {
    let t = ZkTarget::get().await.expect("ZooKeeper for the suite");
    let connect = t.url.clone();
    suite("zookeeper", connect, Arc::new(t))
});

conformance_suite!(zookeeper_three_server_ensemble, {
    let e = ZkEnsemble::start(3).await.expect("a three-server ensemble");
    let connect = e.connect_string();
    suite("zookeeper-ensemble", connect, Arc::new(e))
});
