//! Checks of elections, holder metadata and listing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lock_core::{Error, FencingToken, Instant, Mode, ReleaseOutcome};

use crate::{ensure, CheckResult, Ctx, Failure};

/// Promise 1 (election): one leader at a time under contention from several clients; every
/// term strictly greater than the last.
pub async fn one_leader_at_a_time(ctx: Ctx) -> CheckResult {
    let name = ctx.key("election");
    let leaders = Arc::new(AtomicUsize::new(0));
    let terms = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let c = ctx.client().await?;
        let (name, leaders, terms) = (name.clone(), leaders.clone(), terms.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..3 {
                let e = c.election(&name).ttl(Duration::from_secs(30)).wait(Duration::from_secs(60));
                let g = e.campaign(format!("candidate-{i}-{round}")).await?;
                let n = leaders.fetch_add(1, Ordering::SeqCst) + 1;
                terms.lock().unwrap_or_else(|p| p.into_inner()).push(g.fencing_token());
                tokio::time::sleep(Duration::from_millis(10)).await;
                leaders.fetch_sub(1, Ordering::SeqCst);
                ensure!(n == 1, "{n} leaders at once");
                ensure!(g.release().await? == ReleaseOutcome::Released, "resign did not report Released");
            }
            Ok::<(), Failure>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| Failure(format!("candidate panicked: {e}")))??;
    }
    let terms = terms.lock().unwrap_or_else(|p| p.into_inner()).clone();
    ensure!(terms.windows(2).all(|w| w[1] > w[0]), "terms did not strictly increase: {terms:?}");
    Ok(())
}

