#!/usr/bin/env python3
"""What one client that never reads costs the others: redis-benchmark GET latency with
and without such a client, plain redis-server and the shim on each backend.

    scripts/redis/latency.py [--runs 3] [--requests 100000] [--shim PATH] [--flavors ...]
                             [--server-cpus LIST]

For each flavor (none = plain redis-server, then the shim on uring+sqpoll, uring,
threads, and kmod when /dev/fastio exists) one redis-server runs with
`client-output-buffer-limit pubsub 0 0 0` (so that the stuck subscriber stays), and a
publisher sends PUBLISH ch <1 KiB> at a steady rate (paced, 2000/s) the whole time.
Then, interleaved, `--runs` times each:

  without: redis-benchmark -c 50 -P 1 -t get -n N --csv
  with:    the same while two clients never read: a subscriber of `ch` (every publish
           adds to its output), and a client that sent 32 pipelined GETs of a 1 MiB value.
           They are in place (and the subscriber has been sent at least 4 MiB) before the
           benchmark starts, and are closed after it.

Prints a Markdown table: p99 and p50 (ms) and requests/s, median of the runs with min-max,
and the ratio of the p99 medians (with / without). The load average is printed before
and after: other work on the machine shows there.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONF = {
    "uring+sqpoll": 'backend = "uring"\nsqpoll = true\n',
    "uring": 'backend = "uring"\nsqpoll = false\n',
    "threads": 'backend = "threads"\n',
    "kmod": 'backend = "kmod"\n',
}


def resp(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


class Conn:
    """A blocking RESP connection that reads whole replies (enough for what is used here)."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exact(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def reply(self):
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.exact(n + 2)[:-2]
        if kind == b"*":
            return [self.reply() for _ in range(int(rest))]
        if kind == b":":
            return int(rest)
        if kind == b"-":
            raise RuntimeError(rest.decode())
        return rest.decode()

    def cmd(self, *args):
        self.s.sendall(resp(*args))
        return self.reply()

    def close(self):
        self.s.close()


class Publisher(threading.Thread):
    """PUBLISH ch <1 KiB> at `rate` per second, reading every reply."""

    def __init__(self, port, rate=2000):
        super().__init__(daemon=True)
        self.c = Conn(port)
        self.rate = rate
        self.stop = threading.Event()
        self.sent_to_subscribers = 0
        self.payload = b"m" * 1024

    def run(self):
        t0 = time.monotonic()
        n = 0
        while not self.stop.is_set():
            receivers = self.c.cmd("PUBLISH", "ch", self.payload)
            self.sent_to_subscribers += receivers * len(self.payload)
            n += 1
            # Pacing of the load (not synchronisation): n messages by n / rate seconds.
            ahead = t0 + n / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)


def wait_until(what, cond, limit=30.0):
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.01)


class Stuck:
    """The clients that never read."""

    def __init__(self, port, pub):
        self.sub = socket.create_connection(("127.0.0.1", port))
        self.sub.sendall(resp("CLIENT", "SETNAME", "stuck-sub") + resp("SUBSCRIBE", "ch"))
        self.get = socket.create_connection(("127.0.0.1", port))
        self.get.sendall(resp("CLIENT", "SETNAME", "stuck-get") + resp("GET", "big") * 32)
        ctl = Conn(port)
        wait_until("stuck clients in CLIENT LIST", lambda: self.listed(ctl) == 2)
        start = pub.sent_to_subscribers
        wait_until("4 MiB published to the subscriber",
                   lambda: pub.sent_to_subscribers - start >= 4 << 20)
        ctl.close()

    @staticmethod
    def listed(ctl):
        text = ctl.cmd("CLIENT", "LIST").decode()
        subs = sum(1 for l in text.splitlines() if "name=stuck-sub" in l and "sub=1" in l)
        gets = sum(1 for l in text.splitlines() if "name=stuck-get" in l and "cmd=get" in l)
        return subs + gets

    def close(self):
        self.sub.close()
        self.get.close()


def bench(port, n):
    out = subprocess.run(
        ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", "50", "-P", "1",
         "-t", "get", "-n", str(n), "--csv"],
        capture_output=True, text=True, timeout=600, check=True).stdout
    for line in out.splitlines():
        f = [x.strip('"') for x in line.split(",")]
        if f[0] == "GET":
            return {"rps": float(f[1]), "p50": float(f[4]), "p99": float(f[6])}
    raise RuntimeError("no GET line in: " + out)


