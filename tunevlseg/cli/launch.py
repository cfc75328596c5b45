"""``tvls-launch FILE``: plan the sweep, create its studies, submit (or run) the missing trials."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from rich.table import Table

from tunevlseg.cli import _app

if TYPE_CHECKING:
    from tunevlseg.cluster.plan import Plan
    from tunevlseg.config.loader import Experiment


def build_parser() -> argparse.ArgumentParser:
    p = _app.parser(
        "tvls-launch",
        "Launch (or resume) the sweep an experiment file describes: SLURM arrays by default.",
    )
    p.add_argument("experiment", help="the experiment YAML file")
    p.add_argument("--local", action="store_true", help="run the trials on this machine")
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan and job scripts; change nothing"
    )
    p.add_argument("--force", action="store_true", help="accept changed study definitions")
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="re-run the trials that failed for good (once their cause is fixed), with the same "
        "parameters; a study stopped by repeated errors takes trials again",
    )
    p.add_argument(
        "--parallelism", type=_positive, help="local trials at once (default: cluster.parallelism)"
    )
    return p


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _plan_table(plan: Plan) -> Table:
    table = Table(title="Sweep plan", title_justify="left")
    for column in ("study", "trials", "done", "to run"):
        table.add_column(column, justify="left" if column == "study" else "right", no_wrap=True)
    for study in plan.studies:
        table.add_row(
            study.spec.name, str(study.spec.n_trials), str(study.progress.done), str(study.n_tasks)
        )
    return table


def _dry_run(experiment: Experiment, local: bool) -> int:
    from tunevlseg.cluster import slurm
    from tunevlseg.cluster.launch import current_plan, slurm_setup, sweep_storage
    from tunevlseg.cluster.plan import chunk
    from tunevlseg.cluster.submit import render_array_script, render_script

    out = _app.data()
    plan = current_plan(experiment, read_only=True)
    out.print(_plan_table(plan))
    for note in plan.notes:
        out.print(f"note: {note}")
    summary = (
        f"{plan.n_studies} studies, {plan.n_trials} trials, {plan.n_done} done, "
        f"{plan.n_tasks} tasks to run"
    )
    if not local and plan.n_tasks:
        max_array = experiment.spec.cluster.slurm.max_array_size
        source = "from the experiment file"
        if max_array is None:
            if slurm.available():
                max_array, source = slurm.max_array_size(), "from scontrol"
            else:
                max_array, source = slurm.DEFAULT_MAX_ARRAY_SIZE, "SLURM's default; SLURM not reachable"
        chunks = chunk(list(range(plan.n_tasks)), max_array)
        summary += f" as {len(chunks)} array job(s) (MaxArraySize {max_array}, {source})"
        setup = slurm_setup(experiment, plan.expansion, sweep_storage(experiment))
        folder = setup.jobs_folder / "%j"
        out.print("\n# Interpreter command of every task", markup=False)
        out.print(setup.python, markup=False)
        out.print(f"\n# Job script of the first array ({len(chunks[0])} tasks)", markup=False)
        out.print(render_array_script(folder, setup.python, setup.arrays, len(chunks[0])), markup=False)
        out.print("# Job script of the collector", markup=False)
        after = [f"<array {i + 1}>" for i in range(len(chunks))]
        out.print(render_script(folder, setup.python, setup.collector(after)), markup=False)
    out.print(f"{summary} (dry run: nothing was changed)", markup=False)
    return _app.EXIT_OK


def command(args: argparse.Namespace) -> int:
    from tunevlseg.cluster.launch import LaunchError, LaunchInterrupted, launch_local, launch_slurm
    from tunevlseg.config.loader import load_experiment

    experiment = load_experiment(args.experiment)
    if args.dry_run:
        return _dry_run(experiment, args.local)
    out, err = _app.data(), _app.messages()
    try:
        if not args.local:
            launch_slurm(experiment, force=args.force, console=err, retry_failed=args.retry_failed)
            return _app.EXIT_OK
        result = launch_local(
            experiment, force=args.force, console=err, parallelism=args.parallelism,
            retry_failed=args.retry_failed,
        )
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
