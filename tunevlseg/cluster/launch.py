"""``tvls-launch``: from a validated experiment to running tasks, resumable by launching again.

Order matters: everything that can fail cheaply (the file, data and model paths, the storage,
SLURM itself) is checked before the first write; then studies are created, stale trials
recovered, the missing trials enqueued, and only trials no live task covers are submitted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from tunevlseg.assets import prepare_synthetic
from tunevlseg.cluster.liveness import SweepLiveness, running_job_ids, slurm_liveness
from tunevlseg.cluster.lock import SweepBusyError, sweep_lock
from tunevlseg.cluster.manifest import Manifest, read_manifest, write_manifest
from tunevlseg.cluster.plan import Plan, make_plan
from tunevlseg.cluster.preflight import Preflight, run_preflight
from tunevlseg.cluster.worker import TrialTask
from tunevlseg.config.grid import Expansion, expand
from tunevlseg.config.loader import Experiment
from tunevlseg.config.select import Selection, select
from tunevlseg.paths import SweepPaths
from tunevlseg.tuning.storage import StorageURL, sweep_storage

if TYPE_CHECKING:
    from optuna.storages import BaseStorage


class LaunchError(Exception):
    """A launch that cannot go ahead; nothing has been submitted when it is raised."""


class LaunchInterrupted(Exception):
    """Ctrl-C during a local launch: the workers were stopped; the message says how to resume."""


def current_plan(experiment: Experiment, *, read_only: bool, only: Selection | None = None) -> Plan:
    """The plan against the storage; ``read_only`` never creates a storage that is absent.

    ``only``: the studies of an ``--only`` selection (raises ``SelectionError`` when the sweep
    has no such key or value).
    """
    from tunevlseg.tuning.storage import open_storage

    expansion, _ = select(expand(experiment), only)
    storage_url = sweep_storage(experiment)
    if read_only and not storage_url.exists:
        return make_plan(expansion, None)
    return make_plan(expansion, open_storage(storage_url))


@dataclass
class LaunchResult:
    plan: Plan
    tasks_run: int
    failed: list[str] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    collector_job_id: str | None = None


@dataclass
class _Prepared:
    storage_url: StorageURL
    storage: BaseStorage
    expansion: Expansion
    waiting: list[TrialTask]
    manifest: Manifest


def _open(
    experiment: Experiment,
    *,
    local: bool,
    force: bool,
    parallelism: int | None = None,
    only: Selection | None = None,
) -> tuple[Preflight, BaseStorage]:
    """Every check of :func:`~tunevlseg.cluster.preflight.run_preflight`, then the storage
    opened (created when new): the first write of a launch."""
    from tunevlseg.tuning.storage import open_storage

    checked = run_preflight(
        experiment, local=local, force=force, parallelism=parallelism, only=only
    )
    if checked.problems:
        raise LaunchError(checked.message)
    storage = checked.storage
    if storage is None:
        try:
            storage = open_storage(checked.storage_url)
            storage.get_all_studies()
        except Exception as error:  # noqa: BLE001 - any driver error: its message is what the user needs
            raise LaunchError(
                f"cannot open the study storage {checked.storage_url}: {error}"
            ) from None
    return checked, storage


def _prepare(
    experiment: Experiment,
    expansion: Expansion,
    storage_url: StorageURL,
    storage: BaseStorage,
    *,
    force: bool,
    console: Console,
    liveness: SweepLiveness,
    retry_failed: bool = False,
    sweep: Expansion | None = None,
    selection: Selection | None = None,
) -> _Prepared:
    """Studies created, stale trials recovered, the budget enqueued (the caller holds the lock).

    With a selection (``--only``), ``expansion`` holds the selected studies and ``sweep`` every
    study of the file: only the selected studies are created, recovered and enqueued, but a
    changed definition anywhere in the file is refused (without ``force``), and the manifest
    records the whole sweep's plan digest and size, as a launch without ``--only`` does.
    """
    import optuna

    from tunevlseg.tuning import recovery
    from tunevlseg.tuning.studies import (
        StudyConflictError,
        enqueue_missing,
        ensure_studies,
        study_conflicts,
    )

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweep = sweep or expansion
    try:
        conflict = None if force or sweep is expansion else study_conflicts(storage, sweep.studies)
        if conflict:
            raise StudyConflictError(conflict)
        ensure_studies(storage, expansion.studies, force=force)
    except StudyConflictError as error:
        raise LaunchError(str(error)) from None
    for line in prepare_synthetic(expansion.studies):
        console.print(f"[dim]wrote {line}[/dim]")
    for spec in expansion.studies:
        if retry_failed:
            for line in recovery.retry_failed(storage, spec):
                console.print(f"[yellow]retrying[/yellow] {line}", markup=True)
        for line in recovery.recover_stale(storage, spec, liveness, liveness.reason):
            console.print(f"[yellow]recovered[/yellow] {line}")
    waiting = [
        TrialTask(storage_url.url, spec.name, number)
        for spec in expansion.studies
        for number in enqueue_missing(storage, spec)
    ]
    plan = make_plan(expansion, storage)
    for study in plan.studies:
        if study.progress.stopped:
            console.print(f"[red]{study.spec.name}[/red] {study.progress.stopped}", highlight=False)
    if any(study.progress.stopped for study in plan.studies):
        console.print(
            f"Fix the cause (see `tvls-status {experiment.path}`), then run `tvls-launch "
            f"{experiment.path} --retry-failed` to re-run the failed trials."
        )
    paths = SweepPaths.of(experiment)
    # The whole file's definitions (they need no storage): a launch with --only leaves the same
    # digest and size as one without, so the manifest always describes the sweep.
    whole = plan if sweep is expansion else make_plan(sweep, None)
    manifest = read_manifest(paths.manifest) or Manifest(
        experiment=str(experiment.path),
        experiment_sha256=experiment.text_sha256,
        sweep=experiment.spec.name,
        storage=storage_url.url,
        plan_sha256=whole.digest(),
        studies=whole.n_studies,
        trials=whole.n_trials,
    )
    manifest.experiment_sha256 = experiment.text_sha256
    manifest.plan_sha256 = whole.digest()
    manifest.studies, manifest.trials = whole.n_studies, whole.n_trials
    return _Prepared(storage_url, storage, expansion, waiting, manifest)


def _record_selection(manifest: Manifest, selection: Selection | None) -> None:
    """The launch just recorded names its ``--only`` selection (absent: the whole sweep)."""
    if selection is not None and manifest.launches:
        manifest.launches[-1]["only"] = selection.text


def _selection_note(selection: Selection | None) -> str:
    return "" if selection is None else f" (only {selection.text})"


def _complete_message(plan: Plan, selection: Selection | None = None) -> str:
    what = "sweep" if selection is None else "selection"
    only = _selection_note(selection)
    failed = sum(study.progress.failed for study in plan.studies)
    if failed:
        return (
            f"[yellow]The {what} is finished[/yellow]{only}: {plan.n_studies} studies, "
            f"{plan.n_trials} trials, {failed} of them failed (see tvls-status); nothing to run."
        )
    return (
        f"[green]The {what} is complete[/green]{only}: {plan.n_studies} studies, {plan.n_trials} "
        "trials; nothing to run."
    )


LOCAL_LOCK_WAIT_S = 10.0
"""A local launch holds the lock while its trials run: another one gives up quickly."""
SLURM_LOCK_WAIT_S = 300.0
"""A SLURM launch holds the lock for seconds: the next one waits for it, then resumes."""


@contextmanager
def _lock(experiment: Experiment, wait_s: float, console: Console | None = None) -> Iterator[None]:
    """The sweep's launch lock; a launch still holding it after ``wait_s`` is a LaunchError."""

    def told(holder: str) -> None:
        if console is not None:
            console.print(
                f"Waiting for another launch of this sweep to finish ({holder}) ...",
                highlight=False,
            )

    try:
        with sweep_lock(SweepPaths.of(experiment).launch_lock, wait_s=wait_s, on_wait=told):
            yield
    except SweepBusyError as error:
        raise LaunchError(str(error)) from None


