#!/usr/bin/env bash
# Builds lbfleet and the bind benchmark (release), installs etcd 3.4 if needed, and runs the
# benchmark. Arguments go to bind_bench, e.g. `--concurrency 1,64 --json /tmp/bind.json`.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

# etcd-client compiles etcd's .proto files at build time and needs protoc for it.
if ! command -v protoc >/dev/null 2>&1; then
    echo "installing protobuf-compiler (protoc) for etcd-client's build"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq protobuf-compiler >/dev/null
fi
"$root/tests/bench/setup-etcd.sh"

cargo build --release --bin lbfleet -p lbfleet-coordinator
cargo build --release --bin bind_bench -p lbfleet-tests --features etcd

target=${CARGO_TARGET_DIR:-$root/target}
exec "$target/release/bind_bench" --lbfleet-bin "$target/release/lbfleet" "$@"
