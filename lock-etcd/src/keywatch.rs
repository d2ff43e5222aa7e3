//! One watch stream per session, one watcher per held key: a deletion of one of our keys
//! fires that lock's loss signal, and the session's loss fires them all. Renewing a lock held
//! on a session then needs no request: the session's one keep-alive keeps every key alive, and
//! this stream says when one is gone.
//!
//! A member that stops answering leaves the stream open and silent: after
//! [`PROBE_EVERY`](rpc::PROBE_EVERY) without a message the stream is asked for a progress
//! report, and one that does not answer within a request timeout is opened again (on another
//! member: the client passes the silent one over), each key watched from its grant's revision
//! or the revision it was last read at, so a deletion made meanwhile is still reported.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lock_core::{Backoff, LossReason, LossSignal};
use tokio::sync::mpsc;

use crate::rpc::pb::{RangeRequest, WatchCreateRequest, WatchResponse};
use crate::rpc::{self, EventType, SilenceProbe, WatchStream};

struct Entry {
    signal: LossSignal,
    /// The grant's create revision: only a deletion after it concerns this grant.
    created: i64,
    /// Whether the server watches the key yet (asked for at the grant's first renewal).
    watching: bool,
}

enum Cmd {
    Add(Vec<u8>, i64),
    Remove(Vec<u8>),
}

/// The watcher of one session's keys.
pub(crate) struct KeyWatch {
    entries: Arc<Mutex<HashMap<Vec<u8>, Entry>>>,
    tx: mpsc::UnboundedSender<Cmd>,
    session_loss: LossSignal,
}

impl std::fmt::Debug for KeyWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyWatch").field("keys", &self.entries().len()).finish()
    }
}

