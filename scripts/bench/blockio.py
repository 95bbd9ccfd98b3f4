#!/usr/bin/env python3
"""Block I/O benchmark: 4 KiB random O_DIRECT reads and writes at depth 1 and 32 on the
VM's scratch ext4 disk, fio (Debian, io_uring engine) against blockio_bench on every
fastio backend, in one VM boot. Writes bench/sections/40-blockio.md whole.

  blockio.py run [--quick]        build, boot the bench kernel with a scratch disk, measure,
                                  write the section (--quick: a smoke test; its section goes
                                  to the run directory, not to bench/sections/)
  blockio.py guest --out DIR ...  the VM part (run inside the VM by `run`)
  blockio.py section RESULTS [--to FILE]   write the section from a results.json again

Full: 3 repetitions, interleaved (every cell once per round), 5 s per run after a 1 s
warm-up; the cells' medians with min-max. Serialize with other heavy jobs:
  flock /tmp/fastio-heavy.lock scripts/bench/blockio.py run
"""

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the tree (the guest shares it)

# pylint: disable=wrong-import-position
import bench  # noqa: E402
import cells  # noqa: E402
import procs  # noqa: E402
import report  # noqa: E402

REPO = bench.REPO
SECTION = os.path.join(REPO, "bench", "sections", "40-blockio.md")
COMMAND = "flock /tmp/fastio-heavy.lock scripts/bench/blockio.py run"
# What each mode measures: repetitions, seconds per run, warm-up, file size (MiB), the
# scratch disk (MiB) and the VM's overall limit (boot included).
MODES = {
    "full": {"reps": 3, "secs": 5, "warmup": 1, "size_mib": 256, "disk_mib": 512,
             "timeout": 1200},
    "quick": {"reps": 1, "secs": 1, "warmup": 0.5, "size_mib": 32, "disk_mib": 128,
              "timeout": 420},
}
RWS = ("randread", "randwrite")
DEPTHS = (1, 32)
# The engines, reference first: fio on io_uring, then blockio_bench on each backend.
# kmod-h16: the module with 16 helper threads (wq_max_active) instead of the default 2.
ENGINES = ("fio", "kmod", "kmod-h16", "uring", "uring-sqpoll", "threads")
TITLES = {"fio": "fio (io_uring)", "kmod": "fastio kmod (2 helpers)",
          "kmod-h16": "fastio kmod (16 helpers)", "uring": "fastio uring",
          "uring-sqpoll": "fastio uring+SQPOLL", "threads": "fastio threads"}
METRICS = ("iops", "p50_us", "p99_us", "p999_us", "cpu_us_per_op")
# blockio_bench only: CPU µs per operation of the lane (polling) and helper threads.
THREAD_METRICS = ("lanes_us_per_op", "helpers_us_per_op")
DERIVED_FRAGMENT = os.path.join(REPO, "target", "bench", "kernel-bench-sysvipc.config")


def log(msg):
    print(f"[blockio] {msg}", flush=True)


# ---- guest ---------------------------------------------------------------------------


def engine_config(ctx, engine):
    """The fastio.conf of a blockio_bench engine (one lane, as the echo cells)."""
    keys = cells.server_config("kmod" if engine == "kmod-h16" else engine)
    if engine == "kmod-h16":
        keys["wq_max_active"] = 16
    return cells.write_config(ctx, f"blockio-{engine}", keys)


def fio_argv(path, size, rw, depth, secs, warmup):
    """fio with the io_uring engine, the reference: the same file, block size, pattern
    (uniform random, blocks may repeat) and depth; latency is submission to completion."""
    return ["fio", "--name=blockio", f"--filename={path}", f"--size={size}",
            "--ioengine=io_uring", "--direct=1", "--bs=4k", f"--iodepth={depth}",
            f"--rw={rw}", "--norandommap", "--time_based", f"--runtime={secs}",
            f"--ramp_time={int(warmup * 1000)}ms", "--lat_percentiles=1",
            "--output-format=json"]


def parse_fio(out, rw):
    """The metrics of fio's JSON output (the text may start with warnings)."""
    try:
        job = json.loads(out[out.index("{"):])["jobs"][0]
    except (ValueError, KeyError, IndexError) as e:
        raise procs.BenchError(f"fio output not understood: {e}") from e
    side = job["read" if rw == "randread" else "write"]
    pct = side["lat_ns"]["percentile"]
    secs = job["job_runtime"] / 1000
    cpu_s = (job["usr_cpu"] + job["sys_cpu"]) / 100 * secs
    if side["total_ios"] <= 0 or side["iops"] <= 0:
        raise procs.BenchError(f"fio did no {rw} I/O")
    return {"iops": side["iops"], "p50_us": pct["50.000000"] / 1000,
            "p99_us": pct["99.000000"] / 1000, "p999_us": pct["99.900000"] / 1000,
            "cpu_us_per_op": cpu_s * 1e6 / side["total_ios"]}


