//! One watch stream per session, one watcher per held key: a deletion of one of our keys
//! fires that lock's loss signal, and the session's loss fires them all. Renewing a lock held
//! on a session then needs no request: the session's one keep-alive keeps every key alive, and
//! this stream says when one is gone.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{Client, EventType, WatchFilterType, WatchOptions, WatchStream};
use lock_core::{Backoff, LossReason, LossSignal};
use tokio::sync::mpsc;

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
    pub(crate) fn start(client: Client, session_loss: LossSignal) -> Self {
        let entries: Arc<Mutex<HashMap<Vec<u8>, Entry>>> = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(client, session_loss, entries.clone(), rx));
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

fn watch_options(start: i64) -> WatchOptions {
    WatchOptions::new().with_start_revision(start).with_filters([WatchFilterType::NoPut])
}

async fn run(
    client: Client,
    session_loss: LossSignal,
    entries: Arc<Mutex<HashMap<Vec<u8>, Entry>>>,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
) {
    let lock = || entries.lock().unwrap_or_else(|p| p.into_inner());
    let mut stream: Option<WatchStream> = None;
    // Keys we want watched, with the revision to start from.
    let mut want: HashMap<Vec<u8>, i64> = HashMap::new();
    // Keys whose watch was requested, in order, awaiting their `created` response.
    let mut pending: VecDeque<Vec<u8>> = VecDeque::new();
    let mut ids: HashMap<Vec<u8>, i64> = HashMap::new();
    let mut cancel_when_created: HashSet<Vec<u8>> = HashSet::new();
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    loop {
        // (Re)open the stream when keys want watching and it is down.
        if stream.is_none() && !want.is_empty() {
            pending.clear();
            ids.clear();
            cancel_when_created.clear();
            let mut keys = want.iter();
            let Some((first, rev)) = keys.next() else { continue };
            match client.watch_client().watch(first.clone(), Some(watch_options(*rev))).await {
                Ok(mut s) => {
                    pending.push_back(first.clone());
                    let mut ok = true;
                    for (k, r) in keys {
                        if s.watch(k.clone(), Some(watch_options(*r))).await.is_err() {
                            ok = false;
                            break;
                        }
                        pending.push_back(k.clone());
                    }
                    if ok {
                        stream = Some(s);
                        backoff.reset();
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "etcd key watch: cannot open the stream");
                    if crate::token_expired(&e) {
                        let _ = client.refresh_token().await;
                    }
                }
            }
            if stream.is_none() {
                tokio::select! {
                    _ = session_loss.fired() => {}
                    _ = tokio::time::sleep(backoff.next_delay()) => continue,
                }
            }
        }
        tokio::select! {
            reason = session_loss.fired() => {
                for e in lock().values() {
                    e.signal.fire(reason);
                }
                return;
            }
            cmd = rx.recv() => match cmd {
                None => return,
                Some(Cmd::Add(key, start)) => {
                    want.insert(key.clone(), start);
                    if let Some(s) = stream.as_mut() {
                        if s.watch(key.clone(), Some(watch_options(start))).await.is_ok() {
                            pending.push_back(key);
                        } else {
                            stream = None;
                        }
                    }
                }
                Some(Cmd::Remove(key)) => {
                    want.remove(&key);
                    match ids.remove(&key) {
                        Some(id) => {
                            if let Some(s) = stream.as_mut() {
                                let _ = s.cancel(id).await;
                            }
                        }
                        None if pending.contains(&key) => {
                            cancel_when_created.insert(key);
                        }
                        None => {}
                    }
                }
            },
            msg = async {
                match stream.as_mut() {
                    Some(s) => s.message().await,
                    None => std::future::pending().await,
                }
            } => match msg {
                Ok(Some(resp)) => {
                    if resp.created() {
                        if let Some(key) = pending.pop_front() {
                            if cancel_when_created.remove(&key) {
                                if let Some(s) = stream.as_mut() {
                                    let _ = s.cancel(resp.watch_id()).await;
                                }
                            } else {
                                ids.insert(key, resp.watch_id());
                            }
                        }
                    }
                    if resp.compact_revision() > 0 {
                        // The start revision was compacted away: we cannot know what happened
                        // to that key since; a grant whose key is gone must not look held.
                        let key = ids.iter().find(|(_, id)| **id == resp.watch_id()).map(|(k, _)| k.clone());
                        if let Some(k) = key {
                            ids.remove(&k);
                            want.remove(&k);
                            if let Some(e) = lock().get(&k) {
                                e.signal.fire(LossReason::NotHeld);
                            }
                        }
                    }
                    for ev in resp.events() {
                        if ev.event_type() != EventType::Delete {
                            continue;
                        }
                        let Some(kv) = ev.kv() else { continue };
                        if let Some(e) = lock().get(kv.key()) {
                            if kv.mod_revision() > e.created {
                                e.signal.fire(LossReason::NotHeld);
                            }
                        }
                    }
                }
                // The stream broke: reopen it (from each key's grant revision) on the next turn.
                _ => {
                    stream = None;
                    tokio::select! {
                        _ = session_loss.fired() => {}
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            },
        }
    }
}
