//! The scenarios: backend × nemesis family, each with a name that reproduces it
//! (`--scenario redis.server-restart --seed N`), and the explicit list of violations a
//! backend does not promise to prevent under a fault, with the reason.

use std::net::SocketAddr;
use std::path::Path;

use serde::Serialize;

use crate::servers::Persist;

/// A backend configuration under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// `file:///dir`.
    File,
    /// One Redis node without persistence.
    Redis,
    /// One Redis node with AOF, `appendfsync always`.
    RedisAof,
    /// One Redis node restarted from an older RDB snapshot.
    RedisSnapshot,
    /// Redlock over three masters.
    Redlock,
    /// etcd, three members, session leases.
    Etcd,
    /// etcd, three members, a lease per lock.
    EtcdPerLock,
    /// ZooKeeper, three servers.
    Zk,
    /// DynamoDB on moto.
    Dynamodb,
}

/// Which servers a backend needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Servers {
    /// None (a directory).
    Files,
    /// `n` Redis nodes keeping data as given.
    Redis(usize, Persist),
    /// Three etcd members.
    Etcd,
    /// Three ZooKeeper servers.
    Zk,
    /// moto.
    Moto,
}

impl Backend {
    /// Every backend, in run order.
    pub const ALL: [Backend; 9] = [
        Backend::File,
        Backend::Redis,
        Backend::RedisAof,
        Backend::RedisSnapshot,
        Backend::Redlock,
        Backend::Etcd,
        Backend::EtcdPerLock,
        Backend::Zk,
        Backend::Dynamodb,
    ];

    /// Its name in scenario names and reports.
    pub fn name(self) -> &'static str {
        match self {
            Backend::File => "file",
            Backend::Redis => "redis",
            Backend::RedisAof => "redis-aof",
            Backend::RedisSnapshot => "redis-snapshot",
            Backend::Redlock => "redlock",
            Backend::Etcd => "etcd",
            Backend::EtcdPerLock => "etcd-per-lock",
            Backend::Zk => "zk",
            Backend::Dynamodb => "dynamodb",
        }
    }

    /// The servers it runs on.
    pub fn servers(self) -> Servers {
        match self {
            Backend::File => Servers::Files,
            Backend::Redis => Servers::Redis(1, Persist::None),
            Backend::RedisAof => Servers::Redis(1, Persist::Aof),
            Backend::RedisSnapshot => Servers::Redis(1, Persist::Snapshot),
            Backend::Redlock => Servers::Redis(3, Persist::None),
            Backend::Etcd | Backend::EtcdPerLock => Servers::Etcd,
            Backend::Zk => Servers::Zk,
            Backend::Dynamodb => Servers::Moto,
        }
    }

    /// The URL a client uses to reach `addrs` (the nodes, or a worker's proxies to them).
    /// Session backends get a session timeout equal to `lease_ms`.
    pub fn url(
        self,
        addrs: &[SocketAddr],
        dir: Option<&Path>,
        table: &str,
        lease_ms: u64,
        create: bool,
    ) -> String {
        let hosts = addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        let first = addrs.first().map(ToString::to_string).unwrap_or_default();
        match self {
            Backend::File => format!("file://{}", dir.map(|d| d.display().to_string()).unwrap_or_default()),
            Backend::Redis | Backend::RedisAof | Backend::RedisSnapshot => format!("redis://{first}"),
            Backend::Redlock => format!("redlock://{hosts}"),
            Backend::Etcd => format!("etcd://{hosts}?session_ttl={lease_ms}ms"),
            Backend::EtcdPerLock => format!("etcd://{hosts}?lease=per-lock"),
            Backend::Zk => format!("zk://{hosts}?session_timeout={lease_ms}ms"),
            Backend::Dynamodb => {
                format!("dynamodb://{table}?endpoint=http://{first}&region=us-east-1&create_table={create}")
            }
        }
    }
}

/// One fault the nemesis can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// SIGSTOP the holder inside its critical section for longer than the crash bound.
    PauseHolder,
    /// SIGSTOP the holder inside its critical section until the next holder has read the
    /// registers (SIGCONT before that read is answered): the interleaving where fencing only
    /// writes loses an acknowledged update.
    PauseHolderUntilTakeover,
    /// SIGKILL the holder inside its critical section; start a new worker in its slot.
    KillHolder,
    /// Cut the holder from every server node, both ways, for longer than the crash bound.
    PartitionHolder,
    /// The same, one way: its requests are held, replies from the servers still flow.
    PartitionHolderOneWay,
    /// The other way: its requests reach the servers and are carried out, their replies are
    /// held (an acquire, extend or release that took effect while the client knows nothing).
    PartitionHolderReplies,
    /// Every worker's links get a delay.
    SlowLinks,
    /// SIGSTOP a server node (the leader; a Redlock minority) for longer than the lease.
    PauseServer,
    /// SIGKILL a server node (the leader; a Redlock minority) and restart it (etcd and
    /// ZooKeeper after a few seconds down; others at once).
    RestartServer,
    /// SIGKILL a Redlock minority and restart it empty only after a crash bound (Redlock's
    /// stated assumption).
    RestartServerAfterTtl,
    /// Take a Redis snapshot, keep working, then SIGKILL and restart from that older snapshot.
    SnapshotRestart,
    /// Step a Redis node's wall clock forward by three leases, then back.
    ClockStep,
    /// Redlock: step one master's clock forward and restart another empty at once.
    ClockStepRestart,
}

