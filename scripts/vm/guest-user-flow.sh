#!/usr/bin/env bash
# Runs inside the VM (`make vm-flow`): the README's flow, in its order, checked.
#   make config TARGET=echo; make reload; max_ker_worker in fastio.conf;
#   proactor_echo_server 12345; then echo_bench against it.
# Fails unless the server read the recorded fastio.conf, runs on kmod with exactly
# max_ker_worker lane threads, and every echoed byte matched. fastio.conf is restored.
set -euo pipefail
WORKERS=${FLOW_WORKERS:-2}
cp fastio.conf /tmp/fastio.conf.orig
restore() { cp /tmp/fastio.conf.orig fastio.conf; }
trap restore EXIT
fail() { echo "vm-flow: FAIL: $*"; exit 1; }

make config TARGET=echo
make reload
sed -i "s/^max_ker_worker *=.*/max_ker_worker = $WORKERS/" fastio.conf
grep -q "^max_ker_worker = $WORKERS\$" fastio.conf || fail "fastio.conf has no max_ker_worker line"

target/release/proactor_echo_server 12345 > /tmp/server.log 2>&1 &
srv=$!
for _ in $(seq 50); do grep -q listening /tmp/server.log && break; sleep 0.1; done
target/release/echo_bench -a 127.0.0.1:12345 -c 25 -t 3 -l 512 || fail "echo_bench failed"
# The lane threads are threads of the server process (fastio.ko v2).
workers=$(cat /proc/$srv/task/*/comm 2>/dev/null | grep -c "^fastio-lane-" || true)
kill -INT $srv
wait $srv || fail "the server did not exit cleanly"
cat /tmp/server.log
grep -q "config from $PWD/fastio.conf (recorded by make config)" /tmp/server.log ||
  fail "the server did not read the fastio.conf recorded by make config"
grep -q "backend kmod" /tmp/server.log || fail "the server is not on the kmod backend"
[ "$workers" -eq "$WORKERS" ] || fail "$workers lane threads, max_ker_worker = $WORKERS"
rmmod fastio
echo "vm-flow: PASS (recorded config read, kmod with $workers workers, all bytes echoed)"
