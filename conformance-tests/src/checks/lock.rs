//! Checks of the lock itself: mutual exclusion, fencing tokens across release, expiry and
//! takeover, a crashed holder's bound, owner-compared release and extend, `inspect`.

use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use lock_core::{Error, FencingToken, Instant, Mode, ReleaseOutcome};

use crate::history::History;
use crate::{ensure, CheckResult, Ctx, Failure};

/// Holds the lock in turn from `tasks` contenders, `rounds` times each; returns the history.
async fn contend(
    ctx: &Ctx,
    clients: Vec<lock_core::LockClient>,
    per_client: usize,
    rounds: usize,
    key: &str,
) -> Result<Arc<History>, Failure> {
    let history = Arc::new(History::new());
    let ttl = ctx.long_ttl();
    let mut tasks = Vec::new();
    let mut who = 0;
    for client in clients {
        for _ in 0..per_client {
            who += 1;
            let (client, history, key) = (client.clone(), history.clone(), key.to_owned());
            tasks.push(tokio::spawn(async move {
                for _ in 0..rounds {
                    let guard = client.lock(&key).ttl(ttl).wait(Duration::from_secs(60)).acquire().await?;
                    let start = StdInstant::now();
                    history.enter(who);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    tokio::task::yield_now().await;
                    history.exit(who, guard.fencing_token().get(), start);
                    let outcome = guard.release().await?;
                    if outcome != ReleaseOutcome::Released {
                        return Err(Failure(format!(
                            "contender {who}: release of a held lock reported {outcome:?}"
                        )));
                    }
                }
                Ok::<(), Failure>(())
            }));
        }
    }
    for t in tasks {
        t.await.map_err(|e| Failure(format!("contender panicked: {e}")))??;
    }
    Ok(history)
}

/// Promise 1: many tasks sharing one client never hold the lock at once, and fencing tokens
/// rise in the order the lock was held.
pub async fn mutual_exclusion_shared_client(ctx: Ctx) -> CheckResult {
    let client = ctx.client().await?;
    let h = contend(&ctx, vec![client], 8, 6, &ctx.key("k")).await?;
    ensure!(h.len() == 48, "expected 48 grants, recorded {}", h.len());
    h.check()?;
    Ok(())
}

/// Promise 1: tasks on separate clients (separate connections, as separate processes) never
/// hold the lock at once, and fencing tokens rise in the order the lock was held.
pub async fn mutual_exclusion_separate_clients(ctx: Ctx) -> CheckResult {
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(ctx.client().await?);
    }
    let h = contend(&ctx, clients, 2, 6, &ctx.key("k")).await?;
    ensure!(h.len() == 48, "expected 48 grants, recorded {}", h.len());
    h.check()?;
    Ok(())
}

/// Promise 1: holding one key does not block another, and the same name under two
/// namespaces is two locks.
pub async fn keys_and_namespaces_are_independent(ctx: Ctx) -> CheckResult {
    let c = ctx.client().await?;
    let a = c.lock(&ctx.key("a")).ttl(ctx.long_ttl()).acquire().await?;
    let b = c.lock(&ctx.key("b")).try_acquire().await?;
    ensure!(b.is_some(), "holding key a blocked key b");
    let n1 = ctx.client().await?.with_namespace("ns1")?;
    let n2 = ctx.client().await?.with_namespace("ns2")?;
    let x = n1.lock(&ctx.key("a")).ttl(ctx.long_ttl()).try_acquire().await?;
    let y = n2.lock(&ctx.key("a")).ttl(ctx.long_ttl()).try_acquire().await?;
    ensure!(
        x.is_some() && y.is_some(),
        "the same name under two namespaces collided (or collided with no namespace)"
    );
    ensure!(
        n1.lock(&ctx.key("a")).try_acquire().await?.is_none(),
        "a namespaced lock did not exclude its own namespace"
    );
    for g in [Some(a), b, x, y].into_iter().flatten() {
        ensure!(
            g.release().await? == ReleaseOutcome::Released,
            "release of a held lock did not report Released"
        );
    }
    Ok(())
}

