//! The whole conformance suite against two real DynamoDB emulators, each started as a process
//! on a free loopback port: moto's server (applies requests one at a time) and dynalite
//! (applies them concurrently, returns no item with a failed condition, has no transactions).
//! On each: default takeover (record versions), clock takeover, and a table with a sort key.
//! Every primitive the backend claims is checked (semaphores, read-write locks with writer
//! preference, multi-key locks, holder metadata, listing, elections).

mod support;

use std::time::Duration;

use conformance_tests::{conformance_suite, Suite};
use lock_core::LockClient;
use lock_dynamo::{DynamoOptions, Takeover};
use support::Emulator;

async fn suite(emulator: Emulator, name: &str, opts: DynamoOptions) -> Suite {
    let emu = std::sync::Arc::new(emulator.with_table(&opts).await);
    Suite::new(name, move || {
        let (emu, opts) = (emu.clone(), opts.clone());
        async move {
            let b = lock_dynamo::DynamoBackend::with_client(support::client(&emu.endpoint), opts);
            Ok(LockClient::new(b))
        }
    })
    // moto applies requests one at a time (see its fixture): fewer checks at once keep its
    // queue from eating the 1 s TTLs' renewal margins on a loaded 2-core machine. dynalite
    // gets the same, so that both runs check the same timings.
    .concurrency(3)
}

fn clock() -> DynamoOptions {
    DynamoOptions::new("locks").takeover(Takeover::Clock { max_skew: Duration::from_millis(100) })
}

fn sort_key() -> DynamoOptions {
    DynamoOptions::new("shared_locks").sort_key("namespace", "team-a")
}

conformance_suite!(
    dynamodb_record_version_takeover,
    suite(Emulator::Moto, "dynamodb", DynamoOptions::new("locks")).await
);
conformance_suite!(dynamodb_clock_takeover, suite(Emulator::Moto, "dynamodb-clock", clock()).await);
conformance_suite!(dynamodb_sort_key_namespace, suite(Emulator::Moto, "dynamodb-sort-key", sort_key()).await);
conformance_suite!(
    dynalite_record_version_takeover,
    suite(Emulator::Dynalite, "dynamodb-dynalite", DynamoOptions::new("locks")).await
);
conformance_suite!(
    dynalite_clock_takeover,
    suite(Emulator::Dynalite, "dynamodb-dynalite-clock", clock()).await
);
conformance_suite!(
    dynalite_sort_key_namespace,
    suite(Emulator::Dynalite, "dynamodb-dynalite-sort-key", sort_key()).await
);
