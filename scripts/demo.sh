#!/usr/bin/env bash
# The local demo: mongo-sim (no MongoDB needed), a redis-server, redtail and a
# writer; prints every message redis-oplog would receive. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -p redtail --bin redtail --example demo
exec target/release/examples/demo
