"""Write a sweep's result tables under ``<output_dir>/results`` (also for a partial sweep)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tunevlseg.collect.results import StudyResult, results_frame, study_results
from tunevlseg.collect.tables import build_main_table, to_markdown
from tunevlseg.config.loader import Experiment
from tunevlseg.paths import SweepPaths


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


def write_reports(experiment: Experiment, out_dir: Path | None = None) -> Report:
    from tunevlseg.cluster.launch import sweep_storage
    from tunevlseg.tuning.storage import open_storage

    storage_url = sweep_storage(experiment)
    if not storage_url.exists:
        raise FileNotFoundError(f"no study storage at {storage_url} yet: launch the sweep first")
    results = study_results(open_storage(storage_url), experiment.spec.name)
    folder = out_dir or SweepPaths(experiment.output_dir).results
    folder.mkdir(parents=True, exist_ok=True)
    files = [_write(folder / "studies.csv", results_frame(results).to_csv(index=False))]
    shown = []
    for key, markdown in render_main_tables(results).items():
        name = f"main_table{'-' + key if key else ''}.md"
        title = f"## {experiment.spec.name}{' (' + key + ')' if key else ''}: test Dice × 100\n\n"
        files.append(_write(folder / name, title + markdown))
        shown.append(title + markdown)
    return Report(folder, "\n".join(shown), files)
