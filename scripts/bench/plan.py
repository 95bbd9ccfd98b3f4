"""What is measured: the cells of one environment (host or vm), quick or full."""

import glob
import os
import shutil

FULL = {"reps": 3, "echo_conns": [1, 25, 256, 1000], "echo_lens": [64, 512, 4096],
        "echo_secs": {"host": 1, "vm": 2}, "nop_secs": 2, "nop_depths": [1, 32],
        "idle_secs": 10, "probe_idle": 1, "redis_n": {"host": 200_000, "vm": 20_000},
        "rawcmp_reps": 5, "rawcmp_secs": 3}
QUICK = {"reps": 1, "echo_conns": [1, 25, 1000], "echo_lens": [512],
         "echo_secs": {"host": 1, "vm": 1}, "nop_secs": 1, "nop_depths": [1, 32],
         "idle_secs": 5, "probe_idle": 1, "redis_n": {"host": 50_000, "vm": 5_000},
         "rawcmp_reps": 1, "rawcmp_secs": 1}

# Cell-id prefixes to run (None: every cell); set by `bench.py run --only`.
ONLY = None
# Workers of the scaling table: 1..MAX_WORKERS (bench.py raises it to the number of
# pinned worker CPUs, so PIN_WORKERS=2-6 measures 1..5 workers).
MAX_WORKERS = 4

# The headline cell: echo_bench -c 25 -l 512.
HEAD_CONNS, HEAD_LEN = 25, 512
REDIS_PIPELINES = [1, 16]


def echo_servers(env):
    servers = ["epoll", "uring", "uring-sqpoll", "threads"]
    return servers + (["kmod-w1", "kmod-w2"] if env == "vm" else [])


def nop_backends(env):
    return (["kmod"] if env == "vm" else []) + ["uring-sqpoll", "uring", "threads"]


def scaling_servers(env):
    """epoll_echo_server (the reference) and the polling servers with 1..MAX_WORKERS."""
    kinds = (["kmod"] if env == "vm" else []) + ["threads"]
    return ["epoll"] + [f"{k}-w{w}" for k in kinds for w in range(1, MAX_WORKERS + 1)]


def idle_servers(env):
    return (["kmod-w1"] if env == "vm" else []) + ["threads", "uring-sqpoll", "epoll"]


def redis_variants(env):
    return ["plain"] + (["kmod-w1"] if env == "vm" else []) + ["uring-sqpoll", "uring", "threads"]


def find_shim(repo):
    """The redis-shim LD_PRELOAD library, if it was built."""
    rel = os.path.join(repo, "target", "release")
    for name in ("libfastio_redis_shim.so", "libredis_shim.so", "libfastio_redis.so"):
        if os.path.isfile(os.path.join(rel, name)):
            return os.path.join(rel, name)
    found = sorted(glob.glob(os.path.join(rel, "lib*redis*.so")))
    return found[0] if found else None


class Job:
    """One run of one cell. skip: the reason it is not run (None: run it)."""

    def __init__(self, kind, cell_id, params, rep, reps, est, skip=None):
        self.kind, self.cell_id, self.params = kind, cell_id, params
        self.rep, self.reps, self.est, self.skip = rep, reps, est, skip


def interleave(cells, reps):
    """Jobs with the repetitions outermost, so that a slow phase of the machine hits
    every cell of a group alike: cells is [(kind, id, params, est, skip)]."""
    return [Job(k, i, p, r, reps, e, s) for r in range(reps) for (k, i, p, e, s) in cells]


def kmod_skip(server, kmod_reason):
    return kmod_reason if server.startswith("kmod") else None


def nop_jobs(env, cfg, kmod_reason):
    cells = [("nop", f"nop/{b}/d{d}", {"backend": b, "depth": d, "secs": cfg["nop_secs"]},
              cfg["nop_secs"] + 1.5, kmod_skip(b, kmod_reason))
             for d in cfg["nop_depths"] for b in nop_backends(env)]
    return interleave(cells, cfg["reps"])


def echo_group(prefix, servers, conns, length, secs, slack, reps, kmod_reason):
    """One interleaved group of echo cells `prefix/SERVER/cCONNS/lLENGTH`."""
    cells = [("echo", f"{prefix}/{s}/c{conns}/l{length}",
              {"server": s, "conns": conns, "length": length, "secs": secs},
              secs + slack + conns / 500, kmod_skip(s, kmod_reason))
             for s in servers]
    return interleave(cells, reps)


def echo_jobs(env, cfg, kmod_reason):
    secs = cfg["echo_secs"][env]
    return [j for length in cfg["echo_lens"] for conns in cfg["echo_conns"]
            for j in echo_group("echo", echo_servers(env), conns, length, secs, 1.0,
                                cfg["reps"], kmod_reason)]


def rawcmp_servers(env):
    """The proactor servers whose two forms (async runtime, --raw loop) are compared."""
    return [s for s in echo_servers(env) if s != "epoll"]


def rawcmp_jobs(env, cfg, kmod_reason):
    """proactor_echo_server on fastio::rt against its --raw loop, at the headline cell,
    in one interleaved group so that both forms see the same machine; longer runs and
    more of them than the echo table (a 5% goal needs less noise than a 2x one)."""
    secs = cfg["rawcmp_secs"]
    cells = [("echo", f"rawcmp/{s}{form}/c{HEAD_CONNS}/l{HEAD_LEN}",
              {"server": s + form, "conns": HEAD_CONNS, "length": HEAD_LEN, "secs": secs},
              secs + 1.5, kmod_skip(s, kmod_reason))
             for s in rawcmp_servers(env) for form in ("", "-raw")]
    return interleave(cells, cfg["rawcmp_reps"])