def measure(ctx, m, path, engine, rw, depth):
    """One run of engine; its metrics (raises procs.BenchError)."""
    timeout = m["secs"] + m["warmup"] + 30 * ctx.slow
    if engine == "fio":
        argv = fio_argv(path, os.path.getsize(path), rw, depth, m["secs"], m["warmup"])
        return parse_fio(procs.run(argv, timeout, ctx.log("fio")), rw)
    argv = [ctx.exe("blockio_bench"), "--config", engine_config(ctx, engine), "-f", path,
            "--rw", rw, "-d", str(depth), "-t", str(m["secs"]), "--warmup", str(m["warmup"])]
    r = procs.result_line(procs.run(argv, timeout, ctx.log(f"blockio-{engine}")))
    try:
        out = {k: r[k] for k in METRICS}
        ops = max(r["ops"], 1)
        out.update(lanes_us_per_op=r["lanes_cpu_s"] * 1e6 / ops,
                   helpers_us_per_op=r["helpers_cpu_s"] * 1e6 / ops)
    except KeyError as e:
        raise procs.BenchError(f"blockio_bench's RESULT line lacks {e}") from e
    return out


def verify(ctx, path, engine):
    """Verifying random writes then reads on engine (bounded: 400 of each): None, or why
    it failed. Leaves the file fully patterned again where it wrote."""
    conf = engine_config(ctx, engine)
    base = [ctx.exe("blockio_bench"), "--config", conf, "-f", path, "-d", "8", "-t", "60",
            "--warmup", "0", "--max-ops", "400", "--verify"]
    try:
        procs.run(base + ["--rw", "randwrite", "--tag", str(ENGINES.index(engine))],
                  120 * ctx.slow, ctx.log(f"verify-{engine}"))
        r = procs.result_line(procs.run(base + ["--rw", "randread", "--seed", "9"],
                                        120 * ctx.slow, ctx.log(f"verify-{engine}")))
    except procs.BenchError as e:
        return str(e)
    return None if r["verified"] == r["ops"] > 0 else f"{r['verified']} of {r['ops']} checked"


def guest(args):
    """Inside the VM: loads the module, lays out the file, verifies each backend, then the
    cells round by round; results.json in args.out after every run."""
    m = MODES["quick" if args.quick else "full"]
    ctx = cells.Ctx(REPO, args.out, "vm", tcg=True)
    scratch = os.environ.get("FASTIO_SCRATCH")
    if not scratch:
        log("no scratch disk (FASTIO_SCRATCH unset): run.sh --scratch-ext4 is needed")
        return 2
    kmod_reason = args.kmod_reason or bench.load_module()
    path = os.path.join(scratch, "blockio.dat")
    res = {"env": bench.env_info("vm"), "mode": "quick" if args.quick else "full",
           "params": m, "load_start": bench.loadavg(), "runs": [], "skipped": {}}
    out_path = os.path.join(args.out, "results.json")

    def save():
        with open(out_path, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=1)

    try:
        t = time.monotonic()
        procs.run([ctx.exe("blockio_bench"), "--rw", "layout", "-f", path,
                   "--size-mib", str(m["size_mib"])], 600, ctx.log("layout"))
        log(f"laid out {path} ({m['size_mib']} MiB) in {time.monotonic() - t:.1f} s")
        engines = list(ENGINES)
        for e in ENGINES:
            why = kmod_reason if e.startswith("kmod") else None
            if e != "fio":
                why = why or verify(ctx, path, e)
            if why:
                res["skipped"][e] = why
                engines.remove(e)
                log(f"{e}: not measured: {why}")
        save()
        for rep in range(m["reps"]):
            for rw in RWS:
                for depth in DEPTHS:
                    for e in engines:
                        rec = {"engine": e, "rw": rw, "depth": depth, "rep": rep}
                        try:
                            rec.update(measure(ctx, m, path, e, rw, depth))
                        except procs.BenchError as err:
                            rec["error"] = str(err)
                        log(f"round {rep + 1}/{m['reps']} {rw} d{depth} {e}: "
                            + (f"{rec['iops']:.0f} IOPS, p99 {rec['p99_us']:.0f} us"
                               if "iops" in rec else rec["error"]))
                        res["runs"].append(rec)
                        save()
    finally:
        res["load_end"] = bench.loadavg()
        save()
        if kmod_reason is None and bench.sh(["rmmod", "fastio"], timeout=60) != 0:
            log("rmmod fastio failed")
    return 0


