#!/usr/bin/env bash
# Runs echo_bench against proactor_echo_server on each backend that works here, in both
# its forms (the async runtime, its default, and the raw completion loop, --raw), and
# against epoll_echo_server, one after the other in this one run, and prints the
# figures side by side: the median of ROUNDS runs (async and raw alternate) and the
# async/raw ratio. Every run must verify every echoed byte (echo_bench exits nonzero on
# any mismatch, which fails this script).
#
#   scripts/echo-compare.sh [-c CONNS] [-t SECONDS] [-l LENGTH] [-d DEPTH] [-r ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."

conns=50 secs=5 len=512 depth=1 rounds=1
while getopts "c:t:l:d:r:" opt; do
  case $opt in
    c) conns=$OPTARG ;; t) secs=$OPTARG ;; l) len=$OPTARG ;; d) depth=$OPTARG ;;
    r) rounds=$OPTARG ;;
    *) echo "usage: $0 [-c CONNS] [-t SECONDS] [-l LENGTH] [-d DEPTH] [-r ROUNDS]" >&2; exit 2 ;;
  esac
done

cargo build --release --workspace --quiet
bin=target/release
port=$((20000 + RANDOM % 20000))
work=$(mktemp -d)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

conf() { # name, then key = value lines
  local f="$work/$1.conf"; shift
  printf '%s\n' "$@" > "$f"; echo "$f"
}

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "server on port $port did not come up" >&2; return 1
}

rows=()
speed=
bench_one() { # label, server command... (sets $speed, $lat, $mism)
  local label=$1; shift
  "$@" > "$work/server.log" 2>&1 &
  server_pid=$!
  wait_port
  local out
  if ! out=$("$bin/echo_bench" -a "127.0.0.1:$port" -c "$conns" -t "$secs" -l "$len" -d "$depth" -q 2>&1); then
    echo "$out" >&2
    echo "echo_bench failed against $label (server log follows)" >&2
    cat "$work/server.log" >&2
    exit 1
  fi
  kill -INT "$server_pid"; wait "$server_pid" || true; server_pid=
  speed=$(sed -n 's/^Speed: \([0-9]*\) request\/sec.*/\1/p' <<<"$out")
  lat=$(grep -i '^latency' <<<"$out" | head -1 | sed 's/^[Ll]atency[^:]*: *//')
  mism=$(sed -n 's/^Mismatches: *\([0-9]*\).*/\1/p' <<<"$out")
  port=$((port + 1))
}

median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

row() { # label, requests/s, extra
  rows+=("$(printf '%-32s %12s  %s' "$1" "$2" "$3")")
}

run_one() { # label, server command...
  local label=$1; shift
  bench_one "$label" "$@"
  row "$label" "$speed" "mismatch ${mism:-0}  $lat"
}

# Both forms of proactor_echo_server on one backend, alternating, ROUNDS times each.
run_pair() { # label, config
  local label=$1 cfg=$2 a=() r=()
  for _ in $(seq "$rounds"); do
    bench_one "$label async" "$bin/proactor_echo_server" "$port" --config "$cfg"
    a+=("$speed")
    bench_one "$label raw" "$bin/proactor_echo_server" "$port" --config "$cfg" --raw
    r+=("$speed")
  done
  local ma mr
  ma=$(median "${a[@]}") mr=$(median "${r[@]}")
  row "proactor $label async" "$ma" "runs ${a[*]}"
  row "proactor $label raw" "$mr" "runs ${r[*]}"
  row "  async/raw" "$(awk -v a="$ma" -v r="$mr" 'BEGIN {printf "%.3f", a / r}')" ""
}

run_pair "uring+SQPOLL" "$(conf sq backend='"uring"' sqpoll=true)"
run_pair "uring" "$(conf u backend='"uring"' sqpoll=false)"
run_pair "threads x1" "$(conf t1 backend='"threads"' max_ker_worker=1)"
run_pair "threads x2" "$(conf t2 backend='"threads"' max_ker_worker=2)"
run_one "epoll" "$bin/epoll_echo_server" "$port"

echo
echo "echo_bench -c $conns -t $secs -l $len -d $depth, median of $rounds ($(nproc) CPUs, $(uname -r))"
printf '%-32s %12s  %s\n' "server" "requests/s" ""
printf '%s\n' "${rows[@]}"
