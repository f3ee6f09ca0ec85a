#!/usr/bin/env bash
# The scale benchmark (issue 4, docs/scale.md): builds the release redtail
# binary and the `scale` example, then runs it. Knobs pass through the
# environment: SCALE_WRITES, SCALE_RATE, SCALE_REPLICAS, SCALE_MODES, REDTAIL_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { echo "redis-server is needed (scripts/setup.sh)" >&2; exit 1; }
cargo build --release -p redtail --bin redtail --example scale
exec target/release/examples/scale "$@"
