"""BENCHMARKS.md and bench/plots/*.svg (plots.py, matplotlib) from a results object (see
bench.py run)."""

import os

import plan
import plots
from pins import Pins

# A 1-minute load average above this before the run means other work shared the CPUs.
BUSY_LOAD = 0.5
ENV_TITLE = {"vm": "VM (QEMU TCG, kernel module loaded)", "host": "host (no kernel module)"}
BACKEND_TITLE = {"uring": "uring", "uring-sqpoll": "uring+SQPOLL", "threads": "threads",
                 "kmod": "kmod"}


def title(server):
    """epoll_echo_server, or `proactor BACKEND` (with `(N workers)` for -wN names)."""
    if server == "epoll":
        return "epoll_echo_server"
    base, _, workers = server.partition("-w")
    if not workers.isdigit():
        base, workers = server, ""
    text = f"proactor {BACKEND_TITLE.get(base, base)}"
    if workers:
        text += f" ({workers} worker{'s' if workers != '1' else ''})"
    return text


class Results:
    """Lookup of cells by environment and id, and the not-run/failed notes."""

    def __init__(self, results):
        self.raw = results
        self.cells = {(c["env"], c["id"]): c for c in results["cells"]}
        self.envs = [e for e in ("vm", "host") if any(c["env"] == e for c in results["cells"])]

    def cell(self, env, cell_id):
        return self.cells.get((env, cell_id))

    def med(self, env, cell_id, metric):
        c = self.cell(env, cell_id)
        s = (c or {}).get("summary", {}).get(metric) if c and c["status"] == "ok" else None
        return s["median"] if isinstance(s, dict) else None

    def stat(self, env, cell_id, metric, fmt=".0f"):
        """`median (min–max)` or `median` of one run, or the cell's status."""
        c = self.cell(env, cell_id)
        if c is None:
            return "—"
        if c["status"] != "ok":
            return c["status"]
        s = c["summary"].get(metric)
        if not isinstance(s, dict):
            return "—"
        text = format(s["median"], fmt)
        if len(c["runs"]) > 1:
            text += f" ({format(s['min'], fmt)}–{format(s['max'], fmt)})"
        return text

    def problems(self, env, prefix):
        """Markdown lines for the cells under prefix that did not (fully) run."""
        lines = []
        for (e, cid), c in sorted(self.cells.items()):
            if e == env and cid.startswith(prefix) and (c["status"] != "ok" or c.get("errors")):
                lines.append(f"- `{cid}`: {c['status']}: {c.get('reason') or 'unknown'}")
        return lines


def ratio(a, b):
    """a/b as `1.23x` (three decimals below 0.1), or a dash if either is missing."""
    if a is None or not b:
        return "—"
    return f"{a / b:.3f}x" if a / b < 0.1 else f"{a / b:.2f}x"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return out


def metric_rows(r, env, servers, cell_id, cols):
    """One row per server: its title, then r.stat of each (header, metric, format)."""
    return [[title(s)] + [r.stat(env, cell_id(s), m, f) for _, m, f in cols] for s in servers]


def with_problems(lines, r, env, prefix):
    probs = r.problems(env, prefix)
    if probs:
        lines += ["", "Not run or failed (never omitted):", ""] + probs
    return lines + [""]


