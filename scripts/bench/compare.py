"""make bench-compare: the ratio new/base of every cell's median, per metric, and the
regressions beyond a threshold (in the metric's bad direction). A cell that ran in the
base but failed in the new run is a regression too; cells that only one run measured
(a quick run against a full one, an --only run) are counted, not flagged. The exit
status is 1 when anything regressed, 2 without a baseline, else 0."""

import json
import subprocess

# Metrics compared, and whether higher is better.
METRICS = {
    "rps": True, "ops_per_sec": True, "set_rps": True, "get_rps": True,
    "p50_us": False, "p99_us": False, "syscalls_per_req": False, "cpu_s_per_100k": False,
    "ctxsw_per_req": False, "idle_cpu_ms": False, "steady_cpu_ms_per_s": False,
    "first_us": False,
}
# Below these absolute changes a difference is noise, not a regression (a serving thread
# at 0.001 syscalls per request that goes to 0.002 has not regressed by 100 %).
FLOORS = {"syscalls_per_req": 0.05, "idle_cpu_ms": 20.0, "ctxsw_per_req": 0.05,
          "steady_cpu_ms_per_s": 5.0}


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
        if c.get("status") != "ok":
            continue
        for metric, s in (c.get("summary") or {}).items():
            if metric in METRICS and isinstance(s, dict) and s.get("median") is not None:
                out[(c["env"], c["id"], metric)] = s["median"]
    return out


def statuses(results):
    """{(env, cell id): status}."""
    return {(c["env"], c["id"]): c.get("status") for c in results.get("cells", [])}


def verdict(metric, old, new, threshold):
    """(new/old or None when old is 0, is_regression): worse by more than threshold %
    in the metric's bad direction, and by more than its noise floor."""
    higher_better = METRICS[metric]
    if abs(new - old) <= FLOORS.get(metric, 0.0):
        return (new / old if old else None), False
    if old == 0:
        # From nothing to something: only a cost (lower is better) can regress so.
        return None, (not higher_better) and new > 0
    ratio = new / old
    worse = ratio < 1 - threshold / 100 if higher_better else ratio > 1 + threshold / 100
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
    bs, ns = statuses(base), statuses(new)
    failed = sorted(k for k in bs if bs[k] == "ok" and ns.get(k) == "failed")
    for key in failed:
        lines.append(f"{key[0]:5} {key[1]:40} {'(cell)':18} {'ok':>12} {'failed':>12} "
                     f"{'-':>9}  REGRESSION")
        regressions += 1
    only = len([k for k in set(b) ^ set(n) if k[:2] not in failed])
    if only:
        lines.append(f"({only} cell metric(s) measured in only one of the two runs: not compared)")
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
