"""The report's charts, drawn with matplotlib (Debian's python3-matplotlib, installed by
scripts/bench/deps.sh) as SVG files: a line chart over categories, stacked bars, and
the worker-scaling chart. Legends sit beside the axes and the figure is cropped to what
is drawn (bbox_inches="tight"), so no label is cut off. The output is deterministic
(no date, fixed ids): the same results give byte-identical files."""

import sys

# Where Debian's interpreter is (the one python3-matplotlib installs into).
SYSTEM_PYTHON = "/usr/bin/python3"
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f"]
_plt = None


def unavailable():
    """None if matplotlib can be used, else why not (one line)."""
    global _plt  # pylint: disable=global-statement
    if _plt is not None:
        return None
    try:
        import matplotlib  # pylint: disable=import-outside-toplevel
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        return (f"matplotlib cannot be imported by {sys.executable} ({e}); install Debian's "
                "python3-matplotlib (scripts/bench/deps.sh does) and run the report with "
                f"{SYSTEM_PYTHON}")
    plt.rcParams.update({"svg.hashsalt": "fastio-rs", "font.size": 10,
                         "axes.titlesize": 11, "axes.grid": True, "grid.color": "#dddddd",
                         "axes.axisbelow": True})
    _plt = plt
    return None


def _save(fig, path):
    fig.savefig(path, format="svg", bbox_inches="tight", metadata={"Date": None})
    _plt.close(fig)


def _legend(ax):
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)


def line_chart(path, title, ylabel, xlabel, categories, series):
    """series: [(name, [value or None per category])]; categories evenly spaced."""
    fig, ax = _plt.subplots(figsize=(8, 4.2))
    xs = list(range(len(categories)))
    for i, (name, ys) in enumerate(series):
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name,
                    color=COLORS[i % len(COLORS)], linewidth=2)
    ax.set_xticks(xs, [str(c) for c in categories])
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    _legend(ax)
    _save(fig, path)


def stacked_bars(path, title, ylabel, categories, parts):
    """parts: [(name, [value or None per category])], stacked bottom-up."""
    fig, ax = _plt.subplots(figsize=(8, 4.2))
    xs = list(range(len(categories)))
    base = [0.0] * len(categories)
    for i, (name, vals) in enumerate(parts):
        vals = [v or 0.0 for v in vals]
        ax.bar(xs, vals, 0.6, bottom=base, label=name, color=COLORS[i % len(COLORS)])
        base = [b + v for b, v in zip(base, vals)]
    ax.set_xticks(xs, categories, rotation=20, ha="right")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    _legend(ax)
    _save(fig, path)


def scaling_chart(path, title, workers, panels, ref_name="reference"):
    """Side-by-side panels over the number of workers: panels is [(ylabel, [(series
    name, [value or None per worker count])], reference value or None)]; a reference is
    drawn as a dashed horizontal line named ref_name."""
    fig, axes = _plt.subplots(1, len(panels), figsize=(10, 3.8), squeeze=False)
    for ax, (ylabel, series, ref) in zip(axes[0], panels):
        for i, (name, ys) in enumerate(series):
            pts = [(w, y) for w, y in zip(workers, ys) if y is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name,
                        color=COLORS[i % len(COLORS)], linewidth=2)
        if ref is not None:
            ax.axhline(ref, color="#555555", linestyle="--", linewidth=1.5, label=ref_name)
        ax.set_xticks(workers)
        ax.set_xlabel("workers (max_ker_worker)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
    fig.suptitle(title)
    _legend(axes[0][-1])
    _save(fig, path)
