#!/usr/bin/env bash
# Runs lbfleet's whole test suite: formatting, lints, unit, cluster, process and Docker tests.
# Builds what the tests need first (binaries, and the images without a registry: HAProxy, nginx,
# and the coordinator and agent images of the chaos tests' compose fleet) and installs wrk and
# chromium (Debian's packages, as root) when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "formatting"
cargo fmt --all -- --check

step "binaries used by the process tests"
cargo build --workspace --bins

step "images for the Docker tests"
if docker info >/dev/null 2>&1; then
  # The chaos tests run deploy/up.sh on the fleet's coordinator and agent images, made from
  # these debug binaries (up.sh reuses them instead of a release build).
  LBFLEET_BIN_DIR=$(cd "${CARGO_TARGET_DIR:-target}/debug" && pwd) docker/build-images.sh base haproxy node coordinator agent
elif [ -n "${CI:-}" ]; then
  echo "error: CI is set but no Docker engine answers; the Docker tests cannot run" >&2
  exit 1
else
  echo "no Docker engine: the Docker tests will say so and skip (they fail when CI is set)"
fi

# A Debian package a test needs: installed as root when missing; without it the test says so and
# skips, or fails when CI is set, so CI fails here first.
need_package() {
  local tool=$1 test=$2
  if command -v "$tool" >/dev/null; then
    echo "$tool: $(command -v "$tool")"
  elif [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$tool"
  elif [ -n "${CI:-}" ]; then
    echo "error: CI is set and $tool is missing; install it (Debian: apt-get install $tool)" >&2
    exit 1
  else
    echo "no $tool and not root: the $test test will say so and skip (it fails when CI is set)"
  fi
}

step "wrk for the reloads-under-load test"
need_package wrk wrk

step "chromium for the status page test"
need_package chromium "status page"

step "lints"
cargo clippy --workspace --all-targets -- -D warnings

step "tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
# One closing line for the whole suite (cargo prints one per test binary, doc tests last).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "\nsuite: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
