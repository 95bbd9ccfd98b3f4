#!/usr/bin/env bash
# Starts Debian's unmodified redis-server with the fastio shim preloaded:
#
#   scripts/redis/run.sh [PORT] [redis-server options...]     (default port 6379)
#
# The shim reads fastio.conf like every fastio binary ($FASTIO_CONF, else the path that
# `make config TARGET=redis` recorded, else the defaults) and prints the backend it runs
# on when redis-server starts. Persistence is off unless options say otherwise.
# The shim's own settings are the shim_* keys of that file (shim_socket_allowance,
# shim_max_queued, shim_close_linger_ms; see redis-shim/src/settings.rs).
# Environment: SHIM (the library, default target/release/libfastio_redis_shim.so),
# FASTIO_SHIM_SOCKET_ALLOWANCE and FASTIO_SHIM_MAX_QUEUED (override the file),
# FASTIO_SHIM_STATS (file for the shim's counters at exit).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
port=6379
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then port=$1; shift; fi
shim="${SHIM:-$root/target/release/libfastio_redis_shim.so}"
[ -f "$shim" ] || { echo "redis run: $shim not built: make build" >&2; exit 2; }
"$root/scripts/redis/deps.sh"
echo "redis run: redis-server on port $port with LD_PRELOAD=$shim"
exec env LD_PRELOAD="$shim" redis-server --port "$port" --save "" --appendonly no "$@"
