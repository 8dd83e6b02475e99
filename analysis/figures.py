"""The front of a search drawn honestly: as a PNG (``pareto/front.png``) and as a self-contained
interactive page (``pareto/front.html``) that MLflow's artifact viewer renders.

Both draw every finished trial (clean accuracy x, the second objective y), the front as a
staircase (the trade-offs a trial actually reached, not straight segments between them),
the knee and the paper's presets distinct and drawn so they hide nothing (hollow markers
on top), and trials that cannot be chosen marked: early-stopped (partial budget) as
triangles, infeasible as crosses. The page needs no script and no network: hover text is
SVG's ``<title>``, so it works inside MLflow's sandboxed viewer.
"""
from __future__ import annotations

import html

from analysis.trials import TrialRecord, key_weights, with_se
from derd.records import column_header

COLOURS = {"trial": "#b0b0b0", "front": "#d62728", "knee": "#1f77b4", "preset": "#2ca02c", "partial": "#ff7f0e",
           "infeasible": "#7f7f7f"}


def staircase(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The region a 2-D front dominates, as the polyline of its upper-right boundary.

    Points sorted by x descending (y rises as x falls); between two neighbours the line goes
    down-left only through corners no trial beats: (x1, y1) -> (x2, y1) -> (x2, y2).
    """
    pts = sorted(points, key=lambda p: (-p[0], p[1]))
    out: list[tuple[float, float]] = []
    for x, y in pts:
        if out:
            out.append((x, out[-1][1]))
        out.append((x, y))
    return out


def _axes(objectives: list[tuple[str, str]]) -> tuple[str, str]:
    return objectives[0][0], objectives[1][0]


def front_figure(records: list[TrialRecord], front: list[TrialRecord], knee: TrialRecord | None,
                 objectives: list[tuple[str, str]]):
    """matplotlib figure of the search's trials and front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mx, my = _axes(objectives)
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    groups = {
        "trial": [r for r in records if r.eligible and r not in front],
        "partial (stopped early)": [r for r in records if r.feasible and not r.full_budget],
        "infeasible (clean below threshold)": [r for r in records if not r.feasible],
    }
    styles = {"trial": dict(c=COLOURS["trial"], marker="o", edgecolors="grey"),
              "partial (stopped early)": dict(c=COLOURS["partial"], marker="^"),
              "infeasible (clean below threshold)": dict(c=COLOURS["infeasible"], marker="x")}
    for label, group in groups.items():
        if group:
            ax.scatter([r.metrics[mx] for r in group], [r.metrics[my] for r in group], s=36, zorder=2,
                       label=label, **styles[label])
    if front:
        line = staircase([(r.metrics[mx], r.metrics[my]) for r in front])
        ax.plot(*zip(*line), color=COLOURS["front"], zorder=3, linewidth=1.5)
        ax.scatter([r.metrics[mx] for r in front], [r.metrics[my] for r in front], c=COLOURS["front"], s=44, zorder=4,
                   label="Pareto front (staircase)")
    if knee is not None:
        ax.scatter([knee.metrics[mx]], [knee.metrics[my]], s=260, facecolors="none", edgecolors=COLOURS["knee"],
                   linewidths=2, zorder=5, label="knee")
    presets = [r for r in records if r.preset]
    if presets:
        ax.scatter([r.metrics[mx] for r in presets], [r.metrics[my] for r in presets], marker="*", s=330,
                   facecolors="none", edgecolors=COLOURS["preset"], linewidths=1.5, zorder=6, label="paper's preset")
    for r in records:
        ax.annotate(r.name.removeprefix("trial-"), (r.metrics[mx], r.metrics[my]), xytext=(4, 4),
                    textcoords="offset points", fontsize=7, color="#333333")
    ax.set_xlabel(column_header(mx) + " %")
    ax.set_ylabel(column_header(my) + " %")
    n = max((r.n_images for r in records), default=0)
    ax.set_title(f"Clean vs robust accuracy of the search's trials ({n} val images)" if n else
                 "Clean vs robust accuracy of the search's trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def front_html(records: list[TrialRecord], front: list[TrialRecord], knee: TrialRecord | None,
               objectives: list[tuple[str, str]], experiment_id: str, width: int = 760, height: int = 520) -> str:
    """A self-contained SVG page: every trial, the staircase front, knee and presets, hover text."""
    mx, my = _axes(objectives)
    xs = [r.metrics[mx] for r in records] or [0.0, 100.0]
    ys = [r.metrics[my] for r in records] or [0.0, 100.0]
    pad = 60
    span_x, span_y = (max(xs) - min(xs)) or 10.0, (max(ys) - min(ys)) or 10.0
    x0, x1 = min(xs) - 0.05 * span_x, max(xs) + 0.08 * span_x  # room for the labels on the right
    y0, y1 = min(ys) - 0.05 * span_y, max(ys) + 0.08 * span_y

    def px(x: float) -> float:
        return pad + (x - x0) / (x1 - x0 or 1) * (width - 2 * pad)

    def py(y: float) -> float:
        return height - pad - (y - y0) / (y1 - y0 or 1) * (height - 2 * pad)

    front_ids = {r.run_id for r in front}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
             f'<rect x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" fill="white" stroke="#999"/>']
    for i in range(6):  # grid and tick labels
        gx, gy = x0 + (x1 - x0) * i / 5, y0 + (y1 - y0) * i / 5
        parts.append(f'<line x1="{px(gx):.1f}" y1="{pad}" x2="{px(gx):.1f}" y2="{height - pad}" stroke="#eee"/>'
                     f'<text x="{px(gx):.1f}" y="{height - pad + 16}" text-anchor="middle">{gx:.1f}</text>')
        parts.append(f'<line x1="{pad}" y1="{py(gy):.1f}" x2="{width - pad}" y2="{py(gy):.1f}" stroke="#eee"/>'
                     f'<text x="{pad - 6}" y="{py(gy) + 4:.1f}" text-anchor="end">{gy:.1f}</text>')
    parts.append(f'<text x="{width / 2}" y="{height - 14}" text-anchor="middle">{html.escape(column_header(mx))} %</text>')
    parts.append(f'<text x="16" y="{height / 2}" text-anchor="middle" transform="rotate(-90 16 {height / 2})">'
                 f'{html.escape(column_header(my))} %</text>')
    if front:
        line = staircase([(r.metrics[mx], r.metrics[my]) for r in front])
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in line)
        parts.append(f'<polyline class="front" points="{path}" fill="none" stroke="{COLOURS["front"]}" stroke-width="2"/>')
    for r in records:
        cx, cy = px(r.metrics[mx]), py(r.metrics[my])
        kind = ("front" if r.run_id in front_ids else "infeasible" if not r.feasible
                else "partial" if not r.full_budget else "trial")
        link = f"#/experiments/{experiment_id}/runs/{r.run_id}"
        weights = ", ".join(f"{k}={v}" for k, v in key_weights(r).items())
        n = r.n_images
        title = (f"{r.name} ({r.method}){' - paper preset' if r.preset else ''}{' - knee' if knee is r else ''}\n"
                 f"{column_header(mx)}: {with_se(r.metrics[mx], n)}\n{column_header(my)}: {with_se(r.metrics[my], n)}\n"
                 f"epochs: {r.epochs}{' (stopped early)' if not r.full_budget else ''}"
                 f"{' - infeasible' if not r.feasible else ''}\n{weights}\nrun: {r.run_id}")
        if kind == "infeasible":
            shape = (f'<path d="M{cx - 5:.1f},{cy - 5:.1f} L{cx + 5:.1f},{cy + 5:.1f} M{cx - 5:.1f},{cy + 5:.1f} '
                     f'L{cx + 5:.1f},{cy - 5:.1f}" stroke="{COLOURS[kind]}" stroke-width="2"/>')
        elif kind == "partial":
            shape = (f'<polygon points="{cx:.1f},{cy - 6:.1f} {cx - 6:.1f},{cy + 5:.1f} {cx + 6:.1f},{cy + 5:.1f}" '
                     f'fill="{COLOURS[kind]}"/>')
        else:
            shape = f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{6 if kind == "front" else 5}" fill="{COLOURS[kind]}" stroke="#555"/>'
        extra = ""
        if knee is r:
            extra += f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="12" fill="none" stroke="{COLOURS["knee"]}" stroke-width="2"/>'
        if r.preset:
            extra += (f'<polygon points="{_star(cx, cy)}" fill="none" stroke="{COLOURS["preset"]}" stroke-width="1.5"/>')
        parts.append(f'<a href="{link}" target="_top"><g class="trial {kind}" data-run="{r.run_id}"><title>{html.escape(title)}'
                     f'</title>{shape}{extra}<text x="{cx + 7:.1f}" y="{cy - 7:.1f}" font-size="10" fill="#333">'
                     f'{html.escape(r.name.removeprefix("trial-"))}</text></g></a>')
    parts.append("</svg>")
    legend = "".join(f'<span style="color:{COLOURS[k]}">&#9679;</span> {label} &nbsp; ' for k, label in (
        ("front", "Pareto front (staircase)"), ("trial", "other trial"), ("partial", "stopped early (triangle)"),
        ("infeasible", "infeasible (cross)"), ("knee", "knee (ring)"), ("preset", "paper's preset (hollow star)")))
    n = max((r.n_images for r in records), default=0)
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>Pareto front</title></head>"
            "<body style='font-family:sans-serif'>"
            f"<h3>Clean vs robust accuracy: {len(records)} finished trials, front of {len(front)}</h3>"
            f"<p>Hover a point for its trial, scores (± one binomial standard error over {n} val images), key "
            f"weights and run id; click to open the run. Only feasible trials that ran the full budget can be on "
            f"the front.</p>{''.join(parts)}<p>{legend}</p></body></html>")


def _star(cx: float, cy: float, r: float = 13) -> str:
    import math

    pts = []
    for i in range(10):
        radius = r if i % 2 == 0 else r * 0.45
        angle = -math.pi / 2 + i * math.pi / 5
        pts.append(f"{cx + radius * math.cos(angle):.1f},{cy + radius * math.sin(angle):.1f}")
    return " ".join(pts)
