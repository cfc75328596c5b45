"""The zero-shot table: how a tuned prompt segments the classes it was not tuned on.

For each study with ``data.unseen_classes`` (the unseen-class protocol of LDVC and H-CLIP,
:mod:`tunevlseg.data.unseen`), its best trial (chosen on validation, as in every table) has test
scores per class; the table splits them into seen and unseen classes and reports

* mIoU over the seen classes (mIoU_s) and over the unseen classes (mIoU_u): the unweighted mean
  of each class's IoU;
* hIoU = 2 · mIoU_s · mIoU_u / (mIoU_s + mIoU_u), their harmonic mean (0 when both are 0), which
  stays low unless both are high;
* the class-mean Dice of each group the same way.

A class's IoU (Dice) is pooled over its test pixels (intersection and union summed over the
class's test samples, then divided: ``iou_pooled``), the standard semantic-segmentation mIoU the
two papers report. Trials recorded before pooled scores were kept fall back to the mean of the
per-image scores; the record's ``basis`` and the note say which one a row uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tunevlseg.collect.render import TextTable
from tunevlseg.collect.results import SOURCE_STORAGE, ClassScores, StudyResult
from tunevlseg.data.unseen import split_by_unseen

if TYPE_CHECKING:
    from tunevlseg.collect.summaries import Summary

__all__ = ["ZERO_SHOT_COLUMNS", "harmonic_mean", "zero_shot_record", "zero_shot_table"]

MISSING = "–"
POOLED, PER_IMAGE = "pooled", "per-image"
ZERO_SHOT_COLUMNS = (
    "grid", "model", "learner", "learner_title", "category", "dataset", "seen_classes",
    "unseen_classes", "miou_seen", "miou_unseen", "hiou", "mdice_seen", "mdice_unseen", "basis",
    "best_trial", "study",
)  # fmt: skip
"""The CSV columns (scores in [0, 1], empty when missing; class lists joined with ``;``)."""


def harmonic_mean(seen: float | None, unseen: float | None) -> float | None:
    """hIoU of mIoU_s and mIoU_u: 0 when both are 0, ``None`` when either is unknown."""
    if seen is None or unseen is None:
        return None
    if seen + unseen == 0:
        return 0.0
    return 2 * seen * unseen / (seen + unseen)


def _basis(per_class: Mapping[str, ClassScores]) -> str:
    pooled = all("iou_pooled" in s and "dice_pooled" in s for s in per_class.values())
    return POOLED if pooled else PER_IMAGE


def _class_mean(per_class: Mapping[str, ClassScores], metric: str) -> float | None:
    values = [float(scores[metric]) for scores in per_class.values() if metric in scores]
    if not values or len(values) != len(per_class):
        return None
    return sum(values) / len(values)


def zero_shot_record(result: StudyResult) -> dict[str, Any]:
    """One study's seen/unseen scores (in [0, 1]) as a CSV/JSON record."""
    basis = _basis(result.per_class)
    iou, dice = ("iou_pooled", "dice_pooled") if basis == POOLED else ("iou", "dice")
    seen, unseen = split_by_unseen(result.per_class, result.unseen_classes)
    miou_seen, miou_unseen = _class_mean(seen, iou), _class_mean(unseen, iou)
    return {
        "grid": result.grid, "model": result.model, "learner": result.learner,
        "learner_title": result.learner_title, "category": result.category,
        "dataset": result.dataset,
        "seen_classes": ";".join(sorted(seen)),
        "unseen_classes": ";".join(sorted(unseen)),
        "miou_seen": miou_seen, "miou_unseen": miou_unseen,
        "hiou": harmonic_mean(miou_seen, miou_unseen),
        "mdice_seen": _class_mean(seen, dice), "mdice_unseen": _class_mean(unseen, dice),
        "basis": basis if result.per_class else None,
        "best_trial": result.best_trial, "study": result.study,
    }  # fmt: skip


def _cell(value: float | None) -> str:
    return MISSING if value is None else f"{100.0 * value:.2f}"


def zero_shot_table(results: Sequence[StudyResult]) -> Summary | None:
    """Seen/unseen mIoU, hIoU and mDice x 100 per study with unseen classes; ``None`` when no
    study of the results has any (so that no file is written)."""
    from tunevlseg.collect.summaries import Summary

    chosen = [r for r in results if r.source == SOURCE_STORAGE and r.unseen_classes]
    if not chosen:
        return None
    chosen.sort(key=lambda r: (r.dataset, r.grid, r.model, r.learner_title))
    records = [zero_shot_record(r) for r in chosen]
    header = [
        "Data set", "Model", "Learner", "Unseen classes", "mIoU seen", "mIoU unseen", "hIoU",
        "mDice seen", "mDice unseen",
    ]  # fmt: skip
    rows = []
    for result, record in zip(chosen, records, strict=True):
        learner = result.learner_title + (f" ({result.grid})" if result.grid else "")
        rows.append([
            result.dataset, result.model, learner, ", ".join(result.unseen_classes),
            *(_cell(record[key]) for key in
              ("miou_seen", "miou_unseen", "hiou", "mdice_seen", "mdice_unseen")),
        ])  # fmt: skip
    notes = [
        (
            "Test scores × 100 of each study's best trial (chosen on validation, which like "
            "training saw only the seen classes); every class's test samples are scored. mIoU: "
            "the mean over the group's classes of each class's IoU; "
            "hIoU = 2·mIoU_s·mIoU_u / (mIoU_s + mIoU_u)."
        ),
        (
            "A class's IoU and Dice are pooled over its test pixels (intersection and union "
            "summed over the class's test samples, at the model's input size), the standard "
            "semantic-segmentation mIoU; the other tables average per-image scores instead. A "
            "binarised set has no sample of a class in an image without it, so false positives "
            "there are not counted."
        ),
    ]
    if any(record["basis"] == PER_IMAGE for record in records):
        notes.append(
            "Rows whose trial recorded no pooled scores (before they were kept) use the mean of "
            "per-image scores (basis per-image in zero_shot.csv)."
        )
    if any(MISSING in row[4:] for row in rows):
        notes.append(f"{MISSING}: the trial recorded no test score for a class of that group.")
    text = TextTable(
        "zero_shot", "Seen and unseen classes (best trial of each study)", header, rows,
        frozenset(range(4, len(header))), notes,
    )  # fmt: skip
    return Summary(records, text)
