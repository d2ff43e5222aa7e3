//! A worker process: `distlock-chaos worker …`, started by the controller, one of the
//! contenders. It connects its own client with `distlock::connect(url)` and loops until its
//! deadline: acquire the lock; read the registers; wait a random 0–2× the backend's request
//! latency (under network and server faults, one grant in eight: until a tenth of its
//! validity is left); write the registers back with its element and its fencing token; release. Every
//! step is recorded before and after in its own history file. The kernel kills it if the
//! controller dies (`PR_SET_PDEATHSIG`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use distlock::{Error, LockClient, ReleaseOutcome};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::broken::{Breakage, Broken};
use crate::clock::{instant_at, mono_ns, ns};
use crate::error::{ChaosError, Result};
use crate::record::{HistoryWriter, OpKind, Phase, Record, RegOutcome, RegResult};
use crate::register::RegisterClient;

/// The worker's command line (the controller builds it with [`WorkerArgs::to_args`]).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// The backend URL (`distlock::connect`).
    #[arg(long)]
    pub url: String,
    /// The lock's name.
    #[arg(long)]
    pub key: String,
    /// This worker's slot.
    #[arg(long)]
    pub slot: u32,
    /// Its incarnation.
    #[arg(long)]
    pub inc: u32,
    /// The register server.
    #[arg(long)]
    pub register: SocketAddr,
    /// The history file to append to.
    #[arg(long)]
    pub history: PathBuf,
    /// The lock's TTL, in milliseconds.
    #[arg(long)]
    pub ttl_ms: u64,
    /// How long one acquire may wait, in milliseconds.
    #[arg(long)]
    pub wait_ms: u64,
    /// Stop starting operations at this monotonic time (ns).
    #[arg(long)]
    pub deadline_ns: u64,
    /// The backend's request latency, in microseconds (the critical section waits 0–2× it).
    #[arg(long)]
    pub latency_us: u64,
    /// The longest pause between rounds, in milliseconds.
    #[arg(long)]
    pub think_ms: u64,
    /// One grant in this many is held until a tenth of its validity is left (0: none).
    #[arg(long, default_value_t = 0)]
    pub long_hold_one_in: u32,
    /// Worker slot 0 takes a grant with auto-renewal and holds it for one and a half TTLs
    /// (so that it lives on renewals alone) once in this many milliseconds, the first half
    /// of that after it starts (0: never). Rare, so that the other workers' many short
    /// holds still make up most of the run.
    #[arg(long, default_value_t = 0)]
    pub renewed_hold_every_ms: u64,
    /// Random seed.
    #[arg(long)]
    pub seed: u64,
    /// The controller's process id (the worker exits at once if it is no longer its parent).
    #[arg(long)]
    pub parent: u32,
    /// Use a deliberately broken lock (the harness's own test: the run must fail).
    #[arg(long, value_enum)]
    pub broken: Option<Breakage>,
}

impl WorkerArgs {
    /// The arguments after `worker` that reproduce these.
    pub fn to_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        let mut put = |k: &str, val: String| {
            v.push(format!("--{k}"));
            v.push(val);
        };
        put("url", self.url.clone());
        put("key", self.key.clone());
        put("slot", self.slot.to_string());
        put("inc", self.inc.to_string());
        put("register", self.register.to_string());
        put("history", self.history.display().to_string());
        put("ttl-ms", self.ttl_ms.to_string());
        put("wait-ms", self.wait_ms.to_string());
        put("deadline-ns", self.deadline_ns.to_string());
        put("latency-us", self.latency_us.to_string());
        put("think-ms", self.think_ms.to_string());
        put("long-hold-one-in", self.long_hold_one_in.to_string());
        put("renewed-hold-every-ms", self.renewed_hold_every_ms.to_string());
        put("seed", self.seed.to_string());
        put("parent", self.parent.to_string());
        if let Some(b) = self.broken {
            let value = clap::ValueEnum::to_possible_value(&b).map(|v| v.get_name().to_owned());
            put("broken", value.unwrap_or_default());
        }
        v
    }
}

