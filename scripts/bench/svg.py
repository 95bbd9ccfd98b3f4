"""Dependency-free SVG charts: a line chart over categories and a stacked bar chart."""

import math
from xml.sax.saxutils import escape

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f"]
W, H = 720, 420
LEFT, RIGHT, TOP, BOTTOM = 80, 170, 40, 60


def nice_max(v):
    """A round axis maximum at or above v."""
    if v <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(v))
    for step in (1, 2, 2.5, 5, 10):
        if step * mag >= v:
            return step * mag
    return 10 * mag


def fmt_num(v):
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def frame(title, ylabel, xlabel, ymax):
    """The SVG header, title, axes and horizontal grid of a chart."""
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="14">{escape(title)}</text>',
           f'<text x="{LEFT + pw / 2}" y="{H - 15}" text-anchor="middle">{escape(xlabel)}</text>',
           f'<text transform="translate(18,{TOP + ph / 2}) rotate(-90)" '
           f'text-anchor="middle">{escape(ylabel)}</text>']
    for i in range(6):
        y = TOP + ph - ph * i / 5
        out.append(f'<line x1="{LEFT}" y1="{y}" x2="{LEFT + pw}" y2="{y}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4}" text-anchor="end">'
                   f'{fmt_num(ymax * i / 5)}</text>')
    out.append(f'<line x1="{LEFT}" y1="{TOP + ph}" x2="{LEFT + pw}" y2="{TOP + ph}" '
               f'stroke="black"/>')
    return out


def legend(names):
    out = []
    for i, name in enumerate(names):
        y = TOP + 10 + 18 * i
        x = W - RIGHT + 15
        out.append(f'<rect x="{x}" y="{y - 9}" width="12" height="12" '
                   f'fill="{COLORS[i % len(COLORS)]}"/>')
        out.append(f'<text x="{x + 18}" y="{y + 1}">{escape(name)}</text>')
    return out


def line_chart(title, ylabel, xlabel, categories, series):
    """series: [(name, [value or None per category])]. Returns the SVG text."""
    vals = [v for _, ys in series for v in ys if v is not None]
    ymax = nice_max(max(vals) if vals else 1)
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    out = frame(title, ylabel, xlabel, ymax)
    n = len(categories)
    xs = [LEFT + pw * (i + 0.5) / n for i in range(n)]
    for x, c in zip(xs, categories):
        out.append(f'<text x="{x}" y="{TOP + ph + 18}" text-anchor="middle">{escape(str(c))}</text>')
    for i, (_, ys) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        pts = [(x, TOP + ph - ph * v / ymax) for x, v in zip(xs, ys) if v is not None]
        if len(pts) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}"/>' for x, y in pts]
    out += legend([name for name, _ in series])
    out.append("</svg>")
    return "\n".join(out) + "\n"


def stacked_bars(title, ylabel, xlabel, categories, parts):
    """parts: [(name, [value or None per category])], stacked bottom-up. Returns SVG."""
    totals = [sum(p[1][i] or 0 for p in parts) for i in range(len(categories))]
    ymax = nice_max(max(totals) if totals else 1)
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    out = frame(title, ylabel, xlabel, ymax)
    n = len(categories)
    bw = pw / n * 0.6
    for i, c in enumerate(categories):
        x = LEFT + pw * (i + 0.5) / n
        out.append(f'<text x="{x}" y="{TOP + ph + 18}" text-anchor="middle">{escape(str(c))}</text>')
        base = 0.0
        for j, (_, vals) in enumerate(parts):
            v = vals[i] or 0
            if v <= 0:
                continue
            y0, y1 = TOP + ph - ph * base / ymax, TOP + ph - ph * (base + v) / ymax
            out.append(f'<rect x="{x - bw / 2:.1f}" y="{y1:.1f}" width="{bw:.1f}" '
                       f'height="{y0 - y1:.1f}" fill="{COLORS[j % len(COLORS)]}"/>')
            base += v
    out += legend([name for name, _ in parts])
    out.append("</svg>")
    return "\n".join(out) + "\n"
