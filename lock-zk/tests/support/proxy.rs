//! A TCP proxy between a client and ZooKeeper that forwards its framed protocol; it can cut
//! every connection, swallow the reply to chosen requests (closing the connection instead, as
//! a lost reply does), or stall: forward nothing either way, as if the client's process were
//! paused, until the server has expired the client's session (at once, or from a chosen
//! request on).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Opcodes of the requests that create a node: create, create2, createContainer, createTTL.
pub const CREATE: &[i32] = &[1, 15, 19, 21];
/// The opcode of getData.
pub const GET_DATA: &[i32] = &[4];
/// Opcodes of the requests that list children: getChildren, getChildren2.
pub const LIST: &[i32] = &[8, 12];
/// The opcode of a delete.
pub const DELETE: &[i32] = &[2];

/// What the connections of one proxy share.
struct Ctl {
    cut: watch::Sender<bool>,
    /// Whether the proxy stalls (forwards nothing).
    stalled: AtomicBool,
    stall: watch::Sender<bool>,
    /// How many connections to a server are open.
    open: watch::Sender<usize>,
    rules: Mutex<VecDeque<&'static [i32]>>,
    /// Stall from the next request with one of these opcodes on (that request not forwarded).
    stall_at: Mutex<Option<&'static [i32]>>,
    /// Hold the reply to the next request with one of these opcodes this long (and the replies
    /// after it on its connection).
    delay: Mutex<Option<(&'static [i32], std::time::Duration)>>,
    swallowed: AtomicUsize,
    next: AtomicUsize,
    /// Reset the connection (an RST, not a clean close) in place of forwarding the next request
    /// with one of these opcodes.
    reset: Mutex<VecDeque<&'static [i32]>>,
}

/// The proxy; it runs until the test's runtime ends.
pub struct ZkProxy {
    pub addr: String,
    ctl: Arc<Ctl>,
}

impl ZkProxy {
    /// A proxy to one server.
    pub async fn start(upstream: String) -> Self {
        Self::start_many(vec![upstream]).await
    }

    /// A proxy to an ensemble: each new connection goes to the next server in turn, as a
    /// client's connect string would send it.
    pub async fn start_many(upstreams: Vec<String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let ctl = Arc::new(Ctl {
            cut: watch::channel(false).0,
            stalled: AtomicBool::new(false),
            stall: watch::channel(false).0,
            open: watch::channel(0).0,
            rules: Mutex::default(),
            stall_at: Mutex::default(),
            delay: Mutex::default(),
            swallowed: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            reset: Mutex::default(),
        });
        let c = ctl.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                if *c.cut.borrow() {
                    drop(conn);
                    continue;
                }
                let upstream = upstreams[c.next.fetch_add(1, Ordering::SeqCst) % upstreams.len()].clone();
                tokio::spawn(serve(conn, upstream, c.clone()));
            }
        });
        Self { addr, ctl }
    }

    /// Cuts every connection and refuses new ones until [`ZkProxy::heal`].
    pub fn cut(&self) {
        self.ctl.cut.send_replace(true);
    }

    /// Ends a cut or a stall: connections are accepted and forwarded again; those that were
    /// stalled are closed, so the client connects anew.
    pub fn heal(&self) {
        self.ctl.cut.send_replace(false);
        self.ctl.stalled.store(false, Ordering::SeqCst);
        self.ctl.stall.send_replace(false);
    }

    /// Forwards nothing either way on any connection, and holds new connections unanswered,
    /// until [`ZkProxy::heal`]: to the server, the client has gone silent; to the client, the
    /// server has. Connections to the server are kept open until the server closes them.
    pub fn stall(&self) {
        self.ctl.stalled.store(true, Ordering::SeqCst);
        self.ctl.stall.send_replace(true);
    }

    /// Stalls (as [`ZkProxy::stall`]) from the next request with one of `opcodes` on; that
    /// request is not forwarded.
    pub fn stall_at_next(&self, opcodes: &'static [i32]) {
        *self.ctl.stall_at.lock().expect("stall_at") = Some(opcodes);
    }

    /// Holds the reply to the next request with one of `opcodes` for `d` (the request itself
    /// reaches the server at once).
    pub fn delay_next(&self, opcodes: &'static [i32], d: std::time::Duration) {
        *self.ctl.delay.lock().expect("delay") = Some((opcodes, d));
    }

    /// Resolves once no connection to a server is open: during a stall, once the server has
    /// closed the session's connection, which it does when it expires the session.
    pub async fn upstreams_closed(&self) {
        let _ = self.ctl.open.subscribe().wait_for(|n| *n == 0).await;
    }

    /// Swallows the reply to the next request with one of `opcodes` (after the replies
    /// already queued to be swallowed): the request reaches the server, and the connection
    /// closes where its reply would come.
    pub fn swallow_next(&self, opcodes: &'static [i32]) {
        self.ctl.rules.lock().expect("rules").push_back(opcodes);
    }

    /// Resets the connection (an RST, as a peer that crashed or a middlebox sends) in place
    /// of forwarding the next request with one of `opcodes` (after those already queued to
    /// be reset): the request never reaches the server.
    pub fn reset_next(&self, opcodes: &'static [i32]) {
        self.ctl.reset.lock().expect("reset").push_back(opcodes);
    }

    /// How many replies were swallowed.
    pub fn swallowed(&self) -> usize {
        self.ctl.swallowed.load(Ordering::SeqCst)
    }
}

