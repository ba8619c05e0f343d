#!/usr/bin/env bash
# Builds lbfleet, lbfleet-agent and one benchmark binary of lbfleet-tests (release) and the
# HAProxy and node images (no registry), then runs that benchmark with the two daemons' paths.
# Usage: run-lb-bench.sh BENCH [ARGS...], e.g. `run-lb-bench.sh agent_bench --json /tmp/agent.json`.
set -euo pipefail

bench=${1:?usage: run-lb-bench.sh BENCH [ARGS...]}
shift
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

docker/build-images.sh base haproxy node
cargo build --release --bin lbfleet -p lbfleet-coordinator
cargo build --release --bin lbfleet-agent -p lbfleet-agent
cargo build --release --bin "$bench" -p lbfleet-tests

target=${CARGO_TARGET_DIR:-$root/target}
exec "$target/release/$bench" --lbfleet-bin "$target/release/lbfleet" \
    --agent-bin "$target/release/lbfleet-agent" "$@"
