//! Which member a request goes to: one lazily connected channel per endpoint, taken in turn,
//! and a member that let a request go unanswered (or said it cannot serve) passed over for a
//! while.
//!
//! A member that stops answering without closing its connections (a paused process, a cut
//! link) looks healthy to a connection-level balancer: its connection stays open, and every
//! request sent to it waits out its timeout. etcd's Go client once did the same as this module
//! (an endpoint that failed was left out for a while). Here a member is passed over for 1 s
//! after its first failure, twice as long after each further one (up to 30 s), and taken again
//! at once after it answers; when every member is passed over, the one whose pause ends first
//! serves (a single endpoint is always used).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lock_core::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// The first pause of a member that failed.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause.
const MAX_PAUSE: Duration = Duration::from_secs(30);
/// A request cut off by its caller after waiting this long counts as unanswered.
pub(super) const UNANSWERED_AFTER: Duration = Duration::from_millis(200);

struct Member {
    channel: Channel,
    /// Milliseconds since [`Members::epoch`] until which the member is passed over.
    paused_until: AtomicU64,
    /// Failures since the member last answered.
    failures: AtomicU32,
}

/// The members of the cluster, as its endpoints name them.
pub(super) struct Members {
    members: Vec<Member>,
    next: AtomicUsize,
    epoch: Instant,
}

impl Members {
    /// One lazily connected channel per endpoint (`endpoints` is not empty: the options say
    /// so).
    pub(super) fn new(endpoints: Vec<Endpoint>) -> Arc<Self> {
        let members = endpoints
            .into_iter()
            .map(|e| Member {
                channel: e.connect_lazy(),
                paused_until: AtomicU64::new(0),
                failures: AtomicU32::new(0),
            })
            .collect();
        Arc::new(Self { members, next: AtomicUsize::new(0), epoch: Instant::now() })
    }

    /// How many members (endpoints) there are.
    pub(super) fn len(&self) -> usize {
        self.members.len()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(Instant::now().saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// The member for the next request: the next one in turn that is not passed over, else
    /// the one whose pause ends first.
    pub(super) fn pick(self: &Arc<Self>) -> Picked {
        let n = self.members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let mut best = start % n;
        for i in 0..n {
            let idx = (start + i) % n;
            let until = self.members[idx].paused_until.load(Ordering::Relaxed);
            if until <= now {
                best = idx;
                break;
            }
            if until < self.members[best].paused_until.load(Ordering::Relaxed) {
                best = idx;
            }
        }
        Picked { members: self.clone(), idx: best }
    }

    fn answered(&self, idx: usize) {
        let m = &self.members[idx];
        if m.failures.load(Ordering::Relaxed) != 0 {
            m.failures.store(0, Ordering::Relaxed);
            m.paused_until.store(0, Ordering::Relaxed);
        }
    }

    fn failed(&self, idx: usize) {
        let m = &self.members[idx];
        // Requests in flight together that fail together count once: a pause grows only by a
        // failure after it ended.
        if m.paused_until.load(Ordering::Relaxed) > self.now_ms() {
            return;
        }
        let failures = m.failures.fetch_add(1, Ordering::Relaxed).min(16);
        let pause = FIRST_PAUSE.saturating_mul(1 << failures).min(MAX_PAUSE);
        let pause = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX);
        m.paused_until.store(self.now_ms().saturating_add(pause), Ordering::Relaxed);
    }

    /// Whether `idx` is passed over now.
    #[cfg(test)]
    fn paused(&self, idx: usize) -> bool {
        self.members[idx].paused_until.load(Ordering::Relaxed) > self.now_ms()
    }
}

/// A member picked for a request (or a stream): told how it went with [`Picked::outcome`],
/// or with [`Picked::unanswered`] when the caller gave up waiting.
#[derive(Clone)]
pub(super) struct Picked {
    members: Arc<Members>,
    idx: usize,
}

impl std::fmt::Debug for Picked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Member").field(&self.idx).finish()
    }
}

impl Picked {
    pub(super) fn channel(&self) -> Channel {
        self.members.members[self.idx].channel.clone()
    }

    /// Records a request's result: a member that did not answer in time, or could not be
    /// reached (`Unavailable` from the transport: refused, reset), is passed over; one that
    /// answered is taken again. An answer from etcd itself (`etcdserver: …`, such as "leader
    /// changed" or "request timed out" while the cluster elects a leader) speaks for the whole
    /// cluster, not the member: it leaves the member as it was; except "no leader", which a
    /// member cut off from the others says while the others may have one.
    pub(super) fn outcome<T>(&self, r: &std::result::Result<T, Status>) {
        match r {
            Err(s) if s.message().starts_with("etcdserver:") && !s.message().contains("no leader") => {}
            Err(s) if matches!(s.code(), Code::DeadlineExceeded | Code::Unavailable) => self.unanswered(),
            _ => self.members.answered(self.idx),
        }
    }

