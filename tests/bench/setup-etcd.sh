#!/usr/bin/env bash
# Installs etcd 3.4 from Debian (package etcd-server) when `etcd` is not on PATH, and makes
# sure no system etcd is left running: the benchmark starts its own cluster on free ports.
set -euo pipefail

if ! command -v etcd >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "etcd is not installed and this script is not running as root: apt-get install etcd-server" >&2
        exit 1
    fi
    echo "installing etcd-server from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d keeps the package's post-install from starting a system etcd where it can.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        created_policy=1
    fi
    apt-get install -y -qq etcd-server >/dev/null
    if [ "$created_policy" = 1 ]; then
        rm -f "$policy"
    fi
fi

# A system etcd (started by the package, or left from before) would compete for CPU and disk.
if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    systemctl disable --now etcd >/dev/null 2>&1 || true
fi
if command -v service >/dev/null 2>&1; then
    service etcd stop >/dev/null 2>&1 || true
fi
# Only a daemon run as the package's etcd user, or with the package's default data dir, is stopped;
# etcd processes of another benchmark or test run on this machine are left alone.
for pid in $(pgrep -x etcd || true); do
    owner=$(ps -o user= -p "$pid" 2>/dev/null | tr -d ' ' || true)
    if [ "$owner" = etcd ] || tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- '/var/lib/etcd'; then
        echo "stopping system etcd (pid $pid)"
        kill "$pid" 2>/dev/null || true
    fi
done

# sed reads to the end: head would close the pipe early and fail the script under pipefail.
etcd --version | sed -n 1p
