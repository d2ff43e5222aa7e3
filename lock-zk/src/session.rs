//! One ZooKeeper session per backend: how long its ephemeral nodes are certainly alive,
//! measured from the requests the server answered, and the loss signal every lock on it
//! shares.

use std::future::Future;
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
    // the disconnect grace (see `monitor`) rests on it.
    let mut connector = Client::connector().with_session_timeout(opts.session_timeout);
    if let Some((user, password)) = &opts.credentials {
        connector = connector.with_auth("digest", format!("{user}:{}", password.expose()).as_bytes());
    }
    if !opts.close_on_drop {
        connector = connector.with_detached();
    }
    let (hosts, chroot) = opts.hosts_and_chroot();
    #[cfg(feature = "tls")]
    let tls = opts.tls.as_ref().map(client_tls).transpose()?;
    // The server creates the session when it receives the connect request, after this.
    let asked = Instant::now();
    let dial = async move {
        #[cfg(feature = "tls")]
        if let Some(tls) = tls {
            return connector.with_tls(tls).secure_connect(hosts).await;
        }
        connector.connect(hosts).await
    };
    let client = tokio::time::timeout(opts.connect_timeout, dial)
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
    Ok(Session::start(client, asked))
}

/// The system's CA bundle: `SSL_CERT_FILE`, else the first of the usual paths that exists.
#[cfg(feature = "tls")]
fn system_ca() -> Result<Vec<u8>> {
    const BUNDLES: [&str; 3] =
        ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];
    let env = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
    env.into_iter()
        .chain(BUNDLES.iter().map(std::path::PathBuf::from))
        .find_map(|path| std::fs::read(path).ok())
        .ok_or_else(|| {
            Error::InvalidConfig(
                "ZooKeeper TLS: no CA was given (ca_file= or TlsOptions::ca) and no system CA bundle was found \
                 (SSL_CERT_FILE, /etc/ssl/certs/ca-certificates.crt)"
                    .into(),
            )
        })
}

/// zookeeper-client's TLS options for ours: the CA (or the system's bundle) and the client
/// certificate. Installs rustls's ring provider as the process default if none is (the
/// client asks rustls for the default provider).
#[cfg(feature = "tls")]
fn client_tls(tls: &lock_core::TlsOptions) -> Result<zookeeper_client::TlsOptions> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bad =
        |what: &str, e: &dyn std::fmt::Display| Error::InvalidConfig(format!("ZooKeeper TLS: {what}: {e}"));
    let ca = match tls.ca_pem() {
        Some(pem) => pem.to_vec(),
        None => system_ca()?,
    };
    let ca = String::from_utf8(ca).map_err(|e| bad("the CA is not PEM text", &e))?;
    let mut out = zookeeper_client::TlsOptions::new()
        .with_pem_ca(&ca)
        .map_err(|e| bad("no CA certificate could be read", &e))?;
    if let Some((cert, key)) = tls.identity_pem() {
        let cert =
            std::str::from_utf8(cert).map_err(|e| bad("the client certificate is not PEM text", &e))?;
        // The key's bytes are never part of a message.
        let key =
            std::str::from_utf8(key).map_err(|_| bad("the client key is not PEM text", &"invalid UTF-8"))?;
        out = out
            .with_pem_identity(cert, key)
            .map_err(|e| bad("the client certificate or its key could not be read", &e))?;
    }
    Ok(out)
}

/// A live session.
///
/// # Validity
/// The server expires a session a whole session timeout after it last heard from the client,
/// never sooner (its expiry buckets round up). Every request the server answers was received
/// after it was sent, so when a request sent at `t` is answered, the session and its ephemeral
/// nodes are certainly alive until `t` plus a timeout. The session's validity is half a timeout
/// from the send time of the last answered request ([`Session::window`]): the other half is
/// the margin for clock rates and for an ensemble follower that answered before it passed our
/// activity on to the leader. The link's state (connected or not) says nothing about this:
/// a client that was stopped (SIGSTOP, a long GC pause, a suspended VM) wakes up still
/// "connected" although the server expired its session meanwhile.
#[derive(Debug)]
pub(crate) struct Session {
    /// The grants held on this session and how their nodes are watched (declared before the
    /// client: dropped first, it tells its watch's task to end, which it does at its next
    /// poll, before looking at the watch's events).
    pub(crate) held: crate::held::Registry,
    pub(crate) client: Client,
    timeout: Duration,
    /// The send time of the last request the server answered (the connect included).
    heard: Mutex<Instant>,
    pub(crate) lost: LossSignal,
}

