"""Write a sweep's result tables under ``<output_dir>/results`` (also for a partial sweep)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tunevlseg.collect.results import StudyResult, results_frame, study_results
from tunevlseg.collect.tables import build_main_table, to_markdown
from tunevlseg.config.loader import Experiment
from tunevlseg.paths import SweepPaths
from tunevlseg.tuning.storage import StorageURL, parse_storage_url


@dataclass(frozen=True)
class Report:
    folder: Path
    main_markdown: str
    files: list[Path]


def _write(path: Path, text: str) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def render_main_tables(results: list[StudyResult]) -> dict[str, str]:
    """One main table per grid cell ("" when the sweep has no grid axes)."""
    keys = sorted({r.grid for r in results})
    return {key: to_markdown(build_main_table([r for r in results if r.grid == key])) for key in keys}


def write_sweep_reports(storage: StorageURL, sweep: str, folder: Path) -> Report:
    """The sweep's tables from its storage alone (what the collector job runs on a node)."""
    from tunevlseg.tuning.storage import open_storage

    if not storage.exists:
        raise FileNotFoundError(f"no study storage at {storage} yet: launch the sweep first")
    results = study_results(open_storage(storage), sweep)
    folder.mkdir(parents=True, exist_ok=True)
    files = [_write(folder / "studies.csv", results_frame(results).to_csv(index=False))]
    shown = []
    for key, markdown in render_main_tables(results).items():
        name = f"main_table{'-' + key if key else ''}.md"
        title = f"## {sweep}{' (' + key + ')' if key else ''}: test Dice × 100\n\n"
        files.append(_write(folder / name, title + markdown))
        shown.append(title + markdown)
    return Report(folder, "\n".join(shown), files)


def collector_job(storage_url: str, sweep: str, folder: str) -> list[str]:
    """Entry point of the collector job submitted after the arrays; returns the files written."""
    report = write_sweep_reports(parse_storage_url(storage_url), sweep, Path(folder))
    return [str(path) for path in report.files]


def write_reports(experiment: Experiment, out_dir: Path | None = None) -> Report:
    from tunevlseg.cluster.launch import sweep_storage

    folder = out_dir or SweepPaths(experiment.output_dir).results
    return write_sweep_reports(sweep_storage(experiment), experiment.spec.name, folder)
