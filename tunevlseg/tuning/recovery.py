"""Stale trials: RUNNING in the storage, but the process that ran them is gone.

Optuna's heartbeat only works with RDB storages inside ``study.optimize``, so the toolkit tells
stale trials by their owner, which every worker stamps on its trial (host, pid, SLURM ids). A
stale trial is marked FAIL with the reason and re-enqueued with the same parameters and the same
checkpoint folder (``tvls.lineage``), up to ``search.max_retries`` times.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from tunevlseg.config.grid import StudySpec

if TYPE_CHECKING:
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

HOST_ATTR = "tvls.host"
PID_ATTR = "tvls.pid"
SLURM_JOB_ATTR = "tvls.slurm_job_id"
LINEAGE_ATTR = "tvls.lineage"
ATTEMPT_ATTR = "tvls.attempt"
FAILURE_ATTR = "tvls.failure"

Liveness = Callable[["FrozenTrial"], "bool | None"]
"""True: its owner runs; False: its owner is gone; None: cannot tell (leave it alone)."""


def local_liveness(trial: FrozenTrial) -> bool | None:
    """Owner liveness for trials run by local processes on this host."""
    if trial.user_attrs.get(SLURM_JOB_ATTR):
        return None
    if trial.user_attrs.get(HOST_ATTR) != socket.gethostname():
        return None
    pid = trial.user_attrs.get(PID_ATTR)
    if not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def default_reason(trial: FrozenTrial) -> str:
    owner = trial.user_attrs
    return f"owner process {owner.get(PID_ATTR)} on {owner.get(HOST_ATTR)} is gone"


def recover_stale(
    storage: BaseStorage,
    spec: StudySpec,
    is_alive: Liveness = local_liveness,
    reason_of: Callable[[FrozenTrial], str] | None = None,
) -> list[str]:
    """Fail stale RUNNING trials and re-enqueue them; return one line per action."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=spec.name, storage=storage)
    actions: list[str] = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_alive(trial) is not False:
            continue
        reason = (reason_of or default_reason)(trial)
        storage.set_trial_user_attr(trial._trial_id, FAILURE_ATTR, reason)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        attempt = int(trial.user_attrs.get(ATTEMPT_ATTR, 1))
        if attempt > spec.search.max_retries:
            actions.append(
                f"{spec.name} trial {trial.number}: {reason}; failed for good after "
                f"{attempt} attempts (search.max_retries = {spec.search.max_retries})"
            )
            continue
        study.enqueue_trial(
            trial.params,
            user_attrs={
                LINEAGE_ATTR: trial.user_attrs.get(LINEAGE_ATTR, trial.number),
                ATTEMPT_ATTR: attempt + 1,
            },
            skip_if_exists=False,
        )
        actions.append(f"{spec.name} trial {trial.number}: {reason}; re-queued with its checkpoint")
    return actions
