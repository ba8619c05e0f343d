#!/usr/bin/env bash
# The reload benchmark, built and run by run-lb-bench.sh. Arguments go to reload_bench, e.g.
# `--json /tmp/reload.json`.
exec "$(dirname "$0")/run-lb-bench.sh" reload_bench "$@"
