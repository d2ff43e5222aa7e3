//! A TCP proxy between a client and ZooKeeper that forwards its framed protocol; it can cut
//! every connection, or swallow the reply to chosen requests (closing the connection instead,
//! as a lost reply does).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Opcodes of the requests that create a node: create, create2, createContainer, createTTL.
pub const CREATE: &[i32] = &[1, 15, 19, 21];
/// Opcodes of the requests that list children: getChildren, getChildren2.
pub const LIST: &[i32] = &[8, 12];

/// The proxy; it runs until the test's runtime ends.
pub struct ZkProxy {
    pub addr: String,
    cut: watch::Sender<bool>,
    rules: Arc<Mutex<VecDeque<&'static [i32]>>>,
    swallowed: Arc<AtomicUsize>,
}

impl ZkProxy {
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (cut, cut_rx) = watch::channel(false);
        let rules: Arc<Mutex<VecDeque<&'static [i32]>>> = Arc::default();
        let swallowed = Arc::new(AtomicUsize::new(0));
        let (r, count) = (rules.clone(), swallowed.clone());
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                if *cut_rx.borrow() {
                    drop(conn);
                    continue;
                }
                tokio::spawn(serve(conn, upstream.clone(), cut_rx.clone(), r.clone(), count.clone()));
            }
        });
        Self { addr, cut, rules, swallowed }
    }

    /// Cuts every connection and refuses new ones until [`ZkProxy::heal`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }

    /// Swallows the reply to the next request with one of `opcodes` (after the replies
    /// already queued to be swallowed): the request reaches the server, and the connection
    /// closes where its reply would come.
    pub fn swallow_next(&self, opcodes: &'static [i32]) {
        self.rules.lock().expect("rules").push_back(opcodes);
    }

    /// How many replies were swallowed.
    pub fn swallowed(&self) -> usize {
        self.swallowed.load(Ordering::SeqCst)
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

async fn serve(
    client: TcpStream,
    upstream: String,
    mut cut: watch::Receiver<bool>,
    rules: Arc<Mutex<VecDeque<&'static [i32]>>>,
    swallowed: Arc<AtomicUsize>,
) {
    let Ok(server) = TcpStream::connect(&upstream).await else { return };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let noted: Arc<Mutex<HashSet<i32>>> = Arc::default();
    let pending = noted.clone();
    // Client to server: note the xid of a request the first rule matches (the opcode is the
    // int after the xid). The first frame is the connect request.
    let up = async move {
        let mut first = true;
        while let Some(frame) = read_frame(&mut cr).await {
            if !first {
                if let (Some(xid), Some(op)) = (int(&frame, 4), int(&frame, 8)) {
                    let mut rules = rules.lock().expect("rules");
                    if rules.front().is_some_and(|ops| ops.contains(&op)) {
                        rules.pop_front();
                        pending.lock().expect("noted").insert(xid);
                    }
                }
            }
            first = false;
            if sw.write_all(&frame).await.is_err() {
                return;
            }
        }
    };
    // Server to client: the reply to a noted request is dropped with the connection.
    let down = async move {
        let mut first = true;
        while let Some(frame) = read_frame(&mut sr).await {
            if !first {
                if let Some(xid) = int(&frame, 4) {
                    if noted.lock().expect("noted").remove(&xid) {
                        swallowed.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            }
            first = false;
            if cw.write_all(&frame).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cut.wait_for(|c| *c) => {}
    }
}
