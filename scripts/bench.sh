#!/usr/bin/env bash
# Runs redtail's benchmark (docs/benchmarks.md): builds the release binaries,
# then runs examples/bench.rs, which starts mongo-sim in process, its own
# redis-server and the release redtail on 127.0.0.1, and prints a table and a
# final `BENCH_JSON {...}` line. Takes about two minutes; not part of CI.
# Knobs (environment): BENCH_WRITES, BENCH_RATE, BENCH_LATENCY_SECS,
# BENCH_BATCH_SIZES; see examples/bench.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in redis-server redis-benchmark; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "bench: $tool is missing; run scripts/setup.sh first" >&2
    exit 1
  fi
done

cargo build --release --bin redtail --example bench
exec timeout 300 target/release/examples/bench "$@"
