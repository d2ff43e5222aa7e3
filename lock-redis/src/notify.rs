//! Wake-ups by pub/sub: one subscriber connection per node per client, shared by all its
//! waiters, reconnecting on its own.

use std::collections::{HashMap, HashSet};
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
}

#[derive(Default)]
struct Shared {
    channels: Mutex<HashMap<String, (Arc<Notify>, usize)>>,
}

impl Shared {
    fn channels(&self) -> MutexGuard<'_, HashMap<String, (Arc<Notify>, usize)>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake_all(&self) {
        for (n, _) in self.channels().values() {
            n.notify_waiters();
        }
    }
}

/// The pub/sub side of one node.
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
    pub(crate) notify: Arc<Notify>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
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
    pub(crate) fn start(client: redis::Client, connect_timeout: Duration, request_timeout: Duration) -> Self {
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let timeouts = Timeouts { connect: connect_timeout, request: request_timeout };
        tokio::spawn(run(client, timeouts, shared.clone(), rx));
        Self { shared, tx }
    }

    /// Watches `channel`. Waits (at most `confirm`) until the subscription is confirmed, so a
    /// release published after this returns is not missed. If the subscriber connection is
    /// down or slow, returns unconfirmed: the waiter then relies on its bounded polling, and
    /// is woken by messages once the subscription is in place.
    pub(crate) async fn watch(&self, channel: &str, confirm: Duration) -> Subscription {
        let notify = {
            let mut map = self.shared.channels();
            let entry = map.entry(channel.to_owned()).or_insert_with(|| (Arc::new(Notify::new()), 0));
            entry.1 += 1;
            entry.0.clone()
        };
        let sub = Subscription {
            shared: self.shared.clone(),
            tx: self.tx.clone(),
            channel: channel.to_owned(),
            notify,
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

/// Down: answers requests at once (waiters poll meanwhile) for `pause`; `false` when the
/// notifier is gone.
async fn answer_while_down(rx: &mut mpsc::UnboundedReceiver<Command>, pause: Duration) -> bool {
    let sleep = tokio::time::sleep(pause);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = &mut sleep => return true,
            cmd = rx.recv() => match cmd {
                None => return false,
                Some(Command::Subscribe(_, reply)) => { let _ = reply.send(false); }
                Some(Command::Unsubscribe(_)) => {}
            }
        }
    }
}

async fn run(
    client: redis::Client,
    timeouts: Timeouts,
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Command>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let mut subscribed: HashSet<String> = HashSet::new();
    loop {
        let conn = tokio::time::timeout(timeouts.connect, client.get_async_pubsub()).await;
        let Ok(Ok(pubsub)) = conn else {
            if !answer_while_down(&mut rx, backoff.next_delay()).await {
                return;
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
                    Some(msg) => {
                        if let Some((n, _)) = shared.channels().get(msg.get_channel_name()) {
                            n.notify_waiters();
                        }
                    }
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
                        let still_wanted = shared.channels().contains_key(&ch);
                        if !still_wanted
                            && subscribed.remove(&ch)
                            && !within(timeouts.request, sink.unsubscribe(&ch)).await
                        {
                            break;
                        }
                    }
                },
            }
        }
        tracing::debug!("redis subscriber connection lost; reconnecting");
        // Wake everyone so they retry now rather than at their next poll.
        shared.wake_all();
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
