"""scripts/bench/blockio.py: fio's JSON read right, the fio command line, the derived
kernel fragment, and the section written from results (table, ratios, failures, losses);
plus fio itself on this machine against a small O_DIRECT file (SKIP without fio)."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

# pylint: disable=wrong-import-position
import blockio  # noqa: E402
import procs  # noqa: E402

PCT = {"50.000000": 80_000, "99.000000": 300_000, "99.900000": 900_000}


def fio_json(rw="read", iops=5000.0, ios=25000):
    side = {"iops": iops, "total_ios": ios, "lat_ns": {"percentile": PCT}}
    job = {"job_runtime": 5000, "usr_cpu": 10.0, "sys_cpu": 30.0,
           "read": {"iops": 0, "total_ios": 0, "lat_ns": {"percentile": {}}},
           "write": {"iops": 0, "total_ios": 0, "lat_ns": {"percentile": {}}}}
    job[rw] = side
    return json.dumps({"fio version": "fio-3.33", "jobs": [job]})


def run(engine, rw, depth, rep, iops, p99, **extra):
    r = {"engine": engine, "rw": rw, "depth": depth, "rep": rep, "iops": iops,
         "p50_us": p99 / 3, "p99_us": p99, "p999_us": p99 * 2, "cpu_us_per_op": 20.0}
    r.update(extra)
    return r


def results(mode="full"):
    runs = []
    for rep, k in enumerate((1.0, 1.1, 0.9)):
        for rw in blockio.RWS:
            for d in blockio.DEPTHS:
                runs.append(run("fio", rw, d, rep, 10000 * k, 100.0))
                runs.append(run("uring", rw, d, rep, 9800 * k, 110.0,
                                lanes_us_per_op=0.0, helpers_us_per_op=1.5))
                runs.append(run("kmod", rw, d, rep, 4000 * k, 400.0,
                                lanes_us_per_op=30.0, helpers_us_per_op=12.0))
    runs.append({"engine": "kmod", "rw": "randread", "depth": 32, "rep": 3,
                 "error": "blockio_bench exited 1: READ of block 5 completed with -EIO"})
    return {"mode": mode, "params": blockio.MODES[mode], "env": {"kernel": "7.3.4"},
            "load_start": 0.5, "load_end": 0.7, "host_load_start": 1.2, "host_load_end": 1.4,
            "skipped": {"threads": "verify failed: block 3 (tag 5): word 9 is 0x0"},
            "runs": runs}


class Fio(unittest.TestCase):
    def test_reads_the_side_of_the_run(self):
        m = blockio.parse_fio("note: a warning first\n" + fio_json("write"), "randwrite")
        self.assertEqual(m["iops"], 5000.0)
        self.assertEqual((m["p50_us"], m["p99_us"], m["p999_us"]), (80.0, 300.0, 900.0))
        # (10 + 30) % of 5 s over 25,000 operations.
        self.assertAlmostEqual(m["cpu_us_per_op"], 80.0)

    def test_no_io_or_garbage_is_an_error(self):
        with self.assertRaises(procs.BenchError):
            blockio.parse_fio(fio_json("write"), "randread")
        with self.assertRaises(procs.BenchError):
            blockio.parse_fio("fio: something broke", "randread")

    def test_command_line(self):
        argv = blockio.fio_argv("/mnt/scratch/f", 1 << 20, "randwrite", 32, 5, 1)
        for arg in ("--ioengine=io_uring", "--direct=1", "--bs=4k", "--iodepth=32",
                    "--rw=randwrite", "--time_based", "--runtime=5", "--ramp_time=1000ms",
                    "--size=1048576", "--filename=/mnt/scratch/f", "--output-format=json"):
            self.assertIn(arg, argv)

    @unittest.skipUnless(shutil.which("fio"), "SKIP: fio not installed (scripts/bench/deps.sh)")
    def test_real_fio_output_parses(self):
        with tempfile.TemporaryDirectory(dir=os.environ.get("FASTIO_SCRATCH")) as d:
            path = os.path.join(d, "f")
            with open(path, "wb") as f:
                f.write(b"\1" * (1 << 20))
            argv = blockio.fio_argv(path, 1 << 20, "randread", 4, 1, 0.1)
            res = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                                 check=False)
            if "O_DIRECT" in res.stderr or "Invalid argument" in res.stderr:
                self.skipTest(f"SKIP: no O_DIRECT under {d}: {res.stderr.strip()}")
            self.assertEqual(res.returncode, 0, res.stderr)
            m = blockio.parse_fio(res.stdout, "randread")
            self.assertGreater(m["iops"], 0)
            self.assertGreater(m["p99_us"], 0)


class KernelFragment(unittest.TestCase):
    def test_sysvipc_is_added_once(self):
        with tempfile.TemporaryDirectory() as d:
            base, derived = os.path.join(d, "bench.config"), os.path.join(d, "x", "d.config")
            with open(base, "w", encoding="utf-8") as f:
                f.write("CONFIG_64BIT=y\n# CONFIG_SYSVIPC=y in a comment does not count\n")
            env = os.environ.pop("FASTIO_KERNEL_CONFIG", None)
            try:
                self.assertEqual(blockio.kernel_fragment(base, derived), derived)
                with open(derived, encoding="utf-8") as f:
                    text = f.read()
                self.assertTrue(text.startswith("CONFIG_64BIT=y\n"))
                self.assertTrue(text.endswith("\nCONFIG_SYSVIPC=y\n"))
                mtime = os.stat(derived).st_mtime_ns
                blockio.kernel_fragment(base, derived)
                self.assertEqual(os.stat(derived).st_mtime_ns, mtime, "rewritten")
                with open(base, "a", encoding="utf-8") as f:
                    f.write("CONFIG_SYSVIPC=y\n")
                self.assertEqual(blockio.kernel_fragment(base, derived), base)
            finally:
                if env is not None:
                    os.environ["FASTIO_KERNEL_CONFIG"] = env


class Section(unittest.TestCase):
    def test_table_ratios_and_failures(self):
        text = blockio.section(results())
        lines = text.splitlines()
        self.assertIn("Written by `flock /tmp/fastio-heavy.lock scripts/bench/blockio.py run`",
                      text)
        self.assertNotIn("Quick mode", text)
        row = next(l for l in lines if l.startswith("| randread | 1 | fastio kmod (2 helpers)"))
        # Medians 4000 (3600–4400) and 400 us; 4000 / 10000 and 400 / 100.
        self.assertIn("| 4000 (3600–4400) |", row)
        self.assertIn("| 0.40x | 4.00x |", row)
        self.assertIn("| 30.0 / 12.0 |", row)
        fio = next(l for l in lines if l.startswith("| randwrite | 32 | fio (io_uring)"))
        self.assertIn("| — | — | — |", fio)
        self.assertIn("fastio kmod (2 helpers) (1 failed)", text)
        self.assertIn("-EIO", text)
        self.assertIn("fastio threads: not measured: verify failed", text)
        self.assertIn("host (2 cores shared with other builds): 1.2 before", text)
        # kmod is below fio everywhere, uring (0.98x) is not.
        self.assertIn("**fastio kmod (2 helpers)** is below fio in randread depth 1 (0.40x)",
                      text)
        self.assertNotIn("**fastio uring**", text)
        self.assertNotIn("Above fio", text)

    def test_above_fio_is_said(self):
        r = results()
        for x in r["runs"]:
            if x["engine"] == "uring" and x["rw"] == "randread" and x["depth"] == 32:
                x["iops"] *= 2
        text = blockio.section(r)
        self.assertIn("Above fio: fastio uring in randread depth 32 (1.96x)", text)
        # fio: 10,000 IOPS x 20 us of CPU each, every cell.
        self.assertIn("vCPU busy): 0.20 in randread depth 1, 0.20 in randread depth 32", text)
        self.assertIn("CONFIG_SYSVIPC=y, derived by the script", text)

    def test_quick_mode_says_so(self):
        self.assertIn("Quick mode (smoke test)", blockio.section(results("quick")))

    def test_nothing_below_fio(self):
        r = results()
        r["runs"] = [x for x in r["runs"] if x["engine"] != "kmod"]
        self.assertIn("No backend is more than 10 % below fio", blockio.section(r))


if __name__ == "__main__":
    unittest.main()
