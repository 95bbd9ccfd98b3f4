#!/usr/bin/env python3
"""fastio-rs benchmark harness (make bench, make bench-compare).

  bench.py run [--quick] [--skip-vm] [--skip-host] [--only P,..] [--vm-smp N]
               [--pin-client CPUS] [--pin-server CPUS] [--pin-workers CPUS]
        everything: the VM part (kernel module, one VM boot), the host part, then
        BENCHMARKS.md, BENCHMARKS.json, plots; --only runs the cells whose id starts with
        one of the prefixes (e.g. rawcmp/,redis/) and replaces just those in the
        published results; --vm-smp: the VM's vCPUs (default 2); --pin-*: CPU lists
        (taskset's form) for the load client, the serving threads and the workers (see
        pins.py), in the VM and on the host alike (an environment without those CPUs
        runs unpinned and says so)
  bench.py guest --out DIR [--quick]   the VM part (run inside the VM by `run`)
  bench.py report [RESULTS]            rewrite BENCHMARKS.md and the plots from results
  bench.py compare [--base F] [--new F] [--threshold PCT]   ratio per cell, regressions

Runs are kept in target/bench/<time>/ (logs, configs, per-environment results); the
published files are BENCHMARKS.md, BENCHMARKS.json and bench/plots/*.svg.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the tree (the guest shares it)

# pylint: disable=wrong-import-position
import compare  # noqa: E402
import plan  # noqa: E402
import plots  # noqa: E402
import report  # noqa: E402
from cells import Ctx  # noqa: E402
from pins import Pins, usable_cpus  # noqa: E402
from runner import Runner, fmt_secs  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PUBLISHED_JSON = os.path.join(REPO, "BENCHMARKS.json")
BENCH_KERNEL_CONFIG = os.path.join(REPO, "kmod", "kernel-bench.config")
# Overall limits of the VM part (boot included) and of the host part, in seconds.
VM_TIMEOUT = {"quick": 420, "full": 1800}
VM_SMP_DEFAULT = 2
HOST_BUDGET = {"quick": 240, "full": 1200}


def log(msg):
    print(f"[bench] {msg}", flush=True)


def raise_nofile():
    """RLIMIT_NOFILE as high as allowed (servers and clients with 1,000 connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if os.geteuid() == 0 else hard
    for limit in (want, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, max(limit, hard)))
            return
        except (ValueError, OSError):
            continue
    log(f"cannot raise RLIMIT_NOFILE (now {soft})")


