//! A proxy between a client and the DynamoDB emulator that speaks just enough HTTP/1.1 to
//! inject faults: throttling, 5xx in place of a reply, replies swallowed (the request is
//! applied, its reply never comes: the client's request times out) and replies cut off
//! halfway through their body. Writes are `UpdateItem`s
//! and `TransactWriteItems`. It also logs each request's operation, to count them.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to the requests it sees.
#[derive(Debug, Default)]
pub struct Faults {
    /// Answer 1 in `throttle_every` requests with a ThrottlingException, unforwarded (0: none).
    pub throttle_every: u32,
    /// Answer the next this many requests (after any `update_script` fate) with a
    /// ThrottlingException, unforwarded.
    pub throttle_next: u32,
    /// Forward the next this many UpdateItem requests, then answer 500 instead of the reply.
    pub lose_update_replies: u32,
    /// Forward the next this many UpdateItem requests, and never answer them.
    pub swallow_update_replies: u32,
    /// The fates of the next UpdateItem requests, one each, before any other rule: `true`
    /// forwards it and answers 500 instead of the reply, `false` forwards it and its reply.
    pub update_script: std::collections::VecDeque<bool>,
    /// Forward the next this many UpdateItem requests, send the head of the reply and half
    /// its body, then close the connection.
    pub cut_update_replies: u32,
    /// Forward every request, and never answer any.
    pub swallow_all: bool,
    /// Forward the next UpdateItem this much later (after its client gave up on it), and
    /// never answer it.
    pub delay_next_update: Option<std::time::Duration>,
    pub seen: u32,
    pub throttled: u32,
    pub lost: u32,
    pub swallowed: u32,
    pub cut: u32,
    /// Every request's operation (`UpdateItem`, `GetItem`…), in order.
    pub ops: Vec<String>,
}

/// The proxy; it runs until the test's runtime ends.
pub struct Proxy {
    pub endpoint: String,
    faults: Arc<Mutex<Faults>>,
}

impl Proxy {
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let faults = Arc::new(Mutex::new(Faults::default()));
        let f = faults.clone();
        let up = upstream.trim_start_matches("http://").to_owned();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, up.clone(), f.clone()));
            }
        });
        Self { endpoint, faults }
    }

    pub fn set(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.faults.lock().expect("faults"));
    }

    /// Throttled and lost (500) replies so far.
    pub fn counts(&self) -> (u32, u32) {
        let f = self.faults.lock().expect("faults");
        (f.throttled, f.lost)
    }

    /// The operations of the requests seen so far, and forgets them.
    pub fn take_ops(&self) -> Vec<String> {
        std::mem::take(&mut self.faults.lock().expect("faults").ops)
    }

    /// Swallowed replies so far.
    pub fn cut(&self) -> u32 {
        self.faults.lock().expect("faults").cut
    }

    pub fn swallowed(&self) -> u32 {
        self.faults.lock().expect("faults").swallowed
    }
}

/// Reads one HTTP/1.1 message (head and Content-Length body); `None` at a clean EOF.
async fn read_message(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok()).flatten()
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.ok()?;
    Some((head, body))
}

fn error_reply(status: &str, kind: &str) -> Vec<u8> {
    let body = format!("{{\"__type\":\"com.amazonaws.dynamodb.v20120810#{kind}\",\"message\":\"injected by the test proxy\"}}");
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/x-amz-json-1.0\r\nx-amzn-RequestId: proxy\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What to do with one request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    Forward,
    Throttle,
    Lose,
    Swallow,
    Cut,
    Late(std::time::Duration),
}

fn fate(faults: &Mutex<Faults>, op: &str) -> Fate {
    // A write: UpdateItem, or a transaction of them.
    let is_update = op == "UpdateItem" || op == "TransactWriteItems";
    let mut f = faults.lock().expect("faults");
    f.seen += 1;
    f.ops.push(op.to_owned());
    if let Some(lose) = is_update.then(|| f.update_script.pop_front()).flatten() {
        f.lost += u32::from(lose);
        if lose {
            Fate::Lose
        } else {
            Fate::Forward
        }
    } else if let Some(d) = f.delay_next_update.take_if(|_| is_update) {
        Fate::Late(d)
    } else if f.throttle_next > 0 {
        f.throttle_next -= 1;
        f.throttled += 1;
        Fate::Throttle
    } else if f.throttle_every > 0 && f.seen.is_multiple_of(f.throttle_every) {
        f.throttled += 1;
        Fate::Throttle
    } else if f.swallow_all || (is_update && f.swallow_update_replies > 0) {
        if !f.swallow_all {
            f.swallow_update_replies -= 1;
        }
        f.swallowed += 1;
        Fate::Swallow
    } else if is_update && f.cut_update_replies > 0 {
        f.cut_update_replies -= 1;
        f.cut += 1;
        Fate::Cut
    } else if is_update && f.lose_update_replies > 0 {
        f.lose_update_replies -= 1;
        f.lost += 1;
        Fate::Lose
    } else {
        Fate::Forward
    }
}

async fn serve(mut conn: TcpStream, upstream: String, faults: Arc<Mutex<Faults>>) {
    while let Some((head, body)) = read_message(&mut conn).await {
        let op = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("x-amz-target")
                    .then(|| v.trim().rsplit('.').next().unwrap_or("").to_owned())
            })
            .unwrap_or_default();
        let fate = fate(&faults, &op);
        let reply = if fate == Fate::Throttle {
            error_reply("400 Bad Request", "ThrottlingException")
        } else {
            if let Fate::Late(d) = fate {
                tokio::time::sleep(d).await;
            }
            let Ok(mut up) = TcpStream::connect(&upstream).await else { return };
            if up.write_all(head.as_bytes()).await.is_err() || up.write_all(&body).await.is_err() {
                return;
            }
            let Some((rhead, rbody)) = read_message(&mut up).await else { return };
            match fate {
                // The request was applied; its reply never arrives. The connection stays open,
                // silent, until the client gives up on it.
                Fate::Swallow | Fate::Late(_) => {
                    let mut sink = [0u8; 1024];
                    while conn.read(&mut sink).await.is_ok_and(|n| n > 0) {}
                    return;
                }
                // The request was applied; its reply stops halfway through the body, and the
                // connection closes.
                Fate::Cut => {
                    let mut r = rhead.into_bytes();
                    r.extend_from_slice(&rbody[..rbody.len() / 2]);
                    let _ = conn.write_all(&r).await;
                    let _ = conn.shutdown().await;
                    return;
                }
                // The request was applied; a 500 comes instead of its reply.
                Fate::Lose => error_reply("500 Internal Server Error", "InternalServerError"),
                _ => {
                    let mut r = rhead.into_bytes();
                    r.extend_from_slice(&rbody);
                    r
                }
            }
        };
        if conn.write_all(&reply).await.is_err() {
            return;
        }
    }
}