def env_section(r):
    lines = ["## Environment", ""]
    for env in r.envs:
        info = r.raw["envs"].get(env) or {}
        lines.append(f"- **{ENV_TITLE[env]}**: {info.get('cpu', '?')}, {info.get('cpus', '?')} "
                     f"CPUs, {info.get('mem_mib', '?')} MiB, Linux {info.get('kernel', '?')}, "
                     f"clocksource {info.get('clocksource', '?')}"
                     + (f"; {info['vm']}" if info.get("vm") else ""))
        if info.get("cmdline"):
            lines.append(f"  - guest kernel command line: `{info['cmdline']}`")
        if "pins" in info:
            lines.append(f"  - pinning: {Pins.from_meta(info['pins']).describe()}")
        if info.get("pin_note"):
            lines.append(f"  - {info['pin_note']}")
        if env == "vm" and r.raw["meta"].get("vm_kernel_config"):
            lines.append(f"  - guest kernel config: tinyconfig + "
                         f"`{r.raw['meta']['vm_kernel_config']}`")
    meta = r.raw["meta"]
    lines += ["", f"Run: `{meta['command']}` ({meta['mode']} mode), started {meta['started']}, "
              f"took {meta['duration_s'] // 60} min {meta['duration_s'] % 60} s; "
              f"VM part status {meta.get('vm_status')}; host load average (1 min) "
              f"{meta.get('load_start', '?')} at the start, {meta.get('load_end', '?')} at the end"
              " (other work on the machine makes every figure noisier).", ""]
    for part in meta.get("partial", []):
        lines += [f"Re-measured since: `{part['command']}`, started {part['started']}, took "
                  f"{part['duration_s'] // 60} min {part['duration_s'] % 60} s; load average "
                  f"{part.get('load_start', '?')} at the start, {part.get('load_end', '?')} at "
                  "the end (its cells replace the full run's).", ""]
    if isinstance(meta.get("load_start"), (int, float)) and meta["load_start"] > BUSY_LOAD:
        lines += [f"**Warning: the machine was busy before this run started (load average "
                  f"{meta['load_start']}): other work competed for the CPUs, and polling "
                  "designs (kmod, SQPOLL, threads) suffer most from that, so these figures are "
                  "not representative. Rerun `make bench` on a quiet machine.**", ""]
    return lines


def headline(r):
    h, ln = plan.HEAD_CONNS, plan.HEAD_LEN
    cid = lambda s: f"echo/{s}/c{h}/l{ln}"  # noqa: E731
    lines = [f"## Headline (VM, echo_bench -c {h} -l {ln}; Redis -c 50 -P 16)", ""]
    rows = []
    for k in ("kmod-w1", "kmod-w2"):
        kv = r.med("vm", cid(k), "rps")
        rows.append([f"{title(k)} vs epoll_echo_server", ratio(kv, r.med("vm", cid("epoll"), "rps"))])
        rows.append([f"{title(k)} vs proactor uring+SQPOLL",
                     ratio(kv, r.med("vm", cid("uring-sqpoll"), "rps"))])
    for v in ("kmod-w1", "uring-sqpoll"):
        for op in ("set_rps", "get_rps"):
            shim = r.cell("vm", f"redis/{v}/P16")
            val = ratio(r.med("vm", f"redis/{v}/P16", op), r.med("vm", "redis/plain/P16", op))
            if shim and shim["status"] != "ok":
                val = f"{shim['status']}: {shim.get('reason')}"
            rows.append([f"Redis shim on {v} vs plain redis-server, {op[:3].upper()} -P 16", val])
    for d in (1, 32):
        kv = r.med("vm", f"nop/kmod/d{d}", "ops_per_sec")
        for base in ("uring-sqpoll", "threads"):
            rows.append([f"NOP depth {d}: kmod vs {base} (NOPs/s)",
                         ratio(kv, r.med("vm", f"nop/{base}/d{d}", "ops_per_sec"))])
    return lines + table(["ratio of medians (requests/s, NOPs/s)", "value"], rows) + [""]


def nop_section(r, env):
    lines = [f"### NOP round trips — {ENV_TITLE[env]}", "",
             "`nop_bench --config C -d DEPTH -t SECS`: one lane; depth 1 = submit one NOP, "
             "wait for its completion; depth 32 = 32 in flight (batched).", ""]
    rows = []
    for b in plan.nop_backends(env):
        for d in sorted({c["params"]["depth"] for (e, i), c in r.cells.items()
                         if e == env and c["kind"] == "nop"}):
            cid = f"nop/{b}/d{d}"
            rows.append([b, d, r.stat(env, cid, "ops_per_sec"), r.stat(env, cid, "p50_us", ".2f"),
                         r.stat(env, cid, "p99_us", ".2f"),
                         ratio(r.med(env, cid, "ops_per_sec"),
                               r.med(env, f"nop/uring-sqpoll/d{d}", "ops_per_sec"))])
    lines += table(["backend", "depth", "NOPs/s median (min–max)", "p50 µs", "p99 µs",
                    "vs uring+SQPOLL"], rows)
    return with_problems(lines, r, env, "nop/")


