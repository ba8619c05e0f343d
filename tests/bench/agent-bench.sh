#!/usr/bin/env bash
# The agent benchmark, built and run by run-lb-bench.sh. Arguments go to agent_bench, e.g.
# `--json /tmp/agent.json`.
exec "$(dirname "$0")/run-lb-bench.sh" agent_bench "$@"
