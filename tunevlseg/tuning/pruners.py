"""The study's pruner, built the same way in every process from the stored spec.

Optuna keeps no pruner in the storage: each array task builds its own. Every decision is made
from what the shared storage holds (the other trials' reported epochs), so tasks on different
nodes prune each other's bad trials. Settings Optuna would infer from the first trial that
finishes *in this process* (``"auto"`` resources) are taken from the experiment file instead,
since every task is its own process and would infer its own.

The resource is epochs: a trial reports its validation objective after each epoch at step
``epochs completed`` (1, 2, ...), so ``min_resource: 1`` is the end of the first epoch.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import optuna
from optuna.pruners import BasePruner

from tunevlseg.config.schema import (
    AshaPruner,
    HyperbandPruner,
    MedianPruner,
    PrunerSettings,
    WilcoxonPruner,
)

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from tunevlseg.config.grid import StudySpec

VAL_IMAGES_ATTR = "tvls.val_images"
"""Per-image validation scores (Dice or IoU, the objective's), in validation-set order: of the
latest epoch while a trial runs, of its best checkpoint once complete. Only written under the
Wilcoxon pruner, which pairs them by image across trials."""


def make_pruner(spec: StudySpec) -> BasePruner:
    """The pruner ``search.pruner`` names, resolved for this study's ``max_epochs``."""
    return build_pruner(spec.search.pruner, spec.training.max_epochs)


def build_pruner(settings: PrunerSettings, max_epochs: int) -> BasePruner:
    """The Optuna pruner of one ``search.pruner`` block (``max_epochs``: a full trial).

    The blocks' option names are the pruners' own keyword arguments, so they pass through.
    """
    options = settings.model_dump(exclude={"name"})
    if isinstance(settings, AshaPruner):
        return optuna.pruners.SuccessiveHalvingPruner(**options)
    if isinstance(settings, HyperbandPruner):
        return optuna.pruners.HyperbandPruner(
            **{**options, "max_resource": settings.max_resource or max_epochs}
        )
    if isinstance(settings, MedianPruner):
        return optuna.pruners.MedianPruner(**options)
    if isinstance(settings, WilcoxonPruner):
        return PerImageWilcoxonPruner(**options)
    return optuna.pruners.NopPruner()


def rounded_scores(values: Sequence[float]) -> list[float]:
    """Per-image scores as stored: 4 decimals keep the journal line short and the ranks."""
    return [round(float(v), 4) for v in values]


class PerImageWilcoxonPruner(BasePruner):
    """Optuna's Wilcoxon test on per-image validation scores, while the curve stays per epoch.

    Optuna's ``WilcoxonPruner`` wants one intermediate value per problem instance (step = image
    id), but a trial's intermediate values here are its learning curve (step = epoch), which the
    other pruners, TPE and optuna-dashboard read. The per-image scores of the latest validation
    travel in one user attribute instead (:data:`VAL_IMAGES_ATTR`), and the test itself is
    Optuna's, run on views of the two trials whose "steps" are the images. Every trial of a
    study validates on the same images in the same order (the split uses a fixed data seed),
    so position pairs images.
    """

    def __init__(self, *, p_threshold: float, n_startup_steps: int, n_warmup_epochs: int) -> None:
        self.n_warmup_epochs = n_warmup_epochs
        with warnings.catch_warnings():  # "experimental": the test is used, not its interface
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._test = optuna.pruners.WilcoxonPruner(
                p_threshold=p_threshold, n_startup_steps=n_startup_steps
            )

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if len(trial.intermediate_values) <= self.n_warmup_epochs:
            return False
        try:
            best = study.best_trial
        except ValueError:  # no complete trial yet
            return False
        mine, theirs = trial.user_attrs.get(VAL_IMAGES_ATTR), best.user_attrs.get(VAL_IMAGES_ATTR)
        if not mine or not theirs or len(mine) != len(theirs):
            return False
        view = SimpleNamespace(best_trial=_per_image(best, theirs), direction=study.direction)
        return bool(self._test.prune(view, _per_image(trial, mine)))  # type: ignore[arg-type]


def _per_image(trial: FrozenTrial, scores: Sequence[float]) -> Any:
    """A view of ``trial`` whose intermediate values are its per-image scores by image index."""
    return SimpleNamespace(
        number=trial.number, intermediate_values=dict(enumerate(float(s) for s in scores))
    )