def echo_section(r, env):
    cfg = r.raw["meta"]
    conns = sorted({c["params"]["conns"] for (e, i), c in r.cells.items()
                    if e == env and i.startswith("echo/")})
    lens = sorted({c["params"]["length"] for (e, i), c in r.cells.items()
                   if e == env and i.startswith("echo/")})
    lines = [f"### Echo — {ENV_TITLE[env]}", "",
             "`echo_bench -a 127.0.0.1:PORT -c CONNS -t SECS -l LEN -q` against a fresh server "
             f"per run ({cfg['mode']} mode). Requests/s median (min–max), then the ratios of the "
             "medians to epoll_echo_server and to proactor uring+SQPOLL.", ""]
    for ln in lens:
        rows = []
        for s in plan.echo_servers(env):
            row = [title(s)]
            for c in conns:
                cid = f"echo/{s}/c{c}/l{ln}"
                v = r.med(env, cid, "rps")
                row.append(f"{r.stat(env, cid, 'rps')}<br>"
                           f"{ratio(v, r.med(env, f'echo/epoll/c{c}/l{ln}', 'rps'))} epoll, "
                           f"{ratio(v, r.med(env, f'echo/uring-sqpoll/c{c}/l{ln}', 'rps'))} SQPOLL")
            rows.append(row)
        lines += [f"**{ln} B messages**", ""]
        lines += table(["server"] + [f"{c} conn" for c in conns], rows) + [""]
    lines += ["Latency (µs, median of runs) p50 / p99 / p99.9:", ""]
    rows = []
    for ln in lens:
        for s in plan.echo_servers(env):
            row = [title(s), ln]
            for c in conns:
                cid = f"echo/{s}/c{c}/l{ln}"
                vals = [r.med(env, cid, m) for m in ("p50_us", "p99_us", "p999_us")]
                row.append(" / ".join(f"{v:.0f}" for v in vals) if None not in vals
                           else r.stat(env, cid, "p50_us"))
            rows.append(row)
    lines += table(["server", "bytes"] + [f"{c} conn" for c in conns], rows)
    return with_problems(lines, r, env, "echo/")


def rawcmp_section(r, env):
    h, ln = plan.HEAD_CONNS, plan.HEAD_LEN
    if not any(e == env and i.startswith("rawcmp/") for e, i in r.cells):
        return []  # results from before the comparison existed
    lines = [f"### Async runtime vs raw loop — {ENV_TITLE[env]} (echo -c {h} -l {ln})", "",
             "proactor_echo_server on `fastio::rt` (its default) against its hand-written "
             "completion loop (`--raw`), the two forms interleaved run by run. The goal is an "
             "async/raw ratio of at least 0.95 on every backend.", ""]
    rows = []
    for s in plan.rawcmp_servers(env):
        a, raw = f"rawcmp/{s}/c{h}/l{ln}", f"rawcmp/{s}-raw/c{h}/l{ln}"
        rows.append([title(s), r.stat(env, a, "rps"), r.stat(env, raw, "rps"),
                     ratio(r.med(env, a, "rps"), r.med(env, raw, "rps"))])
    lines += table(["server", "async req/s median (min–max)", "--raw req/s", "async/raw"], rows)
    return with_problems(lines, r, env, "rawcmp/")


