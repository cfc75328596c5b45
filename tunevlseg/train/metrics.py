"""Per-image Dice and IoU, averaged over a split (the paper's evaluation).

Each image is scored on its own at probability threshold 0.5 and the scores are averaged, so an
image with a small object counts as much as one with a large object (a pooled, per-pixel score
would be dominated by the large ones). An empty prediction on an empty mask is perfect (1); an
empty prediction on a non-empty mask scores 0.

Per class (:class:`PerClassScores`), for data sets whose samples name their class (natural sets:
the class folder; multi-class medical sets: the annotation's ``class_name``):

* a class's Dice (IoU) is the mean of the per-image Dice (IoU) over that class's test samples;
* the **sample-mean Dice** (``test_dice``, the paper's number) is the mean over all samples, i.e.
  the per-class Dice weighted by each class's sample count;
* the **class-mean Dice (mDice)** is the unweighted mean of the per-class Dice, so a rare class
  counts as much as a frequent one. With one class it equals the sample-mean Dice. The collector
  computes it from the stored per-class scores (``collect.results.class_mean``).

Per class, test also pools pixels (``iou_pooled``, ``dice_pooled``): the class's intersection
and union summed over its test samples before dividing, the standard semantic-segmentation IoU
that LDVC and H-CLIP average into mIoU (large objects weigh more). The collector's zero-shot
table (seen and unseen classes, hIoU) uses them; nothing else does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = [
    "ClassScores",
    "PerClassScores",
    "SegmentationScores",
    "per_image_pixels",
    "per_image_scores",
    "pooled_scores",
]


def per_image_scores(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Dice and IoU of each image, shape (B,) each.

    ``sigmoid(x) > 0.5`` is evaluated as ``x > 0`` (identical, and safe for fp16 logits).
    """
    pred = (logits > 0).flatten(1)
    truth = (target > 0.5).flatten(1)
    inter = (pred & truth).sum(1).float()
    total = pred.sum(1).float() + truth.sum(1).float()
    union = total - inter
    empty = total == 0
    dice = torch.where(empty, torch.ones_like(inter), 2 * inter / total.clamp_min(1))
    iou = torch.where(empty, torch.ones_like(inter), inter / union.clamp_min(1))
    return dice, iou


def per_image_pixels(logits: Tensor, target: Tensor) -> Tensor:
    """Each image's intersection, union and predicted + true pixels at the 0.5 threshold,
    shape (B, 3), int64 (exact sums however many images are pooled)."""
    pred = (logits > 0).flatten(1)
    truth = (target > 0.5).flatten(1)
    inter = (pred & truth).sum(1)
    total = pred.sum(1) + truth.sum(1)
    return torch.stack([inter, total - inter, total], dim=1).long()


def pooled_scores(pixels: Tensor) -> dict[str, float]:
    """IoU and Dice of pixel sums ``[intersection, union, total]``; 1 when nothing is there at
    all (an empty prediction of an empty class, as per image)."""
    inter, union, total = (int(v) for v in pixels.tolist())
    return {
        "iou_pooled": inter / union if union else 1.0,
        "dice_pooled": 2 * inter / total if total else 1.0,
    }


class SegmentationScores(Metric):
    """Accumulates per-image Dice and IoU over batches (and processes); computes their means.

    ``update(logits, target)`` takes raw logits (B, 1, H, W) and a {0, 1} target of the same
    shape. ``compute()`` returns ``{"dice": mean, "iou": mean}``. Only sums and a count are
    kept, so accumulation is exact regardless of batch sizes.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    dice_sum: Tensor
    iou_sum: Tensor
    count: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("dice_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("iou_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        if logits.shape != target.shape:
            raise ValueError(
                f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ"
            )
        dice, iou = per_image_scores(logits, target)
        self.dice_sum += dice.sum().float()
        self.iou_sum += iou.sum().float()
        self.count += dice.numel()

    def compute(self) -> dict[str, Tensor]:
        n = self.count.clamp_min(1).float()
        return {"dice": self.dice_sum / n, "iou": self.iou_sum / n}


ClassScores = dict[str, float | int]
"""One class's scores as stored in a result: ``{"dice": mean, "iou": mean, "n": samples,
"iou_pooled": ..., "dice_pooled": ...}`` (the means over images, then the pixel-pooled scores)."""


class PerClassScores:
    """Per-image Dice and IoU accumulated separately for each class name (see the module notes).

    ``update(logits, target, class_names)`` takes what :class:`SegmentationScores` takes plus
    one class name per image; ``compute()`` returns ``{class: {"dice", "iou", "n"}}`` as plain
    Python numbers (JSON-ready: it goes into ``result.json`` and the trial's user attributes).

    Not a torchmetrics ``Metric`` itself: class names are strings that become known only as
    batches arrive, while a metric's states are tensors declared up front. Each class gets its
    own :class:`SegmentationScores` instead (exact sums on the logits' device, so updates never
    wait for the device), created at the first sample of that class. The per-class metrics are
    not submodules, so they never enter a checkpoint's state dict.
    """

    def __init__(self) -> None:
        self._scores: dict[str, SegmentationScores] = {}
        self._pixels: dict[str, Tensor] = {}  # class -> [intersection, union, total] sums

    def update(self, logits: Tensor, target: Tensor, class_names: Sequence[str]) -> None:
        if len(class_names) != logits.shape[0]:
            raise ValueError(
                f"{len(class_names)} class names for a batch of {logits.shape[0]} images"
            )
        rows: dict[str, list[int]] = {}
        for row, name in enumerate(class_names):
            rows.setdefault(str(name), []).append(row)
        pixels = per_image_pixels(logits, target)
        for name, members in rows.items():
            scores = self._scores.get(name)
            if scores is None:
                scores = self._scores[name] = SegmentationScores().to(logits.device)
                self._pixels[name] = torch.zeros(3, dtype=torch.long, device=logits.device)
            if len(members) == logits.shape[0]:  # one class in the batch: no copy needed
                scores.update(logits, target)
                self._pixels[name] += pixels.sum(0)
                continue
            index = torch.tensor(members, device=logits.device)
            scores.update(logits.index_select(0, index), target.index_select(0, index))
            self._pixels[name] += pixels.index_select(0, index).sum(0)

    def compute(self) -> dict[str, ClassScores]:
        """Scores per class name, sorted by name; empty before any update."""
        result: dict[str, ClassScores] = {}
        for name in sorted(self._scores):
            scores = self._scores[name]
            means = scores.compute()
            result[name] = {
                "dice": float(means["dice"]),
                "iou": float(means["iou"]),
                "n": int(scores.count),
                **pooled_scores(self._pixels[name]),
            }
        return result

    def reset(self) -> None:
        self._scores.clear()
        self._pixels.clear()
