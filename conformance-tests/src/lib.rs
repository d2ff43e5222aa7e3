//! # conformance-tests: the distlock behaviour suite
//!
//! One `pub async fn` per behaviour in [`checks`], each checking one promise of distlock's
//! design against a real backend, and one entry point that runs them all:
//!
//! ```no_run
//! use conformance_tests::Suite;
//! use lock_core::LockClient;
//!
//! # async fn demo() {
//! let store = lock_local::MemoryBackend::new();
//! Suite::new("memory", move || {
//!     let store = store.clone();
//!     async move { Ok(LockClient::new(store)) }
//! })
//! .run()
//! .await;
//! # }
//! ```
//!
//! or, generating the `#[test]` itself, [`conformance_suite!`].
//!
//! The factory is called once per client the checks need (several checks use two or more
//! clients, as separate processes would). Each check uses its own keys, so checks run
//! concurrently. The run prints each check's result and every skip with its reason, and
//! panics if any check failed.
//!
//! ## Environment
//! - `DISTLOCK_CONFORMANCE_FILTER=substr`: run only checks whose name contains `substr`.
//! - `DISTLOCK_CONFORMANCE_CONCURRENCY=n`: checks run at once (default 6, or the suite's
//!   [`Suite::concurrency`]).
//! - `DISTLOCK_TEST_<BACKEND>_URL`: see [`fixtures`]: point the backend tests at servers you
//!   already run instead of starting them.
//!
//! ## Writing a backend
//! See `WRITING_A_BACKEND.md` at the root of the repository.

use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use lock_core::{Capabilities, Guard, LockClient};

pub mod checks;
pub mod fixtures;
pub mod history;
pub mod props;

pub use checks::{Check, CHECKS};

/// Makes a new client, as a new process would.
pub type ClientFactory = Arc<dyn Fn() -> BoxFuture<'static, lock_core::Result<LockClient>> + Send + Sync>;

/// Makes a holder vanish as if its process crashed: no release, no renewal, no graceful
/// session close. Gets the client that holds the lock and the guard.
pub type CrashFn = Arc<dyn Fn(LockClient, Guard) -> BoxFuture<'static, ()> + Send + Sync>;

/// Ends a client's session on the server while the client lives on, as a pause of its process
/// longer than the session timeout would: the client stops keeping the session alive, and the
/// future resolves once the server has expired it (so the client's next request learns so).
pub type ExpireFn = Arc<dyn Fn(LockClient) -> BoxFuture<'static, ()> + Send + Sync>;

/// Which hooks a suite has: what decides, beside the capabilities, whether a check applies.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hooks {
    /// [`Suite::crash_with`] was given.
    pub crash: bool,
    /// [`Suite::expire_with`] was given.
    pub expire: bool,
}

/// Why a check failed.
#[derive(Debug)]
pub struct Failure(pub String);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<lock_core::Error> for Failure {
    fn from(e: lock_core::Error) -> Self {
        Failure(format!("unexpected error: {e} ({e:?})"))
    }
}

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Failure(s)
    }
}

/// The result of one check.
pub type CheckResult = Result<(), Failure>;

/// Fails the check with a formatted message unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::Failure(format!($($fmt)+)));
        }
    };
}

/// A backend under test: how to make clients, and how to crash a holder.
#[derive(Clone)]
pub struct Suite {
    name: String,
    factory: ClientFactory,
    crash: Option<CrashFn>,
    expire: Option<ExpireFn>,
    skip: Vec<(String, String)>,
    only: Vec<String>,
    concurrency: usize,
}

