//! Leader failover: a leader in a child process (this program, run with `--leader`) is
//! killed with SIGKILL while a candidate waits and an observer watches; measured, from the
//! kill, until the candidate is elected and until the observer sees the new leader, beside the
//! bound the backend claims (its expiry TTLs times the leadership's TTL, plus its expiry
//! margin).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use lock_core::LockClient;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;

/// The leadership's TTL (on session backends, the session's timeout).
pub(crate) const TTL: Duration = Duration::from_secs(2);

/// How a process reaches a backend for this measurement: the parent and the leader child
/// connect the same way.
#[derive(Debug, Clone)]
pub(crate) struct Reach {
    /// `redis`, `redlock`, `file`, `etcd`, `zookeeper` or `dynamodb`.
    pub(crate) kind: &'static str,
    /// The URL, endpoints or connect string the fixture gave.
    pub(crate) target: String,
}

/// A client on `kind`'s backend at `target`, with sessions of [`TTL`] where it has them.
pub(crate) async fn connect(kind: &str, target: &str) -> Result<LockClient> {
    Ok(match kind {
        "redis" => LockClient::new(lock_redis::RedisBackend::connect(target.parse()?).await?),
        "redlock" => LockClient::new(lock_redis::RedlockBackend::connect(target.parse()?).await?),
        "file" => LockClient::new(lock_local::FileBackend::connect(
            lock_local::FileOptions::new(target).sync(false),
        )?),
        "etcd" => {
            let opts = lock_etcd::EtcdOptions::new(target.split(',').map(str::to_owned)).session_ttl(TTL);
            LockClient::new(lock_etcd::EtcdBackend::connect(opts).await?)
        }
        "zookeeper" => {
            let opts = lock_zk::ZkOptions::new(target).session_timeout(TTL);
            LockClient::new(lock_zk::ZkBackend::connect(opts).await?)
        }
        "dynamodb" => {
            let client = crate::servers::dynamo_client(target, Arc::new(AtomicU64::new(0)));
            let opts = lock_dynamo::DynamoOptions::new(crate::servers::DYNAMO_TABLE);
            LockClient::new(lock_dynamo::DynamoBackend::with_client(client, opts))
        }
        other => bail!("no failover measurement for backend '{other}'"),
    })
}

/// The child's side (`--leader KIND TARGET NAME`): campaign, print `elected <term>`, then
/// hold leadership until killed.
pub(crate) async fn lead(kind: &str, target: &str, name: &str) -> Result<()> {
    let locks = connect(kind, target).await?;
    let leadership = locks.election(name).ttl(TTL).campaign("doomed leader").await?;
    println!("elected {}", leadership.fencing_token().get());
    std::future::pending::<()>().await;
    drop(leadership);
    Ok(())
}

/// `rounds` failovers on `reach`'s backend: p50 and max from the kill to the candidate's
/// election and to the observer's sight of it, in ms.
pub(crate) async fn measure(reach: &Reach, rounds: usize, tag: &str) -> Result<Value> {
    let exe = std::env::current_exe().context("this program's path")?;
    let locks = connect(reach.kind, &reach.target).await?;
    let caps = locks.capabilities().clone();
    let bound = TTL.saturating_mul(caps.expiry_ttls.max(1)).saturating_add(caps.expiry_margin);
    let (mut elected, mut observed) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let name = format!("{tag}/failover/{round}");
        let mut child = tokio::process::Command::new(&exe)
            .args(["--leader", reach.kind, &reach.target, &name])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start the leader process")?;
        let out = child.stdout.take().ok_or_else(|| anyhow!("the leader's stdout"))?;
        let mut lines = BufReader::new(out).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .context("the leader was not elected within 60 s")??
            .ok_or_else(|| anyhow!("the leader process ended before it was elected"))?;
        let old: u64 =
            line.strip_prefix("elected ").and_then(|t| t.parse().ok()).context("the leader's term")?;

        let election = locks.election(&name).ttl(TTL);
        let mut watch = election.observe().await?;
        let candidate = {
            let election = election.clone();
            tokio::spawn(async move {
                let g = election.campaign("candidate").await;
                (Instant::now(), g)
            })
        };
        // The candidate queues behind the leader (one request), then the leader dies.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let killed = Instant::now();
        child.start_kill().context("SIGKILL the leader")?;
        let _ = child.wait().await;
        let seen = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(item) = watch.next().await {
                if let Some(leader) = item? {
                    if leader.term.is_some_and(|t| t.get() > old) {
                        return Ok::<_, anyhow::Error>(Instant::now());
                    }
                }
            }
            bail!("the observer's stream ended")
        })
        .await
        .context("no observer saw a new leader within 60 s")??;
        let (at, guard) = tokio::time::timeout(Duration::from_secs(60), candidate)
            .await
            .context("the candidate was not elected within 60 s")??;
        let guard = guard?;
        anyhow::ensure!(guard.fencing_token().get() > old, "the new term is not above the killed leader's");
        elected.push(at.saturating_duration_since(killed));
        observed.push(seen.saturating_duration_since(killed));
        guard.release().await?;
    }
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    let summary = |v: &mut Vec<Duration>| {
        v.sort();
        json!({
            "p50": v.get(v.len() / 2).map(ms),
            "max": v.last().map(ms),
        })
    };
    Ok(json!({
        "rounds": rounds,
        "ttl_ms": TTL.as_millis() as u64,
        "bound_ms": bound.as_millis() as u64,
        "elected_ms": summary(&mut elected),
        "observed_ms": summary(&mut observed),
    }))
}
