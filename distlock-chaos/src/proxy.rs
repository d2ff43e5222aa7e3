//! A loopback TCP proxy between one worker and one server node: the partition and
//! slow-link nemeses act on it.
//!
//! A blocked direction *stalls*: bytes are held, not dropped, as TCP would retransmit them
//! through a real partition, so a long partition ends in the client's own timeouts and
//! reconnects, and a request sent into one arrives late when it heals (never corrupted or
//! reordered). New connections wait while either direction is blocked (a handshake needs
//! both). A delay holds every chunk that long after it was read, in order, without limiting
//! throughput. Each proxy counts what a block held ([`Proxy::stalls`]), so that a partition
//! that held nothing (no request or reply crossed it) is known not to have happened.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::error::{ChaosError, Result};

/// The state of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Link {
    /// Client-to-server bytes are held (requests dropped, as the one-way partition says).
    pub up_blocked: bool,
    /// Server-to-client bytes are held.
    pub down_blocked: bool,
    /// Added to every chunk, each way.
    pub delay: Duration,
}

impl Link {
    /// Nothing in the way.
    pub const CLEAR: Link = Link { up_blocked: false, down_blocked: false, delay: Duration::ZERO };
}

#[derive(Debug, Clone, Copy)]
enum Dir {
    Up,
    Down,
}

impl Dir {
    fn blocked(self, l: &Link) -> bool {
        match self {
            Dir::Up => l.up_blocked,
            Dir::Down => l.down_blocked,
        }
    }
}

/// One proxy: a listener on a free loopback port forwarding to `upstream`. Stops (and cuts
/// its connections) on drop.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    ctl: watch::Sender<Link>,
    stalls: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding to `upstream`.
    ///
    /// # Errors
    /// When no loopback port can be bound.
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener =
            TcpListener::bind("127.0.0.1:0").await.map_err(|e| ChaosError::io("bind a proxy", e))?;
        let addr = listener.local_addr().map_err(|e| ChaosError::io("proxy address", e))?;
        let (ctl, rx) = watch::channel(Link::CLEAR);
        let stalls = Arc::new(AtomicU64::new(0));
        let counted = stalls.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                conns.spawn(connection(inbound, upstream, rx.clone(), counted.clone()));
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(Self { addr, ctl, stalls, task })
    }

    /// Where the client connects.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the link's state (takes effect at once, also on open connections).
    pub fn set(&self, link: Link) {
        self.ctl.send_replace(link);
    }

    /// How many chunks and new connections a blocked direction has held since the proxy
    /// started (each counted once, however long it was held).
    pub fn stalls(&self) -> u64 {
        self.stalls.load(Ordering::Relaxed)
    }

    /// Changes the link's state with `f`.
    pub fn update(&self, f: impl FnOnce(&mut Link)) {
        self.ctl.send_modify(f);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connection(
    inbound: TcpStream,
    upstream: SocketAddr,
    mut rx: watch::Receiver<Link>,
    stalls: Arc<AtomicU64>,
) {
    let open = |l: &Link| !l.up_blocked && !l.down_blocked;
    if !open(&rx.borrow_and_update()) {
        stalls.fetch_add(1, Ordering::Relaxed);
    }
    if rx.wait_for(open).await.is_err() {
        return;
    }
    let Ok(Ok(outbound)) = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(upstream)).await
    else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (ir, iw) = inbound.into_split();
    let (or, ow) = outbound.into_split();
    let up = pump(ir, ow, rx.clone(), Dir::Up, stalls.clone());
    let down = pump(or, iw, rx, Dir::Down, stalls);
    tokio::pin!(up);
    tokio::pin!(down);
    // The server's side ending ends the connection; the client's half-close lets the
    // replies drain first.
    tokio::select! {
        _ = &mut down => {}
        r = &mut up => if r.is_ok() { let _ = down.await; },
    }
}

async fn pump<R, W>(
    mut r: R,
    mut w: W,
    rx: watch::Receiver<Link>,
    dir: Dir,
    stalls: Arc<AtomicU64>,
) -> Result<()>
where
    R: AsyncReadExt + Unpin + Send + 'static,
    W: AsyncWriteExt + Unpin,
{
    let (tx, mut chunks) = mpsc::channel::<(Instant, Vec<u8>)>(256);
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send((Instant::now(), buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let _abort = AbortOnDrop(reader);
    let mut rx = rx;
    while let Some((read_at, chunk)) = chunks.recv().await {
        let mut held = false;
        loop {
            let link = *rx.borrow_and_update();
            if dir.blocked(&link) {
                if !std::mem::replace(&mut held, true) {
                    stalls.fetch_add(1, Ordering::Relaxed);
                }
                rx.changed().await.map_err(|_| ChaosError::Protocol("proxy stopped".into()))?;
                continue;
            }
            let due = read_at + link.delay;
            if Instant::now() >= due {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(due) => break,
                c = rx.changed() => c.map_err(|_| ChaosError::Protocol("proxy stopped".into()))?,
            }
        }
        w.write_all(&chunk).await.map_err(|e| ChaosError::io("proxy write", e))?;
    }
    let _ = w.shutdown().await;
    Ok(())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
        let t = Instant::now();
        s.write_all(b"x").await.ok()?;
        let mut b = [0u8; 1];
        tokio::time::timeout(limit, s.read_exact(&mut b)).await.ok()?.ok()?;
        Some(t.elapsed())
    }

    #[tokio::test]
    async fn forwards_stalls_and_delays() {
        let proxy = Proxy::start(echo_server().await).await.expect("proxy");
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert!(round_trip(&mut s, Duration::from_secs(2)).await.is_some());
        // One way: requests are held, so no answer comes; healed, the held byte arrives.
        assert_eq!(proxy.stalls(), 0);
        proxy.update(|l| l.up_blocked = true);
        assert!(round_trip(&mut s, Duration::from_millis(300)).await.is_none());
        assert_eq!(proxy.stalls(), 1, "the held request was not counted");
        // A connection opened meanwhile waits, and is counted once.
        let _waiting = TcpStream::connect(proxy.addr()).await.expect("connect");
        let deadline = Instant::now() + Duration::from_secs(5);
        while proxy.stalls() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(proxy.stalls(), 2, "the held connection was not counted");
        proxy.set(Link::CLEAR);
        let mut b = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut b))
            .await
            .expect("late byte")
            .expect("read");
        // Slow: 100 ms each way.
        proxy.update(|l| l.delay = Duration::from_millis(100));
        let rt = round_trip(&mut s, Duration::from_secs(2)).await.expect("slow round trip");
        assert!(rt >= Duration::from_millis(190), "{rt:?}");
    }
}