/// Promise 1: a lock is independent of every lock whose name extends it (`K/nightly`,
/// `K/0000000001`, a name like an etcd lease id or a ZooKeeper lock node), in both directions,
/// for acquire and for inspect.
pub async fn names_that_extend_a_lock_are_independent(ctx: Ctx) -> CheckResult {
    let c = ctx.client().await?;
    let other = ctx.client().await?;
    let base = ctx.key("jobs");
    let long = ctx.long_ttl();
    let nested = [
        format!("{base}/nightly"),
        format!("{base}/0000000001"),
        format!("{base}/694d8a0b8c2a1f03"),
        format!("{base}/_c_0b7c5a3e-1d2f-4a5b-8c9d-0e1f2a3b4c5d-lock-0000000007"),
        format!("{base}/a/b"),
    ];
    let mut held = Vec::new();
    for name in &nested {
        held.push(c.lock(name).ttl(long).acquire().await?);
    }
    let seen = other.inspect(&base).await?;
    ensure!(
        seen.is_none(),
        "inspect of {base:?} reports a holder ({seen:?}) while only names extending it are held"
    );
    let g = other.lock(&base).ttl(long).try_acquire().await?;
    let Some(g) = g else {
        return Err(Failure(format!("holding names that extend {base:?} blocked {base:?} itself")));
    };
    let seen = other.inspect(&base).await?;
    ensure!(
        seen.as_ref().is_some_and(|i| i.fencing_token.is_none_or(|t| t == g.fencing_token())),
        "inspect of {base:?} reports {seen:?}, not its holder (token {})",
        g.fencing_token()
    );
    let later = c.lock(&format!("{base}/later")).ttl(long).try_acquire().await?;
    ensure!(later.is_some(), "holding {base:?} blocked a name that extends it");
    held.extend(later);
    held.push(g);
    for g in held {
        ensure!(
            g.release().await? == ReleaseOutcome::Released,
            "release of a held lock did not report Released"
        );
    }
    Ok(())
}

/// Promise 2: the next grant after a release has a greater fencing token and a new owner
/// token.
pub async fn fencing_increases_across_release(ctx: Ctx) -> CheckResult {
    let c = ctx.client().await?;
    let key = ctx.key("k");
    let mut last = None;
    let mut owners = std::collections::HashSet::new();
    for _ in 0..5 {
        let g = c.lock(&key).ttl(ctx.long_ttl()).acquire().await?;
        if let Some(prev) = last {
            ensure!(
                g.fencing_token() > prev,
                "token {} after release is not greater than {prev}",
                g.fencing_token()
            );
        }
        ensure!(owners.insert(g.lease().owner()), "an owner token was reused");
        last = Some(g.fencing_token());
        let _ = g.release().await?;
    }
    Ok(())
}

