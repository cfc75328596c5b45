"""``tvls-status FILE``: one row per study with its trial counts, best value and SLURM queue.

The queue view comes from ``squeue`` (every cluster has it; ``sacct`` is not needed) for the
array jobs the sweep's manifest records. Without SLURM the queue columns are left out.
Below the table, each failed trial gets one line with why it failed (``tvls.failure``), so a
sweep that keeps failing can be diagnosed without opening the storage or the job logs.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any

from rich.table import Table

from tunevlseg.cli import _app

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

    from tunevlseg.cluster.plan import Plan
    from tunevlseg.config.grid import Expansion
    from tunevlseg.config.loader import Experiment
    from tunevlseg.config.select import Selection

COLUMNS = ("complete", "running", "waiting", "failed", "pruned", "remaining")
QUEUE_COLUMNS = ("queued", "on_nodes")


def build_parser() -> argparse.ArgumentParser:
    p = _app.parser(
        "tvls-status",
        "Show the progress of every study of a sweep.",
        _app.examples(
            "tvls-status experiments/demo.yaml",
            "tvls-status experiments/medical.yaml --json     # the same as data, for scripts",
        ),
    )
    p.add_argument("experiment", help="the experiment YAML file")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument(
        "--watch",
        nargs="?",
        const=10.0,
        type=_watch_seconds,
        metavar="SECONDS",
        help="show the table and the running trials live, read again every SECONDS (default "
        "10), until the sweep is done or Ctrl-C",
    )
    p.add_argument(
        "--repair",
        action="store_true",
        help="first fail and re-queue trials whose task is gone (the next launch runs them)",
    )
    p.add_argument(
        "--only",
        action="append",
        metavar="KEY=VALUE[,KEY=VALUE...]",
        help="only part of the sweep (rows, totals, --repair, --watch): keys model, learner, "
        "dataset and the grid axes, as for tvls-launch --only",
    )
    return p


def _watch_seconds(text: str) -> float:
    from tunevlseg.cli.watch import seconds

    return seconds(text)


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


REASON_WIDTH = 200
"""Characters of a failure reason shown: enough for an exception line, short for one row."""

_UNKNOWN_REASON = "no reason recorded"


def one_line_reason(text: object) -> str:
    """A stored failure reason as one line of at most :data:`REASON_WIDTH` characters.

    A full traceback ends with the exception itself, the line that says what went wrong, so
    only its last line is kept; any other text (the worker stores the exception alone, which
    may span several lines) is joined into one line, whitespace collapsed.
    """
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    if not lines:
        return _UNKNOWN_REASON
    if any(line.startswith("Traceback (most recent call last)") for line in lines):
        lines = lines[-1:]
    reason = re.sub(r"\s+", " ", " ".join(lines))
    if len(reason) > REASON_WIDTH:
        reason = reason[: REASON_WIDTH - 1].rstrip() + "…"
    return reason


def open_existing_storage(experiment: Experiment) -> BaseStorage | None:
    """The sweep's storage, or None when it does not exist yet (status never creates one).

    Opened once for both the counts and the failures: replaying a big journal takes seconds.
    """
    from tunevlseg.tuning.storage import open_storage, sweep_storage

    url = sweep_storage(experiment)
    return open_storage(url) if url.exists else None


def study_failures(storage: BaseStorage | None, plan: Plan) -> dict[str, list[dict[str, Any]]]:
    """Per study: its FAILED trials as ``{trial, reason, attempt}``, oldest first."""
    from optuna.trial import TrialState

    from tunevlseg.tuning import recovery

    if storage is None:
        return {}
    failures: dict[str, list[dict[str, Any]]] = {}
    for study in plan.studies:
        try:
            study_id = storage.get_study_id_from_name(study.spec.name)
        except KeyError:
            continue
        trials = storage.get_all_trials(study_id, deepcopy=False)
        reruns = {
            int(t.user_attrs[recovery.RETRY_OF_ATTR]): t.number
            for t in trials
            if recovery.RETRY_OF_ATTR in t.user_attrs
        }
        failures[study.spec.name] = [
            {
                "trial": trial.number,
                "reason": one_line_reason(trial.user_attrs.get(recovery.FAILURE_ATTR)),
                "attempt": int(trial.user_attrs.get(recovery.ATTEMPT_ATTR, 1)),
                "retried_as": reruns.get(trial.number),
            }
            for trial in sorted(trials, key=lambda t: t.number)
            if trial.state == TrialState.FAIL
        ]
    return failures


def command(args: argparse.Namespace) -> int:
    from tunevlseg.cluster.plan import make_plan
    from tunevlseg.config.grid import expand
    from tunevlseg.config.loader import load_experiment
    from tunevlseg.paths import SweepPaths

    if args.watch is not None and args.json:
        raise _app.CommandError(
            "--watch shows a live display and --json one snapshot for scripts: give one of them",
            _app.EXIT_USAGE,
        )
    experiment = load_experiment(args.experiment)
    expansion, selection = _selected(expand(experiment), args.only)
    if args.repair:
        from tunevlseg.cluster.launch import LaunchError, repair

        try:
            actions = repair(experiment, selection)
        except LaunchError as error:
            raise _app.CommandError(str(error)) from None
        for line in actions:
            _app.messages().print(f"repaired {line}", markup=False)
        if not actions:
            _app.messages().print("no stale trials", markup=False)
    if args.watch is not None:
        from tunevlseg.cli.watch import watch

        return watch(experiment, args.watch, expansion=expansion if selection else None)
    # What launch.current_plan(read_only=True) does, keeping the storage for the failures.
    storage = open_existing_storage(experiment)
    plan = make_plan(expansion, storage)
    queue = queue_view(SweepPaths.of(experiment).manifest)
    rows = [study.progress.to_dict() for study in plan.studies]
    failures = study_failures(storage, plan)
    for row in rows:
        row["failures"] = failures.get(row["name"], [])
    columns = COLUMNS + (QUEUE_COLUMNS if queue is not None else ())
    for row in rows:
        if queue is not None:
            counts = queue.get(row["name"], Counter())
            row.update({column: counts[column] for column in QUEUE_COLUMNS})
    totals = {key: sum(row[key] for row in rows) for key in ("n_trials", *columns)}
    out = _app.data()
    if args.json:
        from tunevlseg.cluster.running import running_trials

        busy = [study.spec for study in plan.studies if study.progress.running]
        running = [trial.to_dict() for trial in running_trials(storage, busy)]
        report = {
            "sweep": experiment.spec.name,
            "studies": rows,
            "totals": totals,
            "running_trials": running,
            "only": selection.text if selection else None,
        }
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
    failed = [(row["name"], failure) for row in rows for failure in row["failures"]]
    if failed:
        out.print(f"\n{len(failed)} failed trial(s):", markup=False)
        for name, failure in failed:
            then = (
                "" if failure["retried_as"] is None else f" -> re-run as #{failure['retried_as']}"
            )
            out.print(
                f"  {name} #{failure['trial']} (attempt {failure['attempt']}): "
                f"{failure['reason']}{then}",
                markup=False,
            )
    for row in rows:
        if row["stopped"]:
            out.print(
                f"\n{row['name']} {row['stopped']}; fix the cause, then relaunch with "
                "--retry-failed",
                markup=False,
            )
    state = "complete" if totals["remaining"] == 0 else f"{totals['remaining']} trial(s) remaining"
    if totals["remaining"] == 0 and totals["failed"]:
        state = f"finished, {totals['failed']} trial(s) failed for good"
    only = f" (only {selection.text})" if selection else ""
    _app.messages().print(f"{len(rows)} studies{only}: {state}")
    return _app.EXIT_OK


def _selected(expansion: Expansion, only: list[str] | None) -> tuple[Expansion, Selection | None]:
    """The studies ``--only`` selects; a key or value the sweep lacks is a usage error."""
    from tunevlseg.config.select import SelectionError, select

    try:
        return select(expansion, only)
    except SelectionError as error:
        raise _app.CommandError(f"--only: {error}", _app.EXIT_USAGE) from None


def main(argv: list[str] | None = None) -> int:
    return _app.run(command, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
