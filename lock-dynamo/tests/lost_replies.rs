//! DynamoDB reports the truth when a reply is lost, against both emulators behind a proxy that
//! swallows chosen replies (the request is applied, its answer never comes) or answers 500 in
//! their place (the SDK sends the request again):
//! - a release whose reply was lost, and whose retry finds the item already released by this
//!   owner, reports `Released`;
//! - a `try_acquire` that fails after its write was applied leaves no grant behind: another
//!   client takes the lock at once, not after a lease or a takeover period;
//! - a waiting acquire that timed out undoes an attempt of its own that was cut off and lands
//!   after the wait ended;
//! - a permit, a reader or a writer whose grant's reply was lost is recognised as ours by the
//!   SDK's retry (on dynalite, which returns no item with a failed condition, through one
//!   consistent read), and its release whose reply was lost reports `Released`;
//! - a heartbeat (the one that confirms such a grant, or an extend) whose reply is lost too,
//!   and whose retry is refused, recognises its own RVN in the refusal: the grant stays ours
//!   however many replies in a row are lost;
//! - an acquire and a release whose replies stop halfway through the body (the connection
//!   closes) are retried and recognise their own writes.

mod support;

use std::time::{Duration, Instant};

use lock_core::{LockClient, Mode, ReleaseOutcome};
use lock_dynamo::{DynamoBackend, DynamoOptions};
use support::proxy::Proxy;
use support::{Emu, Emulator};

const TABLE: &str = "lost_reply_locks";
/// The attempt and request timeout of the clients behind the proxy.
const ATTEMPT: Duration = Duration::from_secs(1);

fn opts() -> DynamoOptions {
    DynamoOptions::new(TABLE).request_timeout(ATTEMPT)
}

async fn setup(emulator: Emulator) -> (Emu, Proxy, LockClient, LockClient) {
    let t = emulator.with_table(&opts()).await;
    let proxy = Proxy::start(t.endpoint.clone()).await;
    let through =
        DynamoBackend::with_client(support::client_with_attempt_timeout(&proxy.endpoint, ATTEMPT), opts());
    let direct = DynamoBackend::with_client(support::client(&t.endpoint), opts());
    (t, proxy, LockClient::new(through), LockClient::new(direct))
}

fn key(name: &str) -> String {
    format!("lost/{}/{name}", uuid::Uuid::new_v4().simple())
}

async fn a_release_whose_reply_was_lost_reports_released(emulator: Emulator) {
    let (_t, proxy, through, direct) = setup(emulator).await;
    let k = key("release");
    let g = through.lock(&k).ttl(Duration::from_secs(30)).acquire().await.expect("acquire");
    let lease = g.lease();
    proxy.set(|f| f.swallow_update_replies = 1);
    let outcome = g.release().await.expect("a release whose first reply was lost is retried");
    assert_eq!(proxy.swallowed(), 1, "the release's reply was not swallowed");
    assert_eq!(outcome, ReleaseOutcome::Released, "our release was applied, and its retry found it so");
    assert!(direct.inspect(&k).await.expect("inspect").is_none(), "the lock is still held");
    // A second release is another call: it finds nothing to release.
    assert_eq!(through.release_lease(&lease).await.expect("release"), ReleaseOutcome::NotHeld);
}

async fn a_failed_try_acquire_whose_write_was_applied_leaves_no_grant(emulator: Emulator) {
    let (_t, proxy, through, direct) = setup(emulator).await;
    let k = key("try");
    let ttl = Duration::from_secs(30);
    // Every UpdateItem reply is swallowed for as long as the try runs: its write is applied,
    // and the call fails without learning so.
    proxy.set(|f| f.swallow_update_replies = u32::MAX);
    let got = through.lock(&k).ttl(ttl).try_acquire().await;
    proxy.set(|f| f.swallow_update_replies = 0);
    let e = got.expect_err("a try whose replies never came must fail");
    assert!(e.is_retryable(), "{e:?}");
    assert!(proxy.swallowed() >= 1, "no reply was swallowed");
    // The grant is undone by owner token: another client takes the lock at once, far sooner
    // than the 30 s lease (or the takeover after it).
    let start = Instant::now();
    let g = direct.lock(&k).ttl(ttl).wait(Duration::from_secs(6)).acquire().await;
    let g = g.unwrap_or_else(|e| {
        panic!("the failed try's grant blocked another client for {:?}: {e}", start.elapsed())
    });
    g.release().await.expect("release");
}

