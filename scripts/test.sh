#!/usr/bin/env bash
# The whole test suite, as CI runs it: set-up, formatting, lints, then every
# unit and integration test of the workspace (real redis-server, mongo-sim over TCP).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export MONGO_SIM_PYTHON="$PWD/target/pyenv/bin/python"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
scripts/validate-deploy.sh
# The chaos suite's fast subset drives the real binary.
cargo build --locked -p redtail --bin redtail
cargo test --workspace --locked
