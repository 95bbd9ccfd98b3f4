#!/usr/bin/env bash
# `make vm-soak`: builds the kmod_soak test program on the host, boots the VM kernel with
# slub_debug, and runs scripts/vm/guest-soak.sh there: the soak looped between insmod and
# rmmod of kmod/fastio.ko for FASTIO_SOAK_SECS seconds (default 60; SOAK_SECS=600 for
# the long run), rmmod and memory checked after every round, the kernel log checked by
# scripts/vm/run.sh. Exits with the guest's status.
set -euo pipefail
cd "$(dirname "$0")/../.."

secs=${FASTIO_SOAK_SECS:-60}
[[ "$secs" =~ ^[1-9][0-9]*$ ]] || { echo "vm-soak: FASTIO_SOAK_SECS wants whole seconds, got '$secs'" >&2; exit 2; }
# FASTIO_SOAK_KO: another module file (e.g. an older build) to soak instead.
ko=${FASTIO_SOAK_KO:-kmod/fastio.ko}
[ -f "$ko" ] || { echo "vm-soak: $ko missing: make kmod" >&2; exit 2; }

mkdir -p build
if ! exe=$(cargo test -p fastio --test kmod_soak --no-run --message-format=json 2>build/vm-soak.build.log |
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-message" and m["message"].get("level") == "error":
        sys.stderr.write(m["message"].get("rendered") or m["message"]["message"])
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "kmod_soak":
        print(m["executable"])
') || [ -z "$exe" ]; then
  echo "vm-soak: building kmod_soak failed:" >&2; tail -n 40 build/vm-soak.build.log >&2
  exit 2
fi
# The soak's knobs reach the guest (run.sh passes only what it is told).
envs=(--env FASTIO_SOAK_SECS="$secs")
for v in FASTIO_SOAK_ROUND_SECS FASTIO_SOAK_SEED FASTIO_SOAK_SKIP FASTIO_SOAK_VMALLOC_KIB FASTIO_SOAK_SLAB_KIB; do
  [ -z "${!v:-}" ] || envs+=(--env "$v=${!v}")
done
# Boot, rounds of insmod/soak/rmmod, memory settling: a few minutes on top of the soak.
exec scripts/vm/run.sh --timeout $((secs * 2 + 600)) --scratch-ext4 64 "${envs[@]}" -- \
  scripts/vm/guest-soak.sh "$exe" "$ko"
