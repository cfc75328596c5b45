"""Studies in the storage: creation, the stored spec, trial budgets, and samplers.

The trial budget is kept exact with WAITING trials: the launcher enqueues exactly the trials that
are missing, and each task claims one of them by number (an atomic WAITING -> RUNNING change in
every Optuna storage). Workers never call ``study.ask()`` for a fresh trial, so parallel workers
cannot overshoot ``n_trials``, and a requeued task finds its own trial again.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from tunevlseg.config.grid import StudySpec

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

SPEC_ATTR = "tvls.spec"
SPEC_HASH_ATTR = "tvls.spec_sha256"


class StudyConflictError(Exception):
    """The storage holds a study of the same name with a different definition."""


def spec_hash(spec: StudySpec) -> str:
    """A stable digest of what defines a study (the resolved config)."""
    return hashlib.sha256(json.dumps(spec.to_attrs(), sort_keys=True).encode()).hexdigest()


def trial_seed(spec: StudySpec, trial_number: int) -> int:
    """A per-trial seed: parallel workers must not share one sampler RNG stream."""
    text = f"{spec.search.seed}:{spec.name}:{trial_number}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def make_sampler(spec: StudySpec, trial_number: int = 0) -> optuna.samplers.BaseSampler:
    """TPE with the constant liar (running trials count as bad) or random search."""
    import optuna

    seed = trial_seed(spec, trial_number)
    if spec.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(
        seed=seed,
        n_startup_trials=spec.search.n_startup_trials,
        constant_liar=True,
        multivariate=True,
    )


def load_spec(study: optuna.Study) -> StudySpec:
    return StudySpec.model_validate(study.user_attrs[SPEC_ATTR])


def existing_study_names(storage: BaseStorage) -> set[str]:
    return {summary.study_name for summary in storage.get_all_studies()}


def study_conflicts(storage: BaseStorage, studies: Sequence[StudySpec]) -> str | None:
    """The message for studies whose stored definition differs from the file's, or None.

    Read-only: ``tvls-launch --dry-run`` reports the same conflict a launch would refuse.
    """
    existing = existing_study_names(storage)
    conflicts: list[str] = []
    for spec in studies:
        if spec.name not in existing:
            continue
        stored = storage.get_study_user_attrs(storage.get_study_id_from_name(spec.name))
        if stored.get(SPEC_HASH_ATTR) == spec_hash(spec):
            continue
        if SPEC_ATTR not in stored:
            continue  # created by a launch that stopped before recording its definition
        # Compare definitions, not bytes: a setting added to the schema since the study was
        # created reads back with its default and is no change.
        previous = _validated(stored.get(SPEC_ATTR, {}))
        if previous != spec:
            old = previous.to_attrs() if previous is not None else stored.get(SPEC_ATTR, {})
            conflicts.append(_describe_difference(spec, old))
    if not conflicts:
        return None
    return (
        "the experiment file changed the definition of studies that already exist in the "
        "storage:\n"
        + "\n".join(conflicts)
        + "\nUse a new sweep `name:` (or another storage) for a new sweep, or pass --force "
        "to keep the stored trials under the new definition."
    )


def ensure_studies(
    storage: BaseStorage, studies: Sequence[StudySpec], *, force: bool = False
) -> None:
    """Create missing studies and check that existing ones have the same definition.

    Every check runs before the first study is created, so a conflict writes nothing.

    Raises:
        StudyConflictError: listing the studies whose stored definition differs.
    """
    import optuna

    conflict = None if force else study_conflicts(storage, studies)
    if conflict:
        raise StudyConflictError(conflict)
    for spec in studies:
        study = optuna.create_study(
            study_name=spec.name,
            storage=storage,
            direction=optuna.study.StudyDirection[spec.search.direction.upper()],
            load_if_exists=True,
        )
        if study.user_attrs.get(SPEC_HASH_ATTR) != spec_hash(spec):
            study.set_user_attr(SPEC_ATTR, spec.to_attrs())
            study.set_user_attr(SPEC_HASH_ATTR, spec_hash(spec))


def _validated(data: Any) -> StudySpec | None:
    from pydantic import ValidationError

    try:
        return StudySpec.model_validate(data)
    except ValidationError:
        return None


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def _shown(value: Any) -> str:
    return "(absent)" if type(value) is object else repr(value)


def _describe_difference(spec: StudySpec, stored: dict[str, Any]) -> str:
    new, old = _flatten(spec.to_attrs()), _flatten(stored)
    absent = object()
    changed = [
        f"    {key}: {_shown(old.get(key, absent))} -> {_shown(new.get(key, absent))}"
        for key in sorted(set(new) | set(old))
        if new.get(key, absent) != old.get(key, absent)
    ]
    return (
        f"  {spec.name}\n"
        + "\n".join(changed[:12])
        + (f"\n    ... and {len(changed) - 12} more" if len(changed) > 12 else "")
    )


@dataclass(frozen=True)
class StudyProgress:
    """Trial counts of one study against its budget.

    ``failed`` counts the trials failed for good (an error of their own, or retries used up):
    they take their place in the budget. Trials failed by a lost process that were re-queued
    are not counted; their re-runs are.
    """

    name: str
    n_trials: int
    complete: int = 0
    running: int = 0
    waiting: int = 0
    failed: int = 0
    pruned: int = 0
    best_value: float | None = None
    exists: bool = True
    stopped: str | None = None
    """Why the study takes no new trials (repeated errors), or None."""

    @property
    def done(self) -> int:
        return self.complete + self.pruned + self.failed

    @property
    def remaining(self) -> int:
        """Trials still to finish (running and waiting ones included)."""
        return max(0, self.n_trials - self.done)

    @property
    def to_enqueue(self) -> int:
        """Trials that exist nowhere yet: neither finished, running nor waiting."""
        if self.stopped:
            return 0
        return max(0, self.n_trials - self.done - self.running - self.waiting)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "remaining": self.remaining}


def stop_reason(trials: Sequence[FrozenTrial], max_failures: int) -> str | None:
    """Why a study must stop: ``max_failures`` trials failed by errors of their own, not retried."""
    from optuna.trial import TrialState

    from tunevlseg.tuning.failures import KIND_ATTR
    from tunevlseg.tuning.recovery import FAILURE_ATTR, retried_numbers

    retried = retried_numbers(trials)
    errors = [
        t
        for t in trials
        if t.state == TrialState.FAIL
        and t.user_attrs.get(KIND_ATTR) == "error"
        and t.number not in retried
    ]
    if len(errors) < max_failures:
        return None
    last = max(errors, key=lambda t: t.number)
    reason = str(last.user_attrs.get(FAILURE_ATTR, "no reason recorded")).strip().splitlines()
    return (
        f"stopped after {len(errors)} trials failed with errors (search.max_failures = "
        f"{max_failures}); last, trial {last.number}: {reason[-1] if reason else '?'}"
    )


def progress(storage: BaseStorage, spec: StudySpec) -> StudyProgress:
    """Count a study's trials by state (a study not yet created has every trial remaining)."""
    from optuna.trial import TrialState

    from tunevlseg.tuning.failures import FINAL_ATTR
    from tunevlseg.tuning.recovery import retried_numbers

    try:
        study_id = storage.get_study_id_from_name(spec.name)
    except KeyError:
        return StudyProgress(spec.name, spec.n_trials, exists=False)
    trials = storage.get_all_trials(study_id, deepcopy=False)
    states = Counter(trial.state for trial in trials)
    values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = None
    if values:
        best = min(values) if spec.search.direction == "minimize" else max(values)
    retried = retried_numbers(trials)
    failed = sum(
        1
        for t in trials
        if t.state == TrialState.FAIL and t.user_attrs.get(FINAL_ATTR) and t.number not in retried
    )
    return StudyProgress(
        name=spec.name,
        n_trials=spec.n_trials,
        complete=states[TrialState.COMPLETE],
        running=states[TrialState.RUNNING],
        waiting=states[TrialState.WAITING],
        failed=failed,
        pruned=states[TrialState.PRUNED],
        best_value=best,
        stopped=stop_reason(trials, spec.search.max_failures),
    )


def enqueue_missing(storage: BaseStorage, spec: StudySpec) -> list[int]:
    """Add WAITING trials until the budget is covered; return every WAITING trial's number.

    A stopped study (repeated errors) gets no new trials and runs none of its waiting ones.
    """
    import optuna
    from optuna.trial import TrialState

    state = progress(storage, spec)
    if state.stopped:
        return []
    study = optuna.load_study(study_name=spec.name, storage=storage)
    for _ in range(state.to_enqueue):
        study.enqueue_trial({}, skip_if_exists=False)
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return sorted(trial.number for trial in waiting)
