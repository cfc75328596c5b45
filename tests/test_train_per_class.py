"""Per-class test scores: known answers on a synthetic three-class set, batches that carry the
class names, results that keep them, and result files written before they existed.

The synthetic set: class A is always segmented right (Dice 1), B always wrong (Dice 0), C right
on half of its images (Dice 0.5). With 3, 1 and 4 test images the class mean (mDice) is 0.5 while
the sample mean (the paper's Dice) is (3 + 0 + 2) / 8 = 0.625, so the two cannot be confused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from tunevlseg.collect.results import class_mean
from tunevlseg.data.datamodule import SegmentationDataModule
from tunevlseg.data.synthetic import write_synthetic_medvlsm, write_synthetic_natural
from tunevlseg.train.fit import FitResult, evaluate
from tunevlseg.train.metrics import PerClassScores, SegmentationScores
from tunevlseg.train.settings import FitSettings
from tunevlseg.train.testing import byte_tokenize

SIZE = 8
# (class, segmented right?) per test image, in loader order; batches of 3 mix the classes
IMAGES = [
    ("A", True),
    ("C", True),
    ("B", False),
    ("A", True),
    ("C", False),
    ("C", True),
    ("A", True),
    ("C", False),
]
# Pooled over pixels: every mask has 16 of 64 pixels; a wrong answer predicts the other 48. C's
# two right and two wrong images pool to IoU 32 / (2 x 16 + 2 x 64) = 0.2, Dice 64 / 192 = 1/3.
EXPECTED = {
    "A": {"dice": 1.0, "iou": 1.0, "n": 3, "iou_pooled": 1.0, "dice_pooled": 1.0},
    "B": {"dice": 0.0, "iou": 0.0, "n": 1, "iou_pooled": 0.0, "dice_pooled": 0.0},
    "C": {"dice": 0.5, "iou": 0.5, "n": 4, "iou_pooled": 32 / 160, "dice_pooled": 64 / 192},
}
SAMPLE_MEAN = 5 / 8


def _mask() -> Tensor:
    mask = torch.zeros(1, SIZE, SIZE)
    mask[:, : SIZE // 2, : SIZE // 2] = 1.0  # neither empty nor full: a wrong answer scores 0
    return mask


def _batches(batch_size: int = 3, *, names: bool = True) -> list[dict[str, Any]]:
    """Images whose first channel is the answer the fixed model gives: the mask or its inverse."""
    batches = []
    for start in range(0, len(IMAGES), batch_size):
        chunk = IMAGES[start : start + batch_size]
        masks = torch.stack([_mask() for _ in chunk])
        answer = torch.stack(
            [m if right else 1 - m for m, (_, right) in zip(masks, chunk, strict=True)]
        )
        batch: dict[str, Any] = {
            "pixel_values": answer.expand(-1, 3, -1, -1).clone(),
            "masks": masks,
            **byte_tokenize(["x"] * len(chunk)),
        }
        if names:
            batch["class_names"] = [name for name, _ in chunk]
        batches.append(batch)
    return batches


class FixedModel(nn.Module):
    """Predicts the foreground exactly where the image's first channel is 1."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return (pixel_values[:, :1] - 0.5) * 10.0

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        return [{"params": [self.unused], "weight_decay": weight_decay}]


class PremadeBatches(L.LightningDataModule):
    """Hands out fixed batches for validation and test (no training)."""

    def __init__(self, *, names: bool = True) -> None:
        super().__init__()
        self.names = names

    def _loader(self) -> DataLoader[Any]:
        return DataLoader(_batches(names=self.names), batch_size=None, collate_fn=_same)  # type: ignore[arg-type]

    def val_dataloader(self) -> DataLoader[Any]:
        return self._loader()

    def test_dataloader(self) -> DataLoader[Any]:
        return self._loader()


def _same(batch: dict[str, Any]) -> dict[str, Any]:
    return batch


SETTINGS = FitSettings(accelerator="cpu", batch_size=3, effective_batch_size=3)


