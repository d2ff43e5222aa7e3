//! The shared registers, served by the controller on a loopback port with a line protocol.
//!
//! Three registers, each holding a list of elements (the lock-set workload: every grant
//! appends its own unique element by read-modify-write):
//!
//! - **fenced**: every request carries the holder's fencing token, reads included. The
//!   register keeps the highest token it has seen (its *fence*) and rejects a read or a write
//!   whose token is lower. This is the contract the checker holds it to, and the one that makes
//!   "acknowledged fenced updates lost" provably 0: a write that would overwrite an
//!   acknowledged update must be based on a read made before that update, and the register
//!   accepted that read, that update and that write only if their tokens are equal, i.e. the
//!   same grant. Fencing only writes is not enough: a holder with a lower token can read,
//!   then a newer holder reads, the old holder's write lands (its token is still the highest
//!   written), and the newer holder's write erases it.
//! - **write_fenced**: only writes carry the check (reads are free); measured to show the
//!   hole above, never asserted.
//! - **unfenced**: accepts everything; the control that shows what fencing prevents.
//!
//! Values travel by reference: a read answers the version it saw and its length, a write
//! names the version it read and the element it appends, and the register stores
//! `value(version) ++ [element]` as its new value. That is exactly what writing the whole list
//! back would do (a write based on an old version erases whatever was appended since), without
//! sending lists whose length grows with the run, so the register is never the bottleneck.
//!
//! Protocol (one line each way): `HELLO <slot> <incarnation> <pid>` → `OK`;
//! `READ <token>` → `R <f> <wf> <u>`; `WRITE <token> <element> <version|-> <version> <version>`
//! → `W <f> <wf> <u>`, where each answer is `<ok|stale|skipped>:<version>:<length>`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::clock::mono_ns;
use crate::error::{ChaosError, Result};
use crate::record::{Reg, RegOutcome, RegResult};

/// A worker that read the fenced register successfully: the current holder, as far as the
/// register can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    /// Worker slot.
    pub w: u32,
    /// Incarnation.
    pub inc: u32,
    /// Its process id.
    pub pid: u32,
    /// The token it read with.
    pub token: u64,
    /// When the read arrived (for a fault put on a renewed hold: when the fault was).
    pub at: u64,
}

/// What to do to the next holder that reads, before it gets its answer (so the fault lands
/// inside its critical section, between its read and its write).
pub type ArmAction = Box<dyn FnOnce(&Holder) + Send>;

/// One request as the register applied it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegEvent {
    /// When it was applied.
    pub t: u64,
    /// Worker slot.
    pub w: u32,
    /// Incarnation.
    pub inc: u32,
    /// Which register.
    pub reg: Reg,
    /// A write (else a read).
    pub write: bool,
    /// The token it carried.
    pub token: u64,
    /// Accepted or rejected.
    pub accepted: bool,
}

/// The registers' log and final values, for the checker.
#[derive(Debug, Clone, Default)]
pub struct RegisterLog {
    /// Every request, in the order applied.
    pub events: Vec<RegEvent>,
    /// The final value of each register, in [`Reg::ALL`] order.
    pub finals: [Vec<String>; 3],
}

#[derive(Debug, Default)]
struct RegState {
    fence: u64,
    /// (parent version, appended element, length); version 0 is the empty list.
    versions: Vec<(usize, Option<Arc<str>>, u64)>,
    current: usize,
}

impl RegState {
    fn new() -> Self {
        Self { fence: 0, versions: vec![(0, None, 0)], current: 0 }
    }

    fn value(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut v = self.current;
        while v != 0 {
            let (parent, elem, _) = &self.versions[v];
            if let Some(e) = elem {
                out.push(e.to_string());
            }
            v = *parent;
        }
        out.reverse();
        out
    }
}

struct Arm {
    action: ArmAction,
    tx: oneshot::Sender<Holder>,
    /// Not this worker (slot, incarnation).
    except: Option<(u32, u32)>,
}

#[derive(Default)]
struct Shared {
    regs: Vec<RegState>,
    log: Vec<RegEvent>,
    arm: Option<Arm>,
    /// The holder in a renewed hold (on auto-renewal), from its accepted read until its next
    /// request.
    renewed: Option<Holder>,
}

