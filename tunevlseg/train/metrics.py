"""Per-image Dice and IoU, averaged over a split (the paper's evaluation).

Each image is scored on its own at probability threshold 0.5 and the scores are averaged, so an
image with a small object counts as much as one with a large object (a pooled, per-pixel score
would be dominated by the large ones). An empty prediction on an empty mask is perfect (1); an
empty prediction on a non-empty mask scores 0.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["SegmentationScores", "per_image_scores"]


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
