//! The grants a session holds, and what fires a grant's loss signal when its node is deleted
//! by someone else.
//!
//! # Two ways of watching
//! - A session holding few grants at once watches each grant's node
//!   ([`watch_child`](crate::watch)): one `exists` watch and one small task per grant. Each
//!   costs about 1.2 KiB of client memory (the task, and zookeeper-client's record of the
//!   watch), and nothing reaches the session but its own nodes' events.
//! - From [`SESSION_WATCH_FROM`] grants held at once, the session sets one persistent
//!   recursive watch on the backend's prefix (ZooKeeper 3.6 and later) and keeps it for its
//!   life: a later grant is then only an entry in a map from its node's path to its loss
//!   signal (about 50 bytes), and a deletion event under the prefix fires the signal of the
//!   grant whose node it was. The price: every change under the prefix, by any client,
//!   reaches that session (one event each), which is why a session holding one or two locks
//!   does not take this way. A server older than 3.6 refuses the watch, and the session keeps
//!   watching node by node.
//!
//! # What no event misses
//! - A grant made while the session-wide watch is being set is checked (one `exists`) once
//!   the watch is set; a grant entered later whose attempt began before the watch was
//!   confirmed (its node was read before the server had the watch) checks itself the same way.
//! - A deletion event that arrives before its grant is entered in the map (the node deleted
//!   right after its owner found it held) is remembered: the last [`RECENT`] deleted paths
//!   that no entry matched are kept (as hashes) and looked up when a grant is entered. A grant
//!   whose attempt began before the last time that memory overflowed checks itself.
//! - The server forgets a connection's watches when it breaks, and zookeeper-client 0.11
//!   sets only the one-shot ones again on reconnection; events during a disconnection are not
//!   replayed for persistent watches either (ZOOKEEPER-4698). So after a reconnection the
//!   watch is set again, and the session then lists its own ephemeral nodes under the prefix
//!   (`getEphemerals`, one request) and fires the signal of every grant entered before it
//!   whose node is not among them.
//! - The session's end (expiry, closed, given up) fires every signal with `SessionLost`, and
//!   so does dropping the session.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use lock_core::{Instant, LossReason, LossSignal};
use zookeeper_client::{AddWatchMode, EventType, SessionState};

use crate::error::NAME;
use crate::session::Session;
use crate::watch::watch_child;

/// How many grants a session holds at once before it watches its prefix as a whole.
pub(crate) const SESSION_WATCH_FROM: usize = 32;

/// How many deleted paths that matched no grant are remembered (see the module's docs).
const RECENT: usize = 256;

/// A session's held grants (see the module's docs).
#[derive(Default)]
pub(crate) struct Registry {
    state: Mutex<State>,
    /// Fired when the session is dropped: the session-wide watch's task ends.
    closed: LossSignal,
}

#[derive(Default)]
struct State {
    /// How many grants are watched node by node now.
    per_node: usize,
    /// The grants the session-wide watch answers for: node path → the lease's loss signal.
    nodes: HashMap<Arc<str>, LossSignal>,
    /// Hashes of the last deleted paths that matched no entry of `nodes`.
    recent: VecDeque<u64>,
    /// When [`recent`](Self::recent) last let a hash go.
    overflowed_at: Option<Instant>,
    /// When the server last confirmed the session-wide watch (set, or set again after a
    /// reconnection).
    confirmed_at: Option<Instant>,
    hasher: std::hash::RandomState,
    watch: Watch,
}