/// Runs a worker to its deadline.
///
/// # Errors
/// When the history or the register cannot be used (the backend's own errors are recorded,
/// not returned).
pub fn run(args: WorkerArgs) -> Result<()> {
    // Die with the controller; if it is already gone, stop now.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(|e| ChaosError::io("prctl(PR_SET_PDEATHSIG)", e.into()))?;
    let parent = rustix::process::getppid().map(|p| p.as_raw_nonzero().get());
    if parent.and_then(|p| u32::try_from(p).ok()) != Some(args.parent) {
        return Err(ChaosError::Config("the controller is gone".into()));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ChaosError::io("start the worker runtime", e))?;
    rt.block_on(work(args))
}

struct Worker {
    a: WorkerArgs,
    hist: HistoryWriter,
    reg: RegisterClient,
    rng: StdRng,
    n: u64,
    /// When slot 0 next takes a grant with auto-renewal (monotonic ns; `None`: never).
    next_renewed: Option<u64>,
}

async fn work(a: WorkerArgs) -> Result<()> {
    let hist = HistoryWriter::open(&a.history)?;
    let reg = RegisterClient::connect(a.register, a.slot, a.inc).await?;
    let Some(client) = connect(&a).await? else {
        eprintln!("worker {}.{}: the deadline passed before the backend could be reached", a.slot, a.inc);
        return Ok(());
    };
    let rng = StdRng::seed_from_u64(a.seed);
    let every = ns(Duration::from_millis(a.renewed_hold_every_ms));
    // The first after the quick run's first fault (2-4 s in).
    let next_renewed = (a.slot == 0 && every > 0).then(|| mono_ns() + every / 2);
    let mut me = Worker { a, hist, reg, rng, n: 0, next_renewed };
    while mono_ns() < me.a.deadline_ns {
        me.round(&client).await?;
        let think = me.rng.random_range(0..=me.a.think_ms);
        tokio::time::sleep(Duration::from_millis(think)).await;
    }
    Ok(())
}

