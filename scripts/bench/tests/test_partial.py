"""make bench ONLY=...: the cells of a partial run replace those of the published run in
their own environment only."""

import json
import os
import sys
import tempfile
import unittest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import bench  # noqa: E402  pylint: disable=wrong-import-position
import plan  # noqa: E402  pylint: disable=wrong-import-position


def cell(env, cid, rps):
    return {"id": cid, "env": env, "kind": "echo", "status": "ok",
            "summary": {"rps": {"median": rps}}}


class MergePartial(unittest.TestCase):
    def test_a_host_cell_replaces_the_host_cell_not_the_vm_one(self):
        cid = "scaling/threads-w2/c25/l512"
        published = {"meta": {"mode": "full"}, "envs": {"vm": {}, "host": {}},
                     "cells": [cell("vm", cid, 1.0), cell("host", cid, 2.0)]}
        meta = {"started": "s", "duration_s": 1, "load_start": 0, "load_end": 0,
                "vm_status": None, "vm_kernel_config": "k", "command": "make bench ONLY=x"}
        saved = plan.ONLY
        plan.ONLY = ("scaling/",)
        try:
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "BENCHMARKS.json")
                with open(path, "w", encoding="utf-8") as f:
                    json.dump(published, f)
                merged = bench.merge_partial(meta, {"host": {}}, [cell("host", cid, 3.0)], path)
        finally:
            plan.ONLY = saved
        got = {(c["env"], c["id"]): c["summary"]["rps"]["median"] for c in merged["cells"]}
        self.assertEqual(got, {("vm", cid): 1.0, ("host", cid): 3.0})
        self.assertEqual(len(merged["cells"]), 2)
        self.assertEqual(merged["meta"]["partial"][0]["command"], "make bench ONLY=x")


if __name__ == "__main__":
    unittest.main()
