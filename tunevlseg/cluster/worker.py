"""The task that runs one trial: the same entry point for SLURM array tasks and local runs.

A task is told (storage, study, trial number). The trial was enqueued WAITING by the launcher; the
task claims it (WAITING -> RUNNING is atomic in every Optuna storage), stamps it with its owner
(host, pid, SLURM ids) and its folder, samples the parameters through the study's sampler, trains
(reporting each epoch's objective to the trial, where the study's pruner may stop it), and tells
the result: COMPLETE, or PRUNED. A requeued SLURM task finds its trial RUNNING under its own array
ids and continues it from the trial folder's checkpoint, with the same parameters.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import submitit

from tunevlseg.failpoints import failpoint
from tunevlseg.paths import SweepPaths
from tunevlseg.tuning import recovery
from tunevlseg.tuning.retry import with_retries
from tunevlseg.tuning.storage import open_storage, parse_storage_url
from tunevlseg.tuning.trial_attrs import CLAIM_ATTR, RESULT_ATTR, trial_attrs

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

    from tunevlseg.config.grid import StudySpec

THREADS_ENV = "TVLS_THREADS"
STARTED_ATTR = "tvls.started_at"


class InterruptionWatch:
    """Remembers whether this process was signalled (preemption, time-out, cancel).

    submitit answers USR2 by checkpointing and exiting from inside its signal handler, which can
    surface anywhere, wrapped in whatever exception the interrupted library raises (seen: a
    pydantic ``SchemaError`` around ``SystemExit`` during an import). An error after such a
    signal is not the trial's fault: the trial must stay RUNNING, so the requeued task (or the
    next launch) continues it, instead of being told FAIL.
    """

    SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: str | None = None

    def install(self) -> None:
        for signum in self.SIGNALS:
            previous = signal.getsignal(signum)
            signal.signal(signum, functools.partial(self._handle, previous=previous))

    def _handle(self, signum: int, frame: Any, *, previous: Any) -> None:
        self.received = signal.Signals(signum).name
        if callable(previous):
            previous(signum, frame)
        elif signum == signal.SIGINT:
            # SIGINT ignored when the task started (a process started in the background by a
            # non-interactive shell inherits that): Ctrl-C and tvls-cancel must still stop it.
            raise KeyboardInterrupt
        elif previous == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


@dataclass(frozen=True)
class TrialTask:
    """What one task runs: everything else comes from the study's stored spec."""

    storage: str
    study: str
    trial_number: int


@dataclass(frozen=True)
class TaskOutcome:
    study: str
    trial_number: int
    status: str  # "complete", "pruned", "skipped"
    value: float | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Claim:
    """A trial this task now owns, with its sampled parameters and folder."""

    study: optuna.Study
    trial: optuna.Trial
    spec: StudySpec
    params: dict[str, Any]
    lineage: int
    run_dir: Path
    resumed: bool
    seed: int
    identity: dict[str, Any]


def _owner() -> dict[str, Any]:
    """Who runs this task, every key always present (``None`` when not under SLURM)."""
    env = os.environ
    job = env.get("SLURM_ARRAY_JOB_ID") or env.get("SLURM_JOB_ID")
    return {
        recovery.HOST_ATTR: socket.gethostname(),
        recovery.PID_ATTR: os.getpid(),
        recovery.SLURM_TASK_ATTR: env.get("SLURM_ARRAY_TASK_ID") if job else None,
        "tvls.slurm_restart_count": int(env.get("SLURM_RESTART_COUNT", "0") or 0) if job else None,
        recovery.SLURM_JOB_ATTR: job,
    }


def _is_mine(trial: FrozenTrial) -> bool:
    """A RUNNING trial this same SLURM task owned before it was requeued."""
    owner, stamped = _owner(), trial_attrs(trial)
    return bool(owner[recovery.SLURM_JOB_ATTR]) and all(
        stamped.get(key) == owner[key]
        for key in (recovery.SLURM_JOB_ATTR, recovery.SLURM_TASK_ATTR)
    )