# ---- the section ------------------------------------------------------------------------


def cell_stats(res):
    """{(rw, depth, engine): {metric: {median, min, max}}, "n", "errors"}."""
    out = {}
    for r in res["runs"]:
        c = out.setdefault((r["rw"], r["depth"], r["engine"]), {"ok": [], "errors": []})
        (c["errors"] if "error" in r else c["ok"]).append(r)
    for c in out.values():
        for k in METRICS + THREAD_METRICS:
            vals = [r[k] for r in c["ok"] if k in r]
            if vals:
                c[k] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    return out


def spread(s, fmt="{:.0f}"):
    """`median (min–max)` of a stat, or a dash."""
    if not s:
        return "—"
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}–{fmt.format(s['max'])})"


def threads_cpu(c):
    """`lanes / helpers` CPU µs per operation (medians), or a dash (fio)."""
    if "lanes_us_per_op" not in c:
        return "—"
    return f"{med(c, 'lanes_us_per_op'):.1f} / {med(c, 'helpers_us_per_op'):.1f}"


def med(c, k):
    return c[k]["median"] if c and k in c else None


def losses(stats):
    """Sentences on where fastio is below fio, with the mechanism behind each."""
    why = {
        "kmod": "the module sends every O_DIRECT READ/WRITE to the context's helper "
                "threads (a lane thread never waits for a device), and there are 2 of "
                "them by default: at most 2 transfers are at the device at a time, and each "
                "pays a hand-off to a helper and a wake-up (with `kmod_inline` the lane's "
                "share runs in the submitting thread's ENTER, so the lane thread itself "
                "costs almost nothing: lanes µs/op)",
        "kmod-h16": "with 16 helpers the depth reaches the device, but every transfer is "
                    "still a synchronous read/write on a helper thread plus two hand-offs "
                    "(submitter → helper → CQ) with a wake-up each, where io_uring issues "
                    "it asynchronously from the submitting call (a queued job wakes one "
                    "helper: they wait exclusively)",
        "threads": "the threads backend reads and writes regular files inline on its one "
                   "worker thread with pread/pwrite, so its effective depth is 1 whatever "
                   "the queue depth",
        "uring": "the same io_uring as fio plus the proactor's bookkeeping (owned buffers, "
                 "in-flight table, one wait per reaping round)",
        "uring-sqpoll": "the SQPOLL kernel thread takes one of the 2 vCPUs and spins: under "
                        "TCG it competes with the submitting thread",
    }
    out = []
    for e in ENGINES[1:]:
        below = []
        for rw in RWS:
            for d in DEPTHS:
                a, b = med(stats.get((rw, d, e)), "iops"), med(stats.get((rw, d, "fio")), "iops")
                if a is not None and b and a < 0.9 * b:
                    below.append(f"{rw} depth {d} ({a / b:.2f}x)")
        if below:
            out.append(f"- **{TITLES[e]}** is below fio in {', '.join(below)}: {why[e]}.")
    if not out:
        out = ["- No backend is more than 10 % below fio in IOPS in this run."]
    above = [f"{TITLES[e]} in {rw} depth {d} ({a / b:.2f}x)"
             for rw in RWS for d in DEPTHS for e in ENGINES[1:]
             for a, b in [(med(stats.get((rw, d, e)), "iops"),
                           med(stats.get((rw, d, "fio")), "iops"))]
             if a is not None and b and a > 1.1 * b]
    if above:
        busy = []
        for rw in RWS:
            for d in DEPTHS:
                f = stats.get((rw, d, "fio"))
                if med(f, "iops") and med(f, "cpu_us_per_op") is not None:
                    busy.append(f"{med(f, 'iops') * med(f, 'cpu_us_per_op') / 1e6:.2f} "
                                f"in {rw} depth {d}")
        out.append("- Above fio: " + ", ".join(above) + ". fio does more per transfer than "
                   "blockio_bench (it timestamps and accounts every I/O for its slat, clat "
                   "and lat statistics, and under TCG every clock read is emulated): compare "
                   "their CPU µs/op. fio's own CPU seconds per second of run (1.00 = one "
                   "vCPU busy): " + ", ".join(busy) + ".")
    return out


def kernel_note(config):
    """The kernel config fragment of a run, said in words when it was derived."""
    if config is None or config == os.path.relpath(DERIVED_FRAGMENT, REPO):
        return ("kmod/kernel-bench.config + CONFIG_SYSVIPC=y, derived by the script: fio's "
                "job table is System V shared memory")
    return config