#[derive(Clone, Copy)]
struct Peer {
    w: u32,
    inc: u32,
    pid: u32,
}

/// The register server: a loopback listener, stopped on drop.
#[derive(Debug)]
pub struct RegisterServer {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("events", &self.log.len()).finish()
    }
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RegisterServer {
    /// Starts serving on a free loopback port.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start() -> Result<Self> {
        let listener =
            TcpListener::bind("127.0.0.1:0").await.map_err(|e| ChaosError::io("bind the register", e))?;
        let addr = listener.local_addr().map_err(|e| ChaosError::io("register address", e))?;
        let shared = Arc::new(Mutex::new(Shared {
            regs: (0..3).map(|_| RegState::new()).collect(),
            ..Shared::default()
        }));
        let s = shared.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                conns.spawn(serve(stream, s.clone()));
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(Self { addr, shared, task })
    }

    /// Where workers connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs `action` on the next worker whose fenced read is accepted, before answering it;
    /// the receiver then gets that holder. Replaces an earlier arm.
    pub fn arm(&self, action: ArmAction) -> oneshot::Receiver<Holder> {
        self.arm_except(action, None)
    }

    /// As [`RegisterServer::arm`], but not on worker `except` (slot, incarnation): the next
    /// *other* holder.
    pub fn arm_except(&self, action: ArmAction, except: Option<(u32, u32)>) -> oneshot::Receiver<Holder> {
        let (tx, rx) = oneshot::channel();
        lock(&self.shared).arm = Some(Arm { action, tx, except });
        rx
    }

    /// The holder whose renewed hold (a grant on auto-renewal) began with a read less than
    /// `within` ago and has not ended since (no write, no other read, no `END`, no fault armed
    /// on that read): a fault put on it now lands inside that hold, if the worker is still
    /// that process (the caller checks). Taken: each renewed hold is offered once.
    pub fn take_renewed(&self, within: Duration) -> Option<Holder> {
        let mut s = lock(&self.shared);
        let h = s.renewed.take()?;
        (mono_ns() < h.at.saturating_add(crate::clock::ns(within))).then_some(h)
    }

    /// Cancels an arm that has not fired.
    pub fn disarm(&self) {
        lock(&self.shared).arm = None;
    }

    /// The log so far and the current values.
    pub fn snapshot(&self) -> RegisterLog {
        let s = lock(&self.shared);
        let finals = [s.regs[0].value(), s.regs[1].value(), s.regs[2].value()];
        RegisterLog { events: s.log.clone(), finals }
    }
}

impl Drop for RegisterServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(stream: TcpStream, shared: Arc<Mutex<Shared>>) {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let mut peer = None;
    while let Ok(Some(line)) = lines.next_line().await {
        let reply = match handle(&line, &mut peer, &shared) {
            Ok(reply) => reply,
            Err(e) => format!("ERR {e}"),
        };
        if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
            return;
        }
    }
}

fn handle(line: &str, peer: &mut Option<Peer>, shared: &Mutex<Shared>) -> Result<String> {
    let parts: Vec<&str> = line.split_ascii_whitespace().collect();
    let num = |i: usize| -> Result<u64> {
        parts
            .get(i)
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| ChaosError::Protocol(format!("bad field {i} in '{line}'")))
    };
    match parts.first().copied() {
        Some("HELLO") => {
            let small =
                |i| num(i).and_then(|v| u32::try_from(v).map_err(|e| ChaosError::Protocol(e.to_string())));
            *peer = Some(Peer { w: small(1)?, inc: small(2)?, pid: small(3)? });
            Ok("OK".into())
        }
        Some("READ") => {
            let p = peer.ok_or_else(|| ChaosError::Protocol("READ before HELLO".into()))?;
            let renewed = parts.get(2) == Some(&"renewed");
            Ok(format!("R {}", answers(&read(shared, p, num(1)?, renewed))))
        }
        Some("END") => {
            // A renewed hold that ended without a write (its guard said the lock was lost).
            let p = peer.ok_or_else(|| ChaosError::Protocol("END before HELLO".into()))?;
            clear_renewed(&mut lock(shared), p);
            Ok("OK".into())
        }
        Some("WRITE") => {
            let p = peer.ok_or_else(|| ChaosError::Protocol("WRITE before HELLO".into()))?;
            let elem = parts.get(2).ok_or_else(|| ChaosError::Protocol("WRITE without element".into()))?;
            let mut bases = [None; 3];
            for (i, b) in bases.iter_mut().enumerate() {
                *b = match parts.get(3 + i) {
                    Some(&"-") => None,
                    Some(v) => {
                        Some(v.parse().map_err(|_| ChaosError::Protocol(format!("bad version '{v}'")))?)
                    }
                    None => return Err(ChaosError::Protocol("WRITE without versions".into())),
                };
            }
            Ok(format!("W {}", answers(&write(shared, p, num(1)?, elem, bases)?)))
        }
        _ => Err(ChaosError::Protocol(format!("unknown request '{line}'"))),
    }
}

