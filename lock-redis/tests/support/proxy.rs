#![allow(dead_code)] // each test file uses some of the faults
//! A TCP proxy on loopback in front of one redis-server, for fault tests: it forwards both
//! ways and, on command, loses the next reply (the request was carried out) and cuts that
//! connection, or leaves every pub/sub connection unanswered from its `SUBSCRIBE` on, or
//! closes new connections at once, or leaves them unanswered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Faults {
    /// Swallow the next bytes any server sends, then cut that connection (both sides).
    cut_next_reply: AtomicBool,
    /// A connection whose client sends `SUBSCRIBE` gets nothing more forwarded either way.
    hang_subscribers: AtomicBool,
    /// New connections are accepted and closed at once (the server looks gone).
    refuse: AtomicBool,
    /// New connections are accepted and left unanswered, then closed once this is unset
    /// (the server looks paused).
    stall: AtomicBool,
}

/// The proxy; stops accepting when dropped.
pub struct Proxy {
    port: u16,
    faults: Arc<Faults>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        let faults = Arc::new(Faults::default());
        let f = faults.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if f.refuse.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                if f.stall.load(Ordering::SeqCst) {
                    let f = f.clone();
                    tokio::spawn(async move {
                        while f.stall.load(Ordering::SeqCst) {
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        }
                        drop(client);
                    });
                    continue;
                }
                tokio::spawn(forward(client, upstream, f.clone()));
            }
        });
        Self { port, faults, task }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The next reply any server sends through the proxy is lost and its connection cut:
    /// the request it answers was carried out, the client never hears of it.
    pub fn cut_next_reply(&self) {
        self.faults.cut_next_reply.store(true, Ordering::SeqCst);
    }

    /// Whether new connections are closed as soon as they are accepted.
    pub fn refuse_connections(&self, refuse: bool) {
        self.faults.refuse.store(refuse, Ordering::SeqCst);
    }

    /// Whether new connections are accepted and left unanswered (closed once this is unset,
    /// so that the client connects anew).
    pub fn stall_connections(&self, stall: bool) {
        self.faults.stall.store(stall, Ordering::SeqCst);
    }

    /// From now on a connection that sends `SUBSCRIBE` is left open and never answered.
    pub fn hang_subscribers(&self) {
        self.faults.hang_subscribers.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(client: TcpStream, upstream: u16, faults: Arc<Faults>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else { return };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let hung = Arc::new(AtomicBool::new(false));
    let up = {
        let (faults, hung) = (faults.clone(), hung.clone());
        async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match cr.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let chunk = &buf[..n];
                if faults.hang_subscribers.load(Ordering::SeqCst)
                    && chunk.windows(9).any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE"))
                {
                    hung.store(true, Ordering::SeqCst);
                }
                if hung.load(Ordering::SeqCst) {
                    continue; // swallowed; keep reading so the client sees an open connection
                }
                if sw.write_all(chunk).await.is_err() {
                    return;
                }
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if hung.load(Ordering::SeqCst) {
                continue;
            }
            if faults.cut_next_reply.swap(false, Ordering::SeqCst) {
                return; // the reply is lost; dropping both halves cuts the connection
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}
