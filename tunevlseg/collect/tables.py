"""The paper's main table (TuneVLSeg Table 3 layout) from study results.

Rows are model + learner, grouped by model; columns are data sets grouped by category
(Non-Radiology, Radiology, Open Domain, then any other); cells are test Dice x 100. The last
column is the mean and population standard deviation (ddof = 0) over the row's data sets, the
last row the mean and population std of the row means. Missing cells are left out of the means.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from tunevlseg.catalog import LEARNERS
from tunevlseg.collect.results import StudyResult

CATEGORY_ORDER = ("Non-Radiology", "Radiology", "Open Domain")
MISSING = "–"


@dataclass
class MainTable:
    """The main table as numbers (Dice x 100, None where missing) plus its headers."""

    datasets: list[tuple[str, str]]  # (category, dataset) in column order
    rows: list[tuple[str, str]]  # (model, learner title) in row order
    cells: dict[tuple[str, str], dict[str, float | None]]
    footnotes: list[str] = field(default_factory=list)

    def row_stats(self, row: tuple[str, str]) -> tuple[float, float] | None:
        values = [v for v in self.cells[row].values() if v is not None]
        if not values:
            return None
        return statistics.fmean(values), statistics.pstdev(values)

    def average_across_methods(self) -> tuple[float, float] | None:
        means = [stats[0] for row in self.rows if (stats := self.row_stats(row)) is not None]
        if not means:
            return None
        return statistics.fmean(means), statistics.pstdev(means)


def _category_rank(category: str) -> tuple[int, str]:
    if category in CATEGORY_ORDER:
        return CATEGORY_ORDER.index(category), ""
    return len(CATEGORY_ORDER), category


def build_main_table(results: Sequence[StudyResult]) -> MainTable:
    """Arrange one grid cell's results (the caller filters by grid key) as the main table."""
    datasets: dict[str, str] = {}
    for result in results:
        datasets.setdefault(result.dataset, result.category)
    columns = sorted(
        ((category, name) for name, category in datasets.items()),
        key=lambda item: _category_rank(item[0]),
    )
    models = list(dict.fromkeys(r.model for r in results))
    titles = {r.learner_title for r in results}
    # The paper's row order: the learners in catalogue order, then anything else by name.
    learner_order = [info.title for info in LEARNERS.values() if info.title in titles]
    learner_order += sorted(titles - set(learner_order))
    present = {(r.model, r.learner_title) for r in results}
    rows = [(m, learner) for m in models for learner in learner_order if (m, learner) in present]
    cells: dict[tuple[str, str], dict[str, float | None]] = {
        row: {name: None for _, name in columns} for row in rows
    }
    for result in results:
        if result.test_dice is not None:
            cells[(result.model, result.learner_title)][result.dataset] = 100.0 * result.test_dice
    table = MainTable(columns, rows, cells)
    if any(v is None for row in cells.values() for v in row.values()):
        table.footnotes.append(
            f"{MISSING}: no complete trial yet (or no test result); left out of the means."
        )
    return table


def _pm(stats: tuple[float, float] | None) -> str:
    return MISSING if stats is None else f"{stats[0]:.2f} ± {stats[1]:.2f}"


def _cell(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}"


def to_markdown(table: MainTable) -> str:
    """GitHub Markdown: the category of each column is written above its name."""
    header = ["Model", "Learner"] + [f"{name}<br>*{cat}*" for cat, name in table.datasets]
    header.append("Mean ± Std")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    previous_model = None
    for model, learner in table.rows:
        shown_model = model if model != previous_model else ""
        previous_model = model
        values = [_cell(table.cells[(model, learner)][name]) for _, name in table.datasets]
        lines.append(
            "| " + " | ".join([shown_model, learner, *values, _pm(table.row_stats((model, learner)))]) + " |"
        )
    blanks = [""] * len(table.datasets)
    lines.append(
        "| " + " | ".join(["Average across methods", "", *blanks, _pm(table.average_across_methods())]) + " |"
    )
    notes = [f"\n{note}" for note in table.footnotes]
    return "\n".join(lines) + "".join(notes) + "\n"
