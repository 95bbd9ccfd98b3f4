"""make bench-compare: the ratio new/base of every cell's median, per metric, and the
regressions beyond a threshold (in the metric's bad direction)."""

import json
import subprocess

# Metrics compared, and whether higher is better.
METRICS = {
    "rps": True, "ops_per_sec": True, "set_rps": True, "get_rps": True,
    "p99_us": False, "syscalls_per_req": False, "cpu_s_per_100k": False,
    "ctxsw_per_req": False, "idle_cpu_ms": False, "first_us": False,
}
# Below these absolute values a change is noise, not a regression.
FLOORS = {"syscalls_per_req": 0.05, "idle_cpu_ms": 20.0, "ctxsw_per_req": 0.05}


def load_base(repo, path):
    """The baseline: a file, or BENCHMARKS.json as committed at git HEAD."""
    if path:
        with open(path, encoding="utf-8") as f:
            return json.load(f), path
    res = subprocess.run(["git", "show", "HEAD:BENCHMARKS.json"], cwd=repo, check=False,
                         capture_output=True, text=True)
    if res.returncode != 0:
        return None, "git HEAD:BENCHMARKS.json"
    return json.loads(res.stdout), "git HEAD:BENCHMARKS.json"


def medians(results):
    """{(env, cell id, metric): median} of the cells that ran."""
    out = {}
    for c in results.get("cells", []):
        for metric, s in (c.get("summary") or {}).items():
            if metric in METRICS and isinstance(s, dict) and s.get("median") is not None:
                out[(c["env"], c["id"], metric)] = s["median"]
    return out


def verdict(metric, old, new, threshold):
    """(ratio, is_regression)."""
    if old == 0:
        return None, False
    ratio = new / old
    worse = ratio < 1 - threshold / 100 if METRICS[metric] else ratio > 1 + threshold / 100
    if worse and abs(new - old) < FLOORS.get(metric, 0.0):
        worse = False
    return ratio, worse


def compare(base, new, threshold):
    """Lines of the comparison table and the number of regressions."""
    b, n = medians(base), medians(new)
    lines = [f"{'env':5} {'cell':40} {'metric':18} {'base':>12} {'new':>12} {'new/base':>9}"]
    regressions = 0
    for key in sorted(set(b) & set(n)):
        env, cell, metric = key
        ratio, worse = verdict(metric, b[key], n[key], threshold)
        mark = "  REGRESSION" if worse else ""
        regressions += worse
        r = f"{ratio:9.2f}" if ratio is not None else f"{'-':>9}"
        lines.append(f"{env:5} {cell:40} {metric:18} {b[key]:12.4g} {n[key]:12.4g} {r}{mark}")
    only = len(set(b) ^ set(n))
    if only:
        lines.append(f"({only} cell metric(s) present in only one of the two runs)")
    return lines, regressions


def main(repo, base_path, new_path, threshold):
    base, base_name = load_base(repo, base_path)
    if base is None:
        print(f"bench-compare: no baseline ({base_name}); give one with BASE=file")
        return 2
    with open(new_path, encoding="utf-8") as f:
        new = json.load(f)
    print(f"bench-compare: {new_path} ({new['meta']['started']}, {new['meta']['mode']}) vs "
          f"{base_name} ({base['meta']['started']}, {base['meta']['mode']}); "
          f"regression threshold {threshold:g}%")
    if base["meta"]["mode"] != new["meta"]["mode"]:
        print("bench-compare: note: quick and full runs differ in durations and repetitions")
    lines, regressions = compare(base, new, threshold)
    print("\n".join(lines))
    print(f"bench-compare: {regressions} regression(s) over {threshold:g}%")
    return 1 if regressions else 0
