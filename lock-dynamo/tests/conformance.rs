//! The whole conformance suite against a real DynamoDB emulator (moto's server, started as a
//! process on a free loopback port): default takeover (record versions), clock takeover, and
//! a table with a sort key.

mod support;

use std::sync::Arc;
use std::time::Duration;

use conformance_tests::fixtures::dynamo::DynamoTarget;
use conformance_tests::{conformance_suite, Suite};
use lock_core::LockClient;
use lock_dynamo::{DynamoOptions, Takeover};

async fn suite(name: &str, opts: DynamoOptions) -> Suite {
    let target = Arc::new(DynamoTarget::get().await.expect("DynamoDB emulator for the suite"));
    // Create the table once, before the checks run.
    let _ = support::backend(&target.endpoint, opts.clone()).await;
    Suite::new(name, move || {
        let (target, opts) = (target.clone(), opts.clone());
        async move {
            let b = lock_dynamo::DynamoBackend::with_client(support::client(&target.endpoint), opts);
            Ok(LockClient::new(b))
        }
    })
    // The emulator applies requests one at a time (see the fixture): fewer checks at once keep
    // its queue from eating the 1 s TTLs' renewal margins on a loaded 2-core machine.
    .concurrency(3)
}

conformance_suite!(dynamodb_record_version_takeover, suite("dynamodb", DynamoOptions::new("locks")).await);
conformance_suite!(
    dynamodb_clock_takeover,
    suite(
        "dynamodb-clock",
        DynamoOptions::new("locks").takeover(Takeover::Clock { max_skew: Duration::from_millis(100) })
    )
    .await
);
conformance_suite!(
    dynamodb_sort_key_namespace,
    suite("dynamodb-sort-key", DynamoOptions::new("shared_locks").sort_key("namespace", "team-a")).await
);
