//! `DynamoBackend::connect` as the facade's `connect(url)` uses it: a `dynamodb://` URL parsed
//! by `DynamoOptions`, credentials from AWS's default chain (throwaway ones in this test
//! process's environment), and `create_table=true` honoured by `connect`.
//!
//! One test in its own binary: it sets environment variables before any thread starts.

use std::time::Duration;

use lock_core::url::BackendOptions;
use lock_core::{Error, LockClient};
use lock_dynamo::DynamoOptions;

mod support;

use support::Emulator;

#[test]
fn connect_honours_create_table_from_the_url() {
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
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        for emulator in [Emulator::Moto, Emulator::Dynalite] {
            let target = emulator.start().await;
            let table = format!("created_{}", uuid::Uuid::new_v4().simple());
            let url = |table: &str, create: bool| {
                format!(
                    "dynamodb://{table}?region=us-east-1&endpoint={}&create_table={create}&timeout=5s",
                    target.endpoint
                )
            };

            // Without create_table, nothing is sent at connect: the missing table shows up at the
            // first lock operation, with the hint.
            let o: DynamoOptions = url(&table, false).parse().expect("URL");
            let locks = LockClient::from_arc(o.connect_dyn().await.expect("connect"));
            let e = locks.lock("k").try_acquire().await.expect_err("no table yet");
            assert!(matches!(e, Error::Backend { .. }) && e.to_string().contains("create_table"), "{e}");

            // With create_table=true, connect makes the table and locks work at once.
            let o: DynamoOptions = url(&table, true).parse().expect("URL");
            let locks = LockClient::from_arc(o.connect_dyn().await.expect("connect creates the table"));
            let g = locks.lock("k").ttl(Duration::from_secs(5)).acquire().await.expect("acquire");
            assert_eq!(locks.backend_name(), "dynamodb");
            // An existing table is not an error.
            let again: DynamoOptions = url(&table, true).parse().expect("URL");
            let other =
                LockClient::from_arc(again.connect_dyn().await.expect("connect to an existing table"));
            assert!(
                other.lock("k").try_acquire().await.expect("try").is_none(),
                "the same table, the same lock"
            );
            g.release().await.expect("release");
        }
    });
}
