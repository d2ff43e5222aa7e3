//! A task asking for a lock it already holds gets AlreadyHeld at once; `expiring` warns before
//! the loss.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use lock_core::{Error, LockClient};
use lock_local::MemoryBackend;

#[tokio::test]
async fn a_task_never_waits_for_itself() {
    let locks = LockClient::new(MemoryBackend::new());
    let g = locks.lock("k").acquire().await.unwrap();
    // The same task, even with a long wait: at once, a typed error.
    let start = tokio::time::Instant::now();
    let e = locks.lock("k").wait(Duration::from_secs(30)).acquire().await.unwrap_err();
    assert!(matches!(e, Error::AlreadyHeld { ref key } if key == "k"), "{e:?}");
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(matches!(
        locks.lock_all(["j", "k"]).wait(Duration::from_secs(5)).acquire().await,
        Err(Error::AlreadyHeld { .. })
    ));
    // One attempt without a wait cannot wait for itself: it finds the lock held.
    assert!(locks.lock("k").try_acquire().await.unwrap().is_none());
    // Another task of the same client waits as usual, and gets it once released.
    let other = locks.clone();
    let waiter = tokio::spawn(async move { other.lock("k").wait(Duration::from_secs(10)).acquire().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "another task did not wait");
    g.release().await.unwrap();
    let g2 = waiter.await.unwrap().unwrap();
    g2.release().await.unwrap();
    // Released: this task may take it again.
    locks.lock("k").acquire().await.unwrap().release().await.unwrap();
}

/// A guard put back with `resume` counts as held by the task too (it was not registered,
/// and the task waited for itself until its deadline, its own renewal keeping the lock).
#[tokio::test]
async fn a_resumed_guard_is_held_by_the_task() {
    let locks = LockClient::new(MemoryBackend::new());
    let g = locks.lock("k").ttl(Duration::from_secs(30)).acquire().await.unwrap();
    let g = locks.resume(g.detach(), true);
    let e =
        tokio::time::timeout(Duration::from_secs(5), locks.lock("k").wait(Duration::from_secs(60)).acquire())
            .await
            .expect("the task waited for its own resumed lock")
            .unwrap_err();
    assert!(matches!(e, Error::AlreadyHeld { ref key } if key == "k"), "{e:?}");
    // A multi-key lease resumed: each of its names.
    let m = locks.lock_all(["a", "b"]).acquire().await.unwrap();
    let m = locks.resume(m.into_guard().detach(), false);
    let e = locks.lock("b").wait(Duration::from_secs(60)).acquire().await.unwrap_err();
    assert!(matches!(e, Error::AlreadyHeld { ref key } if key == "b"), "{e:?}");
    m.release().await.unwrap();
    g.release().await.unwrap();
    locks.lock("b").acquire().await.unwrap().release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn expiring_warns_before_the_lease_runs_out() {
    let locks = LockClient::new(MemoryBackend::new());
    let g = locks.lock("k").ttl(Duration::from_secs(10)).acquire().await.unwrap();
    let start = tokio::time::Instant::now();
    g.expiring(Duration::from_secs(3)).await;
    let warned = start.elapsed();
    assert!(warned >= Duration::from_secs(6) && warned < Duration::from_secs(7), "{warned:?}");
    assert!(g.is_held(), "the warning came after the loss");
    // With auto-renewal that keeps up, it does not fire.
    let r = locks.lock("r").ttl(Duration::from_secs(3)).auto_renew().acquire().await.unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(30), r.expiring(Duration::from_millis(500)))
        .await
        .is_err());
    r.release().await.unwrap();
}

/// A task holding two read locks on one name releases the second: the registry forgets that
/// grant, not the first. Once the first has expired too, the task holds nothing there, and a
/// write lock is its to take (a registry that kept the released grant's entry instead would
/// still count it as held, and refuse the task its own write lock).
#[tokio::test]
async fn releasing_one_of_two_read_locks_forgets_that_one() {
    let locks = LockClient::new(MemoryBackend::new());
    let first = locks.read_lock("k").ttl(Duration::from_millis(300)).acquire().await.unwrap();
    let second = locks.read_lock("k").ttl(Duration::from_secs(30)).acquire().await.unwrap();
    second.release().await.unwrap();
    // While the first is held, writing would wait for the task's own read lock.
    let e = locks.write_lock("k").wait(Duration::from_secs(2)).acquire().await.unwrap_err();
    assert!(matches!(e, Error::AlreadyHeld { ref key } if key == "k"), "{e:?}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!first.is_held());
    let w = locks.write_lock("k").wait(Duration::from_secs(2)).acquire().await.unwrap();
    w.release().await.unwrap();
}

/// A task that holds as many permits as the semaphore has gets AlreadyHeld at once for one
/// more (it waited for its own permits until its deadline); with fewer it may take another.
#[tokio::test]
async fn a_task_holding_every_permit_never_waits_for_one_more() {
    let locks = LockClient::new(MemoryBackend::new());
    let first = locks.semaphore("s", 2).acquire().await.unwrap();
    let second = locks.semaphore("s", 2).wait(Duration::from_secs(2)).acquire().await.unwrap();
    let start = tokio::time::Instant::now();
    let e = locks.semaphore("s", 2).wait(Duration::from_secs(30)).acquire().await.unwrap_err();
    assert!(matches!(e, Error::AlreadyHeld { ref key } if key == "s"), "{e:?}");
    assert!(start.elapsed() < Duration::from_secs(1));
    second.release().await.unwrap();
    let again = locks.semaphore("s", 2).wait(Duration::from_secs(2)).acquire().await.unwrap();
    again.release().await.unwrap();
    first.release().await.unwrap();
}

/// Futures run by `block_on` have no tokio task id: each is told apart by its thread. Two
/// threads that each `block_on` the same name wait for each other as any two holders do (all
/// of them counted as one task before, so the second was refused with AlreadyHeld), and one
/// thread's wait for a name it holds is still refused.
#[test]
fn block_on_callers_on_different_threads_are_different_holders() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let locks = LockClient::new(MemoryBackend::new());
    let g = rt.block_on(locks.lock("k").acquire()).unwrap();
    let e = rt.block_on(locks.lock("k").wait(Duration::from_secs(5)).acquire()).unwrap_err();
    assert!(matches!(e, Error::AlreadyHeld { .. }), "{e:?}");
    let (handle, other) = (rt.handle().clone(), locks.clone());
    let waiter = std::thread::spawn(move || {
        handle.block_on(async {
            other.lock("k").wait(Duration::from_secs(10)).acquire().await.map(|g| g.detach())
        })
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(!waiter.is_finished(), "the other thread did not wait");
    rt.block_on(g.release()).unwrap();
    assert!(waiter.join().unwrap().is_ok(), "the other thread did not get the lock once it was released");
}