impl Session {
    /// Wraps a connected client, whose connect request was sent after `asked`, and starts
    /// watching its state.
    pub(crate) fn start(client: Client, asked: Instant) -> Arc<Self> {
        let timeout = client.session_timeout();
        // Watch first, then read the state, so that no change between the two is missed.
        let states = client.state_watcher();
        let since = matches!(client.state(), SessionState::Disconnected).then(Instant::now);
        let s = Arc::new(Self {
            held: crate::held::Registry::default(),
            client,
            timeout,
            heard: Mutex::new(asked),
            lost: LossSignal::new(),
        });
        tokio::spawn(monitor(Arc::downgrade(&s), states, s.lost.clone(), since));
        s
    }

    /// The session timeout the server agreed.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How long after the send time of an answered request the session's nodes are counted
    /// alive: half the session timeout (see [`Session`]).
    pub(crate) fn window(&self) -> Duration {
        self.timeout / 2
    }

    /// Notes that the server answered a request sent at `sent`.
    fn answered(&self, sent: Instant) {
        let mut heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        *heard = (*heard).max(sent);
    }

    /// Until when our ephemeral nodes are certainly alive, by the last answered request
    /// (now, once the session is lost).
    pub(crate) fn valid_until(&self) -> Instant {
        if self.lost.is_fired() {
            return Instant::now();
        }
        let heard = *self.heard.lock().unwrap_or_else(|p| p.into_inner());
        lock_core::lease::add_saturating(heard, self.window())
    }

    /// Whether the session can still hold locks.
    pub(crate) fn is_live(&self) -> bool {
        !self.lost.is_fired() && self.valid_until() > Instant::now()
    }

    /// Sends one request with `request` and notes its send time if the server answered it
    /// (with a result or a refusal of its own: no node, a node that exists...).
    pub(crate) async fn call<'a, T, F>(
        &'a self,
        request: impl FnOnce(&'a Client) -> F,
    ) -> std::result::Result<T, zookeeper_client::Error>
    where
        F: Future<Output = std::result::Result<T, zookeeper_client::Error>> + 'a,
    {
        use zookeeper_client::Error as Z;
        // Taken before the request exists: the client sends it as soon as it is made.
        let sent = Instant::now();
        let r = request(&self.client).await;
        if matches!(r, Ok(_) | Err(Z::NoNode | Z::NodeExists | Z::NotEmpty | Z::BadVersion | Z::NoAuth)) {
            self.answered(sent);
        }
        r
    }

    /// Deletes our node at `path` as Curator's guaranteed delete does: a delete lost with its
    /// connection (the server may never have seen it) is sent again once the client has
    /// reconnected, until the server answers it or the session is lost (its nodes go with it,
    /// or [`free_given_up`] deletes them). Waited for here up to `wait` (`None`: until then);
    /// what is left goes on in the background. `Ok(true)`: deleted (also when a resent
    /// delete finds the node gone: the lost one deleted it, as nothing else but the end of
    /// the session, or a client deleting nodes it does not own, does); `Ok(false)`: no such
    /// node, or the session is lost.
    ///
    /// # Errors
    /// The server's refusal, or the last lost connection once `wait` ran out (the delete goes
    /// on in the background).
    pub(crate) async fn delete_surely(
        self: &Arc<Self>,
        path: &str,
        wait: Option<Duration>,
    ) -> std::result::Result<bool, zookeeper_client::Error> {
        let until = wait.map(|w| lock_core::lease::add_saturating(Instant::now(), w));
        // A request made while the connection is down waits in the client's queue until it
        // reconnects (or gives the session up): bounded too, at least by DELETE_ANSWER, in
        // which a connected server answers.
        let r = match until {
            Some(u) => {
                let bound = u.max(Instant::now() + DELETE_ANSWER);
                match tokio::time::timeout_at(bound, self.delete_until(path, until)).await {
                    Ok(r) => r,
                    Err(_) => Err(zookeeper_client::Error::ConnectionLoss),
                }
            }
            None => self.delete_until(path, None).await,
        };
        if matches!(&r, Err(e) if resendable(e)) {
            let (s, path) = (self.clone(), path.to_owned());
            tokio::spawn(async move {
                let _ = s.delete_until(&path, None).await;
            });
        }
        r
    }

