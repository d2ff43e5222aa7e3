//! Failure and interoperability tests on real etcd.

mod support;

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use conformance_tests::fixtures::etcd::EtcdCluster;
use lock_core::{Instant, LockBackend, LockClient, LossReason, ReleaseOutcome, TlsOptions};
use lock_etcd::{rpc, EtcdBackend, EtcdOptions};
use support::handled;
use tokio::io::{AsyncBufReadExt, BufReader};

async fn backend(endpoints: &[String]) -> EtcdBackend {
    backend_ttl(endpoints, 3).await
}

async fn backend_ttl(endpoints: &[String], secs: u64) -> EtcdBackend {
    EtcdBackend::connect(EtcdOptions::new(endpoints).session_ttl(Duration::from_secs(secs)))
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_session_lease_fires_the_loss_signal() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let b = backend(&etcd.endpoints()).await;
    let locks = LockClient::new(b.clone());
    let g = locks.lock("revoked").auto_renew().acquire().await.expect("acquire");
    let lease = b.session_lease().await.expect("session");
    b.raw_client().lease_revoke(lease).await.expect("revoke from outside");
    let reason = tokio::time::timeout(Duration::from_secs(8), g.lost()).await.expect("loss fired");
    assert!(matches!(reason, LossReason::SessionLost | LossReason::NotHeld), "{reason:?}");
    assert!(!g.is_held());
    let other = LockClient::new(backend(&etcd.endpoints()).await);
    assert!(other.lock("revoked").try_acquire().await.expect("try").is_some(), "revoke freed the lock");
}

/// The leader's index among the members, and its member id.
async fn leader_index(etcd: &EtcdCluster) -> (usize, u64) {
    for (i, ep) in etcd.endpoints().iter().enumerate() {
        let Ok(c) = rpc::Client::connect(&EtcdOptions::new([ep])).await else { continue };
        if let Ok(st) = c.status().await {
            if st.header.map(|h| h.member_id) == Some(st.leader) {
                return (i, st.leader);
            }
        }
    }
    panic!("no leader found");
}

