//! One `pub async fn` per behaviour. Each takes a [`Ctx`] and returns a [`CheckResult`];
//! [`CHECKS`] lists them with the promise each one checks (numbered as in the README's "The
//! promises" table, the one place they are numbered) and the
//! capabilities it needs.

use futures::future::BoxFuture;
use futures::FutureExt;
use lock_core::Capabilities;

mod election;
mod lifecycle;
mod lock;
mod primitives;

pub use election::*;
pub use lifecycle::*;
pub use lock::*;
pub use primitives::*;

use crate::{CheckResult, Ctx, Hooks};

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

fn needs_counters(c: &Capabilities, _: Hooks) -> Result<(), String> {
    if !c.fencing_counters {
        return Err("the backend keeps no fencing counter per key that can be read and raised".into());
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
    check!(fencing_counters_carry_tokens_over, 2, needs_counters),
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
    check!(cancelled_attempts_on_a_held_lock_leave_nothing, 6, always),
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
    check!(cancelled_permit_attempts_leave_nothing, 6, needs_semaphore),
    check!(semaphore_bad_input_is_typed, 8, needs_semaphore),
    check!(readers_share_and_writers_exclude, 1, needs_read_write),
    check!(a_waiting_writer_is_not_starved, 5, needs_writer_preference),
    check!(cancelled_read_write_attempts_leave_nothing, 6, needs_read_write),
    check!(multi_key_locks_are_all_or_nothing, 1, always),
    check!(multi_key_failure_and_cancel_leave_nothing, 6, always),
    check!(a_multi_key_guard_is_lost_with_any_name, 7, needs_per_lock_ttl),
    check!(inspect_returns_holder_metadata, 4, needs_metadata),
    check!(list_returns_what_is_held_under_a_prefix, 4, needs_listing),
    check!(one_leader_at_a_time, 1, needs_elections),
    check!(leader_proclaim_and_resign, 4, needs_elections),
    check!(a_crashed_leader_is_replaced_in_time, 3, needs_elections_and_crash),
    check!(observers_see_every_change_in_order, 5, needs_elections),
    check!(a_paused_leader_knows_before_a_new_one_rules, 7, needs_elections_and_expiry),
];
