//! The checker: reads one scenario's history (the workers' operations, the registers' log and
//! final values, the kills) and computes every figure the report shows, and the verdict.
//!
//! What it holds the run to:
//!
//! - **Fencing** (always; any violation fails): no acknowledged write to the fenced register
//!   is missing from its final value, and the fenced register never accepted a token lower
//!   than one it had accepted before. The fenced register checks reads too (see
//!   [`crate::register`]), so the first figure is provably 0 whenever tokens are unique.
//! - **Tokens** (promise 2): no two grants share a token, and a grant that began after
//!   another ended has a higher token. Fails unless the scenario's faults are on the
//!   expected list (a store that loses its data restarts its counter).
//! - **Server-side exclusion** (promise 1): no two *definite-hold* intervals of different
//!   grants overlap. A grant certainly holds from its acquire's completion to the earlier of
//!   its release's invoke and the guard's `valid_until` (the backend's own promise); without
//!   a `valid_until`, to its acquire's invoke plus the lease (the TTL, or the session timeout
//!   on session backends: `Capabilities::lease_length`), a lower bound on any lease the
//!   server began later. A grant held on auto-renewal is held to the latest `valid_until`
//!   its guard showed during the hold. (Taking the earliest of all three would make the hold of a grant
//!   whose acquire waited longer than a lease empty, and so unchecked: the grants next to a
//!   fault are those.) Fails unless expected, with its reason.
//!   *Belief* overlaps (from acquire completion to release invoke, the time the holder acted
//!   as if it held the lock; a paused holder still believes) are counted, never failed: they
//!   are what fencing is for.
//! - **Takeover** (promise 3): after a holder is killed, the next grant comes within
//!   `Capabilities::crash_bound(ttl)` plus a slack for the waiter to notice; a kill after
//!   which no grant came while the history went on for longer than that fails too.
//! - **A release that finds the grant gone early**: a release answered "not held" before the
//!   guard's `valid_until` shows the grant vanished while the backend promised it; it fails
//!   unless it comes inside an expected fault's window (then it is expected, with the reason).
//! - **Liveness after a fault**: once a fault is healed, a grant comes within the crash bound,
//!   a lease and the slack (a backend that wedges after a partition or a restart fails), unless
//!   the history ended sooner.
//! - **The run did something**: at least one grant, and grants to at least two workers; and
//!   where the scenario schedules faults, at least one was injected.
//! - **The nemesis was strong enough**: where the scenario paused holders, the unfenced
//!   control must have lost acknowledged updates; if it did not, the run proves nothing.

use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

use serde::Serialize;

use crate::clock::ms;
use crate::record::{Op, OpKind, Phase, Reg, RegOutcome};
use crate::register::RegisterLog;

/// A holder killed by the nemesis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kill {
    /// When it was killed.
    pub at: u64,
    /// Its grant's token.
    pub token: u64,
}

/// What the checker needs besides the history.
#[derive(Debug, Clone, Default)]
pub struct Params {
    /// The lease of a grant (TTL, or session timeout), ns.
    pub lease_ns: u64,
    /// `crash_bound(ttl)`, ns.
    pub bound_ns: u64,
    /// Allowed on top of the bound for a waiter to notice a free lock, ns.
    pub slack_ns: u64,
    /// Holders killed by the nemesis.
    pub kills: Vec<Kill>,
    /// Holders were paused past their lease: the unfenced control must lose updates.
    pub require_unfenced_loss: bool,
    /// Exclusion violations are expected here, for this reason, when they begin inside one of
    /// [`expected_windows`](Self::expected_windows).
    pub expected_exclusion: Option<String>,
    /// The spans (ns) of the faults on the expected list, each from the fault's start to a
    /// lease after its end (a grant made before the fault holds at most a lease after it): an
    /// overlap that begins outside every one of them fails even where overlaps are expected.
    pub expected_windows: Vec<(u64, u64)>,
    /// Token violations are expected here, for this reason.
    pub expected_tokens: Option<String>,
    /// From when (ns) they are expected: the start of the first fault that excuses them (a
    /// store that lost its counter repeats tokens for the rest of the run, not before it).
    /// `None`: the whole run.
    pub expected_tokens_from: Option<u64>,
    /// The scenario schedules faults (a family that is not fault-free).
    pub faults_scheduled: bool,
    /// When each injected fault was healed (ns).
    pub heals: Vec<u64>,
    /// Each injected network or server fault's span (ns), from its start to a lease after its
    /// end: a release sent again after a lost reply may say "not held" then.
    pub fault_spans: Vec<(u64, u64)>,
}