def launch_local(
    experiment: Experiment,
    *,
    force: bool = False,
    console: Console | None = None,
    parallelism: int | None = None,
    retry_failed: bool = False,
    only: Selection | None = None,
) -> LaunchResult:
    """Run every missing trial of the sweep (of its ``only`` selection) on this machine and
    wait for them.

    The sweep's lock is held until the last trial ends: a second launch cannot take the same
    trials meanwhile, and any trial of an earlier local launch still RUNNING is known stale.
    """
    console = console or Console(stderr=True)
    checked, storage = _open(
        experiment, local=True, force=force, parallelism=parallelism, only=only
    )
    with _lock(experiment, LOCAL_LOCK_WAIT_S, console):
        return _run_local(
            experiment,
            checked.expansion,
            checked.storage_url,
            storage,
            force=force,
            console=console,
            parallelism=parallelism,
            retry_failed=retry_failed,
            sweep=checked.sweep,
            selection=checked.selection,
        )


def _run_local(
    experiment: Experiment,
    expansion: Expansion,
    storage_url: StorageURL,
    storage: BaseStorage,
    *,
    force: bool,
    console: Console,
    parallelism: int | None,
    retry_failed: bool,
    sweep: Expansion | None = None,
    selection: Selection | None = None,
) -> LaunchResult:
    import os

    from tunevlseg.cluster.local import LocalLauncher
    from tunevlseg.cluster.progress import local_progress
    from tunevlseg.tuning.retry import BUDGET_ENV

    paths = SweepPaths.of(experiment)
    os.environ[BUDGET_ENV] = str(experiment.spec.cluster.storage_retry_s)  # the tasks inherit it
    liveness = SweepLiveness(read_manifest(paths.manifest), queued=None)
    prepared = _prepare(
        experiment,
        expansion,
        storage_url,
        storage,
        force=force,
        console=console,
        liveness=liveness,
        retry_failed=retry_failed,
        sweep=sweep,
        selection=selection,
    )
    tasks = prepared.waiting
    if tasks:
        prepared.manifest.record_launch(
            "local", [], local_tasks=[(t.study, t.trial_number) for t in tasks]
        )
        _record_selection(prepared.manifest, selection)
    write_manifest(paths.manifest, prepared.manifest)
    if not tasks:
        plan = make_plan(expansion, storage)
        console.print(_complete_message(plan, selection) if plan.complete else "Nothing to run.")
        return LaunchResult(plan, 0)
    width = parallelism or experiment.spec.cluster.parallelism
    console.print(
        f"Running {len(tasks)} trial(s) of {len(expansion.studies)} studies"
        f"{_selection_note(selection)} locally, {width} at a time (logs in {paths.jobs / 'local'})."
    )
    launcher = LocalLauncher(
        paths.jobs / "local", parallelism=width, timeout_min=experiment.spec.cluster.timeout_min
    )
    try:
        with local_progress(console, len(tasks), specs=expansion.studies) as on_event:
            events = launcher.run(tasks, on_event)
    except KeyboardInterrupt:
        mark_interrupted(storage, tasks)
        raise LaunchInterrupted(
            f"interrupted: the running trial(s) stopped and keep their checkpoints; resume with "
            f"`tvls-launch {experiment.path} --local`"
        ) from None
    failed = [
        f"{e.task.study} #{e.task.trial_number}: {e.error}" for e in events if e.kind == "failed"
    ]
    return LaunchResult(make_plan(expansion, storage), len(tasks), failed)


