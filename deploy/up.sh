#!/usr/bin/env bash
# Brings up the local lbfleet fleet (deploy/docker-compose.yml): a coordinator group of 3 nodes,
# 2 LB hosts (agent + HAProxy each) and 2 shards of 2 nginx nodes, then binds the demo FQDNs.
# Needs a Docker engine and docker-compose; no image registry (images are built locally).
# Re-running it is safe; deploy/down.sh removes the fleet.
#
# A second fleet (the chaos tests' own) runs next to this one with its own LBFLEET_PROJECT
# (compose project), LBFLEET_NAME_PREFIX (prepended to container names), LBFLEET_TLS_DIR and
# ports (LBFLEET_PORT_1..3, LBFLEET_PAGE_PORT_1..3, LBFLEET_HTTP_PORT_LB_1/2, LBFLEET_STATS_PORT_LB_1/2).
# LBFLEET_BIN_DIR takes lbfleet and lbfleet-agent from that directory (a debug build, say)
# instead of building them with `cargo build --release`; LBFLEET_TAG tags the images.
set -euo pipefail
cd "$(dirname "$0")/.."

export LBFLEET_TLS_DIR=${LBFLEET_TLS_DIR:-$PWD/.lbfleet/tls}
export LBFLEET_PORT_1=${LBFLEET_PORT_1:-7400} LBFLEET_PORT_2=${LBFLEET_PORT_2:-7401} LBFLEET_PORT_3=${LBFLEET_PORT_3:-7402}
export LBFLEET_PAGE_PORT_1=${LBFLEET_PAGE_PORT_1:-9100} LBFLEET_PAGE_PORT_2=${LBFLEET_PAGE_PORT_2:-9101} LBFLEET_PAGE_PORT_3=${LBFLEET_PAGE_PORT_3:-9102}
export LBFLEET_HTTP_PORT_LB_1=${LBFLEET_HTTP_PORT_LB_1:-8080} LBFLEET_HTTP_PORT_LB_2=${LBFLEET_HTTP_PORT_LB_2:-8081}
export LBFLEET_STATS_PORT_LB_1=${LBFLEET_STATS_PORT_LB_1:-8404} LBFLEET_STATS_PORT_LB_2=${LBFLEET_STATS_PORT_LB_2:-8405}
export LBFLEET_ENDPOINTS=127.0.0.1:$LBFLEET_PORT_1,127.0.0.1:$LBFLEET_PORT_2,127.0.0.1:$LBFLEET_PORT_3
DEMO_1=${LBFLEET_DEMO_FQDN:-demo.hosting.localhost}
DEMO_2=${LBFLEET_DEMO_FQDN_2:-demo-2.hosting.localhost}
export LBFLEET_PROJECT=${LBFLEET_PROJECT:-lbfleet} LBFLEET_NAME_PREFIX=${LBFLEET_NAME_PREFIX:-}
compose=(docker-compose -p "$LBFLEET_PROJECT" -f deploy/docker-compose.yml)

step() { printf '\n==> %s\n' "$*"; }

step "building binaries and images (reused when current)"
if [ -z "${LBFLEET_BIN_DIR:-}" ]; then
  cargo build --release --bin lbfleet --bin lbfleet-agent
  LBFLEET_BIN_DIR=${CARGO_TARGET_DIR:-$PWD/target}/release
fi
export LBFLEET_BIN_DIR
docker/build-images.sh base haproxy node coordinator agent
LBFLEET=$LBFLEET_BIN_DIR/lbfleet

step "certificates in $LBFLEET_TLS_DIR"
"$LBFLEET" pki init --dir "$LBFLEET_TLS_DIR" --coordinator 1 2 3 --agent lb-1 lb-2 --admin operator

step "starting 3 coordinators, 2 LB hosts (agent + HAProxy) and 4 nginx nodes"
"${compose[@]}" up -d
leader=""
for _ in $(seq 1 150); do
  leader=$("$LBFLEET" --timeout 2 status 2>/dev/null | sed -n 's/^leader: node \([0-9]*\).*/\1/p') || true
  [ -n "$leader" ] && break
  sleep 0.2
done
[ -n "$leader" ] || { "${compose[@]}" logs coordinator-1 coordinator-2 coordinator-3 | tail -60; exit 1; }

step "topology: cluster demo, LB hosts lb-1 and lb-2, shards web-1 and web-2 with two nodes each"
# Re-running is fine: what exists already is reported and kept.
"$LBFLEET" cluster create demo || true
for lb in 1 2; do
  "$LBFLEET" host add "lb-$lb" --cluster demo --haproxy-container "${LBFLEET_NAME_PREFIX}hosting-haproxy-lb-$lb" || true
done
for shard in 1 2; do
  "$LBFLEET" shard create "web-$shard" --cluster demo || true
  for node in 0 1; do
    name=web-$shard-node-$node
    "$LBFLEET" node add "$name" --shard "web-$shard" --host "lb-$shard" --address "$name:80" \
      --container "$LBFLEET_NAME_PREFIX$name" || true
  done
done

step "binding $DEMO_1 to web-1 and $DEMO_2 to web-2 (each waits until both LB hosts served it from its shard)"
"$LBFLEET" bind "$DEMO_1" web-1 --wait --verify --timeout 60
"$LBFLEET" bind "$DEMO_2" web-2 --wait --verify --timeout 60

step "waiting for the coordinators' and agents' healthchecks (their /readyz)"
daemons=(lbfleet-coordinator-1 lbfleet-coordinator-2 lbfleet-coordinator-3 lbfleet-agent-lb-1 lbfleet-agent-lb-2)
for _ in $(seq 1 60); do
  unhealthy=()
  for daemon in "${daemons[@]}"; do
    health=$(docker inspect -f '{{.State.Health.Status}}' "$LBFLEET_NAME_PREFIX$daemon" 2>/dev/null || echo missing)
    [ "$health" = healthy ] || unhealthy+=("$daemon: $health")
  done
  [ ${#unhealthy[@]} -eq 0 ] && break
  sleep 1
done
if [ ${#unhealthy[@]} -ne 0 ]; then
  printf 'not healthy after 60 s: %s\n' "${unhealthy[@]}" >&2
  exit 1
fi
echo "all ${#daemons[@]} healthy"

step "status"
"$LBFLEET" lb show --cluster demo
"$LBFLEET" status

cat <<EOT

Try:
  curl -i -H 'Host: $DEMO_1' http://127.0.0.1:$LBFLEET_HTTP_PORT_LB_1/     # through LB host lb-1
  curl -i -H 'Host: $DEMO_2' http://127.0.0.1:$LBFLEET_HTTP_PORT_LB_2/     # through LB host lb-2
  export LBFLEET_TLS_DIR=$LBFLEET_TLS_DIR LBFLEET_ENDPOINTS=$LBFLEET_ENDPOINTS
  $LBFLEET status
  $LBFLEET bind www.example.com web-2 --wait
  fleet status page: http://127.0.0.1:$LBFLEET_PAGE_PORT_1/ (any coordinator: :$LBFLEET_PAGE_PORT_2, :$LBFLEET_PAGE_PORT_3)
  metrics: http://127.0.0.1:$LBFLEET_PAGE_PORT_1/metrics
  $LBFLEET history
  stats pages: http://127.0.0.1:$LBFLEET_STATS_PORT_LB_1/stats http://127.0.0.1:$LBFLEET_STATS_PORT_LB_2/stats
Remove it with: deploy/down.sh
EOT
