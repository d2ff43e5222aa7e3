//! What each operation costs in requests, on both emulators, counted by a proxy that logs
//! every request's operation. moto returns the item of a failed condition
//! (`ReturnValuesOnConditionCheckFailure`), so a refusal costs nothing more; dynalite does not,
//! and a refusal costs one consistent `GetItem` more. moto has transactions; dynalite has none,
//! and a multi-key lock is then taken one name at a time.

mod support;

use std::time::Duration;

use futures::StreamExt;
use lock_core::{LockClient, Mode};
use lock_dynamo::DynamoOptions;
use support::proxy::Proxy;
use support::Emulator;

const TTL: Duration = Duration::from_secs(30);

fn opts() -> DynamoOptions {
    DynamoOptions::new("request_locks")
}

/// Runs `op`, then checks the operations it sent.
macro_rules! costs {
    ($proxy:expr, $what:expr, $op:expr, [$($want:expr),* $(,)?]) => {{
        let _ = $proxy.take_ops();
        let out = $op;
        let sent = $proxy.take_ops();
        let want: Vec<&str> = vec![$($want),*];
        assert_eq!(sent, want, "{}", $what);
        out
    }};
}

async fn each_operation_costs_what_the_docs_say(emulator: Emulator) {
    let emu = emulator.with_table(&opts()).await;
    let proxy = Proxy::start(emu.endpoint.clone()).await;
    let c = support::locks(&proxy.endpoint, opts());
    let other = support::locks(&proxy.endpoint, opts());
    let refused: &[&str] =
        if emulator == Emulator::Moto { &["UpdateItem"] } else { &["UpdateItem", "GetItem"] };
    let name = support::key("requests", "k");
    locks_and_permits(&proxy, &c, &other, refused, &name).await;
    rw_locks_and_elections(&proxy, &c, &other, refused, &name).await;
    several_names_and_listing(emulator, &proxy, &c, &name).await;
}

/// A lock and a semaphore of one permit.
async fn locks_and_permits(proxy: &Proxy, c: &LockClient, other: &LockClient, refused: &[&str], name: &str) {
    // The lock.
    let g = costs!(proxy, "acquire", c.lock(name).ttl(TTL).acquire().await.expect("acquire"), ["UpdateItem"]);
    let _ = proxy.take_ops();
    assert!(other.lock(name).try_acquire().await.expect("try").is_none());
    assert_eq!(proxy.take_ops(), refused, "a refused acquire");
    costs!(proxy, "extend", g.extend(TTL).await.expect("extend"), ["UpdateItem"]);
    costs!(proxy, "inspect", c.inspect(name).await.expect("inspect"), ["GetItem"]);
    costs!(proxy, "release", g.release().await.expect("release"), ["UpdateItem"]);

    // A semaphore of one permit.
    let p = costs!(
        proxy,
        "permit",
        c.semaphore(name, 1).ttl(TTL).acquire().await.expect("permit"),
        ["UpdateItem"]
    );
    let _ = proxy.take_ops();
    assert!(other.semaphore(name, 1).try_acquire().await.expect("try").is_none());
    assert_eq!(proxy.take_ops(), refused, "a refused permit");
    costs!(
        proxy,
        "permit holders",
        c.holders(name, Mode::Permit { limit: 1 }).await.expect("holders"),
        ["GetItem"]
    );
    costs!(proxy, "permit extend", p.extend(TTL).await.expect("extend"), ["UpdateItem"]);
    costs!(proxy, "permit release", p.release().await.expect("release"), ["UpdateItem"]);
}

/// A read-write lock and an election.
async fn rw_locks_and_elections(
    proxy: &Proxy,
    c: &LockClient,
    other: &LockClient,
    refused: &[&str],
    name: &str,
) {
    // A read-write lock.
    let r =
        costs!(proxy, "reader", c.read_lock(name).ttl(TTL).acquire().await.expect("reader"), ["UpdateItem"]);
    let _ = proxy.take_ops();
    assert!(other.write_lock(name).try_acquire().await.expect("try").is_none());
    assert_eq!(proxy.take_ops(), refused, "a refused writer");
    costs!(proxy, "reader release", r.release().await.expect("release"), ["UpdateItem"]);

    // An election.
    let e = c.election(name).ttl(TTL);
    let l = costs!(proxy, "campaign", e.campaign("v1").await.expect("campaign"), ["UpdateItem"]);
    costs!(proxy, "leader", e.leader().await.expect("leader"), ["GetItem"]);
    costs!(proxy, "proclaim", e.proclaim(&l, "v2").await.expect("proclaim"), ["UpdateItem"]);
    let mut seen = e.observe().await.expect("observe");
    costs!(proxy, "one observe poll", seen.next().await.expect("a state").expect("read"), ["GetItem"]);
    drop(seen);
    costs!(proxy, "resign", l.release().await.expect("resign"), ["UpdateItem"]);
}

/// A multi-key lock and a listing.
async fn several_names_and_listing(emulator: Emulator, proxy: &Proxy, c: &LockClient, name: &str) {
    // Several names at once.
    let names: Vec<String> = ["a", "b", "c"].iter().map(|n| format!("{name}/{n}")).collect();
    let all = c.lock_all(&names).ttl(TTL);
    let m = match emulator {
        Emulator::Moto => costs!(
            proxy,
            "lock_all",
            all.acquire().await.expect("all"),
            ["TransactWriteItems", "BatchGetItem"]
        ),
        // The first one learns that there are no transactions; the next ones do not ask.
        Emulator::Dynalite => costs!(
            proxy,
            "lock_all",
            all.acquire().await.expect("all"),
            ["TransactWriteItems", "UpdateItem", "UpdateItem", "UpdateItem"]
        ),
    };
    costs!(
        proxy,
        "lock_all release",
        m.release().await.expect("release"),
        ["UpdateItem", "UpdateItem", "UpdateItem"]
    );
    if emulator == Emulator::Dynalite {
        let m = costs!(
            proxy,
            "lock_all",
            c.lock_all(&names).acquire().await.expect("all"),
            ["UpdateItem", "UpdateItem", "UpdateItem"]
        );
        m.release().await.expect("release");
    }

    // A page of a listing.
    costs!(proxy, "list", c.list(&format!("{name}/nothing")).await.expect("list"), ["Scan"]);
}

on_each_emulator!(each_operation_costs_what_the_docs_say);
