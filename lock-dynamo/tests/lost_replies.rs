//! DynamoDB reports the truth when a reply is lost, against a DynamoDB emulator behind a proxy
//! that swallows chosen replies (the request is applied, its answer never comes):
//! - a release whose reply was lost, and whose retry finds the item already released by this
//!   owner, reports `Released`;
//! - a `try_acquire` that fails after its write was applied leaves no grant behind: another
//!   client takes the lock at once, not after a lease or a takeover period.

mod support;

use std::time::{Duration, Instant};

use conformance_tests::fixtures::dynamo::DynamoTarget;
use lock_core::{LockClient, ReleaseOutcome};
use lock_dynamo::{DynamoBackend, DynamoOptions};
use support::proxy::Proxy;

const TABLE: &str = "lost_reply_locks";
/// The attempt and request timeout of the clients behind the proxy.
const ATTEMPT: Duration = Duration::from_secs(1);

fn opts() -> DynamoOptions {
    DynamoOptions::new(TABLE).request_timeout(ATTEMPT)
}

async fn setup() -> (DynamoTarget, Proxy, LockClient, LockClient) {
    let t = DynamoTarget::get().await.expect("DynamoDB emulator");
    support::backend(&t.endpoint, opts()).await;
    let proxy = Proxy::start(t.endpoint.clone()).await;
    let through =
        DynamoBackend::with_client(support::client_with_attempt_timeout(&proxy.endpoint, ATTEMPT), opts());
    let direct = DynamoBackend::with_client(support::client(&t.endpoint), opts());
    (t, proxy, LockClient::new(through), LockClient::new(direct))
}

fn key(name: &str) -> String {
    format!("lost/{}/{name}", uuid::Uuid::new_v4().simple())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_whose_reply_was_lost_reports_released() {
    let (_t, proxy, through, direct) = setup().await;
    let k = key("release");
    let g = through.lock(&k).ttl(Duration::from_secs(30)).acquire().await.expect("acquire");
    let lease = g.lease();
    proxy.set(|f| f.swallow_update_replies = 1);
    let outcome = g.release().await.expect("a release whose first reply was lost is retried");
    assert_eq!(proxy.swallowed(), 1, "the release's reply was not swallowed");
    assert_eq!(outcome, ReleaseOutcome::Released, "our release was applied, and its retry found it so");
    assert!(direct.inspect(&k).await.expect("inspect").is_none(), "the lock is still held");
    // A second release is another call: it finds nothing to release.
    assert_eq!(through.release_lease(&lease).await.expect("release"), ReleaseOutcome::NotHeld);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_try_acquire_whose_write_was_applied_leaves_no_grant() {
    let (_t, proxy, through, direct) = setup().await;
    let k = key("try");
    let ttl = Duration::from_secs(30);
    // Every UpdateItem reply is swallowed for as long as the try runs: its write is applied,
    // and the call fails without learning so.
    proxy.set(|f| f.swallow_update_replies = u32::MAX);
    let got = through.lock(&k).ttl(ttl).try_acquire().await;
    proxy.set(|f| f.swallow_update_replies = 0);
    let e = got.expect_err("a try whose replies never came must fail");
    assert!(e.is_retryable(), "{e:?}");
    assert!(proxy.swallowed() >= 1, "no reply was swallowed");
    // The grant is undone by owner token: another client takes the lock at once, far sooner
    // than the 30 s lease (or the takeover after it).
    let start = Instant::now();
    let g = direct.lock(&k).ttl(ttl).wait(Duration::from_secs(6)).acquire().await;
    let g = g.unwrap_or_else(|e| {
        panic!("the failed try's grant blocked another client for {:?}: {e}", start.elapsed())
    });
    g.release().await.expect("release");
}
