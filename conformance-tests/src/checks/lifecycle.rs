//! Checks of a grant's life: waiting (promptly, by notification, to the deadline, in order),
//! cancellation, the guard (drop, detach, loss, renewal, hold cap, scoped runs) and bad input.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use lock_core::{Error, Instant, KeyError, LossReason, ReleaseOutcome};

use crate::{ensure, CheckResult, Ctx, Failure};

/// Promise 5: a waiter gets the lock promptly when the holder releases (long before the
/// holder's TTL would have run out).
pub async fn waiting_acquire_wakes_promptly(ctx: Ctx) -> CheckResult {
    let a = ctx.client().await?;
    let b = ctx.client().await?;
    let key = ctx.key("k");
    let ga = a.lock(&key).ttl(ctx.long_ttl()).acquire().await?;
    let k2 = key.clone();
    let waiter = tokio::spawn(async move {
        let g = b.lock(&k2).ttl(Duration::from_secs(60)).wait(Duration::from_secs(50)).acquire().await;
        (g, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    ensure!(!waiter.is_finished(), "the waiter finished while the lock was held");
    let released = Instant::now();
    let _ = ga.release().await?;
    let (g, got) = waiter.await.map_err(|e| Failure(format!("waiter panicked: {e}")))?;
    let g = g?;
    let lag = got.saturating_duration_since(released);
    ensure!(
        lag <= ctx.wake_bound(),
        "the waiter took {lag:?} to get a released lock; bound {:?}",
        ctx.wake_bound()
    );
    let _ = g.release().await?;
    Ok(())
}

/// Promise 5, notification: a backend that claims `WakeMode::Notify` wakes a waiter well
/// inside any polling fallback. Fifteen hand-offs, each after the waiter has waited long
/// enough for a poller's backoff to reach its cap; the median lag must stay under 40 ms, which
/// polling at even 250 ms would miss (P < 0.3 %).
pub async fn waiting_acquire_wakes_by_notification(ctx: Ctx) -> CheckResult {
    let a = ctx.client().await?;
    let b = ctx.client().await?;
    let key = ctx.key("k");
    let mut lags = Vec::new();
    for _ in 0..15 {
        let ga = a.lock(&key).ttl(ctx.long_ttl()).acquire().await?;
        let (b2, k2) = (b.clone(), key.clone());
        let waiter = tokio::spawn(async move {
            let g = b2.lock(&k2).ttl(Duration::from_secs(60)).wait(Duration::from_secs(30)).acquire().await;
            (g, Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        ensure!(!waiter.is_finished(), "the waiter finished while the lock was held");
        let released = Instant::now();
        let _ = ga.release().await?;
        let (g, got) = waiter.await.map_err(|e| Failure(format!("waiter panicked: {e}")))?;
        let g = g?;
        lags.push(got.saturating_duration_since(released));
        let _ = g.release().await?;
    }
    lags.sort();
    let median = lags[lags.len() / 2];
    ensure!(
        median <= Duration::from_millis(40),
        "median hand-off lag {median:?} over {} hand-offs ({lags:?}): the backend claims Notify but behaves like polling",
        lags.len()
    );
    Ok(())
}

/// Promise 5: a waiting acquire gives up with a retryable `Timeout` at its deadline, not
/// before and not much after (the slack, less than the wait: a deadline honoured at twice
/// its length fails), and leaves nothing behind: for a lock, a permit, a writer waiting
/// behind a reader (its intent withdrawn: a new reader gets in) and a multi-key lock whose
/// last name is held (its first name free again), each waited on at once.
pub async fn waiting_acquire_times_out_at_deadline(ctx: Ctx) -> CheckResult {
    let a = ctx.client().await?;
    let b = ctx.client().await?;
    let c = ctx.client().await?;
    let long = ctx.long_ttl();
    let wait = Duration::from_secs(2);
    let (slack, within) = (ctx.slack(), ctx.wake_bound() + ctx.slack());
    let timed = move |what: &'static str, fut: Attempt| async move {
        let start = Instant::now();
        let res = fut.await;
        let took = start.elapsed();
        match res {
            Err(e @ Error::WaitTimedOut { .. }) => {
                ensure!(e.is_retryable(), "{what}: Timeout is not marked retryable")
            }
            other => return Err(Failure(format!("{what}: expected Timeout, got {other:?}"))),
        }
        ensure!(
            took >= wait - Duration::from_millis(5),
            "{what}: gave up after {took:?}, before the {wait:?} deadline"
        );
        ensure!(took <= wait + slack, "{what}: gave up after {took:?}, long past the {wait:?} deadline");
        Ok(())
    };
    // The holders renew: on a session backend a guard's validity is the session's, which the
    // wait may outlast. Then nothing of the waiter blocks another client (a try, retried for the wake bound).
    let free = move |what: &'static str, probe: Box<dyn Fn() -> Attempt + Send>| async move {
        let deadline = Instant::now() + within;
        loop {
            if let Some(g) = probe().await? {
                let _ = g.release().await?;
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{what}: a waiter that timed out left something that blocks others"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (k_lock, k_sem, k_rw, k_first, k_last) =
        (ctx.key("k"), ctx.key("sem"), ctx.key("rw"), ctx.key("m-a"), ctx.key("m-b"));
    let mut holders = vec![
        a.lock(&k_lock).ttl(long).auto_renew().acquire().await?,
        a.lock(&k_last).ttl(long).auto_renew().acquire().await?,
    ];
    let mut waits: Vec<futures::future::BoxFuture<'_, CheckResult>> = Vec::new();
    let bl = b.clone();
    waits.push(Box::pin(timed(
        "lock",
        Box::pin(async move { bl.lock(&k_lock).wait(wait).acquire().await.map(Some) }),
    )));
    let (bm, cm, names) = (b.clone(), c.clone(), [k_first.clone(), k_last.clone()]);
    waits.push(Box::pin(async move {
        let fut = async move { bm.lock_all(names).wait(wait).acquire().await.map(|g| Some(g.into_guard())) };
        timed("multi-key lock", Box::pin(fut)).await?;
        let probe = move || -> Attempt {
            let (c, k) = (cm.clone(), k_first.clone());
            Box::pin(async move { c.lock(&k).try_acquire().await })
        };
        free("multi-key lock", Box::new(probe)).await
    }));
    if ctx.caps.max_permits > 0 {
        holders.push(a.semaphore(&k_sem, 1).ttl(long).auto_renew().acquire().await?);
        let bs = b.clone();
        waits.push(Box::pin(timed(
            "permit",
            Box::pin(async move { bs.semaphore(&k_sem, 1).wait(wait).acquire().await.map(Some) }),
        )));
    }
    if ctx.caps.read_write {
        holders.push(a.read_lock(&k_rw).ttl(long).auto_renew().acquire().await?);
        let (bw, cr) = (b.clone(), c.clone());
        waits.push(Box::pin(async move {
            let k = k_rw.clone();
            timed("writer", Box::pin(async move { bw.write_lock(&k).wait(wait).acquire().await.map(Some) }))
                .await?;
            let probe = move || -> Attempt {
                let (c, k) = (cr.clone(), k_rw.clone());
                Box::pin(async move { c.read_lock(&k).try_acquire().await })
            };
            free("writer", Box::new(probe)).await
        }));
    }
    for r in futures::future::join_all(waits).await {
        r?;
    }
    for g in holders {
        ensure!(g.is_held(), "a holder lost its grant while another client waited");
        let _ = g.release().await?;
    }
    Ok(())
}

/// Promise 5: without a wait, acquire makes one attempt: `try_acquire` gives `None` and
/// `acquire` a `Timeout` with zero wait, both at once.
pub async fn no_wait_acquire_returns_at_once(ctx: Ctx) -> CheckResult {
    let a = ctx.client().await?;
    let b = ctx.client().await?;
    let key = ctx.key("k");
    let ga = a.lock(&key).ttl(ctx.long_ttl()).acquire().await?;
    let start = Instant::now();
    ensure!(b.lock(&key).try_acquire().await?.is_none(), "try_acquire got a held lock");
    match b.lock(&key).acquire().await {
        Err(Error::WaitTimedOut { waited, .. }) => {
            ensure!(waited.is_zero(), "a no-wait acquire reported waiting {waited:?}")
        }
        other => return Err(Failure(format!("a no-wait acquire of a held lock returned {other:?}"))),
    }
    ensure!(start.elapsed() < ctx.slack(), "no-wait attempts took {:?}", start.elapsed());
    let _ = ga.release().await?;
    Ok(())
}

/// Promise 5 (fair backends): waiters get the lock in the order they started waiting.
pub async fn waiters_are_served_in_order(ctx: Ctx) -> CheckResult {
    let key = ctx.key("k");
    let holder = ctx.client().await?;
    let g = holder.lock(&key).ttl(ctx.long_ttl()).acquire().await?;
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let c = ctx.client().await?;
        let (k, order) = (key.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let g = c.lock(&k).ttl(Duration::from_secs(60)).wait(Duration::from_secs(50)).acquire().await?;
            order.lock().unwrap_or_else(|p| p.into_inner()).push(i);
            g.release().await.map(|_| ())
        }));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _ = g.release().await?;
    for t in tasks {
        t.await.map_err(|e| Failure(format!("waiter panicked: {e}")))??;
    }
    let order = order.lock().unwrap_or_else(|p| p.into_inner()).clone();
    ensure!(order == vec![0, 1, 2, 3], "waiters were served in order {order:?}");
    Ok(())
}

/// Promise 6: dropping a waiting acquire leaves nothing that blocks the next contender.
pub async fn dropped_waiting_acquire_leaves_nothing(ctx: Ctx) -> CheckResult {
    let a = ctx.client().await?;
    let b = ctx.client().await?;
    let c = ctx.client().await?;
    let key = ctx.key("k");
    let ga = a.lock(&key).ttl(ctx.long_ttl()).acquire().await?;
    let waiting = b.lock(&key).ttl(ctx.long_ttl()).wait(Duration::from_secs(50)).acquire();
    ensure!(
        tokio::time::timeout(Duration::from_millis(400), waiting).await.is_err(),
        "the waiter got a held lock"
    );
    let _ = ga.release().await?;
    // The dropped waiter's TTL is 60 s: if it left a queue entry or grant behind, this fails.
    let gc = c.lock(&key).ttl(ctx.long_ttl()).wait(ctx.wake_bound() + ctx.slack()).acquire().await;
    let gc = gc.map_err(|e| Failure(format!("a dropped waiter left something behind: {e}")))?;
    let _ = gc.release().await?;
    Ok(())
}

/// Promise 6: attempts dropped at any point of their flight (before the request is sent,
/// while the server works, before the reply is read) leave no grant behind.
pub async fn cancelled_attempts_leave_nothing(ctx: Ctx) -> CheckResult {
    let b = ctx.client().await?;
    let c = ctx.client().await?;
    let key = ctx.key("k");
    for i in 0..40u64 {
        // Half the attempts are cut after 1 to 4 polls (before the request is sent, right
        // after), half after 0 to 3 ms (while the server works, before the reply is read).
        // One that finished in time returns a guard, dropped and released in the background.
        let attempt = b.lock(&key).ttl(ctx.long_ttl()).try_acquire();
        if i % 2 == 0 {
            let _ = poll_then_drop(attempt, 1 + (i as usize / 2) % 4).await;
        } else {
            let _ = tokio::time::timeout(Duration::from_micros((i * 397) % 3000), attempt).await;
        }
    }
    // Every grant above had a 60 s TTL: one that nobody released makes this fail.
    let gc = c.lock(&key).ttl(ctx.long_ttl()).wait(ctx.wake_bound() + ctx.slack()).acquire().await;
    let gc = gc.map_err(|e| Failure(format!("a cancelled attempt left a grant behind: {e}")))?;
    let _ = gc.release().await?;
    Ok(())
}

/// A lock attempt of some kind, boxed so that one helper cuts them all.
type Attempt = futures::future::BoxFuture<'static, lock_core::Result<Option<lock_core::Guard>>>;

/// Whether nothing blocks a name (see [`cut_attempts`]).
type Probe = futures::future::BoxFuture<'static, lock_core::Result<bool>>;

/// Cuts attempts made by `start` at times spread over twice a measured attempt's time (so that
/// cuts land before the request is sent, while the server works and before the reply is read);
/// after each, `probe` (tries of a kind that any grant or queue entry `start` left would
/// refuse) must find the name free within the wake bound and the slack. An attempt that fails, rather
/// than being cut or answered, fails the check; one that is answered with a grant is released.
async fn cut_attempts(
    ctx: &Ctx,
    what: &str,
    rounds: u32,
    start: impl Fn() -> Attempt,
    probe: impl Fn() -> Probe,
) -> CheckResult {
    let t0 = StdInstant::now();
    match start().await {
        Ok(Some(g)) => {
            let _ = g.release().await?;
        }
        Ok(None) => {}
        Err(e) => return Err(Failure(format!("{what}: an attempt failed: {e}"))),
    }
    let took = t0.elapsed().max(Duration::from_micros(200));
    for i in 0..rounds {
        let at = took * 2 * ((i * 397) % 41) / 40;
        match tokio::time::timeout(at, start()).await {
            Err(_) => {}
            Ok(Err(e)) => return Err(Failure(format!("{what}: attempt {i} failed: {e}"))),
            Ok(Ok(Some(g))) => {
                let _ = g.release().await?;
            }
            Ok(Ok(None)) => {}
        }
        let within = ctx.wake_bound() + ctx.slack();
        let deadline = Instant::now() + within;
        loop {
            if probe().await? {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{what}: attempt {i}, cut after {at:?} (an attempt takes {took:?}), left a grant or a queue entry that still blocked others {within:?} later"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// Promise 6: attempts on a held name (a try, which queue backends enqueue and withdraw, and a
/// waiting acquire), dropped at any point of their flight, leave nothing behind: once the
/// holder releases, another client gets the lock at once.
pub async fn cancelled_attempts_on_a_held_lock_leave_nothing(ctx: Ctx) -> CheckResult {
    let a = ctx.client().await?;
    let b = ctx.client().await?;
    let c = ctx.client().await?;
    let key = ctx.key("k");
    let long = ctx.long_ttl();
    let holder = Arc::new(tokio::sync::Mutex::new(Some(a.lock(&key).ttl(long).acquire().await?)));
    let round = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let (k, r) = (key.clone(), round.clone());
    let start = move || -> Attempt {
        let (b, k) = (b.clone(), k.clone());
        let waiting = r.fetch_add(1, Ordering::Relaxed) % 2 == 1;
        Box::pin(async move {
            let attempt = b.lock(&k).ttl(long);
            if waiting {
                attempt.wait(Duration::from_secs(50)).acquire().await.map(Some)
            } else {
                attempt.try_acquire().await
            }
        })
    };
    // The probe: the holder releases, another client must then get the lock; the holder takes
    // it back for the next round.
    let probe = move || -> Probe {
        let (a, c, k, holder) = (a.clone(), c.clone(), key.clone(), holder.clone());
        Box::pin(async move {
            let mut held = holder.lock().await;
            if let Some(g) = held.take() {
                g.release().await?;
            }
            let got = c.lock(&k).ttl(long).try_acquire().await?;
            let free = got.is_some();
            if let Some(g) = got {
                g.release().await?;
            }
            *held = Some(a.lock(&k).ttl(long).wait(Duration::from_secs(30)).acquire().await?);
            Ok(free)
        })
    };
    cut_attempts(&ctx, "lock on a held name", 20, start, probe).await
}

/// Promise 6: permit attempts dropped at any point of their flight leave no permit behind.
pub async fn cancelled_permit_attempts_leave_nothing(ctx: Ctx) -> CheckResult {
    let b = ctx.client().await?;
    let c = ctx.client().await?;
    let key = ctx.key("k");
    let long = ctx.long_ttl();
    let k = key.clone();
    let start = move || -> Attempt {
        let (b, k) = (b.clone(), k.clone());
        Box::pin(async move { b.semaphore(&k, 1).ttl(long).try_acquire().await })
    };
    let probe = move || -> Probe {
        let (c, k) = (c.clone(), key.clone());
        Box::pin(async move {
            let Some(g) = c.semaphore(&k, 1).ttl(long).try_acquire().await? else { return Ok(false) };
            g.release().await?;
            Ok(true)
        })
    };
    cut_attempts(&ctx, "permit", 20, start, probe).await
}

/// Promise 6: read and write lock attempts dropped at any point of their flight leave no grant
/// (and no waiting writer's intent) behind.
pub async fn cancelled_read_write_attempts_leave_nothing(ctx: Ctx) -> CheckResult {
    let b = ctx.client().await?;
    let c = ctx.client().await?;
    let key = ctx.key("k");
    let long = ctx.long_ttl();
    let round = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let k = key.clone();
    let start = move || -> Attempt {
        let (b, k) = (b.clone(), k.clone());
        let write = round.fetch_add(1, Ordering::Relaxed).is_multiple_of(2);
        Box::pin(async move {
            if write {
                b.write_lock(&k).ttl(long).try_acquire().await
            } else {
                b.read_lock(&k).ttl(long).try_acquire().await
            }
        })
    };
    // A write lock is refused by any reader or writer left behind; a reader by a writer or
    // a writer's intent: both must be had.
    let probe = move || -> Probe {
        let (c, k) = (c.clone(), key.clone());
        Box::pin(async move {
            let Some(r) = c.read_lock(&k).ttl(long).try_acquire().await? else { return Ok(false) };
            r.release().await?;
            let Some(w) = c.write_lock(&k).ttl(long).try_acquire().await? else { return Ok(false) };
            w.release().await?;
            Ok(true)
        })
    };
    cut_attempts(&ctx, "read-write lock", 20, start, probe).await?;
    // Writers waiting behind a reader, cut: none leaves its intent (new readers get in). The
    // first attempt, which measures an attempt's time, is a try.
    let a = ctx.client().await?;
    let (b, c, key) = (ctx.client().await?, ctx.client().await?, ctx.key("behind"));
    let reader = a.read_lock(&key).ttl(long).acquire().await?;
    let first = Arc::new(AtomicBool::new(true));
    let k = key.clone();
    let start = move || -> Attempt {
        let (b, k) = (b.clone(), k.clone());
        let first = first.swap(false, Ordering::Relaxed);
        Box::pin(async move {
            let writer = b.write_lock(&k).ttl(long);
            if first {
                writer.try_acquire().await
            } else {
                writer.wait(Duration::from_secs(30)).acquire().await.map(Some)
            }
        })
    };
    let probe = move || -> Probe {
        let (c, k) = (c.clone(), key.clone());
        Box::pin(async move {
            let Some(r) = c.read_lock(&k).ttl(long).try_acquire().await? else { return Ok(false) };
            r.release().await?;
            Ok(true)
        })
    };
    cut_attempts(&ctx, "writer waiting behind a reader", 20, start, probe).await?;
    let _ = reader.release().await?;
    Ok(())
}

/// Polls `fut` up to `polls` times, yielding in between, then drops it unless it finished.
async fn poll_then_drop<F: Future>(fut: F, polls: usize) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    for _ in 0..polls {
        if let std::task::Poll::Ready(v) = futures::poll!(fut.as_mut()) {
            return Some(v);
        }
        tokio::task::yield_now().await;
    }
    None
}

/// Promise 6: dropping a guard does not block the thread, stops renewal and releases the lock
/// in the background.
pub async fn dropped_guard_releases_in_background(ctx: Ctx) -> CheckResult {
    let a = ctx.client().await?;
    let b = ctx.client().await?;
    let key = ctx.key("k");
    let g = a.lock(&key).ttl(ctx.long_ttl()).auto_renew().acquire().await?;
    let start = StdInstant::now();
    drop(g);
    let took = start.elapsed();
    // Dropping sends nothing itself; only a scheduler hiccup can make it slow.
    ensure!(took < ctx.slack(), "dropping a guard blocked the thread for {took:?}");
    let gb = b.lock(&key).ttl(ctx.long_ttl()).wait(ctx.wake_bound() + ctx.slack()).acquire().await;
    let gb = gb.map_err(|e| Failure(format!("a dropped guard was not released in the background: {e}")))?;
    let _ = gb.release().await?;
    Ok(())
}

/// Promise 6: `detach` keeps the lock past the guard; the lease can be resumed or released.
pub async fn detach_keeps_lock_past_guard(ctx: Ctx) -> CheckResult {
    let a = ctx.client().await?;
    let b = ctx.client().await?;
    let key = ctx.key("k");
    // Detached from a renewing guard: not released (for half its TTL, another client never
    // gets it), and no longer renewed (on a per-lock TTL, another client gets it once the TTL
    // and the margin have passed).
    let ttl = ctx.short_ttl();
    let renewed = a.lock(&key).ttl(ttl).auto_renew().acquire().await?.detach();
    let until = Instant::now() + ttl / 2;
    while Instant::now() < until {
        ensure!(b.lock(&key).try_acquire().await?.is_none(), "a detached lock was released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !ctx.session() {
        let by = renewed.valid_until() + ctx.caps.expiry_margin + ctx.slack();
        let wait = by.saturating_duration_since(Instant::now());
        let g = b.lock(&key).ttl(ctx.long_ttl()).wait(wait).acquire().await;
        let g = g.map_err(|e| Failure(format!("a detached lock was still renewed: {e}")))?;
        let _ = g.release().await?;
    } else {
        let _ = a.release_lease(&renewed).await?;
    }
    let lease = a.lock(&key).ttl(ctx.long_ttl()).acquire().await?.detach();
    tokio::time::sleep(Duration::from_millis(100)).await;
    ensure!(b.lock(&key).try_acquire().await?.is_none(), "a detached lock was released");
    let g = a.resume(lease.clone(), false);
    ensure!(g.is_held(), "a resumed guard is not held");
    ensure!(g.fencing_token() == lease.fencing_token(), "resume changed the fencing token");
    ensure!(
        g.release().await? == ReleaseOutcome::Released,
        "release of a resumed guard did not report Released"
    );
    ensure!(
        b.lock(&key).try_acquire().await?.is_some(),
        "the lock stayed held after release of the resumed guard"
    );
    Ok(())
}

/// Promise 7: without renewal, the loss signal fires at `valid_until` (not before), with
/// `Expired`. Session form: the session expires on the server while the client lives on; the
/// signal fires no later than the client's `valid_until` (earlier, with `SessionLost`, where
/// the backend learns of the expiry first).
pub async fn loss_fires_at_valid_until(ctx: Ctx) -> CheckResult {
    let c = ctx.client().await?;
    let key = ctx.key("k");
    let g = c.lock(&key).ttl(ctx.short_ttl()).acquire().await?;
    ensure!(g.is_held(), "a fresh guard is not held");
    if ctx.session() {
        let expire = {
            let (ctx, c) = (ctx.clone(), c.clone());
            tokio::spawn(async move { ctx.expire(c).await })
        };
        let limit = ctx.lease_length(ctx.short_ttl()) * 2 + ctx.caps.expiry_margin + ctx.slack();
        let reason = tokio::time::timeout(limit, g.lost()).await.map_err(|_| {
            Failure(format!("the loss signal did not fire within {limit:?} of the session's expiry"))
        })?;
        let until = g.valid_until();
        ensure!(
            Instant::now() <= until + ctx.slack(),
            "the loss signal fired {:?} after valid_until",
            Instant::now() - until
        );
        ensure!(
            matches!(reason, LossReason::Expired | LossReason::SessionLost),
            "loss reason {reason:?}, expected Expired or SessionLost"
        );
        ensure!(!g.is_held(), "is_held is true after the loss");
        let _ = expire.await;
        let _ = g.release().await;
        return Ok(());
    }
    let until = g.valid_until();
    let reason = tokio::time::timeout(ctx.short_ttl() + ctx.slack(), g.lost())
        .await
        .map_err(|_| Failure("the loss signal did not fire after valid_until".into()))?;
    let at = Instant::now();
    ensure!(at >= until, "the loss signal fired {:?} before valid_until", until - at);
    ensure!(reason == LossReason::Expired, "loss reason {reason:?}, expected Expired");
    ensure!(!g.is_held(), "is_held is true after the loss");
    // The server may keep the grant a hair past the client's conservative valid_until, so
    // either outcome is true here; what matters is that release does not fail.
    let _ = g.release().await?;
    Ok(())
}

/// Promise 7: when the grant is deleted behind the holder's back (an operator, another owner),
/// the next renewal notices and the loss signal fires with `NotHeld`.
pub async fn loss_fires_when_renewal_finds_lock_gone(ctx: Ctx) -> CheckResult {
    let a = ctx.client().await?;
    let op = ctx.client().await?;
    let key = ctx.key("k");
    let ttl = ctx.short_ttl();
    let g = a.lock(&key).ttl(ttl).auto_renew().acquire().await?;
    let r = op.release_lease(&g.lease()).await?;
    ensure!(r == ReleaseOutcome::Released, "an operator release with the owner token reported {r:?}");
    let reason = tokio::time::timeout(ttl + ctx.slack(), g.lost())
        .await
        .map_err(|_| Failure("renewal did not notice the lock was gone".into()))?;
    ensure!(
        matches!(reason, LossReason::NotHeld | LossReason::SessionLost),
        "loss reason {reason:?}, expected NotHeld"
    );
    ensure!(!g.is_held(), "is_held is true after the loss");
    Ok(())
}

/// Promise 7: with auto-renewal the lock outlives several TTLs with the same fencing token.
pub async fn auto_renew_keeps_the_lock(ctx: Ctx) -> CheckResult {
    let a = ctx.client().await?;
    let b = ctx.client().await?;
    let key = ctx.key("k");
    let ttl = ctx.short_ttl();
    let g = a.lock(&key).ttl(ttl).auto_renew().acquire().await?;
    let fence = g.fencing_token();
    let first_until = g.valid_until();
    let lost = tokio::time::timeout(ttl * 3, g.lost()).await;
    ensure!(lost.is_err(), "a renewed lock was lost: {:?}", lost.ok());
    ensure!(g.is_held(), "a renewed lock is not held after 3 TTLs");
    ensure!(g.valid_until() > first_until, "valid_until did not move forward with renewal");
    ensure!(b.lock(&key).try_acquire().await?.is_none(), "another client took a renewed lock");
    ensure!(g.fencing_token() == fence, "renewal changed the fencing token");
    ensure!(
        g.release().await? == ReleaseOutcome::Released,
        "release of a renewed lock did not report Released"
    );
    Ok(())
}

/// Promise 7: a user's `extend` to a longer TTL is kept by auto-renewal, not undone by the
/// next renewal.
pub async fn user_extend_survives_auto_renew(ctx: Ctx) -> CheckResult {
    let a = ctx.client().await?;
    let key = ctx.key("k");
    let ttl = ctx.short_ttl();
    let g = a.lock(&key).ttl(ttl).auto_renew().acquire().await?;
    g.extend(ttl * 6).await?;
    // Long enough for several renewals at the old TTL/3 pace.
    tokio::time::sleep(ttl * 2).await;
    ensure!(g.is_held(), "the lock was lost after a user extend under auto-renewal");
    ensure!(
        g.valid_until() > Instant::now() + ttl * 2,
        "valid_until is {:?} away; auto-renewal undid the longer TTL",
        g.valid_until().saturating_duration_since(Instant::now())
    );
    if let Some(left) = a.inspect(&key).await?.and_then(|i| i.remaining_ttl) {
        ensure!(left > ttl * 2, "the server's remaining TTL is {left:?}; auto-renewal undid the longer TTL");
    }
    let _ = g.release().await?;
    Ok(())
}

/// Promise 7: the cap on total hold time stops renewal; the loss signal then fires with
/// `MaxHoldReached` and the lock becomes free.
pub async fn max_hold_stops_renewal(ctx: Ctx) -> CheckResult {
    let a = ctx.client().await?;
    let b = ctx.client().await?;
    let key = ctx.key("k");
    let ttl = ctx.short_ttl();
    let cap = ttl * 2;
    let start = Instant::now();
    let g = a.lock(&key).ttl(ttl).auto_renew().max_hold(cap).acquire().await?;
    let reason = tokio::time::timeout(cap + ttl + ctx.slack(), g.lost())
        .await
        .map_err(|_| Failure("the hold cap did not end the lock".into()))?;
    ensure!(reason == LossReason::MaxHoldReached, "loss reason {reason:?}, expected MaxHoldReached");
    ensure!(
        start.elapsed() >= cap - ttl,
        "the lock ended after {:?}, well before the {cap:?} cap",
        start.elapsed()
    );
    let gb = b.lock(&key).wait(ttl + ctx.caps.expiry_margin + ctx.slack()).acquire().await?;
    let _ = gb.release().await?;
    drop(g);
    Ok(())
}

/// Promise 7: a hold cap shorter than the TTL shortens the grant at once, so the lock ends at
/// the cap (not a TTL later) and others can take it then.
pub async fn max_hold_shorter_than_ttl_ends_at_the_cap(ctx: Ctx) -> CheckResult {
    let a = ctx.client().await?;
    let b = ctx.client().await?;
    let key = ctx.key("k");
    let cap = ctx.short_ttl();
    let ttl = ctx.long_ttl();
    let start = Instant::now();
    let g = a.lock(&key).ttl(ttl).auto_renew().max_hold(cap).acquire().await?;
    let reason = tokio::time::timeout(cap + ctx.slack(), g.lost()).await.map_err(|_| {
        Failure(format!("a {cap:?} hold cap with a {ttl:?} TTL did not end the lock in time"))
    })?;
    let ended = start.elapsed();
    ensure!(reason == LossReason::MaxHoldReached, "loss reason {reason:?}, expected MaxHoldReached");
    // Not long before the cap either (the guard may stop trusting its grant an expiry margin
    // early).
    let earliest = cap.saturating_sub(ctx.caps.expiry_margin + Duration::from_millis(50));
    ensure!(ended >= earliest, "a {cap:?} hold cap ended the lock after only {ended:?}");
    let gb = b.lock(&key).wait(ctx.caps.expiry_margin + ctx.wake_bound() + ctx.slack()).acquire().await;
    let gb = gb.map_err(|e| Failure(format!("the lock was still held after its hold cap: {e}")))?;
    ensure!(start.elapsed() < ttl / 2, "the capped lock was held for {:?}", start.elapsed());
    let _ = gb.release().await?;
    drop(g);
    Ok(())
}

/// Promise 7: the scoped helper returns the work's value and releases the lock.
pub async fn scoped_run_returns_and_releases(ctx: Ctx) -> CheckResult {
    let c = ctx.client().await?;
    let key = ctx.key("k");
    let v = c.lock(&key).ttl(ctx.long_ttl()).run(|lease| async move { lease.fencing_token().get() }).await?;
    let g = c.lock(&key).try_acquire().await?;
    ensure!(g.is_some(), "the scoped helper did not release the lock");
    ensure!(g.map(|g| g.fencing_token().get()).unwrap_or(0) > v, "token did not increase after a scoped run");
    Ok(())
}

/// Promise 7: the scoped helper drops the work and returns `Lost` when the lock is lost (its
/// TTL runs out without renewal, or its session expires).
pub async fn scoped_run_is_cancelled_on_loss(ctx: Ctx) -> CheckResult {
    let c = ctx.client().await?;
    let key = ctx.key("k");
    let ttl = ctx.short_ttl();
    let dropped = Arc::new(AtomicBool::new(false));
    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let flag = SetOnDrop(dropped.clone());
    let start = Instant::now();
    let session = ctx.session();
    let (ctx2, c2) = (ctx.clone(), c.clone());
    let res = c
        .lock(&key)
        .ttl(ttl)
        .run(|_| async move {
            let _flag = flag;
            if session {
                ctx2.expire(c2).await;
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
        })
        .await;
    ensure!(matches!(res, Err(Error::Lost { .. })), "expected Lost, got {res:?}");
    ensure!(dropped.load(Ordering::SeqCst), "the work was not dropped on loss");
    let bound = ctx.lease_length(ttl) * 2 + ctx.caps.expiry_margin + ctx.slack();
    ensure!(start.elapsed() <= bound, "loss took {:?} to cancel the work (bound {bound:?})", start.elapsed());
    Ok(())
}

/// Promise 8: bad keys are typed errors naming the rule, not retryable, and nothing is locked.
pub async fn bad_keys_are_typed_errors(ctx: Ctx) -> CheckResult {
    let c = ctx.client().await?;
    let long = "k".repeat(lock_core::MAX_KEY_LEN + 1);
    let cases: [(&str, &str); 4] =
        [("", "empty"), (&long, "too long"), ("a\nb", "control"), ("a\u{0}b", "control")];
    for (key, what) in cases {
        match c.lock(key).ttl(ctx.long_ttl()).acquire().await {
            Err(e @ Error::InvalidKey(_)) => {
                ensure!(!e.is_retryable(), "an invalid key error is marked retryable");
                let msg = e.to_string();
                let names_rule = match what {
                    "empty" => matches!(e, Error::InvalidKey(KeyError::Empty)),
                    "too long" => matches!(e, Error::InvalidKey(KeyError::TooLong { .. })),
                    _ => matches!(e, Error::InvalidKey(KeyError::ControlCharacter { .. })),
                };
                ensure!(names_rule, "the error for a {what} key names another rule: {msg}");
            }
            other => return Err(Failure(format!("a {what} key gave {other:?}, expected InvalidKey"))),
        }
    }
    ensure!(matches!(c.inspect("").await, Err(Error::InvalidKey(_))), "inspect accepted an empty key");
    ensure!(
        matches!(c.clone().with_namespace("a\u{1}"), Err(Error::InvalidKey(_))),
        "a namespace with a control character was accepted"
    );
    let g = c.lock(&ctx.key("after")).try_acquire().await?;
    ensure!(g.is_some(), "the backend is unusable after bad keys");
    Ok(())
}

/// Promise 8: zero, below-minimum and absurd TTLs are typed errors, and nothing is locked.
pub async fn bad_ttls_are_typed_errors(ctx: Ctx) -> CheckResult {
    let c = ctx.client().await?;
    let key = ctx.key("k");
    let mut bad = vec![Duration::ZERO, Duration::from_secs(100 * 365 * 86_400), Duration::MAX];
    if ctx.caps.min_ttl > Duration::from_nanos(1) {
        bad.push(ctx.caps.min_ttl - Duration::from_nanos(1));
    }
    for ttl in bad {
        match c.lock(&key).ttl(ttl).acquire().await {
            Err(e @ Error::InvalidTtl { .. }) => ensure!(!e.is_retryable(), "InvalidTtl is marked retryable"),
            other => return Err(Failure(format!("TTL {ttl:?} gave {other:?}, expected InvalidTtl"))),
        }
    }
    ensure!(c.inspect(&key).await?.is_none(), "a rejected acquire left a lock behind");
    let g = c.lock(&key).ttl(ctx.long_ttl()).acquire().await?;
    match g.extend(Duration::ZERO).await {
        Err(Error::InvalidTtl { .. }) => {}
        other => return Err(Failure(format!("extend with a zero TTL gave {other:?}, expected InvalidTtl"))),
    }
    ensure!(g.is_held(), "a rejected extend lost the lock");
    let _ = g.release().await?;
    Ok(())
}
