"""Stale trials: RUNNING in the storage, but the process that ran them is gone.

Optuna's heartbeat only works with RDB storages inside ``study.optimize``, so the toolkit tells
stale trials by their owner, which every worker stamps on its trial (host, pid, SLURM ids). A
stale trial is marked FAIL with the reason and re-enqueued with the same parameters and the same
checkpoint folder (``tvls.lineage``), up to ``search.max_retries`` times.

A trial stopped on purpose (``tvls-cancel``) is re-run the same way, but its re-run does not use
one of those retries: the retries are for crashes and infrastructure failures, and a user who
cancels and resumes a sweep a few times must not find trials failed for good for it. Whoever
stops a trial marks it first (:func:`mark_stopped`) with the owner it stops; the mark counts only
while that owner is the trial's stamped owner, so a later crash of another owner still counts.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from tunevlseg.config.grid import StudySpec
from tunevlseg.tuning.trial_attrs import trial_attrs

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

HOST_ATTR = "tvls.host"
PID_ATTR = "tvls.pid"
SLURM_JOB_ATTR = "tvls.slurm_job_id"
SLURM_TASK_ATTR = "tvls.slurm_array_task_id"
LINEAGE_ATTR = "tvls.lineage"
ATTEMPT_ATTR = "tvls.attempt"
FAILURE_ATTR = "tvls.failure"
RETRY_OF_ATTR = "tvls.retry_of"
"""On a re-run: the number of the failed trial it re-runs."""
STOPPED_ATTR = "tvls.stopped"
"""On a RUNNING trial stopped on purpose: who stopped it, when, and the owner stopped."""

Liveness = Callable[[str, "FrozenTrial"], "bool | None"]
"""(study name, trial) -> True: its owner runs; False: its owner is gone; None: cannot tell
(leave it alone)."""


def local_liveness(study: str, trial: FrozenTrial) -> bool | None:
    """Owner liveness for trials run by local processes on this host."""
    owner = trial_attrs(trial)
    if owner.get(SLURM_JOB_ATTR):
        return None
    if owner.get(HOST_ATTR) != socket.gethostname():
        return None
    pid = owner.get(PID_ATTR)
    if not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_key(attrs: Mapping[str, object]) -> list[object]:
    """What identifies a trial's owner across its restarts: the SLURM task (a requeued task is
    the same owner in a new process), else the process on its host."""
    if attrs.get(SLURM_JOB_ATTR):
        return ["slurm", attrs.get(SLURM_JOB_ATTR), attrs.get(SLURM_TASK_ATTR)]
    return ["process", attrs.get(HOST_ATTR), attrs.get(PID_ATTR)]


def mark_stopped(storage: BaseStorage, trial: FrozenTrial, by: str) -> None:
    """Mark a RUNNING trial as stopped on purpose by ``by`` (before stopping its owner)."""
    mark = {"by": by, "at": time.time(), "owner": owner_key(trial_attrs(trial))}
    storage.set_trial_user_attr(trial._trial_id, STOPPED_ATTR, mark)


def stopped_by(trial: FrozenTrial) -> str | None:
    """Who stopped the trial's current owner on purpose, if anyone did."""
    attrs = trial_attrs(trial)
    mark = attrs.get(STOPPED_ATTR)
    if isinstance(mark, Mapping) and mark.get("owner") == owner_key(attrs):
        return str(mark.get("by"))
    return None


def default_reason(study: str, trial: FrozenTrial) -> str:
    owner = trial_attrs(trial)
    return f"owner process {owner.get(PID_ATTR)} on {owner.get(HOST_ATTR)} is gone"


def recover_stale(
    storage: BaseStorage,
    spec: StudySpec,
    is_alive: Liveness = local_liveness,
    reason_of: Callable[[str, FrozenTrial], str] | None = None,
) -> list[str]:
    """Fail stale RUNNING trials and re-enqueue them; return one line per action."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=spec.name, storage=storage)
    actions: list[str] = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_alive(spec.name, trial) is not False:
            continue
        reason = (reason_of or default_reason)(spec.name, trial)
        actions.append(fail_and_requeue(study, trial, reason, spec.search.max_retries))
    return actions


def fail_and_requeue(study: optuna.Study, trial: FrozenTrial, reason: str, max_retries: int) -> str:
    """FAIL a trial whose process died (or met an infrastructure error) and queue its re-run.

    The re-run keeps the parameters and the lineage (so the same folder and checkpoint), and
    counts one more attempt, unless the trial was stopped on purpose (:func:`stopped_by`); past
    ``max_retries`` re-runs the trial is failed for good and then takes its place in the budget.
    Safe to repeat after a kill at any step: the re-run is created at most once
    (:func:`enqueue_rerun`), and the trial is failed last. Returns one line saying what was done.
    """
    from optuna.trial import TrialState

    from tunevlseg.tuning.failures import FINAL_ATTR, KIND_ATTR

    storage = study._storage
    attempt = int(trial.user_attrs.get(ATTEMPT_ATTR, 1))
    stopper = stopped_by(trial)
    if stopper:
        reason = f"{reason} (stopped by {stopper}; its re-run does not use a retry)"
    storage.set_trial_user_attr(trial._trial_id, FAILURE_ATTR, reason)
    storage.set_trial_user_attr(trial._trial_id, KIND_ATTR, "infrastructure")
    if not stopper and attempt > max_retries:
        storage.set_trial_user_attr(trial._trial_id, FINAL_ATTR, True)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        return (
            f"{study.study_name} trial {trial.number}: {reason}; failed for good after "
            f"{attempt} attempts (search.max_retries = {max_retries})"
        )
    number = enqueue_rerun(study, trial, attempt if stopper else attempt + 1)
    storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return (
        f"{study.study_name} trial {trial.number}: {reason}; re-queued as trial {number} with its "
        "checkpoint"
    )


def retried_numbers(trials: Sequence[FrozenTrial]) -> set[int]:
    """Numbers of the trials that have a re-run (a finished trial cannot be marked itself)."""
    return {int(t.user_attrs[RETRY_OF_ATTR]) for t in trials if RETRY_OF_ATTR in t.user_attrs}


def enqueue_rerun(study: optuna.Study, trial: FrozenTrial, attempt: int) -> int:
    """A WAITING copy of ``trial`` (same parameters and folder), made once; returns its number."""
    from optuna.trial import TrialState, create_trial

    for other in study.get_trials(deepcopy=False):
        if other.user_attrs.get(RETRY_OF_ATTR) == trial.number:
            return other.number
    template = create_trial(
        state=TrialState.WAITING,
        system_attrs={"fixed_params": trial.params},
        user_attrs={
            LINEAGE_ATTR: trial_attrs(trial).get(LINEAGE_ATTR, trial.number),
            ATTEMPT_ATTR: attempt,
            RETRY_OF_ATTR: trial.number,
        },
    )
    trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
    return study._storage.get_trial_number_from_id(trial_id)


def retry_failed(storage: BaseStorage, spec: StudySpec) -> list[str]:
    """Re-queue every trial failed for good (``tvls-launch --retry-failed``), its cause fixed."""
    import optuna
    from optuna.trial import TrialState

    from tunevlseg.tuning.failures import FINAL_ATTR

    study = optuna.load_study(study_name=spec.name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    actions = []
    for trial in trials:
        if (
            trial.state != TrialState.FAIL
            or not trial.user_attrs.get(FINAL_ATTR)
            or trial.number in retried
        ):
            continue
        number = enqueue_rerun(study, trial, 1)
        actions.append(f"{spec.name} trial {trial.number}: re-queued as trial {number}")
    return actions
