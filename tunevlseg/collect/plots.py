"""The collector's figures (PNG, matplotlib's Agg backend: no display on a compute node).

* ``prompt_depth.png``: test Dice x 100 against prompt depth over all complete trials (the
  paper's Fig. 5): one panel per model, a line per learner through the mean at each depth, a band
  of ± one population std, and every trial as a faint dot.
* ``history/history-NNN.png``: optimisation history in small panels, a row per model + learner
  and a column per data set (:func:`plot_history_pages`).
* ``importance.png``: hyperparameter importance per learner (bars), pooled over its studies.

A history page is drawn on one canvas, each panel a region of a single axes: a thousand studies
would otherwise mean a thousand matplotlib axes (ticks, labels, spines) and thousands of text
labels, and text is the slow part of Agg (about 3 ms per short label here). Labels are written
once per row and column instead. Every label is shown whole: measured as Agg will draw it, a
name is set smaller when it does not fit its place (wrapped only below :data:`MIN_FONT`), and a
sentence is wrapped.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tunevlseg.collect.importance import Importances
from tunevlseg.collect.results import StudyData
from tunevlseg.tuning.trial_attrs import trial_attrs

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PAGE_ROWS = 12
PAGE_COLUMNS = 16
PANEL_SIZE = (1.3, 0.8)  # inches
DPI = 100
"""Pixels per inch of every figure: at 100, the history pages' 7 pt labels are 10 px tall."""
MIN_FONT = 5.5
"""Points: a label that does not fit at this size is wrapped instead of shrunk further."""
LINE_SPACING = 1.25
"""Height of a text line in units of its font size (matplotlib's default is 1.2)."""


def _figure(width: float, height: float) -> Figure:
    """A figure bound to the Agg canvas directly (no pyplot: no global state, no GUI backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    """Write atomically: a reader never sees half a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        # zlib level 1: a third of the encoding time of the default level, files ~1.5x larger
        figure.savefig(handle, format="png", dpi=DPI, pil_kwargs={"compress_level": 1})
    tmp.replace(path)
    return path


_MEASURE: Any = None
"""An Agg renderer at :data:`DPI` for measuring text (made on first use, one per process)."""


def text_width(text: str, size: float) -> float:
    """Width in inches of one line of ``text`` at ``size`` points in matplotlib's default font,
    as Agg draws it at :data:`DPI` (hinting makes small text up to 10 % wider than the font's
    outline metrics say); ~1.5 ms a line, without drawing."""
    global _MEASURE
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties

    if _MEASURE is None:
        _MEASURE = RendererAgg(1, 1, DPI)
    width, _, _ = _MEASURE.get_text_width_height_descent(
        text, FontProperties(size=size), ismath=False
    )
    return float(width) / DPI


def fit_text(text: str, width: float, size: float, *, shrink: bool = True) -> tuple[str, float]:
    """``text`` (its lines as given) set to fit ``width`` inches, whole.

    With ``shrink`` (names), the largest size up to ``size`` at which the longest line fits, not
    below :data:`MIN_FONT`, and below that the lines wrapped at :data:`MIN_FONT`; without it
    (sentences), the lines wrapped at ``size``. Lines wrap at spaces and hyphens, a word longer
    than a line anywhere. Returns the text to draw (lines joined by newlines) and its size.
    """
    width *= 0.98  # a margin for rounding
    lines = text.split("\n")
    widest = max(text_width(line, size) for line in lines)
    if widest <= width:
        return text, size
    if shrink:
        # Hinted text is not quite proportional to its size: step down until it fits.
        smaller = size * width / widest
        while smaller >= MIN_FONT and max(text_width(line, smaller) for line in lines) > width:
            smaller *= 0.97
        if smaller >= MIN_FONT:
            return text, smaller
        size = MIN_FONT
    return "\n".join(part for line in lines for part in _wrap(line, width, size)), size


def _wrap(line: str, width: float, size: float) -> list[str]:
    """``line`` in pieces of at most ``width`` inches at ``size`` points."""
    import textwrap

    chars = len(line)
    while chars > 1 and any(text_width(part, size) > width for part in textwrap.wrap(line, chars)):
        chars -= 1
    return textwrap.wrap(line, chars) or [""]


def _text_height(text: str, size: float) -> float:
    """Inches a (multi-line) label takes up."""
    return (text.count("\n") + 1) * size * LINE_SPACING / 72.0


