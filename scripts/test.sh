#!/usr/bin/env bash
# distlock's full test suite, runnable on a fresh Debian machine as root (and what CI runs).
#
# 1. Runs the README's first command as a newcomer would, before anything is installed: only
#    a Rust toolchain, and a `protoc` on PATH that fails if anything calls it.
# 2. Installs what the tests need when it is missing (servers, tools).
# 3. Checks formatting and lints (warnings are errors), and that the generated etcd API code
#    matches its .proto files.
# 4. Runs every test: unit tests, the conformance suite against every backend (the server
#    fixtures start and stop real servers on free loopback ports), doc tests.
# 5. Builds the docs with warnings as errors.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

# --- the README's first command, on a fresh machine ----------------------------------------
# Nothing may need protoc (etcd's API code is generated ahead of time, see lock-etcd/proto):
# a protoc that fails comes first on PATH, and PROTOC points nowhere.
log "README's first command (embedded default, no server, no protoc)"
first_dir="$(mktemp -d)"
mkdir -p "$first_dir/bin"
printf '#!/bin/sh\necho "protoc was called, but nothing may need it" >&2\nexit 1\n' >"$first_dir/bin/protoc"
chmod +x "$first_dir/bin/protoc"
out=$(env -u PROTOC PATH="$first_dir/bin:$PATH" DISTLOCK_DIR="$first_dir/locks" \
  cargo run -q --locked -p distlock-cli -- run --lock nightly-report -- sh -c 'echo "job ran with token $DISTLOCK_FENCING_TOKEN"')
echo "$out"
[ "$out" = "job ran with token 1" ] || { echo "unexpected output from the README's first command" >&2; exit 1; }
rm -rf "$first_dir"

# --- what the tests need -------------------------------------------------------------------
# Each entry: "command-that-must-exist:debian-package".
NEEDS=(
  "python3:python3"             # the fixture self-test uses it as a stand-in server
  "redis-server:redis-server"   # lock-redis: single node, Redlock masters, Sentinel (redis-server --sentinel), Cluster
  "redis-cli:redis-tools"       # lock-redis: creates the Cluster (redis-cli --cluster create)
  "etcd:etcd-server"            # lock-etcd: one member and a three-member cluster
  "etcdctl:etcd-client"         # lock-etcd: interop with `etcdctl lock`
  "protoc:protobuf-compiler"    # regenerates lock-etcd's etcd API code to check the committed copy
  "openssl:openssl"             # the TLS tests make a throwaway CA
  "java:default-jre-headless"   # lock-zk: the ZooKeeper servers and the Curator contender
  "javac:default-jdk-headless"  # lock-zk: compiles the Curator contender
  "node:nodejs"                 # lock-dynamo: dynalite, the emulator that serves in parallel
  "npm:npm"                     # lock-dynamo: installs dynalite into target/dynalite
  "prometheus:prometheus"       # distlock-cli: the Grafana dashboard's queries on a real Prometheus
)
# Each entry: "file-that-must-exist:debian-package".
NEED_FILES=(
  "/usr/share/java/zookeeper.jar:zookeeper"                       # lock-zk: the server
  "/usr/share/java/curator-recipes.jar:libcurator-recipes-java"   # lock-zk: Curator interop
)
missing=()
for need in "${NEEDS[@]}"; do
  cmd=${need%%:*}; pkg=${need#*:}
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
for need in "${NEED_FILES[@]}"; do
  file=${need%%:*}; pkg=${need#*:}
  [ -e "$file" ] || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages (${missing[*]}); run as root or install them" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Python programs the tests drive, in a virtualenv under target/: redis-py (the Redis interop
# test), kazoo (lock-zk's interop check) and moto's server (lock-dynamo's DynamoDB emulator,
# started by its fixture).
PYENV=target/pyenv
if ! "$PYENV/bin/python" -c 'import redis, kazoo, moto.server, flask' >/dev/null 2>&1; then
  log "making $PYENV with redis-py, kazoo and moto[server]"
  if ! python3 -m venv "$PYENV" >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$PYENV"
  fi
  "$PYENV/bin/pip" install -q --disable-pip-version-check 'redis>=5,<9' 'kazoo>=2.9,<3' 'moto[server]>=5.1,<6'
fi

export RUST_BACKTRACE="${RUST_BACKTRACE:-0}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

log "cargo fmt --check"
cargo fmt --all --check

log "the committed etcd API code matches its .proto files (scripts/gen-etcd-proto.sh)"
gen_dir="$(mktemp -d)"
bash scripts/gen-etcd-proto.sh "$gen_dir" >/dev/null
diff -r "$gen_dir" lock-etcd/src/proto
rm -rf "$gen_dir"

log "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "cargo test"
cargo test --workspace --locked

log "the facade with its default features only (a scheme whose feature is off)"
cargo clippy -q --locked -p distlock --all-targets -- -D warnings
cargo test -q --locked -p distlock --test connect

log "the examples, each on its embedded default (no server)"
examples_dir="$(mktemp -d)"
for ex in cron_once worker_stops_on_loss fenced_write migration metrics tracing; do
  DISTLOCK_DIR="$examples_dir" cargo run -q --locked -p distlock --example "$ex"
done
rm -rf "$examples_dir"

log "benchmarks, quick mode (so they never rot; numbers are reported, not asserted)"
cargo bench -q --locked -p lock-redis --bench latency -- --quick
cargo bench -q --locked -p lock-etcd --bench etcd -- --quick
cargo run -q --locked -p distlock-bench -- --quick --svg target/bench-curves-quick.svg 2>/dev/null

log "the fault harness, quick mode: every backend under pauses and kills, real processes and servers"
cargo run -q --locked -p distlock-chaos -- --quick --out target/chaos

log "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

log "all checks passed"