def _stamp(storage: BaseStorage, trial_id: int, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        with_retries(
            functools.partial(storage.set_trial_user_attr, trial_id, key, value),
            what="stamping the trial",
        )


def limit_threads() -> int | None:
    """Give torch the task's share of the cores, not every core of the node.

    torch sizes its thread pool from the node's cores, unaware of what SLURM allotted or of
    other tasks on the machine; oversubscribed cores make every task slower. The share is
    ``SLURM_CPUS_PER_TASK`` on a cluster, ``TVLS_THREADS`` (set by the local launcher) here.
    """
    value = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get(THREADS_ENV)
    if not value or not value.isdigit() or int(value) < 1:
        return None
    import torch

    torch.set_num_threads(int(value))
    return int(value)


def claim_trial(storage: BaseStorage, task: TrialTask) -> Claim | TaskOutcome:
    """Own the task's trial (or find it ours after a requeue) and sample its parameters.

    Only the task that won the claim writes the owner stamp: a loser writing first could
    overwrite the winner's stamp on a RUNNING trial, and recovery would then judge the winner
    by the loser's (ended) task. A kill between the claim and the stamp leaves a RUNNING trial
    the stamp cannot place; recovery finds it through the manifest's tasks for the trial
    (:mod:`tunevlseg.cluster.liveness`). The stamp is one attribute (owner, lineage, folder),
    so no kill leaves a job id without its array index.

    Returns a :class:`TaskOutcome` with status ``skipped`` when the trial is finished, owned by
    a live task elsewhere, was claimed by another task a moment ago, or its study has stopped.
    """
    import optuna
    from optuna.trial import TrialState

    from tunevlseg.train.run_folder import identity_digest
    from tunevlseg.tuning.identity import IDENTITY_ATTR, trial_identity
    from tunevlseg.tuning.pruners import make_pruner
    from tunevlseg.tuning.studies import load_spec, make_sampler, stop_reason

    def read() -> tuple[optuna.Study, int, Any]:
        study = optuna.load_study(study_name=task.study, storage=storage)
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            study._study_id, task.trial_number
        )
        return study, trial_id, storage.get_trial(trial_id)

    study, trial_id, frozen = with_retries(read, what="reading the trial")
    skip = lambda detail, value=None: TaskOutcome(  # noqa: E731
        task.study, task.trial_number, "skipped", value, detail
    )
    if frozen.state.is_finished():
        return skip("already finished", frozen.value)
    if frozen.state == TrialState.RUNNING and not _is_mine(frozen):
        return skip("running elsewhere")
    spec = load_spec(study)
    resumed = frozen.state == TrialState.RUNNING
    owner = _owner()
    if not resumed:
        stopped = stop_reason(
            with_retries(lambda: study.get_trials(deepcopy=False), what="reading the study"),
            spec.search.max_failures,
        )
        if stopped:
            return skip(f"study {stopped}")
        try:
            claimed = with_retries(
                lambda: storage.set_trial_state_values(trial_id, TrialState.RUNNING),
                what="claiming the trial",
            )
        except optuna.exceptions.UpdateFinishedTrialError:
            claimed = False  # another task claimed and finished it since we read it
        if not claimed:
            return skip("claimed by another task")
        failpoint("claimed")
    study.sampler = make_sampler(spec, task.trial_number)
    study.pruner = make_pruner(spec)
    stamped = trial_attrs(frozen)
    lineage = int(stamped.get(recovery.LINEAGE_ATTR, task.trial_number))
    run_dir = SweepPaths(Path(spec.output_dir), spec.sweep).trial_dir(spec.folder, lineage)
    started = stamped.get(STARTED_ATTR) if resumed else None
    stamp = {
        **owner,
        recovery.LINEAGE_ATTR: lineage,
        "tvls.run_dir": str(run_dir),
        STARTED_ATTR: started if started is not None else time.time(),
    }
    _stamp(storage, trial_id, {CLAIM_ATTR: stamp})
    failpoint("stamped")
    trial = optuna.Trial(study, trial_id)
    params = with_retries(
        lambda: {name: space.suggest(trial, name) for name, space in spec.param_space.items()},
        what="sampling the parameters",
    )
    seed = spec.training.seed + lineage
    identity = trial_identity(spec, params, lineage, seed)
    _stamp(storage, trial_id, {IDENTITY_ATTR: identity_digest(identity)})
    failpoint("sampled")
    return Claim(study, trial, spec, params, lineage, run_dir, resumed, seed, identity)