def inline_section(r, env):
    if not any(e == env and i.startswith("inline/") for e, i in r.cells):
        return []
    ln = plan.HEAD_LEN
    lines = [f"### Inline execution on the module — {ENV_TITLE[env]} (echo -l {ln})", "",
             "`kmod_inline`: `-inline` (always) lets a serving thread whose lane thread sleeps "
             "run the lane's work in its own ENTER (SQEs and ready requests, as io_uring without "
             "SQPOLL does); `-poll` (never) wakes the lane thread instead (FastIO's model). "
             "`auto`, the default, is inline when the process may run on fewer CPUs than "
             "lanes + 2 — on this VM's 2 vCPUs, always. Interleaved run by run; req/s median "
             "(min–max), CPU seconds per 100k requests (server + kworkers) and context switches "
             "per request.", ""]
    rows = []
    for conns in plan.INLINE_CONNS:
        ref = f"inline/epoll/c{conns}/l{ln}"
        for s in plan.inline_servers(env):
            cid = f"inline/{s}/c{conns}/l{ln}"
            base, policy = (s.rsplit("-", 1) if s.endswith(("-inline", "-poll"))
                            else (s, ""))
            rows.append([conns, f"{title(base)} {policy}".rstrip(),
                         r.stat(env, cid, "rps"), ratio(r.med(env, cid, "rps"),
                                                        r.med(env, ref, "rps")),
                         r.stat(env, cid, "cpu_s_per_100k", ".2f"),
                         r.stat(env, cid, "ctxsw_per_req", ".3f")])
    lines += table(["conns", "server", "req/s", "vs epoll", "CPU s/100k", "ctx sw/req"], rows)
    return with_problems(lines, r, env, "inline/")


def multishot_section(r, env):
    if not any(e == env and i.startswith("multishot/") for e, i in r.cells):
        return []
    ln = plan.HEAD_LEN
    lines = [f"### Multishot RECV vs one RECV per request — {ENV_TITLE[env]} (echo -l {ln})",
             "",
             "proactor_echo_server's completion loop with one RECV SQE per request (`--raw`) "
             "against multishot ACCEPT and RECV into a provided-buffer group (`--multishot`: "
             "one armed RECV per connection, buffers recycled once echoed), per backend, "
             "interleaved run by run with epoll_echo_server; req/s median (min–max), CPU "
             "seconds per 100k requests (server + kworkers) and context switches per request.",
             ""]
    rows = []
    for conns in (plan.HEAD_CONNS, 256):
        ref = f"multishot/epoll/c{conns}/l{ln}"
        for s in plan.multishot_servers(env):
            cid = f"multishot/{s}/c{conns}/l{ln}"
            raw = f"multishot/{s[:-3]}-raw/c{conns}/l{ln}" if s.endswith("-ms") else None
            base, form = s.rsplit("-", 1) if s != "epoll" else (s, "")
            name = title(base) + {"raw": " --raw", "ms": " --multishot"}.get(form, "")
            rows.append([conns, name, r.stat(env, cid, "rps"),
                         ratio(r.med(env, cid, "rps"), r.med(env, ref, "rps")),
                         ratio(r.med(env, cid, "rps"), r.med(env, raw, "rps")) if raw else "",
                         r.stat(env, cid, "cpu_s_per_100k", ".2f"),
                         r.stat(env, cid, "ctxsw_per_req", ".3f")])
    lines += table(["conns", "server", "req/s", "vs epoll", "multishot / one RECV",
                    "CPU s/100k", "ctx sw/req"], rows)
    return with_problems(lines, r, env, "multishot/")


# CPU per request by role (procfs.ROLES and the kworkers), as cells.cost_metrics names
# them; results from before the split (module v1: kernel threads fastio-PID-LANE) have
# the process as a whole and the module's kernel threads instead.
COST_PARTS = [("serving thread(s)", "serving_cpu_s_per_100k"),
              ("lane/worker/SQPOLL threads", "lanes_cpu_s_per_100k"),
              ("helper threads", "helpers_cpu_s_per_100k"),
              ("kworkers", "kworkers_cpu_s_per_100k")]
COST_PARTS_V1 = [("process", "server_cpu_s_per_100k"),
                 ("kmod workers", "workers_cpu_s_per_100k"),
                 ("kworkers", "kworkers_cpu_s_per_100k")]


def cost_parts(r, env):
    """COST_PARTS, or COST_PARTS_V1 for results measured before the split by role."""
    split = any(e == env and "lanes_cpu_s_per_100k" in (c.get("summary") or {})
                for (e, _), c in r.cells.items())
    return COST_PARTS if split else COST_PARTS_V1