def test_per_class_scores_known_answers() -> None:
    per_class, overall = PerClassScores(), SegmentationScores()
    for batch in _batches():
        logits = FixedModel()(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        per_class.update(logits, batch["masks"], batch["class_names"])
        overall.update(logits, batch["masks"])
    scores = per_class.compute()
    assert scores == EXPECTED
    assert class_mean(scores) == pytest.approx(0.5)  # mDice: every class counts alike
    assert float(overall.compute()["dice"]) == pytest.approx(SAMPLE_MEAN)  # Dice: every image
    weighted = sum(s["dice"] * s["n"] for s in scores.values()) / sum(
        s["n"] for s in scores.values()
    )
    assert weighted == pytest.approx(SAMPLE_MEAN)  # the sample mean is the count-weighted mean
    per_class.reset()
    assert per_class.compute() == {}


def test_per_class_scores_refuse_a_name_count_that_differs_from_the_batch() -> None:
    batch = _batches()[0]
    with pytest.raises(ValueError, match="2 class names for a batch of 3"):
        PerClassScores().update(batch["pixel_values"][:, :1], batch["masks"], ["A", "B"])


def test_evaluate_stores_per_class_scores_and_reads_them_back(tmp_path: Path) -> None:
    identity = {"study": "s/clipseg-coop/voc", "trial": 0}
    result = evaluate(FixedModel(), PremadeBatches(), SETTINGS, tmp_path, identity=identity)
    assert result.test_per_class == EXPECTED
    assert result.test_dice == pytest.approx(SAMPLE_MEAN)
    assert class_mean(result.test_per_class) == pytest.approx(0.5)
    stored = json.loads((tmp_path / "result.json").read_text())
    assert stored["test_per_class"] == EXPECTED
    assert json.loads(json.dumps(result.to_dict())) == result.to_dict()  # a valid trial attribute
    # finished: read back, not evaluated again (a model that would fail proves it)
    again = evaluate(nn.Identity(), PremadeBatches(), SETTINGS, tmp_path, identity=identity)
    assert again == result


def test_result_json_without_per_class_scores_still_loads(tmp_path: Path) -> None:
    identity = {"study": "s/clipseg-coop/voc", "trial": 1}
    evaluate(FixedModel(), PremadeBatches(), SETTINGS, tmp_path, identity=identity)
    path = tmp_path / "result.json"
    old = json.loads(path.read_text())
    del old["test_per_class"]  # as written before per-class scores were kept
    path.write_text(json.dumps(old))
    stamp = path.stat().st_mtime_ns
    loaded = evaluate(nn.Identity(), PremadeBatches(), SETTINGS, tmp_path, identity=identity)
    assert loaded.test_per_class == {}
    assert loaded.test_dice == pytest.approx(SAMPLE_MEAN)
    assert path.stat().st_mtime_ns == stamp  # the same identity still owns it: nothing redone
    assert FitResult.from_dict({k: v for k, v in old.items() if k in loaded.to_dict()}) == loaded


def test_batches_without_class_names_give_no_per_class_scores(tmp_path: Path) -> None:
    result = evaluate(FixedModel(), PremadeBatches(names=False), SETTINGS, tmp_path)
    assert result.test_per_class == {}
    assert result.test_dice == pytest.approx(SAMPLE_MEAN)


def _module(root: Path, format: str) -> SegmentationDataModule:
    return SegmentationDataModule(
        root,
        format,
        "p1",
        image_size=16,
        mean=(0.5,) * 3,
        std=(0.25,) * 3,  # type: ignore[arg-type]
        tokenize=byte_tokenize,
        batch_size=4,
    )


@pytest.mark.parametrize("format", ["natural", "medvlsm"])
def test_test_batches_carry_each_samples_class_name(tmp_path: Path, format: str) -> None:
    write = write_synthetic_natural if format == "natural" else write_synthetic_medvlsm
    root = write(
        tmp_path / format,
        n_train=1,
        n_val=1,
        n_test=3,
        image_size=16,
        classes=("cat", "traffic_light"),
    )
    dm = _module(root, format)
    dm.setup("test")
    names = [name for batch in dm.test_dataloader() for name in batch["class_names"]]
    assert names == [sample.class_name for sample in dm.datasets["test"].samples]
    assert sorted(set(names)) == ["cat", "traffic_light"]  # every class of the split, by name
