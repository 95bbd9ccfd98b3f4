"""How each kind of cell is measured. Every function takes a Ctx and the cell's
parameters, and returns a dict of metrics for one run (or raises procs.BenchError)."""

import csv
import io
import os
import re
import socket
import subprocess
import time

import procfs
import procs
from pins import Pins

# default_main_worker_idle_time of every configuration (ms).
IDLE_MS = 20


class Ctx:
    """Where the binaries are, where logs and configs go, and the environment."""

    def __init__(self, repo, out_dir, env_name, tcg, pins=None):
        self.repo = repo
        # pins.Pins usable here (bench.py checks them against this machine's CPUs).
        self.pins = pins or Pins()
        self.bin = os.path.join(repo, "target", "release")
        self.out = out_dir
        self.env_name = env_name
        # Under TCG everything is ~10x slower: longer start and attach waits.
        self.slow = 5.0 if tcg else 1.0
        os.makedirs(os.path.join(out_dir, "conf"), exist_ok=True)

    def log(self, name):
        return os.path.join(self.out, f"{self.env_name}-{name}.log")

    def exe(self, name):
        return os.path.join(self.bin, name)


def server_config(name, pins=None):
    """fastio.conf keys of a proactor server name (uring, uring-sqpoll, threads[-wN],
    kmod-wN), or None for epoll; with pinned workers, affinity_offset is their first CPU."""
    if name == "epoll":
        return None
    # `-raw`: proactor_echo_server --raw (the completion loop instead of fastio::rt);
    # `-ms`: --multishot (multishot ACCEPT and RECV into a provided-buffer group).
    # `-inline` / `-poll`: kmod_inline = "always" / "never" (else the default, auto).
    m = re.fullmatch(
        r"(uring-sqpoll|uring|threads|kmod)(?:-w(\d+))?(-inline|-poll)?(?:-raw|-ms)?", name)
    if not m:
        raise ValueError(f"unknown server {name}")
    backend, workers = m.group(1), int(m.group(2) or 1)
    if m.group(3) and backend != "kmod":
        raise ValueError(f"{name}: -inline/-poll are kmod policies")
    keys = {"backend": "uring" if backend.startswith("uring") else backend,
            "max_ker_worker": workers, "max_usr_worker": 1,
            "default_main_worker_idle_time": IDLE_MS}
    if backend.startswith("uring"):
        keys["sqpoll"] = backend == "uring-sqpoll"
    if m.group(3):
        keys["kmod_inline"] = "always" if m.group(3) == "-inline" else "never"
    if pins is not None and pins.affinity_offset() is not None:
        keys["affinity_offset"] = pins.affinity_offset()
    return keys


def write_config(ctx, name, keys):
    path = os.path.join(ctx.out, "conf", f"{name}.conf")
    with open(path, "w", encoding="utf-8") as f:
        for k, v in keys.items():
            val = f'"{v}"' if isinstance(v, str) else str(v).lower()
            f.write(f"{k} = {val}\n")
    return path


def server_argv(ctx, name):
    keys = server_config(name, ctx.pins)
    if keys is None:
        return [ctx.exe("epoll_echo_server"), "{port}"]
    argv = [ctx.exe("proactor_echo_server"), "{port}", "--config", write_config(ctx, name, keys)]
    form = {"-raw": ["--raw"], "-ms": ["--multishot"]}
    return argv + next((f for suffix, f in form.items() if name.endswith(suffix)), [])


def pin_server(ctx, first=None):
    """The Server on_start hook that pins the serving threads (None when not pinned):
    first(srv) runs before, then every thread's CPUs go to the server's log."""
    if not ctx.pins.server:
        return None
    cpus = ctx.pins.server

    def pin(srv):
        if first is not None:
            first(srv)
        if procfs.pin_role(srv.pid, "serving", cpus) == 0:
            raise procs.BenchError(f"no serving thread of pid {srv.pid} to pin")
        srv.log.write(("pinned: " + ", ".join(
            f"{comm} {role} CPUs {cpu_list}" for comm, role, cpu_list in
            procfs.thread_cpus(srv.pid)) + "\n").encode())
        srv.log.flush()
    return pin


