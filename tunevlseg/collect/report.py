"""Write a sweep's result tables and plots under ``<output_dir>/<sweep>/results`` (also for a
partial sweep, and from outside result files alone).

Layout of the folder (every file written to a temporary name, then renamed)::

    main_table[-<grid key>].md|.tex   the paper's Table 3, one per grid cell (test Dice, or with
                                      main_metric="mdice" the class-mean Dice)
    main_table.csv                    the same numbers, tidy (one row per cell; Dice and mDice)
    per_class.*                       test Dice per class of each multi-class data set, with its
                                      mDice and Dice (only when some study recorded per-class
                                      scores of a multi-class data set)
    zero_shot.*                       mIoU and mDice on seen and unseen classes and hIoU per
                                      study (only when some study has data.unseen_classes)
    studies.csv                       one row per study, every collected field
    trial_states.*  best_params.*  parameters.*  compute.*  importance.*   (.md .tex .csv; no
                                      .csv for a table without rows, a note says so instead)
    report.html                       everything above and the plots, self-contained
    plots/prompt_depth.png  plots/importance.png  plots/history/history-NNN.png
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tunevlseg.collect import render, summaries, tables
from tunevlseg.collect.page import Section, image_section, render_page
from tunevlseg.collect.results import StudyData, StudyResult, collect_studies
from tunevlseg.collect.zero_shot import ZERO_SHOT_COLUMNS, zero_shot_table
from tunevlseg.config.loader import Experiment
from tunevlseg.paths import SweepPaths
from tunevlseg.tuning.storage import StorageURL, parse_storage_url, sweep_storage

FORMATS = ("md", "latex", "csv", "html")
T = TypeVar("T")


@dataclass(frozen=True)
class Report:
    """What a collector run wrote, and what it has to say about it."""

    folder: Path
    main_markdown: str
    files: list[Path]
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    n_studies: int = 0
    results: list[dict[str, Any]] = field(default_factory=list)  # main_table.csv's rows
    zero_shot: list[dict[str, Any]] = field(default_factory=list)  # zero_shot.csv's rows


def parse_formats(text: str) -> tuple[str, ...]:
    """``md,latex`` -> ("md", "latex"); ``tex`` and ``markdown`` are accepted as aliases.

    Raises:
        ValueError: naming the unknown format and the known ones.
    """
    aliases = {"tex": "latex", "markdown": "md"}
    chosen = []
    for name in (part.strip().lower() for part in text.split(",")):
        if not name:
            continue
        name = aliases.get(name, name)
        if name not in FORMATS:
            raise ValueError(f"unknown format {name!r}; choose from {', '.join(FORMATS)}")
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise ValueError(f"no format given; choose from {', '.join(FORMATS)}")
    return tuple(chosen)


def _write(path: Path, content: str | bytes) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(content, bytes):
        tmp.write_bytes(content)
    else:
        tmp.write_text(content, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _csv(records: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Records as CSV with a header row; None is an empty field, floats keep full precision.

    Raises:
        ValueError: no records and no columns: the file would hold nothing, not even a header.
    """
    columns = list(columns or (records[0] if records else []))
    if not columns:
        raise ValueError("no records and no columns: nothing to write as CSV")
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for record in records:
        writer.writerow({k: "" if v is None else v for k, v in record.items()})
    return out.getvalue()


def _studies_csv(results: Sequence[StudyResult]) -> str:
    columns = [*StudyResult.__dataclass_fields__, "test_mdice"]
    rows = []
    for result in results:
        row = {name: getattr(result, name) for name in columns}
        row["best_params"] = json.dumps(dict(result.best_params), sort_keys=True)
        row["per_class"] = json.dumps(
            {k: dict(v) for k, v in result.per_class.items()}, sort_keys=True
        )
        row["unseen_classes"] = ";".join(result.unseen_classes)
        rows.append(row)
    return _csv(rows, columns)


def _grid_suffix(key: str) -> str:
    return f"-{key}" if key else ""


def render_main_tables(results: list[StudyResult], main_metric: str = "dice") -> dict[str, str]:
    """One main table per grid cell ("" when the sweep has no grid axes), as Markdown."""
    keys = sorted({r.grid for r in results})
    return {
        key: tables.to_markdown(
            tables.build_main_table([r for r in results if r.grid == key], main_metric)
        )
        for key in keys
    }


class _Clock:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def run(self, stage: str, work: Callable[[], T]) -> T:
        started = time.perf_counter()
        value = work()
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - started
        return value


