//! Elections, laid out as Curator's `LeaderLatch`, and watching who leads.
//!
//! The election `svc/scheduler` is the node `<prefix>/svc/scheduler#election`; each candidate
//! is an EPHEMERAL_SEQUENTIAL child `_c_<uuid>-latch-<sequence>` whose data is the candidate's
//! metadata (its value is what it advertises; a `LeaderLatch` writes its participant id
//! there). The lowest sequence leads; a candidate waits on the one just before it, as the
//! lock's waiters do, so campaigning, renewing and resigning are the lock's acquire, extend and
//! release on that queue. The term is the leader's czxid.
//!
//! Proclaiming writes `{"leader":"<the leader's node name>","metadata":{…}}` as the data of
//! the election's node, in one transaction with a check that the leader's node still exists
//! (else `NotHeld`) and over the version just read. It never writes the leader's own node: a
//! `LeaderLatch` waiting right behind it watches that node and only acts on its deletion, so a
//! data change there would use up its watch and it would miss the resignation. Readers take the
//! proclaimed metadata when it names the current leader's node, the node's own otherwise; so
//! Curator's `getLeader()` shows the value a distlock leader campaigned with.
//!
//! Observing sets a watch on the election's children, on the election node's data and on the
//! leader's data in the same reads that report the state, so no change after a report goes
//! unseen: a new candidate ahead, the leader's resignation or expiry, a proclaim. A read lost
//! with its connection is sent again after the client reconnects; the stream ends with an
//! error when the session it watches through ends.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lock_core::{
    BackendErrorKind, Error, ExtendOutcome, Lease, LockInfo, LockKey, Metadata, Mode, ObserveStream, Result,
};
use tokio::sync::mpsc;
use zookeeper_client::OneshotWatcher;

use crate::children::in_sequence_order;
use crate::error::{zk_err, NAME};
use crate::holders::info_of;
use crate::session::Session;
use crate::ZkBackend;

/// One observed state: the first holder (`None`: vacant), and the watches that fire on the
/// next change.
type Watched = (Option<LockInfo>, Vec<OneshotWatcher>);

impl ZkBackend {
    /// A stream of the first holder of `key`'s `mode` queue (the lock's holder, the election's
    /// leader): the current one, then the one after each change.
    pub(crate) async fn observe_first(&self, key: &LockKey, mode: Mode) -> Result<ObserveStream> {
        let s = self.session().await?;
        let dir = self.queue(key, mode).dir;
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(follow(s, dir, mode, tx));
        Ok(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
            .boxed())
    }
}

/// Whether a read failed in a way that sending it again can mend while the session lives.
fn resendable(e: &Error) -> bool {
    matches!(
        e,
        Error::Backend {
            kind: BackendErrorKind::Connection
                | BackendErrorKind::RequestTimedOut
                | BackendErrorKind::Throttled,
            ..
        }
    )
}

fn session_ended() -> Error {
    Error::backend_msg(
        NAME,
        BackendErrorKind::Unavailable,
        "the ZooKeeper session this observer watched through ended",
    )
}

