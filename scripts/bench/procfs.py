"""CPU time and context switches from /proc: a server's threads by role (serving; lane,
worker or SQPOLL; helper: see ROLE_PREFIXES) and the kworkers of the whole system."""

import os
import time

from pins import fmt_cpus

CLK_TCK = os.sysconf("SC_CLK_TCK")
# Where procfs is (the tests point it at a tree of their own).
PROC = "/proc"

# Threads of a server process by role, from their names (comm, at most 15 characters;
# the names are set in runtime/src/backend/kmod/threads.rs and threads/mod.rs):
# - "lanes": the threads that poll the rings: the module's lane threads (fastio-lane-N,
#   module v2: threads of the process that stay inside the module), the threads
#   backend's workers (fastio-thr-N) and io_uring's SQPOLL thread (iou-sqp-PID);
# - "helpers": the threads that do blocking work: the module's helper threads
#   (fastio-help-N) and io_uring's io-wq workers (iou-wrk-PID);
# - "serving": every other thread (main, fastio-rt-N, ...): the server's own code.
ROLE_PREFIXES = (("lanes", ("fastio-lane-", "fastio-thr-", "iou-sqp-")),
                 ("helpers", ("fastio-help-", "iou-wrk-")))
ROLES = ("serving", "lanes", "helpers")


def read_text(path):
    """The file's text, or None if it vanished or is unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def stat_fields(path):
    """(comm, fields after the comm) of a /proc/.../stat file, or None."""
    text = read_text(path)
    if not text:
        return None
    lp, rp = text.find("("), text.rfind(")")
    return text[lp + 1:rp], text[rp + 2:].split()


def cpu_ticks(path):
    """utime + stime (clock ticks) from a /proc/.../stat file; 0 if it is gone."""
    parsed = stat_fields(path)
    if parsed is None:
        return 0
    rest = parsed[1]
    return int(rest[11]) + int(rest[12])


def ctx_switches(status_path):
    """voluntary + nonvoluntary context switches from a /proc/.../status file."""
    text = read_text(status_path) or ""
    total = 0
    for line in text.splitlines():
        if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
            total += int(line.split()[1])
    return total


def tasks(pid):
    """Thread ids of process pid (empty if it is gone)."""
    try:
        return [int(t) for t in os.listdir(f"{PROC}/{pid}/task")]
    except OSError:
        return []


def task_comm(pid, tid):
    return (read_text(f"{PROC}/{pid}/task/{tid}/comm") or "").strip()


def all_pids():
    return [int(p) for p in os.listdir(PROC) if p.isdigit()]


def pids_named(predicate):
    """Processes (kernel threads included) whose comm satisfies predicate."""
    found = []
    for pid in all_pids():
        comm = (read_text(f"{PROC}/{pid}/comm") or "").strip()
        if comm and predicate(comm):
            found.append(pid)
    return found


def thread_role(comm):
    """"serving", "lanes" or "helpers" for a thread named comm (see ROLE_PREFIXES)."""
    for role, prefixes in ROLE_PREFIXES:
        if comm.startswith(prefixes):
            return role
    return "serving"


def thread_samples(pid):
    """{tid: {"role", "ticks", "ctxsw"}} of every thread of process pid."""
    out = {}
    for tid in tasks(pid):
        base = f"{PROC}/{pid}/task/{tid}"
        out[tid] = {"role": thread_role(task_comm(pid, tid)),
                    "ticks": cpu_ticks(f"{base}/stat"), "ctxsw": ctx_switches(f"{base}/status")}
    return out


def system_busy_ticks():
    """Busy ticks of all CPUs (user, nice, system, irq, softirq, steal) from /proc/stat."""
    first = (read_text(f"{PROC}/stat") or "cpu 0").splitlines()[0].split()
    vals = [int(v) for v in first[1:]]
    vals += [0] * (8 - len(vals))
    return vals[0] + vals[1] + vals[2] + vals[5] + vals[6] + vals[7]


def snapshot(pid):
    """Counters of every thread of server pid and of every kworker, at this instant."""
    kworkers = pids_named(lambda c: c.startswith("kworker"))
    return {
        "time": time.monotonic(),
        "threads": thread_samples(pid),
        "kworkers": {k: cpu_ticks(f"{PROC}/{k}/stat") for k in kworkers},
        "system": system_busy_ticks(),
    }


def delta(before, after):
    """CPU seconds and context switches between two snapshots of the same server: per
    thread role ("serving_cpu_s", "lanes_cpu_s", "helpers_cpu_s"), of the process
    ("process_cpu_s", "process_ctxsw"), of the kworkers and of the whole system. Keyed by
    thread id: a thread started in between counts from zero, one that ended in between
    is left out (the servers start their threads before they listen)."""
    out = {"secs": after["time"] - before["time"], "process_ctxsw": 0}
    ticks = dict.fromkeys(ROLES, 0)
    for tid, a in after["threads"].items():
        b = before["threads"].get(tid, {"ticks": 0, "ctxsw": 0})
        ticks[a["role"]] += a["ticks"] - b["ticks"]
        out["process_ctxsw"] += a["ctxsw"] - b["ctxsw"]
    for role in ROLES:
        out[f"{role}_cpu_s"] = ticks[role] / CLK_TCK
    out["process_cpu_s"] = sum(ticks.values()) / CLK_TCK
    out["kworkers_cpu_s"] = sum(v - before["kworkers"].get(k, 0)
                                for k, v in after["kworkers"].items()) / CLK_TCK
    out["system_cpu_s"] = (after["system"] - before["system"]) / CLK_TCK
    return out


def serving_thread(pid):
    """The busiest thread of pid whose role is "serving" (not a lane, worker, SQPOLL or
    helper thread): the serving thread of an echo server that has just been under load."""
    best, best_ticks = None, -1
    for tid in tasks(pid):
        if thread_role(task_comm(pid, tid)) != "serving":
            continue
        ticks = cpu_ticks(f"{PROC}/{pid}/task/{tid}/stat")
        if ticks > best_ticks:
            best, best_ticks = tid, ticks
    return best


def pin_role(pid, role, cpus):
    """sched_setaffinity(cpus) for every thread of pid whose role is `role`; returns how
    many were pinned (a thread that ended meanwhile is skipped)."""
    n = 0
    for tid in tasks(pid):
        if thread_role(task_comm(pid, tid)) == role:
            try:
                os.sched_setaffinity(tid, cpus)
                n += 1
            except ProcessLookupError:
                pass
    return n


def thread_cpus(pid):
    """[(comm, role, CPU list)] of every thread of pid (its affinity, taskset's form)."""
    out = []
    for tid in tasks(pid):
        comm = task_comm(pid, tid)
        try:
            cpus = sorted(os.sched_getaffinity(tid))
        except ProcessLookupError:
            continue
        out.append((comm, thread_role(comm), fmt_cpus(cpus)))
    return out


def tracer_attached(tid):
    text = read_text(f"{PROC}/{tid}/status") or ""
    for line in text.splitlines():
        if line.startswith("TracerPid:"):
            return line.split()[1] != "0"
    return False
