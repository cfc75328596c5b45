"""Dice/IoU and the loss on cases small enough to compute by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from tunevlseg.train.loss import dice_bce_loss, soft_dice_loss
from tunevlseg.train.metrics import SegmentationScores, per_image_scores

POS, NEG = 5.0, -5.0  # logits: sigmoid > 0.5 and < 0.5


def _logits(pred: list[list[int]]) -> Tensor:
    mask = torch.tensor(pred, dtype=torch.float32)[None, None]
    return torch.where(mask > 0, POS, NEG)


def _mask(values: list[list[int]]) -> Tensor:
    return torch.tensor(values, dtype=torch.float32)[None, None]


def _scores(pred: list[list[int]], truth: list[list[int]]) -> tuple[float, float]:
    dice, iou = per_image_scores(_logits(pred), _mask(truth))
    return float(dice), float(iou)


EMPTY = [[0, 0, 0], [0, 0, 0]]


def test_empty_prediction_on_empty_mask_is_perfect() -> None:
    assert _scores(EMPTY, EMPTY) == (1.0, 1.0)


def test_empty_prediction_on_object_scores_zero() -> None:
    assert _scores(EMPTY, [[0, 1, 0], [0, 0, 0]]) == (0.0, 0.0)


def test_prediction_on_empty_mask_scores_zero() -> None:
    assert _scores([[1, 0, 0], [0, 0, 0]], EMPTY) == (0.0, 0.0)


def test_partial_overlap() -> None:
    # prediction: 4 pixels, truth: 2 pixels, overlap: 2 -> Dice 2*2/(4+2), IoU 2/4
    dice, iou = _scores([[1, 1, 1], [1, 0, 0]], [[0, 1, 1], [0, 0, 0]])
    assert dice == pytest.approx(2 / 3)
    assert iou == pytest.approx(1 / 2)


def test_threshold_is_probability_one_half() -> None:
    logits = torch.tensor([[[[0.01, -0.01]]]])
    dice, _ = per_image_scores(logits, torch.tensor([[[[1.0, 0.0]]]]))
    assert float(dice) == 1.0


def _big_and_small() -> tuple[Tensor, Tensor]:
    """Image 0: 100-pixel object found exactly (1). Image 1: 1-pixel object missed (0)."""
    logits = torch.full((2, 1, 10, 10), NEG)
    target = torch.zeros(2, 1, 10, 10)
    logits[0] = POS
    target[0] = 1
    target[1, 0, 3, 3] = 1
    return logits, target


def test_average_is_per_image_not_per_pixel() -> None:
    metric = SegmentationScores()
    metric.update(*_big_and_small())
    values = metric.compute()
    assert float(values["dice"]) == pytest.approx(0.5)  # pooled pixels would give 200/201
    assert float(values["iou"]) == pytest.approx(0.5)


def test_accumulates_across_batches_of_different_sizes() -> None:
    logits, target = _big_and_small()
    metric = SegmentationScores()
    metric.update(logits[:1], target[:1])
    metric.update(logits[1:], target[1:])
    extra_logits = torch.full((1, 1, 10, 10), NEG)
    metric.update(extra_logits, torch.zeros(1, 1, 10, 10))  # empty/empty = 1
    assert float(metric.compute()["dice"]) == pytest.approx(2 / 3)
    metric.reset()
    metric.update(extra_logits, torch.zeros(1, 1, 10, 10))
    assert float(metric.compute()["dice"]) == 1.0


def test_loss_hand_case() -> None:
    # logits 0 -> p = 0.5 everywhere; 2x2 image with one positive pixel.
    logits = torch.zeros(1, 1, 2, 2)
    target = _mask([[1, 0], [0, 0]])
    # soft Dice (smooth 1): (2*0.5 + 1) / (2 + 1 + 1) = 0.5; BCE = ln 2 at every pixel.
    assert float(soft_dice_loss(logits, target)) == pytest.approx(0.5)
    assert float(dice_bce_loss(logits, target)) == pytest.approx(0.5 + 0.2 * math.log(2))


def test_loss_dice_is_per_image() -> None:
    logits, target = _big_and_small()
    per_image = [float(soft_dice_loss(logits[i : i + 1], target[i : i + 1])) for i in range(2)]
    assert float(soft_dice_loss(logits, target)) == pytest.approx(sum(per_image) / 2)


def test_loss_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="differ"):
        dice_bce_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 3, 3))
