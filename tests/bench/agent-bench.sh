#!/usr/bin/env bash
# Builds lbfleet, lbfleet-agent and the agent benchmark (release) and the HAProxy and node images
# (no registry), then runs the benchmark. Arguments go to agent_bench, e.g. `--json /tmp/agent.json`.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

docker/build-images.sh base haproxy node
cargo build --release --bin lbfleet -p lbfleet-coordinator
cargo build --release --bin lbfleet-agent -p lbfleet-agent
cargo build --release --bin agent_bench -p lbfleet-tests

target=${CARGO_TARGET_DIR:-$root/target}
exec "$target/release/agent_bench" --lbfleet-bin "$target/release/lbfleet" \
    --agent-bin "$target/release/lbfleet-agent" "$@"
