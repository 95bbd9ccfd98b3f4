#!/usr/bin/env bash
# Runs inside the VM: scripts/redis/latency.py on plain redis-server and on the shim over
# the kernel module (fastio.ko loaded here), so that the stuck-client figures of every
# backend exist. From the host:
#
#   make kmod build
#   scripts/vm/run.sh --timeout 1500 -- scripts/redis/guest-latency.sh [latency.py args]
#
# Default arguments: --runs 3 --requests 20000 --flavors none kmod (TCG is ~10x slower
# than the host; compare the ratios, not the absolute figures).
set -euo pipefail
cd "$(dirname "$0")/../.."
insmod kmod/fastio.ko
chmod 0666 /dev/fastio
trap 'rmmod fastio || echo "guest-latency: rmmod fastio failed"' EXIT
[ $# -gt 0 ] || set -- --runs 3 --requests 20000 --flavors none kmod
python3 scripts/redis/latency.py "$@"
