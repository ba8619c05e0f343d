#!/bin/sh
# Prepares the mounted directories, then runs HAProxy in master-worker mode as PID 1.
# Arguments starting with "-" are appended to haproxy's; anything else runs instead.
set -eu

cfg=/usr/local/etc/haproxy/haproxy.cfg
map=/var/lib/haproxy/maps/fqdn-to-shard.map
sockets=/var/run/haproxy

mkdir -p "$(dirname "$cfg")" "$(dirname "$map")" "$sockets"
# An empty bind-mounted config directory starts with the default config.
[ -e "$cfg" ] || cp /usr/local/share/lbfleet/haproxy.cfg "$cfg"
# HAProxy refuses to start when a map file named in the config is missing.
[ -e "$map" ] || : > "$map"

if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    exec "$@"
fi
exec haproxy -W -db -S "$sockets/master.sock,mode,600" -f "$cfg" "$@"
