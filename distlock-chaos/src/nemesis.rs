//! The nemesis: injects faults on a schedule (a random gap from the interval, then one fault
//! drawn from the scenario's family, healed before the next), and records each.
//!
//! Faults on a holder are *armed*: the register runs them when the next holder reads, before
//! it answers, so they land inside a critical section (between the read and the write). A
//! holder fault that comes while a renewed hold (a grant on auto-renewal, held past its first
//! validity) is in its first lease goes to that hold's worker at once instead, if it is still
//! the same process: faults meet renewals on purpose, not by chance. Server
//! faults also *stretch* that holder's critical section across the fault (it is frozen for
//! half a lease), so a grant lost by the server shows as two definite holds at once. Every
//! fault is healed before the next starts, and all of them again when the scenario ends.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use rustix::process::Signal;
use serde::Serialize;

use crate::clock::{instant_at, mono_ns, ns};
use crate::error::{ChaosError, Result};
use crate::pool::{signal, Pool};
use crate::proxy::Proxy;
use crate::register::{ArmAction, Holder, RegisterServer};
use crate::scenarios::{Backend, Fault};
use crate::servers::ServerSet;

/// At most this many faults per scenario (the schedule ends sooner).
const MAX_FAULTS: usize = 500;

/// How long each fault lasts, from the backend's lease and crash bound.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Timing {
    /// The lease (TTL or session timeout).
    pub lease: Duration,
    /// `crash_bound(ttl)`.
    pub bound: Duration,
    /// A holder's pause and partition: past the crash bound, so another worker gets the lock.
    pub holder_fault: Duration,
    /// A server's pause: past the lease (and etcd's and ZooKeeper's election timeouts).
    pub server_pause: Duration,
    /// How long a holder is frozen across a server fault.
    pub stretch: Duration,
    /// How long links stay slow.
    pub slow: Duration,
    /// How long a clock stays stepped, and by how much (ms).
    pub clock_len: Duration,
    /// The forward step, ms.
    pub clock_step_ms: i64,
    /// How much older than the restart the snapshot is.
    pub snapshot_age: Duration,
    /// How long a killed server stays down before its restart.
    pub restart_down: Duration,
    /// How long to wait for a holder to arm a fault on.
    pub arm_limit: Duration,
}

impl Timing {
    /// The timing for `backend` with this lease and crash bound.
    pub fn new(backend: Backend, lease: Duration, bound: Duration) -> Self {
        let restart_down = match backend {
            Backend::Etcd | Backend::EtcdPerLock | Backend::Zk => Duration::from_secs(3),
            _ => Duration::ZERO,
        };
        Self {
            lease,
            bound,
            holder_fault: bound + Duration::from_secs(1),
            server_pause: lease + Duration::from_secs(1),
            stretch: lease / 2,
            slow: Duration::from_secs(5),
            clock_len: Duration::from_secs(2),
            clock_step_ms: i64::try_from(lease.as_millis() * 3).unwrap_or(6000),
            snapshot_age: Duration::from_millis(1500),
            restart_down,
            arm_limit: (bound * 2).max(Duration::from_secs(10)),
        }
    }

    /// A fault's nominal length (what the schedule leaves room for).
    pub fn length(&self, f: Fault) -> Duration {
        let d = match f {
            Fault::PauseHolder
            | Fault::PauseHolderUntilTakeover
            | Fault::PartitionHolder
            | Fault::PartitionHolderOneWay
            | Fault::PartitionHolderReplies => self.holder_fault,
            Fault::KillHolder => Duration::ZERO,
            Fault::SlowLinks => self.slow,
            Fault::PauseServer => self.server_pause,
            Fault::RestartServer => self.restart_down + Duration::from_secs(2),
            Fault::RestartServerAfterTtl => self.bound + Duration::from_secs(2),
            Fault::SnapshotRestart => self.snapshot_age + Duration::from_secs(1),
            Fault::ClockStep | Fault::ClockStepRestart => self.clock_len,
        };
        d + Duration::from_secs(1)
    }
}

