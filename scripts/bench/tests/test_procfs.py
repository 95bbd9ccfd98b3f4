"""CPU by thread role: a fake /proc with a server's threads and kworkers."""

import os
import shutil
import sys
import tempfile
import unittest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import cells  # noqa: E402  pylint: disable=wrong-import-position
import procfs  # noqa: E402  pylint: disable=wrong-import-position

PID = 4242
# tid -> comm of the server's threads, as the runtime and the kernel name them.
THREADS = {4242: "proactor_echo_s", 4243: "fastio-rt-0", 4250: "fastio-lane-0",
           4251: "fastio-lane-1", 4252: "fastio-help-0", 4253: "fastio-help-1",
           4260: "iou-sqp-4242", 4261: "iou-wrk-4242", 4262: "fastio-thr-0"}


def stat_line(pid, comm, utime, stime):
    # pid (comm) state ppid ... : utime and stime are fields 14 and 15.
    rest = ["S"] + ["0"] * 10 + [str(utime), str(stime)] + ["0"] * 30
    return f"{pid} ({comm}) " + " ".join(rest) + "\n"


class FakeProc:
    """A /proc tree in a temporary directory; procfs.PROC points at it."""

    def __init__(self):
        self.root = tempfile.mkdtemp()
        self.old = procfs.PROC
        procfs.PROC = self.root
        with open(os.path.join(self.root, "stat"), "w", encoding="utf-8") as f:
            f.write("cpu 0 0 0 0 0 0 0 0\n")

    def thread(self, tid, comm, ticks, ctxsw=0):
        d = os.path.join(self.root, str(PID), "task", str(tid))
        os.makedirs(d, exist_ok=True)
        self.write(d, comm, ticks, ctxsw, tid)

    def kworker(self, pid, ticks):
        d = os.path.join(self.root, str(pid))
        os.makedirs(d, exist_ok=True)
        self.write(d, "kworker/0:1", ticks, 0, pid)

    @staticmethod
    def write(d, comm, ticks, ctxsw, tid):
        for name, text in (("comm", comm + "\n"), ("stat", stat_line(tid, comm, ticks, 0)),
                           ("status", f"voluntary_ctxt_switches:\t{ctxsw}\n"
                                      f"nonvoluntary_ctxt_switches:\t0\n")):
            with open(os.path.join(d, name), "w", encoding="utf-8") as f:
                f.write(text)

    def close(self):
        procfs.PROC = self.old
        shutil.rmtree(self.root)


class Roles(unittest.TestCase):
    def test_names_of_the_runtime_and_the_kernel(self):
        want = {"proactor_echo_s": "serving", "fastio-rt-0": "serving",
                "fastio-lane-0": "lanes", "fastio-lane-1": "lanes", "fastio-thr-0": "lanes",
                "iou-sqp-4242": "lanes", "fastio-help-0": "helpers", "iou-wrk-4242": "helpers",
                "fastio-unblock": "serving"}
        for comm, role in want.items():
            self.assertEqual(procfs.thread_role(comm), role, comm)


class Delta(unittest.TestCase):
    def setUp(self):
        self.proc = FakeProc()

    def tearDown(self):
        self.proc.close()

    def snap(self, ticks, kworker_ticks, ctxsw=0):
        for tid, comm in THREADS.items():
            if tid in ticks:
                self.proc.thread(tid, comm, ticks[tid], ctxsw)
        self.proc.kworker(7, kworker_ticks)
        return procfs.snapshot(PID)

    def test_cpu_is_split_by_role(self):
        before = self.snap({t: 100 for t in THREADS}, 50)
        after = self.snap({4242: 100 + 3 * procfs.CLK_TCK, 4243: 100,
                           4250: 100 + 2 * procfs.CLK_TCK, 4251: 100 + procfs.CLK_TCK,
                           4252: 100 + procfs.CLK_TCK, 4253: 100, 4260: 100, 4261: 100,
                           4262: 100}, 50 + procfs.CLK_TCK, ctxsw=10)
        d = procfs.delta(before, after)
        self.assertAlmostEqual(d["serving_cpu_s"], 3.0)
        self.assertAlmostEqual(d["lanes_cpu_s"], 3.0)
        self.assertAlmostEqual(d["helpers_cpu_s"], 1.0)
        self.assertAlmostEqual(d["process_cpu_s"], 7.0)
        self.assertAlmostEqual(d["kworkers_cpu_s"], 1.0)
        self.assertEqual(d["process_ctxsw"], 10 * len(THREADS))

    def test_a_thread_started_in_between_counts_from_zero(self):
        before = self.snap({4242: 0}, 0)
        after = self.snap({4242: 0, 4252: procfs.CLK_TCK}, 0)
        self.assertAlmostEqual(procfs.delta(before, after)["helpers_cpu_s"], 1.0)

    def test_cost_metrics_per_100k_requests(self):
        before = self.snap({t: 0 for t in THREADS}, 0)
        after = self.snap({4242: procfs.CLK_TCK, 4250: 2 * procfs.CLK_TCK,
                           4252: procfs.CLK_TCK}, procfs.CLK_TCK, ctxsw=1)
        m = cells.cost_metrics(procfs.delta(before, after), 200_000)
        self.assertAlmostEqual(m["serving_cpu_s_per_100k"], 0.5)
        self.assertAlmostEqual(m["lanes_cpu_s_per_100k"], 1.0)
        self.assertAlmostEqual(m["helpers_cpu_s_per_100k"], 0.5)
        self.assertAlmostEqual(m["kworkers_cpu_s_per_100k"], 0.5)
        self.assertAlmostEqual(m["process_cpu_s_per_100k"], 2.0)
        self.assertAlmostEqual(m["cpu_s_per_100k"], 2.5)
        self.assertAlmostEqual(m["ctxsw_per_req"], 3 / 200_000)  # the three threads that ran

    def test_serving_thread_is_never_a_lane_or_helper(self):
        self.snap({4242: 10, 4243: 30, 4250: 1000, 4252: 900, 4260: 800, 4262: 700}, 0)
        self.assertEqual(procfs.serving_thread(PID), 4243)


if __name__ == "__main__":
    unittest.main()
