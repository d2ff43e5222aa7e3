//! Watching who leads an election (the layout is in `grants.rs`): one watch of every change
//! under the election's prefix, opened at the revision of the first read, and a read of the
//! leader (the oldest key) after each change, as Go's `Election.Observe` does.
//!
//! No change after a report goes unseen: the watch starts at the first read, so every
//! later campaign, resignation, expiry and proclaim arrives on it and is followed by a read. The
//! stream ends with an error when the watch breaks, is cancelled (its start revision compacted
//! away), falls silent (no answer to a progress request, as a waiter's watch is probed) or a
//! read fails; it holds only a client handle, not the backend (so it never keeps a
//! session alive), and stops when its receiver is dropped.

use std::time::Duration;

use futures::StreamExt;
use lock_core::{
    BackendErrorKind, Error, FencingToken, LockInfo, LockKey, Mode, ObserveStream, OwnerToken, Result,
};
use tokio::sync::mpsc;

use crate::backend::EtcdBackend;
use crate::error::{map_err, NAME};
use crate::grants::{owner_of, stored_metadata};
use crate::rpc::pb::{RangeRequest, WatchCreateRequest};
use crate::rpc::{self, SilenceProbe, WatchStream};

impl EtcdBackend {
    /// A stream of the leader of `key`'s election: the current one, then the one after each
    /// change.
    pub(crate) async fn observe_leader(&self, key: &LockKey) -> Result<ObserveStream> {
        let (pfx, _) = self.grant_key(key, Mode::Leader, OwnerToken::from_u128(0));
        let (tx, rx) = mpsc::channel(8);
        let (first, rev) = leader_at(self.client(), &pfx).await?;
        let ws = self
            // From the read's revision (a change at it shows in the read; reported again, it
            // is filtered as a repeat): a watch that starts past the store's revision gets no
            // progress reports from newer etcd (3.5.22+), and would look silent.
            .call("watch", || self.client().watch(WatchCreateRequest::changes_under(pfx.as_str(), rev)))
            .await?;
        tokio::spawn(follow(self.client().clone(), pfx, ws, first, tx, self.inner.opts.request_timeout));
        Ok(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
            .boxed())
    }
}

/// The leader under `pfx` (the oldest key) and the revision read: repeated through leader
/// elections and failing members within the request timeout, as every read is, and after a
/// new login when the auth token expired (an observer may wait for longer than a token lasts).
async fn leader_at(client: &rpc::Client, pfx: &str) -> Result<(Option<LockInfo>, i64)> {
    let read = || client.range(RangeRequest::prefix(pfx).oldest_first().with_limit(1));
    let r = crate::backend::call_on(client, "leader", read).await?;
    let rev = r.header.map_or(0, |h| h.revision);
    let leader = r.kvs.first().map(|kv| {
        LockInfo::new(Some(FencingToken::new(kv.create_revision as u64)), owner_of(pfx, &kv.key), None)
            .with_mode(Mode::Leader)
            .with_metadata(stored_metadata(Mode::Leader, &kv.value))
    });
    Ok((leader, rev))
}

fn watch_ended(why: &str) -> Error {
    Error::backend_msg(NAME, BackendErrorKind::Unavailable, format!("the election's watch {why}"))
}

/// Sends `first`, then the leader after every change `ws` reports, until the receiver is
/// dropped; ends with an error when the watch ends, falls silent (a member paused or cut off
/// answers no progress request within `answer`, asked after [`PROBE_EVERY`](crate::rpc::PROBE_EVERY) without a
/// message, as waiters do), or a read fails.
async fn follow(
    client: rpc::Client,
    pfx: String,
    mut ws: WatchStream,
    first: Option<LockInfo>,
    tx: mpsc::Sender<Result<Option<LockInfo>>>,
    answer: Duration,
) {
    if tx.send(Ok(first)).await.is_err() {
        return;
    }
    let mut probe = SilenceProbe::new(answer);
    loop {
        let msg = tokio::select! {
            m = ws.message() => m,
            _ = tokio::time::sleep_until(probe.at()) => {
                if !probe.due(&ws) {
                    let _ = tx.send(Err(watch_ended("fell silent (no answer to a progress request)"))).await;
                    return;
                }
                continue;
            }
            _ = tx.closed() => return,
        };
        probe.heard();
        let item = match msg {
            Ok(Some(resp)) if resp.canceled => Err(watch_ended("was cancelled by the server")),
            Ok(Some(resp)) if resp.events.is_empty() => continue,
            Ok(Some(_)) => leader_at(&client, &pfx).await.map(|(l, _)| l),
            Ok(None) => Err(watch_ended("stream ended")),
            Err(e) => Err(map_err(e)),
        };
        let end = item.is_err();
        if tx.send(item).await.is_err() || end {
            return;
        }
    }
}
