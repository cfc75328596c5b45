"""``tvls-launch``: from a validated experiment to running tasks, resumable by launching again.

Order matters: everything that can fail cheaply (the file, data and model paths, the storage,
SLURM itself) is checked before the first write; then studies are created, stale trials
recovered, the missing trials enqueued, and only trials no live task covers are submitted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from tunevlseg.assets import preflight, prepare_synthetic
from tunevlseg.cluster.manifest import Manifest, read_manifest, write_manifest
from tunevlseg.cluster.plan import Plan, make_plan
from tunevlseg.cluster.worker import TrialTask
from tunevlseg.config.grid import Expansion, expand
from tunevlseg.config.loader import Experiment
from tunevlseg.paths import SweepPaths
from tunevlseg.tuning.storage import StorageURL, default_storage, parse_storage_url

if TYPE_CHECKING:
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial


class LaunchError(Exception):
    """A launch that cannot go ahead; nothing has been submitted when it is raised."""


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


def _open(experiment: Experiment) -> tuple[Expansion, StorageURL, BaseStorage]:
    from tunevlseg.tuning.storage import open_storage

    expansion = expand(experiment)
    problems = preflight(expansion.studies)
    if problems:
        raise LaunchError("cannot launch:\n" + "\n".join(f"  {p}" for p in problems))
    storage_url = sweep_storage(experiment)
    try:
        storage = open_storage(storage_url)
        storage.get_all_studies()
    except Exception as error:  # any driver error: its message is what the user needs
        raise LaunchError(f"cannot open the study storage {storage_url}: {error}") from None
    return expansion, storage_url, storage


def _prepare(
    experiment: Experiment,
    expansion: Expansion,
    storage_url: StorageURL,
    storage: BaseStorage,
    *,
    force: bool,
    console: Console,
    liveness: Callable[[FrozenTrial], bool | None],
) -> _Prepared:
    import optuna

    from tunevlseg.tuning.recovery import recover_stale
    from tunevlseg.tuning.studies import StudyConflictError, enqueue_missing, ensure_studies

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        ensure_studies(storage, expansion.studies, force=force)
    except StudyConflictError as error:
        raise LaunchError(str(error)) from None
    for line in prepare_synthetic(expansion.studies):
        console.print(f"[dim]wrote {line}[/dim]")
    for spec in expansion.studies:
        for line in recover_stale(storage, spec, liveness, getattr(liveness, "reason", None)):
            console.print(f"[yellow]recovered[/yellow] {line}")
    waiting = [
        TrialTask(storage_url.url, spec.name, number)
        for spec in expansion.studies
        for number in enqueue_missing(storage, spec)
    ]
    plan = make_plan(expansion, storage)
    paths = SweepPaths(experiment.output_dir)
    manifest = read_manifest(paths.manifest) or Manifest(
        experiment=str(experiment.path),
        experiment_sha256=experiment.text_sha256,
        sweep=experiment.spec.name,
        storage=storage_url.url,
        plan_sha256=plan.digest(),
        studies=plan.n_studies,
        trials=plan.n_trials,
    )
    manifest.experiment_sha256 = experiment.text_sha256
    manifest.plan_sha256 = plan.digest()
    manifest.studies, manifest.trials = plan.n_studies, plan.n_trials
    return _Prepared(storage_url, storage, expansion, waiting, manifest)


def _complete_message(plan: Plan) -> str:
    return (
        f"[green]The sweep is complete[/green]: {plan.n_studies} studies, {plan.n_trials} "
        "trials; nothing to run."
    )


def refuse_parallel_sqlite(experiment: Experiment, parallelism: int, force: bool) -> None:
    """SQLite has no row locks: two parallel workers can claim the same trial (measured)."""
    if sweep_storage(experiment).scheme == "sqlite" and parallelism > 1 and not force:
        raise LaunchError(
            "sqlite storage cannot take parallel tasks (no row locks, so two tasks can claim the "
            "same trial; its file locks break on NFS): use journal:// (the default) or "
            "postgresql://, set parallelism to 1, or pass --force"
        )


def launch_local(
    experiment: Experiment,
    *,
    force: bool = False,
    console: Console | None = None,
    parallelism: int | None = None,
) -> LaunchResult:
    """Run every missing trial of the sweep on this machine and wait for them."""
    from tunevlseg.cluster.local import LocalLauncher
    from tunevlseg.cluster.progress import local_progress
    from tunevlseg.tuning.recovery import local_liveness

    console = console or Console(stderr=True)
    refuse_parallel_sqlite(experiment, parallelism or experiment.spec.cluster.parallelism, force)
    expansion, storage_url, storage = _open(experiment)
    prepared = _prepare(
        experiment, expansion, storage_url, storage, force=force, console=console,
        liveness=local_liveness,
    )
    paths = SweepPaths(experiment.output_dir)
    tasks = prepared.waiting
    if tasks:
        prepared.manifest.record_launch(
            "local", [], local_tasks=[(t.study, t.trial_number) for t in tasks]
        )
    write_manifest(paths.manifest, prepared.manifest)
    if not tasks:
        plan = make_plan(expansion, storage)
        console.print(_complete_message(plan) if plan.complete else "Nothing to run.")
        return LaunchResult(plan, 0)
    width = parallelism or experiment.spec.cluster.parallelism
    console.print(
        f"Running {len(tasks)} trial(s) of {len(expansion.studies)} studies locally, "
        f"{width} at a time (logs in {paths.jobs / 'local'})."
    )
    launcher = LocalLauncher(
        paths.jobs / "local", parallelism=width, timeout_min=experiment.spec.cluster.timeout_min
    )
    with local_progress(console, len(tasks)) as on_event:
        events = launcher.run(tasks, on_event)
    failed = [f"{e.task.study} #{e.task.trial_number}: {e.error}" for e in events if e.kind == "failed"]
    return LaunchResult(make_plan(expansion, storage), len(tasks), failed)


class SlurmLiveness:
    """Owner liveness from SLURM's queue: a trial's task that is no longer queued is gone.

    ``squeue`` lists pending, running and requeued tasks on every cluster; a task missing
    from it has ended. Trials without SLURM ids fall back to local process checks.
    """

    def __init__(self, job_ids: list[str]) -> None:
        from tunevlseg.cluster import slurm

        self.queued = {task.key for task in slurm.queued_tasks(job_ids)}
        self.ended = slurm.ended_states(job_ids)

    def __call__(self, trial: FrozenTrial) -> bool | None:
        from tunevlseg.cluster.slurm import task_key
        from tunevlseg.tuning import recovery

        job = trial.user_attrs.get(recovery.SLURM_JOB_ATTR)
        if not job:
            return recovery.local_liveness(trial)
        return task_key(job, trial.user_attrs.get("tvls.slurm_array_task_id")) in self.queued

    def reason(self, trial: FrozenTrial) -> str:
        from tunevlseg.cluster.slurm import task_key
        from tunevlseg.tuning import recovery

        job = trial.user_attrs.get(recovery.SLURM_JOB_ATTR)
        if not job:
            return recovery.default_reason(trial)
        key = task_key(job, trial.user_attrs.get("tvls.slurm_array_task_id"))
        state = self.ended.get(key)
        return f"SLURM task {key} is no longer queued" + (f" (sacct: {state})" if state else "")


def _running_job_ids(storage: BaseStorage, expansion: Expansion) -> list[str]:
    from optuna.trial import TrialState

    from tunevlseg.tuning import recovery

    ids = set()
    for spec in expansion.studies:
        try:
            study_id = storage.get_study_id_from_name(spec.name)
        except KeyError:
            continue
        for trial in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            job = trial.user_attrs.get(recovery.SLURM_JOB_ATTR)
            if job:
                ids.add(str(job))
    return sorted(ids)


def slurm_liveness(experiment: Experiment, storage: BaseStorage, expansion: Expansion) -> SlurmLiveness:
    """Liveness of every task the sweep ever submitted or that owns a RUNNING trial."""
    manifest = read_manifest(SweepPaths(experiment.output_dir).manifest)
    known = set(_running_job_ids(storage, expansion)) | set(manifest.array_job_ids() if manifest else [])
    return SlurmLiveness(sorted(known))


def repair(experiment: Experiment) -> list[str]:
    """Fail and re-enqueue stale trials now (``tvls-status --repair``); submit nothing.

    Uses SLURM's view when the sweep has SLURM tasks and SLURM answers, else local processes.
    """
    from tunevlseg.cluster import slurm
    from tunevlseg.tuning.recovery import local_liveness, recover_stale
    from tunevlseg.tuning.storage import open_storage

    storage_url = sweep_storage(experiment)
    if not storage_url.exists:
        return []
    storage = open_storage(storage_url)
    expansion = expand(experiment)
    uses_slurm = bool(_running_job_ids(storage, expansion))
    liveness: Callable[[FrozenTrial], bool | None] = local_liveness
    if uses_slurm:
        if not slurm.available():
            raise LaunchError("the sweep has SLURM tasks but SLURM does not answer: cannot tell stale trials")
        liveness = slurm_liveness(experiment, storage, expansion)
    actions = []
    for spec in expansion.studies:
        try:
            storage.get_study_id_from_name(spec.name)
        except KeyError:
            continue
        actions += recover_stale(storage, spec, liveness, getattr(liveness, "reason", None))
    return actions


@dataclass(frozen=True)
class SlurmSetup:
    """How tasks are started: the interpreter command, job-script setup, sbatch parameters."""

    python: str
    setup: list[str]
    arrays: dict[str, Any]
    collector: Callable[[list[str]], dict[str, Any]]
    jobs_folder: Path


def slurm_setup(experiment: Experiment, expansion: Expansion, storage_url: StorageURL) -> SlurmSetup:
    import os

    from tunevlseg.cluster.container import bind_paths, python_command, setup_lines, task_environment
    from tunevlseg.cluster.submit import array_parameters, collector_parameters

    cluster = experiment.spec.cluster
    hf_home = cluster.hf_home or Path(os.environ.get("HF_HOME", Path.home() / ".cache/huggingface"))
    hf_home = experiment.resolve(hf_home)
    environment = task_environment(hf_home)
    folders = [experiment.output_dir, hf_home]
    if storage_url.path is not None:
        folders.append(storage_url.path.parent)
    for spec in expansion.studies:
        folders.append(Path(spec.dataset.root))
        pretrained = Path(spec.model.resolved_pretrained)
        if pretrained.is_absolute():
            folders.append(pretrained)
    binds = bind_paths(folders, cluster.container.binds)
    python = python_command(cluster.container, environment, binds)
    setup = setup_lines(cluster.container, environment)
    job_name = f"tvls-{experiment.spec.name}"
    return SlurmSetup(
        python=python,
        setup=setup,
        arrays=array_parameters(cluster, job_name, setup),
        collector=lambda after: collector_parameters(cluster, job_name, setup, after),
        jobs_folder=SweepPaths(experiment.output_dir).jobs,
    )


def check_slurm_paths(experiment: Experiment) -> None:
    """SLURM rewrites ``%`` patterns and drops ``\\`` in log file names: such a folder breaks jobs.

    Everything else (spaces, quotes, ``;``, ``$(...)``, backticks) is quoted and safe.
    """
    jobs = str(SweepPaths(experiment.output_dir).jobs)
    bad = sorted({c for c in jobs if c in "%\\"})
    if bad:
        raise LaunchError(
            f"output_dir {experiment.output_dir} contains {' and '.join(repr(c) for c in bad)}, "
            "which SLURM rewrites in job log file names; choose a folder without them"
        )


def launch_slurm(
    experiment: Experiment, *, force: bool = False, console: Console | None = None
) -> LaunchResult:
    """Submit the missing trials as SLURM arrays plus a collector job, then return."""
    from tunevlseg.cluster import slurm
    from tunevlseg.cluster.submit import SlurmLauncher
    from tunevlseg.collect.report import collector_job

    console = console or Console(stderr=True)
    check_slurm_paths(experiment)
    refuse_parallel_sqlite(experiment, experiment.spec.cluster.parallelism, force)
    expansion, storage_url, storage = _open(experiment)
    if not slurm.available():
        raise LaunchError(
            "SLURM does not answer (sbatch/scontrol missing or slurmctld down); use --local to "
            "run on this machine"
        )
    try:
        max_array = experiment.spec.cluster.slurm.max_array_size or slurm.max_array_size()
        liveness = slurm_liveness(experiment, storage, expansion)
    except slurm.SlurmError as error:
        raise LaunchError(str(error)) from None
    prepared = _prepare(
        experiment, expansion, storage_url, storage, force=force, console=console, liveness=liveness
    )
    index = prepared.manifest.task_index()
    covered = {index[key] for key in liveness.queued if key in index}
    tasks = [t for t in prepared.waiting if (t.study, t.trial_number) not in covered]
    plan = make_plan(expansion, storage)
    setup = slurm_setup(experiment, expansion, storage_url)
    if not tasks:
        write_manifest(SweepPaths(experiment.output_dir).manifest, prepared.manifest)
        if plan.complete:
            console.print(_complete_message(plan))
        else:
            console.print(f"Nothing to submit: the {len(covered)} remaining trial(s) are queued.")
        return LaunchResult(plan, 0)
    launcher = SlurmLauncher(setup.jobs_folder, setup.python, max_array)
    try:
        arrays = launcher.submit_arrays(tasks, setup.arrays)
    except Exception as error:
        raise LaunchError(f"submission failed, nothing was left queued: {error}") from None
    job_ids = [a.job_id for a in arrays]
    try:
        collector_id = launcher.submit_collector(
            collector_job,
            [
                storage_url.url,
                experiment.spec.name,
                str(SweepPaths(experiment.output_dir).results),
                experiment.spec.cluster.slurm.gpus,
            ],
            setup.collector(job_ids),
        )
    except Exception as error:
        slurm.cancel(job_ids)
        raise LaunchError(
            f"the collector job could not be submitted, so the arrays {', '.join(job_ids)} were "
            f"cancelled: {error}"
        ) from None
    prepared.manifest.record_launch(
        "slurm",
        [(a.job_id, [(t.study, t.trial_number) for t in a.tasks]) for a in arrays],
        collector_job_id=collector_id,
    )
    write_manifest(SweepPaths(experiment.output_dir).manifest, prepared.manifest)
    console.print(
        f"Submitted {len(tasks)} trial(s) of {plan.n_studies} studies as {len(arrays)} array "
        f"job(s) {', '.join(job_ids)} (at most {experiment.spec.cluster.parallelism} running), "
        f"and the collector job {collector_id} after them. Follow with `tvls-status "
        f"{experiment.path}`."
    )
    return LaunchResult(plan, len(tasks), job_ids=job_ids, collector_job_id=collector_id)


__all__ = [
    "repair",
    "LaunchError",
    "LaunchResult",
    "current_plan",
    "launch_local",
    "launch_slurm",
    "slurm_setup",
    "sweep_storage",
]