/// Clears the renewed hold of `p` (it has made another request).
fn clear_renewed(s: &mut Shared, p: Peer) {
    if s.renewed.is_some_and(|h| (h.w, h.inc) == (p.w, p.inc)) {
        s.renewed = None;
    }
}

fn read(shared: &Mutex<Shared>, p: Peer, token: u64, renewed: bool) -> [RegResult; 3] {
    let t = mono_ns();
    let mut s = lock(shared);
    clear_renewed(&mut s, p);
    let mut out = [RegResult { outcome: RegOutcome::Ok, version: 0, len: 0 }; 3];
    for reg in Reg::ALL {
        let st = &mut s.regs[reg.index()];
        let accepted = match reg {
            Reg::Fenced if token < st.fence => false,
            Reg::Fenced => {
                st.fence = token;
                true
            }
            Reg::WriteFenced | Reg::Unfenced => true,
        };
        let (version, len) = (st.current, st.versions[st.current].2);
        out[reg.index()] = if accepted {
            RegResult { outcome: RegOutcome::Ok, version: version as u64, len }
        } else {
            RegResult { outcome: RegOutcome::Stale, version: 0, len: 0 }
        };
        s.log.push(RegEvent { t, w: p.w, inc: p.inc, reg, write: false, token, accepted });
    }
    if out[0].outcome == RegOutcome::Ok {
        let holder = Holder { w: p.w, inc: p.inc, pid: p.pid, token, at: t };
        match s.arm.take_if(|a| a.except != Some((p.w, p.inc))) {
            Some(arm) => {
                // A hold that an armed fault meets at its read is not offered again.
                (arm.action)(&holder);
                let _ = arm.tx.send(holder);
            }
            None if renewed => s.renewed = Some(holder),
            None => {}
        }
    }
    out
}

fn write(
    shared: &Mutex<Shared>,
    p: Peer,
    token: u64,
    elem: &str,
    bases: [Option<usize>; 3],
) -> Result<[RegResult; 3]> {
    let t = mono_ns();
    let mut s = lock(shared);
    clear_renewed(&mut s, p);
    let elem: Arc<str> = Arc::from(elem);
    let mut out = [RegResult { outcome: RegOutcome::Skipped, version: 0, len: 0 }; 3];
    for reg in Reg::ALL {
        let Some(base) = bases[reg.index()] else { continue };
        let st = &mut s.regs[reg.index()];
        if base >= st.versions.len() {
            return Err(ChaosError::Protocol(format!("no version {base} of {}", reg.name())));
        }
        let accepted = match reg {
            Reg::Fenced | Reg::WriteFenced => token >= st.fence,
            Reg::Unfenced => true,
        };
        if accepted {
            if reg != Reg::Unfenced {
                st.fence = token;
            }
            let len = st.versions[base].2 + 1;
            st.versions.push((base, Some(elem.clone()), len));
            st.current = st.versions.len() - 1;
            out[reg.index()] = RegResult { outcome: RegOutcome::Ok, version: st.current as u64, len };
        } else {
            out[reg.index()] = RegResult { outcome: RegOutcome::Stale, version: 0, len: 0 };
        }
        s.log.push(RegEvent { t, w: p.w, inc: p.inc, reg, write: true, token, accepted });
    }
    Ok(out)
}