impl KeyWatch {
    /// Starts the watcher task; it ends when the session is lost or the watcher is dropped.
    /// A stream that answers no progress request within `answer` is opened again.
    pub(crate) fn start(client: rpc::Client, session_loss: LossSignal, answer: Duration) -> Self {
        let entries: Arc<Mutex<HashMap<Vec<u8>, Entry>>> = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let watcher = Watcher::new(client, entries.clone(), answer);
        tokio::spawn(watcher.run(session_loss.clone(), rx));
        Self { entries, tx, session_loss }
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<Vec<u8>, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers the grant on `key` (created at revision `created`) and returns its loss signal,
    /// which fires when the session is lost. Nothing is sent: a lock released before its first
    /// renewal costs the server nothing.
    pub(crate) fn add(&self, key: &[u8], created: i64) -> LossSignal {
        let signal = LossSignal::new();
        self.entries().insert(key.to_vec(), Entry { signal: signal.clone(), created, watching: false });
        // The watcher fires the signals it finds when the session is lost, once: a grant added
        // after that (its request answered as the session ended) is fired here.
        if let Some(reason) = self.session_loss.reason() {
            signal.fire(reason);
        }
        signal
    }

    /// Asks the server to report a deletion of `key` from its grant's revision on (so nothing
    /// since the grant is missed). Returns `false` if it was already watched.
    pub(crate) fn watch(&self, key: &[u8]) -> bool {
        let start = match self.entries().get_mut(key) {
            // From the grant's own revision (its put is filtered out): a watch that starts
            // past the store's revision gets no progress reports from newer etcd (3.5.22+),
            // and the probe would take its silence for a dead member's.
            Some(e) if !e.watching => {
                e.watching = true;
                e.created
            }
            _ => return false,
        };
        let _ = self.tx.send(Cmd::Add(key.to_vec(), start));
        true
    }

    /// The grant on `key` created at revision `created` is being released: fire its loss
    /// signal (whoever released it, the holder must stop acting; after the holder's own release
    /// nobody listens any more) and stop watching the key. A later grant on the same key (a
    /// stale release of an earlier one) is left alone.
    pub(crate) fn released(&self, key: &[u8], created: i64) {
        let watched = {
            let mut entries = self.entries();
            match entries.get(key) {
                Some(e) if e.created == created => {
                    e.signal.fire(LossReason::NotHeld);
                    let watching = e.watching;
                    entries.remove(key);
                    watching
                }
                _ => false,
            }
        };
        if watched {
            let _ = self.tx.send(Cmd::Remove(key.to_vec()));
        }
    }
}

/// The task behind a [`KeyWatch`]: the stream and what it watches.
struct Watcher {
    client: rpc::Client,
    entries: Arc<Mutex<HashMap<Vec<u8>, Entry>>>,
    stream: Option<WatchStream>,
    /// Keys we want watched, with the revision to start from.
    want: HashMap<Vec<u8>, i64>,
    /// Keys whose watch was requested, in order, awaiting their `created` response.
    pending: VecDeque<Vec<u8>>,
    /// The watch id of each watched key.
    ids: HashMap<Vec<u8>, i64>,
    /// Keys released while their watch was being created: cancel it once it is.
    cancel_when_created: HashSet<Vec<u8>>,
    backoff: Backoff,
    /// Log in again before the stream is next opened (a watch was refused).
    refresh: bool,
    /// The stream was opened right after a new login: a refusal on it is not an expired token.
    fresh: bool,
    /// The watches of the stream's opening batch still to be answered: once all are, the
    /// token it was opened with was good for them, and a later refusal is of one that has
    /// expired since.
    initial: usize,
    /// Keys whose watch was cancelled because its start revision was compacted, with their
    /// grant's create revision: read again before they are watched again or reported lost.
    recheck: Vec<(Vec<u8>, i64)>,
    /// Tells the open stream's silence from quiet.
    probe: SilenceProbe,
}

impl Watcher {
    fn new(client: rpc::Client, entries: Arc<Mutex<HashMap<Vec<u8>, Entry>>>, answer: Duration) -> Self {
        Self {
            client,
            entries,
            stream: None,
            want: HashMap::new(),
            pending: VecDeque::new(),
            ids: HashMap::new(),
            cancel_when_created: HashSet::new(),
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(2)),
            refresh: false,
            fresh: false,
            initial: 0,
            recheck: Vec::new(),
            probe: SilenceProbe::new(answer),
        }
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<Vec<u8>, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn run(mut self, session_loss: LossSignal, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        loop {
            if !self.recheck.is_empty() {
                self.recheck().await;
            }
            // (Re)open the stream when keys want watching and it is down.
            if self.stream.is_none() && !self.want.is_empty() {
                self.fresh = false;
                if std::mem::take(&mut self.refresh) {
                    self.fresh = self.client.refresh_token().await.is_ok();
                }
                self.open().await;
                if self.stream.is_none() {
                    tokio::select! {
                        _ = session_loss.fired() => {}
                        _ = tokio::time::sleep(self.backoff.next_delay()) => continue,
                    }
                }
            }
            // Only a stream with watchers answers progress requests (etcd 3.4.25+, 3.5).
            let probe_at = (self.stream.is_some() && !self.want.is_empty()).then(|| self.probe.at());
            tokio::select! {
                _ = lock_core::wait::sleep_until_opt(probe_at) => {
                    if self.stream.as_ref().is_some_and(|s| !self.probe.due(s)) {
                        tracing::debug!("etcd key watch fell silent; opening the stream again");
                        self.stream = None;
                    }
                }
                reason = session_loss.fired() => {
                    for e in self.entries().values() {
                        e.signal.fire(reason);
                    }
                    return;
                }
                cmd = rx.recv() => match cmd {
                    None => return,
                    Some(cmd) => self.command(cmd),
                },
                msg = async {
                    match self.stream.as_mut() {
                        Some(s) => s.message().await,
                        None => std::future::pending().await,
                    }
                } => {
                    // The stream broke, or a watch on it was refused: reopen it (from each
                    // key's grant revision) on the next turn.
                    let keep = match msg {
                        Ok(Some(resp)) => {
                            self.probe.heard();
                            self.response(resp)
                        }
                        _ => false,
                    };
                    if !keep {
                        self.stream = None;
                        tokio::select! {
                            _ = session_loss.fired() => {}
                            _ = tokio::time::sleep(self.backoff.next_delay()) => {}
                        }
                    }
                }
            }
        }
    }