def _record_failure(claim: Claim, storage: BaseStorage, error: Exception) -> None:
    """Fail the trial for good (its own error) or re-queue it (the infrastructure's)."""
    from optuna.trial import TrialState

    from tunevlseg.tuning import failures

    detail = failures.describe(error)
    trial_id = claim.trial._trial_id
    if failures.is_infrastructure(error):
        frozen = with_retries(lambda: storage.get_trial(trial_id), what="reading the trial")
        with_retries(
            lambda: recovery.fail_and_requeue(
                claim.study, frozen, detail, claim.spec.search.max_retries
            ),
            what="re-queueing the trial",
        )
        return
    _stamp(
        storage,
        trial_id,
        {
            recovery.FAILURE_ATTR: detail,
            failures.KIND_ATTR: "error",
            failures.FINAL_ATTR: True,
        },
    )
    with_retries(
        lambda: claim.study.tell(claim.trial, state=TrialState.FAIL, skip_if_finished=True),
        what="telling the failure",
    )


def run_task(task: TrialTask) -> TaskOutcome:
    """Run (or resume) one trial to its end and tell the study."""
    limit_threads()
    import optuna

    from tunevlseg.tuning.objective import run_trial
    from tunevlseg.tuning.pruners import VAL_IMAGES_ATTR, rounded_scores
    from tunevlseg.tuning.pruning import EpochReporter, TrialPrunedAt, end_pruned, per_image_metric

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    watch = InterruptionWatch()
    watch.install()
    storage = with_retries(
        lambda: open_storage(parse_storage_url(task.storage)), what="opening the storage"
    )
    claim = claim_trial(storage, task)
    if isinstance(claim, TaskOutcome):
        return claim
    search = claim.spec.search
    per_image = per_image_metric(search.pruner.name, search.objective)
    reporter = EpochReporter(claim.trial, search.objective, per_image)
    started = time.monotonic()
    try:
        result = run_trial(
            claim.spec,
            claim.params,
            claim.run_dir,
            seed=claim.seed,
            identity=claim.identity,
            on_epoch_end=reporter,
        )
    except TrialPrunedAt as pruned:
        end_pruned(claim.study, claim.trial, reporter, pruned)
        last = pruned.curve.get(pruned.epochs)
        return TaskOutcome(task.study, task.trial_number, "pruned", last, pruned.args[0])
    except BaseException as error:
        if watch.received or not isinstance(error, Exception):
            raise  # interrupted, not failed: the trial stays RUNNING to be continued
        _record_failure(claim, storage, error)
        raise
    val_images = result.pop("val_images", {})
    if per_image and val_images.get(per_image):
        _stamp(
            storage, claim.trial._trial_id, {VAL_IMAGES_ATTR: rounded_scores(val_images[per_image])}
        )
    bundle = {**result, "tvls.task_seconds": time.monotonic() - started}
    with_retries(
        lambda: claim.trial.set_user_attr(RESULT_ATTR, bundle), what="recording the result"
    )
    value = float(result[search.objective])
    with_retries(
        lambda: claim.study.tell(claim.trial, value, skip_if_finished=True),
        what="telling the result",
    )
    return TaskOutcome(task.study, task.trial_number, "complete", value)


class TrialWorker(submitit.helpers.Checkpointable):
    """The callable submitit runs; on preemption or time-out it requeues the same task."""

    def __call__(self, task: TrialTask) -> dict[str, Any]:
        return run_task(task).to_dict()
