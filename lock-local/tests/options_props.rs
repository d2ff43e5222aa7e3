//! Properties of the options of both local backends: builders, `validate()` and URL parsing
//! never panic on any input (durations from zero to `Duration::MAX`, arbitrary strings) and
//! reject with `InvalidConfig` only; connecting and acquiring with any TTL, wait and poll
//! interval never panics.

use std::time::Duration;

use conformance_tests::props::{accepted_or_invalid, count_panics, duration, panics, url_duration};
use lock_core::LockClient;
use lock_local::{FileBackend, FileOptions, MemoryBackend, MemoryOptions};
use proptest::prelude::*;

/// Mostly durations a lock would use (so that acquires get through to waiting), and any.
fn lock_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![3 => (1u64..3_000).prop_map(Duration::from_millis), 1 => duration()]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Takes the lock with `ttl` and `wait` (under a short overall limit), then, while it is held,
/// waits for it again: no panic, whatever the durations.
async fn exercise(locks: LockClient, ttl: Duration, wait: Duration) {
    let limit = Duration::from_millis(300);
    let held = tokio::time::timeout(limit, locks.lock("p").ttl(ttl).wait(wait).acquire()).await;
    let _ = tokio::time::timeout(limit, locks.lock("p").ttl(ttl).wait(wait).acquire()).await;
    let _ = tokio::time::timeout(limit, locks.lock("p").ttl(ttl).try_acquire()).await;
    if let Ok(Ok(g)) = held {
        let mut lease = g.detach();
        let _ = tokio::time::timeout(limit, locks.extend_lease(&mut lease, ttl)).await;
        let _ = tokio::time::timeout(limit, locks.release_lease(&lease)).await;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn file_builders_and_validate_never_panic(
        dir in "\\PC{0,30}",
        sync in any::<bool>(),
        poll in duration(),
        timeout in duration(),
    ) {
        let o = FileOptions::new(dir).sync(sync).poll_interval(poll).request_timeout(timeout);
        accepted_or_invalid(o.validate(), "file")?;
        let _ = format!("{o:?}");
    }

    #[test]
    fn memory_names_never_panic(name in "\\PC{0,30}") {
        accepted_or_invalid(MemoryOptions::named(name).validate(), "mem")?;
    }

    #[test]
    fn any_string_parses_or_is_invalid_config(url in "\\PC{0,80}") {
        accepted_or_invalid(url.parse::<FileOptions>().map(|_| ()), "file")?;
        accepted_or_invalid(url.parse::<MemoryOptions>().map(|_| ()), "mem")?;
    }

    #[test]
    fn file_urls_with_any_durations_parse_or_are_invalid_config(
        poll in url_duration(),
        timeout in url_duration(),
        sync in "\\PC{0,6}",
        path in "[a-z/]{0,12}",
    ) {
        let url = format!("file:///tmp/{path}?poll={poll}&timeout={timeout}&sync={sync}");
        accepted_or_invalid(url.parse::<FileOptions>().map(|_| ()), &url)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn file_acquire_with_any_durations_never_panics(
        ttl in lock_duration(),
        wait in lock_duration(),
        poll in duration(),
        timeout in duration(),
    ) {
        let before = count_panics();
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = FileOptions::new(dir.path()).sync(false).poll_interval(poll).request_timeout(timeout);
        if let Ok(backend) = FileBackend::connect(opts) {
            let rt = runtime();
            rt.block_on(exercise(LockClient::new(backend), ttl, wait));
            rt.shutdown_timeout(Duration::from_secs(1));
        }
        prop_assert_eq!(panics(), before, "something panicked (see the output above)");
    }

    #[test]
    fn memory_acquire_with_any_durations_never_panics(ttl in lock_duration(), wait in lock_duration()) {
        let before = count_panics();
        let rt = runtime();
        rt.block_on(exercise(LockClient::new(MemoryBackend::new()), ttl, wait));
        rt.shutdown_timeout(Duration::from_secs(1));
        prop_assert_eq!(panics(), before, "something panicked (see the output above)");
    }
}