def section(res, command=COMMAND):
    """The Markdown of the section from a results object."""
    stats = cell_stats(res)
    env, m = res.get("env") or {}, res["params"]
    lines = ["## Block I/O: 4 KiB random O_DIRECT reads and writes", "",
             f"Written by `{command}` (scripts/bench/blockio.py) — re-run it to "
             "re-measure; do not edit by hand.", ""]
    if res.get("mode") == "quick":
        lines += ["**Quick mode (smoke test): one short run per cell, not for comparison.**", ""]
    lines += [
        f"- Environment: {env.get('vm', 'VM')}, kernel {env.get('kernel', '?')} "
        f"(config {kernel_note(res.get('kernel_config'))}), CPU {env.get('cpu', '?')}, clocksource "
        f"{env.get('clocksource', '?')}; one VM boot for every figure below.",
        f"- Disk: the VM's scratch ext4 disk (scripts/vm/run.sh --scratch-ext4 "
        f"{m['disk_mib']}: a raw image file on the host, virtio-blk), one {m['size_mib']} MiB "
        "file written fully first; every transfer 4 KiB at a uniformly random 4 KiB-aligned "
        "offset (blocks may repeat), O_DIRECT.",
        f"- Each run {m['secs']} s after a {m['warmup']} s warm-up; {m['reps']} round(s), "
        "interleaved (each round runs every cell once); medians with min–max over the "
        "rounds. Ratios are medians over fio's median, measured side by side.",
        "- fio 3.33 (Debian): `--ioengine=io_uring --direct=1 --bs=4k --iodepth=N "
        "--rw=randread|randwrite --norandommap --time_based --lat_percentiles=1`; latency "
        "is fio's lat (submission to completion). blockio_bench (bench/src/bin): OPENAT "
        "with O_DIRECT through the proactor, `depth` READs/WRITEs in flight, latency from "
        "queueing to the completion reaped; one lane (max_ker_worker = 1), as the echo cells.",
        "- CPU µs/op: CPU time of the whole process (all its threads: lanes, helpers, "
        "SQPOLL, io-wq) over the operations; for fio its usr+sys. lanes / helpers: the part "
        "of it spent by the polling threads (kmod lanes, threads workers, SQPOLL) and by "
        "the blocking-work threads (kmod helpers, io-wq workers), from /proc/self/task.",
        f"- Load average in the guest: {res.get('load_start', '?')} at the start, "
        f"{res.get('load_end', '?')} at the end; on the host (2 cores shared with other "
        f"builds): {res.get('host_load_start', '?')} before the VM, "
        f"{res.get('host_load_end', '?')} after.", ""]
    header = ["rw", "depth", "engine", "IOPS", "p99 µs", "p50 µs", "CPU µs/op",
              "lanes / helpers µs/op", "IOPS / fio", "p99 / fio"]
    rows = []
    for rw in RWS:
        for d in DEPTHS:
            ref = stats.get((rw, d, "fio"))
            for e in ENGINES:
                c = stats.get((rw, d, e))
                if c is None:
                    continue
                errs = f" ({len(c['errors'])} failed)" if c["errors"] else ""
                rows.append([rw, d, TITLES[e] + errs, spread(c.get("iops")),
                             spread(c.get("p99_us")), spread(c.get("p50_us")),
                             spread(c.get("cpu_us_per_op"), "{:.1f}"), threads_cpu(c),
                             "—" if e == "fio" else report.ratio(med(c, "iops"), med(ref, "iops")),
                             "—" if e == "fio" else report.ratio(med(c, "p99_us"),
                                                                 med(ref, "p99_us"))])
    lines += report.table(header, rows) + [""]
    problems = [f"- {TITLES[e]}: not measured: {why}" for e, why in res.get("skipped", {}).items()]
    problems += [f"- {r['rw']} depth {r['depth']} {TITLES[r['engine']]} round {r['rep'] + 1}: "
                 f"{r['error']}" for r in res["runs"] if "error" in r]
    if problems:
        lines += ["Not measured or failed (never omitted):", ""] + problems + [""]
    lines += ["Before measuring, each backend wrote 400 random blocks and read 400 back with "
              "`--verify` (every block read checked byte for byte); a backend that failed is "
              "listed above instead of measured.", "",
              "### Where fastio loses, and why", ""]
    lines += losses(stats)
    lines += ["", "Under QEMU TCG every instruction is emulated and the virtio disk is a file "
              "on the host, so the absolute IOPS say little about real hardware; the ratios "
              "to fio in the same boot are the figures to read.", ""]
    return "\n".join(lines)


