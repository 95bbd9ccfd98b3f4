"""make bench VM_SMP=N PIN_CLIENT= PIN_SERVER= PIN_WORKERS=: CPU lists, where each
role ends up, what BENCHMARKS.json and BENCHMARKS.md say."""

import os
import subprocess
import sys
import tempfile
import unittest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

# pylint: disable=wrong-import-position
import bench  # noqa: E402
import cells  # noqa: E402
import plan  # noqa: E402
import procfs  # noqa: E402
import procs  # noqa: E402
import report  # noqa: E402
from pins import Pins, fmt_cpus, parse_cpus  # noqa: E402


class CpuLists(unittest.TestCase):
    def test_taskset_forms(self):
        self.assertEqual(parse_cpus("0"), [0])
        self.assertEqual(parse_cpus("2-3"), [2, 3])
        self.assertEqual(parse_cpus("0,2-4,3"), [0, 2, 3, 4])
        self.assertEqual(fmt_cpus([0, 2, 3, 4, 7]), "0,2-4,7")

    def test_malformed_lists_are_refused(self):
        for bad in ("", "a", "3-1", "1-", "-1", "1,,2"):
            with self.assertRaises(ValueError, msg=bad):
                parse_cpus(bad)

    def test_pins_not_on_this_machine_are_reported(self):
        p = Pins("0", "1", "2-3")
        self.assertIsNone(p.unusable({0, 1, 2, 3}))
        self.assertIn("workers CPU(s) 2-3 not available", p.unusable({0, 1}))

    def test_guest_gets_the_same_pins(self):
        p = Pins("0", "1", "2-3")
        self.assertEqual(p.argv(), ["--pin-client", "0", "--pin-server", "1",
                                    "--pin-workers", "2-3"])
        self.assertEqual(Pins.from_meta(p.meta()).meta(), p.meta())
        self.assertFalse(Pins.from_meta(None).any())


class Roles(unittest.TestCase):
    def test_workers_are_pinned_by_the_configs_affinity_offset(self):
        self.assertEqual(cells.server_config("kmod-w2", Pins(workers="2-3"))["affinity_offset"], 2)
        self.assertEqual(Pins(workers="2-3").worker_cpus(2, 4), [2, 3])
        self.assertNotIn("affinity_offset", cells.server_config("kmod-w2", Pins()))
        self.assertIsNone(cells.server_config("epoll", Pins(workers="2")))

    def test_client_runs_on_its_cpus(self):
        cpu = min(os.sched_getaffinity(0))
        out = procs.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                        timeout=30, log_path=os.devnull, cpus=[cpu])
        self.assertEqual(out.strip(), f"[{cpu}]")

    def test_serving_threads_are_pinned(self):
        cpu = min(os.sched_getaffinity(0))
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                 stdin=subprocess.PIPE)
        try:
            self.assertEqual(procfs.pin_role(child.pid, "serving", [cpu]), 1)
            self.assertEqual(os.sched_getaffinity(child.pid), {cpu})
            self.assertEqual(procfs.pin_role(child.pid, "lanes", [cpu]), 0)
        finally:
            child.stdin.close()
            child.wait(timeout=30)


# A stand-in for redis-server: listens on argv[1], answers every read with +PONG.
FAKE_REDIS = """
import socket, sys
srv = socket.create_server(("127.0.0.1", int(sys.argv[1])))
while True:
    conn, _ = srv.accept()
    with conn:
        while conn.recv(64):
            conn.sendall(b"+PONG\\r\\n")
"""


class ServerHook(unittest.TestCase):
    def test_server_is_pinged_then_its_serving_threads_pinned_and_logged(self):
        cpu = min(os.sched_getaffinity(0))
        with tempfile.TemporaryDirectory() as d:
            ctx = cells.Ctx(d, d, "host", tcg=False, pins=Pins(server=str(cpu)))
            log = os.path.join(d, "server.log")
            hook = cells.pin_server(ctx, first=cells.redis_ping)
            with procs.Server([sys.executable, "-c", FAKE_REDIS, "{port}"], log,
                              on_start=hook) as srv:
                self.assertEqual(os.sched_getaffinity(srv.pid), {cpu})
            with open(log, encoding="utf-8") as f:
                text = f.read()
        self.assertIn(f"serving CPUs {cpu}", text)

    def test_no_hook_without_server_pins(self):
        with tempfile.TemporaryDirectory() as d:
            self.assertIsNone(cells.pin_server(cells.Ctx(d, d, "host", tcg=False)))


