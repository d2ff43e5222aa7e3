//! The history: what every worker did, one JSON line per event, on the shared monotonic
//! clock. Each operation is an `invoke` line followed by one completion line (`ok`, `fail`
//! or `info`, Jepsen's names: `fail` means it certainly did not take effect, `info` that it
//! may have). A worker killed mid-operation leaves the invoke alone: indeterminate.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ChaosError, Result};

/// The registers every grant reads and writes, in the order of [`Record::regs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Reg {
    /// Rejects a read or a write whose token is lower than the highest it has seen.
    Fenced,
    /// Rejects only writes whose token is lower than the highest write it accepted (reads
    /// carry no token): the weaker contract, measured to show why reads must carry it.
    WriteFenced,
    /// Accepts everything: the control.
    Unfenced,
}

impl Reg {
    /// All registers, in wire order.
    pub const ALL: [Reg; 3] = [Reg::Fenced, Reg::WriteFenced, Reg::Unfenced];

    /// The register's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Reg::Fenced => "fenced",
            Reg::WriteFenced => "write_fenced",
            Reg::Unfenced => "unfenced",
        }
    }

    /// Its index in [`Reg::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What a worker did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Take the lock.
    Acquire,
    /// Read all registers under the lock.
    Read,
    /// Write all registers back under the lock.
    Write,
    /// Release the lock.
    Release,
    /// Look at an auto-renewed guard after a hold of several TTLs: `Ok` with its current
    /// `valid_until` while it holds, `Fail` when it reports the lock lost.
    Renew,
}

/// Where an operation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Started.
    Invoke,
    /// Took effect.
    Ok,
    /// Certainly did not take effect.
    Fail,
    /// May or may not have taken effect (an error, a timeout, or no completion at all).
    Info,
}

/// One register's answer to a read or a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegOutcome {
    /// Accepted.
    Ok,
    /// Rejected: the token was lower than the register's fence.
    Stale,
    /// Not sent (a write to the fenced register after its read was rejected).
    Skipped,
}

/// One register's part of a read or write completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegResult {
    /// Accepted or not.
    pub outcome: RegOutcome,
    /// The version read, or the version the write made.
    pub version: u64,
    /// How many elements that version holds.
    pub len: u64,
}

/// One line of a worker's history file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Worker slot.
    pub w: u32,
    /// Incarnation of the slot (a killed worker's replacement has the next).
    pub inc: u32,
    /// Operation number within the incarnation (pairs the invoke with its completion).
    pub n: u64,
    /// What.
    pub op: OpKind,
    /// Invoke or completion.
    pub phase: Phase,
    /// When, in monotonic nanoseconds.
    pub t: u64,
    /// The fencing token (acquire completion; read and write invokes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    /// The guard's `valid_until` on the monotonic clock (acquire completion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<u64>,
    /// The element a write appends (write invoke).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elem: Option<String>,
    /// Per register answers (read and write completions), in [`Reg::ALL`] order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regs: Option<[RegResult; 3]>,
    /// The error, for `fail` and `info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err: Option<String>,
}

impl Record {
    /// A bare record; fill the optional fields as needed.
    pub fn new(w: u32, inc: u32, n: u64, op: OpKind, phase: Phase, t: u64) -> Self {
        Self { w, inc, n, op, phase, t, token: None, valid_until: None, elem: None, regs: None, err: None }
    }
}

/// Appends records to a worker's history file, one `write` per line so a SIGKILL loses at
/// most the line being written.
#[derive(Debug)]
pub struct HistoryWriter {
    file: std::fs::File,
}

impl HistoryWriter {
    /// Opens (creates) `path` for appending.
    ///
    /// # Errors
    /// When it cannot be opened.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| ChaosError::io(format!("open {}", path.display()), e))?;
        Ok(Self { file })
    }

    /// Writes one record.
    ///
    /// # Errors
    /// When the write fails.
    pub fn record(&mut self, r: &Record) -> Result<()> {
        let mut line = serde_json::to_vec(r).map_err(|e| ChaosError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(|e| ChaosError::io("write history", e))
    }
}

