//! Hand-made histories the checker must fail, and ones it must pass.

use super::*;
use crate::record::{Op, OpKind, Phase, RegOutcome, RegResult};
use crate::register::RegEvent;

const MS: u64 = 1_000_000;

fn op(w: u32, kind: OpKind, invoke: u64, complete: u64, token: u64) -> Op {
    Op {
        w,
        inc: 0,
        kind,
        invoke: invoke * MS,
        complete: Some(complete * MS),
        phase: Phase::Ok,
        token: Some(token),
        valid_until: None,
        elem: None,
        regs: None,
        err: None,
    }
}

/// A whole grant: acquire [a0, a1], write at a1 + 1 (acknowledged by the registers marked
/// true), release [r0, r0 + 1].
#[derive(Default)]
struct History {
    ops: Vec<Op>,
    log: RegisterLog,
}

impl History {
    fn grant(mut self, w: u32, token: u64, a0: u64, a1: u64, r0: u64, acked: [bool; 3]) -> Self {
        self.ops.push(op(w, OpKind::Acquire, a0, a1, token));
        let mut write = op(w, OpKind::Write, a1 + 1, a1 + 1, token);
        let elem = format!("{w}.0.{token}");
        write.elem = Some(elem.clone());
        write.regs = Some(acked.map(|ok| RegResult {
            outcome: if ok { RegOutcome::Ok } else { RegOutcome::Stale },
            version: 1,
            len: 1,
        }));
        self.ops.push(write);
        self.ops.push(op(w, OpKind::Release, r0, r0 + 1, token));
        for reg in Reg::ALL {
            let accepted = acked[reg.index()];
            self.log.events.push(RegEvent { t: (a1 + 1) * MS, w, inc: 0, reg, write: true, token, accepted });
            if accepted {
                self.log.finals[reg.index()].push(elem.clone());
            }
        }
        self
    }

    /// Adds worker 0's look at its auto-renewed guard at 3 s (token 1): `phase`, showing
    /// `valid_until_ms`.
    fn look(mut self, phase: Phase, valid_until_ms: u64) -> Self {
        let mut look = op(0, OpKind::Renew, 3000, 3000, 1);
        look.phase = phase;
        look.valid_until = Some(valid_until_ms * MS);
        self.ops.push(look);
        self.ops.sort_by_key(|o| o.invoke);
        self
    }

    /// Removes `elem` from a register's final value (an update that was overwritten).
    fn lose(mut self, reg: Reg, elem: &str) -> Self {
        self.log.finals[reg.index()].retain(|e| e != elem);
        self
    }

    fn check(&self, p: &Params) -> (Figures, Verdict) {
        check(&self.ops, &self.log, p)
    }
}

fn params() -> Params {
    Params { lease_ns: 2000 * MS, bound_ns: 2100 * MS, slack_ns: 500 * MS, ..Params::default() }
}

const ALL: [bool; 3] = [true, true, true];

#[test]
fn a_clean_history_passes() {
    let h = History::default().grant(0, 1, 0, 1, 5, ALL).grant(1, 2, 2, 7, 9, ALL);
    let (f, v) = h.check(&params());
    assert!(v.passed(), "{v:?}");
    assert_eq!(f.grants, 2);
    assert_eq!(f.distinct_tokens, 2);
    assert_eq!(f.definite_overlaps, 0);
    assert_eq!(f.registers["fenced"].writes_acknowledged, 2);
    assert_eq!(f.registers["fenced"].lost, 0);
}

#[test]
fn overlapping_definite_holds_fail() {
    // Worker 1 is granted at 3 ms while worker 0 holds (granted at 1, releasing at 5).
    let h = History::default().grant(0, 1, 0, 1, 5, ALL).grant(1, 2, 2, 3, 9, ALL);
    let (f, v) = h.check(&params());
    assert_eq!(f.definite_overlaps, 1);
    assert!(v.failures.iter().any(|m| m.contains("server-side exclusion")), "{v:?}");
    assert!(f.examples.iter().any(|e| e.contains("definite holds overlap")), "{:?}", f.examples);
}

