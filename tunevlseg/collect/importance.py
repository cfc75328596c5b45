"""Hyperparameter importance per learner: Optuna's importances per study, averaged per learner.

Each study with at least :data:`MIN_TRIALS` complete trials is evaluated with
``optuna.importance.get_param_importances`` and the PED-ANOVA evaluator (no scikit-learn needed,
and about 10 ms per study where fANOVA's forests take seconds). Importances are normalised per
study (they sum to 1), then averaged per learner over the studies that searched the parameter. A
study where the evaluator fails (for example when every trial has the same value) is skipped and
named in the result, never fatal.

PED-ANOVA still costs about 10-15 ms per study, 10-15 s for a 1,000-study sweep, while the rest
of the collector needs a few seconds. Results are therefore cached per study in a JSON file
(``results/.cache/importance.json``), keyed by a digest of the study's complete trials (numbers,
values, parameters) and the Optuna version: a re-run only evaluates studies whose trials changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunevlseg.collect.results import StudyData

MIN_TRIALS = 3


@dataclass(frozen=True)
class LearnerImportance:
    """One parameter's importance for one learner, over ``n_studies`` studies."""

    learner: str
    learner_title: str
    param: str
    mean: float
    std: float  # population std over the studies
    n_studies: int


@dataclass(frozen=True)
class Importances:
    rows: list[LearnerImportance]
    evaluated: int
    too_few: int  # studies with fewer than MIN_TRIALS complete trials
    failed: list[str]  # "study: error" where the evaluator raised


def study_importance(data: StudyData) -> dict[str, float] | None:
    """Normalised importances of one study's searched parameters.

    Returns None for a study with fewer than :data:`MIN_TRIALS` complete trials with parameters.

    Raises:
        Exception: whatever the evaluator raises.
    """
    import optuna
    from optuna.trial import TrialState

    complete = [t for t in data.trials if t.state == TrialState.COMPLETE and t.value is not None]
    complete = [t for t in complete if t.distributions]
    if len(complete) < MIN_TRIALS:
        return None
    study = optuna.create_study(direction=data.direction)
    study.add_trials(complete)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))


def trials_digest(data: StudyData) -> str:
    """What the importance of a study depends on: its complete trials' numbers, values, params."""
    from optuna.trial import TrialState

    items = [
        [t.number, t.value, sorted((k, repr(v)) for k, v in t.params.items())]
        for t in data.trials
        if t.state == TrialState.COMPLETE
    ]
    text = json.dumps([data.direction, items], default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class _Cache:
    """Per-study importances from an earlier run, valid for the same trials and Optuna version."""

    def __init__(self, path: Path | None) -> None:
        import optuna

        self.path = path
        self.version = f"optuna {optuna.__version__}, PED-ANOVA"
        self.entries: dict[str, Any] = {}
        self.changed = False
        if path is not None and path.is_file():
            try:
                stored = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                stored = {}
            if isinstance(stored, dict) and stored.get("version") == self.version:
                self.entries = dict(stored.get("studies", {}))

    def get(self, study: str, digest: str) -> dict[str, float] | None | bool:
        """The cached importances (None: too few trials); False when not cached."""
        entry = self.entries.get(study)
        if isinstance(entry, dict) and entry.get("digest") == digest:
            return entry.get("importances")  # type: ignore[no-any-return]
        return False

    def put(self, study: str, digest: str, values: dict[str, float] | None) -> None:
        self.entries[study] = {"digest": digest, "importances": values}
        self.changed = True

    def save(self) -> None:
        if self.path is None or not self.changed:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"version": self.version, "studies": self.entries}), encoding="utf-8")
        os.replace(tmp, self.path)


def learner_importances(studies: Sequence[StudyData], cache: Path | None = None) -> Importances:
    """Average each learner's per-study importances (learners in catalogue order).

    Args:
        cache: JSON file of per-study importances from earlier runs (read and updated). Failures
            are not cached, so a failing study is tried again next time.
    """
    import optuna

    from tunevlseg.catalog import LEARNERS

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = _Cache(cache)
    per_learner: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    titles: dict[str, str] = {}
    failed: list[str] = []
    evaluated = too_few = 0
    for data in studies:
        digest = trials_digest(data)
        cached = store.get(data.result.study, digest)
        if cached is not False:
            values = cached if isinstance(cached, dict) else None
        else:
            try:
                values = study_importance(data)
            except Exception as error:  # an evaluator failure must not stop the report
                failed.append(f"{data.result.study}: {type(error).__name__}: {error}")
                continue
            store.put(data.result.study, digest, values)
        if values is None:
            too_few += 1
            continue
        evaluated += 1
        titles[data.result.learner] = data.result.learner_title
        for param, value in values.items():
            per_learner[data.result.learner][param].append(float(value))
    order = [name for name in LEARNERS if name in per_learner]
    order += sorted(set(per_learner) - set(order))
    rows = []
    for learner in order:
        params = per_learner[learner]
        ranked = sorted(params, key=lambda p: (-statistics.fmean(params[p]), p))
        for param in ranked:
            values = params[param]
            rows.append(
                LearnerImportance(
                    learner,
                    titles[learner],
                    param,
                    statistics.fmean(values),
                    statistics.pstdev(values),
                    len(values),
                )
            )
    store.save()
    return Importances(rows, evaluated, too_few, failed)
