//! # lock-dynamo: distlock on DynamoDB
//!
//! One item per lock in a table you name, changed only by conditional writes; takeover from
//! a holder that stopped heartbeating without trusting anyone's clock, as
//! amazon-dynamodb-lock-client does.
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
//! # Ok(()) }
//! ```
//!
//! The same backend from a URL, as the `distlock` facade's `connect` reads it:
//! `"dynamodb://locks?region=eu-west-1&create_table=true".parse::<DynamoOptions>()` (see
//! [`DynamoOptions`] for every option).
//!
//! ## The item
//! | attribute | meaning |
//! |---|---|
//! | partition key (default `lock_key`) | the lock's full key |
//! | sort key (optional) | [`DynamoOptions::sort_key`]'s value: many namespaces, one table |
//! | `owner` | the holder's owner token; absent when free |
//! | `rvn` | record version number, new on every write |
//! | `fence` | the fencing counter |
//! | `lease_ms` | the holder's lease duration |
//! | `expires_at_ms` | the lease's end by the holder's wall clock (read by [`Takeover::Clock`] only) |
//! | `release_rvn` | the RVN the last release wrote (a retried release recognises itself by it) |
//!
//! - **Acquire** is one `UpdateItem`: set owner, a new RVN, the lease and `fence + 1`, on the
//!   condition that the item has no owner (never used, or released), or still carries the
//!   RVN this client has seen unchanged for a whole lease (the holder is gone). A failed
//!   condition returns the item (`ReturnValuesOnConditionCheckFailure`), so a held lock costs
//!   no extra read. It is "held", never an error.
//! - **Extend** (the heartbeat) sets a new RVN and lease on the condition that owner and RVN
//!   are still ours. **Release** removes the owner and sets a new RVN (also kept as
//!   `release_rvn`) on the condition that the owner is ours. Both report "not held" when the
//!   condition fails.
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
//!   replies).
//! - **Deadlines**: every acquire attempt is cut off at its own time limit, whatever the
//!   client's retries would allow: `try_acquire` returns within one request timeout, and a
//!   waiting acquire within its deadline plus one request timeout (each attempt gets the time
//!   left, at least a second or the request timeout if shorter). Within that time the SDK
//!   still retries throttling and 5xx. Extend, release and inspect keep the client's own
//!   limits (with [`DynamoBackend::connect`]'s client: three attempts of one request timeout).
//!
//! ## Honest limits
//! - Takeover from a crashed holder costs a whole lease counted from a contender's first
//!   look ([`Takeover::RecordVersion`]), so up to twice the TTL after the holder's last
//!   heartbeat; [`Takeover::Clock`] is faster but trusts wall clocks within `max_skew`.
//! - A holder's lease is measured from before its request was sent, on its own clock; a
//!   holder paused past its lease is told "not held" by its next extend (which releases
//!   instead), but nothing stops it acting in between: use the fencing token.
//! - An acquire whose write was applied but whose answer never came is undone in the
//!   background; if this process ends first (or the undo's requests fail too), the grant
//!   blocks others until it is taken over.
//! - A release whose first try was applied but whose retry is not sent by the SDK (a caller
//!   that retries on its own sends a new release) reports "not held" for a release that did
//!   happen.
//!
//! ## Takeover
//! See [`Takeover`]. By default a contender counts a lease on its own monotonic clock from
//! the moment it first sees an RVN, so clocks never matter; a holder whose own lease ran out
//! (by its clock, `valid_until`) never extends again: its late heartbeat releases instead,
//! since a contender may already count it gone.
//!
//! In the source: `backend.rs` holds [`DynamoBackend`] and the trait impl, `options.rs` the
//! options and their URL, `acquire.rs` an acquire's attempts, their time limits and their
//! undo, `item.rs` the item's attributes, `request.rs` the conditional writes and reads,
//! `takeover.rs` what contenders remember of held items, `error.rs` the SDK's errors.

mod acquire;
mod backend;
mod error;
mod item;
mod options;
mod request;
mod takeover;

pub use crate::backend::DynamoBackend;
pub use crate::options::{DynamoOptions, Takeover, SCHEMES};