def build_report(
    studies: Sequence[StudyData],
    folder: Path,
    *,
    title: str,
    outside: Sequence[StudyResult] = (),
    formats: Iterable[str] = FORMATS,
    plots: bool = True,
    importance: bool = True,
    clock: _Clock | None = None,
    main_metric: str = "dice",
) -> Report:
    """Write every table and plot of the collected studies plus outside results into ``folder``.

    ``main_metric`` is what the main tables show: ``"dice"`` (the sample-mean test Dice, as the
    paper) or ``"mdice"`` (the class-mean test Dice, see ``results.class_mean``).
    """
    from tunevlseg.collect.importance import Importances, learner_importances
    from tunevlseg.collect.outside import merge_results

    if main_metric not in tables.METRICS:
        raise ValueError(
            f"unknown main metric {main_metric!r}; choose from {', '.join(tables.METRICS)}"
        )
    clock = clock or _Clock()
    formats = tuple(formats)
    folder.mkdir(parents=True, exist_ok=True)
    results, warnings = merge_results([d.result for d in studies], outside)
    if main_metric == "mdice" and not any(r.per_class for r in results):
        warnings.append("main metric mdice: no result has per-class scores, so every cell is –")
    files: list[Path] = []
    sections: list[Section] = []
    zero_shot = zero_shot_table(results)

    def tables_stage() -> str:
        shown = []
        for key in sorted({r.grid for r in results}):
            table = tables.build_main_table([r for r in results if r.grid == key], main_metric)
            heading = (
                f"{title}{' (' + key + ')' if key else ''}: {tables.METRIC_TITLES[main_metric]}"
            )
            markdown = f"## {heading}\n\n" + tables.to_markdown(table)
            shown.append(markdown)
            stem = f"main_table{_grid_suffix(key)}"
            if "md" in formats:
                files.append(_write(folder / f"{stem}.md", markdown))
            if "latex" in formats:
                latex = tables.to_latex(table, caption=heading, label=f"tab:{stem}")
                files.append(_write(folder / f"{stem}.tex", latex))
            sections.append(Section(heading, tables.to_html(table)))
        if "csv" in formats:
            rows = tables.main_table_rows(results)
            files.append(_write(folder / "main_table.csv", _csv(rows, tables.MAIN_TABLE_COLUMNS)))
            if studies:
                files.append(
                    _write(folder / "studies.csv", _studies_csv([d.result for d in studies]))
                )
        per_class = tables.per_class_table(results)
        if per_class is not None:  # no per-class scores: no empty per_class files
            text = per_class.text
            if "md" in formats:
                files.append(
                    _write(
                        folder / "per_class.md", f"## {text.title}\n\n" + render.to_markdown(text)
                    )
                )
            if "latex" in formats:
                files.append(_write(folder / "per_class.tex", render.to_latex(text)))
            if "csv" in formats:
                files.append(_write(folder / "per_class.csv", _csv(per_class.records)))
            sections.append(Section(text.title, render.to_html(text)))
        if zero_shot is not None:  # no study with unseen classes: no zero_shot files
            text = zero_shot.text
            if "md" in formats:
                markdown = f"## {text.title}\n\n" + render.to_markdown(text)
                files.append(_write(folder / "zero_shot.md", markdown))
            if "latex" in formats:
                files.append(_write(folder / "zero_shot.tex", render.to_latex(text)))
            if "csv" in formats:
                csv_text = _csv(zero_shot.records, ZERO_SHOT_COLUMNS)
                files.append(_write(folder / "zero_shot.csv", csv_text))
            sections.append(Section(text.title, render.to_html(text)))
        return "\n".join(shown)

    main_markdown = clock.run("tables", tables_stage)

    storage_results = [d.result for d in studies]
    importances = (
        clock.run("importance", lambda: learner_importances(studies))
        if importance
        else Importances([], 0, 0, [])
    )
    warnings += [f"importance: {failure}" for failure in importances.failed]

    def summary_stage() -> None:
        built = [
            summaries.trial_states(storage_results),
            summaries.best_params(storage_results),
            summaries.parameter_counts(storage_results),
            summaries.compute(storage_results),
        ]
        if importance:
            built.append(summaries.importance(importances))
        for summary in built:
            text = summary.text
            # A summary without records has no columns to head a CSV: no file, and a note
            # where the table is shown instead.
            no_csv = "csv" in formats and not summary.records
            note = f"No rows, so no {text.name}.csv was written." if no_csv else ""
            if "md" in formats:
                markdown = (
                    f"## {text.title}\n\n"
                    + render.to_markdown(text)
                    + (f"\n{note}\n" if note else "")
                )
                files.append(_write(folder / f"{text.name}.md", markdown))
            if "latex" in formats:
                files.append(_write(folder / f"{text.name}.tex", render.to_latex(text)))
            if "csv" in formats:
                path = folder / f"{text.name}.csv"
                if summary.records:
                    files.append(_write(path, _csv(summary.records)))
                else:  # one from an earlier run with rows would contradict this one
                    path.unlink(missing_ok=True)
            body = render.to_html(text) + (
                f'<p class="note">{html.escape(note)}</p>\n' if note else ""
            )
            sections.append(Section(text.title, body))

    if studies:  # outside results alone have no trials to tabulate
        clock.run("summaries", summary_stage)

    if plots:

        def plot_stage() -> None:
            from tunevlseg.collect import plots as figures

            plot_dir = folder / "plots"
            depth = figures.plot_prompt_depth(studies, plot_dir / "prompt_depth.png")
            if depth:
                files.append(depth)
                sections.append(image_section("Test Dice against prompt depth", [depth]))
            weights = (
                figures.plot_importance(importances, plot_dir / "importance.png")
                if importance
                else None
            )
            if weights:
                files.append(weights)
                sections.append(image_section("Hyperparameter importance", [weights]))
            pages = figures.plot_history_pages(studies, plot_dir / "history")
            for stale in sorted((plot_dir / "history").glob("history-*.png"))[len(pages) :]:
                stale.unlink()
            files.extend(pages)
            if pages:
                sections.append(image_section("Optimisation history", pages))

        clock.run("plots", plot_stage)

    if "html" in formats:
        page = clock.run("html", lambda: render_page(f"{title}: results", sections, warnings))
        files.append(_write(folder / "report.html", page))
    return Report(
        folder,
        main_markdown,
        files,
        warnings,
        clock.timings,
        len(studies),
        tables.main_table_rows(results),
        zero_shot.records if zero_shot is not None else [],
    )


