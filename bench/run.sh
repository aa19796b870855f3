#!/usr/bin/env bash
# The full comparison with every peer, on a fresh machine: installs what it can
# (redis-server from the system's packages, the Python packages from PyPI), starts Redis on
# 127.0.0.1 only, runs the harness (about 10 minutes) and stops Redis. Peers that could not
# be installed are skipped with a note. Results: bench/results/{results.json,ops.svg}.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null; then
  if command -v apt-get >/dev/null; then
    (DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server >/dev/null) \
      || echo "note: could not install redis-server; Redis will be skipped"
  fi
fi
python3 -m pip install --quiet ultradict atomics 2>/dev/null \
  || echo "note: could not install the Python packages; Python peers will be skipped"

pidfile=$(mktemp -u /tmp/ultradict-bench-redis.XXXXXX)
if command -v redis-server >/dev/null; then
  redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize yes --pidfile "$pidfile" >/dev/null
  trap 'kill "$(cat "$pidfile")" 2>/dev/null || true' EXIT
  sleep 0.5
fi

cargo run --release -p ultradict-bench --features lmdb,redis -- "$@"
