"""Sweeps with trials in every state, written straight into a journal storage.

The studies are created and their trials enqueued by the project's own functions; a trial is
then claimed the way the worker does (WAITING -> RUNNING, one claim bundle with its owner and
start time) and given a learning curve as the epoch reporter leaves it (the objective at step =
epochs completed). No training runs and no SLURM is needed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from tunevlseg.cluster.launch import sweep_storage
from tunevlseg.config.grid import StudySpec, expand
from tunevlseg.config.loader import Experiment, load_experiment
from tunevlseg.tuning import recovery
from tunevlseg.tuning.storage import open_storage
from tunevlseg.tuning.studies import enqueue_missing, ensure_studies
from tunevlseg.tuning.trial_attrs import CLAIM_ATTR

SWEEP = """\
name: wt
output_dir: ../runs/wt
models: [clipseg]
learners: [coop, vpt]
datasets: [{{name: {dataset}, root: ../data}}]
training: {{max_epochs: {max_epochs}}}
search: {{n_trials: {n_trials}, objective: val_dice}}
"""


@dataclass
class Sweep:
    """An experiment file and its storage; ``specs`` in the experiment's order."""

    path: Path
    experiment: Experiment
    storage: BaseStorage
    specs: list[StudySpec]

    def trial_id(self, spec: StudySpec, number: int) -> int:
        study_id = self.storage.get_study_id_from_name(spec.name)
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, number)

    def claim(
        self,
        spec: StudySpec,
        number: int,
        *,
        started_at: float,
        curve: dict[int, float] | None = None,
        slurm: tuple[str, str] | None = None,
        host: str = "node7",
        pid: int = 4242,
    ) -> None:
        """Claim a WAITING trial like a worker, then report its curve's points."""
        trial_id = self.trial_id(spec, number)
        assert self.storage.set_trial_state_values(trial_id, TrialState.RUNNING)
        owner: dict[str, Any] = {
            recovery.HOST_ATTR: host,
            recovery.PID_ATTR: pid,
            recovery.SLURM_JOB_ATTR: slurm[0] if slurm else None,
            recovery.SLURM_TASK_ATTR: slurm[1] if slurm else None,
            recovery.LINEAGE_ATTR: number,
            "tvls.started_at": started_at,
        }
        self.storage.set_trial_user_attr(trial_id, CLAIM_ATTR, owner)
        for step, value in sorted((curve or {}).items()):
            self.storage.set_trial_intermediate_value(trial_id, step, value)

    def report(self, spec: StudySpec, number: int, step: int, value: float) -> None:
        self.storage.set_trial_intermediate_value(self.trial_id(spec, number), step, value)

    def finish(self, spec: StudySpec, number: int, state: TrialState, value: float) -> None:
        """End a trial (a WAITING one is claimed first, as a worker would)."""
        trial_id = self.trial_id(spec, number)
        if self.storage.get_trial(trial_id).state == TrialState.WAITING:
            self.storage.set_trial_state_values(trial_id, TrialState.RUNNING)
        self.storage.set_trial_state_values(trial_id, state, [value])

    def finish_everything(self, value: float = 0.5) -> None:
        for spec in self.specs:
            study = optuna.load_study(study_name=spec.name, storage=self.storage)
            for trial in study.get_trials(deepcopy=False):
                if not trial.state.is_finished():
                    self.finish(spec, trial.number, TrialState.COMPLETE, value)


def make_sweep(
    folder: Path, *, dataset: str = "d", max_epochs: int = 6, n_trials: int = 3
) -> Sweep:
    """Two studies (coop, vpt) with every trial WAITING in a fresh journal storage."""
    exp = folder / "exp"
    exp.mkdir(parents=True)
    path = exp / "wt.yaml"
    path.write_text(SWEEP.format(dataset=dataset, max_epochs=max_epochs, n_trials=n_trials))
    experiment = load_experiment(path)
    storage = open_storage(sweep_storage(experiment))
    specs = list(expand(experiment).studies)
    ensure_studies(storage, specs)
    for spec in specs:
        enqueue_missing(storage, spec)
    return Sweep(path, experiment, storage, specs)


def busy_sweep(folder: Path, now: float | None = None, **kwargs: Any) -> Sweep:
    """A sweep in mid-run.

    First study: #0 RUNNING on ``node7:4242`` since ``now - 125`` s with epochs 1 and 2
    reported, #1 RUNNING as SLURM task ``812_3`` since ``now - 30`` s before its first epoch,
    #2 WAITING. Second study: #0 COMPLETE, #1 RUNNING with one epoch, #2 PRUNED.
    """
    now = time.time() if now is None else now
    sweep = make_sweep(folder, **kwargs)
    first, second = sweep.specs
    sweep.claim(first, 0, started_at=now - 125, curve={1: 0.31, 2: 0.42})
    sweep.claim(first, 1, started_at=now - 30, slurm=("812", "3"))
    sweep.finish(second, 0, TrialState.COMPLETE, 0.6)
    sweep.claim(second, 1, started_at=now - 61, curve={1: 0.5}, host="node8", pid=99)
    sweep.finish(second, 2, TrialState.PRUNED, 0.2)
    return sweep
