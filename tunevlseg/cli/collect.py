"""``tvls-collect [FILE]``: the result tables and plots of a sweep, complete or partial.

    tvls-collect experiments/medical.yaml                       # <output_dir>/<sweep>/results/
    tvls-collect experiments/medical.yaml --results e2e.csv     # plus outside numbers
    tvls-collect --results paper.csv --out tables/              # outside numbers only
    tvls-collect --storage journal:///shared/med.log --sweep medical --out tables/
    tvls-collect experiments/natural.yaml --main-metric mdice   # class-mean Dice in the main table

The main table goes to stdout as Markdown; warnings and the list of written files to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tunevlseg.cli import _app


def build_parser() -> argparse.ArgumentParser:
    p = _app.parser(
        "tvls-collect",
        "Write the result tables (Markdown, LaTeX, CSV, HTML) and plots of a sweep from its study "
        "storage, and/or from CSV files of outside results.",
    )
    p.add_argument("experiment", nargs="?", help="the experiment YAML file (optional with --results or --storage)")
    p.add_argument(
        "--results",
        type=Path,
        action="append",
        default=[],
        metavar="FILE.csv",
        help="outside results: columns model,learner,dataset,category,test_dice (Dice in [0, 1]); "
        "repeatable; the storage wins where both give a cell",
    )
    p.add_argument("--storage", help="a storage URL to read instead of the experiment file's")
    p.add_argument("--sweep", help="with --storage: only this sweep's studies (default: all)")
    p.add_argument("--out", type=Path, help="output folder (default: <output_dir>/<sweep>/results)")
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
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument(
        "--no-importance", action="store_true", help="skip hyperparameter importances"
    )
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
        raise _usage(f"--main-metric: unknown metric {args.main_metric!r}; choose from {', '.join(METRICS)}")
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
    try:
        if args.experiment:
            from tunevlseg.config.loader import load_experiment

            report = write_reports(load_experiment(args.experiment), args.out, **options)
        else:
            storage = None
            if args.storage:
                try:
                    storage = parse_storage_url(args.storage).resolved(Path.cwd())
                except StorageURLError as error:
                    raise _usage(str(error)) from None
            report = write_sweep_reports(storage, args.sweep, args.out, **options)  # type: ignore[arg-type]
    except FileNotFoundError as error:
        raise _app.CommandError(str(error)) from None
    _app.data().print(report.main_markdown, markup=False)
    err = _app.messages()
    for warning in report.warnings:
        err.print(f"warning: {warning}", markup=False)
    shown = [p.name for p in report.files if p.parent == report.folder]
    err.print(
        f"wrote {len(report.files)} files under {report.folder}: {', '.join(shown)}"
        + (f" and {len(report.files) - len(shown)} plots" if len(shown) < len(report.files) else ""),
        markup=False,
    )
    return _app.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return _app.run(command, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