/// Connects, retrying until the deadline (a server may be down or paused, or the worker cut
/// off, when a replacement starts); `None` if the deadline passed first.
async fn connect(a: &WorkerArgs) -> Result<Option<LockClient>> {
    loop {
        match distlock::connect(&a.url).await {
            Ok(c) => {
                // The broken lock wraps the backend alone: a URL's `namespace=` and `ttl=`
                // (client options) are not carried over; the harness's URLs use neither.
                return Ok(Some(match a.broken {
                    Some(how) => LockClient::from_arc(Arc::new(Broken::new(c.backend().clone(), how))),
                    None => c,
                }));
            }
            Err(e @ Error::InvalidConfig(_)) => return Err(e.into()),
            Err(_) if mono_ns() >= a.deadline_ns => return Ok(None),
            Err(e) => {
                eprintln!("worker {}.{}: connect failed, retrying: {e}", a.slot, a.inc);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The guard's `valid_until` on the monotonic clock, and the time left until it. The
/// monotonic clock is read first, so that any delay between the two readings shortens the
/// recorded promise instead of lengthening it.
fn promise(guard: &distlock::Guard) -> (u64, Duration) {
    let now = mono_ns();
    let left = guard.valid_until().saturating_duration_since(tokio::time::Instant::now());
    (now + ns(left), left)
}

fn kind_of(e: &Error) -> Phase {
    match e {
        Error::WaitTimedOut { .. } => Phase::Fail,
        _ => Phase::Info,
    }
}

impl Worker {
    fn invoke(&mut self, op: OpKind, token: Option<u64>, elem: Option<String>) -> Result<u64> {
        self.n += 1;
        let mut r = Record::new(self.a.slot, self.a.inc, self.n, op, Phase::Invoke, mono_ns());
        r.token = token;
        r.elem = elem;
        self.hist.record(&r)?;
        Ok(self.n)
    }

    fn complete(&mut self, n: u64, op: OpKind, phase: Phase, fill: impl FnOnce(&mut Record)) -> Result<()> {
        let mut r = Record::new(self.a.slot, self.a.inc, n, op, phase, mono_ns());
        fill(&mut r);
        self.hist.record(&r)
    }

    async fn round(&mut self, client: &LockClient) -> Result<()> {
        let ttl = Duration::from_millis(self.a.ttl_ms);
        let left = Duration::from_nanos(self.a.deadline_ns.saturating_sub(mono_ns()));
        let wait = left.min(Duration::from_millis(self.a.wait_ms)).max(Duration::from_millis(1));
        let renewed = self.next_renewed.is_some_and(|at| mono_ns() >= at);
        let n = self.invoke(OpKind::Acquire, None, None)?;
        let builder = client.lock(&self.a.key).ttl(ttl).wait(wait);
        let attempt = if renewed { builder.auto_renew().acquire() } else { builder.acquire() };
        let guard = match tokio::time::timeout(wait + Duration::from_secs(15), attempt).await {
            Ok(Ok(g)) => g,
            Ok(Err(e)) => {
                let phase = kind_of(&e);
                self.complete(n, OpKind::Acquire, phase, |r| r.err = Some(e.to_string()))?;
                if phase == Phase::Info {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                return Ok(());
            }
            Err(_) => {
                return self
                    .complete(n, OpKind::Acquire, Phase::Info, |r| r.err = Some("acquire hung".into()));
            }
        };
        if renewed {
            // Moved on only by a grant: a refused renewed acquire tries again next round.
            self.next_renewed = Some(mono_ns() + ns(Duration::from_millis(self.a.renewed_hold_every_ms)));
        }
        let token = u64::from(guard.fencing_token());
        let (valid_until, left) = promise(&guard);
        self.complete(n, OpKind::Acquire, Phase::Ok, |r| {
            r.token = Some(token);
            r.valid_until = Some(valid_until);
        })?;

        // The critical section: read, wait, write back.
        let n = self.invoke(OpKind::Read, Some(token), None)?;
        let read = if renewed { self.reg.read_renewed(token).await? } else { self.reg.read(token).await? };
        self.complete(n, OpKind::Read, Phase::Ok, |r| r.regs = Some(read))?;
        let pause = self.rng.random_range(0..=2 * self.a.latency_us);
        // Under network and server faults, some grants are held until a tenth of their validity
        // is left: the checker holds a grant to exclusion only until its release starts, and
        // brief holds alone would leave the rest of a lease (where a partition, a slow link or
        // a server restart bites) unchecked.
        let n = self.a.long_hold_one_in;
        let until = if renewed {
            // One and a half TTLs: the grant outlives its first validity on renewals alone.
            (mono_ns() + ns(ttl) * 3 / 2).min(self.a.deadline_ns.max(mono_ns()))
        } else if n > 0 && self.rng.random_ratio(1, n) {
            valid_until.saturating_sub(ns(left) / 10)
        } else {
            mono_ns() + pause * 1000
        };
        if renewed {
            // A guard that says it lost the lock ends the hold at once.
            tokio::select! {
                _ = tokio::time::sleep_until(instant_at(until)) => {}
                _ = guard.lost() => {}
            }
            // What the guard promises now: the checker holds the grant to exclusion until
            // then. A guard that says it lost the lock stops acting: no write-back.
            let n = self.invoke(OpKind::Renew, Some(token), None)?;
            let (promised, _) = promise(&guard);
            if !guard.is_held() {
                self.complete(n, OpKind::Renew, Phase::Fail, |r| r.err = Some("lost".into()))?;
                self.reg.end_hold().await?;
                return self.release(guard, token).await;
            }
            self.complete(n, OpKind::Renew, Phase::Ok, |r| {
                r.token = Some(token);
                r.valid_until = Some(promised);
            })?;
        } else {
            tokio::time::sleep_until(instant_at(until)).await;
        }
        let elem = format!("{}.{}.{}", self.a.slot, self.a.inc, self.n + 1);
        let bases = read.map(|x: RegResult| (x.outcome == RegOutcome::Ok).then_some(x.version));
        let n = self.invoke(OpKind::Write, Some(token), Some(elem.clone()))?;
        let written = self.reg.write(token, &elem, bases).await?;
        self.complete(n, OpKind::Write, Phase::Ok, |r| r.regs = Some(written))?;

        self.release(guard, token).await
    }

    async fn release(&mut self, guard: distlock::Guard, token: u64) -> Result<()> {
        let n = self.invoke(OpKind::Release, Some(token), None)?;
        match tokio::time::timeout(Duration::from_secs(15), guard.release()).await {
            Ok(Ok(ReleaseOutcome::Released)) => self.complete(n, OpKind::Release, Phase::Ok, |_| ()),
            Ok(Ok(_)) => self.complete(n, OpKind::Release, Phase::Fail, |r| r.err = Some("not held".into())),
            Ok(Err(e)) => self.complete(n, OpKind::Release, Phase::Info, |r| r.err = Some(e.to_string())),
            Err(_) => self.complete(n, OpKind::Release, Phase::Info, |r| r.err = Some("release hung".into())),
        }
    }
}