def mark_interrupted(storage: BaseStorage, tasks: list[TrialTask]) -> int:
    """Mark the trials of ``tasks`` that Ctrl-C stopped (RUNNING, owned by a process of this
    host that is gone) as stopped on purpose, so their re-runs do not use one of their
    ``search.max_retries`` (:func:`tunevlseg.tuning.recovery.mark_stopped`). A trial
    ``tvls-cancel`` marked already keeps its mark. Best effort: it never hides the interrupt."""
    import optuna
    from optuna.trial import TrialState

    from tunevlseg.tuning import recovery

    numbers: dict[str, set[int]] = {}
    for task in tasks:
        numbers.setdefault(task.study, set()).add(task.trial_number)
    marked = 0
    try:
        for name, wanted in numbers.items():
            study = optuna.load_study(study_name=name, storage=storage)
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                stopped = recovery.local_liveness(name, trial) is False
                if trial.number in wanted and stopped and recovery.stopped_by(trial) is None:
                    recovery.mark_stopped(storage, trial, "Ctrl-C")
                    marked += 1
    except Exception:  # noqa: BLE001 - the re-runs then count as retries, as after a crash
        pass
    return marked


def repair(experiment: Experiment, only: Selection | None = None) -> list[str]:
    """Fail and re-enqueue stale trials now (``tvls-status --repair``); submit nothing.

    Uses SLURM's view when the sweep has SLURM tasks and SLURM answers, else local processes.
    Holds the sweep's lock like a launch: a running local launch's trials are not touched.
    ``only``: the studies of an ``--only`` selection alone.
    """
    from tunevlseg.cluster import slurm
    from tunevlseg.tuning.recovery import recover_stale
    from tunevlseg.tuning.storage import open_storage

    storage_url = sweep_storage(experiment)
    if not storage_url.exists:
        return []
    expansion, _ = select(expand(experiment), only)
    storage = open_storage(storage_url)
    with _lock(experiment, LOCAL_LOCK_WAIT_S):
        manifest = read_manifest(SweepPaths.of(experiment).manifest)
        uses_slurm = bool(running_job_ids(storage, expansion)) or bool(
            manifest and manifest.array_job_ids()
        )
        liveness = SweepLiveness(manifest, queued=None)
        if uses_slurm:
            if not slurm.available():
                raise LaunchError(
                    "the sweep has SLURM tasks but SLURM does not answer: cannot tell stale trials"
                )
            liveness = slurm_liveness(manifest, storage, expansion)
        actions = []
        for spec in expansion.studies:
            try:
                storage.get_study_id_from_name(spec.name)
            except KeyError:
                continue
            actions += recover_stale(storage, spec, liveness, liveness.reason)
        return actions


