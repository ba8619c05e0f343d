#!/usr/bin/env bash
# Removes the local fleet started by deploy/up.sh: its containers, network and volumes.
# The certificates in ${LBFLEET_TLS_DIR:-.lbfleet/tls} are kept for the next deploy/up.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
docker-compose -p lbfleet -f deploy/docker-compose.yml down -v --remove-orphans
