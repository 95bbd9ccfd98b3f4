"""CPU pinning of a benchmark run (make bench PIN_CLIENT=... PIN_SERVER=... PIN_WORKERS=...).

- client: the load clients (echo_bench, wake_probe, redis-benchmark) are started on
  CPUS (sched_setaffinity before exec, as `taskset -c CPUS` does);
- server: once a server listens, its serving threads (every thread that is not a lane,
  worker, SQPOLL or helper thread: procfs.thread_role) get sched_setaffinity(CPUS);
- workers: the config's `affinity_offset` is the first CPU of the list, so lane,
  threads-backend worker or SQPOLL thread i runs on CPU first + i (the runtime pins
  them; with more workers than listed CPUs they wrap around all CPUs, which the run
  reports). The server process itself is not started under taskset: the runtime takes
  `(affinity_offset + i) % CPUs it may use`, which needs every CPU.

CPU lists are taskset's: `0`, `2-3`, `0,2-3`."""

import os


def parse_cpus(text):
    """Sorted CPU numbers of a list such as "0,2-3"; ValueError if malformed."""
    cpus = set()
    for part in text.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise ValueError(f"bad CPU list {text!r} (want e.g. 0 or 2-3 or 0,2-3)")
        first, last = int(lo), int(hi) if dash else int(lo)
        if last < first:
            raise ValueError(f"bad CPU range {part!r} in {text!r}")
        cpus.update(range(first, last + 1))
    return sorted(cpus)


def fmt_cpus(cpus):
    """The shortest taskset list of sorted CPU numbers: [0, 2, 3] -> "0,2-3"."""
    out, start = [], None
    for i, c in enumerate(cpus):
        if start is None:
            start = c
        if i + 1 == len(cpus) or cpus[i + 1] != c + 1:
            out.append(str(start) if start == c else f"{start}-{c}")
            start = None
    return ",".join(out)


class Pins:
    """The CPUs of client, server and workers; each None when not pinned."""

    ROLES = ("client", "server", "workers")

    def __init__(self, client=None, server=None, workers=None):
        self.client = parse_cpus(client) if client else None
        self.server = parse_cpus(server) if server else None
        self.workers = parse_cpus(workers) if workers else None

    @classmethod
    def from_meta(cls, meta):
        """Pins from the {"client": "0", ...} of BENCHMARKS.json meta (None: none)."""
        return cls(**{k: (meta or {}).get(k) for k in cls.ROLES})

    def any(self):
        return any(getattr(self, r) for r in self.ROLES)

    def meta(self):
        """{"client": "0", "server": "1", "workers": "2-3"}, pinned roles only."""
        return {r: fmt_cpus(getattr(self, r)) for r in self.ROLES if getattr(self, r)}

    def argv(self):
        """bench.py options that give these pins to another invocation (the guest)."""
        out = []
        for role, cpus in self.meta().items():
            out += [f"--pin-{role}", cpus]
        return out

    def unusable(self, available):
        """Why these pins cannot be used on a machine whose usable CPUs are `available`
        (a set), or None."""
        for role in self.ROLES:
            missing = [c for c in getattr(self, role) or [] if c not in available]
            if missing:
                return (f"{role} CPU(s) {fmt_cpus(missing)} not available here (usable CPUs: "
                        f"{fmt_cpus(sorted(available))})")
        return None

    def affinity_offset(self):
        """The config's affinity_offset for the workers, or None."""
        return self.workers[0] if self.workers else None

    def worker_cpus(self, n, ncpu):
        """The CPUs of n workers as the runtime pins them: (offset + i) % ncpu."""
        off = self.affinity_offset()
        return None if off is None else [(off + i) % ncpu for i in range(n)]

    def describe(self):
        """One line for the report: what runs where."""
        if not self.any():
            return "not pinned (the scheduler places client, server and workers)"
        parts = []
        if self.client:
            parts.append(f"load client on CPU {fmt_cpus(self.client)}")
        if self.server:
            parts.append(f"serving threads on CPU {fmt_cpus(self.server)}")
        if self.workers:
            parts.append(f"lane/worker/SQPOLL thread i on CPU {self.workers[0]} + i "
                         f"(affinity_offset = {self.workers[0]}; CPUs {fmt_cpus(self.workers)})")
        return "; ".join(parts)


def usable_cpus():
    """The CPUs this process may run on."""
    return set(os.sched_getaffinity(0))