async fn wait_until_free(ctx: &Ctx, c: &lock_core::LockClient, key: &str, limit: Duration) -> CheckResult {
    let deadline = StdInstant::now() + limit;
    loop {
        if c.inspect(key).await?.is_none() {
            return Ok(());
        }
        ensure!(
            StdInstant::now() < deadline,
            "lock {key} still held {limit:?} later (ttl {:?})",
            ctx.short_ttl()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Promise 2: the next grant after a grant ran out (its TTL, or, on a session backend, its
/// session expired while the client lived on) has a greater fencing token.
pub async fn fencing_increases_across_expiry(ctx: Ctx) -> CheckResult {
    let c = ctx.client().await?;
    let key = ctx.key("k");
    let ttl = ctx.short_ttl();
    let lease = c.lock(&key).ttl(ttl).acquire().await?.detach();
    let c = run_out(&ctx, c, &lease).await?;
    wait_until_free(&ctx, &c, &key, ctx.lease_length(ttl) + ctx.caps.expiry_margin + ctx.slack()).await?;
    let g = c.lock(&key).ttl(ttl).acquire().await?;
    ensure!(
        g.fencing_token() > lease.fencing_token(),
        "token {} after expiry is not greater than {}",
        g.fencing_token(),
        lease.fencing_token()
    );
    let _ = g.release().await?;
    Ok(())
}

/// Lets the grant of `lease`, held by `c`, run out: its TTL passes; or, on a session backend,
/// the suite's expire hook ends `c`'s session on the server while `c` lives on. Returns a client
/// to go on with (`c` itself, or a fresh one once `c`'s session is gone).
async fn run_out(
    ctx: &Ctx,
    c: lock_core::LockClient,
    lease: &lock_core::Lease,
) -> Result<lock_core::LockClient, Failure> {
    if ctx.session() {
        ctx.expire(c).await;
        return ctx.client().await;
    }
    tokio::time::sleep_until(lease.valid_until()).await;
    Ok(c)
}

/// Promise 2: a waiter that takes over from a crashed holder gets a greater token.
pub async fn fencing_increases_across_takeover(ctx: Ctx) -> CheckResult {
    let a = ctx.client().await?;
    let b = ctx.client().await?;
    let key = ctx.key("k");
    let ttl = ctx.short_ttl();
    let ga = a.lock(&key).ttl(ttl).acquire().await?;
    let fa = ga.fencing_token();
    ctx.crash(a, ga).await;
    let gb = b.lock(&key).ttl(ttl).wait(ttl * 4 + ctx.caps.expiry_margin + ctx.slack()).acquire().await?;
    ensure!(
        gb.fencing_token() > fa,
        "takeover token {} is not greater than the crashed holder's {fa}",
        gb.fencing_token()
    );
    let _ = gb.release().await?;
    Ok(())
}

/// Promise 3: a crashed holder blocks others for at most its lease (the TTL, or the session
/// timeout on a session backend) times the backend's stated `expiry_ttls`, plus its margin, and
/// never for less than the time the holder was told it held the lock.
pub async fn crashed_holder_blocks_at_most_ttl(ctx: Ctx) -> CheckResult {
    let a = ctx.client().await?;
    let b = ctx.client().await?;
    let key = ctx.key("k");
    let ttl = ctx.crash_ttl();
    let sent = Instant::now();
    let ga = a.lock(&key).ttl(ttl).acquire().await?;
    let told = ga.valid_until();
    ctx.crash(a, ga).await;
    let crash_bound = ctx.caps.crash_bound(ttl);
    let gb = b.lock(&key).ttl(ttl).wait(crash_bound * 3 + ctx.slack()).acquire().await?;
    let got = Instant::now();
    ensure!(got >= told, "the waiter got the lock {:?} before the crashed holder's valid_until", told - got);
    let bound = crash_bound + ctx.wake_bound() + ctx.slack();
    ensure!(
        got - sent <= bound,
        "a crashed holder blocked for {:?}; the bound is {bound:?} (lease {:?})",
        got - sent,
        ctx.lease_length(ttl)
    );
    let _ = gb.release().await?;
    Ok(())
}

/// Promise 4: a holder whose grant ran out (its TTL, or its session expired while it lived on)
/// cannot release or extend the next holder's grant; both report `NotHeld`.
pub async fn stale_holder_cannot_release_or_extend(ctx: Ctx) -> CheckResult {
    let a = ctx.client().await?;
    let b = ctx.client().await?;
    let key = ctx.key("k");
    let ttl = ctx.short_ttl();
    let mut stale = a.lock(&key).ttl(ttl).acquire().await?.detach();
    if ctx.session() {
        // Session form: the holder's session expires on the server while the holder lives on
        // (a pause longer than the session timeout); it speaks again once the other holds it.
        ctx.expire(a.clone()).await;
    }
    let gb = b
        .lock(&key)
        .ttl(ctx.long_ttl())
        .wait(ctx.lease_length(ttl) * 4 + ctx.caps.expiry_margin + ctx.slack())
        .acquire()
        .await?;
    let r = a.release_lease(&stale).await?;
    ensure!(r == ReleaseOutcome::NotHeld, "a stale release reported {r:?}");
    match a.extend_lease(&mut stale, ctx.long_ttl()).await {
        Err(Error::NotHeld { .. }) => {}
        other => return Err(Failure(format!("a stale extend returned {other:?}, expected NotHeld"))),
    }
    let info = b
        .inspect(&key)
        .await?
        .ok_or_else(|| Failure("the new holder's lock vanished after a stale release".into()))?;
    if let Some(f) = info.fencing_token {
        ensure!(f == gb.fencing_token(), "inspect shows token {f}, the holder has {}", gb.fencing_token());
    }
    ensure!(gb.is_held(), "the new holder lost its lock after a stale release/extend");
    ensure!(
        gb.release().await? == ReleaseOutcome::Released,
        "the new holder's release did not report Released"
    );
    Ok(())
}

/// Promise 4: release says what happened: `Released` once, then `NotHeld`.
pub async fn release_reports_truth(ctx: Ctx) -> CheckResult {
    let c = ctx.client().await?;
    let key = ctx.key("k");
    let g = c.lock(&key).ttl(ctx.long_ttl()).acquire().await?;
    let lease = g.lease();
    ensure!(g.release().await? == ReleaseOutcome::Released, "release of a held lock did not report Released");
    let again = c.release_lease(&lease).await?;
    ensure!(again == ReleaseOutcome::NotHeld, "a second release reported {again:?}");
    ensure!(c.inspect(&key).await?.is_none(), "the key still looks held after release");
    Ok(())
}

/// Promise 4: extend moves `valid_until` forward and the grant lasts accordingly; after a
/// release, extend reports `NotHeld`. On a session backend the lock's TTL is not used: the
/// session keeps the lock, so held past its first `valid_until` without renewal, an extend
/// reports the session's later validity.
pub async fn extend_prolongs_the_grant(ctx: Ctx) -> CheckResult {
    let a = ctx.client().await?;
    let b = ctx.client().await?;
    let key = ctx.key("k");
    let ttl = ctx.short_ttl();
    let g = a.lock(&key).ttl(ttl).acquire().await?;
    let first_until = g.valid_until();
    if ctx.session() {
        tokio::time::sleep_until(first_until + ctx.slack()).await;
    } else {
        tokio::time::sleep(ttl / 3).await;
    }
    g.extend(ttl * 4).await?;
    ensure!(g.valid_until() > first_until, "valid_until did not move forward on extend");
    if !ctx.session() {
        tokio::time::sleep_until(first_until + ttl / 2 + ctx.caps.expiry_margin).await;
    }
    ensure!(g.is_held(), "the guard says it is not held within its extended validity");
    ensure!(
        b.lock(&key).try_acquire().await?.is_none(),
        "another client took the lock within its extended validity"
    );
    let lease = g.lease();
    let _ = g.release().await?;
    let mut lease = lease;
    match a.extend_lease(&mut lease, ttl).await {
        Err(Error::NotHeld { .. }) => Ok(()),
        other => Err(Failure(format!("extend after release returned {other:?}, expected NotHeld"))),
    }
}

/// Promise 4: an extend of a grant that ran out (its TTL, or its session) reports `NotHeld`
/// and leaves the key free, and so do an extend and a release of the same grant rebuilt
/// from its parts (name, owner, fencing token).
pub async fn extend_never_revives_an_expired_grant(ctx: Ctx) -> CheckResult {
    let a = ctx.client().await?;
    let key = ctx.key("k");
    let ttl = ctx.short_ttl();
    let mut lease = a.lock(&key).ttl(ttl).acquire().await?.detach();
    let watcher = if ctx.session() {
        ctx.expire(a.clone()).await;
        ctx.client().await?
    } else {
        tokio::time::sleep_until(lease.valid_until()).await;
        a.clone()
    };
    wait_until_free(&ctx, &watcher, &key, ctx.lease_length(ttl) + ctx.caps.expiry_margin + ctx.slack())
        .await?;
    // The same grant rebuilt from its parts (an operator tool in another process), which
    // carries nothing of the backend's own: neither extend nor release finds it held.
    let rebuilt = a.lease_from_parts(&key, lease.owner(), lease.fencing_token(), ttl)?;
    let mut again = rebuilt.clone();
    match a.extend_lease(&mut again, ctx.long_ttl()).await {
        Err(Error::NotHeld { .. }) => {}
        other => {
            return Err(Failure(format!(
                "extend of an expired grant rebuilt from its parts returned {other:?}, expected NotHeld"
            )))
        }
    }
    ensure!(watcher.inspect(&key).await?.is_none(), "an extend of a rebuilt lease revived an expired grant");
    let released = a.release_lease(&rebuilt).await?;
    ensure!(
        released == ReleaseOutcome::NotHeld,
        "release of an expired grant rebuilt from its parts reported {released:?}, expected NotHeld"
    );
    match a.extend_lease(&mut lease, ctx.long_ttl()).await {
        Err(Error::NotHeld { .. }) => {}
        other => {
            return Err(Failure(format!("extend of an expired grant returned {other:?}, expected NotHeld")))
        }
    }
    ensure!(watcher.inspect(&key).await?.is_none(), "an extend revived an expired grant");
    let g = ctx.client().await?.lock(&key).try_acquire().await?;
    ensure!(g.is_some(), "the key is not free after a refused extend of an expired grant");
    Ok(())
}

/// Promise 4: inspect shows the holder's fencing token and a remaining TTL no longer than
/// granted, and nothing once released.
pub async fn inspect_reports_the_holder(ctx: Ctx) -> CheckResult {
    let c = ctx.client().await?;
    let key = ctx.key("k");
    ensure!(c.inspect(&key).await?.is_none(), "inspect of a never-used key shows a holder");
    let ttl = ctx.long_ttl();
    let g = c.lock(&key).ttl(ttl).acquire().await?;
    let info =
        ctx.client().await?.inspect(&key).await?.ok_or_else(|| Failure("inspect shows no holder".into()))?;
    ensure!(
        info.fencing_token == Some(g.fencing_token()),
        "inspect token {:?} != holder's {}",
        info.fencing_token,
        g.fencing_token()
    );
    // With session leases the remaining TTL is the session's, not the lock's.
    if let Some(left) = info.remaining_ttl.filter(|_| ctx.caps.per_lock_ttl) {
        ensure!(left <= ttl + ctx.caps.ttl_granularity, "remaining TTL {left:?} exceeds the TTL {ttl:?}");
        ensure!(left > ttl / 2, "remaining TTL {left:?} is far below the fresh TTL {ttl:?}");
    }
    let _ = g.release().await?;
    ensure!(c.inspect(&key).await?.is_none(), "inspect shows a holder after release");
    Ok(())
}

/// Promise 2 (token carry-over, `migrate-tokens`): a raised fencing counter makes the key's next
/// token greater than what it was raised to, also when raised while the key is held (the
/// holder keeps its grant); a raise below the counter never lowers it; `fencing_counters`
/// lists the key with its last token; a semaphore's counter is raised the same way.
pub async fn fencing_counters_carry_tokens_over(ctx: Ctx) -> CheckResult {
    let c = ctx.client().await?;
    let other = ctx.client().await?;
    let backend = c.backend().clone();
    let long = ctx.long_ttl();
    let key = ctx.key("k");
    let full = c.key(&key)?;
    let g = c.lock(&key).ttl(long).acquire().await?;
    let at = FencingToken::new(g.fencing_token().get() + 1_000_000);
    let raised = backend.raise_fencing_counter(&full, Mode::Exclusive, at).await?;
    ensure!(raised >= at, "raised to {at}, the counter says {raised}");
    ensure!(g.is_held(), "a raise took the holder's grant");
    ensure!(other.lock(&key).try_acquire().await?.is_none(), "a raise freed a held lock");
    ensure!(
        g.release().await? == ReleaseOutcome::Released,
        "the holder's release after a raise did not say Released"
    );
    let g = c.lock(&key).ttl(long).acquire().await?;
    let after = g.fencing_token();
    ensure!(after > at, "the grant after a raise to {at} has token {after}");
    let kept = backend.raise_fencing_counter(&full, Mode::Exclusive, FencingToken::new(1)).await?;
    ensure!(kept >= after, "a raise to 1 lowered the counter to {kept} (last token {after})");
    let _ = g.release().await?;
    let g = c.lock(&key).ttl(long).acquire().await?;
    ensure!(g.fencing_token() > after, "token {} after {after}", g.fencing_token());
    let last = g.fencing_token();
    let _ = g.release().await?;
    let (mut cursor, mut listed) = (None, None);
    loop {
        let page = backend.fencing_counters(full.full(), cursor, 100).await?;
        if let Some((_, _, t)) =
            page.counters.iter().find(|(k, m, _)| k == full.full() && *m == Mode::Exclusive)
        {
            listed = Some(*t);
        }
        cursor = page.cursor;
        if cursor.is_none() {
            break;
        }
    }
    ensure!(
        listed.is_some_and(|t| t >= last),
        "fencing_counters lists {key} with {listed:?}; its last token is {last}"
    );
    if ctx.caps.max_permits > 0 {
        let sem = ctx.key("sem");
        let one = Mode::Permit { limit: 1 };
        let at = FencingToken::new(last.get() + 1_000_000);
        backend.raise_fencing_counter(&c.key(&sem)?, one, at).await?;
        let p = c.semaphore(&sem, 1).ttl(long).acquire().await?;
        ensure!(p.fencing_token() > at, "the permit after a raise to {at} has token {}", p.fencing_token());
        let _ = p.release().await?;
    }
    Ok(())
}