impl Fault {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Fault::PauseHolder => "pause-holder",
            Fault::PauseHolderUntilTakeover => "pause-holder-until-takeover",
            Fault::KillHolder => "kill-holder",
            Fault::PartitionHolder => "partition-holder",
            Fault::PartitionHolderOneWay => "partition-holder-one-way",
            Fault::PartitionHolderReplies => "partition-holder-replies",
            Fault::SlowLinks => "slow-links",
            Fault::PauseServer => "pause-server",
            Fault::RestartServer => "restart-server",
            Fault::RestartServerAfterTtl => "restart-server-after-ttl",
            Fault::SnapshotRestart => "snapshot-restart",
            Fault::ClockStep => "clock-step",
            Fault::ClockStepRestart => "clock-step-restart",
        }
    }

    /// Whether it acts on a holder process alone (pauses or kills it), not on the network or
    /// the servers.
    pub fn on_holder_only(self) -> bool {
        matches!(self, Fault::PauseHolder | Fault::PauseHolderUntilTakeover | Fault::KillHolder)
    }

    /// Whether it freezes or cuts a holder past its lease (the unfenced control must lose).
    pub fn stales_holder(self) -> bool {
        matches!(self, Fault::PauseHolder | Fault::PauseHolderUntilTakeover)
    }
}

/// A named run: one backend under one nemesis family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Scenario {
    /// `backend.family`.
    pub name: String,
    /// The backend.
    pub backend: Backend,
    /// The nemesis family.
    pub family: &'static str,
    /// The faults it draws from.
    pub faults: Vec<Fault>,
}

const HOLDER: &[(&str, &[Fault])] =
    &[("pause", &[Fault::PauseHolder, Fault::PauseHolderUntilTakeover]), ("kill", &[Fault::KillHolder])];
const NET: &[(&str, &[Fault])] = &[
    ("partition", &[Fault::PartitionHolder, Fault::PartitionHolderOneWay, Fault::PartitionHolderReplies]),
    ("slow", &[Fault::SlowLinks]),
];
const CLIENT_FAULTS: [Fault; 6] = [
    Fault::PauseHolder,
    Fault::KillHolder,
    Fault::PartitionHolder,
    Fault::PartitionHolderOneWay,
    Fault::PartitionHolderReplies,
    Fault::SlowLinks,
];

fn families(b: Backend) -> Vec<(&'static str, Vec<Fault>)> {
    let mut v: Vec<(&'static str, Vec<Fault>)> = Vec::new();
    let holder = || HOLDER.iter().map(|(n, f)| (*n, f.to_vec()));
    let net = || NET.iter().map(|(n, f)| (*n, f.to_vec()));
    let mixed = |extra: &[Fault]| ("mixed", CLIENT_FAULTS.iter().chain(extra).copied().collect::<Vec<_>>());
    match b {
        Backend::File => {
            v.extend(holder());
            v.push(("mixed", vec![Fault::PauseHolder, Fault::PauseHolderUntilTakeover, Fault::KillHolder]));
        }
        Backend::Redis => {
            v.extend(holder());
            v.push(("server-pause", vec![Fault::PauseServer]));
            v.push(("server-restart", vec![Fault::RestartServer]));
            v.extend(net());
            v.push(("clock", vec![Fault::ClockStep]));
            v.push(mixed(&[Fault::PauseServer]));
        }
        Backend::RedisAof => v.push(("server-restart", vec![Fault::RestartServer])),
        Backend::RedisSnapshot => v.push(("snapshot-restart", vec![Fault::SnapshotRestart])),
        Backend::Redlock => {
            v.extend(holder());
            v.push(("server-pause", vec![Fault::PauseServer]));
            v.push(("server-restart", vec![Fault::RestartServerAfterTtl]));
            v.extend(net());
            v.push(("clock", vec![Fault::ClockStep]));
            v.push(("clock-restart", vec![Fault::ClockStepRestart]));
            v.push(mixed(&[Fault::PauseServer, Fault::RestartServerAfterTtl, Fault::ClockStep]));
        }
        Backend::Etcd | Backend::EtcdPerLock | Backend::Zk | Backend::Dynamodb => {
            v.extend(holder());
            v.push(("server-pause", vec![Fault::PauseServer]));
            v.push(("server-restart", vec![Fault::RestartServer]));
            v.extend(net());
            // A moto restart loses every item, which ends fencing's usefulness for the rest of
            // the run (tokens restart at 1); it has its own scenario and stays out of mixed.
            let server: &[Fault] = if b == Backend::Dynamodb {
                &[Fault::PauseServer]
            } else {
                &[Fault::PauseServer, Fault::RestartServer]
            };
            v.push(mixed(server));
        }
    }
    v
}

/// Every scenario of the full run, backends in [`Backend::ALL`] order.
pub fn all() -> Vec<Scenario> {
    Backend::ALL
        .iter()
        .flat_map(|b| {
            families(*b).into_iter().map(move |(family, faults)| Scenario {
                name: format!("{}.{family}", b.name()),
                backend: *b,
                family,
                faults,
            })
        })
        .collect()
}

/// The CI run: every backend (one Redis configuration) under the pause and the kill nemeses,
/// and one Redis node under partitions and under restarts (so that CI also runs a network
/// fault, and a fault on the expected list with its windows).
pub fn quick() -> Vec<Scenario> {
    all()
        .into_iter()
        .filter(|s| !matches!(s.backend, Backend::RedisAof | Backend::RedisSnapshot))
        .filter(|s| {
            s.family == "pause"
                || s.family == "kill"
                || (s.backend == Backend::Redis && matches!(s.family, "partition" | "server-restart"))
        })
        .collect()
}

/// A violation a backend does not promise to prevent under a fault.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Expected {
    /// The backend.
    pub backend: Backend,
    /// The fault.
    pub fault: Fault,
    /// Server-side exclusion may break, because…
    pub exclusion: Option<&'static str>,
    /// Tokens may repeat or go down, because…
    pub tokens: Option<&'static str>,
}