@dataclass(frozen=True)
class SlurmSetup:
    """How tasks are started: the interpreter command, job-script setup, sbatch parameters."""

    python: str
    setup: list[str]
    arrays: dict[str, Any]
    collector: Callable[[list[str]], dict[str, Any]]
    jobs_folder: Path


def slurm_setup(
    experiment: Experiment, expansion: Expansion, storage_url: StorageURL
) -> SlurmSetup:
    import os

    from tunevlseg.cluster.container import (
        bind_paths,
        python_command,
        setup_lines,
        task_environment,
    )
    from tunevlseg.cluster.submit import array_parameters, collector_parameters

    cluster = experiment.spec.cluster
    hf_home = cluster.hf_home or Path(os.environ.get("HF_HOME", Path.home() / ".cache/huggingface"))
    hf_home = experiment.resolve(hf_home)
    environment = task_environment(hf_home, cluster.storage_retry_s)
    folders = [experiment.output_dir, hf_home]
    if storage_url.path is not None:
        folders.append(storage_url.path.parent)
    for spec in expansion.studies:
        folders.append(Path(spec.dataset.root))
        pretrained = Path(spec.model.resolved_pretrained)
        if pretrained.is_absolute():
            folders.append(pretrained)
    binds = bind_paths(folders, cluster.container.binds)
    # Container tasks requeue from the host through markers in this folder (cluster/requeue.py).
    requeue_dir = SweepPaths.of(experiment).requeue
    python = python_command(cluster.container, environment, binds, requeue_dir=requeue_dir)
    setup = setup_lines(cluster.container, environment)
    job_name = f"tvls-{experiment.spec.name}"
    return SlurmSetup(
        python=python,
        setup=setup,
        arrays=array_parameters(cluster, job_name, setup),
        collector=lambda after: collector_parameters(cluster, job_name, setup, after),
        jobs_folder=SweepPaths.of(experiment).jobs,
    )


def launch_slurm(
    experiment: Experiment,
    *,
    force: bool = False,
    console: Console | None = None,
    retry_failed: bool = False,
    only: Selection | None = None,
) -> LaunchResult:
    """Submit the missing trials (of the ``only`` selection) as SLURM arrays plus a collector
    job, then return. The collector job collects the whole sweep, selection or not.

    Everything from reading the queue to writing the manifest happens under the sweep's lock,
    so two launches at once submit each trial once: the second sees the first's arrays (a
    launch with or without ``--only`` alike).
    """
    console = console or Console(stderr=True)
    checked, storage = _open(experiment, local=False, force=force, only=only)
    with _lock(experiment, SLURM_LOCK_WAIT_S, console):
        return _submit(
            experiment,
            checked.expansion,
            checked.storage_url,
            storage,
            force=force,
            console=console,
            retry_failed=retry_failed,
            sweep=checked.sweep,
            selection=checked.selection,
        )


