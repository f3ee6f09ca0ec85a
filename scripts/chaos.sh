#!/usr/bin/env bash
# The chaos suite (docs/chaos.md): builds release binaries of redtail and of
# the suite, then runs every scenario against 3 real redtail processes, a real
# redis-server and mongo-sim. Extra arguments go to the suite, e.g.
#   scripts/chaos.sh --scenario sigkill,rolling --instances 5
#   scripts/chaos.sh --cluster false      # oplogtoredis's all-publish model
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { echo "redis-server is required (apt-get install redis-server)" >&2; exit 1; }
cargo build --release --locked -p redtail --bin redtail -p redtail-chaos --bin redtail-chaos
exec target/release/redtail-chaos --redtail target/release/redtail "$@"
