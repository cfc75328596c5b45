"""What every finished trial's learning curve must look like, wherever the sweep ran."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pytest
from optuna.trial import FrozenTrial, TrialState

from tunevlseg.tuning.trial_attrs import trial_attrs


def assert_curves(trials: Sequence[FrozenTrial], direction: str = "maximize") -> None:
    """Each trained trial's curve is whole, and its value comes from it.

    * complete: one point per epoch trained (steps 1..epochs_run, none missing, even after a
      requeue or a resume), and the trial's value (its best checkpoint, validated again) is
      the best point of the curve;
    * pruned: steps 1..k, the trial's value is its last point, ``epochs_run`` is k, and its
      folder holds ``pruned.json`` and no checkpoint.
    """
    for trial in trials:
        attrs = trial_attrs(trial)
        curve = trial.intermediate_values
        steps = sorted(curve)
        if trial.state == TrialState.COMPLETE and attrs.get("epochs_run"):
            assert steps == list(range(1, attrs["epochs_run"] + 1)), (
                trial.number,
                steps,
                attrs["epochs_run"],
            )
            best = max(curve.values()) if direction == "maximize" else min(curve.values())
            assert trial.value == pytest.approx(best, abs=1e-5), (trial.number, trial.value, curve)
        elif trial.state == TrialState.PRUNED:
            assert steps and steps == list(range(1, len(steps) + 1)), (trial.number, steps)
            assert trial.value == curve[steps[-1]]
            assert attrs["epochs_run"] == steps[-1]
            run_dir = Path(attrs["tvls.run_dir"])
            assert (run_dir / "pruned.json").is_file(), run_dir
            assert not (run_dir / "checkpoints").exists(), run_dir


def assert_pruned_by_other_tasks(trials: Sequence[FrozenTrial]) -> int:
    """Each pruned trial met, at the rung where it stopped, a better trial of another task:
    the pruner decided from the shared storage, not from the task's own trials."""
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    for trial in pruned:
        rungs = [k for k in trial.system_attrs if k.startswith("completed_rung_")]
        assert rungs, trial.number
        rung = max(rungs, key=lambda k: int(k.rsplit("_", 1)[1]))
        owner = trial_attrs(trial)
        better = [
            other
            for other in trials
            if other.number != trial.number
            and other.system_attrs.get(rung, -math.inf) > trial.system_attrs[rung]
        ]
        assert better, (trial.number, rung)
        assert any(
            (trial_attrs(o).get("tvls.pid"), trial_attrs(o).get("tvls.slurm_array_task_id"))
            != (owner.get("tvls.pid"), owner.get("tvls.slurm_array_task_id"))
            for o in better
        ), trial.number
    return len(pruned)
