//! Properties of the options: builders, `validate()` and URL parsing never panic on any input
//! (durations from zero to `Duration::MAX`, arbitrary strings), and reject with
//! `InvalidConfig` only; connecting with any timeouts to a closed port, then locking, fails
//! with a typed error, never a panic (in the caller or in a background task).
//!
//! `connect` takes credentials from the environment: throwaway ones are set once, before the
//! first connect, so that the default chain never looks further (instance metadata).

mod support;

use std::sync::Once;
use std::time::Duration;

use conformance_tests::props::{accepted_or_invalid, count_panics, duration, panics, url_duration};
use lock_core::{Error, LockClient};
use lock_dynamo::{DynamoBackend, DynamoOptions, Takeover};
use proptest::prelude::*;

fn takeover() -> impl Strategy<Value = Takeover> {
    prop_oneof![Just(Takeover::RecordVersion), duration().prop_map(|max_skew| Takeover::Clock { max_skew })]
}

/// Throwaway credentials in the environment, set once.
fn throwaway_credentials() {
    static ENV: Once = Once::new();
    ENV.call_once(|| {
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
    });
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn builders_and_validate_never_panic(
        table in "\\PC{0,20}",
        partition in "\\PC{0,8}",
        sort in proptest::option::of(("\\PC{0,6}", "\\PC{0,6}")),
        region in "\\PC{0,12}",
        endpoint in "\\PC{0,30}",
        rule in takeover(),
        poll in duration(),
        request in duration(),
        create in any::<bool>(),
    ) {
        let mut o = DynamoOptions::new(table)
            .partition_key(partition)
            .region(region)
            .endpoint(endpoint)
            .takeover(rule)
            .poll_interval(poll)
            .request_timeout(request)
            .create_table(create);
        if let Some((name, value)) = sort {
            o = o.sort_key(name, value);
        }
        accepted_or_invalid(o.validate(), "dynamodb")?;
        let _ = format!("{o:?}");
    }

    #[test]
    fn any_string_parses_or_is_invalid_config(url in "\\PC{0,80}") {
        accepted_or_invalid(url.parse::<DynamoOptions>().map(|_| ()), &url)?;
        let dynamo = format!("dynamodb://{url}");
        accepted_or_invalid(dynamo.parse::<DynamoOptions>().map(|_| ()), &dynamo)?;
    }

    #[test]
    fn urls_with_any_durations_parse_or_are_invalid_config(
        port in any::<u16>(),
        poll in url_duration(),
        timeout in url_duration(),
        skew in url_duration(),
        rule in prop::sample::select(vec!["rvn", "clock", "other"]),
    ) {
        let url = format!(
            "dynamodb://locks?region=us-east-1&endpoint=http://127.0.0.1:{port}&poll={poll}&timeout={timeout}&takeover={rule}&max_skew={skew}"
        );
        match url.parse::<DynamoOptions>() {
            // What parses also validates: the URL is checked as the builder is.
            Ok(o) => prop_assert!(o.validate().is_ok(), "{} parsed but does not validate", url),
            Err(e) => accepted_or_invalid(Err(e), &url)?,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, failure_persistence: None, ..ProptestConfig::default() })]

    /// Four backends at once per case, each with its own durations, each given 3 s to connect
    /// and fail a try and a waiting acquire.
    #[test]
    fn connecting_to_a_closed_port_with_any_timeouts_never_panics(
        durations in prop::collection::vec((duration(), duration(), duration(), takeover()), 4),
    ) {
        count_panics();
        throwaway_credentials();
        let before = panics();
        let port = conformance_tests::fixtures::free_port().expect("port");
        let endpoint = format!("http://127.0.0.1:{port}");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        rt.block_on(async {
            let tries = durations.into_iter().map(|(request, poll, wait, rule)| {
                let o = DynamoOptions::new("locks")
                    .region("us-east-1")
                    .endpoint(&endpoint)
                    .request_timeout(request)
                    .poll_interval(poll)
                    .takeover(rule);
                let endpoint = endpoint.clone();
                tokio::spawn(async move {
                    let fails = async {
                        let locks = match DynamoBackend::connect(o.clone()).await {
                            Ok(b) => LockClient::new(b),
                            Err(e) => {
                                assert!(matches!(e, Error::InvalidConfig(_)), "{e:?}");
                                return;
                            }
                        };
                        let e = locks.lock("k").try_acquire().await.expect_err("nothing listens on the port");
                        assert!(matches!(e, Error::Backend { .. }), "{e:?}");
                        let e = locks.lock("k").wait(wait).acquire().await.expect_err("nothing listens");
                        assert!(matches!(e, Error::Backend { .. } | Error::WaitTimedOut { .. }), "{e:?}");
                        let theirs = LockClient::new(DynamoBackend::with_client(support::client(&endpoint), o));
                        let e = theirs.lock("k").try_acquire().await.expect_err("nothing listens on the port");
                        assert!(matches!(e, Error::Backend { .. }), "{e:?}");
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(3), fails).await;
                })
            });
            for t in tries.collect::<Vec<_>>() {
                let _ = t.await;
            }
            // Give background tasks (the undo of failed tries) a moment to run into trouble.
            tokio::time::sleep(Duration::from_millis(20)).await;
        });
        rt.shutdown_timeout(Duration::from_secs(1));
        prop_assert_eq!(panics(), before, "something panicked (see the output above)");
    }
}
