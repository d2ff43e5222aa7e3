//! The worker processes: the harness's own binary re-executed as `distlock-chaos worker`,
//! one per slot. A killed worker's slot gets a new incarnation. Every worker is killed when
//! the pool is dropped (and by the kernel if the controller dies: `PR_SET_PDEATHSIG`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal};
use tokio::process::{Child, Command};

use crate::error::{ChaosError, Result};
use crate::worker::WorkerArgs;

/// Sends `sig` to process `pid`; a process that is already gone is not an error.
pub fn signal(pid: u32, sig: Signal) {
    if let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(p, sig);
    }
}

#[derive(Debug)]
struct Slot {
    child: Option<Child>,
    inc: u32,
    pid: u32,
    paused: bool,
}

/// The worker processes of one scenario.
#[derive(Debug)]
pub struct Pool {
    template: WorkerArgs,
    urls: Vec<String>,
    dir: PathBuf,
    slots: Vec<Slot>,
    /// Worker exits that were not clean (slot, incarnation, status), for the report.
    pub failures: Vec<String>,
}

impl Pool {
    /// Starts one worker per URL from `template` (its URL, slot, incarnation, history path and
    /// seed are set per worker); histories and logs go to `dir`.
    ///
    /// # Errors
    /// When a worker cannot be started.
    pub fn start(template: WorkerArgs, urls: Vec<String>, dir: PathBuf) -> Result<Self> {
        let n = u32::try_from(urls.len()).map_err(|_| ChaosError::Config("too many workers".into()))?;
        let mut pool = Self { template, urls, dir, slots: Vec::new(), failures: Vec::new() };
        for slot in 0..n {
            let s = pool.spawn(slot, 0)?;
            pool.slots.push(s);
        }
        Ok(pool)
    }

    fn spawn(&self, slot: u32, inc: u32) -> Result<Slot> {
        let mut args = self.template.clone();
        args.url = self.urls.get(slot as usize).cloned().unwrap_or_default();
        args.slot = slot;
        args.inc = inc;
        args.history = self.dir.join(format!("w{slot}.{inc}.jsonl"));
        args.seed = self.template.seed ^ (u64::from(slot) << 32) ^ u64::from(inc);
        let exe = std::env::current_exe().map_err(|e| ChaosError::io("find the harness binary", e))?;
        let log_path = self.dir.join(format!("w{slot}.{inc}.log"));
        let log = std::fs::File::create(&log_path)
            .map_err(|e| ChaosError::io(format!("create {}", log_path.display()), e))?;
        let child = Command::new(exe)
            .arg("worker")
            .args(args.to_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ChaosError::io("start a worker", e))?;
        let pid = child.id().unwrap_or(0);
        Ok(Slot { child: Some(child), inc, pid, paused: false })
    }

    /// The number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are no slots.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The current incarnation and pid of `slot`.
    pub fn current(&self, slot: u32) -> Option<(u32, u32)> {
        self.slots.get(slot as usize).map(|s| (s.inc, s.pid))
    }

    /// Freezes `slot`'s worker (SIGSTOP), if `pid` is still its process.
    pub fn pause(&mut self, slot: u32, pid: u32) {
        if let Some(s) = self.slots.get_mut(slot as usize).filter(|s| s.pid == pid) {
            signal(pid, Signal::STOP);
            s.paused = true;
        }
    }

    /// Notes that `slot`'s worker was frozen by someone else (the register's armed action).
    pub fn mark_paused(&mut self, slot: u32, pid: u32) {
        if let Some(s) = self.slots.get_mut(slot as usize).filter(|s| s.pid == pid) {
            s.paused = true;
        }
    }

    /// Thaws every frozen worker.
    pub fn resume_all(&mut self) {
        for s in &mut self.slots {
            if s.paused {
                signal(s.pid, Signal::CONT);
                s.paused = false;
            }
        }
    }

    /// Kills `slot`'s worker if `pid` is still its process (it may already be dead), reaps it
    /// and starts the next incarnation.
    ///
    /// # Errors
    /// When the replacement cannot be started.
    pub async fn replace(&mut self, slot: u32, pid: u32) -> Result<()> {
        let i = slot as usize;
        if self.slots.get(i).is_none_or(|s| s.pid != pid) {
            return Ok(());
        }
        if let Some(mut child) = self.slots[i].child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        let next = self.slots[i].inc + 1;
        self.slots[i] = self.spawn(slot, next)?;
        Ok(())
    }

    /// Thaws everyone and waits until every worker has exited, at most `limit`; kills those
    /// still running then (noted in [`Pool::failures`]).
    pub async fn finish(&mut self, limit: Duration) {
        self.resume_all();
        let deadline = tokio::time::Instant::now() + limit;
        for (i, s) in self.slots.iter_mut().enumerate() {
            let Some(mut child) = s.child.take() else { continue };
            match tokio::time::timeout_at(deadline, child.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => self.failures.push(format!("worker {i}.{} exited with {status}", s.inc)),
                Ok(Err(e)) => self.failures.push(format!("worker {i}.{}: {e}", s.inc)),
                Err(_) => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    self.failures.push(format!("worker {i}.{} did not stop by its deadline; killed", s.inc));
                }
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for s in &mut self.slots {
            if let Some(c) = s.child.as_mut() {
                // SIGKILL works on a stopped process too.
                let _ = c.start_kill();
            }
        }
    }
}
