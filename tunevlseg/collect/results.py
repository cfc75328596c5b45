"""Studies in the storage -> one tidy row per study, from the storage alone.

The best trial of a study is chosen by the *validation* objective (never by test: choosing by
test would leak the test set into model selection); its test Dice and IoU are the study's result,
and so are its per-class test scores (``test_per_class``, see ``train.metrics``) when the trial
recorded them, from which :func:`class_mean` gives the class-mean Dice (mDice).

Everything is read in one pass: one ``get_all_studies`` and one ``get_all_trials`` per study,
without copies. A journal storage replays its whole log when it is opened, so per-trial storage
calls would cost nothing more there, but on PostgreSQL each call is a round trip.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from tunevlseg.catalog import LEARNERS
from tunevlseg.config.grid import StudySpec
from tunevlseg.tuning.studies import SPEC_ATTR
from tunevlseg.tuning.trial_attrs import trial_attrs

if TYPE_CHECKING:
    import pandas as pd
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

GPUS_ATTR = "tvls.gpus_per_task"
"""Study attribute with the GPUs each task of the study holds (read when present)."""

SOURCE_STORAGE = "storage"

PER_CLASS_ATTR = "test_per_class"
"""Trial attribute with the test scores per class name: ``{class: {"dice", "iou", "n"}}``."""

ClassScores = Mapping[str, float | int]


def class_mean(per_class: Mapping[str, ClassScores], metric: str = "dice") -> float | None:
    """The class-mean score: the unweighted mean over classes of each class's sample mean.

    For ``metric="dice"`` this is mDice. The paper's Dice (``test_dice``) is the mean over test
    samples instead, i.e. the per-class Dice weighted by the classes' sample counts; the two
    differ when classes differ in size and score, and agree for a single class. ``None`` without
    per-class scores (outside results, trials from before they were kept), never a 0 that
    would read as a score.
    """
    values = [float(scores[metric]) for scores in per_class.values() if metric in scores]
    if not values or len(values) != len(per_class):
        return None
    return sum(values) / len(values)


def _per_class(attrs: Mapping[str, Any]) -> dict[str, dict[str, float | int]]:
    """The trial's per-class scores, keeping only well-formed entries (a dict with a numeric
    Dice); anything else, or no attribute (older trials), gives ``{}``."""
    stored = attrs.get(PER_CLASS_ATTR)
    if not isinstance(stored, Mapping):
        return {}
    kept: dict[str, dict[str, float | int]] = {}
    for name, scores in stored.items():
        if not isinstance(scores, Mapping) or _number(scores, "dice") is None:
            continue
        entry: dict[str, float | int] = {"dice": float(scores["dice"])}
        for key in ("iou", "iou_pooled", "dice_pooled"):
            value = _number(scores, key)
            if value is not None:
                entry[key] = value
        n = _int(scores, "n")
        if n is not None:
            entry["n"] = n
        kept[str(name)] = entry
    return kept


@dataclass(frozen=True)
class StudyResult:
    """One study (one cell of the main table) and the numbers the tables show about it.

    ``compute_seconds`` is what GPU-hours are made of; see :func:`trial_seconds`.
    ``per_class`` holds the best trial's test scores per class name (empty when not recorded);
    :attr:`test_mdice` is their class mean. ``epochs_trained`` counts the epochs of every
    finished trial (complete and pruned); ``epochs_saved`` is what pruning spared, see
    :func:`epochs_saved`. ``unseen_classes`` are the classes the study's training and validation
    left out (``data.unseen_classes``; the zero-shot table splits ``per_class`` by them).
    """

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
    val_iou: float | None = None
    epochs_run: int | None = None
    best_epoch: int | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    wall_time_s: float = 0.0
    task_seconds: float = 0.0
    compute_seconds: float = 0.0
    timed_trials: int = 0
    gpus_per_task: int | None = None
    best_params: Mapping[str, Any] = field(default_factory=dict)
    source: str = SOURCE_STORAGE
    per_class: Mapping[str, ClassScores] = field(default_factory=dict)
    epochs_trained: int = 0
    epochs_saved: int = 0
    unseen_classes: tuple[str, ...] = ()

    @property
    def test_mdice(self) -> float | None:
        """Class-mean test Dice (mDice) of the best trial; None without per-class scores."""
        return class_mean(self.per_class, "dice")

    @property
    def remaining(self) -> int:
        """Trials still to finish, as ``tvls-status`` counts them (pruned trials are done)."""
        return max(0, self.n_trials - self.complete - self.pruned)

    @property
    def gpu_hours(self) -> float | None:
        """GPUs per task x compute seconds / 3600; None when the GPU count is unknown."""
        if self.gpus_per_task is None:
            return None
        return self.gpus_per_task * self.compute_seconds / 3600.0


@dataclass(frozen=True)
class StudyData:
    """A study's result plus its trials as stored (for the plots and importances)."""

    result: StudyResult
    direction: str
    trials: list[FrozenTrial]