/// Waits until a member other than the `killed` one (the leader `old`) answers with another
/// leader.
async fn new_leader(etcd: &EtcdCluster, killed: usize, old: u64, within: Duration) {
    let gone = Instant::now() + within;
    while Instant::now() < gone {
        for (_, ep) in etcd.endpoints().iter().enumerate().filter(|(i, _)| *i != killed) {
            let Ok(c) = rpc::Client::connect(&EtcdOptions::new([ep])).await else { continue };
            if let Ok(st) = c.status().await {
                if st.leader != 0 && st.leader != old {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no new leader among the survivors within {within:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_while_a_lock_is_held_and_waiters_queue() {
    let mut etcd = EtcdCluster::start(3).await.expect("etcd cluster");
    let eps = etcd.endpoints();
    // The default 10 s session TTL: keep-alives must ride out the election (a 3 s session can
    // be lost while the client still tries the dead member, which correctly fails its waits).
    let holder = LockClient::new(backend_ttl(&eps, 10).await);
    let g = holder.lock("leader").acquire().await.expect("hold");
    let first = g.fencing_token();
    // Overlap detection: the first holder counts as inside until it starts its release; each
    // waiter must find nobody inside when it gets the lock.
    let inside = Arc::new(AtomicUsize::new(1));
    let mut waiters = Vec::new();
    for _ in 0..2 {
        let c = LockClient::new(backend_ttl(&eps, 10).await);
        let inside = inside.clone();
        waiters.push(tokio::spawn(async move {
            let g = c.lock("leader").wait(Duration::from_secs(40)).acquire().await?;
            let others = inside.fetch_add(1, Ordering::SeqCst);
            let t = g.fencing_token();
            tokio::time::sleep(Duration::from_millis(50)).await;
            inside.fetch_sub(1, Ordering::SeqCst);
            g.release().await?;
            Ok::<_, lock_core::Error>((others, t))
        }));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (leader, old) = leader_index(&etcd).await;
    etcd.members[leader].process().kill().await;
    // Release through the surviving members, retrying while a new leader is elected; the
    // release's 30 s budget counts from the first answer of a surviving member that knows a
    // leader (on a loaded machine the election itself can take a while).
    let killed = Instant::now();
    new_leader(&etcd, leader, old, Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let lease = g.detach();
    inside.fetch_sub(1, Ordering::SeqCst);
    loop {
        match holder.release_lease(&lease).await {
            // A release that spans the election may have deleted the key with its first try and
            // lost the reply with the leader; the retry then finds it gone. Either way the key
            // is gone, which the waiters below prove.
            Ok(ReleaseOutcome::Released | ReleaseOutcome::NotHeld) => break,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!(
                "release failed {:?} after the kill (retryable: {}): {e:?}",
                killed.elapsed(),
                e.is_retryable()
            ),
        }
    }
    let mut tokens = vec![first];
    for w in waiters {
        let (others, t) = w.await.expect("join").expect("waiter got the lock after the leader died");
        assert_eq!(others, 0, "a waiter got the lock while another holder was inside");
        tokens.push(t);
    }
    let mut sorted = tokens.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 3, "tokens must be distinct: {tokens:?}");
    assert!(
        tokens[1..].iter().all(|t| *t > first),
        "waiters' tokens must exceed the first holder's: {tokens:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_and_distlock_exclude_each_other() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let ep = etcd.endpoints()[0].clone();
    let locks = LockClient::new(backend(&etcd.endpoints()).await);

    // etcdctl holds: we are excluded, then get the lock after it lets go.
    let mut ctl = tokio::process::Command::new("etcdctl")
        .args(["--endpoints", &ep, "lock", "--ttl", "3", "interop", "--", "sh", "-c", "echo HELD; sleep 2"])
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("etcdctl (apt-get install etcd-client)");
    let mut lines = BufReader::new(ctl.stdout.take().expect("stdout")).lines();
    let line =
        tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.expect("etcdctl answered");
    assert_eq!(line.expect("read").as_deref(), Some("HELD"));
    assert!(
        locks.lock("interop").try_acquire().await.expect("try").is_none(),
        "etcdctl's lock did not exclude us"
    );
    let info = locks.inspect("interop").await.expect("inspect").expect("etcdctl's key is the holder");
    assert!(info.fencing_token.is_some() && info.owner.is_none(), "{info:?}");
    let g =
        locks.lock("interop").wait(Duration::from_secs(20)).acquire().await.expect("after etcdctl unlocked");
    assert!(ctl.wait().await.expect("etcdctl").success());

    // We hold: etcdctl waits until we release.
    let mut ctl = tokio::process::Command::new("etcdctl")
        .args(["--endpoints", &ep, "lock", "interop", "--", "echo", "GOT"])
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("etcdctl");
    let mut lines = BufReader::new(ctl.stdout.take().expect("stdout")).lines();
    let early = tokio::time::timeout(Duration::from_millis(1500), lines.next_line()).await;
    assert!(early.is_err(), "etcdctl got a lock we hold: {early:?}");
    let released_at = Instant::now();
    assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
    let line =
        tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.expect("etcdctl got it");
    assert_eq!(line.expect("read").as_deref(), Some("GOT"));
    assert!(released_at.elapsed() < Duration::from_secs(5));
    assert!(ctl.wait().await.expect("etcdctl").success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_bad_options_are_typed_errors() {
    let port = conformance_tests::fixtures::free_port().expect("port");
    let opts =
        EtcdOptions::new(&[format!("http://127.0.0.1:{port}")]).connect_timeout(Duration::from_secs(1));
    let e = EtcdBackend::connect(opts).await.expect_err("nobody listens");
    assert!(e.is_retryable(), "{e:?}");
    let e = EtcdBackend::connect(EtcdOptions::new(Vec::<String>::new())).await.expect_err("no endpoints");
    assert!(matches!(e, lock_core::Error::InvalidConfig(_)));
    let dbg = format!("{:?}", EtcdOptions::new(["h:2379"]).credentials("root", "pa55-secret"));
    assert!(!dbg.contains("pa55-secret"), "{dbg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_endpoints_with_a_private_ca() {
    use conformance_tests::fixtures::tls::TestCa;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::generate(dir.path()).expect("test CA (apt-get install openssl)");
    let etcd = EtcdCluster::start_with(1, Some(&ca)).await.expect("TLS etcd");
    let eps = etcd.endpoints();
    assert!(eps[0].starts_with("https://"));
    let opts = EtcdOptions::new(&eps).tls(TlsOptions::new().ca(ca.ca_pem().expect("pem")));
    let locks = LockClient::new(EtcdBackend::connect(opts).await.expect("TLS connect with the CA"));
    let g = locks.lock("tls").acquire().await.expect("acquire over TLS");
    assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
    // Without the private CA, the system's roots are used, and they do not trust this one.
    let e = EtcdBackend::connect(EtcdOptions::new(&eps).connect_timeout(Duration::from_secs(2)))
        .await
        .expect_err("https trusting only the system's roots");
    assert!(matches!(e, lock_core::Error::Backend { .. }), "{e:?}");
    // TLS on with an http:// endpoint is a contradiction, said at once.
    let e = EtcdBackend::connect(EtcdOptions::new(["http://127.0.0.1:1"]).tls(TlsOptions::new()))
        .await
        .expect_err("tls with http://");
    assert!(matches!(e, lock_core::Error::InvalidConfig(_)), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_requiring_client_certificates() {
    use conformance_tests::fixtures::tls::TestCa;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::generate(dir.path()).expect("test CA (apt-get install openssl)");
    let etcd = EtcdCluster::single_requiring_client_certs(&ca).await.expect("etcd with --client-cert-auth");
    let eps = etcd.endpoints();
    // Bare host:port endpoints are dialled with TLS when TLS is configured.
    let bare: Vec<String> = eps.iter().map(|e| e.trim_start_matches("https://").to_owned()).collect();
    let tls = TlsOptions::new()
        .ca(ca.ca_pem().expect("pem"))
        .identity_files(&ca.client_cert, &ca.client_key)
        .expect("client certificate files");
    let with_cert = EtcdOptions::new(&bare).tls(tls);
    let dbg = format!("{with_cert:?}");
    assert!(dbg.contains("client_certificate: true") && !dbg.contains("PRIVATE KEY"), "{dbg}");
    let locks = LockClient::new(EtcdBackend::connect(with_cert).await.expect("connect with a client cert"));
    let g = locks.lock("mtls").acquire().await.expect("acquire over mutual TLS");
    assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
    // The same from a URL: the files imply TLS.
    let url = format!(
        "etcd://{}?ca_file={}&cert_file={}&key_file={}",
        bare.join(","),
        ca.ca_cert.display(),
        ca.client_cert.display(),
        ca.client_key.display()
    );
    let from_url: EtcdOptions = url.parse().expect("etcd URL");
    let locks = LockClient::new(EtcdBackend::connect(from_url).await.expect("connect from the URL"));
    let g = locks.lock("mtls").acquire().await.expect("acquire over mutual TLS, from a URL");
    assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
    // The same cluster refuses a client without a certificate.
    let e = EtcdBackend::connect(
        EtcdOptions::new(&eps)
            .tls(TlsOptions::new().ca(ca.ca_pem().expect("pem")))
            .connect_timeout(Duration::from_secs(2)),
    )
    .await
    .expect_err("no client certificate");
    assert!(matches!(e, lock_core::Error::Backend { .. }), "{e:?}");
}

/// Turns on etcd's auth with a root user (password `r00t-secret`), as an operator would
/// (with etcdctl, which the interop test needs anyway).
async fn enable_root_auth(endpoints: &[String]) {
    etcdctl(endpoints, &[]).await;
}

/// Runs `setup` (etcdctl argument lists, before auth is on), then adds the root user and
/// turns auth on.
async fn etcdctl(endpoints: &[String], setup: &[&[&str]]) {
    for args in setup.iter().copied().chain([
        &["user", "add", "root", "--interactive=false", "--new-user-password=r00t-secret"][..],
        &["user", "grant-role", "root", "root"],
        &["auth", "enable"],
    ]) {
        let out = tokio::process::Command::new("etcdctl")
            .arg("--endpoints")
            .arg(endpoints.join(","))
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .await
            .expect("etcdctl (apt-get install etcd-client)");
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// A user whose role covers a lock's own keys (`jobs/x/`) but not the name's undo markers
/// (`jobs/x#undo/`): etcd refuses a transaction that compares a key the role may not read, so
/// the backend turns its undo markers off (with a warning) and locks as before; it did not
/// lock at all with them. A role over the namespace (`jobs/`) covers the markers too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_does_not_cover_the_undo_markers_still_locks() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let eps = etcd.endpoints();
    etcdctl(
        &eps,
        &[
            &["role", "add", "narrow"],
            &["role", "grant-permission", "narrow", "--prefix=true", "readwrite", "jobs/x/"],
            &["user", "add", "app", "--interactive=false", "--new-user-password=app-s3cret"],
            &["user", "grant-role", "app", "narrow"],
            &["role", "add", "wide"],
            &["role", "grant-permission", "wide", "--prefix=true", "readwrite", "jobs/"],
            &["user", "add", "ops", "--interactive=false", "--new-user-password=ops-s3cret"],
            &["user", "grant-role", "ops", "wide"],
        ],
    )
    .await;
    for (user, password) in [("app", "app-s3cret"), ("ops", "ops-s3cret")] {
        let opts = EtcdOptions::new(&eps).credentials(user, password);
        let locks = LockClient::new(EtcdBackend::connect(opts).await.expect("authenticated connect"));
        for round in 0..2 {
            let g = locks.lock("jobs/x").acquire().await;
            let g = g.unwrap_or_else(|e| panic!("{user}, round {round}: {e}"));
            assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_auth() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let eps = etcd.endpoints();
    enable_root_auth(&eps).await;

    let opts = EtcdOptions::new(&eps).credentials("root", "r00t-secret");
    let locks = LockClient::new(EtcdBackend::connect(opts).await.expect("authenticated connect"));
    let g = locks.lock("auth").acquire().await.expect("acquire with auth");
    assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
    // The same from a URL.
    let hosts: Vec<&str> = eps.iter().map(|e| e.trim_start_matches("http://")).collect();
    let from_url: EtcdOptions = format!("etcd://root:r00t-secret@{}", hosts.join(",")).parse().expect("URL");
    let locks = LockClient::new(EtcdBackend::connect(from_url).await.expect("authenticated connect, URL"));
    let g = locks.lock("auth").acquire().await.expect("acquire with auth, from a URL");
    assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);

    let err = EtcdBackend::connect(EtcdOptions::new(&eps).credentials("root", "wrong-pass-9"))
        .await
        .expect_err("bad password");
    assert!(!err.is_retryable(), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("wrong-pass-9"), "password leaked: {err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_auth_token_is_renewed_with_a_new_login() {
    // Simple tokens expire after 2 idle seconds here (300 by default).
    let etcd = EtcdCluster::single_with_flags(&["--auth-token-ttl=2"]).await.expect("etcd");
    let eps = etcd.endpoints();
    enable_root_auth(&eps).await;

    let opts = EtcdOptions::new(&eps).credentials("root", "r00t-secret");
    let locks = LockClient::new(EtcdBackend::connect(opts).await.expect("authenticated connect"));
    let g = locks.lock("token/a").acquire().await.expect("acquire with a fresh token");
    assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
    // Idle past the token's TTL: the next requests meet "invalid auth token".
    tokio::time::sleep(Duration::from_secs(5)).await;
    let g = locks.lock("token/b").acquire().await.expect("acquire after the token expired");
    assert!(g.is_held());
    // Another idle spell: the release (a compare-and-delete) needs a new login too.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(g.release().await.expect("release after the token expired"), ReleaseOutcome::Released);
}

/// The session's key watch stream keeps the auth token it was opened with. Once that token
/// expired, etcd refuses each new watch on the stream (a reply both created and cancelled):
/// the refused key must be watched again on a stream with a fresh token, or a deletion of it
/// would never be reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_watch_refused_for_an_expired_token_is_set_again() {
    let etcd = EtcdCluster::single_with_flags(&["--auth-token-ttl=2"]).await.expect("etcd");
    let eps = etcd.endpoints();
    enable_root_auth(&eps).await;
    let opts = EtcdOptions::new(&eps).credentials("root", "r00t-secret").session_ttl(Duration::from_secs(3));
    let b = EtcdBackend::connect(opts).await.expect("authenticated connect");
    let locks = LockClient::new(b.clone());
    let x = locks.lock("refused/x").auto_renew().acquire().await.expect("x");
    // Past x's first renewal: the key watch stream is open, with the first token.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Idle past the token's TTL (the keep-alives carry none); y's acquire logs in again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let y = locks.lock("refused/y").auto_renew().acquire().await.expect("y after a new login");
    // Past y's first renewal: y's key is added to the stream opened with the expired token.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let raw = b.raw_client();
    raw.delete_range(rpc::pb::DeleteRangeRequest::prefix("refused/y/")).await.expect("delete");
    let reason = tokio::time::timeout(Duration::from_secs(5), y.lost()).await.expect("y's loss fired");
    assert_eq!(reason, LossReason::NotHeld);
    assert!(x.is_held(), "x was lost");
    // x's watch, on the stream set up again, still reports its key's deletion.
    raw.delete_range(rpc::pb::DeleteRangeRequest::prefix("refused/x/")).await.expect("delete");
    let reason = tokio::time::timeout(Duration::from_secs(5), x.lost()).await.expect("x's loss fired");
    assert_eq!(reason, LossReason::NotHeld);
    // The token expires again: a lock added to the stream opened after the last login is
    // refused for the same reason, and watched after another login, not reported lost.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let z = locks.lock("refused/z").auto_renew().acquire().await.expect("z after another login");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(z.is_held(), "z was reported lost for a watch refused on an expired token");
    raw.delete_range(rpc::pb::DeleteRangeRequest::prefix("refused/z/")).await.expect("delete");
    let reason = tokio::time::timeout(Duration::from_secs(5), z.lost()).await.expect("z's loss fired");
    assert_eq!(reason, LossReason::NotHeld);
}

/// A waiter far back in the queue watches only its gate (the contender five places ahead);
/// when the gate goes, its next round opens a new watch before any other request. If it
/// waited past its auth token's TTL (waiting sends nothing with the token), etcd refuses that
/// watch: the waiter must log in and watch again, not wait on the refused watch until its
/// deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_watch_is_refused_for_an_expired_token_still_gets_the_lock() {
    let etcd = EtcdCluster::single_with_flags(&["--auth-token-ttl=2"]).await.expect("etcd");
    let eps = etcd.endpoints();
    enable_root_auth(&eps).await;
    let connect = || async {
        let opts =
            EtcdOptions::new(&eps).credentials("root", "r00t-secret").session_ttl(Duration::from_secs(3));
        LockClient::new(EtcdBackend::connect(opts).await.expect("authenticated connect"))
    };
    let holder = connect().await;
    let held = holder.lock("refused-wait").acquire().await.expect("hold");
    // Four waiters ahead (each its own client), each holding the lock 100 ms in turn.
    let mut ahead = Vec::new();
    for _ in 0..4 {
        let c = connect().await;
        ahead.push(tokio::spawn(async move {
            let g =
                c.lock("refused-wait").wait(Duration::from_secs(30)).acquire().await.expect("a waiter ahead");
            tokio::time::sleep(Duration::from_millis(100)).await;
            g.release().await.expect("release");
        }));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Sixth in line: it watches the holder's key alone.
    let last = connect().await;
    let waits = tokio::spawn(async move {
        let g = last.lock("refused-wait").wait(Duration::from_secs(30)).acquire().await;
        (g.map(|g| g.is_held()), Instant::now())
    });
    // Past the last waiter's token TTL.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let released = Instant::now();
    assert_eq!(held.release().await.expect("release"), ReleaseOutcome::Released);
    for w in ahead {
        w.await.expect("join");
    }
    let (got, at) = tokio::time::timeout(Duration::from_secs(40), waits)
        .await
        .expect("the waiter returned")
        .expect("join");
    assert!(got.expect("the waiter got the lock"));
    let after = at.saturating_duration_since(released);
    assert!(
        after < Duration::from_secs(5),
        "the last waiter took the lock {after:?} after the holder's release"
    );
}

/// A held key's watch starts from the grant's revision. When the history since was compacted
/// by the time the watch is set up (the first renewal after a compaction, or the stream opened
/// again later), the key is read again: a grant whose key still stands is not reported lost,
/// and a deletion after the read is still reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_watch_history_does_not_lose_a_standing_grant() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let b = backend(&etcd.endpoints()).await; // 3 s session: the first renewal comes at 1 s
    let locks = LockClient::new(b.clone());
    let g = locks.lock("compacted/a").auto_renew().acquire().await.expect("a");
    let raw = b.raw_client();
    let mut rev = 0;
    for i in 0..3 {
        let put = raw.put(rpc::pb::PutRequest::new(format!("other/{i}"), "x", 0)).await.expect("put");
        rev = put.header.map_or(0, |h| h.revision);
    }
    let compacted = tokio::process::Command::new("etcdctl")
        .arg(format!("--endpoints={}", etcd.endpoints().join(",")))
        .args(["compact", &rev.to_string()])
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::null())
        .status()
        .await
        .expect("etcdctl (apt-get install etcd-client)");
    assert!(compacted.success(), "etcdctl compact {rev} failed");
    // Past the first renewal, which sets up the watch from the grant's (compacted) revision.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(g.is_held(), "a standing grant was reported lost after a compaction");
    raw.delete_range(rpc::pb::DeleteRangeRequest::prefix("compacted/a/")).await.expect("delete");
    let reason = tokio::time::timeout(Duration::from_secs(5), g.lost()).await.expect("the loss fired");
    assert_eq!(reason, LossReason::NotHeld);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_held_key_from_outside_fires_only_that_locks_loss_signal() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let b = backend(&etcd.endpoints()).await;
    let locks = LockClient::new(b.clone());
    let x = locks.lock("outside/x").auto_renew().acquire().await.expect("x");
    let y = locks.lock("outside/y").auto_renew().acquire().await.expect("y");
    // Past the first renewal, so the key watch is in place.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Another process deletes x's key (etcdctl del --prefix outside/x/).
    let raw = b.raw_client();
    raw.delete_range(rpc::pb::DeleteRangeRequest::prefix("outside/x/")).await.expect("delete");
    let reason = tokio::time::timeout(Duration::from_secs(5), x.lost()).await.expect("x's loss fired");
    assert_eq!(reason, LossReason::NotHeld);
    assert!(!x.is_held());
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(y.is_held(), "a deletion of x's key cost y its lock");
    assert_eq!(y.release().await.expect("release"), ReleaseOutcome::Released);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewing_many_session_locks_sends_no_request_per_lock() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let ep = etcd.endpoints()[0].clone();
    let locks = LockClient::new(backend(&etcd.endpoints()).await); // 3 s session
    let mut guards = Vec::new();
    for i in 0..200 {
        guards.push(locks.lock(&format!("many/{i}")).auto_renew().acquire().await.expect("acquire"));
    }
    // Let every guard pass its first renewal (one read each), then count.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = handled(&ep, &["Range", "Txn", "Put", "DeleteRange"]).await;
    // Three session TTLs: each of the 200 guards renews several times.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let during = handled(&ep, &["Range", "Txn", "Put", "DeleteRange"]).await - before;
    assert!(guards.iter().all(|g| g.is_held()), "a renewed lock was lost");
    assert!(during < 20.0, "{during} KV requests while 200 locks renewed: renewal costs a request per lock");
    for g in guards {
        let _ = g.release().await.expect("release");
    }
}

/// Cancelled attempts of one session on a three-member cluster leave no queue key behind.
/// The client spreads requests over the members, and on a loaded machine the undo of a
/// cancelled attempt can reach the leader before the attempt's own put: that late put must
/// not stay behind as an orphan blocking the name for the session's life (found by CI; the
/// test fails without the fix when the machine is loaded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_attempts_on_a_cluster_leave_no_orphan() {
    let etcd = EtcdCluster::start(3).await.expect("etcd cluster");
    let a = LockClient::new(backend(&etcd.endpoints()).await);
    let b = LockClient::new(backend(&etcd.endpoints()).await);
    let (mut finished, mut cut) = (0u32, 0u32);
    for round in 0..3u64 {
        for i in 0..100u64 {
            let attempt = a.lock("cancelled").ttl(Duration::from_secs(60)).try_acquire();
            let after = Duration::from_micros((i * 397 + round * 131) % 4000);
            match tokio::time::timeout(after, attempt).await {
                Ok(r) => {
                    r.expect("an attempt that was not cut failed");
                    finished += 1;
                }
                Err(_) => cut += 1,
            }
            // Let the undo of a cut attempt run, so the next attempt reaches the server.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Another client gets the lock: no grant and no queue key of `a` was left behind.
        let g = b
            .lock("cancelled")
            .ttl(Duration::from_secs(60))
            .wait(Duration::from_secs(5))
            .acquire()
            .await
            .unwrap_or_else(|e| panic!("round {round}: a cancelled attempt left the lock held: {e}"));
        assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
        // And `a` itself is not stuck behind a key of its own session.
        let again = a.lock("cancelled").wait(Duration::from_secs(5)).acquire().await;
        let again = again.unwrap_or_else(|e| panic!("round {round}: a is blocked by its own key: {e}"));
        assert_eq!(again.release().await.expect("release"), ReleaseOutcome::Released);
    }
    assert!(cut > 0 && finished > 0, "the cuts missed the requests: {cut} cut, {finished} finished");
}

/// A held key deleted from outside while the member serving the session's key watch stops
/// answering (its connection open, silent): the watch is opened again on the other endpoint
/// and the deletion is still reported, as the lock's loss (not the session's).
/// Four clients, over a proxy to the member and the member itself, each sending one more
/// request before its lock, so that some watch streams surely go through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_is_reported_when_the_key_watch_falls_silent() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let eps = etcd.endpoints();
    let proxy = support::proxy::Proxy::start(&eps[0]).await;
    let opts = EtcdOptions::new([proxy.endpoint.clone(), eps[0].clone()])
        .request_timeout(Duration::from_secs(1))
        .session_ttl(Duration::from_secs(6));
    let mut guards = Vec::new();
    for i in 0..4 {
        let b = EtcdBackend::connect(opts.clone()).await.expect("connect");
        // The client takes the two endpoints in turn: `i` requests first shift which one
        // the key watch goes to.
        for _ in 0..i {
            b.raw_client().status().await.expect("status");
        }
        let c = LockClient::new(b);
        guards.push(c.lock(&format!("silent-watch/{i}")).auto_renew().acquire().await.expect("hold"));
    }
    // Past the first renewal (a session TTL of 6 s: every 2 s), which reads the key once and
    // asks for its watch; later renewals send nothing, and only the watch reports a deletion.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    proxy.set(support::proxy::Mode::Blackhole);
    let raw = support::raw(&eps).await;
    raw.delete_range(rpc::pb::DeleteRangeRequest::prefix("silent-watch/")).await.expect("delete");
    for (i, g) in guards.iter().enumerate() {
        let reason = tokio::time::timeout(Duration::from_secs(10), g.lost())
            .await
            .unwrap_or_else(|_| panic!("lock {i}: the deletion of its key went unreported"));
        assert_eq!(reason, LossReason::NotHeld, "lock {i}");
    }
    proxy.heal();
}

/// A member whose minimum lease TTL (3/2 of its election timeout, 7.5 s here, granted as 8 s)
/// is above the TTL asked for: renewing with the TTL asked for, or with the one granted,
/// keeps the lock on its lease (a keep-alive), where it used to grant a new lease and move the
/// key at every renewal; a longer TTL still moves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_keep_a_lease_etcd_raised_to_its_minimum() {
    let etcd = EtcdCluster::single_with_flags(&["--heartbeat-interval=500", "--election-timeout=5000"])
        .await
        .expect("etcd");
    let eps = etcd.endpoints();
    let c = support::client(&eps, lock_etcd::LeaseMode::PerLock).await;
    let g = c.lock("raised-ttl").ttl(Duration::from_secs(2)).acquire().await.expect("hold");
    assert_eq!(g.lease().ttl(), Duration::from_secs(8), "etcd's minimum TTL is not what the test expects");
    let grants = || handled(&eps[0], &["LeaseGrant"]);
    let before = grants().await;
    for ttl in [2, 8, 2, 5] {
        g.extend(Duration::from_secs(ttl)).await.expect("extend");
    }
    assert_eq!(grants().await - before, 0.0, "a renewal granted a new lease");
    g.extend(Duration::from_secs(12)).await.expect("extend");
    assert_eq!(grants().await - before, 1.0, "a longer TTL did not move the lock to a new lease");
    assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
}

/// An observer whose watch stream falls silent (the member behind it paused or cut off, the
/// connection still open) ends with an error within a few request timeouts: it never keeps
/// reporting a leader that has resigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_whose_watch_falls_silent_ends_with_an_error() {
    use futures::StreamExt;
    let etcd = EtcdCluster::single().await.expect("etcd");
    let eps = etcd.endpoints();
    let proxy = support::proxy::Proxy::start(&eps[0]).await;
    let opts = EtcdOptions::new([&proxy.endpoint]).request_timeout(Duration::from_secs(1));
    let watcher = LockClient::new(EtcdBackend::connect(opts).await.expect("connect through the proxy"));
    let direct = support::client(&eps, lock_etcd::LeaseMode::Session).await;
    let a = direct.election("silent").campaign("a").await.expect("a leads");
    let mut seen = watcher.election("silent").observe().await.expect("observe");
    let first = seen.next().await.expect("first").expect("state").expect("a leader");
    assert_eq!(first.value.as_deref(), Some("a"));
    proxy.set(support::proxy::Mode::Blackhole);
    a.release().await.expect("a resigns");
    let b = direct.election("silent").campaign("b").await.expect("b leads");
    let next = tokio::time::timeout(Duration::from_secs(8), seen.next()).await;
    let next = next.expect("the observer stayed silent (and so kept reporting a, who resigned)");
    assert!(matches!(next, Some(Err(_))), "{next:?}");
    proxy.heal();
    b.release().await.expect("release");
}

/// An observer whose watch is served by a member cut off from the others (here: both others
/// stopped, so it has no leader) ends with an error: such a member still answers progress
/// requests from its own store, so only the stream's requirement of a leader tells that no
/// change can come through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_on_a_member_without_a_leader_ends_with_an_error() {
    use futures::StreamExt;
    let mut etcd = EtcdCluster::start(3).await.expect("etcd cluster");
    let eps = etcd.endpoints();
    let direct = support::client(&eps, lock_etcd::LeaseMode::Session).await;
    let a = direct.election("leaderless").campaign("a").await.expect("a leads");
    let opts = EtcdOptions::new([&eps[0]]).request_timeout(Duration::from_secs(1));
    let watcher = LockClient::new(EtcdBackend::connect(opts).await.expect("connect"));
    let mut seen = watcher.election("leaderless").observe().await.expect("observe");
    let first = seen.next().await.expect("first").expect("state").expect("a leader");
    assert_eq!(first.value.as_deref(), Some("a"));
    etcd.members[1].process().pause().expect("pause");
    etcd.members[2].process().pause().expect("pause");
    let next = tokio::time::timeout(Duration::from_secs(30), seen.next()).await;
    etcd.members[1].process().resume().expect("resume");
    etcd.members[2].process().resume().expect("resume");
    let next = next.expect("the observer stayed open on a member without a leader");
    assert!(matches!(next, Some(Err(_))), "{next:?}");
    drop(a);
}

/// An observer outlives its auth token (observing sends nothing with it): the read of the new
/// leader after a change logs in again instead of ending the stream with an auth error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_reads_the_new_leader_after_its_token_expired() {
    use futures::StreamExt;
    let etcd = EtcdCluster::single_with_flags(&["--auth-token-ttl=2"]).await.expect("etcd");
    let eps = etcd.endpoints();
    enable_root_auth(&eps).await;
    let connect = || async {
        let opts = EtcdOptions::new(&eps).credentials("root", "r00t-secret");
        LockClient::new(EtcdBackend::connect(opts).await.expect("authenticated connect"))
    };
    let (watcher, candidate) = (connect().await, connect().await);
    let mut seen = watcher.election("idle-observer").observe().await.expect("observe");
    assert!(matches!(seen.next().await, Some(Ok(None))), "a fresh election is vacant");
    // Idle past the token's TTL.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let lead = candidate.election("idle-observer").campaign("c").await.expect("campaign");
    let next = tokio::time::timeout(Duration::from_secs(5), seen.next()).await.expect("an item");
    let leader = next.expect("open").expect("the new leader, not an auth error").expect("a leader");
    assert_eq!(leader.value.as_deref(), Some("c"));
    lead.release().await.expect("release");
}

/// A client states its capabilities once: an etcd whose minimum lease TTL (1.5 election
/// timeouts: 4.5 s here) is above the session TTL asked grants a longer session lease, and the
/// capabilities are the same before and after the session opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capabilities_are_the_same_before_and_after_the_session_opens() {
    let etcd = EtcdCluster::single_with_flags(&["--heartbeat-interval=300", "--election-timeout=3000"])
        .await
        .expect("etcd");
    let opts = EtcdOptions::new(etcd.endpoints()).session_ttl(Duration::from_secs(2));
    let b = EtcdBackend::connect(opts).await.expect("connect");
    let before = b.capabilities();
    let g = LockClient::new(b.clone()).lock("caps").acquire().await.expect("lock");
    let after = b.capabilities();
    assert_eq!(before.session_timeout, after.session_timeout);
    assert_eq!(before.session_timeout, Some(Duration::from_secs(2)));
    g.release().await.expect("release");
}

/// With auth enabled, etcd refuses a lease revoke that carries no user (it checks the user may
/// write every key on the lease): a per-lock try that found the lock held revokes its own
/// lease, leaving no key in the queue, and a session client that closes frees its locks at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_revokes_work_with_auth_enabled() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let eps = etcd.endpoints();
    enable_root_auth(&eps).await;
    let connect = |mode: lock_etcd::LeaseMode| {
        let eps = eps.clone();
        async move {
            let opts = EtcdOptions::new(&eps).credentials("root", "r00t-secret").lease_mode(mode);
            EtcdBackend::connect(opts).await.expect("authenticated connect")
        }
    };
    let holder = LockClient::new(connect(lock_etcd::LeaseMode::PerLock).await);
    let trier = connect(lock_etcd::LeaseMode::PerLock).await;
    let raw = trier.raw_client();
    let held = holder.lock("revoked").ttl(Duration::from_secs(30)).acquire().await.expect("hold");
    assert!(LockClient::new(trier.clone()).lock("revoked").try_acquire().await.expect("try").is_none());
    let keys = support::keys_under(&raw, "revoked/").await;
    assert_eq!(keys.len(), 1, "the refused try's key was left in the queue: {keys:?}");
    assert_eq!(held.release().await.expect("release"), ReleaseOutcome::Released);
    // A session client that closes frees its locks at once.
    let session = connect(lock_etcd::LeaseMode::Session).await;
    let g = LockClient::new(session.clone()).lock("closed").acquire().await.expect("lock");
    g.detach();
    session.close().await;
    let free = LockClient::new(trier).lock("closed").try_acquire().await.expect("try");
    assert!(free.is_some(), "a closed session's lock outlived its close");
}

/// In session mode every grant of one name by this client is the same key. A release of an
/// earlier lease of that name (a detached lease released twice) finds the key held by a later
/// grant: it must leave that grant alone, and its loss signal unfired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_release_leaves_a_later_grant_of_the_same_name_alone() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let b = backend(&etcd.endpoints()).await;
    let locks = LockClient::new(b.clone());
    let old = locks.lock("stale-release").acquire().await.expect("first").detach();
    assert_eq!(locks.release_lease(&old).await.expect("release"), ReleaseOutcome::Released);
    let g2 = locks.lock("stale-release").auto_renew().acquire().await.expect("second");
    assert_eq!(locks.release_lease(&old).await.expect("stale release"), ReleaseOutcome::NotHeld);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(g2.is_held(), "a stale release fired the later grant's loss");
    let info = locks.inspect("stale-release").await.expect("inspect").expect("still held");
    assert_eq!(info.fencing_token, Some(g2.fencing_token()), "a stale release deleted the later grant");
    assert_eq!(g2.release().await.expect("release"), ReleaseOutcome::Released);
}

/// Takes `name` on `here`, detaches the guard and releases the lease on `elsewhere` from its
/// parts (as another process would, given them); returns the lease.
async fn held_here_released_elsewhere(
    here: &LockClient,
    elsewhere: &LockClient,
    name: &str,
) -> lock_core::Lease {
    let lease = here.lock(name).acquire().await.expect("lock").detach();
    let rebuilt = lock_core::Lease::new(
        lease.key().clone(),
        lease.owner(),
        lease.fencing_token(),
        lease.ttl(),
        lock_core::Instant::now(),
    );
    assert_eq!(elsewhere.release_lease(&rebuilt).await.expect("release"), ReleaseOutcome::Released);
    lease
}

/// A detached lease released by another process (its lease rebuilt there from its parts, as
/// an operator tool does) frees the name on etcd, and this process's own tasks can take the
/// name again: the name's local slot, which no release here will free, is freed once its
/// key is found gone (by a try at once, by a waiting acquire after a session TTL of waiting).
/// Before, every later try of the name by this client was refused, and every waiting acquire
/// waited for that slot until its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_lease_released_elsewhere_leaves_the_name_free_here_too() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let here = LockClient::new(backend_ttl(&etcd.endpoints(), 2).await);
    let elsewhere = LockClient::new(backend(&etcd.endpoints()).await);
    held_here_released_elsewhere(&here, &elsewhere, "detached-elsewhere").await;
    assert!(elsewhere.inspect("detached-elsewhere").await.expect("inspect").is_none(), "still held on etcd");
    // A try finds the slot's grant gone at once.
    let tried = here.lock("detached-elsewhere").try_acquire().await.expect("try");
    tried.expect("a try found the name taken here").release().await.expect("release");
    let lease = held_here_released_elsewhere(&here, &elsewhere, "detached-elsewhere").await;
    // A waiting acquire finds it gone after a session TTL of waiting.
    let start = Instant::now();
    let again = here.lock("detached-elsewhere").wait(Duration::from_secs(12)).acquire().await;
    let again = again.unwrap_or_else(|e| panic!("the name stayed taken here for {:?}: {e}", start.elapsed()));
    // One session TTL (2 s) of waiting, then one read; generous for a loaded machine.
    assert!(start.elapsed() < Duration::from_secs(9), "the slot was freed only after {:?}", start.elapsed());
    assert!(again.fencing_token() > lease.fencing_token(), "a new grant has a larger token");
    assert_eq!(again.release().await.expect("release"), ReleaseOutcome::Released);
    // The detached lease's own release here now finds nothing of its own and deletes nothing.
    let third = here.lock("detached-elsewhere").acquire().await.expect("third");
    assert_eq!(here.release_lease(&lease).await.expect("stale release"), ReleaseOutcome::NotHeld);
    let info = here.inspect("detached-elsewhere").await.expect("inspect").expect("still held");
    assert_eq!(info.fencing_token, Some(third.fencing_token()), "the stale release deleted the later grant");
    assert_eq!(third.release().await.expect("release"), ReleaseOutcome::Released);
}

/// A held key deleted from outside before its first renewal (nothing watches it yet): another
/// task's try finds the name's slot abandoned, frees it and takes the lock on the same key;
/// the first guard is told it lost the lock (its key-watch entry would otherwise be replaced
/// by the new grant's, and its renewal would take the new key for its own), and its release
/// leaves the new grant alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_takes_a_name_whose_key_was_deleted_outside_tells_the_old_guard() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let b = backend(&etcd.endpoints()).await;
    let locks = LockClient::new(b.clone());
    let old = locks.lock("outside-taken").acquire().await.expect("lock");
    let raw = b.raw_client();
    raw.delete_range(rpc::pb::DeleteRangeRequest::prefix("outside-taken/")).await.expect("delete");
    let other = locks.clone();
    let tried = tokio::spawn(async move { other.lock("outside-taken").try_acquire().await });
    let new = tried.await.expect("join").expect("try").expect("the name stayed taken here");
    let reason = tokio::time::timeout(Duration::from_secs(5), old.lost()).await;
    assert_eq!(reason.expect("the old guard was not told"), LossReason::NotHeld);
    assert!(!old.is_held());
    assert_eq!(old.release().await.expect("release"), ReleaseOutcome::NotHeld);
    let info = locks.inspect("outside-taken").await.expect("inspect").expect("still held");
    assert_eq!(
        info.fencing_token,
        Some(new.fencing_token()),
        "the old guard's release deleted the new grant"
    );
    assert_eq!(new.release().await.expect("release"), ReleaseOutcome::Released);
}

/// A session lease revoked from outside, before the keep-alive noticed: a waiting acquire
/// whose put is refused ("requested lease not found") queues again on a new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_after_the_session_was_revoked_from_outside_queues_on_a_new_session() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let b = backend_ttl(&etcd.endpoints(), 6).await;
    let locks = LockClient::new(b.clone());
    let raw = b.raw_client();
    let x = locks.lock("revoked-session/x").acquire().await.expect("x");
    let keys = support::keys_under(&raw, "revoked-session/x/").await;
    let session = keys.first().expect("x's key").2;
    raw.lease_revoke(session).await.expect("revoke the session's lease");
    let g = locks.lock("revoked-session/m").wait(Duration::from_secs(10)).acquire().await;
    let g = g.expect("a wait on a session revoked from outside failed instead of queueing again");
    g.release().await.expect("release");
    drop(x);
}
