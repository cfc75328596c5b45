"""The DataModule: batch contents, prompt choice per stage, no augmentation in evaluation."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import Tensor

from tunevlseg.data.datamodule import SegmentationDataModule
from tunevlseg.data.synthetic import write_synthetic_medvlsm, write_synthetic_natural
from tunevlseg.train.testing import byte_tokenize

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_medvlsm(
        tmp_path_factory.mktemp("dm"), n_train=6, n_val=3, n_test=2, image_size=40
    )


class RecordingTokenizer:
    """Remembers every prompt it saw."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, prompts: list[str]) -> dict[str, Tensor]:
        self.seen.extend(prompts)
        return byte_tokenize(prompts)


def _module(
    root: Path, tokenize: RecordingTokenizer | None = None, **kwargs: object
) -> SegmentationDataModule:
    args: dict[str, object] = {
        "root": root,
        "format": "medvlsm",
        "prompt_key": "p2",
        "image_size": 32,
        "mean": MEAN,
        "std": STD,
        "tokenize": tokenize or byte_tokenize,
        "batch_size": 4,
    }
    args.update(kwargs)
    return SegmentationDataModule(**args)  # type: ignore[arg-type]


def test_batch_layout(root: Path) -> None:
    dm = _module(root)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask", "masks", "class_names"}
    assert len(batch["class_names"]) == 4 and all(isinstance(c, str) for c in batch["class_names"])
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    assert batch["pixel_values"].dtype == torch.uint8  # a quarter of float32 to collate and copy
    on_device = dm.on_after_batch_transfer(batch, 0)  # what the Trainer calls after the copy
    assert on_device["pixel_values"].dtype == torch.float32
    assert -3 < float(on_device["pixel_values"].min()) < float(on_device["pixel_values"].max()) < 3
    assert batch["masks"].shape == (4, 1, 32, 32)
    assert batch["masks"].dtype == torch.float32
    assert set(batch["masks"].unique().tolist()) <= {0.0, 1.0}
    assert batch["input_ids"].shape[0] == batch["attention_mask"].shape[0] == 4
    assert len(dm.val_dataloader()) == 1  # 3 images, batch 4, nothing dropped


def test_eval_uses_first_prompt_and_never_augments(root: Path) -> None:
    tokenizer = RecordingTokenizer()
    dm = _module(root, tokenizer)
    dm.setup("validate")
    loader = dm.val_dataloader()
    assert not hasattr(loader.sampler, "set_epoch")  # sequential: evaluation order is fixed
    first = next(iter(loader))
    second = next(iter(loader))
    torch.testing.assert_close(first["pixel_values"], second["pixel_values"], rtol=0, atol=0)
    assert set(tokenizer.seen) == {"a polyp"}


def test_training_draws_prompts_and_augments_per_epoch(root: Path) -> None:
    tokenizer = RecordingTokenizer()
    dm = _module(root, tokenizer, batch_size=6)
    dm.setup("fit")
    loader = dm.train_dataloader()
    epochs = []
    for epoch in range(4):
        loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        epochs.append(next(iter(loader)))
    assert set(Counter(tokenizer.seen)) == {"a polyp", "a bright round polyp region"}
    assert not torch.equal(epochs[0]["pixel_values"], epochs[1]["pixel_values"])
    # Same epoch, same seed: same batch (also after a resume, and with any worker count).
    loader.sampler.set_epoch(1)  # type: ignore[attr-defined]
    torch.testing.assert_close(next(iter(loader))["pixel_values"], epochs[1]["pixel_values"])


def test_same_batches_with_workers(root: Path) -> None:
    dm0 = _module(root, batch_size=3)
    dm2 = _module(root, batch_size=3, num_workers=2)
    dm0.setup("fit")
    dm2.setup("fit")
    for a, b in zip(dm0.train_dataloader(), dm2.train_dataloader(), strict=True):
        torch.testing.assert_close(a["pixel_values"], b["pixel_values"])
        torch.testing.assert_close(a["input_ids"], b["input_ids"])


def test_train_fraction(root: Path) -> None:
    dm = _module(root, train_fraction=0.5)
    assert len(dm.samples("train")) == 3
    assert len(dm.samples("val")) == 3
    assert dm.samples("train") == _module(root, train_fraction=0.5).samples("train")
    with pytest.raises(ValueError, match="train_fraction"):
        _module(root, train_fraction=0.0)


def test_natural_format(tmp_path: Path) -> None:
    nat = write_synthetic_natural(
        tmp_path / "nat", n_train=2, n_val=2, n_test=1, image_size=32, classes=("street_sign",)
    )
    tokenizer = RecordingTokenizer()
    dm = _module(nat, tokenizer, format="natural")
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["pixel_values"].shape == (1, 3, 32, 32)
    assert tokenizer.seen == ["street sign"]


def test_unknown_format(root: Path) -> None:
    with pytest.raises(ValueError, match="medvlsm"):
        _module(root, format="coco")