/// One register's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RegFigures {
    /// Reads it rejected (stale token).
    pub reads_rejected: usize,
    /// Writes it accepted.
    pub writes_accepted: usize,
    /// Writes it rejected.
    pub writes_rejected: usize,
    /// Writes whose acceptance reached the worker.
    pub writes_acknowledged: usize,
    /// Acknowledged writes whose element is missing from the final value.
    pub lost: usize,
    /// Accepted writes whose token was lower than an earlier accepted write's.
    pub accepted_tokens_down: usize,
    /// Elements in the final value.
    pub final_len: usize,
}

/// Every figure of one scenario.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Figures {
    /// Operations recorded (invoked).
    pub ops: usize,
    /// Successful acquires.
    pub grants: usize,
    /// Workers (counting each once, across restarts) that got the lock at least once.
    pub workers_granted: usize,
    /// Acquires that certainly failed (timed out waiting).
    pub acquires_failed: usize,
    /// Acquires that may or may not have taken effect (errors, no completion).
    pub acquires_indeterminate: usize,
    /// Distinct fencing tokens among the grants.
    pub distinct_tokens: usize,
    /// Grants whose token another grant also had.
    pub duplicate_tokens: usize,
    /// Grants that began after another ended but got a token not above it.
    pub token_order_violations: usize,
    /// Of the duplicated and out-of-order grants, those granted before the first fault that
    /// excuses token violations began (never excused; a waiter that asked before the fault
    /// and was granted after it may be).
    pub token_violations_before_faults: usize,
    /// Per register figures, by name.
    pub registers: BTreeMap<&'static str, RegFigures>,
    /// Pairs of grants whose definite-hold intervals overlap.
    pub definite_overlaps: usize,
    /// Of those, the pairs whose overlap begins inside an expected fault's window.
    pub definite_overlaps_in_fault_windows: usize,
    /// Pairs of grants whose belief intervals overlap.
    pub belief_overlaps: usize,
    /// Takeover times after kills, ms.
    pub takeovers_ms: Vec<f64>,
    /// Median takeover, ms.
    pub takeover_p50_ms: Option<f64>,
    /// Longest takeover, ms.
    pub takeover_max_ms: Option<f64>,
    /// The crash bound they are held to, ms.
    pub crash_bound_ms: f64,
    /// Takeovers longer than the bound plus slack.
    pub takeovers_over_bound: usize,
    /// Longest time without any grant, ms.
    pub longest_gap_ms: f64,
    /// Releases answered "not held" before the guard's `valid_until`.
    pub early_losses: usize,
    /// Of those, the ones inside an expected fault's window.
    pub early_losses_in_fault_windows: usize,
    /// Of the others, the ones during any fault (a release resent after its reply was lost
    /// may say "not held" although it released).
    pub early_losses_during_faults: usize,
    /// Healed faults after which no grant came within the crash bound, a lease and the slack.
    pub stuck_after_faults: usize,
    /// Faults injected.
    pub faults_injected: usize,
    /// Descriptions of the first violations of each kind.
    pub examples: Vec<String>,
}

/// The verdict: failures fail the run; expected violations are reported with their reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Violations that fail the run.
    pub failures: Vec<String>,
    /// Violations that the backend does not promise to prevent here (reason given).
    pub expected: Vec<String>,
}

