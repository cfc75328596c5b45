"""``tvls-launch``: from a validated experiment to running tasks, resumable by launching again.

Order matters: everything that can fail cheaply (the file, the data and model paths, the
storage URL) is checked before the first write; then studies are created, stale trials are
recovered, the missing trials enqueued, and only those are run or submitted.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tunevlseg.assets import preflight, prepare_synthetic
from tunevlseg.cluster.plan import Plan, make_plan
from tunevlseg.config.grid import expand
from tunevlseg.config.loader import Experiment
from tunevlseg.paths import SweepPaths
from tunevlseg.tuning.storage import StorageURL, default_storage, parse_storage_url


class LaunchError(Exception):
    """A launch that cannot go ahead; nothing has been written when it is raised."""


def sweep_storage(experiment: Experiment) -> StorageURL:
    """The sweep's storage, resolved against the experiment file's folder."""
    if experiment.spec.storage is None:
        return default_storage(experiment.output_dir)
    return parse_storage_url(experiment.spec.storage).resolved(experiment.base_dir)


def current_plan(experiment: Experiment, *, read_only: bool) -> Plan:
    """The plan against the storage; ``read_only`` never creates a storage that is absent."""
    from tunevlseg.tuning.storage import open_storage

    expansion = expand(experiment)
    storage_url = sweep_storage(experiment)
    if read_only and not storage_url.exists:
        return make_plan(expansion, None)
    return make_plan(expansion, open_storage(storage_url))


def write_manifest(paths: SweepPaths, record: dict[str, Any]) -> None:
    """Write the launch record atomically (temporary file + rename)."""
    paths.root.mkdir(parents=True, exist_ok=True)
    tmp = paths.manifest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    os.replace(tmp, paths.manifest)


@dataclass(frozen=True)
class LaunchResult:
    plan: Plan
    tasks_run: int
    failed: list[str]


def launch_local(
    experiment: Experiment,
    *,
    force: bool = False,
    console: Console | None = None,
    parallelism: int | None = None,
) -> LaunchResult:
    """Run every missing trial of the sweep on this machine and wait for them."""
    from tunevlseg.cluster.local import LocalLauncher, TaskEvent
    from tunevlseg.cluster.worker import TrialTask
    from tunevlseg.tuning.recovery import recover_stale
    from tunevlseg.tuning.storage import open_storage
    from tunevlseg.tuning.studies import StudyConflictError, enqueue_missing, ensure_studies

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    console = console or Console(stderr=True)
    expansion = expand(experiment)
    problems = preflight(expansion.studies)
    if problems:
        raise LaunchError("cannot launch:\n" + "\n".join(f"  {p}" for p in problems))
    storage_url = sweep_storage(experiment)
    paths = SweepPaths(experiment.output_dir)
    try:
        storage = open_storage(storage_url)
    except Exception as error:  # any driver error: the message is what the user needs
        raise LaunchError(f"cannot open the study storage {storage_url}: {error}") from None
    try:
        ensure_studies(storage, expansion.studies, force=force)
    except StudyConflictError as error:
        raise LaunchError(str(error)) from None
    for line in prepare_synthetic(expansion.studies):
        console.print(f"[dim]wrote {line}[/dim]")
    for spec in expansion.studies:
        for line in recover_stale(storage, spec):
            console.print(f"[yellow]recovered[/yellow] {line}")
    tasks: list[TrialTask] = []
    for spec in expansion.studies:
        for number in enqueue_missing(storage, spec):
            tasks.append(TrialTask(storage_url.url, spec.name, number))
    plan = make_plan(expansion, storage)
    write_manifest(
        paths,
        {
            "experiment": str(experiment.path),
            "experiment_sha256": experiment.text_sha256,
            "storage": storage_url.url,
            "mode": "local",
            "launched_at": time.time(),
            **plan.summary(),
            "tasks": [[t.study, t.trial_number] for t in tasks],
        },
    )
    if not tasks:
        console.print(f"[green]The sweep is complete[/green]: {plan.n_studies} studies, "
                      f"{plan.n_trials} trials; nothing to run.")
        return LaunchResult(plan, 0, [])
    console.print(
        f"Running {len(tasks)} trial(s) of {plan.n_studies} studies locally, "
        f"{parallelism or experiment.spec.cluster.parallelism} at a time "
        f"(logs in {paths.jobs / 'local'})."
    )
    launcher = LocalLauncher(
        paths.jobs / "local",
        parallelism=parallelism or experiment.spec.cluster.parallelism,
        timeout_min=experiment.spec.cluster.timeout_min,
    )
    failed: list[str] = []
    columns = (
        TextColumn("[bold]trials"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        progress_id = bar.add_task("", total=len(tasks))
        running: set[str] = set()

        def on_event(event: TaskEvent) -> None:
            label = f"{event.task.study} #{event.task.trial_number}"
            if event.kind == "started":
                running.add(label)
            else:
                running.discard(label)
                bar.advance(progress_id)
                if event.kind == "failed":
                    failed.append(f"{label}: {event.error}")
                    bar.console.print(f"[red]failed[/red] {label}: {event.error}")
                else:
                    assert event.outcome is not None
                    value = event.outcome.get("value")
                    shown = f"{value:.4f}" if isinstance(value, float) else event.outcome["detail"]
                    bar.console.print(f"[green]done[/green] {label}: {shown}")
            bar.update(progress_id, description=f"running: {', '.join(sorted(running))}")

        launcher.run(tasks, on_event)
    return LaunchResult(make_plan(expansion, storage), len(tasks), failed)


__all__ = ["LaunchError", "LaunchResult", "current_plan", "launch_local", "sweep_storage"]
