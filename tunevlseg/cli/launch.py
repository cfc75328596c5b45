"""``tvls-launch FILE``: plan the sweep, create its studies, submit (or run) the missing trials."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from rich.table import Table

from tunevlseg.cli import _app

if TYPE_CHECKING:
    from tunevlseg.cluster.plan import Plan
    from tunevlseg.config.loader import Experiment
    from tunevlseg.config.select import Selection


def build_parser() -> argparse.ArgumentParser:
    p = _app.parser(
        "tvls-launch",
        "Launch (or resume) the sweep an experiment file describes: SLURM arrays by default.",
        _app.examples(
            "tvls-launch experiments/demo.yaml --local        # run the demo sweep on this machine",
            "tvls-launch experiments/medical.yaml --dry-run   # the plan and its problems only",
            "tvls-launch experiments/medical.yaml --only learner=coop,vpt --only dataset=kvasir",
        ),
    )
    p.add_argument("experiment", help="the experiment YAML file")
    p.add_argument("--local", action="store_true", help="run the trials on this machine")
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan and job scripts; change nothing"
    )
    p.add_argument(
        "--json", action="store_true", help="with --dry-run: the plan and its problems as JSON"
    )
    p.add_argument("--force", action="store_true", help="accept changed study definitions")
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="re-run the trials that failed for good (once their cause is fixed), with the same "
        "parameters; a study stopped by repeated errors takes trials again",
    )
    p.add_argument(
        "--parallelism",
        type=_app.positive_int,
        help="local trials at once (default: cluster.parallelism)",
    )
    p.add_argument(
        "--only",
        action="append",
        metavar="KEY=VALUE[,KEY=VALUE...]",
        help="launch only part of the sweep: keys model, learner (name or label), dataset and "
        "the grid axes (model.use_upsampler=false, search.space.prompt_depth=3; values spelled "
        "as in study names); repeatable; one key twice = either value, different keys = both. "
        "A later launch without --only runs the rest",
    )
    return p


def _plan_table(plan: Plan, selection: Selection | None = None) -> Table:
    title = "Sweep plan" if selection is None else f"Sweep plan, only {selection.text}"
    table = Table(title=title, title_justify="left")
    for column in ("study", "trials", "done", "to run"):
        table.add_column(column, justify="left" if column == "study" else "right", no_wrap=True)
    for study in plan.studies:
        table.add_row(
            study.spec.name, str(study.spec.n_trials), str(study.progress.done), str(study.n_tasks)
        )
    return table


MATRIX_ABOVE = 12
"""Sweeps with more studies than this also get the compact model-learner x data set matrix."""


def _matrix_table(plan: Plan) -> Table:
    """Trials to run / trials per (model-learner, data set), grid cells added up."""
    cells: dict[tuple[str, str], list[int]] = {}
    for study in plan.studies:
        cell = cells.setdefault((study.spec.combination, study.spec.dataset.name), [0, 0])
        cell[0] += study.n_tasks
        cell[1] += study.spec.n_trials
    rows = list(dict.fromkeys(key[0] for key in cells))
    columns = list(dict.fromkeys(key[1] for key in cells))
    table = Table(title="Trials to run / in the budget", title_justify="left")
    table.add_column("model-learner", no_wrap=True)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row,
            *(
                f"{cells[(row, column)][0]}/{cells[(row, column)][1]}"
                if (row, column) in cells
                else "–"
                for column in columns
            ),
        )
    return table


def _dry_run(
    experiment: Experiment,
    local: bool,
    force: bool,
    parallelism: int | None,
    as_json: bool,
    only: Selection | None = None,
) -> int:
    """The plan (of the ``--only`` selection), then every problem a launch would stop at (the
    same checks, read-only)."""
    from tunevlseg.cluster import slurm
    from tunevlseg.cluster.launch import slurm_setup
    from tunevlseg.cluster.plan import chunk, make_plan
    from tunevlseg.cluster.preflight import run_preflight
    from tunevlseg.cluster.submit import render_array_script, render_script

    out = _app.data()
    checked = run_preflight(
        experiment, local=local, force=force, parallelism=parallelism, only=only
    )
    plan = make_plan(checked.expansion, checked.storage)
    selection = checked.selection
    # What the manifest will record: the whole file's digest, with or without --only.
    sweep_digest = plan.digest() if selection is None else make_plan(checked.sweep, None).digest()
    chunks: list[list[int]] = []
    max_array, source = None, ""
    setup = None
    if not local and plan.n_tasks:
        max_array = experiment.spec.cluster.slurm.max_array_size
        source = "from the experiment file"
        if max_array is None:
            if slurm.available():
                max_array, source = slurm.max_array_size(), "from scontrol"
            else:
                max_array, source = (
                    slurm.DEFAULT_MAX_ARRAY_SIZE,
                    "SLURM's default; SLURM not reachable",
                )
        chunks = chunk(list(range(plan.n_tasks)), max_array)
        setup = slurm_setup(experiment, plan.expansion, checked.storage_url)
    if as_json:
        report = {
            "sweep": experiment.spec.name,
            "mode": "local" if local else "slurm",
            **plan.summary(),
            "plan_sha256": sweep_digest,
            "only": None if selection is None else selection.text,
            "sweep_studies": len(checked.sweep.studies),
            "studies": [
                {
                    **study.progress.to_dict(),
                    "to_run": study.n_tasks,
                    "learner": study.spec.learner,
                    "model": study.spec.model.key,
                    "dataset": study.spec.dataset.name,
                    "grid": study.spec.grid,
                }
                for study in plan.studies
            ],
            "arrays": [len(part) for part in chunks],
            "max_array_size": max_array,
            "python": setup.python if setup else None,
            "notes": plan.notes,
            "problems": checked.problems,
        }
        out.print_json(json.dumps(report))
        return _app.EXIT_FAILED if checked.problems else _app.EXIT_OK
    out.print(_plan_table(plan, selection))
    if plan.n_studies > MATRIX_ABOVE:
        out.print(_matrix_table(plan))
    for note in plan.notes:
        out.print(f"note: {note}")
    studies = f"{plan.n_studies} studies"
    if selection is not None:
        studies = (
            f"{plan.n_studies} of {len(checked.sweep.studies)} studies (only {selection.text})"
        )
    summary = f"{studies}, {plan.n_trials} trials, {plan.n_done} done, {plan.n_tasks} tasks to run"
    if setup is not None:
        summary += f" as {len(chunks)} array job(s) (MaxArraySize {max_array}, {source})"
        folder = setup.jobs_folder / "%j"
        out.print("\n# Interpreter command of every task", markup=False)
        out.print(setup.python, markup=False)
        out.print(f"\n# Job script of the first array ({len(chunks[0])} tasks)", markup=False)
        out.print(
            render_array_script(folder, setup.python, setup.arrays, len(chunks[0])), markup=False
        )
        whole = "" if selection is None else " (it collects the whole sweep)"
        out.print(f"# Job script of the collector{whole}", markup=False)
        after = [f"<array {i + 1}>" for i in range(len(chunks))]
        out.print(render_script(folder, setup.python, setup.collector(after)), markup=False)
    out.print(f"{summary} (dry run: nothing was changed)", markup=False)
    if checked.problems:
        err = _app.messages()
        err.print(f"{len(checked.problems)} problem(s): a launch would stop at", markup=False)
        err.print(checked.message, markup=False)
        return _app.EXIT_FAILED
    return _app.EXIT_OK


def command(args: argparse.Namespace) -> int:
    from tunevlseg.cluster.launch import LaunchError, LaunchInterrupted, launch_local, launch_slurm
    from tunevlseg.config.loader import load_experiment
    from tunevlseg.config.select import SelectionError, parse_only

    try:
        only = parse_only(args.only)
    except SelectionError as error:
        raise _app.CommandError(f"--only: {error}", _app.EXIT_USAGE) from None
    experiment = load_experiment(args.experiment)
    if args.json and not args.dry_run:
        raise _app.CommandError("--json goes with --dry-run (the plan as data)", _app.EXIT_USAGE)
    out, err = _app.data(), _app.messages()
    try:
        if args.dry_run:
            return _dry_run(experiment, args.local, args.force, args.parallelism, args.json, only)
        if not args.local:
            launch_slurm(
                experiment, force=args.force, console=err, retry_failed=args.retry_failed, only=only
            )
            return _app.EXIT_OK
        result = launch_local(
            experiment,
            force=args.force,
            console=err,
            parallelism=args.parallelism,
            retry_failed=args.retry_failed,
            only=only,
        )
    except SelectionError as error:  # checked against the sweep before any other check or write
        raise _app.CommandError(f"--only: {error}", _app.EXIT_USAGE) from None
    except LaunchError as error:
        raise _app.CommandError(str(error)) from None
    except LaunchInterrupted as interrupted:
        err.print(str(interrupted), markup=False)
        return _app.EXIT_INTERRUPTED
    if result.tasks_run:
        from tunevlseg.collect.report import write_reports

        report = write_reports(experiment)
        out.print(report.main_markdown, markup=False)
        err.print(f"tables written to {report.folder}")
    if result.failed:
        for line in result.failed:
            err.print(f"failed: {line}", markup=False)
        err.print(f"{len(result.failed)} trial(s) failed; launch again to retry them")
        return _app.EXIT_FAILED
    return _app.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _app.run(command, args)


if __name__ == "__main__":
    sys.exit(main())
