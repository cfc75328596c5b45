"""The task that runs one trial: the same entry point for SLURM array tasks and local runs.

A task is told (storage, study, trial number). The trial was enqueued WAITING by the launcher; the
task claims it (WAITING -> RUNNING is atomic in every Optuna storage), stamps it with its owner
(host, pid, SLURM ids) and its folder, samples the parameters through the study's sampler, trains,
and tells the result. A requeued SLURM task finds its trial RUNNING under its own array ids and
continues it from the trial folder's checkpoint, with the same parameters.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import submitit

from tunevlseg.paths import SweepPaths
from tunevlseg.tuning import recovery
from tunevlseg.tuning.storage import open_storage, parse_storage_url


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
    status: str  # "complete", "failed", "skipped"
    value: float | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _slurm_owner() -> dict[str, Any]:
    env = os.environ
    job = env.get("SLURM_ARRAY_JOB_ID") or env.get("SLURM_JOB_ID")
    if not job:
        return {}
    return {
        recovery.SLURM_JOB_ATTR: job,
        "tvls.slurm_array_task_id": env.get("SLURM_ARRAY_TASK_ID"),
        "tvls.slurm_restart_count": int(env.get("SLURM_RESTART_COUNT", "0") or 0),
    }


def _is_mine(user_attrs: dict[str, Any]) -> bool:
    """A RUNNING trial this same SLURM task owned before it was requeued."""
    owner = _slurm_owner()
    return bool(owner) and all(
        user_attrs.get(key) == owner[key]
        for key in (recovery.SLURM_JOB_ATTR, "tvls.slurm_array_task_id")
    )


def run_task(task: TrialTask) -> TaskOutcome:
    """Run (or resume) one trial to its end and tell the study."""
    import optuna
    from optuna.trial import TrialState

    from tunevlseg.tuning.objective import run_trial
    from tunevlseg.tuning.studies import load_spec, make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(parse_storage_url(task.storage))
    study_id = storage.get_study_id_from_name(task.study)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, task.trial_number)
    frozen = storage.get_trial(trial_id)
    if frozen.state.is_finished():
        return TaskOutcome(task.study, task.trial_number, "skipped", frozen.value, "already finished")
    if frozen.state == TrialState.RUNNING and not _is_mine(frozen.user_attrs):
        return TaskOutcome(task.study, task.trial_number, "skipped", None, "running elsewhere")
    resumed = frozen.state == TrialState.RUNNING
    if not resumed and not storage.set_trial_state_values(trial_id, TrialState.RUNNING):
        return TaskOutcome(task.study, task.trial_number, "skipped", None, "claimed by another task")

    spec = load_spec(optuna.load_study(study_name=task.study, storage=storage))
    study = optuna.load_study(
        study_name=task.study, storage=storage, sampler=make_sampler(spec, task.trial_number)
    )
    lineage = int(frozen.user_attrs.get(recovery.LINEAGE_ATTR, task.trial_number))
    run_dir = SweepPaths(Path(spec.output_dir)).trial_dir(spec.folder, lineage)
    owner = {
        recovery.HOST_ATTR: socket.gethostname(),
        recovery.PID_ATTR: os.getpid(),
        recovery.LINEAGE_ATTR: lineage,
        "tvls.run_dir": str(run_dir),
        **_slurm_owner(),
    }
    for key, value in owner.items():
        storage.set_trial_user_attr(trial_id, key, value)
    if not resumed:
        storage.set_trial_user_attr(trial_id, "tvls.started_at", time.time())

    trial = optuna.Trial(study, trial_id)
    params = {name: space.suggest(trial, name) for name, space in spec.param_space.items()}
    started = time.monotonic()
    try:
        result = run_trial(spec, params, run_dir, seed=spec.training.seed + lineage)
    except Exception as error:
        detail = "".join(traceback.format_exception_only(error)).strip()
        storage.set_trial_user_attr(trial_id, recovery.FAILURE_ATTR, detail[-2000:])
        study.tell(trial, state=TrialState.FAIL)
        raise
    for key, value in result.items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("tvls.task_seconds", time.monotonic() - started)
    value = float(result[spec.search.objective])
    study.tell(trial, value)
    return TaskOutcome(task.study, task.trial_number, "complete", value)


class TrialWorker(submitit.helpers.Checkpointable):
    """The callable submitit runs; on preemption or time-out it requeues the same task."""

    def __call__(self, task: TrialTask) -> dict[str, Any]:
        return run_task(task).to_dict()
