//! One `pub async fn` per behaviour. Each takes a [`Ctx`] and returns a [`CheckResult`];
//! [`CHECKS`] lists them with the promise each one checks (numbered as in the README's "The
//! promises" table, the one place they are numbered) and the
//! capabilities it needs.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use futures::future::BoxFuture;
use futures::FutureExt;
use lock_core::{Capabilities, Error, Instant, KeyError, LossReason, ReleaseOutcome};

mod election;
mod primitives;

pub use election::*;
pub use primitives::*;

use crate::history::History;
use crate::{ensure, CheckResult, Ctx, Failure, Hooks};

/// A check: its name, the promise it covers, when it applies, and how to run it.
pub struct Check {
    /// The name printed in reports and matched by `DISTLOCK_CONFORMANCE_FILTER`.
    pub name: &'static str,
    /// The promise it checks (1..=8), numbered as in the README's "The promises" table.
    pub promise: u8,
    /// `Err(reason)` when the backend's capabilities (or the absence of a crash hook) rule
    /// the check out; the reason is printed.
    pub applies: fn(&Capabilities, Hooks) -> Result<(), String>,
    /// Runs the check.
    pub run: fn(Ctx) -> BoxFuture<'static, CheckResult>,
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Check").field("name", &self.name).field("promise", &self.promise).finish()
    }
}

fn always(_: &Capabilities, _: Hooks) -> Result<(), String> {
    Ok(())
}

fn needs_crash(c: &Capabilities, hooks: Hooks) -> Result<(), String> {
    if c.session_leases && !hooks.crash {
        return Err("leases belong to a session and the suite has no crash hook to end one".into());
    }
    Ok(())
}

/// A grant that runs out: a lock's TTL, or (session form) a session expired by the suite's
/// expire hook while its client lives on.
fn needs_expiry(c: &Capabilities, hooks: Hooks) -> Result<(), String> {
    if c.session_leases && !hooks.expire {
        return Err("leases belong to a session and the suite has no expire hook to end one \
                    while its client lives on"
            .into());
    }
    Ok(())
}

fn needs_per_lock_ttl(c: &Capabilities, _: Hooks) -> Result<(), String> {
    if !c.per_lock_ttl {
        return Err("the backend does not honour a TTL per lock (the session timeout decides, so a \
                    lock's own TTL has nothing to keep)"
            .into());
    }
    Ok(())
}

fn needs_fair(c: &Capabilities, _: Hooks) -> Result<(), String> {
    if !c.fair_queueing {
        return Err("the backend does not claim fair queueing".into());
    }
    Ok(())
}

fn needs_semaphore(c: &Capabilities, _: Hooks) -> Result<(), String> {
    if c.max_permits == 0 {
        return Err("the backend has no semaphores".into());
    }
    Ok(())
}

fn needs_semaphore_and_crash(c: &Capabilities, hooks: Hooks) -> Result<(), String> {
    needs_semaphore(c, hooks)?;
    needs_crash(c, hooks)
}

fn needs_read_write(c: &Capabilities, _: Hooks) -> Result<(), String> {
    if !c.read_write {
        return Err("the backend has no read-write locks".into());
    }
    Ok(())
}

fn needs_writer_preference(c: &Capabilities, hooks: Hooks) -> Result<(), String> {
    needs_read_write(c, hooks)?;
    if !c.writer_preference {
        return Err("the backend does not claim that a waiting writer blocks new readers".into());
    }
    Ok(())
}

fn needs_metadata(c: &Capabilities, _: Hooks) -> Result<(), String> {
    if !c.holder_metadata {
        return Err("the backend does not store holder metadata".into());
    }
    Ok(())
}

fn needs_listing(c: &Capabilities, _: Hooks) -> Result<(), String> {
    if !c.listing {
        return Err("the backend cannot list locks".into());
    }
    Ok(())
}

fn needs_elections(c: &Capabilities, _: Hooks) -> Result<(), String> {
    if !c.elections {
        return Err("the backend has no elections".into());
    }
    Ok(())
}

fn needs_elections_and_crash(c: &Capabilities, hooks: Hooks) -> Result<(), String> {
    needs_elections(c, hooks)?;
    needs_crash(c, hooks)
}

fn needs_elections_and_expiry(c: &Capabilities, hooks: Hooks) -> Result<(), String> {
    needs_elections(c, hooks)?;
    needs_expiry(c, hooks)
}

fn needs_notify(c: &Capabilities, _: Hooks) -> Result<(), String> {
    if c.wake != lock_core::WakeMode::Notify {
        return Err("the backend polls (it does not claim WakeMode::Notify)".into());
    }
    Ok(())
}

macro_rules! check {
    ($f:ident, $promise:expr, $applies:expr) => {
        Check { name: stringify!($f), promise: $promise, applies: $applies, run: |ctx| $f(ctx).boxed() }
    };
}

