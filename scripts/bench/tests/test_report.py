"""BENCHMARKS.md and the plots from a results object: with matplotlib (run under the
interpreter that has it), without it (the report says why), and the CPU table by role."""

import json
import os
import subprocess
import sys
import tempfile
import unittest
import xml.etree.ElementTree as ET

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(HERE, "..")
sys.path.insert(0, BENCH)

import plots  # noqa: E402  pylint: disable=wrong-import-position
import report  # noqa: E402  pylint: disable=wrong-import-position


def echo_cell(env, server, conns=25, length=512, prefix="echo", **medians):
    return {"id": f"{prefix}/{server}/c{conns}/l{length}", "env": env, "kind": "echo",
            "params": {"server": server, "conns": conns, "length": length, "secs": 1},
            "status": "ok", "runs": [{}], "errors": [],
            "summary": {m: {"median": v, "min": v, "max": v} for m, v in medians.items()}}


def sample_results():
    cost = {"rps": 1000.0, "p50_us": 1.0, "p99_us": 2.0, "p999_us": 3.0,
            "cpu_s_per_100k": 7.0, "serving_cpu_s_per_100k": 1.25,
            "lanes_cpu_s_per_100k": 3.5, "helpers_cpu_s_per_100k": 0.75,
            "kworkers_cpu_s_per_100k": 1.5, "ctxsw_per_req": 0.2}
    cells = [echo_cell("vm", s, c, **cost) for s in ("epoll", "kmod-w1") for c in (1, 25)]
    cells += [echo_cell("vm", f"{k}-w{w}", prefix="scaling", rps=100.0 * w,
                        cpu_s_per_100k=float(w)) for k in ("kmod", "threads") for w in (1, 2)]
    return {"meta": {"mode": "quick", "started": "20260101-000000", "duration_s": 61,
                     "command": "make bench QUICK=1", "vm_status": 0},
            "envs": {"vm": {"cpus": 2}, "host": None}, "cells": cells}


def write_report(results, repo, python=None):
    """report.write(results, repo), in this process or under `python`."""
    if python is None:
        report.write(results, repo)
        return
    path = os.path.join(repo, "results.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f)
    code = ("import json, sys; sys.dont_write_bytecode = True; sys.path.insert(0, sys.argv[1]); "
            "import report; report.write(json.load(open(sys.argv[2])), sys.argv[3])")
    subprocess.run([python, "-c", code, BENCH, path, repo], check=True)


def python_with_matplotlib():
    """None to plot in this process, else an interpreter that can; skips the test if none."""
    if plots.unavailable() is None:
        return None
    if os.path.exists(plots.SYSTEM_PYTHON) and subprocess.run(
            [plots.SYSTEM_PYTHON, "-c", "import matplotlib"], capture_output=True,
            check=False).returncode == 0:
        return plots.SYSTEM_PYTHON
    raise unittest.SkipTest("no interpreter with matplotlib (scripts/bench/deps.sh installs it)")


class Report(unittest.TestCase):
    def read_md(self, repo):
        with open(os.path.join(repo, "BENCHMARKS.md"), encoding="utf-8") as f:
            return f.read()

    def test_plots_with_matplotlib(self):
        python = python_with_matplotlib()
        with tempfile.TemporaryDirectory() as repo:
            write_report(sample_results(), repo, python)
            md = self.read_md(repo)
            for name in ("echo-rps-vm.svg", "cpu-per-100k-vm.svg", "scaling-vm.svg"):
                self.assertIn(f"(bench/plots/{name})", md)
                root = ET.parse(os.path.join(repo, "bench", "plots", name)).getroot()
                self.assertTrue(root.tag.endswith("svg"), name)
            self.assertNotIn("Plots skipped", md)

    def test_without_matplotlib_the_report_says_why(self):
        saved = plots.unavailable
        plots.unavailable = lambda: "matplotlib cannot be imported by test (No module)"
        try:
            with tempfile.TemporaryDirectory() as repo:
                write_report(sample_results(), repo)
                md = self.read_md(repo)
                self.assertFalse(os.path.exists(os.path.join(repo, "bench", "plots")))
        finally:
            plots.unavailable = saved
        self.assertIn("Plots skipped: matplotlib cannot be imported by test (No module).", md)
        self.assertNotIn("bench/plots/", md)
        self.assertIn("### Worker scaling", md)

    def test_cpu_table_has_lane_and_helper_threads(self):
        r = report.Results(sample_results())
        lines = report.cost_section(r, "vm")
        header = next(ln for ln in lines if ln.startswith("| server"))
        for col in ("serving thread(s)", "lane/worker/SQPOLL threads", "helper threads",
                    "kworkers"):
            self.assertIn(col, header)
        kmod = next(ln for ln in lines if ln.startswith("| proactor kmod (1 worker)"))
        self.assertIn("| 7.00 | 1.25 | 3.50 | 0.75 | 1.50 | 0.200 |", kmod)

    def test_results_from_before_the_split_keep_their_columns(self):
        res = sample_results()
        for c in res["cells"]:
            s = c["summary"]
            for k in ("serving", "lanes", "helpers"):
                s.pop(f"{k}_cpu_s_per_100k", None)
            s["server_cpu_s_per_100k"] = s["workers_cpu_s_per_100k"] = {"median": 1.0}
        header = next(ln for ln in report.cost_section(report.Results(res), "vm")
                      if ln.startswith("| server"))
        self.assertIn("kmod workers", header)
        self.assertNotIn("helper threads", header)

    def test_multishot_table_compares_each_backend_with_its_one_recv_loop(self):
        res = sample_results()
        for conns in (25, 256):
            res["cells"] += [echo_cell("vm", s, conns, prefix="multishot", rps=rps)
                             for s, rps in (("epoll", 1000.0), ("uring-raw", 800.0),
                                            ("uring-ms", 1200.0))]
        lines = report.multishot_section(report.Results(res), "vm")
        ms = next(ln for ln in lines if ln.startswith("| 25 | proactor uring --multishot"))
        self.assertIn("| 1.20x | 1.50x |", ms)
        # A cell without results keeps its row.
        self.assertTrue(any(ln.startswith("| 256 | proactor threads --multishot | — |")
                            for ln in lines), lines)


if __name__ == "__main__":
    unittest.main()
