#!/usr/bin/env bash
# Installs what `make bench` measures and draws with, when missing: strace (syscalls per
# request on the serving thread), Debian's python3-matplotlib (the plots in bench/plots/;
# it is installed for /usr/bin/python3, which bench.py switches to when `python3` lacks
# it), Debian's fio (the io_uring reference of the block I/O section, scripts/bench/blockio.py),
# wrk (the HTTP load client of scripts/bench/fileserver.sh) and Debian's redis
# (scripts/redis/deps.sh). Without them those cells are reported as "not run", or the
# plots as skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."

scripts/redis/deps.sh
missing=()
command -v strace >/dev/null || missing+=(strace)
command -v fio >/dev/null || missing+=(fio)
command -v wrk >/dev/null || missing+=(wrk)
if ! { [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; }; then
  missing+=(python3-matplotlib)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "bench deps: ${missing[*]} missing; as root: apt-get install -y ${missing[*]}" >&2
  exit 2
fi
echo "bench deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends "${missing[@]}"; then
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
fi