/// Every check, in the order of the promises.
pub static CHECKS: &[Check] = &[
    check!(mutual_exclusion_shared_client, 1, always),
    check!(mutual_exclusion_separate_clients, 1, always),
    check!(keys_and_namespaces_are_independent, 1, always),
    check!(names_that_extend_a_lock_are_independent, 1, always),
    check!(fencing_increases_across_release, 2, always),
    check!(fencing_increases_across_expiry, 2, needs_expiry),
    check!(fencing_increases_across_takeover, 2, needs_crash),
    check!(crashed_holder_blocks_at_most_ttl, 3, needs_crash),
    check!(stale_holder_cannot_release_or_extend, 4, needs_expiry),
    check!(release_reports_truth, 4, always),
    check!(extend_prolongs_the_grant, 4, always),
    check!(extend_never_revives_an_expired_grant, 4, needs_expiry),
    check!(inspect_reports_the_holder, 4, always),
    check!(waiting_acquire_wakes_promptly, 5, always),
    check!(waiting_acquire_wakes_by_notification, 5, needs_notify),
    check!(waiting_acquire_times_out_at_deadline, 5, always),
    check!(no_wait_acquire_returns_at_once, 5, always),
    check!(waiters_are_served_in_order, 5, needs_fair),
    check!(dropped_waiting_acquire_leaves_nothing, 6, always),
    check!(cancelled_attempts_leave_nothing, 6, always),
    check!(dropped_guard_releases_in_background, 6, always),
    check!(detach_keeps_lock_past_guard, 6, always),
    check!(loss_fires_at_valid_until, 7, needs_expiry),
    check!(loss_fires_when_renewal_finds_lock_gone, 7, always),
    check!(auto_renew_keeps_the_lock, 7, always),
    check!(user_extend_survives_auto_renew, 7, needs_per_lock_ttl),
    check!(max_hold_stops_renewal, 7, always),
    check!(max_hold_shorter_than_ttl_ends_at_the_cap, 7, always),
    check!(scoped_run_returns_and_releases, 7, always),
    check!(scoped_run_is_cancelled_on_loss, 7, needs_expiry),
    check!(bad_keys_are_typed_errors, 8, always),
    check!(bad_ttls_are_typed_errors, 8, always),
    check!(semaphore_never_grants_more_than_n, 1, needs_semaphore),
    check!(semaphore_tokens_increase_across_permits, 2, needs_semaphore),
    check!(semaphore_crashed_holder_returns_its_permit, 3, needs_semaphore_and_crash),
    check!(semaphore_dropped_waiter_leaves_nothing, 6, needs_semaphore),
    check!(semaphore_bad_input_is_typed, 8, needs_semaphore),
    check!(readers_share_and_writers_exclude, 1, needs_read_write),
    check!(a_waiting_writer_is_not_starved, 5, needs_writer_preference),
    check!(multi_key_locks_are_all_or_nothing, 1, always),
    check!(multi_key_failure_and_cancel_leave_nothing, 6, always),
    check!(inspect_returns_holder_metadata, 4, needs_metadata),
    check!(list_returns_what_is_held_under_a_prefix, 4, needs_listing),
    check!(one_leader_at_a_time, 1, needs_elections),
    check!(leader_proclaim_and_resign, 4, needs_elections),
    check!(a_crashed_leader_is_replaced_in_time, 3, needs_elections_and_crash),
    check!(observers_see_every_change_in_order, 5, needs_elections),
    check!(a_paused_leader_knows_before_a_new_one_rules, 7, needs_elections_and_expiry),
];

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
    let ttl = ctx.short_ttl() * 2;
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
/// and leaves the key free.
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
/// before and not much after.
pub async fn waiting_acquire_times_out_at_deadline(ctx: Ctx) -> CheckResult {
    let a = ctx.client().await?;
    let b = ctx.client().await?;
    let key = ctx.key("k");
    let ga = a.lock(&key).ttl(ctx.long_ttl()).acquire().await?;
    let wait = Duration::from_millis(800);
    let start = Instant::now();
    let res = b.lock(&key).wait(wait).acquire().await;
    let took = start.elapsed();
    match res {
        Err(e @ Error::WaitTimedOut { .. }) => ensure!(e.is_retryable(), "Timeout is not marked retryable"),
        other => return Err(Failure(format!("expected Timeout, got {other:?}"))),
    }
    ensure!(took >= wait - Duration::from_millis(5), "gave up after {took:?}, before the {wait:?} deadline");
    ensure!(took <= wait + ctx.slack(), "gave up after {took:?}, long past the {wait:?} deadline");
    ensure!(ga.is_held(), "the holder lost the lock while another client waited");
    let _ = ga.release().await?;
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
    ensure!(reason == LossReason::MaxHoldReached, "loss reason {reason:?}, expected MaxHoldReached");
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
