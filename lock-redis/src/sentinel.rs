//! The server a [`RedisBackend`](crate::RedisBackend) talks to: one fixed address, or the
//! primary that Redis Sentinels name, followed across failovers.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use lock_core::{BackendErrorKind, Error, Result};
use tokio::sync::Notify;

use crate::node::{Node, NAME};
use crate::options::{split_address, RedisOptions, Sentinel, DEFAULT_REQUEST_TIMEOUT, DEFAULT_SENTINEL_PORT};

/// How often the sentinels are asked where the primary is, when nothing went wrong.
const SENTINEL_POLL: Duration = Duration::from_secs(1);
/// The shortest gap between two rounds of questions (trouble can come in bursts).
const SENTINEL_MIN_GAP: Duration = Duration::from_millis(100);

/// The node in use and, for a Sentinel-managed primary, how to find the next one.
pub(crate) struct Primary {
    /// The primary's address (`host:port`) and its node.
    current: RwLock<(String, Arc<Node>)>,
    /// Fired by the node when a request fails in a way a failover explains.
    trouble: Arc<Notify>,
}

impl std::fmt::Debug for Primary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Primary").field("node", &self.node()).finish()
    }
}

impl Primary {
    /// Connects to the server `opts` name: the one address, or the primary the sentinels
    /// name (then followed in the background for as long as the backend lives).
    pub(crate) async fn connect(opts: &RedisOptions) -> Result<Arc<Self>> {
        let trouble = Arc::new(Notify::new());
        let Some(sentinel) = opts.sentinel.clone() else {
            let node = Node::connect(opts, NAME, false, DEFAULT_REQUEST_TIMEOUT).await?;
            return Ok(Arc::new(Self {
                current: RwLock::new((opts.address.clone(), Arc::new(node))),
                trouble,
            }));
        };
        let address = ask(opts, &sentinel, None).await?;
        let node = Node::connect(&opts.at(address.clone()), NAME, false, DEFAULT_REQUEST_TIMEOUT)
            .await?
            .on_trouble(trouble.clone());
        let me = Arc::new(Self { current: RwLock::new((address, Arc::new(node))), trouble });
        tokio::spawn(follow(Arc::downgrade(&me), opts.clone(), sentinel));
        Ok(me)
    }

    /// The node new requests go to.
    pub(crate) fn node(&self) -> Arc<Node> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).1.clone()
    }

    fn address(&self) -> String {
        self.current.read().unwrap_or_else(|p| p.into_inner()).0.clone()
    }
}

/// Asks the sentinels in turn where the master is: `host:port` from the first that names a
/// server that says it is a master (`ROLE`, as Redis's guidelines for Sentinel clients ask).
/// A sentinel that has not yet seen a failover names the old master, now a replica or gone;
/// the next sentinel is asked then. `trusted` (the primary in use, while no request failed)
/// is taken without asking it.
///
/// # Errors
/// A retryable connection error naming what each sentinel said when none named a master.
async fn ask(opts: &RedisOptions, sentinel: &Sentinel, trusted: Option<&str>) -> Result<String> {
    let mut said = Vec::new();
    for addr in &sentinel.sentinels {
        match ask_one(opts, addr, &sentinel.master).await {
            Ok(Some(found)) if trusted == Some(found.as_str()) => return Ok(found),
            Ok(Some(found)) => match role(opts, &found).await {
                Ok(role) if role == "master" => return Ok(found),
                Ok(role) => said.push(format!("{addr}: named {found}, whose role is {role}")),
                Err(e) => said.push(format!("{addr}: named {found}, which did not say its role: {e}")),
            },
            Ok(None) => said.push(format!("{addr}: no master named '{}'", sentinel.master)),
            Err(e) => said.push(format!("{addr}: {e}")),
        }
    }
    Err(Error::backend_msg(
        NAME,
        BackendErrorKind::Connection,
        format!("no sentinel named the primary '{}' ({})", sentinel.master, said.join("; ")),
    ))
}

