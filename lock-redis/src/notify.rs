//! Wake-ups by pub/sub: one subscriber connection per node per client, shared by all its
//! waiters, reconnecting on its own. A channel stays subscribed for a second after its last
//! waiter left, so repeated waits on one name do not subscribe each time.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use lock_core::Backoff;
use tokio::sync::{mpsc, oneshot, Notify};

enum Command {
    /// Subscribe (if not yet) and answer `true` once the subscription is confirmed.
    Subscribe(String, oneshot::Sender<bool>),
    /// Unsubscribe if nobody watches the channel any more.
    Unsubscribe(String),
    /// Subscribe on these servers from now on (a Sentinel failover): reconnect to them and
    /// subscribe every watched channel there.
    Retarget(Vec<redis::Client>),
}

#[derive(Default)]
struct Shared {
    channels: Mutex<HashMap<String, (Arc<Notify>, usize)>>,
    /// The waiters a release can wake alone (message `w:<owner>`), by owner token (hex).
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Shared {
    fn channels(&self) -> MutexGuard<'_, HashMap<String, (Arc<Notify>, usize)>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn waiters(&self) -> MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Delivers one message of `channel`: `w:<owner>` wakes that waiter alone (if it is
    /// ours), anything else every waiter of the channel.
    fn deliver(&self, channel: &str, payload: &[u8]) {
        if let Some(owner) = payload.strip_prefix(b"w:") {
            if let Some(n) = std::str::from_utf8(owner).ok().and_then(|o| self.waiters().get(o).cloned()) {
                // A permit is kept if the waiter is between two waits: it is not lost.
                n.notify_one();
            }
            return;
        }
        if let Some((n, _)) = self.channels().get(channel) {
            n.notify_waiters();
        }
    }

    fn wake_all(&self) {
        for (n, _) in self.channels().values() {
            n.notify_waiters();
        }
        for n in self.waiters().values() {
            n.notify_one();
        }
    }
}

/// The pub/sub side of one node. Clones share the subscriber connection and its waiters.
#[derive(Clone)]
pub(crate) struct Notifier {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").field("channels", &self.shared.channels().len()).finish()
    }
}

/// Interest in one channel; dropping it unsubscribes when nobody else watches.
pub(crate) struct Subscription {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Command>,
    channel: String,
    /// Woken by every message of the channel but those addressed to one waiter.
    pub(crate) notify: Arc<Notify>,
    /// The waiter this subscription is for, woken by messages addressed to it (`w:<owner>`).
    pub(crate) own: Option<(String, Arc<Notify>)>,
}

impl Subscription {
    /// What wakes the waiter: the channel's messages, and those addressed to it.
    pub(crate) fn wakers(&self) -> impl Iterator<Item = &Notify> {
        std::iter::once(&*self.notify).chain(self.own.as_ref().map(|(_, n)| &**n))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some((owner, _)) = &self.own {
            self.shared.waiters().remove(owner);
        }
        let mut map = self.shared.channels();
        if let Some(entry) = map.get_mut(&self.channel) {
            entry.1 -= 1;
            if entry.1 == 0 {
                map.remove(&self.channel);
                let _ = self.tx.send(Command::Unsubscribe(self.channel.clone()));
            }
        }
    }
}

impl Notifier {
    /// Starts the subscriber task for `client`. The task ends when the notifier and all its
    /// subscriptions are dropped. A (un)subscription that gets no confirmation within
    /// `request_timeout` counts as a lost connection: the task reconnects.
    pub(crate) fn start(
        clients: Vec<redis::Client>,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Self {
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let timeouts = Timeouts { connect: connect_timeout, request: request_timeout };
        tokio::spawn(run(clients, timeouts, shared.clone(), rx));
        Self { shared, tx }
    }

    /// This notifier, moved to `clients` (a Sentinel failover's new primary): its subscriber
    /// reconnects there and subscribes every watched channel, so the waiters that subscribed
    /// before the failover keep their wake-ups, now delivered from the new primary (they fell
    /// back to polling before).
    pub(crate) fn moved_to(&self, clients: Vec<redis::Client>) -> Notifier {
        let _ = self.tx.send(Command::Retarget(clients));
        self.clone()
    }

    /// Watches `channel`, for the waiter `owner` (hex) where a release may wake it alone.
    /// Waits (at most `confirm`) until the subscription is confirmed, so a release published
    /// after this returns is not missed. If the subscriber connection is down or slow, returns
    /// unconfirmed: the waiter then relies on its bounded polling, and is woken by messages
    /// once the subscription is in place.
    pub(crate) async fn watch(
        &self,
        channel: &str,
        confirm: Duration,
        owner: Option<String>,
    ) -> Subscription {
        let notify = {
            let mut map = self.shared.channels();
            let entry = map.entry(channel.to_owned()).or_insert_with(|| (Arc::new(Notify::new()), 0));
            entry.1 += 1;
            entry.0.clone()
        };
        let own = owner.map(|o| {
            let n = Arc::new(Notify::new());
            self.shared.waiters().insert(o.clone(), n.clone());
            (o, n)
        });
        let sub = Subscription {
            shared: self.shared.clone(),
            tx: self.tx.clone(),
            channel: channel.to_owned(),
            notify,
            own,
        };
        let (reply, confirmed) = oneshot::channel();
        if self.tx.send(Command::Subscribe(channel.to_owned(), reply)).is_ok() {
            let _ = tokio::time::timeout(confirm, confirmed).await;
        }
        sub
    }
}

#[derive(Clone, Copy)]
struct Timeouts {
    connect: Duration,
    request: Duration,
}

/// `request` within `timeout`: `false` when it failed or got no answer in time.
async fn within<T, E>(timeout: Duration, request: impl std::future::Future<Output = Result<T, E>>) -> bool {
    matches!(tokio::time::timeout(timeout, request).await, Ok(Ok(_)))
}

/// How a stretch without a subscriber connection ended.
enum Down {
    /// The notifier is gone: the task ends.
    Gone,
    /// The pause is over: connect again.
    Again,
    /// Told of other servers: connect to them at once.
    Moved(Vec<redis::Client>),
}

/// Down: answers requests at once (waiters poll meanwhile) for `pause`, or until told of
/// other servers.
async fn answer_while_down(rx: &mut mpsc::UnboundedReceiver<Command>, pause: Duration) -> Down {
    let sleep = tokio::time::sleep(pause);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = &mut sleep => return Down::Again,
            cmd = rx.recv() => match cmd {
                None => return Down::Gone,
                Some(Command::Subscribe(_, reply)) => { let _ = reply.send(false); }
                Some(Command::Unsubscribe(_)) => {}
                Some(Command::Retarget(to)) => return Down::Moved(to),
            }
        }
    }
}

