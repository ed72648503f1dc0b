"""Small inline SVG charts for the HTML report, drawn in plain Python (no plotting library, no fonts fetched).

Every chart returns :class:`markupsafe.Markup` built by :class:`Svg`, which
escapes all text it is given, so a class name in a bar label is inert. Charts
take plain numbers from the Verdict and return None when there is nothing to
draw; the template then says so in words.
"""

from __future__ import annotations

import dataclasses
import math
import statistics

from markupsafe import Markup, escape

from cbpt_guard.report import text

LABEL_CHARS = 22
"""Longest bar label drawn; the full name is in the bar's tooltip."""

INK = "#24292f"
MUTED = "#57606a"
GRID = "#d0d7de"
BAR = "#8c959f"
BLUE = "#0969da"
RED = "#cf222e"
GREEN = "#1a7f37"
PURPLE = "#8250df"
SERIES = {"total": INK, "clean": BLUE, "backdoor": RED, "drift": PURPLE, "distill": GREEN}
EXTRA_SERIES = ("#bc4c00", "#1b7c83", "#9a6700", "#4d2d00")


def _n(value: float) -> str:
    """A coordinate for an attribute: two decimals, no trailing zeros."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


class Svg:
    """An SVG document built element by element; text and tooltips are escaped, attributes are ours."""

    def __init__(self, width: float, height: float, label: str):
        self.width, self.height = width, height
        self.label = text.one_line(label, 300)
        self.parts: list[str] = []

    def _title(self, title: str | None) -> str:
        return f"<title>{escape(text.one_line(title, 300))}</title>" if title else ""

    def rect(self, x: float, y: float, w: float, h: float, fill: str, title: str | None = None,
             opacity: float = 1.0) -> None:
        """A filled rectangle, with an optional tooltip."""
        self.parts.append(f'<rect x="{_n(x)}" y="{_n(y)}" width="{_n(max(w, 0))}" height="{_n(max(h, 0))}" '
                          f'fill="{fill}" fill-opacity="{_n(opacity)}">{self._title(title)}</rect>')

    def line(self, x1: float, y1: float, x2: float, y2: float, stroke: str, width: float = 1,
             dash: str | None = None) -> None:
        """A straight line, optionally dashed."""
        dashed = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(f'<line x1="{_n(x1)}" y1="{_n(y1)}" x2="{_n(x2)}" y2="{_n(y2)}" stroke="{stroke}" '
                          f'stroke-width="{_n(width)}"{dashed}/>')

    def polyline(self, points: list[tuple[float, float]], stroke: str, width: float = 1.5) -> None:
        """A line through ``points``."""
        coords = " ".join(f"{_n(x)},{_n(y)}" for x, y in points)
        self.parts.append(f'<polyline points="{coords}" fill="none" stroke="{stroke}" stroke-width="{_n(width)}" '
                          'stroke-linejoin="round"/>')

    def circle(self, cx: float, cy: float, r: float, fill: str, title: str | None = None) -> None:
        """A dot, with an optional tooltip."""
        self.parts.append(f'<circle cx="{_n(cx)}" cy="{_n(cy)}" r="{_n(r)}" fill="{fill}">{self._title(title)}'
                          "</circle>")

    def text(self, x: float, y: float, content: object, *, anchor: str = "start", fill: str = INK,
             size: int = 13, bold: bool = False, title: str | None = None) -> None:
        """One line of escaped text at (x, y); ``anchor`` is start, middle or end."""
        weight = ' font-weight="600"' if bold else ""
        self.parts.append(f'<text x="{_n(x)}" y="{_n(y)}" text-anchor="{anchor}" fill="{fill}" '
                          f'font-size="{size}"{weight}>{self._title(title)}{escape(text.one_line(content))}</text>')

    def markup(self) -> Markup:
        """The finished ``<svg>`` element, safe to place in the page as it is."""
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {_n(self.width)} '
                f'{_n(self.height)}" width="{_n(self.width)}" height="{_n(self.height)}" '
                f'aria-label="{escape(self.label)}"><title>{escape(self.label)}</title>')
        return Markup(head + "".join(self.parts) + "</svg>")


@dataclasses.dataclass(frozen=True)
class Bar:
    """One labelled horizontal bar."""

    label: str
    value: float
    colour: str = BAR
    value_text: str = ""
    title: str = ""


def hbars(bars: list[Bar], label: str, *, scale_max: float | None = None, label_width: float = 180,
          bar_width: float = 300) -> Markup | None:
    """Horizontal bars, one per row, labels on the left and values at the bar ends; None if there is nothing."""
    if not bars:
        return None
    top = scale_max if scale_max and scale_max > 0 else max((b.value for b in bars if text.finite(b.value)),
                                                               default=0)
    top = top or 1.0
    row = 18
    svg = Svg(label_width + bar_width + 90, row * len(bars) + 8, label)
    for i, bar in enumerate(bars):
        y = 4 + i * row
        value = bar.value if text.finite(bar.value) else 0.0
        shown = text.one_line(bar.label, LABEL_CHARS)
        svg.text(label_width - 8, y + 13, shown, anchor="end", size=12, title=bar.title or bar.label)
        svg.rect(label_width, y + 3, bar_width * min(max(value / top, 0), 1), row - 5, bar.colour,
                 title=bar.title or f"{bar.label}: {bar.value_text}")
        svg.text(label_width + bar_width * min(max(value / top, 0), 1) + 5, y + 13, bar.value_text, fill=MUTED, size=12)
    return svg.markup()


def class_histogram(classes: tuple[str, ...], histogram: tuple[int, ...], target: str | None,
                    *, max_bars: int = 24, highlight: str = RED) -> Markup | None:
    """Stamped probes per class for one trigger family; the target class in ``highlight``.

    Red marks the backdoor's target; a family that is no evidence (a clean
    model's natural attractor) is drawn with a dark, not an alarming, target bar.

    Up to ``max_bars`` classes are drawn in class order; with more classes the
    busiest ``max_bars`` are drawn, largest first, and one grey bar sums the rest.
    """
    total = sum(c for c in histogram if c > 0)
    if not histogram or total <= 0:
        return None

    def name(index: int) -> str:
        return classes[index] if index < len(classes) else f"class #{index}"

    indices = list(range(len(histogram)))
    rest = []
    if len(histogram) > max_bars:
        indices = sorted(indices, key=lambda i: (-histogram[i], i))
        indices, rest = indices[:max_bars], indices[max_bars:]
    bars = [Bar(name(i), histogram[i], highlight if name(i) == target else BAR,
                f"{histogram[i]:,} ({histogram[i] / total:.0%})", f"{name(i)}: {histogram[i]:,} stamped probes")
            for i in indices]
    if rest:
        others = sum(histogram[i] for i in rest)
        bars.append(Bar(f"{len(rest):,} other classes", others, GRID, f"{others:,} ({others / total:.0%})",
                        f"{len(rest):,} other classes together"))
    return hbars(bars, f"Stamped probes per class ({total:,} probes)", scale_max=max(b.value for b in bars))


_NORMAL = statistics.NormalDist()
_SCORE_TICKS = (0.001, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999, 1 - 1e-8, 1 - 1e-10,
                1 - 1e-12, 1 - 1e-14)


def _tick_label(tick: float) -> str:
    """A score tick as text: ``0.999`` up to six nines, then ``1−1e-08`` (more nines no one can count)."""
    return f"1−{1 - tick:.0e}" if tick > 0.9999995 else repr(tick)


def _probit(value: float) -> float:
    """The score on the probit scale: how many clean-model spreads out it lies (scores are normal CDFs)."""
    return _NORMAL.inv_cdf(min(max(value, 1e-15), 1 - 1e-15))


def score_strip(calibration_scores: tuple[float, ...], threshold: float, score: float) -> Markup | None:
    """This checkpoint's score beside the clean references' scores and the threshold, on a probit axis.

    Scores are normal CDFs of standardised evidence, so the interesting ones
    crowd near 1; the probit axis spreads them out again (one step = one spread
    of clean models). The legend above the plot names the markers, so labels
    never collide. Returns None when the score or the threshold is not finite.
    """
    if not (text.finite(score) and text.finite(threshold)):
        return None
    clean = [s for s in calibration_scores if text.finite(s)]
    zs = [_probit(v) for v in clean + [threshold, score]]
    low, high = min(-2.5, min(zs) - 0.5), min(max(3.5, max(zs) + 0.6), 9.0)
    width, left, right, plot_top, axis_y = 960.0, 24.0, 24.0, 40.0, 132.0
    flagged = score >= threshold
    mark = RED if flagged else GREEN

    def x_of(value: float) -> float:
        return left + (width - left - right) * (_probit(value) - low) / (high - low)

    svg = Svg(width, axis_y + 44, f"Backdoor score {text.score(score)} against {len(clean)} clean reference "
                                  f"scores and the threshold {text.score(threshold)}")
    x_threshold, x_score = x_of(threshold), x_of(score)
    svg.rect(x_threshold, plot_top, width - right - x_threshold, axis_y - plot_top, RED, opacity=0.07,
             title="scores at or above the threshold count as backdoor evidence")
    room = width - right - x_threshold  # the label sits above the shaded region, clear of the markers in it
    if room > 60:
        svg.text(x_threshold + 6, plot_top - 5, "flagged as backdoor evidence" if room > 190 else "flagged",
                 fill=RED, size=12)
    svg.line(left, axis_y, width - right, axis_y, MUTED)
    last = -1e9
    for tick in _SCORE_TICKS:
        x = x_of(tick)
        if low <= _probit(tick) <= high and x - last >= 64:
            svg.line(x, axis_y, x, axis_y + 5, MUTED)
            svg.text(x, axis_y + 19, _tick_label(tick), anchor="middle", fill=MUTED, size=12)
            last = x
    svg.text(width / 2, axis_y + 38, "backdoor score (probit scale: each step is one spread of clean models)",
             anchor="middle", fill=MUTED, size=12)
    stacks: dict[int, int] = {}
    for value in sorted(clean):
        column = int(x_of(value) // 11)
        level = stacks.get(column, 0)
        stacks[column] = level + 1
        svg.circle(column * 11 + 5.5, axis_y - 8 - 11 * min(level, 7), 5, BLUE,
                   title=f"clean reference: {value:.6f}")
    svg.line(x_threshold, plot_top, x_threshold, axis_y, INK, 1.5, dash="6 4")
    svg.line(x_score, plot_top + 12, x_score, axis_y, mark, 3)
    svg.circle(x_score, plot_top + 12, 6, mark, title=f"this checkpoint: {score:.6f}")
    # The legend: this checkpoint, the threshold, the clean references.
    svg.circle(left + 6, 14, 6, mark)
    svg.text(left + 18, 19, f"this checkpoint: {text.score(score)}", bold=True, size=13)
    svg.line(left + 250, 7, left + 250, 23, INK, 1.5, dash="4 3")
    svg.text(left + 260, 19, f"threshold: {text.score(threshold)}", size=13)
    svg.circle(left + 456, 14, 5, BLUE)
    svg.text(left + 468, 19, f"{len(clean)} clean reference models" if clean else "no clean reference scores recorded",
             size=13, fill=INK if clean else MUTED)
    return svg.markup()


def _nice_ticks(low: float, high: float, count: int = 4) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) covering [low, high]; always at least two."""
    if not high - low > 1e-9:
        high = low + 1.0
    span = (high - low) / count
    power = 10 ** math.floor(math.log10(span))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= span)
    first, last = math.floor(low / step), math.ceil(high / step)
    return [k * step for k in range(first, last + 1)]