/// The expected-violation list. Fencing violations (acknowledged fenced updates lost, the
/// fenced register accepting a lower token) are never on it.
pub const EXPECTED: &[Expected] = &[
    Expected {
        backend: Backend::Redis,
        fault: Fault::RestartServer,
        exclusion: Some(
            "one Redis node without persistence forgets every grant when it restarts (README, Redis: honest limits)",
        ),
        tokens: None,
    },
    Expected {
        backend: Backend::RedisSnapshot,
        fault: Fault::SnapshotRestart,
        exclusion: Some("a Redis node restarted from an older snapshot has forgotten the grants made since"),
        tokens: None,
    },
    Expected {
        backend: Backend::Redis,
        fault: Fault::ClockStep,
        exclusion: Some(
            "Redis keeps expiries as wall-clock times: a forward clock step ends every grant early (lock-redis docs)",
        ),
        tokens: None,
    },
    Expected {
        backend: Backend::Redlock,
        fault: Fault::ClockStepRestart,
        exclusion: Some(
            "breaks Redlock's stated assumptions (a restarted master keeps its data or stays down a TTL; clocks do not jump)",
        ),
        tokens: Some(
            "a master restarted empty while another's clock is ahead: a quorum without the last token may propose a lower one",
        ),
    },
    Expected {
        backend: Backend::Dynamodb,
        fault: Fault::RestartServer,
        exclusion: Some("moto keeps its data in memory: a restart loses every lock item (DynamoDB does not)"),
        tokens: Some("moto's restart loses the fencing counters, which start again at 1 (DynamoDB does not)"),
    },
];

/// Whether `fault` on `backend` is on the expected list for exclusion violations.
pub fn excuses_overlaps(backend: Backend, fault: Fault) -> bool {
    EXPECTED.iter().any(|e| e.backend == backend && e.fault == fault && e.exclusion.is_some())
}

/// Whether `fault` on `backend` is on the expected list for token violations.
pub fn excuses_tokens(backend: Backend, fault: Fault) -> bool {
    EXPECTED.iter().any(|e| e.backend == backend && e.fault == fault && e.tokens.is_some())
}

/// The reasons that apply to `backend` under the faults that were injected.
pub fn expected(backend: Backend, injected: &[Fault]) -> (Option<String>, Option<String>) {
    let hits: Vec<&Expected> =
        EXPECTED.iter().filter(|e| e.backend == backend && injected.contains(&e.fault)).collect();
    let join = |v: Vec<&'static str>| (!v.is_empty()).then(|| v.join("; "));
    (
        join(hits.iter().filter_map(|e| e.exclusion).collect()),
        join(hits.iter().filter_map(|e| e.tokens).collect()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_quick_covers_every_backend_with_pause_and_kill() {
        let all = all();
        let mut names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
        let quick = quick();
        for b in Backend::ALL.iter().filter(|b| !matches!(b, Backend::RedisAof | Backend::RedisSnapshot)) {
            for fam in ["pause", "kill"] {
                assert!(quick.iter().any(|s| s.backend == *b && s.family == fam), "{} {fam}", b.name());
            }
        }
    }

    #[test]
    fn every_expected_entry_names_a_fault_its_backend_is_run_under() {
        let all = all();
        for e in EXPECTED {
            assert!(all.iter().any(|s| s.backend == e.backend && s.faults.contains(&e.fault)), "{e:?}");
        }
        assert!(expected(Backend::Etcd, &[Fault::RestartServer]).0.is_none());
    }
}
