"""The tables beside the main one: trial states, best hyperparameters, parameter counts, compute,
and hyperparameter importances.

Each builder returns a :class:`Summary`: tidy records with raw numbers (written as CSV) and the
same numbers formatted once as a :class:`~tunevlseg.collect.render.TextTable` (Markdown, LaTeX,
HTML). Outside results (``--results FILE.csv``) carry no trials, so only the main table shows them.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunevlseg.collect.importance import Importances
from tunevlseg.collect.render import TextTable
from tunevlseg.collect.results import StudyResult

COMPUTE_NOTE = (
    "Compute h: the sum over a study's trials of tvls.task_seconds (the task's time from "
    "claiming the trial to telling it), else wall_time_s (training + evaluation over all "
    "attempts), else Optuna's start-to-complete time for failed or pruned trials; running and "
    "waiting trials count 0. GPU-h = compute h × GPUs per task. Wall h and task h are the plain "
    "sums of wall_time_s and tvls.task_seconds."
)


@dataclass(frozen=True)
class Summary:
    records: list[dict[str, Any]]
    text: TextTable


def _count(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600.0:.2f}"


def format_param(value: Any) -> str:
    """A parameter value as shown: small or large floats in scientific notation."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e4):
            return f"{value:.2e}"
        return f"{value:.4g}"
    return str(value)


def _storage(results: Sequence[StudyResult]) -> list[StudyResult]:
    return [r for r in results if r.source == "storage"]


def trial_states(results: Sequence[StudyResult]) -> Summary:
    """Per study: budget, trials by state and the epochs they trained, with a total row."""
    keys = (
        "n_trials",
        "complete",
        "pruned",
        "failed",
        "running",
        "waiting",
        "remaining",
        "epochs_trained",
        "epochs_saved",
    )
    records: list[dict[str, Any]] = []
    for r in _storage(results):
        counts = [
            r.n_trials,
            r.complete,
            r.pruned,
            r.failed,
            r.running,
            r.waiting,
            r.remaining,
            r.epochs_trained,
            r.epochs_saved,
        ]
        records.append(
            {
                "study": r.study,
                "model": r.model,
                "learner": r.learner,
                "dataset": r.dataset,
                "grid": r.grid,
                **dict(zip(keys, counts, strict=True)),
            }
        )
    rows = [[rec["study"], *(str(rec[k]) for k in keys)] for rec in records]
    rows.append(["Total", *(str(sum(rec[k] for rec in records)) for k in keys)])
    header = [
        "Study",
        "Budget",
        "Complete",
        "Pruned",
        "Failed",
        "Running",
        "Waiting",
        "Remaining",
        "Epochs",
        "Saved by pruning",
    ]
    text = TextTable(
        "trial_states",
        "Trials by state",
        header,
        rows,
        frozenset(range(1, len(header))),
        [
            "Remaining: budget − complete − pruned (running and waiting ones included).",
            (
                "Epochs: trained by the complete and pruned trials. Saved by pruning: per pruned "
                "trial, the complete trials' mean epochs (max_epochs before any) minus its own."
            ),
        ],
    )
    return Summary(records, text)


def best_params(results: Sequence[StudyResult]) -> Summary:
    """The best trial (by validation) of each study and its hyperparameters.

    The CSV is long: one record per study and parameter.
    """
    records = []
    rows = []
    for r in _storage(results):
        if r.best_trial is None:
            rows.append([r.study, "–", "–", "–", "no complete trial"])
            continue
        for name, value in r.best_params.items():
            records.append(
                {
                    "study": r.study,
                    "model": r.model,
                    "learner": r.learner,
                    "dataset": r.dataset,
                    "grid": r.grid,
                    "best_trial": r.best_trial,
                    "param": name,
                    "value": value,
                }
            )
        params = ", ".join(f"{k}={format_param(v)}" for k, v in r.best_params.items())
        rows.append(
            [
                r.study,
                str(r.best_trial),
                "–" if r.best_value is None else f"{r.best_value:.4f}",
                "–" if r.test_dice is None else f"{100 * r.test_dice:.2f}",
                params or "(none)",
            ]
        )
    header = ["Study", "Best trial", "Objective (val)", "Test Dice × 100", "Parameters"]
    text = TextTable(
        "best_params",
        "Best hyperparameters per study (chosen on validation)",
        header,
        rows,
        frozenset({1, 2, 3}),
    )
    return Summary(records, text)