def best_trial(trials: list[FrozenTrial], direction: str) -> FrozenTrial | None:
    """The complete trial with the best objective value.

    Tie rule: among trials with exactly the same objective value the one with the lowest trial
    number wins (the first one found), so the choice never depends on test results or on the
    storage's order.
    """
    from optuna.trial import TrialState

    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not complete:
        return None
    sign = -1.0 if direction == "maximize" else 1.0
    return min(complete, key=lambda t: (sign * float(t.value), t.number))  # type: ignore[arg-type]


def _number(attrs: Mapping[str, Any], key: str) -> float | None:
    value = attrs.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _int(attrs: Mapping[str, Any], key: str) -> int | None:
    value = _number(attrs, key)
    return None if value is None else int(value)


def trial_seconds(trial: FrozenTrial) -> float | None:
    """The time a trial held its task's resources, in seconds (None: not known or not over).

    In order of preference:

    1. ``tvls.task_seconds``: the worker's clock from claiming the trial to telling it (model
       and data building, training, test), written for complete trials;
    2. ``wall_time_s``: training and evaluation time over all attempts (from ``train.fit``);
    3. Optuna's ``datetime_complete - datetime_start``, for failed or pruned trials that carry
       neither (this includes any wait between a preemption and the restart).

    Running and waiting trials are not counted.
    """
    for key in ("tvls.task_seconds", "wall_time_s"):
        value = _number(trial_attrs(trial), key)
        if value is not None:
            return value
    if trial.state.is_finished() and trial.datetime_start and trial.datetime_complete:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return None


def trial_epochs(trial: FrozenTrial) -> int | None:
    """Epochs a trial trained: its recorded ``epochs_run``, else its learning curve's last step
    (steps are epochs completed); ``None`` when neither is known."""
    recorded = _int(trial_attrs(trial), "epochs_run")
    if recorded is not None:
        return recorded
    return max(trial.intermediate_values, default=None)


def epochs_saved(trials: Sequence[FrozenTrial], max_epochs: int) -> int:
    """Epochs pruning spared: for each pruned trial, what a complete trial of the study trained
    on average (``max_epochs`` before any completed) minus what the pruned one did.

    An estimate: a pruned trial might have stopped early on its own, so the figure says what
    the study's own complete trials suggest, not a promise.
    """
    from optuna.trial import TrialState

    complete = [
        e for t in trials if t.state == TrialState.COMPLETE and (e := trial_epochs(t)) is not None
    ]
    typical = sum(complete) / len(complete) if complete else float(max_epochs)
    saved = 0.0
    for trial in trials:
        epochs = trial_epochs(trial) if trial.state == TrialState.PRUNED else None
        if epochs is not None:  # a pruned trial that recorded nothing is not guessed at
            saved += max(0.0, typical - epochs)
    return round(saved)


def stored_gpus_per_task(attrs: Mapping[str, Any]) -> int | None:
    """GPUs per task recorded with the study: ``tvls.gpus_per_task`` or the spec's cluster block.

    Today's :class:`StudySpec` holds no cluster settings, so this is None unless a launch records
    them; the report then falls back to the experiment file's ``cluster.slurm.gpus``.
    """
    if isinstance(attrs.get(GPUS_ATTR), int):
        return int(attrs[GPUS_ATTR])
    cluster = attrs.get(SPEC_ATTR, {}).get("cluster")
    slurm = cluster.get("slurm") if isinstance(cluster, dict) else None
    gpus = slurm.get("gpus") if isinstance(slurm, dict) else None
    return gpus if isinstance(gpus, int) and not isinstance(gpus, bool) else None


def _spec(attrs: Mapping[str, Any]) -> StudySpec:
    data = attrs[SPEC_ATTR]
    if "cluster" in data and "cluster" not in StudySpec.model_fields:
        data = {k: v for k, v in data.items() if k != "cluster"}
    return StudySpec.model_validate(data)