def write_section(res, path, command=COMMAND):
    with open(path, "w", encoding="utf-8") as f:
        f.write(section(res, command).rstrip() + "\n")


# ---- host ----------------------------------------------------------------------------


def kernel_fragment(base=bench.BENCH_KERNEL_CONFIG, derived=DERIVED_FRAGMENT):
    """The kernel config fragment of the VM: $FASTIO_KERNEL_CONFIG if set, else the bench
    kernel's (kmod/kernel-bench.config) when it has System V IPC, else that fragment plus
    CONFIG_SYSVIPC=y, written to target/bench/ (fio keeps its job table in System V shared
    memory: without shmget it stops with "failed to setup shm segment"). The derived
    fragment is another cached kernel build (scripts/kernel/build.sh keys builds by the
    fragment's sha256), built once."""
    if os.environ.get("FASTIO_KERNEL_CONFIG"):
        return os.environ["FASTIO_KERNEL_CONFIG"]
    with open(base, encoding="utf-8") as f:
        text = f.read()
    if re.search(r"^CONFIG_SYSVIPC=y$", text, re.M):
        return base
    text = text.rstrip() + ("\n\n# scripts/bench/blockio.py: fio's job table is System V "
                            "shared memory (shmget)\nCONFIG_SYSVIPC=y\n")
    os.makedirs(os.path.dirname(derived), exist_ok=True)
    old = None
    if os.path.exists(derived):
        with open(derived, encoding="utf-8") as f:
            old = f.read()
    if old != text:  # rewritten only when it changes (no needless rebuild)
        with open(derived, "w", encoding="utf-8") as f:
            f.write(text)
    return derived


def run(args):
    mode = "quick" if args.quick else "full"
    m = MODES[mode]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = os.path.join(REPO, "target", "bench", f"blockio-{stamp}")
    os.makedirs(out, exist_ok=True)
    if bench.sh([os.path.join(REPO, "scripts", "bench", "deps.sh")], timeout=900) != 0 \
            or subprocess.run(["sh", "-c", "command -v fio"], capture_output=True,
                              check=False).returncode != 0:
        log("fio is missing (scripts/bench/deps.sh as root installs it)")
        return 2
    log("cargo build --release -p fastio-bench")
    if bench.sh(["cargo", "build", "--release", "-p", "fastio-bench"], timeout=1800) != 0:
        log("cargo build failed")
        return 1
    frag = kernel_fragment()
    os.environ["FASTIO_KERNEL_CONFIG"] = frag
    log(f"VM kernel config: {os.path.relpath(frag, REPO)}")
    kmod_reason = bench.build_kmod()
    host_load_start = bench.loadavg()
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    cmd = [python, os.path.abspath(__file__), "guest", "--out", out]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--kmod-reason", kmod_reason] if kmod_reason else []
    # slub_debug=- undoes run.sh's slub_debug=FZPU (allocator debugging is for tests).
    argv = [os.path.join(REPO, "scripts", "vm", "run.sh"), "--timeout", str(m["timeout"]),
            "--scratch-ext4", str(m["disk_mib"]), "--mem", "2G",
            "--log-dir", os.path.join(out, "vm-logs"), "--append", "slub_debug=-", "--"] + cmd
    log(f"booting the VM ({mode}; limit {m['timeout']} s); logs in {out}")
    rc = bench.sh(argv, timeout=m["timeout"] + 120)
    log(f"VM finished with status {rc}")
    res = bench.read_json(os.path.join(out, "results.json"), None)
    if res is None:
        log("no results from the VM")
        return 1
    res.update(host_load_start=host_load_start, host_load_end=bench.loadavg(), vm_status=rc,
               kernel_config=os.path.relpath(frag, REPO))
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
    dest = os.path.join(out, "40-blockio.md") if args.quick else SECTION
    write_section(res, dest, COMMAND + (" --quick" if args.quick else ""))
    log(f"wrote {os.path.relpath(dest, REPO)}")
    return 0 if rc == 0 else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("--quick", action="store_true")
    g = sub.add_parser("guest")
    g.add_argument("--out", required=True)
    g.add_argument("--quick", action="store_true")
    g.add_argument("--kmod-reason")
    s = sub.add_parser("section")
    s.add_argument("results")
    s.add_argument("--to", default=SECTION)
    args = ap.parse_args()
    if args.cmd == "run":
        return run(args)
    if args.cmd == "guest":
        return guest(args)
    res = bench.read_json(args.results, None)
    if res is None:
        ap.error(f"cannot read {args.results}")
    write_section(res, args.to)
    return 0


if __name__ == "__main__":
    sys.exit(main())