def cost_section(r, env):
    h, ln = plan.HEAD_CONNS, plan.HEAD_LEN
    parts = cost_parts(r, env)
    if parts is COST_PARTS:
        how = ("CPU and context switches: deltas of /proc/PID/task/*/stat and status of the "
               "server's threads, by thread name: lane threads (`fastio-lane-N`), the threads "
               "backend's workers (`fastio-thr-N`) and io_uring's SQPOLL thread "
               "(`iou-sqp-PID`) as lane/worker/SQPOLL threads; the module's helper threads "
               "(`fastio-help-N`) and io_uring's io-wq workers (`iou-wrk-PID`) as helper "
               "threads; every other thread of the server as serving thread(s); plus all "
               "kworkers of the system; over the untraced runs of the echo table. Context "
               "switches are the server's threads' (all roles).")
    else:
        how = ("CPU and context switches: deltas of /proc/PID/task/*/stat and status of the "
               "server, plus the kernel module's workers (fastio-PID-LANE) and all kworkers, "
               "over the untraced runs of the echo table.")
    lines = [f"### Cost per request — {ENV_TITLE[env]} (echo -c {h} -l {ln})", "",
             "Syscalls: `strace -c -U calls,name -p TID` attached to the serving thread only "
             "(no -f) for one echo_bench run, divided by the responses of that run. " + how, ""]
    rows = []
    for s in plan.echo_servers(env):
        sc, ec = f"syscalls/{s}/c{h}/l{ln}", f"echo/{s}/c{h}/l{ln}"
        top = (r.cell(env, sc) or {}).get("summary", {}).get("top", "")
        rows.append([title(s), r.stat(env, sc, "syscalls_per_req", ".3f"), top,
                     r.stat(env, ec, "cpu_s_per_100k", ".2f")]
                    + [r.stat(env, ec, m, ".2f") for _, m in parts]
                    + [r.stat(env, ec, "ctxsw_per_req", ".3f")])
    lines += table(["server", "syscalls/req (serving thread)", "top syscalls per req",
                    "CPU s/100k req (total)"] + [label for label, _ in parts]
                   + ["ctx switches/req"], rows)
    return with_problems(lines, r, env, "syscalls/")


def scaling_servers(r, env):
    """The servers of env's scaling cells, as measured: epoll (the reference) first, then
    kmod, then threads, each by number of workers."""
    order = {"epoll": 0, "kmod": 1, "threads": 2}
    found = {i.split("/")[1] for e, i in r.cells if e == env and i.startswith("scaling/")}
    def key(s):
        kind, _, w = s.rpartition("-w")
        return (order.get(kind or s, 3), kind or s, int(w) if w.isdigit() else 0)
    return sorted(found, key=key)


def scaling_section(r, env):
    h, ln = plan.HEAD_CONNS, plan.HEAD_LEN
    servers = scaling_servers(r, env)
    polling = [s for s in servers if s != "epoll"]
    maxw = max((int(s.rpartition("-w")[2]) for s in polling), default=0)
    cpus = (r.raw["envs"].get(env) or {}).get("cpus")
    if isinstance(cpus, int) and cpus >= maxw + 2:
        room = (f"The machine has {cpus} CPUs: room for the client, the serving thread and "
                f"{cpus - 2} workers on cores of their own (see the pinning under "
                "Environment).")
    else:
        room = (f"The machine has {cpus or '?'} CPUs for the client, the serving thread and "
                "every worker together: beyond one worker, workers compete with the client "
                "and the server for the same cores, so this shows the cost of extra workers "
                "on a small machine, not their benefit on a big one.")
    lines = [f"### Worker scaling — {ENV_TITLE[env]} (echo -c {h} -l {ln})", "",
             f"`max_ker_worker` 1..{maxw} with one serving thread. {room}", ""]
    cid = lambda s: f"scaling/{s}/c{h}/l{ln}"  # noqa: E731
    cols = [("requests/s", "rps", ".0f"), ("CPU s/100k req", "cpu_s_per_100k", ".2f")]
    rows = metric_rows(r, env, servers, cid, cols)
    header = ["server"] + [c[0] for c in cols]
    if "epoll" in servers:
        header.append("vs epoll_echo_server")
        base = r.med(env, cid("epoll"), "rps")
        for s, row in zip(servers, rows):
            row.append(ratio(r.med(env, cid(s), "rps"), base))
    lines += table(header, rows)
    return with_problems(lines, r, env, "scaling/")