def write_sweep_reports(
    storage: StorageURL | None,
    sweep: str | None,
    folder: Path,
    *,
    outside: Sequence[StudyResult] = (),
    formats: Iterable[str] = FORMATS,
    plots: bool = True,
    importance: bool = True,
    gpus_per_task: int | None = None,
    main_metric: str = "dice",
) -> Report:
    """The sweep's tables from its storage alone (what the collector job runs on a node).

    ``storage`` None: only the outside results are shown (``tvls-collect --results F.csv``).
    """
    clock = _Clock()
    studies: list[StudyData] = []
    if storage is not None:
        from tunevlseg.tuning.storage import open_storage

        if not storage.exists:
            raise FileNotFoundError(f"no study storage at {storage} yet: launch the sweep first")
        studies = clock.run(
            "read",
            lambda: collect_studies(open_storage(storage), sweep, gpus_per_task=gpus_per_task),
        )
    return build_report(
        studies,
        folder,
        title=sweep or "results",
        outside=outside,
        formats=formats,
        plots=plots,
        importance=importance,
        clock=clock,
        main_metric=main_metric,
    )


def collector_job(
    storage_url: str, sweep: str, folder: str, gpus_per_task: int | None = None
) -> list[str]:
    """Entry point of the collector job submitted after the arrays; returns the files written."""
    report = write_sweep_reports(
        parse_storage_url(storage_url), sweep, Path(folder), gpus_per_task=gpus_per_task
    )
    return [str(path) for path in report.files]


def write_reports(
    experiment: Experiment,
    out_dir: Path | None = None,
    *,
    outside: Sequence[StudyResult] = (),
    formats: Iterable[str] = FORMATS,
    plots: bool = True,
    importance: bool = True,
    gpus_per_task: int | None = None,
    main_metric: str = "dice",
) -> Report:
    """The sweep's report; GPUs per task default to the experiment file's ``cluster.slurm.gpus``."""

    folder = out_dir or SweepPaths.of(experiment).results
    gpus = gpus_per_task if gpus_per_task is not None else experiment.spec.cluster.slurm.gpus
    return write_sweep_reports(
        sweep_storage(experiment),
        experiment.spec.name,
        folder,
        outside=outside,
        formats=formats,
        plots=plots,
        importance=importance,
        gpus_per_task=gpus,
        main_metric=main_metric,
    )