def cpu_model():
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def env_info(env, pins=None, pin_note=None):
    info = {"env": env, "kernel": platform.release(), "cpus": os.cpu_count(),
            "cpu": cpu_model(), "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}
    with open("/proc/meminfo", encoding="utf-8") as f:
        info["mem_mib"] = int(f.readline().split()[1]) // 1024
    clock = "/sys/devices/system/clocksource/clocksource0/current_clocksource"
    if os.path.exists(clock):
        with open(clock, encoding="utf-8") as f:
            info["clocksource"] = f.read().strip()
    if env == "vm":
        info["vm"] = f"QEMU TCG (no KVM), scripts/vm/run.sh, {os.cpu_count()} vCPUs, 2 GiB"
        with open("/proc/cmdline", encoding="utf-8") as f:
            info["cmdline"] = f.read().strip()
    if pins is not None:
        info["pins"] = pins.meta()
    if pin_note:
        info["pin_note"] = pin_note
    return info


def loadavg():
    with open("/proc/loadavg", encoding="utf-8") as f:
        return float(f.read().split()[0])


def estimate(env, quick):
    """Planned runs and estimated seconds of env's part."""
    jobs = [j for j in plan.jobs(env, quick, REPO) if not j.skip]
    return len(jobs), sum(j.est for j in jobs)


def sh(argv, timeout, **kw):
    """Runs argv (output to the terminal); returns its status, 124 on timeout."""
    try:
        return subprocess.run(argv, timeout=timeout, cwd=REPO, check=False, **kw).returncode
    except subprocess.TimeoutExpired:
        return 124


def usable_pins(pins, env):
    """(pins to apply here, why the asked pins are not applied or None)."""
    why = pins.unusable(usable_cpus())
    if why:
        log(f"{env}: not pinned: {why}")
        return Pins(), f"pinning asked for ({pins.describe()}) not applied: {why}"
    if pins.any():
        log(f"{env}: {pins.describe()}")
    return pins, None


def run_env(env, quick, out, reasons, pins, budget=None):
    """Runs env's part; reasons: (kmod_reason, shim_reason), see plan.jobs."""
    pins, pin_note = usable_pins(pins, env)
    ctx = Ctx(REPO, out, env, tcg=(env == "vm"), pins=pins)
    jobs = plan.jobs(env, quick, REPO, *reasons)
    path = os.path.join(out, f"{env}.json")
    log(f"{env}: {sum(1 for j in jobs if not j.skip)} runs planned "
        f"(~{fmt_secs(sum(j.est for j in jobs if not j.skip))})")
    with open(os.path.join(out, f"{env}-env.json"), "w", encoding="utf-8") as f:
        json.dump(env_info(env, pins, pin_note), f, indent=1)
    return Runner(ctx, jobs, path, budget).run()


# ---- guest ---------------------------------------------------------------------------


def load_module():
    """insmod kmod/fastio.ko and open the device to everyone; returns the reason kmod
    cells cannot run, or None."""
    ko = os.path.join(REPO, "kmod", "fastio.ko")
    if not os.path.isfile(ko):
        return "kmod/fastio.ko not built (make kmod failed)"
    if sh(["insmod", ko], timeout=60) != 0:
        return "insmod kmod/fastio.ko failed in the VM"
    os.chmod("/dev/fastio", 0o666)
    return None


def guest(args):
    raise_nofile()
    reason = args.kmod_reason or load_module()
    if reason:
        log(f"vm: kmod cells not run: {reason}")
    budget = VM_TIMEOUT["quick" if args.quick else "full"] - 90
    try:
        run_env("vm", args.quick, args.out, (reason, args.shim_reason), pins_of(args), budget)
    finally:
        if reason is None and sh(["rmmod", "fastio"], timeout=60) != 0:
            log("vm: rmmod fastio failed")
    return 0


# ---- host ----------------------------------------------------------------------------


def build_kmod():
    """make kmod (builds the VM kernel first if needed); the reason on failure."""
    log("make kmod")
    rc = sh(["make", "--no-print-directory", "kmod"], timeout=3600)
    return None if rc == 0 else f"make kmod failed (status {rc})"


def build():
    """Builds the servers, clients and probes (required: None, or why not) and the Redis
    shim (optional: its reason is returned, the shim cells are then not run)."""
    log("cargo build --release -p fastio-echo -p fastio-bench")
    if sh(["cargo", "build", "--release", "-p", "fastio-echo", "-p", "fastio-bench"],
          timeout=1800) != 0:
        return "cargo build failed", None
    if not os.path.isfile(os.path.join(REPO, "redis-shim", "Cargo.toml")):
        return None, "redis-shim is not in this tree"
    log("cargo build --release -p fastio-redis-shim")
    rc = sh(["cargo", "build", "--release", "-p", "fastio-redis-shim"], timeout=1800)
    return None, (None if rc == 0 else f"cargo build -p fastio-redis-shim failed (status {rc})")


def vm_argv(quick, out, reasons, smp, pins):
    """scripts/vm/run.sh with smp vCPUs running `bench.py guest` with the same mode, --only
    and pins; reasons: (kmod_reason, shim_reason)."""
    mode = "quick" if quick else "full"
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    cmd = [python, os.path.join(REPO, "scripts", "bench", "bench.py"), "guest", "--out", out]
    if quick:
        cmd.append("--quick")
    if plan.ONLY is not None:
        cmd += ["--only", ",".join(plan.ONLY)]
    cmd += pins.argv()
    for flag, reason in zip(("--kmod-reason", "--shim-reason"), reasons):
        if reason:
            cmd += [flag, reason]
    # slub_debug=- undoes run.sh's slub_debug=FZPU: allocator debugging is for tests.
    return [os.path.join(REPO, "scripts", "vm", "run.sh"), "--smp", str(smp),
            "--timeout", str(VM_TIMEOUT[mode]),
            "--log-dir", os.path.join(out, "vm-logs"), "--append", "slub_debug=-", "--"] + cmd


def run_vm(quick, out, shim_reason, smp, pins):
    mode = "quick" if quick else "full"
    # The VM part runs on the bench kernel (no lockdep or list/object debugging); make kmod
    # and run.sh both read FASTIO_KERNEL_CONFIG, so module and kernel match.
    os.environ.setdefault("FASTIO_KERNEL_CONFIG", BENCH_KERNEL_CONFIG)
    log(f"VM kernel config: {os.environ['FASTIO_KERNEL_CONFIG']}")
    kmod_reason = build_kmod()
    argv = vm_argv(quick, out, (kmod_reason, shim_reason), smp, pins)
    log(f"VM part: booting with {smp} vCPUs (limit {fmt_secs(VM_TIMEOUT[mode])})")
    rc = sh(argv, timeout=VM_TIMEOUT[mode] + 120)
    log(f"VM part: finished with status {rc}")
    return rc


def merge_vm(quick, out, rc):
    """The VM's cells; cells it never reached are 'not run' with the VM's status."""
    cells = {}
    for j in plan.jobs("vm", quick, REPO, None):
        cells.setdefault(j.cell_id, {"id": j.cell_id, "env": "vm", "kind": j.kind,
                                     "params": {k: v for k, v in j.params.items()
                                                if k != "shim"},
                                     "status": "not run", "runs": [], "errors": [],
                                     "reason": f"the VM part ended with status {rc} first"})
    path = os.path.join(out, "vm.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for c in json.load(f):
                if c["status"] == "pending":
                    c["status"] = "not run"
                    c["reason"] = f"the VM part ended with status {rc} first"
                cells[c["id"]] = c
    return list(cells.values())


def read_json(path, default):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def merge_partial(meta, envs, cells, published=PUBLISHED_JSON):
    """The published results with the cells of an --only run replaced (or added); the
    run is listed in meta.partial, so the report says which figures are newer."""
    base = read_json(published, None) or {"meta": dict(meta), "envs": envs, "cells": []}
    # By environment and id: the VM and the host have cells of the same id.
    fresh = {(c["env"], c["id"]): c for c in cells if c.get("status") != "not run"}
    base["cells"] = ([fresh.pop((c["env"], c["id"]), c) for c in base["cells"]]
                     + list(fresh.values()))
    for env, info in envs.items():
        if info is not None and not base["envs"].get(env):
            base["envs"][env] = info
    part = {k: meta.get(k) for k in ("started", "duration_s", "load_start", "load_end",
                                     "vm_status", "vm_kernel_config", "vm_smp", "pins")}
    part["command"] = meta["command"]
    base["meta"].setdefault("partial", []).append(part)
    return base


def pins_of(args):
    """The Pins of --pin-client/--pin-server/--pin-workers."""
    return Pins(args.pin_client, args.pin_server, args.pin_workers)


def make_command(args, pins):
    """The make command line that repeats this run."""
    words = ["make bench"] + (["QUICK=1"] if args.quick else [])
    if plan.ONLY is not None:
        words.append(f"ONLY={','.join(plan.ONLY)}")
    if args.vm_smp != VM_SMP_DEFAULT:
        words.append(f"VM_SMP={args.vm_smp}")
    words += [f"PIN_{role.upper()}={cpus}" for role, cpus in pins.meta().items()]
    words += [w for w, on in (("SKIP_VM=1", getattr(args, "skip_vm", False)),
                             ("SKIP_HOST=1", getattr(args, "skip_host", False)))
              if on]
    return " ".join(words)


def run(args):
    mode = "quick" if args.quick else "full"
    pins = pins_of(args)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = os.path.join(REPO, "target", "bench", stamp)
    os.makedirs(out, exist_ok=True)
    latest = os.path.join(REPO, "target", "bench", "latest")
    if os.path.islink(latest) or not os.path.exists(latest):
        if os.path.islink(latest):
            os.unlink(latest)
        os.symlink(stamp, latest)
    t0 = time.monotonic()
    load_start = loadavg()
    log(f"mode {mode}; logs and raw results in {out}; load average {load_start}")
    for env, skipped in (("vm", args.skip_vm), ("host", args.skip_host)):
        if not skipped:
            n, secs = estimate(env, args.quick)
            log(f"plan: {env} part {n} runs, ~{fmt_secs(secs)}"
                + (" plus VM boot and make kmod" if env == "vm" else ""))
    failed, shim_reason = build()
    if failed:
        log(failed)
        return 1
    raise_nofile()
    cells, vm_rc = [], None
    if not args.skip_vm:
        vm_rc = run_vm(args.quick, out, shim_reason, args.vm_smp, pins)
        cells += merge_vm(args.quick, out, vm_rc)
    if not args.skip_host:
        log("host part")
        run_env("host", args.quick, out, (None, shim_reason), pins, budget=HOST_BUDGET[mode])
        cells += read_json(os.path.join(out, "host.json"), [])
    meta = {"mode": mode, "started": stamp, "duration_s": round(time.monotonic() - t0),
            "vm_status": vm_rc, "load_start": load_start, "load_end": loadavg(),
            "command": make_command(args, pins), "vm_smp": args.vm_smp,
            "pins": pins.meta(),
            "vm_kernel_config": os.path.relpath(
                os.environ.get("FASTIO_KERNEL_CONFIG", BENCH_KERNEL_CONFIG), REPO),
            "host": platform.node()}
    envs = {e: read_json(os.path.join(out, f"{e}-env.json"), None) for e in ("vm", "host")}
    if plan.ONLY is None:
        results = {"meta": meta, "envs": envs, "cells": cells}
    else:
        results = merge_partial(meta, envs, cells)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    shutil.copyfile(os.path.join(out, "results.json"), PUBLISHED_JSON)
    write_report(results)
    log(f"done in {fmt_secs(time.monotonic() - t0)}: BENCHMARKS.md, BENCHMARKS.json, "
        f"bench/plots/ written")
    return 0


def with_matplotlib():
    """`run` and `report` draw with matplotlib, which Debian's python3-matplotlib installs
    for /usr/bin/python3. When `python3` is another interpreter without it (pyenv...) and
    /usr/bin/python3 has it, this process becomes /usr/bin/python3 running the same
    command; otherwise it goes on (the report then says why there are no plots)."""
    sysp = plots.SYSTEM_PYTHON
    if plots.unavailable() is None or os.environ.get("FASTIO_BENCH_REEXEC") \
            or not os.path.exists(sysp) \
            or os.path.realpath(sys.executable) == os.path.realpath(sysp):
        return
    probe = subprocess.run([sysp, "-c", "import matplotlib"], capture_output=True, check=False)
    if probe.returncode == 0:
        log(f"matplotlib is not importable by {sys.executable}; running under {sysp}")
        os.environ["FASTIO_BENCH_REEXEC"] = "1"
        os.execv(sysp, [sysp, os.path.abspath(sys.argv[0])] + sys.argv[1:])


def write_report(results):
    """BENCHMARKS.md and the plots; says so when the plots were skipped."""
    report.write(results, REPO)
    why = plots.unavailable()
    if why:
        log(f"plots skipped (BENCHMARKS.md says why): {why}")


def parser():
    """The command line of bench.py (run, guest, report, compare)."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--skip-vm", action="store_true")
    p.add_argument("--skip-host", action="store_true")
    p.add_argument("--only", help="comma-separated cell-id prefixes (e.g. rawcmp/,redis/)")
    p.add_argument("--vm-smp", type=int, default=VM_SMP_DEFAULT, help="the VM's vCPUs")
    g = sub.add_parser("guest")
    g.add_argument("--out", required=True)
    g.add_argument("--quick", action="store_true")
    g.add_argument("--kmod-reason")
    g.add_argument("--shim-reason")
    g.add_argument("--only")
    for q in (p, g):
        for role in Pins.ROLES:
            q.add_argument(f"--pin-{role}", metavar="CPUS",
                           help=f"CPUs of the {role} (taskset's list form: 0, 2-3, 0,2-3)")
    r = sub.add_parser("report")
    r.add_argument("results", nargs="?", default=PUBLISHED_JSON)
    c = sub.add_parser("compare")
    c.add_argument("--base", help="baseline results (default: BENCHMARKS.json at git HEAD)")
    c.add_argument("--new", default=PUBLISHED_JSON, help="new results (default: BENCHMARKS.json)")
    c.add_argument("--threshold", type=float, default=10.0, help="regression threshold, %%")
    return ap


def main():
    ap = parser()
    args = ap.parse_args()
    if getattr(args, "only", None):
        plan.ONLY = tuple(p for p in args.only.split(",") if p)
    if args.cmd in ("run", "guest"):
        try:
            pins = pins_of(args)
        except ValueError as e:
            ap.error(str(e))
        if args.cmd == "run" and args.vm_smp < 1:
            ap.error("--vm-smp wants a positive number of vCPUs")
        plan.MAX_WORKERS = max(plan.MAX_WORKERS, len(pins.workers or []))
    if args.cmd in ("run", "report"):
        with_matplotlib()
    if args.cmd == "run":
        return run(args)
    if args.cmd == "guest":
        return guest(args)
    if args.cmd == "report":
        write_report(read_json(args.results, None))
        return 0
    return compare.main(REPO, args.base, args.new, args.threshold)


if __name__ == "__main__":
    sys.exit(main())
