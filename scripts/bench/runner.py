"""Runs a list of plan.Job, prints progress (cell, elapsed, remaining estimate) and keeps
the results file up to date after every job, so a run cut short keeps what it measured."""

import json
import os
import statistics
import sys
import time

import cells
import procs

KINDS = {
    "echo": lambda ctx, p: cells.echo_cell(ctx, p["server"], p["conns"], p["length"], p["secs"]),
    "syscalls": lambda ctx, p: cells.syscall_cell(ctx, p["server"], p["conns"], p["length"],
                                                  p["secs"]),
    "idle": lambda ctx, p: cells.idle_cell(ctx, p["server"], p["idle_secs"], p["probe_idle"],
                                           p["load_secs"]),
    "nop": lambda ctx, p: cells.nop_cell(ctx, p["backend"], p["depth"], p["secs"]),
    "redis": lambda ctx, p: cells.redis_cell(ctx, p["variant"], p["shim"], p["pipeline"],
                                             p["requests"]),
}


def fmt_secs(s):
    s = int(max(s, 0))
    return f"{s // 60}m{s % 60:02d}s"


def summarize(runs):
    """{metric: {"median", "min", "max"}} over the numeric metrics of runs; strings are
    taken from the median run of the first metric."""
    out = {}
    if not runs:
        return out
    for key in runs[0]:
        vals = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        if vals:
            out[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
        elif isinstance(runs[0][key], str):
            out[key] = runs[len(runs) // 2][key]
    return out


class Runner:
    """Runs jobs of one environment; results go to results_path as they come."""

    def __init__(self, ctx, jobs, results_path, budget=None):
        self.ctx, self.jobs, self.path = ctx, jobs, results_path
        self.budget = budget
        self.cells = {}
        self.start = time.monotonic()
        for j in jobs:
            self.cells.setdefault(j.cell_id, {
                "id": j.cell_id, "env": ctx.env_name, "kind": j.kind,
                "params": {k: v for k, v in j.params.items() if k != "shim"},
                "status": "not run" if j.skip else "pending", "reason": j.skip,
                "runs": [], "errors": []})

    def remaining(self, index, spent_est):
        """Estimated seconds left, scaled by how the estimates compared so far."""
        left = sum(j.est for j in self.jobs[index:] if not j.skip)
        elapsed = time.monotonic() - self.start
        scale = elapsed / spent_est if spent_est > 5 else 1.0
        return left * min(max(scale, 0.5), 4.0)

    def run(self):
        spent_est = 0.0
        todo = [j for j in self.jobs if not j.skip]
        for n, job in enumerate(todo):
            elapsed = time.monotonic() - self.start
            if self.budget and elapsed > self.budget:
                self.give_up(todo[n:], f"time budget of {fmt_secs(self.budget)} exhausted")
                break
            left = self.remaining(self.jobs.index(job), spent_est)
            print(f"[bench {self.ctx.env_name} {n + 1}/{len(todo)}] {job.cell_id} "
                  f"run {job.rep + 1}/{job.reps} | elapsed {fmt_secs(elapsed)}, "
                  f"~{fmt_secs(left)} left", flush=True)
            self.run_job(job)
            spent_est += job.est
            self.save()
        self.save()
        return self.cells

    def run_job(self, job):
        cell = self.cells[job.cell_id]
        try:
            cell["runs"].append(KINDS[job.kind](self.ctx, job.params))
        except procs.BenchError as e:
            msg = f"run {job.rep + 1}: {e}"
        except Exception as e:  # pylint: disable=broad-except  # a bug must not stop the run
            msg = f"run {job.rep + 1}: {type(e).__name__}: {e}"
        else:
            msg = None
        if msg:
            print(f"[bench {self.ctx.env_name}]   FAILED: {msg}", file=sys.stderr, flush=True)
            cell["errors"].append(msg)
        cell["status"] = "ok" if cell["runs"] else "failed"
        cell["reason"] = "; ".join(cell["errors"]) or None
        cell["summary"] = summarize(cell["runs"])

    def give_up(self, jobs, reason):
        for j in jobs:
            cell = self.cells[j.cell_id]
            if cell["status"] == "pending":
                cell["status"], cell["reason"] = "not run", reason

    def save(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(list(self.cells.values()), f, indent=1)
        os.replace(tmp, self.path)
