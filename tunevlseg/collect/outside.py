"""Results from outside the study storage (``--results FILE.csv``), e.g. another paper's numbers.

A file has the columns ``model,learner,dataset,category,test_dice`` (more columns are ignored;
``grid`` may name a grid cell). ``test_dice`` is a fraction in [0, 1], as the studies store it.
``learner`` may be a catalogue key (``e2e``) or title (``End-to-end``), or any other name, shown
as written. Every problem is reported with the file and line, and all problems of all files at
once.

Merging: a cell is (grid, model, learner, data set). When a study in the storage and an outside
file both give a cell, the storage wins and a warning names the cell. Outside rows without a grid
key appear in every grid cell's table (they are reference numbers, not part of the grid).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from tunevlseg.catalog import LEARNERS, MODELS
from tunevlseg.collect.results import StudyResult

REQUIRED = ("model", "learner", "dataset", "category", "test_dice")


class OutsideResultsError(ValueError):
    """One or more problems in the outside result files; the message lists them all."""


def _learner(text: str) -> tuple[str, str]:
    """(key, title) of a learner given by key or title; unknown names are kept as written."""
    for key, info in LEARNERS.items():
        if text.lower() in (key, info.title.lower()):
            return key, info.title
    return text, text


@dataclass(frozen=True)
class _Seen:
    where: str


def _read_one(
    path: Path, seen: dict[tuple[str, str, str, str], _Seen], problems: list[str]
) -> list[StudyResult]:
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as error:
        problems.append(f"{path}: cannot read: {error.strerror or error}")
        return []
    try:
        with handle:
            return _rows(path, csv.DictReader(handle), seen, problems)
    except UnicodeDecodeError as error:
        problems.append(
            f"{path}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset "
            f"{error.start}); save it as a UTF-8 CSV file"
        )
    except csv.Error as error:
        problems.append(
            f"{path}: not a CSV file ({error}); give a text file with the columns "
            f"{', '.join(REQUIRED)}"
        )
    return []


def _rows(
    path: Path,
    reader: csv.DictReader[str],
    seen: dict[tuple[str, str, str, str], _Seen],
    problems: list[str],
) -> list[StudyResult]:
    results = []
    header = [name.strip() for name in reader.fieldnames or []]
    missing = [name for name in REQUIRED if name not in header]
    if missing:
        found = ", ".join(header) if header else "nothing (empty file)"
        problems.append(f"{path}:1: missing column(s) {', '.join(missing)}; found {found}")
        return []
    reader.fieldnames = header
    for row in reader:
        line = reader.line_num
        values = {k: (v or "").strip() for k, v in row.items() if k is not None}
        if not any(values.values()):
            continue
        if any(ch < " " and ch != "\t" for value in values.values() for ch in value):
            problems.append(
                f"{path}:{line}: control characters (NUL, ...) in a cell: not a CSV text file"
            )
            continue
        empty = [name for name in REQUIRED if not values.get(name)]
        if empty:
            problems.append(f"{path}:{line}: empty {', '.join(empty)}")
            continue
        try:
            dice = float(values["test_dice"])
        except ValueError:
            problems.append(f"{path}:{line}: test_dice {values['test_dice']!r} is not a number")
            continue
        if not (math.isfinite(dice) and 0.0 <= dice <= 1.0):
            hint = " (give Dice as a fraction, not × 100)" if 1.0 < dice <= 100.0 else ""
            problems.append(
                f"{path}:{line}: test_dice {values['test_dice']} is outside [0, 1]{hint}"
            )
            continue
        key, title = _learner(values["learner"])
        grid = values.get("grid", "")
        cell = (grid, values["model"], title, values["dataset"])
        if cell in seen:
            problems.append(
                f"{path}:{line}: duplicate result for model {cell[1]}, learner {title}, data set "
                f"{cell[3]}{', grid ' + grid if grid else ''} (first at {seen[cell].where})"
            )
            continue
        seen[cell] = _Seen(f"{path}:{line}")
        results.append(
            StudyResult(
                study="",
                sweep="",
                model=values["model"],
                learner=key,
                learner_title=title,
                dataset=values["dataset"],
                category=values["category"],
                grid=grid,
                n_trials=0,
                complete=0,
                failed=0,
                pruned=0,
                running=0,
                waiting=0,
                best_trial=None,
                best_value=None,
                test_dice=dice,
                test_iou=None,
                val_dice=None,
                source=path.name,
            )
        )
    return results


def read_outside_results(paths: Sequence[Path]) -> list[StudyResult]:
    """Read and check every file; duplicates are checked across files too.

    Raises:
        OutsideResultsError: listing every problem as ``FILE:LINE: what``.
    """
    seen: dict[tuple[str, str, str, str], _Seen] = {}
    problems: list[str] = []
    results = [r for path in paths for r in _read_one(Path(path), seen, problems)]
    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise OutsideResultsError(f"{count} in the outside results:\n  " + "\n  ".join(problems))
    return results


def _unknown_names(storage: Sequence[StudyResult], outside: Sequence[StudyResult]) -> list[str]:
    """A warning for each outside model or learner that neither the catalogue nor the storage
    knows: another paper's method is fine, a typo would silently become a row of its own."""
    models = set(MODELS) | {r.model for r in storage}
    learners = set(LEARNERS) | {r.learner for r in storage}
    warnings = []
    for kind, known, names in (
        ("model", models, {(r.model, r.source) for r in outside}),
        ("learner", learners, {(r.learner, r.source) for r in outside}),
    ):
        for name, source in sorted(names):
            if name not in known:
                warnings.append(
                    f"{source}: {kind} {name!r} is not a {kind} of the catalogue or of this sweep "
                    f"({', '.join(sorted(known))}); shown as a row of its own (check its spelling)"
                )
    return warnings


def merge_results(
    storage: Sequence[StudyResult], outside: Sequence[StudyResult]
) -> tuple[list[StudyResult], list[str]]:
    """The storage's results plus the outside ones; returns (results, warnings).

    Outside rows without a grid key are copied into every grid cell of the storage. A cell given
    by both keeps the storage's value (a study with no complete trial yet gives no value, so the
    outside number fills it) and a warning names it. A data set keeps the storage's category.
    """
    grids = sorted({r.grid for r in storage}) or [""]
    have = {(r.grid, r.model, r.learner_title, r.dataset): r for r in storage}
    categories = {r.dataset: r.category for r in storage}
    merged = list(storage)
    warnings = _unknown_names(storage, outside)
    for name in sorted({r.dataset for r in outside if r.dataset in categories}):
        theirs = sorted({r.category for r in outside if r.dataset == name} - {categories[name]})
        if theirs:
            warnings.append(
                f"data set {name}: category {categories[name]!r} from the storage, not "
                f"{', '.join(map(repr, theirs))}"
            )
    for result in outside:
        for grid in grids if result.grid == "" else [result.grid]:
            cell = (grid, result.model, result.learner_title, result.dataset)
            study = have.get(cell)
            where = f"{result.model} {result.learner_title} on {result.dataset}" + (
                f" ({grid})" if grid else ""
            )
            if study is not None and study.test_dice is not None:
                warnings.append(
                    f"{where}: the storage ({100 * study.test_dice:.2f}) wins over "
                    f"{result.source} ({100 * (result.test_dice or 0):.2f})"
                )
                continue
            if study is not None:
                warnings.append(f"{where}: no storage result yet; shown from {result.source}")
            merged.append(replace(result, grid=grid))
    return merged, warnings