#[test]
fn an_expected_overlap_is_reported_with_its_reason_and_passes() {
    let h = History::default().grant(0, 1, 0, 1, 5, ALL).grant(1, 2, 2, 3, 9, ALL);
    let p = Params {
        expected_exclusion: Some("the grant is lost on restart".into()),
        expected_windows: vec![(2 * MS, 4 * MS)],
        ..params()
    };
    let (_, v) = h.check(&p);
    assert!(v.passed(), "{v:?}");
    assert!(v.expected[0].contains("the grant is lost on restart"), "{v:?}");
}

/// An expected fault excuses the overlaps it can cause, those beginning in its window, not
/// every overlap of its scenario.
#[test]
fn an_overlap_outside_the_expected_faults_window_fails() {
    let h = History::default().grant(0, 1, 0, 1, 5, ALL).grant(1, 2, 2, 3, 9, ALL);
    let p = Params {
        expected_exclusion: Some("the grant is lost on restart".into()),
        expected_windows: vec![(10 * MS, 20 * MS)],
        ..params()
    };
    let (f, v) = h.check(&p);
    assert_eq!((f.definite_overlaps, f.definite_overlaps_in_fault_windows), (1, 0));
    assert!(!v.passed(), "an overlap before the expected fault was excused: {v:?}");
    assert!(v.failures.iter().any(|m| m.contains("server-side exclusion")), "{v:?}");
}

/// A grant on auto-renewal whose guard showed a later `valid_until` during its hold is held
/// to that: another grant inside it overlaps definitely, where the first lease alone would
/// have ended before.
#[test]
fn a_renewed_guards_promise_extends_its_definite_hold() {
    // Worker 0 is granted at 1 ms, valid until 2 s; its guard shows at 3 s that it holds
    // until 5 s, and it releases at 4.5 s. Worker 1 is granted at 3.5 s.
    let granted = || {
        let mut h = History::default().grant(0, 1, 0, 1, 4500, ALL).grant(1, 2, 2400, 3500, 3600, ALL);
        h.ops[0].valid_until = Some(2000 * MS);
        h
    };
    let h = granted();
    let (f, v) = h.check(&params());
    assert_eq!(f.definite_overlaps, 0, "without the renewal the first lease ended at 2 s");
    assert!(v.passed(), "{v:?}");
    let renewed = granted().look(Phase::Ok, 5000);
    let (f, v) = renewed.check(&params());
    assert_eq!(f.definite_overlaps, 1, "the renewed promise was not held to exclusion");
    assert!(v.failures.iter().any(|m| m.contains("server-side exclusion")), "{v:?}");
    // A guard that said it lost the lock promised nothing more (whatever else its record says).
    let lost = granted().look(Phase::Fail, 5000);
    assert_eq!(lost.check(&params()).0.definite_overlaps, 0);
}

/// A release answered "not held" at 4.5 s, after the first lease's 2 s but before the 5 s its
/// renewed guard showed, found the grant gone while it was promised.
#[test]
fn a_release_that_finds_a_renewed_grant_gone_early_is_counted() {
    let alone = || {
        let mut h = History::default().grant(0, 1, 0, 1, 4500, ALL);
        h.ops[0].valid_until = Some(2000 * MS);
        h.ops[2].phase = Phase::Fail;
        h
    };
    assert_eq!(alone().check(&params()).0.early_losses, 0, "past the first lease: not early");
    let (f, v) = alone().look(Phase::Ok, 5000).check(&params());
    assert_eq!(f.early_losses, 1, "the renewed promise was not held to the release");
    assert!(!v.passed(), "{v:?}");
}

