"""``tvls-launch FILE``: plan the sweep, create its studies, run or submit the missing trials."""

from __future__ import annotations

import argparse
import sys

from rich.table import Table

from tunevlseg.cli import _app


def build_parser() -> argparse.ArgumentParser:
    p = _app.parser("tvls-launch", "Launch (or resume) the sweep an experiment file describes.")
    p.add_argument("experiment", help="the experiment YAML file")
    p.add_argument("--local", action="store_true", help="run the trials on this machine")
    p.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    p.add_argument("--force", action="store_true", help="accept changed study definitions")
    p.add_argument("--parallelism", type=int, help="trials at once (default: cluster.parallelism)")
    return p


def _plan_table(plan) -> Table:  # type: ignore[no-untyped-def]
    table = Table(title="Sweep plan", title_justify="left")
    for column in ("study", "trials", "done", "to run"):
        table.add_column(column, justify="left" if column == "study" else "right")
    for study in plan.studies:
        table.add_row(
            study.spec.name, str(study.spec.n_trials), str(study.progress.done), str(study.n_tasks)
        )
    return table


def command(args: argparse.Namespace) -> int:
    from tunevlseg.cluster.launch import LaunchError, current_plan, launch_local
    from tunevlseg.config.loader import load_experiment

    experiment = load_experiment(args.experiment)
    out, err = _app.data(), _app.messages()
    if args.dry_run:
        plan = current_plan(experiment, read_only=True)
        out.print(_plan_table(plan))
        for note in plan.notes:
            out.print(f"note: {note}")
        out.print(
            f"{plan.n_studies} studies, {plan.n_trials} trials, {plan.n_done} done, "
            f"{plan.n_tasks} tasks to run (dry run: nothing was changed)"
        )
        return _app.EXIT_OK
    if not args.local:
        raise _app.CommandError(
            "submitting to SLURM is not available yet; run with --local to use this machine, "
            "or --dry-run to see the plan",
            _app.EXIT_USAGE,
        )
    try:
        result = launch_local(
            experiment, force=args.force, console=err, parallelism=args.parallelism
        )
    except LaunchError as error:
        raise _app.CommandError(str(error)) from None
    if result.tasks_run:
        from tunevlseg.collect.report import write_reports

        report = write_reports(experiment)
        out.print(report.main_markdown, markup=False)
        err.print(f"tables written to {report.folder}")
    if result.failed:
        err.print(f"{len(result.failed)} trial(s) failed; launch again to retry them")
        return _app.EXIT_FAILED
    return _app.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _app.run(command, args)


if __name__ == "__main__":
    sys.exit(main())