async fn read_frame(s: &mut (impl AsyncReadExt + Unpin)) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let n = i32::from_be_bytes(len);
    let mut body = vec![0u8; usize::try_from(n).ok()?];
    s.read_exact(&mut body).await.ok()?;
    let mut frame = len.to_vec();
    frame.extend_from_slice(&body);
    Some(frame)
}

fn int(frame: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(frame.get(at..at + 4)?.try_into().ok()?))
}

/// Counts an open connection to a server while it lives.
struct Open(Arc<Ctl>);

impl Open {
    fn new(ctl: Arc<Ctl>) -> Self {
        ctl.open.send_modify(|n| *n += 1);
        Self(ctl)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.send_modify(|n| *n -= 1);
    }
}

async fn serve(client: TcpStream, upstream: String, ctl: Arc<Ctl>) {
    let mut stall = ctl.stall.subscribe();
    if ctl.stalled.load(Ordering::SeqCst) {
        // A paused client's new connection: never answered; closed when the stall ends.
        let _ = stall.wait_for(|s| !*s).await;
        return;
    }
    let Ok(server) = TcpStream::connect(&upstream).await else { return };
    let _open = Open::new(ctl.clone());
    let (cr, mut cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let noted: Arc<Mutex<HashSet<i32>>> = Arc::default();
    let delayed: Delayed = Arc::default();
    let reset = Arc::new(AtomicBool::new(false));
    let up = forward_up(cr, sw, ctl.clone(), noted.clone(), delayed.clone(), reset.clone());
    {
        let down = forward_down(sr, &mut cw, ctl.clone(), noted, delayed);
        tokio::pin!(down);
        relay(&ctl, up, down).await;
    }
    if reset.load(Ordering::SeqCst) {
        // No FIN before the RST: the socket closes (linger 0) with the read half.
        cw.forget();
    }
}

/// Runs one connection's two directions until either ends, the proxy cuts, or a stall ends.
async fn relay(
    ctl: &Arc<Ctl>,
    up: impl std::future::Future<Output = ()>,
    mut down: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) {
    let mut stall = ctl.stall.subscribe();
    let mut cut = ctl.cut.subscribe();
    let mut stall2 = ctl.stall.subscribe();
    let mut cut2 = ctl.cut.subscribe();
    tokio::select! {
        _ = up => {
            // The client closed its side. A stalled connection's server side stays open
            // until the server closes it (the session expired) or the stall ends.
            if ctl.stalled.load(Ordering::SeqCst) {
                tokio::select! {
                    _ = &mut down => {}
                    _ = async { let _ = stall.wait_for(|s| !*s).await; } => {}
                    _ = async { let _ = cut2.wait_for(|c| *c).await; } => {}
                }
            }
        }
        _ = &mut down => {}
        _ = async { let _ = cut.wait_for(|c| *c).await; } => {}
        // Stalled, then healed: closed, so that the client connects anew.
        _ = async { let _ = stall2.wait_for(|s| *s).await; let _ = stall2.wait_for(|s| !*s).await; } => {}
    }
}

/// The replies of one connection to hold back, by xid, and for how long.
type Delayed = Arc<Mutex<std::collections::HashMap<i32, std::time::Duration>>>;

/// Client to server: notes the xid of a request the first rule matches (the opcode is the int
/// after the xid); forwards nothing while stalled. The first frame is the connect request.
async fn forward_up(
    mut cr: tokio::net::tcp::OwnedReadHalf,
    mut sw: tokio::net::tcp::OwnedWriteHalf,
    c: Arc<Ctl>,
    pending: Arc<Mutex<HashSet<i32>>>,
    delayed: Delayed,
    reset_here: Arc<AtomicBool>,
) {
    let mut first = true;
    while let Some(frame) = read_frame(&mut cr).await {
        if let (false, Some(op)) = (first, int(&frame, 8)) {
            let mut at = c.stall_at.lock().expect("stall_at");
            if at.is_some_and(|ops| ops.contains(&op)) {
                *at = None;
                c.stalled.store(true, Ordering::SeqCst);
                c.stall.send_replace(true);
            }
        }
        if c.stalled.load(Ordering::SeqCst) {
            continue;
        }
        if !first {
            let reset = {
                let mut r = c.reset.lock().expect("reset");
                r.front()
                    .is_some_and(|ops| int(&frame, 8).is_some_and(|op| ops.contains(&op)))
                    .then(|| r.pop_front())
            };
            if reset.is_some() {
                // Linger 0: the close that follows is an RST. It cannot block (no data waits).
                #[allow(deprecated)]
                let _ = cr.as_ref().set_linger(Some(std::time::Duration::ZERO));
                reset_here.store(true, Ordering::SeqCst);
                return;
            }
            if let (Some(xid), Some(op)) = (int(&frame, 4), int(&frame, 8)) {
                let mut rules = c.rules.lock().expect("rules");
                if rules.front().is_some_and(|ops| ops.contains(&op)) {
                    rules.pop_front();
                    pending.lock().expect("noted").insert(xid);
                }
                let mut delay = c.delay.lock().expect("delay");
                if let Some((_, d)) = delay.take_if(|(ops, _)| ops.contains(&op)) {
                    delayed.lock().expect("delayed").insert(xid, d);
                }
            }
        }
        first = false;
        if sw.write_all(&frame).await.is_err() {
            return;
        }
    }
}

/// Server to client: the reply to a noted request is dropped with the connection; nothing is
/// forwarded while stalled. Ends when the server closes the connection.
async fn forward_down(
    mut sr: tokio::net::tcp::OwnedReadHalf,
    cw: &mut tokio::net::tcp::OwnedWriteHalf,
    c: Arc<Ctl>,
    noted: Arc<Mutex<HashSet<i32>>>,
    delayed: Delayed,
) {
    let mut first = true;
    while let Some(frame) = read_frame(&mut sr).await {
        if c.stalled.load(Ordering::SeqCst) {
            continue;
        }
        if !first {
            if let Some(xid) = int(&frame, 4) {
                let hold = delayed.lock().expect("delayed").remove(&xid);
                if let Some(d) = hold {
                    tokio::time::sleep(d).await;
                }
                if noted.lock().expect("noted").remove(&xid) {
                    c.swallowed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
        }
        first = false;
        if cw.write_all(&frame).await.is_err() {
            return;
        }
    }
}
