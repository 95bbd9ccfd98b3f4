#!/usr/bin/env bash
# Runs inside the VM (scripts/vm/kmod-tests.sh): load fastio.ko, run each test program
# of LIST ("name path" lines), check that the module unloads, print the tally.
set -u
list=$1
pass=0 fail=0
# A list that cannot be read (e.g. a host path the guest does not see) must not pass.
if [ ! -s "$list" ]; then
  echo "vm-test: test list $list is missing or empty (inside the VM)"
  exit 2
fi
failed=()

if ! insmod kmod/fastio.ko max_workers=8 max_contexts=64; then
  echo "vm-test: insmod kmod/fastio.ko failed"
  exit 1
fi
# Unprivileged users may open the device (a test drops to another uid).
chmod 666 /dev/fastio
# Many-connection tests keep thousands of descriptors: the guest's init starts with the
# kernel's default limit (1024, hard 4096); root may raise both.
ulimit -n 65536 || echo "vm-test: cannot raise RLIMIT_NOFILE (now $(ulimit -n))"
# The Redis adaptor's redis-benchmark runs: -n 20000 under TCG (the host runs 200000).
export FASTIO_REDIS_BENCH_N="${FASTIO_REDIS_BENCH_N:-20000}"
# The scratch ext4 disk (kmod-tests.sh passes --scratch-ext4) for uncached file I/O.
if [ -n "${FASTIO_SCRATCH:-}" ] && ! grep -q " $FASTIO_SCRATCH ext4 " /proc/mounts; then
  echo "vm-test: FASTIO_SCRATCH=$FASTIO_SCRATCH is not a mounted ext4 file system"
  exit 1
fi
while read -r name exe; do
  echo "=== $name"
  if FASTIO_TEST_BACKENDS=kmod timeout 600 "$exe" --test-threads=1 --nocapture; then
    pass=$((pass + 1))
  else
    fail=$((fail + 1)); failed+=("$name")
  fi
done < "$list"

# Every context is gone once its process is: the module must unload.
if timeout 30 rmmod fastio; then
  pass=$((pass + 1))
else
  fail=$((fail + 1)); failed+=("rmmod"); lsmod
fi
[ "${#failed[@]}" -eq 0 ] || echo "vm-test: failed: ${failed[*]}"
echo "vm-test: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
