#!/usr/bin/env bash
# Runs inside the VM (scripts/vm/soak.sh, `make vm-soak`): the kmod_soak program looped
# between insmod and rmmod for FASTIO_SOAK_SECS seconds in all, in rounds of
# FASTIO_SOAK_ROUND_SECS (default 20). After every round rmmod must succeed, and
# VmallocUsed and Slab (/proc/meminfo, after dropping caches) must come back to their
# value before the first insmod, within FASTIO_SOAK_VMALLOC_KIB (default 1024) and
# FASTIO_SOAK_SLAB_KIB (default 2048). The kernel log is checked by scripts/vm/run.sh
# (any WARNING/BUG/Oops fails the run) and by the soak program itself.
#
# Usage: guest-soak.sh SOAK_EXE [KO]   (KO defaults to kmod/fastio.ko)
set -u
exe=$1
ko=${2:-kmod/fastio.ko}
total=${FASTIO_SOAK_SECS:-60}
round=${FASTIO_SOAK_ROUND_SECS:-20}
tol_vmalloc=${FASTIO_SOAK_VMALLOC_KIB:-1024}
tol_slab=${FASTIO_SOAK_SLAB_KIB:-2048}
((round > total)) && round=$total
rounds=$(((total + round - 1) / round))

meminfo() { awk -v k="$1:" '$1 == k { print $2 }' /proc/meminfo; }
# The slab caches that grew most since BEFORE (a /proc/slabinfo copy): active objects x
# object size, in KiB.
slab_growth() {
  [ -r /proc/slabinfo ] || return 0
  awk 'NR == FNR { if ($1 !~ /^(#|slabinfo)/) b[$1] = $2 * $4; next }
       $1 !~ /^(#|slabinfo)/ { d = $2 * $4 - b[$1]; if (d > 0) printf "%9.1f KiB  %s\n", d / 1024, $1 }' \
    "$1" /proc/slabinfo | sort -rn | head -n 8 | sed 's/^/vm-soak:   /'
}
settle() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# Some children drop to uid 65534 and open the device; a few thousand descriptors.
ulimit -n 65536 || true
settle
base_vmalloc=$(meminfo VmallocUsed)
base_slab=$(meminfo Slab)
base_unrecl=$(meminfo SUnreclaim)
slab0=$(mktemp)
cat /proc/slabinfo > "$slab0" 2>/dev/null
echo "vm-soak: $rounds round(s) of ${round} s; baseline VmallocUsed $base_vmalloc KiB, Slab $base_slab KiB (SUnreclaim $base_unrecl KiB)"

fail=0
for i in $(seq "$rounds"); do
  secs=$round
  left=$((total - (i - 1) * round))
  ((left < secs)) && secs=$left
  if ! insmod "$ko" max_workers=8 max_contexts=64; then
    echo "vm-soak: round $i: insmod $ko failed"; fail=1; break
  fi
  chmod 666 /dev/fastio
  echo "=== vm-soak round $i/$rounds: ${secs} s"
  if ! FASTIO_SOAK_SECS=$secs FASTIO_TEST_BACKENDS=kmod timeout $((secs + 240)) \
      "$exe" --exact soak --test-threads=1 --nocapture; then
    echo "vm-soak: round $i: the soak program failed"; fail=1
  fi
  if ! timeout 60 rmmod fastio; then
    echo "vm-soak: round $i: rmmod failed (refcnt $(cat /sys/module/fastio/refcnt 2>/dev/null))"
    lsmod; fail=1; break
  fi
  # Deferred frees (RCU, delayed fput, vfree) settle within seconds: wait for the
  # numbers to come back, at most 20 s.
  ok=0
  for _ in $(seq 20); do
    settle
    vm=$(meminfo VmallocUsed); slab=$(meminfo Slab)
    if ((vm <= base_vmalloc + tol_vmalloc && slab <= base_slab + tol_slab)); then ok=1; break; fi
    sleep 1
  done
  unrecl=$(meminfo SUnreclaim)
  echo "vm-soak: round $i: after rmmod VmallocUsed $vm KiB ($((vm - base_vmalloc)) KiB), Slab $slab KiB ($((slab - base_slab)) KiB; SUnreclaim $((unrecl - base_unrecl)) KiB)"
  if ((ok == 0)); then
    echo "vm-soak: round $i: memory did not come back (tolerance: VmallocUsed +$tol_vmalloc KiB, Slab +$tol_slab KiB)"
    fail=1; break
  fi
  ((fail)) && break
done
echo "vm-soak: slab caches grown most since the start:"
slab_growth "$slab0"
if ((fail)); then echo "vm-soak: FAILED"; else echo "vm-soak: passed ($rounds round(s), $total s)"; fi
exit "$fail"
