//! Regenerates `lock-etcd/src/proto/*.rs` from `lock-etcd/proto/*.proto` (client code only).
//!
//! Not part of any build: lock-etcd compiles the committed output and needs no `protoc`.
//! Run it through `scripts/gen-etcd-proto.sh [OUT_DIR]` (it needs `protoc` on the PATH, or
//! `PROTOC` naming it). Without `OUT_DIR` it rewrites the committed files; with it, it writes
//! there (CI diffs the two).

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let protos = crate_dir.join("proto");
    let out = std::env::args_os().nth(1).map(PathBuf::from).unwrap_or_else(|| crate_dir.join("src/proto"));
    std::fs::create_dir_all(&out)?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .build_transport(false)
        .emit_rerun_if_changed(false)
        .out_dir(&out)
        .compile_protos(&[protos.join("rpc.proto"), protos.join("v3lock.proto")], &[protos])?;
    println!("wrote {}", out.display());
    Ok(())
}
