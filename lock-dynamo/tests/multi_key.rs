//! Multi-key locks on DynamoDB, on both emulators, beyond the conformance suite:
//! - the most names one atomic request takes (DynamoDB's transaction limit) are granted
//!   together, each with its own token; one more is a typed error before anything is sent;
//! - a held name leaves every other name free (nothing granted), and the held name's holder
//!   is noted for takeover like a single acquire's;
//! - a transaction whose reply was lost (the SDK retries it) is recognised as ours (moto;
//!   dynalite has no transactions, and takes the names one at a time).

mod support;

use std::time::Duration;

use lock_core::{Error, ReleaseOutcome};
use lock_dynamo::{DynamoOptions, MAX_TRANSACTION};
use support::proxy::Proxy;
use support::Emulator;

fn opts() -> DynamoOptions {
    DynamoOptions::new("multi_locks")
}

async fn the_transaction_limit_is_taken_whole_and_one_more_is_refused(emulator: Emulator) {
    let emu = emulator.with_table(&opts()).await;
    let c = support::locks(&emu.endpoint, opts());
    let base = support::key("multi", "many");
    let names: Vec<String> = (0..MAX_TRANSACTION).map(|i| format!("{base}/{i:03}")).collect();
    let g = c.lock_all(&names).ttl(Duration::from_secs(30)).try_acquire().await.expect("try");
    let g = g.expect("100 free names were refused");
    assert_eq!(g.fencing_tokens().len(), MAX_TRANSACTION);
    for n in &names {
        let info = c.inspect(n).await.expect("inspect").expect("held");
        assert_eq!(info.fencing_token, g.fencing_token_of(n), "{n}");
    }
    assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
    let mut more = names.clone();
    more.push(format!("{base}/extra"));
    match c.lock_all(&more).ttl(Duration::from_secs(30)).try_acquire().await {
        Err(Error::Unsupported { capability, .. }) => assert!(capability.contains("100"), "{capability}"),
        other => panic!("101 names gave {other:?}"),
    }
    for n in &more {
        assert!(c.inspect(n).await.expect("inspect").is_none(), "{n} was left held");
    }
}

async fn a_held_name_grants_nothing(emulator: Emulator) {
    let emu = emulator.with_table(&opts()).await;
    let (a, b) = (support::locks(&emu.endpoint, opts()), support::locks(&emu.endpoint, opts()));
    let base = support::key("multi", "held");
    let names: Vec<String> = ["a", "b", "c"].iter().map(|n| format!("{base}/{n}")).collect();
    let held = a.lock(&names[1]).ttl(Duration::from_secs(30)).acquire().await.expect("holder");
    assert!(b.lock_all(&names).try_acquire().await.expect("try").is_none(), "granted with one name held");
    for n in [&names[0], &names[2]] {
        assert!(b.inspect(n).await.expect("inspect").is_none(), "{n} was left held");
    }
    held.release().await.expect("release");
    let g = b.lock_all(&names).try_acquire().await.expect("try").expect("all free now");
    g.release().await.expect("release");
}

async fn a_transaction_whose_reply_was_lost_is_ours(emulator: Emulator) {
    let emu = emulator.with_table(&opts()).await;
    let proxy = Proxy::start(emu.endpoint.clone()).await;
    let through = support::locks(&proxy.endpoint, opts());
    let direct = support::locks(&emu.endpoint, opts());
    let base = support::key("multi", "lost");
    let names: Vec<String> = ["a", "b"].iter().map(|n| format!("{base}/{n}")).collect();
    let first = direct.lock_all(&names).acquire().await.expect("first grant");
    let before = first.fencing_tokens().to_vec();
    first.release().await.expect("release");
    // The write is applied and a 500 comes instead of its reply; the SDK sends it again.
    proxy.set(|f| f.lose_update_replies = 1);
    let g = through.lock_all(&names).ttl(Duration::from_secs(30)).try_acquire().await.expect("try");
    let g = g.expect("a multi-key grant whose reply was lost was not recognised as ours");
    assert_eq!(proxy.counts().1, 1, "the proxy lost no reply");
    for ((k, t), (_, t0)) in g.fencing_tokens().iter().zip(&before) {
        assert_eq!(t.get(), t0.get() + 1, "{k}: the lost reply's grant was counted twice");
        let info = direct.inspect(k).await.expect("inspect").expect("held");
        assert_eq!(info.fencing_token, Some(*t));
    }
    assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
}

on_each_emulator!(
    the_transaction_limit_is_taken_whole_and_one_more_is_refused,
    a_held_name_grants_nothing,
    a_transaction_whose_reply_was_lost_is_ours
);
