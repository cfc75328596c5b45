"""Hyperparameter importance per learner: PED-ANOVA (Optuna) over all of a learner's studies.

PED-ANOVA asks how differently a parameter is distributed among the top 10 % of the trials than
among all of them. Optuna's documentation asks for at least 5 trials in that top 10 %, so 50
per evaluation; a paper sweep runs 20 trials per study, which leaves 2. The collector therefore
evaluates each learner once, on the complete trials of all its studies (every model and data
set): a 125-study learner contributes 2,500 trials, 250 of them in the top 10 %. It is also
what keeps the collector fast: one evaluation per learner instead of about 9 ms per study.

Objective values are not comparable across data sets (a Dice of 0.6 is good on one and poor on
another), so each trial enters with its rank *within its own study*, as a quantile in (0, 1)
(best first, ties share their mean rank): the pooled top 10 % are then about the top 10 % of
every study. Studies with fewer than :data:`MIN_TRIALS` complete trials are left out and
counted. A parameter whose range differs between studies (an override in one grid cell) is
split into regimes by Optuna's conditional PED-ANOVA. A learner whose evaluation fails is
named in the result, never fatal.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunevlseg.collect.results import StudyData

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial, TrialState

MIN_TRIALS = 3


@dataclass(frozen=True)
class LearnerImportance:
    """One parameter's importance for one learner (the learner's importances sum to 1)."""

    learner: str
    learner_title: str
    param: str
    importance: float
    n_studies: int
    n_trials: int


@dataclass(frozen=True)
class Importances:
    rows: list[LearnerImportance]
    evaluated: int  # studies whose trials were pooled
    too_few: int  # studies with fewer than MIN_TRIALS complete trials
    failed: list[str]  # "learner: error" where the evaluator raised


def rank_quantiles(trials: Sequence[FrozenTrial], direction: str) -> list[float]:
    """Each trial's rank among ``trials`` by value as a quantile: (rank + 0.5) / n, best lowest.

    Tied values share the mean of their ranks, so the order of the storage never matters.
    """
    sign = -1.0 if direction == "maximize" else 1.0
    keys = [sign * float(t.value) for t in trials]  # type: ignore[arg-type]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    quantiles = [0.0] * len(keys)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and keys[order[end + 1]] == keys[order[start]]:
            end += 1
        mean_rank = (start + end) / 2
        for position in range(start, end + 1):
            quantiles[order[position]] = (mean_rank + 0.5) / len(keys)
        start = end + 1
    return quantiles


def _complete_trials(data: StudyData) -> list[FrozenTrial]:
    from optuna.trial import TrialState

    return [
        t
        for t in data.trials
        if t.state == TrialState.COMPLETE and t.value is not None and t.distributions
    ]


def ranked_trials(
    trials: Sequence[FrozenTrial], quantiles: Sequence[float], first_id: int
) -> list[FrozenTrial]:
    """The trials with their rank quantile as value and fresh ids (unique in the pool)."""
    from optuna.trial import FrozenTrial

    return [
        FrozenTrial(
            number=first_id + i,
            state=trial.state,
            value=quantile,
            datetime_start=trial.datetime_start,
            datetime_complete=trial.datetime_complete,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={},
            system_attrs={},
            intermediate_values={},
            trial_id=first_id + i,
        )
        for i, (trial, quantile) in enumerate(zip(trials, quantiles, strict=True))
    ]


def _pooled_study(trials: list[FrozenTrial]) -> optuna.Study:
    """A minimising study that hands the evaluator ``trials`` as they are.

    ``study.add_trials`` deep-copies every trial into an in-memory storage, about 0.5 ms per
    trial (10 s for a 1,000-study sweep, more than the evaluation); the evaluator only reads
    the trials, through ``get_trials``.
    """
    import copy

    import optuna
    from optuna.study import StudyDirection

    class PooledStudy(optuna.Study):
        def get_trials(
            self, deepcopy: bool = True, states: Container[TrialState] | None = None
        ) -> list[FrozenTrial]:
            chosen = [t for t in trials if states is None or t.state in states]
            return copy.deepcopy(chosen) if deepcopy else chosen

        def _get_trials(
            self,
            deepcopy: bool = True,
            states: Container[TrialState] | None = None,
            use_cache: bool = False,
        ) -> list[FrozenTrial]:
            return self.get_trials(deepcopy, states)

    storage = optuna.storages.InMemoryStorage()
    storage.create_new_study([StudyDirection.MINIMIZE], "pooled")
    return PooledStudy("pooled", storage)


def pooled_importance(trials: list[FrozenTrial]) -> dict[str, float]:
    """Normalised PED-ANOVA importances of rank-valued trials (lower value = better).

    Raises:
        Exception: whatever the evaluator raises.
    """
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "regime with < 2 trials" and the like, per parameter
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        return dict(
            optuna.importance.get_param_importances(_pooled_study(trials), evaluator=evaluator)
        )


def learner_importances(studies: Sequence[StudyData]) -> Importances:
    """Importances of each learner's parameters over its studies (learners in catalogue order)."""
    import optuna

    from tunevlseg.catalog import LEARNERS

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pools: dict[str, list[FrozenTrial]] = defaultdict(list)
    n_studies: dict[str, int] = defaultdict(int)
    titles: dict[str, str] = {}
    too_few = 0
    for data in studies:
        complete = _complete_trials(data)
        if len(complete) < MIN_TRIALS:
            too_few += 1
            continue
        learner = data.result.learner
        titles[learner] = data.result.learner_title
        n_studies[learner] += 1
        pool = pools[learner]
        pool += ranked_trials(complete, rank_quantiles(complete, data.direction), len(pool))
    order = [name for name in LEARNERS if name in pools]
    order += sorted(set(pools) - set(order))
    rows: list[LearnerImportance] = []
    failed: list[str] = []
    for learner in order:
        try:
            values = pooled_importance(pools[learner])
        except Exception as error:  # noqa: BLE001 - an evaluator failure must not stop the report
            failed.append(f"{titles[learner]}: {type(error).__name__}: {error}")
            continue
        ranked = sorted(values, key=lambda p: (-values[p], p))
        rows += [
            LearnerImportance(
                learner,
                titles[learner],
                param,
                float(values[param]),
                n_studies[learner],
                len(pools[learner]),
            )
            for param in ranked
        ]
    return Importances(rows, sum(n_studies.values()), too_few, failed)
