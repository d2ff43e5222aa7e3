//! Properties of the options: builders, `validate()` and URL parsing never panic on any input
//! (durations from zero to `Duration::MAX`, arbitrary strings), and reject with
//! `InvalidConfig` only; connecting with any timeouts to a closed port fails with a typed
//! error (or is still trying when the test's 3 s run out), never a panic, in the caller or in
//! a background task.

use std::time::Duration;

use conformance_tests::props::{accepted_or_invalid, count_panics, duration, panics, url_duration};
use lock_core::Error;
use lock_etcd::{EtcdBackend, EtcdOptions, LeaseMode};
use proptest::prelude::*;

fn mode() -> impl Strategy<Value = LeaseMode> {
    prop_oneof![Just(LeaseMode::Session), Just(LeaseMode::PerLock)]
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn builders_and_validate_never_panic(
        endpoints in prop::collection::vec("\\PC{0,30}", 0..3),
        user in "\\PC{0,8}",
        password in "\\PC{0,8}",
        prefix in "\\PC{0,8}",
        connect in duration(),
        request in duration(),
        session_ttl in duration(),
        mode in mode(),
    ) {
        let o = EtcdOptions::new(&endpoints)
            .credentials(user, password)
            .prefix(prefix)
            .connect_timeout(connect)
            .request_timeout(request)
            .session_ttl(session_ttl)
            .lease_mode(mode);
        accepted_or_invalid(o.validate(), "etcd")?;
        let _ = format!("{o:?}");
    }

    #[test]
    fn any_string_parses_or_is_invalid_config(url in "\\PC{0,80}") {
        accepted_or_invalid(url.parse::<EtcdOptions>().map(|_| ()), &url)?;
    }

    #[test]
    fn urls_with_any_durations_parse_or_are_invalid_config(
        port in any::<u16>(),
        lease in prop::sample::select(vec!["session", "per-lock", "x"]),
        session_ttl in url_duration(),
        timeout in url_duration(),
        connect in url_duration(),
        prefix in "\\PC{0,6}",
    ) {
        let url = format!(
            "etcd://127.0.0.1:{port},[::1]:{port}?lease={lease}&session_ttl={session_ttl}\
             &timeout={timeout}&connect_timeout={connect}&prefix={prefix}"
        );
        accepted_or_invalid(url.parse::<EtcdOptions>().map(|_| ()), &url)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn connecting_to_a_closed_port_with_any_timeouts_never_panics(
        connect in duration(),
        request in duration(),
        session_ttl in duration(),
        mode in mode(),
    ) {
        let before = count_panics();
        let port = conformance_tests::fixtures::free_port().expect("port");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        rt.block_on(async {
            let opts = EtcdOptions::new([format!("127.0.0.1:{port}")])
                .connect_timeout(connect)
                .request_timeout(request)
                .session_ttl(session_ttl)
                .lease_mode(mode);
            let r = tokio::time::timeout(Duration::from_secs(3), EtcdBackend::connect(opts)).await;
            if let Ok(r) = r {
                let e = r.expect_err("nothing listens on the port");
                assert!(matches!(e, Error::Backend { .. } | Error::InvalidConfig(_)), "{e:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        });
        rt.shutdown_timeout(Duration::from_secs(1));
        prop_assert_eq!(panics(), before, "something panicked (see the output above)");
    }
}

/// The extremes that `validate()` accepts work against a real etcd: `Duration::MAX` timeouts,
/// the longest session, waits of `Duration::MAX`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_accepted_durations_work() {
    let etcd = conformance_tests::fixtures::etcd::EtcdCluster::single().await.expect("etcd");
    for mode in [LeaseMode::Session, LeaseMode::PerLock] {
        let opts = EtcdOptions::new(etcd.endpoints())
            .connect_timeout(Duration::MAX)
            .request_timeout(Duration::MAX)
            .session_ttl(Duration::from_secs(9_000_000_000))
            .lease_mode(mode);
        let locks = lock_core::LockClient::new(EtcdBackend::connect(opts).await.expect("connect"));
        let ttl = locks.capabilities().max_ttl;
        let g = locks.lock("longest").ttl(ttl).wait(Duration::MAX).acquire().await.expect("acquire");
        let other = locks.lock("longest").ttl(ttl).try_acquire().await.expect("try");
        assert!(other.is_none(), "{mode:?}: a held lock was granted again");
        assert!(g.is_held());
        assert_eq!(g.release().await.expect("release"), lock_core::ReleaseOutcome::Released);
    }
}