def _result(spec: StudySpec, trials: list[FrozenTrial], gpus: int | None) -> StudyResult:
    from optuna.trial import TrialState

    best = best_trial(trials, spec.search.direction)
    attrs = trial_attrs(best) if best else {}
    states = Counter(t.state for t in trials)
    wall = task = compute = 0.0
    timed = 0
    for trial in trials:
        flat = trial_attrs(trial)
        wall += _number(flat, "wall_time_s") or 0.0
        task += _number(flat, "tvls.task_seconds") or 0.0
        seconds = trial_seconds(trial)
        if seconds is not None:
            compute += seconds
            timed += 1
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    trained = sum(trial_epochs(t) or 0 for t in trials if t.state in finished)
    return StudyResult(
        study=spec.name,
        sweep=spec.sweep,
        model=spec.model.key,
        learner=spec.learner,
        learner_title=LEARNERS[spec.learner].title
        + (f" ({spec.learner_label})" if spec.learner_label else ""),
        dataset=spec.dataset.name,
        category=spec.dataset.category,
        grid=spec.name.split("/", 3)[3] if spec.grid else "",
        n_trials=spec.n_trials,
        complete=states[TrialState.COMPLETE],
        failed=states[TrialState.FAIL],
        pruned=states[TrialState.PRUNED],
        running=states[TrialState.RUNNING],
        waiting=states[TrialState.WAITING],
        best_trial=best.number if best else None,
        best_value=float(best.value) if best and best.value is not None else None,
        test_dice=_number(attrs, "test_dice"),
        test_iou=_number(attrs, "test_iou"),
        val_dice=_number(attrs, "val_dice"),
        val_iou=_number(attrs, "val_iou"),
        epochs_run=_int(attrs, "epochs_run"),
        best_epoch=_int(attrs, "best_epoch"),
        trainable_params=_int(attrs, "trainable_params"),
        total_params=_int(attrs, "total_params"),
        wall_time_s=wall,
        task_seconds=task,
        compute_seconds=compute,
        timed_trials=timed,
        gpus_per_task=gpus,
        best_params=dict(best.params) if best else {},
        per_class=_per_class(attrs),
        epochs_trained=trained,
        epochs_saved=epochs_saved(trials, spec.training.max_epochs),
        unseen_classes=tuple(spec.data.unseen_classes),
    )


def collect_studies(
    storage: BaseStorage, sweep: str | None = None, *, gpus_per_task: int | None = None
) -> list[StudyData]:
    """Every tunevlseg study of the sweep (all sweeps when ``sweep`` is None), sorted by name.

    Args:
        gpus_per_task: used for studies that do not record their GPU count.
    """
    data = []
    for summary in storage.get_all_studies():
        attrs = summary.user_attrs
        if SPEC_ATTR not in attrs:
            continue
        spec = _spec(attrs)
        if sweep is not None and spec.sweep != sweep:
            continue
        trials = storage.get_all_trials(summary._study_id, deepcopy=False)
        gpus = stored_gpus_per_task(attrs)
        result = _result(spec, trials, gpus if gpus is not None else gpus_per_task)
        data.append(StudyData(result, spec.search.direction, trials))
    return sorted(data, key=lambda d: d.result.study)


def study_results(storage: BaseStorage, sweep: str | None = None) -> list[StudyResult]:
    """One result per study of the sweep (every tunevlseg study when ``sweep`` is None)."""
    return [d.result for d in collect_studies(storage, sweep)]


def results_frame(results: list[StudyResult]) -> pd.DataFrame:
    """One row per study (``studies.csv``); the best parameters and per-class scores as JSON
    objects, the class-mean Dice as ``test_mdice``."""
    import pandas as pd

    columns = [*StudyResult.__dataclass_fields__, "test_mdice"]
    rows = []
    for result in results:
        row = asdict(result)
        row["best_params"] = json.dumps(dict(result.best_params), sort_keys=True)
        row["per_class"] = json.dumps(_plain(result.per_class), sort_keys=True)
        row["test_mdice"] = result.test_mdice
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def _plain(per_class: Mapping[str, ClassScores]) -> dict[str, dict[str, float | int]]:
    return {name: dict(scores) for name, scores in per_class.items()}


def as_dicts(results: list[StudyResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