def idle_section(r, env):
    secs = next((c["params"]["idle_secs"] for (e, i), c in r.cells.items()
                 if e == env and c["kind"] == "idle"), "?")
    lines = [f"### Idle cost and wakeup — {ENV_TITLE[env]}", "",
             "After 1 s of echo load (-c 25 -l 512): CPU of the server process and its "
             f"workers over the {secs} s idle window that follows (it includes the "
             "idle_ms = 20 ms spin before workers sleep), the steady rate after the first "
             "second, then `wake_probe --idle 1 --count 3`: the round trip of the first request "
             "after 1 s of idleness vs the median of 100 back-to-back ones.", ""]
    cols = [("CPU ms in the idle window", "idle_cpu_ms", ".0f"),
            ("steady CPU ms/s", "steady_cpu_ms_per_s", ".1f"),
            ("first request after idle µs", "first_us", ".0f"), ("hot request µs", "hot_us", ".0f")]
    rows = metric_rows(r, env, plan.idle_servers(env), lambda s: f"idle/{s}", cols)
    lines += table(["server"] + [c[0] for c in cols], rows)
    return with_problems(lines, r, env, "idle/")


def redis_section(r, env):
    lines = [f"### Redis — {ENV_TITLE[env]}", "",
             "`redis-benchmark -h 127.0.0.1 -p PORT -c 50 -P {1,16} -t set,get -n N --csv` "
             "against Debian's redis-server, plain or with the redis-shim LD_PRELOADed "
             "(FASTIO_CONF selects the backend).", ""]
    rows = []
    for p in plan.REDIS_PIPELINES:
        for v in plan.redis_variants(env):
            cid = f"redis/{v}/P{p}"
            rows.append([v, p, r.stat(env, cid, "set_rps"), r.stat(env, cid, "get_rps"),
                         ratio(r.med(env, cid, "set_rps"), r.med(env, f"redis/plain/P{p}", "set_rps")),
                         ratio(r.med(env, cid, "get_rps"), r.med(env, f"redis/plain/P{p}", "get_rps"))])
    lines += table(["redis-server", "-P", "SET/s", "GET/s", "SET vs plain", "GET vs plain"], rows)
    return with_problems(lines, r, env, "redis/")


def plot_echo(r, env, d):
    """Echo requests/s against connections at the headline length; the file name."""
    conns = sorted({c["params"]["conns"] for (e, i), c in r.cells.items()
                    if e == env and i.startswith("echo/")})
    ln = plan.HEAD_LEN
    series = [(title(s), [r.med(env, f"echo/{s}/c{c}/l{ln}", "rps") for c in conns])
              for s in plan.echo_servers(env)]
    name = f"echo-rps-{env}.svg"
    plots.line_chart(os.path.join(d, name), f"Echo requests/s vs connections, {ln} B — {env}",
                     "requests/s", "connections", conns, series)
    return name


def plot_cost(r, env, d):
    """CPU per 100k requests by role at the headline cell, one stacked bar per server."""
    servers = plan.echo_servers(env)
    cid = lambda s: f"echo/{s}/c{plan.HEAD_CONNS}/l{plan.HEAD_LEN}"  # noqa: E731
    parts = [(label, [r.med(env, cid(s), m) for s in servers])
             for label, m in cost_parts(r, env)]
    name = f"cpu-per-100k-{env}.svg"
    plots.stacked_bars(os.path.join(d, name), f"CPU seconds per 100k requests, -c "
                       f"{plan.HEAD_CONNS} -l {plan.HEAD_LEN} — {env}", "CPU s / 100k requests",
                       [title(s) for s in servers], parts)
    return name