fn answers(r: &[RegResult; 3]) -> String {
    let one = |x: &RegResult| {
        let o = match x.outcome {
            RegOutcome::Ok => "ok",
            RegOutcome::Stale => "stale",
            RegOutcome::Skipped => "skipped",
        };
        format!("{o}:{}:{}", x.version, x.len)
    };
    r.iter().map(one).collect::<Vec<_>>().join(" ")
}

fn parse_answers(tag: &str, line: &str) -> Result<[RegResult; 3]> {
    let bad = || ChaosError::Protocol(format!("unexpected answer '{line}'"));
    let mut parts = line.split_ascii_whitespace();
    if parts.next() != Some(tag) {
        return Err(bad());
    }
    let mut out = [RegResult { outcome: RegOutcome::Skipped, version: 0, len: 0 }; 3];
    for slot in &mut out {
        let mut f = parts.next().ok_or_else(bad)?.split(':');
        let outcome = match f.next() {
            Some("ok") => RegOutcome::Ok,
            Some("stale") => RegOutcome::Stale,
            Some("skipped") => RegOutcome::Skipped,
            _ => return Err(bad()),
        };
        let version = f.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let len = f.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        *slot = RegResult { outcome, version, len };
    }
    Ok(out)
}

/// A worker's connection to the registers.
#[derive(Debug)]
pub struct RegisterClient {
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    w: OwnedWriteHalf,
}

impl RegisterClient {
    /// Connects and introduces the worker.
    ///
    /// # Errors
    /// When the register cannot be reached or answers wrongly.
    pub async fn connect(addr: SocketAddr, slot: u32, inc: u32) -> Result<Self> {
        let s = TcpStream::connect(addr).await.map_err(|e| ChaosError::io("connect to the register", e))?;
        let _ = s.set_nodelay(true);
        let (r, w) = s.into_split();
        let mut me = Self { lines: BufReader::new(r).lines(), w };
        let ok = me.call(&format!("HELLO {slot} {inc} {}", std::process::id())).await?;
        if ok != "OK" {
            return Err(ChaosError::Protocol(format!("HELLO answered '{ok}'")));
        }
        Ok(me)
    }

    async fn call(&mut self, line: &str) -> Result<String> {
        self.w
            .write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(|e| ChaosError::io("register request", e))?;
        self.lines
            .next_line()
            .await
            .map_err(|e| ChaosError::io("register answer", e))?
            .ok_or_else(|| ChaosError::Protocol("the register closed the connection".into()))
    }

    /// Reads every register with `token`.
    ///
    /// # Errors
    /// On I/O or protocol errors.
    pub async fn read(&mut self, token: u64) -> Result<[RegResult; 3]> {
        let line = self.call(&format!("READ {token}")).await?;
        parse_answers("R", &line)
    }

    /// As [`RegisterClient::read`], at the start of a renewed hold (a grant on auto-renewal,
    /// held past its first validity): the nemesis may put its next holder fault on it.
    ///
    /// # Errors
    /// On I/O or protocol errors.
    pub async fn read_renewed(&mut self, token: u64) -> Result<[RegResult; 3]> {
        let line = self.call(&format!("READ {token} renewed")).await?;
        parse_answers("R", &line)
    }

    /// Ends a renewed hold that writes nothing (its guard said the lock was lost): no fault is
    /// put on it any more.
    ///
    /// # Errors
    /// On I/O or protocol errors.
    pub async fn end_hold(&mut self) -> Result<()> {
        match self.call("END").await?.as_str() {
            "OK" => Ok(()),
            other => Err(ChaosError::Protocol(format!("unexpected answer to END: '{other}'"))),
        }
    }