async fn grants_of_every_primitive_whose_reply_was_lost_are_ours(emulator: Emulator) {
    let (_t, proxy, through, direct) = setup(emulator).await;
    let ttl = Duration::from_secs(30);
    let k = key("primitives");
    for mode in [Mode::Permit { limit: 2 }, Mode::Read, Mode::Write] {
        let builder = |c: &LockClient| match mode {
            Mode::Permit { limit } => c.semaphore(&k, limit),
            Mode::Read => c.read_lock(&k),
            _ => c.write_lock(&k),
        };
        // Applied, and a 500 comes instead of the reply: the SDK's retry finds our entry.
        proxy.set(|f| f.lose_update_replies = 1);
        let lost_before = proxy.counts().1;
        let g = builder(&through).ttl(ttl).try_acquire().await.expect("try");
        let g = g.unwrap_or_else(|| panic!("{mode:?}: a grant whose reply was lost was not recognised"));
        assert_eq!(proxy.counts().1, lost_before + 1, "{mode:?}: the proxy lost no reply");
        let holders = direct.holders(&k, mode).await.expect("holders");
        assert_eq!(holders.len(), 1, "{mode:?}: {holders:?}");
        assert_eq!(holders[0].fencing_token, Some(g.fencing_token()), "{mode:?}: counted twice?");
        // A heartbeat whose reply is lost adopts its RVN; the next one still works.
        proxy.set(|f| f.lose_update_replies = 1);
        g.extend(ttl).await.unwrap_or_else(|e| panic!("{mode:?}: extend despite a lost reply: {e}"));
        g.extend(ttl).await.unwrap_or_else(|e| panic!("{mode:?}: the next extend: {e}"));
        // A release whose reply is lost recognises itself.
        proxy.set(|f| f.lose_update_replies = 1);
        assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released, "{mode:?}");
        assert!(direct.holders(&k, mode).await.expect("holders").is_empty(), "{mode:?}: still held");
    }
}

/// A waiting acquire's attempt cut off by its time limit may still be carried out later, after
/// the wait ended without the lock: it is undone then, not left to block others for a lease
/// and a takeover.
async fn a_timed_out_wait_undoes_an_attempt_that_lands_late(emulator: Emulator) {
    let (_t, proxy, through, direct) = setup(emulator).await;
    let k = key("late");
    let held = direct.lock(&k).ttl(Duration::from_secs(30)).acquire().await.expect("hold");
    // The waiter's first write reaches the server 3.5 s late; its later ones are refused.
    proxy.set(|f| f.delay_next_update = Some(Duration::from_millis(3500)));
    let start = Instant::now();
    let waited = through.lock(&k).ttl(Duration::from_secs(30)).wait(Duration::from_secs(3)).acquire().await;
    assert!(waited.is_err(), "the lock is held");
    // Released before the late write lands: that write grants the lock to the waiter's token.
    held.release().await.expect("release");
    let third = LockClient::new(DynamoBackend::with_client(support::client(&_t.endpoint), opts()));
    tokio::time::sleep(Duration::from_millis(3600).saturating_sub(start.elapsed())).await;
    let g = third.lock(&k).ttl(Duration::from_secs(30)).wait(Duration::from_secs(4)).acquire().await;
    let g = g.expect("the late grant of a wait that timed out was left behind");
    g.release().await.expect("release");
}