WARMUP_SHARE = 0.05
"""Share of the first recorded points of a loss curve that may lie above the axis (clipped, and said so)."""
SPIKE_RATIO = 2.0
"""Early losses are clipped only when they reach more than this many times the highest later loss."""


def _curve_ceiling(series: dict[str, list[tuple[int, float]]], steps: int) -> float:
    """The top of the loss axis: the highest value after the first :data:`WARMUP_SHARE` of training.

    The first steps' losses (prompts still the hand-written ones, the backdoor
    term at its largest) can be many times the rest, and on a linear axis they
    flatten everything after them into a line along the bottom. An early peak
    within :data:`SPIKE_RATIO` of the later losses is kept on the axis.
    """
    skip = max(1, int(steps * WARMUP_SHARE))
    peak = max(v for points in series.values() for _, v in points)
    later = [v for points in series.values() for i, v in points if i >= skip]
    ceiling = max(later) if later else peak
    return ceiling if ceiling > 0 and peak > SPIKE_RATIO * ceiling else peak


def loss_curves(curves: dict[str, tuple[float, ...]]) -> Markup | None:
    """Purification loss curves (total, clean, backdoor, drift, distill) on one linear axis; None without data.

    The axis ends just above the losses after the first few steps (:func:`_curve_ceiling`); higher early
    values are drawn at the top edge and the chart says how high they went.
    """
    # A loss beyond +-1e12 is not a number anyone reads off a chart; such points are left out.
    series = {name: [(i, v) for i, v in enumerate(values) if text.finite(v) and abs(v) <= 1e12]
              for name, values in text.ordered_curves(curves).items()}
    series = {name: points for name, points in series.items() if points}
    if not series:
        return None
    values = [v for points in series.values() for _, v in points]
    steps = max(len(curves[name]) for name in series)
    ceiling = _curve_ceiling(series, steps)
    peak = max(values)
    ticks = _nice_ticks(min(0.0, min(values)), ceiling)
    low, high = ticks[0], ticks[-1]
    clipped = peak > high
    series = {name: [(i, min(v, high)) for i, v in points] for name, points in series.items()}
    width, height, left, top, bottom = 960.0, 250.0, 56.0, 34.0, 36.0
    plot_w, plot_h = width - left - 16, height - top - bottom

    def xy(i: float, v: float) -> tuple[float, float]:
        return left + plot_w * (i / max(steps - 1, 1)), top + plot_h * (1 - (v - low) / (high - low))

    svg = Svg(width, height, "Purification loss curves: " + ", ".join(text.one_line(n, 40) for n in series))
    for value in ticks:
        _, y = xy(0, value)
        svg.line(left, y, width - 16, y, GRID)
        svg.text(left - 8, y + 4, f"{value:g}", anchor="end", fill=MUTED, size=12)
    svg.line(left, top + plot_h, width - 16, top + plot_h, MUTED)
    svg.text(left + plot_w / 2, height - 8, f"training progress ({steps} recorded points)", anchor="middle",
             fill=MUTED, size=12)
    if clipped:
        svg.text(width - 16, 18, f"first steps clipped at the top: they reach {peak:.3g}", anchor="end",
                 fill=MUTED, size=12, title="the axis is scaled to the losses after the first steps so the "
                                            "rest of training stays readable")
    legend_x = left
    for k, (name, points) in enumerate(series.items()):
        colour = SERIES.get(name, EXTRA_SERIES[k % len(EXTRA_SERIES)])
        svg.polyline([xy(i, v) for i, v in points], colour, 2.2 if name == "total" else 1.6)
        svg.rect(legend_x, 11, 14, 4, colour)
        label = text.one_line(name, 20)
        svg.text(legend_x + 19, 18, label, size=13)
        legend_x += 36 + 8 * len(label)
    return svg.markup()


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One metric before and after purification, as fractions, with the policy's bar if it has one."""

    label: str
    before: float | None
    after: float | None
    bar: float | None = None
    bar_text: str = ""
    failed: bool = False
    """Whether the value after purification misses the bar: the row is drawn in red."""