def depth_points(studies: Sequence[StudyData]) -> dict[str, dict[str, dict[int, list[float]]]]:
    """model -> learner title -> prompt depth -> test Dice x 100 of every complete trial."""
    from optuna.trial import TrialState

    points: dict[str, dict[str, dict[int, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for data in studies:
        result = data.result
        for trial in data.trials:
            if trial.state != TrialState.COMPLETE:
                continue
            depth = trial.params.get("prompt_depth")
            dice = trial_attrs(trial).get("test_dice")
            if isinstance(depth, int) and isinstance(dice, (int, float)):
                points[result.model][result.learner_title][depth].append(100.0 * float(dice))
    return points


def plot_prompt_depth(studies: Sequence[StudyData], path: Path) -> Path | None:
    """The Fig. 5 plot; None when no complete trial has a prompt depth and a test Dice."""
    from matplotlib.ticker import MaxNLocator

    from tunevlseg.catalog import LEARNERS

    points = depth_points(studies)
    if not points:
        return None
    models = list(points)
    figure = _figure(4.2 * len(models) + 1.6, 3.6)
    axes = figure.subplots(1, len(models), sharey=True, squeeze=False)[0]
    order = [info.title for info in LEARNERS.values()]
    colours = {title: f"C{i}" for i, title in enumerate(order)}
    for ax, model in zip(axes, models, strict=True):
        learners = sorted(points[model], key=lambda t: (order.index(t) if t in order else 99, t))
        for learner in learners:
            by_depth = points[model][learner]
            depths = sorted(by_depth)
            means = [statistics.fmean(by_depth[d]) for d in depths]
            stds = [statistics.pstdev(by_depth[d]) for d in depths]
            colour = colours.get(learner, "C9")
            xs = [d for d in depths for _ in by_depth[d]]
            ys = [v for d in depths for v in by_depth[d]]
            ax.scatter(
                np.asarray(xs, float),
                np.asarray(ys, float),
                s=6,
                alpha=0.25,
                color=colour,
                linewidths=0,
            )
            ax.fill_between(
                depths,
                [m - s for m, s in zip(means, stds, strict=True)],
                [m + s for m, s in zip(means, stds, strict=True)],
                color=colour,
                alpha=0.15,
            )
            ax.plot(depths, means, marker="o", markersize=3, color=colour, label=learner)
        ax.set_title(model)
        ax.set_xlabel("prompt depth")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test Dice × 100")
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    figure.legend(handles, labels, loc="center right", fontsize="small", frameon=False)
    figure.subplots_adjust(
        left=0.07, right=1 - 1.5 / figure.get_figwidth(), bottom=0.15, top=0.88, wspace=0.08
    )
    return _save(figure, path)


def _history_series(data: StudyData) -> tuple[list[int], list[float], list[float]]:
    """(trial numbers, objective values, running best) of the complete trials."""
    from optuna.trial import TrialState

    complete = sorted(
        (t for t in data.trials if t.state == TrialState.COMPLETE and t.value is not None),
        key=lambda t: t.number,
    )
    numbers = [t.number for t in complete]
    values = [float(t.value) for t in complete]  # type: ignore[arg-type]
    pick = max if data.direction == "maximize" else min
    best: list[float] = []
    for value in values:
        best.append(value if not best else pick(best[-1], value))
    return numbers, values, best


def history_pages(studies: Sequence[StudyData]) -> list[tuple[list[str], list[str]]]:
    """The pages of the history plot: (row labels, data set columns) of each page.

    Rows are model + learner (+ grid key), in the main table's order; columns are data sets. Large
    sweeps are split into pages of at most :data:`PAGE_ROWS` x :data:`PAGE_COLUMNS` panels.
    """
    from tunevlseg.catalog import LEARNERS

    order = list(LEARNERS)
    models = list(dict.fromkeys(d.result.model for d in studies))
    row_keys = sorted(
        {
            (d.result.model, d.result.learner, d.result.learner_title, d.result.grid)
            for d in studies
        },
        key=lambda k: (models.index(k[0]), order.index(k[1]) if k[1] in order else 99, k[2], k[3]),
    )
    rows = [_row_label(model, title, grid) for model, _, title, grid in row_keys]
    columns = list(dict.fromkeys(d.result.dataset for d in studies))
    return [
        (rows[r : r + PAGE_ROWS], columns[c : c + PAGE_COLUMNS])
        for r in range(0, len(rows), PAGE_ROWS)
        for c in range(0, len(columns), PAGE_COLUMNS)
    ]


def _row_label(model: str, learner_title: str, grid: str) -> str:
    """``learner_title`` names a labelled entry apart (``MaPLe (maple-gaussian)``), so two
    entries of one learner get a row each."""
    return f"{model} {learner_title}" + (f"\n{grid}" if grid else "")


def plot_history_pages(studies: Sequence[StudyData], folder: Path) -> list[Path]:
    """Optimisation history as pages of small panels: a row per model + learner (+ grid key),
    a column per data set.

    Each panel shows every complete trial's objective against its number (dots) and the running
    best (red steps); x runs from 0 to the study's budget. Panels of a column share the y range,
    written in the column header under the data set's name (lowest–highest objective), so
    learners compare directly on each data set. Labels are whole (:func:`fit_text`); Agg lays
    out text line by line, at ~2 ms a line, so a page holds a few dozen lines of text.
    """
    if not studies:
        return []
    by_cell = {
        (_row_label(d.result.model, d.result.learner_title, d.result.grid), d.result.dataset): d
        for d in studies
    }
    series = {key: _history_series(d) for key, d in by_cell.items()}
    ranges: dict[str, tuple[float, float]] = {}
    for (_, dataset), (_, values, _) in series.items():
        if values:
            low, high = ranges.get(dataset, (min(values), max(values)))
            ranges[dataset] = (min(low, *values), max(high, *values))
    pages = history_pages(studies)

    def draw(index: int) -> Path:
        return _draw_history_page(index + 1, pages, by_cell, series, ranges, folder)

    return _in_parallel(draw, len(pages))


_PAGE_DRAWER: Callable[[int], Path] | None = None
"""What a forked page worker draws (set before the fork, so no figure data is pickled)."""


def _draw_in_worker(index: int) -> Path:
    assert _PAGE_DRAWER is not None
    return _PAGE_DRAWER(index)


def _in_parallel(draw: Callable[[int], Path], n_pages: int) -> list[Path]:
    """``[draw(0), ..., draw(n_pages - 1)]``, on forked processes when there are several CPUs.

    Drawing and PNG encoding are pure Python and C under the GIL, about 0.2 s per page; a
    1,000-study sweep has 10 pages. Forked workers inherit the studies in memory.
    """
    global _PAGE_DRAWER
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if n_pages < 2 or cpus < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return [draw(index) for index in range(n_pages)]
    _PAGE_DRAWER = draw
    try:
        with multiprocessing.get_context("fork").Pool(min(cpus, n_pages)) as pool:
            return pool.map(_draw_in_worker, range(n_pages))
    finally:
        _PAGE_DRAWER = None


def _draw_history_page(
    number: int,
    pages: list[tuple[list[str], list[str]]],
    by_cell: dict[tuple[str, str], StudyData],
    series: dict[tuple[str, str], tuple[list[int], list[float], list[float]]],
    ranges: dict[str, tuple[float, float]],
    folder: Path,
) -> Path:
    from matplotlib.collections import LineCollection

    rows, columns = pages[number - 1]
    pad = 0.08  # inches between a label and what it labels, and around the page
    # Row labels: the column is as wide as the widest label at 7 pt needs (within limits).
    row_size = 7.0
    widest = max(text_width(line, row_size) for row in rows for line in row.split("\n"))
    label_w = min(max(widest / 0.98 + 2 * pad, 1.2), 2.6)
    row_labels = [fit_text(row, label_w - 2 * pad, row_size) for row in rows]
    # Column headers: the data set's whole name, its objective range on the line below.
    headers = []
    for dataset in columns:
        low, high = ranges.get(dataset, (0.0, 1.0))
        name, size = fit_text(dataset, PANEL_SIZE[0] - pad, 7.0)
        headers.append((name, size, f"{low:.2f}–{high:.2f}"))
    header_h = (
        max(_text_height(name, size) for name, size, _ in headers) + _text_height("", 6.0) + pad
    )
    width = label_w + PANEL_SIZE[0] * len(columns)
    title, title_size = fit_text(
        f"Optimisation history, page {number}/{len(pages)}\n"
        "dots: each complete trial's objective; red: the running best",
        width - 2 * pad,
        8.0,
        shrink=False,
    )
    title_h = _text_height(title, title_size) + pad
    height = title_h + header_h + PANEL_SIZE[1] * len(rows) + pad
    figure = _figure(width, height)
    ax = figure.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_axis_off()
    frames, steps_all, xs, ys = [], [], [], []
    top = height - title_h - header_h
    for c, (name, size, span_text) in enumerate(headers):
        x = label_w + PANEL_SIZE[0] * (c + 0.5)
        ax.text(x, top + 0.03, span_text, fontsize=6, ha="center", va="bottom", color="0.35")
        ax.text(
            x,
            top + 0.03 + _text_height("", 6.0),
            name,
            fontsize=size,
            ha="center",
            va="bottom",
            multialignment="center",
            linespacing=LINE_SPACING,
        )
    for r, (row, (label, size)) in enumerate(zip(rows, row_labels, strict=True)):
        y_top = top - PANEL_SIZE[1] * r
        ax.text(
            label_w - pad,
            y_top - PANEL_SIZE[1] / 2,
            label,
            fontsize=size,
            ha="right",
            va="center",
            multialignment="right",
            linespacing=LINE_SPACING,
        )
        for c, dataset in enumerate(columns):
            data = by_cell.get((row, dataset))
            if data is None:
                continue
            x0 = label_w + PANEL_SIZE[0] * c + 0.06
            y0 = y_top - PANEL_SIZE[1] + 0.06
            w, h = PANEL_SIZE[0] - 0.12, PANEL_SIZE[1] - 0.12
            frames.append([(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h), (x0, y0)])
            numbers, values, best = series[(row, dataset)]
            if not numbers:
                continue
            low, high = ranges[dataset]
            span = (high - low) or 1.0
            n_max = max(data.result.n_trials - 1, numbers[-1], 1)
            x_left, x_span = (
                x0 + 0.04 * w,
                0.92 * w,
            )  # inset: the first and last dots clear the frame
            px = [x_left + x_span * n / n_max for n in numbers]
            py = [y0 + h * (0.08 + 0.84 * (v - low) / span) for v in values]
            pb = [y0 + h * (0.08 + 0.84 * (b - low) / span) for b in best]
            xs += px
            ys += py
            last = min(1.0, max(numbers[-1], data.result.n_trials - 1) / n_max)
            ends = [*px[1:], x_left + x_span * last]
            steps = []
            for x, x_end, y in zip(px, ends, pb, strict=True):
                steps += [(x, y), (x_end, y)]
            steps_all.append(steps)
    ax.add_collection(LineCollection(frames, colors="0.75", linewidths=0.5))
    ax.add_collection(LineCollection(steps_all, colors="C3", linewidths=1.0))
    ax.scatter(
        np.asarray(xs, float), np.asarray(ys, float), s=7, color="C0", linewidths=0, zorder=3
    )
    ax.text(
        pad,
        height - pad / 2,
        title,
        fontsize=title_size,
        ha="left",
        va="top",
        linespacing=LINE_SPACING,
    )
    return _save(figure, folder / f"history-{number:03d}.png")


def plot_importance(importances: Importances, path: Path) -> Path | None:
    """One bar panel per learner, most important parameter on top."""
    by_learner: dict[str, list[tuple[str, float]]] = {}
    counts: dict[str, tuple[int, int]] = {}
    for row in importances.rows:
        by_learner.setdefault(row.learner_title, []).append((row.param, row.importance))
        counts[row.learner_title] = (row.n_studies, row.n_trials)
    if not by_learner:
        return None
    columns = min(3, len(by_learner))
    rows = math.ceil(len(by_learner) / columns)
    width = 4.2 * columns
    figure = _figure(width, 2.4 * rows + 0.4)
    # The constrained layout makes room for every tick label and (wrapped) title.
    figure.set_layout_engine("constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax, (learner, bars) in zip(axes.flat, by_learner.items(), strict=False):
        ax.barh([b[0] for b in reversed(bars)], [b[1] for b in reversed(bars)], color="C0")
        ax.set_xlim(0, 1)
        n_studies, n_trials = counts[learner]
        # A title is centred over its axes: at most as wide as the panel less its tick labels.
        tick_labels = max(text_width(name, 7.0) for name, _ in bars) + 0.3
        title, size = fit_text(
            f"{learner} ({n_studies} studies, {n_trials} trials)",
            width / columns - tick_labels - 0.2,
            9.0,
            shrink=False,
        )
        ax.set_title(title, fontsize=size, linespacing=LINE_SPACING)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(by_learner) :]:
        ax.set_axis_off()
    title, size = fit_text(
        "Hyperparameter importance (PED-ANOVA over each learner's studies)",
        width - 0.3,
        9.0,
        shrink=False,
    )
    figure.suptitle(title, fontsize=size, linespacing=LINE_SPACING)
    return _save(figure, path)