/// Where the session-wide watch stands.
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum Watch {
    /// Not asked for: grants are watched node by node.
    #[default]
    None,
    /// Asked for; grants entered now are checked once it is set.
    Setting,
    Set,
    /// The server cannot (older than 3.6): node by node for good.
    Refused,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("Registry")
            .field("per_node", &st.per_node)
            .field("mapped", &st.nodes.len())
            .field("watch", &st.watch)
            .finish()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.closed.fire(LossReason::SessionLost);
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        for (_, signal) in st.nodes.drain() {
            signal.fire(LossReason::SessionLost);
        }
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fires every mapped grant's signal with `reason` and forgets them.
    fn fire_all(&self, reason: LossReason) {
        let nodes = std::mem::take(&mut self.lock().nodes);
        for (_, signal) in nodes {
            signal.fire(reason);
        }
    }

    /// The node at `path` was deleted: fires its grant's signal, or remembers the path.
    fn deleted(&self, path: &str) {
        let signal = {
            let mut st = self.lock();
            match st.nodes.remove(path) {
                Some(signal) => Some(signal),
                None => {
                    let h = st.hasher.hash_one(path);
                    if st.recent.len() == RECENT {
                        st.recent.pop_front();
                        st.overflowed_at = Some(Instant::now());
                    }
                    st.recent.push_back(h);
                    None
                }
            }
        };
        if let Some(signal) = signal {
            signal.fire(LossReason::NotHeld);
        }
    }

    /// A grant whose node is `path` is no longer ours to watch (released).
    pub(crate) fn forget(&self, path: &str) {
        self.lock().nodes.remove(path);
    }

    /// A node-by-node watcher ended.
    pub(crate) fn per_node_ended(&self) {
        let mut st = self.lock();
        st.per_node = st.per_node.saturating_sub(1);
    }
}

impl Session {
    /// Watches the node at `path` of a grant just made on this session by an attempt that
    /// began at `since`, whose lease's loss signal is `signal`, one way or the other (see the
    /// module's docs). `prefix` is the backend's, under which every node of it lies.
    pub(crate) fn hold(self: &Arc<Self>, prefix: &str, path: Arc<str>, signal: LossSignal, since: Instant) {
        let mut st = self.held.lock();
        let mapped = match st.watch {
            Watch::Setting | Watch::Set => true,
            Watch::Refused => false,
            Watch::None if st.per_node + 1 >= SESSION_WATCH_FROM => {
                st.watch = Watch::Setting;
                tokio::spawn(follow(Arc::downgrade(self), prefix.to_owned()));
                true
            }
            Watch::None => false,
        };
        if !mapped {
            st.per_node += 1;
            drop(st);
            tokio::spawn(watch_child(Arc::downgrade(self), path, signal));
            return;
        }
        if st.recent.contains(&st.hasher.hash_one(&*path)) {
            drop(st);
            signal.fire(LossReason::NotHeld);
            return;
        }
        // Read before the server had the watch, or before the memory of deletions last let
        // one go: no event may ever come for a deletion already made.
        let before = |t: Option<Instant>| t.is_some_and(|t| since <= t);
        let check = st.watch == Watch::Set && (before(st.confirmed_at) || before(st.overflowed_at));
        st.nodes.insert(path.clone(), signal);
        drop(st);
        // Lost before the entry was made: the watch's task may have fired the others already.
        if self.lost.is_fired() {
            self.held.fire_all(LossReason::SessionLost);
            return;
        }
        if check {
            let session = Arc::downgrade(self);
            tokio::spawn(async move {
                if let Some(s) = session.upgrade() {
                    verify(&s, &[path]).await;
                }
            });
        }
    }
}

/// The session-wide watch's task: sets the watch, then fires the signals of the grants whose
/// nodes its events say are deleted, until the session ends or is dropped.
async fn follow(session: Weak<Session>, prefix: String) {
    let Some(s) = session.upgrade() else { return };
    let (lost, closed) = (s.lost.clone(), s.held.closed.clone());
    drop(s);
    let Some(mut watcher) = set_watch(&session, &prefix, &lost, &closed).await else { return };
    // The grants entered while the watch was being set: their nodes may have gone before.
    let Some(s) = session.upgrade() else { return };
    let entered: Vec<Arc<str>> = {
        let mut st = s.held.lock();
        st.watch = Watch::Set;
        st.confirmed_at = Some(Instant::now());
        st.nodes.keys().cloned().collect()
    };
    verify(&s, &entered).await;
    drop(s);
    let mut disconnected = false;
    loop {
        let event = tokio::select! {
            biased;
            _ = closed.fired() => return,
            _ = lost.fired() => {
                if let Some(s) = session.upgrade() {
                    s.held.fire_all(LossReason::SessionLost);
                }
                return;
            }
            e = watcher.changed() => e,
        };
        let Some(s) = session.upgrade() else { return };
        match (event.event_type, event.session_state) {
            (EventType::NodeDeleted, _) => s.held.deleted(&event.path),
            (EventType::Session, SessionState::Disconnected) => disconnected = true,
            (EventType::Session, SessionState::SyncConnected | SessionState::ConnectedReadOnly)
                if disconnected =>
            {
                disconnected = false;
                drop(s);
                // The server forgot the watch with the old connection. The new watch goes in
                // before the old one is dropped: dropping it alone would ask the server to
                // remove the prefix's watch.
                let Some(w) = set_watch(&session, &prefix, &lost, &closed).await else { return };
                watcher = w;
                let Some(s) = session.upgrade() else { return };
                s.held.lock().confirmed_at = Some(Instant::now());
                recheck(&s, &prefix).await;
            }
            (EventType::Session, state) if state.is_terminated() => {
                // No further event comes (and asking for one would panic).
                s.held.fire_all(LossReason::SessionLost);
                return;
            }
            _ => {}
        }
    }
}

