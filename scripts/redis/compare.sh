#!/usr/bin/env bash
# Measures Debian's redis-server without and with the fastio shim:
#
#   scripts/redis/compare.sh [N] [STRACE_N]      (defaults 2000000 and 200000)
#
# 1. redis-benchmark -c 50 -P P -n N -t set,get (requests/s), for each P in $PIPELINES
#    (default "1 16"; -P 1 runs N/10 requests), on: no shim, and the shim on uring with
#    SQPOLL, uring without, threads, and kmod when /dev/fastio exists. $RUNS rounds
#    (default 3), each running every flavor once, side by side; the median of the rounds
#    is printed with the min-max.
# 2. The same with -n STRACE_N under `strace -f` (slow, so fewer requests): write-family
#    syscalls (write, writev, sendmsg, sendto) per request, of the main thread and of the
#    whole process (the threads backend's workers are threads of redis-server), plus
#    io_uring_enter/ioctl (submissions and waits) and epoll_wait per request.
# Needs target/release/libfastio_redis_shim.so (make build), redis (scripts/redis/deps.sh)
# and strace for part 2 (skipped without it, or with STRACE_N 0). Port: $PORT or 7379.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
N=${1:-2000000}
SN=${2:-200000}
PORT=${PORT:-7379}
SO="$root/target/release/libfastio_redis_shim.so"
[ -f "$SO" ] || { echo "compare: $SO not built: make build" >&2; exit 2; }
"$root/scripts/redis/deps.sh"
tmp=$(mktemp -d)
trap 'redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT

flavors=(none "uring+sqpoll" uring threads)
[ -e /dev/fastio ] && flavors+=(kmod)

conf() {
  case $1 in
    uring+sqpoll) printf 'backend = "uring"\nsqpoll = true\n' ;;
    uring) printf 'backend = "uring"\nsqpoll = false\n' ;;
    threads) printf 'backend = "threads"\n' ;;
    kmod) printf 'backend = "kmod"\n' ;;
  esac > "$tmp/fastio.conf"
}

# start FLAVOR [PREFIX...]: redis-server in the background (with the shim unless none).
start() {
  local f=$1; shift
  local env=(env -u LD_PRELOAD)
  if [ "$f" != none ]; then
    conf "$f"
    env=(env LD_PRELOAD="$SO" FASTIO_CONF="$tmp/fastio.conf")
  fi
  "${env[@]}" "$@" redis-server --port "$PORT" --save "" --appendonly no \
    --daemonize no >"$tmp/redis.log" 2>&1 &
  for _ in $(seq 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && return; sleep 0.05; done
  echo "compare: redis-server did not start:" >&2; cat "$tmp/redis.log" >&2; exit 1
}

stop() {
  redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || true
  wait 2>/dev/null || true
}

rps() { # rps N P: "SET GET" requests/s
  redis-benchmark -p "$PORT" -c 50 -P "$2" -n "$1" -t set,get -q 2>/dev/null | tr '\r' '\n' |
    awk '/requests per second/ { sub(":", "", $1); r[$1] = $2 } END { print r["SET"], r["GET"] }'
}

RUNS=${RUNS:-3}
PIPELINES=${PIPELINES:-"1 16"}
echo "load average before: $(cat /proc/loadavg)"
for run in $(seq "$RUNS"); do
  for f in "${flavors[@]}"; do
    start "$f"
    for p in $PIPELINES; do
      n=$N
      [ "$p" = 1 ] && n=$((N / 10))
      read -r set get < <(rps "$n" "$p")
      echo "$f $p $set $get" >>"$tmp/rates"
    done
    stop
  done
done
echo "load average after: $(cat /proc/loadavg)"
for p in $PIPELINES; do
  n=$N
  [ "$p" = 1 ] && n=$((N / 10))
  echo
  echo "## redis-benchmark -c 50 -P $p -n $n -t set,get (requests/s, median of $RUNS [min-max])"
  echo
  echo "| shim backend | SET | GET |"
  echo "|---|---|---|"
  for f in "${flavors[@]}"; do
    python3 - "$tmp/rates" "$f" "$p" <<'PY'
import statistics, sys
path, flavor, p = sys.argv[1:]
rows = [l.split() for l in open(path) if l.split()[:2] == [flavor, p]]
def cell(i):
    v = [float(r[i]) for r in rows if len(r) > i]
    return "%.0f [%.0f-%.0f]" % (statistics.median(v), min(v), max(v)) if v else "-"
print("| %s | %s | %s |" % (flavor, cell(2), cell(3)))
PY
  done
done

[ "$SN" -gt 0 ] || exit 0
command -v strace >/dev/null || { echo; echo "(strace not installed: syscall counts skipped)"; exit 0; }
echo
echo "## syscalls per request under strace -f, -n $SN (SET+GET: $((2 * SN)) requests)"
echo
echo "| shim backend | write-family, main thread | write-family, all threads | io_uring_enter + ioctl | epoll_wait |"
echo "|---|---|---|---|---|"
for f in "${flavors[@]}"; do
  start "$f" strace -f -qq -o "$tmp/trace" -e trace=write,writev,sendmsg,sendto,io_uring_enter,ioctl,epoll_wait
  rps "$SN" 16 >/dev/null
  pid=$(redis-cli -p "$PORT" info server | tr -d '\r' | awk -F: '/^process_id/ { print $2 }')
  stop
  python3 - "$tmp/trace" "$pid" "$((2 * SN))" "$f" <<'PY'
import re, sys
path, main, reqs, name = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
w_main = w_all = enter = ep = 0
for line in open(path, errors="replace"):
    m = re.match(r"(\d+)\s+(\w+)\(", line)
    if not m:
        continue
    tid, call = m.groups()
    if call in ("write", "writev", "sendmsg", "sendto"):
        w_all += 1
        w_main += tid == main
    elif call in ("io_uring_enter", "ioctl"):
        enter += 1
    elif call == "epoll_wait":
        ep += 1
f = lambda n: f"{n / reqs:.4f}"
print(f"| {name} | {f(w_main)} | {f(w_all)} | {f(enter)} | {f(ep)} |")
PY
done
