#!/usr/bin/env python3
"""Runs inside the VM (scripts/bench/fileserver.sh): the file server benchmark.

Creates a file set larger than the guest's page cache on the scratch ext4 disk, loads
fastio.ko, then for each server (fastio SENDFILE and READ+SEND on the kmod, uring and
threads backends, and the epoll + sendfile(2) baseline) and each client count runs wrk
against random files, with the page cache dropped before every run. Reports MB/s (what
wrk read, over its duration) and the idle CPU share (/proc/stat, whole guest, during
the run), the median of REPEATS runs with min-max, and writes the Markdown section.
"""

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import time

ROOT = "/mnt/scratch/files"
EXE = "target/release/examples/fileserver"


def sh(cmd):
    subprocess.run(cmd, shell=True, check=True)


def make_files(count, mib):
    os.makedirs(ROOT, exist_ok=True)
    for i in range(count):
        path = f"{ROOT}/f{i}"
        if not os.path.exists(path) or os.path.getsize(path) != mib << 20:
            # Distinct content per file (a counter in each MiB), written once.
            with open(path, "wb") as f:
                block = bytearray(os.urandom(1 << 20))
                for j in range(mib):
                    block[:8] = (i * 100000 + j).to_bytes(8, "little")
                    f.write(block)
    sh("sync")


def cpu_times():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return idle, sum(v[:8])


def wait_port(port, proc, limit=30):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start listening")


def run_wrk(port, clients, seconds, nfiles):
    script = f"/tmp/fs-{nfiles}.lua"
    with open(script, "w") as f:
        f.write(
            "math.randomseed(os.time())\n"
            f"request = function() return wrk.format('GET', '/f' .. math.random(0, {nfiles - 1})) end\n"
        )
    sh("sync; echo 3 > /proc/sys/vm/drop_caches")
    i0, t0 = cpu_times()
    out = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--timeout", "30s", "-s", script,
         f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=seconds + 60,
    ).stdout
    i1, t1 = cpu_times()
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+), ([\d.]+)(\w+) read", out)
    if not m:
        raise RuntimeError(f"wrk said: {out}")
    dur = float(m.group(2)) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(3)]
    size = float(m.group(4)) * {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[m.group(5)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw errors: {out}")
    idle = 100.0 * (i1 - i0) / max(1, t1 - t0)
    return size / dur / 1e6, idle, int(m.group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    quick = a.quick
    nfiles, mib = (32, 4) if quick else (160, 4)
    clients = [1, 5] if quick else [1, 2, 5, 10]
    repeats = 1 if quick else 3
    seconds = 2 if quick else 4
    servers = [
        ("kmod sendfile", ["--mode", "sendfile", "--backend", "kmod"]),
        ("kmod read+send", ["--mode", "read", "--backend", "kmod"]),
        ("uring sendfile", ["--mode", "sendfile", "--backend", "uring"]),
        ("uring read+send", ["--mode", "read", "--backend", "uring"]),
        ("threads sendfile", ["--mode", "sendfile", "--backend", "threads"]),
        ("threads read+send", ["--mode", "read", "--backend", "threads"]),
        ("epoll + sendfile(2)", ["--mode", "epoll"]),
    ]
    if quick:
        servers = [servers[0], servers[1], servers[6]]
    make_files(nfiles, mib)
    mem = open("/proc/meminfo").read()
    memtotal = int(re.search(r"MemTotal:\s+(\d+)", mem).group(1)) >> 10
    sh("insmod kmod/fastio.ko max_workers=8 max_contexts=64")
    results = {}
    port = 18080
    try:
        for name, args in servers:
            port += 1
            env = dict(os.environ, FASTIO_CONF="/dev/null")
            proc = subprocess.Popen(
                [EXE, "--root", ROOT, "--addr", f"127.0.0.1:{port}", "--workers", "1"] + args,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
            )
            try:
                wait_port(port, proc)
                for c in clients:
                    for r in range(repeats):
                        mbs, idle, reqs = run_wrk(port, c, seconds, nfiles)
                        results.setdefault((name, c), []).append((mbs, idle))
                        print(f"{name:22} c={c:2} run {r}: {mbs:8.1f} MB/s idle {idle:5.1f}% "
                              f"({reqs} requests)", flush=True)
            finally:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    finally:
        subprocess.run("rmmod fastio", shell=True)
    write(a, results, servers, clients, repeats, seconds, nfiles, mib, memtotal)


def cell(v):
    med = statistics.median(v)
    return f"{med:.1f} ({min(v):.1f}–{max(v):.1f})"


def write(a, results, servers, clients, repeats, seconds, nfiles, mib, memtotal):
    lines = [
        "## Static file server: SENDFILE vs READ + SEND vs epoll + sendfile(2)",
        "",
        f"Measured by `{a.command}` (one VM boot, QEMU TCG, 2 vCPUs, "
        f"{memtotal} MiB RAM).",
        "",
        f"{nfiles} files of {mib} MiB ({nfiles * mib} MiB: "
        f"{'more' if nfiles * mib > memtotal else 'less'} than the guest's memory) on "
        "the scratch ext4 disk; the page cache is dropped before every run, so the "
        "requests read the disk. `examples/fileserver.rs` with one worker; wrk (Debian, "
        f"one thread) for {seconds} s per run asking for random files over keep-alive "
        "connections. MB/s = bytes wrk read / duration; idle = idle + iowait share of "
        f"the whole guest's CPU time (/proc/stat) during the run. Median of {repeats} "
        "with min–max.",
        "",
    ]
    for metric, idx, unit in (("Throughput", 0, "MB/s"), ("Idle CPU", 1, "%")):
        lines += [f"### {metric} ({unit})", ""]
        lines.append("| server | " + " | ".join(f"{c} client(s)" for c in clients) + " |")
        lines.append("|---|" + "---|" * len(clients))
        for name, _ in servers:
            row = [cell([x[idx] for x in results.get((name, c), [])]) if results.get((name, c))
                   else "not run" for c in clients]
            lines.append(f"| {name} | " + " | ".join(row) + " |")
        lines.append("")
    lines += [
        "Reading the table: under TCG the disk and the copies are emulated, so absolute "
        "figures are far below real hardware; the ratios between rows of one column are "
        "what this measures. SENDFILE on kmod runs `do_splice_direct` on a helper "
        "thread (never on the polling lane); READ + SEND copies every byte into user space "
        "and back. The kmod and uring lanes poll for `idle_ms` after each request, which "
        "costs idle CPU that the epoll baseline does not spend.",
        "",
    ]
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    sys.exit(main())
