//! Semaphores, read-write locks and elections: a queue per primitive of a name, in create
//! revision order like the lock's, with a rule per primitive for which keys hold.
//!
//! - **Layout.** The primitive of name `<name>` keeps its queue under
//!   `<prefix><name>#semaphore/`, `<prefix><name>#rwlock/` or `<prefix><name>#election/`
//!   (so the lock `jobs` and the semaphore `jobs` never meet; names ending in one of those
//!   suffixes are reserved). Each attempt puts one key named by its owner token
//!   (`<owner hex>`; read-write lock: `r-<owner hex>` or `w-<owner hex>`), attached to the
//!   session's or its own lease. The owner token in the name makes the key the attempt's own:
//!   any number of one client's tasks queue at once (no local slot, unlike the lock), an undo
//!   deletes the key whatever it holds, and release, extend and proclaim compare the key's
//!   create revision, which is the grant's fencing token.
//! - **Who holds.** Semaphore of `N`: the `N` oldest keys (an attempt holds when fewer than `N`
//!   keys are older). Read-write lock: a writer when no key is older; a reader when no writer's
//!   key is older, so a waiting writer holds back every reader that comes after it (writer
//!   preference; no starvation of writers), and readers that came first go on sharing.
//!   Election: the oldest key, as etcd's Go `concurrency.Election` (see below).
//! - **Fencing.** The token is the key's create revision: one counter for the whole cluster,
//!   so tokens increase across all permits of a semaphore, a writer's is above every earlier
//!   reader's and writer's, and a reader's is above the last writer's.
//! - **Waiting.** A waiter reads its view (its own key, and what holds it back) in one
//!   transaction and watches so that no deletion is missed. Writers, readers and candidates
//!   watch the newest blocker's deletion from the read's revision on (one watcher each,
//!   no herd). A semaphore's waiter, where the end of any older grant may admit it, opens a
//!   watch of every deletion under the prefix at the current revision first (a watch opened
//!   at a past revision waits for etcd's unsynced catch-up, every 100 ms), then reads the
//!   names of the keys older than its own once and counts their deletions off the watch (no
//!   key older than it can appear later), holding when fewer than `N` are left, so a release
//!   costs the waiters no request (its event still reaches each of them). Leases are kept alive while waiting and a waiter whose lease is
//!   lost queues again, as for the lock (`queue.rs`).
//! - **Values.** A semaphore's key holds `<N>\n<metadata JSON>`: a waiter whose `N` differs from
//!   the oldest holder's gets [`Error::PermitsMismatch`]. A read-write lock's key holds the
//!   metadata JSON. A candidate's key holds its value alone, as Go's `Election` writes it.
//!
//! ## Elections and `etcdctl elect`
//! Go's `concurrency.Election` on prefix `P` puts `P/<lease id in hex>` with the proposal as
//! value, leads while its key is the oldest under `P/`, waits for every older key's deletion,
//! and proclaims by rewriting its key's value; `Leader()` and `Observe()` read the oldest key.
//! distlock's election `<name>` is Go's election on `<prefix><name>#election`, so
//! `etcdctl elect '<name>#election' PROPOSAL` campaigns against distlock and
//! `etcdctl elect -l '<name>#election'` prints distlock's leader. Our candidates' keys are named
//! by owner token rather than lease id, which Go's election reads the same way (any key under
//! the prefix is a candidate, the oldest leads). The value being the bare proposal, an
//! election's holder metadata on etcd is its value alone (no host, process or time).

use std::collections::HashSet;

use lock_core::{
    Error, ExtendOutcome, FencingToken, Instant, Lease, LockInfo, LockKey, LossSignal, Metadata, Mode,
    OwnerToken, Result,
};

use crate::backend::{token_rev, EtcdBackend};
use crate::queue::{count_off, look_again, QueueEntry, Round};
use crate::rpc::pb::{Compare, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest};
use crate::rpc::KeyValue;

