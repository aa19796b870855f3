#!/usr/bin/env bash
# The tests, with everything they need on a fresh machine (what the README and .ci/run run).
#
# - util-linux (`unshare`, `setpriv`): the lifecycle tests start processes in PID namespaces
#   and as another user.
# - redis-server and redis-cli: the Redis backend's tests start their own servers (and a
#   3-master Cluster) on 127.0.0.1, on free ports, and stop them. Installing the package may
#   start the system's own server on port 6379; the tests do not use it, so it is stopped.
# - cargo-nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v unshare >/dev/null 2>&1 && command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
if ((${#missing[@]})); then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
  if [[ " ${missing[*]} " == *" redis-server "* ]]; then
    service redis-server stop >/dev/null 2>&1 || true
  fi
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi

cargo nextest run --workspace
cargo test --workspace --doc
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p ultradict --lib --release models