/// A waiting acquire that gets the lock after an attempt cut off by its time limit: that
/// attempt, carried out after the lock was taken and released, is undone too, not left
/// granted to a token nobody holds.
async fn a_successful_wait_undoes_an_earlier_attempt_that_lands_late(emulator: Emulator) {
    let (_t, proxy, through, direct) = setup(emulator).await;
    let k = key("late-after-success");
    let held = direct.lock(&k).ttl(Duration::from_secs(30)).acquire().await.expect("hold");
    // The waiter's first write reaches the server 3.5 s late; it is cut off after 1 s.
    proxy.set(|f| f.delay_next_update = Some(Duration::from_millis(3500)));
    let start = Instant::now();
    let waiter = {
        let (through, k) = (through.clone(), k.clone());
        tokio::spawn(async move {
            through.lock(&k).ttl(Duration::from_secs(30)).wait(Duration::from_secs(10)).acquire().await
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    held.release().await.expect("release");
    let g = waiter.await.expect("join").expect("the waiter got the lock");
    assert!(
        start.elapsed() < Duration::from_millis(3500),
        "the waiter got the lock only at {:?}",
        start.elapsed()
    );
    g.release().await.expect("release");
    // The late write lands at 3.5 s, on a free lock.
    let third = LockClient::new(DynamoBackend::with_client(support::client(&_t.endpoint), opts()));
    tokio::time::sleep(Duration::from_millis(3700).saturating_sub(start.elapsed())).await;
    let g = third.lock(&k).ttl(Duration::from_secs(30)).wait(Duration::from_secs(4)).acquire().await;
    let g = g.expect("the late grant of an attempt given up by a successful wait was left behind");
    g.release().await.expect("release");
}

/// A waiting writer's intent write cut off unanswered lands after the writer got the lock and
/// released it: it is withdrawn, not left to hold readers back until it lapses.
async fn a_writers_late_intent_does_not_hold_readers_back(emulator: Emulator) {
    let (_t, proxy, through, direct) = setup(emulator).await;
    let k = key("late-intent");
    let reader = direct.read_lock(&k).ttl(Duration::from_secs(30)).acquire().await.expect("read");
    // The writer's first grant write is refused (a reader holds); the intent it then leaves
    // reaches the server 3 s late.
    proxy.set(|f| {
        f.update_script = [false].into();
        f.delay_next_update = Some(Duration::from_secs(3));
    });
    let start = Instant::now();
    let writer = {
        let (through, k) = (through.clone(), k.clone());
        tokio::spawn(async move {
            through.write_lock(&k).ttl(Duration::from_secs(30)).wait(Duration::from_secs(10)).acquire().await
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    reader.release().await.expect("release");
    let w = writer.await.expect("join").expect("the writer got the lock");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "the writer got the lock only at {:?}",
        start.elapsed()
    );
    w.release().await.expect("release");
    // The late intent lands at 3 s.
    tokio::time::sleep(Duration::from_millis(3100).saturating_sub(start.elapsed())).await;
    let r =
        direct.read_lock(&k).ttl(Duration::from_secs(30)).wait(Duration::from_millis(1800)).acquire().await;
    let r = r.expect("a writer's late intent held readers back after it released");
    r.release().await.expect("release");
}

/// A waiting writer that gives up (a reader holds throughout) while its intent write, cut off
/// unanswered, is still on its way: the intent lands after the wait ended and is withdrawn
/// then too, not left to hold readers back until it lapses (the one withdraw at the wait's
/// end came before it).
async fn a_writers_late_intent_is_withdrawn_after_it_gave_up(emulator: Emulator) {
    let (_t, proxy, through, direct) = setup(emulator).await;
    let k = key("late-intent-gave-up");
    let reader = direct.read_lock(&k).ttl(Duration::from_secs(30)).acquire().await.expect("read");
    // The writer's first grant write is refused (a reader holds); the intent it then leaves
    // reaches the server 3 s late, after the writer gave up at 2 s.
    proxy.set(|f| {
        f.update_script = [false].into();
        f.delay_next_update = Some(Duration::from_secs(3));
    });
    let start = Instant::now();
    let w = through.write_lock(&k).ttl(Duration::from_secs(30)).wait(Duration::from_secs(2)).acquire().await;
    assert!(w.is_err(), "a reader holds throughout");
    // The late intent lands at 3 s; the reader leaves after it.
    tokio::time::sleep(Duration::from_millis(3100).saturating_sub(start.elapsed())).await;
    reader.release().await.expect("release");
    let r =
        direct.read_lock(&k).ttl(Duration::from_secs(30)).wait(Duration::from_millis(1800)).acquire().await;
    let r = r.expect("the late intent of a writer that gave up held readers back");
    r.release().await.expect("release");
}

async fn heartbeats_whose_replies_are_lost_again_are_still_ours(emulator: Emulator) {
    let (_t, proxy, through, direct) = setup(emulator).await;
    let ttl = Duration::from_secs(30);
    for mode in [Mode::Exclusive, Mode::Permit { limit: 2 }, Mode::Read, Mode::Write] {
        let k = key("again");
        let builder = |c: &LockClient| match mode {
            Mode::Exclusive => c.lock(&k),
            Mode::Permit { limit } => c.semaphore(&k, limit),
            Mode::Read => c.read_lock(&k),
            _ => c.write_lock(&k),
        };
        // The grant is applied and its reply lost; the SDK's retry is refused and finds it
        // ours; the heartbeat that confirms it is applied and its reply lost; that retry is
        // refused too.
        proxy.set(|f| f.update_script = [true, false, true, false].into());
        let g = builder(&through).ttl(ttl).try_acquire().await.expect("try");
        let g =
            g.unwrap_or_else(|| panic!("{mode:?}: a grant whose confirmation's reply was lost is not ours"));
        let holders = direct.holders(&k, mode).await.expect("holders");
        assert_eq!(holders.len(), 1, "{mode:?}: {holders:?}");
        assert_eq!(holders[0].fencing_token, Some(g.fencing_token()), "{mode:?}");
        // Extends applied with their replies lost, their retries refused, again and again
        // (one extend that adopts a lost heartbeat's RVN loses that reply too).
        proxy.set(|f| f.update_script = [true, false, true, false].into());
        for _ in 0..2 {
            g.extend(ttl).await.unwrap_or_else(|e| panic!("{mode:?}: extend whose replies were lost: {e}"));
        }
        proxy.set(|f| f.update_script.clear());
        g.extend(ttl).await.unwrap_or_else(|e| panic!("{mode:?}: the next extend: {e}"));
        assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released, "{mode:?}");
        assert!(direct.holders(&k, mode).await.expect("holders").is_empty(), "{mode:?}: still held");
    }
}

/// The SDK tries a call three times: a grant applied on the first try (its reply lost, a 500
/// in its place) and then throttled on the two retries fails as throttled. That grant is
/// released, for a `try_acquire` and for a wait whose deadline passed with it; it was left
/// for the whole lease (throttling was taken to mean "not applied").
async fn an_acquire_throttled_after_an_applied_try_leaves_no_grant(emulator: Emulator) {
    let (_t, proxy, through, direct) = setup(emulator).await;
    let ttl = Duration::from_secs(30);
    for waits in [false, true] {
        let k = key(if waits { "throttled-wait" } else { "throttled-try" });
        let (throttled, lost) = proxy.counts();
        proxy.set(|f| {
            f.update_script = [true].into();
            f.throttle_next = 2;
        });
        let b = through.lock(&k).ttl(ttl);
        let e = if waits {
            b.wait(Duration::from_millis(1)).acquire().await.map(|_| ()).expect_err("throttled")
        } else {
            b.try_acquire().await.map(|_| ()).expect_err("throttled")
        };
        assert!(e.is_retryable() && e.to_string().to_lowercase().contains("thrott"), "waits {waits}: {e}");
        assert_eq!(proxy.counts(), (throttled + 2, lost + 1), "waits {waits}: the faults did not all happen");
        let start = Instant::now();
        let g = direct.lock(&k).ttl(ttl).wait(Duration::from_secs(6)).acquire().await;
        let g = g.unwrap_or_else(|e| {
            panic!(
                "waits {waits}: the throttled call's grant blocked another client for {:?}: {e}",
                start.elapsed()
            )
        });
        g.release().await.expect("release");
    }
}

/// A reply cut off halfway through its body (the connection closes after the head and part of
/// the JSON) is a reply lost after the write was applied: the acquire's retry recognises its
/// own grant, with the fence the store keeps, and the release's retry reports `Released`.
async fn replies_cut_mid_body_are_recognised(emulator: Emulator) {
    let (_t, proxy, through, direct) = setup(emulator).await;
    let k = key("cut");
    let ttl = Duration::from_secs(30);
    proxy.set(|f| f.cut_update_replies = 1);
    let g = through.lock(&k).ttl(ttl).wait(Duration::from_secs(10)).acquire().await;
    let g = g.expect("an acquire whose reply was cut mid-body is retried and finds its grant");
    assert_eq!(proxy.cut(), 1, "the acquire's reply was not cut");
    let held = direct.inspect(&k).await.expect("inspect").expect("the lock is held");
    assert_eq!(held.owner, Some(g.lease().owner()), "the store's holder is another owner");
    assert_eq!(held.fencing_token, Some(g.fencing_token()), "the guard's token is not the store's");
    proxy.set(|f| f.cut_update_replies = 1);
    let outcome = g.release().await.expect("a release whose reply was cut mid-body is retried");
    assert_eq!(proxy.cut(), 2, "the release's reply was not cut");
    assert_eq!(outcome, ReleaseOutcome::Released, "our release was applied, and its retry found it so");
    assert!(direct.inspect(&k).await.expect("inspect").is_none(), "the lock is still held");
}

on_each_emulator!(
    replies_cut_mid_body_are_recognised,
    an_acquire_throttled_after_an_applied_try_leaves_no_grant,
    a_writers_late_intent_is_withdrawn_after_it_gave_up,
    heartbeats_whose_replies_are_lost_again_are_still_ours,
    a_release_whose_reply_was_lost_reports_released,
    a_failed_try_acquire_whose_write_was_applied_leaves_no_grant,
    a_timed_out_wait_undoes_an_attempt_that_lands_late,
    a_successful_wait_undoes_an_earlier_attempt_that_lands_late,
    a_writers_late_intent_does_not_hold_readers_back,
    grants_of_every_primitive_whose_reply_was_lost_are_ours
);

/// dynalite has no transactions: a multi-key try takes the names one at a time and gives the
/// ones taken back when one is held. A try dropped while it gives them back leaves none of
/// them held (the give-back goes on in the background).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_key_try_dropped_while_it_gives_names_back_leaves_none_held() {
    let (_t, proxy, through, direct) = setup(Emulator::Dynalite).await;
    let base = key("multi");
    let [x, y, z] = ["x", "y", "z"].map(|n| format!("{base}/{n}"));
    // The first multi-key try learns that the endpoint has no transactions.
    let warm = through.lock_all([format!("{base}/a"), format!("{base}/b")]).try_acquire().await;
    warm.expect("try").expect("free names").release().await.expect("release");
    let held = direct.lock(&z).ttl(Duration::from_secs(30)).acquire().await.expect("hold z");
    // x and y are taken, z is refused; giving y back hangs.
    proxy.set(|f| {
        f.update_script = [false, false, false].into();
        f.delay_next_update = Some(Duration::from_secs(3));
    });
    let tried = through.lock_all([&x, &y, &z]).ttl(Duration::from_secs(30)).try_acquire();
    let tried = tokio::time::timeout(Duration::from_millis(500), tried).await;
    assert!(tried.is_err(), "the try ended before it was dropped: {tried:?}");
    let g = direct.lock(&x).ttl(Duration::from_secs(30)).wait(Duration::from_secs(5)).acquire().await;
    let g = g.expect("x, taken by the dropped try, was left held");
    g.release().await.expect("release");
    held.release().await.expect("release");
}