impl Verdict {
    /// No failures.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

#[derive(Debug, Clone, Copy)]
struct Grant {
    w: u32,
    inc: u32,
    token: u64,
    invoke: u64,
    complete: u64,
    definite_end: u64,
    belief_end: u64,
    /// When its release was answered "not held" while the guard's `valid_until` was still
    /// ahead.
    lost_early_at: Option<u64>,
}

/// Checks one scenario.
pub fn check(ops: &[Op], log: &RegisterLog, p: &Params) -> (Figures, Verdict) {
    let mut f = Figures { ops: ops.len(), crash_bound_ms: ms(p.bound_ns), ..Figures::default() };
    let grants = grants(ops, p.lease_ns);
    f.grants = grants.len();
    for op in ops.iter().filter(|o| o.kind == OpKind::Acquire) {
        match op.phase {
            Phase::Fail => f.acquires_failed += 1,
            Phase::Info | Phase::Invoke => f.acquires_indeterminate += 1,
            Phase::Ok => {}
        }
    }
    tokens(&grants, p.expected_tokens_from.unwrap_or(0), &mut f);
    let in_window = |at: u64| p.expected_windows.iter().any(|(from, to)| (*from..=*to).contains(&at));
    let (definite, in_windows, ex) = overlaps(&grants, |g| g.definite_end, in_window);
    f.definite_overlaps = definite;
    f.definite_overlaps_in_fault_windows = in_windows;
    f.examples.extend(ex.into_iter().map(|e| format!("definite holds overlap: {e}")));
    f.belief_overlaps = overlaps(&grants, |g| g.belief_end, |_| false).0;
    for reg in Reg::ALL {
        f.registers.insert(reg.name(), register(ops, log, reg, &mut f.examples));
    }
    let during_fault = |at: u64| p.fault_spans.iter().any(|(from, to)| (*from..=*to).contains(&at));
    for g in &grants {
        let Some(at) = g.lost_early_at else { continue };
        f.early_losses += 1;
        if in_window(at) {
            f.early_losses_in_fault_windows += 1;
        } else if during_fault(at) {
            f.early_losses_during_faults += 1;
        } else if f.early_losses - f.early_losses_in_fault_windows - f.early_losses_during_faults == 1 {
            f.examples.push(format!(
                "worker {}.{} token {}: its release found the grant gone at {:.1} ms, before its valid_until",
                g.w,
                g.inc,
                g.token,
                ms(at)
            ));
        }
    }
    let history_end = ops.iter().map(|o| o.complete.unwrap_or(o.invoke)).max().unwrap_or(0);
    takeovers(&grants, p, history_end, &mut f);
    after_heals(&grants, p, history_end, &mut f);
    f.workers_granted = grants.iter().map(|g| g.w).collect::<HashSet<_>>().len();
    let mut done: Vec<u64> = grants.iter().map(|g| g.complete).collect();
    done.sort_unstable();
    f.longest_gap_ms = done.windows(2).map(|w| ms(w[1] - w[0])).fold(0.0, f64::max);
    let v = verdict(&f, p);
    (f, v)
}

/// The grants, each with the operations its worker made under it: those of the same worker
/// incarnation that follow its acquire, up to that worker's next acquire (tokens alone do not
/// identify a grant when a store lost its counter and handed them out again).
fn grants(ops: &[Op], lease_ns: u64) -> Vec<Grant> {
    let mut by_worker: HashMap<(u32, u32), Vec<&Op>> = HashMap::new();
    for op in ops {
        by_worker.entry((op.w, op.inc)).or_default().push(op);
    }
    let mut out = Vec::new();
    for mut mine in by_worker.into_values() {
        mine.sort_by_key(|o| o.invoke);
        for (i, op) in mine.iter().enumerate() {
            if op.kind != OpKind::Acquire || op.phase != Phase::Ok {
                continue;
            }
            let (Some(token), Some(complete)) = (op.token, op.complete) else { continue };
            let under: Vec<&&Op> = mine[i + 1..].iter().take_while(|o| o.kind != OpKind::Acquire).collect();
            let release_op = under.iter().find(|o| o.kind == OpKind::Release);
            let release = release_op.map(|o| o.invoke);
            // An auto-renewed guard's latest promise, seen during the hold, counts as its first.
            let renewed = under
                .iter()
                .filter(|o| o.kind == OpKind::Renew && o.phase == Phase::Ok)
                .filter_map(|o| o.valid_until)
                .max();
            let valid_until = op.valid_until.max(renewed);
            let lost_early_at = release_op
                .filter(|o| o.phase == Phase::Fail)
                .and_then(|o| o.complete)
                .filter(|done| valid_until.is_some_and(|v| *done < v));
            let mut end = valid_until.unwrap_or_else(|| op.invoke.saturating_add(lease_ns));
            if let Some(inv) = release {
                end = end.min(inv);
            }
            // It acted on its belief until it began to release (or, killed, until the last
            // thing it did).
            let last = under.iter().map(|o| o.complete.unwrap_or(o.invoke)).max().unwrap_or(complete);
            let belief_end = release.unwrap_or(last);
            out.push(Grant {
                w: op.w,
                inc: op.inc,
                token,
                invoke: op.invoke,
                complete,
                definite_end: end,
                belief_end: belief_end.max(complete),
                lost_early_at,
            });
        }
    }
    out.sort_by_key(|g| (g.complete, g.w, g.inc));
    out
}

/// Token figures; violations whose later grant was granted by `from` are counted apart.
fn tokens(grants: &[Grant], from: u64, f: &mut Figures) {
    let mut count: HashMap<u64, usize> = HashMap::new();
    for g in grants {
        *count.entry(g.token).or_default() += 1;
    }
    f.distinct_tokens = count.len();
    f.duplicate_tokens = count.values().filter(|c| **c > 1).copied().sum();
    if let Some((t, c)) = count.iter().find(|(_, c)| **c > 1) {
        f.examples.push(format!("token {t} was granted {c} times"));
    }
    // A duplicate by `from`: a grant made by then that shares its token with an earlier one.
    // Walked in the order the grants were made (`grants` is sorted by completion).
    let mut seen: HashSet<u64> = HashSet::new();
    let mut early: HashSet<(u32, u32, u64)> = HashSet::new();
    for g in grants {
        if !seen.insert(g.token) && g.complete <= from {
            early.insert((g.w, g.inc, g.invoke));
        }
    }
    // grants are sorted by completion; walk them by invoke with the max token completed before.
    let mut by_invoke: Vec<&Grant> = grants.iter().collect();
    by_invoke.sort_by_key(|g| g.invoke);
    let (mut i, mut max): (usize, Option<&Grant>) = (0, None);
    for g in by_invoke {
        while i < grants.len() && grants[i].complete < g.invoke {
            if max.is_none_or(|m| grants[i].token > m.token) {
                max = Some(&grants[i]);
            }
            i += 1;
        }
        if let Some(m) = max.filter(|m| g.token <= m.token) {
            f.token_order_violations += 1;
            if g.complete <= from {
                early.insert((g.w, g.inc, g.invoke));
            }
            if f.token_order_violations == 1 {
                f.examples.push(format!(
                    "token went down: worker {}.{} got {} after worker {}.{}'s grant {} had completed",
                    g.w, g.inc, g.token, m.w, m.inc, m.token
                ));
            }
        }
    }
    f.token_violations_before_faults = early.len();
}

/// The pairs of different grants whose intervals (completion to `end`) overlap; of those, the
/// pairs whose overlap begins at a time `windowed` says; and up to three examples of the
/// others.
fn overlaps(
    grants: &[Grant],
    end: impl Fn(&Grant) -> u64,
    windowed: impl Fn(u64) -> bool,
) -> (usize, usize, Vec<String>) {
    let mut by_start: Vec<&Grant> = grants.iter().filter(|g| end(g) > g.complete).collect();
    by_start.sort_by_key(|g| g.complete);
    let mut active: BinaryHeap<std::cmp::Reverse<(u64, usize)>> = BinaryHeap::new();
    let (mut pairs, mut in_windows, mut examples) = (0, 0, Vec::new());
    for (idx, g) in by_start.iter().enumerate() {
        while active.peek().is_some_and(|std::cmp::Reverse((e, _))| *e <= g.complete) {
            active.pop();
        }
        // An overlap begins when the later grant completes.
        let windowed = windowed(g.complete);
        for std::cmp::Reverse((e, j)) in active.iter() {
            pairs += 1;
            in_windows += usize::from(windowed);
            if examples.len() < 3 && !windowed {
                let o = by_start[*j];
                examples.push(format!(
                    "worker {}.{} token {} held {:.1}–{:.1} ms, worker {}.{} token {} from {:.1} ms",
                    o.w,
                    o.inc,
                    o.token,
                    ms(o.complete),
                    ms(*e),
                    g.w,
                    g.inc,
                    g.token,
                    ms(g.complete)
                ));
            }
        }
        active.push(std::cmp::Reverse((end(g), idx)));
    }
    (pairs, in_windows, examples)
}

fn register(ops: &[Op], log: &RegisterLog, reg: Reg, examples: &mut Vec<String>) -> RegFigures {
    let mut r = RegFigures::default();
    let mut max_accepted: Option<u64> = None;
    for e in log.events.iter().filter(|e| e.reg == reg) {
        match (e.write, e.accepted) {
            (false, false) => r.reads_rejected += 1,
            (false, true) => {}
            (true, false) => r.writes_rejected += 1,
            (true, true) => {
                r.writes_accepted += 1;
                if max_accepted.is_some_and(|m| e.token < m) {
                    r.accepted_tokens_down += 1;
                }
                max_accepted = Some(max_accepted.map_or(e.token, |m| m.max(e.token)));
            }
        }
    }
    let finals: HashSet<&str> = log.finals[reg.index()].iter().map(String::as_str).collect();
    r.final_len = log.finals[reg.index()].len();
    for op in ops.iter().filter(|o| o.kind == OpKind::Write && o.phase == Phase::Ok) {
        let acked = op.regs.is_some_and(|rs| rs[reg.index()].outcome == RegOutcome::Ok);
        let Some(elem) = op.elem.as_deref().filter(|_| acked) else { continue };
        r.writes_acknowledged += 1;
        if !finals.contains(elem) {
            r.lost += 1;
            if r.lost == 1 && reg == Reg::Fenced {
                examples
                    .push(format!("fenced update {elem} (token {:?}) was acknowledged and lost", op.token));
            }
        }
    }
    r
}

fn takeovers(grants: &[Grant], p: &Params, history_end: u64, f: &mut Figures) {
    for k in &p.kills {
        let next = grants.iter().find(|g| g.complete > k.at && g.token != k.token);
        let Some(g) = next else {
            // Nobody got the lock again: a lock that never frees after its holder died.
            let waited = history_end.saturating_sub(k.at);
            if waited > p.bound_ns + p.slack_ns {
                f.takeovers_over_bound += 1;
                f.examples.push(format!(
                    "no grant in the {:.0} ms after the holder with token {} was killed (bound {:.0} ms + slack {:.0} ms)",
                    ms(waited),
                    k.token,
                    ms(p.bound_ns),
                    ms(p.slack_ns)
                ));
            }
            continue;
        };
        {
            let took = g.complete - k.at;
            f.takeovers_ms.push(ms(took));
            if took > p.bound_ns + p.slack_ns {
                f.takeovers_over_bound += 1;
                f.examples.push(format!(
                    "takeover after the holder with token {} was killed took {:.0} ms (bound {:.0} ms + slack {:.0} ms)",
                    k.token,
                    ms(took),
                    ms(p.bound_ns),
                    ms(p.slack_ns)
                ));
            }
        }
    }
    let mut t = f.takeovers_ms.clone();
    t.sort_by(f64::total_cmp);
    f.takeover_p50_ms = t.get(t.len() / 2).copied();
    f.takeover_max_ms = t.last().copied();
}

/// Counts the healed faults after which no grant came within the crash bound, a lease and the
/// slack, where the history went on that long.
fn after_heals(grants: &[Grant], p: &Params, history_end: u64, f: &mut Figures) {
    f.faults_injected = p.heals.len();
    let limit = p.bound_ns.saturating_add(p.lease_ns).saturating_add(p.slack_ns);
    for &h in &p.heals {
        let by = h.saturating_add(limit);
        if history_end < by || grants.iter().any(|g| g.complete > h && g.complete <= by) {
            continue;
        }
        f.stuck_after_faults += 1;
        if f.stuck_after_faults == 1 {
            f.examples.push(format!(
                "no grant in the {:.0} ms after a fault healed at {:.1} ms (crash bound + lease + slack)",
                ms(limit),
                ms(h)
            ));
        }
    }
}

fn verdict(f: &Figures, p: &Params) -> Verdict {
    let mut v = Verdict::default();
    let fenced = &f.registers[Reg::Fenced.name()];
    if fenced.lost > 0 {
        v.failures.push(format!("{} acknowledged fenced updates lost", fenced.lost));
    }
    for reg in [Reg::Fenced, Reg::WriteFenced] {
        let r = &f.registers[reg.name()];
        if r.accepted_tokens_down > 0 {
            v.failures.push(format!(
                "the {} register accepted {} lower tokens",
                reg.name(),
                r.accepted_tokens_down
            ));
        }
    }
    let token_bad = f.duplicate_tokens + f.token_order_violations;
    if token_bad > 0 {
        let what = format!(
            "tokens: {} duplicated, {} out of real-time order",
            f.duplicate_tokens, f.token_order_violations
        );
        match &p.expected_tokens {
            Some(why) if f.token_violations_before_faults == 0 => {
                v.expected.push(format!("{what} (expected: {why})"));
            }
            Some(_) => v.failures.push(format!(
                "{what}; {} of them were granted before the fault that excuses them",
                f.token_violations_before_faults
            )),
            None => v.failures.push(what),
        }
    }
    let windowed = f.definite_overlaps_in_fault_windows;
    if windowed > 0 {
        let what = format!(
            "server-side exclusion: {windowed} overlapping definite holds in an expected fault's window"
        );
        match &p.expected_exclusion {
            Some(why) => v.expected.push(format!("{what} (expected, documented: {why})")),
            None => v.failures.push(what),
        }
    }
    if f.definite_overlaps > windowed {
        let what =
            format!("server-side exclusion: {} overlapping definite holds", f.definite_overlaps - windowed);
        v.failures.push(if windowed > 0 {
            format!("{what} outside every expected fault's window")
        } else {
            what
        });
    }
    let early_windowed = f.early_losses_in_fault_windows;
    if early_windowed > 0 {
        let what = format!("{early_windowed} releases found their grant gone before valid_until in an expected fault's window");
        match &p.expected_exclusion {
            Some(why) => v.expected.push(format!("{what} (expected, documented: {why})")),
            None => v.failures.push(what),
        }
    }
    if f.early_losses_during_faults > 0 {
        v.expected.push(format!(
            "{} releases said \"not held\" before valid_until during a fault (a release sent again after its reply was lost says so, documented for etcd and a Redis Cluster)",
            f.early_losses_during_faults
        ));
    }
    let early_unexcused = f.early_losses - early_windowed - f.early_losses_during_faults;
    if early_unexcused > 0 {
        v.failures.push(format!(
            "{early_unexcused} releases found their grant gone before the guard's valid_until"
        ));
    }
    if f.stuck_after_faults > 0 {
        v.failures.push(format!(
            "{} healed faults were followed by no grant within the crash bound, a lease and the slack",
            f.stuck_after_faults
        ));
    }
    if p.faults_scheduled && f.faults_injected == 0 {
        v.failures.push("no fault was injected: the run proves nothing about its faults".into());
    }
    if f.takeovers_over_bound > 0 {
        v.failures
            .push(format!("{} takeovers after a kill exceeded the crash bound", f.takeovers_over_bound));
    }
    if p.require_unfenced_loss && f.registers[Reg::Unfenced.name()].lost == 0 {
        v.failures.push(
            "the nemesis was too weak: holders were paused past their lease, yet the unfenced control lost no update"
                .into(),
        );
    }
    if f.grants == 0 {
        v.failures.push("no grants at all".into());
    } else if f.workers_granted < 2 {
        v.failures.push("only one worker ever got the lock: the run tested no contention".into());
    }
    v
}

#[cfg(test)]
#[path = "checker_tests.rs"]
mod tests;
