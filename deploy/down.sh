#!/usr/bin/env bash
# Removes the local fleet started by deploy/up.sh: its containers, network and volumes.
# The certificates in ${LBFLEET_TLS_DIR:-.lbfleet/tls} are kept for the next deploy/up.sh.
# Takes the same LBFLEET_PROJECT as deploy/up.sh (default lbfleet).
set -euo pipefail
cd "$(dirname "$0")/.."
docker-compose -p "${LBFLEET_PROJECT:-lbfleet}" -f deploy/docker-compose.yml down -v --remove-orphans