/// One operation: its invoke and, if it came, its completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Worker slot.
    pub w: u32,
    /// Incarnation.
    pub inc: u32,
    /// What.
    pub kind: OpKind,
    /// Invoke time.
    pub invoke: u64,
    /// Completion time (`None`: the worker died first).
    pub complete: Option<u64>,
    /// `Ok`, `Fail` or `Info` (`Info` when there was no completion).
    pub phase: Phase,
    /// Fencing token (from the acquire completion, or the read/write invoke).
    pub token: Option<u64>,
    /// Guard validity (acquires).
    pub valid_until: Option<u64>,
    /// Appended element (writes).
    pub elem: Option<String>,
    /// Per register answers (reads and writes).
    pub regs: Option<[RegResult; 3]>,
    /// Error text.
    pub err: Option<String>,
}

/// Reads every `*.jsonl` history in `dir` and pairs invokes with completions.
///
/// # Errors
/// When the directory cannot be read or a line other than a file's last is malformed (a
/// worker killed mid-write may leave its last line torn; that line is skipped).
pub fn load_dir(dir: &Path) -> Result<Vec<Op>> {
    let mut records = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| ChaosError::io(format!("read {}", dir.display()), e))?;
    for entry in entries {
        let path = entry.map_err(|e| ChaosError::io("read dir entry", e))?.path();
        if path.extension().is_some_and(|x| x == "jsonl") {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ChaosError::io(format!("read {}", path.display()), e))?;
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                match serde_json::from_str::<Record>(line) {
                    Ok(r) => records.push(r),
                    Err(_) if i + 1 == lines.len() => {}
                    Err(e) => return Err(ChaosError::Protocol(format!("{}:{}: {e}", path.display(), i + 1))),
                }
            }
        }
    }
    Ok(pair(records))
}

/// Pairs invoke records with their completions (by worker, incarnation and number).
pub fn pair(records: Vec<Record>) -> Vec<Op> {
    let mut open: BTreeMap<(u32, u32, u64), Op> = BTreeMap::new();
    let mut done = Vec::new();
    for r in records {
        let key = (r.w, r.inc, r.n);
        if r.phase == Phase::Invoke {
            open.insert(
                key,
                Op {
                    w: r.w,
                    inc: r.inc,
                    kind: r.op,
                    invoke: r.t,
                    complete: None,
                    phase: Phase::Info,
                    token: r.token,
                    valid_until: None,
                    elem: r.elem,
                    regs: None,
                    err: None,
                },
            );
        } else if let Some(mut op) = open.remove(&key) {
            op.complete = Some(r.t);
            op.phase = r.phase;
            op.token = r.token.or(op.token);
            op.valid_until = r.valid_until;
            op.regs = r.regs;
            op.err = r.err;
            done.push(op);
        }
    }
    done.extend(open.into_values());
    done.sort_by_key(|o| (o.invoke, o.w, o.inc));
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_pair() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = HistoryWriter::open(&dir.path().join("w0.jsonl")).expect("open");
        w.record(&Record::new(0, 0, 1, OpKind::Acquire, Phase::Invoke, 10)).expect("rec");
        let mut ok = Record::new(0, 0, 1, OpKind::Acquire, Phase::Ok, 20);
        ok.token = Some(7);
        w.record(&ok).expect("rec");
        w.record(&Record::new(0, 0, 2, OpKind::Read, Phase::Invoke, 30)).expect("rec");
        let ops = load_dir(dir.path()).expect("load");
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0].phase, Phase::Ok);
        assert_eq!(ops[0].token, Some(7));
        assert_eq!(ops[1].phase, Phase::Info);
        assert_eq!(ops[1].complete, None);
    }
}
