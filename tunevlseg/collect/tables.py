"""The paper's main table (TuneVLSeg Table 3 layout) from study results.

Rows are model + learner, grouped by model; columns are data sets grouped by category
(Non-Radiology, Radiology, Open Domain, then any other); cells are test Dice x 100 (the paper's
sample-mean Dice; ``metric="mdice"`` shows the class-mean Dice instead, see
:func:`tunevlseg.collect.results.class_mean`). The last
column is the mean and population standard deviation (ddof = 0) over the row's data sets, the
last row the mean and population std of the row means. Missing cells are left out of the means.
A mean over a single value (one data set, or one row) is shown without its std: "± 0.00" would
read as a spread measured at zero.

The numbers live in :class:`MainTable`; the renderers (Markdown, LaTeX, HTML, tidy CSV rows) only
format them, so every format shows the same values. LaTeX and HTML mark the best value of each
data set column and of the mean column in bold, compared as shown (two decimals), so equal shown
values are all bold.

:func:`per_class_table` is the table beside it: per multi-class data set, each class's test Dice
for every model + learner (the best trial of each study), with the class mean (mDice) and the
sample mean (Dice) below each data set's classes.
"""

from __future__ import annotations

import html
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tunevlseg.catalog import LEARNERS
from tunevlseg.collect.render import TextTable, latex_escape
from tunevlseg.collect.results import SOURCE_STORAGE, StudyResult

if TYPE_CHECKING:
    from tunevlseg.collect.summaries import Summary

CATEGORY_ORDER = ("Non-Radiology", "Radiology", "Open Domain")
MISSING = "–"
MEAN = "Mean ± Std"
AVERAGE = "Average across methods"
METRICS = ("dice", "mdice")
"""What the main table's cells show: the sample-mean test Dice (the paper's) or the class mean."""
METRIC_TITLES = {"dice": "test Dice × 100", "mdice": "test mDice (class mean) × 100"}
MDICE_NOTE = (
    "mDice: the mean over classes of each class's mean test Dice (every class counts alike); "
    "Dice: the mean over test samples (the paper's number)."
)


@dataclass
class MainTable:
    """The main table as numbers (Dice x 100, None where missing) plus its headers."""

    datasets: list[tuple[str, str]]  # (category, dataset) in column order
    rows: list[tuple[str, str]]  # (model, learner title) in row order
    cells: dict[tuple[str, str], dict[str, float | None]]
    footnotes: list[str] = field(default_factory=list)

    def row_values(self, row: tuple[str, str]) -> list[float]:
        """The row's values present (missing cells left out)."""
        return [v for v in self.cells[row].values() if v is not None]

    def row_stats(self, row: tuple[str, str]) -> tuple[float, float] | None:
        values = self.row_values(row)
        if not values:
            return None
        return statistics.fmean(values), statistics.pstdev(values)

    def row_means(self) -> list[float]:
        """The mean of every row with a value."""
        return [stats[0] for row in self.rows if (stats := self.row_stats(row)) is not None]

    def average_across_methods(self) -> tuple[float, float] | None:
        means = self.row_means()
        if not means:
            return None
        return statistics.fmean(means), statistics.pstdev(means)

    def row_text(self, row: tuple[str, str]) -> str:
        """The row's "Mean ± Std" cell as plain text (see :func:`mean_text`)."""
        return mean_text(self.row_stats(row), len(self.row_values(row)))

    def average_text(self) -> str:
        """The "Average across methods" cell as plain text (see :func:`mean_text`)."""
        return mean_text(self.average_across_methods(), len(self.row_means()))

    def best_rows(self, column: str | None) -> set[tuple[str, str]]:
        """Rows holding the best shown value of a data set column (None: the mean column).

        Dice is better when larger; values are compared rounded to two decimals, as printed.
        """
        shown: dict[tuple[str, str], float] = {}
        for row in self.rows:
            if column is None:
                stats = self.row_stats(row)
                value = None if stats is None else stats[0]
            else:
                value = self.cells[row][column]
            if value is not None:
                shown[row] = round(value, 2)
        if not shown:
            return set()
        best = max(shown.values())
        return {row for row, value in shown.items() if value == best}


def _category_rank(category: str) -> tuple[int, str]:
    if category in CATEGORY_ORDER:
        return CATEGORY_ORDER.index(category), ""
    return len(CATEGORY_ORDER), category


def _metric_value(result: StudyResult, metric: str) -> float | None:
    if metric == "dice":
        return result.test_dice
    if metric == "mdice":
        return result.test_mdice
    raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")


