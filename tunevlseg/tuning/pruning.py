"""A trial's learning curve in the storage, and its end when the pruner says stop.

After every validation epoch the trial's objective is reported at step = epochs completed, so
Optuna's pruners, TPE (which ranks pruned trials by their last reported value) and
optuna-dashboard see the curve while the trial runs. Reports are idempotent: a resumed run
replays the epochs of its earlier attempts (:class:`tunevlseg.train.fit.EpochEnd`), so a
re-queued trial, which is a new Optuna trial, gets the whole curve, and a step whose report a
kill interrupted is reported on resume; a step already stored is never reported twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import optuna

from tunevlseg.failpoints import failpoint
from tunevlseg.tuning.pruners import VAL_IMAGES_ATTR, rounded_scores
from tunevlseg.tuning.retry import with_retries

if TYPE_CHECKING:
    from tunevlseg.train.fit import EpochEnd

EPOCHS_ATTR = "epochs_run"
"""Epochs a trial trained (also written for pruned trials, from their curve)."""


class TrialPrunedAt(optuna.TrialPruned):
    """The pruner stopped the trial; ``curve`` is its learning curve (step -> objective)."""

    def __init__(self, curve: dict[int, float]) -> None:
        last = max(curve) if curve else 0
        super().__init__(f"pruned after {last} epochs")
        self.curve = dict(curve)

    @property
    def epochs(self) -> int:
        return max(self.curve, default=0)


class EpochReporter:
    """The ``on_epoch_end`` hook of a trial's fit: report the objective, then ask the pruner.

    Args:
        trial: The running trial (its study carries the study's pruner).
        objective: The metric the study optimises (``val_dice``, ``val_iou``, ``val_loss``).
        per_image: Which per-image validation scores to store for the pruner (``"dice"`` or
            ``"iou"``; the Wilcoxon pruner pairs them by image), or ``None`` to store none
            (every other pruner: one journal line per epoch is the whole cost).

    The pruner is not asked after a trial's last epoch (``EpochEnd.last``: ``max_epochs``
    reached or early stopping ending it): a trained trial has nothing left to save, and its
    result is worth keeping.
    """

    def __init__(self, trial: optuna.Trial, objective: str, per_image: str | None = None) -> None:
        self.trial = trial
        self.objective = objective
        self.per_image = per_image
        # The trial's stored steps: Optuna keeps them on the Trial (it checks them itself before
        # a report, with a warning); read here so a replayed step is skipped without one.
        self.curve: dict[int, float] = dict(trial._cached_frozen_trial.intermediate_values)

    def __call__(self, end: EpochEnd) -> None:
        value = end.metrics.get(self.objective)
        if value is None:
            return
        if not end.replayed:
            failpoint("epoch-checkpointed")
        self.report(end.completed, float(value))
        scores = end.val_images.get(self.per_image) if self.per_image else None
        if scores:
            with_retries(
                lambda: self.trial.set_user_attr(VAL_IMAGES_ATTR, rounded_scores(scores)),
                what="recording per-image scores",
            )
        if end.last:
            return
        if with_retries(self.trial.should_prune, what="asking the pruner"):
            raise TrialPrunedAt(self.curve)

    def report(self, step: int, value: float) -> None:
        """Store one point of the curve unless the trial already has that step."""
        if step not in self.trial._cached_frozen_trial.intermediate_values:
            with_retries(lambda: self.trial.report(value, step), what="reporting the epoch")
        self.curve[step] = self.trial._cached_frozen_trial.intermediate_values.get(step, value)

    def report_curve(self, curve: dict[int, float]) -> None:
        """Store a whole curve (that of a run found already pruned), skipping stored steps."""
        for step in sorted(curve):
            self.report(step, curve[step])


def end_pruned(
    study: optuna.Study, trial: optuna.Trial, reporter: EpochReporter, pruned: TrialPrunedAt
) -> None:
    """Tell the study the trial is PRUNED, with its curve and the epochs it ran.

    Optuna stores the last reported value as a pruned trial's value, so the curve is made
    complete first (a run found already pruned brings its curve from ``pruned.json``).
    """
    from optuna.trial import TrialState

    reporter.report_curve(pruned.curve)
    with_retries(
        lambda: trial.set_user_attr(EPOCHS_ATTR, pruned.epochs), what="recording the epochs run"
    )
    with_retries(
        lambda: study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True),
        what="telling the pruned trial",
    )


def per_image_metric(pruner_name: str, objective: str) -> str | None:
    """The per-image scores the study's pruner compares, or ``None``."""
    if pruner_name != "wilcoxon":
        return None
    return "iou" if objective == "val_iou" else "dice"