def redis_ping(srv):
    """One PING answered: with the shim preloaded, its first write has set up the rings
    and started the lane threads, from the unpinned main thread. (Started after the
    serving thread is pinned, they would count only its CPUs as available and the
    runtime's (affinity_offset + i) % CPUs would put them elsewhere.)"""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        sock.sendall(b"PING\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            data = sock.recv(64)
            if not data:
                break
            reply += data
    if not reply.startswith(b"+PONG"):
        raise procs.BenchError(f"redis-server answered PING with {reply!r}")


def echo_server(ctx, name):
    return procs.Server(server_argv(ctx, name), ctx.log(f"server-{name}"),
                        start_timeout=10 * ctx.slow, on_start=pin_server(ctx))


def echo_bench(ctx, port, conns, length, secs):
    """Runs echo_bench; returns req/s, responses and latency percentiles (us)."""
    argv = [ctx.exe("echo_bench"), "-a", f"127.0.0.1:{port}", "-c", str(conns), "-t", str(secs),
            "-l", str(length), "-q"]
    out = procs.run(argv, timeout=secs + 30 + conns * 0.02 * ctx.slow, log_path=ctx.log("client"),
                    cpus=ctx.pins.client)
    speed = re.search(r"^Speed: (\d+) request/sec", out, re.M)
    resp = re.search(r"^Responses: (\d+)", out, re.M)
    lat = re.search(r"^Latency: p50 ([\d.]+) us, p99 ([\d.]+) us, p99.9 ([\d.]+) us", out, re.M)
    if not (speed and resp and lat):
        raise procs.BenchError("echo_bench printed no Speed/Responses/Latency line")
    return {"rps": float(speed.group(1)), "responses": int(resp.group(1)),
            "p50_us": float(lat.group(1)), "p99_us": float(lat.group(2)),
            "p999_us": float(lat.group(3))}


def cost_metrics(d, responses):
    """CPU per 100k requests (total, then by role: the server's serving threads, its
    lane/worker/SQPOLL threads, its helper threads, the kworkers of the system) and the
    server's context switches per request, from a procfs.delta."""
    n = max(responses, 1)
    per100k = 100_000 / n
    out = {"cpu_s_per_100k": (d["process_cpu_s"] + d["kworkers_cpu_s"]) * per100k}
    for part in ("process", "serving", "lanes", "helpers", "kworkers", "system"):
        out[f"{part}_cpu_s_per_100k"] = d[f"{part}_cpu_s"] * per100k
    out["ctxsw_per_req"] = d["process_ctxsw"] / n
    return out


def echo_cell(ctx, server, conns, length, secs):
    """One echo_bench run against a fresh server, with the server's CPU around it."""
    with echo_server(ctx, server) as srv:
        before = procfs.snapshot(srv.pid)
        m = echo_bench(ctx, srv.port, conns, length, secs)
        after = procfs.snapshot(srv.pid)
        if not srv.alive():
            raise procs.BenchError(f"server died: {srv.log_tail()}")
    m.update(cost_metrics(procfs.delta(before, after), m["responses"]))
    return m


def parse_strace_summary(path):
    """(total calls, {syscall: calls}) of an `strace -c -U calls,name` summary."""
    calls, total = {}, None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit():
                if parts[1] == "total":
                    total = int(parts[0])
                else:
                    calls[parts[1]] = int(parts[0])
    if total is None:
        total = sum(calls.values())
    return total, calls


def attach_strace(ctx, tid, out_path):
    """strace -c on the one thread tid (no -f); returns the Popen once attached."""
    argv = ["strace", "-c", "-U", "calls,name", "-o", out_path, "-p", str(tid)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 5 * ctx.slow
    while not procfs.tracer_attached(tid):
        if proc.poll() is not None or time.monotonic() > deadline:
            procs.stop(proc, grace=2)
            raise procs.BenchError(f"strace could not attach to thread {tid}")
        time.sleep(0.05)
    return proc


def syscall_cell(ctx, server, conns, length, secs):
    """Syscalls per request on the serving thread: strace -c attached to that thread
    alone for one echo_bench run (connection setup included, a few dozen calls)."""
    out_path = os.path.join(ctx.out, f"{ctx.env_name}-strace-{server}.txt")
    with echo_server(ctx, server) as srv:
        echo_bench(ctx, srv.port, conns, length, 0.5 * ctx.slow)
        tid = procfs.serving_thread(srv.pid)
        if tid is None:
            raise procs.BenchError("no serving thread found")
        tracer = attach_strace(ctx, tid, out_path)
        try:
            m = echo_bench(ctx, srv.port, conns, length, secs)
        finally:
            procs.stop(tracer, grace=10)
    total, calls = parse_strace_summary(out_path)
    n = max(m["responses"], 1)
    top = sorted(calls.items(), key=lambda kv: -kv[1])[:4]
    return {"syscalls_per_req": total / n, "syscalls": total, "responses": m["responses"],
            "rps_traced": m["rps"],
            "top": ", ".join(f"{k} {v / n:.2f}" for k, v in top)}


def idle_cell(ctx, server, idle_secs, probe_idle, load_secs):
    """CPU of the server and its workers during idle_secs after load, and the latency of
    the first request after probe_idle seconds of idleness."""
    with echo_server(ctx, server) as srv:
        echo_bench(ctx, srv.port, 25, 512, load_secs)
        s0 = procfs.snapshot(srv.pid)
        time.sleep(1.0)
        s1 = procfs.snapshot(srv.pid)
        time.sleep(max(idle_secs - 1.0, 1.0))
        s2 = procfs.snapshot(srv.pid)
        argv = [ctx.exe("wake_probe"), "-a", f"127.0.0.1:{srv.port}", "--idle", str(probe_idle),
                "--count", "3"]
        probe = procs.result_line(procs.run(argv, timeout=3 * probe_idle + 60 * ctx.slow,
                                             log_path=ctx.log("wake_probe"),
                                             cpus=ctx.pins.client))
    whole, steady = procfs.delta(s0, s2), procfs.delta(s1, s2)
    return {"idle_cpu_ms": whole["process_cpu_s"] * 1000, "idle_window_s": whole["secs"],
            "steady_cpu_ms_per_s": steady["process_cpu_s"] * 1000 / max(steady["secs"], 1e-9),
            "kworkers_cpu_ms": whole["kworkers_cpu_s"] * 1000,
            "first_us": probe["first_us_median"], "first_us_max": probe["first_us_max"],
            "hot_us": probe["hot_us_median"]}


def nop_cell(ctx, backend, depth, secs):
    """nop_bench on backend (kmod, uring, uring-sqpoll, threads), one lane (pinned with
    the workers; the submitting thread is not pinned: nop_bench is client and server)."""
    conf = write_config(ctx, f"nop-{backend}", server_config(backend, ctx.pins))
    argv = [ctx.exe("nop_bench"), "--config", conf, "-d", str(depth), "-t", str(secs)]
    r = procs.result_line(procs.run(argv, timeout=secs + 30 * ctx.slow,
                                     log_path=ctx.log("nop_bench")))
    return {"ops_per_sec": r["ops_per_sec"], "p50_us": r["p50_us"], "p99_us": r["p99_us"],
            "p999_us": r["p999_us"]}


def redis_cell(ctx, variant, shim, pipeline, requests):
    """redis-benchmark -c 50 -P pipeline -t set,get against redis-server, plain or with
    the shim preloaded on a backend; returns SET and GET requests/s."""
    env = dict(os.environ)
    if variant != "plain":
        env["LD_PRELOAD"] = shim
        env["FASTIO_CONF"] = write_config(ctx, f"redis-{variant}",
                                          server_config(variant, ctx.pins))
    argv = ["redis-server", "--port", "{port}", "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--protected-mode", "no"]
    with procs.Server(argv, ctx.log(f"redis-{variant}"), env=env,
                      start_timeout=10 * ctx.slow,
                      on_start=pin_server(ctx, first=redis_ping)) as srv:
        bench = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(srv.port), "-c", "50",
                 "-P", str(pipeline), "-t", "set,get", "-n", str(requests), "--csv"]
        out = procs.run(bench, timeout=120 * ctx.slow, log_path=ctx.log("redis-benchmark"),
                        cpus=ctx.pins.client)
        if not srv.alive():
            raise procs.BenchError(f"redis-server died: {srv.log_tail()}")
    rps = {}
    for row in csv.reader(io.StringIO(out)):
        if len(row) >= 2 and row[0] in ("SET", "GET"):
            rps[row[0].lower() + "_rps"] = float(row[1])
    if len(rps) != 2:
        raise procs.BenchError("redis-benchmark printed no SET/GET rates")
    return rps