def plot_scaling(r, env, d):
    """The worker-scaling table: requests/s and CPU per 100k requests against workers,
    with epoll_echo_server as a dashed reference when it was measured."""
    servers = scaling_servers(r, env)
    polling = [s for s in servers if s != "epoll"]
    kinds = list(dict.fromkeys(s.rpartition("-w")[0] for s in polling))
    workers = sorted({int(s.rpartition("-w")[2]) for s in polling})
    cid = lambda s: f"scaling/{s}/c{plan.HEAD_CONNS}/l{plan.HEAD_LEN}"  # noqa: E731
    panels = []
    for label, metric in (("requests/s", "rps"), ("CPU s / 100k requests", "cpu_s_per_100k")):
        series = [(f"proactor {BACKEND_TITLE.get(k, k)}",
                   [r.med(env, cid(f"{k}-w{w}"), metric) for w in workers]) for k in kinds]
        ref = r.med(env, cid("epoll"), metric) if "epoll" in servers else None
        panels.append((label, series, ref))
    name = f"scaling-{env}.svg"
    plots.scaling_chart(os.path.join(d, name), f"Worker scaling, echo -c {plan.HEAD_CONNS} "
                        f"-l {plan.HEAD_LEN} — {env}", workers, panels,
                        ref_name=title("epoll"))
    return name


def plots_section(r, repo):
    """Writes the plots into bench/plots/; returns the markdown of the Plots section (the
    reason instead when matplotlib cannot be used: BENCHMARKS.md is written either way)."""
    lines = ["## Plots", ""]
    why = plots.unavailable()
    if why:
        return lines + [f"Plots skipped: {why}.", ""]
    d = os.path.join(repo, "bench", "plots")
    os.makedirs(d, exist_ok=True)
    for env in r.envs:
        for what, draw in (("echo requests/s vs connections", plot_echo),
                           ("CPU per 100k requests", plot_cost),
                           ("worker scaling", plot_scaling)):
            if what == "worker scaling" and not any(
                    e == env and i.startswith("scaling/") for e, i in r.cells):
                continue
            lines.append(f"![{what}, {env}](bench/plots/{draw(r, env, d)})")
    return lines + [""]


def losses(r, env):
    """Cells where the kmod server is slower than epoll or uring+SQPOLL."""
    found = []
    for (e, cid), c in sorted(r.cells.items()):
        if e != env or not cid.startswith("echo/kmod-") or c["status"] != "ok":
            continue
        _, server, cc, ll = cid.split("/")
        for base in ("epoll", "uring-sqpoll"):
            b = r.med(env, f"echo/{base}/{cc}/{ll}", "rps")
            v = r.med(env, cid, "rps")
            if b and v is not None and v < b:
                found.append(f"{server} {cc} {ll}: {v / b:.2f}x {base}")
    return found


def reading(r):
    lines = ["## Reading", ""]
    if "vm" in r.envs:
        lost = losses(r, "vm")
        lines.append("- Where fastio (kmod) loses in the VM: "
                     + ("; ".join(lost) if lost else "no echo cell (kmod ≥ epoll and ≥ SQPOLL in "
                                                     "every measured cell)") + ".")
    lines += [
        "- VM figures come from QEMU TCG: user code runs about 10x slower than on the host and "
        "the two vCPUs are two host threads, so only ratios within the VM table mean anything; "
        "host and VM figures are never combined in one ratio.",
        "- Every environment has 2 CPUs shared by the load client, the serving thread and the "
        "polling workers; a polling worker (kmod, SQPOLL, threads) takes CPU from the client. "
        "On bigger machines the polling designs gain relative to epoll.",
        "- Syscall counts come from strace, which stops the traced thread at every syscall: the "
        "traced run is much slower, so a server that batches (epoll_wait returning many events) "
        "batches less under strace; the count per request is an upper bound for epoll and "
        "exact for a serving thread that makes (almost) no syscalls.",
        "- In the VM, `clock_gettime` may be a real syscall (the TCG guest's clocksource "
        "often has no vDSO support; see the environment line), so it shows up in the "
        "syscall counts of servers that read the clock; the top-syscalls column says how much.",
        "- kworkers: only those visible in /proc are counted (none inside a container).",
        "- Figures of the quick mode are single runs; the full mode takes the median of 3.", ""]
    return lines


# The seed's headline table: epoll against 1..SEED_WORKERS kernel workers at 25
# connections, each on a core of its own, with the client and the serving thread on two more.
SEED_WORKERS = 5
SEED_COMMAND = (f"make bench VM_SMP={SEED_WORKERS + 2} PIN_CLIENT=0 PIN_SERVER=1 "
                f"PIN_WORKERS=2-{SEED_WORKERS + 1}")


