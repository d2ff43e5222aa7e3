//! Properties of the options: builders, `validate()` and URL parsing never panic on any input
//! (durations from zero to `Duration::MAX`, arbitrary strings), and reject with
//! `InvalidConfig` only; connecting with any timeouts to a closed port fails with a typed
//! error, never a panic (in the caller or in a background task).

use std::time::Duration;

use conformance_tests::props::{accepted_or_invalid, count_panics, duration, panics, url_duration};
use lock_core::Error;
use lock_redis::{RedisBackend, RedisOptions, RedlockBackend, RedlockOptions};
use proptest::prelude::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn builders_and_validate_never_panic(
        address in "\\PC{0,40}",
        user in "\\PC{0,8}",
        password in "\\PC{0,8}",
        db in any::<i64>(),
        prefix in "\\PC{0,8}",
        connect in duration(),
        request in duration(),
    ) {
        let o = RedisOptions::new(address)
            .credentials(user, password)
            .database(db)
            .prefix(prefix)
            .connect_timeout(connect)
            .request_timeout(request);
        accepted_or_invalid(o.validate(), "redis")?;
        let _ = format!("{o:?}");
        let r = RedlockOptions::new([o.clone(), o.clone().database(0), RedisOptions::new("127.0.0.1:1")])
            .request_timeout(request)
            .connect_timeout(connect);
        accepted_or_invalid(r.validate(), "redlock")?;
    }

    #[test]
    fn any_string_parses_or_is_invalid_config(url in "\\PC{0,80}") {
        accepted_or_invalid(url.parse::<RedisOptions>().map(|_| ()), "redis")?;
        accepted_or_invalid(url.parse::<RedlockOptions>().map(|_| ()), "redlock")?;
    }

    #[test]
    fn urls_with_any_durations_parse_or_are_invalid_config(
        scheme in prop::sample::select(vec!["redis", "rediss", "redlock"]),
        port in any::<u16>(),
        db in "[0-9]{0,22}",
        timeout in url_duration(),
        connect in url_duration(),
        prefix in "\\PC{0,6}",
    ) {
        let hosts = if scheme == "redlock" {
            format!("127.0.0.1:{port},127.0.0.2:{port},127.0.0.3:{port}")
        } else {
            format!("127.0.0.1:{port}")
        };
        let url = format!("{scheme}://{hosts}/{db}?timeout={timeout}&connect_timeout={connect}&prefix={prefix}");
        accepted_or_invalid(url.parse::<RedisOptions>().map(|_| ()), &url)?;
        accepted_or_invalid(url.parse::<RedlockOptions>().map(|_| ()), &url)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn connecting_to_a_closed_port_with_any_timeouts_never_panics(connect in duration(), request in duration()) {
        let before = count_panics();
        let port = conformance_tests::fixtures::free_port().expect("port");
        let node = || RedisOptions::new(format!("127.0.0.1:{port}")).connect_timeout(connect).request_timeout(request);
        let rt = runtime();
        rt.block_on(async {
            let single = tokio::time::timeout(Duration::from_secs(3), RedisBackend::connect(node())).await;
            if let Ok(r) = single {
                let e = r.expect_err("nothing listens on the port");
                assert!(matches!(e, Error::Backend { .. } | Error::InvalidConfig(_)), "{e:?}");
            }
            let others = (1..=2).map(|i| RedisOptions::new(format!("127.0.0.{}:{port}", i + 1))
                .connect_timeout(connect).request_timeout(request));
            let opts = RedlockOptions::new(std::iter::once(node()).chain(others));
            let redlock = tokio::time::timeout(Duration::from_secs(3), RedlockBackend::connect(opts)).await;
            if let Ok(r) = redlock {
                let e = r.expect_err("nothing listens on the port");
                assert!(matches!(e, Error::Backend { .. } | Error::InvalidConfig(_)), "{e:?}");
            }
            // Give background tasks (subscriber connections) a moment to run into trouble.
            tokio::time::sleep(Duration::from_millis(20)).await;
        });
        rt.shutdown_timeout(Duration::from_secs(1));
        prop_assert_eq!(panics(), before, "something panicked (see the output above)");
    }
}