#[test]
fn a_paused_holder_is_a_belief_overlap_not_an_exclusion_violation() {
    // Worker 0 is granted at 1 ms and paused: it releases at 5 s, long after its 2 s lease.
    // Worker 1 is granted at 2.5 s.
    let h = History::default().grant(0, 1, 0, 1, 5000, ALL).grant(1, 2, 2400, 2500, 2600, ALL);
    let (f, v) = h.check(&params());
    assert_eq!(f.definite_overlaps, 0);
    assert_eq!(f.belief_overlaps, 1);
    assert!(v.passed(), "{v:?}");
}

#[test]
fn the_guards_valid_until_shortens_the_definite_hold() {
    let mut h = History::default().grant(0, 1, 0, 1, 5000, ALL).grant(1, 2, 1400, 1500, 1600, ALL);
    h.ops[0].valid_until = Some(1200 * MS);
    let (f, _) = h.check(&params());
    assert_eq!(f.definite_overlaps, 0);
}

#[test]
fn a_token_going_down_fails() {
    let h = History::default().grant(0, 5, 0, 1, 5, ALL).grant(1, 3, 7, 8, 9, [false, true, true]);
    let (f, v) = h.check(&params());
    assert_eq!(f.token_order_violations, 1);
    assert!(v.failures.iter().any(|m| m.contains("out of real-time order")), "{v:?}");
    // The write-fenced register's log shows an accepted write going down; that fails too.
    let h = History::default().grant(0, 5, 0, 1, 5, ALL).grant(1, 6, 7, 8, 9, ALL);
    let mut h = h;
    h.log.events.push(RegEvent {
        t: 10 * MS,
        w: 0,
        inc: 0,
        reg: Reg::Fenced,
        write: true,
        token: 4,
        accepted: true,
    });
    let (f, v) = h.check(&params());
    assert_eq!(f.registers["fenced"].accepted_tokens_down, 1);
    assert!(v.failures.iter().any(|m| m.contains("accepted 1 lower tokens")), "{v:?}");
}

#[test]
fn a_duplicate_token_fails_unless_expected() {
    let h = History::default().grant(0, 4, 0, 1, 5, ALL).grant(1, 4, 7, 8, 9, ALL);
    let (f, v) = h.check(&params());
    assert_eq!(f.duplicate_tokens, 2);
    assert!(!v.passed());
    let p = Params { expected_tokens: Some("the emulator lost its data".into()), ..params() };
    assert!(h.check(&p).1.passed());
}

#[test]
fn a_lost_fenced_update_fails() {
    let h = History::default().grant(0, 1, 0, 1, 5, ALL).grant(1, 2, 7, 8, 9, ALL).lose(Reg::Fenced, "0.0.1");
    let (f, v) = h.check(&params());
    assert_eq!(f.registers["fenced"].lost, 1);
    assert!(v.failures.iter().any(|m| m.contains("acknowledged fenced updates lost")), "{v:?}");
}

#[test]
fn a_pause_scenario_whose_control_lost_nothing_fails_as_too_weak() {
    let p = Params { require_unfenced_loss: true, ..params() };
    let h = History::default().grant(0, 1, 0, 1, 5, ALL).grant(1, 2, 7, 8, 9, ALL);
    let (_, v) = h.check(&p);
    assert!(v.failures.iter().any(|m| m.contains("too weak")), "{v:?}");
    let h = h.lose(Reg::Unfenced, "0.0.1");
    let (f, v) = h.check(&p);
    assert_eq!(f.registers["unfenced"].lost, 1);
    assert!(v.passed(), "{v:?}");
}

#[test]
fn a_slow_takeover_after_a_kill_fails() {
    let h = History::default().grant(0, 1, 0, 1, 2, ALL).grant(1, 2, 3, 4000, 4001, ALL);
    let p = Params { kills: vec![Kill { at: 2 * MS, token: 1 }], ..params() };
    let (f, v) = h.check(&p);
    assert_eq!(f.takeovers_ms.len(), 1);
    assert_eq!(f.takeovers_over_bound, 1);
    assert!(!v.passed());
    let h = History::default().grant(0, 1, 0, 1, 2, ALL).grant(1, 2, 3, 2000, 2001, ALL);
    let (f, v) = h.check(&p);
    assert_eq!(f.takeover_max_ms, Some(1998.0));
    assert!(v.passed(), "{v:?}");
}

