//! What the lock-zk tests share: a client, contender processes of other clients, and a TCP
//! proxy that speaks ZooKeeper's framing.

#![allow(dead_code)]

pub mod contender;
pub mod proxy;

use std::time::Duration;

use lock_core::LockClient;
use lock_zk::{ZkBackend, ZkOptions};

/// A client of the ensemble at `connect` with session timeout `session`.
pub async fn client(connect: &str, session: Duration) -> LockClient {
    LockClient::new(backend(connect, session).await)
}

/// A backend on the ensemble at `connect` with session timeout `session`.
pub async fn backend(connect: &str, session: Duration) -> ZkBackend {
    let o = ZkOptions::new(connect).session_timeout(session);
    ZkBackend::connect(o).await.expect("connect to ZooKeeper")
}

/// A raw ZooKeeper client, to look at the nodes.
pub async fn raw(connect: &str) -> zookeeper_client::Client {
    zookeeper_client::Client::connect(connect).await.expect("raw client")
}

/// The children of `dir` (none if it does not exist).
pub async fn children(raw: &zookeeper_client::Client, dir: &str) -> Vec<String> {
    raw.list_children(dir).await.unwrap_or_default()
}

/// A fresh key under `what`.
pub fn key(what: &str) -> String {
    format!("{what}/{}", uuid::Uuid::new_v4().simple())
}