def build_main_table(results: Sequence[StudyResult], metric: str = "dice") -> MainTable:
    """Arrange one grid cell's results (the caller filters by grid key) as the main table.

    ``metric`` is what the cells show: ``"dice"`` (the sample-mean test Dice, as the paper) or
    ``"mdice"`` (the class-mean test Dice; missing for results without per-class scores).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    datasets: dict[str, str] = {}
    for result in results:
        datasets.setdefault(result.dataset, result.category)
    columns = sorted(
        ((category, name) for name, category in datasets.items()),
        key=lambda item: _category_rank(item[0]),
    )
    models = list(dict.fromkeys(r.model for r in results if r.source == "storage"))
    models += [m for m in dict.fromkeys(r.model for r in results) if m not in models]
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
        value = _metric_value(result, metric)
        if value is not None:
            cells[(result.model, result.learner_title)][result.dataset] = 100.0 * value
    table = MainTable(columns, rows, cells)
    if metric == "mdice":
        table.footnotes.append(MDICE_NOTE)
    if any(v is None for row in cells.values() for v in row.values()):
        why = "no complete trial yet (or no test result)"
        if metric == "mdice":
            why = (
                "no complete trial yet, or no per-class scores (outside results, trials from "
                "before they were recorded)"
            )
        table.footnotes.append(f"{MISSING}: {why}; left out of the means.")
    outside = sorted(
        {(r.model, r.learner_title, r.source) for r in results if r.source != "storage"}
    )
    for model, learner, source in outside:
        table.footnotes.append(f"{model} {learner}: from {source}, not from the study storage.")
    return table


def mean_text(stats: tuple[float, float] | None, n: int) -> str:
    """``mean ± std`` over ``n`` values; the mean alone when ``n`` is 1 (a std of one value is
    no spread), – when there is nothing."""
    if stats is None:
        return MISSING
    return f"{stats[0]:.2f}" if n == 1 else f"{stats[0]:.2f} ± {stats[1]:.2f}"


def _cell(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}"


def to_markdown(table: MainTable) -> str:
    """GitHub Markdown: the category of each column is written above its name."""
    header = ["Model", "Learner"] + [f"{name}<br>*{cat}*" for cat, name in table.datasets]
    header.append(MEAN)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    previous_model = None
    for model, learner in table.rows:
        shown_model = model if model != previous_model else ""
        previous_model = model
        values = [_cell(table.cells[(model, learner)][name]) for _, name in table.datasets]
        lines.append(
            "| "
            + " | ".join([shown_model, learner, *values, table.row_text((model, learner))])
            + " |"
        )
    blanks = [""] * len(table.datasets)
    lines.append("| " + " | ".join([AVERAGE, "", *blanks, table.average_text()]) + " |")
    notes = [f"\n{note}" for note in table.footnotes]
    return "\n".join(lines) + "".join(notes) + "\n"


def _category_spans(table: MainTable) -> list[tuple[str, int]]:
    """Consecutive (category, number of columns) groups, in column order."""
    spans: list[tuple[str, int]] = []
    for category, _ in table.datasets:
        if spans and spans[-1][0] == category:
            spans[-1] = (category, spans[-1][1] + 1)
        else:
            spans.append((category, 1))
    return spans


def _latex_mean(text: str) -> str:
    """A "Mean ± Std" cell's text in LaTeX."""
    return "--" if text == MISSING else text.replace("±", "$\\pm$")


def _bold_latex(text: str, bold: bool) -> str:
    return f"\\textbf{{{text}}}" if bold else text


def to_latex(table: MainTable, caption: str | None = None, label: str | None = None) -> str:
    """A booktabs table: category headers over their columns (multicolumn + cmidrule).

    Needs ``\\usepackage{booktabs}``. The best value of each data set column and of the mean
    column is bold; missing cells are ``--`` and left out of the means.
    """
    n = len(table.datasets)
    lines = ["\\begin{table}[t]", "\\centering"]
    if caption:
        lines.append(f"\\caption{{{latex_escape(caption)}}}")
    if label:
        lines.append(f"\\label{{{label}}}")
    lines.append("\\begin{tabular}{ll" + "r" * n + "c}")
    lines.append("\\toprule")
    groups, rules, start = [], [], 3
    for category, width in _category_spans(table):
        groups.append(f"\\multicolumn{{{width}}}{{c}}{{{latex_escape(category)}}}")
        rules.append(f"\\cmidrule(lr){{{start}-{start + width - 1}}}")
        start += width
    lines.append(" & ".join(["", "", *groups, ""]) + " \\\\")
    if rules:
        lines.append(" ".join(rules))
    names = [latex_escape(name) for _, name in table.datasets]
    lines.append(" & ".join(["Model", "Learner", *names, "Mean $\\pm$ Std"]) + " \\\\")
    lines.append("\\midrule")
    best = {name: table.best_rows(name) for _, name in table.datasets}
    best_mean = table.best_rows(None)
    previous_model = None
    for row in table.rows:
        model, learner = row
        if previous_model is not None and model != previous_model:
            lines.append("\\midrule")
        shown_model = latex_escape(model) if model != previous_model else ""
        previous_model = model
        values = [
            _bold_latex(_cell(table.cells[row][name]).replace(MISSING, "--"), row in best[name])
            for _, name in table.datasets
        ]
        mean = _bold_latex(_latex_mean(table.row_text(row)), row in best_mean)
        lines.append(" & ".join([shown_model, latex_escape(learner), *values, mean]) + " \\\\")
    lines.append("\\midrule")
    lines.append(
        " & ".join(
            [f"\\multicolumn{{2}}{{l}}{{{AVERAGE}}}", *[""] * n, _latex_mean(table.average_text())]
        )
        + " \\\\"
    )
    lines.append("\\bottomrule")
    lines.append("\\end{tabular}")
    lines.extend(
        f"\\par\\smallskip{{\\footnotesize {latex_escape(note).replace(MISSING, '--')}}}"
        for note in table.footnotes
    )
    lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