def cores_section(r):
    """What the CPUs of this run can and cannot show, and the command for a host that has
    the cores for the seed's headline table."""
    cpus = {env: (r.raw["envs"].get(env) or {}).get("cpus") for env in r.envs}
    have = ", ".join(f"{'VM' if e == 'vm' else 'host'} {n} CPUs" for e, n in cpus.items())
    need = SEED_WORKERS + 2
    small = not cpus or any(not isinstance(n, int) or n < need for n in cpus.values())
    lines = [f"## What {min((n for n in cpus.values() if isinstance(n, int)), default='?')} "
             f"cores can and cannot show", "", f"This run: {have}.", ""]
    if small:
        lines += [
            "On so few cores the load client (echo_bench's threads are busy the whole run), "
            "the serving thread and every polling thread (kmod lane threads, io_uring's SQPOLL "
            "thread, the threads backend's workers) share the CPUs: a polling thread spins "
            "on a core that the client or the server needs, and each extra worker adds a "
            "competitor rather than capacity.", "",
            "What these figures can show: ratios between servers measured side by side in one "
            "run (interleaved runs on the same machine); syscalls, CPU seconds and context "
            "switches per request, split by thread; the cost of idling and the latency of the "
            "first request after idle; the Redis shim against plain redis-server; correctness "
            "under load (echo_bench verifies every byte).", "",
            "What they cannot show: what polling gains when it has cores of its own — "
            "FastIO's setting, with the client, the serving thread and each kernel worker on "
            "separate cores. The seed's headline table (epoll_echo_server against "
            f"1..{SEED_WORKERS} kernel workers at {plan.HEAD_CONNS} connections) needs "
            f"{need} cores for the VM, each backed by a host core (QEMU TCG runs a vCPU as a "
            "host thread), plus one for the host itself. On a host with at least "
            f"{need + 1} cores, one command measures it (the worker-scaling table then has "
            f"kmod 1..{SEED_WORKERS} workers and epoll_echo_server as the reference):", "",
            f"    {SEED_COMMAND}", ""]
    else:
        lines += [f"That is enough for the client, the serving thread and {need - 2} workers "
                  "on cores of their own (the pinning is under Environment); the seed's "
                  f"headline table is the worker-scaling table. The command: `{SEED_COMMAND}`.",
                  ""]
    return lines


def extra_sections(repo):
    """The sections other benchmark scripts wrote (bench/sections/*.md, in name order):
    measurements that are not echo cells (file serving, block I/O, memory per connection),
    each file written whole by its own script, which says in it how to re-run it."""
    d = os.path.join(repo, "bench", "sections")
    if not os.path.isdir(d):
        return []
    lines = []
    for name in sorted(os.listdir(d)):
        if name.endswith(".md"):
            with open(os.path.join(d, name), encoding="utf-8") as f:
                lines += f.read().rstrip().split("\n") + [""]
    return lines


def write(results, repo):
    """Writes BENCHMARKS.md and the plots."""
    if not results:
        raise SystemExit("report: no results")
    r = Results(results)
    lines = ["# fastio-rs benchmarks", "",
             "Generated by `make bench` (scripts/bench/bench.py) — do not edit by hand; "
             "machine-readable results: [BENCHMARKS.json](BENCHMARKS.json); compare a new run "
             "with the committed one: `make bench-compare`. Quick mode: `make bench QUICK=1`.",
             ""]
    lines += env_section(r)
    if "vm" in r.envs:
        lines += headline(r)
    lines += plots_section(r, repo)
    lines += reading(r)
    lines += cores_section(r)
    for env in r.envs:
        lines += [f"## {ENV_TITLE[env]}", ""]
        for section in (nop_section, echo_section, rawcmp_section, inline_section,
                        multishot_section, cost_section, scaling_section, idle_section,
                        redis_section):
            lines += section(r, env)
    lines += extra_sections(repo)
    with open(os.path.join(repo, "BENCHMARKS.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines).rstrip() + "\n")
