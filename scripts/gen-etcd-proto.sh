#!/usr/bin/env bash
# Regenerates lock-etcd's gRPC client code from etcd's protobufs (lock-etcd/proto/*.proto).
#
#   scripts/gen-etcd-proto.sh            # rewrites the committed lock-etcd/src/proto/*.rs
#   scripts/gen-etcd-proto.sh OUT_DIR    # writes them to OUT_DIR instead (CI: diff -r the two)
#
# Needs protoc (apt-get install protobuf-compiler, or PROTOC=/path/to/protoc). Building lock-etcd
# itself never needs it: the generated code is committed. The generator (lock-etcd/codegen) is a
# crate outside the workspace with its own Cargo.lock, so the output is byte-stable.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/lock-etcd/src/proto}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
if [ -z "${PROTOC:-}" ] && ! command -v protoc >/dev/null 2>&1; then
  echo "gen-etcd-proto: protoc not found (apt-get install protobuf-compiler, or set PROTOC)" >&2
  exit 1
fi
cargo run --quiet --locked \
  --manifest-path "$root/lock-etcd/codegen/Cargo.toml" \
  --target-dir "$root/target/etcd-codegen" \
  -- "$out"
