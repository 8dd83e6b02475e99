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
import math

from analysis.trials import TrialRecord, key_weights, with_se
from derd.evaluate import column_header
from tuning.records import run_link

COLOURS = {
    "trial": "#b0b0b0",
    "front": "#d62728",
    "knee": "#1f77b4",
    "preset": "#2ca02c",
    "partial": "#ff7f0e",
    "infeasible": "#7f7f7f",
}


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


def front_figure(
    records: list[TrialRecord],
    front: list[TrialRecord],
    knee: TrialRecord | None,
    objectives: list[tuple[str, str]],
):
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
    styles = {
        "trial": dict(c=COLOURS["trial"], marker="o", edgecolors="grey"),
        "partial (stopped early)": dict(c=COLOURS["partial"], marker="^"),
        "infeasible (clean below threshold)": dict(c=COLOURS["infeasible"], marker="x"),
    }
    for label, group in groups.items():
        if group:
            ax.scatter(
                [r.metrics[mx] for r in group],
                [r.metrics[my] for r in group],
                s=36,
                zorder=2,
                label=label,
                **styles[label],
            )
    if front:
        line = staircase([(r.metrics[mx], r.metrics[my]) for r in front])
        ax.plot(*zip(*line), color=COLOURS["front"], zorder=3, linewidth=1.5)
        ax.scatter(
            [r.metrics[mx] for r in front],
            [r.metrics[my] for r in front],
            c=COLOURS["front"],
            s=44,
            zorder=4,
            label="Pareto front (staircase)",
        )
    if knee is not None:
        ax.scatter(
            [knee.metrics[mx]],
            [knee.metrics[my]],
            s=260,
            facecolors="none",
            edgecolors=COLOURS["knee"],
            linewidths=2,
            zorder=5,
            label="knee",
        )
    presets = [r for r in records if r.preset]
    if presets:
        ax.scatter(
            [r.metrics[mx] for r in presets],
            [r.metrics[my] for r in presets],
            marker="*",
            s=330,
            facecolors="none",
            edgecolors=COLOURS["preset"],
            linewidths=1.5,
            zorder=6,
            label="paper's preset",
        )
    for r in records:
        ax.annotate(
            r.name.removeprefix("trial-"),
            (r.metrics[mx], r.metrics[my]),
            xytext=(4, 4),
            textcoords="offset points",
            fontsize=7,
            color="#333333",
        )
    ax.set_xlabel(column_header(mx) + " %")
    ax.set_ylabel(column_header(my) + " %")
    n = max((r.n_images for r in records), default=0)
    ax.set_title(
        f"Clean vs robust accuracy of the search's trials ({n} val images)"
        if n
        else "Clean vs robust accuracy of the search's trials"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def _label_spots(
    points: list[tuple[float, float, str]],
    bounds: tuple[float, float, float, float],
    char_w: float = 6.0,
    text_h: float = 10.0,
    radius: float = 7.0,
) -> list[tuple[float, float] | None]:
    """Where each point's label goes (its text's lower-left corner), or None where every spot beside the
    point would cover another label or point or leave the plot: the hover text still names it."""
    left, top, right, bottom = bounds
    taken = [(x - radius, y - radius, x + radius, y + radius) for x, y, _ in points]
    out: list[tuple[float, float] | None] = []
    for x, y, text in points:
        w = char_w * len(text)
        spot = None
        for dx, dy in (
            (radius, -radius),
            (radius, radius + text_h),
            (-radius - w, -radius),
            (-radius - w, radius + text_h),
        ):
            box = (x + dx, y + dy - text_h, x + dx + w, y + dy)
            inside = left <= box[0] and box[2] <= right and top <= box[1] and box[3] <= bottom
            own = (x - radius, y - radius, x + radius, y + radius)
            if inside and not any(_overlap(box, other) for other in taken if other != own):
                spot = (x + dx, y + dy)
                taken.append(box)
                break
        out.append(spot)
    return out


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _marker(kind: str, cx: float, cy: float) -> str:
    if kind == "infeasible":
        return (
            f'<path d="M{cx - 5:.1f},{cy - 5:.1f} L{cx + 5:.1f},{cy + 5:.1f} M{cx - 5:.1f},{cy + 5:.1f} '
            f'L{cx + 5:.1f},{cy - 5:.1f}" stroke="{COLOURS[kind]}" stroke-width="2"/>'
        )
    if kind == "partial":
        return (
            f'<polygon points="{cx:.1f},{cy - 6:.1f} {cx - 6:.1f},{cy + 5:.1f} {cx + 6:.1f},{cy + 5:.1f}" '
            f'fill="{COLOURS[kind]}"/>'
        )
    if kind == "knee":
        return f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="9" fill="none" stroke="{COLOURS["knee"]}" stroke-width="2"/>'
    if kind == "preset":
        return f'<polygon points="{_star(cx, cy, 9)}" fill="none" stroke="{COLOURS["preset"]}" stroke-width="1.5"/>'
    return f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{6 if kind == "front" else 5}" fill="{COLOURS[kind]}" stroke="#555"/>'


LEGEND = (
    ("front", "Pareto front (staircase)"),
    ("trial", "other trial"),
    ("partial", "stopped early"),
    ("infeasible", "infeasible"),
    ("knee", "knee"),
    ("preset", "paper's preset"),
)


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round axis ticks that cover [lo, hi]: about ``target`` intervals of a step of 1, 2 or 5 times a
    power of ten, from the last multiple of the step at or below ``lo`` to the first at or above ``hi``
    (so the axis starts and ends on a tick)."""
    if not hi > lo:
        lo, hi = lo - 1.0, hi + 1.0
    raw = (hi - lo) / target
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def tick_label(value: float, step: float) -> str:
    """A tick's text with as many decimals as its step needs (``20``, ``2.5``, ``0.05``)."""
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{value:.{decimals}f}"


class PlotArea:
    """The plot's rectangle in SVG pixels and the data range it shows; maps data to pixels."""

    def __init__(
        self, box: tuple[float, float, float, float], xticks: list[float], yticks: list[float]
    ) -> None:
        self.left, self.top, self.right, self.bottom = box
        self.xticks, self.yticks = xticks, yticks

    def px(self, x: float) -> float:
        x0, x1 = self.xticks[0], self.xticks[-1]
        return self.left + (x - x0) / (x1 - x0 or 1) * (self.right - self.left)

    def py(self, y: float) -> float:
        y0, y1 = self.yticks[0], self.yticks[-1]
        return self.bottom - (y - y0) / (y1 - y0 or 1) * (self.bottom - self.top)


def plot_area(xs: list[float], ys: list[float], width: int, height: int) -> PlotArea:
    """The plot area of a page ``width`` x ``height`` (below it: ticks, axis title, legend) over round
    ticks that hold every point with a margin."""
    span_x, span_y = (max(xs) - min(xs)) or 10.0, (max(ys) - min(ys)) or 10.0
    xticks = nice_ticks(min(xs) - 0.04 * span_x, max(xs) + 0.04 * span_x)
    yticks = nice_ticks(min(ys) - 0.04 * span_y, max(ys) + 0.06 * span_y)
    return PlotArea((62, 12, width - 14, height - 78), xticks, yticks)


def axes_svg(area: PlotArea, x_title: str, y_title: str) -> list[str]:
    """The plot area's frame, grid lines and tick labels at its round ticks, and the axis titles."""
    left, top, right, bottom = area.left, area.top, area.right, area.bottom
    parts = [
        f'<rect class="plot-area" x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="white" '
        f'stroke="#999"/>'
    ]
    xstep, ystep = area.xticks[1] - area.xticks[0], area.yticks[1] - area.yticks[0]
    for gx in area.xticks:
        parts.append(
            f'<line x1="{area.px(gx):.1f}" y1="{top}" x2="{area.px(gx):.1f}" y2="{bottom}" stroke="#eee"/>'
            f'<text class="xtick" x="{area.px(gx):.1f}" y="{bottom + 16}" text-anchor="middle">'
            f"{tick_label(gx, xstep)}</text>"
        )
    for gy in area.yticks:
        parts.append(
            f'<line x1="{left}" y1="{area.py(gy):.1f}" x2="{right}" y2="{area.py(gy):.1f}" stroke="#eee"/>'
            f'<text class="ytick" x="{left - 6}" y="{area.py(gy) + 4:.1f}" text-anchor="end">'
            f"{tick_label(gy, ystep)}</text>"
        )
    parts.append(
        f'<text x="{(left + right) / 2}" y="{bottom + 34}" text-anchor="middle">{html.escape(x_title)} %</text>'
    )
    mid = (top + bottom) / 2
    parts.append(
        f'<text x="16" y="{mid}" text-anchor="middle" transform="rotate(-90 16 {mid})">'
        f"{html.escape(y_title)} %</text>"
    )
    return parts


def points_svg(
    area: PlotArea,
    records: list[TrialRecord],
    front: list[TrialRecord],
    knee: TrialRecord | None,
    mx: str,
    my: str,
    experiment_id: str,
) -> list[str]:
    """The front's staircase and every trial as a marker with its label (where it fits), hover text and
    a link to its run."""
    front_ids = {r.run_id for r in front}
    parts = []
    if front:
        line = staircase([(r.metrics[mx], r.metrics[my]) for r in front])
        path = " ".join(f"{area.px(x):.1f},{area.py(y):.1f}" for x, y in line)
        parts.append(
            f'<polyline class="front" points="{path}" fill="none" stroke="{COLOURS["front"]}" stroke-width="2"/>'
        )
    shown = sorted(records, key=lambda r: r.run_id not in front_ids)  # the front's labels are placed first
    spots = dict(
        zip(
            (r.run_id for r in shown),
            _label_spots(
                [
                    (area.px(r.metrics[mx]), area.py(r.metrics[my]), r.name.removeprefix("trial-"))
                    for r in shown
                ],
                (area.left, area.top, area.right, area.bottom),
            ),
        )
    )
    for r in records:
        cx, cy = area.px(r.metrics[mx]), area.py(r.metrics[my])
        kind = (
            "front"
            if r.run_id in front_ids
            else "infeasible"
            if not r.feasible
            else "partial"
            if not r.full_budget
            else "trial"
        )
        weights = ", ".join(f"{k}={v}" for k, v in key_weights(r).items())
        n = r.n_images
        title = (
            f"{r.name} ({r.shown_method}){' - paper preset' if r.preset else ''}{' - knee' if knee is r else ''}\n"
            f"{column_header(mx)}: {with_se(r.metrics[mx], n)}\n{column_header(my)}: {with_se(r.metrics[my], n)}\n"
            f"epochs: {r.epochs}{' (stopped early)' if not r.full_budget else ''}"
            f"{' - infeasible' if not r.feasible else ''}\n{weights}\nrun: {r.run_id}"
        )
        marks = (
            _marker(kind, cx, cy)
            + (_marker("knee", cx, cy) if knee is r else "")
            + (_marker("preset", cx, cy) if r.preset else "")
        )
        spot = spots[r.run_id]
        label = (
            (
                f'<text x="{spot[0]:.1f}" y="{spot[1]:.1f}" font-size="10" fill="#333">'
                f"{html.escape(r.name.removeprefix('trial-'))}</text>"
            )
            if spot
            else ""
        )
        parts.append(
            f'<a href="{run_link(experiment_id, r.run_id)}" target="_top"><g class="trial {kind}" '
            f'data-run="{r.run_id}"><title>{html.escape(title)}</title>{marks}{label}</g></a>'
        )
    return parts


def legend_svg(area: PlotArea, height: int) -> list[str]:
    """The legend, two rows under the axis title."""
    parts = []
    for i, (kind, text) in enumerate(LEGEND):
        row_y = height - 26 + 16 * (i // 3)
        col_x = area.left + (i % 3) * (area.right - area.left) / 3
        parts.append(
            f'<g class="legend">{_marker(kind, col_x + 6, row_y - 4)}<text x="{col_x + 18:.1f}" '
            f'y="{row_y:.1f}">{html.escape(text)}</text></g>'
        )
    return parts


def front_page(svg: list[str], heading: str, hint: str, width: int, height: int) -> str:
    """The self-contained page around the plot's SVG parts: a one-line heading (the hint as its hover
    text), and an SVG with a viewBox that scales to the frame, so the page never scrolls."""
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
        "<title>Pareto front</title><style>html,body{margin:0;height:100%;overflow:hidden;font-family:sans-serif}"
        "body{display:flex;flex-direction:column}.head{font-size:13px;padding:4px 8px;white-space:nowrap;"
        "overflow:hidden;text-overflow:ellipsis}svg{flex:1 1 auto;min-height:0;width:100%;display:block}</style>"
        f"</head><body><div class='head' title='{html.escape(hint)}'><b>{html.escape(heading)}</b> &middot; "
        f"{html.escape(hint)}</div>"
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" preserveAspectRatio="xMidYMid meet" '
        f'font-family="sans-serif" font-size="12">{"".join(svg)}</svg></body></html>'
    )


def front_html(
    records: list[TrialRecord],
    front: list[TrialRecord],
    knee: TrialRecord | None,
    objectives: list[tuple[str, str]],
    experiment_id: str,
    width: int = 760,
    height: int = 470,
) -> str:
    """A self-contained page: every trial, the staircase front, knee and presets, hover text, links.

    The plot is one SVG with a viewBox that scales to the frame it is shown in (MLflow's artifact
    pane, a browser tab): the page never scrolls, whatever its width; the legend is part of the
    plot, and point labels that would overlap are left to the hover text. Its axes tick at round
    values (``nice_ticks``).
    """
    mx, my = _axes(objectives)
    area = plot_area(
        [r.metrics[mx] for r in records] or [0.0, 100.0],
        [r.metrics[my] for r in records] or [0.0, 100.0],
        width,
        height,
    )
    svg = (
        axes_svg(area, column_header(mx), column_header(my))
        + points_svg(area, records, front, knee, mx, my, experiment_id)
        + legend_svg(area, height)
    )
    n = max((r.n_images for r in records), default=0)
    hint = (
        f"hover a point for its trial, scores (± one binomial standard error over {n} val images), weights and run id; "
        "click it to open the run; only feasible trials that ran the full budget can be on the front"
    )
    heading = f"Clean vs robust accuracy: {len(records)} finished trials, front of {len(front)}"
    return front_page(svg, heading, hint, width, height)


def _star(cx: float, cy: float, r: float = 13) -> str:

    pts = []
    for i in range(10):
        radius = r if i % 2 == 0 else r * 0.45
        angle = -math.pi / 2 + i * math.pi / 5
        pts.append(f"{cx + radius * math.cos(angle):.1f},{cy + radius * math.sin(angle):.1f}")
    return " ".join(pts)
