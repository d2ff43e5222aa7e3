//! One ZooKeeper session per backend: its connection state, how long its ephemeral nodes are
//! certainly alive, and the loss signal every lock on it shares.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::{Error, Instant, LossReason, LossSignal, Result};
use zookeeper_client::{Client, CreateMode, SessionState};

use crate::error::{zk_err, NAME};
use crate::ZkOptions;

/// Opens a session as `opts` say: digest auth, the chroot (made if it does not exist, as
/// Curator's namespaces are, then entered), the first connect bounded by the connect timeout.
pub(crate) async fn open(opts: &ZkOptions) -> Result<Arc<Session>> {
    // The idle timeout is left at zookeeper-client's default, 2/5 of the session timeout:
    // the disconnect grace (see `Session::grace`) rests on it.
    let mut connector = Client::connector().with_session_timeout(opts.session_timeout);
    if let Some((user, password)) = &opts.credentials {
        connector = connector.with_auth("digest", format!("{user}:{}", password.expose()).as_bytes());
    }
    if !opts.close_on_drop {
        connector = connector.with_detached();
    }
    let (hosts, chroot) = opts.hosts_and_chroot();
    let client = tokio::time::timeout(opts.connect_timeout, connector.connect(hosts))
        .await
        .map_err(|_| {
            Error::backend_msg(
                NAME,
                lock_core::BackendErrorKind::Connection,
                format!("no ZooKeeper server at {hosts} answered within {:?}", opts.connect_timeout),
            )
        })?
        .map_err(|e| zk_err("connect to", hosts, e))?;
    let client = if chroot.is_empty() {
        client
    } else {
        match client.mkdir(chroot, &CreateMode::Persistent.with_acls(opts.acls())).await {
            Ok(()) | Err(zookeeper_client::Error::NodeExists) => {}
            Err(e) => return Err(zk_err("create chroot", chroot, e)),
        }
        client.chroot(chroot).map_err(|_| {
            Error::InvalidConfig(format!("ZooKeeper options: '{chroot}' is not a valid chroot"))
        })?
    };
    Ok(Session::start(client))
}

/// What the session's state says about its ephemeral nodes.
#[derive(Debug, Clone, Copy)]
enum Link {
    /// Connected: the server heard from us within the last 2/5 of the session timeout.
    Connected,
    /// Disconnected since then; the session may still be alive on the server.
    Disconnected(Instant),
}

/// A live session.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) client: Client,
    timeout: Duration,
    link: Mutex<Link>,
    pub(crate) lost: LossSignal,
}

impl Session {
    /// Wraps a connected client and starts watching its state.
    pub(crate) fn start(client: Client) -> Arc<Self> {
        let timeout = client.session_timeout();
        // Watch first, then read the state, so that no change between the two is missed.
        let states = client.state_watcher();
        let link = match client.state() {
            SessionState::Disconnected => Link::Disconnected(Instant::now()),
            _ => Link::Connected,
        };
        let s = Arc::new(Self { client, timeout, link: Mutex::new(link), lost: LossSignal::new() });
        let since = match link {
            Link::Disconnected(t) => Some(t),
            Link::Connected => None,
        };
        tokio::spawn(monitor(Arc::downgrade(&s), states, s.lost.clone(), timeout, since));
        s
    }

    /// The session timeout the server agreed.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How long after a disconnect the session's nodes are still certainly ours: the client
    /// (with its default idle timeout, which `open` keeps) notices a silent connection within
    /// 2/5 of the timeout (plus one 1/20 tick), and the
    /// server expires a session only a whole timeout after it last heard from it, so half a
    /// timeout from the disconnect leaves a margin of at least 1/20 of the timeout.
    pub(crate) fn grace(&self) -> Duration {
        self.timeout / 2
    }

    /// Until when our ephemeral nodes are certainly alive (nothing, once the session is lost).
    pub(crate) fn valid_until(&self) -> Instant {
        if self.lost.is_fired() {
            return Instant::now();
        }
        let link = *self.link.lock().unwrap_or_else(|p| p.into_inner());
        match link {
            Link::Connected => Instant::now() + self.grace(),
            Link::Disconnected(since) => since + self.grace(),
        }
    }

    /// Whether the session can still hold locks.
    pub(crate) fn is_live(&self) -> bool {
        !self.lost.is_fired() && self.valid_until() > Instant::now()
    }

    fn set(&self, link: Link) {
        *self.link.lock().unwrap_or_else(|p| p.into_inner()) = link;
    }
}

/// Follows the session's state: a disconnect longer than the grace, an expiry, a failed
/// authentication or a closed client fire the loss signal of every lock on the session.
async fn monitor(
    session: std::sync::Weak<Session>,
    mut states: zookeeper_client::StateWatcher,
    lost: LossSignal,
    timeout: Duration,
    since: Option<Instant>,
) {
    let grace = timeout / 2;
    let mut disconnected_at: Option<Instant> = since;
    loop {
        let give_up = disconnected_at.map(|t| t + grace);
        let state = tokio::select! {
            s = states.changed() => s,
            _ = sleep_until_opt(give_up) => {
                tracing::warn!(backend = "zookeeper", ?grace, "disconnected past the grace; every lock on the session is lost");
                lost.fire(LossReason::SessionLost);
                return;
            }
            _ = lost.fired() => return,
        };
        let Some(s) = session.upgrade() else { return };
        match state {
            SessionState::Disconnected => {
                let now = Instant::now();
                disconnected_at.get_or_insert(now);
                s.set(Link::Disconnected(disconnected_at.unwrap_or(now)));
            }
            SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                disconnected_at = None;
                s.set(Link::Connected);
            }
            other => {
                tracing::warn!(backend = "zookeeper", state = ?other, "session ended; every lock on it is lost");
                lost.fire(LossReason::SessionLost);
                return;
            }
        }
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