impl std::fmt::Debug for Suite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Suite").field("name", &self.name).field("crash_hook", &self.crash.is_some()).finish()
    }
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    /// Checks that passed, with their durations.
    pub passed: Vec<(&'static str, Duration)>,
    /// Checks skipped, with the reason.
    pub skipped: Vec<(&'static str, String)>,
    /// Checks that failed, with the failure.
    pub failed: Vec<(&'static str, String)>,
}

impl Suite {
    /// A suite for the backend called `name`, whose clients `factory` makes.
    pub fn new<F, Fut>(name: &str, factory: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = lock_core::Result<LockClient>> + Send + 'static,
    {
        Self {
            name: name.to_owned(),
            factory: Arc::new(move || factory().boxed()),
            crash: None,
            expire: None,
            skip: Vec::new(),
            only: Vec::new(),
            concurrency: 6,
        }
    }

    /// How many checks run at once (default 6). Lower it for a server that applies requests
    /// one at a time (an emulator), so that queueing at the server does not eat the checks'
    /// time margins. `DISTLOCK_CONFORMANCE_CONCURRENCY` overrides it.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// How to crash a holder. Without it, a crash is simulated by detaching the guard (no
    /// release, no renewal) and dropping the client, which is exact for backends whose leases
    /// belong to each lock; session-based backends must supply a hook that kills the session
    /// without closing it, or the crash checks are skipped.
    pub fn crash_with<F, Fut>(mut self, crash: F) -> Self
    where
        F: Fn(LockClient, Guard) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.crash = Some(Arc::new(move |c, g| crash(c, g).boxed()));
        self
    }

    /// How to end a client's session on the server while the client lives on (session
    /// backends): the session forms of the expiry, stale-holder and loss checks use it in place
    /// of a lock's TTL running out. Without it those checks are skipped on a session backend,
    /// with that reason printed.
    pub fn expire_with<F, Fut>(mut self, expire: F) -> Self
    where
        F: Fn(LockClient) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.expire = Some(Arc::new(move |c| expire(c).boxed()));
        self
    }

    /// Runs only the named check (call again to add more); for a test of one check.
    pub fn only(mut self, check: &str) -> Self {
        self.only.push(check.to_owned());
        self
    }

    /// The hooks this suite has.
    pub fn hooks(&self) -> Hooks {
        Hooks { crash: self.crash.is_some(), expire: self.expire.is_some() }
    }

    /// Skips one check by name, with a reason that is printed. Use it only for what the
    /// backend documents it does not do.
    pub fn skip(mut self, check: &str, reason: &str) -> Self {
        self.skip.push((check.to_owned(), reason.to_owned()));
        self
    }

    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A new client from the factory.
    ///
    /// # Errors
    /// Whatever the factory returns: an unreachable backend is an error, never a skip.
    pub async fn client(&self) -> lock_core::Result<LockClient> {
        (self.factory)().await
    }

    /// Runs every check, prints the report, and panics if any check failed, the backend
    /// could not be reached, or the filters matched no check at all.
    pub async fn run(self) -> Report {
        let report = self.run_report().await;
        let mut out = std::io::stderr().lock();
        let _ = writeln!(
            out,
            "conformance[{}]: {} passed, {} failed, {} skipped",
            self.name,
            report.passed.len(),
            report.failed.len(),
            report.skipped.len()
        );
        drop(out);
        if report.passed.is_empty() && report.failed.is_empty() && report.skipped.is_empty() {
            // A filter that matches no check (a typo in `only`, a stray
            // DISTLOCK_CONFORMANCE_FILTER) must not look like a pass.
            panic!(
                "conformance[{}]: the filter matched no check: a run that checks nothing passes nothing",
                self.name
            );
        }
        if !report.failed.is_empty() {
            let list: Vec<String> = report.failed.iter().map(|(n, e)| format!("  {n}: {e}")).collect();
            panic!(
                "conformance[{}]: {} check(s) failed:\n{}",
                self.name,
                report.failed.len(),
                list.join("\n")
            );
        }
        report
    }

    /// Runs every check and returns the report without panicking (prints as it goes).
    pub async fn run_report(&self) -> Report {
        let mut report = Report::default();
        let first = match self.client().await {
            Ok(c) => c,
            Err(e) => {
                report
                    .failed
                    .push(("connect", format!("the {} backend could not be reached: {e}", self.name)));
                return report;
            }
        };
        let caps = first.capabilities().clone();
        drop(first);
        let filter = std::env::var("DISTLOCK_CONFORMANCE_FILTER").ok().filter(|f| !f.is_empty());
        let concurrency = std::env::var("DISTLOCK_CONFORMANCE_CONCURRENCY")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(self.concurrency);
        let run_id = format!("{:08x}", rand_u32());

        let mut todo = Vec::new();
        for check in CHECKS {
            if !self.only.is_empty() && !self.only.iter().any(|n| n == check.name) {
                continue;
            }
            if let Some(f) = &filter {
                if !check.name.contains(f.as_str()) {
                    continue;
                }
            }
            if let Some((_, why)) = self.skip.iter().find(|(n, _)| n == check.name) {
                report.skipped.push((check.name, format!("skipped by the backend's suite: {why}")));
                continue;
            }
            if let Err(why) = (check.applies)(&caps, self.hooks()) {
                report.skipped.push((check.name, why));
                continue;
            }
            todo.push(check);
        }
        for (name, why) in &report.skipped {
            let _ = writeln!(std::io::stderr(), "conformance[{}]: SKIP {name}: {why}", self.name);
        }

        let results: Vec<(&'static str, Duration, CheckResult)> = futures::stream::iter(todo)
            .map(|check| {
                let ctx = Ctx {
                    suite: self.clone(),
                    caps: caps.clone(),
                    prefix: format!("conformance/{run_id}/{}", check.name),
                };
                async move {
                    let start = Instant::now();
                    let fut = (check.run)(ctx);
                    let res = match tokio::time::timeout(Duration::from_secs(120), tokio::spawn(fut)).await {
                        Ok(Ok(r)) => r,
                        Ok(Err(join)) => Err(Failure(format!("check panicked: {}", panic_message(join)))),
                        Err(_) => Err(Failure("check did not finish within 120 s".into())),
                    };
                    (check.name, start.elapsed(), res)
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;

        for (name, took, res) in results {
            let mut out = std::io::stderr().lock();
            match res {
                Ok(()) => {
                    let _ =
                        writeln!(out, "conformance[{}]: ok   {name} ({:.2}s)", self.name, took.as_secs_f64());
                    report.passed.push((name, took));
                }
                Err(f) => {
                    let _ = writeln!(out, "conformance[{}]: FAIL {name}: {f}", self.name);
                    report.failed.push((name, f.0));
                }
            }
        }
        report
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "non-string panic".into()),
        Err(e) => e.to_string(),
    }
}

fn rand_u32() -> u32 {
    let u = uuid::Uuid::new_v4();
    (u.as_u128() & 0xffff_ffff) as u32
}

/// What a check gets: the suite, the backend's capabilities and its own key prefix.
#[derive(Clone)]
pub struct Ctx {
    suite: Suite,
    /// The backend's capabilities.
    pub caps: Capabilities,
    prefix: String,
}

impl Ctx {
    /// A key name unique to this check and run.
    pub fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix)
    }

    /// A new client (as a separate process would have).
    ///
    /// # Errors
    /// The factory's error.
    pub async fn client(&self) -> Result<LockClient, Failure> {
        self.suite.client().await.map_err(|e| Failure(format!("could not make a client: {e}")))
    }

    /// Makes the holder vanish as a crashed process would: the suite's crash hook, or
    /// detach + drop.
    pub async fn crash(&self, client: LockClient, guard: Guard) {
        match &self.suite.crash {
            Some(f) => f(client, guard).await,
            None => {
                let _ = guard.detach();
                drop(client);
            }
        }
    }

    /// Ends `client`'s session on the server (the suite's expire hook) and waits until the
    /// server has expired it. Only called by checks that apply when the hook exists.
    pub async fn expire(&self, client: LockClient) {
        if let Some(f) = &self.suite.expire {
            f(client).await;
        }
    }

    /// Whether leases belong to a session (the session forms of the checks apply).
    pub fn session(&self) -> bool {
        self.caps.session_leases
    }

    /// The lease that bounds a lock taken with `ttl`: the session timeout on a session backend,
    /// the TTL otherwise.
    pub fn lease_length(&self, ttl: Duration) -> Duration {
        match (self.caps.session_leases, self.caps.session_timeout) {
            (true, Some(s)) => s,
            // A session backend that does not state its timeout: assume the longest usual one.
            (true, None) => Duration::from_secs(10),
            _ => ttl,
        }
    }

    /// A short TTL the backend accepts: at least 1 s (so a loaded machine does not expire
    /// locks by accident), rounded up to the backend's minimum and granularity.
    pub fn short_ttl(&self) -> Duration {
        round_up(Duration::from_secs(1).max(self.caps.min_ttl), self.caps.ttl_granularity)
    }

    /// The TTL of the crash checks: longer than what they allow beyond the crash bound (the
    /// wake bound and the slack, 2.5 s with notifications), so that a backend keeping a
    /// crashed grant for twice its lease fails them.
    pub fn crash_ttl(&self) -> Duration {
        self.short_ttl() * 4
    }

    /// A TTL long enough that it never runs out during a check.
    pub fn long_ttl(&self) -> Duration {
        round_up(Duration::from_secs(60).max(self.caps.min_ttl), self.caps.ttl_granularity)
    }

    /// Extra time allowed beyond a bound on a loaded 2-core machine.
    pub fn slack(&self) -> Duration {
        Duration::from_millis(1500)
    }

    /// How long a waiter may take to notice a release: immediate with notifications, one
    /// polling interval without.
    pub fn wake_bound(&self) -> Duration {
        let base = match self.caps.wake {
            lock_core::WakeMode::Notify => Duration::ZERO,
            lock_core::WakeMode::Poll { max_interval } => max_interval,
            _ => Duration::from_secs(1),
        };
        base + Duration::from_millis(1000)
    }
}

fn round_up(d: Duration, step: Duration) -> Duration {
    if step.is_zero() {
        return d;
    }
    let n = d.as_nanos().div_ceil(step.as_nanos());
    Duration::from_nanos((n * step.as_nanos()).min(u64::MAX as u128) as u64)
}

/// Runs the whole suite on a fresh multi-threaded runtime; what [`conformance_suite!`] calls.
/// `make` may be async (start servers first).
pub fn block_on_suite<F: Future<Output = Suite>>(make: impl FnOnce() -> F) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime for the conformance suite");
    rt.block_on(async move { make().await.run().await });
}

/// Generates a `#[test]` that runs the whole suite for one backend. The second argument is an
/// expression of type [`Suite`]; it is evaluated inside an async block, so it may `.await`
/// (to start a server fixture first).
///
/// ```ignore
/// conformance_tests::conformance_suite!(memory_backend, {
///     let store = lock_local::MemoryBackend::new();
///     conformance_tests::Suite::new("memory", move || {
///         let store = store.clone();
///         async move { Ok(lock_core::LockClient::new(store)) }
///     })
/// });
/// ```
#[macro_export]
macro_rules! conformance_suite {
    ($test_name:ident, $suite:expr) => {
        #[test]
        fn $test_name() {
            $crate::block_on_suite(|| async { $suite });
        }
    };
}