    /// [`Session::delete_surely`]'s resending, until `until` if given (each request's own
    /// wait bounded by the caller).
    async fn delete_until(
        &self,
        path: &str,
        until: Option<Instant>,
    ) -> std::result::Result<bool, zookeeper_client::Error> {
        use zookeeper_client::Error as Z;
        let mut pause = Duration::from_millis(20);
        // Whether a delete went unanswered: then a node found gone on the live session is
        // most likely gone by that delete (its reply lost), not by someone else's.
        let mut unanswered = false;
        loop {
            match self.call(|c| c.delete(path, None)).await {
                Ok(()) => return Ok(true),
                Err(Z::NoNode) => return Ok(unanswered && !self.lost.is_fired()),
                Err(Z::SessionExpired) => return Ok(false),
                Err(e) if resendable(&e) => {
                    unanswered = true;
                    if self.lost.is_fired() {
                        return Ok(false);
                    }
                    if until.is_some_and(|u| Instant::now() + pause >= u) {
                        return Err(e);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = self.lost.fired() => return Ok(false),
                    }
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether our child at `path` still exists, and until when it certainly lives: without a
    /// request while more than half of the validity of the last answered request is left,
    /// otherwise after one `exists` on the child, bounded by a session timeout.
    ///
    /// `None` when the child is gone, the session ended, or the check could not be answered
    /// before the last validity ran out (the node may be gone: it is never vouched for past
    /// what the server confirmed). A failure while validity is left is an error.
    pub(crate) async fn confirm(&self, path: &str) -> Result<Option<Instant>> {
        use zookeeper_client::Error as Z;
        if self.lost.is_fired() {
            return Ok(None);
        }
        if self.valid_until() >= Instant::now() + self.window() / 2 {
            return Ok(Some(self.valid_until()));
        }
        let checked = tokio::time::timeout(self.timeout, self.call(|c| c.check_stat(path))).await;
        let err = match checked {
            Ok(Ok(Some(_))) => return Ok((!self.lost.is_fired()).then(|| self.valid_until())),
            Ok(Ok(None)) | Ok(Err(Z::SessionExpired | Z::ClientClosed | Z::AuthFailed)) => return Ok(None),
            Ok(Err(e)) => zk_err("stat", path, e),
            Err(_) => Error::backend_msg(
                NAME,
                lock_core::BackendErrorKind::RequestTimedOut,
                format!("stat {path}: no answer within the session timeout"),
            ),
        };
        if Instant::now() >= self.valid_until() {
            tracing::debug!(backend = NAME, path, error = %err, "the lock could not be confirmed in time");
            return Ok(None);
        }
        Err(err)
    }
}

/// Follows the session's state: an expiry, a failed authentication or a closed client fire
/// the loss signal of every lock on the session at once, and so does a disconnect that lasts
/// until the session's validity has passed (nothing can confirm it any more) or half a session
/// timeout (the client notices a silent connection within 2/5 of it), whichever comes first.
/// The backend then opens a new session on its next use.
///
/// A session given up that way may still be alive on the server (it expires it only a full
/// session timeout after it last heard from the client): if the client reconnects in time,
/// [`free_given_up`] deletes its nodes, so that nothing reported lost stays held.
async fn monitor(
    session: std::sync::Weak<Session>,
    mut states: zookeeper_client::StateWatcher,
    lost: LossSignal,
    since: Option<Instant>,
) {
    let mut disconnected_at: Option<Instant> = since;
    loop {
        let give_up = match disconnected_at {
            None => None,
            Some(t) => {
                let Some(s) = session.upgrade() else { return };
                Some((t + s.timeout / 2).min(s.valid_until().max(t)))
            }
        };
        let state = tokio::select! {
            s = states.changed() => s,
            _ = lock_core::wait::sleep_until_opt(give_up) => {
                tracing::warn!(backend = NAME, "disconnected past the session's validity; every lock on it is lost");
                lost.fire(LossReason::SessionLost);
                free_given_up(session, states).await;
                return;
            }
            _ = lost.fired() => return,
        };
        match state {
            SessionState::Disconnected => {
                disconnected_at.get_or_insert_with(Instant::now);
            }
            SessionState::SyncConnected | SessionState::ConnectedReadOnly => disconnected_at = None,
            other => {
                tracing::warn!(backend = NAME, state = ?other, "session ended; every lock on it is lost");
                lost.fire(LossReason::SessionLost);
                return;
            }
        }
    }
}

/// Waits, after the client gave the session up, for the session either to end on the server
/// (expired, closed: its nodes are gone) or to come back (the server never expired it), and
/// then deletes every ephemeral node it still owns (`getEphemerals`): the locks, permits and
/// queue places on it were all reported lost, and none of them may keep others waiting. A
/// listing or a delete that fails in a way sending again can help (the connection dropped
/// again, a timeout, throttling) is tried again, after a pause, up to [`CLEAN_UP_TRIES`]
/// times, while the session lasts and something holds it; another failure (a server before
/// 3.6 has no `getEphemerals`; an ACL refuses a delete) ends the clean-up: those nodes live
/// as long as the session.
async fn free_given_up(session: std::sync::Weak<Session>, mut states: zookeeper_client::StateWatcher) {
    let mut connected = false;
    let mut pause = lock_core::Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    for tries_left in (0..CLEAN_UP_TRIES).rev() {
        while !connected {
            match states.changed().await {
                SessionState::Disconnected => {}
                SessionState::SyncConnected | SessionState::ConnectedReadOnly => connected = true,
                _ => return,
            }
        }
        let Some(s) = session.upgrade() else { return };
        match delete_ephemerals(&s).await {
            Ok(deleted) => {
                tracing::info!(
                    backend = NAME,
                    deleted,
                    "a session given up came back; its nodes were deleted"
                );
                return;
            }
            Err(e) if resendable(&e) && tries_left > 0 => {
                tracing::warn!(backend = NAME, error = %e, "a session given up came back; its nodes could not all be deleted; trying again");
            }
            Err(e) => {
                tracing::warn!(backend = NAME, error = %e, "a session given up came back; its nodes could not all be deleted; they live as long as the session");
                return;
            }
        }
        drop(s);
        tokio::select! {
            _ = tokio::time::sleep(pause.next_delay()) => {}
            state = states.changed() => match state {
                SessionState::Disconnected => connected = false,
                SessionState::SyncConnected | SessionState::ConnectedReadOnly => {}
                _ => return,
            },
        }
    }
}

/// How many times a given-up session that came back tries to delete its nodes.
const CLEAN_UP_TRIES: u32 = 8;

/// Deletes every ephemeral node of `s`'s session: how many it deleted, or the first error.
async fn delete_ephemerals(s: &Session) -> std::result::Result<usize, zookeeper_client::Error> {
    let nodes = s.client.list_ephemerals("/").await?;
    // Sent together: the session pipelines them, so thousands of nodes cost one round trip's
    // wait, not thousands.
    let results = futures::future::join_all(nodes.iter().map(|path| s.client.delete(path, None))).await;
    let mut deleted = 0;
    for r in results {
        match r {
            Ok(()) => deleted += 1,
            Err(zookeeper_client::Error::NoNode) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// How long a bounded [`Session::delete_surely`] waits at least: a connected server answers a
/// delete well within it; a delete still unanswered then goes on in the background.
const DELETE_ANSWER: Duration = Duration::from_millis(500);

/// Whether a request that failed this way may not have reached the server, and may be sent
/// again once the client has reconnected.
fn resendable(e: &zookeeper_client::Error) -> bool {
    use zookeeper_client::Error as Z;
    crate::error::connection_lost(e) || matches!(e, Z::Timeout | Z::Throttled)
}