/// Sets the persistent recursive watch on `prefix` (at the start, and again after each
/// reconnection), trying again every 200 ms after an error, until it is set. `None` when the
/// task should end instead: the session was dropped or closed; or lost (every signal fired);
/// or the server has no such watches (before ZooKeeper 3.6: the grants are then watched node
/// by node, see [`node_by_node`]).
async fn set_watch(
    session: &Weak<Session>,
    prefix: &str,
    lost: &LossSignal,
    closed: &LossSignal,
) -> Option<zookeeper_client::PersistentWatcher> {
    loop {
        let s = session.upgrade()?;
        let set = tokio::select! {
            biased;
            _ = closed.fired() => return None,
            _ = lost.fired() => {
                s.held.fire_all(LossReason::SessionLost);
                return None;
            }
            r = s.client.watch(prefix, AddWatchMode::PersistentRecursive) => r,
        };
        match set {
            Ok(w) => return Some(w),
            Err(zookeeper_client::Error::Unimplemented) => {
                node_by_node(&s);
                return None;
            }
            Err(e) => {
                drop(s);
                tracing::debug!(backend = NAME, prefix, error = %e, "could not watch the prefix; trying again");
                tokio::select! {
                    biased;
                    _ = closed.fired() => return None,
                    _ = lost.fired() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    }
}

/// The server cannot watch a prefix: the grants entered meanwhile, and all later ones, are
/// watched node by node.
fn node_by_node(s: &Arc<Session>) {
    tracing::info!(
        backend = NAME,
        "the server has no persistent recursive watches (ZooKeeper 3.6+); held locks are watched one by one"
    );
    let nodes = {
        let mut st = s.held.lock();
        st.watch = Watch::Refused;
        st.per_node += st.nodes.len();
        std::mem::take(&mut st.nodes)
    };
    for (path, signal) in nodes {
        tokio::spawn(watch_child(Arc::downgrade(s), path, signal));
    }
}

/// Fires the signal of each grant in `paths` (still entered) whose node no longer exists.
async fn verify(s: &Session, paths: &[Arc<str>]) {
    let checks = futures::future::join_all(paths.iter().map(|p| s.call(|c| c.check_stat(p)))).await;
    for (path, r) in paths.iter().zip(checks) {
        if let Ok(None) = r {
            s.held.deleted(path);
        }
    }
}

/// After a reconnection: fires the signal of each grant entered before now whose node is not
/// among the session's ephemeral nodes under `prefix`.
async fn recheck(s: &Session, prefix: &str) {
    let entered: Vec<Arc<str>> = s.held.lock().nodes.keys().cloned().collect();
    if entered.is_empty() {
        return;
    }
    let alive = match s.call(|c| c.list_ephemerals(prefix)).await {
        Ok(alive) => alive,
        Err(e) => {
            // The session's own loss signal says whether it ended; a failure here while it
            // lives leaves each grant to the next event about its node.
            tracing::debug!(backend = NAME, error = %e, "could not list the session's nodes after a reconnection");
            return;
        }
    };
    let alive: HashSet<&str> = alive.iter().map(String::as_str).collect();
    for path in entered {
        if !alive.contains(&*path) {
            s.held.deleted(&path);
        }
    }
}