class Recorded(unittest.TestCase):
    def args(self, **kw):
        base = {"quick": False, "vm_smp": 2, "pin_client": None, "pin_server": None,
                "pin_workers": None}
        base.update(kw)
        return type("Args", (), base)()

    def test_make_command_repeats_the_run(self):
        a = self.args(quick=True, vm_smp=4, pin_client="0", pin_server="1", pin_workers="2-3")
        self.assertEqual(bench.make_command(a, bench.pins_of(a)),
                         "make bench QUICK=1 VM_SMP=4 PIN_CLIENT=0 PIN_SERVER=1 PIN_WORKERS=2-3")
        a = self.args()
        self.assertEqual(bench.make_command(a, bench.pins_of(a)), "make bench")

    def test_the_vm_gets_its_vcpus_and_the_guest_the_pins(self):
        argv = bench.vm_argv(True, "/o", (None, "no shim"), 4, Pins("0", "1", "2-3"))
        self.assertTrue(argv[0].endswith("scripts/vm/run.sh"))
        self.assertEqual(argv[1:3], ["--smp", "4"])
        guest = argv[argv.index("--") + 1:]
        self.assertEqual(guest[2:5], ["guest", "--out", "/o"])
        for flag, value in (("--pin-client", "0"), ("--pin-server", "1"),
                            ("--pin-workers", "2-3"), ("--shim-reason", "no shim")):
            self.assertEqual(guest[guest.index(flag) + 1], value)
        self.assertIn("--quick", guest)
        self.assertNotIn("--kmod-reason", guest)

    def test_guest_accepts_what_run_passes(self):
        argv = bench.vm_argv(False, "/o", ("x", None), 2, Pins(workers="1"))
        args = bench.parser().parse_args(argv[argv.index("--") + 3:])
        self.assertEqual((args.cmd, args.out, args.quick), ("guest", "/o", False))
        self.assertEqual((args.pin_workers, args.kmod_reason), ("1", "x"))
        self.assertEqual(bench.pins_of(args).meta(), {"workers": "1"})

    def test_scaling_goes_up_to_the_pinned_workers(self):
        saved = plan.MAX_WORKERS
        try:
            plan.MAX_WORKERS = 5
            servers = plan.scaling_servers("vm")
        finally:
            plan.MAX_WORKERS = saved
        self.assertEqual(servers[0], "epoll")
        self.assertIn("kmod-w5", servers)
        self.assertNotIn("kmod-w6", servers)

    def results(self, cpus, pins):
        return {"meta": {"mode": "full", "started": "s", "duration_s": 1, "command": "make bench",
                         "vm_smp": cpus, "pins": pins},
                "envs": {"vm": {"cpus": cpus, "pins": pins}},
                "cells": [{"id": "echo/epoll/c25/l512", "env": "vm", "kind": "echo",
                           "params": {"conns": 25, "length": 512}, "status": "ok",
                           "runs": [{}], "errors": [], "summary": {}}]}

    def test_report_prints_the_pinning_and_what_two_cores_cannot_show(self):
        r = report.Results(self.results(2, {}))
        env = "\n".join(report.env_section(r))
        self.assertIn("pinning: not pinned", env)
        cores = "\n".join(report.cores_section(r))
        self.assertIn("What 2 cores can and cannot show", cores)
        self.assertIn(report.SEED_COMMAND, cores)
        self.assertIn("cannot show", cores)

    def test_report_on_a_big_pinned_host(self):
        r = report.Results(self.results(8, Pins("0", "1", "2-6").meta()))
        env = "\n".join(report.env_section(r))
        self.assertIn("load client on CPU 0", env)
        self.assertIn("lane/worker/SQPOLL thread i on CPU 2 + i", env)
        self.assertIn("enough for the client, the serving thread and 5 workers",
                      "\n".join(report.cores_section(r)))


if __name__ == "__main__":
    unittest.main()
