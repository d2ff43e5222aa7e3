//! One watch stream per session, one watcher per held key: a deletion of one of our keys
//! fires that lock's loss signal, and the session's loss fires them all. Renewing a lock held
//! on a session then needs no request: the session's one keep-alive keeps every key alive, and
//! this stream says when one is gone.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lock_core::{Backoff, LossReason, LossSignal};
use tokio::sync::mpsc;

use crate::error::token_expired;
use crate::rpc::pb::{WatchCreateRequest, WatchResponse};
use crate::rpc::{self, EventType, WatchStream};

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
}

impl std::fmt::Debug for KeyWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyWatch").field("keys", &self.entries().len()).finish()
    }
}

impl KeyWatch {
    /// Starts the watcher task; it ends when the session is lost or the watcher is dropped.
    pub(crate) fn start(client: rpc::Client, session_loss: LossSignal) -> Self {
        let entries: Arc<Mutex<HashMap<Vec<u8>, Entry>>> = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let watcher = Watcher {
            client,
            entries: entries.clone(),
            stream: None,
            want: HashMap::new(),
            pending: VecDeque::new(),
            ids: HashMap::new(),
            cancel_when_created: HashSet::new(),
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(2)),
        };
        tokio::spawn(watcher.run(session_loss, rx));
        Self { entries, tx }
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
        signal
    }

    /// Asks the server to report a deletion of `key` from its grant's revision on (so nothing
    /// since the grant is missed). Returns `false` if it was already watched.
    pub(crate) fn watch(&self, key: &[u8]) -> bool {
        let start = match self.entries().get_mut(key) {
            Some(e) if !e.watching => {
                e.watching = true;
                e.created + 1
            }
            _ => return false,
        };
        let _ = self.tx.send(Cmd::Add(key.to_vec(), start));
        true
    }

    /// The grant on `key` is being released: fire its loss signal (whoever released it, the
    /// holder must stop acting; after the holder's own release nobody listens any more) and stop
    /// watching the key.
    pub(crate) fn released(&self, key: &[u8]) {
        let watched = match self.entries().remove(key) {
            Some(e) => {
                e.signal.fire(LossReason::NotHeld);
                e.watching
            }
            None => false,
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
}

impl Watcher {
    fn entries(&self) -> MutexGuard<'_, HashMap<Vec<u8>, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn run(mut self, session_loss: LossSignal, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        loop {
            // (Re)open the stream when keys want watching and it is down.
            if self.stream.is_none() && !self.want.is_empty() {
                self.open().await;
                if self.stream.is_none() {
                    tokio::select! {
                        _ = session_loss.fired() => {}
                        _ = tokio::time::sleep(self.backoff.next_delay()) => continue,
                    }
                }
            }
            tokio::select! {
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
                } => match msg {
                    Ok(Some(resp)) => self.response(resp),
                    // The stream broke: reopen it (from each key's grant revision) on the next turn.
                    _ => {
                        self.stream = None;
                        tokio::select! {
                            _ = session_loss.fired() => {}
                            _ = tokio::time::sleep(self.backoff.next_delay()) => {}
                        }
                    }
                },
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
                self.stream = Some(s);
                self.backoff.reset();
            }
            Err(e) => {
                tracing::debug!(error = %e, "etcd key watch: cannot open the stream");
                if token_expired(&e) {
                    let _ = self.client.refresh_token().await;
                }
            }
        }
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Add(key, start) => {
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

    fn response(&mut self, resp: WatchResponse) {
        if resp.created {
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
            // The start revision was compacted away: we cannot know what happened to that key
            // since; a grant whose key is gone must not look held.
            let key = self.ids.iter().find(|(_, id)| **id == resp.watch_id).map(|(k, _)| k.clone());
            if let Some(k) = key {
                self.ids.remove(&k);
                self.want.remove(&k);
                if let Some(e) = self.entries().get(&k) {
                    e.signal.fire(LossReason::NotHeld);
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
    }
}
