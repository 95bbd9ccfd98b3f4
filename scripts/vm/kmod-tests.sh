#!/usr/bin/env bash
# `make vm-test`: builds the kernel test programs on the host, boots the VM kernel with
# slub_debug, loads kmod/fastio.ko, runs the programs inside, unloads the module, and
# exits with the guest's status (a kernel WARNING/BUG/Oops in the log fails the run too:
# scripts/vm/run.sh checks the guest's kernel log).
#
# The test programs are the test binaries of the runtime (package fastio: the proactor and
# the async runtime `rt`), of the echo servers (package fastio-echo), of the Redis adaptor
# (package fastio-redis-shim) and of the examples (package fastio-examples: `http`) that
# cover the kmod backend; inside the guest they run with
# FASTIO_TEST_BACKENDS=kmod, so the backend-generic suites test only the module there (the
# host run covers io_uring and threads). The guest gets a fresh 128 MiB ext4 scratch disk
# at /mnt/scratch (FASTIO_SCRATCH) for tests that need uncached file I/O.
set -euo pipefail
cd "$(dirname "$0")/../.."

TESTS=(proactor proactor_multishot proactor_sysops proactor_sendfile kmod_hostile_sendfile rt rt_sysops wakeup_boundary kmod_abi kmod_lifetime kmod_contexts kmod_hostile kmod_hostile_ops kmod_hostile_pbuf rt_pbuf proactor_echo kmod_idle kmod_faults kmod_uncached kmod_creds kmod_inline kmod_helpers kmod_fuzz redis_cli redis_bench redis_faults redis_limits redis_stuck shim_probe shim_fds shim_signals shim_wait echo_preload http fileserver)
PACKAGES=(-p fastio -p fastio-echo -p fastio-redis-shim -p fastio-examples)
[ -f kmod/fastio.ko ] || { echo "vm-test: kmod/fastio.ko missing: make kmod" >&2; exit 2; }

mkdir -p build
list=build/vm-tests.list
# Compile errors are shown (the JSON stream carries them); cargo's own messages go to a log
# that is shown if the build fails.
if ! cargo test "${PACKAGES[@]}" --no-run --message-format=json 2>build/vm-tests.build.log |
  python3 -c '
import json, sys
want = set(sys.argv[1:])
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-message" and m["message"].get("level") == "error":
        sys.stderr.write(m["message"].get("rendered") or m["message"]["message"])
    if m.get("reason") == "compiler-artifact" and m.get("executable") \
            and m["target"]["name"] in want and "test" in m["target"]["kind"]:
        print(m["target"]["name"], m["executable"])
' "${TESTS[@]}" > "$list"; then
  echo "vm-test: building the test programs failed:" >&2; tail -n 40 build/vm-tests.build.log >&2
  exit 2
fi
if [ "$(wc -l < "$list")" -ne "${#TESTS[@]}" ]; then
  echo "vm-test: expected ${#TESTS[@]} test programs, found:" >&2; cat "$list" >&2; exit 2
fi
exec scripts/vm/run.sh --timeout "${FASTIO_VM_TEST_TIMEOUT:-1500}" --scratch-ext4 128 -- \
  scripts/vm/guest-kmod-tests.sh "$list"