/// One sentinel's answer: the master's `host:port`, or `None` if it knows no such master.
async fn ask_one(
    opts: &RedisOptions,
    addr: &str,
    master: &str,
) -> std::result::Result<Option<String>, String> {
    let (host, port) = split_address(addr, DEFAULT_SENTINEL_PORT)?;
    let mut at =
        RedisOptions::new(format!("{}:{port}", bracket(&host))).connect_timeout(opts.connect_timeout);
    if let Some(tls) = &opts.tls {
        at = at.tls(tls.clone());
    }
    let mut cmd = redis::cmd("SENTINEL");
    cmd.arg("get-master-addr-by-name").arg(master);
    let found: Option<(String, u16)> = ask_server(opts, &at, &cmd).await?;
    Ok(found.map(|(host, port)| format!("{}:{port}", bracket(&host))))
}

/// What the server at `address` says it is (`ROLE`: `master`, `slave` or `sentinel`).
async fn role(opts: &RedisOptions, address: &str) -> std::result::Result<String, String> {
    let reply: Vec<redis::Value> =
        ask_server(opts, &opts.at(address.to_owned()), &redis::cmd("ROLE")).await?;
    match reply.into_iter().next().map(redis::from_redis_value::<String>) {
        Some(Ok(role)) => Ok(role),
        _ => Err("a ROLE reply without a role".to_owned()),
    }
}

/// Sends `cmd` to the server `at` names on a connection of its own, within `opts`' connect
/// plus request timeout; an error as the text to report.
async fn ask_server<T: redis::FromRedisValue>(
    opts: &RedisOptions,
    at: &RedisOptions,
    cmd: &redis::Cmd,
) -> std::result::Result<T, String> {
    let client = crate::node::client(at).map_err(|e| e.to_string())?;
    let limit = opts.connect_timeout.saturating_add(opts.request_timeout_or(DEFAULT_REQUEST_TIMEOUT));
    let question = async {
        let mut con = client.get_multiplexed_async_connection().await?;
        cmd.query_async::<T>(&mut con).await
    };
    match tokio::time::timeout(limit, question).await {
        Err(_) => Err(format!("no answer within {limit:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(reply)) => Ok(reply),
    }
}

/// An IPv6 address in brackets, as addresses are written with a port.
fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Follows failovers: asks the sentinels every [`SENTINEL_POLL`], and at once on trouble;
/// when they name another primary, connects to it and makes it the node in use. Ends when
/// the backend is dropped.
async fn follow(me: Weak<Primary>, opts: RedisOptions, sentinel: Sentinel) {
    loop {
        let Some(trouble) = me.upgrade().map(|p| p.trouble.clone()) else { return };
        let troubled = tokio::select! {
            _ = tokio::time::sleep(SENTINEL_POLL) => false,
            _ = trouble.notified() => true,
        };
        drop(trouble);
        // After a failed request even the primary in use must say it still is one.
        let current = if troubled { None } else { me.upgrade().map(|p| p.address()) };
        let found = ask(&opts, &sentinel, current.as_deref()).await;
        let Some(primary) = me.upgrade() else { return };
        match found {
            Ok(address) if address != primary.address() => {
                let old = primary.node();
                match Node::connect_after(&opts.at(address.clone()), NAME, DEFAULT_REQUEST_TIMEOUT, &old)
                    .await
                {
                    Ok(node) => {
                        let mut current = primary.current.write().unwrap_or_else(|p| p.into_inner());
                        let node = Arc::new(node.on_trouble(primary.trouble.clone()));
                        tracing::info!(master = %sentinel.master, from = %current.0, to = %address, "redis sentinel: following a failover");
                        *current = (address, node);
                    }
                    Err(e) => {
                        tracing::warn!(master = %sentinel.master, to = %address, error = %e, "redis sentinel: cannot reach the new primary yet")
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(master = %sentinel.master, error = %e, "redis sentinel: no sentinel answered")
            }
        }
        drop(primary);
        tokio::time::sleep(SENTINEL_MIN_GAP).await;
    }
}
