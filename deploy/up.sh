#!/usr/bin/env bash
# Brings up the local lbfleet deployment (deploy/docker-compose.yml) and binds a demo FQDN.
# Needs a Docker engine and docker-compose; no image registry (images are built locally).
set -euo pipefail
cd "$(dirname "$0")/.."

export LBFLEET_TLS_DIR=${LBFLEET_TLS_DIR:-$PWD/.lbfleet/tls}
export LBFLEET_PORT=${LBFLEET_PORT:-7400}
export LBFLEET_HTTP_PORT=${LBFLEET_HTTP_PORT:-8080}
export LBFLEET_ENDPOINTS=127.0.0.1:$LBFLEET_PORT
DEMO_FQDN=${LBFLEET_DEMO_FQDN:-demo.hosting.localhost}
compose=(docker-compose -p lbfleet -f deploy/docker-compose.yml)

step() { printf '\n==> %s\n' "$*"; }

step "building binaries and images (reused when current)"
cargo build --release --bin lbfleet --bin lbfleet-agent
LBFLEET_BIN_DIR=$PWD/target/release docker/build-images.sh base haproxy node coordinator agent
LBFLEET=target/release/lbfleet

step "certificates in $LBFLEET_TLS_DIR"
"$LBFLEET" pki init --dir "$LBFLEET_TLS_DIR" --coordinator 1 --agent lb-1 --admin operator

step "starting coordinator, agent, HAProxy and two nginx nodes"
"${compose[@]}" up -d
for _ in $(seq 1 150); do
  "$LBFLEET" status >/dev/null 2>&1 && break
  sleep 0.2
done
"$LBFLEET" status >/dev/null || { "${compose[@]}" logs coordinator; exit 1; }

step "topology: cluster demo, LB host lb-1, shard web-1 with two nodes"
# Re-running is fine: what exists already is reported and kept.
"$LBFLEET" cluster create demo || true
"$LBFLEET" host add lb-1 --cluster demo || true
"$LBFLEET" shard create web-1 --cluster demo || true
"$LBFLEET" node add web-1-node-0 --shard web-1 --host lb-1 --address web-1-node-0:80 --container web-1-node-0 || true
"$LBFLEET" node add web-1-node-1 --shard web-1 --host lb-1 --address web-1-node-1:80 --container web-1-node-1 || true

step "binding $DEMO_FQDN (waits until HAProxy serves it)"
"$LBFLEET" bind "$DEMO_FQDN" web-1 --wait --timeout 60

step "status"
"$LBFLEET" lb show --cluster demo
"$LBFLEET" status

cat <<EOT

Try:
  curl -i -H 'Host: $DEMO_FQDN' http://127.0.0.1:$LBFLEET_HTTP_PORT/
  LBFLEET_TLS_DIR=$LBFLEET_TLS_DIR $LBFLEET bind www.example.com web-1 --wait
  stats page: http://127.0.0.1:${LBFLEET_STATS_PORT:-8404}/stats
Stop with: docker-compose -p lbfleet -f deploy/docker-compose.yml down -v
EOT