    /// Opens the stream with a watcher for every wanted key.
    async fn open(&mut self) {
        self.pending.clear();
        self.ids.clear();
        self.cancel_when_created.clear();
        let mut keys = self.want.iter();
        let Some((first, rev)) = keys.next() else { return };
        match self.client.watch(WatchCreateRequest::deletions_of(first.clone(), *rev)).await {
            Ok(s) => {
                self.pending.push_back(first.clone());
                for (k, r) in keys {
                    if s.watch(WatchCreateRequest::deletions_of(k.clone(), *r)).is_err() {
                        return;
                    }
                    self.pending.push_back(k.clone());
                }
                self.initial = self.pending.len();
                self.stream = Some(s);
                self.probe.heard();
            }
            Err(e) => {
                tracing::debug!(error = %e, "etcd key watch: cannot open the stream");
                let _ = self.client.login_again_after(&e).await;
            }
        }
    }

    /// Reads each key whose watch history was compacted away: the grant still stands if its
    /// key exists with the grant's create revision (a key deleted and created again has
    /// another), and is then watched from after the read; otherwise, or if the read fails,
    /// the grant must not look held.
    async fn recheck(&mut self) {
        for (key, created) in std::mem::take(&mut self.recheck) {
            // Released meanwhile. The grant's removal may still be on its way here while a
            // later grant on the same key (a session's next lock of the name) is registered:
            // that grant stands at another create revision, and the read below would take
            // it for this one's loss.
            let current = self.entries().get(&key).map(|e| e.created);
            if !self.want.contains_key(&key) || current != Some(created) {
                continue;
            }
            let req = || RangeRequest::key(key.clone()).without_values();
            let mut read = self.client.range(req()).await;
            if let Err(e) = &read {
                if self.client.login_again_after(e).await {
                    read = self.client.range(req()).await;
                }
            }
            let from = match read {
                Ok(r) if r.kvs.first().is_some_and(|kv| kv.create_revision == created) => {
                    r.header.map(|h| h.revision)
                }
                Ok(_) => None,
                Err(e) => {
                    tracing::debug!(error = %e, "etcd key watch: cannot read a key whose history was compacted");
                    None
                }
            };
            match from {
                Some(rev) => self.command(Cmd::Add(key, rev)),
                None => {
                    self.want.remove(&key);
                    if let Some(e) = self.entries().get(&key) {
                        e.signal.fire(LossReason::NotHeld);
                    }
                }
            }
        }
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Add(key, start) => {
                if self.want.is_empty() {
                    // Not probed while it watched nothing: the probe starts over.
                    self.probe.heard();
                }
                self.want.insert(key.clone(), start);
                if let Some(s) = self.stream.as_ref() {
                    if s.watch(WatchCreateRequest::deletions_of(key.clone(), start)).is_ok() {
                        self.pending.push_back(key);
                    } else {
                        self.stream = None;
                    }
                }
            }
            Cmd::Remove(key) => {
                self.want.remove(&key);
                match self.ids.remove(&key) {
                    Some(id) => {
                        if let Some(s) = self.stream.as_ref() {
                            let _ = s.cancel(id);
                        }
                    }
                    None if self.pending.contains(&key) => {
                        self.cancel_when_created.insert(key);
                    }
                    None => {}
                }
            }
        }
    }