/// Promise 4 (election): `leader()` names the leader and its value and term; `proclaim`
/// changes the value; a proclaim after resigning is `NotHeld` (and the guard it was made with
/// no longer looks held); resign hands over promptly.
pub async fn leader_proclaim_and_resign(ctx: Ctx) -> CheckResult {
    let a = ctx.client().await?;
    let b = ctx.client().await?;
    let name = ctx.key("election");
    let ea = a.election(&name).ttl(ctx.long_ttl());
    ensure!(ea.leader().await?.is_none(), "a fresh election has a leader");
    let g = ea.campaign("a:1").await?;
    let l = b.election(&name).leader().await?.ok_or_else(|| Failure("no leader after a campaign".into()))?;
    ensure!(l.value.as_deref() == Some("a:1"), "leader value {:?}, expected a:1", l.value);
    if let Some(t) = l.term {
        ensure!(t == g.fencing_token(), "leader term {t}, the leader holds {}", g.fencing_token());
    }
    ea.proclaim(&g, "a:2").await?;
    let l = b.election(&name).leader().await?.ok_or_else(|| Failure("no leader after proclaim".into()))?;
    ensure!(l.value.as_deref() == Some("a:2"), "leader value {:?} after proclaim, expected a:2", l.value);
    let (b2, n2) = (b.clone(), name.clone());
    let waiting = tokio::spawn(async move {
        let g =
            b2.election(&n2).ttl(Duration::from_secs(60)).wait(Duration::from_secs(30)).campaign("b:1").await;
        (g, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(!waiting.is_finished(), "a second leader was elected");
    let resigned = Instant::now();
    let lease = g.lease();
    let _ = g.release().await?;
    let (gb, got) = waiting.await.map_err(|e| Failure(format!("candidate panicked: {e}")))?;
    let gb = gb?;
    ensure!(
        got - resigned <= ctx.wake_bound() + ctx.slack(),
        "resign took {:?} to hand over",
        got - resigned
    );
    ensure!(
        gb.fencing_token() > lease.fencing_token(),
        "the next term {} is not above {}",
        gb.fencing_token(),
        lease.fencing_token()
    );
    let stale = a.resume(lease, false);
    match ea.proclaim(&stale, "a:3").await {
        Err(Error::NotHeld { .. }) => {}
        other => return Err(Failure(format!("proclaim after resigning gave {other:?}, expected NotHeld"))),
    }
    ensure!(!stale.is_held(), "a proclaim that found leadership gone left its guard looking held");
    let _ = stale.detach();
    let _ = gb.release().await?;
    Ok(())
}

/// Promise 3 (election): a crashed leader is replaced within the crash bound, never before
/// the leader's `valid_until`.
pub async fn a_crashed_leader_is_replaced_in_time(ctx: Ctx) -> CheckResult {
    let a = ctx.client().await?;
    let b = ctx.client().await?;
    let name = ctx.key("election");
    let ttl = ctx.crash_ttl();
    let sent = Instant::now();
    let g = a.election(&name).ttl(ttl).campaign("a").await?;
    let told = g.valid_until();
    ctx.crash(a, g).await;
    let bound = ctx.caps.crash_bound(ttl);
    let gb = b.election(&name).ttl(ttl).wait(bound * 3 + ctx.slack()).campaign("b").await?;
    let got = Instant::now();
    ensure!(got >= told, "a new leader was elected {:?} before the crashed leader's valid_until", told - got);
    ensure!(
        got - sent <= bound + ctx.wake_bound() + ctx.slack(),
        "the crashed leader blocked for {:?}",
        got - sent
    );
    let _ = gb.release().await?;
    Ok(())
}

/// Promise 5 (election): an observer sees every change, in order, never a stale leader after a
/// newer one, and vacancy between leaders: each leader with its own term, and its proclaimed
/// value at that term.
pub async fn observers_see_every_change_in_order(ctx: Ctx) -> CheckResult {
    let watcher = ctx.client().await?;
    let name = ctx.key("election");
    let mut seen = watcher.election(&name).observe().await?;
    let first = tokio::time::timeout(ctx.slack() * 2, seen.next())
        .await
        .map_err(|_| Failure("observe gave no first state".into()))?;
    ensure!(
        matches!(first, Some(Ok(None))),
        "a fresh election's first observed state is {first:?}, expected vacant"
    );
    let mut terms: Vec<FencingToken> = Vec::new();
    let mut observed: Option<FencingToken> = None;
    for i in 0..3 {
        let c = ctx.client().await?;
        let election = c.election(&name).ttl(ctx.long_ttl());
        let g = election.campaign(format!("leader-{i}")).await?;
        let want = g.fencing_token();
        // The observer reports this leader, with its value and term (perhaps after repeating
        // the vacancy), then its proclaimed value at the same term, then vacancy.
        for value in [format!("leader-{i}"), format!("leader-{i}-proclaimed")] {
            loop {
                let item = tokio::time::timeout(ctx.wake_bound() + ctx.slack(), seen.next())
                    .await
                    .map_err(|_| Failure(format!("the observer missed {value}")))?
                    .ok_or_else(|| Failure("the observer's stream ended".into()))??;
                let Some(l) = item else { continue };
                ensure!(l.term.is_none_or(|t| t == want), "observed {l:?} while {value} (term {want}) leads");
                if let Some(t) = l.term {
                    ensure!(observed.is_none_or(|o| t >= o), "observed term {t} after term {observed:?}");
                    observed = Some(t);
                }
                if l.value.as_deref() == Some(value.as_str()) {
                    break;
                }
                ensure!(
                    l.value.as_deref() == Some(format!("leader-{i}").as_str()),
                    "observed {l:?} while {value} (term {want}) leads"
                );
            }
            if !value.ends_with("proclaimed") {
                election.proclaim(&g, format!("leader-{i}-proclaimed")).await?;
            }
        }
        terms.push(want);
        let _ = g.release().await?;
        let item = tokio::time::timeout(ctx.wake_bound() + ctx.slack(), seen.next())
            .await
            .map_err(|_| Failure(format!("the observer missed leader-{i}'s resignation")))?
            .ok_or_else(|| Failure("the observer's stream ended".into()))??;
        ensure!(item.is_none(), "after leader-{i} resigned the observer saw {item:?}, expected vacant");
    }
    ensure!(terms.windows(2).all(|w| w[1] > w[0]), "terms did not increase: {terms:?}");
    Ok(())
}

/// Promise 7 (election, session form where the backend can promise it): a leader whose session
/// expires while it lives on (a pause) sees `lost()` fire no later than a new leader is elected.
pub async fn a_paused_leader_knows_before_a_new_one_rules(ctx: Ctx) -> CheckResult {
    let a = ctx.client().await?;
    let b = ctx.client().await?;
    let name = ctx.key("election");
    let ttl = ctx.short_ttl();
    let g = a.election(&name).ttl(ttl).campaign("a").await?;
    // Session form: the whole session expires. Per-lock form: the leader stops renewing (as a
    // paused process would): its lease is put back under a guard without renewal, whose loss
    // signal must fire by `valid_until`. The guard is kept (dropping it would resign).
    let paused = if ctx.session() { g } else { a.resume(g.detach(), false) };
    let signal = paused.loss_signal();
    let lost_at = Arc::new(std::sync::Mutex::new(None));
    let l2 = lost_at.clone();
    tokio::spawn(async move {
        signal.fired().await;
        *l2.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    });
    if ctx.session() {
        ctx.expire(a.clone()).await;
    }
    let bound = ctx.caps.crash_bound(ttl);
    let gb = b.election(&name).ttl(ttl).wait(bound * 3 + ctx.slack()).campaign("b").await?;
    let elected = Instant::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let lost = *lost_at.lock().unwrap_or_else(|p| p.into_inner());
    match lost {
        Some(at) => ensure!(
            at <= elected,
            "the old leader learned of its loss {:?} after a new leader was elected",
            at - elected
        ),
        None => return Err(Failure("the paused leader's loss never fired".into())),
    }
    let _ = gb.release().await?;
    drop(paused);
    Ok(())
}

/// Promise 4 (metadata): a grant carries its holder's metadata (host, pid, program, time, value),
/// and `inspect` returns it.
pub async fn inspect_returns_holder_metadata(ctx: Ctx) -> CheckResult {
    let c = ctx.client().await?;
    let key = ctx.key("k");
    let g = c.lock(&key).ttl(ctx.long_ttl()).value("job-42").acquire().await?;
    let info = c.inspect(&key).await?.ok_or_else(|| Failure("inspect found no holder".into()))?;
    let m = info.metadata.ok_or_else(|| Failure("inspect returned no metadata".into()))?;
    ensure!(m.value.as_deref() == Some("job-42"), "metadata value {:?}, expected job-42", m.value);
    ensure!(m.pid == std::process::id(), "metadata pid {}, expected {}", m.pid, std::process::id());
    ensure!(!m.host.is_empty() && !m.program.is_empty(), "metadata without host or program: {m:?}");
    let too_big = "x".repeat(lock_core::MAX_VALUE_LEN + 1);
    match c.lock(&ctx.key("big")).value(too_big).acquire().await {
        Err(Error::InvalidMetadata(_)) => {}
        other => return Err(Failure(format!("an oversize value gave {other:?}, expected InvalidMetadata"))),
    }
    let _ = g.release().await?;
    Ok(())
}

/// Promise 4 (listing): `list(prefix)` returns the grants held under a prefix (locks and the
/// other primitives the backend has) with metadata and tokens, and nothing released.
pub async fn list_returns_what_is_held_under_a_prefix(ctx: Ctx) -> CheckResult {
    let c = ctx.client().await?;
    let base = ctx.key("listed");
    let mut held = Vec::new();
    for i in 0..5 {
        held.push(
            c.lock(&format!("{base}/lock-{i}")).ttl(ctx.long_ttl()).value(format!("v{i}")).acquire().await?,
        );
    }
    if ctx.caps.max_permits > 0 {
        held.push(c.semaphore(&format!("{base}/sem"), 3).ttl(ctx.long_ttl()).acquire().await?);
    }
    let released = c.lock(&format!("{base}/gone")).ttl(ctx.long_ttl()).acquire().await?;
    let _ = released.release().await?;
    let other = c.lock(&ctx.key("elsewhere")).ttl(ctx.long_ttl()).acquire().await?;
    let listed = c.list(&base).await?;
    for (i, g) in held.iter().enumerate() {
        let found = listed.iter().find(|(k, info)| {
            k.starts_with(g.key()) && info.fencing_token.is_none_or(|t| t == g.fencing_token())
        });
        ensure!(found.is_some(), "list({base:?}) misses {} ({i}): {listed:?}", g.key());
    }
    ensure!(!listed.iter().any(|(k, _)| k.contains("/gone")), "list shows a released lock");
    ensure!(!listed.iter().any(|(k, _)| k.contains("elsewhere")), "list shows a lock outside the prefix");
    ensure!(
        listed.iter().any(|(_, i)| i.metadata.as_ref().and_then(|m| m.value.as_deref()) == Some("v3")),
        "list lost the holders' metadata"
    );
    ensure!(
        listed.iter().any(|(_, i)| matches!(i.mode, Mode::Permit { .. })) || ctx.caps.max_permits == 0,
        "list misses the semaphore"
    );
    for g in held {
        let _ = g.release().await?;
    }
    let _ = other.release().await?;
    list_pages_cover_each_grant_once(&ctx, &c).await
}

/// Pages of three: the backend's own `list`, its cursors followed to the end, lists each of
/// twelve held locks exactly once (with its token), and where the backend claims
/// `listing_pages`, no page holds far more than asked.
async fn list_pages_cover_each_grant_once(ctx: &Ctx, c: &lock_core::LockClient) -> CheckResult {
    let base = ctx.key("paged");
    let mut held = Vec::new();
    for i in 0..12 {
        held.push(c.lock(&format!("{base}/p-{i:02}")).ttl(ctx.long_ttl()).acquire().await?);
    }
    let prefix = held[0].key().trim_end_matches("p-00").to_owned();
    let (limit, mut cursor, mut seen) = (3, None::<String>, Vec::new());
    let mut cursors = std::collections::HashSet::new();
    // A store's page may cover other keys too (a SCAN, a table scan): the number of pages is
    // not bounded by the twelve, but a cursor must never come back.
    loop {
        let got = c.backend().list(&prefix, cursor.clone(), limit).await?;
        ensure!(
            !ctx.caps.listing_pages || got.entries.len() <= limit * 2,
            "a page of list({prefix:?}, limit {limit}) held {} entries",
            got.entries.len()
        );
        seen.extend(got.entries);
        cursor = got.cursor;
        match &cursor {
            None => break,
            Some(c) => ensure!(cursors.insert(c.clone()), "list({prefix:?}) gave the cursor {c:?} twice"),
        }
    }
    for g in &held {
        let found: Vec<_> = seen.iter().filter(|(k, _)| k == g.key()).collect();
        ensure!(found.len() == 1, "pages of {limit} listed {} {} times: {seen:?}", g.key(), found.len());
        ensure!(
            found[0].1.fencing_token.is_none_or(|t| t == g.fencing_token()),
            "{} listed with token {:?}, held with {}",
            g.key(),
            found[0].1.fencing_token,
            g.fencing_token()
        );
    }
    ensure!(seen.len() == held.len(), "pages listed {} grants for {} held: {seen:?}", seen.len(), held.len());
    for g in held {
        let _ = g.release().await?;
    }
    Ok(())
}