def _submit(
    experiment: Experiment,
    expansion: Expansion,
    storage_url: StorageURL,
    storage: BaseStorage,
    *,
    force: bool,
    console: Console,
    retry_failed: bool,
    sweep: Expansion | None = None,
    selection: Selection | None = None,
) -> LaunchResult:
    from tunevlseg.cluster import slurm
    from tunevlseg.cluster.submit import SlurmLauncher
    from tunevlseg.collect.report import collector_job

    paths = SweepPaths.of(experiment)
    try:
        max_array = experiment.spec.cluster.slurm.max_array_size or slurm.max_array_size()
        liveness = slurm_liveness(read_manifest(paths.manifest), storage, expansion)
    except slurm.SlurmError as error:
        raise LaunchError(str(error)) from None
    prepared = _prepare(
        experiment,
        expansion,
        storage_url,
        storage,
        force=force,
        console=console,
        liveness=liveness,
        retry_failed=retry_failed,
        sweep=sweep,
        selection=selection,
    )
    index = prepared.manifest.task_index()
    assert liveness.queued is not None
    covered = {index[key] for key in liveness.queued if key in index}
    tasks = [t for t in prepared.waiting if (t.study, t.trial_number) not in covered]
    plan = make_plan(expansion, storage)
    setup = slurm_setup(experiment, expansion, storage_url)
    launcher = SlurmLauncher(
        setup.jobs_folder, setup.python, max_array, experiment.spec.cluster.max_timeouts
    )
    array_parameters, proxy = setup.arrays, None
    uses_proxy = (
        experiment.spec.cluster.storage_proxy is not None and storage_url.scheme == "postgresql"
    )
    if uses_proxy and (tasks or covered):  # queued tasks need a proxy too: one gone is replaced
        from tunevlseg.cluster.proxy import after_proxy, ensure_proxy

        try:
            proxy = ensure_proxy(
                experiment,
                prepared.manifest.proxy_job_ids(),
                storage_url,
                launcher.submit_job,
                setup.setup,
            )
        except Exception as error:  # noqa: BLE001 - whatever submitit raised, said once
            raise LaunchError(f"the storage proxy job could not be submitted: {error}") from None
        tasks = [replace(task, storage=proxy.task_url.url) for task in tasks]
        if not proxy.reused:
            array_parameters = after_proxy(array_parameters, proxy.job_id)
    new_proxy = [proxy.job_id] if proxy is not None and not proxy.reused else []
    if not tasks:
        if new_proxy:  # recorded, so that the proxy is found, reused and cancelled
            prepared.manifest.record_launch("slurm", [], proxy_job_id=new_proxy[0])
            console.print(f"Started the storage proxy job {new_proxy[0]} for the queued tasks.")
        write_manifest(paths.manifest, prepared.manifest)
        if plan.complete:
            console.print(_complete_message(plan, selection))
        else:
            console.print(f"Nothing to submit: the {len(covered)} remaining trial(s) are queued.")
        return LaunchResult(plan, 0)
    try:
        arrays = launcher.submit_arrays(tasks, array_parameters)
    except Exception as error:  # noqa: BLE001 - whatever failed, cancel what was submitted
        slurm.cancel(new_proxy)
        raise LaunchError(f"submission failed, nothing was left queued: {error}") from None
    job_ids = [a.job_id for a in arrays]
    try:
        collector_id = launcher.submit_collector(
            collector_job,
            [
                storage_url.url,
                experiment.spec.name,
                str(paths.results),
                experiment.spec.cluster.slurm.gpus,
            ],
            setup.collector(job_ids),
        )
    except Exception as error:  # noqa: BLE001 - whatever failed, cancel what was submitted
        slurm.cancel(job_ids + new_proxy)
        raise LaunchError(
            f"the collector job could not be submitted, so the arrays {', '.join(job_ids)} were "
            f"cancelled: {error}"
        ) from None
    prepared.manifest.record_launch(
        "slurm",
        [(a.job_id, [(t.study, t.trial_number) for t in a.tasks]) for a in arrays],
        collector_job_id=collector_id,
        proxy_job_id=proxy.job_id if proxy is not None else None,
    )
    _record_selection(prepared.manifest, selection)
    write_manifest(paths.manifest, prepared.manifest)
    if proxy is not None:
        console.print(
            f"The tasks use the storage proxy job {proxy.job_id}"
            f"{' (already running)' if proxy.reused else ' (started now; the arrays wait for it)'}"
            f"; it ends after the collector.",
            highlight=False,
        )
    console.print(
        f"Submitted {len(tasks)} trial(s) of {plan.n_studies} studies{_selection_note(selection)} "
        f"as {len(arrays)} array "
        f"job(s) {', '.join(job_ids)} (at most {experiment.spec.cluster.parallelism} running), "
        f"and the collector job {collector_id} after them"
        f"{'' if selection is None else ' (its tables cover the whole sweep)'}. Follow with "
        f"`tvls-status {experiment.path}`."
    )
    return LaunchResult(plan, len(tasks), job_ids=job_ids, collector_job_id=collector_id)


__all__ = [
    "LaunchError",
    "LaunchInterrupted",
    "LaunchResult",
    "current_plan",
    "launch_local",
    "launch_slurm",
    "repair",
    "slurm_setup",
    "sweep_storage",
]
