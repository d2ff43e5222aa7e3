//! etcd's v3 API as Rust types and gRPC client stubs, generated ahead of time from
//! `lock-etcd/proto/*.proto` (etcd's protobufs, Apache-2.0; see `proto/README.md`) by
//! `scripts/gen-etcd-proto.sh`. Building needs no `protoc`.
//!
//! The files in `src/proto/` are generated: do not edit them, regenerate them. They are
//! pulled in with `include!`, so rustfmt leaves them as generated (regeneration is
//! byte-stable) and the lints below cover them.

#![allow(
    missing_docs,
    unreachable_pub,
    unused_qualifications,
    rust_2018_idioms,
    clippy::all,
    clippy::pedantic,
    rustdoc::all
)]

/// `mvccpb`: keys, values and watch events.
pub mod mvccpb {
    include!("proto/mvccpb.rs");
}

/// `authpb`: users, roles and permissions.
pub mod authpb {
    include!("proto/authpb.rs");
}

/// `etcdserverpb`: the KV, Watch, Lease, Maintenance and Auth services (and the rest of
/// etcd's API, unused here).
pub mod etcdserverpb {
    include!("proto/etcdserverpb.rs");
}

/// `v3lockpb`: etcd's lock service (the benchmark's peer).
pub mod v3lockpb {
    include!("proto/v3lockpb.rs");
}