    /// Handles one message of the stream; `false` when the stream must be opened again.
    fn response(&mut self, resp: WatchResponse) -> bool {
        if resp.created && resp.canceled && resp.compact_revision == 0 {
            // The server refused a new watch. etcd checks the auth token the stream was opened
            // with on each new watch, and the session's keep-alives do not keep that token
            // alive: once it expired, every key added later would go unwatched. Its reply may
            // also carry the id of a watch in place, so the whole stream is opened again after
            // a new login. A watch refused on a stream opened with a token just issued is not
            // an expired token: that key cannot be watched, and its grant must not look held.
            let key = self.pending.pop_front();
            tracing::debug!(reason = %resp.cancel_reason, "etcd key watch refused; opening the stream again");
            if self.fresh || !self.client.has_credentials() {
                if let Some(k) = key {
                    tracing::warn!(reason = %resp.cancel_reason, "etcd refused to watch a held key; its lock is reported lost");
                    self.want.remove(&k);
                    if let Some(e) = self.entries().get(&k) {
                        e.signal.fire(LossReason::NotHeld);
                    }
                }
            }
            self.refresh = self.client.has_credentials();
            return false;
        }
        if resp.created {
            self.backoff.reset();
            // Every watch of the opening batch set: the token the stream was opened with was
            // good then. A later refusal may be of a token that has expired since, not a key
            // that cannot be watched (one refused in the batch, on a fresh token, cannot be).
            if self.initial > 0 {
                self.initial -= 1;
                if self.initial == 0 {
                    self.fresh = false;
                }
            }
            if let Some(key) = self.pending.pop_front() {
                if self.cancel_when_created.remove(&key) {
                    if let Some(s) = self.stream.as_ref() {
                        let _ = s.cancel(resp.watch_id);
                    }
                } else {
                    self.ids.insert(key, resp.watch_id);
                }
            }
        }
        if resp.compact_revision > 0 {
            // The start revision was compacted away (the stream was opened again from each
            // grant's revision, or the first renewal came after a compaction): the events
            // since are gone, so the key is read again before it is watched again.
            let key = self.ids.iter().find(|(_, id)| **id == resp.watch_id).map(|(k, _)| k.clone());
            if let Some(k) = key {
                self.ids.remove(&k);
                let created = self.entries().get(&k).map(|e| e.created);
                if let Some(created) = created {
                    self.recheck.push((k, created));
                }
            }
        }
        for ev in &resp.events {
            if ev.r#type() != EventType::Delete {
                continue;
            }
            let Some(kv) = ev.kv.as_ref() else { continue };
            if let Some(e) = self.entries().get(&kv.key) {
                if kv.mod_revision > e.created {
                    e.signal.fire(LossReason::NotHeld);
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A grant whose watch history was compacted, released and followed on the same key by a
    /// later grant before its recheck ran: the recheck must not report the later grant lost.
    #[tokio::test]
    async fn a_stale_recheck_leaves_a_later_grant_on_the_same_key_alone() {
        let etcd = conformance_tests::fixtures::etcd::EtcdCluster::single().await.expect("etcd");
        let client = rpc::Client::connect(&crate::EtcdOptions::new(etcd.endpoints())).await.expect("connect");
        let key = b"stale-recheck".to_vec();
        let first = client.put(crate::rpc::pb::PutRequest::new(key.clone(), "a", 0)).await.expect("put");
        client.delete_range(crate::rpc::pb::DeleteRangeRequest::key(key.clone())).await.expect("delete");
        let later = client.put(crate::rpc::pb::PutRequest::new(key.clone(), "b", 0)).await.expect("put");
        let (old_rev, new_rev) = (revision(first.header), revision(later.header));
        assert!(new_rev > old_rev);

        let loss = LossSignal::new();
        let keys = KeyWatch::start(client.clone(), loss.clone(), Duration::from_secs(5));
        // The watcher as it stands when the first grant's compacted watch was answered: its
        // key still wanted (the release's removal not read yet), the later grant registered.
        let signal = keys.add(&key, new_rev);
        let mut watcher = Watcher::new(client, keys.entries.clone(), Duration::from_secs(5));
        watcher.want.insert(key.clone(), old_rev);
        watcher.recheck.push((key.clone(), old_rev));
        watcher.recheck().await;
        assert_eq!(signal.reason(), None, "the later grant was reported lost by the earlier one's recheck");
    }

    fn revision(header: Option<crate::rpc::pb::ResponseHeader>) -> i64 {
        header.map(|h| h.revision).unwrap_or_default()
    }

    /// A grant added after the session was lost (and the watcher ended) is reported lost.
    #[tokio::test]
    async fn a_grant_added_after_the_session_was_lost_is_lost() {
        let etcd = conformance_tests::fixtures::etcd::EtcdCluster::single().await.expect("etcd");
        let client = rpc::Client::connect(&crate::EtcdOptions::new(etcd.endpoints())).await.expect("connect");
        let loss = LossSignal::new();
        let keys = KeyWatch::start(client, loss.clone(), Duration::from_secs(1));
        loss.fire(LossReason::SessionLost);
        while !keys.tx.is_closed() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let signal = keys.add(b"k", 5);
        assert_eq!(
            signal.reason(),
            Some(LossReason::SessionLost),
            "a grant added after the session's end looks held"
        );
    }
}
