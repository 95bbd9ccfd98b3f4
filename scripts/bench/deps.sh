#!/usr/bin/env bash
# Installs what `make bench` measures with, when missing: strace (syscalls per request on
# the serving thread) and Debian's redis (scripts/redis/deps.sh). Without them those
# cells would only be reported as "not run".
set -euo pipefail
cd "$(dirname "$0")/../.."

scripts/redis/deps.sh
command -v strace >/dev/null && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "bench deps: strace missing; as root: apt-get install -y strace" >&2
  exit 2
fi
echo "bench deps: installing strace"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends strace; then
  apt-get update
  apt-get install -y --no-install-recommends strace
fi