/// The proxies of worker slot `w` (none for a slot that does not exist).
fn slot(proxies: &[Vec<Proxy>], w: u32) -> impl Iterator<Item = &Proxy> {
    proxies.get(w as usize).into_iter().flatten()
}

/// Checks that the holder `pid` a `SIGSTOP` was sent to is stopped (its state in
/// `/proc/<pid>/stat` is `T`), for up to 200 ms: a pause that did not land (the process gone,
/// the signal refused) proves nothing, and the event is marked failed, so it does not count
/// as injected.
async fn confirm_stopped(pid: u32, ev: &mut FaultEvent) {
    let stopped = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with(['T', 't'])))
            .unwrap_or(false)
    };
    for _ in 0..20 {
        if stopped() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ev.failed = true;
    ev.detail = format!("the holder (pid {pid}) was not stopped by SIGSTOP; not counted");
}

/// The holder a fault was armed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HolderRef {
    /// Slot.
    pub w: u32,
    /// Incarnation.
    pub inc: u32,
    /// Token.
    pub token: u64,
}

/// One injected fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultEvent {
    /// What.
    pub fault: Fault,
    /// When it began (ns).
    pub start_ns: u64,
    /// When it was healed (ns).
    pub end_ns: u64,
    /// The holder it was armed on.
    pub holder: Option<HolderRef>,
    /// It was put on a renewed hold in progress (a grant on auto-renewal).
    pub on_renewed: bool,
    /// The server node it hit.
    pub node: Option<usize>,
    /// Details, and any error.
    pub detail: String,
    /// Its action failed (the error is in `detail`): it may not have happened.
    pub failed: bool,
}

/// What the nemesis acts on.
#[derive(Debug)]
pub struct Nemesis<'a> {
    /// The servers.
    pub servers: &'a mut ServerSet,
    /// The workers.
    pub pool: &'a mut Pool,
    /// The registers (for arming).
    pub register: &'a RegisterServer,
    /// Each worker slot's proxies, one per server node.
    pub proxies: Arc<Vec<Vec<Proxy>>>,
    /// Fault lengths.
    pub timing: Timing,
    /// The seeded randomness.
    pub rng: StdRng,
    /// The backend.
    pub backend: Backend,
    /// A URL that re-creates the DynamoDB table after moto restarts empty.
    pub recreate_url: Option<String>,
    /// A stretched holder stays frozen until then (ns), also when the fault ends sooner.
    pub stretch_until: Option<u64>,
}

