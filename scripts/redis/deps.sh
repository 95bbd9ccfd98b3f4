#!/usr/bin/env bash
# Installs what the Redis adaptor's tests and `make run TARGET=redis` need: Debian's
# redis-server and redis-tools (redis-cli, redis-benchmark), when missing. Installing the
# package may start its own redis-server service (port 6379) when an init system is
# running; that instance is stopped and disabled so that it does not get in the way.
set -euo pipefail

need=()
command -v redis-server >/dev/null || need+=(redis-server)
{ command -v redis-cli >/dev/null && command -v redis-benchmark >/dev/null; } || need+=(redis-tools)
[ "${#need[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "redis deps: ${need[*]} missing; as root: apt-get install -y ${need[*]}" >&2
  exit 2
fi
echo "redis deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends "${need[@]}"; then
  apt-get update
  apt-get install -y --no-install-recommends "${need[@]}"
fi
# The package's service, if an init system started it.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  systemctl disable --now redis-server.service || true
elif [ -x /etc/init.d/redis-server ]; then
  /etc/init.d/redis-server stop || true
fi
