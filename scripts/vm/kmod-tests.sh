#!/usr/bin/env bash
# `make vm-test`: builds the kernel test programs on the host, boots the VM kernel with
# slub_debug, loads kmod/fastio.ko, runs the programs inside, unloads the module, and
# exits with the guest's status (a kernel WARNING/BUG/Oops in the log fails the run too:
# scripts/vm/run.sh checks the guest's kernel log).
#
# The test programs are the runtime's test binaries that cover the kmod backend; inside
# the guest they run with FASTIO_TEST_BACKENDS=kmod, so the backend-generic suites test
# only the module there (the host run covers io_uring and threads).
set -euo pipefail
cd "$(dirname "$0")/../.."

TESTS=(proactor wakeup_boundary kmod_abi kmod_lifetime)
[ -f kmod/fastio.ko ] || { echo "vm-test: kmod/fastio.ko missing: make kmod" >&2; exit 2; }

mkdir -p build
list=build/vm-tests.list
cargo test -p fastio --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, sys
want = set(sys.argv[1:])
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") \
            and m["target"]["name"] in want and "test" in m["target"]["kind"]:
        print(m["target"]["name"], m["executable"])
' "${TESTS[@]}" > "$list"
if [ "$(wc -l < "$list")" -ne "${#TESTS[@]}" ]; then
  echo "vm-test: expected ${#TESTS[@]} test programs, found:" >&2; cat "$list" >&2; exit 2
fi
exec scripts/vm/run.sh --timeout "${FASTIO_VM_TEST_TIMEOUT:-1500}" -- \
  scripts/vm/guest-kmod-tests.sh "$list"
