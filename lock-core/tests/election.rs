//! Elections over the in-memory backend (no native watch: observe polls).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures::StreamExt;
use lock_core::{Error, LockClient};
use lock_local::MemoryBackend;

/// A polled observe reports an unchanged leader once, although each poll reads another
/// remaining TTL.
#[tokio::test(start_paused = true)]
async fn a_polled_observe_does_not_repeat_an_unchanged_leader() {
    let locks = LockClient::new(MemoryBackend::new());
    let election = locks.election("svc");
    let leadership = election.campaign("a:1").await.unwrap();
    let mut changes = election.observe().await.unwrap();
    let first = changes.next().await.unwrap().unwrap().unwrap();
    assert_eq!(first.value.as_deref(), Some("a:1"));
    // Several polls (at most 250 ms apart) of the same leader.
    let again = tokio::time::timeout(Duration::from_secs(2), changes.next()).await;
    assert!(again.is_err(), "the same leader was reported again: {again:?}");
    // A proclaimed value is a change.
    election.proclaim(&leadership, "a:2").await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(2), changes.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.unwrap().value.as_deref(), Some("a:2"));
}

/// Proclaiming through another election's leadership is refused and changes nothing.
#[tokio::test]
async fn proclaim_refuses_another_elections_leadership() {
    let locks = LockClient::new(MemoryBackend::new());
    let (a, b) = (locks.election("a"), locks.election("b"));
    let of_a = a.campaign("a:1").await.unwrap();
    let err = b.proclaim(&of_a, "hijack").await.unwrap_err();
    assert!(matches!(err, Error::NotHeld { .. }), "{err:?}");
    assert_eq!(a.leader().await.unwrap().unwrap().value.as_deref(), Some("a:1"));
}
