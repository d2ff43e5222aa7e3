//! The servers under test, started with the conformance fixtures on free loopback ports:
//! nothing for the file backend, one or three `redis-server` nodes, a three-member etcd
//! cluster, a three-server ZooKeeper ensemble, moto. The nemeses pause, kill and restart them
//! through [`ServerProcess`], find the etcd and ZooKeeper leaders, step a Redis node's clock
//! and make Redis snapshots.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use conformance_tests::fixtures::{
    self, etcd::EtcdCluster, find_binary, free_port, on_fresh_ports, temp_dir, zk::ZkEnsemble, ServerProcess,
    ServerSpec,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{ChaosError, Result};

/// How a Redis node keeps its data across a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Persist {
    /// Nothing: a restarted node comes back empty.
    None,
    /// AOF with `appendfsync always`: every write survives a SIGKILL.
    Aof,
    /// RDB snapshots taken only when the nemesis asks (`SAVE`): a restart brings back the last
    /// snapshot, older than the last writes.
    Snapshot,
}

/// One `redis-server`, started from the fixture's [`ServerSpec`] with the fixture's
/// arguments, and, for clock steps, the harness's clock shim preloaded.
#[derive(Debug)]
pub struct RedisNode {
    process: ServerProcess,
    clock_file: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl RedisNode {
    /// Starts a node keeping its data as `persist`; with `shim`, its wall clock follows the
    /// offset the nemesis writes ([`RedisNode::set_clock`]).
    ///
    /// # Errors
    /// When redis-server is missing or does not come up.
    pub async fn start(persist: Persist, shim: Option<&Path>) -> Result<Self> {
        let program =
            find_binary("redis-server", &["/usr/bin", "/usr/sbin"], "apt-get install redis-server", "redis")?;
        let node = on_fresh_ports("redis-server", || async {
            let port = free_port()?;
            let dir = temp_dir("distlock-chaos-redis-")?;
            let mut args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--dir",
                &dir.path().display().to_string(),
                "--maxmemory-policy",
                "noeviction",
                "--save",
                "",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            let more: &[&str] = match persist {
                Persist::None | Persist::Snapshot => &["--appendonly", "no"],
                Persist::Aof => &["--appendonly", "yes", "--appendfsync", "always"],
            };
            args.extend(more.iter().map(|s| (*s).to_owned()));
            let mut env = Vec::new();
            let mut clock_file = None;
            if let Some(shim) = shim {
                let f = dir.path().join("clock-offset-ms");
                std::fs::write(&f, "0")
                    .map_err(|e| fixtures::FixtureError(format!("write clock file: {e}")))?;
                env.push(("LD_PRELOAD".to_owned(), shim.display().to_string()));
                env.push((crate::clockshim::ENV.to_owned(), f.display().to_string()));
                clock_file = Some(f);
            }
            let spec = ServerSpec {
                name: format!("redis-{port}"),
                program: program.clone(),
                args,
                env,
                ready_port: port,
                ready_timeout: Duration::from_secs(20),
            };
            let process = ServerProcess::start(spec, dir.path()).await?;
            Ok(Self { process, clock_file, _dir: dir })
        })
        .await?;
        Ok(node)
    }

    /// Steps the node's wall clock to `offset_ms` from the real one.
    ///
    /// # Errors
    /// When the node runs without the shim or the file cannot be written.
    pub async fn set_clock(&self, offset_ms: i64) -> Result<()> {
        let f = self
            .clock_file
            .as_ref()
            .ok_or_else(|| ChaosError::Config("this Redis node has no clock shim".into()))?;
        std::fs::write(f, offset_ms.to_string()).map_err(|e| ChaosError::io("write the clock offset", e))?;
        // The shim rereads the file at most every 20 ms.
        tokio::time::sleep(Duration::from_millis(60)).await;
        Ok(())
    }

    /// Makes the node write its snapshot now (`SAVE`).
    ///
    /// # Errors
    /// When the node does not answer `+OK`.
    pub async fn save(&self) -> Result<()> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.process.port()));
        let reply = tokio::time::timeout(Duration::from_secs(5), async {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.write_all(b"*1\r\n$4\r\nSAVE\r\n").await?;
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf[..n]).into_owned())
        })
        .await
        .map_err(|_| ChaosError::Protocol("SAVE timed out".into()))?
        .map_err(|e| ChaosError::io("SAVE", e))?;
        if reply.starts_with("+OK") {
            Ok(())
        } else {
            Err(ChaosError::Protocol(format!("SAVE answered {reply:?}")))
        }
    }
}

