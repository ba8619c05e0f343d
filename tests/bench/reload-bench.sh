#!/usr/bin/env bash
# Builds lbfleet, lbfleet-agent and the reload benchmark (release) and the HAProxy and node images
# (no registry), then runs the benchmark. Arguments go to reload_bench, e.g. `--json /tmp/reload.json`.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

docker/build-images.sh base haproxy node
cargo build --release --bin lbfleet -p lbfleet-coordinator
cargo build --release --bin lbfleet-agent -p lbfleet-agent
cargo build --release --bin reload_bench -p lbfleet-tests

target=${CARGO_TARGET_DIR:-$root/target}
exec "$target/release/reload_bench" --lbfleet-bin "$target/release/lbfleet" \
    --agent-bin "$target/release/lbfleet-agent" "$@"
