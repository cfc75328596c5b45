"""``tvls-collect [FILE]``: the result tables and plots of a sweep, complete or partial.

    tvls-collect experiments/medical.yaml                       # <output_dir>/<sweep>/results/
    tvls-collect experiments/medical.yaml --results e2e.csv     # plus outside numbers
    tvls-collect --results paper.csv --out tables/              # outside numbers only
    tvls-collect --storage journal:///shared/med.log --sweep medical --out tables/
    tvls-collect experiments/natural.yaml --main-metric mdice   # class-mean Dice in the main table
    tvls-collect experiments/medical.yaml --only learner=coop   # results/only-learner=coop/

The main table goes to stdout as Markdown; warnings and the list of written files to stderr.
With ``--json``, stdout gets one JSON object instead (:data:`JSON_KEYS` lists its keys).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunevlseg.cli import _app

if TYPE_CHECKING:
    from tunevlseg.collect.report import Report
    from tunevlseg.config.loader import Experiment
    from tunevlseg.config.select import Selection

JSON_KEYS = {
    "folder": "the results folder (absolute path)",
    "studies": "number of studies read from the storage",
    "only": "the --only selection the tables cover, as one --only argument (null: the whole sweep)",
    "main_metric": "what the main table shows: dice or mdice",
    "results": "the main table, one object per cell (model, learner, data set, grid cell) with "
    "the keys of main_table.csv: grid, model, learner, learner_title, category, dataset, "
    "test_dice, test_mdice, test_iou, val_dice (in [0, 1], null when missing), best_trial, "
    "source (storage or an outside file), study",
    "zero_shot": "per study with data.unseen_classes, the keys of zero_shot.csv: grid, model, "
    "learner, learner_title, category, dataset, seen_classes, unseen_classes (';'-joined), "
    "miou_seen, miou_unseen, hiou, mdice_seen, mdice_unseen (in [0, 1], null when missing), "
    "basis (pooled or per-image), best_trial, study; [] when no study has unseen classes",
    "files": "every file written (absolute paths)",
    "warnings": "the warnings also printed to stderr",
}
"""The keys of ``tvls-collect --json``, documented in ``--help``."""


def build_parser() -> argparse.ArgumentParser:
    p = _app.parser(
        "tvls-collect",
        "Write the result tables (Markdown, LaTeX, CSV, HTML) and plots of a sweep from its study "
        "storage, and/or from CSV files of outside results.",
        _app.examples(
            "tvls-collect experiments/demo.yaml            # tables in runs/demo/demo/results/",
            "tvls-collect --storage runs/demo/optuna.journal --sweep demo --out tables/ --json",
            "tvls-collect experiments/demo.yaml --only learner=coop,vpt   # part of the sweep",
        )
        + "\n\n"
        + _app.json_keys_help(JSON_KEYS),
    )
    p.add_argument(
        "experiment",
        nargs="?",
        help="the experiment YAML file (optional with --results or --storage)",
    )
    p.add_argument(
        "--results",
        type=Path,
        action="append",
        default=[],
        metavar="FILE.csv",
        help="outside results: columns model,learner,dataset,category,test_dice (Dice in [0, 1]); "
        "repeatable; the storage wins where both give a cell",
    )
    p.add_argument(
        "--storage",
        metavar="URL",
        help="a storage URL (or the path of a journal file) to read instead of the experiment "
        "file's",
    )
    p.add_argument("--sweep", help="with --storage: only this sweep's studies (default: all)")
    p.add_argument("--out", type=Path, help="output folder (default: <output_dir>/<sweep>/results)")
    p.add_argument(
        "--only",
        action="append",
        metavar="KEY=VALUE[,KEY=VALUE...]",
        help="tables over part of the sweep, written to "
        "<output_dir>/<sweep>/results/only-<selection> (default) so the whole sweep's tables "
        "stay: keys model, learner, dataset and the grid axes, as for tvls-launch --only; needs "
        "the experiment file",
    )
    p.add_argument(
        "--format",
        default="md,latex,csv,html",
        help="comma-separated formats among md, latex, csv, html (default: all)",
    )
    p.add_argument(
        "--main-metric",
        default="dice",
        help="what the main table shows: dice (the mean over test samples, as the paper; default) "
        "or mdice (the mean over classes of each class's test Dice; – without per-class scores)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print what was collected as one JSON object (keys below) instead of the Markdown "
        "table",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-importance", action="store_true", help="skip hyperparameter importances")
    p.add_argument(
        "--gpus-per-task",
        type=int,
        metavar="N",
        help="GPUs each trial held, for GPU-hours of studies that do not record it "
        "(default: the experiment file's cluster.slurm.gpus)",
    )
    return p


def _usage(message: str) -> _app.CommandError:
    return _app.CommandError(message, code=_app.EXIT_USAGE)


def command(args: argparse.Namespace) -> int:
    from tunevlseg.collect.outside import OutsideResultsError, read_outside_results
    from tunevlseg.collect.report import parse_formats, write_reports, write_sweep_reports
    from tunevlseg.collect.tables import METRICS
    from tunevlseg.tuning.storage import StorageURLError, parse_storage_url

    if not (args.experiment or args.results or args.storage):
        raise _usage("give an experiment file, --storage URL or at least one --results FILE.csv")
    if args.experiment and args.storage:
        raise _usage("give an experiment file or --storage, not both")
    if args.sweep and not args.storage:
        raise _usage("--sweep goes with --storage (an experiment file names its sweep)")
    if args.only and not args.experiment:
        raise _usage("--only goes with an experiment file (its studies give the keys and values)")
    if not args.experiment and args.out is None:
        raise _usage("without an experiment file, --out DIR says where to write")
    if args.gpus_per_task is not None and args.gpus_per_task < 0:
        raise _usage("--gpus-per-task must be 0 or more")
    try:
        formats = parse_formats(args.format)
    except ValueError as error:
        raise _usage(f"--format: {error}") from None
    main_metric = args.main_metric.strip().lower()
    if main_metric not in METRICS:
        raise _usage(
            f"--main-metric: unknown metric {args.main_metric!r}; choose from {', '.join(METRICS)}"
        )
    try:
        outside = read_outside_results(args.results)
    except OutsideResultsError as error:
        raise _usage(str(error)) from None
    options = {
        "outside": outside,
        "formats": formats,
        "plots": not args.no_plots,
        "importance": not args.no_importance,
        "gpus_per_task": args.gpus_per_task,
        "main_metric": main_metric,
    }
    selection = None
    try:
        if args.experiment:
            from tunevlseg.config.loader import load_experiment

            experiment = load_experiment(args.experiment)
            if args.only:
                report, selection = _selection_report(experiment, args.only, args.out, options)
            else:
                report = write_reports(experiment, args.out, **options)
        else:
            storage = None
            if args.storage:
                try:
                    storage = parse_storage_url(args.storage).resolved(Path.cwd())
                except StorageURLError as error:
                    raise _usage(str(error)) from None
            report = write_sweep_reports(storage, args.sweep, args.out, **options)
    except FileNotFoundError as error:
        raise _app.CommandError(str(error)) from None
    if args.json:
        record = {
            "folder": str(report.folder.resolve()),
            "studies": report.n_studies,
            "only": None if selection is None else selection.text,
            "main_metric": main_metric,
            "results": report.results,
            "zero_shot": report.zero_shot,
            "files": [str(path.resolve()) for path in report.files],
            "warnings": report.warnings,
        }
        _app.data().print_json(json.dumps(record, default=str))
    else:
        _app.data().print(report.main_markdown, markup=False)
    err = _app.messages()
    for warning in report.warnings:
        err.print(f"warning: {warning}", markup=False)
    if selection is not None:
        err.print(f"a selection: only {selection.text}, {report.n_studies} studies", markup=False)
    shown = [p.name for p in report.files if p.parent == report.folder]
    err.print(
        f"wrote {len(report.files)} files under {report.folder}: {', '.join(shown)}"
        + (
            f" and {len(report.files) - len(shown)} plots" if len(shown) < len(report.files) else ""
        ),
        markup=False,
    )
    return _app.EXIT_OK


def _selection_report(
    experiment: Experiment, only: list[str], out: Path | None, options: dict[str, Any]
) -> tuple[Report, Selection]:
    """The tables over the studies ``--only`` selects, by default in their own folder below the
    sweep's results (the collector job's whole-sweep tables stay as they are)."""
    from tunevlseg.collect.report import build_report
    from tunevlseg.collect.results import collect_studies
    from tunevlseg.config.grid import expand
    from tunevlseg.config.select import SelectionError, select
    from tunevlseg.paths import SweepPaths
    from tunevlseg.tuning.storage import open_storage, sweep_storage

    try:
        expansion, selection = select(expand(experiment), only)
    except SelectionError as error:
        raise _usage(f"--only: {error}") from None
    assert selection is not None
    storage = sweep_storage(experiment)
    if not storage.exists:
        raise FileNotFoundError(f"no study storage at {storage} yet: launch the sweep first")
    options = dict(options)
    gpus = options.pop("gpus_per_task")
    gpus = gpus if gpus is not None else experiment.spec.cluster.slurm.gpus
    chosen = {spec.name for spec in expansion.studies}
    studies = [
        data
        for data in collect_studies(open_storage(storage), experiment.spec.name, gpus_per_task=gpus)
        if data.result.study in chosen
    ]
    folder = out or SweepPaths.of(experiment).results / selection.folder_name
    title = f"{experiment.spec.name}, only {selection.text}"
    return build_report(studies, folder, title=title, **options), selection


def main(argv: list[str] | None = None) -> int:
    return _app.run(command, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