    /// Writes `elem` appended to the versions read (`None`: skip that register).
    ///
    /// # Errors
    /// On I/O or protocol errors.
    pub async fn write(&mut self, token: u64, elem: &str, bases: [Option<u64>; 3]) -> Result<[RegResult; 3]> {
        let v = |b: Option<u64>| b.map_or_else(|| "-".to_owned(), |x| x.to_string());
        let line = self
            .call(&format!("WRITE {token} {elem} {} {} {}", v(bases[0]), v(bases[1]), v(bases[2])))
            .await?;
        parse_answers("W", &line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fenced_reads_close_the_hole_that_write_only_fencing_leaves() {
        let server = RegisterServer::start().await.expect("start");
        let mut a = RegisterClient::connect(server.addr(), 0, 0).await.expect("a");
        let mut b = RegisterClient::connect(server.addr(), 1, 0).await.expect("b");
        // a (token 5) reads, b (token 6) reads, a writes, b writes.
        let ra = a.read(5).await.expect("read a");
        let rb = b.read(6).await.expect("read b");
        let base = |r: &[RegResult; 3]| r.map(|x| (x.outcome == RegOutcome::Ok).then_some(x.version));
        let wa = a.write(5, "a", base(&ra)).await.expect("write a");
        let wb = b.write(6, "b", base(&rb)).await.expect("write b");
        // Fenced: a's write is rejected (b's read raised the fence), nothing acknowledged is lost.
        assert_eq!(wa[0].outcome, RegOutcome::Stale);
        assert_eq!(wb[0].outcome, RegOutcome::Ok);
        // Write-fenced and unfenced: a's write was acknowledged, then erased by b's.
        assert_eq!(wa[1].outcome, RegOutcome::Ok);
        assert_eq!(wa[2].outcome, RegOutcome::Ok);
        let log = server.snapshot();
        assert_eq!(log.finals[0], vec!["b"]);
        assert_eq!(log.finals[1], vec!["b"]);
        assert_eq!(log.finals[2], vec!["b"]);
        // A stale reader is told so.
        assert_eq!(a.read(5).await.expect("read")[0].outcome, RegOutcome::Stale);
    }

    #[tokio::test]
    async fn an_armed_action_runs_on_the_next_holder_before_it_is_answered() {
        let server = RegisterServer::start().await.expect("start");
        let fired = Arc::new(Mutex::new(None));
        let f = fired.clone();
        let rx = server.arm(Box::new(move |h| *f.lock().expect("lock") = Some(h.token)));
        let mut a = RegisterClient::connect(server.addr(), 3, 1).await.expect("a");
        a.read(9).await.expect("read");
        assert_eq!(*fired.lock().expect("lock"), Some(9));
        let h = rx.await.expect("holder");
        assert_eq!((h.w, h.inc, h.pid), (3, 1, std::process::id()));
        // Armed for another worker than 3.1: its next read does not fire it, worker 4's does.
        let mut rx = server.arm_except(Box::new(|_| ()), Some((3, 1)));
        a.read(10).await.expect("read");
        assert!(rx.try_recv().is_err());
        let mut b = RegisterClient::connect(server.addr(), 4, 0).await.expect("b");
        b.read(11).await.expect("read");
        assert_eq!(rx.await.expect("holder").w, 4);
    }

    #[tokio::test]
    async fn a_renewed_hold_is_offered_once_until_its_holder_makes_another_request() {
        let server = RegisterServer::start().await.expect("start");
        let mut a = RegisterClient::connect(server.addr(), 0, 2).await.expect("a");
        let long = Duration::from_secs(60);
        a.read(3).await.expect("read");
        assert_eq!(server.take_renewed(long), None, "an ordinary hold was offered");
        a.read_renewed(4).await.expect("read");
        let h = server.take_renewed(long).expect("the renewed hold");
        assert_eq!((h.w, h.inc, h.token), (0, 2, 4));
        assert_eq!(server.take_renewed(long), None, "offered twice");
        // Its write ends it; so does its next read.
        a.read_renewed(5).await.expect("read");
        a.write(5, "x", [Some(0), None, None]).await.expect("write");
        assert_eq!(server.take_renewed(long), None, "offered after its write");
        a.read_renewed(6).await.expect("read");
        a.read(7).await.expect("read");
        assert_eq!(server.take_renewed(long), None, "offered after its next read");
        a.read_renewed(7).await.expect("read");
        a.end_hold().await.expect("end");
        assert_eq!(server.take_renewed(long), None, "offered after it ended");
        // One that an armed fault met at its read is not offered again.
        let _rx = server.arm(Box::new(|_| ()));
        a.read_renewed(7).await.expect("read");
        assert_eq!(server.take_renewed(long), None, "offered after a fault met it");
        // One that began longer ago than asked for is not offered.
        a.read_renewed(8).await.expect("read");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(server.take_renewed(Duration::from_millis(10)), None, "offered too late");
    }
}
