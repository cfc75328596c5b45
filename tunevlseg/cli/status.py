"""``tvls-status FILE``: one row per study with its trial counts, best value and SLURM queue.

The queue view comes from ``squeue`` (every cluster has it; ``sacct`` is not needed) for the
array jobs the sweep's manifest records. Without SLURM the queue columns are left out.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

from rich.table import Table

from tunevlseg.cli import _app

COLUMNS = ("complete", "running", "waiting", "failed", "pruned", "remaining")
QUEUE_COLUMNS = ("queued", "on_nodes")


def build_parser() -> argparse.ArgumentParser:
    p = _app.parser("tvls-status", "Show the progress of every study of a sweep.")
    p.add_argument("experiment", help="the experiment YAML file")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument(
        "--repair",
        action="store_true",
        help="first fail and re-queue trials whose task is gone (the next launch runs them)",
    )
    return p


def queue_view(manifest_path: object) -> dict[str, Counter[str]] | None:
    """Per study: pending (``queued``) and running (``on_nodes``) SLURM tasks; None w/o SLURM."""
    from pathlib import Path

    from tunevlseg.cluster import slurm
    from tunevlseg.cluster.manifest import read_manifest

    manifest = read_manifest(Path(str(manifest_path)))
    if manifest is None or not manifest.array_job_ids() or not slurm.available():
        return None
    index = manifest.task_index()
    view: dict[str, Counter[str]] = {}
    for task in slurm.queued_tasks(manifest.array_job_ids()):
        if task.key in index:
            study, _ = index[task.key]
            view.setdefault(study, Counter())["on_nodes" if task.running else "queued"] += 1
    return view


def command(args: argparse.Namespace) -> int:
    from tunevlseg.cluster.launch import current_plan
    from tunevlseg.config.loader import load_experiment
    from tunevlseg.paths import SweepPaths

    experiment = load_experiment(args.experiment)
    if args.repair:
        from tunevlseg.cluster.launch import LaunchError, repair

        try:
            actions = repair(experiment)
        except LaunchError as error:
            raise _app.CommandError(str(error)) from None
        for line in actions:
            _app.messages().print(f"repaired {line}", markup=False)
        if not actions:
            _app.messages().print("no stale trials", markup=False)
    plan = current_plan(experiment, read_only=True)
    queue = queue_view(SweepPaths(experiment.output_dir).manifest)
    rows = [study.progress.to_dict() for study in plan.studies]
    columns = COLUMNS + (QUEUE_COLUMNS if queue is not None else ())
    for row in rows:
        if queue is not None:
            counts = queue.get(row["name"], Counter())
            row.update({column: counts[column] for column in QUEUE_COLUMNS})
    totals = {key: sum(row[key] for row in rows) for key in ("n_trials", *columns)}
    out = _app.data()
    if args.json:
        report = {"sweep": experiment.spec.name, "studies": rows, "totals": totals}
        out.print_json(json.dumps(report))
        return _app.EXIT_OK
    table = Table(title=f"Sweep {experiment.spec.name}", title_justify="left")
    table.add_column("study", no_wrap=True)
    for column in ("trials", *columns, "best"):
        table.add_column(column.replace("_", " "), justify="right")
    for row in rows:
        best = "–" if row["best_value"] is None else f"{row['best_value']:.4f}"
        table.add_row(row["name"], str(row["n_trials"]), *(str(row[c]) for c in columns), best)
    table.add_section()
    table.add_row("total", str(totals["n_trials"]), *(str(totals[c]) for c in columns), "")
    out.print(table)
    state = "complete" if totals["remaining"] == 0 else f"{totals['remaining']} trial(s) remaining"
    _app.messages().print(f"{len(rows)} studies: {state}")
    return _app.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return _app.run(command, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
