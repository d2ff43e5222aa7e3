//! Deadlines are deadlines, against each DynamoDB emulator (moto, dynalite) behind a proxy
//! that swallows every reply (the requests are applied; no answer ever comes): a waiting acquire returns within
//! its wait plus one request timeout, a `try_acquire` within one request timeout, whether the
//! client is made by `DynamoBackend::connect` or passed in with `with_client` (whose own
//! attempts may be longer and retried).
//!
//! One test in its own binary: `connect` takes credentials from the environment, which is set
//! before any thread starts.

mod support;

use std::time::{Duration, Instant};

use lock_core::{Error, LockClient};
use lock_dynamo::{DynamoBackend, DynamoOptions};
use support::proxy::Proxy;
use support::Emulator;

const TABLE: &str = "deadline_locks";
/// The request timeout of the clients under test.
const TIMEOUT: Duration = Duration::from_secs(1);
/// Room for scheduling on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(700);

/// A waiting acquire (wait 500 ms) and a try, each through the silent proxy, each timed:
/// what broke its bound, if anything.
async fn bounds_broken(who: &str, c: &LockClient) -> Vec<String> {
    let mut broken = Vec::new();
    let key = format!("deadline/{}/{who}", uuid::Uuid::new_v4().simple());
    let wait = Duration::from_millis(500);
    let start = Instant::now();
    let got = c.lock(&key).wait(wait).acquire().await;
    let took = start.elapsed();
    match &got {
        Err(Error::WaitTimedOut { .. }) => {}
        Err(e) => assert!(e.is_retryable(), "{who}: a silent server gave {e:?}"),
        Ok(g) => panic!("{who}: acquired through a proxy that answers nothing: {g:?}"),
    }
    if took > wait + TIMEOUT + SLACK {
        broken.push(format!(
            "{who}: an acquire waiting {wait:?} returned after {took:?} ({got:?}); the bound is the wait plus one request timeout ({TIMEOUT:?})"
        ));
    }
    let start = Instant::now();
    let got = c.lock(&format!("{key}/try")).try_acquire().await;
    let took = start.elapsed();
    assert!(got.is_err(), "{who}: a try through a silent proxy gave {got:?}");
    if took > TIMEOUT + SLACK {
        broken.push(format!(
            "{who}: a try returned after {took:?} ({got:?}); the bound is one request timeout ({TIMEOUT:?})"
        ));
    }
    broken
}

#[test]
fn acquires_keep_their_deadlines_when_no_reply_comes() {
    // Before the runtime and its threads exist: no other thread reads the environment yet.
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
    ] {
        std::env::set_var(k, v);
    }
    std::env::remove_var("AWS_PROFILE");
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut broken = Vec::new();
        for emulator in [Emulator::Moto, Emulator::Dynalite] {
            let target = emulator.with_table(&DynamoOptions::new(TABLE)).await;
            let proxy = Proxy::start(target.endpoint.clone()).await;
            proxy.set(|f| f.swallow_all = true);
            let opts = DynamoOptions::new(TABLE)
                .region("us-east-1")
                .endpoint(&proxy.endpoint)
                .request_timeout(TIMEOUT);

            // The client `connect` makes: three attempts of one request timeout each in the SDK.
            let made = DynamoBackend::connect(opts.clone()).await.expect("connect");
            broken.extend(bounds_broken(&format!("{emulator:?}/connect"), &LockClient::new(made)).await);
            // A client of the caller's, whose attempts last 5 s each, three of them.
            let theirs = DynamoBackend::with_client(support::client(&proxy.endpoint), opts);
            broken
                .extend(bounds_broken(&format!("{emulator:?}/with_client"), &LockClient::new(theirs)).await);
            assert!(proxy.swallowed() > 0, "the proxy swallowed nothing");
        }
        assert!(broken.is_empty(), "deadlines overrun:\n{}", broken.join("\n"));
    });
}
