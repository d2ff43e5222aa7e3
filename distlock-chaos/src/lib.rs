//! # distlock-chaos: a Jepsen-style fault harness for every distlock backend
//!
//! Real processes, real servers, and a checker that can fail. One run starts each backend's
//! servers with the conformance fixtures (one or three Redis nodes, a three-member etcd
//! cluster, a three-server ZooKeeper ensemble, moto; a directory for the file backend), then,
//! per scenario (backend × nemesis family):
//!
//! 1. **Workers**: at least five OS processes, this binary re-executed as
//!    `distlock-chaos worker …` ([`worker`]), each with its own `distlock::connect(url)`
//!    client reaching the servers through its own loopback proxies ([`proxy`]). They contend
//!    for one lock; under it each reads the registers, waits 0–2× the backend's request
//!    latency, and writes back its own element with its fencing token (the lock-set
//!    workload).
//! 2. **Registers** ([`register`]), served by the controller: *fenced* (every request carries
//!    the token; lower tokens are rejected, reads included), *write-fenced* (only writes
//!    checked) and *unfenced* (the control).
//! 3. **History** ([`record`]): every operation's invoke and completion on `CLOCK_MONOTONIC`,
//!    the one clock all processes share ([`clock`]); the registers log what they applied.
//! 4. **Nemesis** ([`nemesis`]), on a schedule: pause or kill the holder, pause/kill/restart
//!    servers (with and without persistence, from an older snapshot, a Redlock minority, the
//!    etcd and ZooKeeper leaders, moto), partition a holder (both ways, one way), slow links,
//!    step a Redis node's clock ([`clockshim`]).
//! 5. **Checker** ([`checker`]): fencing (must hold, always), tokens, server-side exclusion
//!    (with the explicit expected-violation list of [`scenarios::EXPECTED`]), takeover after
//!    a kill against `Capabilities::crash_bound`, and whether the nemesis was strong enough.
//! 6. **Report** ([`report`]): `RESULTS.md` and `results.json`.
//!
//! `cargo run -p distlock-chaos -- --quick` is the CI run; `--scenario NAME --seed N`
//! reproduces one scenario; `--list` names them all.

pub mod broken;
pub mod checker;
pub mod clock;
pub mod clockshim;
pub mod controller;
pub mod error;
pub mod nemesis;
pub mod pool;
pub mod proxy;
pub mod record;
pub mod register;
pub mod report;
pub mod run;
pub mod scenarios;
pub mod servers;
pub mod worker;
