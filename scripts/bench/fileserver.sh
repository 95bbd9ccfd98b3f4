#!/usr/bin/env bash
# `scripts/bench/fileserver.sh [--quick]`: the static file server benchmark, in the VM
# (the module only loads there), one boot: SENDFILE vs READ + SEND on the kmod, uring
# and threads backends vs the epoll + sendfile(2) baseline, 1/2/5/10 wrk clients, a
# file set larger than the guest's memory (--mem 512M) on the scratch ext4 disk, the
# page cache dropped before every run; medians of 3 with min-max
# (scripts/bench/fileserver_guest.py). Writes bench/sections/30-fileserver.md (about 15
# minutes). --quick: a smoke test (3 servers, 1 and 5 clients, one 2 s run each, a
# smaller file set) that writes build/30-fileserver-quick.md instead.
set -euo pipefail
cd "$(dirname "$0")/../.."

quick=()
out=bench/sections/30-fileserver.md
if [ "${1:-}" = "--quick" ]; then
  quick=(--quick)
  out=build/30-fileserver-quick.md
fi
scripts/bench/deps.sh
[ -f kmod/fastio.ko ] || make kmod
cargo build --release -p fastio-examples --example fileserver
mkdir -p build
exec scripts/vm/run.sh --timeout 1500 --mem 512M --scratch-ext4 900 -- \
  python3 scripts/bench/fileserver_guest.py --out "$out" \
  --command "scripts/bench/fileserver.sh ${quick[*]}" "${quick[@]}"