/// What holds a waiter back.
enum Blocker {
    /// This key (the newest that holds it back): its deletion may admit the waiter.
    Key(Vec<u8>),
    /// A semaphore's older keys, at least its number of permits: the waiter holds once
    /// deletions have left fewer than that many.
    Older(HashSet<Vec<u8>>, usize),
}

/// The directory of `mode`'s queue under the name.
pub(crate) fn dir(mode: Mode) -> &'static str {
    match mode {
        Mode::Permit { .. } => "semaphore",
        Mode::Read | Mode::Write => "rwlock",
        _ => "election",
    }
}

/// The value an attempt of `mode` puts: see the module docs.
pub(crate) fn encode(mode: Mode, metadata: &Metadata) -> Vec<u8> {
    match mode {
        Mode::Permit { limit } => format!("{limit}\n{}", metadata.encode()).into_bytes(),
        Mode::Read | Mode::Write => metadata.encode().into_bytes(),
        _ => metadata.value.clone().unwrap_or_default().into_bytes(),
    }
}

/// The number of permits a semaphore key was put with, if it is one of ours.
fn stored_limit(value: &[u8]) -> Option<u32> {
    let (n, _) = std::str::from_utf8(value).ok()?.split_once('\n')?;
    n.parse().ok()
}

/// The holder metadata stored in a key of `mode`'s queue.
pub(crate) fn stored_metadata(mode: Mode, value: &[u8]) -> Option<Metadata> {
    match mode {
        Mode::Permit { .. } => Metadata::decode(std::str::from_utf8(value).ok()?.split_once('\n')?.1),
        Mode::Read | Mode::Write => Metadata::decode(std::str::from_utf8(value).ok()?),
        // A candidate's value alone (Go's candidates write nothing else), whatever its length.
        _ => Some(Metadata::foreign(value)),
    }
}

/// The owner token in one of our keys' names (`None` for a Go candidate's key).
/// Which keys of the queue under `pfx` of a primitive of `mode` (other than the lock) hold,
/// each with the mode it holds in: `kvs` are the queue's keys, oldest first.
pub(crate) fn holding<'a>(pfx: &str, mode: Mode, kvs: &'a [KeyValue]) -> Vec<(&'a KeyValue, Mode)> {
    match mode {
        Mode::Permit { limit } => {
            let n = kvs.first().and_then(|kv| stored_limit(&kv.value)).unwrap_or(limit);
            kvs.iter().take(n as usize).map(|kv| (kv, Mode::Permit { limit: n })).collect()
        }
        Mode::Read | Mode::Write => match kvs.first() {
            Some(kv) if is_writer(pfx, &kv.key) => vec![(kv, Mode::Write)],
            _ => kvs.iter().take_while(|kv| !is_writer(pfx, &kv.key)).map(|kv| (kv, Mode::Read)).collect(),
        },
        m => kvs.first().into_iter().map(|kv| (kv, m)).collect(),
    }
}

/// What `inspect` and `list` say of the holding key `kv` of the queue under `pfx`.
pub(crate) fn grant_info(
    pfx: &str,
    kv: &KeyValue,
    mode: Mode,
    left: Option<std::time::Duration>,
) -> LockInfo {
    LockInfo::new(Some(FencingToken::new(kv.create_revision as u64)), owner_of(pfx, &kv.key), left)
        .with_mode(mode)
        .with_metadata(stored_metadata(mode, &kv.value))
}

pub(crate) fn owner_of(pfx: &str, key: &[u8]) -> Option<OwnerToken> {
    let rest = std::str::from_utf8(key.strip_prefix(pfx.as_bytes())?).ok()?;
    let hex = rest.strip_prefix("r-").or_else(|| rest.strip_prefix("w-")).unwrap_or(rest);
    (hex.len() == 32).then(|| OwnerToken::parse_hex(hex)).flatten()
}