def start_server(flavor, port, shim, tmp, server_cpus=None):
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if flavor != "none":
        conf = os.path.join(tmp, "fastio.conf")
        with open(conf, "w") as f:
            f.write(CONF[flavor])
            if server_cpus:
                # The workers on the first of the server's CPUs (affinity_offset counts
                # the CPUs the process may run on), next to Redis's thread.
                f.write("affinity_offset = 0\n")
        env.update(LD_PRELOAD=shim, FASTIO_CONF=conf)
    log = open(os.path.join(tmp, "redis-%s.log" % flavor.replace("+", "-")), "w")
    pin = ["taskset", "-c", server_cpus] if server_cpus else []
    p = subprocess.Popen(
        pin + ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--client-output-buffer-limit", "pubsub 0 0 0"],
        env=env, stdout=log, stderr=subprocess.STDOUT)

    def up():
        try:
            c = Conn(port)
            ok = c.cmd("PING") == "PONG"
            c.close()
            return ok
        except OSError:
            return False

    wait_until("redis-server answers PING", up, 20)
    return p


def stop_server(p, port):
    try:
        c = Conn(port)
        c.s.sendall(resp("SHUTDOWN", "NOSAVE"))
    except OSError:
        pass
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def fmt(values, digits):
    med = statistics.median(values)
    return "%.*f [%.*f-%.*f]" % (digits, med, digits, min(values), digits, max(values))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--requests", type=int, default=100000)
    ap.add_argument("--port", type=int, default=int(os.environ.get("PORT", 7380)))
    ap.add_argument("--shim", default=os.path.join(ROOT, "target/release/libfastio_redis_shim.so"))
    flavors = ["none", "uring+sqpoll", "uring", "threads"]
    if os.path.exists("/dev/fastio"):
        flavors.append("kmod")
    ap.add_argument("--flavors", nargs="+", default=flavors)
    ap.add_argument("--server-cpus", metavar="LIST",
                    help="run redis-server under taskset -c LIST, its fastio workers pinned "
                    "to the first of them (affinity_offset = 0); the clients stay unpinned")
    a = ap.parse_args()
    if any(f != "none" for f in a.flavors) and not os.path.isfile(a.shim):
        sys.exit("latency: %s not built: make build" % a.shim)
    print("load average before: %s" % open("/proc/loadavg").read().strip())
    print()
    print("redis-benchmark -c 50 -P 1 -t get -n %d, median of %d [min-max]; "
          "publisher 2000 x 1 KiB/s throughout%s" % (
              a.requests, a.runs,
              "; redis-server and its workers on CPUs %s" % a.server_cpus if a.server_cpus else ""))
    print()
    print("| redis-server | p99 without | p99 with stuck clients | p99 ratio "
          "| p50 without | p50 with | req/s without | req/s with |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for flavor in a.flavors:
            p = start_server(flavor, a.port, a.shim, tmp, a.server_cpus)
            try:
                c = Conn(a.port)
                c.cmd("SET", "big", b"v" * (1 << 20))
                c.close()
                pub = Publisher(a.port)
                pub.start()
                res = {"without": [], "with": []}
                for _ in range(a.runs):
                    for mode in ("without", "with"):
                        stuck = Stuck(a.port, pub) if mode == "with" else None
                        res[mode].append(bench(a.port, a.requests))
                        if stuck:
                            stuck.close()
                pub.stop.set()
                pub.join(10)
            finally:
                stop_server(p, a.port)
            col = lambda m, k: [r[k] for r in res[m]]
            ratio = statistics.median(col("with", "p99")) / statistics.median(col("without", "p99"))
            name = "plain" if flavor == "none" else "shim, " + flavor
            print("| %s | %s | %s | %.2f | %s | %s | %s | %s |" % (
                name, fmt(col("without", "p99"), 3), fmt(col("with", "p99"), 3), ratio,
                fmt(col("without", "p50"), 3), fmt(col("with", "p50"), 3),
                fmt(col("without", "rps"), 0), fmt(col("with", "rps"), 0)), flush=True)
    print()
    print("load average after: %s" % open("/proc/loadavg").read().strip())


if __name__ == "__main__":
    main()
