//! Properties of the options: builders, `validate()` and URL parsing never panic on any input
//! (durations from zero to `Duration::MAX`, arbitrary strings), and reject with
//! `InvalidConfig` only; connecting with any timeouts to a closed port fails with a typed
//! error, never a panic (in the caller or in a background task).

use std::time::Duration;

use conformance_tests::props::{accepted_or_invalid, count_panics, duration, panics, url_duration};
use lock_core::Error;
use lock_zk::{ZkBackend, ZkOptions};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn builders_and_validate_never_panic(
        connect_string in "\\PC{0,40}",
        user in "\\PC{0,8}",
        password in "\\PC{0,8}",
        prefix in "\\PC{0,12}",
        session in duration(),
        connect in duration(),
        close in any::<bool>(),
    ) {
        let o = ZkOptions::new(connect_string)
            .credentials(user, password)
            .prefix(prefix)
            .session_timeout(session)
            .connect_timeout(connect)
            .close_on_drop(close);
        accepted_or_invalid(o.validate(), "zk")?;
        let _ = format!("{o:?}");
    }

    #[test]
    fn any_string_parses_or_is_invalid_config(url in "\\PC{0,80}") {
        accepted_or_invalid(url.parse::<ZkOptions>().map(|_| ()), &url)?;
        let zk = format!("zk://{url}");
        accepted_or_invalid(zk.parse::<ZkOptions>().map(|_| ()), &zk)?;
    }

    #[test]
    fn urls_with_any_durations_parse_or_are_invalid_config(
        scheme in prop::sample::select(vec!["zk", "zookeeper"]),
        port in any::<u16>(),
        chroot in "(/[a-z.]{0,4}){0,3}",
        session in url_duration(),
        connect in url_duration(),
        prefix in "\\PC{0,6}",
    ) {
        let url = format!(
            "{scheme}://127.0.0.1:{port},h:{port}{chroot}?session_timeout={session}&connect_timeout={connect}&prefix={prefix}"
        );
        match url.parse::<ZkOptions>() {
            // What parses also validates: the URL is checked as the builder is.
            Ok(o) => prop_assert!(o.validate().is_ok(), "{} parsed but does not validate", url),
            Err(e) => accepted_or_invalid(Err(e), &url)?,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, failure_persistence: None, ..ProptestConfig::default() })]

    /// Four clients at once per case, each with its own timeouts, each given 3 s.
    #[test]
    fn connecting_to_a_closed_port_with_any_timeouts_never_panics(
        timeouts in prop::collection::vec((duration(), duration()), 4),
    ) {
        let before = count_panics();
        let port = conformance_tests::fixtures::free_port().expect("port");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        rt.block_on(async {
            let tries = timeouts.into_iter().map(|(session, connect)| {
                let o = ZkOptions::new(format!("127.0.0.1:{port}")).session_timeout(session).connect_timeout(connect);
                tokio::spawn(async move {
                    if let Ok(r) = tokio::time::timeout(Duration::from_secs(3), ZkBackend::connect(o)).await {
                        let e = r.expect_err("nothing listens on the port");
                        assert!(matches!(e, Error::Backend { .. } | Error::InvalidConfig(_)), "{e:?}");
                    }
                })
            });
            for t in tries.collect::<Vec<_>>() {
                let _ = t.await;
            }
            // Give background tasks a moment to run into trouble.
            tokio::time::sleep(Duration::from_millis(20)).await;
        });
        rt.shutdown_timeout(Duration::from_secs(1));
        prop_assert_eq!(panics(), before, "something panicked (see the output above)");
    }
}