impl Nemesis<'_> {
    /// Injects faults from `faults` until `stop_ns`, one at a time, with a random gap from
    /// `interval` before each.
    pub async fn run(
        &mut self,
        faults: &[Fault],
        stop_ns: u64,
        interval: (Duration, Duration),
    ) -> Vec<FaultEvent> {
        let mut events = Vec::new();
        while events.len() < MAX_FAULTS && !faults.is_empty() {
            let gap = self.rng.random_range(interval.0..=interval.1);
            let f = faults[self.rng.random_range(0..faults.len())];
            if mono_ns() + ns(gap) + ns(self.timing.length(f)) > stop_ns {
                break;
            }
            tokio::time::sleep(gap).await;
            events.push(self.inject(f).await);
        }
        events
    }

    async fn inject(&mut self, fault: Fault) -> FaultEvent {
        let mut ev = FaultEvent {
            fault,
            start_ns: mono_ns(),
            end_ns: 0,
            holder: None,
            on_renewed: false,
            node: None,
            detail: String::new(),
            failed: false,
        };
        if let Err(e) = self.apply(&mut ev).await {
            ev.detail = format!("{} error: {e}", ev.detail).trim().to_owned();
            ev.failed = true;
        }
        if let Some(until) = self.stretch_until.take() {
            tokio::time::sleep_until(instant_at(until)).await;
        }
        self.heal().await;
        ev.end_ns = mono_ns();
        ev
    }

    /// Undoes every fault: thaws workers, clears links, resets clocks, resumes and restarts
    /// servers.
    pub async fn heal(&mut self) {
        self.pool.resume_all();
        for slot in self.proxies.iter() {
            for p in slot {
                p.set(crate::proxy::Link::CLEAR);
            }
        }
        for i in 0..self.servers.len() {
            if let Some(node) = self.servers.redis(i) {
                let _ = node.set_clock(0).await;
            }
            if let Some(p) = self.servers.process(i) {
                if !p.is_running() {
                    let _ = p.restart().await;
                }
                let _ = p.resume();
            }
        }
        let _ = self.servers.wait_ready(Duration::from_secs(60)).await;
    }

    /// Puts `action` on a holder: on the renewed hold in progress, if `renewed_first` and one
    /// began less than a lease ago (so faults do not meet grants on auto-renewal by chance
    /// alone); otherwise armed on the next holder that reads.
    async fn arm(&mut self, action: ArmAction, ev: &mut FaultEvent, renewed_first: bool) -> Option<Holder> {
        let renewed = renewed_first.then(|| self.register.take_renewed(self.timing.lease)).flatten();
        // Not a worker killed or replaced since its renewed hold began.
        if let Some(mut h) = renewed.filter(|h| self.pool.current(h.w) == Some((h.inc, h.pid))) {
            h.at = mono_ns();
            action(&h);
            ev.start_ns = h.at;
            ev.holder = Some(HolderRef { w: h.w, inc: h.inc, token: h.token });
            ev.on_renewed = true;
            return Some(h);
        }
        let rx = self.register.arm(action);
        match tokio::time::timeout(self.timing.arm_limit, rx).await {
            Ok(Ok(h)) => {
                ev.start_ns = h.at;
                ev.holder = Some(HolderRef { w: h.w, inc: h.inc, token: h.token });
                Some(h)
            }
            _ => {
                self.register.disarm();
                ev.detail = "no holder read within the arm limit; skipped".into();
                None
            }
        }
    }

    /// Freezes the next holder for [`Timing::stretch`] (thawed by a timer, and the fault does
    /// not end before it).
    async fn stretch(&mut self, ev: &mut FaultEvent) -> Option<Holder> {
        let Some(h) = self.pause_next_holder(ev, false).await else {
            // The server fault still happens (its token checks stand), with no definite hold
            // across it.
            ev.detail = "no holder read within the arm limit: none frozen across the fault".into();
            return None;
        };
        let (pid, until) = (h.pid, h.at + ns(self.timing.stretch));
        self.stretch_until = Some(until);
        tokio::spawn(async move {
            tokio::time::sleep_until(instant_at(until)).await;
            signal(pid, Signal::CONT);
        });
        Some(h)
    }

    /// Stops (`SIGSTOP`) the next holder that reads the registers (or, with `renewed_first`,
    /// the holder of a renewed hold in progress), and checks it stopped ([`confirm_stopped`]).
    async fn pause_next_holder(&mut self, ev: &mut FaultEvent, renewed_first: bool) -> Option<Holder> {
        let h = self.arm(Box::new(|h| signal(h.pid, Signal::STOP)), ev, renewed_first).await?;
        self.pool.mark_paused(h.w, h.pid);
        confirm_stopped(h.pid, ev).await;
        Some(h)
    }

    async fn node_for(&mut self, fault: Fault) -> usize {
        match (self.backend, fault) {
            (Backend::Redlock, _) => self.rng.random_range(0..self.servers.len().max(1)),
            _ => self.servers.leader().await,
        }
    }

    fn process(&mut self, i: usize) -> Result<&mut conformance_tests::fixtures::ServerProcess> {
        self.servers.process(i).ok_or_else(|| ChaosError::Config(format!("no server node {i}")))
    }

    async fn apply(&mut self, ev: &mut FaultEvent) -> Result<()> {
        match ev.fault {
            Fault::PauseHolder
            | Fault::PauseHolderUntilTakeover
            | Fault::KillHolder
            | Fault::PartitionHolder
            | Fault::PartitionHolderOneWay
            | Fault::PartitionHolderReplies
            | Fault::SlowLinks => self.client_fault(ev).await,
            _ => self.server_fault(ev).await,
        }
    }

    /// Faults on a worker or its links.
    async fn client_fault(&mut self, ev: &mut FaultEvent) -> Result<()> {
        let t = self.timing;
        match ev.fault {
            Fault::PauseHolder => {
                if let Some(h) = self.pause_next_holder(ev, true).await {
                    tokio::time::sleep_until(instant_at(h.at + ns(t.holder_fault))).await;
                }
            }
            Fault::PauseHolderUntilTakeover => {
                if let Some(h) = self.pause_next_holder(ev, true).await {
                    // Thawed just before the next holder's read is answered (or after the
                    // holder-fault length if none comes).
                    let pid = h.pid;
                    let rx = self
                        .register
                        .arm_except(Box::new(move |_| signal(pid, Signal::CONT)), Some((h.w, h.inc)));
                    match tokio::time::timeout_at(instant_at(h.at + ns(t.holder_fault)), rx).await {
                        Ok(Ok(next)) => {
                            ev.detail = format!(
                                "thawed as worker {}.{} (token {}) read",
                                next.w, next.inc, next.token
                            )
                        }
                        _ => {
                            self.register.disarm();
                            ev.detail = "no other holder read; thawed at the holder-fault length".into();
                        }
                    }
                }
            }
            Fault::KillHolder => {
                if let Some(h) = self.arm(Box::new(|h| signal(h.pid, Signal::KILL)), ev, true).await {
                    self.pool.replace(h.w, h.pid).await?;
                }
            }
            Fault::PartitionHolder | Fault::PartitionHolderOneWay | Fault::PartitionHolderReplies => {
                // Which way is held: requests, replies, or both.
                let (up, down) = match ev.fault {
                    Fault::PartitionHolderOneWay => (true, false),
                    Fault::PartitionHolderReplies => (false, true),
                    _ => (true, true),
                };
                let proxies = self.proxies.clone();
                let cut = Box::new(move |h: &Holder| {
                    for p in slot(&proxies, h.w) {
                        p.update(|l| {
                            l.up_blocked = up;
                            l.down_blocked = down;
                        });
                    }
                });
                let all = self.proxies.clone();
                let stalls = |w: u32| -> u64 { slot(&all, w).map(Proxy::stalls).sum() };
                // Every slot's count: the holder is known only once the cut is put on it.
                let before: Vec<u64> = (0..self.proxies.len() as u32).map(stalls).collect();
                if let Some(h) = self.arm(cut, ev, true).await {
                    tokio::time::sleep_until(instant_at(h.at + ns(t.holder_fault))).await;
                    let held = stalls(h.w).saturating_sub(before.get(h.w as usize).copied().unwrap_or(0));
                    if held > 0 {
                        ev.detail = format!("held {held} chunks or connections");
                    } else {
                        // Nothing was sent into the cut while it lasted: the partition did
                        // not happen, so it is not counted (as a fault that found no holder is
                        // not).
                        ev.detail = format!(
                            "worker {}.{} (token {}): nothing was sent into the partition; not counted",
                            h.w, h.inc, h.token
                        );
                        ev.holder = None;
                        ev.on_renewed = false;
                    }
                }
            }
            _ => {
                let max = (t.lease / 4).max(Duration::from_millis(21));
                let delay = self.rng.random_range(Duration::from_millis(20)..max);
                ev.detail = format!("delay {} ms each way", delay.as_millis());
                self.proxies.iter().flatten().for_each(|p| p.update(|l| l.delay = delay));
                tokio::time::sleep(t.slow).await;
            }
        }
        Ok(())
    }

    /// Faults on the servers, each across a stretched holder's critical section.
    async fn server_fault(&mut self, ev: &mut FaultEvent) -> Result<()> {
        let t = self.timing;
        match ev.fault {
            Fault::PauseServer => {
                let node = self.node_for(ev.fault).await;
                ev.node = Some(node);
                self.stretch(ev).await;
                self.process(node)?.pause()?;
                tokio::time::sleep(t.server_pause).await;
                self.process(node)?.resume()?;
            }
            Fault::RestartServer | Fault::RestartServerAfterTtl => {
                let node = self.node_for(ev.fault).await;
                ev.node = Some(node);
                let down = if ev.fault == Fault::RestartServer {
                    t.restart_down
                } else {
                    t.bound + Duration::from_millis(500)
                };
                self.stretch(ev).await;
                self.restart(node, down).await?;
            }
            Fault::SnapshotRestart => {
                ev.node = Some(0);
                self.servers
                    .redis(0)
                    .ok_or_else(|| ChaosError::Config("no Redis node".into()))?
                    .save()
                    .await?;
                tokio::time::sleep(t.snapshot_age).await;
                self.stretch(ev).await;
                self.restart(0, Duration::ZERO).await?;
            }
            Fault::ClockStep => {
                let node = self.node_for(ev.fault).await;
                ev.node = Some(node);
                self.stretch(ev).await;
                self.step_clock(node, t.clock_step_ms).await?;
                tokio::time::sleep(t.clock_len).await;
                self.step_clock(node, 0).await?;
            }
            _ => {
                let n = self.servers.len().max(2);
                let a = self.rng.random_range(0..n);
                let b = (a + self.rng.random_range(1..n)) % n;
                ev.node = Some(b);
                self.stretch(ev).await;
                let what = format!("clock of node {a} +{} ms, node {b} restarted empty", t.clock_step_ms);
                ev.detail = if ev.detail.is_empty() { what } else { format!("{what}; {}", ev.detail) };
                self.step_clock(a, t.clock_step_ms).await?;
                self.restart(b, Duration::ZERO).await?;
                tokio::time::sleep(t.clock_len).await;
                self.step_clock(a, 0).await?;
            }
        }
        Ok(())
    }

    async fn step_clock(&mut self, node: usize, offset_ms: i64) -> Result<()> {
        let n =
            self.servers.redis(node).ok_or_else(|| ChaosError::Config(format!("no Redis node {node}")))?;
        n.set_clock(offset_ms).await
    }

    async fn restart(&mut self, node: usize, down: Duration) -> Result<()> {
        self.process(node)?.kill().await;
        tokio::time::sleep(down).await;
        self.process(node)?.restart().await?;
        self.servers.wait_ready(Duration::from_secs(60)).await?;
        if let Some(url) = self.recreate_url.clone() {
            recreate_table(&url).await?;
        }
        Ok(())
    }
}

/// Connects with `create_table=true` until the table exists again (moto restarts empty).
async fn recreate_table(url: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match distlock::connect(url).await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> FaultEvent {
        FaultEvent {
            fault: Fault::PauseHolder,
            start_ns: 0,
            end_ns: 0,
            holder: None,
            on_renewed: false,
            node: None,
            detail: String::new(),
            failed: false,
        }
    }

    /// A pause that did not stop its process is not counted; one that did is.
    #[tokio::test]
    async fn a_pause_counts_only_when_the_process_is_stopped() {
        let mut running = event();
        confirm_stopped(std::process::id(), &mut running).await;
        assert!(running.failed, "a running process was taken as stopped");
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
        signal(child.id(), Signal::STOP);
        let mut paused = event();
        confirm_stopped(child.id(), &mut paused).await;
        signal(child.id(), Signal::KILL);
        let _ = child.wait();
        assert!(!paused.failed, "{}", paused.detail);
    }
}
