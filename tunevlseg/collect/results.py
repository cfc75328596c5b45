"""Studies in the storage -> one tidy row per study, from the storage alone.

The best trial of a study is chosen by the *validation* objective (never by test: choosing by
test would leak the test set into model selection); its test Dice and IoU are the study's result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from tunevlseg.catalog import LEARNERS
from tunevlseg.config.grid import StudySpec
from tunevlseg.tuning.studies import SPEC_ATTR

if TYPE_CHECKING:
    import pandas as pd
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial


@dataclass(frozen=True)
class StudyResult:
    study: str
    sweep: str
    model: str
    learner: str
    learner_title: str
    dataset: str
    category: str
    grid: str
    n_trials: int
    complete: int
    failed: int
    pruned: int
    running: int
    waiting: int
    best_trial: int | None
    best_value: float | None
    test_dice: float | None
    test_iou: float | None
    val_dice: float | None


def best_trial(trials: list[FrozenTrial], direction: str) -> FrozenTrial | None:
    """The complete trial with the best objective value; ties go to the earliest trial."""
    from optuna.trial import TrialState

    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not complete:
        return None
    sign = -1.0 if direction == "maximize" else 1.0
    return min(complete, key=lambda t: (sign * float(t.value), t.number))  # type: ignore[arg-type]


def _metric(trial: FrozenTrial | None, key: str) -> float | None:
    if trial is None:
        return None
    value = trial.user_attrs.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def study_results(storage: BaseStorage, sweep: str | None = None) -> list[StudyResult]:
    """One result per study of the sweep (every tunevlseg study when ``sweep`` is None)."""
    from optuna.trial import TrialState

    results = []
    for summary in storage.get_all_studies():
        attrs = summary.user_attrs
        if SPEC_ATTR not in attrs:
            continue
        spec = StudySpec.model_validate(attrs[SPEC_ATTR])
        if sweep is not None and spec.sweep != sweep:
            continue
        trials = storage.get_all_trials(summary._study_id, deepcopy=False)
        best = best_trial(trials, spec.search.direction)

        def count(state: TrialState, trials: list[FrozenTrial] = trials) -> int:
            return sum(1 for t in trials if t.state == state)

        results.append(
            StudyResult(
                study=spec.name,
                sweep=spec.sweep,
                model=spec.model.key,
                learner=spec.learner,
                learner_title=LEARNERS[spec.learner].title,
                dataset=spec.dataset.name,
                category=spec.dataset.category,
                grid=spec.name.split("/", 3)[3] if spec.grid else "",
                n_trials=spec.n_trials,
                complete=count(TrialState.COMPLETE),
                failed=count(TrialState.FAIL),
                pruned=count(TrialState.PRUNED),
                running=count(TrialState.RUNNING),
                waiting=count(TrialState.WAITING),
                best_trial=best.number if best else None,
                best_value=float(best.value) if best and best.value is not None else None,
                test_dice=_metric(best, "test_dice"),
                test_iou=_metric(best, "test_iou"),
                val_dice=_metric(best, "val_dice"),
            )
        )
    return sorted(results, key=lambda r: r.study)


def results_frame(results: list[StudyResult]) -> pd.DataFrame:
    import pandas as pd

    columns = list(StudyResult.__dataclass_fields__)
    return pd.DataFrame([asdict(r) for r in results], columns=columns)


def as_dicts(results: list[StudyResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