    /// The member left a request (or a stream) unanswered: passed over for a while.
    pub(super) fn unanswered(&self) {
        self.members.failed(self.idx);
    }
}

/// Records a request given up by its caller (dropped) before it was answered, once it had
/// waited [`UNANSWERED_AFTER`].
pub(super) struct InFlight<'a> {
    picked: &'a Picked,
    sent: Instant,
    done: bool,
}

impl<'a> InFlight<'a> {
    pub(super) fn new(picked: &'a Picked) -> Self {
        Self { picked, sent: Instant::now(), done: false }
    }

    pub(super) fn done<T>(mut self, r: &std::result::Result<T, Status>) {
        self.done = true;
        self.picked.outcome(r);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done && self.sent.elapsed() >= UNANSWERED_AFTER {
            self.picked.unanswered();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Arc<Members> {
        let eps = (0..n)
            .map(|i| Endpoint::from_shared(format!("http://127.0.0.1:{}", 1 + i)).expect("uri"))
            .collect();
        Members::new(eps)
    }

    #[tokio::test]
    async fn members_are_taken_in_turn() {
        let m = members(3);
        let got: Vec<usize> = (0..6).map(|_| m.pick().idx).collect();
        assert_eq!(got, [0, 1, 2, 0, 1, 2]);
    }

    #[tokio::test]
    async fn a_member_that_timed_out_is_passed_over_until_it_answers() {
        let m = members(3);
        let p = Picked { members: m.clone(), idx: 1 };
        p.outcome::<()>(&Err(Status::deadline_exceeded("slow")));
        assert!(m.paused(1));
        let got: Vec<usize> = (0..6).map(|_| m.pick().idx).collect();
        assert!(!got.contains(&1), "a paused member was picked: {got:?}");
        p.outcome::<()>(&Err(Status::not_found("gone")));
        assert!(!m.paused(1), "a member that answered is still passed over");
    }

    #[tokio::test]
    async fn when_every_member_is_paused_the_first_to_come_back_serves() {
        let m = members(2);
        Picked { members: m.clone(), idx: 1 }.unanswered();
        // Member 0 passed over for longer (a second failure after its first pause).
        m.members[0].paused_until.store(m.now_ms() + 5_000, Ordering::Relaxed);
        assert!((0..4).all(|_| m.pick().idx == 1));
        let one = members(1);
        Picked { members: one.clone(), idx: 0 }.unanswered();
        assert_eq!(one.pick().idx, 0);
    }

    #[tokio::test]
    async fn pauses_double_up_to_a_bound() {
        let m = members(1);
        let p = Picked { members: m.clone(), idx: 0 };
        let mut last = 0;
        for _ in 0..40 {
            // Each failure after the previous pause ended.
            m.members[0].paused_until.store(0, Ordering::Relaxed);
            p.unanswered();
            let until = m.members[0].paused_until.load(Ordering::Relaxed) - m.now_ms();
            assert!(until >= last.min(29_000), "pauses shrank: {until} after {last}");
            assert!(until <= 30_000, "a pause of {until} ms");
            last = until;
        }
        assert!(last >= 29_000, "pauses did not grow to the bound: {last} ms");
    }

    #[tokio::test]
    async fn failures_together_count_once_and_cluster_answers_not_at_all() {
        let m = members(2);
        let p = Picked { members: m.clone(), idx: 0 };
        for _ in 0..10 {
            p.unanswered();
        }
        let until = m.members[0].paused_until.load(Ordering::Relaxed) - m.now_ms();
        assert!(until <= 1_000, "ten failures at once paused the member for {until} ms");
        let q = Picked { members: m.clone(), idx: 1 };
        q.outcome::<()>(&Err(Status::unavailable("etcdserver: leader changed")));
        assert!(!m.paused(1), "a cluster-wide answer paused the member");
        q.outcome::<()>(&Err(Status::unavailable("tcp connect error")));
        assert!(m.paused(1), "a refused connection did not pause the member");
    }

    #[tokio::test]
    async fn a_request_dropped_unanswered_pauses_its_member() {
        let m = members(2);
        let p = m.pick();
        drop(InFlight::new(&p));
        assert!(!m.paused(p.idx), "a request dropped at once paused its member");
        let f = InFlight { picked: &p, sent: Instant::now() - UNANSWERED_AFTER, done: false };
        drop(f);
        assert!(m.paused(p.idx));
    }
}
