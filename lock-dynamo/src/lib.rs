//! # lock-dynamo: distlock on DynamoDB
//!
//! One item per lock (and per semaphore, read-write lock and election) in a table you name,
//! changed only by conditional writes; takeover from a holder that stopped heartbeating
//! without trusting anyone's clock, as amazon-dynamodb-lock-client does.
//!
//! ```no_run
//! # async fn demo() -> lock_core::Result<()> {
//! use lock_dynamo::{DynamoBackend, DynamoOptions};
//! // create_table: made if missing (on-demand billing), once, when connecting.
//! let backend = DynamoBackend::connect(DynamoOptions::new("locks").region("eu-west-1").create_table(true)).await?;
//! let locks = lock_core::LockClient::new(backend);
//! let guard = locks.lock("reports/daily").auto_renew().acquire().await?;
//! // ... write with guard.fencing_token() ...
//! guard.release().await?;
//! let permit = locks.semaphore("pool/db", 8).acquire().await?; // one of 8 permits
//! permit.release().await?;
//! # Ok(()) }
//! ```
//!
//! The same backend from a URL, as the `distlock` facade's `connect` reads it:
//! `"dynamodb://locks?region=eu-west-1&create_table=true".parse::<DynamoOptions>()` (see
//! [`DynamoOptions`] for every option).
//!
//! ## The lock item
//! | attribute | meaning |
//! |---|---|
//! | partition key (default `lock_key`) | the lock's full key |
//! | sort key (optional) | [`DynamoOptions::sort_key`]'s value: many namespaces, one table |
//! | `owner` | the holder's owner token; absent when free |
//! | `rvn` | record version number, new on every write |
//! | `fence` | the fencing counter |
//! | `lease_ms` | the holder's lease duration |
//! | `expires_at_ms` | the lease's end by the holder's wall clock (read by [`Takeover::Clock`] only) |
//! | `meta` | the holder's metadata: host, pid, program, time and the user's value, as compact JSON ([`lock_core::Metadata::encode`]) |
//! | `release_rvn` | the RVN the last release wrote (a retried release recognises itself by it) |
//!
//! - **Acquire** is one `UpdateItem`: set owner, a new RVN, the lease, the metadata and
//!   `fence + 1`, on the condition that the item has no owner (never used, or released), or
//!   still carries the RVN this client has seen unchanged for a whole lease (the holder is
//!   gone). A failed condition returns the item (`ReturnValuesOnConditionCheckFailure`), so a
//!   held lock costs no extra read (on a server that does not return it, such as dynalite, one
//!   consistent `GetItem`). It is "held", never an error.
//! - **Extend** (the heartbeat) sets a new RVN and lease on the condition that owner and RVN
//!   are still ours (for a lease rebuilt from its parts in another process, which knows no
//!   RVN: that the owner is ours and the grant's wall-clock expiry has not passed). **Release**
//!   removes the owner and sets a new RVN (also kept as `release_rvn`) on the condition that
//!   the owner is ours. Both report "not held" when the condition fails; a release also does
//!   for a grant that ran out before it (past `valid_until` on our clock, or for a rebuilt
//!   lease past the grant's wall-clock expiry), which it removes all the same.
//! - **Fencing tokens**: every grant increments `fence` in the same conditional write that
//!   grants, and release keeps the item, so the counter only grows.
//! - **Do not let DynamoDB's TTL delete lock items.** This crate writes no TTL attribute; if
//!   the table has TTL enabled on another attribute, keep it off these items. A deleted item
//!   restarts its counter at 1, and fencing tokens would go backwards.
//! - **Waiting** polls with lock-core's jittered backoff, at most
//!   [`DynamoOptions::poll_interval`] apart, and never past the moment a takeover becomes
//!   possible. DynamoDB cannot notify; the capabilities say `WakeMode::Poll`.
//! - **Lost replies**: the SDK retries throttling, 5xx, broken connections and timed-out
//!   attempts. An acquire or heartbeat that was applied although its reply was lost then
//!   meets a failed condition whose item carries our own owner token; it is recognised as
//!   ours. A release whose reply was lost meets a failed condition whose item carries its own
//!   `release_rvn`, and reports `Released` (a second release, with a new RVN, still reports
//!   "not held"). An acquire that fails (or is dropped) after its write may have been applied
//!   leaves no grant behind: it is released by owner token in the background, so it does not
//!   block others for a lease and a takeover period (tested through a proxy that swallows
//!   replies). All of this holds for every primitive below.
//! - **Deadlines**: every acquire attempt is cut off at its own time limit, whatever the
//!   client's retries would allow: `try_acquire` returns within one request timeout, and a
//!   waiting acquire within its deadline plus one request timeout (each attempt gets the time
//!   left, at least a second or the request timeout if shorter). Within that time the SDK
//!   still retries throttling and 5xx. Extend, release and inspect keep the client's own
//!   limits (with [`DynamoBackend::connect`]'s client: three attempts of one request timeout).
//!
//! ## Semaphores, read-write locks, elections
//! Each primitive of a name has its own item, whose partition key is the full key followed by
//! the separator U+001F and the primitive (`jobs␟semaphore`, `jobs␟rwlock`, `jobs␟leader`):
//! lock keys never contain a control character, so the lock, the semaphore, the read-write
//! lock and the election of one name never meet.
//!
//! - **Semaphore** (at most [`MAX_PERMITS`] permits): `limit` (the number of permits its
//!   holders use), `fence`, `holders` (how many permits are held), and per permit a map
//!   `p:<owner>` = {`r`: RVN, `l`: lease ms, `e`: wall-clock expiry, `m`: metadata} beside
//!   `pf:<owner>` = its fencing token. A grant is one `UpdateItem`: add our permit if fewer
//!   than N are held once the permits this client has seen unchanged for a whole lease are
//!   removed (in the same write, each on the condition that its RVN is still the one seen),
//!   `fence + 1`, and `limit = N` when it was absent, equal, or no live permit remains;
//!   otherwise `Error::PermitsMismatch`. Extend and release act on our permit only. A permit's
//!   entry is about 250 bytes plus its metadata's user value: 1,000 permits fit DynamoDB's
//!   400 KB item with values of up to about 100 bytes; a grant that would pass the limit is
//!   refused with `Error::InvalidMetadata`.
//! - **Read-write lock**: `fence`, a map per reader `r:<owner>` (beside `rf:<owner>`, counted
//!   in `holders`), the writer `writer` = {`o`: owner, `r`, `l`, `e`, `m`} beside
//!   `writer_fence`, and a waiting writer's `intent` = {`o`, `r`, `l`, `e`}. A reader is
//!   granted while there is no live writer and no live intent; a writer while there is no live
//!   writer, reader or other writer's intent. Every grant increments the one counter. **Writer
//!   preference**: a writer that waits leaves an intent once refused (refreshed by its attempts
//!   with a new RVN at least every quarter of the intent's lease: the writer's TTL, at least
//!   four polls, at most twice a poll and a request timeout); new readers wait while it lives.
//!   It is withdrawn when the writer gets the lock, gives up, fails or is dropped (a failed
//!   wait withdraws it before returning, within its deadline and a request timeout, then in
//!   the background); an intent write cut off unanswered is withdrawn again over a request
//!   timeout, in case it lands late.
//! - **Election**: the leader is the lock item layout under `<name>␟leader`, with the leader's
//!   value in its metadata; the term is the fencing token. `leader()` and every poll of
//!   `observe()` are one `GetItem`; proclaim is one conditional `UpdateItem` of the metadata
//!   (RVN and expiry unchanged; "not held" once leadership is gone). DynamoDB cannot notify,
//!   so observers poll (at most every 250 ms, lock-core's polling).
//! - Every entry of a semaphore or read-write lock (permit, reader, writer, intent) is taken
//!   over on its own RVN exactly as a lock is ([`Takeover`]).
//!
//! ## Multi-key locks
//! `lock_all` first tries all names in one `TransactWriteItems` with one conditional update per
//! name (the lock's acquire): all granted, or none when any is held. The fencing tokens are
//! read back with one consistent `BatchGetItem`. At most [`MAX_TRANSACTION`] names (DynamoDB's
//! transaction limit): more is `Error::Unsupported` before anything is sent. A waiting
//! `lock_all` then takes the names one at a time in canonical order (lock-core's path). On an
//! endpoint without transactions (dynalite), the one attempt takes the names one at a time
//! and releases them if one is held: all or nothing still, but another client may see some
//! names taken for a moment.
//!
//! ## Listing
//! `list(prefix)` is a `Scan` with a filter on `begins_with(partition key, prefix)` (and the
//! sort key's value) and "holds something", paged by `LastEvaluatedKey`. A query cannot select
//! a key prefix (it needs one exact partition key, and the sort key holds the namespace), so a
//! listing reads, and bills, the whole table: an operator's tool, not for a hot path.
//!
//! ## Requests per operation
//! | operation | requests |
//! |---|---|
//! | acquire (any primitive), extend, release, proclaim | 1 `UpdateItem` |
//! | a refused acquire (held, full) | 1 `UpdateItem`; + 1 `GetItem` where the failed condition returns no item (dynalite) |
//! | a waiting writer's poll | as a refused acquire, + 1 `UpdateItem` for its intent at most every quarter of the intent's lease |
//! | inspect, holders, `leader()`, one `observe()` poll | 1 `GetItem` |
//! | `lock_all` of n names, free | 1 `TransactWriteItems` + 1 `BatchGetItem` (dynalite: n `UpdateItem`s) |
//! | list | 1 `Scan` per page (1 MB of items read) |
//!
//! ## Honest limits
//! - Takeover from a crashed holder costs a whole lease counted from a contender's first
//!   look ([`Takeover::RecordVersion`]): a contender that was already waiting gets the lock one
//!   lease after the holder's last heartbeat (plus a poll); one that arrives during the holder's
//!   last lease, up to two leases after that heartbeat (the capabilities say so:
//!   `expiry_ttls = 2`); and one that arrives later still waits one whole lease from its own
//!   first look, however long ago the holder died. [`Takeover::Clock`] is faster but trusts
//!   wall clocks within `max_skew`. The same holds for each permit, reader, writer and waiting
//!   writer's intent.
//! - A holder's lease is measured from before its request was sent, on its own clock; a
//!   holder paused past its lease is told "not held" by its next extend (which releases
//!   instead), but nothing stops it acting in between: use the fencing token.
//! - An acquire whose write was applied but whose answer never came is undone in the
//!   background; if this process ends first (or the undo's requests fail too), the grant
//!   blocks others until it is taken over.
//! - A release whose first try was applied but whose retry is not sent by the SDK (a caller
//!   that retries on its own sends a new release) reports "not held" for a release that did
//!   happen; so does a semaphore or read-write lock release whose retry comes after another
//!   holder's release of the same item.
//! - A semaphore's holders must agree on N: a client asking for another N gets
//!   `PermitsMismatch` while a permit it has not seen unchanged for a whole lease remains
//!   (crashed holders of the old size included, until then).
//! - One waiting writer's intent at a time: other waiting writers wait behind it, unordered.
//!   A waiting writer that crashes blocks new readers until its intent is taken over.
//! - A semaphore or read-write lock is one item: every grant, heartbeat and release of it is
//!   a write to that item, DynamoDB serialises the writes to one item (at most 1,000 write
//!   units a second per partition), and a write costs one write unit per KB of the item: a
//!   semaphore of 1,000 holders (about 250 KB) costs about 250 units per acquire, heartbeat
//!   and release. Keep semaphores with many holders for coarse work.
//!
//! ## Takeover
//! See [`Takeover`]. By default a contender counts a lease on its own monotonic clock from
//! the moment it first sees an RVN, so clocks never matter; a holder whose own lease ran out
//! (by its clock, `valid_until`) never extends again: its late heartbeat releases instead,
//! since a contender may already count it gone.
//!
//! ## Emulators
//! The tests run on moto's server (which returns the item of a failed condition and has
//! transactions) and on dynalite (which serves requests concurrently, returns no item with a
//! failed condition and has no transactions); everything above holds on both.
//!
//! In the source: `backend.rs` holds [`DynamoBackend`] and the trait impl, `options.rs` the
//! options and their URL, `table.rs` the table's creation, `acquire.rs` an acquire's attempts,
//! their time limits and their undo, `item.rs` the items' attributes, `request.rs` the
//! conditional writes and reads, `place.rs` the writes on one grant (heartbeat, release,
//! metadata), `lock.rs` the lock and leader item, `semaphore.rs`, `rwlock.rs`, `entries.rs` the
//! items of many entries, `multi.rs` transactions, `list.rs` the scan, `takeover.rs` what
//! contenders remember of held items, `error.rs` the SDK's errors.

mod acquire;
mod backend;
mod counters;
mod entries;
mod error;
mod item;
mod list;
mod lock;
mod multi;
mod options;
mod place;
mod request;
mod rwlock;
mod semaphore;
mod table;
mod takeover;

pub use crate::backend::DynamoBackend;
pub use crate::multi::MAX_TRANSACTION;
pub use crate::options::{DynamoOptions, Takeover, SCHEMES};
pub use crate::semaphore::MAX_PERMITS;
