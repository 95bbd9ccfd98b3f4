"""Starting and stopping servers and clients: every child has a timeout, every server is
killed on the way out (SIGINT, then SIGKILL of its process group)."""

import json
import os
import signal
import socket
import subprocess
import time


class BenchError(Exception):
    """A cell could not be measured (the message says why)."""


def free_port():
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout):
    """Waits until 127.0.0.1:port accepts a connection; fails if proc exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"server exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"server did not listen on port {port} within {timeout:.0f} s")


def stop(proc, grace=10):
    """SIGINT, then SIGKILL to the whole process group after grace seconds."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
        proc.wait(timeout=30)


class Server:
    """A server process on a free loopback port, as a context manager.

    argv may contain "{port}", replaced by the port. The log goes to log_path. on_start
    (if given) is called with the Server once it listens (cells.py pins its threads)."""

    def __init__(self, argv, log_path, env=None, start_timeout=30, on_start=None):
        self.port = free_port()
        self.on_start = on_start
        self.argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.log_path = log_path
        self.env = env
        self.start_timeout = start_timeout
        self.proc = None
        self.log = None

    def __enter__(self):
        self.log = open(self.log_path, "ab")
        self.log.write(("$ " + " ".join(self.argv) + "\n").encode())
        self.log.flush()
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self.env,
                                     start_new_session=True)
        try:
            wait_port(self.port, self.proc, self.start_timeout)
            if self.on_start is not None:
                self.on_start(self)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def __exit__(self, *exc):
        if self.proc is not None:
            stop(self.proc)
        if self.log is not None:
            self.log.close()
        return False

    def log_tail(self, lines=5):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return " | ".join(f.read().splitlines()[-lines:])
        except OSError:
            return ""


def run(argv, timeout, log_path, env=None, cpus=None):
    """Runs argv to completion (killed after timeout); returns its stdout. cpus: the CPUs
    it may run on (sched_setaffinity before exec, as taskset does), None for any.
    Raises BenchError on a timeout or a nonzero status."""
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    with open(log_path, "ab") as log:
        pinned = f"(CPUs {sorted(cpus)}) " if cpus else ""
        log.write(("$ " + pinned + " ".join(argv) + "\n").encode())
        log.flush()
        try:
            res = subprocess.run(argv, stdout=subprocess.PIPE, stderr=log, env=env,
                                 stdin=subprocess.DEVNULL, timeout=timeout,
                                 start_new_session=True, preexec_fn=pin)
        except subprocess.TimeoutExpired as e:
            raise BenchError(f"{os.path.basename(argv[0])} timed out after {timeout:.0f} s") from e
        out = res.stdout.decode(errors="replace")
        log.write(out.encode())
    if res.returncode != 0:
        tail = " | ".join(out.splitlines()[-3:])
        raise BenchError(f"{os.path.basename(argv[0])} exited {res.returncode}: {tail}")
    return out


def result_line(out):
    """The JSON object of the last `RESULT {...}` line of a probe's output."""
    for line in reversed(out.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise BenchError("no RESULT line in the output")