def before_after(rows: list[Comparison]) -> Markup | None:
    """Paired bars (before in grey, after in blue) on a 0-100% axis, each with its bar dashed in red.

    A row whose value after purification misses its bar (``Comparison.failed``)
    is drawn in red on a red-tinted band, so the failing row is found at a glance.

    Values sit in a column right of the bars and the bar's wording right of
    them, so no label is drawn over a bar or a marker.
    """
    rows = [r for r in rows if text.finite(r.before) or text.finite(r.after)]
    if not rows:
        return None
    # About 7 px per character at size 13: the label column grows with the longest label, within limits.
    label_w = min(360.0, max(180.0, 7.0 * max(len(r.label) for r in rows) + 10))
    bar_w, row, top = 300.0, 42.0, 28.0
    value_x = label_w + bar_w + 12
    width = value_x + 150
    svg = Svg(width, top + row * len(rows) + 24, "Before and after purification: " +
              ", ".join(f"{r.label} {text.pct(r.before)} to {text.pct(r.after)}" for r in rows))
    svg.rect(label_w, 9, 14, 9, BAR)
    svg.text(label_w + 19, 18, "before", size=13)
    svg.rect(label_w + 84, 9, 14, 9, BLUE)
    svg.text(label_w + 103, 18, "after purification", size=13)
    for i, r in enumerate(rows):
        y = top + i * row
        if r.failed:
            svg.rect(0, y - 2, width, row - 2, RED, opacity=0.08, title=f"{r.label}: misses the bar ({r.bar_text})")
        svg.text(label_w - 10, y + 21, r.label, anchor="end", size=13, fill=RED if r.failed else INK)
        for k, (value, colour) in enumerate(((r.before, BAR), (r.after, RED if r.failed else BLUE))):
            yy = y + 4 + k * 16
            if text.finite(value):
                svg.rect(label_w, yy, bar_w * min(max(value, 0.0), 1.0), 13, colour,
                         title=f"{r.label}: {text.pct(value)}")
            svg.text(value_x, yy + 11, text.pct(value) if text.finite(value) else "not measured",
                     fill=(RED if r.failed else INK) if k else MUTED, size=12, bold=bool(k))
        if text.finite(r.bar):
            x = label_w + bar_w * min(max(r.bar, 0.0), 1.0)
            svg.line(x, y, x, y + 36, RED, 1.5, dash="4 2")
            svg.text(value_x + 64, y + 21, r.bar_text, fill=RED, size=12)
    bottom = top + row * len(rows)
    svg.line(label_w, bottom, label_w + bar_w, bottom, MUTED)
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        svg.text(label_w + bar_w * tick, bottom + 16, f"{tick:.0%}", anchor="middle", fill=MUTED, size=12)
    return svg.markup()


def timing_bars(timings: list[tuple[str, float]]) -> Markup | None:
    """Seconds per stage as bars, in the order given (the order the stages ran)."""
    bars = [Bar(stage, value, BLUE, text.seconds(value)) for stage, value in timings if text.finite(value)]
    return hbars(bars, "Seconds per stage", label_width=150, bar_width=320)
