"""Is the process that owns a RUNNING trial still alive? From SLURM's queue, the trial's stamp
and, for a trial whose stamp does not say, the manifest.

A trial's owner stamp names its SLURM task (or local process). ``squeue`` lists pending,
running and requeued tasks on every cluster: a task missing from it has ended (``sacct``, when
there is accounting, only adds the reason). A trial the stamp cannot place (written by an older
version, or a stamp cut short) is looked up in the manifest: if every task ever submitted for it
has left the queue, or it was run by a local launch (which holds the sweep's lock for its whole
run, as this launch now does), nothing can still be running it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from tunevlseg.cluster.manifest import Manifest
from tunevlseg.cluster.slurm import task_key
from tunevlseg.tuning import recovery
from tunevlseg.tuning.trial_attrs import trial_attrs

if TYPE_CHECKING:
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

    from tunevlseg.config.grid import Expansion


class SweepLiveness:
    """Owner liveness for :func:`~tunevlseg.tuning.recovery.recover_stale`.

    Args:
        manifest: The sweep's manifest (None: nothing was launched yet).
        queued: Keys ``<job>_<index>`` of the tasks SLURM still holds, or None when SLURM was
            not asked (a local launch): then a SLURM-owned trial cannot be judged.
        ended: Final states from ``sacct`` by task key, for the reason (may be empty).
    """

    def __init__(
        self,
        manifest: Manifest | None,
        queued: set[str] | None,
        ended: dict[str, str] | None = None,
    ) -> None:
        self.queued = queued
        self.ended = ended or {}
        self.slurm_tasks: dict[tuple[str, int], list[str]] = defaultdict(list)
        self.local_tasks: set[tuple[str, int]] = set()
        if manifest is not None:
            for key, task in manifest.task_index().items():
                self.slurm_tasks[task].append(key)
            self.local_tasks = {
                (study, int(number))
                for launch in manifest.launches
                for study, number in launch.get("local_tasks", [])
            }

    def _stamped_task(self, trial: FrozenTrial) -> str | None:
        owner = trial_attrs(trial)
        job = owner.get(recovery.SLURM_JOB_ATTR)
        return task_key(job, owner.get(recovery.SLURM_TASK_ATTR)) if job else None

    def __call__(self, study: str, trial: FrozenTrial) -> bool | None:
        stamped = self._stamped_task(trial)
        if stamped is not None:
            return None if self.queued is None else stamped in self.queued
        local = recovery.local_liveness(study, trial)
        if local is not None:
            return local
        return self._from_manifest(study, trial)

    def _from_manifest(self, study: str, trial: FrozenTrial) -> bool | None:
        tasks = self.slurm_tasks.get((study, trial.number), [])
        if tasks:
            return None if self.queued is None else any(key in self.queued for key in tasks)
        if (study, trial.number) in self.local_tasks:
            return False
        return None

    def reason(self, study: str, trial: FrozenTrial) -> str:
        stamped = self._stamped_task(trial)
        if stamped is None and recovery.local_liveness(study, trial) is not None:
            return recovery.default_reason(study, trial)
        keys = [stamped] if stamped else self.slurm_tasks.get((study, trial.number), [])
        if not keys:
            return "its local task ended without recording an owner"
        states = [f"sacct: {self.ended[k]}" for k in keys if k in self.ended]
        shown = ", ".join(keys)
        return f"SLURM task {shown} is no longer queued" + (
            f" ({'; '.join(states)})" if states else ""
        )


def running_job_ids(storage: BaseStorage, expansion: Expansion) -> list[str]:
    """SLURM jobs named by the owner stamps of the sweep's RUNNING trials."""
    from optuna.trial import TrialState

    ids = set()
    for spec in expansion.studies:
        try:
            study_id = storage.get_study_id_from_name(spec.name)
        except KeyError:
            continue
        for trial in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            job = trial_attrs(trial).get(recovery.SLURM_JOB_ATTR)
            if job:
                ids.add(str(job))
    return sorted(ids)


def slurm_liveness(
    manifest: Manifest | None, storage: BaseStorage, expansion: Expansion
) -> SweepLiveness:
    """Liveness from SLURM's queue for every task the sweep submitted or a trial names."""
    from tunevlseg.cluster import slurm

    known = set(running_job_ids(storage, expansion)) | set(
        manifest.array_job_ids() if manifest else []
    )
    queued = {task.key for task in slurm.queued_tasks(sorted(known))}
    return SweepLiveness(manifest, queued, slurm.ended_states(sorted(known)))