/// How long a channel stays subscribed after its last watcher left: a client that waits for
/// the same name again and again (a worker pool on one semaphore) subscribes once, not per
/// wait.
const LINGER: Duration = Duration::from_secs(1);

/// Completes when the first of `lingering` is due; never when there is none.
async fn sleep_until_first(lingering: &VecDeque<(tokio::time::Instant, String)>) {
    lock_core::wait::sleep_until_opt(lingering.front().map(|(at, _)| *at)).await;
}

/// Keeps one subscriber connection, to the first of `clients` that answers (a cluster's nodes
/// each see every publication, so any of them serves): after a failed connect or a lost
/// connection, the next one is tried. Told of other servers, it moves there.
async fn run(
    mut clients: Vec<redis::Client>,
    timeouts: Timeouts,
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Command>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let mut subscribed: HashSet<String> = HashSet::new();
    // Channels nobody watches any more, unsubscribed once `LINGER` has passed with nobody
    // watching them again.
    let mut lingering: VecDeque<(tokio::time::Instant, String)> = VecDeque::new();
    let mut turn = 0usize;
    // Servers a Sentinel failover moved the subscriber to, taken up at the top of the loop.
    let mut moved: Option<Vec<redis::Client>> = None;
    loop {
        if let Some(to) = moved.take() {
            tracing::debug!("redis subscriber moving to the new primary");
            clients = to;
            turn = 0;
        }
        let Some(client) = clients.get(turn % clients.len().max(1)) else { return };
        turn = turn.wrapping_add(1);
        let conn = tokio::time::timeout(timeouts.connect, client.get_async_pubsub()).await;
        let Ok(Ok(pubsub)) = conn else {
            match answer_while_down(&mut rx, backoff.next_delay()).await {
                Down::Gone => return,
                Down::Again => {}
                Down::Moved(to) => moved = Some(to),
            }
            continue;
        };
        let (mut sink, mut stream) = pubsub.split();
        subscribed.clear();
        let wanted: Vec<String> = shared.channels().keys().cloned().collect();
        if !wanted.is_empty() {
            if !within(timeouts.request, sink.subscribe(&wanted)).await {
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
            subscribed.extend(wanted);
            // A release may have been published while we were away.
            shared.wake_all();
        }
        backoff.reset();
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => shared.deliver(msg.get_channel_name(), msg.get_payload_bytes()),
                    None => break,
                },
                cmd = rx.recv() => match cmd {
                    None => return,
                    Some(Command::Subscribe(ch, reply)) => {
                        if subscribed.contains(&ch) {
                            let _ = reply.send(true);
                        } else if within(timeouts.request, sink.subscribe(&ch)).await {
                            subscribed.insert(ch);
                            let _ = reply.send(true);
                        } else {
                            let _ = reply.send(false);
                            break;
                        }
                    }
                    Some(Command::Unsubscribe(ch)) => {
                        if subscribed.contains(&ch) {
                            lingering.push_back((tokio::time::Instant::now() + LINGER, ch));
                        }
                    }
                    Some(Command::Retarget(to)) => {
                        moved = Some(to);
                        break;
                    }
                },
                _ = sleep_until_first(&lingering) => {
                    let now = tokio::time::Instant::now();
                    let mut gone = Vec::new();
                    while lingering.front().is_some_and(|(at, _)| *at <= now) {
                        if let Some((_, ch)) = lingering.pop_front() {
                            if !shared.channels().contains_key(&ch) && subscribed.remove(&ch) {
                                gone.push(ch);
                            }
                        }
                    }
                    if !gone.is_empty() && !within(timeouts.request, sink.unsubscribe(&gone)).await {
                        break;
                    }
                }
            }
        }
        lingering.clear();
        // Wake everyone so they retry now rather than at their next poll.
        shared.wake_all();
        if moved.is_some() {
            continue;
        }
        tracing::debug!("redis subscriber connection lost; reconnecting");
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