/// The servers of one backend.
#[derive(Debug)]
pub enum ServerSet {
    /// The file backend's directory.
    Files(tempfile::TempDir),
    /// One Redis node, or the Redlock masters.
    Redis(Vec<RedisNode>),
    /// A three-member etcd cluster.
    Etcd(EtcdCluster),
    /// A three-server ZooKeeper ensemble.
    Zk(ZkEnsemble),
    /// moto's DynamoDB emulator.
    Moto(Box<fixtures::dynamo::MotoServer>),
}

impl ServerSet {
    /// The nodes' client addresses (what the proxies forward to); empty for files.
    pub fn upstreams(&mut self) -> Vec<SocketAddr> {
        let ports: Vec<u16> = (0..self.len()).filter_map(|i| self.process(i).map(|p| p.port())).collect();
        ports.into_iter().map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p))).collect()
    }

    /// How many server processes.
    pub fn len(&self) -> usize {
        match self {
            ServerSet::Files(_) => 0,
            ServerSet::Redis(n) => n.len(),
            ServerSet::Etcd(c) => c.members.len(),
            ServerSet::Zk(e) => e.servers.len(),
            ServerSet::Moto(_) => 1,
        }
    }

    /// Whether there is no server process.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Server process `i`.
    pub fn process(&mut self, i: usize) -> Option<&mut ServerProcess> {
        match self {
            ServerSet::Files(_) => None,
            ServerSet::Redis(n) => n.get_mut(i).map(|n| &mut n.process),
            ServerSet::Etcd(c) => c.members.get_mut(i).map(|m| m.process()),
            ServerSet::Zk(e) => e.servers.get_mut(i).map(|s| s.process()),
            ServerSet::Moto(m) => (i == 0).then(|| m.process()),
        }
    }

    /// Redis node `i`, for clock steps and snapshots.
    pub fn redis(&self, i: usize) -> Option<&RedisNode> {
        match self {
            ServerSet::Redis(n) => n.get(i),
            _ => None,
        }
    }

    /// The file backend's directory.
    pub fn files_dir(&self) -> Option<&Path> {
        match self {
            ServerSet::Files(d) => Some(d.path()),
            _ => None,
        }
    }

    /// The node that leads (etcd, ZooKeeper), else node 0.
    pub async fn leader(&mut self) -> usize {
        let addrs = self.upstreams();
        match self {
            ServerSet::Etcd(_) => {
                for (i, a) in addrs.iter().enumerate() {
                    if etcd_is_leader(*a).await == Some(true) {
                        return i;
                    }
                }
                0
            }
            ServerSet::Zk(_) => {
                for (i, a) in addrs.iter().enumerate() {
                    let reply = fixtures::zk::four_letter(&a.to_string(), "srvr").await;
                    if reply.is_some_and(|r| r.contains("Mode: leader")) {
                        return i;
                    }
                }
                0
            }
            _ => 0,
        }
    }

    /// Waits until every server answers again after a restart (ZooKeeper: serves requests).
    ///
    /// # Errors
    /// When one does not within `limit`.
    pub async fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        if let ServerSet::Zk(e) = self {
            e.wait_until_serving(limit).await?;
        }
        Ok(())
    }
}

/// Asks an etcd member whether it leads (`/v3/maintenance/status` on its HTTP gateway).
async fn etcd_is_leader(addr: SocketAddr) -> Option<bool> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!(
            "POST /v3/maintenance/status HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        let body = out.split("\r\n\r\n").nth(1)?;
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        let me = v.get("header")?.get("member_id")?.as_str()?.to_owned();
        Some(v.get("leader")?.as_str()? == me)
    };
    tokio::time::timeout(Duration::from_secs(2), fut).await.ok().flatten()
}
