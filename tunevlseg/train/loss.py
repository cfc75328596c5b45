"""Training loss: soft Dice + 0.2 * binary cross-entropy, as in the paper."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["BCE_WEIGHT", "DICE_SMOOTH", "dice_bce_loss", "soft_dice_loss"]

BCE_WEIGHT = 0.2
DICE_SMOOTH = 1.0


def soft_dice_loss(logits: Tensor, target: Tensor, smooth: float = DICE_SMOOTH) -> Tensor:
    """Mean over images of ``1 - (2*sum(p*t) + s) / (sum(p) + sum(t) + s)``, ``p = sigmoid``.

    Per image rather than over the whole batch, so a small object weighs as much as a big one
    (matching how Dice is evaluated). ``smooth`` keeps empty masks defined (loss -> 0 when the
    prediction is empty too).
    """
    probs = torch.sigmoid(logits.float()).flatten(1)
    target = target.float().flatten(1)
    overlap = (probs * target).sum(1)
    dice = (2.0 * overlap + smooth) / (probs.sum(1) + target.sum(1) + smooth)
    return (1.0 - dice).mean()


def dice_bce_loss(
    logits: Tensor, target: Tensor, bce_weight: float = BCE_WEIGHT, smooth: float = DICE_SMOOTH
) -> Tensor:
    """``soft_dice_loss + bce_weight * BCEWithLogits`` (mean over pixels), computed in fp32.

    Args:
        logits: (B, 1, H, W) raw scores.
        target: (B, 1, H, W) in {0, 1}.
        bce_weight: Weight of the cross-entropy term (the paper's 0.2).
        smooth: The Dice term's smoothing (``training.dice_smooth``; MONAI's 1e-5 in the
            authors' code).
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
    return soft_dice_loss(logits, target, smooth) + bce_weight * bce