#[test]
fn a_grant_whose_acquire_waited_past_the_lease_is_still_checked() {
    // Worker 0 waited 3 s for the lock (longer than the 2 s lease); the backend promised it
    // until 5 s, and it released at 4.5 s. Worker 1 is granted at 4 s.
    let mut h = History::default().grant(0, 1, 0, 3000, 4500, ALL).grant(1, 2, 3900, 4000, 4100, ALL);
    h.ops[0].valid_until = Some(5000 * MS);
    let (f, v) = h.check(&params());
    assert_eq!(f.definite_overlaps, 1, "{:?}", f.examples);
    assert!(!v.passed());
}

#[test]
fn a_lock_that_never_frees_after_a_kill_fails() {
    // Worker 0 holds token 1 and is killed at 2 ms; worker 1's acquires time out for 10 s.
    let mut h = History::default().grant(0, 1, 0, 1, 2, ALL);
    let mut failed = op(1, OpKind::Acquire, 3, 10_000, 0);
    failed.phase = Phase::Fail;
    failed.token = None;
    h.ops.push(failed);
    let p = Params { kills: vec![Kill { at: 2 * MS, token: 1 }], ..params() };
    let (f, v) = h.check(&p);
    assert_eq!(f.takeovers_over_bound, 1, "{:?}", f.examples);
    assert!(v.failures.iter().any(|m| m.contains("crash bound")), "{v:?}");
}

#[test]
fn a_run_where_one_worker_got_every_grant_fails() {
    let h = History::default().grant(0, 1, 0, 1, 5, ALL).grant(0, 2, 6, 7, 9, ALL);
    let (_, v) = h.check(&params());
    assert!(v.failures.iter().any(|m| m.contains("only one worker")), "{v:?}");
}

#[test]
fn an_empty_history_fails() {
    let (_, v) = History::default().check(&params());
    assert!(v.failures.iter().any(|m| m.contains("no grants")));
}

#[test]
fn a_token_handed_out_again_does_not_merge_two_grants() {
    // Worker 0 gets token 3 twice (the store lost its counter in between): each grant ends at
    // its own release, so worker 1's grant in between overlaps neither.
    let h = History::default()
        .grant(0, 3, 0, 1, 5, ALL)
        .grant(1, 4, 6, 7, 9, ALL)
        .grant(0, 3, 1000, 1001, 1005, ALL);
    let (f, v) = h.check(&params());
    assert_eq!(f.definite_overlaps, 0, "{:?}", f.examples);
    assert_eq!(f.belief_overlaps, 0);
    assert_eq!(f.duplicate_tokens, 2);
    assert!(!v.passed());
}

/// A release answered "not held" before the guard's `valid_until`: the grant vanished while
/// the backend promised it. Fails; inside an expected fault's window it is expected.
#[test]
fn a_release_that_finds_the_grant_gone_before_valid_until_fails() {
    let mut h = History::default().grant(0, 1, 0, 1, 3, ALL).grant(1, 2, 500, 501, 510, ALL);
    h.ops[0].valid_until = Some(2000 * MS);
    h.ops[2].phase = Phase::Fail;
    h.ops[2].err = Some("not held".into());
    let (f, v) = h.check(&params());
    assert_eq!(f.early_losses, 1, "{f:?}");
    assert!(!v.passed() && v.failures.iter().any(|x| x.contains("before the guard's valid_until")), "{v:?}");
    let expected = Params {
        expected_exclusion: Some("a restart from a snapshot".into()),
        expected_windows: vec![(0, 3000 * MS)],
        ..params()
    };
    let (_, v) = h.check(&expected);
    assert!(v.passed() && v.expected.len() == 1, "{v:?}");
    // During any other fault it is reported, not failed: a release sent again after its
    // reply was lost says "not held" on some backends.
    let during = Params { fault_spans: vec![(0, 3000 * MS)], ..params() };
    let (f, v) = h.check(&during);
    assert!(v.passed() && f.early_losses_during_faults == 1, "{v:?}");
    // Answered after valid_until: the grant may have run out; not counted.
    h.ops[2].complete = Some(2500 * MS);
    assert_eq!(h.check(&params()).0.early_losses, 0);
}