/// Whether a key of a read-write lock's queue is a writer's.
fn is_writer(pfx: &str, key: &[u8]) -> bool {
    key.strip_prefix(pfx.as_bytes()).is_some_and(|rest| rest.starts_with(b"w-"))
}

impl EtcdBackend {
    /// The queue prefix of `key`'s primitive `mode`, and the key an attempt by `owner` puts.
    pub(crate) fn grant_key(&self, key: &LockKey, mode: Mode, owner: OwnerToken) -> (String, String) {
        let pfx = format!("{}{}#{}/", self.inner.opts.prefix, key.full(), dir(mode));
        let tag = match mode {
            Mode::Read => "r-",
            Mode::Write => "w-",
            _ => "",
        };
        let key = format!("{pfx}{tag}{owner}");
        (pfx, key)
    }

    /// Puts the attempt's key and decides whether it holds, in one transaction: our create
    /// revision and whether we hold now.
    ///
    /// # Errors
    /// [`Error::PermitsMismatch`] when the oldest holder of a semaphore was put with another
    /// number of permits (our key is then undone by the caller); backend errors.
    pub(crate) async fn enqueue_grant(&self, e: &QueueEntry) -> Result<(i64, bool)> {
        let key = e.my_key.as_str();
        let oldest = RangeRequest::prefix(e.pfx.as_str()).oldest_first().with_limit(1);
        let decide = match e.mode {
            Mode::Read => Some(RangeRequest::prefix(format!("{}w-", e.pfx)).count_only()),
            Mode::Permit { .. } => Some(RangeRequest::prefix(e.pfx.as_str()).count_only()),
            _ => None,
        };
        let mut then = vec![RequestOp::put(key, e.value.clone(), e.lease), RequestOp::range(oldest.clone())];
        then.extend(decide.map(RequestOp::range));
        let txn = |markers: bool| {
            TxnRequest::when(e.when_new(markers)).and_then(then.clone()).or_else([
                RequestOp::range(RangeRequest::key(key).without_values()),
                RequestOp::range(oldest.clone()),
            ])
        };
        let resp = self.put_txn(|m| e.set_put_checked(m), txn).await?;
        // A semaphore's holders must all ask for the oldest holder's number of permits.
        let check_permits = |oldest: Option<&KeyValue>| match e.mode {
            Mode::Permit { limit } => {
                match oldest.filter(|kv| kv.key != key.as_bytes()).and_then(|kv| stored_limit(&kv.value)) {
                    Some(held) if held != limit => {
                        Err(Error::PermitsMismatch { key: e.pfx.clone(), asked: limit, held })
                    }
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        };
        if !resp.succeeded {
            // Our key exists: a retried put whose first reply was lost. Read where it stands,
            // with the same check of the number of permits as the first try would have made.
            let Some(my_rev) = resp.first_kv(0).map(|kv| kv.create_revision) else {
                // Not there, and not put: the attempt's undo marker is (see `enqueue_lock`).
                return Err(crate::queue::undone());
            };
            check_permits(resp.first_kv(1))?;
            let (blocker, mine, _) = self.grant_view(e, my_rev).await?;
            return Ok((my_rev, mine && blocker.is_none()));
        }
        let my_rev = resp.revision();
        let oldest = resp.first_kv(1);
        check_permits(oldest)?;
        let count = resp.range(2).map_or(0, |r| r.count);
        let holds = match e.mode {
            Mode::Read => count == 0,
            Mode::Permit { limit } => count <= i64::from(limit),
            _ => oldest.is_some_and(|kv| kv.key == key.as_bytes()),
        };
        Ok((my_rev, holds))
    }

    /// The waiter's view, in one transaction: what holds it back (`None`: nothing, it holds),
    /// whether its own key is still there at `my_rev`, and the revision read.
    async fn grant_view(&self, e: &QueueEntry, my_rev: i64) -> Result<(Option<Blocker>, bool, i64)> {
        let older = |pfx: String| RangeRequest::prefix(pfx).with_max_create_revision((my_rev - 1).max(1));
        // A semaphore's waiter reads the names of all keys older than its own, once per
        // round (about 60 bytes each: a queue of tens of thousands of waiters nears the
        // client's 4 MiB message limit). etcd counts a range before its revision filters, so
        // a count could not say how many are older.
        let blocker_read = match e.mode {
            Mode::Permit { .. } => older(e.pfx.clone()).without_values(),
            Mode::Read => older(format!("{}w-", e.pfx)).newest_first().with_limit(1).without_values(),
            _ => older(e.pfx.clone()).newest_first().with_limit(1).without_values(),
        };
        let txn = TxnRequest::when([]).and_then([
            RequestOp::range(RangeRequest::key(e.my_key.as_str()).without_values()),
            RequestOp::range(blocker_read),
        ]);
        let resp = self.call("txn", || self.client().txn(txn.clone())).await?;
        let mine = resp.first_kv(0).is_some_and(|kv| kv.create_revision == my_rev);
        let blocker = match (e.mode, resp.range(1)) {
            (Mode::Permit { limit }, Some(r)) => {
                let older: HashSet<Vec<u8>> =
                    r.kvs.iter().filter(|kv| kv.create_revision < my_rev).map(|kv| kv.key.clone()).collect();
                let limit = limit as usize;
                (older.len() >= limit).then_some(Blocker::Older(older, limit))
            }
            (_, Some(r)) => {
                r.kvs.iter().find(|kv| kv.create_revision < my_rev).map(|kv| Blocker::Key(kv.key.clone()))
            }
            (_, None) => None,
        };
        Ok((blocker, mine, resp.revision()))
    }

    /// One round of waiting for a primitive other than the lock: read the view, then wait for
    /// the next deletion that may admit us. A semaphore's waiter, which watches the whole
    /// prefix, opens that watch first, at the current revision, and reads after it (a watch
    /// opened at the read's revision would, once anything else was written meanwhile, land in
    /// etcd's unsynced watchers, caught up only every 100 ms; a deletion between the watch and
    /// the read shows in both, and the count-down takes it once). The others watch the one
    /// key that holds them back, from the read's revision on.
    pub(crate) async fn grant_round(
        &self,
        e: &QueueEntry,
        my_rev: i64,
        loss: &LossSignal,
        deadline: Instant,
    ) -> Result<Round> {
        let mut prefix_watch = None;
        if matches!(e.mode, Mode::Permit { .. }) {
            let w = WatchCreateRequest::deletions_under(e.pfx.as_str(), 0);
            match self.open_watch(e, w, deadline).await? {
                Some(ws) => prefix_watch = Some(ws),
                None => return Ok(Round::Again(None)),
            }
        }
        let (blocker, mine, rev) = self.grant_view(e, my_rev).await?;
        if !mine {
            return Ok(Round::Lost);
        }
        match (blocker, prefix_watch) {
            (None, _) => Ok(Round::Mine),
            // No key older than ours can appear (new keys are newer), so the deletions seen
            // on the watch count down to the grant: no re-read, and one release costs the
            // waiters no request.
            (Some(Blocker::Older(mut older, limit)), Some(mut ws)) => {
                let count_down =
                    |deleted: &[&KeyValue]| count_off(&mut older, limit, e.my_key.as_bytes(), rev, deleted);
                self.next_deletion(e, &mut ws, loss, deadline, count_down).await
            }
            (Some(Blocker::Key(k)), _) => {
                // From the read's revision, not the one after: a watch that starts past the
                // store's revision gets no progress reports from newer etcd (3.5.22+), and
                // its silence would look like a dead member. The read saw `k`, so its
                // deletion comes after `rev`.
                let w = WatchCreateRequest::deletions_of(k, rev);
                let mut ws = self.call("watch", || self.client().watch(w.clone())).await?;
                self.next_deletion(e, &mut ws, loss, deadline, look_again).await
            }
            // Only a semaphore's waiter counts older keys, and it opened its watch above.
            (Some(Blocker::Older(..)), None) => Ok(Round::Again(None)),
        }
    }

    /// The holders of `key`'s primitive `mode`, oldest first, by the rule of the module docs.
    pub(crate) async fn grant_holders(&self, key: &LockKey, mode: Mode) -> Result<Vec<LockInfo>> {
        if mode == Mode::Exclusive {
            return Ok(self.inspect_lock(key).await?.into_iter().collect());
        }
        let (pfx, _) = self.grant_key(key, mode, OwnerToken::from_u128(0));
        self.holders_under(&pfx, mode).await
    }

    /// The holders of the queue under `pfx` of a primitive of `mode` (other than the lock).
    pub(crate) async fn holders_under(&self, pfx: &str, mode: Mode) -> Result<Vec<LockInfo>> {
        let read = || RangeRequest::prefix(pfx).oldest_first();
        let kvs = self.call("get", || self.client().range(read())).await?.kvs;
        let held = holding(pfx, mode, &kvs);
        // Each lease looked up once (a session's grants share one), several at a time.
        let left = self.leases_left(held.iter().map(|(kv, _)| kv.lease).collect()).await;
        Ok(held
            .into_iter()
            .map(|(kv, kv_mode)| grant_info(pfx, kv, kv_mode, left.get(&kv.lease).copied().flatten()))
            .collect())
    }

    /// Rewrites the value of our grant's key (an election's proclaim), keeping its lease, in
    /// one transaction that compares the key's create revision (the fencing token).
    pub(crate) async fn rewrite_value(&self, lease: &Lease, metadata: &Metadata) -> Result<ExtendOutcome> {
        if lease.mode() == Mode::Exclusive {
            return self.rewrite_lock_metadata(lease, metadata).await;
        }
        let (_, key) = self.grant_key(lease.key(), lease.mode(), lease.owner());
        let txn = TxnRequest::when([Compare::create_revision_is(key.as_str(), token_rev(lease))])
            .and_then([RequestOp::put_keeping_lease(key.as_str(), encode(lease.mode(), metadata))]);
        if self.call("txn", || self.client().txn(txn.clone())).await?.succeeded {
            Ok(ExtendOutcome::Extended { valid_until: lease.valid_until() })
        } else {
            Ok(ExtendOutcome::NotHeld)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_foreign_keys_are_read_safely() {
        let m = Metadata::current().with_value("a:1").expect("value");
        let v = encode(Mode::Permit { limit: 3 }, &m);
        assert_eq!(stored_limit(&v), Some(3));
        assert_eq!(stored_metadata(Mode::Permit { limit: 3 }, &v), Some(m.clone()));
        assert_eq!(stored_metadata(Mode::Read, &encode(Mode::Read, &m)), Some(m.clone()));
        let leader = stored_metadata(Mode::Leader, &encode(Mode::Leader, &m)).expect("leader value");
        assert_eq!(leader.value.as_deref(), Some("a:1"));
        assert_eq!(stored_limit(b"a Go candidate's proposal"), None);
        let long = "p".repeat(3 * lock_core::MAX_VALUE_LEN);
        let read = stored_metadata(Mode::Leader, long.as_bytes()).expect("a Go candidate's long value");
        assert_eq!(read.value.as_deref(), Some(long.as_str()));
        let owner = OwnerToken::random();
        assert_eq!(owner_of("p/", format!("p/w-{owner}").as_bytes()), Some(owner));
        assert_eq!(owner_of("p/", format!("p/{owner}").as_bytes()), Some(owner));
        assert_eq!(owner_of("p/", b"p/694d8a0b8c2a1f03"), None, "a Go candidate's lease id");
        assert!(is_writer("p/", b"p/w-1") && !is_writer("p/", b"p/r-1"));
    }
}