INLINE_CONNS = [1, 25, 256]


def inline_servers(env):
    """The module's two execution policies side by side (kmod_inline: `-inline` always,
    `-poll` never; see cells.server_config), with epoll and io_uring as the references."""
    if env != "vm":
        return []
    return ["epoll", "uring"] + [f"kmod-w{w}{m}" for w in (1, 2) for m in ("-inline", "-poll")]


def inline_jobs(env, cfg, kmod_reason):
    """ENTER_INLINE on and off, interleaved run by run, at 1/25/256 connections x 512 B."""
    return [j for conns in INLINE_CONNS
            for j in echo_group("inline", inline_servers(env), conns, HEAD_LEN,
                                cfg["rawcmp_secs"], 1.5, cfg["reps"], kmod_reason)]


def multishot_servers(env):
    """The completion loop with one RECV per request (`-raw`) against multishot RECV
    from a provided-buffer group (`-ms`), per backend, with epoll as the reference."""
    backends = (["kmod-w1"] if env == "vm" else []) + ["uring", "threads"]
    return ["epoll"] + [f"{b}{form}" for b in backends for form in ("-raw", "-ms")]


def multishot_jobs(env, cfg, kmod_reason):
    """Multishot RECV cuts one SQE per request: measured at 25 and 256 connections x
    512 B, interleaved run by run."""
    return [j for conns in (HEAD_CONNS, 256)
            for j in echo_group("multishot", multishot_servers(env), conns, HEAD_LEN,
                                cfg["rawcmp_secs"], 1.5, cfg["reps"], kmod_reason)]


def syscall_jobs(env, cfg, kmod_reason, strace):
    secs = cfg["echo_secs"][env]
    no_strace = None if strace else "strace not installed (apt-get install strace)"
    cells = [("syscalls", f"syscalls/{s}/c{HEAD_CONNS}/l{HEAD_LEN}",
              {"server": s, "conns": HEAD_CONNS, "length": HEAD_LEN, "secs": secs},
              secs + 3.0, kmod_skip(s, kmod_reason) or no_strace)
             for s in echo_servers(env)]
    return interleave(cells, cfg["reps"])


def scaling_jobs(env, cfg, kmod_reason):
    secs = cfg["echo_secs"][env]
    cells = [("echo", f"scaling/{s}/c{HEAD_CONNS}/l{HEAD_LEN}",
              {"server": s, "conns": HEAD_CONNS, "length": HEAD_LEN, "secs": secs},
              secs + 1.5, kmod_skip(s, kmod_reason))
             for s in scaling_servers(env)]
    return interleave(cells, cfg["reps"])


def idle_jobs(env, cfg, kmod_reason):
    p = {"idle_secs": cfg["idle_secs"], "probe_idle": cfg["probe_idle"], "load_secs": 1}
    est = p["idle_secs"] + 3 * (p["probe_idle"] + 0.3) + 3
    cells = [("idle", f"idle/{s}", dict(p, server=s), est, kmod_skip(s, kmod_reason))
             for s in idle_servers(env)]
    return interleave(cells, cfg["reps"])


def redis_skip_reason(variant, shim, kmod_reason, shim_reason):
    if not (shutil.which("redis-server") and shutil.which("redis-benchmark")):
        return "redis-server/redis-benchmark not installed (apt-get install redis-server redis-tools)"
    if variant != "plain" and shim_reason:
        return shim_reason
    if variant != "plain" and shim is None:
        return "redis-shim not built (no target/release/libfastio_redis_shim.so)"
    return kmod_skip(variant, kmod_reason)


def redis_jobs(env, cfg, kmod_reason, shim, shim_reason):
    n = cfg["redis_n"][env]
    cells = [("redis", f"redis/{v}/P{p}",
              {"variant": v, "shim": shim, "pipeline": p, "requests": n * (4 if p > 1 else 1)},
              n / (20_000 if env == "vm" else 100_000) * 2 + 2,
              redis_skip_reason(v, shim, kmod_reason, shim_reason))
             for p in REDIS_PIPELINES for v in redis_variants(env)]
    return interleave(cells, cfg["reps"])


def jobs(env, quick, repo, kmod_reason=None, shim_reason=None):
    """Every job of env, in the order they run. kmod_reason, shim_reason: why the kmod
    cells and the Redis shim cells cannot run (None: they can)."""
    cfg = QUICK if quick else FULL
    if env != "vm":
        kmod_reason = "host kernel has no module support (kmod runs in the VM only)"
    shim = find_shim(repo)
    every = (nop_jobs(env, cfg, kmod_reason) + echo_jobs(env, cfg, kmod_reason)
             + rawcmp_jobs(env, cfg, kmod_reason) + inline_jobs(env, cfg, kmod_reason)
             + multishot_jobs(env, cfg, kmod_reason)
             + syscall_jobs(env, cfg, kmod_reason, shutil.which("strace") is not None)
             + scaling_jobs(env, cfg, kmod_reason) + idle_jobs(env, cfg, kmod_reason)
             + redis_jobs(env, cfg, kmod_reason, shim, shim_reason))
    return every if ONLY is None else [j for j in every if j.cell_id.startswith(ONLY)]


def config(quick):
    return QUICK if quick else FULL
