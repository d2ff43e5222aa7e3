//! # lock-core: the distlock contract
//!
//! One lock API over many coordination stores. This crate holds what every backend shares:
//!
//! - [`LockKey`]: a lock's name, validated once, under a per-client [`Namespace`].
//! - [`Lease`]: one grant, with its [`OwnerToken`] (128 random bits) and [`FencingToken`]
//!   (strictly increasing per key), TTL and `valid_until`.
//! - [`LockBackend`]: the object-safe trait a backend implements, with its [`Capabilities`]
//!   as data.
//! - [`LockClient`] and [`LockBuilder`]: the API users write against, the same for every
//!   backend.
//! - [`Guard`]: owns the lease, renews it ([`LockBuilder::auto_renew`]), signals loss
//!   ([`Guard::lost`]), and releases it on [`Guard::release`] or in the background on drop.
//! - [`Error`]: one `#[non_exhaustive]` error with [`Error::is_retryable`].
//! - [`Backoff`] and [`wait_for_lock`]: jittered exponential backoff and the waiting loop
//!   every backend shares.
//! - [`url`]: connection URLs, parsed once; each backend's options implement
//!   [`BackendOptions`] to read their own forms. [`TlsOptions`] and [`Secret`] are the TLS
//!   settings and the never-printed values every backend shares.
//! - [`observe`]: metrics and tracing in one place.
//!
//! ## The promises
//! Every backend keeps the eight promises numbered in the README's "The promises" table
//! (mutual exclusion, increasing fencing tokens, bounded blocking by a crashed holder,
//! owner-checked release and extend, prompt waiting, cancel safety, loud loss, typed errors);
//! the `conformance-tests` crate checks each of them against a real server, and each check
//! cites the promise it checks by that number.

pub mod backend;
pub mod backoff;
pub mod batch;
pub mod cancel;
pub mod capabilities;
pub mod client;
mod duration;
pub mod election;
pub mod error;
pub mod guard;
mod held;
pub mod key;
pub mod lease;
pub mod metadata;
pub mod mode;
pub mod multi;
pub mod observe;
pub mod outcome;
pub mod signal;
pub mod tls;
pub mod url;
pub mod wait;

pub use backend::{LockBackend, ObserveStream};
pub use backoff::Backoff;
pub use cancel::UndoOnDrop;
pub use capabilities::{Capabilities, WakeMode};
pub use client::{LockBuilder, LockClient, DEFAULT_TTL};
pub use election::{Election, Leader};
pub use error::{BackendErrorKind, BoxError, Error, Result};
pub use guard::Guard;
pub use key::{KeyError, LockKey, Namespace, MAX_KEY_LEN};
pub use lease::{drift_margin, FencingToken, Lease, OwnerToken, SHORTEST_TTL};
pub use metadata::{Metadata, MAX_VALUE_LEN};
pub use mode::{Mode, MAX_PERMITS};
pub use multi::{MultiGuard, MultiLockBuilder};
pub use outcome::{AcquireRequest, Attempt, CounterPage, ExtendOutcome, ListPage, LockInfo, ReleaseOutcome};
pub use signal::{LossReason, LossSignal};
pub use tls::{Secret, TlsOptions};
pub use url::{parse_duration, redact_url, BackendOptions, ConnectUrl};
pub use wait::wait_for_lock;

/// Re-exported so backends implement [`LockBackend`] with the same macro version.
pub use async_trait::async_trait;
/// Re-exported so backends and users use the same `Instant` as [`Lease::valid_until`].
pub use tokio::time::Instant;