def parameter_counts(results: Sequence[StudyResult]) -> Summary:
    """Trainable and total parameters per model + learner, from the studies' best trials.

    The trainable count depends on the searched settings (prompt depth, dimensions), so it is
    shown as min–max and mean over the data sets; the share is mean trainable / total.
    """
    groups: dict[tuple[str, str], list[StudyResult]] = {}
    for r in _storage(results):
        if r.trainable_params is not None:
            groups.setdefault((r.model, r.learner_title), []).append(r)
    from tunevlseg.catalog import LEARNERS

    titles = [info.title for info in LEARNERS.values()]
    models = list(dict.fromkeys(model for model, _ in groups))
    order = sorted(
        groups,
        key=lambda k: (models.index(k[0]), titles.index(k[1]) if k[1] in titles else 99, k[1]),
    )
    records, rows = [], []
    for model, learner in order:
        members = groups[(model, learner)]
        trainable = [m.trainable_params for m in members if m.trainable_params is not None]
        totals = [m.total_params for m in members if m.total_params is not None]
        mean = statistics.fmean(trainable)
        total = max(totals) if totals else None
        share = 100.0 * mean / total if total else None
        records.append(
            {
                "model": model,
                "learner": members[0].learner,
                "studies": len(members),
                "trainable_min": min(trainable),
                "trainable_max": max(trainable),
                "trainable_mean": mean,
                "total_params": total,
                "trainable_percent": share,
            }
        )
        span = _count(min(trainable)) + (
            "" if min(trainable) == max(trainable) else f"–{max(trainable):,}"
        )
        rows.append(
            [
                model,
                learner,
                str(len(members)),
                span,
                f"{mean:,.0f}",
                _count(total),
                "–" if share is None else f"{share:.3f}",
            ]
        )
    header = [
        "Model",
        "Learner",
        "Studies",
        "Trainable (min–max)",
        "Trainable (mean)",
        "Total",
        "Trainable %",
    ]
    text = TextTable(
        "parameters", "Parameters of the best trials", header, rows, frozenset(range(2, 7))
    )
    return Summary(records, text)


def compute(results: Sequence[StudyResult]) -> Summary:
    """Time and GPU-hours per study (see :data:`COMPUTE_NOTE` for exactly what is summed)."""
    records: list[dict[str, Any]] = []
    rows: list[list[str]] = []
    for r in _storage(results):
        records.append(
            {
                "study": r.study,
                "model": r.model,
                "learner": r.learner,
                "dataset": r.dataset,
                "grid": r.grid,
                "timed_trials": r.timed_trials,
                "wall_time_s": r.wall_time_s,
                "task_seconds": r.task_seconds,
                "compute_seconds": r.compute_seconds,
                "gpus_per_task": r.gpus_per_task,
                "gpu_hours": r.gpu_hours,
            }
        )
        rows.append(
            [
                r.study,
                str(r.timed_trials),
                _hours(r.wall_time_s),
                _hours(r.task_seconds),
                _hours(r.compute_seconds),
                "–" if r.gpus_per_task is None else str(r.gpus_per_task),
                "–" if r.gpu_hours is None else f"{r.gpu_hours:.2f}",
            ]
        )
    known = [rec["gpu_hours"] for rec in records if rec["gpu_hours"] is not None]
    rows.append(
        [
            "Total",
            str(sum(rec["timed_trials"] for rec in records)),
            _hours(sum(rec["wall_time_s"] for rec in records)),
            _hours(sum(rec["task_seconds"] for rec in records)),
            _hours(sum(rec["compute_seconds"] for rec in records)),
            "",
            f"{sum(known):.2f}" if known else "–",
        ]
    )
    notes = [COMPUTE_NOTE]
    if len(known) < len(records):
        notes.append("GPU-h –: GPUs per task unknown (pass --gpus-per-task or an experiment file).")
    header = ["Study", "Timed trials", "Wall h", "Task h", "Compute h", "GPUs/task", "GPU-h"]
    text = TextTable(
        "compute", "Wall time and GPU-hours", header, rows, frozenset(range(1, 7)), notes
    )
    return Summary(records, text)


def importance(importances: Importances) -> Summary:
    """Each learner's parameter importances (pooled over its studies), most important first."""
    records = [
        {
            "learner": row.learner,
            "param": row.param,
            "importance": row.importance,
            "studies": row.n_studies,
            "trials": row.n_trials,
        }
        for row in importances.rows
    ]
    rows = [
        [
            row.learner_title,
            row.param,
            f"{row.importance:.3f}",
            str(row.n_studies),
            str(row.n_trials),
        ]
        for row in importances.rows
    ]
    notes = [
        (
            f"PED-ANOVA importances (optuna) of reaching a study's top 10 %, one evaluation per "
            f"learner over the complete trials of its studies ({importances.evaluated} studies "
            "with ≥ 3 complete trials), each trial ranked within its own study; a learner's "
            "importances sum to 1."
        )
    ]
    if importances.too_few:
        notes.append(f"{importances.too_few} studies left out: fewer than 3 complete trials.")
    if importances.failed:
        notes.append(f"Left out, the evaluator failed: {'; '.join(importances.failed)}.")
    header = ["Learner", "Parameter", "Importance", "Studies", "Trials"]
    text = TextTable(
        "importance",
        "Hyperparameter importance per learner",
        header,
        rows,
        frozenset({2, 3, 4}),
        notes,
    )
    return Summary(records, text)