/// Sends the first holder of the queue in `dir` after every change, until the receiver is
/// dropped; ends with an error when the session ends or a read fails in a way that sending it
/// again cannot mend. A read that went down with its connection, timed out or was throttled
/// is sent again (after a pause growing from 20 ms to 1 s) for as long as the session lives:
/// a client cut off from the ensemble loses its session within its timeout, and an observer
/// of a server that answers slowly or throttles stays open and reports once it answers.
async fn follow(s: Arc<Session>, dir: String, mode: Mode, tx: mpsc::Sender<Result<Option<LockInfo>>>) {
    loop {
        let mut pause = Duration::from_millis(20);
        let read = loop {
            let read = tokio::select! {
                r = read_first_watched(&s, &dir, mode) => r,
                _ = s.lost.fired() => Err(session_ended()),
            };
            match read {
                Err(e) if resendable(&e) && !s.lost.is_fired() => {
                    tracing::debug!(backend = NAME, dir = %dir, error = %e, "observer read again");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = s.lost.fired() => {}
                        _ = tx.closed() => return,
                    }
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                r => break r,
            }
        };
        let (state, watchers) = match read {
            Ok(w) => w,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        if tx.send(Ok(state)).await.is_err() {
            return;
        }
        // A session event (expiry, close) fires the watches too; the next read then fails.
        let changed = futures::future::select_all(watchers.into_iter().map(|w| Box::pin(w.changed())));
        tokio::select! {
            _ = changed => {}
            _ = s.lost.fired() => {
                let _ = tx.send(Err(session_ended())).await;
                return;
            }
            _ = tx.closed() => return,
        }
    }
}

/// The first holder of the queue in `dir`, read with watches on the queue's children and on
/// the holder's data (or, with no directory, on its creation); for a leader, also on what was
/// proclaimed.
async fn read_first_watched(s: &Session, dir: &str, mode: Mode) -> Result<Watched> {
    loop {
        let mut watches = Vec::new();
        let mut proclaimed = Vec::new();
        // No election node when its data was read (a data watch is then set on nothing).
        let mut unwatched = false;
        if mode == Mode::Leader {
            match s.call(|c| c.get_and_watch_data(dir)).await {
                Ok((data, _, on_proclaim)) => {
                    proclaimed = data;
                    watches.push(on_proclaim);
                }
                Err(zookeeper_client::Error::NoNode) => unwatched = true,
                Err(e) => return Err(zk_err("watch", dir, e)),
            }
        }
        let children = match s.call(|c| c.list_and_watch_children(dir)).await {
            Ok(c) => c,
            Err(zookeeper_client::Error::NoNode) => match s.call(|c| c.check_and_watch_stat(dir)).await {
                Ok((None, created)) => return Ok((None, vec![created])),
                Ok((Some(_), _)) => continue, // made meanwhile: read it
                Err(e) => return Err(zk_err("watch", dir, e)),
            },
            Err(e) => return Err(zk_err("watch", dir, e)),
        };
        if unwatched {
            // Made between the two reads: read again, so that a proclaim is watched too.
            continue;
        }
        let (names, on_children) = children;
        for name in in_sequence_order(names) {
            let path = format!("{dir}/{name}");
            match s.call(|c| c.get_and_watch_data(&path)).await {
                Ok((data, stat, on_data)) if stat.ephemeral_owner != 0 => {
                    let mut info = info_of(&name, &data, &stat, mode);
                    if let Some(m) = proclaimed_by(&proclaimed, &name) {
                        info = info.with_metadata(Some(m));
                    }
                    watches.extend([on_children, on_data]);
                    return Ok((Some(info), watches));
                }
                // The directory of a longer name, or a node deleted meanwhile.
                Ok(_) | Err(zookeeper_client::Error::NoNode) => continue,
                Err(e) => return Err(zk_err("watch", &path, e)),
            }
        }
        watches.push(on_children);
        return Ok((None, watches));
    }
}

/// The metadata proclaimed by the leader whose node is `leader`, from the election node's
/// `data`; `None` when nothing was proclaimed, or by another (former) leader.
pub(crate) fn proclaimed_by(data: &[u8], leader: &str) -> Option<Metadata> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    if v.get("leader")?.as_str()? != leader {
        return None;
    }
    serde_json::from_value(v.get("metadata")?.clone()).ok()
}

impl ZkBackend {
    /// Proclaims `metadata` for the leader whose node is `path`: see the module docs.
    pub(crate) async fn proclaim(
        &self,
        s: &Session,
        lease: &Lease,
        path: &str,
        metadata: &Metadata,
    ) -> Result<ExtendOutcome> {
        let (dir, leader) = path.rsplit_once('/').unwrap_or(("", path));
        let record = serde_json::json!({ "leader": leader, "metadata": metadata }).to_string();
        for _ in 0..3 {
            let version = match s.call(|c| c.check_stat(dir)).await {
                Ok(Some(stat)) => stat.version,
                Ok(None) => return Ok(ExtendOutcome::NotHeld),
                Err(e) => return Err(zk_err("stat", dir, e)),
            };
            let written = s
                .call(|c| {
                    let mut w = c.new_multi_writer();
                    let added = w
                        .add_check_version(path, -1)
                        .and_then(|()| w.add_set_data(dir, record.as_bytes(), Some(version)));
                    async move {
                        added?;
                        w.commit().await.map_err(zookeeper_client::Error::from)
                    }
                })
                .await;
            match written {
                Ok(_) => return Ok(ExtendOutcome::Extended { valid_until: lease.valid_until() }),
                Err(zookeeper_client::Error::NoNode) => return Ok(ExtendOutcome::NotHeld),
                Err(zookeeper_client::Error::BadVersion) => continue,
                Err(e) => return Err(zk_err("proclaim in", dir, e)),
            }
        }
        Err(crate::error::unavailable(format!("the data of {dir} kept changing; try again")))
    }
}
