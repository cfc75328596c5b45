"""Loader details for accelerators: channels-last batches, stacking, worker set-up."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunevlseg.data.datamodule import SegmentationDataModule
from tunevlseg.data.synthetic import write_synthetic_medvlsm
from tunevlseg.train.testing import byte_tokenize


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_medvlsm(
        tmp_path_factory.mktemp("loading"), n_train=4, n_val=2, n_test=1, image_size=40
    )


def _module(root: Path, **kwargs: object) -> SegmentationDataModule:
    return SegmentationDataModule(
        root,
        "medvlsm",
        "p1",
        image_size=(32, 24),  # type: ignore[arg-type]
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        tokenize=byte_tokenize,
        batch_size=4,
        **kwargs,  # type: ignore[arg-type]
    )


def test_channels_last_batches_hold_the_same_values(root: Path) -> None:
    plain, nhwc = _module(root), _module(root, channels_last=True)
    a, b = next(iter(plain.train_dataloader())), next(iter(nhwc.train_dataloader()))
    assert a["pixel_values"].is_contiguous()
    assert b["pixel_values"].is_contiguous(memory_format=torch.channels_last)
    assert b["pixel_values"].shape == (4, 3, 32, 24)
    assert torch.equal(a["pixel_values"], b["pixel_values"])
    assert torch.equal(a["masks"], b["masks"]) and a["masks"].is_contiguous()


def test_workers_persist_and_pin_only_on_cuda(root: Path) -> None:
    loader = _module(root, num_workers=1).val_dataloader()
    assert loader.persistent_workers
    assert not loader.pin_memory or torch.cuda.is_available()
    assert len(list(loader)) == 1
