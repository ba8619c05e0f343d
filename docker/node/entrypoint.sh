#!/bin/sh
# Renders nginx.conf with this node's shard, then runs the command (nginx by default).
set -eu

shard=${SHARD:-unknown}
# The value lands inside nginx.conf; only a shard name's characters may get there.
case "$shard" in
    "" | *[!A-Za-z0-9._-]*)
        echo "lbfleet-node: SHARD must match [A-Za-z0-9._-]+, got '$shard'" >&2
        exit 64
        ;;
esac
sed "s/@SHARD@/$shard/g" /usr/local/share/lbfleet/nginx.conf.template > /etc/nginx/nginx.conf

exec "$@"