def to_html(table: MainTable) -> str:
    """An HTML ``<table>``: category header row with colspans, best values in ``<b>``."""
    esc = html.escape
    parts = [
        '<table class="main">',
        "<thead>",
        '<tr><th rowspan="2">Model</th><th rowspan="2">Learner</th>',
    ]
    for category, width in _category_spans(table):
        parts.append(f'<th colspan="{width}">{esc(category)}</th>')
    parts.append(f'<th rowspan="2">{esc(MEAN)}</th></tr>')
    parts.append("<tr>" + "".join(f"<th>{esc(name)}</th>" for _, name in table.datasets) + "</tr>")
    parts.append("</thead>")
    parts.append("<tbody>")
    best = {name: table.best_rows(name) for _, name in table.datasets}
    best_mean = table.best_rows(None)
    previous_model = None
    for row in table.rows:
        model, learner = row
        group = ' class="group"' if previous_model is not None and model != previous_model else ""
        shown_model = esc(model) if model != previous_model else ""
        previous_model = model
        cells = []
        for _, name in table.datasets:
            text = esc(_cell(table.cells[row][name]))
            cells.append(f"<td>{'<b>' + text + '</b>' if row in best[name] else text}</td>")
        mean = esc(table.row_text(row))
        cells.append(f"<td>{'<b>' + mean + '</b>' if row in best_mean else mean}</td>")
        parts.append(
            f"<tr{group}><td>{shown_model}</td><td>{esc(learner)}</td>{''.join(cells)}</tr>"
        )
    blanks = "<td></td>" * len(table.datasets)
    parts.append(
        f'<tr class="average"><td colspan="2">{esc(AVERAGE)}</td>{blanks}'
        f"<td>{esc(table.average_text())}</td></tr>"
    )
    parts.append("</tbody></table>")
    parts.extend(f'<p class="note">{esc(note)}</p>' for note in table.footnotes)
    return "\n".join(parts) + "\n"


MAIN_TABLE_COLUMNS = (
    "grid",
    "model",
    "learner",
    "learner_title",
    "category",
    "dataset",
    "test_dice",
    "test_mdice",
    "test_iou",
    "val_dice",
    "best_trial",
    "source",
    "study",
)
"""The columns of ``main_table.csv`` (the keys of :func:`main_table_rows`), also with no rows."""


def main_table_rows(results: Sequence[StudyResult]) -> list[dict[str, Any]]:
    """The main table as tidy rows (one per model, learner, data set and grid cell) for CSV.

    ``test_dice`` is in [0, 1] as stored (empty when missing); ``test_mdice`` beside it is the
    class-mean Dice (empty without per-class scores); ``source`` tells a study from an outside
    result.
    """
    return [
        {
            "grid": r.grid,
            "model": r.model,
            "learner": r.learner,
            "learner_title": r.learner_title,
            "category": r.category,
            "dataset": r.dataset,
            "test_dice": r.test_dice,
            "test_mdice": r.test_mdice,
            "test_iou": r.test_iou,
            "val_dice": r.val_dice,
            "best_trial": r.best_trial,
            "source": r.source,
            "study": r.study,
        }
        for r in results
    ]


UNNAMED_CLASS = "(unnamed)"


