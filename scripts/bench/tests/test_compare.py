"""make bench-compare: regressions over the threshold are flagged, the exit status says so."""

import contextlib
import io
import json
import os
import sys
import tempfile
import unittest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import compare  # noqa: E402  pylint: disable=wrong-import-position


def cell(cid, status="ok", env="vm", **medians):
    return {"id": cid, "env": env, "kind": cid.split("/")[0], "status": status,
            "summary": {m: {"median": v, "min": v, "max": v} for m, v in medians.items()}}


def results(*cells, mode="full"):
    return {"meta": {"started": "t", "mode": mode}, "cells": list(cells)}


class Verdict(unittest.TestCase):
    def test_throughput_drop_beyond_threshold_is_a_regression(self):
        self.assertEqual(compare.verdict("rps", 1000, 890, 10), (0.89, True))

    def test_throughput_drop_within_threshold_is_not(self):
        self.assertEqual(compare.verdict("rps", 1000, 910, 10), (0.91, False))

    def test_throughput_gain_is_not(self):
        self.assertFalse(compare.verdict("rps", 1000, 2000, 10)[1])

    def test_cost_rise_beyond_threshold_is_a_regression(self):
        self.assertTrue(compare.verdict("cpu_s_per_100k", 4.0, 4.5, 10)[1])
        self.assertTrue(compare.verdict("p99_us", 100.0, 111.0, 10)[1])
        self.assertFalse(compare.verdict("p99_us", 100.0, 109.0, 10)[1])

    def test_cost_drop_is_not(self):
        self.assertFalse(compare.verdict("cpu_s_per_100k", 4.0, 2.0, 10)[1])

    def test_change_below_the_noise_floor_is_not(self):
        self.assertFalse(compare.verdict("syscalls_per_req", 0.001, 0.004, 10)[1])
        self.assertTrue(compare.verdict("syscalls_per_req", 0.1, 0.5, 10)[1])

    def test_cost_from_zero_is_a_regression(self):
        self.assertEqual(compare.verdict("syscalls_per_req", 0.0, 1.0, 10), (None, True))

    def test_threshold_is_a_parameter(self):
        self.assertFalse(compare.verdict("rps", 1000, 850, 20)[1])
        self.assertTrue(compare.verdict("rps", 1000, 850, 10)[1])


class Compare(unittest.TestCase):
    def test_every_regressed_cell_is_flagged(self):
        base = results(cell("echo/kmod-w1/c25/l512", rps=1000.0, p99_us=100.0),
                       cell("nop/kmod/d1", ops_per_sec=5000.0),
                       cell("scaling/kmod-w2/c25/l512", rps=800.0))
        new = results(cell("echo/kmod-w1/c25/l512", rps=850.0, p99_us=100.0),
                      cell("nop/kmod/d1", ops_per_sec=5200.0),
                      cell("scaling/kmod-w2/c25/l512", rps=700.0))
        lines, n = compare.compare(base, new, 10)
        self.assertEqual(n, 2)
        flagged = [ln.split()[1] for ln in lines if ln.endswith("REGRESSION")]
        self.assertEqual(flagged, ["echo/kmod-w1/c25/l512", "scaling/kmod-w2/c25/l512"])

    def test_a_cell_that_failed_now_is_a_regression(self):
        base = results(cell("redis/kmod-w1/P16", set_rps=1.0, get_rps=1.0))
        new = results(cell("redis/kmod-w1/P16", status="failed"))
        lines, n = compare.compare(base, new, 10)
        self.assertEqual(n, 1)
        self.assertIn("failed", lines[-1])

    def test_cells_of_one_run_only_are_not_regressions(self):
        base = results(cell("echo/epoll/c1/l64", rps=10.0), cell("echo/epoll/c1/l512", rps=10.0))
        new = results(cell("echo/epoll/c1/l512", rps=10.0),
                      cell("echo/epoll/c1/l64", status="not run"), mode="quick")
        lines, n = compare.compare(base, new, 10)
        self.assertEqual(n, 0)
        self.assertIn("only one of the two runs", lines[-1])

    def test_same_metric_in_two_envs_is_two_cells(self):
        base = results(cell("echo/epoll/c1/l64", env="vm", rps=10.0),
                       cell("echo/epoll/c1/l64", env="host", rps=10.0))
        new = results(cell("echo/epoll/c1/l64", env="vm", rps=10.0),
                      cell("echo/epoll/c1/l64", env="host", rps=5.0))
        lines, n = compare.compare(base, new, 10)
        self.assertEqual(n, 1)
        self.assertTrue([ln for ln in lines if ln.startswith("host") and "REGRESSION" in ln])


class ExitStatus(unittest.TestCase):
    def run_main(self, base, new):
        with tempfile.TemporaryDirectory() as d:
            paths = []
            for name, res in (("base.json", base), ("new.json", new)):
                paths.append(os.path.join(d, name))
                with open(paths[-1], "w", encoding="utf-8") as f:
                    json.dump(res, f)
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                rc = compare.main(d, paths[0], paths[1], 10.0)
        return rc, out.getvalue()

    def test_nonzero_when_something_regressed(self):
        rc, out = self.run_main(results(cell("echo/epoll/c25/l512", rps=100.0)),
                                results(cell("echo/epoll/c25/l512", rps=80.0)))
        self.assertEqual(rc, 1)
        self.assertIn("1 regression(s) over 10%", out)

    def test_zero_when_nothing_regressed(self):
        rc, out = self.run_main(results(cell("echo/epoll/c25/l512", rps=100.0)),
                                results(cell("echo/epoll/c25/l512", rps=95.0)))
        self.assertEqual(rc, 0)
        self.assertIn("0 regression(s)", out)


if __name__ == "__main__":
    unittest.main()
