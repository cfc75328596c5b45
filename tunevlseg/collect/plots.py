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
once per row and column instead.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tunevlseg.collect.importance import Importances
from tunevlseg.collect.results import StudyData

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PAGE_ROWS = 12
PAGE_COLUMNS = 16
PANEL_SIZE = (1.3, 0.8)  # inches
DPI = 80


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
            dice = trial.user_attrs.get("test_dice")
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
            ax.scatter(np.asarray(xs, float), np.asarray(ys, float), s=6, alpha=0.25,
                       color=colour, linewidths=0)
            ax.fill_between(depths, [m - s for m, s in zip(means, stds, strict=True)],
                            [m + s for m, s in zip(means, stds, strict=True)], color=colour, alpha=0.15)
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
    figure.subplots_adjust(left=0.07, right=1 - 1.5 / figure.get_figwidth(), bottom=0.15, top=0.88, wspace=0.08)
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
        {(d.result.model, d.result.learner, d.result.grid) for d in studies},
        key=lambda k: (models.index(k[0]), order.index(k[1]) if k[1] in order else 99, k[1], k[2]),
    )
    rows = [_row_label(*key) for key in row_keys]
    columns = list(dict.fromkeys(d.result.dataset for d in studies))
    pages = []
    for r in range(0, len(rows), PAGE_ROWS):
        for c in range(0, len(columns), PAGE_COLUMNS):
            pages.append((rows[r:r + PAGE_ROWS], columns[c:c + PAGE_COLUMNS]))
    return pages


def _row_label(model: str, learner: str, grid: str) -> str:
    from tunevlseg.catalog import LEARNERS

    title = LEARNERS[learner].title if learner in LEARNERS else learner
    return f"{model} {title}" + (f"\n{grid}" if grid else "")


def plot_history_pages(studies: Sequence[StudyData], folder: Path) -> list[Path]:
    """Optimisation history as pages of small panels: a row per model + learner (+ grid key),
    a column per data set.

    Each panel shows every complete trial's objective against its number (dots) and the running
    best (red steps); x runs from 0 to the study's budget. Panels of a column share the y range,
    written in the column header (lowest–highest objective), so learners compare directly on
    each data set. Each label is one line: Agg lays out text line by line, at ~2 ms a line.
    """
    if not studies:
        return []
    by_cell = {(_row_label(d.result.model, d.result.learner, d.result.grid), d.result.dataset): d
               for d in studies}
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
    label_w, head_h = 1.5, 0.4  # inches for row labels and column headers
    width = label_w + PANEL_SIZE[0] * len(columns)
    height = head_h + PANEL_SIZE[1] * len(rows) + 0.1
    figure = _figure(width, height)
    ax = figure.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_axis_off()
    frames, steps_all, xs, ys = [], [], [], []
    top = height - head_h
    for c, dataset in enumerate(columns):
        low, high = ranges.get(dataset, (0.0, 1.0))
        name = dataset if len(dataset) <= 14 else dataset[:13] + "…"
        ax.text(label_w + PANEL_SIZE[0] * (c + 0.5), top + 0.04,
                f"{name} {low:.2f}–{high:.2f}", fontsize=6, ha="center", va="bottom")
    for r, row in enumerate(rows):
        y_top = top - PANEL_SIZE[1] * r
        ax.text(label_w - 0.08, y_top - PANEL_SIZE[1] / 2, row, fontsize=7, ha="right", va="center")
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
            px = [x0 + w * n / n_max for n in numbers]
            py = [y0 + h * (0.08 + 0.84 * (v - low) / span) for v in values]
            pb = [y0 + h * (0.08 + 0.84 * (b - low) / span) for b in best]
            xs += px
            ys += py
            ends = px[1:] + [x0 + w * min(1.0, max(numbers[-1], data.result.n_trials - 1) / n_max)]
            steps = []
            for x, x_end, y in zip(px, ends, pb, strict=True):
                steps += [(x, y), (x_end, y)]
            steps_all.append(steps)
    ax.add_collection(LineCollection(frames, colors="0.75", linewidths=0.5))
    ax.add_collection(LineCollection(steps_all, colors="C3", linewidths=1.0))
    ax.scatter(np.asarray(xs, float), np.asarray(ys, float), s=3, color="C0", linewidths=0)
    ax.text(0.05, height - 0.05, f"Optimisation history (objective vs trial; red: running best) "
            f"{number}/{len(pages)}", fontsize=7, ha="left", va="top")
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
    figure = _figure(4.2 * columns, 2.4 * rows + 0.3)
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax, (learner, bars) in zip(axes.flat, by_learner.items(), strict=False):
        ax.barh([b[0] for b in reversed(bars)], [b[1] for b in reversed(bars)], color="C0")
        ax.set_xlim(0, 1)
        n_studies, n_trials = counts[learner]
        ax.set_title(f"{learner} ({n_studies} studies, {n_trials} trials)", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(by_learner):]:
        ax.set_axis_off()
    figure.suptitle("Hyperparameter importance (PED-ANOVA over each learner's studies)", fontsize=9)
    figure.subplots_adjust(left=0.12, right=0.98, bottom=0.08, top=1 - 0.5 / figure.get_figheight(),
                           wspace=0.55, hspace=0.45)
    return _save(figure, path)
