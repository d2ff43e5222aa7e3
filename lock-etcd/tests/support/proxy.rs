//! A TCP proxy in front of one etcd member that can lose what passes through it: the
//! replies only (requests still reach etcd and are carried out), or everything (a
//! partition), from now on or from the request that carries given bytes (a key: gRPC sends
//! protobuf uncompressed). Healing closes every connection that lost bytes (its HTTP/2
//! framing is broken, as after a real partition the connection is reset), and the client
//! connects again.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with the bytes it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forwards both ways.
    Forward,
    /// Forwards requests, drops replies.
    DropReplies,
    /// Drops both ways.
    Blackhole,
}

/// The mode, and the generation of connections (healing starts a new one).
type State = (Mode, u64);

/// The proxy; it runs until the test's runtime ends.
pub struct Proxy {
    /// `http://127.0.0.1:<port>`, the endpoint to give the client.
    pub endpoint: String,
    state: watch::Sender<State>,
    marker: Arc<Mutex<Option<Vec<u8>>>>,
    hold: Hold,
}

/// Bytes that, once seen in a request, hold that request and what follows it on its
/// connection back for a while.
type Hold = Arc<Mutex<Option<(Vec<u8>, std::time::Duration)>>>;

impl Proxy {
    /// A proxy to `upstream` (`http://host:port` or `host:port`), forwarding.
    pub async fn start(upstream: &str) -> Self {
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let (state, rx) = watch::channel((Mode::Forward, 0));
        let marker: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let hold: Hold = Arc::default();
        let (tx, m, h) = (state.clone(), marker.clone(), hold.clone());
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, upstream.clone(), (tx.clone(), rx.clone()), m.clone(), h.clone()));
            }
        });
        Self { endpoint, state, marker, hold }
    }

    /// The next request that carries `marker` reaches etcd only `d` later (as through a
    /// member stopped with it, then resumed), and so does everything after it on its
    /// connection; replies flow meanwhile.
    pub fn hold_request_with(&self, marker: &[u8], d: std::time::Duration) {
        *self.hold.lock().expect("hold") = Some((marker.to_vec(), d));
    }

    /// Forgets a hold whose request has not come.
    pub fn no_hold(&self) {
        *self.hold.lock().expect("hold") = None;
    }

    /// The next request that carries `marker` reaches etcd, and from then on nothing passes:
    /// its reply and everything after it are lost (until [`Proxy::heal`]).
    pub fn partition_after_request_with(&self, marker: &[u8]) {
        *self.marker.lock().expect("marker") = Some(marker.to_vec());
    }

    /// From now on, treats bytes as `mode` says.
    pub fn set(&self, mode: Mode) {
        self.state.send_modify(|s| s.0 = mode);
    }

    /// Forwards again, closing every connection open now.
    pub fn heal(&self) {
        self.state.send_modify(|s| *s = (Mode::Forward, s.1 + 1));
    }
}

async fn serve(
    client: TcpStream,
    upstream: String,
    (tx, mut state): (watch::Sender<State>, watch::Receiver<State>),
    marker: Arc<Mutex<Option<Vec<u8>>>>,
    hold: Hold,
) {
    let generation = state.borrow().1;
    let Ok(server) = TcpStream::connect(&upstream).await else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let (up_state, down_state) = (state.clone(), state.clone());
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let marked = {
                let mut m = marker.lock().expect("marker");
                let hit = m.as_ref().is_some_and(|m| buf[..n].windows(m.len()).any(|w| w == m.as_slice()));
                if hit {
                    *m = None;
                    // Its reply must not pass: lose replies before the request goes out.
                    tx.send_modify(|s| s.0 = Mode::DropReplies);
                }
                hit
            };
            let held = {
                let mut h = hold.lock().expect("hold");
                let hit =
                    h.as_ref().is_some_and(|(m, _)| buf[..n].windows(m.len()).any(|w| w == m.as_slice()));
                if hit {
                    h.take().map(|(_, d)| d)
                } else {
                    None
                }
            };
            if let Some(d) = held {
                tokio::time::sleep(d).await;
            }
            if up_state.borrow().0 != Mode::Blackhole && sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
            if marked {
                tx.send_modify(|s| s.0 = Mode::Blackhole);
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if down_state.borrow().0 == Mode::Forward && cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = state.wait_for(|s| s.1 != generation) => {}
    }
}