/// After a fault heals, the lock must be granted again within the crash bound, a lease and
/// the slack: a backend that wedges after the fault fails, unless the history ended sooner.
#[test]
fn no_grant_after_a_healed_fault_fails() {
    let mut h = History::default().grant(0, 1, 0, 1, 5, ALL).grant(1, 2, 6, 7, 9, ALL);
    // The history goes on (an acquire that timed out) long after the fault healed at 10 ms.
    let mut waited = op(1, OpKind::Acquire, 20, 8000, 0);
    waited.phase = Phase::Fail;
    waited.token = None;
    h.ops.push(waited);
    let p = Params { heals: vec![10 * MS], faults_scheduled: true, ..params() };
    let (f, v) = h.check(&p);
    assert_eq!(f.stuck_after_faults, 1, "{f:?}");
    assert!(v.failures.iter().any(|x| x.contains("healed faults")), "{v:?}");
    // A grant within the limit (bound 2100 + lease 2000 + slack 500 ms) is liveness enough.
    let h = h.grant(0, 3, 3000, 4000, 4005, ALL);
    assert!(h.check(&p).1.passed(), "{:?}", h.check(&p).1);
    // A history that ends before the limit proves nothing either way.
    let short = History::default().grant(0, 1, 0, 1, 5, ALL).grant(1, 2, 6, 7, 9, ALL);
    assert!(short.check(&p).1.passed());
}

/// A scenario that schedules faults but injected none (every arm found no holder) proves
/// nothing about them: it fails.
#[test]
fn a_run_whose_faults_were_never_injected_fails() {
    let h = History::default().grant(0, 1, 0, 1, 5, ALL).grant(1, 2, 6, 7, 9, ALL);
    let p = Params { faults_scheduled: true, ..params() };
    let v = h.check(&p).1;
    assert!(v.failures.iter().any(|x| x.contains("no fault was injected")), "{v:?}");
    assert!(h.check(&params()).1.passed(), "a fault-free scenario needs no fault");
}

/// A token violation that began before the fault that excuses token violations is not
/// excused: the fault cannot have caused it.
#[test]
fn a_token_violation_before_the_excusing_fault_fails() {
    let h = History::default().grant(0, 4, 0, 1, 5, ALL).grant(1, 4, 7, 8, 9, ALL);
    let excused = |from: u64| Params {
        expected_tokens: Some("the emulator lost its data".into()),
        expected_tokens_from: Some(from * MS),
        ..params()
    };
    // The fault came at 6 ms, before the second grant was made: expected.
    assert!(h.check(&excused(6)).1.passed());
    // It came at 50 ms, after both: the duplicate is the backend's own.
    let (f, v) = h.check(&excused(50));
    assert_eq!(f.token_violations_before_faults, 1, "{f:?}");
    assert!(v.failures.iter().any(|m| m.contains("before the fault")), "{v:?}");
}

/// The later of two grants with one token is the one made later, not the one asked for later:
/// a waiter that asked before the fault and was granted after it (a store that lost its
/// counter) is excused, and the grant made before the fault is not blamed.
#[test]
fn a_repeated_token_is_blamed_on_the_grant_made_later() {
    let h = History::default().grant(0, 4, 0, 100, 105, ALL).grant(1, 4, 1, 2, 5, ALL);
    let p = Params {
        expected_tokens: Some("the emulator lost its data".into()),
        expected_tokens_from: Some(50 * MS),
        ..params()
    };
    let (f, v) = h.check(&p);
    assert_eq!(f.token_violations_before_faults, 0, "{f:?}");
    assert!(v.passed(), "{v:?}");
}
