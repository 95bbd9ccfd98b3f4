"""CPU time and context switches from /proc: a server's threads, the kernel module's
workers (kernel threads named fastio-<pid>-<lane>) and the kworkers."""

import os
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


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
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def task_comm(pid, tid):
    return (read_text(f"/proc/{pid}/task/{tid}/comm") or "").strip()


def all_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def pids_named(predicate):
    """Processes (kernel threads included) whose comm satisfies predicate."""
    found = []
    for pid in all_pids():
        comm = (read_text(f"/proc/{pid}/comm") or "").strip()
        if comm and predicate(comm):
            found.append(pid)
    return found


def kmod_workers(pid):
    """The kernel module's worker threads of process pid."""
    prefix = f"fastio-{pid}-"
    return pids_named(lambda c: c.startswith(prefix))


def process_sample(pid):
    """{"ticks", "ctxsw"} summed over every thread of pid."""
    ticks = ctxsw = 0
    for tid in tasks(pid):
        ticks += cpu_ticks(f"/proc/{pid}/task/{tid}/stat")
        ctxsw += ctx_switches(f"/proc/{pid}/task/{tid}/status")
    return {"ticks": ticks, "ctxsw": ctxsw}


def system_busy_ticks():
    """Busy ticks of all CPUs (user, nice, system, irq, softirq, steal) from /proc/stat."""
    first = (read_text("/proc/stat") or "cpu 0").splitlines()[0].split()
    vals = [int(v) for v in first[1:]]
    vals += [0] * (8 - len(vals))
    return vals[0] + vals[1] + vals[2] + vals[5] + vals[6] + vals[7]


def snapshot(pid):
    """Counters of server pid, its kmod workers, and every kworker, at this instant."""
    workers = kmod_workers(pid)
    kworkers = pids_named(lambda c: c.startswith("kworker"))
    return {
        "time": time.monotonic(),
        "server": process_sample(pid),
        "workers": {w: {"ticks": cpu_ticks(f"/proc/{w}/stat"),
                        "ctxsw": ctx_switches(f"/proc/{w}/status")} for w in workers},
        "kworkers": {k: cpu_ticks(f"/proc/{k}/stat") for k in kworkers},
        "system": system_busy_ticks(),
    }


def delta(before, after):
    """CPU seconds and context switches between two snapshots of the same server."""
    def dsum(b, a, key=None):
        total = 0
        for k, v in a.items():
            old = b.get(k, 0 if key is None else {key: 0})
            total += (v - old) if key is None else (v[key] - old[key])
        return total

    return {
        "secs": after["time"] - before["time"],
        "server_cpu_s": (after["server"]["ticks"] - before["server"]["ticks"]) / CLK_TCK,
        "server_ctxsw": after["server"]["ctxsw"] - before["server"]["ctxsw"],
        "workers_cpu_s": dsum(before["workers"], after["workers"], "ticks") / CLK_TCK,
        "workers_ctxsw": dsum(before["workers"], after["workers"], "ctxsw"),
        "kworkers_cpu_s": dsum(before["kworkers"], after["kworkers"]) / CLK_TCK,
        "system_cpu_s": (after["system"] - before["system"]) / CLK_TCK,
    }


def serving_thread(pid):
    """The busiest thread of pid that is not a runtime worker (fastio-thr-*, iou-*):
    the serving thread of an echo server that has just been under load."""
    best, best_ticks = None, -1
    for tid in tasks(pid):
        comm = task_comm(pid, tid)
        if comm.startswith(("fastio-thr", "iou-")):
            continue
        ticks = cpu_ticks(f"/proc/{pid}/task/{tid}/stat")
        if ticks > best_ticks:
            best, best_ticks = tid, ticks
    return best


def tracer_attached(tid):
    text = read_text(f"/proc/{tid}/status") or ""
    for line in text.splitlines():
        if line.startswith("TracerPid:"):
            return line.split()[1] != "0"
    return False