def _column_order(results: Sequence[StudyResult]) -> list[StudyResult]:
    """Results in the main table's row order (model, catalogue learner order), then grid."""
    models = list(dict.fromkeys(r.model for r in results))
    titles = [info.title for info in LEARNERS.values()]

    def rank(r: StudyResult) -> tuple[int, int, str, str]:
        known = titles.index(r.learner_title) if r.learner_title in titles else len(titles)
        return models.index(r.model), known, r.learner_title, r.grid

    return sorted(results, key=rank)


def _best_cells(row: int, values: Sequence[float | None], offset: int) -> set[tuple[int, int]]:
    """The (row, column) cells of the best value shown (two decimals; ties all bold)."""
    shown = {i: round(v, 2) for i, v in enumerate(values) if v is not None}
    if len(shown) < 2:
        return set()
    best = max(shown.values())
    return {(row, offset + i) for i, v in shown.items() if v == best}


def per_class_table(results: Sequence[StudyResult]) -> Summary | None:
    """Test Dice x 100 per class of each multi-class data set, one column per model + learner.

    Each study contributes its best trial (chosen on validation) and that trial's per-class
    scores. Under each data set's classes come two rows: mDice (the class mean) and Dice (the
    sample mean, as in the main table). Data sets where no study recorded two or more classes
    are left out: their one class's Dice is the main table's. ``None`` when no study of the
    storage has per-class scores for a multi-class data set (outside results never have them),
    so that no empty file is written.

    The records (for CSV) are tidy: one per data set, class and study, Dice and IoU in [0, 1].
    """
    from tunevlseg.collect.summaries import Summary

    scored = [r for r in results if r.source == SOURCE_STORAGE and r.per_class]
    multi = {r.dataset for r in scored if len(r.per_class) >= 2}
    scored = _column_order([r for r in scored if r.dataset in multi])
    if not scored:
        return None
    columns = list(dict.fromkeys((r.grid, r.model, r.learner_title) for r in scored))
    by_cell = {(r.dataset, r.grid, r.model, r.learner_title): r for r in scored}
    categories = {r.dataset: r.category for r in scored}
    datasets = sorted(categories, key=lambda name: (_category_rank(categories[name]), name))
    labels = [
        f"{model} {learner}" + (f" ({grid})" if grid else "") for grid, model, learner in columns
    ]
    header = ["Data set", "Class", "Images", *labels]
    rows: list[list[str]] = []
    bold: set[tuple[int, int]] = set()
    records: list[dict[str, Any]] = []

    def add_row(first: str, label: str, images: str, values: list[float | None]) -> None:
        bold.update(_best_cells(len(rows), values, 3))
        rows.append([first, label, images, *(_cell(v) for v in values)])

    for dataset in datasets:
        studies = [by_cell.get((dataset, *column)) for column in columns]
        present = [r for r in studies if r is not None]
        classes = sorted({name for r in present for name in r.per_class})
        for index, name in enumerate(classes):
            counts = sorted(
                {
                    int(r.per_class[name]["n"])
                    for r in present
                    if name in r.per_class and "n" in r.per_class[name]
                }
            )
            values = [
                100.0 * float(r.per_class[name]["dice"])
                if r is not None and name in r.per_class
                else None
                for r in studies
            ]
            add_row(
                dataset if index == 0 else "",
                name or UNNAMED_CLASS,
                "/".join(map(str, counts)) or MISSING,
                values,
            )
            for r in present:
                if name not in r.per_class:
                    continue
                scores = r.per_class[name]
                records.append(
                    {
                        "grid": r.grid,
                        "model": r.model,
                        "learner": r.learner,
                        "learner_title": r.learner_title,
                        "category": r.category,
                        "dataset": dataset,
                        "class_name": name,
                        "test_dice": scores.get("dice"),
                        "test_iou": scores.get("iou"),
                        "n": scores.get("n"),
                        "best_trial": r.best_trial,
                        "study": r.study,
                    }
                )
        add_row(
            "",
            "mDice (class mean)",
            "",
            [None if r is None or r.test_mdice is None else 100.0 * r.test_mdice for r in studies],
        )
        add_row(
            "",
            "Dice (sample mean)",
            "",
            [None if r is None or r.test_dice is None else 100.0 * r.test_dice for r in studies],
        )
    notes = [
        "Test Dice × 100 of each study's best trial (chosen on validation), per class. "
        + MDICE_NOTE,
        (
            "Images: test samples of the class. Data sets with a single class are left out "
            "(its Dice is the main table's)."
        ),
    ]
    if any(v == MISSING for row in rows for v in row[3:]):
        notes.append(f"{MISSING}: no per-class score of that study for that class.")
    text = TextTable(
        "per_class",
        "Test Dice per class (best trial of each study)",
        header,
        rows,
        frozenset(range(2, len(header))),
        notes,
        frozenset(bold),
    )
    return Summary(records, text)
